//! `exploder-producer`: the event-driven producer daemon. Turns registry
//! webhooks, polls of a watch list and OpenShift ImageStream changes into
//! explode jobs for the fleet.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use exploder_args::{FleetArgs, LogArgs, ManagementArgs, MetricsArgs, QuotaArgs, ResolveArgs};
use exploder_common::fetch::plan::PlanOptions;
use exploder_producer::config::Config;
use exploder_producer::leader::Elector;
use exploder_producer::metrics::Metrics;
use exploder_producer::queue_depth;
use exploder_producer::reconcile::{FleetSettings, Reconciler};
use exploder_producer::sources::imagestream::{self, ImageStreamConfig};
use exploder_producer::sources::poll::{PollConfig, Poller};
use exploder_producer::sources::webhook;
use exploder_telemetry::{register_build_info, store_writable};

/// Turn registry events into explode jobs for the fleet.
///
/// Serves POST /webhook/<endpoint> (registry, dockerhub, harbor, quay,
/// generic) for every endpoint that has a secret, and polls the watch list
/// of the config's poll: section. Without --config,
/// EXPLODER_WEBHOOK_TOKEN enables /webhook/registry with that bearer token.
/// Every event is checked against the registry and the store, so repeated,
/// stale or out-of-order events are harmless; a webhook is answered 2xx only
/// once the broker confirmed its jobs (503 while the broker, Redis or the
/// registry is unavailable, so the sender retries).
///
/// Flags and EXPLODER_* variables win over the config file.
#[derive(Parser)]
#[command(name = "exploder-producer", version)]
struct Args {
    /// YAML config file (see docs/OPERATIONS.md).
    #[arg(long, env = "EXPLODER_CONFIG")]
    config: Option<PathBuf>,
    /// Address the webhooks listen on [default: 0.0.0.0:8088].
    #[arg(long, env = "EXPLODER_LISTEN")]
    listen: Option<String>,
    #[command(flatten)]
    fleet: FleetArgs,
    /// The fleet's store (to check links and skip ingested layers).
    #[arg(long, env = "EXPLODER_STORE")]
    store: Option<PathBuf>,
    #[command(flatten)]
    quotas: QuotaArgs,
    /// Watch OpenShift ImageStreams (also: an imagestreams: section in
    /// --config).
    #[arg(long, env = "EXPLODER_IMAGESTREAMS")]
    imagestreams: bool,
    /// With ImageStreams: watch this namespace only [default: all].
    #[arg(long, env = "EXPLODER_NAMESPACE")]
    namespace: Option<String>,
    /// With ImageStreams: this kubeconfig [default: KUBECONFIG, then the
    /// in-cluster service account].
    #[arg(long, env = "EXPLODER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// How registries are reached, the platform picked, where blobs are
    /// read and where each registry's images link (registry_paths: in
    /// --config adds to --registry-path).
    #[command(flatten)]
    resolve: ResolveArgs,
    /// Run the watch and poll sources only while holding this
    /// coordination.k8s.io Lease (several replicas: one polls and watches,
    /// all serve webhooks).
    #[arg(long, env = "EXPLODER_LEASE_NAME")]
    lease_name: Option<String>,
    /// This replica's identity in the lease [default: host name and pid].
    #[arg(long, env = "EXPLODER_POD_NAME")]
    pod_name: Option<String>,
    /// The lease's namespace [default: the kubeconfig's or the pod's].
    #[arg(long, env = "EXPLODER_POD_NAMESPACE")]
    pod_namespace: Option<String>,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    management: ManagementArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("exploder-producer: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // ring, before any TLS client (docs/ARCHITECTURE.md, "TLS").
    exploder_common::tls::install_provider();
    let args = Args::parse();
    args.log.init("info");
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return usage(e),
        },
        None => Config::default(),
    };
    let webhooks = match config.webhooks.resolve_from_env() {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    let imagestreams = match (config.imagestreams, args.imagestreams) {
        (None, false) => None,
        (c, _) => {
            let mut c = c.unwrap_or_default();
            c.namespace = args.namespace.or(c.namespace);
            c.kubeconfig = args.kubeconfig.clone().or(c.kubeconfig);
            Some(c)
        }
    };
    let blob_source = match args.resolve.blob_source(config.blob_source) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    if webhooks.endpoints.is_empty() && config.poll.is_none() && imagestreams.is_none() {
        return usage(
            "no source enabled: set EXPLODER_WEBHOOK_TOKEN (the registry webhook), pass \
             --imagestreams, or enable sources in --config",
        );
    }
    let Some(store) = args.store.or(config.store) else {
        return usage("no store: pass --store or set EXPLODER_STORE (or store: in --config)");
    };
    let platform = match args.resolve.platform(config.platform) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let listen = args
        .listen
        .or(config.listen)
        .unwrap_or_else(|| "0.0.0.0:8088".into());
    let amqp_url = args.fleet.amqp.url(config.amqp_url);
    let redis_url = args.fleet.redis.url(config.redis_url);
    let prefix = args.fleet.prefix.prefix(config.prefix);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let from_config: Vec<String> = config
        .registry_paths
        .iter()
        .map(|(host, prefix)| format!("{host}={prefix}"))
        .collect();
    let registry_paths = match args.resolve.paths.paths(&from_config) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let quotas = match args.quotas.quotas() {
        Ok(q) => q,
        Err(e) => return usage(e),
    };
    let mut registry = args.resolve.registry.options();
    if let Some(c) = &imagestreams
        && let Err(e) = c.apply_token(&mut registry)
    {
        return usage(e);
    }
    let settings = FleetSettings {
        amqp_url,
        redis_url,
        prefix,
        store,
        platform,
        plan_options: PlanOptions {
            registry,
            blob_source,
            name: None,
            registry_paths,
        },
        quotas,
    };
    let ops = Ops {
        metrics_listen: args.metrics.metrics_listen,
        management_url: args.management.url(None),
        lease: args.lease_name.map(|name| LeaseSettings {
            name,
            namespace: args.pod_namespace,
            identity: args.pod_name.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_else(|_| "producer".into()),
                    std::process::id()
                )
            }),
            kubeconfig: args.kubeconfig.clone(),
        }),
    };
    runtime.block_on(serve(
        settings,
        listen,
        ops,
        webhooks,
        config.poll,
        imagestreams,
    ))
}

