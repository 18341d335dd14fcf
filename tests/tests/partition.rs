//! Several hosts, partitioned (issue 24, item 2).
//!
//! The broker, Redis and the registry run on one host ("svc"), the
//! producer on another, and three workers each on its own: network
//! namespaces on a bridge (`exploder_tests::netns`), the store one
//! directory for all, as a network file system would be. The registry
//! sends each worker at most [`RATE`], so a 32 MiB layer takes seconds and a
//! fault lands in the middle of it.
//!
//! Each test is one fault: packets between one host and one peer dropped
//! both ways (`iptables -j DROP`: a blackhole, connections left half-open,
//! no reset), held for [`HOLD`] (longer than the AMQP heartbeat, the claim
//! lease and a backoff tier), then healed. Whatever the fault, once healed:
//! every image is linked, equal to umoci's tree; each tag was linked once;
//! nothing is dead-lettered; `tmp/` is empty; and no process is stuck
//! (every daemon is ready again, and exits 0 on SIGTERM). Each prints the
//! time from the cut and from the heal to the last link (the fleet works
//! around a worker's fault: its last link often comes before the heal).
//!
//! The daemons run with the deadlines a test can wait for: a heartbeat of
//! 2 s (a silent peer is given up after 4 s), a claim lease of 4 s, a Redis
//! timeout of 2 s and a registry timeout of 3 s (60 s, the default, where
//! the fleet must not wait for it).
//!
//! Needs root, iproute2, iptables, rabbitmq-server, redis-server,
//! docker-registry and umoci (`scripts/test` installs them).
//!
//! ```text
//! cargo build --workspace --bins
//! cargo nextest run -p exploder-tests --test partition --no-capture
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use exploder_queue::topology::Topology;
use exploder_tests::netns::{Cut, Host, Lab, Peer, Rabbit, Redis};
use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, SplitMix64, compare_trees_with,
    exploder_bin, exploder_producer_bin, exploder_worker_bin, linked_rootfs, umoci_reference,
};

/// How long each fault is held: longer than two heartbeats (4 s), a claim
/// lease (4 s) and the first backoff tier (5 s) together, so that the fleet
/// must work around the fault, not wait it out.
const HOLD: Duration = Duration::from_secs(20);
/// What the registry sends each worker, per second.
const RATE: u64 = 3 << 20;
/// The shared layer: ~11 s at [`RATE`], so that the holder is still in
/// the middle of it when a fault has been noticed (two heartbeats, a lease).
const BIG: usize = 32 << 20;
/// A fault lands once the holder has this much of the big layer.
const MID_BLOB: u64 = 4 << 20;
/// The flags that make the daemons' deadlines short enough for a test.
const DEADLINES: &[&str] = &[
    "--amqp-heartbeat",
    "2s",
    "--amqp-timeout",
    "5s",
    "--redis-timeout",
    "2s",
];
const TAG: &str = "v1";
const WEBHOOK_TOKEN: &str = "partition-t0ken";
/// Watchdogs, far above what a passing run takes: reaching them is the
/// failure (a fleet that never finishes), not a timing that is asserted.
const SETTLE_WITHIN: Duration = Duration::from_secs(240);
const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_worker_cut_from_the_broker_mid_job_hands_its_job_to_another() {
    let mut w = World::start("broker", false);
    let holder = w.holding_the_big_layer();
    let fault = w.workers[holder].cut(Peer::Service(w.svc.addr, Rabbit::PORT));
    let heal = w.hold(&fault, Some((holder, "RabbitMQ is not reachable")));
    // The broker gave the job (the heartbeat) and the lease (no renewal)
    // up during the fault: another worker took the layer before the heal.
    let taken = w.claimed_by_others(holder, &w.images.big_diff_id());
    assert!(
        taken.iter().any(|at| *at < heal.at),
        "no other worker claimed the big layer during the fault (claims after it: {taken:?})\n{}",
        w.logs()
    );
    w.settle_and_judge("cut from the broker", &heal);
}

