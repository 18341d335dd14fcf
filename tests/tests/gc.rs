//! `exploder gc`: retention keeps what tags need, removes the rest, and is
//! safe beside a fleet that is exploding at the same time.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_tests::fleet::Fleet;
use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, assert_trees_equal_with, explode_ok,
    linked_rootfs, run_exploder, umoci_reference,
};

fn base() -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/base", b"shared base", 0o644);
    Layer::gzip(b.build())
}

fn image_on(base: &Layer, content: &str) -> Image {
    let mut top = LayerBuilder::new();
    top.dir("etc", 0o755)
        .file("etc/content", content.as_bytes(), 0o644);
    Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(top.build()))
}

fn gc(store: &Path, fleet: &Fleet, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "gc",
        "-o",
        "json",
        "--store",
        store.to_str().unwrap(),
        "--redis-url",
        &fleet.redis,
        "--prefix",
        &fleet.prefix,
    ];
    args.extend_from_slice(extra);
    let out = run_exploder(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digest_dirs(store: &Path) -> usize {
    std::fs::read_dir(store.join("digest/sha256")).map_or(0, |d| d.count())
}

fn layer_dirs(store: &Path) -> usize {
    std::fs::read_dir(store.join("layers/sha256")).map_or(0, |d| d.count())
}

/// A tag pushed and exploded four times: with --keep-revisions 2, the two
/// oldest digests go (with their own top layers), the shared base stays.
#[test]
fn gc_keeps_the_last_revisions_of_a_tag_and_removes_the_rest() {
    let fleet = Fleet::new("gcrev");
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let base = base();
    let reference = format!("{}/team/app:v1", registry.addr());
    let mut last = None;
    for i in 0..4 {
        let image = image_on(&base, &format!("revision {i}"));
        registry.push("team/app", "v1", &image);
        explode_ok(&reference, store.path(), &[]);
        last = Some(image);
    }
    assert_eq!(digest_dirs(store.path()), 4);
    assert_eq!(layer_dirs(store.path()), 5);
    let retention = [
        "--keep-revisions",
        "2",
        "--keep-younger-than",
        "0s",
        "--grace",
        "0s",
    ];

    let dry = gc(store.path(), &fleet, &retention);
    assert_eq!(dry["confirmed"], false);
    assert_eq!(
        dry["removed"]["digests"].as_array().unwrap().len(),
        2,
        "{dry}"
    );
    assert_eq!(
        dry["removed"]["layers"].as_array().unwrap().len(),
        2,
        "{dry}"
    );
    assert_eq!(digest_dirs(store.path()), 4, "a dry run deletes nothing");

    let mut args = retention.to_vec();
    args.push("--confirm");
    let done = gc(store.path(), &fleet, &args);
    assert_eq!(
        done["removed"]["digests"].as_array().unwrap().len(),
        2,
        "{done}"
    );
    assert_eq!(digest_dirs(store.path()), 2);
    assert_eq!(layer_dirs(store.path()), 3);
    let bundle = umoci_reference(&last.unwrap());
    assert_trees_equal_with(
        bundle.rootfs(),
        &linked_rootfs(store.path(), "team", "app", "v1"),
        &CompareOptions::default().ignore_root_mtime(),
    );
    // Nothing left to do: a second run removes nothing.
    let again = gc(store.path(), &fleet, &args);
    assert!(
        again["removed"]["digests"].as_array().unwrap().is_empty(),
        "{again}"
    );
}

#[test]
fn gc_keeps_everything_younger_than_the_grace_period() {
    let fleet = Fleet::new("gcgrace");
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let base = base();
    let reference = format!("{}/team/app:v1", registry.addr());
    for i in 0..3 {
        registry.push("team/app", "v1", &image_on(&base, &format!("r{i}")));
        explode_ok(&reference, store.path(), &[]);
    }
    let out = gc(
        store.path(),
        &fleet,
        &["--keep-revisions", "1", "--confirm"],
    );
    assert!(
        out["removed"]["digests"].as_array().unwrap().is_empty(),
        "{out}"
    );
    assert_eq!(digest_dirs(store.path()), 3);
}

/// gc runs over and over, keeping nothing it may drop, while a worker
/// explodes images that share a base: every image still completes,
/// correctly, and no link ever points at a missing tree.
#[test]
fn gc_during_a_fleet_run_never_breaks_an_image() {
    let mut fleet = Fleet::new("gcrun");
    fleet.apply_topology();
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let base = base();
    let images: Vec<(String, Image)> = (0..8)
        .map(|i| {
            let name = format!("g{i}");
            let image = image_on(&base, &name);
            registry.push(&format!("team/{name}"), "v1", &image);
            (name, image)
        })
        .collect();
    // Something to collect: an old revision nobody links any more.
    registry.push("team/old", "v1", &image_on(&base, "old"));
    explode_ok(
        &format!("{}/team/old:v1", registry.addr()),
        store.path(),
        &[],
    );
    std::fs::remove_file(store.path().join("images/team/old/v1/link")).unwrap();
    std::fs::remove_file(store.path().join("images/team/old/v1/history")).unwrap();

    fleet.start_worker(store.path(), &log, &["--concurrency", "1"]);
    for (name, _) in &images {
        fleet.enqueue_ok(&format!("{}/team/{name}:v1", registry.addr()), store.path());
    }
    let aggressive = [
        "--keep-revisions",
        "0",
        "--keep-younger-than",
        "0s",
        "--grace",
        "0s",
        "--confirm",
    ];
    let start = Instant::now();
    let linked = |store: &Path| {
        images
            .iter()
            .filter(|(n, _)| store.join(format!("images/team/{n}/v1/link")).is_file())
            .count()
    };
    while linked(store.path()) < images.len() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not every image linked while gc ran:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        gc(store.path(), &fleet, &aggressive);
    }
    gc(store.path(), &fleet, &aggressive);
    for (name, image) in &images {
        let bundle = umoci_reference(image);
        assert_trees_equal_with(
            bundle.rootfs(),
            &linked_rootfs(store.path(), "team", name, "v1"),
            &CompareOptions::default().ignore_root_mtime(),
        );
    }
    // The unlinked image's digest and its own top layer are gone; the
    // linked images' are all there.
    assert_eq!(digest_dirs(store.path()), images.len());
    assert_eq!(layer_dirs(store.path()), images.len() + 1);
}

