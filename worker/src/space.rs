//! How much room the store has, and whether that is room enough to work.
//!
//! A store that still takes a tiny file (the readiness probe, a request
//! record) can be far too full for a layer, so "writable" is not "ready".
//! A worker keeps a floor, `--store-min-free`: below it, it starts no
//! layer ingest and no finalize (the job waits in the first backoff tier,
//! its retries untouched) and `/readyz` says why. A floor is a guess; a
//! write that runs out of space (`ENOSPC`, or `EDQUOT`: a quota) is
//! evidence. The job it belonged to fails as transient (its next backoff
//! tier) with a [`StoreFull`] error that names the store and what to do,
//! after its owner removed its staging directory; and from then on the
//! store counts as full until it has the floor's worth more room than the
//! failed work had (when it started: what it could use at most, whatever
//! other workers did meanwhile). So a layer too large for what is free is
//! not tried again and again, each try using up a retry: the fleet waits
//! for someone to free space (or for gc), then carries on by itself.
//!
//! "Free" is what an unprivileged writer may use (`statvfs`'s `f_bavail`):
//! blocks reserved for root do not count, even for a worker running as
//! root. A store with fewer than 1% of its inodes free is full too (a
//! file system out of inodes answers `ENOSPC` with bytes to spare).
//!
//! The numbers are exported as metrics (`exploder_store_*`, see
//! [`StoreSpace::register`]) and alerted on (`ExploderStoreFull`).

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exploder_common::store::quota::human_bytes;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, Registry};

/// What a file system has left (`statvfs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    pub size_bytes: u64,
    pub free_inodes: u64,
    /// 0 where the file system does not count inodes (btrfs).
    pub inodes: u64,
}

impl Room {
    /// The room of the file system holding `path`, or its nearest existing
    /// ancestor (a store not created yet lives where it will be created).
    pub fn of(path: &Path) -> io::Result<Room> {
        let mut at = path;
        let s = loop {
            match rustix::fs::statvfs(at) {
                Ok(s) => break s,
                Err(rustix::io::Errno::NOENT) if at.parent().is_some() => {
                    at = match at.parent().expect("checked") {
                        p if p.as_os_str().is_empty() => Path::new("."),
                        p => p,
                    };
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Room {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            size_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            free_inodes: s.f_favail,
            inodes: s.f_files,
        })
    }

    /// Fewer than 1% of the inodes free.
    fn out_of_inodes(&self) -> bool {
        self.inodes > 0 && self.free_inodes < self.inodes.div_ceil(100)
    }
}

/// What to tell whoever reads a full-store error.
const REMEDY: &str = "to go on, free space on it (`exploder rm` the tags no longer \
                      needed, then `exploder gc --confirm`) or give it a larger volume";

/// The store has no room for the work asked of it.
#[derive(Debug, thiserror::Error)]
pub enum StoreFull {
    /// A write ran out of space; nothing partial of it was kept.
    #[error(
        "the store {} is full: {during}; nothing partial was kept; {REMEDY}",
        store.display()
    )]
    RanOut {
        store: PathBuf,
        /// The failure as it was met (which layer, image or path).
        during: String,
        #[source]
        source: io::Error,
    },
    /// Not tried: the store has less room than the worker requires
    /// (`--store-min-free`, or more after a write ran out of space).
    #[error("the store {} is full: {why}; {REMEDY}", store.display())]
    Low { store: PathBuf, why: String },
}

impl StoreFull {
    /// Whether the work was not even tried (a job waits for room rather
    /// than using up a retry).
    pub fn not_tried(&self) -> bool {
        matches!(self, StoreFull::Low { .. })
    }

    /// Says what was being written when the store ran out:
    /// `what: <the failure>`.
    pub fn context(mut self, what: &str) -> StoreFull {
        if let StoreFull::RanOut { during, .. } = &mut self {
            *during = format!("{what}: {during}");
        }
        self
    }

    /// The store full error somewhere in `e`'s chain of causes.
    pub fn find<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a StoreFull> {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(full) = c.downcast_ref::<StoreFull>() {
                return Some(full);
            }
            cause = c.source();
        }
        None
    }
}

