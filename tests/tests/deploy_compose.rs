//! The deployment files, checked offline: `compose/` (the compose fleet,
//! Prometheus, its alerts, Grafana), the `Dockerfile` and `.dockerignore`.
//!
//! - promtool (Debian's `prometheus`, installed by scripts/test) checks the
//!   Prometheus config and the alert rules, runs the alerts' unit tests
//!   (`compose/prometheus/alerts_test.yml`) and parses every dashboard query;
//! - YAML is read through python3's `yaml` module when it is installed
//!   (Debian's python3-yaml); without it, plainer text checks stand in;
//! - `docker compose config` runs when docker has the compose plugin (not
//!   on a machine without Docker: the structural checks below stand in for
//!   it).
//!
//! Metric names are a contract with the daemons' metrics code: the
//! dashboard and the alerts may name only those below, RabbitMQ's
//! `rabbitmq_*`, and (alerts only) Prometheus' own `up`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use exploder_producer::config::Config;
use exploder_producer::sources::webhook::Dialect;
use exploder_tests::deployment::{self as contract, Value as Setting};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Files

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn path(rel: &str) -> PathBuf {
    repo().join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("compose/grafana/dashboards/exploder.json"))
        .expect("the dashboard is JSON")
}

// ---------------------------------------------------------------------------
// Tools

fn run(cmd: &mut Command) -> Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .unwrap_or_else(|e| panic!("running {name}: {e} (scripts/test installs what it needs)"))
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool(args: &[&str]) -> Output {
    run(Command::new("promtool").args(args).current_dir(repo()))
}

