//! One webhook endpoint allowed two registries that link under the same
//! names (issue 26, item 5): one registry's word never withdraws what the
//! other asked for. A push from A is recorded as a request; a delete from
//! B, which does not have the tag, is refused and leaves A's request to be
//! linked by the workers (retries keyed by link and registry are the
//! scheduler's unit tests).

use std::path::Path;
use std::time::Duration;

use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, wait_until};

const TOKEN: &str = "webhook-token-for-two-registries";

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

/// A distribution notification envelope with one manifest event.
fn envelope(action: &str, registry: &str, repo: &str, tag: Option<&str>, digest: &str) -> String {
    let tag = tag.map_or(String::new(), |t| format!(r#","tag":"{t}""#));
    format!(
        r#"{{"events":[{{"id":"e1","timestamp":"2026-12-07T14:00:00Z","action":"{action}","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"{repo}","url":"http://{registry}/v2/{repo}/manifests/{digest}"{tag}}},"request":{{"host":"{registry}"}}}}]}}"#
    )
}

fn post(port: u16, body: &str) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let mut resp = agent
        .post(format!("http://127.0.0.1:{port}/webhook/registry"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .expect("producer answers");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// A fleet and a producer whose registry endpoint allows both registries.
fn producer(name: &str, store: &Path, log: &Path, a: &Registry, b: &Registry) -> (Fleet, u16) {
    let mut fleet = Fleet::new(name);
    fleet.apply_topology();
    let both = format!("{},{}", a.addr(), b.addr());
    let port = fleet.start_producer(
        store,
        log,
        &[],
        &[
            ("EXPLODER_WEBHOOK_TOKEN", TOKEN),
            ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", &both),
        ],
    );
    (fleet, port)
}

fn requests(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("requests"))
        .map(|d| {
            d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn link(store: &Path, tag: &str) -> Option<String> {
    std::fs::read_to_string(store.join("images/eval/base").join(tag).join("link"))
        .ok()
        .map(|l| l.trim().to_string())
}

#[test]
fn a_delete_from_a_registry_without_the_tag_leaves_another_registrys_push_to_be_linked() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (plog, wlog) = (logs.path().join("p.log"), logs.path().join("w.log"));
    let (a, b) = (Registry::start(), Registry::start());
    let digest = a.push("eval/base", "latest", &image("base"));
    let (mut fleet, port) = producer("tworeg-tag", store.path(), &plog, &a, &b);

    let (status, answer) = post(
        port,
        &envelope("push", &a.addr(), "eval/base", Some("latest"), &digest),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    assert_eq!(requests(store.path()).len(), 1, "A's push is requested");

    // B does not have the tag; its delete says nothing of A's.
    let (status, answer) = post(
        port,
        &envelope("delete", &b.addr(), "eval/base", Some("latest"), &digest),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(r#""outcome":"rejected""#) && answer.contains(&a.addr()),
        "refused, naming the registry the request came from: {answer}"
    );
    assert_eq!(requests(store.path()).len(), 1, "A's request is kept");
    let history = std::fs::read_to_string(store.path().join("images/eval/base/latest/history"))
        .unwrap_or_default();
    assert!(!history.contains("unlinked"), "{history}");

    fleet.start_worker(store.path(), &wlog, &[]);
    wait_until(
        "A's push linked",
        Duration::from_secs(60),
        &[&plog, &wlog],
        || link(store.path(), "latest").is_some(),
    );
    assert_eq!(
        link(store.path(), "latest").as_deref(),
        Some(digest.as_str())
    );
}

#[test]
fn a_delete_by_digest_from_another_registry_leaves_every_outstanding_request_alone() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (plog, wlog) = (logs.path().join("p.log"), logs.path().join("w.log"));
    let (a, b) = (Registry::start(), Registry::start());
    let latest = a.push("eval/base", "latest", &image("base"));
    let v2 = a.push("eval/base", "v2", &image("base-v2"));
    let (mut fleet, port) = producer("tworeg-digest", store.path(), &plog, &a, &b);
    for (tag, digest) in [("latest", &latest), ("v2", &v2)] {
        let (status, answer) = post(
            port,
            &envelope("push", &a.addr(), "eval/base", Some(tag), digest),
        );
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    }

    // B deletes a manifest of its own eval/base, naming no tag: every tag
    // of the repository is looked at again, and B has none of them.
    let (status, answer) = post(
        port,
        &envelope("delete", &b.addr(), "eval/base", None, &latest),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains(r#""outcome":"unlinked""#), "{answer}");
    assert_eq!(requests(store.path()).len(), 2, "A's requests are kept");

    fleet.start_worker(store.path(), &wlog, &[]);
    wait_until(
        "A's pushes linked",
        Duration::from_secs(60),
        &[&plog, &wlog],
        || link(store.path(), "latest").is_some() && link(store.path(), "v2").is_some(),
    );
    assert_eq!(
        link(store.path(), "latest").as_deref(),
        Some(latest.as_str())
    );
    assert_eq!(link(store.path(), "v2").as_deref(), Some(v2.as_str()));
}
