//! `exploder status` and `exploder dlq list|show|replay|purge` against the
//! real RabbitMQ and Redis. Each test has its own prefix (`Fleet`), makes
//! its dead letters directly (a job published to the dead-letter exchange
//! with a reason, as the worker does, or rejected so the broker
//! dead-letters it) and checks one behaviour.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use exploder_common::digest::Digest;
use exploder_common::image::{Compression, Layer};
use exploder_common::job::{self, Job, JobKind, JobSource, LayerJob};
use exploder_queue::publish::Publisher;
use exploder_queue::topology::Topology;
use exploder_tests::fleet::{AMQP, Fleet, REDIS};
use exploder_tests::tls::TlsServer;
use exploder_tests::{exploder_bin, run_exploder};
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

fn layer_job(n: &str) -> Job {
    let layer = Layer {
        digest: Digest::sha256_of(format!("blob {n}").as_bytes()),
        diff_id: Digest::sha256_of(format!("tar {n}").as_bytes()),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        size: 1234,
        compression: Compression::Gzip,
    };
    Job::Layer(LayerJob::new(
        &layer,
        JobSource::Registry {
            registry: "127.0.0.1:5000".into(),
            repository: "team/app".into(),
        },
    ))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Publishes `body` to the dead-letter exchange the way the worker does:
/// the reason in `x-exploder-error`, the work queue in `x-exploder-queue`,
/// `message_id` = `id`.
fn dead_letter(fleet: &Fleet, body: &[u8], id: &str, reason: &str) {
    let topology = Topology::new(&fleet.prefix);
    fleet.rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let publisher = Publisher::open(&conn, topology.clone()).await.unwrap();
        let mut h = FieldTable::default();
        h.insert("x-exploder-error".into(), text(reason));
        h.insert(
            "x-exploder-queue".into(),
            text(&topology.work_queue(JobKind::Layer)),
        );
        publisher
            .publish_raw(&topology.dead_letters(), "", body, id, h)
            .await
            .unwrap();
    });
}

fn dead_job(fleet: &Fleet, job: &Job, reason: &str) {
    dead_letter(fleet, &job::encode(job), job.id(), reason);
}

/// `exploder ARGS... --amqp-url AMQP --prefix PREFIX`.
fn op(fleet: &Fleet, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--amqp-url", AMQP, "--prefix", &fleet.prefix]);
    run_exploder(all)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_of(out: &Output) -> Value {
    let stdout = ok(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn status_json(fleet: &Fleet) -> Value {
    json_of(&op(fleet, &["status", "--redis-url", REDIS, "-o", "json"]))
}

fn list(fleet: &Fleet) -> Vec<Value> {
    match json_of(&op(fleet, &["dlq", "list", "-o", "json"])) {
        Value::Array(a) => a,
        other => panic!("not an array: {other}"),
    }
}

/// The queue's entry in `status -o json`.
fn queue<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {status:#}"))
}

/// A quorum queue's count can trail a settle by a moment: poll.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_on_an_empty_fleet_lists_every_queue_at_zero() {
    let fleet = Fleet::new("op-status-empty");
    fleet.apply_topology();
    let s = status_json(&fleet);
    assert_eq!(s["prefix"], fleet.prefix.as_str());
    let topology = Topology::new(&fleet.prefix);
    let queues = s["queues"].as_array().unwrap();
    let mut names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    names.sort();
    let mut expected = topology.queues();
    expected.sort();
    assert_eq!(names, expected);
    for q in queues {
        assert_eq!(q["exists"], true, "{q}");
        assert_eq!(q["ready"], 0, "{q}");
        assert_eq!(q["consumers"], 0, "{q}");
        assert!(q.get("unacked").is_some(), "the key is always there: {q}");
        assert!(["work", "retry", "dead", "events"].contains(&q["role"].as_str().unwrap()));
    }
    assert_eq!(
        queue(&s, &topology.work_queue(JobKind::Layer))["kind"],
        "layer"
    );
    assert_eq!(queue(&s, &topology.dead_letters())["role"], "dead");
    assert_eq!(queue(&s, &topology.events_queue())["role"], "events");
    assert_eq!(s["dead_letters"], 0);
    assert_eq!(s["layers"], 0);
    assert_eq!(s["claims"], 0);
    assert_eq!(s["errors"], serde_json::json!([]));

    // The text form is a table with a header row and one row per queue.
    let out = ok(&op(&fleet, &["status", "--redis-url", REDIS]));
    let header = out.lines().next().unwrap();
    for column in ["QUEUE", "KIND", "ROLE", "READY", "CONSUMERS"] {
        assert!(header.contains(column), "{out}");
    }
    for name in topology.queues() {
        assert!(out.lines().any(|l| l.starts_with(&name)), "{name}: {out}");
    }
    assert!(out.contains("dead letters:"), "{out}");
}

#[test]
fn status_counts_a_published_job_and_a_dead_letter() {
    let fleet = Fleet::new("op-status-count");
    fleet.apply_topology();
    let topology = Topology::new(&fleet.prefix);
    fleet.rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let publisher = Publisher::open(&conn, topology.clone()).await.unwrap();
        publisher.publish(&layer_job("queued")).await.unwrap();
    });
    dead_job(&fleet, &layer_job("dead"), "bad digest");
    let s = status_json(&fleet);
    assert_eq!(queue(&s, &topology.work_queue(JobKind::Layer))["ready"], 1);
    assert_eq!(queue(&s, &topology.work_queue(JobKind::Image))["ready"], 0);
    assert_eq!(queue(&s, &topology.dead_letters())["ready"], 1);
    assert_eq!(s["dead_letters"], 1);
    // Status only looks.
    assert_eq!(fleet.drain(JobKind::Layer).len(), 1);
}

