//! Checks of the harness itself, one behaviour each: if these fail, the
//! exploder tests built on the harness cannot be trusted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use exploder_tests::*;
use rustix::fs::{AtFlags, CWD, Gid, Timespec, Timestamps, Uid};

/// The harness's default entry mtime, used for hand-made trees too.
const M: u64 = DEFAULT_MTIME;

/// Sets owner, mode (not on symlinks) and mtime of `path` without following
/// a symlink, in the order an unpacker must use (chmod after chown, or the
/// kernel drops setuid; mtime last).
fn set_meta(path: &Path, mode: Option<u32>, uid: u32, gid: u32, mtime: (i64, i64)) {
    rustix::fs::chownat(
        CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    if let Some(mode) = mode {
        rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode)).unwrap();
    }
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: mtime.1 as _,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Builds, by hand, the tree that the crafted two-layer image of
/// `umoci_unpack_of_crafted_image_gives_expected_tree` should unpack to.
/// Directory times are set last, deepest first, as creating children
/// changes them.
fn expected_tree(root: &Path) {
    let m = (M as i64, 0);
    let w = |rel: &str, content: &[u8], mode: u32, mtime: (i64, i64)| {
        let p = root.join(rel);
        std::fs::write(&p, content).unwrap();
        set_meta(&p, Some(mode), 0, 0, mtime);
    };
    for d in ["bin", "etc", "usr", "usr/lib", "var", "var/cache", "tmp"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    w("bin/sh", b"#!shell", 0o755, m);
    std::fs::hard_link(root.join("bin/sh"), root.join("bin/hard")).unwrap();
    std::fs::write(root.join("bin/su"), b"su").unwrap();
    set_meta(&root.join("bin/su"), Some(0o4755), 0, 42, m);
    w("etc/hostname", b"second\n", 0o644, (M as i64 + 100, 0));
    w("etc/nanos", b"n", 0o600, (M as i64, 123_456_789));
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    set_meta(&root.join("lib"), None, 0, 0, m);
    std::os::unix::fs::symlink("/proc/self/mounts", root.join("etc/mtab")).unwrap();
    set_meta(&root.join("etc/mtab"), None, 0, 0, (M as i64, 5));
    w("var/keep", b"", 0o644, m);
    w("var/cache/new", b"fresh", 0o644, m);
    for (d, mode) in [
        ("var/cache", 0o755),
        ("usr/lib", 0o755),
        ("var", 0o755),
        ("usr", 0o755),
        ("etc", 0o755),
        ("bin", 0o755),
        ("tmp", 0o1777),
        ("", 0o755),
    ] {
        set_meta(&root.join(d), Some(mode), 0, 0, m);
    }
}

/// The crafted image: files, dirs, a setuid file, symlinks, a hardlink and a
/// PAX sub-second mtime in layer 1; a replaced file, a whiteout and an
/// opaque directory in layer 2. Every directory has its own entry, before
/// its children, so umoci leaves no time of its own in the tree.
fn crafted_image() -> Image {
    let l1 = LayerBuilder::new()
        .dir("./", 0o755)
        .dir("bin", 0o755)
        .file("bin/sh", b"#!shell", 0o755)
        .hardlink("bin/hard", "bin/sh")
        .entry(Entry::file("bin/su", b"su", 0o4755).owner(0, 42))
        .dir("etc", 0o755)
        .file("etc/hostname", b"first\n", 0o644)
        .entry(Entry::file("etc/nanos", b"n", 0o600).mtime_nanos(M, 123_456_789))
        .entry(Entry::symlink("etc/mtab", "/proc/self/mounts").mtime_nanos(M, 5))
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .dir("var", 0o755)
        .file("var/old", b"old", 0o644)
        .file("var/keep", b"", 0o644)
        .dir("var/cache", 0o755)
        .file("var/cache/stale", b"stale", 0o644)
        .dir("tmp", 0o1777)
        .build();
    let l2 = LayerBuilder::new()
        .entry(Entry::file("etc/hostname", b"second\n", 0o644).mtime(M + 100))
        .whiteout("var/old")
        .opaque("var/cache")
        .file("var/cache/new", b"fresh", 0o644)
        .build();
    Image::oci().layer(Layer::gzip(l1)).layer(Layer::gzip(l2))
}

/// A small tree with every kind of entry the comparison looks at, the same
/// on every call (all times set explicitly).
fn sample_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/a"), b"alpha").unwrap();
    std::fs::hard_link(root.join("d/a"), root.join("d/b")).unwrap();
    std::fs::write(root.join("c"), b"gamma").unwrap();
    std::os::unix::fs::symlink("d/a", root.join("s")).unwrap();
    rustix::fs::lsetxattr(
        root.join("c"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let m = (M as i64, 0);
    set_meta(&root.join("d/a"), Some(0o644), 0, 0, m);
    set_meta(&root.join("c"), Some(0o640), 7, 8, m);
    set_meta(&root.join("s"), None, 0, 0, m);
    set_meta(&root.join("d"), Some(0o755), 0, 0, m);
    set_meta(root, Some(0o755), 0, 0, m);
    dir
}

fn http_get_status(url: &str) -> u16 {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    agent.get(url).call().unwrap().status().as_u16()
}

#[test]
fn registry_starts_and_answers_v2() {
    let reg = Registry::start();
    assert_eq!(http_get_status(&format!("http://{}/v2/", reg.addr())), 200);
    assert!(reg.storage_root().is_dir());
    assert!(reg.log().contains("\"GET /v2/ HTTP/1.1\" 200"));
}

#[test]
fn skopeo_sees_the_pushed_manifest_digest() {
    let reg = Registry::start();
    let image = crafted_image();
    let digest = reg.push("lib/crafted", "v1", &image);
    assert_eq!(digest, image.manifest_digest());
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/lib/crafted:v1", reg.addr()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(
        info["Layers"],
        serde_json::json!(image.layer_digests()),
        "skopeo lists the pushed layer digests"
    );
}

#[test]
fn pushed_index_is_served_byte_for_byte() {
    let reg = Registry::start();
    let tar = LayerBuilder::new().file("f", b"x", 0o644).build();
    let index = Index::docker()
        .image(Image::docker().layer(Layer::gzip(tar.clone())))
        .image(
            Image::docker()
                .platform("linux", "arm", Some("v7"))
                .layer(Layer::zstd(tar)),
        );
    let digest = reg.push_index("multi", "latest", &index);
    assert_eq!(digest, index.manifest_digest());
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/multi:latest", reg.addr()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, index.manifest_bytes());
}

#[test]
fn tampered_blob_is_served_and_blob_gets_are_counted() {
    let reg = Registry::start();
    let image = Image::oci().layer(Layer::gzip(
        LayerBuilder::new().file("f", b"x", 0o644).build(),
    ));
    reg.push("t", "v", &image);
    let digest = &image.layer_digests()[0];
    reg.tamper_blob(digest, b"garbage");
    assert_eq!(
        std::fs::read(reg.blob_data_path(digest)).unwrap(),
        b"garbage"
    );
    let mut body = Vec::new();
    ureq::get(format!("http://{}/v2/t/blobs/{digest}", reg.addr()))
        .call()
        .unwrap()
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body, b"garbage");
    assert_eq!(reg.blob_get_count("t", digest), 1);
}

