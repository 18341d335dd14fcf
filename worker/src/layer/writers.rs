//! The writer pool of one layer: threads that create the inodes the tar
//! reader decided on, so that on a disk where each create costs a
//! millisecond of kernel time the reader never waits for one. Finalize
//! uses the same pool to put the layer store's files into an image
//! ([`Op::Put`]), under the same rules.
//!
//! The *rules* (what goes to a writer, what the reader waits for) are in
//! the module documentation of [`super::unpack`]; this module is the
//! mechanics:
//!
//! - [`Writers::submit`] hands a [`Job`] (a file with its content, a
//!   symlink, a fifo or a hardlink, in a parent directory that exists) to
//!   the least busy writer, or to the writer already holding the job it
//!   depends on; each writer runs its jobs in the order received;
//! - every submitted job is remembered by the physical path it creates
//!   until it is known to be done: [`Writers::wait_for`] blocks until the
//!   job at a path is done, [`Writers::drain`] until all are;
//! - the queue is bounded in bytes ([`QUEUE_BYTES`], file content
//!   included): `submit` blocks while it is full;
//! - a job that fails is recorded with its tar position, and the error of
//!   the earliest entry is what the layer fails with, as if the entries had
//!   been applied one by one.
//!
//! With fewer than two threads there are no writers: `submit` runs the job
//! at once, on the reader's thread.
//!
//! # How many writers (`--write-threads`, [`WriteThreads`])
//!
//! The pool pays only where creating an inode costs well more than handing
//! it to a thread: on the disk issue 13 measured (725 µs per create from
//! one thread, 364 µs from two), a disk congested by writeback, a FUSE or
//! network file system. Where a create takes a few microseconds (tmpfs, a
//! disk absorbing writes in the page cache) the hand-off and the extra
//! threads competing with inflate for the cores cost up to 25% instead
//! (see `docs/BENCHMARKS.md`). So the default, `auto`, starts without
//! writers and times the reader's own creates: once the median of a window
//! of [`PROBE_WINDOW`] mostly-metadata jobs (no file content over
//! [`PROBED_CONTENT`]) exceeds [`SLOW_CREATE`] in [`SLOW_WINDOWS`] windows
//! in a row, the pool starts for the rest of the layer. Nothing is in
//! flight when it starts (inline jobs are done when `submit` returns), so
//! no rule above is at stake.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::objects::{Adopt, LayerObjects, Placed};
use super::unpack::{UnpackError, apply_via_proc};
use crate::meta::Meta;

/// Bytes the jobs waiting for a writer may hold, file contents included.
pub const QUEUE_BYTES: usize = 16 << 20;

/// Files up to this size travel to a writer with their content; larger
/// ones are written by the reader itself (their time goes to data, not to
/// creating an inode, and they would fill the queue).
pub const SMALL_FILE: usize = 1 << 20;

/// In `auto` mode, the median create time over a window above which the
/// pool starts. Measured medians per window (release build, the app2
/// image of `scripts/bench`): tmpfs 4–58 µs (median 6), a local FUSE
/// mount 77–105 µs and up, this disk 8 µs while the page cache absorbs
/// writes and 150–430 µs while writeback is congested; the pool was
/// faster on FUSE and on the congested disk, slower on tmpfs.
pub const SLOW_CREATE: Duration = Duration::from_micros(60);

/// Creates timed before `auto` mode decides (again).
pub const PROBE_WINDOW: usize = 32;

/// Files with more content than this are not timed in `auto` mode: their
/// time goes to data, which the pool does not make cheaper.
pub const PROBED_CONTENT: usize = 64 << 10;

/// How many threads create the inodes of one layer or image
/// (`--write-threads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteThreads {
    /// Always this many writers; 1: the reader alone.
    Fixed(usize),
    /// The reader alone until its creates prove slower than `slow_create`
    /// (see the module documentation), then `threads` writers.
    Auto {
        threads: usize,
        slow_create: Duration,
    },
}

impl WriteThreads {
    /// `auto`, with up to one writer per core (at least two: a pool of one
    /// is only a detour).
    pub fn auto() -> WriteThreads {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        WriteThreads::Auto {
            threads: cores.max(2),
            slow_create: SLOW_CREATE,
        }
    }
}

impl Default for WriteThreads {
    fn default() -> Self {
        WriteThreads::auto()
    }
}

impl std::fmt::Display for WriteThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteThreads::Fixed(n) => write!(f, "{n}"),
            WriteThreads::Auto { .. } => f.write_str("auto"),
        }
    }
}

