//! The resync: re-drive every requested link whose messages may be lost.
//!
//! The broker can drop messages (a restart while it dead-letters, a queue
//! deleted by hand), Redis can forget the fan-in records, a worker can die
//! between two steps. None of that may lose an image, so the fleet does not
//! trust its messages: the store holds a request for every link asked for
//! (`exploder_common::request`), and one worker at a time (a Redis lease)
//! looks at them every `--resync-interval`:
//!
//! - failed (its image job was dead-lettered): left alone, counted;
//! - already linked (a worker died between linking and settling it):
//!   settled;
//! - published less than `--resync-after` ago: left alone;
//! - otherwise re-driven ([`FanOut::redrive`]): the jobs of its missing
//!   layers that nobody is ingesting, and its image job too unless a worker
//!   handled that within `--resync-after` (the request's last sign of
//!   life). The same job, so duplicates are harmless.
//!
//! So a lost message costs at most `--resync-after` plus one interval, and
//! a request whose messages are only slow (a long queue) gets at most one
//! duplicate per `--resync-after`.
//!
//! What a pass costs is what needs work, not how many requests there are:
//! looking at a request is reading a small file; re-driving or settling it
//! is Redis round trips, a confirmed publish and a durable rewrite. So:
//!
//! - requests are worked on side by side ([`CONCURRENCY`] at a time), their
//!   publishes pipelined (`FanOut::redrive`);
//! - a pass re-drives or settles at most `--resync-batch` requests and
//!   returns where it stopped ([`Cursor`]); the next pass starts there, so
//!   a backlog is worked through a batch per interval, none starved;
//! - the lease is renewed while the pass runs ([`while_held`]), so a long
//!   pass keeps it; a pass that cannot renew it (another worker holds it,
//!   or Redis does not answer) starts nothing more: never two at once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use exploder_common::history;
use exploder_common::request::{self, Head, Request, Summary};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::fanout::{FanOut, FanOutError, Redrive};
use crate::index::{Index, IndexError};

/// The name of the resync's lease in Redis.
pub const LEASE: &str = "resync";

/// Requests re-driven or settled per pass when not configured: at the
/// pace this module reaches (hundreds a second), well within the default
/// one-minute interval.
pub const DEFAULT_BATCH: usize = 10_000;

/// Requests re-driven or settled at once: enough to overlap the Redis,
/// broker and disk round trips of each, few enough to leave the broker and
/// Redis to the jobs.
pub const CONCURRENCY: usize = 32;

/// Where a pass starts: after the request it names (in the order of
/// `request::list`: decided, then link), wrapping around to the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(Option<(i64, String)>);

impl Cursor {
    fn after(r: &Head) -> Cursor {
        Cursor(Some(key(r)))
    }

    /// Whether the pass starts from the first request.
    pub fn at_start(&self) -> bool {
        self.0.is_none()
    }
}

fn key(r: &Head) -> (i64, String) {
    (r.decided, r.link.to_string())
}

/// The lease a pass runs under.
pub trait Lease {
    /// Renews it: whether it is still this holder's.
    fn renew(&self) -> impl Future<Output = Result<bool, IndexError>> + Send;
    /// How often a pass renews it: well within its time to live.
    fn renew_every(&self) -> Duration;
}

/// The resync's lease in Redis ([`LEASE`]), held by `token` for `ttl`.
pub struct IndexLease<'a> {
    pub index: &'a Index,
    pub token: &'a str,
    pub ttl: Duration,
}

impl Lease for IndexLease<'_> {
    fn renew(&self) -> impl Future<Output = Result<bool, IndexError>> + Send {
        self.index.hold_lease(LEASE, self.token, self.ttl)
    }

    /// A third of its time to live: two renewals may fail or be slow
    /// before it could lapse.
    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// What one pass saw and did.
