//! `exploder-producer`: the event-driven producer daemon. Turns registry
//! webhooks, polls of a watch list and OpenShift ImageStream changes into
//! explode jobs for the fleet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use exploder_args::{
    DeliveryLimitArgs, FleetArgs, LogArgs, ManagementArgs, MetricsArgs, PRODUCER_METRICS_LISTEN,
    QuotaArgs, ResolveArgs, TrustArgs,
};
use exploder_common::fetch::plan::PlanOptions;
use exploder_producer::config::Config;
use exploder_producer::reconcile::FleetSettings;
use exploder_producer::serve::{LeaseSettings, ServeConfig, serve, signalled};

/// Turn registry events into explode jobs for the fleet.
///
/// Serves POST /webhook/<endpoint> (registry, dockerhub, harbor, quay,
/// generic) for every endpoint that has a secret, and polls the watch list
/// of the config's poll: section. Without --config,
/// EXPLODER_WEBHOOK_TOKEN enables /webhook/registry with that bearer token.
/// Every event is checked against the registry and the store, so repeated,
/// stale or out-of-order events are harmless; a webhook event is recorded
/// in a durable queue before it is answered (503 only while the broker
/// cannot take it, so the sender retries), and reconciled behind the
/// answer.
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
    #[command(flatten)]
    delivery: DeliveryLimitArgs,
    /// The fleet's store (to check links and skip ingested layers).
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::store_dir)]
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
    #[command(flatten)]
    trust: TrustArgs,
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
    let mut webhooks = match config.webhooks.resolve_from_env() {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    webhooks.delivery_limit = args.delivery.delivery_limit;
    // Connections must not take the descriptors the broker, Redis and the
    // store need: the soft limit raised to the hard one, and the webhook
    // cap cut to what is left beside the metrics listener's.
    let soft = exploder_common::open_files::raise_to_hard().unwrap_or_else(|e| {
        tracing::warn!("cannot raise the open-files limit: {e}");
        exploder_common::open_files::soft_limit()
    });
    let room = exploder_common::open_files::for_connections(soft)
        .saturating_sub(exploder_telemetry::LIMITS.max_connections)
        .max(1);
    if webhooks.connections.max_connections > room {
        tracing::warn!(
            max_connections = webhooks.connections.max_connections,
            open_files = ?soft,
            "webhooks.max_connections cut to {room}: the open-files limit leaves no more \
             (raise it: ulimit -n, LimitNOFILE=)"
        );
        webhooks.connections.max_connections = room;
    }
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
    let trust = match args.trust.load() {
        Ok(t) => std::sync::Arc::new(t),
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
        amqp: args.fleet.deadlines.amqp(),
        redis_timeout: args.fleet.deadlines.redis(),
        store,
        platform,
        plan_options: PlanOptions {
            registry,
            blob_source,
            name: None,
            registry_paths,
        },
        quotas,
        trust,
    };
    let config = ServeConfig {
        settings,
        listen,
        webhooks,
        poll: config.poll,
        imagestreams,
        metrics_listen: args.metrics.listen(PRODUCER_METRICS_LISTEN),
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
    match runtime.block_on(serve(config, signalled())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exploder-producer: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_compose_without_clashes() {
        super::Args::command().debug_assert();
    }
}
