//! The webhook source: `POST /webhook/<endpoint>` (axum).
//!
//! Each request goes: body (at most `max_body_bytes`, else 413) → auth
//! (401) → the endpoint's dialect turns it into events (400 if malformed)
//! → each event is reconciled. The answer is 2xx only once every job the
//! events made is confirmed by the broker; if the broker, Redis or the
//! registry is unavailable the answer is 503, so the sender keeps the event
//! and retries (distribution retries until it gets a 2xx). Events that can
//! never succeed (an image that does not resolve) are answered 200 with a
//! `rejected` outcome: a sender retrying forever would block its queue.

pub mod auth;
pub mod dialects;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

use self::auth::Auth;
use self::dialects::{Item, Malformed};
use crate::event::{Event, Outcome};
use crate::reconcile::{ReconcileError, Reconciler};
use exploder_common::store::DiskFormat;

/// The payload formats, one per endpoint path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `/webhook/registry`: distribution notifications.
    Registry,
    /// `/webhook/dockerhub`
    DockerHub,
    /// `/webhook/harbor`
    Harbor,
    /// `/webhook/quay`
    Quay,
    /// `/webhook/generic`: `{"reference": "..."}`, HMAC-signed.
    Generic,
}

impl Dialect {
    pub const ALL: [Dialect; 5] = [
        Dialect::Registry,
        Dialect::DockerHub,
        Dialect::Harbor,
        Dialect::Quay,
        Dialect::Generic,
    ];

    /// The path segment, config key and metrics `source` label.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Registry => "registry",
            Dialect::DockerHub => "dockerhub",
            Dialect::Harbor => "harbor",
            Dialect::Quay => "quay",
            Dialect::Generic => "generic",
        }
    }

    fn parse(self, body: &[u8], pull_from: Option<&str>) -> Result<Vec<Item>, Malformed> {
        match self {
            Dialect::Registry => dialects::registry(body, pull_from),
            Dialect::DockerHub => dialects::dockerhub(body, pull_from),
            Dialect::Harbor => dialects::harbor(body, pull_from),
            Dialect::Quay => dialects::quay(body, pull_from),
            Dialect::Generic => dialects::generic(body),
        }
    }
}

/// One enabled endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub dialect: Dialect,
    pub auth: Auth,
    /// Pull from this registry host instead of the one the payload names.
    pub pull_from: Option<String>,
    /// Registry hosts a payload may name (empty: any). The registry's
    /// credentials go to whatever host an event names, so a sender should
    /// not be able to pick one.
    pub allowed_registries: Vec<String>,
    /// Disk images to make of every image this endpoint's events name.
    pub exports: Vec<DiskFormat>,
}

impl Endpoint {
    fn allows(&self, event: &Event) -> bool {
        let registry = match event {
            Event::Tag(t) => &t.upstream.registry,
            Event::ManifestDeleted { upstream, .. } => &upstream.registry,
            Event::Gone { .. } => return true,
        };
        self.allowed_registries.is_empty() || self.allowed_registries.iter().any(|r| r == registry)
    }
}

pub struct Webhooks {
    pub endpoints: Vec<Endpoint>,
    pub max_body_bytes: usize,
}

struct Shared {
    reconciler: Arc<Reconciler>,
    endpoints: HashMap<&'static str, Endpoint>,
    max_body_bytes: usize,
}

/// The router serving every enabled endpoint under `/webhook/`.
pub fn router(reconciler: Arc<Reconciler>, webhooks: Webhooks) -> Router {
    let shared = Arc::new(Shared {
        reconciler,
        endpoints: webhooks
            .endpoints
            .into_iter()
            .map(|e| (e.dialect.name(), e))
            .collect(),
        max_body_bytes: webhooks.max_body_bytes,
    });
    Router::new()
        .route("/webhook/{endpoint}", post(receive))
        .with_state(shared)
}

/// The 200 answer: what came of each event, in order.
#[derive(Serialize)]
struct Reply {
    events: Vec<Outcome>,
}

/// A one-line plain-text refusal.
fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", reason.into())).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(ep) = shared.endpoints.get(endpoint.as_str()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no webhook endpoint {endpoint:?} is enabled"),
        );
    };
    let source = ep.dialect.name();
    let metrics = &shared.reconciler.metrics;
    let body = match axum::body::to_bytes(body, shared.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            metrics.event(source, "too_large");
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {} bytes", shared.max_body_bytes),
            );
        }
    };
    let query_token = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    if let Err(reason) = ep.auth.check(&headers, query_token.as_deref(), &body) {
        metrics.event(source, "auth_failure");
        tracing::warn!(
            endpoint = source,
            reason,
            "webhook refused: authentication failed"
        );
        return refuse(StatusCode::UNAUTHORIZED, reason);
    }
    let items = match ep.dialect.parse(&body, ep.pull_from.as_deref()) {
        Ok(items) => items,
        Err(reason) => {
            metrics.event(source, "malformed");
            tracing::warn!(endpoint = source, %reason, "webhook refused: malformed payload");
            return refuse(StatusCode::BAD_REQUEST, reason);
        }
    };
    let mut replies = Vec::new();
    for item in items {
        match item {
            Item::Ignored(reason) => {
                metrics.event(source, "ignored");
                tracing::debug!(endpoint = source, %reason, "event ignored");
                replies.push(Outcome::Ignored { reason });
            }
            Item::Event(event) if !ep.allows(&event) => {
                metrics.event(source, "ignored");
                replies.push(Outcome::Ignored {
                    reason:
                        "the payload names a registry this endpoint does not accept (registries:)"
                            .into(),
                });
            }
            Item::Event(mut event) => {
                if let Event::Tag(t) = &mut event {
                    t.exports = ep.exports.clone();
                }
                match shared.reconciler.handle(source, event).await {
                    Ok(outcomes) => replies.extend(outcomes),
                    Err(ReconcileError::Unavailable(reason)) => {
                        tracing::warn!(endpoint = source, %reason, "webhook answered 503: retry later");
                        let mut r = refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("cannot enqueue now ({reason}); retry later"),
                        );
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                        return r;
                    }
                }
            }
        }
    }
    axum::Json(Reply { events: replies }).into_response()
}
