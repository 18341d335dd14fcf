//! The ImageStream source against a test API server that speaks the real
//! list/watch protocol (resourceVersion, bookmarks, 410 Gone), with
//! ImageStreams in OpenShift's JSON shape pointing at a real registry.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_common::job::{Job, JobKind};
use exploder_tests::fleet::Fleet;
use exploder_tests::kubeapi::{KubeApi, image_stream};
use exploder_tests::{Image, Layer, LayerBuilder, Registry};

fn image(content: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/content", content.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn wait_until(what: &str, logs: &[&Path], mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            panic!("{what}: not after 60 s\nlogs:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A producer watching ImageStreams in `team` through `api`.
fn start_watching(
    fleet: &mut Fleet,
    api: &KubeApi,
    dir: &Path,
    store: &Path,
) -> std::path::PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let log = dir.join("producer.log");
    fleet.start_producer(
        store,
        &log,
        &[
            "--imagestreams",
            "--namespace",
            "team",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        &[],
    );
    log
}

fn link(store: &Path, tag: &str) -> Option<String> {
    std::fs::read_to_string(store.join(format!("images/team/app/{tag}/link"))).ok()
}

#[test]
fn imagestream_tags_are_linked_moved_and_unlinked_with_the_stream() {
    let mut fleet = Fleet::new("istream");
    fleet.apply_topology();
    let registry = Registry::start();
    let first = registry.push("team/app", "build-1", &image("first"));
    let second = registry.push("team/app", "build-2", &image("second"));
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let wlog = dir.path().join("worker.log");
    fleet.start_worker(store.path(), &wlog, &[]);
    let plog = start_watching(&mut fleet, &api, dir.path(), store.path());
    let logs = [plog.as_path(), wlog.as_path()];

    api.apply(image_stream(
        "team",
        "app",
        &registry.addr(),
        &[("v1", &first), ("stable", &first)],
    ));
    wait_until("v1 and stable linked", &logs, || {
        link(store.path(), "v1").as_deref() == Some(first.as_str())
            && link(store.path(), "stable").as_deref() == Some(first.as_str())
    });

    // The tag moves to a new image; stable is dropped from the stream.
    api.apply(image_stream(
        "team",
        "app",
        &registry.addr(),
        &[("v1", &second)],
    ));
    wait_until("v1 moved, stable unlinked", &logs, || {
        link(store.path(), "v1").as_deref() == Some(second.as_str())
            && link(store.path(), "stable").is_none()
    });

    api.delete("team", "app");
    wait_until("the deleted stream's tags unlinked", &logs, || {
        link(store.path(), "v1").is_none()
    });
}

#[test]
fn a_relist_after_410_gone_re_explodes_nothing() {
    let mut fleet = Fleet::new("irelist");
    fleet.apply_topology();
    let registry = Registry::start();
    let first = registry.push("team/app", "build-1", &image("first"));
    let other = registry.push("team/app", "build-2", &image("other"));
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let plog = start_watching(&mut fleet, &api, dir.path(), store.path());
    let logs = [plog.as_path()];

    api.apply(image_stream(
        "team",
        "app",
        &registry.addr(),
        &[("v1", &first)],
    ));
    let mut jobs: Vec<Job> = Vec::new();
    wait_until("the image job for v1", &logs, || {
        jobs.extend(fleet.drain(JobKind::Image));
        !jobs.is_empty()
    });
    assert_eq!(jobs.len(), 1);

    // etcd compacted under a broken watch: the client's next watch gets
    // 410 Gone, and it lists everything again.
    let lists = api.lists();
    api.compact();
    wait_until("a relist", &logs, || api.lists() > lists);
    // A change after the relist proves the watch resumed; v1, unchanged,
    // must not have been enqueued again.
    api.apply(image_stream(
        "team",
        "app",
        &registry.addr(),
        &[("v1", &first), ("v2", &other)],
    ));
    let mut after: Vec<Job> = Vec::new();
    wait_until("the image job for v2", &logs, || {
        after.extend(fleet.drain(JobKind::Image));
        !after.is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    after.extend(fleet.drain(JobKind::Image));
    let tags: Vec<String> = after
        .iter()
        .flat_map(|j| match j {
            Job::Image(i) => i.links.iter().map(|l| l.tag.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        tags,
        ["v2"],
        "only the new tag is enqueued after the relist"
    );
}
