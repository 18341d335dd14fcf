//! `exploder-producer`'s webhooks on the real RabbitMQ, Redis and
//! `docker-registry`: a push explodes, a delete unlinks, and repeated,
//! stale, unauthenticated, oversized or malformed posts do no harm.

use std::path::Path;
use std::time::Duration;

use exploder_common::job::JobKind;
use exploder_tests::fleet::{Fleet, PrivateRabbit};
use exploder_tests::{Image, Layer, LayerBuilder, Registry, free_port, wait_until};

const TOKEN: &str = "webhook-token-for-tests";

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

/// POSTs `body` to the producer; returns the status and the answer.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let mut req = agent.post(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).expect("producer answers");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A distribution notification envelope with one manifest event.
fn envelope(action: &str, registry: &str, repo: &str, tag: Option<&str>, digest: &str) -> String {
    let tag = tag.map_or(String::new(), |t| format!(r#","tag":"{t}""#));
    format!(
        r#"{{"events":[{{"id":"e1","timestamp":"2026-11-24T14:00:00Z","action":"{action}","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"{repo}","url":"http://{registry}/v2/{repo}/manifests/{digest}"{tag}}},"request":{{"host":"{registry}"}}}}]}}"#
    )
}

fn post_registry_event(port: u16, body: &str) -> (u16, String) {
    post(
        port,
        "/webhook/registry",
        &[
            ("Authorization", &bearer()),
            (
                "Content-Type",
                "application/vnd.docker.distribution.events.v1+json",
            ),
        ],
        body.as_bytes(),
    )
}

/// A fleet with its topology and a producer serving the registry webhook
/// for events of `registry` (`host:port`).
fn producer_fleet(name: &str, store: &Path, log: &Path, registry: &str) -> (Fleet, u16) {
    let mut fleet = Fleet::new(name);
    fleet.apply_topology();
    let port = fleet.start_producer(store, log, &[], &webhook_env(registry));
    (fleet, port)
}

/// The registry endpoint's token, and the one registry its events may name.
fn webhook_env(registry: &str) -> [(&'static str, &str); 2] {
    [
        ("EXPLODER_WEBHOOK_TOKEN", TOKEN),
        ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", registry),
    ]
}

/// Where events that never reach a registry say they come from.
const NO_REGISTRY: &str = "127.0.0.1:1";

#[test]
fn a_skopeo_push_is_exploded_and_deleting_it_unlinks_the_tag() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (plog, wlog) = (
        logs.path().join("producer.log"),
        logs.path().join("worker.log"),
    );
    let port = free_port();
    let registry =
        Registry::start_notifying(&format!("http://127.0.0.1:{port}/webhook/registry"), TOKEN);
    let mut fleet = Fleet::new("e2e");
    fleet.apply_topology();
    fleet.start_producer_at(
        port,
        store.path(),
        &plog,
        &[],
        &webhook_env(&registry.addr()),
    );
    fleet.start_worker(store.path(), &wlog, &[]);
    let app = image("app");
    registry.skopeo_copy("team/app", "v1", &app);
    let link = store.path().join("images/team/app/v1/link");
    wait_until(
        "link after the push",
        Duration::from_secs(60),
        &[&plog, &wlog],
        || link.is_file(),
    );
    let digest = std::fs::read_to_string(&link).unwrap();
    let rootfs = store
        .path()
        .join("digest/sha256")
        .join(digest.trim().strip_prefix("sha256:").unwrap())
        .join("rootfs/etc/app");
    assert_eq!(std::fs::read(rootfs).unwrap(), b"app");

    registry.delete_manifest("team/app", digest.trim()).unwrap();
    wait_until(
        "unlink after the delete",
        Duration::from_secs(60),
        &[&plog],
        || !link.exists(),
    );
    let history = std::fs::read_to_string(store.path().join("images/team/app/v1/history")).unwrap();
    assert!(
        history.lines().last().unwrap().contains(" unlinked"),
        "{history}"
    );
}

#[test]
fn the_same_push_event_twice_enqueues_one_image() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let (fleet, port) = producer_fleet(
        "dup",
        store.path(),
        &logs.path().join("p.log"),
        &registry.addr(),
    );
    let digest = registry.push("team/app", "v1", &image("app"));
    let event = envelope("push", &registry.addr(), "team/app", Some("v1"), &digest);
    let (status, first) = post_registry_event(port, &event);
    assert_eq!(status, 200, "{first}");
    assert!(first.contains(r#""outcome":"accepted""#), "{first}");
    let (status, second) = post_registry_event(port, &event);
    assert_eq!(status, 200, "{second}");
    assert!(second.contains(r#""outcome":"duplicate""#), "{second}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 1);
    assert_eq!(fleet.drain(JobKind::Layer).len(), 1);
}

#[test]
fn a_stale_push_of_a_tag_deleted_since_enqueues_nothing() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let (fleet, port) = producer_fleet(
        "stale",
        store.path(),
        &logs.path().join("p.log"),
        &registry.addr(),
    );
    let digest = registry.push("team/app", "v1", &image("app"));
    registry.delete_manifest("team/app", &digest).unwrap();
    let (status, answer) = post_registry_event(
        port,
        &envelope("push", &registry.addr(), "team/app", Some("v1"), &digest),
    );
    assert_eq!(status, 200, "{answer}");
    // Never linked here: nothing to unlink, and nothing written (every
    // event naming a tag its registry lacks would leave a tag directory).
    assert!(answer.contains(r#""outcome":"ignored""#), "{answer}");
    assert!(fleet.drain(JobKind::Image).is_empty());
    assert!(
        !store.path().join("images/team/app/v1").exists(),
        "a history of a tag never linked"
    );
}

#[test]
fn a_layer_push_is_ignored() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (fleet, port) = producer_fleet(
        "layer",
        store.path(),
        &logs.path().join("p.log"),
        NO_REGISTRY,
    );
    let layer = format!("sha256:{}", "a".repeat(64));
    let body = envelope("push", NO_REGISTRY, "team/app", None, &layer).replace(
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    let (status, answer) = post_registry_event(port, &body);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"ignored""#), "{answer}");
    assert!(fleet.drain(JobKind::Image).is_empty());
}

#[test]
fn a_post_without_the_right_token_is_refused_401() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (fleet, port) = producer_fleet(
        "auth",
        store.path(),
        &logs.path().join("p.log"),
        NO_REGISTRY,
    );
    let body = envelope(
        "push",
        NO_REGISTRY,
        "team/app",
        Some("v1"),
        &format!("sha256:{}", "a".repeat(64)),
    );
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer webhook-token-for-test"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let (status, answer) = post(port, "/webhook/registry", &headers, body.as_bytes());
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert_eq!(answer.lines().count(), 1, "one-line reason: {answer}");
    }
    assert!(fleet.drain(JobKind::Image).is_empty());
}

#[test]
fn a_malformed_payload_is_refused_400_with_a_reason() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_fleet, port) =
        producer_fleet("bad", store.path(), &logs.path().join("p.log"), NO_REGISTRY);
    for body in [&b"{not json"[..], br#"{"neither":"events nor an event"}"#] {
        let (status, answer) = post(
            port,
            "/webhook/registry",
            &[("Authorization", &bearer())],
            body,
        );
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer.lines().count(), 1, "one-line reason: {answer}");
    }
    let traversal = envelope(
        "push",
        NO_REGISTRY,
        "../../etc",
        Some("v1"),
        &format!("sha256:{}", "a".repeat(64)),
    );
    // One bad event in an envelope is refused on its own (a 400 would make
    // the registry retry the whole envelope forever).
    let (status, answer) = post_registry_event(port, &traversal);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("refused"), "{answer}");
    assert!(!store.path().join("etc").exists());
}

