//! The operational endpoints every exploder daemon serves on
//! `--metrics-listen`:
//!
//! - `GET /metrics`: the process's Prometheus registry, text format;
//! - `GET /healthz`: 200 while the process serves requests (liveness: a
//!   restart would not help anything else);
//! - `GET /readyz`: 200 when the daemon can do its work (broker and Redis
//!   reachable, store writable), else 503 with one line per problem
//!   (readiness: take it out of rotation, do not restart it). The checks
//!   run at most every [`READY_TTL`], one at a time, whoever asks: the
//!   endpoint is unauthenticated, and each check costs the broker, Redis
//!   and a store write.
//!
//! Served by [`listener`], with its limits ([`LIMITS`]): a short header
//! timeout, a connection cap with a per-address share.
//!
//! And [`logging`]: the log setup every binary shares.

pub mod listener;
pub mod logging;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// A readiness check: `Ok` or the problem, in one line.
pub type Check = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync + 'static,
>;

/// A readiness check from a function that lists the daemon's problems:
/// ready when it lists none, else one line with all of them.
pub fn check<F, Fut>(problems: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<String>> + Send + 'static,
{
    Arc::new(move || {
        let problems = problems();
        Box::pin(async move {
            let problems = problems.await;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })
    })
}

/// Registers `exploder_build_info{version, component} 1`.
pub fn register_build_info(registry: &Registry, component: &str) -> prometheus::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new("exploder_build_info", "exploder's version, by component."),
        &["version", "component"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), component])
        .set(1);
    registry.register(Box::new(info))
}

/// Whether the store takes writes: a file created and removed in `tmp/`
/// (removed too when writing it failed: a full store keeps no probe).
/// Taking a tiny file is not having room for work: the worker also checks
/// the store's free space (`exploder_worker::space`).
pub fn store_writable(store: &Path) -> Result<(), String> {
    let tmp = store.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("store {}: {e}", store.display()))?;
    let probe = tmp.join(format!(".readyz.{}", std::process::id()));
    let written = std::fs::write(&probe, b"ok");
    let removed = std::fs::remove_file(&probe);
    written
        .and(removed)
        .map_err(|e| format!("store {} is not writable: {e}", store.display()))
}

/// How long a `/readyz` answer is reused.
pub const READY_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The metrics listener's connection limits: Prometheus and the kubelet's
/// probes need a few connections; idle ones are closed at 2 s.
pub const LIMITS: listener::ConnectionLimits = listener::ConnectionLimits {
    header_timeout: std::time::Duration::from_secs(2),
    max_connections: 64,
};

struct Shared {
    registry: Registry,
    ready: Check,
    /// The last readiness answer and when it was taken; the lock also
    /// makes concurrent callers share one check.
    last_ready: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

/// The router of the three endpoints.
pub fn router(registry: Registry, ready: Check) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Shared {
            registry,
            ready,
            last_ready: tokio::sync::Mutex::new(None),
        }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&shared.registry.gather(), &mut body) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        body,
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let answer = {
        let mut last = shared.last_ready.lock().await;
        match &*last {
            Some((at, answer)) if at.elapsed() < READY_TTL => answer.clone(),
            _ => {
                let answer = (shared.ready)().await;
                *last = Some((std::time::Instant::now(), answer.clone()));
                answer
            }
        }
    };
    match answer {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response(),
    }
}

/// Binds `listen` and serves the endpoints in a background task. A bind
/// failure is returned; both daemons log it and go on without the
/// endpoints (their work matters more than their probes, and a port taken
/// on a developer's machine should not stop them), so orchestrators that
/// probe them see the failure as an unready pod.
pub async fn spawn(
    listen: &str,
    registry: Registry,
    ready: Check,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "metrics and health endpoints serving");
    let app = router(registry, ready);
    Ok(tokio::spawn(listener::serve(
        "metrics",
        listener,
        app,
        LIMITS,
        std::future::pending(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn readyz_answers_many_callers_from_one_check() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let app = router(
            Registry::new(),
            check(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Vec::new() }
            }),
        );
        let calls = (0..20).map(|_| {
            let mut app = app.clone();
            async move {
                let req = axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap();
                tower_service::Service::call(&mut app, req)
                    .await
                    .unwrap()
                    .status()
            }
        });
        for status in futures_util::future::join_all(calls).await {
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "checked once, not per call");
    }
}
