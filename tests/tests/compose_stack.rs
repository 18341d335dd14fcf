//! The compose stack as shipped — compose/docker-compose.yml and the
//! Dockerfile, unchanged, with the `.env` a user makes from
//! `.env.example` — started on this machine's Docker engine, driven as an
//! operator drives it: pushes to its registry, `--scale`, a worker killed
//! in the middle of a layer, a broker restart, `exec ... exploder status`,
//! `docker stop`, `down` and `up` again; and once rootless.
//!
//! Docker Hub is out of reach here: its images are stood in for by ones
//! built from Debian (compose/standins/, once per machine), and the
//! exploder image is built by the Dockerfile from this run's binaries
//! (`tests/src/compose.rs`). Grafana has no stand-in and is not started.
//!
//! Each start of the stack costs tens of seconds, so these are two long
//! scenarios rather than one test per behaviour; every assertion says
//! which behaviour failed. Timings are printed (`--nocapture`), never
//! asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_tests::compose::{Stack, State, docker, inspect};
use exploder_tests::{
    CompareOptions, Entry, Image, Layer, LayerBuilder, SplitMix64, compare_trees_with,
    linked_rootfs, snapshot_dir, umoci_reference,
};
use serde_json::Value;

/// Every image is pushed as `team/<name>:v1`.
const TAG: &str = "v1";
/// How long a start (or a scale) may take to have every service healthy:
/// healthchecks run every 5–10 s, RabbitMQ needs several to boot.
const READY_WITHIN: Duration = Duration::from_secs(180);
/// How long a push may take to be linked, through a killed worker's claim
/// (30 s lease) and a broker restart.
const LINK_WITHIN: Duration = Duration::from_secs(240);
/// The large layer a worker is killed (or stopped) in the middle of, and
/// what the registry sends per second while it does: about three seconds
/// of download, as from a remote registry.
const BIG_LAYER_BYTES: usize = 48 << 20;
const REGISTRY_BYTES_PER_SEC: u64 = 16 << 20;
/// The rootless user of the image (`exploder`, uid and gid 10001).
const ROOTLESS: u32 = 10001;

/// `security.capability` granting cap_net_raw (as on `ping`).
const CAP_NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The layer every small image shares: owners, setuid and setgid, a
/// sticky directory, a file capability and a user xattr, a hardlink, a
/// symlink, a FIFO, and what the next layer deletes.
fn base_layer() -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("etc", 0o755)
        .dir("var", 0o755)
        .dir("var/cache", 0o755)
        .dir("home", 0o755)
        .entry(Entry::dir("tmp", 0o1777))
        .entry(Entry::dir("home/user", 0o700).owner(1000, 1000))
        .entry(Entry::file("home/user/notes", b"notes", 0o600).owner(1000, 1000))
        .entry(Entry::file("usr/bin/su", b"su", 0o4755).owner(0, 0))
        .entry(Entry::file("usr/bin/wall", b"wall", 0o2755).owner(0, 5))
        .entry(Entry::file("usr/bin/tool", vec![7u8; 70_000], 0o755).xattr("user.note", b"kept"))
        .entry(
            Entry::file("usr/bin/ping", b"ping", 0o755).xattr("security.capability", CAP_NET_RAW),
        )
        .hardlink("usr/bin/tool-again", "usr/bin/tool")
        .symlink("usr/bin/short", "tool")
        .fifo("run-fifo")
        .file("etc/gone", b"removed by the next layer", 0o644)
        .file("var/cache/old", b"cleared by the next layer", 0o644);
    Layer::gzip(b.build())
}

/// A small image: the shared base, and a top layer of its own that
/// deletes, clears a directory and adds.
fn small_image(base: &Layer, name: &str) -> Image {
    let mut top = LayerBuilder::new();
    top.dir("etc", 0o755)
        .whiteout("etc/gone")
        .opaque("var/cache")
        .file("var/cache/new", b"fresh", 0o644)
        .entry(Entry::file("etc/shadow", b"secret", 0o640).owner(0, 42))
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(top.build()))
}

