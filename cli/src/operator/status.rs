//! `exploder status`: the fleet's queues, dead letters, the Redis index
//! and the requested links outstanding in the store.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use exploder_common::history;
use exploder_common::job::JobKind;
use exploder_common::request::{self, Summary};
use exploder_common::store::StoreLayout;
use exploder_queue::connect::{connect, redact};
use exploder_queue::index::{Index, IndexCounts};
use exploder_queue::stats::{self, Management};
use exploder_queue::topology::{RETRY_TIERS, Topology};
use lapin::Connection;
use serde::Serialize;

use super::{cannot_reach_broker, cell, render_table};
use crate::Output;
use exploder_args::{BrokerArgs, ManagementArgs, RedisArgs, parse_interval};

/// Where `exploder status` asks for unacked counts without --management-url.
const DEFAULT_MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

/// `exploder status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// [default: http://127.0.0.1:15672]
    #[command(flatten)]
    management: ManagementArgs,
    /// The fleet's store, to count the requested links not done yet
    /// (left out without it).
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::store_dir)]
    store: Option<std::path::PathBuf>,
    /// Output format (json: one object; with --watch one object per line).
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
    /// Refresh until interrupted (Ctrl-C).
    #[arg(short, long)]
    watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, default_value = "2s", value_parser = parse_interval, env = "EXPLODER_STATUS_INTERVAL")]
    interval: Duration,
}

#[derive(Serialize)]
struct QueueStatus {
    name: String,
    /// "layer", "image", or null for the dead-letter and events queues.
    kind: Option<&'static str>,
    /// "work", "retry", "dead" or "events" (webhook events the producers
    /// have recorded and not settled yet).
    role: &'static str,
    /// The retry tier ("5s", ...), null for other roles.
    tier: Option<&'static str>,
    exists: bool,
    /// Messages waiting to be delivered.
    ready: Option<u32>,
    /// Delivered, not yet acked: only known from the management API.
    unacked: Option<u64>,
    consumers: Option<u32>,
}

#[derive(Serialize)]
struct Status {
    prefix: String,
    queues: Vec<QueueStatus>,
    /// Ready messages in the dead-letter queue.
    dead_letters: Option<u32>,
    /// Layers the Redis index knows as ingested (SCARD).
    layers: Option<u64>,
    /// Ingest leases held right now.
    claims: Option<u64>,
    /// "management" when unacked counts came from the management API.
    unacked_source: Option<&'static str>,
    /// The requested links in the store (with --store): outstanding means
    /// neither linked nor failed yet.
    requests: Option<Summary>,
    /// The store's file objects and what they saved (with --store).
    objects: Option<exploder_worker::layer::objects::Summary>,
    /// What could not be read (missing queues, Redis down).
    errors: Vec<String>,
}

/// The fleet's queues in display order: per kind the work queue and its
/// retry tiers, then the dead letters, then the producers' events.
fn status_queues(topology: &Topology) -> Vec<QueueStatus> {
    let row = |name, kind, role, tier| QueueStatus {
        name,
        kind,
        role,
        tier,
        exists: false,
        ready: None,
        unacked: None,
        consumers: None,
    };
    let mut out = Vec::new();
    for kind in JobKind::ALL {
        out.push(row(
            topology.work_queue(kind),
            Some(kind.as_str()),
            "work",
            None,
        ));
        for (tier, _) in RETRY_TIERS {
            out.push(row(
                topology.retry_queue(kind, tier),
                Some(kind.as_str()),
                "retry",
                Some(*tier),
            ));
        }
    }
    out.push(row(topology.dead_letters(), None, "dead", None));
    out.push(row(topology.events_queue(), None, "events", None));
    out
}

