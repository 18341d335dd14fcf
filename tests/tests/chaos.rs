//! Chaos: an operator's bad afternoon, in one run. A fleet of workers
//! explodes twenty images while, on a seeded schedule, workers are
//! SIGKILLed and restarted at random, the broker goes away for a few
//! seconds and Redis forgets everything. Once the faults stop, the fleet
//! must finish every image, each equal to umoci's tree, with nothing
//! dead-lettered, no link to a half-built image and no staging left in
//! `tmp/`.
//!
//! A seed fixes the schedule (when a kill comes and which worker it hits,
//! how long the chaos lasts), so a failing seed can be replayed:
//!
//! ```text
//! cargo build --workspace --bins
//! EXPLODER_CHAOS_SEEDS=2 cargo test -p exploder-tests --test chaos -- --nocapture
//! ```
//!
//! The schedule is reproducible, the interleaving is not: where in its
//! work a kill lands still depends on the machine. Seeds run one after
//! another in one test (three fleets at once would swamp a 2-core CI
//! machine), each with its own store, prefix, broker and Redis; the
//! registry and the images are built once and shared. The workers reach
//! the registry through a [`SlowLink`], at a remote registry's speed, so
//! that the work outlasts the first faults.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use exploder_common::job::Job;
use exploder_queue::topology::Topology;
use exploder_tests::fleet::{Fleet, PrivateRabbit, PrivateRedis, QueueDepth};
use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, SlowLink, SplitMix64, UmociBundle,
    compare_trees_with, debootstrap_rootfs, linked_rootfs, tar_dir, umoci_reference,
};

/// The seeds CI runs; `EXPLODER_CHAOS_SEEDS=7,9` replaces them.
const DEFAULT_SEEDS: &[u64] = &[1, 2, 3];
const SEEDS_VAR: &str = "EXPLODER_CHAOS_SEEDS";

/// Workers in the fleet, each restarted as soon as it is killed.
const WORKERS: usize = 3;
/// Two jobs of each kind per worker, so a kill takes several in-flight
/// jobs down at once; a short claim lease, so a dead worker's layer is
/// taken over within seconds; devices, because the Debian base has /dev
/// nodes and umoci creates them.
const WORKER_ARGS: &[&str] = &["--concurrency", "2", "--claim-ttl", "3", "--allow-devices"];
/// The fleet's upkeep, quick enough for a test: dead owners' staging is
/// swept every 2 s, and the resync looks every 2 s for requests with no
/// sign of progress for 20 s (jobs the broker or Redis lost).
const UPKEEP_ARGS: &[&str] = &[
    "--sweep-interval",
    "2s",
    "--resync-interval",
    "2s",
    "--resync-after",
    "20s",
];
/// How long `tmp/` may take to empty once every image is linked.
const SWEEP_WITHIN: Duration = Duration::from_secs(20);

/// The chaos window, seeded within these bounds (seconds).
const CHAOS_SECS: (u64, u64) = (30, 45);
/// Time between two kills, seeded within these bounds (milliseconds).
const KILL_GAP_MS: (u64, u64) = (500, 3000);
/// The broker goes down this far into the window, for this long: while the
/// shared base layer is still being ingested and retries are parked.
const BROKER_DOWN_AT: Duration = Duration::from_secs(8);
const BROKER_DOWN_FOR: Duration = Duration::from_secs(5);
/// Redis loses every key (pending sets, leases, parked image jobs).
const REDIS_FLUSH_AT: Duration = Duration::from_secs(20);

/// After the chaos, how long the fleet has to link everything.
const SETTLE_WITHIN: Duration = Duration::from_secs(6 * 60);
/// Without a new link for this long, and with nothing left that could make
/// one (every queue empty) or a verdict already certain (a dead letter),
/// waiting longer only delays the report.
const STALL: Duration = Duration::from_secs(60);

