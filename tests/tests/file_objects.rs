//! File objects (issue 28): each regular file's content stored once across
//! every layer and image (`<store>/objects/`), hardlinked where it is used,
//! while every tree still equals `umoci unpack` entry by entry, hardlink
//! groups included.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use exploder_tests::fleet::Fleet;
use exploder_tests::objects::{assert_objects_named_by_their_content, objects};
use exploder_tests::{
    CompareOptions, Entry, GC_KEEP_NOTHING, Image, Layer, LayerBuilder, Registry,
    assert_trees_equal_with, explode_ok, exploder_ok, free_port, linked_rootfs, umoci_reference,
};

/// The files every version of the app has, byte for byte (content, mode,
/// owner, mtime): what a rebuild on a new base leaves unchanged.
fn unchanged(b: &mut LayerBuilder) {
    b.dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/libbig.so", big_content(), 0o755)
        .dir("usr/share", 0o755);
    for i in 0..20 {
        b.file(
            format!("usr/share/doc{i}.txt"),
            format!("documentation page {i}\n").repeat(50 + i),
            0o644,
        );
    }
}

/// Over the ingest's in-memory size (1 MiB): written streamed and shared
/// after the write.
fn big_content() -> Vec<u8> {
    (0..1_300_000u32).map(|i| (i % 251) as u8).collect()
}

