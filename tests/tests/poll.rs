//! The poll source: `exploder poll --once` and the producer's polling loop
//! against a real `docker-registry`: changed tags are enqueued, unchanged
//! ones cost no job, signatures are skipped, and a moved tag is exploded
//! within one interval.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_common::job::JobKind;
use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, run_exploder};

fn image(content: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/content", content.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

/// A config whose watch list is `team/app` on `registry`, one tag per
/// page (so the scan follows the registry's `Link` pagination).
fn write_config(dir: &Path, registry: &Registry, interval: u64) -> std::path::PathBuf {
    let path = dir.join("exploder.yaml");
    std::fs::write(
        &path,
        format!(
            "poll:\n  interval_seconds: {interval}\n  jitter: 0\n  page_size: 1\n  watch:\n    \
             - registry: {}\n      repositories: [team/app]\n",
            registry.addr()
        ),
    )
    .unwrap();
    path
}

fn poll_once(fleet: &Fleet, config: &Path, store: &Path) -> serde_json::Value {
    let out = run_exploder([
        "poll",
        "--once",
        "-o",
        "json",
        "--config",
        config.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--amqp-url",
        &fleet.amqp,
        "--redis-url",
        &fleet.redis,
        "--prefix",
        &fleet.prefix,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn poll_once_enqueues_changed_tags_only_and_skips_signatures() {
    let fleet = Fleet::new("poll");
    fleet.apply_topology();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image("one"));
    registry.push("team/app", "v2", &image("two"));
    registry.push("team/app", "sha256-0123.sig", &image("signature"));
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &registry, 60);

    let first = poll_once(&fleet, &config, store.path());
    assert_eq!(first["tags_seen"], 2, "{first}");
    assert_eq!(first["outcomes"]["accepted"], 2, "{first}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 2);

    let again = poll_once(&fleet, &config, store.path());
    assert_eq!(again["outcomes"]["unchanged"], 2, "{again}");
    assert!(again["outcomes"].get("accepted").is_none(), "{again}");
    assert!(
        fleet.drain(JobKind::Image).is_empty(),
        "unchanged tags cause no jobs"
    );

    registry.push("team/app", "v1", &image("one, rebuilt"));
    let moved = poll_once(&fleet, &config, store.path());
    assert_eq!(moved["outcomes"]["accepted"], 1, "{moved}");
    assert_eq!(moved["outcomes"]["unchanged"], 1, "{moved}");
    let jobs = fleet.drain(JobKind::Image);
    assert_eq!(jobs.len(), 1);
}

#[test]
fn the_producer_explodes_a_moved_tag_within_one_interval() {
    let mut fleet = Fleet::new("pollloop");
    fleet.apply_topology();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image("first"));
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &registry, 2);
    let (plog, wlog) = (
        dir.path().join("producer.log"),
        dir.path().join("worker.log"),
    );
    fleet.start_worker(store.path(), &wlog, &[]);
    fleet.start_producer(
        store.path(),
        &plog,
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let content = |store: &Path| {
        let link = std::fs::read_to_string(store.join("images/team/app/v1/link")).ok()?;
        let hex = link.trim().strip_prefix("sha256:")?.to_string();
        std::fs::read_to_string(store.join(format!("digest/sha256/{hex}/rootfs/etc/content"))).ok()
    };
    let wait = |want: &str| {
        let start = Instant::now();
        while content(store.path()).as_deref() != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "v1 never held {want:?}\nproducer:\n{}\nworker:\n{}",
                std::fs::read_to_string(&plog).unwrap_or_default(),
                std::fs::read_to_string(&wlog).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("first");
    registry.push("team/app", "v1", &image("second"));
    wait("second");
}
