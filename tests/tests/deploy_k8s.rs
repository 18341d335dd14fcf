//! The Kubernetes manifests in `k8s/`, checked offline.
//!
//! - `kubectl kustomize` builds the base and every overlay (kubectl from
//!   PATH, or `$KUBECTL`; scripts/test installs Debian's kubernetes-client,
//!   whose kubectl 1.20 embeds kustomize v2.0.3, so the kustomizations may
//!   use only what that version knows);
//! - each build is turned into JSON by `kubectl label --local -o json`
//!   (re-setting a label every object already has: a no-op that needs no
//!   API server, unlike `kubectl apply --dry-run=client`, which asks the
//!   server for its API groups), then checked here: names, namespaces,
//!   probes, resources, grace periods, RBAC, the store, KEDA's ScaledObject
//!   and the producer's config file, which the producer's own parser reads.
//!
//! Nothing here talks to a cluster; what only a cluster can tell (admission,
//! SCCs, the operators behind the CRDs) is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use exploder_producer::config::Config;
use exploder_tests::deployment::{self as contract, Value as Setting};
use serde_json::Value;

/// Every overlay under k8s/overlays (a test checks the list is complete).
const OVERLAYS: &[&str] = &["keda", "openshift"];
/// Objects without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
];
/// The Secret the manifests expect to exist (never shipped).
const SECRET: &str = "exploder-secrets";
const NAMESPACE: &str = "exploder";

// ---------------------------------------------------------------------------
// Files and tools

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn k8s(rel: &str) -> PathBuf {
    repo().join("k8s").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn kubectl() -> Command {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Command::new(program)
}

fn output(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run kubectl ({e}); scripts/test installs kubernetes-client")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `kubectl kustomize k8s/<dir>`: the YAML it prints.
fn kustomize(dir: &str) -> String {
    let out = output(
        kubectl().arg("kustomize").arg(k8s(dir)),
        &format!("kubectl kustomize k8s/{dir}"),
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// Multi-document YAML as JSON objects, by kubectl itself and offline.
fn to_json(yaml: &str, what: &str) -> Vec<Value> {
    let mut child = kubectl()
        .args([
            "label",
            "--local",
            "--overwrite",
            "-f",
            "-",
            "-o",
            "json",
            "app.kubernetes.io/part-of=exploder",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run kubectl ({e})"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let yaml = yaml.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(yaml.as_bytes()));
    let out = child.wait_with_output().expect("kubectl label runs");
    writer
        .join()
        .expect("writer thread")
        .expect("kubectl reads the YAML");
    assert!(
        out.status.success(),
        "{what}: kubectl label --local failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object per document, concatenated (kubectl ≥ 1.20), or a
    // List holding them.
    let mut docs = Vec::new();
    for value in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>() {
        let value = value.unwrap_or_else(|e| panic!("{what}: kubectl printed bad JSON: {e}"));
        match value.get("items").and_then(Value::as_array) {
            Some(items) if kind(&value) == "List" => docs.extend(items.iter().cloned()),
            _ => docs.push(value),
        }
    }
    docs
}

/// One build: `base` or `overlays/<name>`, and its objects.
struct Build {
    dir: String,
    docs: Vec<Value>,
}

fn builds() -> &'static [Build] {
    static BUILDS: OnceLock<Vec<Build>> = OnceLock::new();
    BUILDS.get_or_init(|| {
        std::iter::once("base".to_string())
            .chain(OVERLAYS.iter().map(|o| format!("overlays/{o}")))
            .map(|dir| {
                let yaml = kustomize(&dir);
                let docs = to_json(&yaml, &dir);
                Build { dir, docs }
            })
            .collect()
    })
}

fn build(dir: &str) -> &'static Build {
    builds()
        .iter()
        .find(|b| b.dir == dir)
        .unwrap_or_else(|| panic!("no build {dir}"))
}

/// The builds that autoscale the workers with KEDA.
fn keda_builds() -> impl Iterator<Item = &'static Build> {
    builds().iter().filter(|b| b.dir != "base")
}

// ---------------------------------------------------------------------------
// JSON helpers

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn name(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strings_at(v: &Value, pointer: &str) -> BTreeSet<String> {
    array_at(v, pointer)
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

impl Build {
    fn of_kind(&self, k: &str) -> impl Iterator<Item = &Value> + use<'_> {
        let k = k.to_string();
        self.docs.iter().filter(move |d| kind(d) == k)
    }

    fn get(&self, k: &str, n: &str) -> &Value {
        self.of_kind(k)
            .find(|d| name(d) == n)
            .unwrap_or_else(|| panic!("{}: no {k} {n}", self.dir))
    }

    fn has(&self, k: &str, n: &str) -> bool {
        self.of_kind(k).any(|d| name(d) == n)
    }

    fn producer(&self) -> &Value {
        self.get("Deployment", "exploder-producer")
    }

    fn worker(&self) -> &Value {
        self.get("Deployment", "exploder-worker")
    }
}

fn pod_spec(deployment: &Value) -> &Value {
    deployment
        .pointer("/spec/template/spec")
        .expect("a Deployment has a pod template")
}

fn containers(deployment: &Value) -> &[Value] {
    array_at(pod_spec(deployment), "/containers")
}

fn init_containers(deployment: &Value) -> &[Value] {
    array_at(pod_spec(deployment), "/initContainers")
}

fn container<'a>(deployment: &'a Value, n: &str) -> &'a Value {
    containers(deployment)
        .iter()
        .find(|c| name_field(c) == n)
        .unwrap_or_else(|| panic!("{}: no container {n}", name(deployment)))
}

fn name_field(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("")
}

fn env<'a>(c: &'a Value, var: &str) -> Option<&'a Value> {
    array_at(c, "/env").iter().find(|e| name_field(e) == var)
}

fn env_value<'a>(c: &'a Value, var: &str) -> Option<&'a str> {
    env(c, var).and_then(|e| str_at(e, "/value"))
}

