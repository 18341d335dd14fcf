//! Hostile images against the `exploder` binary, one case per test.
//!
//! Every test builds an image by hand, pushes it to its own throwaway
//! registry and explodes it into a store that lives inside a sandbox
//! directory. The sandbox also holds a `victim/` directory (files, a
//! subdirectory, a symlink) that hostile entries aim at, by relative climbs
//! (`../../victim`), by the sandbox's absolute path, or through symlinks.
//!
//! Each test then says what the run must come to, with the harness's
//! `sandbox::Explode`: refused (and what the store may keep of the
//! layers), or contained; both check first that nothing outside the store
//! changed (see `exploder_tests::sandbox` for every check).
//!
//! Besides the classic escapes (`..`, absolute paths, symlinks and
//! hardlinks out, the root replaced, bad whiteouts, devices), the cases
//! cover resource limits, blobs that are not what their descriptor says,
//! and trees deeper than any one path (built through symlinks), which must
//! neither crash exploder nor leave staging behind.
//!
//! The tests need root (device nodes, chown) and `docker-registry`; build
//! the binary first: `cargo build --workspace --bins`.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use exploder_tests::image::media_type;
use exploder_tests::sandbox::{Ident, REPO, SECRET, SUB_FILE, Sandbox, TAG, ident, join, walk_fds};
use exploder_tests::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn tar(build: impl FnOnce(&mut LayerBuilder)) -> Vec<u8> {
    let mut b = LayerBuilder::new();
    build(&mut b);
    b.build()
}

fn image(layers: Vec<Layer>) -> Image {
    layers.into_iter().fold(Image::oci(), Image::layer)
}

/// A well-formed first layer, so that refusals are about the hostile one.
fn base_layer() -> Layer {
    Layer::gzip(tar(|b| {
        b.dir("etc", 0o755)
            .file("etc/hostname", b"box\n", 0o644)
            .dir("usr", 0o755)
            .file("usr/ok", b"ok\n", 0o644);
    }))
}

fn assert_file(path: &Path, content: &[u8]) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    assert!(md.is_file(), "{} is not a regular file", path.display());
    assert_eq!(
        fs::read(path).unwrap(),
        content,
        "content of {}",
        path.display()
    );
}

fn assert_symlink(path: &Path, target: &[u8]) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    assert!(
        md.file_type().is_symlink(),
        "{} is not a symlink",
        path.display()
    );
    assert_eq!(
        fs::read_link(path).unwrap().as_os_str().as_bytes(),
        target,
        "target of {}",
        path.display()
    );
}

fn assert_absent(path: &Path) {
    assert!(
        fs::symlink_metadata(path).is_err(),
        "{} should not exist",
        path.display()
    );
}

/// Panics if any device node is under `dir`.
fn assert_no_devices_under(dir: &Path) {
    use rustix::fs::FileType;
    for e in walk_fds(dir) {
        assert!(
            !matches!(e.kind, FileType::CharacterDevice | FileType::BlockDevice),
            "device node {} was created under {}",
            String::from_utf8_lossy(&e.rel),
            dir.display()
        );
    }
}

/// A single-layer image whose layer is `tar`, exploded; the refusal must
/// say `needles`, and nothing may be kept.
fn assert_layer_refused(tar: Vec<u8>, extra: &[&str], needles: &[&str]) {
    let sb = Sandbox::new();
    sb.explode(&image(vec![Layer::gzip(tar)]))
        .args(extra)
        .refused(needles);
}

/// Like [`assert_layer_refused`] with a good base layer below the hostile
/// one (which must be the one refused).
fn assert_upper_layer_refused(tar: Vec<u8>, needles: &[&str]) {
    let sb = Sandbox::new();
    let hostile = Layer::gzip(tar);
    let diff_id = hostile.diff_id().to_string();
    sb.explode(&image(vec![base_layer(), hostile]))
        .refused_without_layer(&diff_id, needles);
}

// ---------------------------------------------------------------------------
// Paths that climb out
// ---------------------------------------------------------------------------

#[test]
fn path_traversal_with_leading_dotdot_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.file("ok", b"fine\n", 0o644)
                .file("../../victim/pwned", b"pwned\n", 0o644);
        }),
        &[],
        &["../../victim/pwned", "climbs above the root"],
    );
}

#[test]
fn path_traversal_in_the_middle_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.dir("a", 0o755).file("a/../../x", b"pwned\n", 0o644);
        }),
        &[],
        &["a/../../x", "climbs above the root"],
    );
}

#[test]
fn path_traversal_deep_in_the_middle_toward_the_victim_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.dir("a", 0o755).dir("a/b", 0o755).file(
                "a/b/../../../../../../victim/pwned",
                b"pwned\n",
                0o644,
            );
        }),
        &[],
        &["climbs above the root"],
    );
}

#[test]
fn path_traversal_in_a_gnu_long_name_is_refused() {
    let mut path = b"../".repeat(40);
    path.extend_from_slice(b"victim/pwned");
    assert!(path.len() > 100);
    assert_layer_refused(
        tar(|b| {
            b.entry(Entry::file(path, b"pwned\n", 0o644).long_names(LongName::Gnu));
        }),
        &[],
        &["climbs above the root"],
    );
}

#[test]
fn path_traversal_in_a_pax_path_record_is_refused() {
    // The ustar name field says `innocent`; the PAX `path` record, which
    // wins, climbs out.
    assert_layer_refused(
        tar(|b| {
            b.entry(Entry::file("innocent", b"pwned\n", 0o644).pax("path", "../../victim/pwned"));
        }),
        &[],
        &["climbs above the root"],
    );
}

