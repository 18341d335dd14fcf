//! Every exchange, queue and binding exploder uses, as data, and applying or
//! verifying it against a broker.
//!
//! ```text
//!                 ┌──────────────── {p}exploder.work (direct) ────────────────┐
//!   rk "layer" ──►│ {p}exploder.layer  quorum, x-delivery-limit, DLX → dead  │
//!   rk "image" ──►│ {p}exploder.image  quorum, x-delivery-limit, DLX → dead  │
//!   rk "export"──►│ {p}exploder.export quorum, x-delivery-limit, DLX → dead  │
//!                 └───────────────────────────────────────────────────────────┘
//!   {p}exploder.backoff.<kind>.<tier>  quorum, TTL = tier; dead-letters (at least
//!                                      once) back to work/<kind>
//!   {p}exploder.dead (fanout) ──► {p}exploder.dead (queue, keeps the reason in headers)
//!   {p}exploder.events  quorum; webhook events recorded before they are
//!                       answered, consumed by the producers (default exchange);
//!                       the producers count redeliveries and dead-letter past
//!                       their limit (`protocol::route_redelivered_event`): its
//!                       first declaration had no x-delivery-limit, and queue
//!                       arguments cannot change in place, so it keeps none
//! ```
//!
//! Declaring is idempotent: the same declarations twice do nothing; a queue
//! that exists with other arguments is refused by the broker (406), which
//! `verify` reports as a mismatch instead of papering over it.
//!
//! # Why the backoff tiers are quorum queues
//!
//! Jobs wait in a tier (an image waiting for its layers, a transient failure
//! backing off) until their TTL expires and the broker dead-letters them
//! back to their work queue. The first topology used classic queues for
//! the tiers, and a classic queue dead-letters *at most once*: at a broker
//! restart it expires what waited while the node was starting and routes it
//! to quorum work queues that are not running yet, and the messages are
//! gone without a trace (reproduced on RabbitMQ 3.10: 20 of 20 lost). A
//! quorum tier with `x-dead-letter-strategy: at-least-once` (which needs
//! `x-overflow: reject-publish`) keeps each message until its work queue
//! has confirmed it. Queue types cannot change in place, so the tiers have
//! new names; `apply` deletes the old classic ones once they are empty
//! (until then they drain into the work queues by themselves).
//!
//! # The delivery limit
//!
//! Work queues carry `x-delivery-limit` [`BROKER_DELIVERY_LIMIT`] as they
//! always have (a queue's arguments cannot change, and a policy cannot
//! raise it: when both are set, RabbitMQ applies the lower). The limit that
//! matters is the workers' own (`--delivery-limit`, default
//! [`DEFAULT_DELIVERY_LIMIT`]): a worker that receives a redelivered job
//! counts the interruption in the job's headers and puts it back as a fresh
//! message, so the broker's counter never gets far. The broker's limit is
//! the backstop for a message that kills workers before they can count it.

use std::time::Duration;

use exploder_common::job::JobKind;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ExchangeKind};

/// The events queue's name after the prefix.
pub const EVENTS_QUEUE: &str = "exploder.events";

/// How many times the broker delivers one message before it dead-letters
/// it: the backstop (see the module documentation). Unchanged since the
/// first topology, so existing queues keep matching their declaration.
pub const BROKER_DELIVERY_LIMIT: i64 = 5;

/// How many interrupted deliveries (the worker holding the job died or
/// lost the broker) a job survives before workers dead-letter it:
/// RabbitMQ 4's default delivery limit. Workers' `--delivery-limit`.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Backoff tiers for waiting and transient failures: a job waits in the
/// tier's queue, then returns to its work queue.
pub const RETRY_TIERS: &[(&str, Duration)] = &[
    ("5s", Duration::from_secs(5)),
    ("30s", Duration::from_secs(30)),
    ("5m", Duration::from_secs(300)),
];

/// The names and arguments of one fleet's topology.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
}

/// One thing to declare.
#[derive(Clone, Debug)]
pub enum Declaration {
    Exchange {
        name: String,
        kind: ExchangeKind,
    },
    Queue {
        name: String,
        args: FieldTable,
    },
    Binding {
        queue: String,
        exchange: String,
        routing_key: String,
    },
}