#[test]
fn status_counts_layers_and_claims_in_redis() {
    let fleet = Fleet::new("op-status-redis");
    fleet.apply_topology();
    fleet.rt.block_on(async {
        let client = redis::Client::open(REDIS).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        for l in ["a", "b", "c"] {
            let _: () = redis::cmd("SADD")
                .arg(format!("{}exploder:layers", fleet.prefix))
                .arg(Digest::sha256_of(l.as_bytes()).to_string())
                .query_async(&mut con)
                .await
                .unwrap();
        }
    });
    // A worker ingesting layer a.
    let index = fleet.index();
    assert!(
        fleet
            .rt
            .block_on(index.claim(&Digest::sha256_of(b"a"), "token", Duration::from_secs(60)))
            .unwrap()
    );
    let s = status_json(&fleet);
    assert_eq!(s["layers"], 3);
    assert_eq!(s["claims"], 1);
    let out = ok(&op(&fleet, &["status", "--redis-url", REDIS]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("layers known to Redis:") && l.ends_with(" 3")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("active claims:") && l.ends_with(" 1")),
        "{out}"
    );
}

/// TLS end to end on ring, the one crypto provider: the `exploder` binary
/// asks a management API over HTTPS, trusting its CA through
/// `SSL_CERT_FILE` (the platform verifier's roots), as in production.
#[test]
fn status_reads_unacked_counts_from_a_management_api_over_https() {
    let fleet = Fleet::new("op-status-https");
    fleet.apply_topology();
    let layer = Topology::new(&fleet.prefix).work_queue(JobKind::Layer);
    let body = format!(r#"[{{"name":"{layer}","messages_unacknowledged":7}}]"#);
    let server = TlsServer::start(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    ));
    let status = |trusted: bool| {
        let mut cmd = Command::new(exploder_bin());
        cmd.args(["status", "--redis-url", REDIS, "-o", "json"])
            .args(["--management-url", &server.url()])
            .args(["--amqp-url", AMQP, "--prefix", &fleet.prefix])
            .env_remove("SSL_CERT_DIR");
        if trusted {
            cmd.env("SSL_CERT_FILE", server.ca_file());
        } else {
            cmd.env_remove("SSL_CERT_FILE");
        }
        json_of(&cmd.output().expect("spawn exploder"))
    };

    let s = status(true);
    assert_eq!(s["unacked_source"], "management", "{s:#}");
    assert_eq!(queue(&s, &layer)["unacked"], 7);
    let request = server
        .connection(Duration::from_secs(5))
        .expect("a request over TLS");
    assert!(
        request.starts_with("GET /api/queues/%2F?columns="),
        "{request}"
    );

    // A CA the client does not trust: the handshake fails, so no request
    // and no unacked counts (the management API is optional).
    let s = status(false);
    assert_eq!(s["unacked_source"], Value::Null, "{s:#}");
    assert_eq!(queue(&s, &layer)["unacked"], Value::Null);
    assert!(server.connection(Duration::from_millis(500)).is_none());
}