#[test]
fn dotdot_that_stays_inside_is_accepted() {
    let layer = Layer::gzip(tar(|b| {
        b.dir("a", 0o755).file("a/../x", b"inside\n", 0o644);
    }));
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer])).contained();
    assert_file(&sb.rootfs().join("x"), b"inside\n");
}

#[test]
fn absolute_paths_are_taken_inside_the_root() {
    let sb = Sandbox::new();
    let layer = Layer::gzip(tar(|b| {
        b.file("/victim/abs", b"abs\n", 0o644)
            .file(join(&sb.victim_abs(), b"abs2"), b"abs2\n", 0o644)
            .file("/etc/pwned-by-exploder-test", b"abs3\n", 0o644);
    }));
    sb.explode(&image(vec![layer])).contained();
    let rootfs = sb.rootfs();
    assert_file(&rootfs.join("victim/abs"), b"abs\n");
    assert_file(&rootfs.join(sb.victim_in_root()).join("abs2"), b"abs2\n");
    assert_file(&rootfs.join("etc/pwned-by-exploder-test"), b"abs3\n");
    assert_absent(Path::new("/etc/pwned-by-exploder-test"));
    assert_absent(&sb.victim().join("abs"));
    assert_absent(&sb.victim().join("abs2"));
}

// ---------------------------------------------------------------------------
// Symlinks pointing out
// ---------------------------------------------------------------------------

#[test]
fn symlink_escape_relative_in_the_same_layer_is_contained() {
    let sb = Sandbox::new();
    let climb = sb.victim_by_climbing();
    let layer = Layer::gzip(tar(|b| {
        // From rootfs/ (store/digest/sha256/<hex>/rootfs), five levels up
        // is the sandbox; from the layer's staging tree, four.
        b.symlink("esc", &climb)
            .file("esc/pwned", b"pwned\n", 0o644)
            .symlink("five", "../../../../../victim")
            .file("five/pwned5", b"pwned5\n", 0o644)
            .symlink("four", "../../../../victim")
            .file("four/pwned4", b"pwned4\n", 0o644);
    }));
    sb.explode(&image(vec![layer])).contained();
    let rootfs = sb.rootfs();
    assert_symlink(&rootfs.join("esc"), &climb);
    assert_file(&rootfs.join(sb.victim_in_root()).join("pwned"), b"pwned\n");
    assert_symlink(&rootfs.join("five"), b"../../../../../victim");
    assert_file(&rootfs.join("victim/pwned5"), b"pwned5\n");
    assert_file(&rootfs.join("victim/pwned4"), b"pwned4\n");
    for name in ["pwned", "pwned4", "pwned5"] {
        assert_absent(&sb.victim().join(name));
    }
}

#[test]
fn symlink_escape_absolute_in_the_same_layer_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let layer = Layer::gzip(tar(|b| {
        b.symlink("esc", &target)
            .file("esc/pwned", b"pwned\n", 0o644)
            .file("esc/sub/file", b"overwritten\n", 0o644)
            .symlink("root", "/")
            .file(
                join(&join(b"root", &target[1..]), b"pwned2"),
                b"pwned2\n",
                0o644,
            );
    }));
    sb.explode(&image(vec![layer])).contained();
    let rootfs = sb.rootfs();
    let inside = rootfs.join(sb.victim_in_root());
    assert_symlink(&rootfs.join("esc"), &target);
    assert_file(&inside.join("pwned"), b"pwned\n");
    assert_file(&inside.join("sub/file"), b"overwritten\n");
    assert_file(&inside.join("pwned2"), b"pwned2\n");
    assert_file(&sb.victim().join("sub/file"), SUB_FILE);
    assert_absent(&sb.victim().join("pwned"));
}

/// With several writer threads a symlink may still be in flight when the
/// next entry goes through it: the entry waits for it and resolves it in
/// the root, never taking it for a missing directory nor following it out.
#[test]
fn symlinks_still_being_written_are_followed_in_root_with_several_write_threads() {
    let sb = Sandbox::new();
    let climb = sb.victim_by_climbing();
    let target = sb.victim_abs();
    let layer = Layer::gzip(tar(|b| {
        for i in 0..50 {
            b.symlink(format!("rel{i}"), &climb)
                .file(format!("rel{i}/pwned{i}"), b"pwned\n", 0o644)
                .symlink(format!("abs{i}"), &target)
                .file(format!("abs{i}/pwned-abs{i}"), b"pwned\n", 0o644);
        }
        // A directory replaced by a symlink out, then written through.
        b.dir("d", 0o755)
            .file("d/f", b"x", 0o644)
            .symlink("d", &target)
            .file("d/through", b"pwned\n", 0o644);
    }));
    sb.explode(&image(vec![layer]))
        .args(&["--write-threads", "4"])
        .contained();
    let inside = sb.rootfs().join(sb.victim_in_root());
    for i in 0..50 {
        assert_file(&inside.join(format!("pwned{i}")), b"pwned\n");
        assert_file(&inside.join(format!("pwned-abs{i}")), b"pwned\n");
        assert_absent(&sb.victim().join(format!("pwned{i}")));
        assert_absent(&sb.victim().join(format!("pwned-abs{i}")));
    }
    assert_file(&inside.join("through"), b"pwned\n");
    assert_absent(&sb.victim().join("through"));
}

#[test]
fn symlink_chain_escape_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let layer = Layer::gzip(tar(|b| {
        b.symlink("a", "b")
            .symlink("b", "c/d")
            .dir("c", 0o755)
            .symlink("c/d", &target)
            .file("a/pwned", b"pwned\n", 0o644);
    }));
    sb.explode(&image(vec![layer])).contained();
    assert_file(
        &sb.rootfs().join(sb.victim_in_root()).join("pwned"),
        b"pwned\n",
    );
}

