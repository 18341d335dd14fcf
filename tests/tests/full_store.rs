//! A store that fills up: in the middle of a layer's ingest, in the middle
//! of an image's finalize, and under a tag's link, through the fleet (real
//! RabbitMQ, Redis and registry) and through `exploder explode`.
//!
//! The store is a small ext4 file system of the test's own (a loop mount,
//! unmounted even when the test fails), filled deterministically: a filler
//! file leaves less free space than the work needs, and removing it is
//! "freeing space". Each time: the failure names the store and ENOSPC,
//! nothing partial is linked, no staging is left in `tmp/`, nothing is
//! dead-lettered; once space is freed every image is linked, equal to
//! umoci's tree.
//!
//! Needs root (mount, loop devices) and mkfs.ext4 (e2fsprogs, which
//! scripts/test installs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exploder_tests::fleet::Fleet;
use exploder_tests::small_disk::SmallDisk;
use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, assert_trees_equal_with, free_port,
    http_get, linked_rootfs, run_exploder, umoci_reference, wait_until,
};

// ---------------------------------------------------------------------------
// Images

const MIB: u64 = 1 << 20;

/// One layer with one file of `mib` MiB: the layer that fills the store.
/// One layer only, so that nothing else is written while it runs out
/// (the first failure is always its own).
fn big_image(mib: u64) -> Image {
    let mut big = LayerBuilder::new();
    big.dir("data", 0o755)
        .file("data/blob", vec![0x5a; (mib * MIB) as usize], 0o644);
    Image::oci().layer(Layer::gzip(big.build()))
}

/// An image of many directories: on ext4 each takes a block of its own in
/// every rootfs, so assembling one needs about 1.2 MiB beyond its layers
/// (hardlinked files take none). `flavour` changes the config only: two
/// flavours share their layers and differ in their rootfs directories.
fn many_dirs_image(flavour: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("srv", 0o755);
    for i in 0..300 {
        b.dir(format!("srv/d{i:03}"), 0o755).file(
            format!("srv/d{i:03}/f"),
            format!("{i}\n"),
            0o644,
        );
    }
    Image::oci()
        .layer(Layer::gzip(b.build()))
        .env(&format!("FLAVOUR={flavour}"))
}

// ---------------------------------------------------------------------------
// What the store holds