/// The errno in `e`'s chain of causes that means "no space": `ENOSPC`, or
/// `EDQUOT` (a quota, which is the same thing to whoever owns the store).
pub fn no_space_errno(e: &(dyn Error + 'static)) -> Option<i32> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .filter(|&code| code == libc::ENOSPC || code == libc::EDQUOT)
        {
            return Some(code);
        }
        cause = c.source();
    }
    None
}

/// A store's room as one worker judges it (shared by its jobs, its
/// readiness check and its metrics: clones share everything).
#[derive(Clone)]
pub struct StoreSpace {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    min_free: u64,
    ran_out: Mutex<Option<RanOut>>,
    /// What the last [`StoreSpace::check`] said, to log only changes.
    full: AtomicBool,
    free_bytes: IntGauge,
    size_bytes: IntGauge,
    free_inodes: IntGauge,
    required: IntGauge,
    full_total: IntCounter,
    descs: Vec<Desc>,
}

/// The last write that ran out of space, while the store has not had room
/// since.
struct RanOut {
    at: Instant,
    /// Free bytes the failed work had (at its start, or after it).
    free_then: u64,
    /// Free bytes needed before the store counts as having room again.
    required: u64,
}

impl std::fmt::Debug for StoreSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSpace")
            .field("root", &self.inner.root)
            .field("min_free", &self.inner.min_free)
            .finish_non_exhaustive()
    }
}

impl StoreSpace {
    /// The store at `root`, which must keep `min_free` bytes free for work
    /// to start (0: no floor, and a write that ran out of space changes
    /// nothing: what `exploder explode` uses).
    pub fn new(root: impl Into<PathBuf>, min_free: u64) -> StoreSpace {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("a valid gauge");
        let free_bytes = gauge(
            "exploder_store_free_bytes",
            "Bytes free on the store's file system for unprivileged writers (statvfs f_bavail).",
        );
        let size_bytes = gauge(
            "exploder_store_size_bytes",
            "Size of the store's file system in bytes.",
        );
        let free_inodes = gauge(
            "exploder_store_free_inodes",
            "Inodes free on the store's file system (0 where it does not count them).",
        );
        let required = gauge(
            "exploder_store_required_free_bytes",
            "Free bytes this worker needs to start layer and image jobs: --store-min-free, \
             raised after a write ran out of space until the store has that much more room.",
        );
        let full_total = IntCounter::new(
            "exploder_worker_store_full_total",
            "Writes to the store that ran out of space (ENOSPC, EDQUOT); each failed its job \
             as transient.",
        )
        .expect("a valid counter");
        required.set(clamp(min_free));
        let descs = [&free_bytes, &size_bytes, &free_inodes, &required]
            .into_iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .chain(full_total.desc().into_iter().cloned())
            .collect();
        StoreSpace {
            inner: Arc::new(Inner {
                root: root.into(),
                min_free,
                ran_out: Mutex::new(None),
                full: AtomicBool::new(false),
                free_bytes,
                size_bytes,
                free_inodes,
                required,
                full_total,
                descs,
            }),
        }
    }

    /// Exports the store's room (`exploder_store_*`, refreshed by every
    /// [`Self::check`]) and the writes that ran out of space.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.clone()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<RanOut>> {
        self.inner
            .ran_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether there is room to start work (an ingest, a finalize): `Ok`
    /// with the free bytes measured (hand them to [`Self::ran_out`] if the
    /// work runs out), `Err` saying why not. Measures the store (blocking:
    /// a network file system may take its time) and updates the metrics.
    /// A store that cannot be measured is not judged here (`Ok(None)`):
    /// the work (or the readiness probe's write) meets the real error.
    pub fn check(&self) -> Result<Option<u64>, StoreFull> {
        let verdict = self.judge(true);
        // Said once when it changes, not at every job that waits.
        let was_full = self.inner.full.swap(verdict.is_err(), Ordering::Relaxed);
        match (&verdict, was_full) {
            (Err(full), false) => tracing::warn!("{full}; layer and image jobs wait for room"),
            (Ok(_), true) => tracing::info!(
                store = %self.inner.root.display(),
                "the store has room again: layer and image jobs go on"
            ),
            _ => {}
        }
        verdict
    }

