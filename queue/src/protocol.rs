//! What a job's outcome means on the wire: where the worker sends the job
//! next ([`route`]), and what a dead letter says about itself
//! ([`DeadLetter`]). The header names are in [`crate::headers`]; the queue
//! names in [`crate::topology`]. Workers decide outcomes, `exploder dlq`
//! reads dead letters: both go through this module, so the rules live in
//! one place.
//!
//! The rules:
//! - done: nothing is published (the delivery is acked);
//! - waiting (an image whose layers are not in yet): a copy to the first
//!   backoff tier, counting waits; past [`MAX_WAITS`], dead;
//! - transient failure: a copy to the next backoff tier, with the error;
//!   past the last tier, dead;
//! - interrupted (redelivered: its previous holder died or lost the
//!   broker): back to the work queue, counting interruptions; past the
//!   worker's delivery limit, dead;
//! - dead: to the dead-letter queue, with the reason and the work queue it
//!   came from.
//!
//! Webhook events (the producers' events queue) follow the interrupted
//! rule too ([`route_redelivered_event`]): a producer that receives a
//! redelivered event counts it and puts it back, and past its delivery
//! limit dead-letters it, so one payload that kills producers cannot keep
//! them crash-looping and every later event waiting behind it.

use exploder_common::digest::Digest;
use exploder_common::job::{self, DecodeError, Job, JobKind};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

use crate::headers;
use crate::topology::{RETRY_TIERS, Topology};

/// An image waits for its layers at most this many times (at the first
/// backoff tier's interval: about a day) before it is dead-lettered. Long
/// enough for any backlog; a layer that failed for good fails its images
/// at once instead.
pub const MAX_WAITS: i64 = 17_280;

/// What became of one delivery, as its handler saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Not yet possible (an image's layers are still being ingested).
    Wait(String),
    /// Failed in a way a later try may not meet.
    Transient(String),
    /// Failed for good.
    Dead(String),
    /// Redelivered by the broker: its previous holder died.
    Interrupted,
}

/// Where a settled job goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Nowhere: it is done.
    Done,
    /// A copy is published to `exchange` with `routing_key`.
    Republish {
        exchange: String,
        routing_key: String,
    },
    /// A copy goes to the dead-letter queue, for this reason.
    DeadLetter { reason: String },
}

/// The route of a job of `kind` whose delivery carried `received` headers,
/// and the headers its copy carries.
pub fn route(
    topology: &Topology,
    kind: JobKind,
    received: &FieldTable,
    outcome: JobOutcome,
    delivery_limit: u32,
) -> (Route, FieldTable) {
    let mut carried = headers::carried(Some(received));
    let count = |name: &str| headers::int(received, name).unwrap_or(0);
    let retry = |tier: &str| Route::Republish {
        exchange: String::new(),
        routing_key: topology.retry_queue(kind, tier),
    };
    let route = match outcome {
        JobOutcome::Done => Route::Done,
        JobOutcome::Wait(why) => {
            let waits = count(headers::WAITS) + 1;
            if waits > MAX_WAITS {
                Route::DeadLetter {
                    reason: format!("gave up waiting after {MAX_WAITS} tries: {why}"),
                }
            } else {
                headers::set_int(&mut carried, headers::WAITS, waits);
                retry(RETRY_TIERS[0].0)
            }
        }
        JobOutcome::Transient(why) => {
            let attempt = count(headers::ATTEMPT);
            match RETRY_TIERS.get(attempt as usize) {
                Some((tier, _)) => {
                    headers::set_int(&mut carried, headers::ATTEMPT, attempt + 1);
                    headers::set_text(&mut carried, headers::ERROR, &why);
                    retry(tier)
                }
                None => Route::DeadLetter {
                    reason: format!("still failing after {attempt} retries: {why}"),
                },
            }
        }
        JobOutcome::Interrupted => {
            match interrupted(received, &mut carried, delivery_limit, "worker", "job") {
                Ok(()) => Route::Republish {
                    exchange: topology.work_exchange(),
                    routing_key: kind.as_str().to_string(),
                },
                Err(reason) => Route::DeadLetter { reason },
            }
        }
        JobOutcome::Dead(why) => Route::DeadLetter { reason: why },
    };
    if let Route::DeadLetter { reason } = &route {
        headers::set_text(&mut carried, headers::ERROR, reason);
        headers::set_text(&mut carried, headers::QUEUE, &topology.work_queue(kind));
    }
    (route, carried)
}

