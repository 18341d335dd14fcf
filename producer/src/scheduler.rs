//! One place that runs reconciles and owns their retries, keyed by link
//! and by where the event's word comes from ([`key_of`]; kube-rs's
//! controller is the model: a reconcile returns a decision, and the
//! scheduler, not the source, requeues).
//!
//! - At most one reconcile of a key runs in this process at a time (the
//!   per-link Redis lease in [`crate::reconcile`] does the same across
//!   producers). An event for a key that is running waits for it and runs
//!   right after; an event for a key that waits for a retry replaces what
//!   was waiting (the registry, not the event, says what the tag is: the
//!   newest event of a registry for a link is the one worth retrying) and
//!   runs now. Two registries' events for one link have keys of their own:
//!   neither replaces the other, nor is settled with its outcome (one
//!   registry not having a tag says nothing of what another has).
//! - [`Decision`]: done, failed for good (an outcome `rejected`: retrying
//!   will not help) or requeue after a delay (the broker, Redis or the
//!   registry is unavailable). Requeues back off from 1 s to
//!   [`MAX_BACKOFF`], and never give up: whoever submitted the event is
//!   told only when it is settled (a webhook event keeps its delivery in
//!   the events queue unacknowledged until then, so a producer that dies
//!   leaves it to another).
//! - A reconcile that takes longer than [`RECONCILE_TIMEOUT`] (a registry
//!   that accepts connections and never answers) is abandoned and
//!   requeued like any other unavailable one; every step of a reconcile is
//!   idempotent, so one cut short is simply done again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::event::{Event, Outcome};
use crate::reconcile::{ReconcileError, Reconciler};

/// The longest wait between two tries of one key.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one reconcile may take before it is abandoned and requeued.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reconciles of different keys running at once (a relist of thousands of
/// streams must not open thousands of registry connections).
pub const CONCURRENCY: usize = 16;

/// What a reconcile decided about its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Settled: the outcomes say what was done.
    Done(Vec<Outcome>),
    /// Settled as refused (an outcome is `rejected`): the same event will
    /// never succeed, so it is not retried.
    Failed(Vec<Outcome>),
    /// Not now (the broker, Redis or the registry is unavailable, or the
    /// reconcile timed out): try again after the delay.
    RequeueAfter(Duration, String),
}

impl Decision {
    /// The decision for a reconcile's result, on its `attempt`th failure
    /// in a row (0: the first).
    pub fn of(result: Result<Vec<Outcome>, ReconcileError>, attempt: u32) -> Decision {
        match result {
            Ok(outcomes)
                if outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::Rejected { .. } | Outcome::Refused { .. })) =>
            {
                Decision::Failed(outcomes)
            }
            Ok(outcomes) => Decision::Done(outcomes),
            Err(ReconcileError::Unavailable(reason)) => {
                Decision::RequeueAfter(backoff(attempt), reason)
            }
        }
    }
}

/// 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(MAX_BACKOFF)
}

/// The key an event of `source` (a metrics label: an endpoint's name,
/// `poll`, `imagestream`) is scheduled under: its link and the registry
/// whose word it is. A manifest deleted by digest names no link: its
/// registry, repository and digest. An ImageStream owns its links and its
/// deletes name no registry: its events for a link share one key, so a
/// delete replaces a move waiting for its retry.
pub fn key_of(source: &str, event: &Event) -> String {
    match event {
        Event::Tag(t) if source == crate::sources::imagestream::DECIDED_BY => {
            format!("{} by {source}", t.link)
        }
        Event::Gone { link } => format!("{link} by {source}"),
        Event::Tag(t) => format!("{} from {}", t.link, t.upstream.registry),
        Event::ManifestDeleted {
            upstream, digest, ..
        } => format!("{upstream}@{digest}"),
    }
}