#[test]
fn dotdot_after_an_outward_symlink_stays_inside() {
    let sb = Sandbox::new();
    let layer = Layer::gzip(tar(|b| {
        b.symlink("up", "/")
            .file("up/../victim/x", b"x\n", 0o644)
            .symlink("rel", "../../../../../..")
            .file("rel/victim/y", b"y\n", 0o644);
    }));
    sb.explode(&image(vec![layer])).contained();
    let rootfs = sb.rootfs();
    assert_file(&rootfs.join("victim/x"), b"x\n");
    assert_file(&rootfs.join("victim/y"), b"y\n");
}

#[test]
fn symlink_escape_across_layers_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let climb = sb.victim_by_climbing();
    let lower = Layer::gzip(tar(|b| {
        b.symlink("esc", &target).symlink("rel", &climb);
    }));
    let upper = Layer::gzip(tar(|b| {
        b.file("esc/pwned", b"pwned\n", 0o644)
            .file("esc/secret", b"overwritten\n", 0o644)
            .file("rel/pwned-rel", b"rel\n", 0o644);
    }));
    sb.explode(&image(vec![lower, upper])).contained();
    let rootfs = sb.rootfs();
    let inside = rootfs.join(sb.victim_in_root());
    assert_symlink(&rootfs.join("esc"), &target);
    assert_symlink(&rootfs.join("rel"), &climb);
    assert_file(&inside.join("pwned"), b"pwned\n");
    assert_file(&inside.join("secret"), b"overwritten\n");
    assert_file(&inside.join("pwned-rel"), b"rel\n");
    assert_file(&sb.victim().join("secret"), SECRET);
}

#[test]
fn directory_swapped_for_an_outward_symlink_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let l1 = Layer::gzip(tar(|b| {
        b.dir("d", 0o755).file("d/f", b"f\n", 0o644);
    }));
    let l1_diff_id = l1.diff_id().to_string();
    let l2 = Layer::gzip(tar(|b| {
        b.symlink("d", &target);
    }));
    let l3 = Layer::gzip(tar(|b| {
        b.file("d/g", b"g\n", 0o644)
            .file("d/secret", b"overwritten\n", 0o644);
    }));
    sb.explode(&image(vec![l1, l2, l3])).contained();
    let rootfs = sb.rootfs();
    let inside = rootfs.join(sb.victim_in_root());
    assert_symlink(&rootfs.join("d"), &target);
    assert_file(&inside.join("g"), b"g\n");
    assert_file(&inside.join("secret"), b"overwritten\n");
    assert_absent(&inside.join("f"));
    // Replacing `d` in the image did not touch the first layer's file
    // (`d/f`, its second tar entry: `files/2`).
    assert_file(&sb.layer_dir(&l1_diff_id).join("files/2"), b"f\n");
    assert_absent(&sb.victim().join("g"));
}

#[test]
fn directory_swapped_for_an_outward_symlink_in_the_same_layer_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let layer = Layer::gzip(tar(|b| {
        b.dir("d", 0o755)
            .file("d/f", b"f\n", 0o644)
            .symlink("d", &target)
            .file("d/g", b"g\n", 0o644);
    }));
    sb.explode(&image(vec![layer])).contained();
    let rootfs = sb.rootfs();
    assert_symlink(&rootfs.join("d"), &target);
    assert_file(&rootfs.join(sb.victim_in_root()).join("g"), b"g\n");
}

#[test]
fn file_over_an_outward_symlink_replaces_the_symlink() {
    // Never write through a symlink left by an earlier entry, in the same
    // layer or a lower one.
    let sb = Sandbox::new();
    let secret_abs = join(&sb.victim_abs(), b"secret");
    let lower = Layer::gzip(tar(|b| {
        b.symlink("same", "../../../../../victim/secret")
            .file("same", b"same layer\n", 0o644)
            .symlink("lower", &secret_abs)
            .symlink("lower-rel", "../../../../../victim/secret");
    }));
    let upper = Layer::gzip(tar(|b| {
        b.file("lower", b"upper layer\n", 0o644)
            .file("lower-rel", b"upper rel\n", 0o600);
    }));
    sb.explode(&image(vec![lower, upper])).contained();
    let rootfs = sb.rootfs();
    assert_file(&rootfs.join("same"), b"same layer\n");
    assert_file(&rootfs.join("lower"), b"upper layer\n");
    assert_file(&rootfs.join("lower-rel"), b"upper rel\n");
    assert_file(&sb.victim().join("secret"), SECRET);
}

#[test]
fn directory_over_an_outward_symlink_does_not_chmod_the_target() {
    // The tar crate's CVE class (RUSTSEC-2026-0067): a directory entry after
    // a symlink of the same name must replace the symlink, not chmod or
    // chown what it points at.
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let lower = Layer::gzip(tar(|b| {
        b.symlink("v", "../../../../../victim")
            .entry(Entry::dir("v", 0o777).owner(4321, 4321).mtime(1))
            .symlink("w", &target);
    }));
    let upper = Layer::gzip(tar(|b| {
        b.entry(Entry::dir("w", 0o700).owner(1234, 1234).mtime(2))
            .entry(Entry::dir("./", 0o755));
    }));
    sb.explode(&image(vec![lower, upper])).contained();
    let rootfs = sb.rootfs();
    let v = fs::symlink_metadata(rootfs.join("v")).unwrap();
    assert!(v.is_dir());
    assert_eq!(v.mode() & 0o7777, 0o777);
    assert_eq!(v.uid(), 4321);
    let w = fs::symlink_metadata(rootfs.join("w")).unwrap();
    assert!(w.is_dir());
    assert_eq!(w.mode() & 0o7777, 0o700);
    assert_eq!(w.uid(), 1234);
}

