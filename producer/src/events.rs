//! The events queue: webhook events recorded before they are answered,
//! reconciled behind the answer.
//!
//! A registry's notification sender waits a few seconds for an answer
//! (distribution: its endpoint's `timeout`, 5 s in our docs) and retries
//! what it did not get a 2xx for. A reconcile can take longer than that (a
//! registry that is down, slow or stalled), so the webhook does not
//! reconcile in the request:
//!
//! 1. the request is authenticated, read and classified synchronously
//!    (malformed: 400; not allowed: `ignored`);
//! 2. each accepted event is [`record`]ed: published, persistent, to the
//!    durable quorum queue `<prefix>exploder.events` and confirmed by the
//!    broker within [`RECORD_PATIENCE`]. A broker that cannot take it is
//!    the one reason for a 503;
//! 3. whichever producer consumes it ([`consume`]) hands it to the
//!    [`Scheduler`] (one reconcile per link at a time, retries with
//!    backoff), writes the outcomes to Redis once it is settled, and only
//!    then acknowledges it: a producer that dies mid-way leaves the event
//!    to another (the broker redelivers what was not acknowledged);
//! 4. the request waits up to `answer_within` for those outcomes
//!    ([`outcomes`]): settled in time, it answers them as before (200);
//!    otherwise it answers 202 with the event `pending`, and the reconcile
//!    goes on.
//!
//! Each event is delivered to one consumer, so one producer reconciles it
//! (again only after a crash, and reconciling is idempotent).
//!
//! A redelivered event (its producer died or lost the broker) is counted
//! and put back before anything else is done with it, as workers do with
//! jobs (`queue::protocol::route_redelivered_event`): past the delivery
//! limit it goes to the dead-letter queue with the reason, so an event
//! whose reconcile kills producers (a panic, an OOM kill) ends there
//! instead of crash-looping every producer, and `exploder dlq replay` puts
//! it back.

use std::future::Future;
use std::time::{Duration, Instant};

use exploder_common::digest::Digest;
use exploder_common::job::LinkTarget;
use exploder_common::reference::Reference;
use exploder_common::store::{DiskFormat, ImageName};
use exploder_queue::connect::within;
use exploder_queue::protocol::{Route, route_redelivered_event};
use exploder_queue::publish::PublishError;
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::oneshot;

use crate::event::{Event, Outcome, TagEvent};
use crate::reconcile::Reconciler;
use crate::scheduler::Scheduler;

/// How long an event's outcomes stay in Redis for the request waiting on
/// them.
pub const OUTCOME_TTL: Duration = Duration::from_secs(300);
/// Events one producer holds unacknowledged (being reconciled or waiting
/// for a retry); the rest wait in the queue.
pub const PREFETCH: u16 = 64;
/// How often a waiting request looks for its outcomes.
const POLL: Duration = Duration::from_millis(20);

