//! `exploder-producer`'s daemon, given an already-built configuration:
//! connect, build the configured sources, run the leader-only ones under
//! the lease (or always, without one) and the others always, until the
//! shutdown signal.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use exploder_telemetry::{Check, register_build_info, store_writable};

use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::queue_depth;
use crate::reconcile::{FleetSettings, Reconciler};
use crate::scheduler::Scheduler;
use crate::sources::imagestream::{self, ImageStreamConfig};
use crate::sources::poll::PollConfig;
use crate::sources::webhook::{WebhookSource, Webhooks};
use crate::sources::{Context, ImageStreamSource, PollSource, Source};

/// Everything the daemon runs with (the binary turns flags, variables and
/// the config file into this).
pub struct ServeConfig {
    pub settings: FleetSettings,
    /// Where the webhooks listen.
    pub listen: String,
    pub webhooks: Webhooks,
    pub poll: Option<PollConfig>,
    pub imagestreams: Option<ImageStreamConfig>,
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_listen: String,
    /// RabbitMQ's management API, for unacked counts in queue depths.
    pub management_url: Option<String>,
    /// Run the leader-only sources only while holding this lease.
    pub lease: Option<LeaseSettings>,
}

/// Leader election for the watch and poll sources.
pub struct LeaseSettings {
    pub name: String,
    pub namespace: Option<String>,
    pub identity: String,
    pub kubeconfig: Option<PathBuf>,
}

/// Why the daemon could not run (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Source(String),
    #[error("leader election: {0}")]
    Lease(String),
    /// The metrics listener's address cannot be bound (another daemon has
    /// it): without it nobody sees the producer's readiness.
    #[error(
        "cannot serve /metrics, /healthz and /readyz on {listen}: {source}; give each daemon \
         on a host its own --metrics-listen (EXPLODER_METRICS_LISTEN; port 0: any free port)"
    )]
    Metrics {
        listen: String,
        source: std::io::Error,
    },
}

/// Runs until `shutdown` completes, then stops the sources and lets
/// webhook requests in flight finish.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let ServeConfig {
        settings,
        listen,
        webhooks,
        poll,
        imagestreams,
        metrics_listen,
        management_url,
        lease,
    } = config;
    let registry = prometheus::Registry::new();
    let _ = register_build_info(&registry, "producer");
    let metrics = Arc::new(Metrics::new(&registry).expect("metrics register once"));
    metrics.observe_registries();
    let amqp_url = settings.amqp_url.clone();
    let reconciler = Arc::new(
        Reconciler::connect(settings, metrics)
            .await
            .map_err(ServeError::Connect)?,
    );
    exploder_telemetry::spawn(&metrics_listen, registry, ready(&reconciler))
        .await
        .map_err(|e| ServeError::Metrics {
            listen: metrics_listen.clone(),
            source: e,
        })?;
    let depth = tokio::spawn(queue_depth::run(
        reconciler.clone(),
        amqp_url,
        management_url,
        Duration::from_secs(15),
    ));
    // Connect now to report a misconfiguration early; a broker that is
    // down is not fatal (events are answered 503 until it is back).
    match reconciler.broker.get().await {
        Ok(open) => {
            // Before the first request: events are recorded there.
            let t = open.publisher.topology();
            let within = reconciler.broker.options().timeout;
            match tokio::time::timeout(within, t.declare_one(&open.conn, &t.events_declaration()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(_) => tracing::warn!(
                    "RabbitMQ did not declare the events queue within {within:?}; webhooks \
                     answer 503 until it does"
                ),
            }
        }
        Err(e) => tracing::warn!("{e}; webhooks answer 503 until the broker is reachable"),
    }

    // Build every configured source.
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    let endpoints: Vec<&str> = webhooks
        .endpoints
        .iter()
        .map(|e| e.dialect.name())
        .collect();
    // Listening even without endpoints (every path 404): the port says
    // the producer is up.
    let webhook = WebhookSource::build(&listen, webhooks)
        .await
        .map_err(ServeError::Source)?;
    let listening = webhook.addr().to_string();
    sources.push(Arc::new(webhook));
    if let Some(config) = poll {
        sources.push(Arc::new(PollSource { config }));
    }
    if let Some(config) = imagestreams {
        sources.push(Arc::new(ImageStreamSource { config }));
    }
    let (leader_only, always): (Vec<_>, Vec<_>) =
        sources.into_iter().partition(|s| s.leader_only());
    let names = |v: &[Arc<dyn Source>]| v.iter().map(|s| s.name()).collect::<Vec<_>>();
    tracing::info!(
        listen = %listening,
        webhooks = ?endpoints,
        always = ?names(&always),
        leader_only = ?names(&leader_only),
        leader_election = lease.is_some(),
        "producer running"
    );

    let scheduler = Scheduler::new(reconciler.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Context {
        scheduler,
        stop: stop_rx,
    };
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = always
        .into_iter()
        .map(|s| tokio::spawn(s.run(ctx.clone())))
        .collect();
    if !leader_only.is_empty() {
        let start = {
            let ctx = ctx.clone();
            move || {
                leader_only
                    .iter()
                    .map(|s| tokio::spawn(s.clone().run(ctx.clone())))
                    .collect::<Vec<_>>()
            }
        };
        match &lease {
            None => tasks.extend(start()),
            Some(lease) => {
                let client = imagestream::client(lease.kubeconfig.as_deref())
                    .await
                    .map_err(ServeError::Lease)?;
                let namespace = lease
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                let elector = Elector::new(client, &namespace, &lease.name, &lease.identity);
                let stopped = ctx.clone().stopped();
                tasks.push(tokio::spawn(
                    async move { elector.run(start, stopped).await },
                ));
            }
        }
    }
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    depth.abort();
    Ok(())
}

/// How long `/readyz` waits for the broker's and Redis's round trips:
/// well within a probe's own timeout (5 s in k8s/ and compose/).
const PROBE_WITHIN: Duration = Duration::from_secs(3);

/// `/readyz`: the broker and Redis each answer a round trip within
/// [`PROBE_WITHIN`] (a partition leaves connections that look open), and
/// the store takes writes.
fn ready(reconciler: &Arc<Reconciler>) -> Check {
    let r = reconciler.clone();
    exploder_telemetry::check(move || {
        let r = r.clone();
        async move {
            let (broker, redis) = tokio::join!(
                r.broker.probe(PROBE_WITHIN),
                tokio::time::timeout(PROBE_WITHIN, r.index.ping())
            );
            let mut problems = Vec::new();
            problems.extend(broker.err());
            match redis {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(e.to_string()),
                Err(_) => problems.push(format!("Redis did not answer within {PROBE_WITHIN:?}")),
            }
            problems.extend(store_writable(r.store.root()).err());
            problems
        }
    })
}

/// SIGTERM or Ctrl-C.
pub async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
