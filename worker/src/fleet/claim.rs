//! The claim on ingesting a layer (a Redis lease, `SET NX PX`), held only
//! while the ingest makes progress, and given up by the ingest itself when
//! it is lost.
//!
//! The lease only saves duplicate downloads (the store's atomic publish
//! makes a duplicate harmless), but a lease kept wrongly costs the fleet:
//!
//! - a holder that can reach Redis but not the registry (a partition) made
//!   no progress yet renewed its claim for as long as the fault lasted, and
//!   every other worker waited for it. A claim is renewed only while the
//!   ingest makes progress: bytes of the blob arrived since the last
//!   renewal, or the ingest is not waiting for them (it is busy writing
//!   what it read: a slow disk is not a stalled registry), or the blob has
//!   been read to its end (what is left is local: writing, syncing,
//!   publishing). Until its first byte, the ingest counts as waiting;
//! - a holder that cannot renew (cut from Redis) went on downloading after
//!   its lease lapsed, while another worker took the layer and downloaded
//!   it too. A holder that has not renewed by the time its lease ends
//!   counts it as lost, as does one whose renewal finds another holder,
//!   and its reader fails from then on: the ingest stops at the next read
//!   and removes its staging directory.
//!
//! The holder's view of the lease ends before Redis's: each lease is
//! counted from the moment its command was sent, not answered, and the
//! holder stops a moment (a quarter of the lease, at most 2 s) before
//! that, so that it has stopped reading by the time another worker can
//! claim the layer.
//! Finishing after the loss (the blob was read whole just before) is
//! harmless: the published layer is complete and verified, and a second
//! publish of the same layer keeps the first.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::fetch::BlobReader;
use exploder_queue::index::Index;
use tokio::time::Instant;

/// What the ingest of a claimed layer reports to the claim, and obeys.
pub(super) struct Progress {
    /// Bytes of the blob read so far.
    bytes: AtomicU64,
    /// The ingest waits for bytes of the blob: opening it, or in a read.
    waiting: AtomicBool,
    /// The blob was read to its end.
    finished: AtomicBool,
    /// The claim is lost (or the job abandoned): reading fails.
    lost: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            bytes: AtomicU64::new(0),
            // The blob is being opened: nothing arrived yet.
            waiting: AtomicBool::new(true),
            finished: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        }
    }
}

impl Progress {
    /// From now on the reader fails: the ingest stops at its next read.
    pub(super) fn stop(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The bytes read so far.
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Whether the ingest made progress since it had read `since` bytes:
    /// more bytes arrived, or it is not waiting for any (busy with what it
    /// read, or done reading).
    fn moved_since(&self, since: u64) -> bool {
        self.finished.load(Ordering::SeqCst)
            || !self.waiting.load(Ordering::SeqCst)
            || self.bytes() != since
    }
}

/// Stops the ingest when dropped: a job dropped mid-ingest (its session
/// ended with the broker connection) must not leave an ingest behind that
/// downloads for nobody.
pub(super) struct StopOnDrop(pub(super) Arc<Progress>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A blob reader that counts the bytes that arrive and fails once the
/// claim is lost.
pub(super) struct Watched {
    inner: BlobReader,
    progress: Arc<Progress>,
}

impl Watched {
    pub(super) fn new(inner: BlobReader, progress: Arc<Progress>) -> Watched {
        Watched { inner, progress }
    }

    fn lost() -> io::Error {
        io::Error::other("the claim on the layer was lost: another worker may be ingesting it")
    }
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.progress.stopped() {
            return Err(Self::lost());
        }
        self.progress.waiting.store(true, Ordering::SeqCst);
        let read = self.inner.read(buf);
        self.progress.waiting.store(false, Ordering::SeqCst);
        // Checked again: the read may have waited long for these bytes.
        if self.progress.stopped() {
            return Err(Self::lost());
        }
        let n = read?;
        if n == 0 && !buf.is_empty() {
            self.progress.finished.store(true, Ordering::SeqCst);
        } else {
            self.progress.bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        Ok(n)
    }
}

/// A claim taken by `token` with a lease of `ttl`, whose `SET` was sent
/// at `claimed_at`.
pub(super) struct Claim {
    pub(super) index: Index,
    pub(super) diff_id: Digest,
    pub(super) token: String,
    pub(super) ttl: Duration,
    pub(super) claimed_at: Instant,
}

impl Claim {
    /// Renews the lease every third of its length while `progress` moves;
    /// returns, saying why, once the claim is lost: the lease ended before
    /// a renewal (no progress, or Redis unreachable), or a renewal found
    /// another holder. Never returns while the claim is held.
    pub(super) async fn keep(&self, progress: &Progress) -> String {
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        // Stopping takes a read; the margin leaves it ample time.
        let lease = self.ttl - (self.ttl / 4).min(Duration::from_secs(2));
        let mut valid_until = self.claimed_at + lease;
        let mut renewed_at = progress.bytes();
        let mut next = Instant::now() + every;
        let mut why = String::from("no progress");
        loop {
            tokio::time::sleep_until(next.min(valid_until)).await;
            let now = Instant::now();
            if now >= valid_until {
                return format!(
                    "its lease of {:?} was about to run out unrenewed ({why})",
                    self.ttl
                );
            }
            next = now + every;
            let mark = progress.bytes();
            if !progress.moved_since(renewed_at) {
                why = format!("no bytes of the blob arrived for {every:?}");
                continue;
            }
            let extend = self
                .index
                .extend_claim(&self.diff_id, &self.token, self.ttl);
            match tokio::time::timeout(valid_until - now, extend).await {
                Ok(Ok(true)) => {
                    valid_until = now + lease;
                    renewed_at = mark;
                }
                Ok(Ok(false)) => return "another worker holds it now".into(),
                Ok(Err(e)) => why = format!("renewing it failed: {e}"),
                Err(_) => why = "Redis did not answer the renewal".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<&'static [u8]>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let chunk = self.0.remove(0);
            buf[..chunk.len()].copy_from_slice(chunk);
            Ok(chunk.len())
        }
    }

    #[test]
    fn bytes_arriving_are_progress_and_so_is_a_reader_busy_elsewhere() {
        let progress = Arc::new(Progress::default());
        assert!(
            !progress.moved_since(0),
            "opening the blob, nothing arrived yet: no progress"
        );
        let mut r = Watched::new(Box::new(Chunks(vec![b"abc", b"de"])), progress.clone());
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert!(progress.moved_since(0));
        assert_eq!(progress.bytes(), 3);
        assert!(
            progress.moved_since(3),
            "not in a read: the ingest is busy with what it read"
        );
        progress.waiting.store(true, Ordering::SeqCst);
        assert!(
            !progress.moved_since(3),
            "in a read with no new bytes: waiting on the registry"
        );
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
        progress.waiting.store(true, Ordering::SeqCst);
        assert!(progress.moved_since(5), "read whole: what is left is local");
    }

    #[test]
    fn a_lost_claim_fails_the_next_read() {
        let progress = Arc::new(Progress::default());
        let mut r = Watched::new(Box::new(Chunks(vec![b"abc", b"de"])), progress.clone());
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        drop(StopOnDrop(progress.clone()));
        let e = r.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("claim"), "{e}");
    }
}