#[test]
fn a_worker_cut_from_redis_stops_before_another_takes_its_claim() {
    let mut w = World::start("redis", false);
    let holder = w.holding_the_big_layer();
    let layer = w.images.big_diff_id();
    let fault = w.workers[holder].cut(Peer::Service(w.svc.addr, Redis::PORT));
    let heal = w.hold(&fault, Some((holder, "Redis is not reachable")));
    // The holder could not renew its claim: it gave the layer up, and
    // stopped reading it, before another worker claimed it.
    let stopped = w.daemons[holder]
        .events()
        .into_iter()
        .find(|e| e.message.contains("stopped ingesting layer") && e.message.contains(&layer))
        .unwrap_or_else(|| panic!("the holder never stopped its ingest\n{}", w.logs()));
    let taken = w.claimed_by_others(holder, &layer);
    let first = taken.first().copied().unwrap_or_else(|| {
        panic!(
            "no other worker claimed the layer during the fault\n{}",
            w.logs()
        )
    });
    assert!(
        stopped.at < first,
        "the holder stopped at {:.3} but another worker claimed the layer at {first:.3}: two \
         downloads at once\n{}",
        stopped.at,
        w.logs()
    );
    assert!(
        first < heal.at,
        "the layer waited for the heal\n{}",
        w.logs()
    );
    eprintln!(
        "redis: the holder stopped {:.1}s into the fault; another worker claimed the layer {:.1}s \
         after that",
        stopped.at - heal.cut_at,
        first - stopped.at
    );
    w.settle_and_judge("cut from Redis", &heal);
}

#[test]
fn a_worker_cut_from_the_registry_mid_blob_does_not_stall_the_fleet() {
    let mut w = World::start("registry", false);
    // The holder's own download gives up only after minutes without a
    // byte (three times this): the fleet must not wait for that.
    w.registry_timeout = "60s";
    let holder = w.holding_the_big_layer();
    let layer = w.images.big_diff_id();
    let fault = w.workers[holder].cut(Peer::Service(w.svc.addr, w.registry_port()));
    let heal = w.hold(&fault, None);
    // No bytes, no renewal: the claim lapsed and another worker took the
    // layer while the holder was still cut off.
    let taken = w.claimed_by_others(holder, &layer);
    assert!(
        taken.iter().any(|at| *at < heal.at),
        "no other worker claimed the layer during the fault (claims after it: {taken:?})\n{}",
        w.logs()
    );
    w.settle_and_judge("cut from the registry", &heal);
}

#[test]
fn pushes_while_the_producer_is_cut_from_the_broker_are_all_linked() {
    let mut w = World::start("producer", true);
    w.start_workers(&[0, 1, 2]);
    let producer = w.producer_host.clone().expect("a producer host");
    let fault = producer.cut(Peer::Service(w.svc.addr, Rabbit::PORT));
    let cut_at = epoch_secs();
    // The registry's notifications of these pushes are refused (503) until
    // the producer reaches the broker again; the registry retries them.
    w.push_all();
    let heal = w.hold_since(&fault, cut_at, Some((0, "RabbitMQ")));
    let refused = w.daemons[0]
        .events()
        .into_iter()
        .filter(|e| e.message.starts_with("webhook answered 503") && e.at < heal.at)
        .count();
    assert!(
        refused > 0,
        "no webhook arrived during the fault\n{}",
        w.logs()
    );
    eprintln!("producer: {refused} webhook deliveries answered 503 during the fault");
    w.settle_and_judge("producer cut from the broker", &heal);
}

#[test]
fn a_worker_host_cut_off_from_everything_rejoins_once_healed() {
    let mut w = World::start("host", false);
    let holder = w.holding_the_big_layer();
    let fault = w.workers[holder].cut(Peer::Everything);
    let heal = w.hold(&fault, Some((holder, "RabbitMQ is not reachable")));
    let taken = w.claimed_by_others(holder, &w.images.big_diff_id());
    assert!(
        taken.iter().any(|at| *at < heal.at),
        "no other worker claimed the big layer during the fault\n{}",
        w.logs()
    );
    w.settle_and_judge("host cut off", &heal);
}