/// Everything under the store's `tmp/` (staging directories, their locks).
fn tmp_entries(store: &Path) -> Vec<String> {
    match std::fs::read_dir(store.join("tmp")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn assert_tmp_clean(store: &Path, when: &str) {
    let left = tmp_entries(store);
    assert!(left.is_empty(), "{when}: tmp/ holds {left:?}");
}

fn link_path(store: &Path, image: &str, tag: &str) -> PathBuf {
    store.join(format!("images/team/{image}/{tag}/link"))
}

/// The image's digest directory (present only once complete).
fn digest_dir(store: &Path, image: &Image) -> PathBuf {
    let digest = image.manifest_digest();
    store
        .join("digest/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn layer_dir(store: &Path, layer_diff_id: &str) -> PathBuf {
    store
        .join("layers/sha256")
        .join(layer_diff_id.trim_start_matches("sha256:"))
}

fn assert_matches_umoci(store: &Path, name: &str, tag: &str, image: &Image) {
    assert_trees_equal_with(
        umoci_reference(image).rootfs(),
        &linked_rootfs(store, "team", name, tag),
        &CompareOptions::default().ignore_root_mtime(),
    );
}

// ---------------------------------------------------------------------------
// A worker's endpoints

/// The value of an unlabelled (or fully spelled) series in `/metrics`.
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `path` until `pred` holds for its answer (a deadline, not a
/// timing: the answer is what is asserted).
fn eventually(port: u16, path: &str, log: &Path, pred: impl Fn(u16, &str) -> bool) -> String {
    let mut last = (0, String::new());
    wait_until(
        &format!("GET {path} as expected"),
        Duration::from_secs(90),
        &[log],
        || {
            last = http_get(port, path);
            pred(last.0, &last.1)
        },
    );
    last.1
}

/// A worker on the store with this floor, serving its endpoints on a port
/// of its own; returns (pid, port) once it answers.
fn start_worker(
    fleet: &mut Fleet,
    store: &Path,
    log: &Path,
    min_free: &str,
    extra: &[&str],
) -> (u32, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--metrics-listen",
        &listen,
        "--store-min-free",
        min_free,
        "--concurrency",
        "2",
        // A worker killed holding a claim lets go of it soon.
        "--claim-ttl",
        "2",
    ];
    args.extend_from_slice(extra);
    let pid = fleet.start_worker(store, log, &args);
    eventually(port, "/healthz", log, |s, _| s == 200);
    (pid, port)
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The worker's first `transient failure` log line, once there is one
/// (the job is settled, so its staging is gone and the store counted).
fn transient_failure(log: &Path) -> String {
    let line = || {
        log_text(log)
            .lines()
            .find(|l| l.contains("transient failure"))
            .map(str::to_string)
    };
    wait_until(
        "a transient failure",
        Duration::from_secs(90),
        &[log],
        || line().is_some(),
    );
    line().expect("found above")
}

// ---------------------------------------------------------------------------
// The fleet

#[test]
fn a_layer_that_fills_the_store_waits_for_room_and_is_linked_once_space_is_freed() {
    // Dropped last: everything else lets go of the mount first.
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let mut fleet = Fleet::new("fullingest");
    fleet.apply_topology();
    let registry = Registry::start();
    let image = big_image(8);
    registry.push("team/big", "v1", &image);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    // 4 MiB free, the floor at 1 MiB: the ingest starts, and its 8 MiB
    // file cannot fit.
    let free = disk.fill_leaving(4 * MIB);
    let (_, port) = start_worker(&mut fleet, &store, &log, "1MiB", &[]);
    eventually(port, "/readyz", &log, |s, _| s == 200);
    let started = Instant::now();
    fleet.enqueue_ok(&format!("{}/team/big:v1", registry.addr()), &store);

    // The layer job runs out of space: transient, with the store and the
    // cause named, and its staging directory removed by its owner.
    let failure = transient_failure(&log);
    assert!(metric(port, "exploder_worker_store_full_total") >= 1.0);
    for expected in [
        format!("the store {} is full", store.display()),
        "No space left on device".to_string(),
        image.layer_digests()[0].clone(),
        "exploder gc".to_string(),
    ] {
        assert!(failure.contains(&expected), "{expected:?} in {failure}");
    }
    eprintln!("the worker's log: {failure}");
    assert_tmp_clean(&store, "after the failed ingest");
    assert!(!layer_dir(&store, &image.diff_ids()[0]).exists());
    assert!(!link_path(&store, "big", "v1").exists());

    // While full, the worker says so, and the jobs wait without using up
    // their retries.
    let why = eventually(port, "/readyz", &log, |s, _| s == 503);
    eprintln!("/readyz: {why}");
    assert!(
        why.contains(&format!("the store {} is full", store.display()))
            && why.contains("a write ran out of space"),
        "{why}"
    );
    assert!(
        metric(port, "exploder_store_free_bytes")
            < metric(port, "exploder_store_required_free_bytes"),
        "the metrics show the store below what the worker needs"
    );
    wait_until(
        "a layer job waits for room",
        Duration::from_secs(90),
        &[&log],
        || {
            metric(
                port,
                r#"exploder_worker_jobs_total{kind="layer",result="waiting"}"#,
            ) >= 1.0
        },
    );
    assert_tmp_clean(&store, "while the store is full");
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());

    disk.free_space();
    let freed = Instant::now();
    wait_until("linked", Duration::from_secs(120), &[&log], || {
        link_path(&store, "big", "v1").is_file()
    });
    eprintln!(
        "full store (ingest): {free} bytes free at the start; space freed {:?} after the \
         enqueue; linked {:?} after that",
        freed - started,
        freed.elapsed()
    );
    assert_matches_umoci(&store, "big", "v1", &image);
    eventually(port, "/readyz", &log, |s, _| s == 200);
    assert_tmp_clean(&store, "once linked");
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());
}

#[test]
fn an_image_that_fills_the_store_while_finalizing_is_linked_once_space_is_freed() {
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let mut fleet = Fleet::new("fullfinal");
    fleet.apply_topology();
    let registry = Registry::start();
    let first = many_dirs_image("first");
    let second = many_dirs_image("second");
    registry.push("team/first", "v1", &first);
    registry.push("team/second", "v1", &second);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    let (_, port) = start_worker(&mut fleet, &store, &log, "64KiB", &[]);
    // The layer lands with the first image, while there is room.
    fleet.enqueue_ok(&format!("{}/team/first:v1", registry.addr()), &store);
    wait_until("first linked", Duration::from_secs(90), &[&log], || {
        link_path(&store, "first", "v1").is_file()
    });
    // The second image needs no layer, only its own ~300 directories.
    let free = disk.fill_leaving(256 << 10);
    fleet.enqueue_ok(&format!("{}/team/second:v1", registry.addr()), &store);
    let failure = transient_failure(&log);
    assert!(metric(port, "exploder_worker_store_full_total") >= 1.0);
    for expected in [
        format!("the store {} is full", store.display()),
        format!("image {}", second.manifest_digest()),
        "No space left on device".to_string(),
    ] {
        assert!(failure.contains(&expected), "{expected:?} in {failure}");
    }
    eprintln!("the worker's log: {failure}");
    assert_tmp_clean(&store, "after the failed finalize");
    assert!(!digest_dir(&store, &second).exists());
    assert!(!link_path(&store, "second", "v1").exists());
    wait_until(
        "the image job waits for room",
        Duration::from_secs(90),
        &[&log],
        || {
            metric(
                port,
                r#"exploder_worker_jobs_total{kind="image",result="waiting"}"#,
            ) >= 1.0
        },
    );
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());

    disk.free_space();
    let freed = Instant::now();
    wait_until("second linked", Duration::from_secs(120), &[&log], || {
        link_path(&store, "second", "v1").is_file()
    });
    eprintln!(
        "full store (finalize): {free} bytes free; linked {:?} after space was freed",
        freed.elapsed()
    );
    assert_matches_umoci(&store, "first", "v1", &first);
    assert_matches_umoci(&store, "second", "v1", &second);
    assert_tmp_clean(&store, "once linked");
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());
}