/// Whether python3 can `import yaml`.
fn have_python_yaml() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A YAML file as JSON, read by python3's yaml module; `None` when that
/// module is not installed (callers fall back to text checks). A file the
/// module cannot parse fails the test.
fn yaml(rel: &str) -> Option<Value> {
    if !have_python_yaml() {
        eprintln!("python3-yaml is not installed: {rel} gets text checks only");
        return None;
    }
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path(rel)));
    assert_success(&out, &format!("parsing {rel} as YAML"));
    Some(serde_json::from_slice(&out.stdout).expect("python3 prints JSON"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------
// The metric contract

const KINDS: &[&str] = &["layer", "image", "export"];
const COMPONENTS: &[&str] = &["producer", "worker"];
const OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "unlinked",
    "ignored",
    "rejected",
    "refused",
    "unavailable",
    "auth_failure",
    "malformed",
    "too_large",
];
const RESULTS: &[&str] = &[
    "ok",
    "retried",
    "dead_lettered",
    "duplicate",
    "waiting",
    "interrupted",
];
const REDRIVEN: &[&str] = &["image", "layer"];
const RESYNC_OUTCOMES: &[&str] = &["redriven", "settled"];
const RESYNC_RESULTS: &[&str] = &["complete", "partial", "lease_lost", "failed"];
const WHATS: &[&str] = &["layer_skipped", "download_skipped"];
const SERVICES: &[&str] = &["amqp", "redis"];
const REFUSALS: &[&str] = &["blocked", "signature"];

/// A label and the values it may take (`None`: any).
type Label = (&'static str, Option<&'static [&'static str]>);

/// Every metric the daemons export, with its labels. Histograms are listed
/// by their base name and expand to `_bucket` (with `le`), `_sum`, `_count`.
const CONTRACT: &[(&str, &[Label], bool)] = &[
    // producer
    (
        "exploder_producer_events_total",
        &[("source", None), ("outcome", Some(OUTCOMES))],
        false,
    ),
    (
        "exploder_producer_jobs_published_total",
        &[("kind", Some(KINDS))],
        false,
    ),
    ("exploder_producer_publish_confirm_seconds", &[], true),
    ("exploder_producer_publish_nacks_total", &[], false),
    (
        "exploder_producer_images_refused_total",
        &[("reason", Some(REFUSALS))],
        false,
    ),
    (
        "exploder_producer_registry_requests_total",
        &[("registry", None), ("code", None)],
        false,
    ),
    (
        "exploder_producer_registry_ratelimit_remaining",
        &[("registry", None)],
        false,
    ),
    ("exploder_producer_watch_relists_total", &[], false),
    (
        "exploder_producer_watch_last_event_timestamp_seconds",
        &[],
        false,
    ),
    ("exploder_queue_messages_ready", &[("queue", None)], false),
    ("exploder_queue_messages_unacked", &[("queue", None)], false),
    ("exploder_queue_consumers", &[("queue", None)], false),
    ("exploder_queue_dead_letter_messages", &[], false),
    (
        "exploder_broker_up",
        &[("component", Some(COMPONENTS))],
        false,
    ),
    (
        "exploder_redis_up",
        &[("component", Some(COMPONENTS))],
        false,
    ),
    // worker
    (
        "exploder_worker_jobs_total",
        &[("kind", Some(KINDS)), ("result", Some(RESULTS))],
        false,
    ),
    (
        "exploder_worker_job_duration_seconds",
        &[("kind", Some(KINDS))],
        true,
    ),
    (
        "exploder_worker_jobs_in_flight",
        &[("kind", Some(KINDS))],
        false,
    ),
    ("exploder_worker_layer_bytes_downloaded_total", &[], false),
    ("exploder_worker_bytes_written_total", &[], false),
    (
        "exploder_worker_dedupe_hits_total",
        &[("what", Some(WHATS))],
        false,
    ),
    ("exploder_worker_claim_conflicts_total", &[], false),
    ("exploder_worker_fan_in_finalizes_total", &[], false),
    (
        "exploder_worker_reconnects_total",
        &[("service", Some(SERVICES))],
        false,
    ),
    ("exploder_worker_staging_swept_total", &[], false),
    (
        "exploder_worker_images_refused_total",
        &[("reason", Some(REFUSALS))],
        false,
    ),
    (
        "exploder_resync_redriven_jobs_total",
        &[("job", Some(REDRIVEN))],
        false,
    ),
    ("exploder_worker_resync_seconds", &[], true),
    (
        "exploder_worker_resync_requests_total",
        &[("outcome", Some(RESYNC_OUTCOMES))],
        false,
    ),
    (
        "exploder_worker_resync_passes_total",
        &[("result", Some(RESYNC_RESULTS))],
        false,
    ),
    ("exploder_worker_resync_deferred_requests", &[], false),
    ("exploder_requests_outstanding", &[], false),
    ("exploder_requests_failed", &[], false),
    ("exploder_request_oldest_age_seconds", &[], false),
    ("exploder_store_free_bytes", &[], false),
    ("exploder_store_size_bytes", &[], false),
    ("exploder_store_free_inodes", &[], false),
    ("exploder_store_required_free_bytes", &[], false),
    ("exploder_worker_store_full_total", &[], false),
    // both
    (
        "exploder_build_info",
        &[("version", None), ("component", Some(COMPONENTS))],
        false,
    ),
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Series name → its labels, histograms expanded.
fn contract() -> BTreeMap<String, Vec<Label>> {
    let mut names = BTreeMap::new();
    for &(name, labels, histogram) in CONTRACT {
        if histogram {
            let mut bucket = labels.to_vec();
            bucket.push(("le", None));
            names.insert(format!("{name}_bucket"), bucket);
            names.insert(format!("{name}_sum"), labels.to_vec());
            names.insert(format!("{name}_count"), labels.to_vec());
        } else {
            names.insert(name.to_string(), labels.to_vec());
        }
    }
    names
}

// ---------------------------------------------------------------------------
// Reading PromQL: which metrics an expression selects, with which matchers

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug)]
struct Selector {
    /// `None` for a bare `{__name__=...}`.
    metric: Option<String>,
    matchers: Vec<Matcher>,
}

/// Words that are PromQL syntax, not metric names, when not followed by `(`.
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    // Aggregations may be followed by `by (...)` before their `(`.
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
];

/// Modifiers whose parenthesised argument is a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The end of the string literal opening at `i` (the index after its quote).
fn skip_string(s: &[char], i: usize) -> (String, usize) {
    let quote = s[i];
    let mut out = String::new();
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == '\\' && quote != '`' && j + 1 < s.len() {
            out.push(s[j]);
            j += 1;
        }
        out.push(s[j]);
        j += 1;
    }
    (out, j + 1)
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Every selector of a PromQL expression (Grafana's `$variables` allowed).
fn selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out: Vec<Selector> = Vec::new();
    // Index in `out` of a metric name a `{` right after it belongs to.
    let mut pending: Option<usize> = None;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i).1;
            pending = None;
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
            pending = None;
        } else if c == '$' {
            i += 1;
            while i < s.len() && (is_ident(s[i]) || s[i] == '{' || s[i] == '}') {
                i += 1;
            }
            pending = None;
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                // 1e-9: the sign of an exponent belongs to the number.
                if (s[i] == 'e' || s[i] == 'E') && matches!(s.get(i + 1), Some('-' | '+')) {
                    i += 1;
                }
                i += 1;
            }
            pending = None;
        } else if c == '{' {
            let at = match pending.take() {
                Some(at) => at,
                None => {
                    out.push(Selector {
                        metric: None,
                        matchers: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            i += 1;
            loop {
                i = skip_ws(&s, i);
                if i >= s.len() || s[i] == '}' {
                    i += 1;
                    break;
                }
                if s[i] == ',' {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
                let label: String = s[start..i].iter().collect();
                i = skip_ws(&s, i);
                let op_start = i;
                while i < s.len() && matches!(s[i], '=' | '!' | '~') {
                    i += 1;
                }
                let op: String = s[op_start..i].iter().collect();
                i = skip_ws(&s, i);
                assert!(
                    i < s.len() && matches!(s[i], '"' | '\'' | '`'),
                    "cannot read the matchers of {expr:?}"
                );
                let (value, next) = skip_string(&s, i);
                i = next;
                out[at].matchers.push(Matcher { label, op, value });
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = skip_ws(&s, i);
            pending = None;
            if s.get(next) == Some(&'(') {
                if LABEL_LISTS.contains(&word.as_str()) {
                    // A list of label names, not an argument.
                    i = next;
                    while i < s.len() && s[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                }
                // Otherwise a function or an aggregation: its argument is
                // read as the loop goes on.
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                out.push(Selector {
                    metric: Some(word),
                    matchers: Vec::new(),
                });
                pending = Some(out.len() - 1);
            }
        } else {
            i += 1;
            pending = None;
        }
    }
    out
}

/// The values a matcher allows, when they can be listed: `=` and `=~` on a
/// plain alternation (`ok|duplicate`).
fn listed_values(m: &Matcher) -> Option<Vec<&str>> {
    let plain = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match m.op.as_str() {
        "=" => Some(vec![m.value.as_str()]),
        "=~" if m.value.split('|').all(plain) => Some(m.value.split('|').collect()),
        _ => None,
    }
}

/// The problems of one expression against the contract: unknown metrics,
/// labels a metric does not have, values a label never takes.
fn contract_problems(expr: &str, allow_up: bool) -> Vec<String> {
    let contract = contract();
    let mut problems = Vec::new();
    let found = selectors(expr);
    if found.iter().all(|s| s.metric.is_none()) {
        problems.push(format!("names no metric: {expr}"));
    }
    for sel in found {
        let Some(metric) = sel.metric else {
            problems.push(format!("a selector without a metric name: {expr}"));
            continue;
        };
        if metric.starts_with("rabbitmq_") || (allow_up && metric == "up") {
            continue;
        }
        let Some(labels) = contract.get(&metric) else {
            problems.push(format!("{metric} is not in the metrics contract"));
            continue;
        };
        for m in &sel.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            let Some((_, allowed)) = labels.iter().find(|(l, _)| *l == m.label) else {
                problems.push(format!("{metric} has no label {:?}", m.label));
                continue;
            };
            if let (Some(allowed), Some(values)) = (allowed, listed_values(m)) {
                for v in values {
                    if !allowed.contains(&v) {
                        problems.push(format!("{metric}{{{}}} is never {v:?}", m.label));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn the_promql_reader_finds_metrics_and_matchers_but_not_functions_or_labels() {
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (le, kind) (rate(a_bucket{kind="layer",result=~"ok|x"}[$__rate_interval]))) / ignoring(what) group_left sum(b) > 1e-9 and on(queue) c offset 5m"#,
    );
    let names: Vec<_> = found.iter().map(|s| s.metric.as_deref()).collect();
    assert_eq!(names, [Some("a_bucket"), Some("b"), Some("c")]);
    let m = &found[0].matchers;
    assert_eq!(
        (m[0].label.as_str(), m[0].op.as_str(), m[0].value.as_str()),
        ("kind", "=", "layer")
    );
    assert_eq!(listed_values(&m[1]), Some(vec!["ok", "x"]));
    assert_eq!(
        contract_problems(
            r#"sum(rate(exploder_worker_jobs_total{result="done"}[5m])) + nope"#,
            false
        ),
        [
            "exploder_worker_jobs_total{result} is never \"done\"",
            "nope is not in the metrics contract"
        ]
    );
}

// ---------------------------------------------------------------------------
// Prometheus: config and alerts

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let out = promtool(&["check", "rules", "compose/prometheus/alerts.yml"]);
    assert_success(&out, "promtool check rules compose/prometheus/alerts.yml");
}

#[test]
fn the_alerts_fire_as_their_unit_tests_expect() {
    let out = promtool(&["test", "rules", "compose/prometheus/alerts_test.yml"]);
    assert_success(
        &out,
        "promtool test rules compose/prometheus/alerts_test.yml",
    );
}

#[test]
fn the_prometheus_config_passes_promtool_check_config() {
    // Also checks the rule files it names, relative to itself.
    let out = promtool(&["check", "config", "compose/prometheus/prometheus.yml"]);
    assert_success(
        &out,
        "promtool check config compose/prometheus/prometheus.yml",
    );
}

/// Every rule of alerts.yml (with python3-yaml).
fn alert_rules() -> Option<Vec<Value>> {
    let doc = yaml("compose/prometheus/alerts.yml")?;
    let groups = doc["groups"].as_array().expect("groups").clone();
    Some(
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules").clone())
            .collect(),
    )
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook() {
    let Some(rules) = alert_rules() else {
        let text = read("compose/prometheus/alerts.yml");
        let alerts = text.matches("- alert:").count();
        assert!(alerts > 0);
        for key in ["severity:", "summary:", "description:", "runbook:"] {
            assert_eq!(text.matches(key).count(), alerts, "one {key} per alert");
        }
        return;
    };
    assert!(!rules.is_empty());
    for rule in &rules {
        let name = str_of(rule, "alert").expect("only alerting rules");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name}: no annotations.{key}");
        }
    }
}

#[test]
fn every_runbook_is_the_operations_doc_heading_named_after_its_alert() {
    let text = read("compose/prometheus/alerts.yml");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    let runbooks: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook:"))
        .map(|r| r.trim().trim_matches('"'))
        .collect();
    assert_eq!(names.len(), runbooks.len());
    for (name, runbook) in names.iter().zip(&runbooks) {
        // GitHub's anchor of the heading "### ExploderQueueGrowing".
        let anchor = format!("docs/OPERATIONS.md#{}", name.to_lowercase());
        assert_eq!(*runbook, anchor, "runbook of {name}");
    }
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "alert names are unique");
}

/// The `expr:` of each rule, read without a YAML parser: inline, or a
/// block scalar (`expr: |`) of the lines indented deeper than the key.
fn alert_exprs_from_text(text: &str) -> Vec<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if rest.trim() != "|" {
            exprs.push(rest.trim().to_string());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        exprs.push(block.join("\n"));
    }
    exprs
}

#[test]
fn the_alerts_ask_for_contract_metrics_rabbitmq_metrics_or_up_only() {
    let from_text = alert_exprs_from_text(&read("compose/prometheus/alerts.yml"));
    let exprs: Vec<String> = match alert_rules() {
        Some(rules) => {
            let exprs: Vec<String> = rules
                .iter()
                .map(|r| str_of(r, "expr").expect("expr").to_string())
                .collect();
            // The text reader (for machines without python3-yaml) agrees.
            let words = |e: &String| e.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(
                exprs.iter().map(words).collect::<Vec<_>>(),
                from_text.iter().map(words).collect::<Vec<_>>()
            );
            exprs
        }
        None => from_text,
    };
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|e| contract_problems(e, true))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn prometheus_scrapes_the_producer_every_worker_and_rabbitmq_per_object() {
    let Some(config) = yaml("compose/prometheus/prometheus.yml") else {
        let text = read("compose/prometheus/prometheus.yml");
        for needle in [
            "producer:9100",
            "dns_sd_configs",
            "/metrics/per-object",
            "rabbitmq:15692",
        ] {
            assert!(text.contains(needle), "prometheus.yml names {needle}");
        }
        return;
    };
    assert_eq!(config["rule_files"], serde_json::json!(["alerts.yml"]));
    let jobs: BTreeMap<&str, &Value> = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|j| (str_of(j, "job_name").expect("job_name"), j))
        .collect();
    let targets = |job: &str| jobs[job]["static_configs"][0]["targets"].clone();
    assert_eq!(
        targets("exploder-producer"),
        serde_json::json!(["producer:9100"])
    );
    // Every replica, however many: Docker's DNS has one A record each.
    let dns = &jobs["exploder-worker"]["dns_sd_configs"][0];
    assert_eq!(dns["names"], serde_json::json!(["worker"]));
    assert_eq!(dns["type"], "A");
    assert_eq!(dns["port"], 9100);
    assert_eq!(targets("rabbitmq"), serde_json::json!(["rabbitmq:15692"]));
    assert_eq!(jobs["rabbitmq"]["metrics_path"], "/metrics/per-object");
}

// ---------------------------------------------------------------------------
// Grafana

fn panels(d: &Value) -> &Vec<Value> {
    d["panels"].as_array().expect("panels")
}

fn query_panels(d: &Value) -> impl Iterator<Item = &Value> {
    panels(d).iter().filter(|p| p["type"] != "row")
}

fn targets(p: &Value) -> &Vec<Value> {
    p["targets"].as_array().expect("targets")
}

fn all_exprs(d: &Value) -> Vec<String> {
    query_panels(d)
        .flat_map(targets)
        .map(|t| str_of(t, "expr").expect("expr").to_string())
        .collect()
}

#[test]
fn the_dashboard_is_grafana_json_with_ids_grid_positions_and_queries() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(str_of(&d, "uid").is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(str_of(&d, "title").is_some());
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = str_of(p, "title").expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: duplicate id"
        );
        let g = &p["gridPos"];
        let [h, w, x, _y] = ["h", "w", "x", "y"].map(|k| g[k].as_u64().expect("gridPos.h/w/x/y"));
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        assert!(str_of(p, "type").is_some());
        let refs: BTreeSet<_> = targets(p).iter().map(|t| str_of(t, "refId")).collect();
        assert_eq!(refs.len(), targets(p).len(), "{title}: refIds are unique");
        assert!(!targets(p).is_empty(), "{title}: no query");
        for t in targets(p) {
            assert!(
                str_of(t, "expr").is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty expr"
            );
        }
    }
}

#[test]
fn the_dashboard_panels_do_not_overlap() {
    let d = dashboard();
    let boxes: Vec<(&str, [u64; 4])> = panels(&d)
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| g[k].as_u64().unwrap_or(0));
            (str_of(p, "title").unwrap_or("?"), [x, y, x + w, y + h])
        })
        .collect();
    for (i, (a, [ax0, ay0, ax1, ay1])) in boxes.iter().enumerate() {
        for (b, [bx0, by0, bx1, by1]) in &boxes[i + 1..] {
            let overlap = ax0 < bx1 && bx0 < ax1 && ay0 < by1 && by0 < ay1;
            assert!(!overlap, "panels {a:?} and {b:?} overlap");
        }
    }
}

