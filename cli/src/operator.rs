//! Operator commands: `exploder status` (queues, dead letters, the Redis
//! index) and `exploder dlq list|show|replay|purge` (the dead-letter queue).
//!
//! What AMQP can and cannot tell:
//! - a passive `queue.declare` returns a queue's *ready* messages and its
//!   consumers, not the messages delivered and not yet acked; `status` shows
//!   "unacked" only when the management API answers (by default at
//!   `http://127.0.0.1:15672`, with the AMQP URL's credentials), and leaves
//!   it out otherwise;
//! - AMQP has no "peek": `dlq list` and `dlq show` take every dead letter
//!   with `basic.get` *without* acking it, then give them all back with one
//!   `basic.nack(requeue)`. Until then the messages are unacked on this
//!   command's channel; if the command dies the broker requeues them by
//!   itself, so nothing is ever lost. (The dead-letter queue is a quorum
//!   queue: every requeue adds one to the broker's `x-delivery-count` of the
//!   message, which is why that header is not shown as "attempts".)
//!
//! Identifying a dead letter: the job id (the decoded body's, which is also
//! the `message_id` the fleet publishes with); for a body that does not
//! decode, its `message_id` when it has a real one, else `body-` and the
//! first 16 hex digits of the body's sha256 (the worker dead-letters
//! undecodable bodies with the id `?`).
//!
//! Replaying is at-least-once: the job is published (confirmed) to the work
//! exchange first and only then acked away from the dead-letter queue; a
//! crash in between leaves one copy in each, and every handler is
//! idempotent.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use exploder_common::digest::Digest;
use exploder_common::job::{self, DecodeError, Job, JobKind};
use exploder_queue::connect::{connect, redact};
use exploder_queue::publish::Publisher;
use exploder_queue::topology::{RETRY_TIERS, Topology, inspect_queue};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Output;
use crate::fleet::{BrokerArgs, RedisArgs, parse_duration};

/// Header the worker puts the failure reason in.
const ERROR_HEADER: &str = "x-exploder-error";
/// Header the worker puts the job's work queue in.
const QUEUE_HEADER: &str = "x-exploder-queue";
/// Header of the retry count (transient failures).
const ATTEMPT_HEADER: &str = "x-exploder-attempt";
/// RabbitMQ's own dead-lettering record.
const X_DEATH: &str = "x-death";

fn cannot_reach_broker(broker: &BrokerArgs, e: &lapin::Error) -> ExitCode {
    eprintln!(
        "exploder: cannot reach RabbitMQ at {} ({e}); check EXPLODER_AMQP_URL and that the broker runs",
        redact(&broker.amqp_url)
    );
    ExitCode::from(1)
}

fn print_json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

/// Rows as columns separated by two spaces, each as wide as its widest
/// cell (the last column is never padded), one line per row.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = String::new();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        table.push_str(out.trim_end());
        table.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    table
}

// ---------------------------------------------------------------------------
// status

/// `exploder status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// RabbitMQ's management API, asked for unacked counts only; when it
    /// does not answer (the plugin is optional) unacked is left out.
    #[arg(
        long,
        env = "EXPLODER_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    management_url: String,
    /// Output format (json: one object; with --watch one object per line).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// Refresh until interrupted (Ctrl-C).
    #[arg(short, long)]
    watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("the interval must be more than 0".into()),
        d => Ok(d),
    }
}

#[derive(Serialize)]
struct QueueStatus {
    name: String,
    /// "layer", "image", or null for the dead-letter queue.
    kind: Option<&'static str>,
    /// "work", "retry" or "dead".
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
    /// What could not be read (missing queues, Redis down).
    errors: Vec<String>,
}

/// The fleet's queues in display order: per kind the work queue and its
/// retry tiers, then the dead letters.
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
    for kind in [JobKind::Layer, JobKind::Image] {
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
    out
}

