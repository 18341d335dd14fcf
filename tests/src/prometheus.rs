//! A real Prometheus (Debian's `prometheus`) scraping a test fleet with
//! the repository's own configuration and alert rules, asked through its
//! HTTP API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where each scrape job of `compose/prometheus/prometheus.yml` finds its
/// targets on loopback (the compose file names services on its network).
pub struct Targets {
    pub producer: String,
    pub workers: Vec<String>,
    pub rabbitmq: String,
}

/// `compose/prometheus/prometheus.yml` with its targets moved to loopback
/// and its intervals shortened to `interval`; everything else (jobs,
/// metrics paths, rule files) as shipped, so a renamed job or path fails
/// here as it would in production.
pub fn compose_config(compose: &str, targets: &Targets, own: &str, interval: &str) -> String {
    let quoted = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|t| format!("\"{t}\"")).collect();
        format!("[{}]", items.join(", "))
    };
    let mut out = compose
        .replace(
            "scrape_interval: 15s",
            &format!("scrape_interval: {interval}"),
        )
        .replace(
            "evaluation_interval: 15s",
            &format!("evaluation_interval: {interval}"),
        )
        .replace(
            "[\"producer:9100\"]",
            &quoted(std::slice::from_ref(&targets.producer)),
        )
        .replace(
            "[\"rabbitmq:15692\"]",
            &quoted(std::slice::from_ref(&targets.rabbitmq)),
        )
        .replace("[\"localhost:9090\"]", &quoted(&[own.to_string()]));
    // Docker's DNS gives one address per worker container; here each
    // worker has its own port.
    let dns = "    dns_sd_configs:\n      - names: [\"worker\"]\n        type: A\n        port: 9100\n        refresh_interval: 15s\n";
    assert!(
        out.contains(dns),
        "compose/prometheus/prometheus.yml no longer finds workers by DNS as this harness expects"
    );
    out = out.replace(
        dns,
        &format!(
            "    static_configs:\n      - targets: {}\n",
            quoted(&targets.workers)
        ),
    );
    for (from, what) in [
        ("producer:9100", "the producer"),
        ("rabbitmq:15692", "RabbitMQ"),
        ("localhost:9090", "Prometheus"),
    ] {
        assert!(
            !out.contains(&format!("\"{from}\"")),
            "{what}'s target in compose/prometheus/prometheus.yml was not moved to loopback"
        );
    }
    out
}

/// A Prometheus server of the test's own; killed when dropped.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (and the rule files it names, copied
    /// from `rules_from`) on `port`, and waits until it is ready.
    pub fn start(config: &str, rules_from: &Path, port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(rules_from).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package, installed by scripts/test)");
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while prometheus.get("/-/ready").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus not ready after 60 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path_and_query: &str) -> (u16, String) {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        );
        match agent
            .get(format!("http://127.0.0.1:{}{path_and_query}", self.port))
            .call()
        {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = self.get(path_and_query);
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: {status} {e}: {body}"));
        assert_eq!(v["status"], "success", "{path_and_query}: {body}");
        v["data"].clone()
    }

    /// The series an instant query returns now.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every target's job and health (`up`, `down`, `unknown`).
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let data = self.api("/api/v1/targets");
        data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The alerts pending or firing now: (name, state).
    pub fn alerts(&self) -> Vec<(String, String)> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Every rule's name, from `/api/v1/rules` (to check the rules loaded).
    pub fn alert_rules(&self) -> Vec<String> {
        let data = self.api("/api/v1/rules");
        let mut names = Vec::new();
        for group in data["groups"].as_array().cloned().unwrap_or_default() {
            for rule in group["rules"].as_array().cloned().unwrap_or_default() {
                if let Some(n) = rule["name"].as_str() {
                    names.push(n.to_string());
                }
            }
        }
        names
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
