//! The webhook receiver as an internet-facing service, against the running
//! `exploder-producer`: payloads never choose which host it contacts, a
//! link changes only on its own registry's word, connections and requests
//! are bounded in time and size, what a payload says cannot forge a log
//! line, and a registry that is down or stalls costs a retry behind a fast
//! answer, never a held request.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use exploder_common::job::JobKind;
use exploder_tests::fleet::Fleet;
use exploder_tests::raw_http::read_until_closed;
use exploder_tests::{Gate, Image, Layer, LayerBuilder, Registry, explode_ok};

const TOKEN: &str = "webhook-token-for-limits";

/// A producer serving the registry endpoint for `registries`, with short
/// timeouts; returns the fleet (its queues) and the port.
fn producer(name: &str, store: &Path, log: &Path, registries: &[&str]) -> (Fleet, u16) {
    producer_with(name, store, log, registries, "", &[])
}

/// [`producer`] with more settings of the registry endpoint (`endpoint`,
/// YAML flow items such as `rate_limit: {...}`) and more variables.
fn producer_with(
    name: &str,
    store: &Path,
    log: &Path,
    registries: &[&str],
    endpoint: &str,
    env: &[(&str, &str)],
) -> (Fleet, u16) {
    let mut fleet = Fleet::new(name);
    fleet.apply_topology();
    let config = store.join("producer.yaml");
    let endpoint = if endpoint.is_empty() {
        String::new()
    } else {
        format!(", {endpoint}")
    };
    std::fs::write(
        &config,
        format!(
            "webhooks:\n  header_timeout_seconds: 1\n  body_timeout_seconds: 1\n  max_events: 5\n  \
             max_body_bytes: 4096\n  registry: {{ registries: [{}]{endpoint} }}\n",
            registries.join(", ")
        ),
    )
    .unwrap();
    let mut vars = vec![("EXPLODER_WEBHOOK_TOKEN", TOKEN)];
    vars.extend_from_slice(env);
    let port = fleet.start_producer(store, log, &["--config", config.to_str().unwrap()], &vars);
    (fleet, port)
}

/// The producer's own answer time (500 ms), not the harness's patient one.
const DEFAULT_ANSWER_TIME: (&str, &str) = ("EXPLODER_WEBHOOK_ANSWER_WITHIN_MS", "");

/// One manifest event of distribution's, naming `registry` for `repo:tag`.
fn event(registry: &str, repo: &str, tag: &str) -> String {
    let digest = format!("sha256:{}", "a".repeat(64));
    format!(
        r#"{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"{repo}","url":"http://{registry}/v2/{repo}/manifests/{digest}","tag":"{tag}"}},"request":{{"host":"{registry}"}}}}"#
    )
}

fn envelope(events: &[String]) -> String {
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// Sends raw bytes on a new connection and reads the answer until the
/// producer closes it or `within` passes; returns the answer and whether
/// the connection was closed.
fn raw(port: u16, request: &[u8], within: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request).unwrap();
    read_until_closed(&mut s, within)
}

fn post(port: u16, body: &str) -> (String, bool) {
    post_as(port, "application/json", body)
}

/// [`post`] with this `Content-Type`.
fn post_as(port: u16, content_type: &str, body: &str) -> (String, bool) {
    let request = format!(
        "POST /webhook/registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(port, request.as_bytes(), Duration::from_secs(40))
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"))
}

#[test]
fn a_payload_naming_an_unlisted_host_makes_no_connection_and_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let (fleet, port) = producer(
        "ssrf",
        store.path(),
        &store.path().join("p.log"),
        &["127.0.0.1:1"],
    );
    let (answer, _) = post(port, &envelope(&[event(&trap_addr, "team/app", "v1")]));
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        answer.contains("does not accept"),
        "refused as another registry: {answer}"
    );
    assert!(
        trap.accept().is_err(),
        "the producer connected to the host the payload named"
    );
    assert!(fleet.drain(JobKind::Image).is_empty());
}

#[test]
fn an_endpoint_whose_payloads_would_choose_the_host_does_not_start() {
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exploder_tests::exploder_producer_bin())
        .env("EXPLODER_WEBHOOK_TOKEN", TOKEN)
        .env_remove("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES")
        .arg("--store")
        .arg(store.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES") && err.contains("pull_from"),
        "{err}"
    );
}