#[test]
fn the_dashboard_asks_for_contract_metrics_and_rabbitmq_metrics_only() {
    let problems: Vec<String> = all_exprs(&dashboard())
        .iter()
        .flat_map(|e| contract_problems(e, false))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool parses rule files: each query becomes a recording rule
    // (YAML reads JSON), with Grafana's interval variables made concrete.
    let rules: Vec<Value> = all_exprs(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let expr = e
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(&file));
    assert_success(&out, "promtool check rules (the dashboard's queries)");
}

#[test]
fn the_dashboard_uses_the_provisioned_datasource_by_uid() {
    let rel = "compose/grafana/provisioning/datasources/prometheus.yml";
    let uid = match yaml(rel) {
        Some(doc) => {
            let ds = &doc["datasources"][0];
            assert_eq!(ds["type"], "prometheus");
            assert_eq!(ds["url"], "http://prometheus:9090");
            str_of(ds, "uid")
                .expect("the datasource has a uid")
                .to_string()
        }
        None => read(rel)
            .lines()
            .find_map(|l| l.trim().strip_prefix("uid:"))
            .expect("the datasource has a uid")
            .trim()
            .to_string(),
    };
    let d = dashboard();
    for p in query_panels(&d) {
        let title = str_of(p, "title").unwrap_or("?");
        for ds in
            std::iter::once(&p["datasource"]).chain(targets(p).iter().map(|t| &t["datasource"]))
        {
            assert_eq!(
                str_of(ds, "uid"),
                Some(uid.as_str()),
                "{title}: datasource {ds}"
            );
            assert_eq!(
                str_of(ds, "type"),
                Some("prometheus"),
                "{title}: datasource {ds}"
            );
        }
    }
}

