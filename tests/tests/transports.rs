//! The transports skopeo users type: `docker://REF`, and image archives
//! built by skopeo itself (`oci-archive:`, `docker-archive:`), exploded in
//! place and compared with umoci's unpack of the same image.

use std::path::Path;
use std::process::Command;

use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, assert_trees_equal_with, explode_ok,
    linked_rootfs, run_exploder, umoci_reference,
};

fn image() -> Image {
    let mut base = LayerBuilder::new();
    base.dir("etc", 0o755)
        .file("etc/hostname", b"archive\n", 0o644)
        .file("etc/motd", b"hello\n", 0o644)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC");
    let mut top = LayerBuilder::new();
    top.whiteout("etc/motd")
        .dir("srv", 0o750)
        .file("srv/data", vec![7u8; 100_000], 0o600);
    Image::oci()
        .layer(Layer::gzip(base.build()))
        .layer(Layer::gzip(top.build()))
}

/// `skopeo copy oci:LAYOUT:v1 DEST`: the archive as skopeo writes it.
fn skopeo_copy(image: &Image, dest: &str) {
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "v1").unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(dest)
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_matches_umoci(image: &Image, store: &Path, name: &str, tag: &str) {
    let (namespace, image_name) = name.split_once('/').unwrap();
    assert_trees_equal_with(
        umoci_reference(image).rootfs(),
        &linked_rootfs(store, namespace, image_name, tag),
        &CompareOptions::default().ignore_root_mtime(),
    );
}

#[test]
fn docker_scheme_references_are_registry_references() {
    let image = image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("docker://{}/team/app:v1", registry.addr()),
        store.path(),
        &[],
    );
    assert_matches_umoci(&image, store.path(), "team/app", "v1");
}

#[test]
fn an_oci_archive_from_skopeo_explodes_in_place_like_umoci() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    skopeo_copy(&image, &format!("oci-archive:{}:v1", archive.display()));
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("oci-archive:{}:v1", archive.display()),
        store.path(),
        &["--name", "team/app"],
    );
    assert_matches_umoci(&image, store.path(), "team/app", "v1");
    // Read in place: nothing of the archive was unpacked beside it.
    let beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(beside.len(), 1);
}

#[test]
fn a_docker_archive_from_skopeo_explodes_under_its_tag() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    skopeo_copy(
        &image,
        &format!("docker-archive:{}:team/app:v2", archive.display()),
    );
    let store = tempfile::tempdir().unwrap();
    // Named by its RepoTags entry, or as the archive's only image.
    explode_ok(
        &format!("docker-archive:{}:team/app:v2", archive.display()),
        store.path(),
        &["--name", "team/app"],
    );
    assert_matches_umoci(&image, store.path(), "team/app", "v2");
    explode_ok(
        &format!("docker-archive:{}", archive.display()),
        store.path(),
        &[],
    );
    assert_matches_umoci(&image, store.path(), "local/app", "latest");
}

#[test]
fn a_docker_archive_without_the_named_image_says_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    skopeo_copy(
        &image(),
        &format!("docker-archive:{}:team/app:v2", archive.display()),
    );
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "explode",
        &format!("docker-archive:{}:team/app:v9", archive.display()),
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("team/app:v9"), "{stderr}");
    assert!(!store.path().join("images").exists());
}

#[test]
fn a_tampered_archive_layer_is_refused_and_nothing_is_linked() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    skopeo_copy(
        &image(),
        &format!("docker-archive:{}:team/app:v1", archive.display()),
    );
    // Flip a byte of the biggest member's data: the 100 kB file's layer.
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes
        .windows(4096)
        .position(|w| w.iter().all(|&b| b == 7))
        .expect("the layer's data is stored uncompressed");
    bytes[at] = 8;
    std::fs::write(&archive, bytes).unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "explode",
        &format!("docker-archive:{}", archive.display()),
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("digest"), "{stderr}");
    assert!(!store.path().join("images/local/app/latest/link").exists());
}

#[test]
fn a_compressed_archive_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    skopeo_copy(&image(), &format!("oci-archive:{}:v1", archive.display()));
    let gz = dir.path().join("app.tar.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", archive.display(), gz.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "explode",
        &format!("oci-archive:{}:v1", gz.display()),
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("decompress it first"), "{stderr}");
}