#[test]
fn an_event_of_another_registry_leaves_the_link_alone() {
    let store = tempfile::tempdir().unwrap();
    let (one, two) = (Registry::start(), Registry::start());
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/one", b"1", 0o644);
    one.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    // Linked from the first registry; the second has no such tag.
    explode_ok(&format!("{}/team/app:v1", one.addr()), store.path(), &[]);
    let link = store.path().join("images/team/app/v1/link");
    let before = std::fs::read_to_string(&link).unwrap();
    let (_fleet, port) = producer(
        "otherreg",
        store.path(),
        &store.path().join("p.log"),
        &[&one.addr(), &two.addr()],
    );
    let (answer, _) = post(port, &envelope(&[event(&two.addr(), "team/app", "v1")]));
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        answer.contains(r#""outcome":"rejected""#) && answer.contains(&one.addr()),
        "{answer}"
    );
    assert_eq!(std::fs::read_to_string(&link).unwrap(), before);
}

#[test]
fn an_idle_connection_is_closed_at_the_header_timeout() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer("idle", store.path(), &store.path().join("p.log"), &["r:1"]);
    let (_, closed) = raw(port, b"", Duration::from_secs(10));
    assert!(closed, "an idle connection was kept for 10 s");
}

#[test]
fn a_client_sending_its_headers_slowly_is_cut_at_the_header_timeout() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer(
        "slowhdr",
        store.path(),
        &store.path().join("p.log"),
        &["r:1"],
    );
    let (_, closed) = raw(
        port,
        b"POST /webhook/registry HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    );
    assert!(
        closed,
        "half a request's headers held the connection for 10 s"
    );
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer(
        "slowbody",
        store.path(),
        &store.path().join("p.log"),
        &["r:1"],
    );
    let request = format!(
        "POST /webhook/registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 1000\r\n\r\n{{\"events\":"
    );
    let (answer, closed) = raw(port, request.as_bytes(), Duration::from_secs(10));
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(answer.contains("body_timeout_seconds"), "{answer}");
    assert!(closed);
}

#[test]
fn an_oversized_content_length_is_refused_before_the_body_is_read() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer(
        "biglen",
        store.path(),
        &store.path().join("p.log"),
        &["r:1"],
    );
    let request = format!(
        "POST /webhook/registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 10000000000\r\n\r\n"
    );
    // Not one byte of the body is sent: the answer cannot have waited for it.
    let (answer, _) = raw(port, request.as_bytes(), Duration::from_secs(5));
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(answer.contains("max_body_bytes"), "{answer}");
}

#[test]
fn a_body_over_the_limit_without_a_declared_length_is_refused_413() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer(
        "chunked",
        store.path(),
        &store.path().join("p.log"),
        &["r:1"],
    );
    // 8 KiB in one chunk, over the 4 KiB limit; small enough to be in the
    // producer's read buffer whole, so its answer is not lost to a reset.
    let chunk = vec![b' '; 8192];
    let mut request = format!(
        "POST /webhook/registry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let (answer, _) = raw(port, &request, Duration::from_secs(10));
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(answer.contains("limit of 4096 bytes"), "{answer}");
}

#[test]
fn unauthenticated_clients_are_refused_before_their_bodies_are_read() {
    let store = tempfile::tempdir().unwrap();
    let (_fleet, port) = producer(
        "unauth",
        store.path(),
        &store.path().join("p.log"),
        &["r:1"],
    );
    // 50 strangers each announcing a body (under the limit) and sending a
    // little of it: each is answered 401 at once, none is held for its
    // body (the body timeout would answer 408 only after a second).
    let mut clients: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(
                b"POST /webhook/registry HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{\"a\":",
            )
            .unwrap();
            s
        })
        .collect();
    for s in &mut clients {
        let (answer, _) = read_until_closed(s, Duration::from_secs(5));
        assert_eq!(status(&answer), 401, "{answer}");
    }
}

#[test]
fn a_request_over_the_event_limit_is_refused_naming_the_limit() {
    let store = tempfile::tempdir().unwrap();
    let (fleet, port) = producer("many", store.path(), &store.path().join("p.log"), &["r:1"]);
    let events: Vec<String> = (0..6)
        .map(|i| event("r:1", "team/app", &format!("t{i}")))
        .collect();
    let (answer, _) = post(port, &envelope(&events));
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(
        answer.contains("6 events")
            && answer.contains("limit of 5")
            && answer.contains("max_events"),
        "{answer}"
    );
    assert!(fleet.drain(JobKind::Image).is_empty());
}