/// A connection attempt to a broker behind a partition (its SYNs vanish)
/// gives up at its deadline: lapin's connect has none of its own, and the
/// kernel retries a SYN for about two minutes.
#[test]
fn a_connection_to_a_broker_behind_a_partition_gives_up_at_its_deadline() {
    let mut lab = Lab::new();
    let svc = lab.host("svc");
    let client = lab.host("client");
    let _fault = svc.cut(Peer::Everything);
    let started = Instant::now();
    let mut child = client
        .command(exploder_bin())
        .args(["topology", "apply", "--prefix", "partition-connect-"])
        .args([
            "--amqp-url",
            &format!("amqp://guest:guest@{}:5672/%2f", svc.addr),
        ])
        .args(["--connect-timeout", "5s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exploder");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("exploder topology apply still connecting after 90s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!(
        "a broker behind a partition given up after {:.1?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach RabbitMQ"), "{stderr}");
}

// ---------------------------------------------------------------------------
// The workload.

/// Three images: two share the big layer (two layer jobs for it, so a
/// second worker waits on the first one's claim), one is small.
struct Images {
    subjects: Vec<(String, Image)>,
    big: Layer,
}

impl Images {
    fn build() -> Images {
        let mut rng = SplitMix64(24);
        let mut big = LayerBuilder::new();
        big.dir("opt", 0o755).dir("opt/big", 0o755);
        for i in 0..3 {
            let mut bytes = vec![0u8; BIG / 3];
            for chunk in bytes.chunks_mut(8) {
                let n = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&n[..chunk.len()]);
            }
            big.file(format!("opt/big/part{i}"), bytes, 0o644);
        }
        let big = Layer::gzip(big.build());
        let own = |name: &str| {
            let mut b = LayerBuilder::new();
            b.dir("etc", 0o755)
                .file(format!("etc/{name}"), format!("{name}\n"), 0o644)
                .symlink(format!("etc/{name}-current"), name);
            Layer::gzip(b.build())
        };
        let subjects = vec![
            (
                "alpha".to_string(),
                Image::oci().layer(big.clone()).layer(own("alpha")),
            ),
            (
                "beta".to_string(),
                Image::oci().layer(big.clone()).layer(own("beta")),
            ),
            ("gamma".to_string(), Image::oci().layer(own("gamma"))),
        ];
        Images { subjects, big }
    }

    fn big_diff_id(&self) -> String {
        self.big.diff_id().to_string()
    }
}

const NAMESPACE: &str = "part";

fn repo(name: &str) -> String {
    format!("{NAMESPACE}/{name}")
}

// ---------------------------------------------------------------------------
// The world: the lab, its services and daemons.

/// One daemon in its host, killed on drop.
struct Daemon {
    name: String,
    host: Host,
    child: Option<Child>,
    log: PathBuf,
    /// Where its /metrics and /readyz are (`addr:port`).
    metrics: String,
}

impl Daemon {
    fn ready(&self) -> Result<(u16, String), String> {
        self.host.http_get(&self.metrics, "/readyz")
    }

    fn events(&self) -> Vec<Event> {
        events(&self.log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One line of a daemon's JSON log.
#[derive(Debug)]
struct Event {
    /// Seconds since the epoch.
    at: f64,
    message: String,
    fields: serde_json::Value,
}

fn events(log: &Path) -> Vec<Event> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Event {
                at: parse_rfc3339(v["timestamp"].as_str()?)?,
                message: v["fields"]["message"].as_str().unwrap_or("").to_string(),
                fields: v["fields"].clone(),
            })
        })
        .collect()
}

/// `2026-12-07T07:58:36.317366Z` → seconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// When a fault started and ended (seconds since the epoch, the clock of
/// the daemons' logs).
struct Heal {
    cut_at: f64,
    at: f64,
    /// The daemon the fault hit, if it is asked for its readiness.
    daemon: Option<usize>,
}

struct World {
    // Dropped first: the daemons, then the services, the store, the lab.
    daemons: Vec<Daemon>,
    registry: Registry,
    _redis: Redis,
    rabbit: Rabbit,
    prefix: String,
    store: tempfile::TempDir,
    /// Kept when the test fails, removed when it passes.
    logs: PathBuf,
    images: Images,
    svc: Host,
    producer_host: Option<Host>,
    workers: Vec<Host>,
    name: &'static str,
    /// The daemons' --registry-timeout.
    registry_timeout: &'static str,
    _lab: Lab,
}

