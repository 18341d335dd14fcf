//! `exploder enqueue`: the fan-out publishes exactly one job per missing
//! layer and one image job, confirmed, after recording what the image waits
//! for in Redis. Real RabbitMQ and Redis; each test has its own prefix.

use exploder_common::digest::Digest;
use exploder_common::job::{self, Job};
use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, explode_ok};

fn two_layer_image() -> Image {
    let mut base = LayerBuilder::new();
    base.dir("etc", 0o755).file("etc/base", b"base", 0o644);
    let mut top = LayerBuilder::new();
    top.file("etc/top", b"top", 0o644);
    Image::oci()
        .layer(Layer::gzip(base.build()))
        .layer(Layer::gzip(top.build()))
}

#[test]
fn one_job_per_missing_layer_and_one_image_job() {
    let fleet = Fleet::new("fanout");
    fleet.apply_topology();
    let image = two_layer_image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let out = fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed[0]["result"]["manifest_digest"],
        image.manifest_digest()
    );

    let layers = fleet.drain(job::JobKind::Layer);
    let mut diff_ids: Vec<String> = layers
        .iter()
        .map(|j| match j {
            Job::Layer(l) => {
                assert_eq!(l.source.repository(), "team/app");
                l.diff_id.to_string()
            }
            other => panic!("not a layer job: {other:?}"),
        })
        .collect();
    diff_ids.sort();
    let mut expected = image.diff_ids();
    expected.sort();
    assert_eq!(diff_ids, expected);

    let images = fleet.drain(job::JobKind::Image);
    assert_eq!(images.len(), 1);
    let Job::Image(ij) = &images[0] else { panic!() };
    assert_eq!(ij.manifest_digest.to_string(), image.manifest_digest());
    assert_eq!(ij.links[0].to_string(), "team/app:v1");
    assert_eq!(ij.layers.len(), 2);
    assert_eq!(ij.id, printed[0]["result"]["image_job"]);

    // Recorded before the layer jobs went out: what the image waits for.
    let manifest: Digest = image.manifest_digest().parse().unwrap();
    let pending: Vec<String> = fleet
        .rt
        .block_on(fleet.index().pending(&manifest))
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(pending, expected);
}

#[test]
fn layers_the_store_has_get_no_job_and_are_reindexed() {
    let fleet = Fleet::new("present");
    fleet.apply_topology();
    let image = two_layer_image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/app:v1", registry.addr());
    explode_ok(&reference, store.path(), &[]);
    fleet.enqueue_ok(&reference, store.path());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());
    assert_eq!(fleet.drain(job::JobKind::Image).len(), 1);
    let index = fleet.index();
    for d in image.diff_ids() {
        let d: Digest = d.parse().unwrap();
        assert!(
            fleet.rt.block_on(index.is_ingested(&d)).unwrap(),
            "{d} not re-indexed"
        );
    }
}