#[test]
fn a_repository_name_with_a_newline_logs_as_one_line() {
    let store = tempfile::tempdir().unwrap();
    let log = store.path().join("p.log");
    let (_fleet, port) = producer("newline", store.path(), &log, &["r:1"]);
    let forged = "team/app\\n2026-11-30T00:00:00.000000Z  INFO forged: all is well";
    // One event, not an envelope: refused 400, and logged with its reason.
    let (answer, _) = post(port, &event("r:1", forged, "v1"));
    assert_eq!(status(&answer), 400, "{answer}");
    // Give the log a moment to be written.
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log).unwrap();
    let quoting: Vec<&str> = text.lines().filter(|l| l.contains("INFO forged")).collect();
    assert!(!quoting.is_empty(), "the refusal is logged:\n{text}");
    assert!(
        quoting.iter().all(|l| l.contains("team/app\\n2026")),
        "a forged line in the log:\n{text}"
    );
}

#[test]
fn fifty_identical_pushes_at_once_enqueue_one_image() {
    let store = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/storm", b"s", 0o644);
    let digest = registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    let (fleet, port) = producer(
        "storm",
        store.path(),
        &store.path().join("p.log"),
        &[&registry.addr()],
    );
    let body = envelope(&[event(&registry.addr(), "team/app", "v1")
        .replace(&format!("sha256:{}", "a".repeat(64)), &digest)]);
    let answers: Vec<String> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..50).map(|_| s.spawn(|| post(port, &body).0)).collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(status(a), 200, "{a}");
    }
    let accepted = answers
        .iter()
        .filter(|a| a.contains(r#""outcome":"accepted""#))
        .count();
    assert_eq!(accepted, 1, "{answers:#?}");
    assert_eq!(fleet.drain(JobKind::Image).len(), 1);
}

/// An image of one small layer, pushed to `registry` as `team/app:v1`.
fn push_small_image(registry: &Registry, name: &str) -> String {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    )
}