#[test]
fn the_dashboard_shows_queues_rates_dead_letters_latency_dedupe_bytes_events_and_registry_errors() {
    let exprs = all_exprs(&dashboard()).join("\n");
    for needle in [
        "exploder_queue_messages_ready",
        "exploder_queue_messages_unacked",
        "rabbitmq_global_messages_received_total",
        "rabbitmq_global_messages_delivered_total",
        "rabbitmq_global_messages_acknowledged_total",
        "exploder_queue_consumers",
        r#"exploder_build_info{component="worker"}"#,
        "exploder_queue_dead_letter_messages",
        r#"result="dead_lettered""#,
        "exploder_worker_dedupe_hits_total",
        "exploder_worker_layer_bytes_downloaded_total",
        "exploder_worker_bytes_written_total",
        "sum by (source, outcome) (rate(exploder_producer_events_total",
        "exploder_producer_registry_requests_total",
        r#"code="429""#,
    ] {
        assert!(exprs.contains(needle), "no dashboard query has {needle}");
    }
    for q in ["0.5", "0.95", "0.99"] {
        let latency = format!(
            "histogram_quantile({q}, sum by (le, kind) (rate(exploder_worker_job_duration_seconds_bucket"
        );
        assert!(exprs.contains(&latency), "no p{q} latency by kind");
    }
}

#[test]
fn grafana_provisions_the_dashboard_directory_compose_mounts() {
    let Some(provider) = yaml("compose/grafana/provisioning/dashboards/exploder.yml") else {
        return;
    };
    let dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("providers[0].options.path");
    let compose = yaml("compose/docker-compose.yml").expect("python3-yaml is there");
    let grafana = &compose["services"]["grafana"];
    let mounts = string_list(&grafana["volumes"]);
    assert!(
        mounts.contains(&format!("./grafana/dashboards:{dir}:ro")),
        "grafana mounts the dashboards at {dir}: {mounts:?}"
    );
    assert!(mounts.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".to_string()));
    assert_eq!(
        grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"],
        format!("{dir}/exploder.json")
    );
}

// ---------------------------------------------------------------------------
// Compose

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The compose file, or `None` without python3-yaml.
fn compose() -> Option<Value> {
    yaml("compose/docker-compose.yml")
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("services")
}

/// Every Compose installed here, as (what to call it, the command):
/// Compose v1 (`docker-compose`, Debian's 1.29, which scripts/test
/// installs) and v2 (`docker compose`, the plugin). The file must suit
/// both.
fn composes() -> Vec<(&'static str, Command)> {
    let mut found = Vec::new();
    let v1 = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if v1 {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo());
        found.push(("docker-compose (Compose v1)", cmd));
    }
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        let mut cmd = Command::new("docker");
        cmd.arg("compose").current_dir(repo());
        found.push(("docker compose (Compose v2)", cmd));
    }
    found
}