/// An image with one large layer of incompressible bytes (seeded), and
/// that layer's diff_id.
fn big_image(seed: u64) -> (Image, String) {
    let mut rng = SplitMix64(seed);
    let mut data = Vec::with_capacity(BIG_LAYER_BYTES);
    while data.len() < BIG_LAYER_BYTES {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("data", 0o755)
        .file("data/blob", data, 0o644);
    let big = Layer::gzip(b.build());
    let diff_id = big.diff_id().to_string();
    let mut top = LayerBuilder::new();
    top.dir("etc", 0o755)
        .file(format!("etc/big-{seed}"), b"on top", 0o644);
    (
        Image::oci().layer(big).layer(Layer::gzip(top.build())),
        diff_id,
    )
}

fn link_of(store: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(store.join(format!("images/team/{name}/{TAG}/link")))
        .ok()
        .map(|l| l.trim().to_string())
}

/// Waits until every `(name, image)` is linked to its manifest; panics
/// saying `what` with the fleet's status and logs. Returns how long it took.
fn wait_linked(stack: &Stack, what: &str, images: &[(&str, &Image)]) -> Duration {
    let store = stack.store();
    let start = Instant::now();
    loop {
        let missing: Vec<&str> = images
            .iter()
            .filter(|(name, image)| {
                link_of(&store, name).as_deref() != Some(&image.manifest_digest())
            })
            .map(|(name, _)| *name)
            .collect();
        if missing.is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > LINK_WITHIN {
            let status = stack.exec("producer", &["exploder", "status"]);
            panic!(
                "{what}: team/{{{}}}:{TAG} not linked after {LINK_WITHIN:?}\nexploder status:\n{}{}\n{}",
                missing.join(","),
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr),
                stack.logs(60)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The linked tree of `team/<name>:v1` equals umoci's unpack of `image`.
fn assert_equals_umoci(store: &Path, what: &str, name: &str, image: &Image) {
    let reference = umoci_reference(image);
    let diffs = compare_trees_with(
        reference.rootfs(),
        &linked_rootfs(store, "team", name, TAG),
        &CompareOptions::default().ignore_root_mtime(),
    );
    assert!(
        diffs.is_empty(),
        "{what}: team/{name}:{TAG} differs from umoci's tree:\n  {}",
        diffs.join("\n  ")
    );
}

/// Nothing in the dead-letter queue and no failed request, and every
/// request settled (a worker settles it just after it writes the link).
fn assert_nothing_dead_or_outstanding(stack: &Stack, what: &str) {
    let start = Instant::now();
    let status = loop {
        let status = stack.status();
        if status["requests"]["outstanding"] == 0 || start.elapsed() > Duration::from_secs(30) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        status["dead_letters"], 0,
        "{what}: jobs were dead-lettered: {status:#}"
    );
    assert_eq!(
        status["requests"]["failed"], 0,
        "{what}: failed requests: {status:#}"
    );
    assert_eq!(
        status["requests"]["outstanding"], 0,
        "{what}: requests still outstanding 30 s after everything was linked: {status:#}"
    );
}

/// Waits for the store's tmp/ to hold no staging directory (dead workers'
/// are swept when a worker's session starts); panics listing what is left.
fn assert_tmp_swept(stack: &Stack, what: &str) {
    let tmp = stack.store().join("tmp");
    let start = Instant::now();
    loop {
        let left: Vec<String> = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what}: staging debris in the store's tmp/ after 90 s: {left:?}\n{}",
            stack.logs(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The container `id` once it has exited (at most 30 s after it was
/// killed or stopped).
fn exited(id: &str) -> State {
    let start = Instant::now();
    loop {
        let state = inspect(id).expect("the container is still there");
        if state.status == "exited" || start.elapsed() > Duration::from_secs(30) {
            return state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ready messages in every queue of the fleet together.
fn ready_messages(status: &Value) -> u64 {
    status["queues"]
        .as_array()
        .expect("status lists the queues")
        .iter()
        .filter(|q| q["role"] != "dead")
        .filter_map(|q| q["ready"].as_u64())
        .sum()
}

#[test]
fn the_shipped_compose_stack_links_pushes_through_a_killed_worker_a_broker_restart_and_a_down_up() {
    let begun = Instant::now();
    let stack = Stack::new("root", &[]);
    let base = base_layer();

    // `up -d` with one worker: every service healthy, the topology job
    // exited 0.
    let started = Instant::now();
    stack.up("the first `up -d`", &["--scale", "worker=1"]);
    let ready = stack.wait_ready("the first `up -d`", 1, READY_WITHIN);
    let store = stack.store();

    // A push to the compose registry: the registry notifies the producer,
    // the worker explodes it onto the store volume, equal to umoci's.
    let first = small_image(&base, "first");
    stack.push("team/first", TAG, &first);
    let linked = wait_linked(
        &stack,
        "a push linked through the webhook",
        &[("first", &first)],
    );
    eprintln!(
        "compose: `up -d` to every service healthy {ready:.1?}; push to link {linked:.1?}; \
         cold start to first link {:.1?}",
        started.elapsed()
    );
    assert_equals_umoci(&store, "the first push", "first", &first);

    // Scaled to three workers.
    stack.up("`up -d --scale worker=3`", &["--scale", "worker=3"]);
    let scaled = stack.wait_ready("`up -d --scale worker=3`", 3, READY_WITHIN);
    eprintln!("compose: --scale worker=3 healthy in {scaled:.1?}");

    // A worker killed in the middle of a large layer, then RabbitMQ
    // restarted while more pushes arrive.
    stack.throttle_registry(REGISTRY_BYTES_PER_SEC);
    let (big, big_layer) = big_image(1);
    stack.push("team/big", TAG, &big);
    let victim = stack.worker_ingesting(&big_layer, LINK_WITHIN);
    let killed = Instant::now();
    let out = docker(&["kill", &victim.id]);
    assert!(out.status.success(), "docker kill {}: {out:?}", victim.name);
    let dead = exited(&victim.id);
    assert_eq!(
        (dead.status.as_str(), dead.exit_code),
        ("exited", 137),
        "docker kill: the worker died of SIGKILL mid-layer"
    );
    let more: Vec<(String, Image)> = ["during-restart-1", "during-restart-2"]
        .iter()
        .map(|n| (n.to_string(), small_image(&base, n)))
        .collect();
    let rabbit = stack
        .containers("rabbitmq")
        .pop()
        .expect("the rabbitmq container");
    std::thread::scope(|s| {
        let restart = s.spawn(|| stack.compose_ok("`restart rabbitmq`", &["restart", "rabbitmq"]));
        // The pushes land while the broker is down or not yet healthy.
        let asked = Instant::now();
        while inspect(&rabbit.id).is_some_and(|r| r.running_healthy()) {
            assert!(
                asked.elapsed() < Duration::from_secs(60),
                "`restart rabbitmq` did not stop the broker"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for (name, image) in &more {
            stack.push(&format!("team/{name}"), TAG, image);
        }
        restart.join().expect("the restart thread");
    });
    let mut all: Vec<(&str, &Image)> = vec![("big", &big)];
    all.extend(more.iter().map(|(n, i)| (n.as_str(), i)));
    let settled = wait_linked(
        &stack,
        "pushes through a killed worker and a broker restart",
        &all,
    );
    eprintln!(
        "compose: killed {} mid-layer, restarted rabbitmq: all linked {settled:.1?} later \
         ({:.1?} after the kill)",
        victim.name,
        killed.elapsed()
    );
    for (name, image) in &all {
        assert_equals_umoci(&store, "after a kill and a broker restart", name, image);
    }
    assert_nothing_dead_or_outstanding(&stack, "after a kill and a broker restart");
    assert_tmp_swept(&stack, "after a worker was killed mid-layer");

    // The operator's commands, inside the producer's container.
    let status = stack.exec("producer", &["exploder", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("exploder.layer") && text.contains("dead letters"),
        "`exec producer exploder status` shows the queues: {status:?}"
    );
    let ls = stack.exec("producer", &["exploder", "ls"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    for name in ["first", "big", "during-restart-1", "during-restart-2"] {
        assert!(
            ls.status.success() && text.contains(&format!("team/{name}:{TAG}")),
            "`exec producer exploder ls` lists team/{name}:{TAG}: {ls:?}"
        );
    }

    // `docker stop` (SIGTERM) of a worker in the middle of a large layer:
    // it finishes the job within its grace period and exits 0.
    let (graceful, graceful_layer) = big_image(2);
    stack.push("team/graceful", TAG, &graceful);
    let stopping = stack.worker_ingesting(&graceful_layer, LINK_WITHIN);
    let asked = Instant::now();
    let out = docker(&["stop", &stopping.id]);
    assert!(
        out.status.success(),
        "docker stop {}: {out:?}",
        stopping.name
    );
    let stopped = exited(&stopping.id);
    let log = stack.container_log(&stopping.id);
    assert_eq!(
        (stopped.status.as_str(), stopped.exit_code),
        ("exited", 0),
        "docker stop: a worker exits 0 after SIGTERM\n{log}"
    );
    let shutdown = log
        .split_once("shutting down: finishing in-flight jobs")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("docker stop: SIGTERM reached the worker (PID 1)\n{log}"));
    assert!(
        !shutdown.contains("in_flight=0") && shutdown.contains("job done"),
        "docker stop: the worker finished its in-flight layer job after SIGTERM\n{log}"
    );
    assert!(
        !shutdown.contains("grace period over"),
        "docker stop: the layer job finished within the grace period\n{log}"
    );
    eprintln!(
        "compose: docker stop {} mid-layer: exited 0 after {:.1?}",
        stopping.name,
        asked.elapsed()
    );
    wait_linked(
        &stack,
        "a push whose worker was stopped mid-layer",
        &[("graceful", &graceful)],
    );
    assert_equals_umoci(&store, "after docker stop mid-layer", "graceful", &graceful);

    // `down` then `up`: the links, the requests and the queues survive.
    let persistence = Instant::now();
    // With the workers stopped, a push leaves a request outstanding and
    // its jobs queued.
    stack.compose_ok("`stop worker`", &["stop", "worker"]);
    let persisted = small_image(&base, "persisted");
    stack.push("team/persisted", TAG, &persisted);
    let queued = Instant::now();
    loop {
        let status = stack.status();
        if status["requests"]["outstanding"] == 1 && ready_messages(&status) > 0 {
            break;
        }
        assert!(
            queued.elapsed() < LINK_WITHIN,
            "a push with no worker running leaves its request and queued jobs: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let links: Vec<(&str, Option<String>)> = [
        "first",
        "big",
        "during-restart-1",
        "during-restart-2",
        "graceful",
    ]
    .iter()
    .map(|n| (*n, link_of(&store, n)))
    .collect();
    stack.compose_ok("`down`", &["down"]);
    for volume in ["store", "rabbitmq-data", "redis-data", "registry-data"] {
        assert!(stack.has_volume(volume), "`down` keeps the volume {volume}");
    }
    stack.up(
        "`up -d` after `down`, no workers yet",
        &["--scale", "worker=0"],
    );
    stack.wait_ready("`up -d` after `down`", 0, READY_WITHIN);
    let store = stack.store();
    for (name, link) in &links {
        assert_eq!(
            &link_of(&store, name),
            link,
            "`down` and `up` keep the link of team/{name}:{TAG}"
        );
    }
    let status = stack.status();
    assert_eq!(
        status["requests"]["outstanding"], 1,
        "`down` and `up` keep the outstanding request: {status:#}"
    );
    assert!(
        ready_messages(&status) > 0,
        "`down` and `up` keep the queued jobs (RabbitMQ's volume and node name): {status:#}"
    );
    stack.up(
        "`up -d --scale worker=3` after `down`",
        &["--scale", "worker=3"],
    );
    wait_linked(
        &stack,
        "the jobs queued before `down`, after `up`",
        &[("persisted", &persisted)],
    );
    assert_equals_umoci(&store, "after `down` and `up`", "persisted", &persisted);
    assert_nothing_dead_or_outstanding(&stack, "at the end");
    assert_tmp_swept(&stack, "at the end");
    eprintln!(
        "compose: stop worker, push, down, up, linked: {:.1?}; the whole scenario {:.1?}",
        persistence.elapsed(),
        begun.elapsed()
    );
}

/// A tree as a rootless worker writes it: every file its own (uid and gid
/// 10001), no file capabilities; everything else as `tree` has it.
fn as_rootless(mut tree: exploder_tests::Snapshot) -> exploder_tests::Snapshot {
    for entry in tree.entries.values_mut() {
        entry.uid = ROOTLESS;
        entry.gid = ROOTLESS;
        entry.xattrs.remove(&b"security.capability"[..]);
    }
    tree
}

#[test]
fn the_shipped_compose_stack_runs_rootless_and_prometheus_scrapes_it() {
    let user = format!("{ROOTLESS}:{ROOTLESS}");
    let stack = Stack::new("rootless", &[("EXPLODER_USER", &user)]);
    stack.up("`up -d` rootless", &["--scale", "worker=1"]);
    let ready = stack.wait_ready("`up -d` rootless", 1, READY_WITHIN);
    for service in ["producer", "worker"] {
        let out = stack.exec(service, &["id", "-u"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            ROOTLESS.to_string(),
            "EXPLODER_USER: the {service} runs as {ROOTLESS}"
        );
    }
    let image = small_image(&base_layer(), "rootless");
    stack.push("team/rootless", TAG, &image);
    let linked = wait_linked(
        &stack,
        "a push linked by a rootless fleet",
        &[("rootless", &image)],
    );
    eprintln!("compose rootless: healthy in {ready:.1?}; push to link {linked:.1?}");
    let store = stack.store();
    let expected = as_rootless(snapshot_dir(umoci_reference(&image).rootfs()));
    let mut actual = snapshot_dir(&linked_rootfs(&store, "team", "rootless", TAG));
    actual.entries.get_mut(&b""[..]).expect("the root").mtime = expected.entries[&b""[..]].mtime;
    let diffs = expected.diff(&actual);
    assert!(
        diffs.is_empty(),
        "rootless: the tree is umoci's with the worker's own owners and no file capabilities:\n  {}",
        diffs.join("\n  ")
    );
    assert_nothing_dead_or_outstanding(&stack, "rootless");

    // Prometheus (every 15 s) scrapes the producer, the worker (found by
    // Docker's DNS) and RabbitMQ's plugin on the compose network.
    let start = Instant::now();
    loop {
        let targets = stack.prometheus_targets();
        let up = |job: &str| {
            targets
                .iter()
                .any(|(pool, _, health)| pool == job && health == "up")
        };
        if ["exploder-producer", "exploder-worker", "rabbitmq"]
            .iter()
            .all(|job| up(job))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "Prometheus scrapes the producer, the worker and RabbitMQ: {targets:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
