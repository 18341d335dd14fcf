//! Every daemon serves /metrics, /healthz and /readyz on --metrics-listen;
//! the producer exports the fleet's queue depths.

use std::time::{Duration, Instant};

use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, free_port, http_get};

/// Polls `path` until `pred` holds for its answer.
fn eventually(port: u16, path: &str, pred: impl Fn(u16, &str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = http_get(port, path);
        if pred(status, &body) {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{path}: {status}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_worker_reports_its_jobs_and_readiness() {
    let mut fleet = Fleet::new("metricsw");
    fleet.apply_topology();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/x", b"x", 0o644);
    registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    fleet.start_worker(
        store.path(),
        &logs.path().join("w.log"),
        &["--metrics-listen", &listen],
    );
    eventually(port, "/healthz", |s, _| s == 200);
    eventually(port, "/readyz", |s, _| s == 200);
    fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    let metrics = eventually(port, "/metrics", |_, b| {
        b.contains(r#"exploder_worker_jobs_total{kind="image",result="ok"} 1"#)
    });
    assert!(
        metrics.contains(r#"exploder_worker_jobs_total{kind="layer",result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("exploder_worker_job_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"exploder_build_info{component="worker""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"exploder_broker_up{component="worker"} 1"#),
        "{metrics}"
    );
}

#[test]
fn the_producer_exports_queue_depths_and_event_counts() {
    let mut fleet = Fleet::new("metricsp");
    fleet.apply_topology();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/x", b"x", 0o644);
    let digest = registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let webhook = fleet.start_producer(
        store.path(),
        &logs.path().join("p.log"),
        &["--metrics-listen", &listen],
        &[
            ("EXPLODER_WEBHOOK_TOKEN", "t"),
            ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", &registry.addr()),
        ],
    );
    eventually(port, "/readyz", |s, _| s == 200);
    let body = format!(
        r#"{{"events":[{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"team/app","url":"http://{}/v2/team/app/manifests/{digest}","tag":"v1"}}}}]}}"#,
        registry.addr()
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let resp = agent
        .post(format!("http://127.0.0.1:{webhook}/webhook/registry"))
        .header("Authorization", "Bearer t")
        .send(body.as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let layer_queue = format!("{}exploder.layer", fleet.prefix);
    let metrics = eventually(port, "/metrics", |_, b| {
        b.contains(&format!(
            r#"exploder_queue_messages_ready{{queue="{layer_queue}"}} 1"#
        ))
    });
    assert!(
        metrics
            .contains(r#"exploder_producer_events_total{outcome="accepted",source="registry"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"exploder_producer_jobs_published_total{kind="image"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("exploder_queue_dead_letter_messages 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"exploder_redis_up{component="producer"} 1"#),
        "{metrics}"
    );
}

/// The worker holding the resync lease exports each pass: how long it
/// took, what it re-drove and settled, and how it ended.
#[test]
fn a_worker_exports_its_resync_passes() {
    let mut fleet = Fleet::new("metricsr");
    fleet.apply_topology();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/x", b"x", 0o644);
    registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    let store = tempfile::tempdir().unwrap();
    fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    // Lost before any worker saw them: only the resync can bring them back.
    fleet.drain(exploder_common::job::JobKind::Image);
    fleet.drain(exploder_common::job::JobKind::Layer);
    fleet.forget_image_jobs();
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    fleet.start_worker(
        store.path(),
        &logs.path().join("w.log"),
        &[
            "--metrics-listen",
            &listen,
            "--resync-interval",
            "1s",
            "--resync-after",
            "0s",
        ],
    );
    let counter = |body: &str, series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let metrics = eventually(port, "/metrics", |_, body| {
        counter(
            body,
            r#"exploder_worker_resync_requests_total{outcome="redriven"}"#,
        ) >= 1
    });
    assert!(
        counter(&metrics, "exploder_worker_resync_seconds_count") >= 1,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            r#"exploder_worker_resync_passes_total{result="complete"}"#
        ) >= 1,
        "{metrics}"
    );
    for series in [
        r#"exploder_worker_resync_requests_total{outcome="settled"}"#,
        r#"exploder_worker_resync_passes_total{result="partial"}"#,
        r#"exploder_worker_resync_passes_total{result="lease_lost"}"#,
        "exploder_worker_resync_deferred_requests",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

/// A worker whose metrics address is taken (another worker on the host)
/// does not start without its endpoints: nobody would see its readiness,
/// and its probes would ask the other process.
#[test]
fn a_worker_that_cannot_serve_its_endpoints_does_not_start() {
    let mut fleet = Fleet::new("metricstaken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("w.log");
    let pid = fleet.start_worker(store.path(), &log, &["--metrics-listen", &listen]);
    let status = fleet.wait_worker(pid, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&listen), "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
}