    /// Whether there is room for a small write (a tag's link): the floor
    /// does not apply, only a write that ran out of space since the store
    /// last had room says no.
    pub fn check_small_write(&self) -> Result<(), StoreFull> {
        self.judge(false).map(|_| ())
    }

    fn judge(&self, floor: bool) -> Result<Option<u64>, StoreFull> {
        let Ok(room) = Room::of(&self.inner.root) else {
            return Ok(None);
        };
        let inner = &self.inner;
        inner.free_bytes.set(clamp(room.free_bytes));
        inner.size_bytes.set(clamp(room.size_bytes));
        inner.free_inodes.set(clamp(room.free_inodes));
        let mut state = self.state();
        if state
            .as_ref()
            .is_some_and(|r| room.free_bytes >= r.required)
        {
            *state = None;
        }
        let required = state.as_ref().map_or(inner.min_free, |r| r.required);
        inner.required.set(clamp(required));
        let low = |why: String| StoreFull::Low {
            store: inner.root.clone(),
            why,
        };
        if let Some(r) = &*state {
            return Err(low(format!(
                "a write ran out of space {} ago with {} free: work waits until {} are \
                 free, --store-min-free ({}) more than then ({} now)",
                ago(r.at.elapsed()),
                human_bytes(r.free_then),
                human_bytes(r.required),
                human_bytes(inner.min_free),
                human_bytes(room.free_bytes)
            )));
        }
        if !floor {
            return Ok(Some(room.free_bytes));
        }
        if room.free_bytes < inner.min_free {
            return Err(low(format!(
                "{} free of {}, less than --store-min-free ({})",
                human_bytes(room.free_bytes),
                human_bytes(room.size_bytes),
                human_bytes(inner.min_free)
            )));
        }
        if inner.min_free > 0 && room.out_of_inodes() {
            return Err(low(format!(
                "{} of its {} inodes free (under 1%)",
                room.free_inodes, room.inodes
            )));
        }
        Ok(Some(room.free_bytes))
    }

    /// Measures the store every `every`, so that its metrics stay current
    /// with no job nor probe asking. A measure that hangs (a network file
    /// system) delays the next one, never piles threads up.
    pub async fn measure_every(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let space = self.clone();
            let _ = tokio::task::spawn_blocking(move || space.check()).await;
        }
    }

    /// `e` as a [`StoreFull`] error when a write ran out of space somewhere
    /// in it (else `None`), counting it. With a floor, the store then
    /// counts as full until it has `--store-min-free` more room than the
    /// failed work had: than it had when the work started (`free_at_start`,
    /// what [`Self::check`] measured), or than now if that is more. The
    /// room at the start is what the work could use at most, whatever
    /// other workers on the store were doing meanwhile; now is measured
    /// too, so call this once the work's staging directory is removed.
    pub fn ran_out(
        &self,
        e: &(dyn Error + 'static),
        free_at_start: Option<u64>,
    ) -> Option<StoreFull> {
        let code = no_space_errno(e)?;
        let inner = &self.inner;
        inner.full_total.inc();
        if inner.min_free > 0
            && let Ok(room) = Room::of(&inner.root)
        {
            let had = free_at_start.unwrap_or(0).max(room.free_bytes);
            let required = had.saturating_add(inner.min_free);
            let mut state = self.state();
            if state.as_ref().is_none_or(|r| r.required < required) {
                *state = Some(RanOut {
                    at: Instant::now(),
                    free_then: had,
                    required,
                });
            }
            inner
                .required
                .set(clamp(state.as_ref().map_or(required, |r| r.required)));
            inner.free_bytes.set(clamp(room.free_bytes));
        }
        Some(StoreFull::RanOut {
            store: inner.root.clone(),
            during: e.to_string(),
            source: io::Error::from_raw_os_error(code),
        })
    }
}

