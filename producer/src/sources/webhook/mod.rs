//! The webhook source: `POST /webhook/<endpoint>` (axum).
//!
//! Each request goes: an endpoint that is not enabled, a missing or wrong
//! token, or a missing, malformed or stale signature: 401, the same answer
//! for all (strangers learn neither which endpoints exist nor which check
//! failed) → a `Content-Length` over `max_body_bytes` is refused before
//! anything is read (413) → a `Content-Type` that is not JSON (415) → the
//! rate limit (429 with `Retry-After`): the endpoint's when a token
//! authenticated the request, else (HMAC-only) the client address's own
//! budget → the body, within `body_timeout` (2 s at most when not yet
//! authenticated) and `max_body_bytes` (413) → the HMAC signature of the
//! timestamp and body (401), then the endpoint's budget, then the replay
//! check (an exact replay is answered `ignored`) → the endpoint's dialect
//! turns it into events (400 if malformed, naming a registry host no
//! connection could reach included; 413 over `max_events`) → each event
//! the endpoint accepts is recorded in the events queue
//! ([`crate::events`]) and reconciled behind the answer.
//! Connections are bounded in [`server`].
//!
//! The answer comes within `answer_within` (a registry's sender gives up
//! after a few seconds): 200 with each event's outcome when every reconcile
//! settled by then, else 202 with the unsettled ones `pending` (a registry
//! that is down or stalls costs retries, not a held request). 503 only when
//! an event cannot be recorded (the broker is unavailable), so the sender
//! keeps it and retries. Events that can never succeed (an image that does
//! not resolve) are answered with a `rejected` outcome: a sender retrying
//! forever would block its queue.

pub mod auth;
pub mod dialects;
pub mod rate;
/// The listener's connection limits, shared with the metrics listener.
pub use exploder_telemetry::listener as server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Serialize;

use self::auth::Auth;
use self::dialects::{Item, Malformed};
use self::rate::{Bucket, PerAddress, RateLimit};
use crate::event::{Event, Outcome};
use crate::reconcile::Reconciler;
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
    /// Requests this endpoint takes (all senders together); more: 429.
    pub rate_limit: Option<RateLimit>,
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
    /// Interrupted deliveries an event of the events queue survives before
    /// it is dead-lettered (`--delivery-limit`).
    pub delivery_limit: u32,
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
    /// How long a request waits for its events' reconciles once they are
    /// recorded; unsettled ones are answered `pending` (202).
    pub answer_within: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(10),
            max_events: 100,
            answer_within: Duration::from_millis(500),
        }
    }
}

struct Shared {
    reconciler: Arc<Reconciler>,
    endpoints: HashMap<&'static str, Endpoint>,
    buckets: HashMap<&'static str, Mutex<Bucket>>,
    /// Per client address, for requests not authenticated before their
    /// body (HMAC-only endpoints with a rate limit).
    unverified: HashMap<&'static str, PerAddress>,
    limits: RequestLimits,
}

