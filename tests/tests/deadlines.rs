//! Every network wait has a deadline (issue 24): the waits the first
//! partition probe found without one, each on loopback. The partitions
//! themselves, between hosts, are `partition.rs`.
//!
//! A wait that had no end shows as a command or a job that never
//! finishes; each test waits for the outcome under a watchdog far above
//! the deadline under test, and prints how long it took.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use exploder_common::digest::Digest;
use exploder_tests::fleet::{Fleet, REDIS};
use exploder_tests::{Gate, Image, Layer, LayerBuilder, Registry, exploder_bin, wait_until};

/// Far above every deadline here: reaching it is the failure.
const WATCHDOG: Duration = Duration::from_secs(90);

/// Runs `cmd` to its end, or kills it at [`WATCHDOG`]: its exit status
/// (`None` if killed) and stderr, and how long it ran.
fn run_watched(cmd: &mut Command) -> (Option<std::process::ExitStatus>, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap(), started.elapsed())
}

/// Runs one Redis command on the shared Redis.
fn redis(args: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open(REDIS).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let _: redis::Value = redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut con)
            .await
            .unwrap();
    })
}

/// A broker that accepts the TCP connection and never answers the AMQP
/// handshake (a hung node, or a partition right after the connect) is
/// given up when the connection's patience runs out, not waited for.
#[test]
fn a_broker_that_accepts_and_never_answers_is_given_up_at_the_deadline() {
    let gate = Gate::closed("127.0.0.1:9");
    let (status, stderr, took) = run_watched(Command::new(exploder_bin()).args([
        "topology",
        "apply",
        "--amqp-url",
        &format!("amqp://guest:guest@{}/%2f", gate.addr()),
        "--prefix",
        "test-deadline-handshake-",
        "--connect-timeout",
        "3s",
    ]));
    eprintln!("a silent broker given up after {took:.1?}");
    let status = status.expect("exploder topology apply still waited on the handshake");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach RabbitMQ") && stderr.contains("within"),
        "{stderr}"
    );
    assert!(gate.accepted() >= 1, "the broker's port was never reached");
}

/// A layer whose claim another worker holds: the worker waits for it at
/// most a lease's length, then parks the job in the first backoff tier
/// (a wait, not a failure) and is free for other work; once the claim is
/// gone, the job comes back and the layer is ingested.
#[test]
fn a_job_waiting_for_another_workers_claim_waits_in_the_queue_not_in_the_worker() {
    let registry = Registry::start();
    let mut layer = LayerBuilder::new();
    layer
        .dir("etc", 0o755)
        .file("etc/claimed", b"held by another\n", 0o644);
    let layer = Layer::gzip(layer.build());
    let image = Image::oci().layer(layer.clone());
    registry.push("deadline/claimed", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let mut fleet = Fleet::new("deadline-claim");
    fleet.apply_topology();
    let diff_id: Digest = layer.diff_id().parse().unwrap();
    let claim = format!("{}exploder:claim:{diff_id}", fleet.prefix);
    // Another worker, somewhere, holds the layer for ten minutes.
    redis(&["SET", &claim, "another-worker", "PX", "600000"]);
    fleet.enqueue_ok(
        &format!("{}/deadline/claimed:v1", registry.addr()),
        store.path(),
    );
    let started = Instant::now();
    fleet.start_worker_env(
        store.path(),
        &log,
        &["--claim-ttl", "2", "--log-format", "json"],
        &[("RUST_LOG", "info,exploder_worker=debug")],
    );
    let parked = |text: &str| {
        text.lines().any(|l| {
            l.contains("waiting: layer")
                && l.contains(&diff_id.to_string())
                && l.contains("another worker")
        })
    };
    wait_until(
        "the layer job parked while another worker holds its claim",
        WATCHDOG,
        &[&log],
        || parked(&std::fs::read_to_string(&log).unwrap_or_default()),
    );
    eprintln!(
        "the job left the worker after {:.1?} of waiting",
        started.elapsed()
    );
    let link = store.path().join("images/deadline/claimed/v1/link");
    assert!(!link.exists(), "linked while another worker held the layer");
    // The other worker is gone: its claim with it.
    redis(&["DEL", &claim]);
    wait_until(
        "the image linked once the claim was free",
        WATCHDOG,
        &[&log],
        || link.exists(),
    );
}