/// What a queued job counts for beyond its content (the job itself, its
/// path and name, metadata).
const JOB_OVERHEAD: usize = 512;

/// What a job creates.
pub enum Op {
    File {
        content: Vec<u8>,
        meta: Meta,
        /// The layer's objects, if files are shared (see
        /// [`super::objects`]).
        objects: Option<Arc<LayerObjects>>,
    },
    Symlink {
        target: Vec<u8>,
        meta: Meta,
    },
    Fifo {
        meta: Meta,
    },
    /// A hardlink to `name` in `parent`, an earlier entry of this layer.
    Hardlink {
        parent: Arc<OwnedFd>,
        name: Vec<u8>,
    },
    /// Whatever the caller decided creates the inode (`name` in `parent`,
    /// given as arguments): finalize materializing a layer-store file by a
    /// hardlink, a copy or a reflink.
    Put(Put),
}

/// The creation of one inode, run on a writer with the job's parent
/// directory and name.
pub type Put = Box<dyn Fn(std::os::fd::BorrowedFd<'_>, &[u8]) -> io::Result<()> + Send>;

/// One inode to create: `name` in `parent`, where nothing is now.
pub struct Job {
    /// The entry's position in the tar (the earliest failure wins).
    pub seq: u64,
    /// The entry's path as the tar names it, for messages.
    pub path: Vec<u8>,
    pub parent: Arc<OwnedFd>,
    pub name: Vec<u8>,
    pub op: Op,
}

/// How files are written, the same for every job of a layer.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Set owners (the process runs as root).
    pub chown: bool,
    /// Start each file's writeback as soon as it is written.
    pub start_writeback: bool,
}

impl Job {
    /// Whether the job's time is mostly creating an inode (what `auto`
    /// mode times).
    fn is_metadata(&self) -> bool {
        match &self.op {
            Op::File { content, .. } => content.len() <= PROBED_CONTENT,
            _ => true,
        }
    }

    fn cost(&self) -> usize {
        let content = match &self.op {
            Op::File { content, .. } => content.len(),
            Op::Symlink { target, .. } => target.len(),
            _ => 0,
        };
        JOB_OVERHEAD + self.path.len() + content
    }

    fn run(&self, s: Settings) -> Result<(), UnpackError> {
        self.create(s).map_err(|source| UnpackError::Io {
            path: String::from_utf8_lossy(&self.path).into_owned(),
            source,
        })
    }

    fn create(&self, s: Settings) -> io::Result<()> {
        let (parent, name) = (self.parent.as_fd(), self.name.as_slice());
        match &self.op {
            Op::File {
                content,
                meta,
                objects,
            } => {
                let adopt = match objects {
                    Some(o) => {
                        let claim = o.claim_content(content, meta);
                        match o.place(claim, parent, name, content.len() as u64)? {
                            Placed::Linked => return Ok(()),
                            Placed::Write(adopt) => adopt,
                        }
                    }
                    None => Adopt::No,
                };
                let mut file = create_file(parent, name)?;
                file.write_all(content)?;
                finish_file(&file, meta, s)?;
                if let Some(o) = objects {
                    o.adopt(adopt, parent, name);
                }
                Ok(())
            }
            Op::Symlink { target, meta } => {
                // The target is stored as written; it is only ever resolved
                // in-root, so `/etc/passwd` or `../../..` cannot escape.
                rustix::fs::symlinkat(target.as_slice(), parent, name)?;
                meta.apply_symlink(parent, name, s.chown)
            }
            Op::Fifo { meta } => make_fifo(parent, name, meta, s.chown),
            Op::Hardlink {
                parent: from,
                name: from_name,
            } => Ok(rustix::fs::linkat(
                from.as_fd(),
                from_name.as_slice(),
                parent,
                name,
                AtFlags::empty(),
            )?),
            Op::Put(put) => put(parent, name),
        }
    }
}

