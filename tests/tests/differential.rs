//! `exploder explode` must produce exactly what `umoci unpack` produces for
//! the same image: type, mode, owner, size, content, link target, xattrs,
//! mtime and hardlink groups of every entry.
//!
//! Each test builds an image, pushes it to a registry of its own, explodes
//! it, unpacks the same layers with umoci (gzip'd OCI: Debian's umoci has no
//! zstd and no Docker media types) and compares the trees.

use std::path::PathBuf;

use exploder_tests::{
    CompareOptions, Entry, Image, Index, Layer, LayerBuilder, Registry, assert_trees_equal_with,
    debootstrap_rootfs, explode_ok, linked_rootfs, run_exploder, tar_dir, umoci_reference,
};

/// Explodes `image` from a fresh registry as `team/app:v1` and returns the
/// store (kept alive by the TempDir) and the rootfs.
fn explode(
    image_push: impl FnOnce(&Registry) -> String,
    extra: &[&str],
) -> (tempfile::TempDir, PathBuf) {
    let registry = Registry::start();
    image_push(&registry);
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("{}/team/app:v1", registry.addr()),
        store.path(),
        extra,
    );
    let rootfs = linked_rootfs(store.path(), "team", "app", "v1");
    (store, rootfs)
}

fn assert_matches_umoci_with(image: Image, opts: &CompareOptions, extra: &[&str]) {
    let (_store, rootfs) = explode(|r| r.push("team/app", "v1", &image), extra);
    let bundle = umoci_reference(&image);
    assert_trees_equal_with(bundle.rootfs(), &rootfs, opts);
}

/// Without a `./` entry both tools give the root the time of unpacking.
fn assert_matches_umoci(image: Image) {
    assert_matches_umoci_with(image, &CompareOptions::default().ignore_root_mtime(), &[]);
}

fn base_layer() -> LayerBuilder {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .dir("etc", 0o755)
        .file("etc/hostname", b"base\n", 0o644)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/libx.so.1", vec![7u8; 10000], 0o644)
        .symlink("usr/lib/libx.so", "libx.so.1")
        .dir("var", 0o755)
        .dir("var/cache", 0o755)
        .file("var/cache/a", b"a", 0o644)
        .file("var/cache/b", b"b", 0o644)
        .dir("var/cache/sub", 0o700)
        .file("var/cache/sub/c", b"c", 0o600);
    b
}

/// [`base_layer`] with `top` over it.
fn on_base(top: &LayerBuilder) -> Image {
    Image::oci()
        .layer(Layer::gzip(base_layer().build()))
        .layer(Layer::gzip(top.build()))
}