impl World {
    /// The lab, its services, three worker hosts (no worker started yet),
    /// and, with `producer`, a producer the registry notifies. The images
    /// are pushed now unless the producer is to see them.
    fn start(name: &'static str, producer: bool) -> World {
        let started = Instant::now();
        let mut lab = Lab::new();
        let svc = lab.host("svc");
        let producer_host = producer.then(|| lab.host("prod"));
        let workers: Vec<Host> = (1..=3).map(|i| lab.host(&format!("w{i}"))).collect();
        let rabbit = Rabbit::start(&svc);
        let redis = Redis::start(&svc);
        let notify = match &producer_host {
            Some(p) => format!(
                "notifications:\n  endpoints:\n    - name: exploder\n      url: \
                 http://{}:8088/webhook/registry\n      headers:\n        Authorization: \
                 [\"Bearer {WEBHOOK_TOKEN}\"]\n      timeout: 5s\n      threshold: 1\n      \
                 backoff: 1s\n",
                p.addr
            ),
            None => String::new(),
        };
        let registry = svc.run(|| Registry::start_on(&svc.addr.to_string(), &notify));
        let port = registry.addr().rsplit(':').next().unwrap().parse().unwrap();
        for w in &workers {
            w.throttle_from(port, RATE);
        }
        let prefix = format!("partition-{name}-");
        let logs = tempfile::Builder::new()
            .prefix(&format!("partition-{name}-logs-"))
            .tempdir()
            .unwrap()
            .keep();
        let mut world = World {
            daemons: Vec::new(),
            registry,
            _redis: redis,
            rabbit,
            prefix,
            store: tempfile::tempdir().unwrap(),
            logs,
            images: Images::build(),
            svc,
            producer_host,
            workers,
            name,
            registry_timeout: "3s",
            _lab: lab,
        };
        let out = world.exploder(&["topology", "apply"], &["amqp"]);
        assert!(out.status.success(), "topology apply: {}", stderr(&out));
        if world.producer_host.is_some() {
            world.start_producer();
        } else {
            world.push_all();
        }
        eprintln!(
            "{name}: lab, services and images ready in {:.1?}",
            started.elapsed()
        );
        world
    }

