//! `exploder topology apply|verify` against the real RabbitMQ the test
//! command starts. Each test uses its own prefix and deletes its queues.

use exploder_common::job::JobKind;
use exploder_queue::topology::Topology;
use exploder_tests::fleet::{AMQP, Fleet, PrivateRabbit};
use exploder_tests::run_exploder;
use lapin::options::QueueDeleteOptions;

fn topology(cmd: &str, prefix: &str) -> std::process::Output {
    run_exploder(["topology", cmd, "--amqp-url", AMQP, "--prefix", prefix])
}

#[test]
fn apply_is_idempotent_and_verify_then_passes() {
    let fleet = Fleet::new("apply");
    let prefix = fleet.prefix.clone();
    for _ in 0..2 {
        let out = topology("apply", &prefix);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = topology("verify", &prefix);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("topology ok"));
}

#[test]
fn verify_reports_what_is_missing_and_creates_nothing() {
    let fleet = Fleet::new("missing");
    let prefix = fleet.prefix.clone();
    let out = topology("verify", &prefix);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("queue {prefix}exploder.layer is missing")),
        "{err}"
    );
    assert!(err.contains("exploder topology apply"), "{err}");
    // Still missing: verify declared nothing.
    let again = topology("verify", &prefix);
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn verify_reports_a_queue_declared_with_other_arguments() {
    let fleet = Fleet::new("mismatch");
    let prefix = fleet.prefix.clone();
    assert!(topology("apply", &prefix).status.success());
    // Replace the layer queue by a classic queue of the same name.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let name = format!("{prefix}exploder.layer");
        ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_declare(
            name.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    });
    let out = topology("verify", &prefix);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists with other arguments"), "{err}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let port = exploder_tests::free_port();
    let out = run_exploder([
        "topology",
        "verify",
        "--amqp-url",
        &format!("amqp://guest:secret@127.0.0.1:{port}/%2f"),
        "--connect-timeout",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach RabbitMQ") && !err.contains("secret"),
        "{err}"
    );
}

/// Publishes one message straight into a queue, confirmed.
fn put(amqp: &str, queue: &str, body: &[u8]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(amqp, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        ch.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    });
}

/// Ready messages of a queue (a passive declare).
fn depth(amqp: &str, queue: &str) -> Option<u32> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(amqp, Default::default())
            .await
            .ok()?;
        let ch = conn.create_channel().await.ok()?;
        exploder_queue::topology::inspect_queue(&ch, queue)
            .await
            .ok()
            .map(|q| q.message_count())
    })
}

#[test]
fn a_job_waiting_in_a_backoff_tier_survives_a_broker_restart() {
    let rabbit = PrivateRabbit::start();
    let fleet = Fleet::with_services("backoff", &rabbit.url(), exploder_tests::fleet::REDIS);
    fleet.apply_topology();
    let topology = Topology::new(&fleet.prefix);
    put(
        &rabbit.url(),
        &topology.retry_queue(JobKind::Image, "5s"),
        b"an image job waiting for its layers",
    );
    // Down while its 5 s run out: the broker dead-letters it while it
    // starts again, before the work queue is up. A classic tier lost it
    // there; a quorum tier with at-least-once dead-lettering must not.
    rabbit.down();
    std::thread::sleep(std::time::Duration::from_secs(6));
    rabbit.up();
    let work = topology.work_queue(JobKind::Image);
    let start = std::time::Instant::now();
    while depth(&rabbit.url(), &work) != Some(1) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the job never came back to {work}: {:?}",
            depth(&rabbit.url(), &work)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn apply_retires_the_old_classic_retry_queues_once_they_are_empty() {
    let fleet = Fleet::new("legacy");
    let prefix = fleet.prefix.clone();
    let legacy = Topology::new(&prefix).legacy_retry_queues();
    // What the first topology declared: classic queues that dead-letter
    // back to the work exchange.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        for name in &legacy {
            let mut args = lapin::types::FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                lapin::types::AMQPValue::LongLongInt(300_000),
            );
            ch.queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
        }
    });
    let holding = &legacy[0];
    put(AMQP, holding, b"still draining");
    assert!(topology("apply", &prefix).status.success());
    assert_eq!(depth(AMQP, holding), Some(1), "a queue with jobs is kept");
    for name in &legacy[1..] {
        assert_eq!(depth(AMQP, name), None, "{name} was not retired");
    }
    rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_purge(holding.as_str().into(), Default::default())
            .await
            .unwrap();
    });
    assert!(topology("apply", &prefix).status.success());
    assert_eq!(depth(AMQP, holding), None, "retired once empty");
    // Fleet's cleanup deletes the current queues; the legacy ones are gone.
}
