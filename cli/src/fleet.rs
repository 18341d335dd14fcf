//! The fleet from the command line: `exploder enqueue` (the same fan-out
//! as the producer) and `exploder topology apply|verify`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use exploder_args::{
    BrokerArgs, EnqueueJobsArgs, ExportArgs, QuotaArgs, RedisArgs, ResolveArgs, TrustArgs,
    parse_duration,
};
use exploder_common::fetch::plan::plan;
use exploder_common::fetch::resolve;
use exploder_common::job::LinkTarget;
use exploder_common::store::{DiskFormat, StoreLayout};
use exploder_queue::connect::{connect, redact};
use exploder_queue::fanout::FanOut;
use exploder_queue::index::Index;
use exploder_queue::publish::Publisher;
use exploder_queue::topology::Topology;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::Output;
use crate::commands::{count, parse_reference, resolve_options};

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Declare every exchange and queue (idempotent).
    Apply(BrokerArgs),
    /// Check that every exchange and queue exists as declared; exit 1 and
    /// list the problems otherwise.
    Verify(BrokerArgs),
}

pub async fn topology(cmd: TopologyCommand) -> ExitCode {
    let (broker, apply) = match cmd {
        TopologyCommand::Apply(b) => (b, true),
        TopologyCommand::Verify(b) => (b, false),
    };
    let conn = match connect(&broker.amqp_url(), broker.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "exploder: cannot reach RabbitMQ at {} ({e}); check EXPLODER_AMQP_URL and that the broker runs",
                redact(&broker.amqp_url())
            );
            return ExitCode::from(1);
        }
    };
    let topology = Topology::new(&broker.prefix());
    if apply {
        match topology.apply(&conn).await {
            Ok(()) => {
                println!("topology applied: {} queues", topology.queues().len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("exploder: {e}");
                ExitCode::from(1)
            }
        }
    } else {
        match topology.verify(&conn).await {
            Ok(problems) if problems.is_empty() => {
                println!("topology ok: {} queues", topology.queues().len());
                ExitCode::SUCCESS
            }
            Ok(problems) => {
                for p in problems {
                    eprintln!("exploder: {p}");
                }
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("exploder: verifying the topology: {e}");
                ExitCode::from(1)
            }
        }
    }
}

#[derive(Args)]
pub struct EnqueueArgs {
    /// Image references (registry or file:// storage directory; OCI layouts
    /// can only be exploded in-process).
    #[arg(required = true)]
    references: Vec<String>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// The fleet's store (to skip layers it already has).
    #[arg(long, env = "EXPLODER_STORE")]
    store: PathBuf,
    /// Output format (json: job ids and digests).
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
    /// Block until every reference is linked, and its disk images
    /// exported when --export asked for them, or its jobs were
    /// dead-lettered (then exit 1 with the reason), showing progress.
    #[arg(long, env = "EXPLODER_WAIT")]
    wait: bool,
    /// With --wait: give up after this long (e.g. 10m); exit 1.
    #[arg(long, value_parser = parse_duration, env = "EXPLODER_ENQUEUE_TIMEOUT")]
    timeout: Option<Duration>,
    #[command(flatten)]
    quotas: QuotaArgs,
    #[command(flatten)]
    registry: ResolveArgs,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    exports: ExportArgs,
    #[command(flatten)]
    jobs: EnqueueJobsArgs,
}

/// What `--wait` watches for one enqueued reference.
struct Watched {
    reference: String,
    name: exploder_common::store::ImageName,
    tag: String,
    manifest: exploder_common::digest::Digest,
    layers: Vec<exploder_common::digest::Digest>,
    /// The disk images asked for (`--export`): their jobs run once the
    /// image is linked, and the reference is done when they are.
    exports: Vec<DiskFormat>,
}

/// Where one watched reference stands.
enum Progress {
    /// Not linked yet, or linked with disk images still to come.
    Pending,
    Done,
    Failed(String),
}