#[derive(Debug, Default)]
pub struct Pass {
    /// The requests left after the pass.
    pub summary: Summary,
    /// Requests whose jobs were published again.
    pub redriven: usize,
    /// Image jobs among them.
    pub image_jobs: usize,
    pub layer_jobs: usize,
    /// Requests found linked and settled.
    pub settled: usize,
    /// Request files that did not read (logged).
    pub unreadable: usize,
    /// Requests that needed work and were left to the next pass: the batch
    /// was full.
    pub deferred: usize,
    /// Where the next pass starts.
    pub next: Cursor,
    /// The lease could not be renewed: the pass stopped starting work.
    pub lease_lost: bool,
    /// Times the lease was renewed during the pass.
    pub renewals: usize,
    /// The first failure (Redis, the broker, the store): the pass stopped
    /// starting work there.
    pub error: Option<FanOutError>,
    pub elapsed: Duration,
}

/// How much a pass may do.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// `--resync-after`: how long a request may show no progress.
    pub after: Duration,
    /// `--resync-batch`: requests re-driven or settled at most (at least 1).
    pub batch: usize,
}

/// What a request needs, decided by looking at the store only.
enum Needs {
    Nothing,
    Settle,
    Redrive,
}

/// One pass (see the module documentation), starting at `cursor`, under
/// `lease` (held by the caller when it starts). Fails only if the
/// requests cannot be listed; a failure while working is in
/// [`Pass::error`], beside what was done.
pub async fn pass(
    fanout: &FanOut<'_>,
    bounds: Bounds,
    cursor: &Cursor,
    lease: &impl Lease,
) -> Result<Pass, FanOutError> {
    let started = Instant::now();
    let now = history::now();
    let after_secs = bounds.after.as_secs() as i64;
    let store = fanout.store.clone();
    // Listing and looking are file reads: off the async threads. Only
    // the heads are kept: the jobs (manifest and config each) are read
    // again for the batch's requests, a few at a time.
    let (looked, unreadable) = tokio::task::spawn_blocking(move || {
        let (requests, unreadable) = request::list_heads(&store)?;
        let looked: Vec<(Head, Needs)> = requests
            .into_iter()
            .map(|r| {
                let needs = if r.failed {
                    Needs::Nothing
                } else if store
                    .read_link(&r.link.name(), &r.link.tag)
                    .ok()
                    .flatten()
                    .as_ref()
                    == Some(&r.manifest)
                {
                    Needs::Settle
                } else if now - r.published_at < after_secs {
                    Needs::Nothing
                } else {
                    Needs::Redrive
                };
                (r, needs)
            })
            .collect();
        Ok::<_, std::io::Error>((looked, unreadable))
    })
    .await
    .map_err(|e| FanOutError::Store(std::io::Error::other(e)))??;
    for e in &unreadable {
        tracing::warn!("resync: skipping an unreadable request: {e}");
    }
    let mut pass = Pass {
        unreadable: unreadable.len(),
        next: cursor.clone(),
        ..Pass::default()
    };

    // The batch: from the cursor on, wrapping around.
    let start = match &cursor.0 {
        Some(c) => looked.partition_point(|(r, _)| &key(r) <= c),
        None => 0,
    };
    let batch = bounds.batch.max(1);
    let mut work: Vec<&(Head, Needs)> = Vec::new();
    for item in looked[start..].iter().chain(&looked[..start]) {
        if matches!(item.1, Needs::Nothing) {
            continue;
        }
        if work.len() == batch {
            pass.deferred += 1;
        } else {
            work.push(item);
        }
    }
    let last = work.last().map(|(r, _)| Cursor::after(r));

    let stop = AtomicBool::new(false);
    let mut failure = None;
    let mut settled_keys = HashSet::new();
    let run = async {
        let mut items = work.iter();
        let mut running = FuturesUnordered::new();
        loop {
            // Nothing new once the lease is gone or something failed.
            while running.len() < CONCURRENCY && failure.is_none() && !stop.load(Ordering::Relaxed)
            {
                let Some((r, needs)) = items.next().copied() else {
                    break;
                };
                let linked = matches!(needs, Needs::Settle);
                running.push(handle(fanout, r, linked, bounds.after, now));
            }
            match running.next().await {
                None => break,
                Some(Ok(Done::Settled(key))) => {
                    pass.settled += 1;
                    settled_keys.insert(key);
                }
                Some(Ok(Done::Redriven {
                    image_job,
                    layer_jobs,
                })) => {
                    pass.redriven += 1;
                    pass.image_jobs += usize::from(image_job);
                    pass.layer_jobs += layer_jobs;
                }
                Some(Ok(Done::Changed)) => {}
                Some(Err(e)) => {
                    failure.get_or_insert(e);
                }
            }
        }
    };
    let ((), held) = while_held(lease, &stop, run).await;
    pass.renewals = held.renewals;
    pass.lease_lost = held.lost;
    // Only a pass that did its whole batch moves on; one that stopped
    // early starts from the same place next time (re-driving twice is
    // harmless, skipping is not).
    if failure.is_none() && !held.lost {
        pass.next = match last {
            Some(last) if pass.deferred > 0 => last,
            _ => Cursor::default(),
        };
    }
    pass.error = failure;
    drop(work);
    let left: Vec<Head> = looked
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| !settled_keys.contains(&key(r)))
        .collect();
    pass.summary = Summary::of(&left, now);
    pass.elapsed = started.elapsed();
    Ok(pass)
}

