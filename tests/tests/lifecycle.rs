//! The store over its lifetime, against real registries: where each link
//! came from is recorded, two registries never overwrite each other's
//! tags, deleted tags are reclaimed, and the inventory commands tell what
//! is there.

use std::path::Path;

use exploder_tests::{Image, Layer, LayerBuilder, Registry, explode_ok, run_exploder};

/// A one-layer image whose only file says `content`.
fn image(content: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/content", content.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The digest a tag's link names.
fn link_of(store: &Path, path: &str) -> String {
    read(store.join("images").join(path).join("link"))
        .trim()
        .to_string()
}

#[test]
fn a_second_registrys_image_is_refused_at_the_same_path_and_accepted_under_a_prefix() {
    let (one, two) = (Registry::start(), Registry::start());
    let first = one.push("eval/base", "latest", &image("from one"));
    let second = two.push("eval/base", "latest", &image("from two"));
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("{}/eval/base:latest", one.addr()),
        store.path(),
        &[],
    );
    assert_eq!(link_of(store.path(), "eval/base/latest"), first);

    // The other registry's image at the same path: refused, with both
    // registries named and the way out.
    let refused = run_exploder([
        "explode",
        &format!("{}/eval/base:latest", two.addr()),
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("{}/eval/base", one.addr()))
            && err.contains(&format!("{}/eval/base", two.addr()))
            && err.contains("--registry-path"),
        "{err}"
    );
    assert_eq!(link_of(store.path(), "eval/base/latest"), first);

    // Given a path of its own, the second registry's tag coexists.
    let mapping = format!("{}=two", two.addr());
    explode_ok(
        &format!("{}/eval/base:latest", two.addr()),
        store.path(),
        &["--registry-path", &mapping],
    );
    assert_eq!(link_of(store.path(), "two/eval/base/latest"), second);
    assert_eq!(link_of(store.path(), "eval/base/latest"), first);
}

#[test]
fn the_history_and_the_digest_directory_record_where_an_image_came_from() {
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &image("app"));
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("{}/team/app:v1", registry.addr()),
        store.path(),
        &[],
    );
    let history = read(store.path().join("images/team/app/v1/history"));
    let line = history.lines().last().unwrap();
    assert!(
        line.contains(&format!("registry={}", registry.addr()))
            && line.contains("repository=team/app")
            && line.contains("by=cli/explode"),
        "{line}"
    );
    let hex = digest.strip_prefix("sha256:").unwrap();
    let info: serde_json::Value = serde_json::from_str(&read(
        store
            .path()
            .join("digest/sha256")
            .join(hex)
            .join("image.json"),
    ))
    .unwrap();
    assert_eq!(info["source"]["registry"], registry.addr());
    assert_eq!(info["source"]["repository"], "team/app");
}
