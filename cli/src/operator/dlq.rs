//! `exploder dlq list|show|replay|purge`: the dead-letter queue (see the
//! `operator` module documentation for how a queue is read without losing
//! anything).

use std::collections::HashSet;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use exploder_common::job::Job;
use exploder_common::request;
use exploder_common::store::StoreLayout;
use exploder_queue::connect::{connect, redact};
use exploder_queue::headers;
use exploder_queue::index::Index;
use exploder_queue::protocol::DeadLetter;
use exploder_queue::publish::Publisher;
use exploder_queue::topology::{Topology, inspect_queue};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use serde_json::{Value, json};

use super::{cannot_reach_broker, cell, print_json, render_table};
use crate::Output;
use exploder_args::{BrokerArgs, RedisArgs};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List every dead-lettered job with its failure reason, leaving the
    /// queue as it was.
    List(DlqCommon),
    /// Everything about one dead letter: headers, reason, the decoded job.
    Show(DlqShowArgs),
    /// Publish dead-lettered jobs back to their work queue (fresh headers,
    /// confirmed), then remove them from the dead-letter queue.
    Replay(DlqReplayArgs),
    /// Delete every dead letter (needs --yes).
    Purge(DlqPurgeArgs),
}

#[derive(Args)]
pub struct DlqCommon {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
}

#[derive(Args)]
pub struct DlqShowArgs {
    /// The job id, as `exploder dlq list` shows it.
    id: String,
    #[command(flatten)]
    common: DlqCommon,
}

#[derive(Args)]
// A group, so that clap's error for neither names both: `<ID|--all>`.
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct DlqReplayArgs {
    /// The job id, as `exploder dlq list` shows it (or --all).
    id: Option<String>,
    /// Replay every dead letter that decodes.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: DlqCommon,
    /// Where the fleet records failures, so that a replayed layer's images
    /// wait for it again instead of failing at once.
    #[command(flatten)]
    redis: RedisArgs,
    /// The fleet's store: a replayed image job's requests become
    /// outstanding again (the resync re-drives them if the replay is lost).
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::store_dir)]
    store: Option<std::path::PathBuf>,
}

/// What a replay resets besides the queue: the failure records that make
/// a layer's images fail at once, and the failed marks of the requests.
/// Best effort: without Redis or a store, the replay still happens.
struct Reopen {
    index: Option<Index>,
    store: Option<StoreLayout>,
}

impl Reopen {
    async fn connect(a: &DlqReplayArgs) -> Reopen {
        let index = match Index::connect(&a.redis.url(None), &a.common.broker.prefix()).await {
            Ok(i) => Some(i),
            Err(e) => {
                eprintln!(
                    "exploder: warning: cannot reach Redis at {} ({e}): replayed layers' \
                     failures stay recorded, so their images may fail again until the \
                     layer is done",
                    redact(&a.redis.url(None))
                );
                None
            }
        };
        Reopen {
            index,
            store: a.store.as_ref().map(StoreLayout::new),
        }
    }

    async fn forget_failure(&self, job: &Job) {
        let key = match job {
            Job::Layer(j) => &j.diff_id,
            Job::Image(j) => &j.manifest_digest,
            // Export jobs record no failure.
            Job::Export(_) => return,
        };
        if let Some(index) = &self.index
            && let Err(e) = index.clear_failed(key).await
        {
            eprintln!("exploder: warning: clearing the failure of {key}: {e}");
        }
        if let (Some(store), Job::Image(j)) = (&self.store, job) {
            for link in &j.links {
                if let Err(e) = request::reopen(store, link, &j.id) {
                    eprintln!("exploder: warning: reopening the request of {link}: {e}");
                }
            }
        }
    }
}

#[derive(Args)]
pub struct DlqPurgeArgs {
    /// Really delete every dead letter: there is no undo.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    common: DlqCommon,
}