/// Reads where `w` stands from the store (its link, its disk images) and
/// the index (the failures workers recorded).
async fn progress(w: &Watched, store: &StoreLayout, index: &Index) -> Progress {
    let linked = matches!(store.read_link(&w.name, &w.tag), Ok(Some(d)) if d == w.manifest);
    if !linked {
        for d in std::iter::once(&w.manifest).chain(&w.layers) {
            if let Ok(Some(reason)) = index.failure(d).await {
                return Progress::Failed(format!("{d}: {reason}"));
            }
        }
        return Progress::Pending;
    }
    let present = exploder_worker::export::exported(store, &w.manifest);
    let mut missing = false;
    for format in &w.exports {
        if present.iter().any(|(f, _)| f == format) {
            continue;
        }
        if let Ok(Some(reason)) = index.export_failure(&w.manifest, format.as_str()).await {
            return Progress::Failed(format!(
                "linked, but its {format} disk image failed: {reason}"
            ));
        }
        missing = true;
    }
    if missing {
        Progress::Pending
    } else {
        Progress::Done
    }
}

/// Polls the store and the index until every reference is linked (with
/// its disk images) or failed. Returns (reference, Ok(()) | Err(reason),
/// whether it is linked).
async fn wait_for(
    watched: Vec<Watched>,
    store: &StoreLayout,
    index: &Index,
    timeout: Option<Duration>,
    show_bar: bool,
) -> Vec<(String, Result<(), String>, bool)> {
    let bar = if show_bar {
        let b = indicatif::ProgressBar::new(watched.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} linked {elapsed}")
                .expect("template"),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let mut done: Vec<Option<Result<(), String>>> = vec![None; watched.len()];
    loop {
        for (w, state) in watched.iter().zip(done.iter_mut()) {
            if state.is_some() {
                continue;
            }
            match progress(w, store, index).await {
                Progress::Pending => continue,
                Progress::Done => *state = Some(Ok(())),
                Progress::Failed(reason) => *state = Some(Err(reason)),
            }
            bar.inc(1);
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            for state in done.iter_mut().filter(|s| s.is_none()) {
                *state = Some(Err(
                    "not linked, or its disk images not made, before --timeout".into(),
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bar.finish_and_clear();
    watched
        .into_iter()
        .zip(done)
        .map(|(w, state)| {
            let linked = matches!(store.read_link(&w.name, &w.tag), Ok(Some(d)) if d == w.manifest);
            (w.reference, state.expect("all settled"), linked)
        })
        .collect()
}

/// Resolves each reference and publishes its layer jobs and image job.
pub async fn enqueue(a: EnqueueArgs) -> ExitCode {
    let opts = match resolve_options(a.store.clone(), &a.registry, Some(&a.quotas)) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let quotas = opts.quotas.clone();
    let trust = match a.trust.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(2);
        }
    };
    let mut references = Vec::new();
    for r in &a.references {
        match parse_reference(r) {
            Ok(x) => references.push((r.clone(), x)),
            Err(code) => return code,
        }
    }
    let conn = match connect(&a.broker.amqp_url(), a.broker.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "exploder: cannot reach RabbitMQ at {} ({e}); check EXPLODER_AMQP_URL",
                redact(&a.broker.amqp_url())
            );
            return ExitCode::from(1);
        }
    };
    let index = match Index::connect(&a.redis.url(None), &a.broker.prefix()).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "exploder: cannot reach Redis at {} ({e}); check EXPLODER_REDIS_URL",
                redact(&a.redis.url(None))
            );
            return ExitCode::from(1);
        }
    };
    let publisher = match Publisher::open(&conn, Topology::new(&a.broker.prefix())).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(1);
        }
    };
    let store = StoreLayout::new(&a.store);
    let fanout = FanOut {
        publisher: &publisher,
        index: &index,
        store: &store,
    };
    let plan_options = opts.plan_options();
    let (store, fanout, quotas, trust, platform) =
        (&store, &fanout, &quotas, &trust, &opts.platform);
    let formats = &a.exports.formats;
    // Decisions are made in the order given where order matters: a
    // reference waits for the one before it of the same link (the later
    // one is the newer decision), or, with a quota, for the one before it
    // (a quota counts the requests recorded before). Everything else —
    // resolving, writing the request, publishing — overlaps.
    let serial = !quotas.is_empty();
    let mut turns: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
    let mut enqueuing = futures_util::stream::iter(&references)
        .map(|(text, reference)| {
            let planned = plan(reference, &plan_options);
            let (my_turn_done, my_turn) = oneshot::channel::<()>();
            let key = match &planned {
                _ if serial => Some(String::new()),
                Ok(p) => Some(LinkTarget::new(&p.name, &p.tag).to_string()),
                Err(_) => None,
            };
            let before = key.and_then(|k| turns.insert(k, my_turn));
            async move {
                let outcome = async {
                    let plan = planned?;
                    let Some(source) = plan.source.clone() else {
                        anyhow::bail!(
                            "a local image (oci:, oci-archive:, docker-archive:) is read by this process only: workers cannot see this machine's files; use `exploder explode`"
                        );
                    };
                    let image = resolve(&plan.fetcher, &plan.target, platform).await?;
                    // Refused here, nothing is published.
                    let accepted = trust
                        .verify_image(reference, text, &plan.fetcher, &image)
                        .await?;
                    if let Some(before) = before {
                        // Err: the one before is done, or failed; either way
                        // it decided.
                        let _ = before.await;
                    }
                    let links = vec![LinkTarget::new(&plan.name, &plan.tag)];
                    quotas.check_links(store, &links, &image)??;
                    // A disk image that failed before is asked for again:
                    // --wait must not read the old failure as this one's.
                    for format in formats {
                        let _ = fanout
                            .index
                            .clear_export_failed(&image.manifest_digest, format.as_str())
                            .await;
                    }
                    let recorded = fanout
                        .record(&image, &accepted, source, links, "cli", formats.clone())
                        .await?;
                    drop(my_turn_done);
                    let enqueued = fanout.publish_recorded(recorded).await?;
                    let watched = Watched {
                        reference: text.clone(),
                        name: plan.name.clone(),
                        tag: plan.tag.clone(),
                        manifest: image.manifest_digest.clone(),
                        layers: enqueued
                            .layer_jobs
                            .iter()
                            .map(|l| l.diff_id.clone())
                            .collect(),
                        exports: formats.clone(),
                    };
                    Ok::<_, anyhow::Error>((enqueued, watched))
                }
                .await;
                (text, outcome)
            }
        })
        // In the order given, whatever order they finish in.
        .buffered(usize::from(a.jobs.jobs));
    let mut results = Vec::new();
    let mut failed = false;
    let mut watched = Vec::new();
    while let Some((text, result)) = enqueuing.next().await {
        match result {
            Ok((e, w)) => {
                if a.output == Output::Text {
                    println!(
                        "{text}: {} enqueued (image job {}, {}, {} present)",
                        e.manifest_digest,
                        e.image_job,
                        count(e.layer_jobs.len(), "layer job"),
                        count(e.present_layers.len(), "layer")
                    );
                }
                watched.push(w);
                results.push(serde_json::json!({"reference": text, "ok": true, "result": e}));
            }
            Err(e) => {
                failed = true;
                eprintln!("exploder: {text}: {e}");
                results.push(
                    serde_json::json!({"reference": text, "ok": false, "error": e.to_string()}),
                );
            }
        }
    }
    drop(enqueuing);
    if a.wait {
        let show_bar =
            a.output == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
        for (reference, outcome, linked) in
            wait_for(watched, store, &index, a.timeout, show_bar).await
        {
            let entry = results
                .iter_mut()
                .find(|r| r["reference"] == reference.as_str())
                .expect("every watched reference has a result");
            match outcome {
                Ok(()) => {
                    entry["linked"] = serde_json::Value::Bool(true);
                    if a.output == Output::Text {
                        println!("{reference}: linked");
                    }
                }
                Err(reason) => {
                    failed = true;
                    // The jobs were enqueued, but what was asked did not
                    // happen: not ok.
                    entry["ok"] = serde_json::Value::Bool(false);
                    entry["linked"] = serde_json::Value::Bool(linked);
                    entry["failure"] = serde_json::Value::String(reason.clone());
                    eprintln!("exploder: {reference}: failed: {reason} (see `exploder dlq list`)");
                }
            }
        }
    }
    crate::finish(a.output, &results, failed)
}