/// What [`handle`] did with a request.
enum Done {
    /// Found linked and settled (its key).
    Settled((i64, String)),
    Redriven {
        image_job: bool,
        layer_jobs: usize,
    },
    /// Settled or replaced by a newer decision since it was listed: the
    /// next pass sees what is there now.
    Changed,
}

/// Settles (`linked`) or re-drives one request, read whole now: only the
/// requests being worked on have their jobs in memory.
async fn handle(
    fanout: &FanOut<'_>,
    head: &Head,
    linked: bool,
    after: Duration,
    now: i64,
) -> Result<Done, FanOutError> {
    let (store, link) = (fanout.store.clone(), head.link.clone());
    let read = tokio::task::spawn_blocking(move || request::read(&store, &link))
        .await
        .map_err(|e| FanOutError::Store(std::io::Error::other(e)))??;
    let Some(r) = read.filter(|r| r.job.id == head.job_id) else {
        return Ok(Done::Changed);
    };
    if linked {
        settle(fanout, &r).await?;
        return Ok(Done::Settled(key(head)));
    }
    let (image_job, layer_jobs) = redrive(fanout, &r, after, now).await?;
    Ok(Done::Redriven {
        image_job,
        layer_jobs,
    })
}

/// A linked request: linking again changes nothing and settles it.
async fn settle(fanout: &FanOut<'_>, r: &Request) -> Result<(), FanOutError> {
    let (store, r) = (fanout.store.clone(), (r.link.clone(), r.job.clone()));
    tokio::task::spawn_blocking(move || {
        let (link, job) = r;
        store.link(
            &link.name(),
            &link.tag,
            &job.manifest_digest,
            job.decided(),
            &job.origin(),
        )
    })
    .await
    .map_err(|e| FanOutError::Store(std::io::Error::other(e)))??;
    Ok(())
}

/// Publishes a stale request's jobs again and records when; returns
/// (image job published, layer jobs published).
async fn redrive(
    fanout: &FanOut<'_>,
    r: &Request,
    after: Duration,
    now: i64,
) -> Result<(bool, usize), FanOutError> {
    let after_secs = after.as_secs() as i64;
    let redrive = Redrive {
        image_job: now - r.seen_at >= after_secs,
        layer_interval: after,
    };
    let done = fanout.redrive(&r.job, redrive).await?;
    let (store, link, id) = (fanout.store.clone(), r.link.clone(), r.job.id.clone());
    tokio::task::spawn_blocking(move || request::mark_published(&store, &link, &id, now))
        .await
        .map_err(|e| FanOutError::Store(std::io::Error::other(e)))??;
    tracing::info!(
        link = %r.link,
        manifest = %r.job.manifest_digest,
        age_s = now - r.decided() / 1000,
        image_job = done.image_job,
        layer_jobs = done.layer_jobs,
        "resync: re-driven a request with no sign of progress"
    );
    Ok((done.image_job, done.layer_jobs))
}

