//! The ImageStream source against a test API server that speaks the real
//! list/watch protocol (resourceVersion, bookmarks, 410 Gone), with
//! ImageStreams in OpenShift's JSON shape pointing at a real registry.

use std::path::Path;
use std::time::Duration;

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

fn wait_until(what: &str, logs: &[&Path], done: impl FnMut() -> bool) {
    exploder_tests::wait_until(what, Duration::from_secs(60), logs, done);
}

/// A producer watching ImageStreams in `team` through `api`.
fn start_watching(
    fleet: &mut Fleet,
    api: &KubeApi,
    dir: &Path,
    store: &Path,
) -> std::path::PathBuf {
    start_watching_in(fleet, api, dir, store, Some("team")).1
}

/// A producer watching ImageStreams in `namespace` (or all) through `api`:
/// its webhook port (to kill it by) and its log (appended to by restarts).
fn start_watching_in(
    fleet: &mut Fleet,
    api: &KubeApi,
    dir: &Path,
    store: &Path,
    namespace: Option<&str>,
) -> (u16, std::path::PathBuf) {
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let log = dir.join(format!(
        "producer-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut args = vec![
        "--imagestreams",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    let port = fleet.start_producer(store, &log, &args, &[]);
    (port, log)
}

fn link(store: &Path, tag: &str) -> Option<String> {
    link_at(store, &format!("team/app/{tag}"))
}

fn link_at(store: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(store.join("images").join(path).join("link")).ok()
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

/// Streams and tags deleted while the producer was down are unlinked when
/// it comes back; what it did not link, and what still exists, stays.
fn deleted_while_down_are_unlinked_after_a_restart(namespace: Option<&str>) {
    let mut fleet = Fleet::new("irestart");
    fleet.apply_topology();
    let registry = Registry::start();
    let first = registry.push("team/app", "build-1", &image("first"));
    let gone = registry.push("team/gone", "build-1", &image("gone"));
    let other = registry.push("other/app", "build-1", &image("other ns"));
    let cli = registry.push("team/cli", "v1", &image("by hand"));
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let wlog = dir.path().join("worker.log");
    fleet.start_worker(store.path(), &wlog, &[]);
    // Linked by hand, in the same namespace: not the watch's to remove.
    exploder_tests::explode_ok(
        &format!("{}/team/cli:v1", registry.addr()),
        store.path(),
        &[],
    );
    let (port, plog) = start_watching_in(&mut fleet, &api, dir.path(), store.path(), namespace);
    api.apply(image_stream(
        "team",
        "app",
        &registry.addr(),
        &[("v1", &first), ("old", &first)],
    ));
    api.apply(image_stream(
        "team",
        "gone",
        &registry.addr(),
        &[("v1", &gone)],
    ));
    api.apply(image_stream(
        "other",
        "app",
        &registry.addr(),
        &[("v1", &other)],
    ));
    let watched_other = namespace.is_none();
    wait_until("every stream linked", &[&plog, &wlog], || {
        link_at(store.path(), "team/app/v1").is_some()
            && link_at(store.path(), "team/app/old").is_some()
            && link_at(store.path(), "team/gone/v1").is_some()
            && (!watched_other || link_at(store.path(), "other/app/v1").is_some())
    });

    fleet.kill_producer(port);
    // While nobody watches: a tag dropped, a stream deleted in each
    // namespace.
    api.apply(image_stream(
        "team",
        "app",
        &registry.addr(),
        &[("v1", &first)],
    ));
    api.delete("team", "gone");
    api.delete("other", "app");
    let (_, plog) = start_watching_in(&mut fleet, &api, dir.path(), store.path(), namespace);
    wait_until("the deleted tag and stream unlinked", &[&plog], || {
        link_at(store.path(), "team/app/old").is_none()
            && link_at(store.path(), "team/gone/v1").is_none()
            && (!watched_other || link_at(store.path(), "other/app/v1").is_none())
    });
    assert_eq!(
        link_at(store.path(), "team/app/v1").as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        link_at(store.path(), "team/cli/v1").as_deref(),
        Some(cli.as_str())
    );
    let history =
        std::fs::read_to_string(store.path().join("images/team/gone/v1/history")).unwrap();
    assert!(
        history.lines().last().unwrap().contains("unlinked") && history.contains("by=imagestream"),
        "{history}"
    );
}

#[test]
fn a_namespace_watch_restarted_unlinks_what_was_deleted_while_it_was_down() {
    deleted_while_down_are_unlinked_after_a_restart(Some("team"));
}

#[test]
fn an_all_namespaces_watch_restarted_unlinks_what_was_deleted_while_it_was_down() {
    deleted_while_down_are_unlinked_after_a_restart(None);
}

#[test]
fn an_annotated_imagestream_asks_for_disk_images() {
    let mut fleet = Fleet::new("iexport");
    fleet.apply_topology();
    let registry = Registry::start();
    let first = registry.push("team/app", "build-1", &image("first"));
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let plog = start_watching(&mut fleet, &api, dir.path(), store.path());
    let mut stream = image_stream("team", "app", &registry.addr(), &[("v1", &first)]);
    stream["metadata"]["annotations"] = serde_json::json!({"exploder.io/export": "ext4, erofs"});
    api.apply(stream);
    let mut jobs: Vec<Job> = Vec::new();
    wait_until("the image job for v1", &[&plog], || {
        jobs.extend(fleet.drain(JobKind::Image));
        !jobs.is_empty()
    });
    let Job::Image(job) = &jobs[0] else {
        panic!("{jobs:?}")
    };
    use exploder_common::store::DiskFormat;
    assert_eq!(job.exports, [DiskFormat::Ext4, DiskFormat::Erofs]);
    assert_eq!(job.decided_by, "imagestream");
}
