//! `exploder enqueue`: the fan-out publishes exactly one job per missing
//! layer and one image job, confirmed, after recording what the image waits
//! for in Redis. Real RabbitMQ and Redis; each test has its own prefix.

use exploder_common::digest::Digest;
use exploder_common::job::{self, Job};
use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, explode_ok};

fn two_layer_image() -> Image {
    let mut base = LayerBuilder::new();
    base.dir("etc", 0o755).file("etc/base", b"base", 0o644);
    let mut top = LayerBuilder::new();
    top.file("etc/top", b"top", 0o644);
    Image::oci()
        .layer(Layer::gzip(base.build()))
        .layer(Layer::gzip(top.build()))
}

#[test]
fn one_job_per_missing_layer_and_one_image_job() {
    let fleet = Fleet::new("fanout");
    fleet.apply_topology();
    let image = two_layer_image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let out = fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed[0]["result"]["manifest_digest"],
        image.manifest_digest()
    );

    let layers = fleet.drain(job::JobKind::Layer);
    let mut diff_ids: Vec<String> = layers
        .iter()
        .map(|j| match j {
            Job::Layer(l) => {
                assert_eq!(l.source.repository(), "team/app");
                l.diff_id.to_string()
            }
            other => panic!("not a layer job: {other:?}"),
        })
        .collect();
    diff_ids.sort();
    let mut expected = image.diff_ids();
    expected.sort();
    assert_eq!(diff_ids, expected);

    let images = fleet.drain(job::JobKind::Image);
    assert_eq!(images.len(), 1);
    let Job::Image(ij) = &images[0] else { panic!() };
    assert_eq!(ij.manifest_digest.to_string(), image.manifest_digest());
    assert_eq!(ij.links[0].to_string(), "team/app:v1");
    assert_eq!(ij.layers.len(), 2);
    assert_eq!(ij.id, printed[0]["result"]["image_job"]);

    // Recorded before the layer jobs went out: what the image waits for.
    let manifest: Digest = image.manifest_digest().parse().unwrap();
    let pending: Vec<String> = fleet
        .rt
        .block_on(fleet.index().pending(&manifest))
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(pending, expected);
}

#[test]
fn layers_the_store_has_get_no_job_and_are_reindexed() {
    let fleet = Fleet::new("present");
    fleet.apply_topology();
    let image = two_layer_image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/app:v1", registry.addr());
    explode_ok(&reference, store.path(), &[]);
    fleet.enqueue_ok(&reference, store.path());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());
    assert_eq!(fleet.drain(job::JobKind::Image).len(), 1);
    let index = fleet.index();
    for d in image.diff_ids() {
        let d: Digest = d.parse().unwrap();
        assert!(
            fleet.rt.block_on(index.is_ingested(&d)).unwrap(),
            "{d} not re-indexed"
        );
    }
}