/// The router serving every enabled endpoint under `/webhook/`.
pub fn router(reconciler: Arc<Reconciler>, webhooks: Webhooks) -> Router {
    let now = Instant::now();
    let buckets = webhooks
        .endpoints
        .iter()
        .filter_map(|e| {
            Some((
                e.dialect.name(),
                Mutex::new(Bucket::new(e.rate_limit?, now)),
            ))
        })
        .collect();
    let unverified = webhooks
        .endpoints
        .iter()
        .filter(|e| !e.auth.verified_before_body())
        .filter_map(|e| Some((e.dialect.name(), PerAddress::new(e.rate_limit?))))
        .collect();
    let shared = Arc::new(Shared {
        reconciler,
        buckets,
        unverified,
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

/// The 200/202 answer: what came of each event, in order.
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

/// How long a body may take when its request is not yet authenticated (an
/// HMAC-only endpoint: the signature needs the body): a stranger's body is
/// not held for the whole `body_timeout`.
const UNVERIFIED_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a signed delivery is remembered: a signature is taken while
/// its timestamp is within [`auth::TOLERANCE`] of the clock, so for at
/// most twice that after it is first seen.
const DELIVERY_MEMORY: Duration = Duration::from_secs(2 * auth::TOLERANCE.as_secs() + 5);

/// The one answer to every request refused before it is authenticated, an
/// endpoint that is not enabled included: alike, so a stranger learns
/// neither which endpoints exist nor which check failed (the log says).
const UNAUTHORIZED: &str = "authentication failed: a missing or wrong token or signature";

fn too_many(source: &str, wait: Duration, setting: &str) -> Response {
    let secs = rate::retry_after(wait);
    let mut r = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        format!("over this endpoint's rate limit ({setting}): retry in {secs} s"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    tracing::debug!(endpoint = source, secs, "webhook answered 429");
    r
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    RawQuery(query): RawQuery,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let now = auth::unix_now();
    let metrics = &shared.reconciler.metrics;
    let Some(ep) = shared.endpoints.get(endpoint.as_str()) else {
        // Not a metrics label: the path is the stranger's choice.
        tracing::warn!(
            endpoint = %endpoint,
            "webhook refused: no such endpoint is enabled (answered 401)"
        );
        return refuse(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    };
    let source = ep.dialect.name();
    let limits = shared.limits;
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
        refuse(StatusCode::UNAUTHORIZED, UNAUTHORIZED)
    };
    // Everything that does not need the body is checked before reading it,
    // credentials first, so nothing else tells a stranger the endpoint is
    // there.
    if let Err(reason) = ep.auth.check_headers(&headers, query_token.as_deref(), now) {
        return unauthorized(reason);
    }
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
    if let Err(reason) = json_content_type(&headers) {
        metrics.event(source, "unsupported_media_type");
        tracing::warn!(endpoint = source, %reason, "webhook refused: not JSON");
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason);
    }
    let verified = ep.auth.verified_before_body();
    let endpoint_budget = || match shared.buckets.get(source) {
        Some(bucket) => bucket.lock().expect("bucket lock").take(Instant::now()),
        None => Ok(()),
    };
    let mut read_limits = limits;
    if verified {
        if let Err(wait) = endpoint_budget() {
            metrics.event(source, "rate_limited");
            return too_many(source, wait, &format!("webhooks.{source}.rate_limit"));
        }
    } else {
        // Not authenticated until the body is read: the client's own
        // budget, a short deadline, and the endpoint's budget only once
        // the signature is verified.
        read_limits.body_timeout = limits.body_timeout.min(UNVERIFIED_BODY_TIMEOUT);
        let ip = peer.map(|axum::Extension(ConnectInfo(a))| a.ip());
        if let (Some(per), Some(ip)) = (shared.unverified.get(source), ip)
            && let Err(wait) = per.take(ip, Instant::now())
        {
            metrics.event(source, "rate_limited");
            return too_many(
                source,
                wait,
                &format!(
                    "webhooks.{source}.rate_limit, per client before its signature is checked"
                ),
            );
        }
    }
    let body = match read_body(body, read_limits).await {
        Ok(b) => b,
        Err(e) => {
            metrics.event(source, e.label());
            tracing::warn!(endpoint = source, reason = %e, "webhook refused: body not read");
            return refuse(e.status(), e.to_string());
        }
    };
    let signed = match ep.auth.check_signature(&headers, &body, now) {
        Ok(signed) => signed,
        Err(reason) => return unauthorized(reason),
    };
    if !verified && let Err(wait) = endpoint_budget() {
        metrics.event(source, "rate_limited");
        return too_many(source, wait, &format!("webhooks.{source}.rate_limit"));
    }
    // A signed delivery is taken once: an exact replay within the window
    // (a captured request sent again) is answered `ignored` and does
    // nothing. Remembered in Redis, so across every producer replica.
    let delivery = signed.map(|v| format!("{source}:{}", v.mac));
    if let Some(id) = &delivery {
        match shared
            .reconciler
            .index
            .first_delivery(id, DELIVERY_MEMORY)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                metrics.event(source, "replayed");
                tracing::warn!(endpoint = source, "webhook delivery replayed: ignored");
                return (
                    StatusCode::OK,
                    axum::Json(Reply {
                        events: vec![Outcome::Ignored {
                            reason: "a replay of a delivery already taken (the same X-Signature)"
                                .into(),
                        }],
                    }),
                )
                    .into_response();
            }
            Err(e) => {
                metrics.event(source, "unavailable");
                tracing::warn!(endpoint = source, reason = %e, "webhook answered 503: retry later");
                return unavailable(format!("checking the delivery is not a replay: {e}"));
            }
        }
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
    // Record every accepted event before answering; reconciling goes on
    // behind the answer.
    enum Slot {
        Done(Outcome),
        Recorded { id: String, link: String },
    }
    let mut slots = Vec::new();
    for item in items {
        match item {
            Item::Ignored(reason) => {
                metrics.event(source, "ignored");
                tracing::debug!(endpoint = source, %reason, "event ignored");
                slots.push(Slot::Done(Outcome::Ignored { reason }));
            }
            Item::Event(event) if !ep.allows(&event) => {
                metrics.event(source, "ignored");
                slots.push(Slot::Done(Outcome::Ignored {
                    reason:
                        "the payload names a registry this endpoint does not accept (registries:)"
                            .into(),
                }));
            }
            Item::Event(mut event) => {
                if let Event::Tag(t) = &mut event {
                    t.exports = ep.exports.clone();
                }
                match crate::events::record(&shared.reconciler, source, &event).await {
                    Ok(id) => slots.push(Slot::Recorded {
                        id,
                        link: crate::scheduler::subject_of(&event),
                    }),
                    Err(e) => {
                        // Events recorded before this one are reconciled
                        // anyway; the sender's retry finds them settled.
                        metrics.event(source, "unavailable");
                        tracing::warn!(endpoint = source, reason = %e, "webhook answered 503: retry later");
                        if let Some(id) = &delivery {
                            // The sender's retry of these very bytes must
                            // not be taken for a replay.
                            shared.reconciler.index.forget_delivery(id).await;
                        }
                        return unavailable(e.to_string());
                    }
                }
            }
        }
    }
    let ids: Vec<String> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Recorded { id, .. } => Some(id.clone()),
            Slot::Done(_) => None,
        })
        .collect();
    let deadline = started + limits.answer_within;
    let mut settled = crate::events::outcomes(&shared.reconciler, &ids, deadline)
        .await
        .into_iter();
    let mut replies = Vec::new();
    let mut pending = false;
    for slot in slots {
        match slot {
            Slot::Done(o) => replies.push(o),
            Slot::Recorded { link, .. } => match settled.next().flatten() {
                Some(outcomes) => replies.extend(outcomes),
                None => {
                    pending = true;
                    replies.push(Outcome::Pending { link });
                }
            },
        }
    }
    let status = if pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, axum::Json(Reply { events: replies })).into_response()
}