#[test]
fn the_compose_file_is_valid() {
    let composes = composes();
    if composes.is_empty() {
        eprintln!("no Compose here: checking the file's structure instead");
    }
    for (name, mut dc) in composes {
        // The example env file: every required variable has a value there.
        let out = run(dc.args([
            "--env-file",
            "compose/.env.example",
            "-f",
            "compose/docker-compose.yml",
            "config",
            "-q",
        ]));
        assert_success(&out, &format!("{name} config -q"));
    }
    let Some(c) = compose() else {
        let text = read("compose/docker-compose.yml");
        assert!(text.contains("\nservices:\n") && text.contains("\nvolumes:\n"));
        for condition in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("condition:"))
        {
            assert!(
                matches!(
                    condition.trim(),
                    "service_started" | "service_healthy" | "service_completed_successfully"
                ),
                "condition {condition}"
            );
        }
        return;
    };
    // The keys this file uses: a misspelt one would be ignored by nothing
    // but `docker compose config`.
    let known_keys = [
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "volumes",
        "ports",
        "depends_on",
        "healthcheck",
        "restart",
        "deploy",
        "user",
        "hostname",
        "stop_signal",
        "stop_grace_period",
    ];
    for (name, s) in services(&c) {
        assert!(
            s.get("image").is_some() || s.get("build").is_some(),
            "{name}: no image or build"
        );
        for key in s.as_object().expect("a service is a mapping").keys() {
            assert!(
                known_keys.contains(&key.as_str()),
                "{name}: unexpected key {key} (misspelt? else add it to known_keys)"
            );
        }
        if let Some(env) = s.get("environment") {
            let env = env.as_object().expect("environment is a mapping");
            for (k, v) in env {
                assert!(v.is_string(), "{name}: {k} must be a string, got {v}");
            }
        }
        if let Some(hc) = s.get("healthcheck") {
            let test = string_list(&hc["test"]);
            assert!(
                matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL"))
                    && test.len() > 1,
                "{name}: healthcheck.test {test:?}"
            );
        }
    }
    for key in c.as_object().expect("a mapping").keys() {
        assert!(
            ["services", "volumes"].contains(&key.as_str()) || key.starts_with("x-"),
            "unexpected top-level key {key} (Compose v1 refuses all but services, \
             volumes, networks, configs, secrets and x-*: no `name:`)"
        );
    }
}

#[test]
fn the_project_is_named_in_the_env_example_as_compose_v1_needs() {
    // Compose v1 refuses a top-level `name:`; both read the project name
    // (the prefix of the volumes the README names, exploder_store, ...)
    // from COMPOSE_PROJECT_NAME in .env.
    let example = read("compose/.env.example");
    assert!(
        example
            .lines()
            .any(|l| l == "COMPOSE_PROJECT_NAME=exploder"),
        ".env.example sets COMPOSE_PROJECT_NAME=exploder"
    );
    assert!(
        !read("compose/docker-compose.yml")
            .lines()
            .any(|l| l.starts_with("name:")),
        "no top-level name: in the compose file (Compose v1 refuses it)"
    );
    assert!(read("compose/README.md").contains("exploder_store"));
}

#[test]
fn every_published_port_binds_the_configured_address() {
    // EXPLODER_BIND (127.0.0.1 by default): nothing is reachable from other
    // hosts unless asked for.
    let Some(c) = compose() else { return };
    for (name, s) in services(&c) {
        for port in string_list(&s["ports"]) {
            assert!(
                port.starts_with("${EXPLODER_BIND:-127.0.0.1}:"),
                "{name}: port {port} binds every address"
            );
        }
    }
}