// ---------------------------------------------------------------------------
// Hardlinks
// ---------------------------------------------------------------------------

#[test]
fn hardlink_out_of_the_root_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.file("ok", b"fine\n", 0o644)
                .hardlink("hl", "../../victim/secret");
        }),
        &[],
        &["hl", "outside the root"],
    );
}

#[test]
fn hardlink_climbing_out_in_the_middle_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.dir("a", 0o755)
                .hardlink("hl", "a/../../../../../victim/secret");
        }),
        &[],
        &["hl", "outside the root"],
    );
}

/// (ino, nlink, ctime, sha256) of a host file.
fn host_file_state(path: &Path) -> (Ident, String) {
    let md = fs::symlink_metadata(path).unwrap();
    (
        ident(&md),
        hex::encode(Sha256::digest(fs::read(path).unwrap())),
    )
}

#[test]
fn hardlink_to_an_absolute_host_path_fails() {
    let passwd = Path::new("/etc/passwd");
    for aim_at_victim in [false, true] {
        let sb = Sandbox::new();
        let target = if aim_at_victim {
            join(&sb.victim_abs(), b"secret")
        } else {
            b"/etc/passwd".to_vec()
        };
        let host_before = host_file_state(passwd);
        let layer = Layer::gzip(tar(|b| {
            b.file("ok", b"fine\n", 0o644).hardlink("hl", &target);
        }));
        sb.explode(&image(vec![layer]))
            .refused_at_finalize(&["exists in no layer"]);
        assert_eq!(host_file_state(passwd), host_before, "/etc/passwd changed");
        // The store holds no inode of /etc/passwd.
        let pmd = fs::metadata(passwd).unwrap();
        for e in walk_fds(&sb.store()) {
            assert!(
                !(e.dev == pmd.dev() && e.ino == pmd.ino()),
                "{} is /etc/passwd",
                String::from_utf8_lossy(&e.rel)
            );
        }
    }
}

#[test]
fn hardlink_through_an_outward_symlink_fails_inside_the_root() {
    let sb = Sandbox::new();
    let lower = Layer::gzip(tar(|b| {
        b.symlink("esc", sb.victim_abs());
    }));
    let upper = Layer::gzip(tar(|b| {
        b.hardlink("hl", "esc/secret");
    }));
    sb.explode(&image(vec![lower, upper]))
        .refused_at_finalize(&["exists in no layer"]);
}

#[test]
fn hardlink_through_an_outward_symlink_in_the_same_layer_fails_inside_the_root() {
    let sb = Sandbox::new();
    let layer = Layer::gzip(tar(|b| {
        b.symlink("esc", "../../../../../victim")
            .hardlink("hl", "esc/secret");
    }));
    sb.explode(&image(vec![layer]))
        .refused_at_finalize(&["exists in no layer"]);
}

#[test]
fn hardlink_to_an_outward_symlink_links_the_symlink_itself() {
    let passwd = Path::new("/etc/passwd");
    let host_before = host_file_state(passwd);
    let sb = Sandbox::new();
    let secret_abs = join(&sb.victim_abs(), b"secret");
    let layer = Layer::gzip(tar(|b| {
        b.symlink("s", "/etc/passwd")
            .hardlink("hl", "s")
            .symlink("v", &secret_abs)
            .hardlink("hv", "v");
    }));
    sb.explode(&image(vec![layer])).contained();
    assert_eq!(host_file_state(passwd), host_before, "/etc/passwd changed");
    let rootfs = sb.rootfs();
    assert_symlink(&rootfs.join("hl"), b"/etc/passwd");
    assert_symlink(&rootfs.join("hv"), &secret_abs);
    let s = fs::symlink_metadata(rootfs.join("s")).unwrap();
    let hl = fs::symlink_metadata(rootfs.join("hl")).unwrap();
    assert_eq!(s.ino(), hl.ino(), "hl is not a hardlink of the symlink s");
}

#[test]
fn hardlink_to_a_directory_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.dir("d", 0o755).hardlink("hl", "d");
        }),
        &[],
        &["hardlink to a directory"],
    );
}

// ---------------------------------------------------------------------------
// The root itself
// ---------------------------------------------------------------------------

#[test]
fn root_replaced_by_a_symlink_is_refused() {
    // CVE-2021-29136: `./` as a symlink to `/` would make every later
    // entry land on the host. Variants of the root's name, and a regular
    // file for the root.
    let variants: Vec<Entry> = vec![
        Entry::symlink("./", "/"),
        Entry::symlink(".", "/"),
        Entry::symlink("/", "/"),
        Entry::symlink("a/..", "/"),
        Entry::symlink("./", "../../../../../victim"),
        Entry::file("./", b"not a dir", 0o644),
    ];
    for e in variants {
        let what = format!("{:?}", String::from_utf8_lossy(&e.path));
        let sb = Sandbox::new();
        let layer = Layer::gzip(tar(|b| {
            b.entry(e.clone())
                .file("etc/pwned-by-exploder-test", b"pwned\n", 0o644)
                .file("victim/pwned", b"pwned\n", 0o644);
        }));
        eprintln!("variant {what}");
        sb.explode(&image(vec![layer]))
            .refused(&["non-directory entry for the root"]);
        assert_absent(Path::new("/etc/pwned-by-exploder-test"));
    }
}

// ---------------------------------------------------------------------------
// Whiteouts
// ---------------------------------------------------------------------------

#[test]
fn whiteout_with_an_empty_name_is_refused() {
    assert_upper_layer_refused(
        tar(|b| {
            b.file(".wh.", b"", 0o644);
        }),
        &["whiteout"],
    );
}

