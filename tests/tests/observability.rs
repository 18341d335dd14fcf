//! The dashboard and the alert rules, proven on a live fleet: a real
//! Prometheus (Debian's) scrapes a producer, two workers and a RabbitMQ
//! with its prometheus plugin, configured by the repository's own
//! `compose/prometheus/prometheus.yml` and `alerts.yml` (targets moved to
//! loopback, intervals shortened). Every expression of every panel of the
//! Grafana dashboard must return a series once the fleet has worked, and
//! an outage must raise the alerts written for it, and no others.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exploder_tests::fleet::{Fleet, PrivateRabbit, REDIS};
use exploder_tests::kubeapi::{KubeApi, image_stream};
use exploder_tests::prometheus::{Prometheus, Targets, compose_config};
use exploder_tests::rate_limited::RateLimited;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, free_port, wait_until};

const TOKEN: &str = "observe";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn layer(name: &str, files: usize) -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755);
    for i in 0..files {
        b.file(format!("etc/{name}{i}"), vec![i as u8; 4096], 0o644);
    }
    Layer::gzip(b.build())
}

/// Every `expr` of every panel of the dashboards, with Grafana's
/// `$__rate_interval` given a value Prometheus understands: (panel, expr).
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let dir = repo_file("compose/grafana/dashboards");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push((
                        panel["title"].as_str().unwrap_or("?").to_string(),
                        expr.replace("$__rate_interval", "1m"),
                    ));
                }
            }
        }
    }
    assert!(!queries.is_empty(), "no panel queries in {}", dir.display());
    queries
}