/// The registry's speed, per connection, as the workers see it. On
/// loopback the whole workload is exploded in about five seconds, before
/// the first outage; at this rate the shared base layer takes about eight
/// seconds to download, so ingests are cut short by kills and the base is
/// still missing (image jobs parked, layer jobs redelivered) when the
/// broker and Redis go away.
const REGISTRY_BYTES_PER_SEC: u64 = 6 << 20;

/// The signal a killed worker must have died of (Linux numbering).
const SIGKILL: i32 = 9;

/// Every image is pushed under this tag.
const TAG: &str = "v1";
/// Log lines of each worker shown in a failure report.
const LOG_TAIL: usize = 40;

/// Every seed's run must end with every image exploded, exactly, and
/// nothing lost or left behind; the failures of all seeds are reported
/// together.
#[test]
fn a_fleet_under_kills_a_broker_restart_and_a_redis_flush_still_explodes_every_image() {
    let seeds = seeds();
    let workload = Workload::build();
    let registry = Registry::start();
    workload.push(&registry);
    let remote = SlowLink::start(&registry.addr(), REGISTRY_BYTES_PER_SEC);
    let mut references = References::default();
    let mut failures = Vec::new();
    for seed in seeds {
        let started = Instant::now();
        match run_seed(seed, &remote.addr(), &workload, &mut references) {
            Ok(()) => eprintln!("chaos seed {seed}: ok in {:.0?}", started.elapsed()),
            Err(report) => {
                eprintln!("chaos seed {seed}: FAILED in {:.0?}", started.elapsed());
                failures.push(report);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `EXPLODER_CHAOS_SEEDS` (comma-separated), or [`DEFAULT_SEEDS`].
fn seeds() -> Vec<u64> {
    match std::env::var(SEEDS_VAR) {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{SEEDS_VAR}={list}: {s:?}: {e}"))
            })
            .collect(),
        _ => DEFAULT_SEEDS.to_vec(),
    }
}

/// One seed: a fresh fleet explodes the whole workload, pulled from the
/// registry at `registry` (`host:port`), through the chaos; `Err` is the
/// failure report.
fn run_seed(
    seed: u64,
    registry: &str,
    workload: &Workload,
    references: &mut References,
) -> Result<(), String> {
    let schedule = Schedule::new(seed);
    eprintln!("chaos seed {seed}: {schedule}");
    // Declared first, dropped last: the workers die (with the fleet)
    // before their store goes away.
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::Builder::new()
        .prefix(&format!("chaos-seed{seed}-logs-"))
        .tempdir()
        .unwrap();
    let rabbit = PrivateRabbit::start();
    let redis = PrivateRedis::start();
    let mut fleet = Fleet::with_services(&format!("chaos{seed}"), &rabbit.url(), &redis.url());
    fleet.apply_topology();

    // Everything is queued before the first worker starts: when the first
    // kill comes, every worker holds jobs and the shared base is mid-ingest.
    for subject in &workload.subjects {
        fleet.enqueue_ok(&subject.reference(registry), store.path());
    }
    let mut crew = Crew::start(&mut fleet, store.path(), logs.path());
    let mut watch = LinkWatch::new(store.path());
    let happened = schedule.unleash(&mut fleet, &mut crew, &rabbit, &redis, &mut watch);
    eprintln!("chaos seed {seed}: faults over, waiting for the fleet to settle");

    let settle_started = Instant::now();
    let gave_up = wait_all_linked(&fleet, workload, &mut watch);
    let settled_in = settle_started.elapsed();
    eprintln!("chaos seed {seed}: settled (or gave up) in {settled_in:.0?}; judging");
    let judging = Instant::now();
    let problems = judge(
        &mut fleet, &mut crew, workload, references, &mut watch, gave_up,
    );
    eprintln!("chaos seed {seed}: judged in {:.0?}", judging.elapsed());
    if problems.is_empty() {
        return Ok(());
    }
    // Keep the full logs for a post-mortem; the report has their tails.
    let logs_dir = logs.keep();
    Err(report(Report {
        seed,
        schedule: &schedule,
        happened: &happened,
        problems: &problems,
        missing: &workload
            .missing(store.path())
            .iter()
            .map(|s| s.progress(store.path()))
            .collect::<Vec<_>>(),
        queues: &fleet.queue_depths(),
        crew: &crew,
        logs_dir: &logs_dir,
        settled_in,
    }))
}

/// Everything that must hold once the fleet has settled, as a list of
/// what does not: every image linked, to the manifest pushed, never to a
/// half-built image, equal to umoci's tree; no dead letter; `tmp/` empty;
/// no worker gone but by the test's hand.
fn judge(
    fleet: &mut Fleet,
    crew: &mut Crew,
    workload: &Workload,
    references: &mut References,
    watch: &mut LinkWatch,
    gave_up: Option<String>,
) -> Vec<String> {
    let store = watch.store.clone();
    watch.check();
    let mut problems: Vec<String> = gave_up.into_iter().collect();
    problems.extend(crew.deaths_of_their_own(fleet));
    problems.extend(watch.partial_links.iter().cloned());
    problems.extend(wrong_links(&store, workload));
    problems.extend(trees_differing_from_umoci(&store, workload, references));
    let dead = fleet.peek_dead();
    if !dead.is_empty() {
        problems.push(format!(
            "{} job(s) in the dead-letter queue:\n{}",
            dead.len(),
            describe_dead(&dead)
        ));
    }
    let requests = fleet.status(&store)["requests"].clone();
    if requests["outstanding"] != 0 || requests["failed"] != 0 {
        problems.push(format!("exploder status still shows requests: {requests}"));
    }
    // Last: the comparisons above gave a sweep time to run.
    let leftovers = wait_tmp_empty(&store, SWEEP_WITHIN);
    if !leftovers.is_empty() {
        problems.push(format!(
            "tmp/ still holds {} entries (waited {SWEEP_WITHIN:?} for a sweep): {}",
            leftovers.len(),
            leftovers.join(", ")
        ));
    }
    problems
}

// ---------------------------------------------------------------------------
// The workload: big images on a shared Debian base, small edge images, and
// zstd copies of some of them under other names.

/// One image of the workload and where it is pushed
/// (`<namespace>/<name>:v1`, linked at `images/<namespace>/<name>/v1/link`).
struct Subject {
    namespace: &'static str,
    name: String,
    image: Image,
}

impl Subject {
    fn new(namespace: &'static str, name: impl Into<String>, image: Image) -> Subject {
        Subject {
            namespace,
            name: name.into(),
            image,
        }
    }

    fn repo(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The reference on the registry at `registry` (`host:port`).
    fn reference(&self, registry: &str) -> String {
        format!("{registry}/{}:{TAG}", self.repo())
    }

    fn link(&self, store: &Path) -> PathBuf {
        store
            .join("images")
            .join(self.namespace)
            .join(&self.name)
            .join(TAG)
            .join("link")
    }

    fn is_linked(&self, store: &Path) -> bool {
        self.link(store).is_file()
    }

    /// How far this image got: its layers in the layer store, its digest
    /// directory built. Tells a lost image job from a missing layer.
    fn progress(&self, store: &Path) -> String {
        let hex = |d: &str| d.strip_prefix("sha256:").unwrap_or(d).to_string();
        let ingested = self
            .image
            .diff_ids()
            .iter()
            .filter(|d| store.join("layers/sha256").join(hex(d)).is_dir())
            .count();
        let built = store
            .join("digest/sha256")
            .join(hex(&self.image.manifest_digest()))
            .join("rootfs")
            .is_dir();
        format!(
            "{self} ({ingested}/{} layers ingested, {})",
            self.image.layers.len(),
            if built { "built" } else { "not built" }
        )
    }

    /// The same tars, zstd-compressed, under `chaos-zstd/`: a new manifest
    /// and new blobs with the same diff_ids, so the layer store must serve
    /// both copies from one layer directory.
    fn recompressed_with_zstd(&self) -> Subject {
        let mut image = self.image.clone();
        image.layers = image
            .layers
            .iter()
            .map(|l| Layer::zstd(l.tar().to_vec()))
            .collect();
        Subject::new("chaos-zstd", self.name.clone(), image)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{TAG}", self.repo())
    }
}

struct Workload {
    subjects: Vec<Subject>,
}

impl Workload {
    /// Six images on the Debian base, ten small edge images, and zstd
    /// copies of two of each: twenty in all. Built once per test process
    /// (the base layer takes a while to tar and compress).
    fn build() -> Workload {
        let started = Instant::now();
        let base = debian_base();
        let big: Vec<Subject> = (0..6)
            .map(|i| Subject::new("chaos", format!("app{i}"), app_on(&base, i)))
            .collect();
        let shared = edge_base();
        let edge: Vec<Subject> = (0..10)
            .map(|i| Subject::new("chaos", format!("edge{i}"), edge_image(&shared, i)))
            .collect();
        let zstd: Vec<Subject> = [&big[0], &big[1], &edge[0], &edge[1]]
            .into_iter()
            .map(Subject::recompressed_with_zstd)
            .collect();
        let subjects: Vec<Subject> = big.into_iter().chain(edge).chain(zstd).collect();
        assert!(subjects.len() >= 20, "the workload is twenty images");
        eprintln!(
            "chaos: built {} images (base layer {} MiB, {} MiB gzip) in {:.0?}",
            subjects.len(),
            base.tar().len() >> 20,
            base.blob().len() >> 20,
            started.elapsed()
        );
        Workload { subjects }
    }

    fn push(&self, registry: &Registry) {
        for subject in &self.subjects {
            registry.push(&subject.repo(), TAG, &subject.image);
        }
    }

    /// The subjects whose tag is not linked (yet).
    fn missing(&self, store: &Path) -> Vec<&Subject> {
        self.subjects
            .iter()
            .filter(|s| !s.is_linked(store))
            .collect()
    }
}

/// A real Debian minbase rootfs as one gzip layer: tens of MB and
/// thousands of files, so that its ingest takes seconds and kills land in
/// the middle of it.
fn debian_base() -> Layer {
    let base = Layer::gzip(tar_dir(&debootstrap_rootfs()));
    assert!(
        base.tar().len() >= 50 << 20,
        "the base layer is {} bytes: too small for kills to land mid-ingest",
        base.tar().len()
    );
    base
}

/// The Debian base and a small layer of the image's own.
fn app_on(base: &Layer, i: usize) -> Image {
    let mut top = LayerBuilder::new();
    top.file(
        format!("etc/chaos-app{i}"),
        format!("app {i}\n").as_bytes(),
        0o644,
    )
    .file(
        format!("usr/local/bin/app{i}"),
        vec![i as u8; 64 << 10],
        0o755,
    )
    .symlink(format!("usr/local/bin/app{i}-latest"), format!("app{i}"));
    Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(top.build()))
}

/// A tiny layer that half of the edge images start from: one layer job
/// completes several images at once (fan-in).
fn edge_base() -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("etc", 0o755)
        .file("etc/os-release", b"NAME=edge\n", 0o644)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"#!/bin/sh\necho edge\n", 0o755)
        .hardlink("usr/bin/tool-again", "usr/bin/tool")
        .symlink("usr/bin/sh", "tool");
    Layer::gzip(b.build())
}