/// One snapshot. `Err` only when the broker connection itself is gone.
async fn collect_status(conn: &Connection, a: &StatusArgs) -> Result<Status, lapin::Error> {
    let topology = Topology::new(&a.broker.prefix());
    let mut queues = status_queues(&topology);
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    let names: Vec<String> = queues.iter().map(|q| q.name.clone()).collect();
    let (url, amqp_url) = (
        a.management.url(Some(DEFAULT_MANAGEMENT_URL)),
        a.broker.amqp_url(),
    );
    let management = url.as_deref().map(|url| Management {
        url,
        amqp_url: &amqp_url,
    });
    let sampled = stats::sample(conn, &names, management).await?;
    let unacked_source = sampled
        .iter()
        .any(|s| s.unacked.is_some())
        .then_some("management");
    for (q, s) in queues.iter_mut().zip(sampled) {
        if !s.exists {
            missing.push(q.name.clone());
        }
        q.exists = s.exists;
        q.ready = s.ready;
        q.consumers = s.consumers;
        q.unacked = s.unacked;
    }
    if !missing.is_empty() {
        errors.push(format!(
            "missing queues: {} (run `exploder topology apply` with the same EXPLODER_PREFIX)",
            missing.join(", ")
        ));
    }
    let dead_letters = queues
        .iter()
        .find(|q| q.role == "dead")
        .and_then(|q| q.ready);
    let (layers, claims) = match redis_counts(&a.redis.url(None), &a.broker.prefix()).await {
        Ok(c) => (Some(c.layers), Some(c.claims)),
        Err(e) => {
            errors.push(format!(
                "cannot read Redis at {} ({e}); check EXPLODER_REDIS_URL",
                redact(&a.redis.url(None))
            ));
            (None, None)
        }
    };
    let requests = match &a.store {
        None => None,
        Some(store) => {
            let layout = StoreLayout::new(store);
            match request::list_heads(&layout) {
                Ok((requests, unreadable)) => {
                    for e in unreadable {
                        errors.push(format!("unreadable request: {e}"));
                    }
                    Some(Summary::of(&requests, history::now()))
                }
                Err(e) => {
                    errors.push(format!(
                        "cannot read the requests in {} ({e}); check EXPLODER_STORE",
                        layout.requests_dir().display()
                    ));
                    None
                }
            }
        }
    };
    let objects = match &a.store {
        None => None,
        Some(store) => match exploder_worker::layer::objects::summary(&StoreLayout::new(store)) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!(
                    "cannot count the file objects in {} ({e})",
                    store.display()
                ));
                None
            }
        },
    };
    Ok(Status {
        prefix: a.broker.prefix(),
        objects,
        queues,
        dead_letters,
        layers,
        claims,
        unacked_source,
        requests,
        errors,
    })
}