/// How [`while_held`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Renewals that kept the lease.
    pub renewals: usize,
    /// A renewal failed or found another holder; `stop` was set.
    pub lost: bool,
}

/// Runs `work` to its end while renewing `lease` every
/// [`Lease::renew_every`]. A renewal that does not keep the lease (another
/// holder, or no answer: the lease may lapse before the next) sets `stop`,
/// which `work` checks before starting anything new, and renewals end.
pub async fn while_held<T>(
    lease: &impl Lease,
    stop: &AtomicBool,
    work: impl Future<Output = T>,
) -> (T, Held) {
    let mut held = Held::default();
    let out = {
        let renewing = async {
            loop {
                tokio::time::sleep(lease.renew_every()).await;
                match lease.renew().await {
                    Ok(true) => held.renewals += 1,
                    Ok(false) => {
                        tracing::warn!(
                            "resync: the lease went to another worker: stopping the pass"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("resync: renewing the lease: {e}: stopping the pass");
                        break;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            held.lost = true;
            // The work finishes what it started; nothing more to renew.
            std::future::pending::<()>().await
        };
        tokio::select! {
            out = work => out,
            () = renewing => unreachable!("renewing never ends"),
        }
    };
    (out, held)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A lease in memory: kept for `keeps` renewals, then lost.
    struct FakeLease {
        renewals: AtomicUsize,
        keeps: usize,
    }

    impl FakeLease {
        fn keeping(keeps: usize) -> FakeLease {
            FakeLease {
                renewals: AtomicUsize::new(0),
                keeps,
            }
        }

        fn renewed(&self) -> usize {
            self.renewals.load(Ordering::SeqCst)
        }
    }

    impl Lease for FakeLease {
        fn renew(&self) -> impl Future<Output = Result<bool, IndexError>> + Send {
            let n = self.renewals.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok(n <= self.keeps))
        }

        fn renew_every(&self) -> Duration {
            Duration::from_millis(1)
        }
    }

    /// Only a failure's safety net: the tests count, they do not time.
    async fn at_most_a_minute<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the work ended")
    }

    #[tokio::test]
    async fn the_lease_is_renewed_while_the_work_runs() {
        let lease = FakeLease::keeping(usize::MAX);
        let stop = AtomicBool::new(false);
        // Work that lasts three renewals: it only ends once they happened.
        let work = async {
            while lease.renewed() < 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let ((), held) = at_most_a_minute(while_held(&lease, &stop, work)).await;
        assert!(held.renewals >= 3, "{held:?}");
        assert!(!held.lost);
        assert!(
            !stop.load(Ordering::SeqCst),
            "nothing told the work to stop"
        );
    }

    #[tokio::test]
    async fn work_stops_once_a_renewal_finds_the_lease_gone() {
        // Kept once, then another worker has it.
        let lease = FakeLease::keeping(1);
        let stop = AtomicBool::new(false);
        // Work that would go on for ever unless told to stop.
        let work = async {
            let mut started = 0usize;
            while !stop.load(Ordering::SeqCst) {
                started += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            started
        };
        let (started, held) = at_most_a_minute(while_held(&lease, &stop, work)).await;
        assert!(started > 0);
        assert_eq!(
            held,
            Held {
                renewals: 1,
                lost: true
            }
        );
        assert_eq!(lease.renewed(), 2, "no renewal after the lease was lost");
    }

    #[tokio::test]
    async fn a_lease_that_cannot_be_renewed_counts_as_lost() {
        struct Unreachable;
        impl Lease for Unreachable {
            fn renew(&self) -> impl Future<Output = Result<bool, IndexError>> + Send {
                std::future::ready(Err(IndexError::from(redis::RedisError::from(
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"),
                ))))
            }
            fn renew_every(&self) -> Duration {
                Duration::from_millis(1)
            }
        }
        let stop = AtomicBool::new(false);
        let work = async {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let ((), held) = at_most_a_minute(while_held(&Unreachable, &stop, work)).await;
        assert!(held.lost);
    }
}