#[test]
fn enqueue_without_a_topology_fails_and_says_what_to_run() {
    let fleet = Fleet::new("notopo");
    let registry = Registry::start();
    registry.push("team/app", "v1", &two_layer_image());
    let store = tempfile::tempdir().unwrap();
    let out = fleet.enqueue(&format!("{}/team/app:v1", registry.addr()), store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exploder topology apply"), "{err}");
}

/// References are resolved concurrently but reported, and enqueued, in
/// the order given; one that cannot be resolved fails alone.
#[test]
fn several_references_are_reported_in_order_and_a_bad_one_fails_alone() {
    let fleet = Fleet::new("several");
    fleet.apply_topology();
    let registry = Registry::start();
    let image = two_layer_image();
    registry.push("team/a", "v1", &image);
    registry.push("team/c", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    let r = |repo: &str| format!("{}/{repo}:v1", registry.addr());
    let (a, b, c) = (r("team/a"), r("team/missing"), r("team/c"));
    let out = fleet.enqueue_with(&a, store.path(), &[&b, &c]);
    assert_eq!(out.status.code(), Some(1), "one reference failed");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<(&str, bool)> = printed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["reference"].as_str().unwrap(), e["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        order,
        [(a.as_str(), true), (b.as_str(), false), (c.as_str(), true)]
    );
    assert!(
        printed[1]["error"]
            .as_str()
            .unwrap()
            .contains("team/missing"),
        "the error names the repository: {}",
        printed[1]
    );
    // Both good references got their image job (same manifest, two links).
    assert_eq!(fleet.drain(job::JobKind::Image).len(), 2);
}

/// A namespace's quota counts each layer once across its linked images:
/// an image that shares its base with one already linked fits where a
/// same-sized stranger would not.
#[test]
fn an_image_over_its_namespace_quota_is_refused_before_any_job() {
    let fleet = Fleet::new("quota");
    fleet.apply_topology();
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let layer = |name: &str, bytes: usize| {
        let mut b = LayerBuilder::new();
        let content: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        b.dir("etc", 0o755)
            .file(format!("etc/{name}"), content, 0o644);
        Layer::gzip(b.build())
    };
    let base = layer("base", 50_000);
    let first = Image::oci().layer(base.clone());
    registry.push("team/first", "v1", &first);
    explode_ok(
        &format!("{}/team/first:v1", registry.addr()),
        store.path(),
        &[],
    );
    let small = layer("small", 1_000);
    let sharing = Image::oci().layer(base.clone()).layer(small.clone());
    registry.push("team/sharing", "v1", &sharing);
    let stranger = Image::oci()
        .layer(layer("big", 50_000))
        .layer(layer("big2", 60_000));
    registry.push("team/stranger", "v1", &stranger);
    // Exactly room for the base (linked already) and the small layer.
    let quota = format!("team={}", base.blob().len() + small.blob().len());

    let out = fleet.enqueue_with(
        &format!("{}/team/stranger:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quota"), "{err}");
    assert!(fleet.drain(job::JobKind::Image).is_empty());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());

    let out = fleet.enqueue_with(
        &format!("{}/team/sharing:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fleet.drain(job::JobKind::Image).len(), 1);
}

/// Images in flight count against the quota: with room for one image,
/// the second enqueued before any worker ran is refused.
#[test]
fn images_in_flight_count_against_the_quota() {
    let fleet = Fleet::new("quotaflight");
    fleet.apply_topology();
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let layer = |name: &str| {
        let mut b = LayerBuilder::new();
        let content: Vec<u8> = (0..40_000).map(|i| (i * 13 % 251) as u8).collect();
        b.dir("etc", 0o755)
            .file(format!("etc/{name}"), content, 0o644);
        Layer::gzip(b.build())
    };
    let (one, two) = (layer("one"), layer("two"));
    // Room for one of the two layers, not both.
    let quota = format!("team={}", one.blob().len().max(two.blob().len()) + 100);
    registry.push("team/one", "v1", &Image::oci().layer(one));
    registry.push("team/two", "v1", &Image::oci().layer(two));
    let out = fleet.enqueue_with(
        &format!("{}/team/one:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing is linked yet: only the request counts the first image.
    let out = fleet.enqueue_with(
        &format!("{}/team/two:v1", registry.addr()),
        store.path(),
        &["--quota", &quota],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over its quota"), "{err}");
}

/// A tag linked to one registry's image is not requested for another's:
/// refused before any job, with the way out.
#[test]
fn an_image_of_another_registry_at_a_linked_tag_is_refused_before_any_job() {
    let fleet = Fleet::new("otherreg");
    fleet.apply_topology();
    let (one, two) = (Registry::start(), Registry::start());
    let image = |content: &str| {
        let mut b = LayerBuilder::new();
        b.dir("etc", 0o755).file("etc/c", content.as_bytes(), 0o644);
        Image::oci().layer(Layer::gzip(b.build()))
    };
    one.push("team/app", "v1", &image("one"));
    two.push("team/app", "v1", &image("two"));
    let store = tempfile::tempdir().unwrap();
    explode_ok(&format!("{}/team/app:v1", one.addr()), store.path(), &[]);
    let out = fleet.enqueue(&format!("{}/team/app:v1", two.addr()), store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--registry-path") && err.contains(&two.addr()),
        "{err}"
    );
    assert!(fleet.drain(job::JobKind::Image).is_empty());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());
    assert!(
        !store.path().join("requests").exists()
            || std::fs::read_dir(store.path().join("requests"))
                .unwrap()
                .count()
                == 0
    );
}

/// A blocked image (`exploder block`) is refused before anything is
/// recorded or published, with the reason.
#[test]
fn a_blocked_image_is_refused_before_any_job_with_the_reason() {
    let fleet = Fleet::new("blocked");
    fleet.apply_topology();
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &two_layer_image());
    let store = tempfile::tempdir().unwrap();
    exploder_tests::block_ok(store.path(), &digest, "CVE-2026-1234");
    let out = fleet.enqueue(&format!("{}/team/app:v1", registry.addr()), store.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CVE-2026-1234") && err.contains(&digest),
        "{err}"
    );
    assert!(fleet.drain(job::JobKind::Image).is_empty());
    assert!(fleet.drain(job::JobKind::Layer).is_empty());
    assert!(!store.path().join("requests").exists());
}

/// An image blocked after its jobs were published: the worker refuses its
/// image job — dead-lettered with the reason, never retried, nothing
/// linked.
#[test]
fn the_image_job_of_an_image_blocked_since_is_dead_lettered_with_the_reason() {
    let mut fleet = Fleet::new("blockedjob");
    fleet.apply_topology();
    let registry = Registry::start();
    let digest = registry.push("team/app", "v1", &two_layer_image());
    let store = tempfile::tempdir().unwrap();
    fleet.enqueue_ok(&format!("{}/team/app:v1", registry.addr()), store.path());
    exploder_tests::block_ok(store.path(), &digest, "CVE-2026-1234");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    fleet.start_worker(store.path(), &log, &[]);
    let mut dead = Vec::new();
    exploder_tests::wait_until(
        "the image job in the dead-letter queue",
        std::time::Duration::from_secs(60),
        &[&log],
        || {
            dead = fleet.peek_dead();
            !dead.is_empty()
        },
    );
    // The copy the fan-in publishes when the last layer lands may follow
    // the first: each is refused the same way.
    for (job, reason) in &dead {
        assert!(matches!(job, Some(Job::Image(_))), "{job:?}");
        assert!(
            reason.contains("blocked") && reason.contains("CVE-2026-1234"),
            "{reason}"
        );
    }
    assert!(!store.path().join("images/team/app/v1/link").exists());
    let status = fleet.status(store.path());
    assert_eq!(status["requests"]["failed"], 1, "{status}");
}

/// Many references in one command, ten times as many as are worked on at
/// once: every one becomes its jobs, and the output lists them in the
/// order given, whatever order they were published in.
#[test]
fn many_references_all_become_jobs_and_are_reported_in_the_order_given() {
    let fleet = Fleet::new("many");
    fleet.apply_topology();
    let registry = Registry::start();
    let image = two_layer_image();
    let tags: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    for tag in &tags {
        registry.push("team/app", tag, &image);
    }
    let references: Vec<String> = tags
        .iter()
        .map(|t| format!("{}/team/app:{t}", registry.addr()))
        .collect();
    let store = tempfile::tempdir().unwrap();
    let mut extra: Vec<&str> = references[1..].iter().map(String::as_str).collect();
    extra.extend(["--jobs", "4"]);
    let out = fleet.enqueue_with(&references[0], store.path(), &extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<&str> = printed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reference"].as_str().unwrap())
        .collect();
    assert_eq!(order, references);

    let mut links: Vec<String> = fleet
        .drain(job::JobKind::Image)
        .iter()
        .map(|j| match j {
            Job::Image(ij) => ij.links[0].to_string(),
            other => panic!("not an image job: {other:?}"),
        })
        .collect();
    links.sort();
    let expected: Vec<String> = tags.iter().map(|t| format!("team/app:{t}")).collect();
    assert_eq!(links, expected, "one image job per reference");
    // No worker ran: every reference found both layers missing.
    assert_eq!(fleet.drain(job::JobKind::Layer).len(), 2 * tags.len());
}

/// Two references to one link in one command (the same repository and
/// tag on two registries): they are decided in the order given, so the
/// later one is what the store's request asks for, as if enqueued one
/// after the other.
#[test]
fn two_references_to_one_link_are_decided_in_the_order_given() {
    let fleet = Fleet::new("samelink");
    fleet.apply_topology();
    let (first, second) = (Registry::start(), Registry::start());
    let older = two_layer_image();
    let mut b = LayerBuilder::new();
    b.file("etc/newer", b"newer", 0o644);
    let newer = Image::oci().layer(Layer::gzip(b.build()));
    first.push("team/app", "v1", &older);
    second.push("team/app", "v1", &newer);
    let store = tempfile::tempdir().unwrap();
    let out = fleet.enqueue_with(
        &format!("{}/team/app:v1", first.addr()),
        store.path(),
        &[&format!("{}/team/app:v1", second.addr())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: Vec<_> = std::fs::read_dir(store.path().join("requests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(requests.len(), 1, "one request per link");
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&requests[0]).unwrap()).unwrap();
    assert_eq!(request["manifest"], newer.manifest_digest());
}

/// A TCP relay to the broker that goes quiet towards the client once the
/// client publishes: the broker gets every message, the publisher never
/// hears back (a partition, or a broker blocking publishers).
struct MuteAfterPublish {
    addr: String,
}

impl MuteAfterPublish {
    fn start(broker: &str) -> MuteAfterPublish {
        use std::io::{Read, Write};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let broker = broker.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut server = std::net::TcpStream::connect(&broker).unwrap();
                let muted = Arc::new(AtomicBool::new(false));
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let m = muted.clone();
                // Client to broker: relayed; a basic.publish (class 60,
                // method 40) in a method frame mutes the way back.
                std::thread::spawn(move || {
                    let mut header = [0u8; 8];
                    if client.read_exact(&mut header).is_err() || s2.write_all(&header).is_err() {
                        return;
                    }
                    loop {
                        let mut head = [0u8; 7];
                        if client.read_exact(&mut head).is_err() {
                            return;
                        }
                        let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
                        let mut rest = vec![0u8; size + 1];
                        if client.read_exact(&mut rest).is_err() {
                            return;
                        }
                        if head[0] == 1 && size >= 4 && rest[0..4] == [0, 60, 0, 40] {
                            m.store(true, Ordering::SeqCst);
                        }
                        if s2.write_all(&head).is_err() || s2.write_all(&rest).is_err() {
                            return;
                        }
                    }
                });
                // Broker to client: relayed until muted, then swallowed.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !muted.load(Ordering::SeqCst) && c2.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        MuteAfterPublish { addr }
    }
}

/// Pipelined publishes keep the publisher's deadline: confirms that do not
/// come fail every send awaited, with the deadline and what to look at,
/// rather than hang.
#[test]
fn pipelined_publishes_the_broker_does_not_confirm_fail_at_the_deadline() {
    use exploder_common::image::{Compression, Layer as ImageLayer};
    use exploder_common::job::{JobSource, LayerJob};
    use exploder_queue::publish::{PublishError, Publisher, confirm_all};
    use exploder_queue::topology::Topology;
    use std::time::Duration;

    let fleet = Fleet::new("unconfirmed");
    fleet.apply_topology();
    let relay = MuteAfterPublish::start("127.0.0.1:5672");
    let url = format!("amqp://guest:guest@{}/%2f", relay.addr);
    let digest = |i: u8| -> Digest {
        format!("sha256:{}", format!("{i:02x}").repeat(32))
            .parse()
            .unwrap()
    };
    let layers: Vec<ImageLayer> = (0..3)
        .map(|i| ImageLayer {
            digest: digest(i),
            diff_id: digest(i + 10),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 1,
            compression: Compression::Gzip,
        })
        .collect();
    let outcome = fleet.rt.block_on(async {
        let conn = exploder_queue::connect::connect(&url, Duration::from_secs(10))
            .await
            .unwrap();
        let within = Duration::from_secs(2);
        let publisher = Publisher::open_with(&conn, Topology::new(&fleet.prefix), within)
            .await
            .unwrap();
        let mut sent = Vec::new();
        for layer in &layers {
            let job = Job::Layer(LayerJob::new(
                layer,
                JobSource::Registry {
                    registry: "127.0.0.1:1".into(),
                    repository: "team/app".into(),
                },
            ));
            sent.push(publisher.send(&job).await.unwrap());
        }
        let first = sent[0].id().to_string();
        (confirm_all(sent).await, first, within)
    });
    let (result, first, within) = outcome;
    match result {
        Err(e @ PublishError::Unconfirmed { .. }) => {
            let PublishError::Unconfirmed { id, within: w } = &e else {
                unreachable!()
            };
            assert_eq!((id.as_str(), *w), (first.as_str(), within));
            let message = e.to_string();
            assert!(
                message.contains("did not confirm") && message.contains("rabbitmqctl status"),
                "{message}"
            );
        }
        other => panic!("expected an unconfirmed publish, got {other:?}"),
    }
}

/// Not a test but a measure (issue 25): references a second that one
/// `exploder enqueue` takes, for small images on a loopback registry, no
/// worker running. Prints the figure; asserts only that all went out.
///
/// `cargo nextest run -p exploder-tests --test enqueue --run-ignored only
/// enqueue_rate --no-capture`; `EXPLODER_BENCH_REFS` (default 500),
/// `EXPLODER_BENCH_BIN` (another build of `exploder`, to compare),
/// `EXPLODER_BENCH_ARGS` (extra flags, space-separated),
/// `EXPLODER_BENCH_WRAP` (a command to run it under, e.g. a profiler).
#[test]
#[ignore = "a measure, not a test"]
fn enqueue_rate() {
    let count: usize = std::env::var("EXPLODER_BENCH_REFS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let bin = std::env::var("EXPLODER_BENCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| exploder_tests::exploder_bin());
    let extra = std::env::var("EXPLODER_BENCH_ARGS").unwrap_or_default();
    let fleet = Fleet::new("rate");
    fleet.apply_topology();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.file("etc/x", b"x", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let references: Vec<String> = (0..count)
        .map(|i| {
            let tag = format!("t{i}");
            registry.store_directly("team/app", &tag, &image);
            format!("{}/team/app:{tag}", registry.addr())
        })
        .collect();
    let store = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    // EXPLODER_BENCH_WRAP: a command to run it under (`perf record -g`).
    let wrap = std::env::var("EXPLODER_BENCH_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut command = match wrap.next() {
        Some(program) => {
            let mut c = std::process::Command::new(program);
            c.args(wrap).arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    let out = command
        .arg("enqueue")
        .args(&references)
        .args(["--amqp-url", &fleet.amqp, "--redis-url", &fleet.redis])
        .args(["--prefix", &fleet.prefix, "--store"])
        .arg(store.path())
        .args(extra.split_whitespace())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fleet.drain(job::JobKind::Image).len(), count);
    let requests = registry
        .log()
        .lines()
        .filter(|l| l.contains("\"GET ") || l.contains("\"HEAD "))
        .count();
    eprintln!(
        "enqueue_rate: {count} references in {took:.2?}: {:.0} refs/s, {requests} registry requests ({})",
        count as f64 / took.as_secs_f64(),
        bin.display()
    );
}