/// AMQP over TLS on ring: lapin's connector (rustls-connector) in the
/// `exploder` binary completes a handshake with a server its CA is trusted
/// for through `SSL_CERT_FILE`, and speaks AMQP in it.
#[test]
fn amqps_connects_over_tls() {
    let server = TlsServer::start("not AMQP\r\n".into());
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", server.port());
    let out = Command::new(exploder_bin())
        .args(["status", "--amqp-url", &url, "--connect-timeout", "1s"])
        .args(["--prefix", "never-"])
        .env("SSL_CERT_FILE", server.ca_file())
        .env_remove("SSL_CERT_DIR")
        .output()
        .expect("spawn exploder");
    // The server is no broker: status gives up.
    assert_eq!(out.status.code(), Some(1));
    let first = server
        .connection(Duration::from_secs(5))
        .expect("a TLS handshake from lapin");
    assert!(first.starts_with("AMQP"), "{first:?}");
}

#[test]
fn status_with_an_unreachable_broker_exits_1_and_says_so() {
    let port = exploder_tests::free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let out = run_exploder([
        "status",
        "--amqp-url",
        &url,
        "--connect-timeout",
        "1s",
        "--prefix",
        "never-",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach RabbitMQ"), "{err}");
    assert!(!err.contains("guest:guest@"), "password shown: {err}");
}

#[test]
fn status_watch_refreshes_until_interrupted() {
    let fleet = Fleet::new("op-status-watch");
    fleet.apply_topology();
    let child = std::process::Command::new(exploder_tests::exploder_bin())
        .args([
            "status",
            "--watch",
            "--interval",
            "200ms",
            "-o",
            "json",
            "--amqp-url",
            AMQP,
            "--redis-url",
            REDIS,
            "--prefix",
            &fleet.prefix,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = ok(&out);
    let snapshots: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(snapshots.len() >= 2, "{stdout}");
    for s in &snapshots {
        assert_eq!(s["dead_letters"], 0);
    }
}

#[test]
fn dlq_list_shows_the_reason_and_leaves_the_queue_as_it_was() {
    let fleet = Fleet::new("op-dlq-list");
    fleet.apply_topology();
    let a = layer_job("a");
    let b = layer_job("b");
    dead_job(&fleet, &a, "blob sha256:abc does not match its digest");
    dead_job(&fleet, &b, "hostile layer: path escapes the root");

    let first = list(&fleet);
    assert_eq!(first.len(), 2, "{first:#?}");
    let entry = first.iter().find(|e| e["id"] == a.id()).unwrap();
    assert_eq!(entry["kind"], "layer");
    assert_eq!(entry["digest"], a.digest().to_string());
    assert_eq!(entry["decoded"], true);
    assert_eq!(entry["reason"], "blob sha256:abc does not match its digest");
    assert_eq!(entry["dead_lettered_by"], "worker");
    assert_eq!(
        entry["queue"],
        Topology::new(&fleet.prefix).work_queue(JobKind::Layer)
    );
    assert_eq!(entry["attempts"], Value::Null);

    // Listing again finds the same: nothing was taken away.
    let second = list(&fleet);
    assert_eq!(first, second);
    eventually("both still in the dead-letter queue", || {
        status_json(&fleet)["dead_letters"] == 2
    });

    let out = ok(&op(&fleet, &["dlq", "list"]));
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains("REASON"), "{out}");
    let line = out.lines().find(|l| l.starts_with(b.id())).unwrap();
    assert!(
        line.contains("hostile layer: path escapes the root"),
        "{out}"
    );
    assert!(line.contains(&b.digest().to_string()), "{out}");
}

#[test]
fn dlq_list_shows_what_the_broker_dead_lettered_itself() {
    let fleet = Fleet::new("op-dlq-xdeath");
    fleet.apply_topology();
    let topology = Topology::new(&fleet.prefix);
    let j = layer_job("rejected");
    // Published to the work queue, then rejected without requeue: the
    // broker dead-letters it with its x-death header.
    fleet.rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let publisher = Publisher::open(&conn, topology.clone()).await.unwrap();
        publisher.publish(&j).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let m = ch
            .basic_get(
                topology.work_queue(JobKind::Layer).as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
            .unwrap();
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        ch.close(200, "done".into()).await.unwrap();
    });
    let mut entries = Vec::new();
    eventually("the broker dead-lettered it", || {
        entries = list(&fleet);
        !entries.is_empty()
    });
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], j.id());
    assert_eq!(entries[0]["reason"], "rejected");
    assert_eq!(entries[0]["dead_lettered_by"], "broker");
    assert_eq!(entries[0]["queue"], topology.work_queue(JobKind::Layer));
    let out = ok(&op(&fleet, &["dlq", "list"]));
    assert!(out.contains("broker: rejected"), "{out}");
}