pub async fn dlq(cmd: DlqCommand) -> ExitCode {
    match cmd {
        DlqCommand::List(c) => dlq_list(c).await,
        DlqCommand::Show(a) => dlq_show(a).await,
        DlqCommand::Replay(a) => dlq_replay(a).await,
        DlqCommand::Purge(a) => dlq_purge(a).await,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An AMQP value as JSON: strings as text (lossy), byte arrays as hex.
fn value_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(d) => json!(d),
        AMQPValue::DecimalValue(d) => json!({"scale": d.scale, "value": d.value}),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => json!(headers::value_text(v)),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => json!(hex(b.as_slice())),
        AMQPValue::Void => Value::Null,
        other => json!(headers::value_int(other)),
    }
}

fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

/// What a dead letter is: a job's kind, `event` (a webhook event from the
/// producers' events queue), or `-` (a body this version cannot read).
fn kind_label(l: &DeadLetter) -> &'static str {
    match l.kind() {
        Some(k) => k.as_str(),
        None if l.event => "event",
        None => "-",
    }
}

/// A dead letter's fields for `-o json`.
fn summary_json(l: &DeadLetter) -> serde_json::Map<String, Value> {
    let (decoded, decode_error) = match &l.job {
        Ok(_) => (true, None),
        Err(_) if l.event => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let v = json!({
        "id": l.id,
        "message_id": l.message_id,
        "kind": (kind_label(l) != "-").then(|| kind_label(l)),
        "digest": l.job.as_ref().ok().map(|j| j.digest().to_string()),
        "decoded": decoded,
        "decode_error": decode_error,
        "reason": l.reason,
        "dead_lettered_by": l.by,
        "last_error": l.last_error,
        "queue": l.queue,
        "attempts": l.attempts,
        "dead_at": l.dead_at,
        "size": l.body.len(),
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object"),
    }
}

/// Every message of the dead-letter queue, held unacked on one channel
/// until [`Taken::settle`] (or the channel's end) gives back the rest.
struct Taken {
    channel: Channel,
    letters: Vec<DeadLetter>,
    settled: HashSet<u64>,
}

impl Taken {
    async fn take(conn: &Connection, topology: &Topology) -> Result<Taken, String> {
        let queue = topology.dead_letters();
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        if let Err(e) = inspect_queue(&channel, &queue).await {
            return Err(format!(
                "the dead-letter queue {queue} does not exist ({e}); run `exploder topology apply` \
                 with the same EXPLODER_PREFIX"
            ));
        }
        let mut letters = Vec::new();
        loop {
            let got = channel
                .basic_get(
                    ShortString::from(queue.as_str()),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| format!("reading {queue}: {e}"))?;
            match got {
                Some(m) => letters.push(DeadLetter::from_delivery(m.delivery)),
                None => break,
            }
        }
        Ok(Taken {
            channel,
            letters,
            settled: HashSet::new(),
        })
    }

    /// Removes one message from the queue for good.
    async fn ack(&mut self, tag: u64) -> Result<(), lapin::Error> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await?;
        self.settled.insert(tag);
        Ok(())
    }

    /// Gives back every message not acked, in one nack, and closes the
    /// channel (its close-ok also means the broker has processed the acks).
    async fn settle(self) -> Result<(), lapin::Error> {
        let last = self
            .letters
            .iter()
            .map(|l| l.tag)
            .filter(|t| !self.settled.contains(t))
            .max();
        if let Some(tag) = last {
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
        }
        self.channel.close(200, "dlq done".into()).await
    }
}

/// Connects and takes the dead letters, or prints why not.
async fn take_dead_letters(broker: &BrokerArgs) -> Result<(Connection, Taken), ExitCode> {
    let conn = match connect(&broker.amqp_url(), broker.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return Err(cannot_reach_broker(broker, &e)),
    };
    match Taken::take(&conn, &Topology::new(&broker.prefix())).await {
        Ok(t) => Ok((conn, t)),
        Err(e) => {
            eprintln!("exploder: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// Gives the messages back; a failure here is worth saying (the broker
/// requeues them anyway when the connection ends).
async fn finish(conn: Connection, taken: Taken) -> bool {
    let ok = match taken.settle().await {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "exploder: giving the dead letters back failed ({e}); the broker requeues them when this connection closes"
            );
            false
        }
    };
    let _ = conn.close(200, "bye".into()).await;
    ok
}

async fn dlq_list(c: DlqCommon) -> ExitCode {
    let (conn, taken) = match take_dead_letters(&c.broker).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match c.output {
        Output::Json => {
            let all: Vec<Value> = taken
                .letters
                .iter()
                .map(|l| Value::Object(summary_json(l)))
                .collect();
            print_json(&all);
        }
        Output::Text if taken.letters.is_empty() => {
            println!(
                "no dead letters in {}",
                Topology::new(&c.broker.prefix()).dead_letters()
            );
        }
        Output::Text => {
            let rows: Vec<Vec<String>> = taken
                .letters
                .iter()
                .map(|l| {
                    vec![
                        l.id.clone(),
                        kind_label(l).to_string(),
                        match &l.job {
                            Ok(j) => j.digest().to_string(),
                            Err(_) if l.event => "-".to_string(),
                            Err(_) => "(undecodable)".to_string(),
                        },
                        cell(l.attempts),
                        l.queue.clone().unwrap_or_else(|| "-".into()),
                        match &l.job {
                            Ok(_) => l.reason_line(),
                            Err(_) if l.event => l.reason_line(),
                            Err(e) => format!("{} [body: {e}]", l.reason_line()),
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &["ID", "KIND", "DIGEST", "ATTEMPTS", "QUEUE", "REASON"],
                    &rows,
                )
            );
        }
    }
    if finish(conn, taken).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn not_found(id: &str, prefix: &str) {
    eprintln!(
        "exploder: no dead letter with id {id} in {} (see `exploder dlq list`)",
        Topology::new(prefix).dead_letters()
    );
}

async fn dlq_show(a: DlqShowArgs) -> ExitCode {
    let c = &a.common;
    let (conn, taken) = match take_dead_letters(&c.broker).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let matching: Vec<&DeadLetter> = taken.letters.iter().filter(|l| l.matches(&a.id)).collect();
    let found = !matching.is_empty();
    if let Some(l) = matching.first() {
        let job = l
            .job
            .as_ref()
            .ok()
            .map(|j| serde_json::to_value(j).expect("serializes"));
        match c.output {
            Output::Json => {
                let mut m = summary_json(l);
                m.insert("copies".into(), json!(matching.len()));
                m.insert("content_type".into(), json!(l.content_type));
                m.insert("headers".into(), table_json(&l.headers));
                m.insert("job".into(), job.unwrap_or(Value::Null));
                if l.job.is_err() {
                    m.insert(
                        "body_hex".into(),
                        json!(hex(&l.body[..l.body.len().min(4096)])),
                    );
                }
                print_json(&m);
            }
            Output::Text => {
                let field = |name: &str, value: String| println!("{name:<18}{value}");
                field("id:", l.id.clone());
                field("message id:", cell(l.message_id.clone()));
                field("kind:", kind_label(l).to_string());
                match &l.job {
                    Ok(j) => field("digest:", j.digest().to_string()),
                    Err(_) if l.event => field(
                        "event:",
                        String::from_utf8_lossy(&l.body[..l.body.len().min(1024)])
                            .escape_debug()
                            .to_string(),
                    ),
                    Err(e) => field("body:", format!("does not decode: {e}")),
                }
                field("reason:", cell(l.reason.clone()));
                field("dead-lettered by:", cell(l.by));
                if let Some(e) = &l.last_error {
                    field("last error:", e.clone());
                }
                field("queue:", cell(l.queue.clone()));
                field("attempts:", cell(l.attempts));
                if let Some(t) = &l.dead_at {
                    field("dead since:", t.clone());
                }
                field("content type:", cell(l.content_type.clone()));
                field("size:", format!("{} bytes", l.body.len()));
                if matching.len() > 1 {
                    field("copies:", format!("{} (same id)", matching.len()));
                }
                println!("headers:");
                for (k, v) in l.headers.inner() {
                    let v = match headers::value_text(v) {
                        Some(t) => t,
                        None => value_json(v).to_string(),
                    };
                    println!("  {k}: {v}");
                }
                match job {
                    Some(j) => {
                        println!("job:");
                        let pretty = serde_json::to_string_pretty(&j).expect("serializes");
                        for line in pretty.lines() {
                            println!("  {line}");
                        }
                    }
                    None => {
                        let shown = &l.body[..l.body.len().min(256)];
                        let more = if l.body.len() > shown.len() {
                            "…"
                        } else {
                            ""
                        };
                        println!("body (hex): {}{more}", hex(shown));
                    }
                }
            }
        }
    }
    let settled = finish(conn, taken).await;
    if !found {
        not_found(&a.id, &c.broker.prefix());
        return ExitCode::from(1);
    }
    if settled {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn dlq_replay(a: DlqReplayArgs) -> ExitCode {
    let c = &a.common;
    let topology = Topology::new(&c.broker.prefix());
    let (conn, mut taken) = match take_dead_letters(&c.broker).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let publisher = match Publisher::open(&conn, topology.clone()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("exploder: {e}");
            finish(conn, taken).await;
            return ExitCode::from(1);
        }
    };
    // (tag, job, body) of what to replay; (id, why) refused.
    let mut chosen = Vec::new();
    let mut events = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for l in &taken.letters {
        if a.id.as_deref().is_some_and(|id| !l.matches(id)) {
            continue;
        }
        match &l.job {
            Ok(j) => chosen.push((l.tag, j.clone(), l.body.clone())),
            Err(_) if l.event => events.push((l.tag, l.id.clone(), l.body.clone())),
            Err(e) => refused.push((
                l.id.clone(),
                format!(
                    "its body does not decode ({e}): its kind and work queue are unknown, so it \
                     cannot be replayed by this version; inspect it with `exploder dlq show {}`",
                    l.id
                ),
            )),
        }
    }
    if let (Some(id), true) = (
        &a.id,
        chosen.is_empty() && events.is_empty() && refused.is_empty(),
    ) {
        finish(conn, taken).await;
        not_found(id, &c.broker.prefix());
        return ExitCode::from(1);
    }
    let mut replayed: Vec<(String, &'static str, String)> = Vec::new();
    let mut duplicates = 0usize;
    let mut failure = None;
    // Webhook events go back to the producers' events queue, as recorded;
    // jobs to the work exchange, under their kind.
    let reopen = Reopen::connect(&a).await;
    let events = events
        .into_iter()
        .map(|(tag, id, body)| (tag, id, None, body));
    let jobs = chosen
        .into_iter()
        .map(|(tag, job, body)| (tag, job.id().to_string(), Some(job), body));
    for (tag, id, job, body) in events.chain(jobs) {
        if failure.is_some() {
            break;
        }
        // One dead-lettered twice (a redelivery) is one: publish it once,
        // remove every copy.
        if replayed.iter().any(|(r, ..)| *r == id) {
            if let Err(e) = taken.ack(tag).await {
                failure = Some(format!("removing a copy of {id}: {e}"));
                break;
            }
            duplicates += 1;
            continue;
        }
        let (exchange, routing_key, queue, kind, digest, what) = match &job {
            None => (
                String::new(),
                topology.events_queue(),
                topology.events_queue(),
                "event",
                String::new(),
                "webhook event".to_string(),
            ),
            Some(job) => {
                reopen.forget_failure(job).await;
                let kind = job.kind();
                let digest = job.digest().to_string();
                (
                    topology.work_exchange(),
                    kind.as_str().to_string(),
                    topology.work_queue(kind),
                    kind.as_str(),
                    digest.clone(),
                    format!("{} {digest}", kind.as_str()),
                )
            }
        };
        // Fresh headers: publish_raw sets the schema version, message_id
        // and persistence; attempts, waits and the error are gone.
        let published = publisher
            .publish_raw(&exchange, &routing_key, &body, &id, FieldTable::default())
            .await;
        if let Err(e) = published {
            failure = Some(format!("replaying {id}: {e}"));
            break;
        }
        if let Err(e) = taken.ack(tag).await {
            failure = Some(format!(
                "{id} was replayed but removing it from the dead-letter queue failed ({e}); \
                 it will be listed again (replaying it twice is harmless)"
            ));
            replayed.push((id, kind, digest));
            break;
        }
        if c.output == Output::Text {
            println!("replayed {id} ({what}) to {queue}");
        }
        replayed.push((id, kind, digest));
    }
    let settled = finish(conn, taken).await;
    for (id, why) in &refused {
        eprintln!("exploder: not replaying {id}: {why}");
    }
    if let Some(f) = &failure {
        eprintln!("exploder: {f}");
    }
    match c.output {
        Output::Json => print_json(&json!({
            "replayed": replayed.len(),
            "duplicates_removed": duplicates,
            "jobs": replayed
                .iter()
                .map(|(id, kind, digest)| json!({"id": id, "kind": kind, "digest": (!digest.is_empty()).then_some(digest)}))
                .collect::<Vec<_>>(),
            "refused": refused
                .iter()
                .map(|(id, why)| json!({"id": id, "reason": why}))
                .collect::<Vec<_>>(),
            "error": failure,
        })),
        Output::Text => {
            let n = replayed.len();
            println!(
                "replayed {n} dead letter{}{}{}",
                if n == 1 { "" } else { "s" },
                match duplicates {
                    0 => String::new(),
                    d => format!(
                        " ({d} duplicate cop{} removed)",
                        if d == 1 { "y" } else { "ies" }
                    ),
                },
                if refused.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} refused, still in {}",
                        refused.len(),
                        topology.dead_letters()
                    )
                }
            );
        }
    }
    if failure.is_none() && refused.is_empty() && settled {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn dlq_purge(a: DlqPurgeArgs) -> ExitCode {
    let c = &a.common;
    let queue = Topology::new(&c.broker.prefix()).dead_letters();
    if !a.yes {
        eprintln!(
            "exploder: refusing to purge {queue} without --yes: it deletes every dead letter for \
             good (look first with `exploder dlq list`, replay with `exploder dlq replay --all`)"
        );
        return ExitCode::from(2);
    }
    let conn = match connect(&c.broker.amqp_url(), c.broker.connect_timeout).await {
        Ok(conn) => conn,
        Err(e) => return cannot_reach_broker(&c.broker, &e),
    };
    let purged = async {
        let channel = conn.create_channel().await?;
        // Passive first: purging a missing queue should say so plainly.
        inspect_queue(&channel, &queue).await?;
        let n = channel
            .queue_purge(
                ShortString::from(queue.as_str()),
                QueuePurgeOptions::default(),
            )
            .await?;
        let _ = channel.close(200, "purged".into()).await;
        Ok::<u32, lapin::Error>(n)
    }
    .await;
    let _ = conn.close(200, "bye".into()).await;
    match purged {
        Ok(n) => {
            match c.output {
                Output::Json => print_json(&json!({"queue": queue, "purged": n})),
                Output::Text => println!(
                    "purged {n} dead letter{} from {queue}",
                    if n == 1 { "" } else { "s" }
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "exploder: purging {queue}: {e} (does it exist? run `exploder topology apply` with the same EXPLODER_PREFIX)"
            );
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_become_json() {
        let mut t = FieldTable::default();
        t.insert("s".into(), AMQPValue::LongString("text".into()));
        t.insert("n".into(), AMQPValue::LongLongInt(3));
        t.insert(
            "a".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
        );
        t.insert("b".into(), AMQPValue::ByteArray(vec![0xab, 1].into()));
        assert_eq!(
            table_json(&t),
            json!({"s": "text", "n": 3, "a": [true], "b": "ab01"})
        );
    }
}