/// Even: the shared edge base and a layer of its own that changes it.
/// Odd: a single layer of its own.
fn edge_image(shared: &Layer, i: usize) -> Image {
    let mut own = LayerBuilder::new();
    if i.is_multiple_of(2) {
        own.file(format!("etc/edge{i}"), format!("{i}\n").as_bytes(), 0o644);
        if i.is_multiple_of(4) {
            own.whiteout("etc/os-release");
        } else {
            own.file("etc/os-release", format!("NAME=edge{i}\n"), 0o644);
        }
        Image::oci()
            .layer(shared.clone())
            .layer(Layer::gzip(own.build()))
    } else {
        own.dir("./", 0o755)
            .dir("data", 0o750)
            .file("data/edge", format!("edge {i}\n").as_bytes(), 0o640)
            .symlink("data/current", "edge");
        Image::oci().layer(Layer::gzip(own.build()))
    }
}

// ---------------------------------------------------------------------------
// The schedule: splitmix64 from the seed (`exploder_tests::SplitMix64`).

/// A fault of the main sequence. The broker outage is not one of them: it
/// runs beside them (see [`Schedule::unleash`]).
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL the worker of this slot and start a new one at once.
    Kill {
        slot: usize,
    },
    FlushRedis,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { slot } => write!(f, "kill w{slot}"),
            Fault::FlushRedis => f.write_str("Redis FLUSHALL"),
        }
    }
}