#[test]
fn dlq_show_prints_the_decoded_job() {
    let fleet = Fleet::new("op-dlq-show");
    fleet.apply_topology();
    let j = layer_job("shown");
    dead_job(&fleet, &j, "limit exceeded: layer larger than 1 GiB");
    dead_job(&fleet, &layer_job("other"), "something else");

    let v = json_of(&op(&fleet, &["dlq", "show", j.id(), "-o", "json"]));
    assert_eq!(v["id"], j.id());
    assert_eq!(v["reason"], "limit exceeded: layer larger than 1 GiB");
    assert_eq!(v["job"], serde_json::to_value(&j).unwrap());
    assert_eq!(v["job"]["kind"], "layer");
    assert_eq!(
        v["headers"]["x-exploder-error"],
        "limit exceeded: layer larger than 1 GiB"
    );
    assert_eq!(v["headers"][job::SCHEMA_HEADER], job::SCHEMA_VERSION);
    assert_eq!(v["content_type"], job::CONTENT_TYPE);
    assert_eq!(v["copies"], 1);

    let out = ok(&op(&fleet, &["dlq", "show", j.id()]));
    assert!(
        out.contains("limit exceeded: layer larger than 1 GiB"),
        "{out}"
    );
    assert!(out.contains("job:"), "{out}");
    assert!(
        out.contains(&format!("\"digest\": \"{}\"", j.digest())),
        "{out}"
    );
    assert!(out.contains("\"registry\": \"127.0.0.1:5000\""), "{out}");
    // Showing took nothing away.
    assert_eq!(list(&fleet).len(), 2);
}

#[test]
fn dlq_replay_moves_the_job_to_its_work_queue() {
    let fleet = Fleet::new("op-dlq-replay");
    fleet.apply_topology();
    let j = layer_job("replayed");
    let stays = layer_job("stays");
    dead_job(&fleet, &j, "registry returned 500 too often");
    dead_job(&fleet, &stays, "hostile layer");

    let out = ok(&op(&fleet, &["dlq", "replay", j.id()]));
    assert!(out.contains("replayed 1 dead letter"), "{out}");

    let replayed = fleet.drain(JobKind::Layer);
    assert_eq!(replayed, vec![j.clone()]);
    let left = list(&fleet);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["id"], stays.id());

    // --all replays the rest; -o json reports it.
    let v = json_of(&op(&fleet, &["dlq", "replay", "--all", "-o", "json"]));
    assert_eq!(v["replayed"], 1);
    assert_eq!(v["jobs"][0]["id"], stays.id());
    assert_eq!(fleet.drain(JobKind::Layer), vec![stays]);
    assert_eq!(list(&fleet), Vec::<Value>::new());
}