#[test]
fn a_generic_webhook_needs_a_valid_signature() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let mut fleet = Fleet::new("hmac");
    fleet.apply_topology();
    let port = fleet.start_producer(
        store.path(),
        &logs.path().join("p.log"),
        &[],
        &[
            ("EXPLODER_WEBHOOK_GENERIC_HMAC_SECRET", "k3y"),
            ("EXPLODER_WEBHOOK_GENERIC_REGISTRIES", &registry.addr()),
        ],
    );
    registry.push("team/app", "v2", &image("app"));
    let body = format!(r#"{{"reference":"{}/team/app:v2"}}"#, registry.addr());
    let forged = exploder_producer::sources::webhook::auth::sign_now("other", body.as_bytes());
    let (status, _) = post(
        port,
        "/webhook/generic",
        &[("X-Signature", &forged)],
        body.as_bytes(),
    );
    assert_eq!(status, 401);
    let signed = exploder_producer::sources::webhook::auth::sign_now("k3y", body.as_bytes());
    let (status, answer) = post(
        port,
        "/webhook/generic",
        &[("X-Signature", &signed)],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 1);
    // The registry endpoint is not enabled without its token: answered as
    // a wrong credential, not 404, so strangers cannot map endpoints.
    let (status, _) = post(port, "/webhook/registry", &[], b"{}");
    assert_eq!(status, 401);
}