/// One recorded event, as it travels in the queue (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    id: String,
    /// The endpoint whose event it is (the metrics `source` label).
    source: String,
    event: Wire,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Tag {
        upstream: WireRef,
        link: LinkTarget,
        hint: Option<Digest>,
        exports: Vec<DiskFormat>,
    },
    Gone {
        link: LinkTarget,
    },
    ManifestDeleted {
        upstream: WireRef,
        namespace: String,
        image: String,
        digest: Digest,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WireRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl From<&Reference> for WireRef {
    fn from(r: &Reference) -> Self {
        WireRef {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            tag: r.tag.clone(),
            digest: r.digest.clone(),
        }
    }
}

impl From<WireRef> for Reference {
    fn from(r: WireRef) -> Self {
        Reference {
            registry: r.registry,
            repository: r.repository,
            tag: r.tag,
            digest: r.digest,
        }
    }
}

impl From<&Event> for Wire {
    fn from(e: &Event) -> Self {
        match e {
            Event::Tag(t) => Wire::Tag {
                upstream: (&t.upstream).into(),
                link: t.link.clone(),
                hint: t.hint.clone(),
                exports: t.exports.clone(),
            },
            Event::Gone { link } => Wire::Gone { link: link.clone() },
            Event::ManifestDeleted {
                upstream,
                name,
                digest,
            } => Wire::ManifestDeleted {
                upstream: upstream.into(),
                namespace: name.namespace.clone(),
                image: name.image.clone(),
                digest: digest.clone(),
            },
        }
    }
}

impl From<Wire> for Event {
    fn from(w: Wire) -> Self {
        match w {
            Wire::Tag {
                upstream,
                link,
                hint,
                exports,
            } => Event::Tag(TagEvent {
                upstream: upstream.into(),
                link,
                hint,
                exports,
            }),
            Wire::Gone { link } => Event::Gone { link },
            Wire::ManifestDeleted {
                upstream,
                namespace,
                image,
                digest,
            } => Event::ManifestDeleted {
                upstream: upstream.into(),
                name: ImageName { namespace, image },
                digest,
            },
        }
    }
}

/// A new event id: unique enough across producers and restarts.
fn new_id(source: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = sha2::Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(COUNT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .as_bytes(),
    );
    format!("{source}-{}", &hex::encode(h.finalize())[..24])
}

#[derive(Debug, thiserror::Error)]
#[error("cannot record the event: {0}")]
pub struct RecordError(String);

/// How long recording one event may take (connecting included) before
/// the request is answered 503: a broker that neither refuses nor
/// confirms must not hold the request either.
pub const RECORD_PATIENCE: Duration = Duration::from_secs(5);

/// Records `event` of the endpoint `source` in the events queue (a
/// persistent message the broker confirmed) within [`RECORD_PATIENCE`].
/// Returns its id.
pub async fn record(
    reconciler: &Reconciler,
    source: &str,
    event: &Event,
) -> Result<String, RecordError> {
    tokio::time::timeout(RECORD_PATIENCE, record_now(reconciler, source, event))
        .await
        .unwrap_or_else(|_| {
            Err(RecordError(format!(
                "the broker did not confirm it within {RECORD_PATIENCE:?}"
            )))
        })
}

async fn record_now(
    reconciler: &Reconciler,
    source: &str,
    event: &Event,
) -> Result<String, RecordError> {
    let id = new_id(source);
    let body = serde_json::to_vec(&Recorded {
        id: id.clone(),
        source: source.to_string(),
        event: event.into(),
    })
    .expect("an event serializes");
    let open = reconciler
        .broker
        .get()
        .await
        .map_err(|e| RecordError(e.to_string()))?;
    let topology = open.publisher.topology();
    let queue = topology.events_queue();
    let publish = || {
        open.publisher
            .publish_raw("", &queue, &body, &id, FieldTable::default())
    };
    let mut published = publish().await;
    if matches!(published, Err(PublishError::Unroutable { .. })) {
        // A fleet whose topology predates the queue: declare it, once
        // (within the patience `record` gives it all).
        topology
            .declare_one(&open.conn, &topology.events_declaration())
            .await
            .map_err(|e| RecordError(e.to_string()))?;
        published = publish().await;
    }
    if let Err(e) = published {
        if !matches!(e, PublishError::Unroutable { .. }) {
            reconciler.broker.reset().await;
        }
        return Err(RecordError(e.to_string()));
    }
    Ok(id)
}

/// The outcomes of the events `ids` (in order) as far as they are settled
/// by `deadline`: `None` for one that is not.
pub async fn outcomes(
    reconciler: &Reconciler,
    ids: &[String],
    deadline: Instant,
) -> Vec<Option<Vec<Outcome>>> {
    let mut found: Vec<Option<Vec<Outcome>>> = vec![None; ids.len()];
    loop {
        for (id, slot) in ids.iter().zip(found.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Redis unavailable or slow: the event is pending, not lost.
            if let Ok(Ok(Some(bytes))) =
                tokio::time::timeout(left, reconciler.index.event_outcome(id)).await
            {
                *slot = serde_json::from_slice(&bytes).ok();
            }
        }
        if found.iter().all(Option::is_some) || Instant::now() + POLL > deadline {
            return found;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Consumes the events queue until `stop` resolves: every event goes to
/// `scheduler`, and is acknowledged once it is settled. Reconnects (with
/// backoff) when the broker goes away.
/// A redelivered event is counted and put back, and dead-lettered past
/// `delivery_limit` interruptions.
pub async fn consume(scheduler: Scheduler, delivery_limit: u32, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            result = session(&scheduler, delivery_limit, &mut failures) => {
                let e = result.expect_err("a session ends only on an error");
                // 1 s, 2 s, then every 4 s: events wait in the queue
                // meanwhile, and their requests answer `pending`.
                let delay = crate::scheduler::backoff(failures.min(2));
                failures += 1;
                tracing::warn!("events queue: {e}; consuming again in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut stop => return,
                }
            }
            _ = &mut stop => return,
        }
    }
}

/// One connection's consumer; `failures` is reset once it consumes.
async fn session(
    scheduler: &Scheduler,
    delivery_limit: u32,
    failures: &mut u32,
) -> Result<std::convert::Infallible, String> {
    let reconciler = scheduler.reconciler();
    let open = reconciler.broker.get().await.map_err(|e| e.to_string())?;
    let deadline = reconciler.broker.options().timeout;
    let topology = open.publisher.topology().clone();
    tokio::time::timeout(
        deadline,
        topology.declare_one(&open.conn, &topology.events_declaration()),
    )
    .await
    .map_err(|_| format!("RabbitMQ did not declare the events queue within {deadline:?}"))?
    .map_err(|e| e.to_string())?;
    let channel = within(deadline, "opening a channel", open.conn.create_channel())
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    within(
        deadline,
        "setting the prefetch",
        channel.basic_qos(PREFETCH, BasicQosOptions::default()),
    )
    .await
    .map_err(|e| format!("setting the prefetch: {e}"))?;
    let queue = topology.events_queue();
    let mut deliveries = within(
        deadline,
        "a consume",
        channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|e| format!("consuming {queue}: {e}"))?;
    tracing::info!(%queue, "consuming webhook events");
    *failures = 0;
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery.map_err(|e| format!("consuming {queue}: {e}"))?;
        if delivery.redelivered {
            // Counted and put back before anything else: an event that
            // kills its producer must not run again before it is counted.
            requeue_redelivered(
                &open.publisher,
                &topology,
                delivery,
                delivery_limit,
                deadline,
            )
            .await;
            continue;
        }
        let recorded: Recorded = match serde_json::from_slice(&delivery.data) {
            Ok(r) => r,
            Err(e) => {
                // Not ours to understand (a newer producer's format): it
                // would fail the same way every time.
                tracing::error!(%queue, "dropping an event that does not decode: {e}");
                let ack = delivery.acker.ack(BasicAckOptions::default());
                let _ = within(deadline, "an ack", ack).await;
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        scheduler.submit(&recorded.source, recorded.event.into(), Some(tx));
        let index = reconciler.index.clone();
        let acker = delivery.acker;
        let id = recorded.id;
        tokio::spawn(async move {
            // The scheduler never drops a waiter unsettled while it runs.
            let Ok(outcomes) = rx.await else { return };
            let json = serde_json::to_vec(&outcomes).expect("outcomes serialize");
            if let Err(e) = index.put_event_outcome(&id, &json, OUTCOME_TTL).await {
                // Only the waiting request misses it (it answers pending).
                tracing::warn!(event = %id, "recording the event's outcome: {e}");
            }
            if let Err(e) = within(deadline, "an ack", acker.ack(BasicAckOptions::default())).await
            {
                // The broker will deliver it again; reconciling is idempotent.
                tracing::warn!(event = %id, "acknowledging the event: {e}");
            }
        });
    }
    Err(format!("the broker closed the consumer of {queue}"))
}

/// Puts a redelivered event back in the events queue as a fresh message
/// counting the interruption, or past `delivery_limit` in the dead-letter
/// queue with the reason; then acknowledges the delivery (nacks it back if
/// its copy could not be published).
async fn requeue_redelivered(
    publisher: &exploder_queue::publish::Publisher,
    topology: &exploder_queue::topology::Topology,
    delivery: Delivery,
    delivery_limit: u32,
    deadline: Duration,
) {
    let received = delivery.properties.headers().clone().unwrap_or_default();
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "?".into());
    let (route, carried) = route_redelivered_event(topology, &received, delivery_limit);
    let (exchange, routing_key) = match &route {
        Route::DeadLetter { reason } => {
            tracing::error!(event = %id, %reason, "dead-lettering the event");
            (topology.dead_letters(), String::new())
        }
        Route::Republish {
            exchange,
            routing_key,
        } => {
            tracing::warn!(event = %id, "the event was redelivered (the producer reconciling it died or lost the broker): counted and put back");
            (exchange.clone(), routing_key.clone())
        }
        Route::Done => unreachable!("a redelivered event is put back or dead"),
    };
    let published = publisher
        .publish_raw(&exchange, &routing_key, &delivery.data, &id, carried)
        .await;
    let settled = match published {
        Ok(()) => {
            within(
                deadline,
                "an ack",
                delivery.acker.ack(BasicAckOptions::default()),
            )
            .await
        }
        Err(e) => {
            tracing::warn!(event = %id, "could not put the redelivered event back ({e}); requeueing it");
            let nack = delivery.acker.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            });
            within(deadline, "a nack", nack).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(event = %id, "settling the redelivered event: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_event_survives_the_queue() {
        let upstream = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        let link = crate::event::default_link(&upstream);
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let events = [
            Event::Tag(TagEvent {
                upstream: upstream.clone(),
                link: link.clone(),
                hint: Some(digest.clone()),
                exports: vec![DiskFormat::Ext4],
            }),
            Event::Gone { link },
            Event::ManifestDeleted {
                upstream: Reference {
                    tag: None,
                    ..upstream.clone()
                },
                name: ImageName::from_repository("team/app"),
                digest,
            },
        ];
        for e in events {
            let json = serde_json::to_vec(&Wire::from(&e)).unwrap();
            let back: Wire = serde_json::from_slice(&json).unwrap();
            assert_eq!(Event::from(back), e);
        }
    }

    #[test]
    fn ids_differ() {
        assert_ne!(new_id("registry"), new_id("registry"));
    }
}