/// One snapshot. `Err` only when the broker connection itself is gone.
async fn collect_status(conn: &Connection, a: &StatusArgs) -> Result<Status, lapin::Error> {
    let topology = Topology::new(&a.broker.prefix);
    let mut queues = status_queues(&topology);
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    let mut channel = conn.create_channel().await?;
    for q in &mut queues {
        let declared = inspect_queue(&channel, &q.name).await;
        match declared {
            Ok(info) => {
                q.exists = true;
                q.ready = Some(info.message_count());
                q.consumers = Some(info.consumer_count());
            }
            Err(e) if conn.status().connected() => {
                // 404: the broker closed this channel; carry on with a new one.
                tracing::debug!(queue = %q.name, "passive declare failed: {e}");
                missing.push(q.name.clone());
                channel = conn.create_channel().await?;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = channel.close(200, "status done".into()).await;
    if !missing.is_empty() {
        errors.push(format!(
            "missing queues: {} (run `exploder topology apply` with the same EXPLODER_PREFIX)",
            missing.join(", ")
        ));
    }
    let names: Vec<String> = queues.iter().map(|q| q.name.clone()).collect();
    let unacked =
        exploder_queue::management::unacked(&a.management_url, &a.broker.amqp_url, &names).await;
    let unacked_source = unacked.as_ref().map(|_| "management");
    if let Some(map) = unacked {
        for q in &mut queues {
            q.unacked = map.get(&q.name).copied();
        }
    }
    let dead_letters = queues.last().and_then(|q| q.ready);
    let (layers, claims) = match redis_counts(&a.redis.redis_url, &a.broker.prefix).await {
        Ok((l, c)) => (Some(l), Some(c)),
        Err(e) => {
            errors.push(format!(
                "cannot read Redis at {} ({e}); check EXPLODER_REDIS_URL",
                redact(&a.redis.redis_url)
            ));
            (None, None)
        }
    };
    Ok(Status {
        prefix: a.broker.prefix.clone(),
        queues,
        dead_letters,
        layers,
        claims,
        unacked_source,
        errors,
    })
}

/// Escapes Redis glob characters, so a prefix is matched literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// SCARD of the layers set and the number of claim keys (SCAN, never
/// KEYS: a big index must not block Redis). Key names as in
/// `exploder_queue::index`.
async fn redis_counts(url: &str, prefix: &str) -> redis::RedisResult<(u64, u64)> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let layers: u64 = redis::cmd("SCARD")
        .arg(format!("{prefix}exploder:layers"))
        .query_async(&mut con)
        .await?;
    let pattern = format!("{}exploder:claim:*", glob_escape(prefix));
    let mut claims = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        // SCAN may return a key twice: count distinct names.
        claims.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok((layers, claims.len() as u64))
}

fn cell<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
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
    if !with_unacked {
        out.push_str(
            "(READY counts messages waiting for a worker; messages being worked on (unacked) \
             need the management API)\n",
        );
    }
    out
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
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

pub async fn status(a: StatusArgs) -> ExitCode {
    let mut conn = match connect(&a.broker.amqp_url, a.broker.connect_timeout).await {
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
                redact(&a.broker.amqp_url),
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
                    redact(&a.broker.amqp_url)
                );
                let patience = a.interval.min(a.broker.connect_timeout);
                tokio::select! {
                    _ = &mut ctrl_c => return ExitCode::SUCCESS,
                    c = connect(&a.broker.amqp_url, patience) => {
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

// ---------------------------------------------------------------------------
// dlq

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
    #[arg(short, long, value_enum, default_value_t)]
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
pub struct DlqReplayArgs {
    /// The job id, as `exploder dlq list` shows it.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Replay every dead letter that decodes.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: DlqCommon,
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

/// One message of the dead-letter queue, taken and not yet settled.
struct DeadLetter {
    tag: u64,
    id: String,
    message_id: Option<String>,
    job: Result<Job, DecodeError>,
    /// "worker" (x-exploder-error, no x-death) or "broker" (x-death).
    by: Option<&'static str>,
    reason: Option<String>,
    /// The worker's last error when the broker dead-lettered the job.
    last_error: Option<String>,
    queue: Option<String>,
    attempts: Option<i64>,
    dead_at: Option<String>,
    content_type: Option<String>,
    headers: FieldTable,
    body: Vec<u8>,
}

fn header<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    headers.inner().get(name)
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn value_int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
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
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => json!(value_text(v)),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => json!(hex(b.as_slice())),
        AMQPValue::Void => Value::Null,
        other => json!(value_int(other)),
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

impl DeadLetter {
    fn new(d: Delivery) -> DeadLetter {
        let props = &d.properties;
        let headers = props.headers().clone().unwrap_or_default();
        let schema = header(&headers, job::SCHEMA_HEADER)
            .and_then(value_int)
            .and_then(|v| u16::try_from(v).ok());
        let job = job::decode(&d.data, schema);
        let message_id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .filter(|s| !s.is_empty());
        let id = match (&job, &message_id) {
            (Ok(j), _) => j.id().to_string(),
            (Err(_), Some(m)) if m != "?" => m.clone(),
            (Err(_), _) => format!("body-{}", &Digest::sha256_of(&d.data).hex()[..16]),
        };
        let error = header(&headers, ERROR_HEADER).and_then(value_text);
        // The most recent x-death entry comes first.
        let death = match header(&headers, X_DEATH) {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().find_map(|e| match e {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            }),
            _ => None,
        };
        // The worker republishes with fresh headers (no x-death): an x-death
        // means the broker dead-lettered the message itself, and any
        // x-exploder-error is the last transient failure before that.
        let (by, reason, last_error, queue) = match &death {
            Some(t) => (
                Some("broker"),
                header(t, "reason").and_then(value_text),
                error,
                header(t, "queue").and_then(value_text),
            ),
            None => (
                error.as_ref().map(|_| "worker"),
                error,
                None,
                header(&headers, QUEUE_HEADER).and_then(value_text),
            ),
        };
        let dead_at = death
            .as_ref()
            .and_then(|t| header(t, "time"))
            .and_then(value_int)
            .map(exploder_common::history::rfc3339);
        DeadLetter {
            tag: d.delivery_tag,
            id,
            job,
            by,
            reason,
            last_error,
            queue,
            attempts: header(&headers, ATTEMPT_HEADER).and_then(value_int),
            dead_at,
            content_type: props.content_type().as_ref().map(|c| c.to_string()),
            message_id,
            headers,
            body: d.data,
        }
    }

    fn matches(&self, id: &str) -> bool {
        self.id == id || self.message_id.as_deref() == Some(id)
    }

    fn kind(&self) -> Option<JobKind> {
        self.job.as_ref().ok().map(Job::kind)
    }

    /// The reason as one line for a table.
    fn reason_line(&self) -> String {
        let mut s = match (self.by, &self.reason) {
            (Some("broker"), Some(r)) => format!("broker: {r}"),
            (_, Some(r)) => r.clone(),
            (_, None) => "(no reason recorded)".to_string(),
        };
        if let Some(e) = &self.last_error {
            s.push_str(&format!(" (last error: {e})"));
        }
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn summary_json(&self) -> serde_json::Map<String, Value> {
        let (decoded, decode_error) = match &self.job {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        let v = json!({
            "id": self.id,
            "message_id": self.message_id,
            "kind": self.kind().map(JobKind::as_str),
            "digest": self.job.as_ref().ok().map(|j| j.digest().to_string()),
            "decoded": decoded,
            "decode_error": decode_error,
            "reason": self.reason,
            "dead_lettered_by": self.by,
            "last_error": self.last_error,
            "queue": self.queue,
            "attempts": self.attempts,
            "dead_at": self.dead_at,
            "size": self.body.len(),
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        }
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
                Some(m) => letters.push(DeadLetter::new(m.delivery)),
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
    let conn = match connect(&broker.amqp_url, broker.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return Err(cannot_reach_broker(broker, &e)),
    };
    match Taken::take(&conn, &Topology::new(&broker.prefix)).await {
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
                .map(|l| Value::Object(l.summary_json()))
                .collect();
            print_json(&all);
        }
        Output::Text if taken.letters.is_empty() => {
            println!(
                "no dead letters in {}",
                Topology::new(&c.broker.prefix).dead_letters()
            );
        }
        Output::Text => {
            let rows: Vec<Vec<String>> = taken
                .letters
                .iter()
                .map(|l| {
                    vec![
                        l.id.clone(),
                        l.kind().map_or("-", JobKind::as_str).to_string(),
                        match &l.job {
                            Ok(j) => j.digest().to_string(),
                            Err(_) => "(undecodable)".to_string(),
                        },
                        cell(l.attempts),
                        l.queue.clone().unwrap_or_else(|| "-".into()),
                        match &l.job {
                            Ok(_) => l.reason_line(),
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
                let mut m = l.summary_json();
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
                field("kind:", l.kind().map_or("-", JobKind::as_str).to_string());
                match &l.job {
                    Ok(j) => field("digest:", j.digest().to_string()),
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
                    let v = match value_text(v) {
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
        not_found(&a.id, &c.broker.prefix);
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
    let topology = Topology::new(&c.broker.prefix);
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
    // (tag, id, kind, digest, body) of what to replay; (id, why) refused.
    let mut chosen = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for l in &taken.letters {
        if a.id.as_deref().is_some_and(|id| !l.matches(id)) {
            continue;
        }
        match &l.job {
            Ok(j) => chosen.push((
                l.tag,
                j.id().to_string(),
                j.kind(),
                j.digest().to_string(),
                l.body.clone(),
            )),
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
    if let (Some(id), true) = (&a.id, chosen.is_empty() && refused.is_empty()) {
        finish(conn, taken).await;
        not_found(id, &c.broker.prefix);
        return ExitCode::from(1);
    }
    let mut replayed: Vec<(String, JobKind, String)> = Vec::new();
    let mut duplicates = 0usize;
    let mut failure = None;
    for (tag, id, kind, digest, body) in chosen {
        // A job dead-lettered twice (a redelivery) is one job: publish it
        // once, remove every copy.
        if replayed.iter().any(|(r, ..)| *r == id) {
            if let Err(e) = taken.ack(tag).await {
                failure = Some(format!("removing a copy of {id}: {e}"));
                break;
            }
            duplicates += 1;
            continue;
        }
        // Fresh headers: publish_raw sets the schema version, message_id
        // and persistence; attempts, waits and the error are gone.
        let published = publisher
            .publish_raw(
                &topology.work_exchange(),
                kind.as_str(),
                &body,
                &id,
                FieldTable::default(),
            )
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
            println!(
                "replayed {id} ({kind} {digest}) to {}",
                topology.work_queue(kind)
            );
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
                .map(|(id, kind, digest)| json!({"id": id, "kind": kind.as_str(), "digest": digest}))
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
    let queue = Topology::new(&c.broker.prefix).dead_letters();
    if !a.yes {
        eprintln!(
            "exploder: refusing to purge {queue} without --yes: it deletes every dead letter for \
             good (look first with `exploder dlq list`, replay with `exploder dlq replay --all`)"
        );
        return ExitCode::from(2);
    }
    let conn = match connect(&c.broker.amqp_url, c.broker.connect_timeout).await {
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
    fn prefixes_are_matched_literally() {
        assert_eq!(glob_escape("a*b?[c]\\-"), "a\\*b\\?\\[c\\]\\\\-");
        assert_eq!(glob_escape("test-x-"), "test-x-");
    }

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
