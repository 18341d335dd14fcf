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

use std::time::Duration;

use exploder_common::history;
use exploder_common::request::{self, Request, Summary};
use serde::Serialize;

use crate::fanout::{FanOut, FanOutError, Redrive};

/// The name of the resync's lease in Redis.
pub const LEASE: &str = "resync";

/// What one pass saw and did.
#[derive(Clone, Debug, Default, Serialize)]
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
}

/// One look at every request (see the module documentation).
pub async fn pass(fanout: &FanOut<'_>, after: Duration) -> Result<Pass, FanOutError> {
    let store = fanout.store.clone();
    let (requests, unreadable) = tokio::task::spawn_blocking(move || request::list(&store))
        .await
        .map_err(|e| FanOutError::Store(std::io::Error::other(e)))??;
    for e in &unreadable {
        tracing::warn!("resync: skipping an unreadable request: {e}");
    }
    let now = history::now();
    let after_secs = after.as_secs() as i64;
    let mut pass = Pass {
        unreadable: unreadable.len(),
        ..Pass::default()
    };
    let mut left: Vec<Request> = Vec::new();
    for r in requests {
        if r.failed.is_some() {
            left.push(r);
            continue;
        }
        let name = r.link.name();
        let linked = fanout.store.read_link(&name, &r.link.tag).ok().flatten();
        if linked.as_ref() == Some(&r.job.manifest_digest) {
            // Linking again changes nothing and settles the request.
            fanout.store.link(
                &name,
                &r.link.tag,
                &r.job.manifest_digest,
                r.job.decided(),
                &r.job.origin(),
            )?;
            pass.settled += 1;
            continue;
        }
        if now - r.published_at < after_secs {
            left.push(r);
            continue;
        }
        let redrive = Redrive {
            image_job: now - r.seen_at >= after_secs,
            layer_interval: after,
        };
        let done = fanout.redrive(&r.job, redrive).await?;
        request::mark_published(fanout.store, &r.link, &r.job.id, now)?;
        tracing::info!(
            link = %r.link,
            manifest = %r.job.manifest_digest,
            age_s = now - r.decided() / 1000,
            image_job = done.image_job,
            layer_jobs = done.layer_jobs,
            "resync: re-driven a request with no sign of progress"
        );
        pass.redriven += 1;
        pass.image_jobs += usize::from(done.image_job);
        pass.layer_jobs += done.layer_jobs;
        left.push(r);
    }
    pass.summary = Summary::of(&left, now);
    Ok(pass)
}