/// Counts one more interruption in `carried`, or the dead-letter reason
/// once there were more than `limit`.
fn interrupted(
    received: &FieldTable,
    carried: &mut FieldTable,
    limit: u32,
    holder: &str,
    what: &str,
) -> Result<(), String> {
    let interrupted = headers::int(received, headers::INTERRUPTED).unwrap_or(0) + 1;
    if interrupted > i64::from(limit) {
        return Err(format!(
            "delivery limit: interrupted {interrupted} times (each time the {holder} handling it \
             died or lost the broker: a {what} that crashes {holder}s ends here; \
             --delivery-limit is {limit})"
        ));
    }
    headers::set_int(carried, headers::INTERRUPTED, interrupted);
    Ok(())
}

/// The route of a webhook event the broker redelivered from the events
/// queue (the producer reconciling it died or lost the broker), and the
/// headers its copy carries: back to the events queue as a fresh message,
/// counting the interruption; past the producers' `delivery_limit`, to the
/// dead-letter queue with the reason and the events queue as its queue
/// (so `exploder dlq replay` puts it back there).
pub fn route_redelivered_event(
    topology: &Topology,
    received: &FieldTable,
    delivery_limit: u32,
) -> (Route, FieldTable) {
    let mut carried = headers::carried(Some(received));
    let route = match interrupted(received, &mut carried, delivery_limit, "producer", "event") {
        Ok(()) => Route::Republish {
            exchange: String::new(),
            routing_key: topology.events_queue(),
        },
        Err(reason) => {
            headers::set_text(&mut carried, headers::ERROR, &reason);
            headers::set_text(&mut carried, headers::QUEUE, &topology.events_queue());
            Route::DeadLetter { reason }
        }
    };
    (route, carried)
}

/// RabbitMQ's own dead-lettering record.
pub const X_DEATH: &str = "x-death";

/// One message of the dead-letter queue, read.
pub struct DeadLetter {
    pub tag: u64,
    /// The job's id, else the message id, else one made of the body.
    pub id: String,
    pub message_id: Option<String>,
    pub job: Result<Job, DecodeError>,
    /// "worker" or "producer" (an event) (x-exploder-error, no x-death),
    /// or "broker" (x-death).
    pub by: Option<&'static str>,
    pub reason: Option<String>,
    /// The worker's last error when the broker dead-lettered the job.
    pub last_error: Option<String>,
    /// The work queue it came from.
    pub queue: Option<String>,
    pub attempts: Option<i64>,
    pub dead_at: Option<String>,
    pub content_type: Option<String>,
    /// A webhook event from the producers' events queue (its body is the
    /// recorded event, not a job), rather than a job.
    pub event: bool,
    pub headers: FieldTable,
    pub body: Vec<u8>,
}

