//! The resync's passes (`exploder_queue::resync`) on the real RabbitMQ and
//! Redis: what one pass does when more requests need work than its batch.
//! The lease's renewal during a pass is specified beside the code (unit
//! tests of `resync::while_held`), the pass's metrics in `telemetry.rs`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use exploder_common::job::{self, Job};
use exploder_common::store::StoreLayout;
use exploder_queue::connect::connect;
use exploder_queue::fanout::FanOut;
use exploder_queue::publish::Publisher;
use exploder_queue::resync::{self, Bounds, Cursor, IndexLease};
use exploder_queue::topology::Topology;
use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry};

/// Makes every request in the store look abandoned: published and last
/// seen an hour ago (as if its messages were lost long since).
fn age_requests(store: &Path) {
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for entry in std::fs::read_dir(store.join("requests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let mut request: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        request["published_at"] = "2000-01-01T00:00:00Z".into();
        std::fs::write(&path, serde_json::to_vec(&request).unwrap()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }
}

/// Seven abandoned requests, a batch of three: the first pass re-drives
/// three and leaves four, the next goes on where it stopped (three more,
/// one left), the third re-drives the last and starts over next time.
/// Every request is re-driven once, none twice.
#[test]
fn a_pass_bounded_by_its_batch_resumes_where_it_stopped() {
    let fleet = Fleet::new("resyncbatch");
    fleet.apply_topology();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.file("etc/x", b"x", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    let tags: Vec<String> = (1..=7).map(|i| format!("v{i}")).collect();
    let references: Vec<String> = tags
        .iter()
        .map(|t| {
            registry.push("team/app", t, &image);
            format!("{}/team/app:{t}", registry.addr())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<&str> = references[1..].iter().map(String::as_str).collect();
    let out = fleet.enqueue_with(&references[0], dir.path(), &refs);
    assert!(out.status.success());
    // Lost: every message, and the image jobs Redis keeps for the fan-in.
    fleet.drain(job::JobKind::Image);
    fleet.drain(job::JobKind::Layer);
    fleet.forget_image_jobs();
    age_requests(dir.path());

    let index = fleet.index();
    let store = StoreLayout::new(dir.path());
    let passes = fleet.rt.block_on(async {
        let conn = connect(&fleet.amqp, Duration::from_secs(30)).await.unwrap();
        let publisher = Publisher::open(&conn, Topology::new(&fleet.prefix))
            .await
            .unwrap();
        let fanout = FanOut {
            publisher: &publisher,
            index: &index,
            store: &store,
        };
        let lease = IndexLease {
            index: &index,
            token: "this-test",
            ttl: Duration::from_secs(60),
        };
        assert!(
            index
                .hold_lease(resync::LEASE, "this-test", lease.ttl)
                .await
                .unwrap()
        );
        let bounds = Bounds {
            after: Duration::from_secs(600),
            batch: 3,
        };
        let mut cursor = Cursor::default();
        let mut passes = Vec::new();
        for _ in 0..3 {
            let pass = resync::pass(&fanout, bounds, &cursor, &lease)
                .await
                .unwrap();
            assert!(pass.error.is_none(), "{:?}", pass.error);
            passes.push((pass.redriven, pass.deferred, pass.summary.outstanding));
            cursor = pass.next;
        }
        assert!(cursor.at_start(), "the backlog is done: start over");
        passes
    });
    assert_eq!(passes, [(3, 4, 7), (3, 1, 7), (1, 0, 7)]);
    let mut relinked: Vec<String> = fleet
        .drain(job::JobKind::Image)
        .iter()
        .map(|j| match j {
            Job::Image(ij) => ij.links[0].tag.clone(),
            other => panic!("not an image job: {other:?}"),
        })
        .collect();
    relinked.sort();
    assert_eq!(relinked, tags, "each request's image job, once");
}

/// Not a test but a measure (issue 25): one pass over many abandoned
/// requests (`EXPLODER_BENCH_REQUESTS`, default 10,000), with the default
/// batch. Prints how long it took; asserts only that it re-drove them all.
///
/// `cargo nextest run -p exploder-tests --test resync --run-ignored only
/// resync_rate --no-capture`
#[test]
#[ignore = "a measure, not a test"]
fn resync_rate() {
    let count: usize = std::env::var("EXPLODER_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let fleet = Fleet::new("resyncrate");
    fleet.apply_topology();
    let registry = Registry::start();
    let mut b = LayerBuilder::new();
    b.file("etc/x", b"x", 0o644);
    let image = Image::oci().layer(Layer::gzip(b.build()));
    registry.push("team/app", "v0", &image);
    let dir = tempfile::tempdir().unwrap();
    fleet.enqueue_ok(&format!("{}/team/app:v0", registry.addr()), dir.path());
    let store = StoreLayout::new(dir.path());
    // The one request, copied to `count - 1` more links (a fresh job id
    // each), written from a few threads: each write is fsynced.
    let (requests, _) = exploder_common::request::list(&store).unwrap();
    let template = requests[0].job.clone();
    let threads = 8;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (store, template) = (&store, &template);
            s.spawn(move || {
                for i in (1 + t..count).step_by(threads) {
                    let mut job = template.clone();
                    job.id = job::new_job_id();
                    job.links[0].tag = format!("t{i}");
                    exploder_common::request::record(store, &job).unwrap();
                }
            });
        }
    });
    fleet.drain(job::JobKind::Image);
    fleet.drain(job::JobKind::Layer);
    age_requests(dir.path());

    let index = fleet.index();
    let peak_before = peak_rss_kib();
    let pass = fleet.rt.block_on(async {
        let conn = connect(&fleet.amqp, Duration::from_secs(30)).await.unwrap();
        let publisher = Publisher::open(&conn, Topology::new(&fleet.prefix))
            .await
            .unwrap();
        let fanout = FanOut {
            publisher: &publisher,
            index: &index,
            store: &store,
        };
        let lease = IndexLease {
            index: &index,
            token: "this-test",
            ttl: Duration::from_secs(180),
        };
        let bounds = Bounds {
            after: Duration::from_secs(600),
            batch: resync::DEFAULT_BATCH,
        };
        resync::pass(&fanout, bounds, &Cursor::default(), &lease)
            .await
            .unwrap()
    });
    assert!(pass.error.is_none(), "{:?}", pass.error);
    let peak_after = peak_rss_kib();
    eprintln!(
        "resync_rate: {} requests re-driven in {:.2?}: {:.0}/s ({} image jobs, {} layer jobs, \
         {} renewals, {} deferred); this process's peak RSS {} MiB before the pass, {} MiB after",
        pass.redriven,
        pass.elapsed,
        pass.redriven as f64 / pass.elapsed.as_secs_f64(),
        pass.image_jobs,
        pass.layer_jobs,
        pass.renewals,
        pass.deferred,
        peak_before / 1024,
        peak_after / 1024,
    );
    assert_eq!(pass.redriven, count.min(resync::DEFAULT_BATCH));
    assert_eq!(fleet.drain(job::JobKind::Image).len(), pass.image_jobs);
}

/// This process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Who holds the fleet's resync lease (`None`: nobody).
fn resync_holder(fleet: &Fleet) -> Option<String> {
    let client = redis::Client::open(fleet.redis.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("GET")
        .arg(format!("{}exploder:lease:{}", fleet.prefix, resync::LEASE))
        .query(&mut conn)
        .unwrap()
}

/// A worker stopped on purpose (SIGTERM: a rolling restart) gives the
/// resync lease back, so that the next worker's pass does not wait for the
/// rest of the lease (three intervals).
#[test]
fn a_worker_stopped_on_purpose_gives_the_resync_lease_back() {
    let mut fleet = Fleet::new("leaseback");
    fleet.apply_topology();
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let pid = fleet.start_worker(store.path(), &log, &["--resync-interval", "1s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while resync_holder(&fleet).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never took the resync lease:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = fleet.terminate_worker(pid, Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert_eq!(resync_holder(&fleet), None);
}
