//! Workers on the real RabbitMQ and Redis: enqueued images get exploded,
//! shared layers are fetched once fleet-wide, and SIGTERM is a clean exit.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_tests::fleet::{Fleet, PrivateRabbit, PrivateRedis};
use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, assert_trees_equal_with, linked_rootfs,
    umoci_reference, wait_until,
};

fn image_on(base: &Layer, name: &str) -> Image {
    let mut top = LayerBuilder::new();
    top.file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(top.build()))
}

fn base() -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).dir("etc", 0o755);
    for i in 0..50 {
        b.file(format!("etc/base{i}"), vec![i as u8; 50_000], 0o644);
    }
    Layer::gzip(b.build())
}

/// Waits until every tag is linked, or panics with the workers' logs.
fn wait_linked(store: &Path, tags: &[(&str, &str)], logs: &[&Path], within: Duration) {
    let start = Instant::now();
    loop {
        let missing: Vec<_> = tags
            .iter()
            .filter(|(image, tag)| {
                !store
                    .join(format!("images/team/{image}/{tag}/link"))
                    .is_file()
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        if start.elapsed() > within {
            let logs: String = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n----\n");
            panic!("not linked after {within:?}: {missing:?}\nworker logs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_matches_umoci(store: &Path, name: &str, image: &Image) {
    let bundle = umoci_reference(image);
    assert_trees_equal_with(
        bundle.rootfs(),
        &linked_rootfs(store, "team", name, "v1"),
        &CompareOptions::default().ignore_root_mtime(),
    );
}

#[test]
fn two_images_sharing_a_base_through_two_workers_fetch_the_shared_blob_once() {
    let mut fleet = Fleet::new("share");
    fleet.apply_topology();
    let base = base();
    let one = image_on(&base, "one");
    let two = image_on(&base, "two");
    let registry = Registry::start();
    registry.push("team/one", "v1", &one);
    registry.push("team/two", "v1", &two);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (log1, log2) = (logs.path().join("w1.log"), logs.path().join("w2.log"));
    // Both images are enqueued before any worker runs: each gets a job for
    // the shared base layer, and the claim lease must keep the second
    // worker from downloading it again.
    for name in ["one", "two"] {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), store.path());
    }
    fleet.start_worker(store.path(), &log1, &["--concurrency", "2"]);
    fleet.start_worker(store.path(), &log2, &["--concurrency", "2"]);
    wait_linked(
        store.path(),
        &[("one", "v1"), ("two", "v1")],
        &[&log1, &log2],
        Duration::from_secs(60),
    );
    let fetched = registry.blob_get_count("team/one", base.digest())
        + registry.blob_get_count("team/two", base.digest());
    assert_eq!(
        fetched, 1,
        "the shared base layer was fetched {fetched} times"
    );
    assert_matches_umoci(store.path(), "one", &one);
    assert_matches_umoci(store.path(), "two", &two);
}

#[test]
fn sigterm_stops_a_worker_cleanly() {
    let mut fleet = Fleet::new("sigterm");
    fleet.apply_topology();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    let pid = fleet.start_worker(store.path(), &log, &["--grace-period", "5"]);
    // Let it connect and start consuming.
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("worker consuming")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = fleet.terminate_worker(pid, Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

/// Thirty images, each a shared base plus a layer of its own, through a
/// fleet of `workers` workers; every one is linked and equals umoci's tree.
fn many_images_through(workers: usize) {
    let mut fleet = Fleet::new(&format!("many{workers}"));
    fleet.apply_topology();
    let base = base();
    let registry = Registry::start();
    let images: Vec<(String, Image)> = (0..30)
        .map(|i| {
            let name = format!("img{i:02}");
            let image = image_on(&base, &name);
            registry.push(&format!("team/{name}"), "v1", &image);
            (name, image)
        })
        .collect();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_paths: Vec<_> = (0..workers)
        .map(|i| logs.path().join(format!("w{i}.log")))
        .collect();
    for log in &log_paths {
        fleet.start_worker(store.path(), log, &["--concurrency", "2"]);
    }
    for (name, _) in &images {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), store.path());
    }
    let tags: Vec<(&str, &str)> = images.iter().map(|(n, _)| (n.as_str(), "v1")).collect();
    let logs: Vec<&Path> = log_paths.iter().map(|p| p.as_path()).collect();
    wait_linked(store.path(), &tags, &logs, Duration::from_secs(120));
    for (name, image) in &images {
        assert_matches_umoci(store.path(), name, image);
    }
}

#[test]
fn thirty_images_through_one_worker() {
    many_images_through(1);
}

#[test]
fn thirty_images_through_three_workers() {
    many_images_through(3);
}

/// Every link points at a complete digest directory.
fn assert_no_partial_link(store: &Path) {
    for entry in walk_links(&store.join("images")) {
        let digest = std::fs::read_to_string(&entry).unwrap();
        let dir = store
            .join("digest/sha256")
            .join(digest.trim().strip_prefix("sha256:").unwrap());
        for part in ["rootfs", "manifest.json", "config.json", "image.json"] {
            assert!(
                dir.join(part).exists(),
                "{} points at {} without {part}",
                entry.display(),
                dir.display()
            );
        }
    }
}

fn walk_links(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_links(&p));
            } else if p.file_name().is_some_and(|n| n == "link") {
                out.push(p);
            }
        }
    }
    out
}