/// What an event is about, as its answer names it while it is pending:
/// its link (a manifest deleted by digest: its repository and digest).
pub fn subject_of(event: &Event) -> String {
    match event {
        Event::Tag(t) => t.link.to_string(),
        Event::Gone { link } => link.to_string(),
        Event::ManifestDeleted {
            upstream, digest, ..
        } => format!("{upstream}@{digest}"),
    }
}

/// What the scheduler runs for an event: [`Reconciler::handle`] (a
/// stand-in in the unit tests).
pub trait Handle: Send + Sync + 'static {
    fn handle(
        &self,
        source: &str,
        event: Event,
    ) -> impl Future<Output = Result<Vec<Outcome>, ReconcileError>> + Send;
}

impl Handle for Reconciler {
    fn handle(
        &self,
        source: &str,
        event: Event,
    ) -> impl Future<Output = Result<Vec<Outcome>, ReconcileError>> + Send {
        Reconciler::handle(self, source, event)
    }
}

/// Told once the event it was submitted with is settled (done or failed
/// for good): the outcomes.
pub type Waiter = oneshot::Sender<Vec<Outcome>>;

struct Pending {
    /// The metrics `source` label and who decided (see
    /// [`Reconciler::handle`]).
    source: String,
    event: Event,
    waiters: Vec<Waiter>,
    /// Failures in a row so far.
    attempt: u32,
}

struct Slot {
    /// What runs next (none: the key's task ends after the current run).
    next: Option<Pending>,
    /// Cuts a backoff short when a new event arrives.
    wake: Arc<Notify>,
}

/// The scheduler; cheap to clone (every source holds one).
pub struct Scheduler<R: Handle = Reconciler> {
    inner: Arc<Inner<R>>,
}