/// Every fault of one seed's run, by time from the first worker's start;
/// and the broker outage at [`BROKER_DOWN_AT`].
struct Schedule {
    window: Duration,
    faults: Vec<(Duration, Fault)>,
}

impl Schedule {
    fn new(seed: u64) -> Schedule {
        let mut rng = SplitMix64(seed);
        let window = Duration::from_secs(rng.between(CHAOS_SECS.0, CHAOS_SECS.1));
        let mut faults = vec![(REDIS_FLUSH_AT, Fault::FlushRedis)];
        let mut at = Duration::ZERO;
        loop {
            at += Duration::from_millis(rng.between(KILL_GAP_MS.0, KILL_GAP_MS.1));
            if at >= window {
                break;
            }
            let slot = rng.between(0, WORKERS as u64 - 1) as usize;
            faults.push((at, Fault::Kill { slot }));
        }
        // Stable: a kill at the very time of the flush comes after it.
        faults.sort_by_key(|(at, _)| *at);
        Schedule { window, faults }
    }

    fn kills(&self) -> usize {
        self.faults
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Kill { .. }))
            .count()
    }

    /// Carries the faults out, each on time unless the one before took
    /// longer (a restart is milliseconds), and returns what happened when.
    /// The broker outage runs on a thread of its own: stopping and starting
    /// a node take seconds, during which the kills go on. Links are checked
    /// for completeness before every fault.
    fn unleash(
        &self,
        fleet: &mut Fleet,
        crew: &mut Crew,
        rabbit: &PrivateRabbit,
        redis: &PrivateRedis,
        watch: &mut LinkWatch,
    ) -> Vec<String> {
        let start = Instant::now();
        let happened = Mutex::new(Vec::new());
        let note = |what: String| happened.lock().unwrap().push((start.elapsed(), what));
        let (amqp, prefix) = (fleet.amqp.clone(), fleet.prefix.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                sleep_until(start + BROKER_DOWN_AT);
                // The jobs waiting in the queues as the broker goes, and
                // as it comes back: the same jobs must be there.
                note(format!(
                    "broker stopping (ready: {})",
                    queued_jobs(&amqp, &prefix)
                ));
                rabbit.down();
                note("broker down".into());
                std::thread::sleep(BROKER_DOWN_FOR);
                note("broker starting".into());
                rabbit.up();
                note(format!(
                    "broker up (ready: {})",
                    queued_jobs(&amqp, &prefix)
                ));
            });
            for (at, fault) in &self.faults {
                sleep_until(start + *at);
                watch.check();
                let t = start.elapsed();
                match *fault {
                    Fault::Kill { slot } => crew.crash_and_restart(fleet, slot, t),
                    Fault::FlushRedis => redis.flushall(),
                }
                note(fault.to_string());
            }
            sleep_until(start + self.window);
        });
        let mut happened = happened.into_inner().unwrap();
        happened.sort_by_key(|(t, _)| *t);
        happened
            .into_iter()
            .map(|(t, what)| format!("{:.1}s {what}", t.as_secs_f64()))
            .collect()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} of chaos, {} kills; broker down at {BROKER_DOWN_AT:?} for \
             {BROKER_DOWN_FOR:?}; Redis flushed at {REDIS_FLUSH_AT:?}",
            self.window,
            self.kills()
        )
    }
}