/// A variable the container reads from a ConfigMap through envFrom.
fn env_from_config_map<'a>(b: &'a Build, c: &Value, var: &str) -> Option<&'a str> {
    array_at(c, "/envFrom").iter().find_map(|from| {
        let cm = str_at(from, "/configMapRef/name")?;
        let cm = b.of_kind("ConfigMap").find(|d| name(d) == cm)?;
        cm.pointer("/data")?.get(var)?.as_str()
    })
}

fn pod_labels(deployment: &Value) -> &serde_json::Map<String, Value> {
    deployment
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .expect("pod template labels")
}

/// Whether every `selector` label is on `labels`.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn secret_key_ref(e: &Value) -> Option<(&str, &str)> {
    Some((
        str_at(e, "/valueFrom/secretKeyRef/name")?,
        str_at(e, "/valueFrom/secretKeyRef/key")?,
    ))
}

// ---------------------------------------------------------------------------
// kustomization.yaml, read as text (no YAML parser here)

/// The top-level keys of a kustomization.yaml, each with the lines below it.
fn kustomization(dir: &str) -> BTreeMap<String, Vec<String>> {
    let text = read(&k8s(dir).join("kustomization.yaml"));
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '-']) {
            let key = line.split(':').next().unwrap_or(line).trim().to_string();
            keys.entry(key.clone()).or_default();
            current = Some(key);
        } else if let Some(key) = &current {
            keys.get_mut(key).expect("key seen").push(line.to_string());
        }
    }
    keys
}

/// `- item` entries of a plain list (`resources:`, `bases:`, ...).
fn list_items(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Values of `key:` anywhere in the lines (e.g. `path:` of json6902 patches).
fn values_of(lines: &[String], key: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.strip_prefix(key)?.strip_prefix(':')
        })
        .map(|s| s.trim().to_string())
        .collect()
}

fn kustomization_dirs() -> Vec<String> {
    std::iter::once("base".to_string())
        .chain(OVERLAYS.iter().map(|o| format!("overlays/{o}")))
        .collect()
}

// ---------------------------------------------------------------------------
// The example Secret

/// The keys secret.example.yaml documents (set or commented out), and the
/// values of those it sets.
fn example_secret() -> (BTreeSet<String>, BTreeMap<String, String>) {
    let text = read(&k8s("base/secret.example.yaml"));
    let mut documented = BTreeSet::new();
    let mut set = BTreeMap::new();
    for line in text.lines() {
        let commented = line.trim_start().starts_with('#');
        let l = line.trim_start().trim_start_matches('#').trim_start();
        let Some((key, value)) = l.split_once(':') else {
            continue;
        };
        if !key.starts_with("EXPLODER_") || key.contains(' ') {
            continue;
        }
        documented.insert(key.to_string());
        if !commented && line.starts_with("  ") {
            set.insert(key.to_string(), value.trim().to_string());
        }
    }
    (documented, set)
}

// ---------------------------------------------------------------------------
// Builds

#[test]
fn every_overlay_directory_is_built_by_these_tests() {
    let mut found: Vec<String> = std::fs::read_dir(k8s("overlays"))
        .expect("k8s/overlays exists")
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, OVERLAYS, "update OVERLAYS in this file");
}

#[test]
fn kubectl_kustomize_builds_the_base() {
    assert!(
        build("base").docs.len() > 5,
        "base builds to almost nothing"
    );
}

#[test]
fn kubectl_kustomize_builds_the_keda_overlay() {
    assert!(build("overlays/keda").docs.len() > build("base").docs.len());
}

#[test]
fn kubectl_kustomize_builds_the_openshift_overlay() {
    assert!(build("overlays/openshift").docs.len() > build("overlays/keda").docs.len());
}

#[test]
fn every_object_has_an_api_version_a_kind_and_a_name() {
    for b in builds() {
        for d in &b.docs {
            assert!(
                str_at(d, "/apiVersion").is_some_and(|v| !v.is_empty()),
                "{}: no apiVersion in {d}",
                b.dir
            );
            assert!(!kind(d).is_empty(), "{}: no kind in {d}", b.dir);
            assert!(!name(d).is_empty(), "{}: no metadata.name in {d}", b.dir);
        }
        let mut seen = BTreeSet::new();
        for d in &b.docs {
            assert!(
                seen.insert((kind(d).to_string(), name(d).to_string())),
                "{}: {} {} twice",
                b.dir,
                kind(d),
                name(d)
            );
        }
    }
}

#[test]
fn every_namespaced_object_is_in_the_exploder_namespace() {
    for b in builds() {
        assert!(b.has("Namespace", NAMESPACE), "{}: no Namespace", b.dir);
        for d in &b.docs {
            let ns = str_at(d, "/metadata/namespace");
            if CLUSTER_SCOPED.contains(&kind(d)) {
                assert_eq!(
                    ns,
                    None,
                    "{}: {} {} is cluster-scoped",
                    b.dir,
                    kind(d),
                    name(d)
                );
            } else {
                assert_eq!(ns, Some(NAMESPACE), "{}: {} {}", b.dir, kind(d), name(d));
            }
        }
    }
}

#[test]
fn every_object_carries_the_part_of_label() {
    // Checked on the kustomize output itself: the JSON conversion sets it.
    for dir in kustomization_dirs() {
        for doc in kustomize(&dir).split("\n---\n") {
            assert!(
                doc.contains("    app.kubernetes.io/part-of: exploder\n"),
                "{dir}: no part-of label in\n{doc}"
            );
        }
    }
}

#[test]
fn the_images_transform_reaches_every_container() {
    for b in builds() {
        let mut images = BTreeSet::new();
        for d in b.of_kind("Deployment") {
            for c in containers(d).iter().chain(init_containers(d)) {
                images.insert(str_at(c, "/image").unwrap_or("").to_string());
            }
        }
        assert_eq!(images.len(), 1, "{}: images {images:?}", b.dir);
        let image = images.first().expect("one image");
        assert!(
            image.contains('/') && image.contains(':'),
            "{}: image {image} was not set by images:",
            b.dir
        );
    }
}

// ---------------------------------------------------------------------------
// kustomize v2.0.3 compatibility