/// Version `v` of the app: the unchanged files, a file of its own, and a
/// file whose bytes are the same in every version but whose mtime is not
/// (a rebuild touched it). Each version's layer has its own digest.
fn version(v: u32) -> Image {
    let mut b = LayerBuilder::new();
    unchanged(&mut b);
    b.file("etc/version", format!("version {v}\n"), 0o644)
        .entry(
            Entry::file("etc/touched", b"same bytes, new time\n", 0o644)
                .mtime(1_700_000_000 + u64::from(v)),
        );
    Image::oci().layer(Layer::gzip(b.build()))
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

/// Explodes `image`, pushed as `team/<name>:v1`, into `store`, checks the
/// tree against umoci, and returns its rootfs.
fn explode_checked(registry: &Registry, store: &Path, name: &str, image: &Image) -> PathBuf {
    registry.push(&format!("team/{name}"), "v1", image);
    explode_ok(&format!("{}/team/{name}:v1", registry.addr()), store, &[]);
    let rootfs = linked_rootfs(store, "team", name, "v1");
    let bundle = umoci_reference(image);
    assert_trees_equal_with(
        bundle.rootfs(),
        &rootfs,
        &CompareOptions::default().ignore_root_mtime(),
    );
    rootfs
}

/// The layer.json of the one layer of `image`.
fn layer_json(store: &Path, image: &Image) -> serde_json::Value {
    let diff_id = image.layers[0].diff_id();
    let hex = diff_id.strip_prefix("sha256:").unwrap();
    let text = std::fs::read(store.join("layers/sha256").join(hex).join("layer.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

#[test]
fn a_rebuilt_image_shares_every_unchanged_file_with_the_first() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let one = explode_checked(&registry, store.path(), "one", &version(1));
    let two = explode_checked(&registry, store.path(), "two", &version(2));
    for same in ["etc/passwd", "usr/lib/libbig.so", "usr/share/doc7.txt"] {
        assert_eq!(ino(&one.join(same)), ino(&two.join(same)), "{same}");
    }
    assert_ne!(ino(&one.join("etc/version")), ino(&two.join("etc/version")));
    // Same bytes, another mtime: another inode, or one image would show
    // the other's time.
    assert_ne!(ino(&one.join("etc/touched")), ino(&two.join("etc/touched")));
    let info = layer_json(store.path(), &version(2));
    assert_eq!(info["shared_files"], 22, "{info}");
    assert!(info["shared_bytes"].as_u64().unwrap() > 1_300_000, "{info}");
    assert_eq!(layer_json(store.path(), &version(1))["shared_files"], 0);
    // 22 files of both, and 2 of each version's own.
    assert_eq!(objects(store.path()).len(), 26);
    assert_objects_named_by_their_content(store.path());
}

#[test]
fn identical_files_stay_apart_in_a_tree_unless_a_layer_hardlinks_them() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let same = b"identical content and metadata\n";
    // Another image has the file first: its object is in the store before
    // either layer below is ingested, so both layers find it.
    let mut other = LayerBuilder::new();
    other.file("elsewhere", same, 0o644);
    let other = explode_checked(
        &registry,
        store.path(),
        "other",
        &Image::oci().layer(Layer::gzip(other.build())),
    );
    let mut lower = LayerBuilder::new();
    lower
        .dir("a", 0o755)
        .file("a/one", same, 0o644)
        .file("a/two", same, 0o644)
        .hardlink("a/linked", "a/one");
    let mut upper = LayerBuilder::new();
    upper
        .dir("b", 0o755)
        .file("b/three", same, 0o644)
        .file("b/four", same, 0o644)
        .hardlink("b/four-linked", "b/four");
    let image = Image::oci()
        .layer(Layer::gzip(lower.build()))
        .layer(Layer::gzip(upper.build()));
    // umoci's hardlink groups: {one, linked}, {four, four-linked}, and
    // two, three alone; the comparison checks them.
    let rootfs = explode_checked(&registry, store.path(), "same", &image);
    let inodes: HashSet<u64> = ["a/one", "a/two", "b/three", "b/four"]
        .iter()
        .map(|p| ino(&rootfs.join(p)))
        .collect();
    assert_eq!(inodes.len(), 4);
    assert_eq!(ino(&rootfs.join("a/one")), ino(&rootfs.join("a/linked")));
    assert_eq!(
        ino(&rootfs.join("b/four")),
        ino(&rootfs.join("b/four-linked"))
    );
    // Across images inodes are shared, as layer hardlinks always were.
    assert_eq!(ino(&rootfs.join("a/one")), ino(&other.join("elsewhere")));
}

/// Several paths of one layer with the same content and metadata (the
/// copyright file every package of one source installs) are each their
/// own inode in the tree, and each a copy of the key in `objects/`
/// (`<key>`, `<key>.1`, ...): a rebuild's duplicates link the last
/// version's copies instead of being stored again.
#[test]
fn a_rebuilds_duplicate_files_share_the_copies_of_the_last_version() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let same = b"Copyright: the same for every package of the source\n";
    let build = |v: u32| {
        let mut b = LayerBuilder::new();
        b.dir("doc", 0o755);
        for pkg in ["liba", "libb", "libc"] {
            b.file(format!("doc/{pkg}-copyright"), same, 0o644);
        }
        b.file("version", format!("{v}\n"), 0o644);
        Image::oci().layer(Layer::gzip(b.build()))
    };
    let one = explode_checked(&registry, store.path(), "one", &build(1));
    let two = explode_checked(&registry, store.path(), "two", &build(2));
    let paths = [
        "doc/liba-copyright",
        "doc/libb-copyright",
        "doc/libc-copyright",
    ];
    let in_one: HashSet<u64> = paths.iter().map(|p| ino(&one.join(p))).collect();
    let in_two: HashSet<u64> = paths.iter().map(|p| ino(&two.join(p))).collect();
    assert_eq!(in_one.len(), 3, "no hardlink the image does not have");
    assert_eq!(in_one, in_two, "the rebuild links the same three copies");
    assert_eq!(layer_json(store.path(), &build(2))["shared_files"], 3);
    let names: Vec<String> = objects(store.path()).into_keys().collect();
    let copies: Vec<&String> = names.iter().filter(|n| n.contains('.')).collect();
    assert_eq!(copies.len(), 2, "{names:?}");
    assert_objects_named_by_their_content(store.path());
}

#[test]
fn files_that_differ_only_in_metadata_are_not_shared() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let content = b"the same bytes everywhere\n";
    let variants: Vec<(&str, Entry)> = vec![
        ("plain", Entry::file("f", content, 0o644)),
        ("mode", Entry::file("f", content, 0o600)),
        ("owner", Entry::file("f", content, 0o644).owner(1000, 1000)),
        (
            "mtime",
            Entry::file("f", content, 0o644).mtime(1_500_000_000),
        ),
        (
            "nanos",
            Entry::file("f", content, 0o644).mtime_nanos(exploder_tests::DEFAULT_MTIME, 5),
        ),
        (
            "xattr",
            Entry::file("f", content, 0o644).xattr("user.origin", b"build"),
        ),
    ];
    let mut inodes = HashSet::new();
    for (name, entry) in variants {
        let mut b = LayerBuilder::new();
        b.entry(entry);
        let rootfs = explode_checked(
            &registry,
            store.path(),
            name,
            &Image::oci().layer(Layer::gzip(b.build())),
        );
        assert!(inodes.insert(ino(&rootfs.join("f"))), "{name} shared");
    }
    // The same once more shares with the first.
    let mut b = LayerBuilder::new();
    b.entry(Entry::file("f", content, 0o644))
        .file("g", b"another layer digest", 0o644);
    let again = explode_checked(
        &registry,
        store.path(),
        "again",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    assert!(!inodes.insert(ino(&again.join("f"))));
}

/// `exploder gc --confirm -o json` keeping nothing it may remove. With a
/// fleet, its Redis says what is in progress; without, the store is only
/// explode's and Redis is pointed at a closed port.
fn gc(store: &Path, fleet: Option<&Fleet>) -> serde_json::Value {
    let closed = format!("redis://127.0.0.1:{}/0", free_port());
    let (redis, prefix) = match fleet {
        Some(f) => (f.redis.as_str(), f.prefix.as_str()),
        None => (closed.as_str(), "exploder-"),
    };
    let mut args = vec!["gc", "--confirm", "-o", "json"];
    args.extend_from_slice(GC_KEEP_NOTHING);
    args.extend(["--redis-url", redis, "--prefix", prefix]);
    let out = exploder_ok(&args, store);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rm(store: &Path, reference: &str) {
    exploder_ok(&["rm", reference], store);
}

#[test]
fn gc_reclaims_the_objects_only_removed_images_used() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    explode_checked(&registry, store.path(), "one", &version(1));
    explode_checked(&registry, store.path(), "two", &version(2));
    assert_eq!(objects(store.path()).len(), 26);
    rm(store.path(), &format!("{}/team/one:v1", registry.addr()));
    let report = gc(store.path(), None);
    // etc/version and etc/touched of version 1.
    assert_eq!(report["removed"]["objects"], 2, "{report}");
    let left = objects(store.path());
    assert_eq!(left.len(), 24);
    assert!(left.values().all(|&links| links >= 2), "{left:?}");
    let bundle = umoci_reference(&version(2));
    assert_trees_equal_with(
        bundle.rootfs(),
        &linked_rootfs(store.path(), "team", "two", "v1"),
        &CompareOptions::default().ignore_root_mtime(),
    );
    // Nothing left to reclaim.
    assert_eq!(gc(store.path(), None)["removed"]["objects"], 0);
}

/// Eight images with the same new files, each under its own layer digest.
fn twins() -> Vec<Image> {
    (0..8)
        .map(|i| {
            let mut b = LayerBuilder::new();
            unchanged(&mut b);
            b.file(format!("own{i}"), format!("image {i}"), 0o644);
            Image::oci().layer(Layer::gzip(b.build()))
        })
        .collect()
}

#[test]
fn ingests_of_the_same_new_content_at_once_end_with_one_object_per_file() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let images = twins();
    for (i, image) in images.iter().enumerate() {
        registry.push(&format!("team/twin{i}"), "v1", image);
    }
    // Eight processes, as eight workers on eight hosts sharing the store.
    let store_path = store.path().to_str().unwrap().to_owned();
    let running: Vec<_> = (0..images.len())
        .map(|i| {
            std::process::Command::new(exploder_tests::exploder_bin())
                .args([
                    "explode",
                    &format!("{}/team/twin{i}:v1", registry.addr()),
                    "--store",
                    &store_path,
                    "--no-progress",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in running {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (i, image) in images.iter().enumerate() {
        let bundle = umoci_reference(image);
        assert_trees_equal_with(
            bundle.rootfs(),
            &linked_rootfs(store.path(), "team", &format!("twin{i}"), "v1"),
            &CompareOptions::default().ignore_root_mtime(),
        );
    }
    // 22 shared files, one of each image's own.
    assert_eq!(objects(store.path()).len(), 22 + images.len());
    assert_objects_named_by_their_content(store.path());
}

/// Enqueues `version(v)` as `team/v<v>:v1` on `fleet` and waits until it
/// is linked.
fn enqueue_version(fleet: &Fleet, registry: &Registry, store: &Path, v: u32) {
    registry.push(&format!("team/v{v}"), "v1", &version(v));
    fleet.enqueue_ok_with(
        &format!("{}/team/v{v}:v1", registry.addr()),
        store,
        &["--wait", "--timeout", "120s"],
    );
}

#[test]
fn gc_beside_ingests_never_takes_an_object_a_kept_image_needs() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut fleet = Fleet::new("objects-gc");
    fleet.apply_topology();
    fleet.start_worker(&store, &dir.path().join("worker.log"), &[]);
    // Five versions built and removed: garbage whose layers hold the 22
    // unchanged files' objects.
    for v in 1..=5 {
        enqueue_version(&fleet, &registry, &store, v);
        rm(&store, &format!("{}/team/v{v}:v1", registry.addr()));
    }
    // gc deletes those layers, so drops the shared objects to one link and
    // reclaims them, while the worker ingests versions 6 and 7 and links
    // the same objects. What the fleet has in progress is protected by
    // what gc asks the fleet, not by time: no grace.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                gc(&store, Some(&fleet));
                runs += 1;
            }
            runs
        });
        for v in 6..=7 {
            enqueue_version(&fleet, &registry, &store, v);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(collector.join().unwrap() > 0);
    });
    gc(&store, Some(&fleet));
    for v in 6..=7 {
        assert_trees_equal_with(
            umoci_reference(&version(v)).rootfs(),
            &linked_rootfs(&store, "team", &format!("v{v}"), "v1"),
            &CompareOptions::default().ignore_root_mtime(),
        );
    }
    // What versions 6 and 7 link is all there, one object per file, each
    // held by them: the 22 shared files, and two of each version's own.
    let left = objects(&store);
    assert_eq!(left.len(), 26, "{left:?}");
    assert!(left.values().all(|&links| links >= 2), "{left:?}");
    assert_objects_named_by_their_content(&store);
    // A rebuild finds every unchanged file.
    enqueue_version(&fleet, &registry, &store, 8);
    assert_eq!(layer_json(&store, &version(8))["shared_files"], 22);
}