#[test]
fn debootstrap_image_with_a_layer_that_deletes_adds_and_changes() {
    let rootfs = debootstrap_rootfs();
    let base = tar_dir(&rootfs);
    // Pick paths that a minbase rootfs has, so the second layer really
    // deletes and changes lower content.
    let doc = std::fs::read_dir(rootfs.join("usr/share/doc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    assert!(rootfs.join("var/log").is_dir() && rootfs.join("etc/os-release").exists());
    let mut top = LayerBuilder::new();
    top.whiteout(format!("usr/share/doc/{doc}"))
        .opaque("var/log")
        .file("var/log/fresh.log", b"new log\n", 0o640)
        .file("etc/hostname", b"exploded\n", 0o644)
        // A symlink replaced by a regular file.
        .file("etc/os-release", b"NAME=exploder-test\n", 0o644)
        .dir("opt", 0o755)
        .dir("opt/app", 0o750)
        .file("opt/app/run", b"#!/bin/sh\n", 0o4755)
        .hardlink("opt/app/run-again", "opt/app/run");
    let image = Image::oci()
        .layer(Layer::gzip(base))
        .layer(Layer::gzip(top.build()));
    // Every directory of the debootstrap layer is explicit and `./` comes
    // first: nothing to ignore, not even the root's mtime. debootstrap's
    // /dev holds device nodes, which umoci creates: so must we, here.
    assert_matches_umoci_with(image, &CompareOptions::default(), &["--allow-devices"]);
}

#[test]
fn whiteout_removes_lower_file_and_directory() {
    let mut top = LayerBuilder::new();
    top.whiteout("etc/hostname").whiteout("var/cache/sub");
    assert_matches_umoci(on_base(&top));
}

#[test]
fn whiteout_never_removes_what_the_same_layer_wrote() {
    let mut top = LayerBuilder::new();
    top.file("etc/hostname", b"mine\n", 0o644)
        .whiteout("etc/hostname")
        .whiteout("etc/newfile")
        .file("etc/newfile", b"also mine\n", 0o644);
    assert_matches_umoci(on_base(&top));
}

#[test]
fn opaque_directory_hides_lower_children_before_or_after_siblings() {
    let mut top = LayerBuilder::new();
    top.dir("var/cache", 0o755)
        .file("var/cache/new-before", b"1", 0o644)
        .opaque("var/cache")
        .file("var/cache/new-after", b"2", 0o644)
        .opaque("usr/lib");
    assert_matches_umoci(on_base(&top));
}

#[test]
fn file_replaced_by_directory_and_directory_by_file_and_symlink() {
    let mut top = LayerBuilder::new();
    top.dir("etc/hostname", 0o711)
        .file("etc/hostname/inside", b"x", 0o644)
        .file("var/cache", b"now a file", 0o600)
        .symlink("usr/bin", "/usr/lib");
    assert_matches_umoci(on_base(&top));
}

#[test]
fn hardlinks_within_a_layer_and_to_a_lower_layer() {
    let mut top = LayerBuilder::new();
    top.file("usr/bin/prog", b"program", 0o755)
        .hardlink("usr/bin/prog2", "usr/bin/prog")
        .hardlink("usr/bin/prog3", "usr/bin/prog2")
        .hardlink("etc/hostname-link", "etc/hostname")
        .hardlink("usr/lib/link-to-symlink", "usr/lib/libx.so");
    assert_matches_umoci(on_base(&top));
}

#[test]
fn symlinks_absolute_relative_dangling_and_through_symlinked_parents() {
    let mut b = base_layer();
    b.symlink("lib64", "/usr/lib")
        .symlink("dangling", "/does/not/exist")
        .symlink("etc/up", "../../../..")
        // Written through the absolute symlink: lands in usr/lib.
        .file("lib64/through.so", b"so", 0o644);
    let mut top = LayerBuilder::new();
    // Through a lower layer's symlink.
    top.file("lib64/second.so", b"2", 0o644);
    assert_matches_umoci(
        Image::oci()
            .layer(Layer::gzip(b.build()))
            .layer(Layer::gzip(top.build())),
    );
}

#[test]
fn special_modes_owners_xattrs_and_nanosecond_mtimes() {
    let mut b = base_layer();
    b.entry(Entry::file("usr/bin/su", b"su", 0o4755).owner(0, 0))
        .entry(Entry::file("usr/bin/wall", b"wall", 0o2755).owner(0, 5))
        .entry(Entry::dir("tmp", 0o1777))
        .entry(
            Entry::file("home-owned", b"u", 0o640)
                .owner(1000, 1000)
                .names("user", "user"),
        )
        .entry(Entry::file("big-ids", b"i", 0o644).owner(3_000_000, 4_000_000))
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
        .entry(Entry::dir("xdir", 0o755).xattr("user.dir", b"d"))
        .entry(Entry::file("nanos", b"n", 0o644).mtime_nanos(1_650_000_000, 123_456_789))
        .entry(Entry::symlink("nanolink", "nanos").mtime_nanos(1_650_000_001, 987_654_321))
        .entry(Entry::dir("olddir", 0o755).mtime(100))
        .fifo("run-fifo");
    assert_matches_umoci(Image::oci().layer(Layer::gzip(b.build())));
}

#[test]
fn long_and_non_ascii_names_and_implicit_parents() {
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(150));
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755)
        .file(&long, b"long", 0o644)
        .file("ünïcødé/文件.txt", b"utf8", 0o644)
        .file(b"latin1-\xe9t\xe9", b"bytes", 0o644)
        .file("implicit/a/b/c/file", b"implicit parents", 0o644);
    // Implicit parents get the time of unpacking in both tools, and so does
    // the directory that holds them.
    let opts = CompareOptions::default()
        .ignore_root_mtime()
        .ignore_mtime_of("deep")
        .ignore_mtime_of(format!("deep/{}", "d".repeat(120)))
        .ignore_mtime_of("ünïcødé")
        .ignore_mtime_of("implicit")
        .ignore_mtime_of("implicit/a")
        .ignore_mtime_of("implicit/a/b")
        .ignore_mtime_of("implicit/a/b/c");
    assert_matches_umoci_with(Image::oci().layer(Layer::gzip(b.build())), &opts, &[]);
}