#[test]
fn kustomizations_use_only_what_kustomize_2_0_3_supports() {
    let supported = [
        "apiVersion",
        "kind",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "commonLabels",
        "commonAnnotations",
        "resources",
        "bases",
        "images",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
        "patchesStrategicMerge",
        "patchesJson6902",
    ];
    for dir in kustomization_dirs() {
        for key in kustomization(&dir).keys() {
            assert!(
                supported.contains(&key.as_str()),
                "k8s/{dir}/kustomization.yaml: {key:?} is unknown to kustomize v2.0.3 (kubectl 1.20)"
            );
        }
    }
}

#[test]
fn resources_are_files_and_bases_are_directories() {
    // kustomize v2.0.3 takes directories only under bases:.
    for dir in kustomization_dirs() {
        let k = kustomization(&dir);
        for r in list_items(k.get("resources").map(Vec::as_slice).unwrap_or(&[])) {
            assert!(
                k8s(&dir).join(&r).is_file(),
                "k8s/{dir}: resource {r} is not a file"
            );
        }
        for b in list_items(k.get("bases").map(Vec::as_slice).unwrap_or(&[])) {
            assert!(
                k8s(&dir).join(&b).join("kustomization.yaml").is_file(),
                "k8s/{dir}: base {b} is not a kustomization directory"
            );
        }
    }
}

#[test]
fn custom_resources_are_patched_only_with_json6902() {
    // Strategic merge does not know the schema of keda.sh or
    // monitoring.coreos.com objects: patches of those must be JSON patches.
    for dir in kustomization_dirs() {
        let k = kustomization(&dir);
        for p in list_items(
            k.get("patchesStrategicMerge")
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ) {
            let text = read(&k8s(&dir).join(&p));
            for line in text.lines().filter(|l| l.starts_with("apiVersion:")) {
                let version = line["apiVersion:".len()..].trim();
                let group = version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
                assert!(
                    !group.contains('.') || group.ends_with(".k8s.io"),
                    "k8s/{dir}/{p}: strategic merge patch of {version}: use patchesJson6902"
                );
            }
        }
        let json6902 = k.get("patchesJson6902").cloned().unwrap_or_default();
        for p in values_of(&json6902, "path") {
            assert!(k8s(&dir).join(&p).is_file(), "k8s/{dir}: patch {p} missing");
        }
    }
}

// ---------------------------------------------------------------------------
// Secrets

#[test]
fn no_build_ships_secret_values() {
    for b in builds() {
        for s in b.of_kind("Secret") {
            assert_ne!(
                name(s),
                SECRET,
                "{}: {SECRET} must be created by hand",
                b.dir
            );
            assert!(
                s.get("data").is_none() && s.get("stringData").is_none(),
                "{}: Secret {} carries values",
                b.dir,
                name(s)
            );
        }
    }
    let base = kustomization("base");
    let resources = list_items(base.get("resources").map(Vec::as_slice).unwrap_or(&[]));
    assert!(!resources.iter().any(|r| r.contains("secret.example")));
}

#[test]
fn every_secret_key_the_manifests_read_is_documented_in_the_example() {
    let (documented, _) = example_secret();
    for b in builds() {
        let mut keys = BTreeSet::new();
        for d in b.of_kind("Deployment") {
            for c in containers(d).iter().chain(init_containers(d)) {
                for e in array_at(c, "/env") {
                    if let Some((secret, key)) = secret_key_ref(e) {
                        assert_eq!(secret, SECRET, "{}: {} reads {secret}", b.dir, name(d));
                        assert_eq!(key, name_field(e), "{}: key and variable differ", b.dir);
                        keys.insert(key.to_string());
                    }
                }
            }
        }
        for t in b.of_kind("TriggerAuthentication") {
            for r in array_at(t, "/spec/secretTargetRef") {
                if str_at(r, "/name") == Some(SECRET) {
                    keys.insert(str_at(r, "/key").unwrap_or("").to_string());
                }
            }
        }
        assert!(keys.contains("EXPLODER_AMQP_URL"), "{}: {keys:?}", b.dir);
        for key in &keys {
            assert!(
                documented.contains(key),
                "{}: {key} is read but not in secret.example.yaml",
                b.dir
            );
        }
    }
}

#[test]
fn only_the_broker_and_redis_urls_are_required_secret_keys() {
    // Everything else is optional: a missing key must not keep pods from
    // starting (the producer itself says which webhook lacks a secret).
    for b in builds() {
        for d in b.of_kind("Deployment") {
            for c in containers(d).iter().chain(init_containers(d)) {
                for e in array_at(c, "/env") {
                    let Some((_, key)) = secret_key_ref(e) else {
                        continue;
                    };
                    let optional = e
                        .pointer("/valueFrom/secretKeyRef/optional")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let required = matches!(key, "EXPLODER_AMQP_URL" | "EXPLODER_REDIS_URL");
                    assert_eq!(!optional, required, "{}: {} {key}", b.dir, name(d));
                }
            }
        }
    }
}