#[test]
fn a_store_from_before_objects_keeps_working_and_gains_objects() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let image = version(1);
    registry.push("team/old", "v1", &image);
    explode_ok(
        &format!("{}/team/old:v1", registry.addr()),
        store.path(),
        &["--no-file-objects"],
    );
    assert!(!store.path().join("objects").exists());
    let old = linked_rootfs(store.path(), "team", "old", "v1");
    let two = explode_checked(&registry, store.path(), "new", &version(2));
    assert_eq!(objects(store.path()).len(), 24);
    assert_eq!(layer_json(store.path(), &version(2))["shared_files"], 0);
    assert_ne!(ino(&old.join("etc/passwd")), ino(&two.join("etc/passwd")));
    assert_trees_equal_with(
        umoci_reference(&image).rootfs(),
        &old,
        &CompareOptions::default().ignore_root_mtime(),
    );
    // A third version shares with the second.
    let three = explode_checked(&registry, store.path(), "third", &version(3));
    assert_eq!(ino(&three.join("etc/passwd")), ino(&two.join("etc/passwd")));
}

/// ext4 allows 65,000 links to one inode; an object with `LINK_CAP` links
/// counts as full. The next layer keeps its own copy, which becomes the
/// key's object for the layers after it; and an image assembled from a
/// layer whose file is that full gets a copy, its hardlink group intact.
#[test]
fn an_object_at_the_link_limit_is_followed_by_a_new_one() {
    let disk = exploder_tests::small_disk::SmallDisk::new(256);
    let store = disk.store();
    let registry = Registry::start();
    let content = b"a file every image has\n";
    let layer = |i: u32| {
        let mut b = LayerBuilder::new();
        b.file("common", content, 0o644)
            .hardlink("common-link", "common")
            .file("own", format!("image {i}"), 0o644);
        Layer::gzip(b.build())
    };
    let image = |i: u32| Image::oci().layer(layer(i));
    let first = explode_checked(&registry, &store, "first", &image(1));
    let (name, _) = objects(&store)
        .into_iter()
        .find(|(name, _)| {
            ino(&store.join("objects").join(&name[..2]).join(name)) == ino(&first.join("common"))
        })
        .expect("the common file's object");
    let object = store.join("objects").join(&name[..2]).join(&name);
    // Links of no layer's, up to the cap.
    let filler = disk.mnt.join("links");
    std::fs::create_dir(&filler).unwrap();
    let fill = |file: &Path, round: &str| {
        let mut links = std::fs::symlink_metadata(file).unwrap().nlink();
        while links < exploder_common::store::objects::LINK_CAP {
            std::fs::hard_link(file, filler.join(format!("{round}-{links}"))).unwrap();
            links += 1;
        }
    };
    fill(&object, "first");
    let second = explode_checked(&registry, &store, "second", &image(2));
    assert_ne!(ino(&second.join("common")), ino(&first.join("common")));
    // The second image's copy is the object now, and the third shares it.
    assert_eq!(ino(&object), ino(&second.join("common")));
    let third = explode_checked(&registry, &store, "third", &image(3));
    assert_eq!(ino(&third.join("common")), ino(&second.join("common")));
    // The first layer again, under another layer: its inode, full again
    // (it lost the objects directory's link to the second's), is copied,
    // once for the hardlink group (the comparison checks it).
    fill(&first.join("common"), "again");
    let mut top = LayerBuilder::new();
    top.file("top", b"another image", 0o644);
    let again = explode_checked(
        &registry,
        &store,
        "again",
        &Image::oci().layer(layer(1)).layer(Layer::gzip(top.build())),
    );
    assert_ne!(ino(&again.join("common")), ino(&first.join("common")));
    assert_objects_named_by_their_content(&store);
}