#[test]
fn gc_sweeps_what_dead_workers_left_in_tmp_and_spares_live_staging() {
    let fleet = Fleet::new("gc-sweep");
    let store = tempfile::tempdir().unwrap();
    let tmp = store.path().join("tmp");
    // A killed worker's staging: its directory and a lock nobody holds.
    std::fs::create_dir_all(tmp.join("layer-dead.1.abc0/tree/etc")).unwrap();
    std::fs::write(tmp.join("layer-dead.1.abc0.lock"), b"").unwrap();
    // A live one: its owner holds the lock.
    std::fs::create_dir_all(tmp.join("image-live.2.def0")).unwrap();
    let lock = std::fs::File::create(tmp.join("image-live.2.def0.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();

    let dry = gc(store.path(), &fleet, &[]);
    assert_eq!(dry["removed"]["dead_staging"], 1, "{dry}");
    assert!(
        tmp.join("layer-dead.1.abc0").exists(),
        "a dry run removes nothing"
    );
    let done = gc(store.path(), &fleet, &["--confirm"]);
    assert_eq!(done["removed"]["dead_staging"], 1, "{done}");
    assert!(!tmp.join("layer-dead.1.abc0").exists());
    assert!(
        tmp.join("image-live.2.def0").exists(),
        "live staging is kept"
    );
}

/// What a damaged `image.json` of a linked image can be: garbage, a
/// valid JSON object of the wrong shape, a FIFO, a symlink to an endless
/// file.
#[test]
fn a_linked_image_whose_record_is_damaged_keeps_every_layer_and_gc_says_which_file() {
    let fleet = Fleet::new("gcdamaged");
    let registry = Registry::start();
    let base = base();
    registry.push("team/app", "v1", &image_on(&base, "linked"));
    registry.push("team/app", "old", &image_on(&base, "deleted"));
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("garbage", |p| std::fs::write(p, b"\x00not json").unwrap()),
        ("an empty object", |p| std::fs::write(p, b"{}").unwrap()),
        ("a FIFO", |p| {
            std::fs::remove_file(p).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
        }),
        ("a symlink to /dev/zero", |p| {
            std::fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink("/dev/zero", p).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let store = tempfile::tempdir().unwrap();
        let addr = registry.addr();
        explode_ok(&format!("{addr}/team/app:v1"), store.path(), &[]);
        explode_ok(&format!("{addr}/team/app:old"), store.path(), &[]);
        let out = run_exploder([
            "rm",
            "team/app:old",
            "--store",
            store.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let link = std::fs::read_to_string(store.path().join("images/team/app/v1/link")).unwrap();
        let record = store
            .path()
            .join("digest/sha256")
            .join(link.trim().strip_prefix("sha256:").unwrap())
            .join("image.json");
        damage(&record);
        let layers = layer_dirs(store.path());
        let out = run_exploder([
            "gc",
            "--confirm",
            "--keep-revisions",
            "1",
            "--keep-younger-than",
            "0s",
            "--grace",
            "0s",
            "--store",
            store.path().to_str().unwrap(),
            "--redis-url",
            &fleet.redis,
            "--prefix",
            &fleet.prefix,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: gc did not fail: {stderr}"
        );
        assert!(
            stderr.contains(&record.display().to_string()),
            "{what}: gc does not name the file: {stderr}"
        );
        assert_eq!(
            layer_dirs(store.path()),
            layers,
            "{what}: gc removed layers although a kept image's record is damaged"
        );
        assert!(linked_rootfs(store.path(), "team", "app", "v1").is_dir());
        let out = run_exploder([
            "inspect",
            "team/app:v1",
            "--store",
            store.path().to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("record is damaged"),
            "{what}: inspect says {stderr}"
        );
    }
}

/// A store of `tags` tags, each linked to an image of its own, and
/// `unlinked` images no tag names: made by hand, as finalize leaves them
/// (a rootfs and its `image.json`), without exploding anything.
fn store_of(tags: usize, unlinked: usize) -> tempfile::TempDir {
    use exploder_common::digest::Digest;
    use exploder_common::history::Origin;
    use exploder_common::store::{ImageName, StoreLayout};
    let store = tempfile::tempdir().unwrap();
    let layout = StoreLayout::new(store.path());
    let image = |i: usize| {
        let m = Digest::sha256_of(format!("image {i}").as_bytes());
        std::fs::create_dir_all(layout.rootfs_dir(&m)).unwrap();
        let info = serde_json::json!({
            "manifest_digest": m.to_string(),
            "index_digest": null,
            "config_digest": Digest::sha256_of(format!("config {i}").as_bytes()).to_string(),
            "diff_ids": [],
            "materialize": "hardlink",
            "devices_skipped": [],
            "finalized_at": "2020-01-01T00:00:00Z",
        });
        std::fs::write(
            layout.digest_dir(&m).join("image.json"),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
        m
    };
    for t in 0..tags {
        let name = ImageName::from_repository(&format!("team/app{t}"));
        layout
            .link(&name, "v1", &image(t), None, &Origin::by("test"))
            .unwrap();
    }
    for u in 0..unlinked {
        image(tags + u);
    }
    store
}

const REMOVE_ALL_UNLINKED: [&str; 7] = [
    "--keep-revisions",
    "1",
    "--keep-younger-than",
    "0s",
    "--grace",
    "0s",
    "--confirm",
];

/// What makes gc scale: the tags are read a fixed number of times per gc
/// (the plan, then once more before deleting), not once per image removed.
#[test]
fn gc_reads_each_tag_as_often_whether_it_removes_one_image_or_many() {
    let fleet = Fleet::new("gc-reads");
    let tags = 30;
    let reads: Vec<(usize, serde_json::Value)> = [1, 20]
        .into_iter()
        .map(|unlinked| {
            let store = store_of(tags, unlinked);
            let out = gc(store.path(), &fleet, &REMOVE_ALL_UNLINKED);
            let removed = out["removed"]["digests"].as_array().unwrap().len();
            assert_eq!(removed, unlinked, "{out}");
            assert_eq!(digest_dirs(store.path()), tags);
            (removed, out["removed"]["stats"]["links_read"].clone())
        })
        .collect();
    assert_eq!(reads[0].1, reads[1].1, "{reads:?}");
    assert_eq!(reads[0].1, 2 * tags, "the plan's pass and the check's");
}

/// `-o json` says where a collection's time went, for benchmarks: reading
/// the store to plan, checking again, and deleting.
#[test]
fn gc_reports_the_time_it_spent_planning_checking_and_removing() {
    let fleet = Fleet::new("gc-stats");
    let store = store_of(3, 2);
    let out = gc(store.path(), &fleet, &REMOVE_ALL_UNLINKED);
    let stats = &out["removed"]["stats"];
    for phase in ["planning_seconds", "recheck_seconds", "removing_seconds"] {
        assert!(stats[phase].as_f64().is_some_and(|s| s >= 0.0), "{out}");
    }
    assert_eq!(stats["links_read"], 6, "{out}");
    let dry = gc(store.path(), &fleet, &[]);
    assert_eq!(dry["removed"]["stats"]["links_read"], 3, "{dry}");
}