#[test]
fn everything_a_pod_references_exists_in_the_build_or_is_the_documented_secret() {
    for b in builds() {
        for d in b.of_kind("Deployment") {
            let spec = pod_spec(d);
            let sa = str_at(spec, "/serviceAccountName").unwrap_or("default");
            assert!(
                b.has("ServiceAccount", sa),
                "{}: {} runs as {sa}",
                b.dir,
                name(d)
            );
            for v in array_at(spec, "/volumes") {
                if let Some(cm) = str_at(v, "/configMap/name") {
                    assert!(b.has("ConfigMap", cm), "{}: ConfigMap {cm}", b.dir);
                }
                if let Some(claim) = str_at(v, "/persistentVolumeClaim/claimName") {
                    assert!(b.has("PersistentVolumeClaim", claim), "{}: {claim}", b.dir);
                }
                if let Some(secret) = str_at(v, "/secret/secretName") {
                    let optional = v
                        .pointer("/secret/optional")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    assert!(
                        b.has("Secret", secret) || optional,
                        "{}: Secret volume {secret} must exist or be optional",
                        b.dir
                    );
                }
            }
            for c in containers(d).iter().chain(init_containers(d)) {
                for from in array_at(c, "/envFrom") {
                    if let Some(cm) = str_at(from, "/configMapRef/name") {
                        assert!(b.has("ConfigMap", cm), "{}: envFrom {cm}", b.dir);
                    }
                }
                let mounts: BTreeSet<_> = array_at(c, "/volumeMounts")
                    .iter()
                    .map(name_field)
                    .collect();
                let volumes: BTreeSet<_> =
                    array_at(spec, "/volumes").iter().map(name_field).collect();
                assert!(mounts.is_subset(&volumes), "{}: {mounts:?}", b.dir);
            }
        }
        for t in b.of_kind("TriggerAuthentication") {
            for r in array_at(t, "/spec/secretTargetRef") {
                let secret = str_at(r, "/name").unwrap_or("");
                assert!(
                    secret == SECRET || b.has("Secret", secret),
                    "{}: {secret}",
                    b.dir
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Deployments

#[test]
fn every_container_has_readiness_and_liveness_probes_on_the_metrics_port() {
    for b in builds() {
        for d in b.of_kind("Deployment") {
            for c in containers(d) {
                let ports: BTreeSet<_> = array_at(c, "/ports")
                    .iter()
                    .map(|p| {
                        (
                            name_field(p),
                            p.get("containerPort").and_then(Value::as_u64),
                        )
                    })
                    .collect();
                assert!(
                    ports.contains(&("metrics", Some(9100))),
                    "{}: {ports:?}",
                    b.dir
                );
                for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
                {
                    let p = c
                        .get(probe)
                        .unwrap_or_else(|| panic!("{}: {} has no {probe}", b.dir, name(d)));
                    assert_eq!(str_at(p, "/httpGet/path"), Some(path), "{}: {probe}", b.dir);
                    assert_eq!(str_at(p, "/httpGet/port"), Some("metrics"), "{}", b.dir);
                }
            }
        }
    }
}

#[test]
fn every_container_has_cpu_and_memory_requests_and_limits() {
    for b in builds() {
        for d in b.of_kind("Deployment") {
            for c in containers(d).iter().chain(init_containers(d)) {
                for what in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(
                            c.pointer(&format!("/resources/{what}/{res}")).is_some(),
                            "{}: {}/{} has no {what}.{res}",
                            b.dir,
                            name(d),
                            name_field(c)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_deployment_sets_its_termination_grace_period() {
    for b in builds() {
        for d in b.of_kind("Deployment") {
            let grace = pod_spec(d)
                .get("terminationGracePeriodSeconds")
                .and_then(Value::as_u64);
            assert!(grace.is_some_and(|g| g > 0), "{}: {}", b.dir, name(d));
        }
    }
}

#[test]
fn the_worker_is_killed_only_well_after_its_grace_period_ends() {
    for b in builds() {
        let worker = b.worker();
        let c = container(worker, "worker");
        let grace: u64 = env_value(c, "EXPLODER_GRACE_PERIOD")
            .or_else(|| env_from_config_map(b, c, "EXPLODER_GRACE_PERIOD"))
            .unwrap_or("30")
            .parse()
            .expect("EXPLODER_GRACE_PERIOD is a number of seconds");
        let kill = pod_spec(worker)["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            kill >= grace + 10,
            "{}: terminationGracePeriodSeconds {kill} leaves no margin after EXPLODER_GRACE_PERIOD {grace}",
            b.dir
        );
    }
}

#[test]
fn the_producer_runs_two_replicas_spread_over_nodes() {
    for b in builds() {
        let p = b.producer();
        assert_eq!(p.pointer("/spec/replicas").and_then(Value::as_u64), Some(2));
        assert_eq!(
            p.pointer("/spec/strategy/rollingUpdate/maxUnavailable")
                .and_then(Value::as_u64),
            Some(0),
            "{}: a rollout must keep both webhook receivers",
            b.dir
        );
        assert!(
            pod_spec(p).pointer("/affinity/podAntiAffinity").is_some(),
            "{}",
            b.dir
        );
    }
}

#[test]
fn the_producer_declares_the_broker_topology_before_it_starts() {
    for b in builds() {
        let p = b.producer();
        let init = init_containers(p)
            .iter()
            .find(|c| {
                let cmd: Vec<_> = array_at(c, "/command")
                    .iter()
                    .chain(array_at(c, "/args"))
                    .filter_map(Value::as_str)
                    .collect();
                cmd == ["exploder", "topology", "apply"]
            })
            .unwrap_or_else(|| panic!("{}: no `exploder topology apply` initContainer", b.dir));
        assert_eq!(
            env(init, "EXPLODER_AMQP_URL").and_then(secret_key_ref),
            Some((SECRET, "EXPLODER_AMQP_URL"))
        );
        // The same prefix as the producer, so it declares the queues the
        // fleet uses.
        let producer = container(p, "producer");
        assert_eq!(
            env_from_config_map(b, init, "EXPLODER_PREFIX"),
            env_from_config_map(b, producer, "EXPLODER_PREFIX"),
            "{}",
            b.dir
        );
        assert!(env_from_config_map(b, producer, "EXPLODER_PREFIX").is_some());
    }
}

#[test]
fn producer_and_workers_share_one_read_write_many_store_at_the_store_path() {
    for b in builds() {
        let mut claims = BTreeSet::new();
        for (d, c) in [(b.producer(), "producer"), (b.worker(), "worker")] {
            let c = container(d, c);
            let mount = array_at(c, "/volumeMounts")
                .iter()
                .find(|m| str_at(m, "/mountPath") == Some(contract::STORE))
                .unwrap_or_else(|| {
                    panic!("{}: {} does not mount {}", b.dir, name(d), contract::STORE)
                });
            assert_ne!(mount.get("readOnly"), Some(&Value::Bool(true)));
            let volume = array_at(pod_spec(d), "/volumes")
                .iter()
                .find(|v| name_field(v) == name_field(mount))
                .expect("the mounted volume");
            claims.insert(
                str_at(volume, "/persistentVolumeClaim/claimName")
                    .expect("the store is a PVC")
                    .to_string(),
            );
            assert_eq!(
                env_value(c, "EXPLODER_STORE").or_else(|| env_from_config_map(
                    b,
                    c,
                    "EXPLODER_STORE"
                )),
                Some(contract::STORE),
                "{}: {}",
                b.dir,
                name(d)
            );
        }
        assert_eq!(claims.len(), 1, "{}: {claims:?}", b.dir);
        let pvc = b.get("PersistentVolumeClaim", claims.first().expect("one claim"));
        assert_eq!(
            strings_at(pvc, "/spec/accessModes"),
            BTreeSet::from(["ReadWriteMany".to_string()])
        );
    }
}

#[test]
fn both_daemons_serve_metrics_on_the_address_the_probes_use() {
    for b in builds() {
        for (d, c) in [(b.producer(), "producer"), (b.worker(), "worker")] {
            let c = container(d, c);
            let listen = env_value(c, "EXPLODER_METRICS_LISTEN")
                .or_else(|| env_from_config_map(b, c, "EXPLODER_METRICS_LISTEN"))
                .unwrap_or("0.0.0.0:9100");
            assert_eq!(listen, "0.0.0.0:9100", "{}: {}", b.dir, name(d));
        }
    }
}

#[test]
fn the_worker_shutdown_settings_reach_the_worker() {
    for b in builds() {
        let c = container(b.worker(), "worker");
        for var in ["EXPLODER_CONCURRENCY", "EXPLODER_GRACE_PERIOD"] {
            let v = env_value(c, var).unwrap_or_else(|| panic!("{}: no {var}", b.dir));
            assert!(
                v.parse::<u64>().is_ok_and(|n| n > 0),
                "{}: {var}={v}",
                b.dir
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Leader election and RBAC

/// The verbs `subject` (a ServiceAccount in the namespace) gets on
/// `group`/`resource`, through (Cluster)RoleBindings of the build, with the
/// resourceNames each rule is limited to (empty: any).
fn grants(
    b: &Build,
    sa: &str,
    group: &str,
    resource: &str,
    cluster: bool,
) -> Vec<(BTreeSet<String>, BTreeSet<String>)> {
    let (binding_kind, role_kind) = if cluster {
        ("ClusterRoleBinding", "ClusterRole")
    } else {
        ("RoleBinding", "Role")
    };
    let mut out = Vec::new();
    for binding in b.of_kind(binding_kind) {
        let bound = array_at(binding, "/subjects").iter().any(|s| {
            str_at(s, "/kind") == Some("ServiceAccount")
                && str_at(s, "/name") == Some(sa)
                && str_at(s, "/namespace") == Some(NAMESPACE)
        });
        if !bound || str_at(binding, "/roleRef/kind") != Some(role_kind) {
            continue;
        }
        let role = b.get(role_kind, str_at(binding, "/roleRef/name").unwrap_or(""));
        for rule in array_at(role, "/rules") {
            if strings_at(rule, "/apiGroups").contains(group)
                && strings_at(rule, "/resources").contains(resource)
            {
                out.push((
                    strings_at(rule, "/verbs"),
                    strings_at(rule, "/resourceNames"),
                ));
            }
        }
    }
    out
}

#[test]
fn the_producer_takes_a_lease_its_role_lets_it_create_get_and_update() {
    for b in builds() {
        let p = b.producer();
        let c = container(p, "producer");
        let lease = env_value(c, "EXPLODER_LEASE_NAME").expect("EXPLODER_LEASE_NAME");
        assert_eq!(lease, "exploder-producer");
        assert_eq!(
            env(c, "EXPLODER_POD_NAME").and_then(|e| str_at(e, "/valueFrom/fieldRef/fieldPath")),
            Some("metadata.name")
        );
        assert_eq!(
            env(c, "EXPLODER_POD_NAMESPACE")
                .and_then(|e| str_at(e, "/valueFrom/fieldRef/fieldPath")),
            Some("metadata.namespace")
        );
        let sa = str_at(pod_spec(p), "/serviceAccountName").expect("a ServiceAccount");
        let rules = grants(b, sa, "coordination.k8s.io", "leases", false);
        for verb in ["create", "get", "update"] {
            assert!(
                rules.iter().any(|(verbs, names)| {
                    verbs.contains(verb)
                        && (names.is_empty() || names.contains(lease) || verb == "create")
                }),
                "{}: {sa} may not {verb} lease {lease}: {rules:?}",
                b.dir
            );
        }
    }
}

#[test]
fn the_producer_may_get_list_and_watch_imagestreams_in_every_namespace() {
    for b in builds() {
        let sa = str_at(pod_spec(b.producer()), "/serviceAccountName").expect("a ServiceAccount");
        let rules = grants(b, sa, "image.openshift.io", "imagestreams", true);
        for verb in ["get", "list", "watch"] {
            assert!(
                rules
                    .iter()
                    .any(|(verbs, names)| verbs.contains(verb) && names.is_empty()),
                "{}: {sa} may not {verb} imagestreams cluster-wide: {rules:?}",
                b.dir
            );
        }
    }
}

#[test]
fn the_workers_get_no_kubernetes_api_token() {
    for b in builds() {
        let spec = pod_spec(b.worker());
        assert_eq!(
            spec.get("automountServiceAccountToken"),
            Some(&Value::Bool(false))
        );
        let sa = str_at(spec, "/serviceAccountName").expect("a ServiceAccount");
        assert_ne!(
            sa,
            str_at(pod_spec(b.producer()), "/serviceAccountName").unwrap_or("")
        );
    }
}

// ---------------------------------------------------------------------------
// Services and disruption budgets

#[test]
fn the_producer_service_exposes_webhooks_and_metrics_on_ports_the_pods_declare() {
    for b in builds() {
        let svc = b.get("Service", "exploder-producer");
        let p = b.producer();
        assert!(
            selects(&svc["spec"]["selector"], pod_labels(p)),
            "{}",
            b.dir
        );
        let declared: BTreeMap<_, _> = array_at(container(p, "producer"), "/ports")
            .iter()
            .map(|port| (name_field(port).to_string(), port["containerPort"].as_u64()))
            .collect();
        let mut exposed = BTreeMap::new();
        for port in array_at(svc, "/spec/ports") {
            let target = str_at(port, "/targetPort").expect("named targetPort");
            assert!(declared.contains_key(target), "{}: {target}", b.dir);
            exposed.insert(port["port"].as_u64(), declared[target]);
        }
        assert_eq!(exposed.get(&Some(8088)), Some(&Some(8088)), "{}", b.dir);
        assert_eq!(exposed.get(&Some(9100)), Some(&Some(9100)), "{}", b.dir);
    }
}

#[test]
fn the_worker_metrics_service_selects_only_workers() {
    for b in builds() {
        let svc = b.get("Service", "exploder-worker");
        assert!(selects(&svc["spec"]["selector"], pod_labels(b.worker())));
        assert!(!selects(&svc["spec"]["selector"], pod_labels(b.producer())));
    }
}

#[test]
fn disruption_budgets_cover_the_producer_and_the_workers() {
    for b in builds() {
        for d in [b.producer(), b.worker()] {
            let covering: Vec<_> = b
                .of_kind("PodDisruptionBudget")
                .filter(|pdb| selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels(d)))
                .collect();
            assert_eq!(covering.len(), 1, "{}: PDBs of {}", b.dir, name(d));
            let pdb = covering[0];
            assert!(
                pdb.pointer("/spec/maxUnavailable").is_some()
                    || pdb.pointer("/spec/minAvailable").is_some(),
                "{}: {}",
                b.dir,
                name(pdb)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The producer's config file

fn producer_config(b: &Build) -> Config {
    let p = b.producer();
    let c = container(p, "producer");
    let path = env_value(c, "EXPLODER_CONFIG").expect("EXPLODER_CONFIG");
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = array_at(c, "/volumeMounts")
        .iter()
        .find(|m| str_at(m, "/mountPath") == Some(dir))
        .unwrap_or_else(|| panic!("{}: nothing mounted at {dir}", b.dir));
    let volume = array_at(pod_spec(p), "/volumes")
        .iter()
        .find(|v| name_field(v) == name_field(mount))
        .expect("the config volume");
    let cm = b.get(
        "ConfigMap",
        str_at(volume, "/configMap/name").expect("a ConfigMap"),
    );
    let text = str_at(cm, &format!("/data/{file}"))
        .unwrap_or_else(|| panic!("{}: ConfigMap {} has no {file}", b.dir, name(cm)));
    Config::parse(text).unwrap_or_else(|e| panic!("{}: {path}: {e}", b.dir))
}

#[test]
fn with_the_example_secret_the_producer_config_enables_a_source_in_every_build() {
    let (_, example) = example_secret();
    for b in builds() {
        let config = producer_config(b);
        let c = container(b.producer(), "producer");
        // What the producer's environment holds: the example's keys the
        // Deployment maps into it.
        let environment = |var: &str| {
            env(c, var)
                .and_then(secret_key_ref)
                .and_then(|(_, key)| example.get(key).cloned())
        };
        let webhooks = config
            .webhooks
            .resolve(environment)
            .unwrap_or_else(|e| panic!("{}: the producer would exit 2: {e}", b.dir));
        assert!(
            !webhooks.endpoints.is_empty()
                || config.poll.is_some()
                || config.imagestreams.is_some(),
            "{}: no source enabled",
            b.dir
        );
    }
}

#[test]
fn the_base_producer_serves_the_registry_webhook() {
    let (_, example) = example_secret();
    let config = producer_config(build("base"));
    let webhooks = config
        .webhooks
        .resolve(|var| example.get(var).cloned())
        .expect("endpoints resolve");
    let names: Vec<_> = webhooks
        .endpoints
        .iter()
        .map(|e| e.dialect.name())
        .collect();
    assert!(names.contains(&"registry"), "{names:?}");
}

#[test]
fn the_openshift_producer_watches_imagestreams_without_any_webhook_secret() {
    let config = producer_config(build("overlays/openshift"));
    assert!(config.imagestreams.is_some(), "no imagestreams: section");
    let webhooks = config
        .webhooks
        .resolve(|_| None)
        .expect("no endpoint demands a secret");
    assert!(webhooks.endpoints.is_empty());
}

// ---------------------------------------------------------------------------
// Autoscaling

fn scaled_object(b: &Build) -> &Value {
    let mut all = b.of_kind("ScaledObject");
    let so = all
        .next()
        .unwrap_or_else(|| panic!("{}: no ScaledObject", b.dir));
    assert!(all.next().is_none(), "{}: one ScaledObject", b.dir);
    so
}

#[test]
fn the_base_needs_no_keda() {
    let base = build("base");
    for d in &base.docs {
        let api = str_at(d, "/apiVersion").unwrap_or("");
        assert!(
            !api.starts_with("keda.sh/"),
            "base has {} {}",
            kind(d),
            name(d)
        );
    }
    assert!(base.worker().pointer("/spec/replicas").is_some());
}

#[test]
fn the_scaled_object_targets_the_worker_deployment() {
    for b in keda_builds() {
        let so = scaled_object(b);
        assert_eq!(str_at(so, "/spec/scaleTargetRef/kind"), Some("Deployment"));
        assert_eq!(
            str_at(so, "/spec/scaleTargetRef/apiVersion"),
            Some("apps/v1")
        );
        let target = str_at(so, "/spec/scaleTargetRef/name").expect("a target name");
        assert_eq!(target, name(b.worker()), "{}", b.dir);
        let min = so.pointer("/spec/minReplicaCount").and_then(Value::as_u64);
        let max = so.pointer("/spec/maxReplicaCount").and_then(Value::as_u64);
        assert!(
            matches!((min, max), (Some(lo), Some(hi)) if lo >= 1 && hi > lo),
            "{}: min {min:?} max {max:?}",
            b.dir
        );
    }
}

#[test]
fn under_keda_the_worker_deployment_leaves_its_replica_count_to_the_autoscaler() {
    for b in keda_builds() {
        assert_eq!(b.worker().pointer("/spec/replicas"), None, "{}", b.dir);
        assert!(
            b.producer().pointer("/spec/replicas").is_some(),
            "{}",
            b.dir
        );
    }
}

#[test]
fn keda_scales_the_workers_on_the_length_of_every_work_queue() {
    let b = build("overlays/keda");
    let so = scaled_object(b);
    let mut queues = BTreeSet::new();
    for t in array_at(so, "/spec/triggers") {
        assert_eq!(str_at(t, "/type"), Some("rabbitmq"));
        assert_eq!(str_at(t, "/metadata/mode"), Some("QueueLength"));
        let value = str_at(t, "/metadata/value").expect("value");
        assert!(value.parse::<f64>().is_ok_and(|v| v > 0.0), "value {value}");
        assert_eq!(
            str_at(t, "/metadata/host"),
            None,
            "the URL belongs in the Secret"
        );
        let auth = b.get(
            "TriggerAuthentication",
            str_at(t, "/authenticationRef/name").expect("authenticationRef"),
        );
        let host = array_at(auth, "/spec/secretTargetRef")
            .iter()
            .find(|r| str_at(r, "/parameter") == Some("host"))
            .expect("host from a Secret");
        assert_eq!(str_at(host, "/name"), Some(SECRET));
        assert_eq!(str_at(host, "/key"), Some("EXPLODER_AMQP_URL"));
        queues.insert(
            str_at(t, "/metadata/queueName")
                .expect("queueName")
                .to_string(),
        );
    }
    assert_eq!(
        queues,
        BTreeSet::from(["exploder.export", "exploder.image", "exploder.layer"].map(String::from))
    );
}

#[test]
fn keda_trigger_metadata_values_are_all_strings() {
    // KEDA's CRD types trigger metadata as map[string]string: an unquoted
    // number or boolean is rejected by the API server.
    for b in keda_builds() {
        for t in array_at(scaled_object(b), "/spec/triggers") {
            let metadata = t["metadata"].as_object().expect("trigger metadata");
            for (k, v) in metadata {
                assert!(v.is_string(), "{}: trigger metadata {k}: {v}", b.dir);
            }
        }
    }
}

#[test]
fn on_openshift_the_workers_scale_on_the_queue_depth_in_thanos_instead_of_rabbitmq() {
    let b = build("overlays/openshift");
    let so = scaled_object(b);
    let triggers = array_at(so, "/spec/triggers");
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    let t = &triggers[0];
    assert_eq!(str_at(t, "/type"), Some("prometheus"));
    let server = str_at(t, "/metadata/serverAddress").expect("serverAddress");
    assert!(
        server.starts_with("https://thanos-querier.openshift-monitoring.svc"),
        "{server}"
    );
    let query = str_at(t, "/metadata/query").expect("query");
    assert!(query.contains("exploder_queue_messages_ready"), "{query}");
    assert!(
        query.contains(r#"queue=~"exploder.(layer|image|export)""#),
        "{query}"
    );
    let threshold = str_at(t, "/metadata/threshold").expect("threshold");
    assert!(
        threshold.parse::<f64>().is_ok_and(|v| v > 0.0),
        "{threshold}"
    );
    assert_eq!(str_at(t, "/metadata/namespace"), Some(NAMESPACE));
    assert_eq!(str_at(t, "/metadata/authModes"), Some("bearer"));
    // The bearer token: a service-account token Secret of the build, whose
    // account may read metrics in the namespace.
    let auth = b.get(
        "TriggerAuthentication",
        str_at(t, "/authenticationRef/name").expect("authenticationRef"),
    );
    let token = array_at(auth, "/spec/secretTargetRef")
        .iter()
        .find(|r| str_at(r, "/parameter") == Some("bearerToken"))
        .expect("a bearerToken");
    let secret = b.get("Secret", str_at(token, "/name").expect("a Secret"));
    assert_eq!(
        str_at(secret, "/type"),
        Some("kubernetes.io/service-account-token")
    );
    let sa = str_at(
        secret,
        "/metadata/annotations/kubernetes.io~1service-account.name",
    )
    .expect("the token's ServiceAccount");
    assert!(b.has("ServiceAccount", sa));
    assert!(
        grants(b, sa, "", "pods", false)
            .iter()
            .any(|(verbs, _)| verbs.contains("get")),
        "{sa} may not read pods"
    );
}

#[test]
fn on_openshift_something_scrapes_the_producer_metrics_the_autoscaler_reads() {
    let b = build("overlays/openshift");
    let producer_svc = b.get("Service", "exploder-producer");
    let labels = producer_svc
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .expect("Service labels");
    let monitors: Vec<_> = b
        .of_kind("ServiceMonitor")
        .filter(|m| selects(&m["spec"]["selector"]["matchLabels"], labels))
        .collect();
    assert_eq!(monitors.len(), 1);
    let ports: BTreeSet<_> = array_at(monitors[0], "/spec/endpoints")
        .iter()
        .filter_map(|e| str_at(e, "/port"))
        .collect();
    assert!(ports.contains("metrics"), "{ports:?}");
}

// ---------------------------------------------------------------------------
// Security contexts

#[test]
fn outside_openshift_only_the_workers_get_capabilities_and_only_file_ones() {
    let allowed: BTreeSet<_> = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP"]
        .map(String::from)
        .into();
    for dir in ["base", "overlays/keda"] {
        let b = build(dir);
        for d in b.of_kind("Deployment") {
            for c in containers(d).iter().chain(init_containers(d)) {
                let sc = c.get("securityContext").expect("a securityContext");
                assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
                assert_eq!(
                    strings_at(sc, "/capabilities/drop"),
                    BTreeSet::from(["ALL".to_string()])
                );
                let added = strings_at(sc, "/capabilities/add");
                if name_field(c) == "worker" {
                    assert_eq!(added, allowed, "{dir}");
                } else {
                    assert!(added.is_empty(), "{dir}: {} adds {added:?}", name_field(c));
                }
            }
        }
    }
}

#[test]
fn on_openshift_every_pod_runs_rootless_without_added_capabilities() {
    // What the restricted-v2 SCC admits.
    let b = build("overlays/openshift");
    for d in b.of_kind("Deployment") {
        let spec = pod_spec(d);
        assert_eq!(
            spec.pointer("/securityContext/runAsUser"),
            None,
            "{}",
            name(d)
        );
        assert_eq!(
            spec.pointer("/securityContext/runAsNonRoot"),
            Some(&Value::Bool(true)),
            "{}",
            name(d)
        );
        for c in containers(d).iter().chain(init_containers(d)) {
            assert_eq!(c.pointer("/securityContext/runAsUser"), None);
            assert!(
                strings_at(c, "/securityContext/capabilities/add").is_empty(),
                "{}",
                name_field(c)
            );
            assert_eq!(
                strings_at(c, "/securityContext/capabilities/drop"),
                BTreeSet::from(["ALL".to_string()])
            );
        }
    }
}

#[test]
fn on_openshift_producer_and_workers_trust_the_service_ca_besides_the_system_cas() {
    let b = build("overlays/openshift");
    for (d, c) in [(b.producer(), "producer"), (b.worker(), "worker")] {
        let c = container(d, c);
        assert_eq!(
            env_value(c, "SSL_CERT_FILE"),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        let dir = env_value(c, "SSL_CERT_DIR").expect("SSL_CERT_DIR");
        let mount = array_at(c, "/volumeMounts")
            .iter()
            .find(|m| str_at(m, "/mountPath") == Some(dir))
            .expect("the service CA is mounted at SSL_CERT_DIR");
        let volume = array_at(pod_spec(d), "/volumes")
            .iter()
            .find(|v| name_field(v) == name_field(mount))
            .expect("its volume");
        let cm = b.get(
            "ConfigMap",
            str_at(volume, "/configMap/name").expect("a ConfigMap"),
        );
        assert_eq!(
            str_at(
                cm,
                "/metadata/annotations/service.beta.openshift.io~1inject-cabundle"
            ),
            Some("true")
        );
    }
}

// ---------------------------------------------------------------------------
// What k8s shares with compose (tests/src/deployment.rs)

/// A container's setting: its literal value (from `env` or the ConfigMap
/// it reads through envFrom), or a secret (a secretKeyRef).
fn setting(b: &Build, c: &Value, var: &str) -> Option<Setting> {
    if let Some(e) = env(c, var) {
        if secret_key_ref(e).is_some() {
            return Some(Setting::Secret);
        }
        return str_at(e, "/value").map(|v| Setting::Literal(v.to_string()));
    }
    env_from_config_map(b, c, var).map(|v| Setting::Literal(v.to_string()))
}

/// The port number a probe's `port` names (a number or a container port's
/// name).
fn probe_port(c: &Value, probe: &str) -> u64 {
    let port = c
        .pointer(&format!("/{probe}/httpGet/port"))
        .unwrap_or_else(|| panic!("{}: no {probe}", name_field(c)));
    port.as_u64().unwrap_or_else(|| {
        array_at(c, "/ports")
            .iter()
            .find(|p| p.get("name") == Some(port))
            .and_then(|p| p.pointer("/containerPort"))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{}: {probe} names no port of the container", name_field(c)))
    })
}

#[test]
fn every_build_has_the_env_ports_paths_and_probes_the_compose_fleet_has() {
    for b in builds() {
        let producer = container(b.producer(), "producer");
        let worker = container(b.worker(), "worker");
        let topology = init_containers(b.producer())
            .iter()
            .find(|c| name_field(c) == "topology")
            .unwrap_or_else(|| panic!("{}: no topology initContainer", b.dir));
        let wanted = [
            (
                producer,
                contract::PRODUCER_COMMAND,
                [contract::shared_env(), contract::producer_env()].concat(),
            ),
            (
                worker,
                contract::WORKER_COMMAND,
                [contract::shared_env(), contract::worker_env()].concat(),
            ),
            (
                topology,
                contract::TOPOLOGY_COMMAND,
                contract::topology_env(),
            ),
        ];
        for (c, command, vars) in wanted {
            let what = format!("{}: {}", b.dir, name_field(c));
            let got: Vec<&str> = array_at(c, "/command")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(got, command, "{what}: command");
            for (var, value) in vars {
                assert_eq!(setting(b, c, var), Some(value), "{what}: {var}");
            }
        }
        for c in [producer, worker] {
            let what = format!("{}: {}", b.dir, name_field(c));
            for (probe, path) in [
                ("readinessProbe", contract::READINESS_PATH),
                ("livenessProbe", contract::LIVENESS_PATH),
            ] {
                assert_eq!(
                    str_at(c, &format!("/{probe}/httpGet/path")),
                    Some(path),
                    "{what}: {probe}"
                );
                assert_eq!(
                    probe_port(c, probe),
                    u64::from(contract::METRICS_PORT),
                    "{what}: {probe}'s port"
                );
            }
        }
        let ports: BTreeSet<u64> = array_at(producer, "/ports")
            .iter()
            .filter_map(|p| p.pointer("/containerPort").and_then(Value::as_u64))
            .collect();
        assert!(
            ports.contains(&u64::from(contract::WEBHOOK_PORT)),
            "{}: the producer's webhook port",
            b.dir
        );
        assert!(
            array_at(producer, "/volumeMounts")
                .iter()
                .any(|m| str_at(m, "/mountPath") == Some(contract::PRODUCER_CONFIG_DIR)),
            "{}: the producer's config at {}",
            b.dir,
            contract::PRODUCER_CONFIG_DIR
        );
        assert_eq!(
            pod_spec(b.worker())["terminationGracePeriodSeconds"],
            contract::WORKER_STOP_SECS,
            "{}: the worker's terminationGracePeriodSeconds",
            b.dir
        );
    }
}