impl Collector for StoreSpace {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    /// The last measured values: measuring here could block a scrape on a
    /// hung network file system (the worker measures in the background).
    fn collect(&self) -> Vec<MetricFamily> {
        let i = &self.inner;
        [&i.free_bytes, &i.size_bytes, &i.free_inodes, &i.required]
            .into_iter()
            .flat_map(|g| g.collect())
            .chain(i.full_total.collect())
            .collect()
    }
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

fn ago(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    #[test]
    fn no_space_is_found_among_the_causes_and_nothing_else_is() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing etc/big")]
        struct Wrapped(#[source] io::Error);
        assert_eq!(no_space_errno(&Wrapped(enospc())), Some(libc::ENOSPC));
        let quota = io::Error::from_raw_os_error(libc::EDQUOT);
        assert_eq!(no_space_errno(&quota), Some(libc::EDQUOT));
        assert_eq!(
            no_space_errno(&Wrapped(io::Error::from_raw_os_error(libc::EACCES))),
            None
        );
        assert_eq!(no_space_errno(&io::Error::other("No space left")), None);
    }

    #[test]
    fn a_store_with_room_above_the_floor_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let space = StoreSpace::new(dir.path().join("not-yet"), 1);
        space.check().unwrap();
        assert!(space.inner.free_bytes.get() > 0);
        assert_eq!(space.inner.required.get(), 1);
    }

    #[test]
    fn below_the_floor_work_waits_and_says_how_much_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let space = StoreSpace::new(dir.path(), u64::MAX);
        let full = space.check().unwrap_err();
        assert!(full.not_tried());
        let text = full.to_string();
        assert!(
            text.starts_with(&format!("the store {} is full: ", dir.path().display())),
            "{text}"
        );
        assert!(text.contains("less than --store-min-free"), "{text}");
        assert!(text.contains("exploder gc --confirm"), "{text}");
    }

    #[test]
    fn after_running_out_the_store_is_full_until_it_has_the_floor_more_room() {
        let dir = tempfile::tempdir().unwrap();
        let space = StoreSpace::new(dir.path(), 1 << 20);
        space.check().unwrap();
        let full = space
            .ran_out(&enospc(), None)
            .expect("ENOSPC is a full store");
        assert!(!full.not_tried());
        assert!(
            full.to_string().contains("No space left on device"),
            "{full}"
        );
        assert_eq!(space.inner.full_total.get(), 1);
        // Nothing was freed: still full, and it says why.
        let waiting = space.check().unwrap_err().to_string();
        assert!(waiting.contains("a write ran out of space"), "{waiting}");
        // The room it needs appears (here: the requirement is met by hand).
        space.state().as_mut().unwrap().required = 0;
        space.check().unwrap();
        assert!(space.state().is_none());
        assert_eq!(space.inner.required.get(), 1 << 20);
    }

    #[test]
    fn after_running_out_work_waits_for_more_room_than_it_started_with() {
        let dir = tempfile::tempdir().unwrap();
        let space = StoreSpace::new(dir.path(), 1 << 20);
        let free = space.check().unwrap().expect("measured");
        // The work started with far more than is free now (other work
        // freed nothing since, or filled it): that much and the floor.
        space.ran_out(&enospc(), Some(free + (1 << 40))).unwrap();
        assert_eq!(
            space.inner.required.get() as u64,
            free + (1 << 40) + (1 << 20)
        );
        assert!(space.check().is_err());
    }

    #[test]
    fn without_a_floor_running_out_is_reported_but_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let space = StoreSpace::new(dir.path(), 0);
        assert!(space.ran_out(&enospc(), None).is_some());
        space.check().unwrap();
        assert!(space.ran_out(&io::Error::other("other"), None).is_none());
    }

    #[test]
    fn the_metrics_are_exported_under_their_contract_names() {
        let dir = tempfile::tempdir().unwrap();
        let space = StoreSpace::new(dir.path(), 5);
        let registry = Registry::new();
        space.register(&registry).unwrap();
        space.check().unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "exploder_store_free_bytes",
                "exploder_store_free_inodes",
                "exploder_store_required_free_bytes",
                "exploder_store_size_bytes",
                "exploder_worker_store_full_total",
            ]
        );
    }
}