/// 503 with `Retry-After: 10`.
fn unavailable(reason: String) -> Response {
    let mut r = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{reason}; retry later"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    r
}

/// Whether a `Content-Type` is JSON, as every dialect's payload is:
/// `application/json` or a JSON-based type (`application/*+json`, e.g.
/// distribution's `application/vnd.docker.distribution.events.v1+json`),
/// with any parameters. A request without one is taken (some senders set
/// none).
fn json_content_type(headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("(not text)");
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(format!(
            "Content-Type {text:?} is not JSON: this endpoint takes application/json or \
             application/*+json (e.g. application/vnd.docker.distribution.events.v1+json)"
        ))
    }
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

/// The webhook source: the listener (bound when built, so a port in use
/// is reported before anything runs), the endpoints, and the consumer of
/// the events queue their events are recorded in. Every replica runs it.
pub struct WebhookSource {
    built: std::sync::Mutex<Option<(tokio::net::TcpListener, Webhooks)>>,
    addr: String,
}

impl WebhookSource {
    /// Binds `listen` for `webhooks`.
    pub async fn build(listen: &str, webhooks: Webhooks) -> Result<WebhookSource, String> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string());
        Ok(WebhookSource {
            built: std::sync::Mutex::new(Some((listener, webhooks))),
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl crate::sources::Source for WebhookSource {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn leader_only(&self) -> bool {
        false
    }

    fn run(
        self: Arc<Self>,
        ctx: crate::sources::Context,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some((listener, webhooks)) = self.built.lock().expect("built lock").take() else {
                tracing::error!("the webhook source runs once");
                return;
            };
            // Without endpoints nothing is recorded: the listener only
            // answers 404 (and tells the harness the producer is up).
            let consumer = (!webhooks.endpoints.is_empty()).then(|| {
                tokio::spawn(crate::events::consume(
                    ctx.scheduler.clone(),
                    webhooks.delivery_limit,
                    ctx.clone().stopped(),
                ))
            });
            let connections = webhooks.connections;
            let app = router(ctx.scheduler.reconciler().clone(), webhooks);
            server::serve("webhook", listener, app, connections, ctx.stopped()).await;
            if let Some(consumer) = consumer {
                let _ = consumer.await;
            }
        })
    }
}