#[test]
fn whiteout_of_dot_is_refused() {
    assert_upper_layer_refused(
        tar(|b| {
            b.file(".wh..", b"", 0o644);
        }),
        &["whiteout"],
    );
}

#[test]
fn whiteout_of_dotdot_is_refused() {
    assert_upper_layer_refused(
        tar(|b| {
            b.file("usr/.wh...", b"", 0o644);
        }),
        &["whiteout"],
    );
}

#[test]
fn whiteout_climbing_out_is_refused() {
    assert_upper_layer_refused(
        tar(|b| {
            b.file("../.wh.victim", b"", 0o644);
        }),
        &["climbs above the root"],
    );
}

#[test]
fn whiteout_of_a_victim_the_image_lacks_is_a_no_op() {
    let sb = Sandbox::new();
    let victim_abs = sb.victim_abs();
    let upper = Layer::gzip(tar(|b| {
        b.whiteout("victim")
            .whiteout(join(&victim_abs, b"secret"))
            .file("kept", b"kept\n", 0o644);
    }));
    sb.explode(&image(vec![base_layer(), upper])).contained();
    let rootfs = sb.rootfs();
    assert_file(&rootfs.join("kept"), b"kept\n");
    assert_file(&rootfs.join("usr/ok"), b"ok\n");
    assert_absent(&rootfs.join("victim"));
}

#[test]
fn whiteout_removes_only_the_images_copy() {
    let sb = Sandbox::new();
    let lower = Layer::gzip(tar(|b| {
        b.dir("victim", 0o755)
            .file("victim/secret", b"image copy\n", 0o644)
            .file("victim/other", b"other\n", 0o644);
    }));
    let upper = Layer::gzip(tar(|b| {
        b.whiteout("victim/secret");
    }));
    sb.explode(&image(vec![lower, upper])).contained();
    let rootfs = sb.rootfs();
    assert_absent(&rootfs.join("victim/secret"));
    assert_file(&rootfs.join("victim/other"), b"other\n");
    assert_file(&sb.victim().join("secret"), SECRET);
}

#[test]
fn whiteout_through_an_outward_symlink_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let lower = Layer::gzip(tar(|b| {
        b.symlink("esc", &target)
            .file("esc/secret", b"image copy\n", 0o644)
            .file("esc/other", b"other\n", 0o644)
            .symlink("rel", "../../../../../victim");
    }));
    let upper = Layer::gzip(tar(|b| {
        b.whiteout("esc/secret")
            .whiteout("rel/secret")
            .whiteout("rel/sub");
    }));
    sb.explode(&image(vec![lower, upper])).contained();
    let inside = sb.rootfs().join(sb.victim_in_root());
    assert_absent(&inside.join("secret"));
    assert_file(&inside.join("other"), b"other\n");
    assert_file(&sb.victim().join("secret"), SECRET);
    assert_file(&sb.victim().join("sub/file"), SUB_FILE);
}

#[test]
fn opaque_marker_through_an_outward_symlink_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let lower = Layer::gzip(tar(|b| {
        b.symlink("esc", &target)
            .file("esc/inner", b"inner\n", 0o644)
            .symlink("rel", "../../../../../victim");
    }));
    let upper = Layer::gzip(tar(|b| {
        b.opaque("esc")
            .opaque("rel")
            .file("esc/new", b"new\n", 0o644);
    }));
    sb.explode(&image(vec![lower, upper])).contained();
    let inside = sb.rootfs().join(sb.victim_in_root());
    assert_absent(&inside.join("inner"));
    assert_file(&inside.join("new"), b"new\n");
}

// ---------------------------------------------------------------------------
// Device nodes
// ---------------------------------------------------------------------------

fn device_image() -> Image {
    image(vec![Layer::gzip(tar(|b| {
        b.dir("dev", 0o755)
            .char_device("dev/null", 1, 3)
            .block_device("dev/sda", 8, 0)
            .file("etc/ok", b"ok\n", 0o644);
    }))])
}