#[test]
fn umoci_unpack_of_crafted_image_gives_expected_tree() {
    let image = crafted_image();
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "v1").unwrap();
    let bundle = umoci_unpack(layout.path(), "v1");
    let expected = tempfile::tempdir().unwrap();
    expected_tree(expected.path());
    assert_trees_equal(expected.path(), bundle.rootfs());
}

#[test]
fn compare_trees_of_a_tree_with_itself_is_empty() {
    let a = sample_tree();
    let b = sample_tree();
    assert_eq!(compare_trees(a.path(), a.path()), Vec::<String>::new());
    assert_eq!(compare_trees(a.path(), b.path()), Vec::<String>::new());
}

#[test]
fn compare_trees_detects_a_mode_change() {
    let (a, b) = (sample_tree(), sample_tree());
    rustix::fs::chmod(b.path().join("c"), rustix::fs::Mode::from_raw_mode(0o2640)).unwrap();
    assert_eq!(
        compare_trees(a.path(), b.path()),
        vec!["c: mode expected 0o100640, actual 0o102640"]
    );
}

#[test]
fn compare_trees_detects_a_content_change() {
    let (a, b) = (sample_tree(), sample_tree());
    let c = b.path().join("c");
    std::fs::write(&c, b"GAMMA").unwrap();
    set_meta(&c, Some(0o640), 7, 8, (M as i64, 0));
    let diffs = compare_trees(a.path(), b.path());
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].starts_with("c: content sha256 expected"),
        "{diffs:?}"
    );
}