/// The operational side: metrics and health endpoints, queue depths.
struct Ops {
    metrics_listen: String,
    management_url: Option<String>,
    lease: Option<LeaseSettings>,
}

/// Leader election for the watch and poll sources.
struct LeaseSettings {
    name: String,
    namespace: Option<String>,
    identity: String,
    kubeconfig: Option<PathBuf>,
}

async fn serve(
    settings: FleetSettings,
    listen: String,
    ops: Ops,
    webhooks: webhook::Webhooks,
    poll: Option<PollConfig>,
    imagestreams: Option<ImageStreamConfig>,
) -> ExitCode {
    let registry = prometheus::Registry::new();
    let _ = register_build_info(&registry, "producer");
    let metrics = Arc::new(Metrics::new(&registry).expect("metrics register once"));
    metrics.observe_registries();
    let amqp_url = settings.amqp_url.clone();
    let reconciler = match Reconciler::connect(settings, metrics).await {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("exploder-producer: {e}");
            return ExitCode::from(1);
        }
    };
    let ready = {
        let r = reconciler.clone();
        exploder_telemetry::check(move || {
            let r = r.clone();
            async move {
                let mut problems = Vec::new();
                problems.extend(r.broker.get().await.err().map(|e| e.to_string()));
                problems.extend(r.index.ping().await.err().map(|e| e.to_string()));
                problems.extend(store_writable(r.store.root()).err());
                problems
            }
        })
    };
    if let Err(e) = exploder_telemetry::spawn(&ops.metrics_listen, registry, ready).await {
        tracing::warn!("metrics endpoint not served on {}: {e}", ops.metrics_listen);
    }
    let depth = tokio::spawn(queue_depth::run(
        reconciler.clone(),
        amqp_url,
        ops.management_url,
        Duration::from_secs(15),
    ));
    // Connect now to report a misconfiguration early; a broker that is
    // down is not fatal (events are answered 503 until it is back).
    if let Err(e) = reconciler.broker.get().await {
        tracing::warn!("{e}; webhooks answer 503 until the broker is reachable");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The watch and poll sources: started once, or whenever this replica
    // holds the lease (several replicas must not poll or watch twice).
    let (polling, watching) = (poll.is_some(), imagestreams.is_some());
    let start_sources = {
        let (reconciler, stop_rx) = (reconciler.clone(), stop_rx.clone());
        move || {
            let mut tasks = Vec::new();
            if let Some(config) = poll.clone() {
                let poller = Poller {
                    reconciler: reconciler.clone(),
                    config,
                };
                let mut stop = stop_rx.clone();
                tasks.push(tokio::spawn(async move {
                    poller
                        .run(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await
                }));
            }
            if let Some(config) = imagestreams.clone() {
                let (reconciler, mut stop) = (reconciler.clone(), stop_rx.clone());
                tasks.push(tokio::spawn(async move {
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = imagestream::run(reconciler, config, stopped).await {
                        tracing::error!("imagestream watch stopped: {e}");
                    }
                }));
            }
            tasks
        }
    };
    let sources: Vec<tokio::task::JoinHandle<()>> = match (&ops.lease, polling || watching) {
        (_, false) => Vec::new(),
        (None, true) => start_sources(),
        (Some(lease), true) => {
            let client = match imagestream::client(lease.kubeconfig.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("exploder-producer: leader election: {e}");
                    return ExitCode::from(1);
                }
            };
            let namespace = lease
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            let elector = Elector::new(client, &namespace, &lease.name, &lease.identity);
            let mut stop = stop_rx.clone();
            vec![tokio::spawn(async move {
                elector
                    .run(start_sources, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            })]
        }
    };
    let endpoints: Vec<&str> = webhooks
        .endpoints
        .iter()
        .map(|e| e.dialect.name())
        .collect();
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("exploder-producer: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or(listen),
        webhooks = ?endpoints,
        polling,
        imagestreams = watching,
        leader_election = ops.lease.is_some(),
        "producer running"
    );
    let connections = webhooks.connections;
    let app = webhook::router(reconciler, webhooks);
    webhook::server::serve(listener, app, connections, shutdown()).await;
    let _ = stop_tx.send(true);
    depth.abort();
    for task in sources {
        let _ = task.await;
    }
    ExitCode::SUCCESS
}

/// SIGTERM or Ctrl-C: stop accepting, let requests in flight finish.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_compose_without_clashes() {
        super::Args::command().debug_assert();
    }
}