    fn registry_port(&self) -> u16 {
        self.registry
            .addr()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn push_all(&self) {
        self.svc.run(|| {
            for (name, image) in &self.images.subjects {
                self.registry.push(&repo(name), TAG, image);
            }
        });
    }

    /// `exploder ARGS` in the services' host, pointed at this fleet
    /// (`services`: which of amqp, redis, store, registry it takes).
    fn exploder(&self, args: &[&str], services: &[&str]) -> Output {
        let mut cmd = self.svc.command(exploder_bin());
        cmd.args(args);
        for s in services {
            match *s {
                "amqp" => cmd.args(["--amqp-url", &self.rabbit.url(), "--prefix", &self.prefix]),
                "redis" => cmd.args(["--redis-url", &self.redis_url()]),
                "store" => cmd.arg("--store").arg(self.store.path()),
                "registry" => cmd.args(["--insecure-registry", &self.registry.addr()]),
                other => panic!("{other}?"),
            };
        }
        cmd.output().expect("spawn exploder")
    }

    fn redis_url(&self) -> String {
        format!("redis://{}:{}/0", self.svc.addr, Redis::PORT)
    }

    fn reference(&self, name: &str) -> String {
        format!("{}/{}:{TAG}", self.registry.addr(), repo(name))
    }

    fn enqueue_all(&self) {
        for (name, _) in &self.images.subjects {
            let out = self.exploder(
                &["enqueue", &self.reference(name), "-o", "json"],
                &["amqp", "redis", "store", "registry"],
            );
            assert!(out.status.success(), "enqueue {name}: {}", stderr(&out));
        }
    }

    /// The flags every daemon takes.
    fn fleet_args(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "--amqp-url",
            &self.rabbit.url(),
            "--redis-url",
            &self.redis_url(),
            "--prefix",
            &self.prefix,
            "--insecure-registry",
            &self.registry.addr(),
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(DEADLINES.iter().map(|s| s.to_string()));
        v.extend(["--registry-timeout".into(), self.registry_timeout.into()]);
        v.push("--store".into());
        v.push(self.store.path().display().to_string());
        v
    }

    fn start_workers(&mut self, which: &[usize]) {
        for &i in which {
            let host = self.workers[i].clone();
            let name = format!("w{}", i + 1);
            let log = self.logs.join(format!("{name}.log"));
            let metrics = format!("{}:9100", host.addr);
            let child = host
                .command(exploder_worker_bin())
                .args(self.fleet_args())
                .args([
                    "--concurrency",
                    "1",
                    "--claim-ttl",
                    "4",
                    "--grace-period",
                    "10",
                ])
                .args(["--sweep-interval", "2s", "--resync-interval", "2s"])
                .args(["--resync-after", "30s", "--metrics-listen", &metrics])
                .env("RUST_LOG", "info,lapin=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn exploder-worker");
            self.daemons.push(Daemon {
                name,
                host,
                child: Some(child),
                log,
                metrics,
            });
        }
        for i in 0..self.daemons.len() {
            self.wait_ready(i);
        }
    }

    fn start_producer(&mut self) {
        let host = self.producer_host.clone().unwrap();
        let log = self.logs.join("producer.log");
        let metrics = format!("{}:9100", host.addr);
        let child = host
            .command(exploder_producer_bin())
            .args(self.fleet_args())
            .args(["--listen", &format!("{}:8088", host.addr)])
            .args(["--metrics-listen", &metrics])
            .env("EXPLODER_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
            .env("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", self.registry.addr())
            .env("RUST_LOG", "info,lapin=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn exploder-producer");
        self.daemons.push(Daemon {
            name: "producer".into(),
            host,
            child: Some(child),
            log,
            metrics,
        });
        self.wait_ready(self.daemons.len() - 1);
    }

    /// Waits for daemon `i`'s /readyz to answer 200.
    fn wait_ready(&self, i: usize) {
        let d = &self.daemons[i];
        let start = Instant::now();
        loop {
            match d.ready() {
                Ok((200, _)) => return,
                other => assert!(
                    start.elapsed() < READY_WITHIN,
                    "{} not ready after {READY_WITHIN:?}: {other:?}\n{}",
                    d.name,
                    self.logs()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the three workers, enqueues the images, and waits until one
    /// of them is in the middle of the big layer: returns its index. The
    /// others get the rest of the jobs, among them the big layer's second
    /// job, whose claim the holder has.
    fn holding_the_big_layer(&mut self) -> usize {
        self.start_workers(&[0, 1, 2]);
        let before: Vec<u64> = self.workers.iter().map(Host::rx_bytes).collect();
        self.enqueue_all();
        let start = Instant::now();
        let holder = loop {
            // Only the holder of the big layer's claim receives megabytes.
            if let Some(i) = (0..self.workers.len())
                .find(|&i| self.workers[i].rx_bytes() - before[i] >= MID_BLOB)
            {
                break i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no worker got {MID_BLOB} bytes of the big layer\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let got = self.workers[holder].rx_bytes() - before[holder];
        assert!(
            got < BIG as u64,
            "the holder had the whole big layer ({got} bytes) before the fault: lower RATE or \
             raise BIG"
        );
        eprintln!(
            "{}: w{} has {} of {} MiB; the fault starts",
            self.name,
            holder + 1,
            got >> 20,
            BIG >> 20
        );
        holder
    }

    /// Holds `fault` for [`HOLD`] from now, then heals it; just before,
    /// `unready` (a daemon, and the reason its /readyz must give) is asked
    /// whether it is ready.
    fn hold(&self, fault: &Cut, unready: Option<(usize, &str)>) -> Heal {
        self.hold_since(fault, epoch_secs(), unready)
    }

    fn hold_since(&self, fault: &Cut, cut_at: f64, unready: Option<(usize, &str)>) -> Heal {
        let left = HOLD.saturating_sub(Duration::from_secs_f64(epoch_secs() - cut_at));
        std::thread::sleep(left);
        if let Some((i, why)) = unready {
            self.assert_unready(i, why);
        }
        fault.heal();
        eprintln!("{}: fault held {HOLD:?}, healed", self.name);
        Heal {
            cut_at,
            at: epoch_secs(),
            daemon: unready.map(|(i, _)| i),
        }
    }

    /// Daemon `i`'s /readyz while its host is cut off (asked from inside
    /// its host): not ready, saying why.
    fn assert_unready(&self, i: usize, why: &str) {
        let d = &self.daemons[i];
        match d.ready() {
            Ok((503, body)) if body.contains(why) => {
                eprintln!(
                    "{}: {} during the fault: 503 {}",
                    self.name,
                    d.name,
                    body.trim()
                )
            }
            other => panic!(
                "{} answered /readyz with {other:?} near the end of the fault, not 503 naming \
                 {why:?}\n{}",
                d.name,
                self.logs()
            ),
        }
    }

    /// When workers other than `holder` claimed `layer`, in order.
    fn claimed_by_others(&self, holder: usize, layer: &str) -> Vec<f64> {
        let mut at: Vec<f64> = self
            .daemons
            .iter()
            .filter(|d| d.name.starts_with('w') && d.name != format!("w{}", holder + 1))
            .flat_map(|d| d.events())
            .filter(|e| {
                e.message.starts_with("claimed the layer")
                    && e.fields["layer"].as_str() == Some(layer)
            })
            .map(|e| e.at)
            .collect();
        at.sort_by(f64::total_cmp);
        at
    }

    /// Whether every image is linked.
    fn all_linked(&self) -> bool {
        self.images
            .subjects
            .iter()
            .all(|(name, _)| self.link_path(name).exists())
    }

    fn link_path(&self, name: &str) -> PathBuf {
        self.store
            .path()
            .join("images")
            .join(NAMESPACE)
            .join(name)
            .join(TAG)
            .join("link")
    }

    /// Waits for every image to be linked, then checks everything that must
    /// hold after a fault, and prints the time from the heal to the last
    /// link.
    fn settle_and_judge(self, fault: &str, heal: &Heal) {
        let start = Instant::now();
        let mut ready_again = None;
        loop {
            if ready_again.is_none()
                && let Some(i) = heal.daemon
                && matches!(self.daemons[i].ready(), Ok((200, _)))
            {
                ready_again = Some(epoch_secs() - heal.at);
            }
            if self.all_linked() && (heal.daemon.is_none() || ready_again.is_some()) {
                break;
            }
            if start.elapsed() > SETTLE_WITHIN {
                self.fail(&format!(
                    "not every image linked, or the daemon the fault hit not ready, \
                     {SETTLE_WITHIN:?} after the heal"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let last_link = self
            .images
            .subjects
            .iter()
            .filter_map(|(name, _)| std::fs::metadata(self.link_path(name)).ok())
            .filter_map(|m| m.modified().ok())
            .max()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .expect("the links' times");
        let after_heal = last_link - heal.at;
        eprintln!(
            "{}: {fault}: last link {:.1}s after the cut, {} the heal{}",
            self.name,
            last_link - heal.cut_at,
            if after_heal >= 0.0 {
                format!("{after_heal:.1}s after")
            } else {
                format!("{:.1}s before", -after_heal)
            },
            match ready_again {
                Some(t) => format!("; the daemon cut off ready again {t:.1}s after the heal"),
                None => String::new(),
            }
        );
        let problems = self.judge();
        if !problems.is_empty() {
            self.fail(&problems.join("\n- "));
        }
        self.stop_all();
    }

    /// What does not hold, once every image is linked.
    fn judge(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let opts = CompareOptions::default().ignore_root_mtime();
        for (name, image) in &self.images.subjects {
            let linked = std::fs::read_to_string(self.link_path(name)).unwrap_or_default();
            if linked.trim() != image.manifest_digest() {
                problems.push(format!(
                    "{name} is linked to {linked:?}, not {}",
                    image.manifest_digest()
                ));
                continue;
            }
            let reference = umoci_reference(image);
            let tree = linked_rootfs(self.store.path(), NAMESPACE, name, TAG);
            let diffs = compare_trees_with(reference.rootfs(), &tree, &opts);
            if !diffs.is_empty() {
                problems.push(format!(
                    "{name} differs from umoci's tree: {}",
                    diffs[..diffs.len().min(10)].join("; ")
                ));
            }
            let links = self.times_linked(name);
            if links != 1 {
                problems.push(format!("{name} was linked {links} times, not once"));
            }
        }
        let built = self.builds();
        eprintln!(
            "{}: images built (finalized) per manifest: {built:?}",
            self.name
        );
        let dead = self.dead_letters();
        if dead != 0 {
            let out = self.exploder(&["dlq", "list"], &["amqp"]);
            problems.push(format!(
                "{dead} job(s) dead-lettered: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let leftovers = self.wait_tmp_empty(Duration::from_secs(30));
        if !leftovers.is_empty() {
            problems.push(format!("tmp/ still holds {leftovers:?}"));
        }
        for d in &self.daemons {
            let start = Instant::now();
            loop {
                match d.ready() {
                    Ok((200, _)) => break,
                    other if start.elapsed() > READY_WITHIN => {
                        problems.push(format!(
                            "{} is not ready {READY_WITHIN:?} after the fleet settled: {other:?}",
                            d.name
                        ));
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        problems
    }

    /// How many times the history of `name`'s tag records a link.
    fn times_linked(&self, name: &str) -> usize {
        let out = self.exploder(
            &["history", &format!("{}:{TAG}", repo(name)), "-o", "json"],
            &["store"],
        );
        assert!(out.status.success(), "history: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
        v["changes"]
            .as_array()
            .expect("history -o json lists the changes")
            .iter()
            .filter(|c| c["change"] == "linked")
            .count()
    }

    /// "image finalized" lines per manifest, across the workers' logs.
    fn builds(&self) -> BTreeMap<String, usize> {
        let mut built = BTreeMap::new();
        for d in &self.daemons {
            for e in d.events() {
                if e.message == "image finalized"
                    && let Some(m) = e.fields["manifest"].as_str()
                {
                    *built.entry(m[..19].to_string()).or_insert(0) += 1;
                }
            }
        }
        built
    }

    /// Messages in the dead-letter queue.
    fn dead_letters(&self) -> u64 {
        let dlq = Topology::new(&self.prefix).dead_letters();
        self.rabbit
            .ctl(&["list_queues", "name", "messages"])
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == dlq).then(|| f.next()?.parse::<u64>().ok())?
            })
            .sum()
    }

    fn wait_tmp_empty(&self, within: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let left: Vec<String> = std::fs::read_dir(self.store.path().join("tmp"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if left.is_empty() || start.elapsed() > within {
                return left;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM to every daemon: each must exit 0 (a stuck one would not).
    fn stop_all(mut self) {
        let mut problems = Vec::new();
        for d in &mut self.daemons {
            let Some(mut child) = d.child.take() else {
                continue;
            };
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let start = Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if start.elapsed() > EXIT_WITHIN {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            match status {
                Some(s) if s.success() => {}
                other => problems.push(format!("{} did not exit 0 on SIGTERM: {other:?}", d.name)),
            }
        }
        if !problems.is_empty() {
            self.fail(&problems.join("\n- "));
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }

    /// Every daemon's log, for a failure report.
    fn logs(&self) -> String {
        let mut out = String::new();
        for d in &self.daemons {
            let text = std::fs::read_to_string(&d.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            out.push_str(&format!(
                "---- {} ({}):\n{}\n",
                d.name,
                d.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Panics with `problem`, the queues and the logs' tails (the logs
    /// stay where they are).
    fn fail(&self, problem: &str) -> ! {
        let queues = self
            .rabbit
            .ctl(&["list_queues", "name", "messages", "consumers"]);
        panic!(
            "{}: {problem}\nqueues:\n{queues}\nlogs in {}:\n{}",
            self.name,
            self.logs.display(),
            self.logs()
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
