//! A webhook event whose reconcile kills the producer that takes it
//! (issue 26, item 12): the producers count its redeliveries as workers
//! count a job's, and past the delivery limit it goes to the dead-letter
//! queue with the reason, instead of crash-looping every producer with
//! every later event waiting behind it. `exploder dlq` lists it and
//! replays it to the events queue.
//!
//! The crash is a failpoint (`EXPLODER_FAILPOINT=reconcile.event=<link>`):
//! the producer SIGKILLs itself when it reconciles that one link, as an
//! OOM kill or a panic a payload triggers would end it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, free_port, run_exploder, wait_until};

const TOKEN: &str = "webhook-token-for-poison";
const POISON: &str = "reconcile.event=team/poison:v1";

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn push_event(registry: &str, repo: &str, digest: &str) -> String {
    format!(
        r#"{{"events":[{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"{repo}","url":"http://{registry}/v2/{repo}/manifests/{digest}","tag":"v1"}},"request":{{"host":"{registry}"}}}}]}}"#
    )
}

/// Posts to the registry endpoint: the status and answer, or `None` when
/// the producer died before answering.
fn post(port: u16, body: &str) -> Option<(u16, String)> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let mut resp = agent
        .post(format!("http://127.0.0.1:{port}/webhook/registry"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_to_string().unwrap_or_default()))
}

/// Producers of one fleet, started and watched by the test itself (the
/// harness's `start_producer` fails when a producer dies before it
/// listens, which is what these do); killed on drop.
struct Producers<'a> {
    fleet: &'a Fleet,
    store: &'a Path,
    logs: &'a Path,
    running: Vec<Child>,
}

impl Producers<'_> {
    /// Starts one with `env`; returns its port and log.
    fn start(&mut self, env: &[(&str, &str)]) -> (u16, PathBuf) {
        let port = free_port();
        let log = self.logs.join(format!("p{}.log", self.running.len() + 1));
        let child = Command::new(exploder_tests::exploder_producer_bin())
            .env_remove("EXPLODER_WEBHOOK_TOKEN")
            .env("EXPLODER_WEBHOOK_ANSWER_WITHIN_MS", "30000")
            .envs(env.iter().copied())
            .args(["--amqp-url", &self.fleet.amqp])
            .args(["--redis-url", &self.fleet.redis])
            .args(["--prefix", &self.fleet.prefix])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--store")
            .arg(self.store)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn exploder-producer");
        self.running.push(child);
        (port, log)
    }

    /// Whether the last one started has exited.
    fn last_exited(&mut self) -> bool {
        let last = self.running.last_mut().expect("one started");
        last.try_wait().unwrap().is_some()
    }

    fn kill_last(&mut self) {
        let last = self.running.last_mut().expect("one started");
        let _ = last.kill();
        let _ = last.wait();
    }
}

impl Drop for Producers<'_> {
    fn drop(&mut self) {
        for c in &mut self.running {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The dead letters that are webhook events, as `exploder dlq list -o json`
/// shows them.
fn dead_events(fleet: &Fleet) -> Vec<serde_json::Value> {
    let out = run_exploder([
        "dlq",
        "list",
        "-o",
        "json",
        "--amqp-url",
        &fleet.amqp,
        "--prefix",
        &fleet.prefix,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter().filter(|l| l["kind"] == "event").collect()
}

fn requested(store: &Path, link: &str) -> bool {
    std::fs::read_dir(store.join("requests"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .any(|r| r.contains(&format!(r#""link": "{link}""#)))
        })
        .unwrap_or(false)
}

#[test]
fn an_event_that_kills_every_producer_is_dead_lettered_after_the_limit_and_replayable() {
    let store = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let poison = registry.push("team/poison", "v1", &image("poison"));
    let fine = registry.push("team/fine", "v1", &image("fine"));
    let fleet = Fleet::new("poison");
    fleet.apply_topology();
    let env = |failpoint: &str| {
        vec![
            ("EXPLODER_WEBHOOK_TOKEN", TOKEN.to_string()),
            ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", registry.addr()),
            ("EXPLODER_DELIVERY_LIMIT", "2".to_string()),
            ("EXPLODER_FAILPOINT", failpoint.to_string()),
        ]
    };
    let armed = env(POISON);
    let armed: Vec<(&str, &str)> = armed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut producers = Producers {
        fleet: &fleet,
        store: store.path(),
        logs: logs.path(),
        running: Vec::new(),
    };
    let (port, log) = producers.start(&armed);
    wait_until(
        "the producer listening",
        Duration::from_secs(30),
        &[&log],
        || listening(port),
    );

    // Recorded before it is reconciled; the producer dies reconciling it,
    // so there may be no answer.
    let _ = post(port, &push_event(&registry.addr(), "team/poison", &poison));
    // Every producer that takes it dies, until the producers' count of its
    // redeliveries passes the limit (2): then the one that took it
    // dead-letters it, and lives.
    let mut crashes = 0;
    let (mut port, mut log) = (port, log);
    wait_until(
        "the poison event dead-lettered",
        Duration::from_secs(180),
        &[],
        || {
            if !dead_events(&fleet).is_empty() {
                return true;
            }
            if producers.last_exited() {
                crashes += 1;
                assert!(
                    crashes <= 10,
                    "still crash-looping after {crashes} producers"
                );
                (port, log) = producers.start(&armed);
            }
            false
        },
    );
    assert_eq!(crashes, 3, "one crash per delivery up to the limit");
    wait_until(
        "the producer listening",
        Duration::from_secs(30),
        &[&log],
        || listening(port),
    );
    let dead = dead_events(&fleet);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("delivery limit: interrupted 3 times") && reason.contains("producer"),
        "{reason}"
    );
    assert_eq!(
        dead[0]["queue"],
        format!("{}exploder.events", fleet.prefix),
        "{dead:?}"
    );
    assert!(!requested(store.path(), "team/poison:v1"));

    // Later events are handled (by the producer that dead-lettered it).
    let (status, answer) = post(port, &push_event(&registry.addr(), "team/fine", &fine))
        .unwrap_or_else(|| {
            panic!(
                "the producer died: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");

    // Once the cause is fixed (a producer without the failpoint), the
    // replay puts the event back in the events queue and it is reconciled.
    producers.kill_last();
    let unarmed = env("");
    let unarmed: Vec<(&str, &str)> = unarmed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (port, log) = producers.start(&unarmed);
    wait_until(
        "the producer listening",
        Duration::from_secs(30),
        &[&log],
        || listening(port),
    );
    let out = run_exploder([
        "dlq",
        "replay",
        "--all",
        "--amqp-url",
        &fleet.amqp,
        "--prefix",
        &fleet.prefix,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the replayed event reconciled",
        Duration::from_secs(60),
        &[&log],
        || requested(store.path(), "team/poison:v1"),
    );
    assert!(dead_events(&fleet).is_empty());
}