impl<R: Handle> Clone for Scheduler<R> {
    fn clone(&self) -> Self {
        Scheduler {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<R> {
    reconciler: Arc<R>,
    slots: Mutex<HashMap<String, Slot>>,
    running: tokio::sync::Semaphore,
}

impl<R: Handle> Scheduler<R> {
    pub fn new(reconciler: Arc<R>) -> Scheduler<R> {
        Scheduler {
            inner: Arc::new(Inner {
                reconciler,
                slots: Mutex::new(HashMap::new()),
                running: tokio::sync::Semaphore::new(CONCURRENCY),
            }),
        }
    }

    pub fn reconciler(&self) -> &Arc<R> {
        &self.inner.reconciler
    }

    /// Drops the retries `source` submitted that nobody waits on and that
    /// are waiting for their backoff (a leader-only source that stopped or
    /// lost the lease: the next leader's relist or scan looks at those
    /// tags itself). A reconcile running now still finishes.
    pub fn cancel_retries_of(&self, source: &str) {
        let mut slots = self.inner.slots.lock().expect("scheduler lock");
        for slot in slots.values_mut() {
            if slot
                .next
                .as_ref()
                .is_some_and(|p| p.source == source && p.waiters.is_empty() && p.attempt > 0)
            {
                slot.next = None;
                slot.wake.notify_one();
            }
        }
    }

    /// Schedules `event` from `source`; `waiter` (if any) is told its
    /// outcomes once it is settled. Returns at once.
    pub fn submit(&self, source: &str, event: Event, waiter: Option<Waiter>) {
        let key = key_of(source, &event);
        let mut slots = self.inner.slots.lock().expect("scheduler lock");
        match slots.get_mut(&key) {
            Some(slot) => {
                let waiters = match slot.next.take() {
                    Some(older) => older.waiters,
                    None => Vec::new(),
                };
                slot.next = Some(Pending {
                    source: source.to_string(),
                    event,
                    waiters: waiters.into_iter().chain(waiter).collect(),
                    attempt: 0,
                });
                slot.wake.notify_one();
            }
            None => {
                let wake = Arc::new(Notify::new());
                slots.insert(
                    key.clone(),
                    Slot {
                        next: Some(Pending {
                            source: source.to_string(),
                            event,
                            waiters: waiter.into_iter().collect(),
                            attempt: 0,
                        }),
                        wake: wake.clone(),
                    },
                );
                tokio::spawn(self.inner.clone().run(key, wake));
            }
        }
    }
}

impl<R: Handle> Inner<R> {
    /// Runs `key` until nothing is left to do for it.
    async fn run(self: Arc<Self>, key: String, wake: Arc<Notify>) {
        loop {
            let pending = {
                let mut slots = self.slots.lock().expect("scheduler lock");
                let Some(slot) = slots.get_mut(&key) else {
                    return;
                };
                match slot.next.take() {
                    Some(p) => p,
                    None => {
                        slots.remove(&key);
                        return;
                    }
                }
            };
            let permit = self.running.acquire().await.expect("never closed");
            let result = tokio::time::timeout(
                RECONCILE_TIMEOUT,
                self.reconciler
                    .handle(&pending.source, pending.event.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ReconcileError::Unavailable(format!(
                    "the reconcile took over {RECONCILE_TIMEOUT:?}"
                )))
            });
            drop(permit);
            match Decision::of(result, pending.attempt) {
                Decision::Done(outcomes) | Decision::Failed(outcomes) => {
                    settle(pending.waiters, outcomes);
                }
                Decision::RequeueAfter(delay, reason) => {
                    tracing::warn!(
                        key = %key,
                        source = %pending.source,
                        attempt = pending.attempt + 1,
                        retry_in = ?delay,
                        %reason,
                        "reconcile requeued"
                    );
                    let newer_arrived = {
                        let mut slots = self.slots.lock().expect("scheduler lock");
                        let slot = slots.get_mut(&key).expect("a running key keeps its slot");
                        match slot.next.as_mut() {
                            // The newer event runs now and settles ours too.
                            Some(newer) => {
                                newer.waiters.extend(pending.waiters);
                                true
                            }
                            None => {
                                slot.next = Some(Pending {
                                    attempt: pending.attempt + 1,
                                    ..pending
                                });
                                false
                            }
                        }
                    };
                    if !newer_arrived {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = wake.notified() => {}
                        }
                    }
                }
            }
        }
    }
}

/// Tells the waiters of one reconcile its outcomes. Several events merged
/// into one reconcile enqueued once: the first is answered `accepted`, the
/// others `duplicate` (their jobs were already queued), as if they had run
/// one after the other.
fn settle(waiters: Vec<Waiter>, outcomes: Vec<Outcome>) {
    let mut waiters = waiters.into_iter();
    if let Some(first) = waiters.next() {
        let _ = first.send(outcomes.clone());
    }
    let repeated: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Accepted { link, .. } => Outcome::Duplicate { link },
            o => o,
        })
        .collect();
    for w in waiters {
        let _ = w.send(repeated.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected() -> Outcome {
        Outcome::Rejected {
            link: "a/b:c".into(),
            reason: "no".into(),
        }
    }

    #[test]
    fn an_unavailable_reconcile_is_requeued_with_growing_backoff() {
        let e = || Err(ReconcileError::Unavailable("down".into()));
        assert_eq!(
            Decision::of(e(), 0),
            Decision::RequeueAfter(Duration::from_secs(1), "down".into())
        );
        assert_eq!(
            Decision::of(e(), 3),
            Decision::RequeueAfter(Duration::from_secs(8), "down".into())
        );
        assert_eq!(
            Decision::of(e(), 40),
            Decision::RequeueAfter(MAX_BACKOFF, "down".into())
        );
    }

    #[test]
    fn events_merged_into_one_reconcile_are_accepted_once() {
        let accepted = Outcome::Accepted {
            link: "a/b:c".into(),
            manifest: format!("sha256:{}", "1".repeat(64)).parse().unwrap(),
        };
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel()).unzip();
        settle(txs, vec![accepted.clone()]);
        assert_eq!(rxs[0].try_recv().unwrap(), vec![accepted]);
        for rx in &mut rxs[1..] {
            assert_eq!(
                rx.try_recv().unwrap(),
                vec![Outcome::Duplicate {
                    link: "a/b:c".into()
                }]
            );
        }
    }

    use crate::event::TagEvent;
    use exploder_common::reference::Reference;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn push(registry: &str) -> Event {
        let upstream = Reference::parse(&format!("{registry}/eval/base:latest")).unwrap();
        Event::Tag(TagEvent {
            link: crate::event::default_link(&upstream),
            upstream,
            hint: None,
            exports: Vec::new(),
        })
    }

    /// Registry `a.test` is down for its first try, then has the tag;
    /// `b.test` does not have it.
    #[derive(Default)]
    struct TwoRegistries {
        tries_of_a: AtomicU32,
        a_failed: Notify,
    }

    impl Handle for TwoRegistries {
        async fn handle(
            &self,
            _source: &str,
            event: Event,
        ) -> Result<Vec<Outcome>, ReconcileError> {
            let Event::Tag(t) = event else { unreachable!() };
            let link = t.link.to_string();
            match t.upstream.registry.as_str() {
                "a.test" if self.tries_of_a.fetch_add(1, Ordering::SeqCst) == 0 => {
                    self.a_failed.notify_one();
                    Err(ReconcileError::Unavailable("a.test is down".into()))
                }
                "a.test" => Ok(vec![Outcome::Accepted {
                    link,
                    manifest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
                }]),
                _ => Ok(vec![Outcome::Rejected {
                    link,
                    reason: "b.test does not have the tag".into(),
                }]),
            }
        }
    }

    #[test]
    fn events_of_two_registries_for_one_link_have_keys_of_their_own() {
        assert_eq!(subject_of(&push("a.test")), subject_of(&push("b.test")));
        assert_ne!(
            key_of("registry", &push("a.test")),
            key_of("registry", &push("b.test"))
        );
        assert_eq!(
            key_of("registry", &push("a.test")),
            key_of("harbor", &push("a.test"))
        );
    }

    #[test]
    fn an_imagestreams_delete_shares_the_key_of_its_moves() {
        let Event::Tag(t) = push("a.test") else {
            unreachable!()
        };
        let gone = Event::Gone {
            link: t.link.clone(),
        };
        assert_eq!(
            key_of("imagestream", &Event::Tag(t)),
            key_of("imagestream", &gone)
        );
    }

    #[tokio::test]
    async fn another_registrys_event_never_replaces_nor_settles_one_waiting_for_its_retry() {
        let handler = Arc::new(TwoRegistries::default());
        let scheduler = Scheduler::new(handler.clone());
        let (a_tx, a_rx) = oneshot::channel();
        let a_failed = handler.a_failed.notified();
        scheduler.submit("registry", push("a.test"), Some(a_tx));
        a_failed.await;
        // A's push now waits for its retry; B's event for the same link
        // arrives.
        let (b_tx, b_rx) = oneshot::channel();
        scheduler.submit("registry", push("b.test"), Some(b_tx));
        let guard = Duration::from_secs(30);
        let b = tokio::time::timeout(guard, b_rx).await.unwrap().unwrap();
        assert!(matches!(b[..], [Outcome::Rejected { .. }]), "{b:?}");
        let a = tokio::time::timeout(guard, a_rx).await.unwrap().unwrap();
        assert!(
            matches!(a[..], [Outcome::Accepted { .. }]),
            "A's push is settled with its own outcome, after its retry: {a:?}"
        );
        assert_eq!(handler.tries_of_a.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_rejected_outcome_fails_for_good_and_others_are_done() {
        assert_eq!(
            Decision::of(Ok(vec![rejected()]), 2),
            Decision::Failed(vec![rejected()])
        );
        let dup = Outcome::Duplicate {
            link: "a/b:c".into(),
        };
        assert_eq!(
            Decision::of(Ok(vec![dup.clone()]), 0),
            Decision::Done(vec![dup])
        );
    }
}