#[test]
fn compare_trees_detects_a_broken_hardlink_group() {
    let (a, b) = (sample_tree(), sample_tree());
    // Same content and metadata, but a copy instead of a link.
    let p = b.path().join("d/b");
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"alpha").unwrap();
    set_meta(&p, Some(0o644), 0, 0, (M as i64, 0));
    set_meta(&b.path().join("d"), Some(0o755), 0, 0, (M as i64, 0));
    // One line for the group, not one per member.
    assert_eq!(
        compare_trees(a.path(), b.path()),
        vec!["d/a: hardlinked with [d/b] in expected, with nothing in actual"]
    );
}

#[test]
fn compare_trees_detects_an_mtime_change_of_a_symlink() {
    let (a, b) = (sample_tree(), sample_tree());
    set_meta(&b.path().join("s"), None, 0, 0, (M as i64, 1));
    assert_eq!(
        compare_trees(a.path(), b.path()),
        vec!["s: mtime expected 1600000000.000000000, actual 1600000000.000000001"]
    );
}

#[test]
fn compare_trees_reports_root_missing_and_extra_entries() {
    let (a, b) = (sample_tree(), sample_tree());
    std::fs::remove_file(b.path().join("s")).unwrap();
    std::fs::create_dir(b.path().join("new")).unwrap();
    set_meta(b.path(), Some(0o700), 0, 0, (M as i64, 0));
    let diffs = compare_trees(a.path(), b.path());
    assert_eq!(
        diffs,
        vec![
            "<root>: mode expected 0o40755, actual 0o40700",
            "s: missing in actual (symlink)",
            "new: extra in actual (directory)",
        ]
    );
}

#[test]
fn snapshot_diff_sees_changes_outside_an_excluded_dir() {
    let dir = sample_tree();
    let before = snapshot_dir(dir.path());
    std::fs::write(dir.path().join("d/inside"), b"ok").unwrap();
    let after = snapshot_dir(dir.path());
    // d's own mtime changed too: exclude the whole subtree.
    assert!(before.excluding("d").diff(&after.excluding("d")).is_empty());
    std::fs::write(dir.path().join("c"), b"bad").unwrap();
    let after = snapshot_dir(dir.path());
    assert!(!before.excluding("d").diff(&after.excluding("d")).is_empty());
}

#[test]
fn gzip_multi_member_decompresses_to_the_same_bytes() {
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let gz = gzip_multi_member(&data);
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut all)
        .unwrap();
    assert_eq!(all, data);
    // A single-member decoder stops early: there really are several members.
    let mut first = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut first)
        .unwrap();
    assert!(first.len() < data.len());
}

/// Builds (or reuses) the cached Debian rootfs; takes about 30 s the first
/// time.
#[test]
fn debootstrap_rootfs_is_built_and_cached() {
    let rootfs: PathBuf = debootstrap_rootfs();
    assert!(rootfs.join("etc/debian_version").is_file());
    assert!(rootfs.join("usr/bin/dpkg").is_file());
    // The second call finds the cache.
    let start = std::time::Instant::now();
    assert_eq!(debootstrap_rootfs(), rootfs);
    assert!(start.elapsed().as_secs() < 5);
}

/// A debootstrap rootfs packed by `tar_dir` and unpacked by umoci is the
/// same tree: the realistic reference works end to end.
#[test]
fn umoci_reproduces_a_debootstrap_rootfs() {
    let rootfs = debootstrap_rootfs();
    let image = Image::oci().layer(Layer::gzip(tar_dir(&rootfs)));
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "bookworm").unwrap();
    let bundle = umoci_unpack(layout.path(), "bookworm");
    assert_trees_equal(&rootfs, bundle.rootfs());
}