/// The non-empty queues of the fleet, as `name: ready` (the prefix left
/// out), for the record of what happened.
fn queued_jobs(amqp: &str, prefix: &str) -> String {
    let held: Vec<String> = exploder_tests::fleet::queue_depths(amqp, prefix)
        .into_iter()
        .filter_map(|q| {
            let name = q.queue.strip_prefix(prefix).unwrap_or(&q.queue).to_string();
            match q.depth {
                Ok((0, _)) => None,
                Ok((ready, _)) => Some(format!("{name}: {ready}")),
                Err(e) => Some(format!("{name}: {e}")),
            }
        })
        .collect();
    if held.is_empty() {
        "none".to_string()
    } else {
        held.join(", ")
    }
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

// ---------------------------------------------------------------------------
// The workers.

/// The fleet's worker slots. A killed slot gets a new worker at once, with
/// the same arguments, appending to the slot's log.
struct Crew {
    store: PathBuf,
    logs: Vec<PathBuf>,
    pids: Vec<u32>,
    restarts: Vec<usize>,
    /// Workers found dead when their kill came: they exited by themselves,
    /// which a worker must never do on an outage.
    self_exits: Vec<String>,
}

impl Crew {
    fn start(fleet: &mut Fleet, store: &Path, logs: &Path) -> Crew {
        let mut crew = Crew {
            store: store.to_path_buf(),
            logs: (0..WORKERS)
                .map(|i| logs.join(format!("w{i}.log")))
                .collect(),
            pids: Vec::new(),
            restarts: vec![0; WORKERS],
            self_exits: Vec::new(),
        };
        for slot in 0..WORKERS {
            let pid = crew.spawn(fleet, slot);
            crew.pids.push(pid);
        }
        crew
    }

    fn spawn(&self, fleet: &mut Fleet, slot: usize) -> u32 {
        let args: Vec<&str> = WORKER_ARGS.iter().chain(UPKEEP_ARGS).copied().collect();
        fleet.start_worker_appending(&self.store, &self.logs[slot], &args)
    }

    fn crash_and_restart(&mut self, fleet: &mut Fleet, slot: usize, at: Duration) {
        let status = fleet.kill_worker(self.pids[slot]);
        if status.signal() != Some(SIGKILL) {
            self.self_exits.push(format!(
                "w{slot} (pid {}) had exited by itself ({status}) before its kill at {:.1}s",
                self.pids[slot],
                at.as_secs_f64()
            ));
        }
        self.restarts[slot] += 1;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.logs[slot])
            .unwrap();
        writeln!(
            log,
            "==== chaos: pid {} SIGKILLed at {:.1}s; restarting ====",
            self.pids[slot],
            at.as_secs_f64()
        )
        .unwrap();
        self.pids[slot] = self.spawn(fleet, slot);
    }

    /// Workers that exited without being killed: those found dead by a
    /// kill, and those not running now.
    fn deaths_of_their_own(&mut self, fleet: &mut Fleet) -> Vec<String> {
        let mut out = std::mem::take(&mut self.self_exits);
        for (slot, pid) in self.pids.iter().enumerate() {
            if let Some(status) = fleet.worker_exited(*pid) {
                out.push(format!("w{slot} (pid {pid}) exited by itself ({status})"));
            }
        }
        out
    }

    /// The last `lines` lines of each slot's log.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (slot, path) in self.logs.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "==== w{slot} (pid {}, {} restarts), last {} of {} lines ====\n{}\n",
                self.pids[slot],
                self.restarts[slot],
                tail.len(),
                all.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Waiting and judging.

/// Progress of the links, and any link ever seen pointing at an incomplete
/// digest directory (checked again and again: a link must never point at
/// a half-built image, not even for a moment).
struct LinkWatch {
    store: PathBuf,
    linked: usize,
    last_progress: Instant,
    partial_links: BTreeSet<String>,
}

impl LinkWatch {
    fn new(store: &Path) -> LinkWatch {
        LinkWatch {
            store: store.to_path_buf(),
            linked: 0,
            last_progress: Instant::now(),
            partial_links: BTreeSet::new(),
        }
    }

    /// Counts the links, and records those that point at an incomplete
    /// digest directory.
    fn check(&mut self) -> usize {
        let links = links_under(&self.store.join("images"));
        for link in &links {
            if let Some(problem) = incomplete_target(&self.store, link) {
                self.partial_links.insert(problem);
            }
        }
        if links.len() > self.linked {
            self.linked = links.len();
            self.last_progress = Instant::now();
        }
        links.len()
    }
}

/// Waits until every subject is linked (`None`), or gives up with the
/// reason: at [`SETTLE_WITHIN`], or once nothing has been linked for
/// [`STALL`] while the outcome is already decided (a dead letter) or no
/// work is left to link anything (every queue empty).
fn wait_all_linked(fleet: &Fleet, workload: &Workload, watch: &mut LinkWatch) -> Option<String> {
    let start = Instant::now();
    let mut next_stall_check = Instant::now() + STALL;
    let total = workload.subjects.len();
    loop {
        watch.check();
        let missing = workload.missing(&watch.store).len();
        if missing == 0 {
            return None;
        }
        if start.elapsed() > SETTLE_WITHIN {
            return Some(format!(
                "{missing} of {total} images not linked {SETTLE_WITHIN:?} after the faults \
                 stopped"
            ));
        }
        let idle = watch.last_progress.elapsed();
        if idle >= STALL && Instant::now() >= next_stall_check {
            next_stall_check = Instant::now() + Duration::from_secs(10);
            let dead = fleet.peek_dead().len();
            // Work and retry queues; a queue that cannot be read counts
            // as not empty.
            let dlq = Topology::new(&fleet.prefix).dead_letters();
            let queued: u64 = fleet
                .queue_depths()
                .iter()
                .filter(|q| q.queue != dlq)
                .map(|q| q.depth.as_ref().map_or(1, |(ready, _)| *ready as u64))
                .sum();
            if dead > 0 || queued == 0 {
                return Some(format!(
                    "{missing} of {total} images not linked; gave up {:.0?} after the faults \
                     stopped: no new link for {idle:.0?}, {dead} dead letter(s), {queued} \
                     job(s) queued",
                    start.elapsed()
                ));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every `link` file under `dir`.
fn links_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(links_under(&p));
            } else if p.file_name().is_some_and(|n| n == "link") {
                out.push(p);
            }
        }
    }
    out
}

/// Why `link` points at something other than a complete digest directory,
/// if it does.
fn incomplete_target(store: &Path, link: &Path) -> Option<String> {
    let text = std::fs::read_to_string(link).ok()?;
    let Some(hex) = text.trim().strip_prefix("sha256:") else {
        return Some(format!("{} holds {text:?}", link.display()));
    };
    let dir = store.join("digest/sha256").join(hex);
    ["rootfs", "manifest.json", "config.json", "image.json"]
        .into_iter()
        .find(|part| !dir.join(part).exists())
        .map(|part| {
            format!(
                "{} points at {} without {part}",
                link.display(),
                dir.display()
            )
        })
}

/// Linked subjects whose link names another manifest than the one pushed.
fn wrong_links(store: &Path, workload: &Workload) -> Vec<String> {
    workload
        .subjects
        .iter()
        .filter_map(|s| {
            let linked = std::fs::read_to_string(s.link(store)).ok()?;
            let want = s.image.manifest_digest();
            (linked.trim() != want).then(|| format!("{s} is linked to {linked:?}, not {want}"))
        })
        .collect()
}

/// umoci's unpack of each distinct image, made once and shared by every
/// seed. Keyed by config digest: the config lists the diff_ids, so one
/// config is one tree, whichever compression its layers were pushed with.
#[derive(Default)]
struct References(HashMap<String, UmociBundle>);

impl References {
    fn of(&mut self, image: &Image) -> &Path {
        self.0
            .entry(image.config_digest())
            .or_insert_with(|| umoci_reference(image))
            .rootfs()
    }
}

/// Each linked subject's tree against umoci's, as fleet.rs compares them:
/// entry by entry, the root's mtime aside (the edge images without `./`
/// leave it to the time of unpacking).
fn trees_differing_from_umoci(
    store: &Path,
    workload: &Workload,
    references: &mut References,
) -> Vec<String> {
    let opts = CompareOptions::default().ignore_root_mtime();
    let mut out = Vec::new();
    for s in workload.subjects.iter().filter(|s| s.is_linked(store)) {
        let linked = linked_rootfs(store, s.namespace, &s.name, TAG);
        if !linked.is_dir() {
            continue; // reported as a partial link
        }
        let diffs = compare_trees_with(references.of(&s.image), &linked, &opts);
        if !diffs.is_empty() {
            out.push(format!(
                "{s} differs from umoci's tree in {} entries, first:\n  {}",
                diffs.len(),
                diffs[..diffs.len().min(20)].join("\n  ")
            ));
        }
    }
    out
}

/// What is left in `<store>/tmp/` once it has had `within` to empty.
fn wait_tmp_empty(store: &Path, within: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let mut left: Vec<String> = std::fs::read_dir(store.join("tmp"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() || start.elapsed() >= within {
            left.sort();
            return left;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn describe_dead(dead: &[(Option<Job>, String)]) -> String {
    dead.iter()
        .map(|(job, reason)| {
            let what = match job {
                Some(Job::Layer(j)) => {
                    format!("layer {} (blob {}) of {}", j.diff_id, j.digest, j.source)
                }
                Some(Job::Image(j)) => format!(
                    "image {} for {}",
                    j.manifest_digest,
                    j.links
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(Job::Export(j)) => format!("{} export of {}", j.format, j.manifest_digest),
                None => "an undecodable job".to_string(),
            };
            format!("  - {what}: {reason}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything a failure report says.
struct Report<'a> {
    seed: u64,
    schedule: &'a Schedule,
    happened: &'a [String],
    problems: &'a [String],
    /// Each image not linked, with how far it got.
    missing: &'a [String],
    queues: &'a [QueueDepth],
    crew: &'a Crew,
    logs_dir: &'a Path,
    settled_in: Duration,
}

fn report(r: Report) -> String {
    let missing = if r.missing.is_empty() {
        " none".to_string()
    } else {
        format!("\n  {}", r.missing.join("\n  "))
    };
    let queues = r
        .queues
        .iter()
        .map(|q| match &q.depth {
            Ok((ready, consumers)) => {
                format!("  {}: {ready} ready, {consumers} consumers", q.queue)
            }
            Err(e) => format!("  {}: {e}", q.queue),
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "chaos seed {seed} FAILED (replay: {SEEDS_VAR}={seed} cargo test -p exploder-tests \
         --test chaos -- --nocapture)\n\
         schedule: {schedule}\n\
         faults: {happened}\n\
         settled (or gave up) {settled:.0?} after the faults stopped\n\
         images not linked:{missing}\n\
         problems:\n- {problems}\n\
         queues:\n{queues}\n\
         full worker logs: {logs}\n{tails}",
        seed = r.seed,
        schedule = r.schedule,
        happened = r.happened.join(", "),
        settled = r.settled_in,
        problems = r.problems.join("\n- "),
        logs = r.logs_dir.display(),
        tails = r.crew.log_tails(LOG_TAIL),
    )
}
