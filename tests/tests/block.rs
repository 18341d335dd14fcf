//! The block list (`exploder block`): an image marked as not to be served
//! is never linked, the tags linked to it are unlinked with the reason, and
//! every way in (explode here; enqueue, the producer and the workers in
//! their own tests) refuses it, saying why.

use std::path::Path;
use std::process::Output;

use exploder_tests::{
    Image, Index, Layer, LayerBuilder, Registry, block_ok, explode_ok, run_exploder,
};

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn exploder(store: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--store", store.to_str().unwrap()]);
    run_exploder(&all)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn link(store: &Path, tag: &str) -> std::path::PathBuf {
    store.join("images/team/app").join(tag).join("link")
}

#[test]
fn blocking_unlinks_every_tag_of_the_image_and_keeps_the_others() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let bad = registry.push("team/app", "v1", &image("bad"));
    registry.push("team/app", "v1-alias", &image("bad"));
    registry.push("team/app", "v2", &image("good"));
    for tag in ["v1", "v1-alias", "v2"] {
        explode_ok(
            &format!("{}/team/app:{tag}", registry.addr()),
            store.path(),
            &[],
        );
    }
    let out = block_ok(store.path(), &bad, "CVE-2026-1234 in openssl");
    let said = text(&out);
    assert!(said.contains("unlinked team/app:v1\n"), "{said}");
    assert!(said.contains("unlinked team/app:v1-alias"), "{said}");
    assert!(!link(store.path(), "v1").exists());
    assert!(!link(store.path(), "v1-alias").exists());
    assert!(link(store.path(), "v2").is_file());
}

#[test]
fn the_history_of_an_unlinked_tag_says_who_blocked_it_and_why() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let bad = registry.push("team/app", "v1", &image("bad"));
    explode_ok(
        &format!("{}/team/app:v1", registry.addr()),
        store.path(),
        &[],
    );
    block_ok(store.path(), &bad, "leaked credentials");
    let out = exploder(store.path(), &["history", "team/app:v1", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = history["changes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["change"], "unlinked");
    assert_eq!(last["by"], "cli/block");
    assert_eq!(last["reason"], "blocked: leaked credentials");
}

#[test]
fn ls_marks_the_tags_a_block_unlinked() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let bad = registry.push("team/app", "v1", &image("bad"));
    registry.push("team/app", "v2", &image("good"));
    for tag in ["v1", "v2"] {
        explode_ok(
            &format!("{}/team/app:{tag}", registry.addr()),
            store.path(),
            &[],
        );
    }
    block_ok(store.path(), &bad, "CVE-2026-1234");
    let out = exploder(store.path(), &["ls", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = |tag: &str| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["reference"] == format!("team/app:{tag}"))
            .unwrap_or_else(|| panic!("team/app:{tag} listed: {entries}"))
            .clone()
    };
    assert_eq!(entry("v1")["status"], "blocked");
    assert_eq!(entry("v1")["failure"], "CVE-2026-1234");
    assert_eq!(entry("v1")["digest"], serde_json::Value::Null);
    assert_eq!(entry("v2")["status"], serde_json::Value::Null);
    let table = text(&exploder(store.path(), &["ls"]));
    let v1 = table
        .lines()
        .find(|l| l.starts_with("team/app:v1"))
        .unwrap();
    assert!(v1.contains("blocked"), "{table}");
}

#[test]
fn a_blocked_image_is_not_exploded_and_the_error_says_why_and_how_to_lift_it() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let bad = registry.push("team/app", "v1", &image("bad"));
    block_ok(store.path(), &bad, "CVE-2026-1234");
    let out = exploder(
        store.path(),
        &["explode", &format!("{}/team/app:v1", registry.addr())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("CVE-2026-1234"), "{said}");
    assert!(said.contains(&format!("exploder unblock {bad}")), "{said}");
    assert!(!link(store.path(), "v1").exists());
    // Refused before any layer was fetched.
    assert!(
        !store.path().join("layers").exists()
            || std::fs::read_dir(store.path().join("layers/sha256"))
                .map_or(true, |mut d| d.next().is_none())
    );
}

#[test]
fn blocking_an_index_refuses_every_platform_image_of_it() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let index = Index::oci()
        .image(image("amd64"))
        .image(image("arm64").platform("linux", "arm64", Some("v8")));
    let index_digest = registry.push_index("team/app", "multi", &index);
    let reference = format!("{}/team/app:multi", registry.addr());
    explode_ok(&reference, store.path(), &[]);
    let out = block_ok(store.path(), &index_digest, "base image recalled");
    assert!(
        text(&out).contains("unlinked team/app:multi"),
        "{}",
        text(&out)
    );
    let again = exploder(store.path(), &["explode", &reference]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("base image recalled"),
        "{}",
        text(&again)
    );
    assert!(!link(store.path(), "multi").exists());
}

#[test]
fn an_unblocked_image_is_exploded_again() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let bad = registry.push("team/app", "v1", &image("bad"));
    let reference = format!("{}/team/app:v1", registry.addr());
    explode_ok(&reference, store.path(), &[]);
    block_ok(store.path(), &bad, "false alarm?");
    let out = exploder(store.path(), &["unblock", &bad]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("unblocked {bad}")));
    // Lifting a block links nothing by itself.
    assert!(!link(store.path(), "v1").exists());
    explode_ok(&reference, store.path(), &[]);
    assert!(link(store.path(), "v1").is_file());
}

#[test]
fn the_block_list_shows_each_digest_with_its_reason() {
    let store = tempfile::tempdir().unwrap();
    let (a, b) = (
        format!("sha256:{}", "a".repeat(64)),
        format!("sha256:{}", "b".repeat(64)),
    );
    block_ok(store.path(), &a, "CVE-2026-0001");
    block_ok(store.path(), &b, "leaked key");
    let out = exploder(store.path(), &["block", "--list", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reasons: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["digest"].as_str().unwrap().into(),
                b["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{list}");
    assert!(reasons.contains(&(a.clone(), "CVE-2026-0001".into())));
    assert!(reasons.contains(&(b, "leaked key".into())));
    assert_eq!(list[0]["by"], "cli/block");
    let table = text(&exploder(store.path(), &["block", "--list"]));
    assert!(table.starts_with("DIGEST"), "{table}");
    assert!(table.contains(&a), "{table}");
}

#[test]
fn a_tag_given_instead_of_a_digest_is_a_usage_error_that_says_what_to_give() {
    let store = tempfile::tempdir().unwrap();
    let out = exploder(store.path(), &["block", "team/app:v1", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("exploder inspect"), "{}", text(&out));
    let out = exploder(
        store.path(),
        &["block", &format!("sha256:{}", "a".repeat(64))],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a block needs a reason: {}",
        text(&out)
    );
}
