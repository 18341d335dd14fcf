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
    let refused = on_store(
        store.path(),
        &["explode", &format!("{}/eval/base:latest", two.addr())],
    );
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

/// `exploder ARGS... --store STORE`.
fn on_store(store: &Path, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--store", store.to_str().unwrap()]);
    run_exploder(&all)
}

/// `exploder ARGS... --store STORE -o json`, which must succeed.
fn json(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = on_store(store, &all);
    assert!(
        out.status.success(),
        "exploder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `exploder gc` with the fleet out of the picture (no Redis records).
fn gc(store: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["gc", "--redis-url", "redis://127.0.0.1:6379/0", "--prefix"];
    let prefix = format!("lifecycle-{}-", std::process::id());
    args.push(&prefix);
    args.extend_from_slice(extra);
    json(store, &args)
}

fn dirs(store: &Path, sub: &str) -> usize {
    std::fs::read_dir(store.join(sub)).map_or(0, |d| d.count())
}

/// The gc verdict of a digest: (remove, reason).
fn verdict(plan: &serde_json::Value, digest: &str) -> (bool, String) {
    let v = plan["removed"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["digest"] == digest)
        .unwrap_or_else(|| panic!("no verdict for {digest}: {plan}"));
    (
        v["remove"].as_bool().unwrap(),
        v["reason"].as_str().unwrap().to_string(),
    )
}

/// Pushes three images to `repo:v1` one after the other, exploding each:
/// the tag's three revisions.
fn three_revisions(registry: &Registry, store: &Path, repo: &str) -> Vec<String> {
    (0..3)
        .map(|i| {
            let d = registry.push(repo, "v1", &image(&format!("{repo} {i}")));
            explode_ok(&format!("{}/{repo}:v1", registry.addr()), store, &[]);
            d
        })
        .collect()
}

#[test]
fn a_deleted_tag_is_reclaimed_once_keep_younger_than_has_passed_and_live_tags_keep_revisions() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let deleted = three_revisions(&registry, store.path(), "team/gone");
    let live = three_revisions(&registry, store.path(), "team/live");
    let removed = on_store(store.path(), &["rm", "team/gone:v1"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );

    // Within --keep-younger-than, the deleted tag's revisions stay (a
    // rollback is still possible).
    let plan = gc(store.path(), &["--grace", "0s", "--keep-revisions", "2"]);
    for d in &deleted {
        assert!(!verdict(&plan, d).0, "{d}: {:?}", verdict(&plan, d));
    }
    // Past it, a deleted tag keeps nothing; a live one its last two.
    let plan = gc(
        store.path(),
        &[
            "--grace",
            "0s",
            "--keep-younger-than",
            "0s",
            "--keep-revisions",
            "2",
        ],
    );
    for d in &deleted {
        let (remove, reason) = verdict(&plan, d);
        assert!(remove, "{d}: {reason}");
        assert!(reason.contains("team/gone:v1"), "{reason}");
    }
    assert!(verdict(&plan, &live[0]).0, "the oldest live revision goes");
    for d in &live[1..] {
        let (remove, reason) = verdict(&plan, d);
        assert!(!remove && reason.contains("team/live:v1"), "{d}: {reason}");
    }
    let done = gc(
        store.path(),
        &[
            "--grace",
            "0s",
            "--keep-younger-than",
            "0s",
            "--keep-revisions",
            "2",
            "--confirm",
        ],
    );
    assert_eq!(done["removed"]["digests"].as_array().unwrap().len(), 4);
    assert_eq!(dirs(store.path(), "digest/sha256"), 2);
    assert_eq!(
        dirs(store.path(), "layers/sha256"),
        2,
        "each image's own layer"
    );
}

#[test]
fn rm_then_gc_frees_the_image_and_the_layers_no_other_image_uses() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let mut base = LayerBuilder::new();
    base.dir("etc", 0o755).file("etc/base", b"shared", 0o644);
    let base = Layer::gzip(base.build());
    let on_base = |name: &str| {
        let mut top = LayerBuilder::new();
        top.dir("etc", 0o755)
            .file(format!("etc/{name}"), name.as_bytes(), 0o644);
        Image::oci()
            .layer(base.clone())
            .layer(Layer::gzip(top.build()))
    };
    let (one, two) = (on_base("one"), on_base("two"));
    registry.push("team/one", "v1", &one);
    let kept = registry.push("team/two", "v1", &two);
    for repo in ["team/one", "team/two"] {
        explode_ok(&format!("{}/{repo}:v1", registry.addr()), store.path(), &[]);
    }
    assert_eq!(dirs(store.path(), "layers/sha256"), 3);
    let out = json(store.path(), &["rm", "team/one:v1"]);
    assert_eq!(out[0]["removed"], one.manifest_digest());
    gc(
        store.path(),
        &["--grace", "0s", "--keep-younger-than", "0s", "--confirm"],
    );
    assert_eq!(dirs(store.path(), "digest/sha256"), 1);
    assert_eq!(link_of(store.path(), "team/two/v1"), kept);
    // The shared base and two's own layer stay; one's own layer went.
    assert_eq!(dirs(store.path(), "layers/sha256"), 2);
    assert!(
        store
            .path()
            .join("layers/sha256")
            .join(&base.diff_id()[7..])
            .is_dir()
    );
}

#[test]
fn rm_of_a_tag_the_store_does_not_have_exits_1_and_writes_nothing() {
    let store = tempfile::tempdir().unwrap();
    let out = on_store(store.path(), &["rm", "team/none:v1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("team/none:v1 is not in the store"), "{err}");
    assert_eq!(dirs(store.path(), "images"), 0);
}

/// A store with two images on a shared base, one with a config to show.
fn inventory_store(registry: &Registry) -> (tempfile::TempDir, Image, Image) {
    let store = tempfile::tempdir().unwrap();
    let mut base = LayerBuilder::new();
    base.dir("etc", 0o755)
        .file("etc/base", vec![7u8; 100_000], 0o644);
    let base = Layer::gzip(base.build());
    let mut web_top = LayerBuilder::new();
    web_top
        .dir("srv", 0o755)
        .file("srv/index.html", vec![1u8; 5000], 0o644);
    let web = Image::oci()
        .layer(base.clone())
        .layer(Layer::gzip(web_top.build()))
        .env("MODE=production")
        .label("org.example.team", "web")
        .entrypoint(&["/srv/run"]);
    let mut db_top = LayerBuilder::new();
    db_top.dir("var", 0o755).file("var/db", b"db", 0o644);
    let db = Image::oci().layer(base).layer(Layer::gzip(db_top.build()));
    registry.push("team/web", "v1", &web);
    registry.push("team/db", "v1", &db);
    for repo in ["team/web", "team/db"] {
        explode_ok(&format!("{}/{repo}:v1", registry.addr()), store.path(), &[]);
    }
    (store, web, db)
}

#[test]
fn ls_lists_each_tag_with_its_source_size_and_status() {
    let registry = Registry::start();
    let (store, web, _) = inventory_store(&registry);
    let all = json(store.path(), &["ls"]);
    let entries = all.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let web_entry = entries
        .iter()
        .find(|e| e["reference"] == "team/web:v1")
        .unwrap();
    assert_eq!(web_entry["digest"], web.manifest_digest());
    assert_eq!(web_entry["source"], format!("{}/team/web", registry.addr()));
    assert_eq!(web_entry["decided_by"], "cli/explode");
    assert!(web_entry["unique_bytes"].as_u64().unwrap() >= 5000);
    assert!(
        web_entry["shared_bytes"].as_u64().unwrap() >= 100_000,
        "{web_entry}"
    );
    assert!(web_entry["status"].is_null());
    // A pattern narrows it; the text has a header and one line per tag.
    assert_eq!(
        json(store.path(), &["ls", "*/db:*"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let text = on_store(store.path(), &["ls"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("REFERENCE") && lines[0].contains("SHARED"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        text.contains("team/web:v1") && text.contains("KiB"),
        "{text}"
    );
}

#[test]
fn inspect_describes_an_image_by_tag_or_digest() {
    let registry = Registry::start();
    let (store, web, _) = inventory_store(&registry);
    let by_tag = json(store.path(), &["inspect", "team/web:v1"]);
    assert_eq!(by_tag["digest"], web.manifest_digest());
    assert_eq!(by_tag["platform"], "linux/amd64");
    assert_eq!(by_tag["tags"], serde_json::json!(["team/web:v1"]));
    assert_eq!(by_tag["labels"]["org.example.team"], "web");
    assert_eq!(by_tag["entrypoint"], serde_json::json!(["/srv/run"]));
    assert!(
        by_tag["env"]
            .as_array()
            .unwrap()
            .contains(&"MODE=production".into())
    );
    assert_eq!(by_tag["layers"].as_array().unwrap().len(), 2);
    assert_eq!(by_tag["layers"][1]["diff_id"], web.diff_ids()[1]);
    assert_eq!(by_tag["source"], format!("{}/team/web", registry.addr()));
    let by_digest = json(store.path(), &["inspect", &web.manifest_digest()]);
    assert_eq!(by_digest, by_tag);
    let text = on_store(store.path(), &["inspect", "team/web:v1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Platform:") && text.contains("Layers:") && text.contains("MODE=production"),
        "{text}"
    );
    let missing = on_store(store.path(), &["inspect", "team/nope:v1"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn history_shows_every_change_with_its_source_and_who_decided_it() {
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let revisions = three_revisions(&registry, store.path(), "team/app");
    json(store.path(), &["rm", "team/app:v1"]);
    let h = json(
        store.path(),
        &["history", &format!("{}/team/app:v1", registry.addr())],
    );
    let changes = h["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 4);
    for (c, d) in changes.iter().zip(&revisions) {
        assert_eq!(c["change"], "linked");
        assert_eq!(c["digest"], *d);
        assert_eq!(c["registry"], registry.addr());
        assert_eq!(c["by"], "cli/explode");
    }
    assert_eq!(changes[3]["change"], "unlinked");
    assert_eq!(changes[3]["by"], "cli/rm");
    assert!(h["current"].is_null());
    let text = on_store(store.path(), &["history", "team/app:v1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("WRITTEN") && text.contains("cli/rm") && text.contains("is not linked"),
        "{text}"
    );
    let missing = on_store(store.path(), &["history", "team/nope:v1"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn explode_refuses_an_image_over_its_namespace_quota() {
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    // Incompressible: the quota counts compressed sizes.
    let mut x: u32 = 0x9e37_79b9;
    let content: Vec<u8> = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    b.dir("etc", 0o755).file("etc/big", content, 0o644);
    let big = Image::oci().layer(Layer::gzip(b.build()));
    registry.push("team/big", "v1", &big);
    let store = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/big:v1", registry.addr());
    let out = on_store(
        store.path(),
        &["explode", &reference, "--quota", "team=10KiB"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("namespace team") && err.contains("over its quota"),
        "{err}"
    );
    assert_eq!(dirs(store.path(), "layers/sha256"), 0, "nothing fetched");
    // Another namespace's quota does not apply.
    explode_ok(
        &format!("{}/team/big:v1", registry.addr()),
        store.path(),
        &["--quota", "other=10KiB"],
    );
}