fn post_push(port: u16, registry: &str, repo: &str, tag: &str, digest: &str) -> u16 {
    let body = format!(
        r#"{{"events":[{{"id":"{repo}-{tag}","timestamp":"2026-11-30T05:00:00Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"{repo}","url":"http://{registry}/v2/{repo}/manifests/{digest}","tag":"{tag}"}},"request":{{"host":"{registry}"}}}}]}}"#
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build(),
    );
    agent
        .post(format!("http://127.0.0.1:{port}/webhook/registry"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .send(body.as_bytes())
        .expect("the producer answers")
        .status()
        .as_u16()
}

#[test]
fn a_live_prometheus_draws_every_panel_and_raises_the_alerts_of_an_outage() {
    let rabbit = PrivateRabbit::start_with_metrics();
    let mut fleet = Fleet::with_services("observe", &rabbit.url(), REDIS);
    fleet.apply_topology();
    let registry = Registry::start();
    // The fleet reaches the registry through a front that says how many
    // pulls are left and refuses repositories named "limited" with 429.
    let front = RateLimited::start(&registry.addr(), 42);
    let base = layer("base", 20);
    let v1 = registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(base.clone()).layer(layer("one", 3)),
    );
    let v2 = registry.push(
        "team/app",
        "v2",
        &Image::oci().layer(base.clone()).layer(layer("two", 3)),
    );
    let v3 = registry.push(
        "team/app",
        "v3",
        &Image::oci().layer(base.clone()).layer(layer("three", 3)),
    );
    let mut evil = LayerBuilder::new();
    evil.file("../../escape", b"x", 0o644);
    let evil = registry.push(
        "team/evil",
        "v1",
        &Image::oci().layer(Layer::gzip(evil.build())),
    );
    let limited = registry.push("team/limited", "v1", &Image::oci().layer(layer("l", 1)));

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let api = KubeApi::start();
    api.apply(image_stream(
        "team",
        "app",
        &front.addr(),
        &[("v1", v1.as_str())],
    ));
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);

    let producer_metrics = free_port();
    let producer_log = dir.path().join("producer.log");
    let webhook = fleet.start_producer(
        &store,
        &producer_log,
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{producer_metrics}"),
            "--imagestreams",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--namespace",
            "team",
            "--management-url",
            &format!("http://127.0.0.1:{}", rabbit.management_port.unwrap()),
        ],
        &[
            ("EXPLODER_WEBHOOK_TOKEN", TOKEN),
            ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", &front.addr()),
        ],
    );
    let mut workers = Vec::new();
    let mut worker_targets = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let log = dir.path().join(format!("worker{i}.log"));
        let listen = format!("127.0.0.1:{port}");
        let pid = fleet.start_worker(
            &store,
            &log,
            &["--metrics-listen", &listen, "--resync-interval", "2s"],
        );
        workers.push((pid, log));
        worker_targets.push(listen);
    }

    let prometheus_port = free_port();
    let own = format!("127.0.0.1:{prometheus_port}");
    let config = compose_config(
        &std::fs::read_to_string(repo_file("compose/prometheus/prometheus.yml")).unwrap(),
        &Targets {
            producer: format!("127.0.0.1:{producer_metrics}"),
            workers: worker_targets,
            rabbitmq: format!("127.0.0.1:{}", rabbit.prometheus_port.unwrap()),
        },
        &own,
        "1s",
    );
    let prometheus = Prometheus::start(&config, &repo_file("compose/prometheus"), prometheus_port);
    let rules = prometheus.alert_rules();
    assert!(
        rules.iter().any(|r| r == "ExploderDeadLetters"),
        "alerts.yml did not load: {rules:?}\n{}",
        prometheus.log()
    );

    // Work, and the faults a fleet meets: v1 comes from the ImageStream;
    // v2 from a push (its base layer deduplicated); a hostile layer is
    // dead-lettered; a rate-limited repository answers 429; a push of a
    // tag the registry does not have answers 404.
    let logs: Vec<&Path> = std::iter::once(producer_log.as_path())
        .chain(workers.iter().map(|(_, l)| l.as_path()))
        .collect();
    assert!(post_push(webhook, &front.addr(), "team/app", "v2", &v2) < 300);
    post_push(webhook, &front.addr(), "team/evil", "v1", &evil);
    post_push(webhook, &front.addr(), "team/limited", "v1", &limited);
    post_push(webhook, &front.addr(), "team/app", "gone", &v3);
    let linked = |tag: &str| store.join(format!("images/team/app/{tag}/link")).is_file();
    wait_until("v1 and v2 linked", Duration::from_secs(90), &logs, || {
        linked("v1") && linked("v2")
    });
    wait_until(
        "the hostile image dead-lettered",
        Duration::from_secs(90),
        &logs,
        || !fleet.peek_dead().is_empty(),
    );

    // Every target is scraped with the shipped jobs and paths.
    wait_until("every target up", Duration::from_secs(60), &logs, || {
        let targets = prometheus.targets();
        targets.len() == 5 && targets.iter().all(|(_, health, _)| health == "up")
    });

    // Every panel draws: the producer samples queue depths every 15 s and
    // rates need two scrapes, so give the series a minute to appear.
    let queries = dashboard_queries();
    let mut empty: Vec<(String, String)> = queries.clone();
    let start = Instant::now();
    while !empty.is_empty() && start.elapsed() < Duration::from_secs(60) {
        empty.retain(|(_, expr)| prometheus.query(expr).is_empty());
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        empty.is_empty(),
        "{} of {} panel queries return no series on a working fleet:\n{}",
        empty.len(),
        queries.len(),
        empty
            .iter()
            .map(|(panel, expr)| format!("  {panel}: {expr}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The outage: both workers die while work keeps arriving.
    for (pid, _) in &workers {
        fleet.kill_worker(*pid);
    }
    assert!(post_push(webhook, &front.addr(), "team/app", "v3", &v3) < 300);
    let expected: BTreeSet<&str> = [
        "ExploderDeadLetters",
        "ExploderQueueWithoutConsumers",
        "ExploderTargetDown",
        "ExploderRegistryRateLimited",
    ]
    .into();
    // The queue did grow; whether its deriv is positive yet is timing.
    let tolerated: BTreeSet<&str> = ["ExploderQueueGrowing"].into();
    let mut raised = BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        raised = prometheus
            .alerts()
            .into_iter()
            .filter(|(_, state)| state == "pending" || state == "firing")
            .map(|(name, _)| name)
            .collect::<BTreeSet<String>>();
        if expected.iter().all(|e| raised.contains(*e)) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let missing: Vec<&&str> = expected.iter().filter(|e| !raised.contains(**e)).collect();
    assert!(
        missing.is_empty(),
        "alerts not raised by the outage: {missing:?} (raised: {raised:?})"
    );
    let unexpected: Vec<&String> = raised
        .iter()
        .filter(|r| !expected.contains(r.as_str()) && !tolerated.contains(r.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "alerts raised that this outage does not explain: {unexpected:?}"
    );
}