fn devices_skipped(sb: &Sandbox) -> Vec<String> {
    let info: Value =
        serde_json::from_slice(&fs::read(sb.image_dir().join("image.json")).unwrap()).unwrap();
    info["devices_skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices_skipped in image.json: {info}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn device_nodes_are_not_created_by_default() {
    let sb = Sandbox::new();
    sb.explode(&device_image()).contained();
    let rootfs = sb.rootfs();
    assert_absent(&rootfs.join("dev/null"));
    assert_absent(&rootfs.join("dev/sda"));
    assert!(rootfs.join("dev").is_dir());
    assert_file(&rootfs.join("etc/ok"), b"ok\n");
    let mut skipped = devices_skipped(&sb);
    skipped.sort();
    assert_eq!(skipped, vec!["dev/null".to_string(), "dev/sda".to_string()]);
    assert_no_devices_under(&sb.store());
}

#[test]
fn device_nodes_are_created_with_allow_devices() {
    let sb = Sandbox::new();
    sb.explode(&device_image())
        .args(&["--allow-devices"])
        .contained();
    let rootfs = sb.rootfs();
    let null = fs::symlink_metadata(rootfs.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            rustix::fs::major(null.rdev() as _),
            rustix::fs::minor(null.rdev() as _)
        ),
        (1, 3)
    );
    assert_eq!(null.mode() & 0o7777, 0o666);
    let sda = fs::symlink_metadata(rootfs.join("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(
        (
            rustix::fs::major(sda.rdev() as _),
            rustix::fs::minor(sda.rdev() as _)
        ),
        (8, 0)
    );
    assert_eq!(sda.mode() & 0o7777, 0o660);
    assert!(devices_skipped(&sb).is_empty());
    // Never in the layer store, whatever the flag.
    assert_no_devices_under(&sb.store().join("layers"));
}

#[test]
fn device_node_through_an_outward_symlink_is_contained() {
    let sb = Sandbox::new();
    let target = sb.victim_abs();
    let lower = Layer::gzip(tar(|b| {
        b.symlink("dev", &target).char_device("dev/null", 1, 3);
    }));
    let upper = Layer::gzip(tar(|b| {
        b.symlink("rel", "../../../../../victim")
            .block_device("rel/sda", 8, 0);
    }));
    sb.explode(&image(vec![lower, upper]))
        .args(&["--allow-devices"])
        .contained();
    let rootfs = sb.rootfs();
    assert!(
        fs::symlink_metadata(rootfs.join(sb.victim_in_root()).join("null"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(
        fs::symlink_metadata(rootfs.join("victim/sda"))
            .unwrap()
            .file_type()
            .is_block_device()
    );
    assert_no_devices_under(&sb.victim());
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// A gzip layer whose tar holds one `size`-byte file of zeros, compressed
/// as it is produced (the tar itself is never in memory). Returns the layer
/// and the sha256 of the tar.
fn gzip_bomb(size: u64) -> Layer {
    gzip_bomb_entry(
        tar::Header::new_ustar(),
        "bomb",
        tar::EntryType::Regular,
        size,
    )
}

/// A layer of one entry of `size` zero bytes, built without holding it in
/// memory (so a test can afford hundreds of MiB that compress to little).
fn gzip_bomb_entry(mut header: tar::Header, path: &str, kind: tar::EntryType, size: u64) -> Layer {
    header.set_path(path).unwrap();
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(DEFAULT_MTIME);
    header.set_entry_type(kind);
    header.set_cksum();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut hash = Sha256::new();
    let mut put = |bytes: &[u8]| {
        enc.write_all(bytes).unwrap();
        hash.update(bytes);
    };
    put(header.as_bytes());
    let chunk = vec![0u8; 1 << 20];
    let mut left = size.next_multiple_of(512);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        put(&chunk[..n]);
        left -= n as u64;
    }
    put(&[0u8; 1024]);
    let diff_id = format!("sha256:{}", hex::encode(hash.finalize()));
    let blob = enc.finish().unwrap();
    Layer::gzip(Vec::new())
        .with_blob(blob)
        .with_diff_id(diff_id)
}

#[test]
fn gzip_bomb_stops_at_the_layer_size_limit() {
    let bomb = gzip_bomb(200 << 20);
    assert!(bomb.blob().len() < 1 << 20, "the bomb is small compressed");
    let sb = Sandbox::new();
    sb.explode(&image(vec![bomb]))
        .args(&["--max-layer-bytes", "10000000"])
        .refused(&[
            "uncompressed layer size limit",
            "10000000",
            "--max-layer-bytes",
        ]);
}

/// A layer whose first entry is `size` bytes of tar metadata (a GNU long
/// name, PAX records) must stop at the header limit with `needles` in the
/// error, not be buffered whole first.
fn assert_metadata_bomb_refused(
    header: tar::Header,
    path: &str,
    kind: tar::EntryType,
    extra: &[&str],
    needles: &[&str],
) {
    let bomb = gzip_bomb_entry(header, path, kind, 200 << 20);
    let sb = Sandbox::new();
    sb.explode(&image(vec![bomb])).args(extra).refused(needles);
}

/// The tar parser holds a GNU long name whole: 200 MiB of one must stop
/// at the header limit, not be buffered (and only then found too long).
#[test]
fn a_huge_gnu_long_name_stops_at_the_header_limit() {
    assert_metadata_bomb_refused(
        tar::Header::new_gnu(),
        "././@LongLink",
        tar::EntryType::GNULongName,
        &[],
        &["tar metadata bytes of one entry", "--max-header-bytes"],
    );
}

/// The same for PAX records, which the parser also holds whole.
#[test]
fn a_huge_pax_header_stops_at_the_header_limit() {
    assert_metadata_bomb_refused(
        tar::Header::new_ustar(),
        "PaxHeaders/bomb",
        tar::EntryType::XHeader,
        &["--max-header-bytes", "65536"],
        &["tar metadata bytes of one entry", "65536"],
    );
}

#[test]
fn compressed_blob_over_its_limit_is_refused() {
    // Random content does not compress: the blob is about 64 KiB.
    let mut noise = vec![0u8; 64 << 10];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let layer = Layer::gzip(tar(|b| {
        b.file("noise", &noise, 0o644);
    }));
    assert!(layer.blob().len() > 60_000);
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer]))
        .args(&["--max-compressed-bytes", "10000"])
        .refused(&["compressed layer size limit", "--max-compressed-bytes"]);
}

#[test]
fn too_many_entries_are_refused() {
    assert_layer_refused(
        tar(|b| {
            for i in 0..50 {
                b.file(format!("f{i:02}"), b"x", 0o644);
            }
        }),
        &["--max-entries", "10"],
        &["entries", "10", "--max-entries"],
    );
}

#[test]
fn path_too_long_is_refused() {
    let path = format!("{}/file", "d".repeat(150));
    assert_layer_refused(
        tar(|b| {
            b.file("ok", b"ok\n", 0o644)
                .file(path.as_bytes(), b"x", 0o644);
        }),
        &["--max-path-len", "100"],
        &["path length", "100", "--max-path-len"],
    );
}

#[test]
fn symlink_target_too_long_is_refused() {
    let target = format!("/{}", "t/".repeat(100));
    assert_layer_refused(
        tar(|b| {
            b.symlink("l", target.as_bytes());
        }),
        &["--max-path-len", "100"],
        &["path length", "--max-path-len"],
    );
}

#[test]
fn symlink_loop_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.symlink("a", "b")
                .symlink("b", "a")
                .file("a/x", b"x\n", 0o644);
        }),
        &[],
        &["a/x", "too many symlinks"],
    );
}

