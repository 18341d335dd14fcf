//! Workers on the real RabbitMQ and Redis: enqueued images get exploded,
//! shared layers are fetched once fleet-wide, and SIGTERM is a clean exit.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_tests::fleet::Fleet;
use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, assert_trees_equal_with, linked_rootfs,
    umoci_unpack,
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
    let layout = tempfile::tempdir().unwrap();
    image
        .for_umoci()
        .write_oci_layout(layout.path(), "ref")
        .unwrap();
    let bundle = umoci_unpack(layout.path(), "ref");
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
        let out = fleet.enqueue(&format!("{}/team/{name}:v1", registry.addr()), store.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let worker = fleet.workers().iter_mut().find(|w| w.id() == pid).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "worker did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
}
