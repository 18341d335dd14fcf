//! `exploder topology apply|verify` against the real RabbitMQ the test
//! command starts. Each test uses its own prefix and deletes its queues.

use exploder_tests::fleet::{AMQP, Fleet};
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
