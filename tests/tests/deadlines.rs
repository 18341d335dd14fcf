//! Every network wait has a deadline (issue 24): the waits the first
//! partition probe found without one, each on loopback. The partitions
//! themselves, between hosts, are `partition.rs`.
//!
//! A wait that had no end shows as a command or a job that never
//! finishes; each test waits for the outcome under a watchdog far above
//! the deadline under test, and prints how long it took.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use exploder_common::digest::Digest;
use exploder_tests::fleet::{Fleet, REDIS};
use exploder_tests::{
    Gate, Image, Layer, LayerBuilder, Registry, SlowLink, exploder_bin, wait_until,
};

/// Far above every deadline here: reaching it is the failure.
const WATCHDOG: Duration = Duration::from_secs(90);

/// Runs `cmd` to its end, or kills it at [`WATCHDOG`]: its exit status
/// (`None` if killed), stdout and stderr, and how long it ran.
fn run_watched(cmd: &mut Command) -> (Option<std::process::ExitStatus>, String, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read_all = |mut from: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = from.read_to_string(&mut s);
            s
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
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
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    (status, stdout, stderr, started.elapsed())
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
    let (status, _, stderr, took) = run_watched(Command::new(exploder_bin()).args([
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

/// A layer of `bytes` pseudo-random (incompressible) bytes in one file.
fn random_layer(bytes: usize) -> Layer {
    let mut random = exploder_tests::SplitMix64(0x5eed_0fb1_0b00);
    let data: Vec<u8> = (0..bytes).map(|_| random.next_u64() as u8).collect();
    let mut b = LayerBuilder::new();
    b.file("blob.bin", &data, 0o644);
    Layer::uncompressed(b.build())
}

/// `exploder explode` of `reference` into a fresh store, with `flags`,
/// under the watchdog: exit status, the JSON result, stderr.
fn explode_watched(reference: &str, flags: &[&str]) -> (i32, serde_json::Value, String) {
    let store = tempfile::tempdir().unwrap();
    let (status, stdout, stderr, took) = run_watched(
        Command::new(exploder_bin())
            .args(["explode", reference, "--store"])
            .arg(store.path())
            .args(["-o", "json", "--no-fsync"])
            .args(flags),
    );
    eprintln!("explode {reference} ended after {took:.1?}");
    let status = status.expect("exploder explode still running at the watchdog: a download hung");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    (status.code().unwrap_or(-1), json[0].clone(), stderr)
}

/// A registry that serves a blob at a trickle below the floor
/// (--min-transfer-rate over --transfer-rate-window) does not hold the
/// pull: the download is resumed, then fails as a transient error that
/// says the rate it came at and the minimum (a fleet retries it later).
#[test]
fn a_blob_trickled_below_the_minimum_rate_fails_as_transient_naming_the_rate() {
    let registry = Registry::start();
    let image = Image::oci().layer(random_layer(8 << 20));
    registry.push("team/trickle", "v1", &image);
    // At most 256 KiB/s on each connection: a quarter of the floor.
    let slow = SlowLink::start(&registry.addr(), 256 << 10);
    let reference = format!("{}/team/trickle:v1", slow.addr());
    let (code, result, stderr) = explode_watched(
        &reference,
        &[
            "--min-transfer-rate",
            "1MiB",
            "--transfer-rate-window",
            "2s",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("came too slowly")
            && error.contains("bytes/s over 2s")
            && error.contains("under the minimum of 1048576 bytes/s")
            && error.contains(&image.layer_digests()[0]),
        "{result}\n{stderr}"
    );
    assert_eq!(result["transient"], true, "{result}");
}

/// A blob that comes slowly but above the floor is downloaded whole.
#[test]
fn a_blob_slower_than_loopback_but_above_the_minimum_rate_is_pulled() {
    let registry = Registry::start();
    let image = Image::oci().layer(random_layer(1 << 20));
    registry.push("team/steady", "v1", &image);
    // 256 KiB/s: four seconds for the layer, eight times the floor.
    let slow = SlowLink::start(&registry.addr(), 256 << 10);
    let reference = format!("{}/team/steady:v1", slow.addr());
    let (code, result, stderr) = explode_watched(
        &reference,
        &[
            "--min-transfer-rate",
            "32KiB",
            "--transfer-rate-window",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{result}\n{stderr}");
    assert_eq!(result["ok"], true, "{result}");
}
