//! `exploder poll`: scan the config's watch list now (`--once`) or every
//! interval, with the producer's poll source.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use exploder_args::{BrokerArgs, QuotaArgs, RedisArgs, ResolveArgs, TrustArgs};
use exploder_producer::config::Config;
use exploder_producer::metrics::Metrics;
use exploder_producer::reconcile::{FleetSettings, Reconciler};
use exploder_producer::sources::poll::Poller;

use crate::Output;
use crate::commands::resolve_options;

#[derive(Args)]
pub struct PollArgs {
    /// Scan every watched repository once, print what changed, and exit
    /// (without it: scan every interval until interrupted).
    #[arg(long)]
    once: bool,
    /// The producer's config file; its poll: section is the watch list.
    #[arg(long, env = "EXPLODER_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// The fleet's store [default: store: in --config].
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::store_dir)]
    store: Option<PathBuf>,
    #[command(flatten)]
    quotas: QuotaArgs,
    /// Output format (json: the scan report).
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
    #[command(flatten)]
    registry: ResolveArgs,
    #[command(flatten)]
    trust: TrustArgs,
}

pub async fn poll(a: PollArgs) -> ExitCode {
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(poll) = config.poll else {
        eprintln!(
            "exploder: {} has no poll: section; add a watch list (see docs/OPERATIONS.md)",
            a.config.display()
        );
        return ExitCode::from(2);
    };
    let Some(store) = a.store.or(config.store) else {
        eprintln!("exploder: no store: pass --store or set EXPLODER_STORE (or store: in --config)");
        return ExitCode::from(2);
    };
    let opts = match resolve_options(store.clone(), &a.registry, Some(&a.quotas)) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let quotas = opts.quotas.clone();
    let trust = match a.trust.load() {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = FleetSettings {
        amqp_url: a.broker.amqp_url(),
        redis_url: a.redis.url(None),
        prefix: a.broker.prefix(),
        amqp: Default::default(),
        redis_timeout: exploder_queue::index::DEFAULT_REDIS_TIMEOUT,
        store,
        platform: opts.platform.clone(),
        plan_options: opts.plan_options(),
        quotas,
        trust,
    };
    let reconciler = match Reconciler::connect(settings, Arc::new(Metrics::unregistered())).await {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(1);
        }
    };
    let poller = Poller {
        reconciler,
        config: poll,
        // Failures are reported; the next scan (or `exploder-producer`'s
        // scheduler) retries them.
        retries: None,
    };
    if !a.once {
        poller
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        return ExitCode::SUCCESS;
    }
    let report = poller.scan_once().await;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializes")
        ),
        Output::Text => {
            let outcomes: Vec<String> = report
                .outcomes
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            println!(
                "{} tags: {}",
                report.tags_seen,
                if outcomes.is_empty() {
                    "nothing to do".to_string()
                } else {
                    outcomes.join(", ")
                }
            );
        }
    }
    for e in &report.errors {
        eprintln!("exploder: poll: {e}");
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
