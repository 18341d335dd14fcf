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

mod dlq;
mod status;

use std::process::ExitCode;

use serde::Serialize;

use exploder_args::BrokerArgs;
use exploder_queue::connect::redact;

pub use dlq::{DlqCommand, dlq};
pub use status::{StatusArgs, status};

pub(crate) fn cannot_reach_broker(broker: &BrokerArgs, e: &lapin::Error) -> ExitCode {
    if exploder_queue::connect::is_login_refused(e) {
        eprintln!(
            "exploder: RabbitMQ at {} refused the login (ACCESS_REFUSED): check the user and \
             password in EXPLODER_AMQP_URL (--amqp-url), and that the user may use the vhost",
            redact(&broker.amqp_url())
        );
        return ExitCode::from(1);
    }
    eprintln!(
        "exploder: cannot reach RabbitMQ at {} ({e}); check EXPLODER_AMQP_URL and that the broker runs",
        redact(&broker.amqp_url())
    );
    ExitCode::from(1)
}

pub(crate) fn print_json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

/// Rows as columns separated by two spaces, each as wide as its widest
/// cell (the last column is never padded), one line per row.
pub(crate) fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
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

/// A table cell: the value, or `-` when unknown.
pub(crate) fn cell<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}
