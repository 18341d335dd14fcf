//! The webhook receiver's front door against strangers and replays, on the
//! running `exploder-producer`: a signed delivery is taken once and only
//! within five minutes of its timestamp, requests that are not yet
//! authenticated (an HMAC-only endpoint) cannot use up the endpoint's
//! budget nor hold their bodies long, and nothing before authentication
//! tells which endpoints exist.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use exploder_common::job::JobKind;
use exploder_producer::sources::webhook::auth::{sign, unix_now};
use exploder_tests::fleet::Fleet;
use exploder_tests::raw_http::{connect_from, read_until_closed, status};
use exploder_tests::{Image, Layer, LayerBuilder, Registry};

const SECRET: &str = "generic-secret-for-signed";

/// A producer serving the HMAC-only generic endpoint for `registry`, with
/// `webhooks` settings (YAML lines under `webhooks:`) and `endpoint` ones
/// (flow items of the generic endpoint).
fn producer(
    name: &str,
    store: &Path,
    registry: &str,
    webhooks: &str,
    endpoint: &str,
) -> (Fleet, u16) {
    let mut fleet = Fleet::new(name);
    fleet.apply_topology();
    let config = store.join("producer.yaml");
    std::fs::write(
        &config,
        format!("webhooks:\n{webhooks}  generic: {{ registries: [{registry}]{endpoint} }}\n"),
    )
    .unwrap();
    let port = fleet.start_producer(
        store,
        &store.join("p.log"),
        &["--config", config.to_str().unwrap()],
        &[("EXPLODER_WEBHOOK_GENERIC_HMAC_SECRET", SECRET)],
    );
    (fleet, port)
}

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn connect(from: &str, port: u16) -> TcpStream {
    connect_from(from, port)
}

fn read_answer(s: &mut TcpStream, within: Duration) -> String {
    read_until_closed(s, within).0
}

/// POSTs `body` to `path` from `from` with `headers` (full lines); the
/// answer.
fn post(from: &str, port: u16, path: &str, headers: &[String], body: &str) -> String {
    let mut s = connect(from, port);
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(request.as_bytes()).unwrap();
    read_answer(&mut s, Duration::from_secs(60))
}

fn post_signed(port: u16, signature: &str, body: &str) -> String {
    post(
        "127.0.0.1",
        port,
        "/webhook/generic",
        &[format!("X-Signature: {signature}")],
        body,
    )
}

#[test]
fn a_replayed_signed_request_does_not_move_a_tag_back() {
    let store = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let r = registry.addr();
    let (fleet, port) = producer("replay", store.path(), &r, "", "");
    let old = registry.push("team/app", "v1", &image("old"));
    let new = registry.push("team/app", "v1", &image("new"));
    let body_old = format!(r#"{{"reference":"{r}/team/app:v1@{old}"}}"#);
    let body_new = format!(r#"{{"reference":"{r}/team/app:v1@{new}"}}"#);
    let now = unix_now();
    let first = sign(SECRET, now, body_old.as_bytes());
    let answer = post_signed(port, &first, &body_old);
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    let answer = post_signed(port, &sign(SECRET, now, body_new.as_bytes()), &body_new);
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 2);

    // The first request again, byte for byte, within the window: taken
    // once already, so it does nothing.
    let answer = post_signed(port, &first, &body_old);
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        answer.contains(r#""outcome":"ignored""#) && answer.contains("replay"),
        "{answer}"
    );
    // Signed long ago (a request captured then): refused outright.
    let stale = sign(SECRET, now - 3600, body_old.as_bytes());
    let answer = post_signed(port, &stale, &body_old);
    assert_eq!(status(&answer), 401, "{answer}");
    // And the body-only signature of old, replayable for ever, is refused.
    let answer = post_signed(port, "sha256=00", &body_old);
    assert_eq!(status(&answer), 401, "{answer}");
    assert!(
        fleet.drain(JobKind::Image).is_empty(),
        "a replay enqueued the old image again"
    );
}

#[test]
fn strangers_cannot_use_up_a_signed_senders_budget_nor_hold_their_bodies() {
    let store = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let r = registry.addr();
    registry.push("team/app", "v1", &image("budget"));
    // A long body timeout: a stranger's body must be cut well before it.
    let (fleet, port) = producer(
        "budget",
        store.path(),
        &r,
        "  body_timeout_seconds: 60\n",
        ", rate_limit: { per_second: 0.01, burst: 3 }",
    );
    let junk = r#"{"reference":"x"}"#;
    for i in 0..12 {
        let answer = post(
            "127.0.0.2",
            port,
            "/webhook/generic",
            &[format!("X-Signature: t={},v1=00", unix_now())],
            junk,
        );
        let got = status(&answer);
        assert!(got == 401 || got == 429, "junk request {i}: {answer}");
    }
    let body = format!(r#"{{"reference":"{r}/team/app:v1"}}"#);
    let answer = post_signed(port, &sign(SECRET, unix_now(), body.as_bytes()), &body);
    assert_eq!(
        status(&answer),
        200,
        "the signed sender was refused: {answer}"
    );
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 1);

    // A stranger announcing a body and sending a little of it is cut at
    // the short deadline of unauthenticated bodies, not held for 60 s.
    let mut s = connect("127.0.0.3", port);
    s.write_all(
        format!(
            "POST /webhook/generic HTTP/1.1\r\nHost: x\r\nX-Signature: t={},v1=00\r\n\
             Content-Length: 1000\r\n\r\n{{\"a\":",
            unix_now()
        )
        .as_bytes(),
    )
    .unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(30));
    assert_eq!(status(&answer), 408, "{answer}");
}

#[test]
fn an_endpoint_that_is_not_enabled_is_answered_like_a_wrong_credential() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer("exists", store.path(), "127.0.0.1:1", "", "");
    let body = "{}";
    let unknown = post("127.0.0.1", port, "/webhook/registry", &[], body);
    let known = post("127.0.0.1", port, "/webhook/generic", &[], body);
    assert_eq!(status(&unknown), 401, "{unknown}");
    let tail = |a: &str| a.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    assert_eq!(tail(&unknown), tail(&known));
    // Nor does a declared body over the limit tell them apart (413 is
    // answered only once the credentials are checked).
    let mut s = connect("127.0.0.1", port);
    s.write_all(
        b"POST /webhook/registry HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n",
    )
    .unwrap();
    let big = read_answer(&mut s, Duration::from_secs(30));
    assert_eq!(status(&big), 401, "{big}");
}