#[test]
fn compose_depends_on_only_services_that_can_meet_the_condition() {
    let Some(c) = compose() else { return };
    let services = services(&c);
    for (name, s) in services {
        let Some(deps) = s.get("depends_on").and_then(Value::as_object) else {
            continue;
        };
        for (dep, how) in deps {
            let target = services
                .get(dep)
                .unwrap_or_else(|| panic!("{name} depends on a missing service {dep}"));
            match str_of(how, "condition") {
                Some("service_healthy") => assert!(
                    target
                        .get("healthcheck")
                        .is_some_and(|h| h.get("test").is_some() && h["disable"] != true),
                    "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                ),
                Some("service_completed_successfully") => {
                    // A one-shot: not restarted, one replica.
                    assert!(
                        matches!(str_of(target, "restart"), None | Some("no")),
                        "{dep} is waited on to complete but restarts"
                    );
                    assert!(target.get("deploy").is_none(), "{dep} is a one-shot");
                }
                Some("service_started") => {}
                other => panic!("{name} -> {dep}: condition {other:?}"),
            }
        }
    }
    // No cycle: every service can start.
    let mut started = BTreeSet::new();
    while started.len() < services.len() {
        let ready: Vec<&String> = services
            .iter()
            .filter(|(n, _)| !started.contains(*n))
            .filter(|(_, s)| {
                s.get("depends_on")
                    .and_then(Value::as_object)
                    .is_none_or(|d| d.keys().all(|k| started.contains(k)))
            })
            .map(|(n, _)| n)
            .collect();
        assert!(
            !ready.is_empty(),
            "depends_on has a cycle among {:?}",
            services.keys()
        );
        started.extend(ready);
    }
}

#[test]
fn the_fleet_starts_after_the_broker_redis_and_the_topology_job() {
    let Some(c) = compose() else { return };
    let services = services(&c);
    let topology = &services["topology"];
    assert_eq!(
        string_list(&topology["command"]),
        ["exploder", "topology", "apply"]
    );
    assert_eq!(
        topology["depends_on"]["rabbitmq"]["condition"],
        "service_healthy"
    );
    for daemon in ["producer", "worker"] {
        let deps = &services[daemon]["depends_on"];
        assert_eq!(deps["rabbitmq"]["condition"], "service_healthy", "{daemon}");
        assert_eq!(deps["redis"]["condition"], "service_healthy", "{daemon}");
        assert_eq!(
            deps["topology"]["condition"], "service_completed_successfully",
            "{daemon}"
        );
        let probe = string_list(&services[daemon]["healthcheck"]["test"]).join(" ");
        assert!(
            probe.contains("127.0.0.1:9100/readyz"),
            "{daemon}: healthcheck {probe}"
        );
    }
}

#[test]
fn three_workers_run_and_get_longer_than_their_grace_period_to_stop() {
    let Some(c) = compose() else {
        assert!(read("compose/docker-compose.yml").contains("replicas: 3"));
        return;
    };
    let worker = &services(&c)["worker"];
    assert_eq!(worker["deploy"]["replicas"], 3);
    assert_eq!(string_list(&worker["command"]), ["exploder-worker"]);
    let grace: u64 = str_of(&worker["environment"], "EXPLODER_GRACE_PERIOD")
        .and_then(|g| {
            g.trim_start_matches("${WORKER_GRACE_PERIOD:-")
                .strip_suffix('}')
        })
        .expect("EXPLODER_GRACE_PERIOD: ${WORKER_GRACE_PERIOD:-N}")
        .parse()
        .unwrap();
    let stop: u64 = str_of(worker, "stop_grace_period")
        .and_then(|s| s.strip_suffix('s'))
        .expect("stop_grace_period in seconds")
        .parse()
        .unwrap();
    assert!(
        stop > grace,
        "docker kills workers after {stop}s, before their {grace}s grace period"
    );
}

#[test]
fn the_producer_and_the_workers_share_the_store_volume_at_the_store_path() {
    let Some(c) = compose() else { return };
    let services = services(&c);
    for daemon in ["producer", "worker"] {
        let s = &services[daemon];
        let store = str_of(&s["environment"], "EXPLODER_STORE").expect("EXPLODER_STORE");
        assert!(
            string_list(&s["volumes"]).contains(&format!("store:{store}")),
            "{daemon} mounts the store volume at {store}"
        );
        for var in [
            "EXPLODER_AMQP_URL",
            "EXPLODER_REDIS_URL",
            "EXPLODER_PREFIX",
            "EXPLODER_METRICS_LISTEN",
        ] {
            assert!(s["environment"].get(var).is_some(), "{daemon}: {var}");
        }
    }
    let env = &services["producer"]["environment"];
    assert_eq!(
        env["EXPLODER_WEBHOOK_TOKEN"],
        "${EXPLODER_WEBHOOK_TOKEN:?set EXPLODER_WEBHOOK_TOKEN in .env}"
    );
    assert_eq!(env["EXPLODER_LISTEN"], "0.0.0.0:8088");
}

#[test]
fn every_named_volume_is_declared_and_every_bind_mount_exists() {
    let Some(c) = compose() else { return };
    let declared: BTreeSet<&String> = c["volumes"].as_object().expect("volumes").keys().collect();
    for (name, s) in services(&c) {
        for mount in string_list(&s["volumes"]) {
            let source = mount.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                let on_disk = path("compose").join(source);
                assert!(
                    on_disk.exists(),
                    "{name}: bind mount {source} is not in the repository"
                );
            } else {
                assert!(
                    declared.contains(&source.to_string()),
                    "{name}: volume {source} is not declared"
                );
            }
        }
    }
    let build = &services(&c)["topology"]["build"];
    let context = path("compose").join(str_of(build, "context").expect("build.context"));
    assert!(
        context
            .join(str_of(build, "dockerfile").expect("build.dockerfile"))
            .is_file()
    );
}

#[test]
fn every_variable_compose_needs_is_in_the_env_example_without_a_real_secret() {
    let compose = read("compose/docker-compose.yml");
    let example = read("compose/.env.example");
    let defined: BTreeMap<&str, &str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let mut used = BTreeSet::new();
    let mut rest = compose.as_str();
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    assert!(!used.is_empty());
    for name in &used {
        assert!(
            defined.contains_key(name.as_str()),
            ".env.example lacks {name}"
        );
    }
    for (name, value) in &defined {
        if name.contains("PASSWORD") || name.contains("TOKEN") {
            assert!(
                value.starts_with("change-me"),
                "{name} in .env.example looks like a real secret"
            );
        }
    }
}

#[test]
fn rabbitmq_runs_the_management_image_with_the_prometheus_plugin() {
    let plugins = read("compose/rabbitmq/enabled_plugins");
    assert!(plugins.contains("rabbitmq_prometheus") && plugins.trim_end().ends_with("]."));
    let Some(c) = compose() else { return };
    let rabbit = &services(&c)["rabbitmq"];
    assert_eq!(rabbit["image"], "rabbitmq:3-management");
    assert!(
        string_list(&rabbit["volumes"])
            .contains(&"./rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro".to_string())
    );
}

// ---------------------------------------------------------------------------
// The registry and its notifications

const TOKEN_PLACEHOLDER: &str = "__EXPLODER_WEBHOOK_TOKEN__";

#[test]
fn the_registry_notifies_the_producer_webhook_with_a_bearer_token() {
    let Some(config) = yaml("compose/registry/config.yml") else {
        let text = read("compose/registry/config.yml");
        assert!(text.contains("url: http://producer:8088/webhook/registry"));
        assert!(text.contains(&format!("Authorization: [\"Bearer {TOKEN_PLACEHOLDER}\"]")));
        return;
    };
    let endpoints = config["notifications"]["endpoints"]
        .as_array()
        .expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!(e["url"], "http://producer:8088/webhook/registry");
    assert_eq!(
        e["headers"]["Authorization"],
        serde_json::json!([format!("Bearer {TOKEN_PLACEHOLDER}")])
    );
    assert_eq!(
        config["storage"]["delete"]["enabled"], true,
        "deletes unlink tags"
    );
}

