//! `exploder-worker`: a fleet worker. Consumes layer and image jobs from
//! RabbitMQ and explodes them into the shared store; scale it horizontally.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use exploder_common::fetch::registry::RegistryOptions;
use exploder_queue::topology::DEFAULT_DELIVERY_LIMIT;
use exploder_telemetry::{Check, register_build_info, store_writable};
use exploder_worker::args::{LimitArgs, WriteArgs, parse_duration};
use exploder_worker::finalize::{FinalizeOptions, Materialize};
use exploder_worker::fleet::{WorkerConfig, run};
use exploder_worker::metrics::WorkerMetrics;

/// Consume layer and image jobs and explode them into the store.
///
/// Every flag has an EXPLODER_* environment variable. SIGTERM stops taking
/// jobs, lets in-flight ones finish within --grace-period, and exits 0;
/// unfinished jobs go back to the queue.
#[derive(Parser)]
#[command(name = "exploder-worker", version)]
struct Args {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "EXPLODER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
    /// Redis URL of the fleet's index.
    #[arg(
        long,
        env = "EXPLODER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    redis_url: String,
    /// Prefix of every queue, exchange and Redis key.
    #[arg(long, env = "EXPLODER_PREFIX", default_value = "")]
    prefix: String,
    /// The shared store.
    #[arg(long, env = "EXPLODER_STORE")]
    store: PathBuf,
    /// Jobs of each kind handled at once: the prefetch of the layer queue
    /// and of the image queue (default: number of cores).
    #[arg(long, env = "EXPLODER_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Seconds in-flight jobs may take to finish after SIGTERM.
    #[arg(long, env = "EXPLODER_GRACE_PERIOD", default_value_t = 30)]
    grace_period: u64,
    /// How files get from the layer store into image trees.
    #[arg(long, value_enum, default_value_t, env = "EXPLODER_MATERIALIZE")]
    materialize: Materialize,
    /// Create device nodes found in layers.
    #[arg(long, env = "EXPLODER_ALLOW_DEVICES")]
    allow_devices: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    write: WriteArgs,
    /// Registries reached over plain HTTP (loopback ones always are).
    #[arg(
        long = "insecure-registry",
        env = "EXPLODER_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Docker config.json with registry credentials.
    #[arg(long, env = "EXPLODER_REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// Lease on a layer being ingested, in seconds (extended while the
    /// worker lives; a dead worker's lease lapses after this).
    #[arg(long, env = "EXPLODER_CLAIM_TTL", default_value_t = 30)]
    claim_ttl: u64,
    /// Interrupted deliveries a job survives: each time the worker handling
    /// it dies or loses the broker, the job is counted and put back; past
    /// this many it goes to the dead-letter queue (a job that crashes
    /// workers ends there).
    #[arg(long, env = "EXPLODER_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    delivery_limit: u32,
    /// How often staging directories of dead workers are swept from the
    /// store's tmp/ (also once when the worker connects).
    #[arg(long, env = "EXPLODER_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    sweep_interval: Duration,
    /// How often the resync looks at the requested links (one worker of
    /// the fleet at a time, under a lease in Redis).
    #[arg(long, env = "EXPLODER_RESYNC_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    resync_interval: Duration,
    /// How long a requested link may show no sign of progress before the
    /// resync publishes its jobs again. Keep it above the longest backoff
    /// tier (5m) and how long a job may sit in a busy queue.
    #[arg(long, env = "EXPLODER_RESYNC_AFTER", default_value = "10m", value_parser = parse_duration)]
    resync_after: Duration,
    /// Where /metrics, /healthz and /readyz are served (port 0: any free
    /// port; several workers on one host need different ports).
    #[arg(long, env = "EXPLODER_METRICS_LISTEN", default_value = "0.0.0.0:9100")]
    metrics_listen: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "EXPLODER_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    // ring, before any TLS client (docs/ARCHITECTURE.md, "TLS").
    exploder_common::tls::install_provider();
    let args = Args::parse();
    exploder_telemetry::logging::init(args.log_format == LogFormat::Json, "info,lapin=warn");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let config = WorkerConfig {
        amqp_url: args.amqp_url,
        redis_url: args.redis_url,
        prefix: args.prefix,
        store: args.store,
        concurrency: args.concurrency.unwrap_or(cores).max(1),
        grace_period: Duration::from_secs(args.grace_period),
        limits: args.limits.to_limits(),
        finalize: FinalizeOptions {
            materialize: args.materialize,
            allow_devices: args.allow_devices,
            durable: true,
            write_threads: args.write.write_threads(),
        },
        // Credentials also from EXPLODER_REGISTRY_USERNAME/PASSWORD/TOKEN.
        registry: RegistryOptions {
            insecure_registries: args.insecure_registries,
            auth_file: args.authfile,
            ..RegistryOptions::from_env()
        },
        claim_ttl: Duration::from_secs(args.claim_ttl.max(1)),
        delivery_limit: args.delivery_limit,
        sweep_interval: args.sweep_interval.max(Duration::from_secs(1)),
        resync_interval: args.resync_interval.max(Duration::from_secs(1)),
        resync_after: args.resync_after,
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
        let m = metrics.clone();
        let ready: Check = Arc::new(move || {
            let (m, store) = (m.clone(), store.clone());
            Box::pin(async move {
                let mut problems = Vec::new();
                if m.broker_up.get() != 1 {
                    problems.push("RabbitMQ is not reachable".to_string());
                }
                if m.redis_up.get() != 1 {
                    problems.push("Redis is not reachable".to_string());
                }
                if let Err(e) = store_writable(&store) {
                    problems.push(e);
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join("; "))
                }
            })
        });
        // A port already taken (several workers on one host) is not worth
        // refusing to work for: warn and go on without the endpoints.
        if let Err(e) = exploder_telemetry::spawn(&args.metrics_listen, registry, ready).await {
            tracing::warn!(
                "metrics endpoint not served on {}: {e}",
                args.metrics_listen
            );
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