/// A worker dies (SIGKILL, at a failpoint) in the middle of a job; a second
/// worker completes every image and nothing partial is ever linked.
fn killed_worker_at(failpoint: &str) {
    let mut fleet = Fleet::new("kill");
    fleet.apply_topology();
    let base = base();
    let images: Vec<(String, Image)> = (0..3)
        .map(|i| (format!("k{i}"), image_on(&base, &format!("k{i}"))))
        .collect();
    let registry = Registry::start();
    for (name, image) in &images {
        registry.push(&format!("team/{name}"), "v1", image);
    }
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (doomed_log, survivor_log) = (
        logs.path().join("doomed.log"),
        logs.path().join("survivor.log"),
    );
    for (name, _) in &images {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), store.path());
    }
    let doomed = fleet.start_worker_env(
        store.path(),
        &doomed_log,
        &["--claim-ttl", "2"],
        &[("EXPLODER_FAILPOINT", failpoint)],
    );
    // It dies at the failpoint (a timeout here means it never got there).
    let status = fleet.wait_worker(doomed, Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{failpoint}: {status}");
    assert_no_partial_link(store.path());
    fleet.start_worker(store.path(), &survivor_log, &["--claim-ttl", "2"]);
    let tags: Vec<(&str, &str)> = images.iter().map(|(n, _)| (n.as_str(), "v1")).collect();
    wait_linked(
        store.path(),
        &tags,
        &[&doomed_log, &survivor_log],
        Duration::from_secs(90),
    );
    assert_no_partial_link(store.path());
    for (name, image) in &images {
        assert_matches_umoci(store.path(), name, image);
    }
}

#[test]
fn worker_killed_in_the_middle_of_a_layer_ingest() {
    killed_worker_at("ingest.mid-extract");
}

#[test]
fn worker_killed_before_publishing_a_layer() {
    killed_worker_at("ingest.before-publish");
}

#[test]
fn worker_killed_in_the_middle_of_a_finalize() {
    killed_worker_at("finalize.mid-apply");
}

#[test]
fn worker_killed_between_publishing_an_image_and_linking_it() {
    killed_worker_at("finalize.before-link");
}

/// A seeded pick of the n-th hit of a per-step failpoint, in 1..=max
/// (splitmix64: the same seed dies at the same step on every machine).
fn seeded_step(seed: u64, max: u64) -> u64 {
    exploder_tests::SplitMix64(seed).between(1, max)
}

/// The seeds of the random-kill tests. The doomed worker's first job has
/// more than 50 steps of each kind, so every pick lands mid-work.
const KILL_SEEDS: [u64; 3] = [1, 2, 3];