#[test]
fn enqueue_without_a_topology_fails_and_says_what_to_run() {
    let fleet = Fleet::new("notopo");
    let registry = Registry::start();
    registry.push("team/app", "v1", &two_layer_image());
    let store = tempfile::tempdir().unwrap();
    let out = fleet.enqueue(&format!("{}/team/app:v1", registry.addr()), store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exploder topology apply"), "{err}");
}

/// References are resolved concurrently but reported, and enqueued, in
/// the order given; one that cannot be resolved fails alone.
#[test]
fn several_references_are_reported_in_order_and_a_bad_one_fails_alone() {
    let fleet = Fleet::new("several");
    fleet.apply_topology();
    let registry = Registry::start();
    let image = two_layer_image();
    registry.push("team/a", "v1", &image);
    registry.push("team/c", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let r = |repo: &str| format!("{}/{repo}:v1", registry.addr());
    let (a, b, c) = (r("team/a"), r("team/missing"), r("team/c"));
    let out = fleet.enqueue_with(&a, store.path(), &[&b, &c]);
    assert_eq!(out.status.code(), Some(1), "one reference failed");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<(&str, bool)> = printed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["reference"].as_str().unwrap(), e["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        order,
        [(a.as_str(), true), (b.as_str(), false), (c.as_str(), true)]
    );
    assert!(
        printed[1]["error"]
            .as_str()
            .unwrap()
            .contains("team/missing"),
        "the error names the repository: {}",
        printed[1]
    );
    // Both good references got their image job (same manifest, two links).
    assert_eq!(fleet.drain(job::JobKind::Image).len(), 2);
}

/// A namespace's quota counts each layer once across its linked images:
/// an image that shares its base with one already linked fits where a
/// same-sized stranger would not.
#[test]
fn an_image_over_its_namespace_quota_is_refused_before_any_job() {
    let fleet = Fleet::new("quota");
    fleet.apply_topology();
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let layer = |name: &str, bytes: usize| {
        let mut b = LayerBuilder::new();
        let content: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        b.dir("etc", 0o755)
            .file(format!("etc/{name}"), content, 0o644);
        Layer::gzip(b.build())
    };
    let base = layer("base", 50_000);
    let first = Image::oci().layer(base.clone());
    registry.push("team/first", "v1", &first);
    explode_ok(
        &format!("{}/team/first:v1", registry.addr()),
        store.path(),
        &[],
    );
    let small = layer("small", 1_000);
    let sharing = Image::oci().layer(base.clone()).layer(small.clone());
    registry.push("team/sharing", "v1", &sharing);
    let stranger = Image::oci()
        .layer(layer("big", 50_000))
        .layer(layer("big2", 60_000));
    registry.push("team/stranger", "v1", &stranger);
    // Exactly room for the base (linked already) and the small layer.
    let quota = format!("team={}", base.blob().len() + small.blob().len());

    let out = fleet.enqueue_with(
        &format!("{}/team/stranger:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quota"), "{err}");
    assert!(fleet.drain(job::JobKind::Image).is_empty());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());

    let out = fleet.enqueue_with(
        &format!("{}/team/sharing:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fleet.drain(job::JobKind::Image).len(), 1);
}

/// Images in flight count against the quota: with room for one image,
/// the second enqueued before any worker ran is refused.
#[test]
fn images_in_flight_count_against_the_quota() {
    let fleet = Fleet::new("quotaflight");
    fleet.apply_topology();
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let layer = |name: &str| {
        let mut b = LayerBuilder::new();
        let content: Vec<u8> = (0..40_000).map(|i| (i * 13 % 251) as u8).collect();
        b.dir("etc", 0o755)
            .file(format!("etc/{name}"), content, 0o644);
        Layer::gzip(b.build())
    };
    let (one, two) = (layer("one"), layer("two"));
    // Room for one of the two layers, not both.
    let quota = format!("team={}", one.blob().len().max(two.blob().len()) + 100);
    registry.push("team/one", "v1", &Image::oci().layer(one));
    registry.push("team/two", "v1", &Image::oci().layer(two));
    let out = fleet.enqueue_with(
        &format!("{}/team/one:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing is linked yet: only the request counts the first image.
    let out = fleet.enqueue_with(
        &format!("{}/team/two:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over its quota"), "{err}");
}

/// A tag linked to one registry's image is not requested for another's:
/// refused before any job, with the way out.
#[test]
fn an_image_of_another_registry_at_a_linked_tag_is_refused_before_any_job() {
    let fleet = Fleet::new("otherreg");
    fleet.apply_topology();
    let (one, two) = (Registry::start(), Registry::start());
    let image = |content: &str| {
        let mut b = LayerBuilder::new();
        b.dir("etc", 0o755).file("etc/c", content.as_bytes(), 0o644);
        Image::oci().layer(Layer::gzip(b.build()))
    };
    one.push("team/app", "v1", &image("one"));
    two.push("team/app", "v1", &image("two"));
    let store = tempfile::tempdir().unwrap();
    explode_ok(&format!("{}/team/app:v1", one.addr()), store.path(), &[]);
    let out = fleet.enqueue(&format!("{}/team/app:v1", two.addr()), store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--registry-path") && err.contains(&two.addr()),
        "{err}"
    );
    assert!(fleet.drain(job::JobKind::Image).is_empty());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());
    assert!(
        !store.path().join("requests").exists()
            || std::fs::read_dir(store.path().join("requests"))
                .unwrap()
                .count()
                == 0
    );
}

/// A blocked image (`exploder block`) is refused before anything is
/// recorded or published, with the reason.
#[test]
fn a_blocked_image_is_refused_before_any_job_with_the_reason() {
    let fleet = Fleet::new("blocked");
    fleet.apply_topology();
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &two_layer_image());
    let store = tempfile::tempdir().unwrap();
    exploder_tests::block_ok(store.path(), &digest, "CVE-2026-1234");
    let out = fleet.enqueue(&format!("{}/team/app:v1", registry.addr()), store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CVE-2026-1234") && err.contains(&digest),
        "{err}"
    );
    assert!(fleet.drain(job::JobKind::Image).is_empty());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());
    assert!(!store.path().join("requests").exists());
}

/// An image blocked after its jobs were published: the worker refuses its
/// image job — dead-lettered with the reason, never retried, nothing
/// linked.
#[test]
fn the_image_job_of_an_image_blocked_since_is_dead_lettered_with_the_reason() {
    let mut fleet = Fleet::new("blockedjob");
    fleet.apply_topology();
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &two_layer_image());
    let store = tempfile::tempdir().unwrap();
    fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    exploder_tests::block_ok(store.path(), &digest, "CVE-2026-1234");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    fleet.start_worker(store.path(), &log, &[]);
    let mut dead = Vec::new();
    exploder_tests::wait_until(
        "the image job in the dead-letter queue",
        std::time::Duration::from_secs(60),
        &[&log],
        || {
            dead = fleet.peek_dead();
            !dead.is_empty()
        },
    );
    // The copy the fan-in publishes when the last layer lands may follow
    // the first: each is refused the same way.
    for (job, reason) in &dead {
        assert!(matches!(job, Some(Job::Image(_))), "{job:?}");
        assert!(
            reason.contains("blocked") && reason.contains("CVE-2026-1234"),
            "{reason}"
        );
    }
    assert!(!store.path().join("images/team/app/v1/link").exists());
    let status = fleet.status(store.path());
    assert_eq!(status["requests"]["failed"], 1, "{status}");
}