#[test]
fn events_are_answered_503_while_the_broker_is_down_and_accepted_after() {
    let rabbit = PrivateRabbit::start();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("p.log");
    let mut fleet = Fleet::with_services("down", &rabbit.url(), exploder_tests::fleet::REDIS);
    fleet.apply_topology();
    let registry = Registry::start();
    let port = fleet.start_producer(store.path(), &log, &[], &webhook_env(&registry.addr()));
    let digest = registry.push("team/app", "v1", &image("app"));
    let event = envelope("push", &registry.addr(), "team/app", Some("v1"), &digest);
    rabbit.down();
    let (status, answer) = post_registry_event(port, &event);
    assert_eq!(status, 503, "{answer}");
    rabbit.up();
    let (status, answer) = post_registry_event(port, &event);
    assert_eq!(
        status,
        200,
        "{answer}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 1);
}

#[test]
fn a_producer_with_no_source_enabled_exits_2_and_says_how() {
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exploder_tests::exploder_producer_bin())
        .env_remove("EXPLODER_WEBHOOK_TOKEN")
        .arg("--store")
        .arg(store.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXPLODER_WEBHOOK_TOKEN"), "{err}");
}

#[test]
fn a_tag_pushed_and_deleted_before_its_jobs_ran_leaves_nothing_in_the_dead_letter_queue() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (plog, wlog) = (logs.path().join("p.log"), logs.path().join("w.log"));
    let registry = Registry::start();
    let (mut fleet, port) = producer_fleet("pushdel", store.path(), &plog, &registry.addr());
    let digest = registry.push("team/app", "v1", &image("app"));
    let (status, answer) = post_registry_event(
        port,
        &envelope("push", &registry.addr(), "team/app", Some("v1"), &digest),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    // Deleted within the second, before any worker ran: distribution's
    // delete names the digest only, not the tag.
    registry.delete_manifest("team/app", &digest).unwrap();
    let (status, answer) = post_registry_event(
        port,
        &envelope("delete", &registry.addr(), "team/app", None, &digest),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"unlinked""#), "{answer}");
    // Now the worker meets jobs for a tag that no longer exists.
    fleet.start_worker(store.path(), &wlog, &[]);
    wait_until(
        "the image job handled",
        Duration::from_secs(60),
        &[&plog, &wlog],
        || {
            std::fs::read_to_string(&wlog)
                .unwrap_or_default()
                .contains("every link was decided again")
        },
    );
    assert!(fleet.peek_dead().is_empty(), "{:?}", fleet.peek_dead());
    assert!(!store.path().join("images/team/app/v1/link").exists());
    let requests = std::fs::read_dir(store.path().join("requests"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(requests, 0, "the delete settled the request");
}

#[test]
fn a_registry_with_a_path_of_its_own_links_its_pushes_under_it() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let mut fleet = Fleet::new("regpath");
    fleet.apply_topology();
    let mapping = format!("{}=mirror", registry.addr());
    let port = fleet.start_producer(
        store.path(),
        &logs.path().join("p.log"),
        &["--registry-path", &mapping],
        &webhook_env(&registry.addr()),
    );
    let digest = registry.push("team/app", "v1", &image("app"));
    let (status, answer) = post_registry_event(
        port,
        &envelope("push", &registry.addr(), "team/app", Some("v1"), &digest),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("mirror/team/app:v1"), "{answer}");
    let jobs = fleet.drain(JobKind::Image);
    let exploder_common::job::Job::Image(job) = &jobs[0] else {
        panic!("{jobs:?}")
    };
    assert_eq!(job.links[0].to_string(), "mirror/team/app:v1");
    assert_eq!(job.decided_by, "webhook/registry");
}

/// A push of a blocked image (`exploder block`) is answered 200 — the
/// sender did nothing wrong and must not retry — with the refusal and its
/// reason; nothing is enqueued, and the refusal is counted for the alert.
#[test]
fn a_push_of_a_blocked_image_is_answered_refused_and_counted() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &image("bad"));
    exploder_tests::block_ok(store.path(), &digest, "CVE-2026-1234");
    let mut fleet = Fleet::new("blockedpush");
    fleet.apply_topology();
    let metrics = free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let port = fleet.start_producer(
        store.path(),
        &logs.path().join("p.log"),
        &["--metrics-listen", &listen],
        &webhook_env(&registry.addr()),
    );
    let event = envelope("push", &registry.addr(), "team/app", Some("v1"), &digest);
    let (status, answer) = post_registry_event(port, &event);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"refused""#), "{answer}");
    assert!(answer.contains("CVE-2026-1234"), "{answer}");
    assert!(fleet.drain(JobKind::Image).is_empty());
    assert!(fleet.drain(JobKind::Layer).is_empty());
    let scraped = ureq::get(format!("http://{listen}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        scraped
            .lines()
            .any(|l| l == r#"exploder_producer_images_refused_total{reason="blocked"} 1"#),
        "{scraped}"
    );
}
