//! Disk images (`explode --export`): each format, read back through a
//! read-only loop mount (the most faithful reader; root on this machine
//! kind can mount all three), equals the exploded rootfs entry by entry;
//! the tools' own checkers find each image clean; two exports are the same
//! bytes; a killed export leaves nothing under its final name.

use std::path::{Path, PathBuf};
use std::process::Command;

use exploder_tests::{
    Entry, Image, Layer, LayerBuilder, Registry, Snapshot, debootstrap_rootfs, run_exploder,
    sha256_digest, snapshot_dir, tar_dir,
};

const FORMATS: [&str; 3] = ["ext4", "erofs", "squashfs"];

/// A read-only loop mount, unmounted when dropped.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(image: &Path) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Explodes `image` (pushed to a fresh registry) into a fresh store with
/// `--export` of every format; returns the store and the digest directory.
fn exploded_with_exports(image: &Image, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let registry = Registry::start();
    registry.push("team/disk", "v1", image);
    let store = tempfile::tempdir().unwrap();
    let mut args = vec![
        "explode".to_string(),
        format!("{}/team/disk:v1", registry.addr()),
        "--store".into(),
        store.path().to_str().unwrap().into(),
        "--export".into(),
        FORMATS.join(","),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_exploder(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = image.manifest_digest()[7..].to_string();
    let dir = store.path().join("digest/sha256").join(hex);
    (store, dir)
}

/// The tree a format can carry of `rootfs`, and what it shows of it:
/// ext4 adds `lost+found`; ext4 (e2fsprogs 1.47.0's `mkfs.ext4 -d`) and
/// squashfs keep whole seconds of mtimes.
fn comparable(format: &str, rootfs: &Snapshot, mounted: &Snapshot) -> (Snapshot, Snapshot) {
    let (mut expected, mut actual) = (rootfs.clone(), mounted.clone());
    if format == "ext4" {
        actual = actual.excluding("lost+found");
    }
    if format != "erofs" {
        for e in expected
            .entries
            .values_mut()
            .chain(actual.entries.values_mut())
        {
            e.mtime.1 = 0;
        }
    }
    (expected, actual)
}

/// Every format of the exploded image reads back as its rootfs, and its
/// checker calls it clean.
fn assert_every_format_reads_back(dir: &Path) {
    assert_every_format_reads_back_as(dir, &snapshot_dir(&dir.join("rootfs")));
}

/// Every format of the exploded image in `dir` reads back as `rootfs`,
/// and its checker calls it clean.
fn assert_every_format_reads_back_as(dir: &Path, rootfs: &Snapshot) {
    for format in FORMATS {
        let image = dir.join(format!("rootfs.{format}"));
        assert_clean(format, &image);
        let mounted = Mounted::new(&image);
        let (expected, actual) = comparable(format, rootfs, &snapshot_dir(mounted.path()));
        let diffs = expected.diff(&actual);
        assert!(
            diffs.is_empty(),
            "{format}: {} differences:\n{}",
            diffs.len(),
            diffs
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn assert_clean(format: &str, image: &Path) {
    let mut cmd = match format {
        "ext4" => {
            let mut c = Command::new("e2fsck");
            c.arg("-fn");
            c
        }
        "erofs" => Command::new("fsck.erofs"),
        _ => {
            let mut c = Command::new("unsquashfs");
            c.arg("-s");
            c
        }
    };
    let out = cmd.arg(image).output().unwrap();
    assert!(
        out.status.success(),
        "{format} check of {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (block count, free blocks) of an ext4 image.
fn ext4_blocks(image: &Path) -> (u64, u64) {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in dumpe2fs -h:\n{text}"))
    };
    (field("Block count:"), field("Free blocks:"))
}

#[test]
fn the_debootstrap_image_reads_back_from_every_format_and_ext4_is_sized_to_fit() {
    let image = Image::oci().layer(Layer::gzip(tar_dir(&debootstrap_rootfs())));
    let (_store, dir) = exploded_with_exports(&image, &["--allow-devices"]);
    assert_every_format_reads_back(&dir);
    // Computed, not guessed: it fitted (the export succeeded), and it is
    // not much larger than what it holds.
    let (blocks, free) = ext4_blocks(&dir.join("rootfs.ext4"));
    let used = blocks - free;
    assert!(
        blocks * 100 <= used * 115,
        "rootfs.ext4 has {blocks} blocks for {used} used: more than 15% spare"
    );
}

#[test]
fn owners_modes_xattrs_links_whiteouts_and_special_files_survive_every_format() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .entry(Entry::file("usr/bin/su", b"su", 0o4755).owner(0, 0))
        .entry(Entry::file("usr/bin/wall", b"wall", 0o2755).owner(0, 5))
        .entry(Entry::dir("tmp", 0o1777))
        .entry(Entry::file("home-owned", b"u", 0o640).owner(1000, 1000))
        .entry(
            Entry::file("usr/bin/ping", b"ping", 0o755)
                .xattr(
                    "security.capability",
                    [
                        1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                )
                .xattr("user.note", b"kept"),
        )
        .file("usr/bin/tool", vec![7u8; 70_000], 0o755)
        .hardlink("usr/bin/tool-again", "usr/bin/tool")
        .symlink("usr/bin/short", "tool")
        .symlink("usr/bin/long", "x/".repeat(60))
        .dir("empty", 0o700)
        .fifo("run-fifo")
        .char_device("null", 1, 3)
        .file("etc/gone", b"removed by the next layer", 0o644)
        .file("var/cache/old", b"cleared", 0o644);
    // A second layer that deletes and clears: the images hold the result.
    let mut top = LayerBuilder::new();
    top.whiteout("etc/gone")
        .opaque("var/cache")
        .file("var/cache/new", b"fresh", 0o644);
    let image = Image::oci()
        .layer(Layer::gzip(b.build()))
        .layer(Layer::gzip(top.build()));
    let (_store, dir) = exploded_with_exports(&image, &["--allow-devices"]);
    assert!(!dir.join("rootfs/etc/gone").exists());
    assert_every_format_reads_back(&dir);
}

/// A store exploded by a user who is not root holds that user's owner on
/// every file and no file capabilities; its disk images still carry the
/// owners and xattrs the layers recorded, as a root store's do.
#[test]
fn a_rootless_store_exports_the_owners_its_layers_recorded() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("etc", 0o755)
        .entry(Entry::file("usr/bin/su", b"su", 0o4755).owner(0, 0))
        .entry(Entry::file("usr/bin/wall", b"wall", 0o2755).owner(0, 5))
        .entry(Entry::dir("tmp", 0o1777))
        // No entry for "home": a parent the layer implies is root's.
        .entry(Entry::dir("home/user", 0o700).owner(1000, 1000))
        .entry(Entry::file("home/user/notes", b"n", 0o600).owner(1000, 1000))
        .entry(Entry::file("usr/bin/tool", b"t", 0o755).xattr("user.note", b"kept"))
        .entry(Entry::file("usr/bin/ping", b"p", 0o755).xattr(
            "security.capability",
            [
                1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ))
        .hardlink("usr/bin/tool-again", "usr/bin/tool")
        .symlink("usr/bin/short", "tool")
        .fifo("run-fifo")
        .file("etc/gone", b"removed by the next layer", 0o644);
    let mut top = LayerBuilder::new();
    top.whiteout("etc/gone")
        .entry(Entry::file("etc/shadow", b"s", 0o640).owner(0, 42));
    let image = Image::oci()
        .layer(Layer::gzip(b.build()))
        .layer(Layer::gzip(top.build()));
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image);
    let reference = format!("{}/team/disk:v1", registry.addr());
    let hex = &image.manifest_digest()[7..];

    // As root: the tree carries the owners.
    let root_store = tempfile::tempdir().unwrap();
    exploder_tests::explode_ok(&reference, root_store.path(), &[]);
    let mut expected = snapshot_dir(
        &root_store
            .path()
            .join("digest/sha256")
            .join(hex)
            .join("rootfs"),
    );

    // As nobody, in a store nobody owns.
    let store = tempfile::tempdir().unwrap();
    let nobody = rustix::process::Uid::from_raw(65534);
    let nogroup = rustix::process::Gid::from_raw(65534);
    rustix::fs::chown(store.path(), Some(nobody), Some(nogroup)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exploder_tests::exploder_bin())
        .arg("explode")
        .arg(&reference)
        .arg("--store")
        .arg(store.path())
        .args(["--export", &FORMATS.join(",")])
        .env("HOME", store.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootless explode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = store.path().join("digest/sha256").join(hex);
    let tree = snapshot_dir(&dir.join("rootfs"));
    assert!(
        !tree.diff(&expected).is_empty(),
        "a rootless tree cannot carry the owners"
    );
    assert!(
        dir.join("recorded").is_file(),
        "what the layers recorded is kept"
    );
    // An implied directory is made when its image is exploded: its mtime
    // is that moment's, in each store.
    expected.entries.get_mut(&b"home"[..]).unwrap().mtime = tree.entries[&b"home"[..]].mtime;
    assert_every_format_reads_back_as(&dir, &expected);
}

#[test]
fn the_same_image_exported_twice_is_the_same_bytes() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).file("etc/motd", b"hello\n", 0o644).file(
        "bin/tool",
        vec![1u8; 10_000],
        0o755,
    );
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let (store, dir) = exploded_with_exports(&image, &[]);
    let first: Vec<String> = FORMATS
        .iter()
        .map(|f| sha256_digest(&std::fs::read(dir.join(format!("rootfs.{f}"))).unwrap()))
        .collect();
    // Removed, and exported again from the same tree a second later.
    for f in FORMATS {
        std::fs::remove_file(dir.join(format!("rootfs.{f}"))).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image);
    let out = run_exploder([
        "explode",
        &format!("{}/team/disk:v1", registry.addr()),
        "--store",
        store.path().to_str().unwrap(),
        "--export",
        "ext4,erofs,squashfs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (f, sum) in FORMATS.iter().zip(&first) {
        let again = sha256_digest(&std::fs::read(dir.join(format!("rootfs.{f}"))).unwrap());
        assert_eq!(&again, sum, "rootfs.{f} differs between two exports");
    }
}

/// An image whose layer names neither the root (`./`) nor the parents of
/// its files, exploded into two stores more than a second apart, gives the
/// same disk images: the directories no entry names take the image's time
/// (here, with no `created` in the config, the newest entry's mtime), not
/// the clock's.
#[test]
fn directories_no_layer_names_take_the_images_time_so_two_stores_export_the_same_bytes() {
    let mut b = LayerBuilder::new();
    b.file("srv/app/bin/tool", vec![7u8; 5_000], 0o755)
        .file("etc/motd", b"hello\n", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let (_first_store, first) = exploded_with_exports(&image, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_second_store, second) = exploded_with_exports(&image, &[]);
    for f in FORMATS {
        let name = format!("rootfs.{f}");
        assert_eq!(
            sha256_digest(&std::fs::read(first.join(&name)).unwrap()),
            sha256_digest(&std::fs::read(second.join(&name)).unwrap()),
            "{name} differs between two stores"
        );
    }
    let (a, b) = (
        snapshot_dir(&first.join("rootfs")),
        snapshot_dir(&second.join("rootfs")),
    );
    let newest = a.entries[&b"etc/motd"[..]].mtime;
    for dir in [&b""[..], b"srv", b"srv/app", b"srv/app/bin", b"etc"] {
        assert_eq!(a.entries[dir].mtime, b.entries[dir].mtime, "{dir:?}");
        assert_eq!(a.entries[dir].mtime, newest, "{dir:?}");
    }
}

#[test]
fn a_killed_export_leaves_nothing_under_its_final_name() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).file("etc/motd", b"hello\n", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/disk:v1", registry.addr());
    let out = Command::new(exploder_tests::exploder_bin())
        .args(["explode", &reference, "--export", "ext4", "--store"])
        .arg(store.path())
        .env("EXPLODER_FAILPOINT", "export.before-publish")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "it died at the failpoint");
    let dir = store
        .path()
        .join("digest/sha256")
        .join(&image.manifest_digest()[7..]);
    assert!(dir.join("rootfs").is_dir());
    assert!(
        !dir.join("rootfs.ext4").exists(),
        "a partial image was published"
    );
    // The next run sweeps the debris and builds it.
    let out = run_exploder([
        "explode",
        &reference,
        "--export",
        "ext4",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("rootfs.ext4").is_file());
    assert_eq!(
        std::fs::read_dir(store.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn a_missing_tool_is_a_clear_error_naming_its_package() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).file("etc/motd", b"hello\n", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(exploder_tests::exploder_bin())
        .args(["explode", &format!("{}/team/disk:v1", registry.addr())])
        .args(["--export", "squashfs", "--store"])
        .arg(store.path())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mksquashfs is not installed") && err.contains("squashfs-tools"),
        "{err}"
    );
}

#[test]
fn inspect_lists_the_disk_images_with_their_sizes() {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).file("etc/motd", b"hello\n", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let (store, dir) = exploded_with_exports(&image, &[]);
    let out = run_exploder([
        "inspect",
        &image.manifest_digest(),
        "--store",
        store.path().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(String, u64)> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["format"].as_str().unwrap().to_string(),
                e["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = FORMATS
        .iter()
        .map(|f| {
            let len = std::fs::metadata(dir.join(format!("rootfs.{f}")))
                .unwrap()
                .len();
            (f.to_string(), len)
        })
        .collect();
    assert_eq!(listed, expected);
}

#[test]
fn the_fleet_exports_through_export_jobs() {
    let mut fleet = exploder_tests::fleet::Fleet::new("export");
    fleet.apply_topology();
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).file("etc/motd", b"hello\n", 0o644).file(
        "bin/tool",
        vec![3u8; 20_000],
        0o755,
    );
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let registry = Registry::start();
    registry.push("team/disk", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    fleet.start_worker(store.path(), &log, &[]);
    let out = fleet.enqueue_with(
        &format!("{}/team/disk:v1", registry.addr()),
        store.path(),
        &["--export", "ext4,squashfs", "--wait", "--timeout", "60s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = store
        .path()
        .join("digest/sha256")
        .join(&image.manifest_digest()[7..]);
    let start = std::time::Instant::now();
    while !(dir.join("rootfs.ext4").is_file() && dir.join("rootfs.squashfs").is_file()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no disk images: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !dir.join("rootfs.erofs").exists(),
        "only what was asked for"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("\"export\""), "{log}");
    // The export queue is the fleet's like the others.
    let status = fleet.status(store.path());
    let export_queue = status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["kind"] == "export" && q["role"] == "work")
        .cloned();
    assert!(
        export_queue.is_some_and(|q| q["exists"] == true),
        "{status}"
    );
    assert!(fleet.peek_dead().is_empty());
}