/// Runs compose/registry/entrypoint.sh with `token`, a fake `registry` on
/// PATH. Returns the exit status, the rendered config (if any) and the
/// fake registry's arguments (if it ran).
fn run_registry_entrypoint(token: &str) -> (bool, Option<String>, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let args = dir.path().join("args");
    let fake = bin.join("registry");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", args.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rendered = dir.path().join("config.yml");
    let out = run(Command::new("sh")
        .arg(path("compose/registry/entrypoint.sh"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("EXPLODER_WEBHOOK_TOKEN", token)
        .env(
            "REGISTRY_CONFIG_TEMPLATE",
            path("compose/registry/config.yml"),
        )
        .env("REGISTRY_CONFIG_RENDERED", &rendered));
    (
        out.status.success(),
        std::fs::read_to_string(&rendered).ok(),
        std::fs::read_to_string(&args).ok(),
    )
}

#[test]
fn the_registry_entrypoint_renders_the_token_into_its_config_and_serves_it() {
    let (ok, rendered, args) = run_registry_entrypoint("0123abcd-._~+/=");
    assert!(ok);
    let rendered = rendered.expect("a rendered config");
    assert!(rendered.contains(r#"Authorization: ["Bearer 0123abcd-._~+/="]"#));
    assert!(!rendered.contains(TOKEN_PLACEHOLDER));
    let args = args.expect("the registry ran");
    assert!(
        args.starts_with("serve\n") && args.trim_end().ends_with("config.yml"),
        "{args}"
    );
}

#[test]
fn the_registry_entrypoint_refuses_a_missing_or_unsafe_token() {
    for token in ["", "a|b", "a&b", "a\"b", "a b"] {
        let (ok, rendered, args) = run_registry_entrypoint(token);
        assert!(
            !ok && rendered.is_none() && args.is_none(),
            "token {token:?} was accepted"
        );
    }
}

#[test]
fn the_producer_config_enables_the_registry_webhook_pulling_from_the_compose_registry() {
    let config =
        Config::load(&path("compose/producer/exploder.yaml")).expect("the producer reads it");
    let env = |name: &str| (name == "EXPLODER_WEBHOOK_TOKEN").then(|| "t0ken".to_string());
    let webhooks = config.webhooks.resolve(env).expect("endpoints resolve");
    assert_eq!(webhooks.endpoints.len(), 1);
    let e = &webhooks.endpoints[0];
    assert_eq!(e.dialect, Dialect::Registry);
    assert_eq!(e.auth.token.as_deref(), Some("t0ken"));
    assert_eq!(e.pull_from.as_deref(), Some("registry:5000"));
    // And the registry is reachable over plain HTTP from the fleet.
    let compose = read("compose/docker-compose.yml");
    assert!(compose.contains("EXPLODER_INSECURE_REGISTRIES: registry:5000"));
}

// ---------------------------------------------------------------------------
// The image

#[test]
fn the_dockerfile_builds_the_three_binaries_into_a_bookworm_slim_runtime() {
    let text = read("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].ends_with(" AS builder"));
    assert_eq!(froms[1], "FROM debian:${DEBIAN_RELEASE}-slim");
    assert!(text.contains("ARG DEBIAN_RELEASE=bookworm"));
    assert!(text.contains("cargo build --release --locked --bins"));
    for bin in ["exploder", "exploder-worker", "exploder-producer"] {
        assert!(
            text.contains(&format!("target/release/{bin} ")),
            "{bin} is copied out"
        );
    }
    assert!(text.contains("ca-certificates"));
    assert!(
        text.contains("useradd --system --uid 10001"),
        "a non-root user is available"
    );
}

#[test]
fn the_docker_build_context_leaves_out_target_and_the_deployment_secrets() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    for entry in ["target/", ".git/", "compose/", "**/.env"] {
        assert!(
            ignored.iter().any(|i| i == entry),
            ".dockerignore lacks {entry}"
        );
    }
    // But the binaries the test suite hands in (EXPLODER_PREBUILT) are let
    // through: an exception after the rule it excepts.
    let at = |entry: &str| ignored.iter().position(|i| i == entry);
    assert!(
        matches!((at("target/"), at("!target/compose-prebuilt/")), (Some(t), Some(e)) if e > t),
        "!target/compose-prebuilt/ follows target/ in .dockerignore"
    );
}

#[test]
fn the_dockerfile_needs_nothing_the_classic_builder_lacks() {
    // Compose v1 and `docker build` without buildx use the classic
    // builder: it refuses `RUN --mount`, and a `# syntax=` line makes
    // BuildKit fetch a frontend from Docker Hub.
    let text = read("Dockerfile");
    for line in text.lines() {
        let l = line.trim_start();
        assert!(
            !l.to_lowercase().starts_with("# syntax") && !l.to_lowercase().starts_with("#syntax"),
            "Dockerfile: {line}"
        );
        assert!(!l.contains("--mount="), "Dockerfile: {line}");
        assert!(!l.starts_with("RUN --"), "Dockerfile: {line}");
    }
}

#[test]
fn the_dockerfile_compiles_from_source_unless_handed_prebuilt_binaries() {
    let text = read("Dockerfile");
    assert!(
        text.lines().any(|l| l == "ARG EXPLODER_PREBUILT="),
        "EXPLODER_PREBUILT is empty by default: a user's build compiles"
    );
    let run = text
        .split("RUN ")
        .find(|r| r.contains("\"$EXPLODER_PREBUILT\""))
        .expect("a RUN step reads EXPLODER_PREBUILT");
    assert!(
        run.contains(r#"if [ -n "$EXPLODER_PREBUILT" ]"#)
            && run.contains("else")
            && run.contains("cargo build --release --locked --bins"),
        "without EXPLODER_PREBUILT the builder compiles: {run}"
    );
}

// ---------------------------------------------------------------------------
// Offline stand-ins for the Docker Hub images

/// compose/standins/images: (image name, recipe directory).
fn standins() -> Vec<(String, String)> {
    read("compose/standins/images")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().expect("an image name").to_string();
            let recipe = words
                .next()
                .unwrap_or_else(|| panic!("{l}: no recipe"))
                .to_string();
            assert!(words.next().is_none(), "{l}: two words per line");
            (name, recipe)
        })
        .collect()
}

/// The Dockerfile's `FROM` images, its `ARG` defaults substituted.
fn dockerfile_bases() -> Vec<String> {
    let text = read("Dockerfile");
    let args: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|f| {
            let mut image = f
                .split_whitespace()
                .next()
                .expect("FROM names an image")
                .to_string();
            for (k, v) in &args {
                image = image.replace(&format!("${{{k}}}"), v);
            }
            image
        })
        .collect()
}

#[test]
fn every_image_the_compose_file_and_the_dockerfile_pull_has_a_stand_in_but_grafana() {
    let names: BTreeSet<String> = standins().into_iter().map(|(n, _)| n).collect();
    let mut pulled: BTreeSet<String> = dockerfile_bases().into_iter().collect();
    let compose = read("compose/docker-compose.yml");
    for image in compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(|i| i.trim().trim_matches('"'))
    {
        // The exploder image is built (EXPLODER_IMAGE), not pulled.
        if !image.starts_with("${EXPLODER_IMAGE") {
            pulled.insert(image.to_string());
        }
    }
    let grafana: BTreeSet<String> = pulled
        .iter()
        .filter(|i| i.starts_with("grafana/"))
        .cloned()
        .collect();
    assert_eq!(
        grafana.len(),
        1,
        "grafana is the one image without a stand-in"
    );
    let wanted: BTreeSet<String> = pulled.difference(&grafana).cloned().collect();
    assert_eq!(
        names, wanted,
        "compose/standins/images lists exactly the images the files pull (but grafana)"
    );
}

#[test]
fn every_stand_in_recipe_is_a_dockerfile_built_on_the_debian_stand_in() {
    for (name, recipe) in standins() {
        let dockerfile = format!("compose/standins/{recipe}/Dockerfile");
        let text = read(&dockerfile);
        let from = text
            .lines()
            .find_map(|l| l.strip_prefix("FROM "))
            .unwrap_or_else(|| panic!("{dockerfile} has no FROM"));
        assert!(
            [
                "${BASE}",
                "debian:bookworm-slim",
                "exploder-standin/services"
            ]
            .contains(&from),
            "{name}: {dockerfile} builds on {from}, not on the debootstrapped Debian"
        );
    }
    for script in [
        "rabbitmq/docker-entrypoint.sh",
        "redis/docker-entrypoint.sh",
        "registry/entrypoint.sh",
    ] {
        let out = run(Command::new("sh")
            .arg("-n")
            .arg(path(&format!("compose/standins/{script}"))));
        assert_success(&out, &format!("sh -n compose/standins/{script}"));
    }
}

// ---------------------------------------------------------------------------
// What compose shares with k8s (tests/src/deployment.rs)

/// A compose environment value as a user of `.env.example` gets it: a
/// value naming a required variable (`${X:?...}`) is a secret; `${X:-d}`
/// is X from `.env.example`, else d.
fn setting(value: &str, example: &BTreeMap<String, String>) -> Setting {
    if value.contains(":?") {
        return Setting::Secret;
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("a closed ${...}") + at;
        let inner = &rest[at + 2..end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        out.push_str(example.get(name).map(String::as_str).unwrap_or(default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Setting::Literal(out)
}

#[test]
fn the_compose_fleet_has_the_env_ports_paths_and_probes_the_k8s_fleet_has() {
    let Some(c) = compose() else {
        eprintln!("python3-yaml is not installed: the shared settings are not compared");
        return;
    };
    let example: BTreeMap<String, String> = read("compose/.env.example")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let services = services(&c);
    let wanted = [
        (
            "producer",
            contract::PRODUCER_COMMAND,
            [contract::shared_env(), contract::producer_env()].concat(),
        ),
        (
            "worker",
            contract::WORKER_COMMAND,
            [contract::shared_env(), contract::worker_env()].concat(),
        ),
        (
            "topology",
            contract::TOPOLOGY_COMMAND,
            contract::topology_env(),
        ),
    ];
    for (service, command, env) in wanted {
        let s = &services[service];
        assert_eq!(string_list(&s["command"]), command, "{service}: command");
        for (var, value) in env {
            let got = str_of(&s["environment"], var)
                .map(|v| setting(v, &example))
                .unwrap_or_else(|| panic!("{service}: no {var}"));
            assert_eq!(got, value, "{service}: {var}");
        }
    }
    for daemon in ["producer", "worker"] {
        let s = &services[daemon];
        let probe = string_list(&s["healthcheck"]["test"]).join(" ");
        let url = format!(
            "http://127.0.0.1:{}{}",
            contract::METRICS_PORT,
            contract::READINESS_PATH
        );
        assert!(probe.contains(&url), "{daemon}: healthcheck {probe}");
        assert!(
            string_list(&s["volumes"]).contains(&format!("store:{}", contract::STORE)),
            "{daemon}: the store volume at {}",
            contract::STORE
        );
    }
    let producer = &services["producer"];
    assert!(
        string_list(&producer["volumes"])
            .contains(&format!("./producer:{}:ro", contract::PRODUCER_CONFIG_DIR)),
        "the producer's config directory at {}",
        contract::PRODUCER_CONFIG_DIR
    );
    let port = contract::WEBHOOK_PORT;
    assert!(
        string_list(&producer["ports"])
            .contains(&format!("${{EXPLODER_BIND:-127.0.0.1}}:{port}:{port}")),
        "the producer publishes its webhook port {port}"
    );
    assert_eq!(
        str_of(&services["worker"], "stop_grace_period"),
        Some(format!("{}s", contract::WORKER_STOP_SECS).as_str()),
        "the worker's stop_grace_period"
    );
    // The image's defaults agree.
    let dockerfile = read("Dockerfile");
    for line in [
        format!("ENV EXPLODER_STORE={}", contract::STORE),
        format!(
            "EXPOSE {} {}",
            contract::WEBHOOK_PORT,
            contract::METRICS_PORT
        ),
    ] {
        assert!(
            dockerfile.lines().any(|l| l == line),
            "the Dockerfile has `{line}`"
        );
    }
    assert!(
        dockerfile.contains(&format!(
            "install -d -o exploder -g exploder -m 0755 {}",
            contract::STORE
        )),
        "the image's store directory belongs to its unprivileged user"
    );
}