#[test]
fn duplicate_entries_last_one_wins() {
    let mut b = base_layer();
    b.file("dup", b"first", 0o600)
        .file("dup", b"second", 0o644)
        .dir("dupdir", 0o700)
        .dir("dupdir", 0o755)
        .file("flip", b"file", 0o644)
        .dir("flip", 0o755)
        .file("flip/child", b"c", 0o644);
    assert_matches_umoci(Image::oci().layer(Layer::gzip(b.build())));
}

#[test]
fn directory_redeclared_in_a_later_layer_takes_its_new_metadata() {
    let mut top = LayerBuilder::new();
    top.entry(
        Entry::dir("var/cache", 0o700)
            .owner(5, 6)
            .mtime(1_234_567_890)
            .xattr("user.new", b"v"),
    );
    assert_matches_umoci(on_base(&top));
}

#[test]
fn docker_schema2_image_matches() {
    let mut top = LayerBuilder::new();
    top.file("etc/hostname", b"docker\n", 0o644);
    let image = Image::docker()
        .layer(Layer::gzip(base_layer().build()))
        .layer(Layer::gzip(top.build()));
    assert_matches_umoci(image);
}

#[test]
fn zstd_multi_frame_multi_member_gzip_and_uncompressed_layers_match_gzip() {
    use exploder_tests::Compression;
    let mut l2 = LayerBuilder::new();
    l2.file("two", b"2", 0o644);
    let mut l3 = LayerBuilder::new();
    l3.file("three", b"3", 0o644);
    let mut l4 = LayerBuilder::new();
    l4.file("four", b"4", 0o644);
    let image = Image::oci()
        .layer(Layer::new(
            base_layer().build(),
            Compression::ZstdMultiFrame,
        ))
        .layer(Layer::new(l2.build(), Compression::GzipMultiMember))
        .layer(Layer::uncompressed(l3.build()))
        .layer(Layer::zstd(l4.build()));
    assert_matches_umoci(image);
}

#[test]
fn oci_index_and_docker_manifest_list_pick_the_platform_and_variant() {
    for docker in [false, true] {
        let make = |name: &str| {
            let mut b = base_layer();
            b.file("platform", name.as_bytes(), 0o644);
            let img = if docker {
                Image::docker()
            } else {
                Image::oci()
            };
            img.layer(Layer::gzip(b.build()))
        };
        let amd64 = make("amd64").platform("linux", "amd64", None);
        let arm_v6 = make("arm-v6").platform("linux", "arm", Some("v6"));
        let arm_v7 = make("arm-v7").platform("linux", "arm", Some("v7"));
        let index = if docker {
            Index::docker()
        } else {
            Index::oci()
        }
        .image(amd64.clone())
        .image(arm_v6)
        .image(arm_v7.clone());
        for (platform, expected) in [("linux/amd64", &amd64), ("linux/arm/v7", &arm_v7)] {
            let (store, rootfs) = explode(
                |r| r.push_index("team/app", "v1", &index),
                &["--platform", platform],
            );
            let bundle = umoci_reference(expected);
            assert_trees_equal_with(
                bundle.rootfs(),
                &rootfs,
                &CompareOptions::default().ignore_root_mtime(),
            );
            // Both digests are recorded.
            let info =
                std::fs::read_to_string(rootfs.parent().unwrap().join("image.json")).unwrap();
            assert!(info.contains(&index.manifest_digest()), "{info}");
            assert!(info.contains(&expected.manifest_digest()), "{info}");
            drop(store);
        }
    }
}

#[test]
fn copy_and_reflink_materialization_match_too() {
    let mut top = LayerBuilder::new();
    top.file("usr/bin/prog", b"program", 0o4755)
        .hardlink("usr/bin/prog2", "usr/bin/prog")
        .fifo("fifo");
    let image = Image::oci()
        .layer(Layer::gzip(base_layer().build()))
        .layer(Layer::gzip(top.build()));
    for mode in ["copy", "reflink"] {
        assert_matches_umoci_with(
            image.clone(),
            &CompareOptions::default().ignore_root_mtime(),
            &["--materialize", mode],
        );
    }
}

#[test]
fn oci_layout_and_registry_storage_sources_give_the_same_tree() {
    let mut top = LayerBuilder::new();
    top.whiteout("etc/hostname").file("added", b"x", 0o644);
    let image = Image::oci()
        .layer(Layer::gzip(base_layer().build()))
        .layer(Layer::gzip(top.build()));
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let bundle = umoci_reference(&image);
    let opts = CompareOptions::default().ignore_root_mtime();

    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "v1").unwrap();
    let sources = [
        format!("oci:{}:v1", layout.path().display()),
        format!("file://{}/team/app:v1", registry.storage_root().display()),
    ];
    for source in sources {
        let store = tempfile::tempdir().unwrap();
        explode_ok(&source, store.path(), &["--name", "team/app"]);
        assert_trees_equal_with(
            bundle.rootfs(),
            &linked_rootfs(store.path(), "team", "app", "v1"),
            &opts,
        );
    }
}

