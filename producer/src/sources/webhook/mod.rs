//! The webhook source: `POST /webhook/<endpoint>` (axum).
//!
//! Each request goes: a `Content-Length` over `max_body_bytes` is refused
//! before anything is read (413) → the bearer token (401), checked before
//! the body is read, so strangers cannot make the producer hold bodies →
//! the body, within `body_timeout` (408) and `max_body_bytes` (413) → the
//! HMAC signature, which needs it (401) → the endpoint's dialect turns it
//! into events (400 if malformed; 413 over `max_events`) → each event is
//! reconciled. Connections are bounded in [`server`]. The answer is 2xx only once every job the
//! events made is confirmed by the broker; if the broker, Redis or the
//! registry is unavailable the answer is 503, so the sender keeps the event
//! and retries (distribution retries until it gets a 2xx). Events that can
//! never succeed (an image that does not resolve) are answered 200 with a
//! `rejected` outcome: a sender retrying forever would block its queue.

pub mod auth;
pub mod dialects;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt as _;
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
    /// Pull from this registry host whatever the payload names.
    pub pull_from: Option<String>,
    /// Registry hosts a payload may name; no other is ever contacted. Empty
    /// only with `pull_from`, or for Docker Hub (its payload names no
    /// host): the configuration refuses an endpoint whose payloads would
    /// choose.
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
    pub limits: RequestLimits,
    pub connections: server::ConnectionLimits,
}

/// What one request may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// A larger body is answered 413 (unread, when its length is declared).
    pub max_body_bytes: usize,
    /// The whole body must arrive within this (else 408).
    pub body_timeout: Duration,
    /// Events (tags) in one request; more is answered 413.
    pub max_events: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(10),
            max_events: 100,
        }
    }
}

struct Shared {
    reconciler: Arc<Reconciler>,
    endpoints: HashMap<&'static str, Endpoint>,
    limits: RequestLimits,
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
        limits: webhooks.limits,
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

/// The most bytes of a refusal's reason (it may quote the payload).
const MAX_REASON_BYTES: usize = 512;

/// A one-line plain-text refusal, escaped and cut like a log line.
fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = exploder_telemetry::logging::escape(&reason.into(), MAX_REASON_BYTES);
    let mut r = (status, format!("{reason}\n")).into_response();
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
    let limits = shared.limits;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limits.max_body_bytes as u64) {
        metrics.event(source, "too_large");
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a body of {len} bytes is over this endpoint's limit of {} bytes \
                 (webhooks.max_body_bytes)",
                limits.max_body_bytes
            ),
        );
    }
    let query_token = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let unauthorized = |reason: &'static str| {
        metrics.event(source, "auth_failure");
        tracing::warn!(
            endpoint = source,
            reason,
            "webhook refused: authentication failed"
        );
        refuse(StatusCode::UNAUTHORIZED, reason)
    };
    // Everything that does not need the body is checked before reading it.
    if let Err(reason) = ep.auth.check_headers(&headers, query_token.as_deref()) {
        return unauthorized(reason);
    }
    let body = match read_body(body, limits).await {
        Ok(b) => b,
        Err(e) => {
            metrics.event(source, e.label());
            tracing::warn!(endpoint = source, reason = %e, "webhook refused: body not read");
            return refuse(e.status(), e.to_string());
        }
    };
    if let Err(reason) = ep.auth.check_signature(&headers, &body) {
        return unauthorized(reason);
    }
    let items = match ep.dialect.parse(&body, ep.pull_from.as_deref()) {
        Ok(items) => items,
        Err(reason) => {
            metrics.event(source, "malformed");
            tracing::warn!(endpoint = source, %reason, "webhook refused: malformed payload");
            return refuse(StatusCode::BAD_REQUEST, reason);
        }
    };
    if items.len() > limits.max_events {
        metrics.event(source, "too_large");
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request, over this endpoint's limit of {} \
                 (webhooks.max_events): send them in smaller batches",
                items.len(),
                limits.max_events
            ),
        );
    }
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

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the body is over this endpoint's limit of {0} bytes (webhooks.max_body_bytes)")]
    TooLarge(usize),
    #[error("the body did not arrive within {0:?} (webhooks.body_timeout_seconds)")]
    TimedOut(Duration),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `outcome` label of `exploder_producer_events_total`.
    fn label(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "too_large",
            BodyError::TimedOut(_) => "body_timeout",
            BodyError::Broken(_) => "malformed",
        }
    }
}

/// The whole body, within the request limits.
async fn read_body(body: Body, limits: RequestLimits) -> Result<Bytes, BodyError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if buf.len() + chunk.len() > limits.max_body_bytes {
                return Err(BodyError::TooLarge(limits.max_body_bytes));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .map_err(|_| BodyError::TimedOut(limits.body_timeout))?
}