#[test]
fn dlq_replay_of_an_unknown_id_exits_1() {
    let fleet = Fleet::new("op-dlq-unknown");
    fleet.apply_topology();
    dead_job(&fleet, &layer_job("there"), "bad digest");
    let out = op(
        &fleet,
        &["dlq", "replay", "0123456789abcdef0123456789abcdef"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no dead letter with id"), "{err}");
    assert_eq!(list(&fleet).len(), 1);
    assert!(fleet.drain(JobKind::Layer).is_empty());
    // Neither an id nor --all: a usage error.
    assert_eq!(op(&fleet, &["dlq", "replay"]).status.code(), Some(2));
}

#[test]
fn dlq_purge_needs_yes_and_then_empties_the_queue() {
    let fleet = Fleet::new("op-dlq-purge");
    fleet.apply_topology();
    dead_job(&fleet, &layer_job("1"), "bad digest");
    dead_job(&fleet, &layer_job("2"), "bad digest");

    let refused = op(&fleet, &["dlq", "purge"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(list(&fleet).len(), 2);

    let out = ok(&op(&fleet, &["dlq", "purge", "--yes"]));
    assert!(out.contains("purged 2 dead letters"), "{out}");
    assert_eq!(list(&fleet), Vec::<Value>::new());
    assert_eq!(status_json(&fleet)["dead_letters"], 0);
}

#[test]
fn an_undecodable_body_is_listed_as_such_and_not_replayed() {
    let fleet = Fleet::new("op-dlq-garbage");
    fleet.apply_topology();
    // As the worker dead-letters a body it cannot decode: message_id "?".
    dead_letter(
        &fleet,
        b"\x07not a job",
        "?",
        "cannot decode the job: malformed job message",
    );
    let entries = list(&fleet);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["decoded"], false);
    assert!(
        e["decode_error"].as_str().unwrap().contains("version"),
        "{e}"
    );
    assert_eq!(e["kind"], Value::Null);
    assert_eq!(e["digest"], Value::Null);
    assert_eq!(e["reason"], "cannot decode the job: malformed job message");
    let id = e["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("body-"), "{id}");

    let out = ok(&op(&fleet, &["dlq", "list"]));
    assert!(out.contains("(undecodable)"), "{out}");

    let shown = json_of(&op(&fleet, &["dlq", "show", &id, "-o", "json"]));
    assert_eq!(shown["job"], Value::Null);
    assert_eq!(shown["body_hex"], "076e6f742061206a6f62");

    for args in [
        vec!["dlq", "replay", id.as_str()],
        vec!["dlq", "replay", "--all"],
    ] {
        let out = op(&fleet, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not decode"), "{err}");
    }
    assert!(fleet.drain(JobKind::Layer).is_empty());
    assert_eq!(list(&fleet).len(), 1);
}

#[test]
fn dlq_replay_publishes_a_job_dead_lettered_twice_once() {
    let fleet = Fleet::new("op-dlq-copies");
    fleet.apply_topology();
    let j = layer_job("twice");
    dead_job(&fleet, &j, "first failure");
    dead_job(&fleet, &j, "second failure");
    assert_eq!(list(&fleet).len(), 2);
    let shown = json_of(&op(&fleet, &["dlq", "show", j.id(), "-o", "json"]));
    assert_eq!(shown["copies"], 2);

    let v = json_of(&op(&fleet, &["dlq", "replay", j.id(), "-o", "json"]));
    assert_eq!(v["replayed"], 1);
    assert_eq!(v["duplicates_removed"], 1);
    assert_eq!(fleet.drain(JobKind::Layer), vec![j]);
    assert_eq!(list(&fleet), Vec::<Value>::new());
}

#[test]
fn status_with_a_wrong_password_says_the_broker_refused_it_at_once() {
    let url = AMQP.replacen("guest:guest@", "guest:wrong@", 1);
    assert_ne!(url, AMQP, "the test broker's URL has guest:guest");
    let started = Instant::now();
    let out = run_exploder([
        "status",
        "--amqp-url",
        &url,
        "--connect-timeout",
        "30s",
        "--prefix",
        "never-",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the login"), "{err}");
    // Not retried, and lapin's own lines are not the CLI's to print.
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(!err.contains("ERROR"), "{err}");
    assert!(!err.contains("guest:wrong@"), "password shown: {err}");
}