#[test]
fn symlink_chain_over_the_hop_limit_is_refused() {
    assert_layer_refused(
        tar(|b| {
            b.dir("d", 0o755)
                .symlink("l5", "d")
                .symlink("l4", "l5")
                .symlink("l3", "l4")
                .symlink("l2", "l3")
                .symlink("l1", "l2")
                .file("l1/x", b"x\n", 0o644);
        }),
        &["--max-symlink-hops", "3"],
        &["too many symlinks"],
    );
}

#[test]
fn symlink_loop_across_layers_is_refused_at_finalize() {
    let sb = Sandbox::new();
    let l1 = Layer::gzip(tar(|b| {
        b.symlink("a", "b");
    }));
    let l2 = Layer::gzip(tar(|b| {
        b.symlink("b", "a");
    }));
    let l3 = Layer::gzip(tar(|b| {
        b.file("a/x", b"x\n", 0o644);
    }));
    sb.explode(&image(vec![l1, l2, l3]))
        .refused_at_finalize(&["too many symlinks"]);
}

// ---------------------------------------------------------------------------
// Blobs that are not what they claim
// ---------------------------------------------------------------------------

fn simple_tar() -> Vec<u8> {
    tar(|b| {
        b.dir("etc", 0o755).file("etc/hostname", b"box\n", 0o644);
    })
}

#[test]
fn garbage_blob_declared_as_gzip_is_refused() {
    let layer = Layer::gzip(simple_tar()).with_blob(b"this is not gzip at all\n".repeat(40));
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer]))
        .refused(&[media_type::OCI_LAYER_GZIP, "but the blob starts with"]);
}

#[test]
fn corrupt_gzip_stream_is_refused() {
    // Gzip magic, then garbage: the decompressor, not the magic check,
    // has to catch it.
    let mut blob = layer::gzip(&simple_tar());
    for b in blob[10..].iter_mut() {
        *b ^= 0x5a;
    }
    let layer = Layer::gzip(simple_tar()).with_blob(blob);
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer]))
        .refused(&["the layer stream is corrupt"]);
}

#[test]
fn gzip_blob_declared_as_zstd_is_refused() {
    let layer = Layer::gzip(simple_tar()).with_media_type(media_type::OCI_LAYER_ZSTD);
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer])).refused(&[
        media_type::OCI_LAYER_ZSTD,
        "but the blob starts with gzip magic",
    ]);
}

/// Makes `blob` (one gzip member with a plain 10-byte header) exactly
/// `len` bytes long by adding a gzip comment (FCOMMENT) of the right size:
/// still a valid gzip stream of the same content.
fn pad_gzip(blob: &[u8], len: usize) -> Vec<u8> {
    assert_eq!(&blob[..2], &[0x1f, 0x8b]);
    assert_eq!(blob[3], 0, "gzip header with flags");
    if blob.len() == len {
        return blob.to_vec();
    }
    assert!(blob.len() + 2 <= len, "cannot pad {} to {len}", blob.len());
    let mut out = blob[..10].to_vec();
    out[3] |= 0x10; // FCOMMENT
    out.extend(std::iter::repeat_n(b'x', len - blob.len() - 1));
    out.push(0);
    out.extend_from_slice(&blob[10..]);
    assert_eq!(out.len(), len);
    out
}

#[test]
fn tampered_blob_in_the_registry_is_refused() {
    let good_tar = tar(|b| {
        b.dir("etc", 0o755)
            .file("etc/hostname", b"the real content of the image\n", 0o644);
    });
    let good = Layer::gzip(good_tar);
    let img = image(vec![good.clone()]);
    // Different content, a valid gzip of a valid tar, same length as the
    // original blob: only the digest tells them apart.
    let evil_tar = tar(|b| {
        b.dir("etc", 0o755).file("etc/hostname", b"evil\n", 0o644);
    });
    let evil = pad_gzip(&layer::gzip(&evil_tar), good.blob().len());
    assert_ne!(sha256_digest(&evil), good.digest());

    let sb = Sandbox::new();
    let registry = Registry::start();
    registry.push(REPO, TAG, &img);
    registry.tamper_blob(good.digest(), &evil);
    let reference = format!("{}/{REPO}:{TAG}", registry.addr());
    sb.explode_reference(&reference)
        .refused(&[good.digest(), "the blob's sha256 is"]);
}

#[test]
fn diff_id_mismatch_is_refused() {
    let other = tar(|b| {
        b.file("something-else", b"else\n", 0o644);
    });
    let wrong = sha256_digest(&other);
    let layer = Layer::gzip(simple_tar()).with_diff_id(wrong.clone());
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer]))
        .refused(&["rootfs.diff_ids says", &wrong]);
}

// ---------------------------------------------------------------------------
// Deep trees
// ---------------------------------------------------------------------------

/// `a/a/.../a` with `depth` components.
fn deep(depth: usize) -> Vec<u8> {
    let mut p = b"a/".repeat(depth);
    p.pop();
    p
}

#[test]
fn refused_layer_with_a_deep_tree_leaves_no_staging() {
    // 1900 levels in one path (3.8 KB, under the 4096 path limit), then a
    // refused entry: the staging tree must still be removed.
    assert_layer_refused(
        tar(|b| {
            b.file(join(&deep(1900), b"f"), b"deep\n", 0o644)
                .file("../x", b"x", 0o644);
        }),
        &[],
        &["climbs above the root"],
    );
}