#[test]
fn images_through_two_workers_on_a_store_that_fills_up_survive_a_worker_killed_and_are_all_linked()
{
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let mut fleet = Fleet::new("fullmany");
    fleet.apply_topology();
    let registry = Registry::start();
    // A shared base and a 3 MiB layer of each image's own: 9 MiB for 5.
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/os-release", b"ID=test\n", 0o644);
    let base = Layer::gzip(b.build());
    let images: Vec<(String, Image)> = (0..3u8)
        .map(|i| {
            let mut own = LayerBuilder::new();
            own.dir("data", 0o755)
                .file("data/blob", vec![i; 3 * MIB as usize], 0o644);
            let image = Image::oci()
                .layer(base.clone())
                .layer(Layer::gzip(own.build()));
            let name = format!("img{i}");
            registry.push(&format!("team/{name}"), "v1", &image);
            (name, image)
        })
        .collect();
    let free = disk.fill_leaving(5 * MIB);
    let logs = tempfile::tempdir().unwrap();
    let log_paths: Vec<PathBuf> = (1..=3)
        .map(|i| logs.path().join(format!("w{i}.log")))
        .collect();
    // Two workers failing at once can each see the other's staging
    // directory come and go, and a layer job can then run out more than
    // once and back off for minutes: the resync re-drives what shows no
    // progress (here after 10s, not 10m), as it would after a lost message.
    let resync = ["--resync-after", "10s", "--resync-interval", "2s"];
    let (doomed, doomed_port) = start_worker(&mut fleet, &store, &log_paths[0], "1MiB", &resync);
    let (_, port) = start_worker(&mut fleet, &store, &log_paths[1], "1MiB", &resync);
    for (name, _) in &images {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), &store);
    }
    // Not everything fits: layer jobs end up waiting for room (only a full
    // store makes a layer job wait).
    let waiting = r#"exploder_worker_jobs_total{kind="layer",result="waiting"}"#;
    let logs_ref: Vec<&Path> = log_paths.iter().map(PathBuf::as_path).collect();
    wait_until(
        "layer jobs wait for room",
        Duration::from_secs(90),
        &logs_ref,
        || metric(doomed_port, waiting) + metric(port, waiting) >= 1.0,
    );
    // A worker dies while the store is full: its jobs come back to the
    // queue, and whatever it was writing is staging debris for the sweep.
    fleet.kill_worker(doomed);
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());

    disk.free_space();
    let freed = Instant::now();
    start_worker(&mut fleet, &store, &log_paths[2], "1MiB", &resync);
    // Once it consumes, it has swept what the killed worker left in tmp/.
    wait_until(
        "the new worker consumes",
        Duration::from_secs(60),
        &logs_ref,
        || log_text(&log_paths[2]).contains("worker consuming"),
    );
    let tags: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    wait_until(
        "every image linked",
        Duration::from_secs(120),
        &logs_ref,
        || tags.iter().all(|n| link_path(&store, n, "v1").is_file()),
    );
    eprintln!(
        "full store (3 images, 2 workers, one killed): {free} bytes free; all linked {:?} \
         after space was freed",
        freed.elapsed()
    );
    for (name, image) in &images {
        assert_matches_umoci(&store, name, "v1", image);
    }
    assert_tmp_clean(&store, "once linked");
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());
}

// ---------------------------------------------------------------------------
// exploder explode