impl Declaration {
    pub fn describe(&self) -> String {
        match self {
            Declaration::Exchange { name, .. } => format!("exchange {name}"),
            Declaration::Queue { name, .. } => format!("queue {name}"),
            Declaration::Binding {
                queue,
                exchange,
                routing_key,
            } => format!("binding {exchange} --{routing_key}--> {queue}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("declaring {what}: {source}")]
pub struct TopologyError {
    pub what: String,
    #[source]
    pub source: lapin::Error,
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Topology {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The direct exchange jobs are published to, routed by kind.
    pub fn work_exchange(&self) -> String {
        format!("{}exploder.work", self.prefix)
    }

    pub fn work_queue(&self, kind: JobKind) -> String {
        format!("{}exploder.{}", self.prefix, kind.as_str())
    }

    /// The backoff tier `tier` (a name of [`RETRY_TIERS`]) of `kind`.
    pub fn retry_queue(&self, kind: JobKind, tier: &str) -> String {
        format!("{}exploder.backoff.{}.{tier}", self.prefix, kind.as_str())
    }

    /// The classic retry queues of the first topology (see the module
    /// documentation), deleted by [`Topology::apply`] once empty. (Export
    /// jobs came later: they never had any.)
    pub fn legacy_retry_queues(&self) -> Vec<String> {
        let mut out = Vec::new();
        for kind in [JobKind::Layer, JobKind::Image] {
            for (tier, _) in RETRY_TIERS {
                out.push(format!(
                    "{}exploder.retry.{}.{tier}",
                    self.prefix,
                    kind.as_str()
                ));
            }
        }
        out
    }

    /// Both the dead-letter exchange and its queue.
    pub fn dead_letters(&self) -> String {
        format!("{}exploder.dead", self.prefix)
    }

    /// The producers' queue of webhook events: each accepted event is
    /// recorded here (published with a confirm) before its request is
    /// answered, and reconciled by whichever producer consumes it
    /// (published through the default exchange: no binding).
    pub fn events_queue(&self) -> String {
        format!("{}{EVENTS_QUEUE}", self.prefix)
    }

    /// The events queue's declaration (producers declare it themselves
    /// too, so a fleet whose topology predates it still takes events).
    pub fn events_declaration(&self) -> Declaration {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        Declaration::Queue {
            name: self.events_queue(),
            args,
        }
    }

    /// Declares one thing (idempotent).
    pub async fn declare_one(
        &self,
        conn: &Connection,
        d: &Declaration,
    ) -> Result<(), TopologyError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|source| TopologyError {
                what: "a channel".into(),
                source,
            })?;
        declare(&channel, d, false)
            .await
            .map_err(|source| TopologyError {
                what: d.describe(),
                source,
            })?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Every queue, for status and cleanup.
    pub fn queues(&self) -> Vec<String> {
        self.declarations()
            .into_iter()
            .filter_map(|d| match d {
                Declaration::Queue { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// The whole topology, in the order it must be declared.
    pub fn declarations(&self) -> Vec<Declaration> {
        let mut out = vec![
            Declaration::Exchange {
                name: self.work_exchange(),
                kind: ExchangeKind::Direct,
            },
            Declaration::Exchange {
                name: self.dead_letters(),
                kind: ExchangeKind::Fanout,
            },
        ];
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        out.push(Declaration::Queue {
            name: self.dead_letters(),
            args: dead_args,
        });
        out.push(Declaration::Binding {
            queue: self.dead_letters(),
            exchange: self.dead_letters(),
            routing_key: String::new(),
        });
        for kind in JobKind::ALL {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), text("quorum"));
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT),
            );
            args.insert("x-dead-letter-exchange".into(), text(&self.dead_letters()));
            out.push(Declaration::Queue {
                name: self.work_queue(kind),
                args,
            });
            out.push(Declaration::Binding {
                queue: self.work_queue(kind),
                exchange: self.work_exchange(),
                routing_key: kind.as_str().to_string(),
            });
            for (tier, ttl) in RETRY_TIERS {
                let mut args = FieldTable::default();
                args.insert("x-queue-type".into(), text("quorum"));
                args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                args.insert("x-overflow".into(), text("reject-publish"));
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(ttl.as_millis() as i64),
                );
                args.insert("x-dead-letter-exchange".into(), text(&self.work_exchange()));
                args.insert("x-dead-letter-routing-key".into(), text(kind.as_str()));
                out.push(Declaration::Queue {
                    name: self.retry_queue(kind, tier),
                    args,
                });
            }
        }
        out.push(self.events_declaration());
        out
    }

    /// Declares everything; a no-op when it already exists as declared.
    pub async fn apply(&self, conn: &Connection) -> Result<(), TopologyError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|source| TopologyError {
                what: "a channel".into(),
                source,
            })?;
        for d in self.declarations() {
            declare(&channel, &d, false)
                .await
                .map_err(|source| TopologyError {
                    what: d.describe(),
                    source,
                })?;
        }
        self.retire_legacy_queues(conn).await;
        Ok(())
    }

    /// Deletes the first topology's classic retry queues that are empty.
    /// One that still holds jobs is left to drain into its work queue (its
    /// TTL and dead-letter exchange still work) and retired by a later
    /// apply; every worker applies the topology when it connects.
    async fn retire_legacy_queues(&self, conn: &Connection) {
        for name in self.legacy_retry_queues() {
            // A refused delete (not empty) closes its channel: one each.
            let Ok(channel) = conn.create_channel().await else {
                return;
            };
            let deleted = channel
                .queue_delete(
                    ShortString::from(name.as_str()),
                    QueueDeleteOptions {
                        if_empty: true,
                        ..Default::default()
                    },
                )
                .await;
            match deleted {
                Ok(_) => {
                    let _ = channel.close(200, "retired".into()).await;
                }
                Err(e) => {
                    tracing::info!(queue = %name, "old retry queue kept until it drains: {e}")
                }
            }
        }
    }

    /// Checks that everything exists as declared, without creating
    /// anything. Returns one line per problem (empty: all good).
    pub async fn verify(&self, conn: &Connection) -> Result<Vec<String>, lapin::Error> {
        let mut problems = Vec::new();
        for d in self.declarations() {
            // A failed check closes its channel: one channel per check.
            let channel = conn.create_channel().await?;
            if matches!(d, Declaration::Binding { .. }) {
                // Bindings cannot be checked passively over AMQP;
                // re-binding is idempotent and only runs when both ends
                // exist (checked before).
                if let Err(e) = declare(&channel, &d, false).await {
                    problems.push(format!("{}: {e}", d.describe()));
                }
                continue;
            }
            if let Err(e) = declare(&channel, &d, true).await {
                problems.push(format!(
                    "{} is missing ({e}); run `exploder topology apply`",
                    d.describe()
                ));
                continue;
            }
            // Exists: an active declare with our arguments succeeds only if
            // the broker's match.
            let channel = conn.create_channel().await?;
            if let Err(e) = declare(&channel, &d, false).await {
                problems.push(format!(
                    "{} exists with other arguments ({e}); delete it or use another EXPLODER_PREFIX",
                    d.describe()
                ));
            }
        }
        Ok(problems)
    }
}

/// A queue's depth and consumers, without creating it (a passive declare:
/// a missing queue is an error, and the broker closes the channel).
pub async fn inspect_queue(
    channel: &lapin::Channel,
    name: &str,
) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

async fn declare(
    channel: &lapin::Channel,
    d: &Declaration,
    passive: bool,
) -> Result<(), lapin::Error> {
    match d {
        Declaration::Exchange { name, kind } => {
            channel
                .exchange_declare(
                    ShortString::from(name.as_str()),
                    kind.clone(),
                    ExchangeDeclareOptions {
                        passive,
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
        }
        Declaration::Queue { name, args } => channel
            .queue_declare(
                ShortString::from(name.as_str()),
                QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                },
                args.clone(),
            )
            .await
            .map(|_| ()),
        Declaration::Binding {
            queue,
            exchange,
            routing_key,
        } => {
            channel
                .queue_bind(
                    ShortString::from(queue.as_str()),
                    ShortString::from(exchange.as_str()),
                    ShortString::from(routing_key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_carries_the_prefix() {
        let t = Topology::new("t1-");
        for d in t.declarations() {
            let name = match &d {
                Declaration::Exchange { name, .. } | Declaration::Queue { name, .. } => name,
                Declaration::Binding { queue, .. } => queue,
            };
            assert!(name.starts_with("t1-exploder."), "{}", d.describe());
        }
        assert_eq!(t.work_queue(JobKind::Layer), "t1-exploder.layer");
        assert_eq!(
            t.retry_queue(JobKind::Image, "30s"),
            "t1-exploder.backoff.image.30s"
        );
    }
}