/// Posts a push of `team/app:v1` from `registry` and checks the answer
/// came within a second, as a 202 with the event pending.
fn push_is_answered_pending_within_a_second(port: u16, registry: &str) {
    let sent = Instant::now();
    let (answer, _) = post(port, &envelope(&[event(registry, "team/app", "v1")]));
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "answered after {took:?}: {answer}"
    );
    assert_eq!(status(&answer), 202, "{answer}");
    assert!(answer.contains(r#""outcome":"pending""#), "{answer}");
}

fn wait_for_link(link: &Path, logs: &[&Path]) {
    let start = Instant::now();
    while !link.is_file() {
        if start.elapsed() > Duration::from_secs(120) {
            let logs: Vec<String> = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            panic!("{} not linked:\n{}", link.display(), logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stalled_registry_gets_a_2xx_within_a_second_and_the_tag_is_linked_once_it_answers() {
    let store = tempfile::tempdir().unwrap();
    let (plog, wlog) = (store.path().join("p.log"), store.path().join("w.log"));
    let registry = Registry::start();
    push_small_image(&registry, "stalled");
    let gate = Gate::closed(&registry.addr());
    let (mut fleet, port) = producer_with(
        "stalled",
        store.path(),
        &plog,
        &[&gate.addr()],
        "",
        &[DEFAULT_ANSWER_TIME],
    );
    fleet.start_worker(store.path(), &wlog, &[]);
    push_is_answered_pending_within_a_second(port, &gate.addr());
    // The reconcile went on behind the answer: it is waiting on the gate.
    let start = Instant::now();
    while gate.accepted() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the producer never asked the registry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gate.open();
    wait_for_link(
        &store.path().join("images/team/app/v1/link"),
        &[&plog, &wlog],
    );
}

#[test]
fn an_unreachable_registry_gets_a_2xx_within_a_second_and_the_tag_is_linked_once_it_is_up() {
    let store = tempfile::tempdir().unwrap();
    let (plog, wlog) = (store.path().join("p.log"), store.path().join("w.log"));
    let registry = Registry::start();
    push_small_image(&registry, "late");
    // Nothing listens there yet: connections are refused.
    let late = exploder_tests::free_port();
    let addr = format!("127.0.0.1:{late}");
    let (mut fleet, port) = producer_with(
        "late",
        store.path(),
        &plog,
        &[&addr],
        "",
        &[DEFAULT_ANSWER_TIME],
    );
    fleet.start_worker(store.path(), &wlog, &[]);
    push_is_answered_pending_within_a_second(port, &addr);
    let _up = Gate::open_at(late, &registry.addr());
    wait_for_link(
        &store.path().join("images/team/app/v1/link"),
        &[&plog, &wlog],
    );
}

#[test]
fn an_event_naming_an_impossible_port_or_host_is_answered_400() {
    let store = tempfile::tempdir().unwrap();
    // Allowed, and still no connection could ever reach them.
    let (fleet, port) = producer(
        "impossible",
        store.path(),
        &store.path().join("p.log"),
        &["127.0.0.1:99999", "1K7.0.0.1"],
    );
    for (host, why) in [("127.0.0.1:99999", "port"), ("1K7.0.0.1", "IPv4")] {
        let (answer, _) = post(port, &event(host, "team/app", "v1"));
        assert_eq!(status(&answer), 400, "{host}: {answer}");
        assert!(answer.contains(why), "{host}: {answer}");
    }
    assert!(fleet.drain(JobKind::Image).is_empty());
}

#[test]
fn a_burst_over_the_rate_limit_is_answered_429_with_retry_after() {
    let store = tempfile::tempdir().unwrap();
    // Three at once, then one every five seconds.
    let (_fleet, port) = producer_with(
        "rate",
        store.path(),
        &store.path().join("p.log"),
        &["127.0.0.1:1"],
        "rate_limit: { per_second: 0.2, burst: 3 }",
        &[],
    );
    let layer_push = event("127.0.0.1:1", "team/app", "v1").replace(
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    for i in 0..3 {
        let (answer, _) = post(port, &layer_push);
        assert_eq!(status(&answer), 200, "request {i} of the burst: {answer}");
    }
    let (answer, _) = post(port, &layer_push);
    assert_eq!(status(&answer), 429, "{answer}");
    let retry_after: u64 = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no Retry-After in {answer}"))
        .trim()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{answer}");
    assert!(answer.contains("rate_limit"), "names the setting: {answer}");
}

#[test]
fn a_body_that_is_not_json_is_answered_415_naming_the_types_taken() {
    let store = tempfile::tempdir().unwrap();
    let (fleet, port) = producer(
        "media",
        store.path(),
        &store.path().join("p.log"),
        &["127.0.0.1:1"],
    );
    let body = event("127.0.0.1:1", "team/app", "v1");
    for wrong in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let (answer, _) = post_as(port, wrong, &body);
        assert_eq!(status(&answer), 415, "{wrong}: {answer}");
        assert!(
            answer.contains("application/json") && answer.contains("application/*+json"),
            "{wrong}: {answer}"
        );
    }
    assert!(fleet.drain(JobKind::Image).is_empty());
}

#[test]
fn an_event_answered_pending_outlives_the_producer_that_answered_it() {
    let store = tempfile::tempdir().unwrap();
    let (plog, wlog) = (store.path().join("p.log"), store.path().join("w.log"));
    let registry = Registry::start();
    push_small_image(&registry, "outlived");
    let gate = Gate::closed(&registry.addr());
    let (mut fleet, first) = producer_with(
        "outlived",
        store.path(),
        &plog,
        &[&gate.addr()],
        "",
        &[DEFAULT_ANSWER_TIME],
    );
    push_is_answered_pending_within_a_second(first, &gate.addr());
    let start = Instant::now();
    while gate.accepted() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the producer never asked the registry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Killed while its reconcile waits on the registry: the event was
    // recorded, not lost with it.
    fleet.kill_producer(first);
    let config = store.path().join("producer.yaml");
    let plog2 = store.path().join("p2.log");
    fleet.start_producer(
        store.path(),
        &plog2,
        &["--config", config.to_str().unwrap()],
        &[("EXPLODER_WEBHOOK_TOKEN", TOKEN)],
    );
    fleet.start_worker(store.path(), &wlog, &[]);
    gate.open();
    wait_for_link(
        &store.path().join("images/team/app/v1/link"),
        &[&plog, &plog2, &wlog],
    );
}
