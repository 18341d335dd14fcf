//! `exploder gc` without Redis: a store only `exploder explode` wrote is
//! collected without one; a store a fleet has used (`<store>/fleet`) still
//! needs the fleet's Redis, and says so (issue 27, item 4).

use std::path::Path;
use std::time::Duration;

use exploder_tests::fleet::Fleet;
use exploder_tests::{
    GC_KEEP_NOTHING, Image, Layer, LayerBuilder, Registry, explode_ok, free_port, run_exploder,
};

fn image() -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/motd", b"collect me\n", 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

/// A Redis URL nothing listens at.
fn closed_redis() -> String {
    format!("redis://127.0.0.1:{}/0", free_port())
}

/// `exploder gc --confirm` keeping nothing it may remove, with Redis
/// pointed at a closed port.
fn gc_without_redis(store: &Path) -> std::process::Output {
    let redis = closed_redis();
    let mut args = vec!["gc", "--confirm"];
    args.extend_from_slice(GC_KEEP_NOTHING);
    args.extend(["--store", store.to_str().unwrap(), "--redis-url", &redis]);
    run_exploder(args)
}

/// Explodes `team/app:v1` into `store` and takes the tag out again: its
/// image is garbage.
fn explode_and_remove(registry: &Registry, store: &Path) {
    registry.push("team/app", "v1", &image());
    let reference = format!("{}/team/app:v1", registry.addr());
    explode_ok(&reference, store, &[]);
    let out = run_exploder(["rm", &reference, "--store", store.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gc_collects_a_store_only_explode_wrote_without_redis() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    explode_and_remove(&registry, store.path());
    let digest_dir = store
        .path()
        .join("digest/sha256")
        .join(&image().manifest_digest()[7..]);
    assert!(digest_dir.is_dir());
    assert!(!store.path().join("fleet").exists());

    let out = gc_without_redis(store.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!digest_dir.exists(), "the unlinked image was not collected");
}

#[test]
fn gc_on_a_store_a_worker_has_used_still_refuses_without_redis() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    explode_and_remove(&registry, store.path());
    let mut fleet = Fleet::new("gcmarker");
    fleet.apply_topology();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let worker = fleet.start_worker(store.path(), &log, &[]);
    let marker = store.path().join("fleet");
    exploder_tests::wait_until(
        "the worker marks the store",
        Duration::from_secs(60),
        &[&log],
        || marker.is_file(),
    );
    fleet.kill_worker(worker);

    let out = gc_without_redis(store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach Redis") && err.contains("a fleet uses this store"),
        "{err}"
    );
    assert!(
        store
            .path()
            .join("digest/sha256")
            .join(&image().manifest_digest()[7..])
            .is_dir(),
        "gc removed something without knowing what the fleet was doing"
    );
}

#[test]
fn enqueue_marks_the_store_as_a_fleet_store() {
    let registry = Registry::start();
    registry.push("team/app", "v1", &image());
    let store = tempfile::tempdir().unwrap();
    let fleet = Fleet::new("gcmarkenq");
    fleet.apply_topology();
    fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    assert!(store.path().join("fleet").is_file());
    let out = gc_without_redis(store.path());
    assert_eq!(out.status.code(), Some(1));
}
