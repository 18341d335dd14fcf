//! Docker Hub, Harbor and Quay notifications, in the shapes their
//! documentation gives, sent over HTTP to a running producer beside a
//! worker: each ends with the right tag exploded and linked (or, for
//! Harbor's delete, unlinked). The registry and generic dialects have the
//! same end-to-end tests in `producer.rs`.

use std::path::Path;
use std::time::Duration;

use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry};

const TOKEN: &str = "dialects";

fn image(content: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/content", content.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

/// A producer serving the dockerhub (pulling from `registry`), harbor and
/// quay endpoints, and a worker, on one store.
fn fleet(registry: &str, dir: &Path) -> (Fleet, u16) {
    let config = dir.join("producer.yaml");
    std::fs::write(
        &config,
        format!(
            "webhooks:\n  dockerhub: {{ token: {TOKEN}, pull_from: \"{registry}\" }}\n  \
             harbor: {{ token: {TOKEN}, registries: [\"{registry}\"] }}\n  \
             quay: {{ token: {TOKEN}, registries: [\"{registry}\"] }}\n"
        ),
    )
    .unwrap();
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut fleet = Fleet::new("dialects");
    fleet.apply_topology();
    let port = fleet.start_producer(
        &store,
        &dir.join("producer.log"),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    fleet.start_worker(&store, &dir.join("worker.log"), &[]);
    (fleet, port)
}

/// POSTs `body` to `/webhook/<endpoint>` as the sender does: Docker Hub
/// cannot set headers, so its token rides in the query.
fn post(port: u16, endpoint: &str, body: &str) -> u16 {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let request = match endpoint {
        "dockerhub" => agent.post(format!(
            "http://127.0.0.1:{port}/webhook/dockerhub?token={TOKEN}"
        )),
        _ => agent
            .post(format!("http://127.0.0.1:{port}/webhook/{endpoint}"))
            .header("Authorization", &format!("Bearer {TOKEN}")),
    };
    request
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .expect("the producer answers")
        .status()
        .as_u16()
}

fn link(dir: &Path, tag: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("store/images/team/app/{tag}/link"))).ok()
}

fn wait_until(what: &str, dir: &Path, done: impl FnMut() -> bool) {
    let logs = [dir.join("producer.log"), dir.join("worker.log")];
    exploder_tests::wait_until(what, Duration::from_secs(60), &[&logs[0], &logs[1]], done);
}

#[test]
fn a_docker_hub_push_notification_links_the_pushed_tag() {
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &image("hub"));
    let dir = tempfile::tempdir().unwrap();
    let (_fleet, port) = fleet(&registry.addr(), dir.path());
    // Docker Hub's documented payload: no digest, no host.
    let body = r#"{
      "callback_url": "https://registry.hub.docker.com/u/team/app/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
      "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "v1"},
      "repository": {
        "comment_count": 0, "date_created": 1417494799, "description": "",
        "is_official": false, "is_private": true, "is_trusted": true,
        "name": "app", "namespace": "team", "owner": "team",
        "repo_name": "team/app", "repo_url": "https://registry.hub.docker.com/u/team/app/",
        "star_count": 0, "status": "Active"
      }
    }"#;
    assert!(post(port, "dockerhub", body) < 300);
    wait_until("team/app:v1 linked", dir.path(), || {
        link(dir.path(), "v1").as_deref() == Some(digest.as_str())
    });
}

#[test]
fn a_quay_push_notification_links_every_updated_tag() {
    let registry = Registry::start();
    let v1 = registry.push("team/app", "v1", &image("quay one"));
    let v2 = registry.push("team/app", "v2", &image("quay two"));
    let dir = tempfile::tempdir().unwrap();
    let (_fleet, port) = fleet(&registry.addr(), dir.path());
    let r = registry.addr();
    let body = format!(
        r#"{{
      "name": "app", "repository": "team/app", "namespace": "team",
      "docker_url": "{r}/team/app",
      "homepage": "https://quay.io/repository/team/app",
      "updated_tags": ["v1", "v2"]
    }}"#
    );
    assert!(post(port, "quay", &body) < 300);
    wait_until("team/app:v1 and v2 linked", dir.path(), || {
        link(dir.path(), "v1").as_deref() == Some(v1.as_str())
            && link(dir.path(), "v2").as_deref() == Some(v2.as_str())
    });
}

#[test]
fn a_harbor_push_links_the_artifact_and_its_delete_unlinks_it() {
    let registry = Registry::start();
    let digest = registry.push("team/app", "v3", &image("harbor"));
    let dir = tempfile::tempdir().unwrap();
    let (_fleet, port) = fleet(&registry.addr(), dir.path());
    let r = registry.addr();
    let harbor = |kind: &str| {
        format!(
            r#"{{
      "type": "{kind}", "occur_at": 1680502375, "operator": "admin",
      "event_data": {{
        "resources": [{{
          "digest": "{digest}", "tag": "v3",
          "resource_url": "{r}/team/app:v3"
        }}],
        "repository": {{
          "date_created": 1680501893, "name": "app", "namespace": "team",
          "repo_full_name": "team/app", "repo_type": "private"
        }}
      }}
    }}"#
        )
    };
    assert!(post(port, "harbor", &harbor("PUSH_ARTIFACT")) < 300);
    wait_until("team/app:v3 linked", dir.path(), || {
        link(dir.path(), "v3").as_deref() == Some(digest.as_str())
    });
    // Deleted in the registry, then announced: the tag goes.
    registry.delete_manifest("team/app", &digest).unwrap();
    assert!(post(port, "harbor", &harbor("DELETE_ARTIFACT")) < 300);
    wait_until("team/app:v3 unlinked", dir.path(), || {
        link(dir.path(), "v3").is_none()
    });
}