#[test]
fn worker_killed_at_seeded_random_steps_of_a_layer_ingest() {
    for seed in KILL_SEEDS {
        let spec = format!("ingest.entry@{}", seeded_step(seed, 50));
        eprintln!("seed {seed}: {spec}");
        killed_worker_at(&spec);
    }
}

#[test]
fn worker_killed_at_seeded_random_steps_of_a_finalize() {
    for seed in KILL_SEEDS {
        let spec = format!("finalize.op@{}", seeded_step(seed, 50));
        eprintln!("seed {seed}: {spec}");
        killed_worker_at(&spec);
    }
}

/// Ten images through one worker while `disrupt` strikes after the first
/// image is linked: every image still completes, correctly.
fn survives(fleet: &mut Fleet, disrupt: impl FnOnce()) {
    fleet.apply_topology();
    let base = base();
    let registry = Registry::start();
    let images: Vec<(String, Image)> = (0..10)
        .map(|i| {
            let name = format!("d{i}");
            let image = image_on(&base, &name);
            registry.push(&format!("team/{name}"), "v1", &image);
            (name, image)
        })
        .collect();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    for (name, _) in &images {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), store.path());
    }
    // The resync is the fleet's backstop for whatever a fault loses: quick
    // enough here to act within the wait below, as in the chaos test.
    fleet.start_worker(
        store.path(),
        &log,
        &[
            "--concurrency",
            "1",
            "--resync-interval",
            "2s",
            "--resync-after",
            "20s",
        ],
    );
    wait_linked(
        store.path(),
        &[(images[0].0.as_str(), "v1")],
        &[&log],
        Duration::from_secs(60),
    );
    disrupt();
    let tags: Vec<(&str, &str)> = images.iter().map(|(n, _)| (n.as_str(), "v1")).collect();
    wait_linked(store.path(), &tags, &[&log], Duration::from_secs(120));
    assert_no_partial_link(store.path());
    for (name, image) in &images {
        assert_matches_umoci(store.path(), name, image);
    }
}

#[test]
fn redis_losing_everything_mid_run_delays_but_never_loses_an_image() {
    let redis = PrivateRedis::start();
    let mut fleet = Fleet::with_services("flush", exploder_tests::fleet::AMQP, &redis.url());
    survives(&mut fleet, || redis.flushall());
}

#[test]
fn a_broker_restart_mid_run_loses_nothing() {
    let rabbit = PrivateRabbit::start();
    let mut fleet = Fleet::with_services("restart", &rabbit.url(), exploder_tests::fleet::REDIS);
    survives(&mut fleet, || {
        rabbit.down();
        std::thread::sleep(Duration::from_secs(1));
        rabbit.up();
    });
}

#[test]
fn sigterm_during_work_finishes_in_flight_jobs_and_requeues_the_rest() {
    let mut fleet = Fleet::new("termwork");
    fleet.apply_topology();
    let base = base();
    let registry = Registry::start();
    let images: Vec<(String, Image)> = (0..10)
        .map(|i| {
            let name = format!("t{i}");
            let image = image_on(&base, &name);
            registry.push(&format!("team/{name}"), "v1", &image);
            (name, image)
        })
        .collect();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (first_log, second_log) = (
        logs.path().join("first.log"),
        logs.path().join("second.log"),
    );
    for (name, _) in &images {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), store.path());
    }
    let pid = fleet.start_worker(
        store.path(),
        &first_log,
        &["--concurrency", "1", "--grace-period", "20"],
    );
    wait_linked(
        store.path(),
        &[(images[0].0.as_str(), "v1")],
        &[&first_log],
        Duration::from_secs(60),
    );
    let status = fleet.terminate_worker(pid, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(
        std::fs::read_to_string(&first_log)
            .unwrap()
            .contains("finishing in-flight jobs")
    );
    assert_no_partial_link(store.path());
    // Nothing was lost: a new worker completes the rest.
    fleet.start_worker(store.path(), &second_log, &["--concurrency", "2"]);
    let tags: Vec<(&str, &str)> = images.iter().map(|(n, _)| (n.as_str(), "v1")).collect();
    wait_linked(
        store.path(),
        &tags,
        &[&first_log, &second_log],
        Duration::from_secs(120),
    );
    for (name, image) in &images {
        assert_matches_umoci(store.path(), name, image);
    }
}

