//! `exploder-worker`: a fleet worker. Consumes layer and image jobs from
//! RabbitMQ and explodes them into the shared store; scale it horizontally.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use exploder_args::{
    DeliveryLimitArgs, FinalizeArgs, FleetArgs, LimitArgs, LogArgs, MetricsArgs, RegistryArgs,
    ResyncArgs, SpaceArgs, TrustArgs, WORKER_METRICS_LISTEN, parse_duration,
};
use exploder_telemetry::{register_build_info, store_writable};
use exploder_worker::fleet::{WorkerConfig, run};
use exploder_worker::metrics::WorkerMetrics;
use exploder_worker::space::StoreSpace;

/// Consume layer and image jobs and explode them into the store.
///
/// Every flag has an EXPLODER_* environment variable. SIGTERM stops taking
/// jobs, lets in-flight ones finish within --grace-period, and exits 0;
/// unfinished jobs go back to the queue.
#[derive(Parser)]
#[command(name = "exploder-worker", version)]
struct Args {
    #[command(flatten)]
    fleet: FleetArgs,
    /// The shared store.
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::store_dir)]
    store: PathBuf,
    /// Jobs of each kind handled at once: the prefetch of the layer queue
    /// and of the image queue (default: number of cores).
    #[arg(long, env = "EXPLODER_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Seconds in-flight jobs may take to finish after SIGTERM.
    #[arg(long, env = "EXPLODER_GRACE_PERIOD", default_value_t = 30)]
    grace_period: u64,
    #[command(flatten)]
    finalize: FinalizeArgs,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// Lease on a layer being ingested, in seconds (extended while the
    /// worker lives; a dead worker's lease lapses after this).
    #[arg(long, env = "EXPLODER_CLAIM_TTL", default_value_t = 30)]
    claim_ttl: u64,
    #[command(flatten)]
    delivery: DeliveryLimitArgs,
    /// How often staging directories of dead workers are swept from the
    /// store's tmp/ (also once when the worker connects).
    #[arg(long, env = "EXPLODER_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    sweep_interval: Duration,
    #[command(flatten)]
    resync: ResyncArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    // ring, before any TLS client (docs/ARCHITECTURE.md, "TLS").
    exploder_common::tls::install_provider();
    let args = Args::parse();
    args.log.init("info,lapin=warn");
    // Layers, registry connections and the metrics listener's: the soft
    // open-files limit is often 1,024 where the hard one is far higher.
    if let Err(e) = exploder_common::open_files::raise_to_hard() {
        tracing::warn!("cannot raise the open-files limit: {e}");
    }
    let trust = match args.trust.load() {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("exploder-worker: {e}");
            return ExitCode::from(2);
        }
    };
    // A store that is not a directory is a mistake in the flags: say so
    // now rather than start a worker that can take no job. (A store that
    // goes bad later stops consumption: `exploder_worker::fleet`.)
    if let Ok(md) = std::fs::metadata(&args.store)
        && !md.is_dir()
    {
        eprintln!(
            "exploder-worker: --store {} is not a directory: point it at the store's directory",
            args.store.display()
        );
        return ExitCode::from(2);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let space = args.space.space(&args.store);
    let config = WorkerConfig {
        amqp_url: args.fleet.amqp.url(None),
        redis_url: args.fleet.redis.url(None),
        prefix: args.fleet.prefix.prefix(None),
        amqp: args.fleet.deadlines.amqp(),
        redis_timeout: args.fleet.deadlines.redis(),
        store: args.store,
        concurrency: args.concurrency.unwrap_or(cores).max(1),
        grace_period: Duration::from_secs(args.grace_period),
        limits: args.limits.limits(),
        finalize: args.finalize.options(true),
        registry: args.registry.options(),
        claim_ttl: Duration::from_secs(args.claim_ttl.max(1)),
        delivery_limit: args.delivery.delivery_limit,
        sweep_interval: args.sweep_interval.max(Duration::from_secs(1)),
        resync_interval: args.resync.interval(),
        resync: args.resync.bounds(),
        trust,
        space: space.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let store = config.store.clone();
    let result = runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let _ = register_build_info(&registry, "worker");
        let metrics = Arc::new(WorkerMetrics::new(&registry).expect("metrics register once"));
        space.register(&registry).expect("metrics register once");
        tokio::spawn(space.clone().measure_every(Duration::from_secs(15)));
        let m = metrics.clone();
        let ready = exploder_telemetry::check(move || {
            let (m, store, space) = (m.clone(), store.clone(), space.clone());
            async move {
                let mut problems = Vec::new();
                if m.broker_up.get() != 1 {
                    problems.push("RabbitMQ is not reachable".to_string());
                }
                if m.redis_up.get() != 1 {
                    problems.push("Redis is not reachable".to_string());
                }
                problems.extend(store_problems(store, space).await);
                problems
            }
        });
        // A port already taken (another worker on this host) stops the
        // worker: without the endpoints nobody sees its readiness or its
        // metrics, and its probes would ask another process.
        let listen = args.metrics.listen(WORKER_METRICS_LISTEN);
        if let Err(e) = exploder_telemetry::spawn(&listen, registry, ready).await {
            return Err(anyhow::anyhow!(
                "cannot serve /metrics, /healthz and /readyz on {listen}: {e}; give each worker \
                 on a host its own --metrics-listen (EXPLODER_METRICS_LISTEN; port 0: any free \
                 port)"
            ));
        }
        run(config, metrics).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exploder-worker: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The store's part of readiness: it takes writes, and has room to work
/// (`--store-min-free`; see `exploder_worker::space`). Off the runtime's
/// threads and within a deadline: a network file system may hang, and a
/// probe must still be answered (a check still hanging is one problem,
/// not one more thread per probe).
async fn store_problems(store: PathBuf, space: StoreSpace) -> Vec<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static CHECKING: AtomicBool = AtomicBool::new(false);
    const WITHIN: Duration = Duration::from_secs(5);
    let hung = || {
        vec![format!(
            "the store {} did not answer within {}s",
            store.display(),
            WITHIN.as_secs()
        )]
    };
    if CHECKING.swap(true, Ordering::SeqCst) {
        return hung();
    }
    let at = store.clone();
    let check = tokio::task::spawn_blocking(move || {
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                CHECKING.store(false, Ordering::SeqCst);
            }
        }
        let _done = Done;
        let mut problems: Vec<String> = store_writable(&at).err().into_iter().collect();
        problems.extend(space.check().err().map(|full| full.to_string()));
        problems
    });
    match tokio::time::timeout(WITHIN, check).await {
        Ok(Ok(problems)) => problems,
        Ok(Err(e)) => vec![format!("checking the store: {e}")],
        Err(_) => hung(),
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
