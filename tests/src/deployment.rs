//! What the two deployments share, declared once: the environment every
//! exploder container gets and its values, the ports, the paths, the
//! probes, the commands and the shutdown timing of compose/ and k8s/ (and
//! the Dockerfile's defaults they rely on).
//!
//! tests/tests/deploy_compose.rs and tests/tests/deploy_k8s.rs each check
//! their files against this, so a change to one deployment that the other
//! does not follow fails a test; change it here, then in both.

/// Where the store is mounted in the producer and every worker: the
/// image's own `EXPLODER_STORE`, whose directory belongs to its
/// unprivileged user (so a fresh volume is writable rootless too).
pub const STORE: &str = "/var/lib/exploder";

/// The directory the producer's config file is mounted in (a ConfigMap
/// on Kubernetes, `compose/producer/` in compose), and the file.
pub const PRODUCER_CONFIG_DIR: &str = "/etc/exploder/config";
pub const PRODUCER_CONFIG: &str = "/etc/exploder/config/exploder.yaml";

/// The producer's webhook port.
pub const WEBHOOK_PORT: u16 = 8088;
/// `/metrics`, `/healthz` and `/readyz` of the producer and the workers.
pub const METRICS_PORT: u16 = 9100;
/// The readiness probe (broker and Redis reachable, store writable): the
/// compose healthcheck and the Kubernetes readinessProbe.
pub const READINESS_PATH: &str = "/readyz";
/// The liveness probe (the process serves): Kubernetes' livenessProbe.
pub const LIVENESS_PATH: &str = "/healthz";

/// Jobs of each kind one worker handles at once.
pub const WORKER_CONCURRENCY: u64 = 2;
/// Seconds a worker's in-flight jobs get after SIGTERM.
pub const WORKER_GRACE_SECS: u64 = 30;
/// Seconds the engine waits after SIGTERM before it kills a worker
/// (compose `stop_grace_period`, Kubernetes
/// `terminationGracePeriodSeconds`): the grace period and some.
pub const WORKER_STOP_SECS: u64 = 45;

pub const PRODUCER_COMMAND: &[&str] = &["exploder-producer"];
pub const WORKER_COMMAND: &[&str] = &["exploder-worker"];
/// Declares the broker's topology before anything publishes or consumes
/// (compose: a one-shot service; Kubernetes: the producer's
/// initContainer).
pub const TOPOLOGY_COMMAND: &[&str] = &["exploder", "topology", "apply"];

/// A setting's value in both deployments: the same literal, or a secret
/// each supplies its own way (compose from `.env`, Kubernetes from the
/// Secret), so only its presence is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Literal(String),
    Secret,
}

fn literal(v: impl Into<String>) -> Value {
    Value::Literal(v.into())
}

/// What the producer, every worker and the topology job read.
pub fn shared_env() -> Vec<(&'static str, Value)> {
    vec![
        ("EXPLODER_AMQP_URL", Value::Secret),
        ("EXPLODER_REDIS_URL", Value::Secret),
        ("EXPLODER_PREFIX", literal("")),
        ("EXPLODER_STORE", literal(STORE)),
        (
            "EXPLODER_METRICS_LISTEN",
            literal(format!("0.0.0.0:{METRICS_PORT}")),
        ),
    ]
}

/// What the producer reads besides.
pub fn producer_env() -> Vec<(&'static str, Value)> {
    vec![
        ("EXPLODER_CONFIG", literal(PRODUCER_CONFIG)),
        (
            "EXPLODER_LISTEN",
            literal(format!("0.0.0.0:{WEBHOOK_PORT}")),
        ),
        ("EXPLODER_WEBHOOK_TOKEN", Value::Secret),
    ]
}

/// What every worker reads besides.
pub fn worker_env() -> Vec<(&'static str, Value)> {
    vec![
        (
            "EXPLODER_CONCURRENCY",
            literal(WORKER_CONCURRENCY.to_string()),
        ),
        (
            "EXPLODER_GRACE_PERIOD",
            literal(WORKER_GRACE_SECS.to_string()),
        ),
    ]
}

/// What the topology job reads (it declares queues: the broker and the
/// prefix are all it needs).
pub fn topology_env() -> Vec<(&'static str, Value)> {
    shared_env()
        .into_iter()
        .filter(|(k, _)| ["EXPLODER_AMQP_URL", "EXPLODER_PREFIX"].contains(k))
        .collect()
}