/// `exploder explode oci:LAYOUT:TAG --name team/NAME --store STORE`, the
/// image written into the OCI layout `layout` under that tag (one layout
/// per test: to the store, each layout is a registry of its own).
fn explode(
    layout: &Path,
    image: &Image,
    name: &str,
    tag: &str,
    store: &Path,
) -> std::process::Output {
    image.write_oci_layout(layout, tag).unwrap();
    run_exploder([
        "explode".to_string(),
        format!("oci:{}:{tag}", layout.display()),
        "--name".to_string(),
        format!("team/{name}"),
        "--store".to_string(),
        store.display().to_string(),
    ])
}

/// Exit 1 and a message naming the store, ENOSPC and what to do.
fn assert_full_store_error(out: &std::process::Output, store: &Path, also: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        &format!("the store {} is full", store.display()),
        "No space left on device",
        "exploder gc",
        also,
    ] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
}

fn assert_explodes(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn explode_on_a_store_too_full_for_a_layer_fails_cleanly_and_works_once_space_is_freed() {
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let layout = tempfile::tempdir().unwrap();
    let image = big_image(8);
    disk.fill_leaving(4 * MIB);
    let out = explode(layout.path(), &image, "big", "v1", &store);
    // The layer is named by its blob's digest, as in the manifest.
    assert_full_store_error(&out, &store, &image.layer_digests()[0]);
    assert!(!link_path(&store, "big", "v1").exists());
    assert!(!layer_dir(&store, &image.diff_ids()[0]).exists());
    assert_tmp_clean(&store, "after the failed explode");

    disk.free_space();
    assert_explodes(&explode(layout.path(), &image, "big", "v1", &store));
    assert_matches_umoci(&store, "big", "v1", &image);
    assert_tmp_clean(&store, "after the explode");
}

#[test]
fn explode_on_a_store_too_full_for_a_rootfs_fails_cleanly_and_works_once_space_is_freed() {
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let layout = tempfile::tempdir().unwrap();
    let (first, second) = (many_dirs_image("first"), many_dirs_image("second"));
    assert_explodes(&explode(layout.path(), &first, "first", "v1", &store));
    disk.fill_leaving(256 << 10);
    let out = explode(layout.path(), &second, "second", "v1", &store);
    assert_full_store_error(&out, &store, &format!("image {}", second.manifest_digest()));
    assert!(!link_path(&store, "second", "v1").exists());
    assert!(!digest_dir(&store, &second).exists());
    assert_tmp_clean(&store, "after the failed explode");

    disk.free_space();
    assert_explodes(&explode(layout.path(), &second, "second", "v1", &store));
    assert_matches_umoci(&store, "second", "v1", &second);
    assert_matches_umoci(&store, "first", "v1", &first);
    assert_tmp_clean(&store, "after the explode");
}

#[test]
fn a_tag_moved_on_a_full_store_keeps_its_link_and_leaves_no_temporary_file() {
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let layout = tempfile::tempdir().unwrap();
    let (first, second) = (many_dirs_image("first"), many_dirs_image("second"));
    // Both images exploded; the tag points at the first.
    assert_explodes(&explode(layout.path(), &second, "app", "other", &store));
    assert_explodes(&explode(layout.path(), &first, "app", "v1", &store));
    disk.fill_up();
    // Moving the tag needs only a new link file: there is no block for it.
    let out = explode(layout.path(), &second, "app", "v1", &store);
    assert_full_store_error(&out, &store, "linking team/app:v1");
    let link = link_path(&store, "app", "v1");
    assert_eq!(
        std::fs::read_to_string(&link).unwrap().trim(),
        first.manifest_digest()
    );
    let beside: Vec<_> = std::fs::read_dir(link.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(beside.is_empty(), "left beside the link: {beside:?}");
    assert_tmp_clean(&store, "after the failed link");

    disk.free_space();
    assert_explodes(&explode(layout.path(), &second, "app", "v1", &store));
    assert_matches_umoci(&store, "app", "v1", &second);
}

#[test]
fn explode_on_a_store_without_a_block_left_fails_before_staging_and_leaves_no_lock() {
    let disk = SmallDisk::new(64);
    let store = disk.store();
    let layout = tempfile::tempdir().unwrap();
    // The store's directories exist (as on any store in use).
    let first = many_dirs_image("first");
    assert_explodes(&explode(layout.path(), &first, "first", "v1", &store));
    disk.fill_up();
    // A staging directory's lock file takes no block, the directory does.
    let image = big_image(1);
    let out = explode(layout.path(), &image, "big", "v1", &store);
    assert_full_store_error(&out, &store, "creating a staging directory");
    assert_tmp_clean(&store, "after the failed explode");

    disk.free_space();
    assert_explodes(&explode(layout.path(), &image, "big", "v1", &store));
    assert_matches_umoci(&store, "big", "v1", &image);
}