/// Waits until the dead-letter queue holds `n` messages.
fn wait_dead(
    fleet: &Fleet,
    n: usize,
    log: &Path,
) -> Vec<(Option<exploder_common::job::Job>, String)> {
    let start = Instant::now();
    loop {
        let dead = fleet.peek_dead();
        if dead.len() >= n {
            return dead;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "expected {n} dead letters, found {}: {}",
            dead.len(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_tampered_blob_is_dead_lettered_with_a_readable_reason() {
    let mut fleet = Fleet::new("tamper");
    fleet.apply_topology();
    let image = image_on(&base(), "tampered");
    let registry = Registry::start();
    registry.push("team/tampered", "v1", &image);
    let top = &image.layer_digests()[1];
    let good = std::fs::read(registry.blob_data_path(top)).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    registry.tamper_blob(top, &bad);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.enqueue_ok(
        &format!("{}/team/tampered:v1", registry.addr()),
        store.path(),
    );
    fleet.start_worker(store.path(), &log, &[]);
    // The layer job fails for good, and the image waiting for it fails at
    // once with it (not after a day of waiting), its request with it.
    let dead = wait_dead(&fleet, 2, &log);
    let (job, reason) = &dead[0];
    assert!(
        matches!(job, Some(exploder_common::job::Job::Layer(_))),
        "{job:?}"
    );
    assert!(
        reason.contains(top) && reason.contains("tampered"),
        "{reason}"
    );
    let (job, reason) = &dead[1];
    assert!(
        matches!(job, Some(exploder_common::job::Job::Image(_))),
        "{job:?}"
    );
    let diff_id = &image.diff_ids()[1];
    assert!(
        reason.contains(&format!("layer {diff_id} failed")),
        "{reason}"
    );
    assert!(!store.path().join("images/team/tampered/v1/link").exists());
    let requests = requests_status(&fleet, store.path());
    assert_eq!(requests["failed"], 1, "{requests}");
    assert_eq!(requests["outstanding"], 0, "{requests}");

    // Fix the registry, replay the dead letter: the image completes.
    registry.tamper_blob(top, &good);
    let out = exploder_tests::run_exploder([
        "dlq",
        "replay",
        "--all",
        "--amqp-url",
        &fleet.amqp,
        "--prefix",
        &fleet.prefix,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_linked(
        store.path(),
        &[("tampered", "v1")],
        &[&log],
        Duration::from_secs(60),
    );
    assert_matches_umoci(store.path(), "tampered", &image);
    assert!(fleet.peek_dead().is_empty());
    let requests = requests_status(&fleet, store.path());
    assert_eq!(requests["failed"], 0, "{requests}");
    assert_eq!(requests["outstanding"], 0, "{requests}");
}

#[test]
fn a_hostile_layer_is_dead_lettered_with_a_readable_reason() {
    let mut fleet = Fleet::new("hostile");
    fleet.apply_topology();
    let mut evil = LayerBuilder::new();
    evil.file("../../escape", b"x", 0o644);
    let image = Image::oci().layer(base()).layer(Layer::gzip(evil.build()));
    let registry = Registry::start();
    registry.push("team/evil", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.enqueue_ok(&format!("{}/team/evil:v1", registry.addr()), store.path());
    fleet.start_worker(store.path(), &log, &[]);
    let dead = wait_dead(&fleet, 1, &log);
    assert!(dead[0].1.contains("climbs above the root"), "{}", dead[0].1);
    assert!(!store.path().join("images/team/evil/v1/link").exists());
}

#[test]
fn enqueue_wait_returns_once_the_image_is_linked() {
    let mut fleet = Fleet::new("wait");
    fleet.apply_topology();
    let image = image_on(&base(), "waited");
    let registry = Registry::start();
    registry.push("team/waited", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    fleet.start_worker(store.path(), &logs.path().join("w.log"), &[]);
    let out = fleet.enqueue_with(
        &format!("{}/team/waited:v1", registry.addr()),
        store.path(),
        &["--wait", "--timeout", "60s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["linked"], true);
    // Linked by the time it returned.
    assert_matches_umoci(store.path(), "waited", &image);
}

#[test]
fn enqueue_wait_reports_a_dead_lettered_image_and_exits_1() {
    let mut fleet = Fleet::new("waitfail");
    fleet.apply_topology();
    let mut evil = LayerBuilder::new();
    evil.file("../../escape", b"x", 0o644);
    let image = Image::oci().layer(base()).layer(Layer::gzip(evil.build()));
    let registry = Registry::start();
    registry.push("team/evil", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    fleet.start_worker(store.path(), &logs.path().join("w.log"), &[]);
    let out = fleet.enqueue_with(
        &format!("{}/team/evil:v1", registry.addr()),
        store.path(),
        &["--wait", "--timeout", "60s"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("climbs above the root") && err.contains("dlq"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["linked"], false);
}

#[test]
fn a_job_of_an_unknown_schema_version_is_dead_lettered_not_fatal() {
    let mut fleet = Fleet::new("schema");
    fleet.apply_topology();
    // A body from a future producer: schema version 99 (postcard varint).
    let body = [99u8, 1, 2, 3, 4];
    let topology = exploder_queue::topology::Topology::new(&fleet.prefix);
    let amqp = fleet.amqp.clone();
    fleet.rt.block_on(async {
        let conn = lapin::Connection::connect(&amqp, Default::default())
            .await
            .unwrap();
        let publisher = exploder_queue::publish::Publisher::open(&conn, topology.clone())
            .await
            .unwrap();
        publisher
            .publish_raw(
                &topology.work_exchange(),
                "layer",
                &body,
                "from-the-future",
                Default::default(),
            )
            .await
            .unwrap();
    });
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    let pid = fleet.start_worker(store.path(), &log, &[]);
    let dead = wait_dead(&fleet, 1, &log);
    assert!(dead[0].0.is_none());
    assert!(dead[0].1.contains("version 99"), "{}", dead[0].1);
    // The worker is still running, and stops cleanly.
    let status = fleet.terminate_worker(pid, Duration::from_secs(20));
    assert!(status.success(), "{status}");
}

#[test]
fn a_job_that_kills_every_worker_ends_in_the_dead_letter_queue() {
    let mut fleet = Fleet::new("poison");
    fleet.apply_topology();
    let image = image_on(&base(), "poison");
    let registry = Registry::start();
    registry.push("team/poison", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.enqueue_ok(&format!("{}/team/poison:v1", registry.addr()), store.path());
    // Every worker dies in the middle of the layer: the delivery limit
    // (the workers count each interruption) must end the loop.
    'rounds: for round in 0..12 {
        let pid = fleet.start_worker_env(
            store.path(),
            &log,
            &[
                "--claim-ttl",
                "1",
                "--concurrency",
                "1",
                "--delivery-limit",
                "3",
            ],
            &[("EXPLODER_FAILPOINT", "ingest.mid-extract")],
        );
        let start = Instant::now();
        loop {
            if !fleet.peek_dead().is_empty() {
                break 'rounds;
            }
            if let Some(status) = fleet.worker_exited(pid) {
                assert!(!status.success(), "round {round}: {status}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "round {round}: the worker neither died nor dead-lettered the job"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let dead = fleet.peek_dead();
    assert!(
        !dead.is_empty(),
        "the poison job never reached the dead-letter queue"
    );
    assert!(matches!(
        dead[0].0,
        Some(exploder_common::job::Job::Layer(_))
    ));
    assert!(
        dead[0].1.contains("delivery limit: interrupted 4 times"),
        "{}",
        dead[0].1
    );
}

/// Worker flags that make the fleet's upkeep fast enough for a test.
const QUICK_UPKEEP: &[&str] = &[
    "--resync-interval",
    "1s",
    "--resync-after",
    "2s",
    "--sweep-interval",
    "1s",
];

/// The requests part of `exploder status --store STORE`.
fn requests_status(fleet: &Fleet, store: &Path) -> serde_json::Value {
    fleet.status(store)["requests"].clone()
}

#[test]
fn a_lost_image_job_is_healed_by_the_resync() {
    let mut fleet = Fleet::new("heal");
    fleet.apply_topology();
    let image = image_on(&base(), "healed");
    let registry = Registry::start();
    registry.push("team/healed", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    fleet.enqueue_ok(&format!("{}/team/healed:v1", registry.addr()), store.path());
    assert_eq!(requests_status(&fleet, store.path())["outstanding"], 1);
    // Lose the image job: the message, and the copy Redis keeps for the
    // fan-in. Only the request recorded in the store is left.
    assert_eq!(fleet.drain(exploder_common::job::JobKind::Image).len(), 1);
    fleet.forget_image_jobs();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.start_worker(store.path(), &log, QUICK_UPKEEP);
    wait_linked(
        store.path(),
        &[("healed", "v1")],
        &[&log],
        Duration::from_secs(60),
    );
    assert_matches_umoci(store.path(), "healed", &image);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("resync: re-driven"), "{log}");
    let requests = requests_status(&fleet, store.path());
    assert_eq!(requests["outstanding"], 0, "{requests}");
    assert_eq!(requests["failed"], 0, "{requests}");
}

/// The entries of the store's `tmp/`.
fn tmp_entries(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("tmp"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_worker_killed_during_ingest_leaves_no_debris_after_the_next_sweep() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    // A worker of another fleet on the same store, idle: its periodic
    // sweep is what must clean up (the store is shared, its tmp/ too).
    let mut sweeper = Fleet::new("sweeper");
    sweeper.apply_topology();
    let sweeper_log = logs.path().join("sweeper.log");
    sweeper.start_worker(store.path(), &sweeper_log, QUICK_UPKEEP);
    wait_for_log(&sweeper_log, "worker consuming");

    let mut fleet = Fleet::new("debris");
    fleet.apply_topology();
    let image = image_on(&base(), "debris");
    let registry = Registry::start();
    registry.push("team/debris", "v1", &image);
    fleet.enqueue_ok(&format!("{}/team/debris:v1", registry.addr()), store.path());
    let doomed = fleet.start_worker_env(
        store.path(),
        &logs.path().join("doomed.log"),
        &[],
        &[("EXPLODER_FAILPOINT", "ingest.mid-extract")],
    );
    use std::os::unix::process::ExitStatusExt;
    let status = fleet.wait_worker(doomed, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(9), "{status}");
    let start = Instant::now();
    while !tmp_entries(store.path()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still in tmp/: {:?}\n{}",
            tmp_entries(store.path()),
            std::fs::read_to_string(&sweeper_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(&sweeper_log).unwrap();
    assert!(
        log.contains("staging directories left by dead workers"),
        "{log}"
    );
}

fn wait_for_log(log: &Path, what: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what:?} never logged: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_v1_image_job_is_still_finalized() {
    use exploder_common::job::{self, Job};
    let mut fleet = Fleet::new("v1job");
    fleet.apply_topology();
    let image = image_on(&base(), "old");
    let registry = Registry::start();
    registry.push("team/old", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    // What an old producer published: the v1 messages of today's jobs.
    fleet.enqueue_ok(&format!("{}/team/old:v1", registry.addr()), store.path());
    let jobs: Vec<Job> = [job::JobKind::Layer, job::JobKind::Image]
        .into_iter()
        .flat_map(|kind| fleet.drain(kind))
        .collect();
    // Nor may the fan-in publish today's copy Redis keeps.
    fleet.forget_image_jobs();
    assert_eq!(jobs.len(), 3, "two layer jobs and an image job");
    for j in &jobs {
        fleet.publish_as_schema(j, 1);
    }
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.start_worker(store.path(), &log, &[]);
    wait_linked(
        store.path(),
        &[("old", "v1")],
        &[&log],
        Duration::from_secs(60),
    );
    assert_matches_umoci(store.path(), "old", &image);
    // A v1 job carries no manifest: the worker fetched it.
    let manifests = registry.request_count(
        "GET",
        &format!("/v2/team/old/manifests/{}", image.manifest_digest()),
    );
    assert!(
        manifests >= 1,
        "the v1 image job did not fetch its manifest"
    );
    assert!(fleet.peek_dead().is_empty());
}

#[test]
fn a_job_interrupted_more_often_than_the_brokers_limit_still_completes() {
    let mut fleet = Fleet::new("unlucky");
    fleet.apply_topology();
    // One layer, so that one job takes every interruption.
    let image = Image::oci().layer(base());
    let registry = Registry::start();
    registry.push("team/unlucky", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.enqueue_ok(
        &format!("{}/team/unlucky:v1", registry.addr()),
        store.path(),
    );
    // Seven workers die in the middle of the layer, one after the other:
    // more than the broker's own limit of five deliveries.
    for round in 0..7 {
        let pid = fleet.start_worker_env(
            store.path(),
            &log,
            &["--claim-ttl", "1", "--concurrency", "1"],
            &[("EXPLODER_FAILPOINT", "ingest.mid-extract")],
        );
        let status = fleet.wait_worker(pid, Duration::from_secs(30));
        assert!(!status.success(), "round {round}: the worker survived");
        assert!(fleet.peek_dead().is_empty(), "round {round}: dead-lettered");
    }
    fleet.start_worker(store.path(), &log, &["--claim-ttl", "1"]);
    wait_linked(
        store.path(),
        &[("unlucky", "v1")],
        &[&log],
        Duration::from_secs(60),
    );
    assert_matches_umoci(store.path(), "unlucky", &image);
    assert!(fleet.peek_dead().is_empty());
}

/// The files a process has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A worker that has pulled from hundreds of repositories of one registry
/// holds about as many files as one that pulled from a few: its
/// connections belong to the registry, not to each repository (issue 25;
/// it was two connection pools per repository, kept for the worker's
/// life: ~1,950 open files at 2,000 repositories).
#[test]
fn a_worker_pulling_from_hundreds_of_repositories_keeps_its_open_files_bounded() {
    const REPOSITORIES: usize = 300;
    let mut fleet = Fleet::new("bounded");
    fleet.apply_topology();
    let registry = Registry::start();
    let base = base();
    let names: Vec<String> = (0..REPOSITORIES).map(|i| format!("r{i:03}")).collect();
    for name in &names {
        registry.store_directly(&format!("team/{name}"), "v1", &image_on(&base, name));
    }
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let pid = fleet.start_worker(store.path(), &log, &["--concurrency", "4"]);
    // A few repositories first: what any worker holds once it has work.
    let references: Vec<String> = names
        .iter()
        .map(|n| format!("{}/team/{n}:v1", registry.addr()))
        .collect();
    let refs: Vec<&str> = references.iter().map(String::as_str).collect();
    let (first, rest) = refs.split_at(10);
    let wait = ["--wait", "--timeout", "5m"];
    let out = fleet.enqueue_all(first, store.path(), &wait);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after_a_few = open_files(pid);
    let out = fleet.enqueue_all(rest, store.path(), &wait);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let after_all = open_files(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("");
    eprintln!(
        "open files after {} repositories: {after_a_few}; after {REPOSITORIES}: {after_all}; {peak}",
        first.len()
    );
    // Connections to one registry (a few, idle ones kept per host) and the
    // files of jobs in flight, not one pool per repository.
    assert!(
        after_all <= after_a_few + 16,
        "the worker held {after_a_few} files after {} repositories and {after_all} after {REPOSITORIES}",
        first.len()
    );
    fleet.terminate_worker(pid, Duration::from_secs(20));
}

/// (ready messages, consumers) of each of `fleet`'s queues that `pick`
/// picks by name.
fn depths_of(fleet: &Fleet, pick: impl Fn(&str) -> bool) -> Vec<(String, (u32, u32))> {
    fleet
        .queue_depths()
        .into_iter()
        .filter(|q| pick(&q.queue))
        .map(|q| {
            let depth = q.depth.unwrap_or_else(|e| panic!("{}: {e}", q.queue));
            (q.queue, depth)
        })
        .collect()
}

/// The work queues' (ready messages, consumers).
fn work_depths(fleet: &Fleet) -> Vec<(String, (u32, u32))> {
    let work: Vec<String> = ["layer", "image", "export"]
        .map(|kind| format!("{}exploder.{kind}", fleet.prefix))
        .into();
    depths_of(fleet, |q| work.iter().any(|w| w == q))
}

/// A worker whose store stops taking writes (its directory replaced by a
/// file) stops consuming, and says why: jobs enqueued meanwhile wait in
/// their queues, no backoff tier sees one. Once the store is a directory
/// again the worker consumes again and links the image.
#[test]
fn a_worker_whose_store_goes_bad_leaves_jobs_queued_until_it_is_good_again() {
    let mut fleet = Fleet::new("badstore");
    fleet.apply_topology();
    let image = image_on(&base(), "patient");
    let registry = Registry::start();
    registry.push("team/patient", "v1", &image);
    let dir = tempfile::tempdir().unwrap();
    let (store, aside) = (dir.path().join("store"), dir.path().join("aside"));
    std::fs::create_dir(&store).unwrap();
    let log = dir.path().join("w.log");
    fleet.start_worker(&store, &log, &[]);
    let consumers = |fleet: &Fleet| -> u32 {
        work_depths(fleet)
            .iter()
            .map(|(_, (_, consumers))| consumers)
            .sum()
    };
    wait_until(
        "the worker consuming",
        Duration::from_secs(60),
        &[&log],
        || consumers(&fleet) == 3,
    );

    // The store goes bad: the directory moved away, a file in its place.
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a directory\n").unwrap();
    wait_until(
        "the worker to stop consuming",
        Duration::from_secs(60),
        &[&log],
        || consumers(&fleet) == 0,
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("not taking jobs until this is fixed")
            && said.contains(&store.display().to_string()),
        "the worker did not say why it stopped:\n{said}"
    );

    let reference = format!("{}/team/patient:v1", registry.addr());
    fleet.enqueue_ok(&reference, &aside);
    let queued: u32 = work_depths(&fleet)
        .iter()
        .map(|(_, (ready, _))| ready)
        .sum();
    assert!(queued >= 1, "nothing was enqueued");
    // A probe later the jobs are still where enqueue put them.
    std::thread::sleep(Duration::from_secs(6));
    let work = work_depths(&fleet);
    let still: u32 = work.iter().map(|(_, (ready, _))| ready).sum();
    assert_eq!(still, queued, "a job left its queue: {work:?}");
    let tiers = depths_of(&fleet, |q| q.contains("exploder.backoff."));
    assert!(
        tiers.iter().all(|(_, (ready, _))| *ready == 0),
        "a job went through the backoff tiers: {tiers:?}"
    );

    // The store is good again: the worker takes the jobs.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    wait_linked(
        &store,
        &[("patient", "v1")],
        &[&log],
        Duration::from_secs(90),
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.matches("worker consuming").count() >= 2,
        "the worker did not say it consumes again:\n{said}"
    );
}

/// `--store` naming a file is refused at once (exit 2, naming the path),
/// not a worker that starts and can take no job.
#[test]
fn a_worker_whose_store_is_a_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store");
    std::fs::write(&file, b"not a directory\n").unwrap();
    let out = std::process::Command::new(exploder_tests::exploder_worker_bin())
        .arg("--store")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("not a directory"),
        "{stderr}"
    );
}
