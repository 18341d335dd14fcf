//! Several producer replicas: with a Lease, exactly one runs the poll (and
//! watch) sources; when it dies, another takes over.

use std::path::Path;
use std::time::{Duration, Instant};

use exploder_tests::Registry;
use exploder_tests::fleet::Fleet;
use exploder_tests::kubeapi::KubeApi;

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn one_replica_polls_at_a_time_and_another_takes_over_when_it_dies() {
    let mut fleet = Fleet::new("leader");
    fleet.apply_topology();
    let registry = Registry::start();
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let config = dir.path().join("exploder.yaml");
    std::fs::write(
        &config,
        format!(
            "poll:\n  interval_seconds: 1\n  jitter: 0\n  watch:\n    - registry: {}\n      repositories: [team/app]\n",
            registry.addr()
        ),
    )
    .unwrap();
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let log = dir.path().join(format!("{name}.log"));
        let port = fleet.start_producer(
            store.path(),
            &log,
            &[
                "--config",
                config.to_str().unwrap(),
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
            ],
            &[
                ("EXPLODER_LEASE_NAME", "exploder-producer"),
                ("EXPLODER_POD_NAME", name),
                ("EXPLODER_POD_NAMESPACE", "team"),
            ],
        );
        replicas.push((name, port, log));
    }
    wait_until("a leader", Duration::from_secs(30), || {
        api.lease_holder("team", "exploder-producer").is_some()
    });
    let leader = api.lease_holder("team", "exploder-producer").unwrap();
    let (l, f) = if leader == "replica-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    wait_until("the leader polls", Duration::from_secs(30), || {
        log(&replicas[l].2).contains("poll scan done")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !log(&replicas[f].2).contains("poll scan done"),
        "the follower polled too:\n{}",
        log(&replicas[f].2)
    );

    fleet.kill_producer(replicas[l].1);
    let follower = replicas[f].0;
    wait_until(
        "the follower takes the lease",
        Duration::from_secs(60),
        || api.lease_holder("team", "exploder-producer").as_deref() == Some(follower),
    );
    wait_until("the new leader polls", Duration::from_secs(30), || {
        log(&replicas[f].2).contains("poll scan done")
    });
}