/// Adds entries that build a tree `1000 * (steps + 1)` directories deep:
/// `a/.../a/f` 1000 deep, then each `sN -> <the deepest directory so far>`
/// and a 1000-deep path through it. No path or link target is longer than
/// 2.1 KB, so no limit stops it; only the walk's descriptors grow with the
/// depth.
fn deepen_through_symlinks(b: &mut LayerBuilder, steps: usize) {
    b.file(join(&deep(1000), b"f"), b"deep\n", 0o644);
    let mut target = deep(1000);
    for i in 0..steps {
        let link = format!("s{i}");
        b.symlink(&link, &target).file(
            join(&join(link.as_bytes(), &deep(1000)), b"f"),
            b"deeper\n",
            0o644,
        );
        // The next symlink points at the new bottom through this one.
        target = join(link.as_bytes(), &deep(1000));
    }
}

#[test]
fn refused_layer_with_a_tree_deepened_through_symlinks_leaves_no_staging() {
    assert_layer_refused(
        tar(|b| {
            deepen_through_symlinks(b, 8);
            b.file("../x", b"x", 0o644);
        }),
        &[],
        &["climbs above the root"],
    );
}

#[test]
fn deep_directory_replaced_by_a_file_in_the_same_layer() {
    let layer = Layer::gzip(tar(|b| {
        deepen_through_symlinks(b, 8);
        b.file("a", b"flat\n", 0o644);
    }));
    let sb = Sandbox::new();
    sb.explode(&image(vec![layer])).contained();
    assert_file(&sb.rootfs().join("a"), b"flat\n");
}

#[test]
fn deep_directory_replaced_by_a_file_in_a_later_layer() {
    let lower = Layer::gzip(tar(|b| deepen_through_symlinks(b, 8)));
    let upper = Layer::gzip(tar(|b| {
        b.file("a", b"flat\n", 0o644);
    }));
    let sb = Sandbox::new();
    sb.explode(&image(vec![lower, upper])).contained();
    assert_file(&sb.rootfs().join("a"), b"flat\n");
}

#[test]
fn stale_deep_staging_tree_is_swept_without_crashing() {
    // What the crashes above leave behind: a staging directory of a dead
    // process holding a very deep tree. Every later run sweeps `tmp/`
    // first; it must remove it (or at least survive it), not crash again.
    use rustix::fs::{Mode, OFlags};
    let sb = Sandbox::new();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .replace(['.', '/'], "_");
    let dead_pid = (2..1_000_000u32)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let stale = sb
        .store()
        .join("tmp")
        .join(format!("layer-{}.{host}.{dead_pid}.1f0", "0".repeat(64)));
    fs::create_dir_all(stale.join("tree")).unwrap();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(stale.join("tree"), flags, Mode::empty()).unwrap();
    for _ in 0..20_000 {
        rustix::fs::mkdirat(&dir, "a", Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, "a", flags, Mode::empty()).unwrap();
    }
    drop(dir);
    sb.explode(&image(vec![base_layer()])).contained();
    assert_file(&sb.rootfs().join("usr/ok"), b"ok\n");
}

#[test]
fn tampered_uncompressed_blob_in_the_registry_is_refused() {
    let good_tar = tar(|b| {
        b.file("hostname", b"real\n", 0o644);
    });
    let good = Layer::uncompressed(good_tar.clone());
    // Same length, one content byte different.
    let mut evil = good_tar;
    let at = evil.windows(5).position(|w| w == b"real\n").unwrap();
    evil[at] = b'f';
    let sb = Sandbox::new();
    let registry = Registry::start();
    registry.push(REPO, TAG, &image(vec![good.clone()]));
    registry.tamper_blob(good.digest(), &evil);
    let reference = format!("{}/{REPO}:{TAG}", registry.addr());
    sb.explode_reference(&reference)
        .refused(&[good.digest(), "the blob's sha256 is"]);
}

/// A registry that serves a blob shorter than the manifest's descriptor
/// says (its own Content-Length is short: not a connection cut before
/// the answer's length, which is resumed) is refused at once, as a
/// permanent error naming the blob, the registry and both sizes.
#[test]
fn blob_shorter_than_its_descriptor_is_refused_at_once() {
    let good = Layer::gzip(simple_tar());
    let honest = image(vec![good.clone()]);
    let mut manifest: Value = serde_json::from_slice(&honest.manifest_bytes()).unwrap();
    let served = good.blob().len() as u64;
    let claimed = served + 5000;
    manifest["layers"][0]["size"] = claimed.into();
    let lying = honest.with_manifest_bytes(serde_json::to_vec(&manifest).unwrap());
    let sb = Sandbox::new();
    let registry = Registry::start();
    registry.store_directly(REPO, TAG, &lying);
    let reference = format!("{}/{REPO}:{TAG}", registry.addr());
    let sizes = format!("{served} bytes, the manifest says {claimed}");
    sb.explode_reference(&reference)
        .refused(&[good.digest(), &registry.addr(), &sizes]);
}

#[test]
fn blob_longer_than_its_descriptor_is_refused() {
    let good = Layer::gzip(simple_tar());
    let mut longer = good.blob().to_vec();
    longer.extend_from_slice(&[0u8; 4096]);
    let sb = Sandbox::new();
    let registry = Registry::start();
    registry.push(REPO, TAG, &image(vec![good.clone()]));
    registry.tamper_blob(good.digest(), &longer);
    let reference = format!("{}/{REPO}:{TAG}", registry.addr());
    sb.explode_reference(&reference).refused(&[good.digest()]);
}
