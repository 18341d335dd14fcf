//! `exploder enqueue --wait` waits for everything it started: the link,
//! and the disk images `--export` asked for; and it never reports a
//! reference `"ok": true` that is not linked (issue 27, item 8).

use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry};

fn image() -> Image {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .file("etc/motd", b"wait for me\n", 0o644)
        .file("bin/tool", vec![5u8; 50_000], 0o755);
    Image::oci().layer(Layer::gzip(b.build()))
}

#[test]
fn enqueue_wait_returns_once_the_disk_images_asked_for_are_made() {
    let mut fleet = Fleet::new("waitexport");
    fleet.apply_topology();
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image());
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    fleet.start_worker(store.path(), &logs.path().join("w.log"), &[]);
    let out = fleet.enqueue_with(
        &format!("{}/team/disk:v1", registry.addr()),
        store.path(),
        &["--export", "ext4,squashfs", "--wait", "--timeout", "120s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No polling: when --wait returns, they are there.
    let dir = store
        .path()
        .join("digest/sha256")
        .join(&image().manifest_digest()[7..]);
    assert!(dir.join("rootfs.ext4").is_file());
    assert!(dir.join("rootfs.squashfs").is_file());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["linked"], true, "{v}");
}

#[test]
fn enqueue_wait_reports_a_failed_disk_image_as_not_ok() {
    let mut fleet = Fleet::new("waitexportfail");
    fleet.apply_topology();
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image());
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    // No mkfs.ext4 on this worker's PATH: its export job dead-letters.
    let empty = tempfile::tempdir().unwrap();
    fleet.start_worker_env(
        store.path(),
        &log,
        &[],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    let out = fleet.enqueue_with(
        &format!("{}/team/disk:v1", registry.addr()),
        store.path(),
        &["--export", "ext4", "--wait", "--timeout", "120s"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false, "{v}");
    assert_eq!(v[0]["linked"], true, "{v}");
    let failure = v[0]["failure"].as_str().unwrap();
    assert!(failure.contains("ext4"), "{v}");
    assert!(
        !failure.contains("--timeout"),
        "the failure was not seen, only waited out: {v}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
