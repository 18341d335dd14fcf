//! A crash at any instruction never leaves a link to a partial tree, and
//! the next run completes the image.
//!
//! Deterministic crashes use failpoints (`EXPLODER_FAILPOINT=<name>` makes
//! the process SIGKILL itself there); timed SIGKILLs at several delays cover
//! the instructions in between.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use exploder_tests::{
    CompareOptions, Image, Layer, LayerBuilder, Registry, assert_trees_equal_with, exploder_bin,
    exploder_ok, linked_rootfs, umoci_reference,
};

fn image() -> Image {
    let mut base = LayerBuilder::new();
    base.dir("./", 0o755).dir("data", 0o755);
    for i in 0..200 {
        base.file(
            format!("data/f{i:03}"),
            vec![(i % 251) as u8; 20_000],
            0o644,
        );
    }
    let mut top = LayerBuilder::new();
    top.whiteout("data/f000").file("data/new", b"new", 0o644);
    Image::oci()
        .layer(Layer::gzip(base.build()))
        .layer(Layer::gzip(top.build()))
}

/// `exploder explode` of the image with `write_threads` (`1`: the tar
/// reader alone; more: the writer pool from the first entry).
fn explode_cmd(registry: &Registry, store: &Path, write_threads: &str) -> Command {
    let mut cmd = Command::new(exploder_bin());
    cmd.args([
        "explode",
        &format!("{}/team/app:v1", registry.addr()),
        "--store",
        store.to_str().unwrap(),
        "--jobs",
        "1",
        "--write-threads",
        write_threads,
    ]);
    cmd
}

/// Each crash, with the reader alone and with writer threads.
const WRITE_THREADS: [&str; 2] = ["1", "4"];

/// Every link points at a complete digest directory; every published layer
/// has its index.
fn assert_store_consistent(store: &Path) {
    let link = store.join("images/team/app/v1/link");
    if let Ok(text) = std::fs::read_to_string(&link) {
        let hex = text.trim().strip_prefix("sha256:").unwrap();
        let dir = store.join("digest/sha256").join(hex);
        for part in ["rootfs", "manifest.json", "config.json", "image.json"] {
            assert!(
                dir.join(part).exists(),
                "link points at {} without {part}",
                dir.display()
            );
        }
    }
    if let Ok(layers) = std::fs::read_dir(store.join("layers/sha256")) {
        for l in layers {
            let l = l.unwrap().path();
            assert!(
                l.join("index").is_file(),
                "published layer {} has no index",
                l.display()
            );
            assert!(
                l.join("files").is_dir() && !l.join("tree").exists(),
                "published layer {} is not flat (files/, no tree/)",
                l.display()
            );
        }
    }
}

fn assert_complete(store: &Path, image: &Image) {
    let bundle = umoci_reference(image);
    assert_trees_equal_with(
        bundle.rootfs(),
        &linked_rootfs(store, "team", "app", "v1"),
        &CompareOptions::default(),
    );
    exploder_tests::objects::assert_objects_named_by_their_content(store);
    // The rerun swept what the crashed run left in staging.
    let left: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "staging leftovers: {left:?}");
}

fn crash_at(failpoint: &str) {
    let image = image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    for threads in WRITE_THREADS {
        crash_and_rerun(&registry, &image, failpoint, threads);
    }
}

fn crash_and_rerun(registry: &Registry, image: &Image, failpoint: &str, threads: &str) {
    let store = tempfile::tempdir().unwrap();
    let out = explode_cmd(registry, store.path(), threads)
        .env("EXPLODER_FAILPOINT", failpoint)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{failpoint} was not reached ({threads} write threads): {out:?}"
    );
    assert!(
        !store.path().join("images/team/app/v1/link").exists(),
        "a link was written before the crash at {failpoint}"
    );
    assert_store_consistent(store.path());
    let out = explode_cmd(registry, store.path(), threads)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rerun after {failpoint} ({threads} write threads): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_store_consistent(store.path());
    assert_complete(store.path(), image);
}

#[test]
fn killed_in_the_middle_of_extracting_a_layer() {
    crash_at("ingest.mid-extract");
}

#[test]
fn killed_after_extracting_before_publishing_the_layer() {
    crash_at("ingest.before-publish");
}

#[test]
fn killed_in_the_middle_of_finalize() {
    crash_at("finalize.mid-apply");
}

#[test]
fn killed_after_finalize_before_publishing_the_image() {
    crash_at("finalize.before-publish");
}

#[test]
fn killed_between_publishing_the_image_and_writing_the_link() {
    crash_at("finalize.before-link");
}

#[test]
fn killed_at_arbitrary_moments_never_links_a_partial_tree() {
    let image = image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    // Several fixed "seeds": delays spread over a run of this image.
    for (i, delay_ms) in [5u64, 20, 45, 80, 130, 200, 320].into_iter().enumerate() {
        let threads = WRITE_THREADS[i % WRITE_THREADS.len()];
        let store = tempfile::tempdir().unwrap();
        let mut child = explode_cmd(&registry, store.path(), threads)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_store_consistent(store.path());
        let out = explode_cmd(&registry, store.path(), threads)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rerun after a kill at {delay_ms} ms ({threads} write threads): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_complete(store.path(), &image);
    }
}

/// `exploder ls -o json`: each tag and the digest it is linked to.
fn ls_digests(store: &Path) -> Vec<(String, Option<String>)> {
    let out = exploder_ok(&["ls", "-o", "json"], store);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .iter()
        .map(|e| {
            (
                e["reference"].as_str().unwrap_or_default().to_string(),
                e["digest"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The lines of the tag's history, oldest first.
fn history_lines(store: &Path) -> Vec<String> {
    std::fs::read_to_string(store.join("images/team/app/v1/history"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn killed_between_recording_a_link_and_writing_it_the_record_stands_and_readers_finish_it() {
    let image = image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let out = explode_cmd(&registry, store.path(), "1")
        .env("EXPLODER_FAILPOINT", "store.link.recorded")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "not reached: {out:?}");
    // Recorded, with who decided it, before the link was written.
    let lines = history_lines(store.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("sha256:") && lines[0].contains("by=cli/explode"));
    assert!(!store.path().join("images/team/app/v1/link").exists());
    // A reader sees the recorded link, and finishes it.
    let linked = ls_digests(store.path());
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert!(
        linked[0].1.is_some(),
        "ls does not count the tag linked: {linked:?}"
    );
    assert_complete(store.path(), &image);
    assert_eq!(history_lines(store.path()).len(), 1);
}

#[test]
fn killed_between_recording_an_unlink_and_removing_the_link_readers_see_it_gone() {
    let image = image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let out = explode_cmd(&registry, store.path(), "1").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(exploder_bin())
        .args([
            "rm",
            "team/app:v1",
            "--store",
            store.path().to_str().unwrap(),
        ])
        .env("EXPLODER_FAILPOINT", "store.unlink.recorded")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "not reached: {out:?}");
    let lines = history_lines(store.path());
    assert!(
        lines.last().unwrap().contains(" unlinked ") && lines.last().unwrap().contains("by=cli/rm"),
        "{lines:?}"
    );
    // The link file is still there; every reader counts the tag as gone.
    assert!(store.path().join("images/team/app/v1/link").exists());
    let listed = ls_digests(store.path());
    assert!(
        listed.is_empty(),
        "ls still lists the removed tag: {listed:?}"
    );
    assert!(!store.path().join("images/team/app/v1/link").exists());
}