#[test]
fn exploding_again_only_checks_and_keeps_the_link() {
    let image = Image::oci().layer(Layer::gzip(base_layer().build()));
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/app:v1", registry.addr());
    let run = || {
        let out = run_exploder([
            "explode",
            &reference,
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
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    assert_eq!(first[0]["result"]["image_status"], "built");
    assert_eq!(second[0]["result"]["image_status"], "present");
    assert_eq!(second[0]["result"]["layers"][0]["status"], "present");
    assert_eq!(second[0]["result"]["link_changed"], false);
    let history = std::fs::read_to_string(store.path().join("images/team/app/v1/history")).unwrap();
    assert_eq!(history.lines().count(), 1, "{history}");
    // The layer blob was fetched once.
    assert_eq!(
        registry.blob_get_count("team/app", &image.layer_digests()[0]),
        1
    );
}

#[test]
fn a_second_image_on_the_same_base_does_not_fetch_the_base_again() {
    let base = Layer::gzip(base_layer().build());
    let mut a = LayerBuilder::new();
    a.file("a", b"a", 0o644);
    let mut b = LayerBuilder::new();
    b.file("b", b"b", 0o644);
    let one = Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(a.build()));
    let two = Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(b.build()));
    let registry = Registry::start();
    registry.push("team/one", "v1", &one);
    registry.push("team/two", "v1", &two);
    let store = tempfile::tempdir().unwrap();
    for repo in ["team/one", "team/two"] {
        explode_ok(&format!("{}/{repo}:v1", registry.addr()), store.path(), &[]);
    }
    assert_eq!(registry.blob_get_count("team/one", base.digest()), 1);
    assert_eq!(registry.blob_get_count("team/two", base.digest()), 0);
    for (image, name) in [(&one, "one"), (&two, "two")] {
        let bundle = umoci_reference(image);
        assert_trees_equal_with(
            bundle.rootfs(),
            &linked_rootfs(store.path(), "team", name, "v1"),
            &CompareOptions::default().ignore_root_mtime(),
        );
    }
}

#[test]
fn a_layer_is_stored_once_by_diff_id_whatever_its_compression() {
    let tar = base_layer().build();
    let gz = Image::oci().layer(Layer::gzip(tar.clone()));
    let zst = Image::oci().layer(Layer::zstd(tar));
    let registry = Registry::start();
    registry.push("team/gz", "v1", &gz);
    registry.push("team/zst", "v1", &zst);
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("{}/team/gz:v1", registry.addr()),
        store.path(),
        &[],
    );
    let out = explode_ok(
        &format!("{}/team/zst:v1", registry.addr()),
        store.path(),
        &["-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["result"]["layers"][0]["status"], "present");
    assert_eq!(
        registry.blob_get_count("team/zst", &zst.layer_digests()[0]),
        0
    );
    let layers = std::fs::read_dir(store.path().join("layers/sha256"))
        .unwrap()
        .count();
    assert_eq!(layers, 1);
}

#[test]
fn a_tag_that_moves_is_relinked_and_its_history_grows() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/app:v1", registry.addr());
    let mut digests = Vec::new();
    for content in ["first", "second"] {
        let mut b = base_layer();
        b.file("version", content.as_bytes(), 0o644);
        let image = Image::oci().layer(Layer::gzip(b.build()));
        registry.push("team/app", "v1", &image);
        explode_ok(&reference, store.path(), &[]);
        digests.push(image.manifest_digest());
        let link = std::fs::read_to_string(store.path().join("images/team/app/v1/link")).unwrap();
        assert_eq!(link, image.manifest_digest());
    }
    let history = std::fs::read_to_string(store.path().join("images/team/app/v1/history")).unwrap();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    for (line, digest) in lines.iter().zip(&digests) {
        let mut fields = line.split(' ');
        let (time, d) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(d, digest);
        assert!(time.ends_with('Z') && time.len() == 20, "{line}");
        assert!(
            line.ends_with("repository=team/app by=cli/explode"),
            "{line}"
        );
    }
    // The old digest directory is still complete (gc decides its fate).
    let old = digests[0].strip_prefix("sha256:").unwrap();
    assert!(
        store
            .path()
            .join("digest/sha256")
            .join(old)
            .join("rootfs/version")
            .is_file()
    );
}

#[test]
fn a_directory_repeated_in_one_layer_keeps_its_children() {
    let mut b = base_layer();
    b.dir("d", 0o755)
        .file("d/f", b"kept", 0o644)
        .dir("d", 0o700);
    assert_matches_umoci(Image::oci().layer(Layer::gzip(b.build())));
}

#[test]
fn a_whiteout_below_a_file_of_the_same_layer_is_a_no_op() {
    let mut top = LayerBuilder::new();
    top.file("etc/made", b"file", 0o644)
        .whiteout("etc/made/zzz");
    assert_matches_umoci(on_base(&top));
}

#[test]
fn dotdot_after_a_symlink_is_cleaned_lexically_as_umoci_does() {
    let mut b = base_layer();
    b.symlink("l", "usr/lib")
        .file("l/../lexical", b"at the root", 0o644);
    assert_matches_umoci(Image::oci().layer(Layer::gzip(b.build())));
}

/// umoci extracts in tar order, and the order shows through a lower
/// symlink: `usr/lib/x` then `lib/x` (with `lib -> usr/lib` below) is one
/// file written twice, and the later entry wins whatever its path.
#[test]
fn a_layer_replays_in_tar_order_through_a_lower_symlink() {
    let mut base = base_layer();
    base.symlink("lib", "usr/lib");
    let mut top = LayerBuilder::new();
    top.file("usr/lib/x", b"first, by its real path", 0o644)
        .file("lib/x", b"second, through the symlink", 0o600)
        .file("lib/y", b"first, through the symlink", 0o644)
        .file("usr/lib/y", b"second, by its real path", 0o640);
    assert_matches_umoci(
        Image::oci()
            .layer(Layer::gzip(base.build()))
            .layer(Layer::gzip(top.build())),
    );
}

/// A hardlink to a lower file links the inode that is there when the
/// entry is extracted: whiting out or replacing the target later in the
/// same layer leaves the link with the old content.
#[test]
fn a_hardlink_to_a_lower_file_outlives_its_later_whiteout_or_replacement() {
    let mut top = LayerBuilder::new();
    top.hardlink("etc/hostname-kept", "etc/hostname")
        .whiteout("etc/hostname")
        .hardlink("etc/passwd-old", "etc/passwd")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n", 0o644);
    assert_matches_umoci(on_base(&top));
}

/// `a/f` written through a lower symlink `a -> target` lands in `target`;
/// a later `a/` entry of the same layer then replaces the symlink with an
/// empty directory.
#[test]
fn a_directory_entry_after_writing_through_a_lower_symlink_replaces_it() {
    let mut base = base_layer();
    base.dir("target", 0o755).symlink("a", "target");
    let mut top = LayerBuilder::new();
    top.file("a/f", b"through the symlink", 0o644)
        .dir("a", 0o750)
        .file("a/g", b"in the new directory", 0o644);
    assert_matches_umoci(
        Image::oci()
            .layer(Layer::gzip(base.build()))
            .layer(Layer::gzip(top.build())),
    );
}

/// A whiteout of a directory the layer already wrote into removes only
/// what lower layers had there.
#[test]
fn a_whiteout_after_writes_below_it_removes_only_lower_content() {
    let mut top = LayerBuilder::new();
    top.file("var/cache/new", b"mine", 0o644)
        .dir("var/cache/sub", 0o755)
        .file("var/cache/sub/mine", b"mine too", 0o644)
        .whiteout("var/cache")
        .file("usr/lib/new", b"mine", 0o644)
        .opaque("usr/lib");
    // umoci leaves the directories it removed children from with the time
    // of unpacking (it restores only the whiteout's parent); exploder keeps
    // their recorded mtimes, a result that does not depend on when it ran.
    let opts = CompareOptions::default()
        .ignore_root_mtime()
        .ignore_mtime_of("var/cache")
        .ignore_mtime_of("var/cache/sub");
    assert_matches_umoci_with(on_base(&top), &opts, &[]);
}

/// Deep trees, many hardlinks (in the layer, chained, to a lower layer),
/// paths written twice, whiteouts and opaque directories, extracted by
/// several writer threads: still what umoci makes of it.
#[test]
fn several_write_threads_give_what_umoci_gives() {
    let mut base = LayerBuilder::new();
    base.dir("./", 0o755);
    for a in 0..4 {
        base.dir(format!("t{a}"), 0o755)
            .symlink(format!("t{a}/link"), "s0");
        for b in 0..4 {
            base.dir(format!("t{a}/s{b}"), 0o755);
            for c in 0..3 {
                let mut dir = format!("t{a}/s{b}/u{c}");
                for level in ["", "/v", "/v/w", "/v/w/x"] {
                    let d = format!("{dir}{level}");
                    base.dir(&d, 0o750);
                    for k in 0..3 {
                        base.file(format!("{d}/f{k}"), format!("{d} {k}\n"), 0o644);
                    }
                }
                dir.push_str("/v/w/x");
                base.hardlink(format!("{dir}/hl"), format!("t{a}/s{b}/u{c}/f0"));
            }
        }
    }
    base.file("t0/dup", b"first\n", 0o600)
        .file("t0/dup", b"second\n", 0o640)
        .file("t0/dup", b"third\n", 0o644)
        .dir("t1", 0o700)
        .dir("t1", 0o755)
        .file("t0/link/through-the-symlink", b"lands in t0/s0\n", 0o644);
    let mut top = LayerBuilder::new();
    top.whiteout("t2/s1/u0/f1")
        .whiteout("t3/s3")
        .dir("t1/s2", 0o755)
        .opaque("t1/s2")
        .file("t1/s2/after-opaque", b"new\n", 0o644)
        .hardlink("t0/s0/lower-link", "t1/s0/u0/f0")
        .file("t0/s0/u0/f0", b"rewritten once\n", 0o644)
        .file("t0/s0/u0/f0", b"rewritten twice\n", 0o600)
        .dir("new", 0o755)
        .file("new/a", b"linked many times\n", 0o644);
    for i in 0..40 {
        top.hardlink(
            format!("new/h{i}"),
            if i == 0 {
                "new/a".to_string()
            } else {
                format!("new/h{}", i - 1)
            },
        );
    }
    let mut deep = "new".to_string();
    for level in 0..12 {
        deep.push_str(&format!("/{level}"));
        top.dir(&deep, 0o755)
            .file(format!("{deep}/f"), format!("level {level}\n"), 0o644);
    }
    let image = Image::oci()
        .layer(Layer::gzip(base.build()))
        .layer(Layer::gzip(top.build()));
    assert_matches_umoci_with(
        image,
        &CompareOptions::default().ignore_root_mtime(),
        &["--write-threads", "4"],
    );
}

/// Finalize puts files into the rootfs on several writer threads: an
/// upper layer writing through a lower symlink, through a symlink it made
/// itself a moment before, over a lower file it then hardlinks to, and a
/// hardlink group kept whole in copy mode, all give what umoci gives.
#[test]
fn finalize_on_several_write_threads_gives_what_umoci_gives() {
    let mut base = LayerBuilder::new();
    base.dir("usr", 0o755).dir("usr/lib", 0o755);
    for i in 0..200 {
        base.file(format!("usr/lib/f{i}"), format!("lower {i}\n"), 0o644);
    }
    base.symlink("lib", "usr/lib")
        .file("etc-file", b"lower, replaced by a dir\n", 0o644)
        .file("relinked", b"lower, rewritten above\n", 0o644);
    let mut top = LayerBuilder::new();
    top.file("lib/through-lower-symlink", b"lands in usr/lib\n", 0o644)
        .symlink("opt", "usr/lib")
        .file("opt/through-own-symlink", b"lands in usr/lib too\n", 0o644)
        .dir("etc-file", 0o755)
        .file("etc-file/child", b"under the new dir\n", 0o644)
        .file("relinked", b"rewritten\n", 0o600)
        .hardlink("relinked-too", "relinked")
        .dir("group", 0o755)
        .file("group/a", b"one inode, four names\n", 0o644)
        .hardlink("group/b", "group/a")
        .hardlink("group/c", "group/b")
        .hardlink("usr/lib/d", "group/a");
    for i in 0..200 {
        top.file(format!("usr/lib/g{i}"), format!("upper {i}\n"), 0o644);
    }
    top.whiteout("usr/lib/f7");
    let image = Image::oci()
        .layer(Layer::gzip(base.build()))
        .layer(Layer::gzip(top.build()));
    for mode in ["hardlink", "copy"] {
        assert_matches_umoci_with(
            image.clone(),
            &CompareOptions::default().ignore_root_mtime(),
            &["--write-threads", "4", "--materialize", mode],
        );
    }
}