/// Creates `name` in `parent` for writing; it must not exist (an earlier
/// entry there was removed first), and a symlink there is never followed.
/// Creates a fifo `name` in `parent` with `meta`.
pub fn make_fifo(
    parent: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    chown: bool,
) -> io::Result<()> {
    rustix::fs::mknodat(parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    apply_via_proc(meta, fd.as_fd(), chown)
}

pub fn create_file(parent: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

/// A written file's last steps: writeback started, final metadata.
pub fn finish_file(file: &std::fs::File, meta: &Meta, s: Settings) -> io::Result<()> {
    if s.start_writeback {
        start_writeback(file);
    }
    meta.apply_fd(file.as_fd(), s.chown)
}

/// Asks the kernel to start writing this file's data back now, without
/// waiting. The layer is flushed (`syncfs`) before it is published; by then
/// most of its data is already on disk, so that flush is short instead of
/// writing the whole layer at the end.
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for the duration of the call. Failure only loses the head start.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// The `n`th job sent to writer `worker` (counting from 1).
#[derive(Clone, Copy, Debug)]
struct Ticket {
    worker: usize,
    n: u64,
}

struct Worker {
    tx: Option<mpsc::Sender<(Job, usize)>>,
    handle: Option<JoinHandle<()>>,
    /// Jobs sent so far.
    sent: u64,
}

/// What the writers and the reader share.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Some job failed (the reader stops submitting).
    failed: AtomicBool,
}

struct State {
    /// Jobs done, per writer (each runs its jobs in order).
    done: Vec<u64>,
    /// Bytes of the jobs sent and not done.
    queued: usize,
    /// The failure of the earliest entry, with its tar position.
    error: Option<(u64, UnpackError)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer threads of one layer, as seen from the reader.
pub struct Writers {
    settings: Settings,
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    /// Physical path → the job creating it, until known to be done.
    pending: HashMap<Vec<u8>, Ticket>,
    /// `pending` is pruned of done jobs when it grows past this.
    prune_at: usize,
    /// In `auto` mode until the pool starts: the reader's create times.
    probe: Option<Probe>,
}

/// `auto` mode's watch on the reader's own creates.
struct Probe {
    threads: usize,
    slow_create: Duration,
    window: Vec<Duration>,
    /// Slow windows in a row.
    slow_windows: u32,
}

/// Slow windows in a row that start the pool: the first creates of a
/// layer (a cold directory, the other threads starting) can be slow on a
/// fast disk too.
const SLOW_WINDOWS: u32 = 2;

impl Probe {
    fn new(threads: usize, slow_create: Duration) -> Probe {
        Probe {
            threads,
            slow_create,
            window: Vec::with_capacity(PROBE_WINDOW),
            slow_windows: 0,
        }
    }

    /// Records one create; once [`SLOW_WINDOWS`] windows in a row were
    /// slow, the last one's median.
    fn slow_after(&mut self, took: Duration) -> Option<Duration> {
        self.window.push(took);
        if self.window.len() < PROBE_WINDOW {
            return None;
        }
        // The median, not the mean: one preemption in the window must not
        // start a pool on a fast disk.
        let (_, median, _) = self.window.select_nth_unstable(PROBE_WINDOW / 2);
        let median = *median;
        self.window.clear();
        tracing::trace!("median create time over {PROBE_WINDOW} creates: {median:?}");
        if median <= self.slow_create {
            self.slow_windows = 0;
            return None;
        }
        self.slow_windows += 1;
        (self.slow_windows >= SLOW_WINDOWS).then_some(median)
    }
}

impl Writers {
    /// No threads: every job runs at once on the caller's thread.
    pub fn inline(settings: Settings) -> Writers {
        Writers::spawn(WriteThreads::Fixed(1), settings)
    }

    /// The writers `threads` says: a pool now (none, i.e. inline, for
    /// fewer than two), or in `auto` mode none until creates prove slow.
    pub fn spawn(threads: WriteThreads, settings: Settings) -> Writers {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                done: Vec::new(),
                queued: 0,
                error: None,
            }),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        let mut writers = Writers {
            settings,
            workers: Vec::new(),
            shared,
            pending: HashMap::new(),
            prune_at: 4096,
            probe: None,
        };
        match threads {
            WriteThreads::Fixed(n) => writers.start_pool(n),
            WriteThreads::Auto {
                threads,
                slow_create,
            } => writers.probe = Some(Probe::new(threads, slow_create)),
        }
        writers
    }

    /// Writer threads running now (0: jobs run on the reader's thread).
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Starts `threads` writers (none for fewer than two). Only while
    /// nothing is in flight: there are no writers yet.
    fn start_pool(&mut self, threads: usize) {
        debug_assert!(self.workers.is_empty());
        let (shared, settings) = (&self.shared, self.settings);
        let mut workers = Vec::new();
        for i in 0..if threads < 2 { 0 } else { threads } {
            let (tx, rx) = mpsc::channel::<(Job, usize)>();
            let theirs = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("layer-writer-{i}"))
                .spawn(move || write_jobs(i, rx, &theirs, settings));
            match spawned {
                Ok(handle) => workers.push(Worker {
                    tx: Some(tx),
                    handle: Some(handle),
                    sent: 0,
                }),
                // Out of threads: make do with those there are.
                Err(e) => {
                    tracing::warn!("starting a layer writer thread: {e}");
                    break;
                }
            }
        }
        if workers.len() < 2 {
            // One writer thread is only a detour for the reader.
            for mut w in workers.drain(..) {
                w.tx.take();
                if let Some(h) = w.handle.take() {
                    let _ = h.join();
                }
            }
        }
        shared.lock().done = vec![0; workers.len()];
        self.workers = workers;
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Creates what `job` says at `physical`, now or on a writer thread.
    /// With `after` (the physical path of an earlier entry the job links
    /// to), the job runs after the job creating that path. Blocks while
    /// the queue is full. Fails once any writer failed.
    pub fn submit(
        &mut self,
        physical: Vec<u8>,
        job: Job,
        after: Option<&[u8]>,
    ) -> Result<(), UnpackError> {
        if self.workers.is_empty() {
            let Some(probe) = self.probe.as_mut().filter(|_| job.is_metadata()) else {
                return job.run(self.settings);
            };
            let start = Instant::now();
            let result = job.run(self.settings);
            if let Some(median) = probe.slow_after(start.elapsed()) {
                let threads = probe.threads;
                self.probe = None;
                tracing::debug!(
                    "creating an inode takes {median:?} (median of {PROBE_WINDOW}): starting {threads} writer threads"
                );
                self.start_pool(threads);
            }
            return result;
        }
        self.check()?;
        let cost = job.cost();
        let after = after.and_then(|p| self.pending.get(p).copied());
        let w = {
            let mut st = self.shared.lock();
            while st.queued > 0 && st.queued + cost > QUEUE_BYTES {
                st = self.shared.wait(st);
            }
            st.queued += cost;
            match after {
                Some(t) if st.done[t.worker] < t.n => t.worker,
                _ => (0..self.workers.len())
                    .min_by_key(|&i| self.workers[i].sent - st.done[i])
                    .expect("at least two writers"),
            }
        };
        let worker = &mut self.workers[w];
        let sent = worker
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((job, cost)).is_ok());
        if !sent {
            return Err(writer_gone());
        }
        worker.sent += 1;
        let ticket = Ticket {
            worker: w,
            n: worker.sent,
        };
        self.pending.insert(physical, ticket);
        if self.pending.len() > self.prune_at {
            let st = self.shared.lock();
            self.pending.retain(|_, t| st.done[t.worker] < t.n);
            drop(st);
            self.prune_at = (self.pending.len() * 2).max(4096);
        }
        Ok(())
    }

    /// If a job creating `physical` was submitted, waits until it is done
    /// and returns true (the path now holds what the job made, or nothing
    /// if it failed).
    pub fn wait_for(&mut self, physical: &[u8]) -> bool {
        let Some(t) = self.pending.remove(physical) else {
            return false;
        };
        self.wait(t);
        true
    }

    fn wait(&self, t: Ticket) {
        let mut st = self.shared.lock();
        while st.done[t.worker] < t.n {
            st = self.shared.wait(st);
        }
    }

    /// Waits until every submitted job is done.
    pub fn drain(&mut self) {
        for (w, worker) in self.workers.iter().enumerate() {
            self.wait(Ticket {
                worker: w,
                n: worker.sent,
            });
        }
        self.pending.clear();
    }

    /// Fails once a job failed (its error comes from [`Writers::first_error`]).
    pub fn check(&self) -> Result<(), UnpackError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(UnpackError::Io {
                path: String::new(),
                source: io::Error::other("a layer writer failed"),
            });
        }
        Ok(())
    }

    /// The error the layer fails with when the reader failed with `e` at
    /// tar position `seq`: after every job is done, a writer's failure of
    /// an entry up to `seq` if there is one (at `seq` itself, `e` can only
    /// be the echo of [`Writers::check`]: nothing of an entry fails after
    /// its job was submitted), else `e`.
    pub fn first_error(&mut self, seq: u64, e: UnpackError) -> UnpackError {
        self.drain();
        match self.shared.lock().error.take() {
            Some((s, earlier)) if s <= seq => earlier,
            _ => e,
        }
    }

    /// Waits for every job; the earliest failure, if any.
    pub fn finish(&mut self) -> Result<(), UnpackError> {
        self.drain();
        match self.shared.lock().error.take() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Hanging up ends the writer's loop once its queue is empty.
            w.tx.take();
        }
        for w in &mut self.workers {
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

fn writer_gone() -> UnpackError {
    UnpackError::Io {
        path: String::new(),
        source: io::Error::other("a layer writer thread is gone"),
    }
}

/// A writer thread: runs its jobs in order until the reader hangs up.
fn write_jobs(i: usize, rx: mpsc::Receiver<(Job, usize)>, shared: &Shared, settings: Settings) {
    for (job, cost) in rx {
        // A panic is this job's failure, not a writer that silently stops
        // counting (the reader would wait for it forever).
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| job.run(settings)))
            .unwrap_or_else(|_| {
                Err(UnpackError::Io {
                    path: String::from_utf8_lossy(&job.path).into_owned(),
                    source: io::Error::other("a layer writer thread panicked"),
                })
            });
        let mut st = shared.lock();
        st.done[i] += 1;
        st.queued -= cost;
        if let Err(e) = result {
            if st.error.as_ref().is_none_or(|(s, _)| job.seq < *s) {
                st.error = Some((job.seq, e));
            }
            shared.failed.store(true, Ordering::Release);
        }
        drop(st);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            chown: false,
            start_writeback: false,
        }
    }

    /// Submits `n` empty files named f0, f1, ... in `dir`.
    fn create_files(w: &mut Writers, dir: &std::path::Path, n: usize) {
        let parent = Arc::new(OwnedFd::from(std::fs::File::open(dir).unwrap()));
        for i in 0..n {
            let name = format!("f{i}").into_bytes();
            let job = Job {
                seq: i as u64,
                path: name.clone(),
                parent: parent.clone(),
                name: name.clone(),
                op: Op::File {
                    content: Vec::new(),
                    meta: Meta::default(),
                    objects: None,
                },
            };
            w.submit(name, job, None).unwrap();
        }
        w.finish().unwrap();
    }

    fn auto(slow_create: Duration) -> WriteThreads {
        WriteThreads::Auto {
            threads: 3,
            slow_create,
        }
    }

    #[test]
    fn auto_mode_starts_no_writers_while_creates_are_fast() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writers::spawn(auto(Duration::from_secs(60)), settings());
        create_files(&mut w, dir.path(), 4 * PROBE_WINDOW);
        assert_eq!(w.threads(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            4 * PROBE_WINDOW
        );
    }

    #[test]
    fn auto_mode_starts_the_pool_after_windows_of_slow_creates() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writers::spawn(auto(Duration::ZERO), settings());
        let before = SLOW_WINDOWS as usize * PROBE_WINDOW - 1;
        create_files(&mut w, dir.path(), before);
        assert_eq!(w.threads(), 0, "before the windows are full");
        let dir2 = tempfile::tempdir().unwrap();
        create_files(&mut w, dir2.path(), 1);
        assert_eq!(w.threads(), 3);
        assert_eq!(std::fs::read_dir(dir2.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_fixed_count_starts_its_writers_at_once_and_one_is_none() {
        assert_eq!(
            Writers::spawn(WriteThreads::Fixed(4), settings()).threads(),
            4
        );
        assert_eq!(
            Writers::spawn(WriteThreads::Fixed(1), settings()).threads(),
            0
        );
    }

    #[test]
    fn the_median_decides_so_one_stall_starts_no_pool() {
        let mut p = Probe::new(2, Duration::from_micros(250));
        let mut slow = None;
        for i in 0..PROBE_WINDOW {
            let took = if i == 7 {
                Duration::from_millis(50)
            } else {
                Duration::from_micros(40)
            };
            slow = slow.or(p.slow_after(took));
        }
        assert_eq!(slow, None);
        assert!(p.window.is_empty(), "a new window begins");
    }

    #[test]
    fn one_slow_window_between_fast_ones_starts_no_pool() {
        let mut p = Probe::new(2, Duration::from_micros(250));
        let window = |p: &mut Probe, each: u64| {
            (0..PROBE_WINDOW)
                .map(|_| p.slow_after(Duration::from_micros(each)))
                .fold(None, Option::or)
        };
        assert_eq!(window(&mut p, 900), None, "the first slow window");
        assert_eq!(window(&mut p, 40), None);
        assert_eq!(window(&mut p, 900), None, "slow again, not in a row");
        assert_eq!(
            window(&mut p, 800),
            Some(Duration::from_micros(800)),
            "two in a row"
        );
    }
}