/// The fleet's workers share files as `explode` does, count what they
/// shared in their metrics, and `status --store` and `inspect` show the
/// store's objects and what they saved.
#[test]
fn a_fleet_worker_shares_files_and_the_inventory_counts_them() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut fleet = Fleet::new("objects");
    fleet.apply_topology();
    let listen = format!("127.0.0.1:{}", free_port());
    fleet.start_worker(
        &store,
        &dir.path().join("worker.log"),
        &["--metrics-listen", &listen],
    );
    for v in 1..=2 {
        enqueue_version(&fleet, &registry, &store, v);
    }
    let shared = layer_json(&store, &version(2))["shared_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(layer_json(&store, &version(2))["shared_files"], 22);

    let (code, metrics) = exploder_tests::http_get(
        listen.rsplit(':').next().unwrap().parse().unwrap(),
        "/metrics",
    );
    assert_eq!(code, 200);
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
    };
    assert_eq!(counter("exploder_worker_files_shared_total"), 22);
    assert_eq!(counter("exploder_worker_file_bytes_shared_total"), shared);

    let status = fleet.status(&store);
    assert_eq!(status["objects"]["objects"], 26, "{status}");
    assert_eq!(status["objects"]["shared_files"], 22, "{status}");
    assert_eq!(status["objects"]["saved_bytes"], shared, "{status}");

    let out = exploder_ok(&["inspect", "team/v2:v1", "-o", "json"], &store);
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["layers"][0]["shared_bytes"], shared, "{inspect}");
    assert_eq!(inspect["store_objects"]["objects"], 26, "{inspect}");
    let out = exploder_ok(&["inspect", "team/v2:v1"], &store);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("26 file objects; 22 files shared"), "{text}");
}