impl DeadLetter {
    pub fn from_delivery(d: Delivery) -> DeadLetter {
        let props = &d.properties;
        let fields = props.headers().clone().unwrap_or_default();
        let schema = headers::int(&fields, job::SCHEMA_HEADER).and_then(|v| u16::try_from(v).ok());
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
        let error = headers::text(&fields, headers::ERROR);
        // The most recent x-death entry comes first.
        let death = match headers::get(&fields, X_DEATH) {
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
                headers::text(t, "reason"),
                error,
                headers::text(t, "queue"),
            ),
            None => (
                error.as_ref().map(|_| "worker"),
                error,
                None,
                headers::text(&fields, headers::QUEUE),
            ),
        };
        let dead_at = death
            .as_ref()
            .and_then(|t| headers::int(t, "time"))
            .map(exploder_common::history::rfc3339);
        let event = queue
            .as_deref()
            .is_some_and(|q| q.ends_with(crate::topology::EVENTS_QUEUE));
        // Events are dead-lettered by the producers.
        let by = match by {
            Some("worker") if event => Some("producer"),
            by => by,
        };
        DeadLetter {
            tag: d.delivery_tag,
            event,
            id,
            job,
            by,
            reason,
            last_error,
            queue,
            attempts: headers::int(&fields, headers::ATTEMPT),
            dead_at,
            content_type: props.content_type().as_ref().map(|c| c.to_string()),
            message_id,
            headers: fields,
            body: d.data,
        }
    }

    /// Whether `id` names this letter (its id or its message id).
    pub fn matches(&self, id: &str) -> bool {
        self.id == id || self.message_id.as_deref() == Some(id)
    }

    pub fn kind(&self) -> Option<JobKind> {
        self.job.as_ref().ok().map(Job::kind)
    }

    /// The reason as one line (for a table).
    pub fn reason_line(&self) -> String {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::new("t-")
    }

    fn with(name: &str, v: i64) -> FieldTable {
        let mut h = FieldTable::default();
        headers::set_int(&mut h, name, v);
        h
    }

    #[test]
    fn a_transient_failure_climbs_the_backoff_tiers_then_dies() {
        let t = topology();
        let mut received = FieldTable::default();
        for (i, (tier, _)) in RETRY_TIERS.iter().enumerate() {
            let (route, carried) = route(
                &t,
                JobKind::Layer,
                &received,
                JobOutcome::Transient("503".into()),
                20,
            );
            assert_eq!(
                route,
                Route::Republish {
                    exchange: String::new(),
                    routing_key: t.retry_queue(JobKind::Layer, tier)
                }
            );
            assert_eq!(headers::int(&carried, headers::ATTEMPT), Some(i as i64 + 1));
            assert_eq!(
                headers::text(&carried, headers::ERROR).as_deref(),
                Some("503")
            );
            received = carried;
        }
        let (route, carried) = route(
            &t,
            JobKind::Layer,
            &received,
            JobOutcome::Transient("503".into()),
            20,
        );
        assert!(matches!(route, Route::DeadLetter { reason } if reason.contains("still failing")));
        assert_eq!(
            headers::text(&carried, headers::QUEUE),
            Some(t.work_queue(JobKind::Layer))
        );
    }

    #[test]
    fn waiting_goes_to_the_first_tier_until_the_limit() {
        let t = topology();
        let (r, carried) = route(
            &t,
            JobKind::Image,
            &with(headers::WAITS, 3),
            JobOutcome::Wait("layers".into()),
            20,
        );
        assert_eq!(
            r,
            Route::Republish {
                exchange: String::new(),
                routing_key: t.retry_queue(JobKind::Image, RETRY_TIERS[0].0)
            }
        );
        assert_eq!(headers::int(&carried, headers::WAITS), Some(4));
        let (r, _) = route(
            &t,
            JobKind::Image,
            &with(headers::WAITS, MAX_WAITS),
            JobOutcome::Wait("layers".into()),
            20,
        );
        assert!(matches!(r, Route::DeadLetter { .. }));
    }

    #[test]
    fn an_interrupted_job_goes_back_to_work_until_the_delivery_limit() {
        let t = topology();
        let (r, carried) = route(
            &t,
            JobKind::Export,
            &with(headers::INTERRUPTED, 1),
            JobOutcome::Interrupted,
            2,
        );
        assert_eq!(
            r,
            Route::Republish {
                exchange: t.work_exchange(),
                routing_key: "export".into()
            }
        );
        assert_eq!(headers::int(&carried, headers::INTERRUPTED), Some(2));
        let (r, _) = route(
            &t,
            JobKind::Export,
            &with(headers::INTERRUPTED, 2),
            JobOutcome::Interrupted,
            2,
        );
        assert!(
            matches!(r, Route::DeadLetter { reason } if reason.contains("--delivery-limit is 2"))
        );
    }

    #[test]
    fn a_redelivered_event_goes_back_to_the_events_queue_until_the_limit() {
        let t = topology();
        let (r, carried) = route_redelivered_event(&t, &with(headers::INTERRUPTED, 1), 2);
        assert_eq!(
            r,
            Route::Republish {
                exchange: String::new(),
                routing_key: "t-exploder.events".into()
            }
        );
        assert_eq!(headers::int(&carried, headers::INTERRUPTED), Some(2));
        let (r, carried) = route_redelivered_event(&t, &with(headers::INTERRUPTED, 2), 2);
        assert!(
            matches!(&r, Route::DeadLetter { reason } if reason.contains("producer") && reason.contains("--delivery-limit is 2")),
            "{r:?}"
        );
        assert_eq!(
            headers::text(&carried, headers::QUEUE).as_deref(),
            Some("t-exploder.events")
        );
        assert!(headers::text(&carried, headers::ERROR).is_some());
    }

    #[test]
    fn done_goes_nowhere_and_dead_says_why() {
        let t = topology();
        let none = FieldTable::default();
        assert_eq!(
            route(&t, JobKind::Layer, &none, JobOutcome::Done, 20).0,
            Route::Done
        );
        let (r, carried) = route(
            &t,
            JobKind::Layer,
            &none,
            JobOutcome::Dead("bad".into()),
            20,
        );
        assert_eq!(
            r,
            Route::DeadLetter {
                reason: "bad".into()
            }
        );
        assert_eq!(
            headers::text(&carried, headers::ERROR).as_deref(),
            Some("bad")
        );
    }
}