/// The index's counts, or why Redis did not answer within a few seconds
/// (`status` must not hang on a Redis that is down).
async fn redis_counts(url: &str, prefix: &str) -> Result<IndexCounts, String> {
    let counts = async { Index::connect(url, prefix).await?.counts().await };
    match tokio::time::timeout(Duration::from_secs(10), counts).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

fn render_status_text(s: &Status) -> String {
    let with_unacked = s.unacked_source.is_some();
    let mut header = vec!["QUEUE", "KIND", "ROLE", "READY"];
    if with_unacked {
        header.push("UNACKED");
    }
    header.push("CONSUMERS");
    let rows: Vec<Vec<String>> = s
        .queues
        .iter()
        .map(|q| {
            let role = match q.tier {
                Some(tier) => format!("{} {tier}", q.role),
                None => q.role.to_string(),
            };
            let mut row = vec![
                q.name.clone(),
                q.kind.unwrap_or("-").to_string(),
                if q.exists { role } else { "missing".into() },
                cell(q.ready),
            ];
            if with_unacked {
                row.push(cell(q.unacked));
            }
            row.push(cell(q.consumers));
            row
        })
        .collect();
    let mut out = render_table(&header, &rows);
    out.push('\n');
    out.push_str(&format!(
        "dead letters:           {}\n",
        cell(s.dead_letters)
    ));
    out.push_str(&format!("layers known to Redis:  {}\n", cell(s.layers)));
    out.push_str(&format!("active claims:          {}\n", cell(s.claims)));
    match &s.requests {
        Some(r) => {
            let oldest = r
                .oldest_outstanding_seconds
                .map(|age| format!(" (oldest decided {} ago)", human_age(age)))
                .unwrap_or_default();
            out.push_str(&format!(
                "requests outstanding:   {}{oldest}\n",
                r.outstanding
            ));
            out.push_str(&format!("requests failed:        {}\n", r.failed));
        }
        None => out.push_str("requests outstanding:   - (pass --store or set EXPLODER_STORE)\n"),
    }
    if let Some(o) = &s.objects {
        out.push_str(&format!(
            "file objects:           {} ({} files shared, {} saved)\n",
            o.objects,
            o.shared_files,
            crate::inventory::human_bytes(o.saved_bytes)
        ));
    }
    if !with_unacked {
        out.push_str(
            "(READY counts messages waiting for a worker; messages being worked on (unacked) \
             need the management API)\n",
        );
    }
    out
}

/// `42s`, `7m`, `3h12m`, `2d4h`: an age at a glance.
fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn render_status(s: &Status, output: Output, watching: bool) -> String {
    match output {
        // One object per line, for `| jq` or a log.
        Output::Json if watching => serde_json::to_string(s).expect("serializes") + "\n",
        Output::Json => serde_json::to_string_pretty(s).expect("serializes") + "\n",
        Output::Text => render_status_text(s),
    }
}

/// Writes to stdout; false when it is gone (`| head` closed the pipe).
fn write_stdout(text: &str) -> bool {
    use std::io::Write;
    crate::json_error::wrote_stdout();
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

pub async fn status(a: StatusArgs) -> ExitCode {
    let mut conn = match connect(&a.broker.amqp_url(), a.broker.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return cannot_reach_broker(&a.broker, &e),
    };
    if !a.watch {
        return match collect_status(&conn, &a).await {
            Ok(s) => {
                write_stdout(&render_status(&s, a.output, false));
                for e in &s.errors {
                    eprintln!("exploder: {e}");
                }
                let _ = conn.close(200, "bye".into()).await;
                if s.errors.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => cannot_reach_broker(&a.broker, &e),
        };
    }
    let terminal = std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut first = true;
    loop {
        let refreshed = tokio::select! {
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
            r = collect_status(&conn, &a) => r,
        };
        let mut screen = String::new();
        if a.output == Output::Text {
            if terminal {
                // Home and clear, like watch(1).
                screen.push_str("\x1b[H\x1b[2J");
            } else if !first {
                screen.push('\n');
            }
            screen.push_str(&format!(
                "every {:?}: exploder status ({})   {}\n",
                a.interval,
                redact(&a.broker.amqp_url()),
                exploder_common::history::rfc3339_now()
            ));
        }
        first = false;
        match refreshed {
            Ok(s) => {
                screen.push_str(&render_status(&s, a.output, true));
                if !write_stdout(&screen) {
                    return ExitCode::SUCCESS;
                }
                for e in &s.errors {
                    eprintln!("exploder: {e}");
                }
            }
            Err(e) => {
                if !write_stdout(&screen) {
                    return ExitCode::SUCCESS;
                }
                eprintln!(
                    "exploder: lost RabbitMQ at {} ({e}); reconnecting",
                    redact(&a.broker.amqp_url())
                );
                let patience = a.interval.min(a.broker.connect_timeout);
                let amqp_url = a.broker.amqp_url();
                tokio::select! {
                    _ = &mut ctrl_c => return ExitCode::SUCCESS,
                    c = connect(&amqp_url, patience) => {
                        if let Ok(c) = c {
                            conn = c;
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
            _ = tokio::time::sleep(a.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(human_age(42), "42s");
        assert_eq!(human_age(7 * 60 + 5), "7m");
        assert_eq!(human_age(3 * 3600 + 12 * 60), "3h12m");
        assert_eq!(human_age(2 * 86_400 + 4 * 3600), "2d4h");
    }
}
