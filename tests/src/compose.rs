//! The compose stack as shipped — `compose/docker-compose.yml` and the
//! `Dockerfile`, unchanged — on this machine's Docker engine.
//!
//! A [`Stack`] is one compose project of its own: its name
//! (`exploder-test-<name>-<pid>-<random>`), its `.env` (made from
//! `.env.example`: fresh secrets, published ports on a loopback address of
//! its own, `127.x.y.z`, so nothing collides with the RabbitMQ and Redis
//! the host runs or with another stack), and everything compose made for
//! it removed when it drops (`down -v`: containers, network, volumes),
//! also when the test fails. A run killed before that is cleaned up by a
//! later one.
//!
//! What Docker Hub would provide is stood in for by images built here
//! (`ensure_standins` in scripts/lib.sh, recipes in compose/standins/),
//! built once per machine and reused. The exploder image is built by the
//! Dockerfile from the binaries this test run already has (stripped, with
//! `--build-arg EXPLODER_PREBUILT`), not compiled a second time, and kept
//! for the next stack of the same binaries. Grafana has no stand-in: every
//! service but it is started ([`SERVICES`]).
//!
//! Compose v1 (`docker-compose`, Debian's 1.29) is used when installed,
//! else v2 (`docker compose`). The Docker engine must be running
//! (scripts/test starts one).

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Image;

/// The services a stack starts: all but grafana (no Debian package, so
/// no offline stand-in).
pub const SERVICES: &[&str] = &[
    "rabbitmq",
    "redis",
    "registry",
    "topology",
    "producer",
    "worker",
    "prometheus",
];

/// The one-shot service: exits 0 once the topology is declared.
const ONE_SHOT: &str = "topology";

/// The host ports those services publish on `EXPLODER_BIND`.
const PUBLISHED: &[u16] = &[5672, 15672, 5000, 8088, 9090];

/// The exploder images built for stacks, tagged by what went into them.
const IMAGE_REPOSITORY: &str = "exploder-test/exploder";

/// Where the Dockerfile finds the binaries handed in (a directory of the
/// build context, the repository; .dockerignore lets it through).
const PREBUILT: &str = "target/compose-prebuilt";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A container's state as `docker inspect` tells it.
#[derive(Clone, Debug)]
pub struct State {
    pub id: String,
    pub name: String,
    /// `created`, `running`, `restarting`, `exited`, ...
    pub status: String,
    /// `starting`, `healthy`, `unhealthy`; `None` without a healthcheck.
    pub health: Option<String>,
    pub exit_code: i64,
    /// The host pid of its main process (0 when not running).
    pub pid: u32,
}

impl State {
    /// Running, and healthy if it has a healthcheck.
    pub fn running_healthy(&self) -> bool {
        self.status == "running" && self.health.as_deref().is_none_or(|h| h == "healthy")
    }
}

/// One compose project, torn down (with its volumes) on drop.
pub struct Stack {
    pub project: String,
    /// The address its ports are published on.
    pub bind: Ipv4Addr,
    /// The exploder image its services run (named after the binaries).
    pub image: String,
    /// Holds the env file; removed after `down` (fields drop after `drop`).
    _dir: tempfile::TempDir,
    env_file: PathBuf,
}

impl Stack {
    /// A project named after `name`, its `.env` made from `.env.example`
    /// with `settings` (e.g. `EXPLODER_USER`) on top, the stand-ins and its
    /// exploder image built. Nothing runs yet: see [`Stack::up`].
    pub fn new(name: &str, settings: &[(&str, &str)]) -> Stack {
        require_docker();
        let started = Instant::now();
        ensure_standins();
        let image = exploder_image();
        remove_abandoned_stacks();
        // The pid tells a later run whether this one is still alive.
        let id = &exploder_common::job::new_job_id()[..6];
        let project = format!("{PROJECT_PREFIX}{name}-{}-{id}", std::process::id());
        let bind = free_loopback_address();
        let dir = tempfile::Builder::new()
            .prefix("compose-")
            .tempdir()
            .expect("tempdir");
        let env_file = dir.path().join("env");
        // Fresh secrets: hex digits, as .env.example asks.
        let secret = exploder_common::job::new_job_id;
        let mut values: Vec<(String, String)> = vec![
            ("COMPOSE_PROJECT_NAME".into(), project.clone()),
            ("EXPLODER_BIND".into(), bind.to_string()),
            ("EXPLODER_IMAGE".into(), image.clone()),
            ("RABBITMQ_PASSWORD".into(), secret()),
            ("REDIS_PASSWORD".into(), secret()),
            ("EXPLODER_WEBHOOK_TOKEN".into(), secret()),
            ("GRAFANA_ADMIN_PASSWORD".into(), secret()),
        ];
        values.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        std::fs::write(&env_file, env_from_example(&values)).expect("write the env file");
        let stack = Stack {
            project,
            bind,
            image,
            _dir: dir,
            env_file,
        };
        stack.build_image();
        eprintln!(
            "compose {}: stand-ins and the exploder image ({}) ready in {:.1?}",
            stack.project,
            stack.image,
            started.elapsed()
        );
        stack
    }

    /// `docker-compose --env-file ENV -f compose/docker-compose.yml ARGS`,
    /// with nothing of this process' environment that compose would read
    /// instead of the env file.
    ///
    /// Each call has a deadline ([`COMPOSE_DEADLINE`], through
    /// coreutils' `timeout`): `up` waits for healthchecks, and a wedged
    /// engine must fail the test, not hang it.
    pub fn compose(&self, args: &[&str]) -> Output {
        let (program, first) = compose_program();
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=10")
            .arg(COMPOSE_DEADLINE.as_secs().to_string())
            .arg(program);
        cmd.env_clear();
        for (k, v) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if ["PATH", "HOME", "USER", "TMPDIR", "LANG", "LC_ALL"].contains(&k_str.as_ref())
                || k_str.starts_with("DOCKER_")
            {
                cmd.env(k, v);
            }
        }
        cmd.args(first)
            .arg("--env-file")
            .arg(&self.env_file)
            .arg("-f")
            .arg(repo().join("compose/docker-compose.yml"))
            .args(args)
            .current_dir(repo());
        cmd.output().unwrap_or_else(|e| {
            panic!("running {program}: {e} (scripts/test installs docker-compose)")
        })
    }

    /// [`Stack::compose`], panicking with `what`, the output and the
    /// services' logs unless it succeeded; returns stdout.
    pub fn compose_ok(&self, what: &str, args: &[&str]) -> String {
        let out = self.compose(args);
        if !out.status.success() {
            panic!(
                "{what}: `compose {}` failed ({}):\n{}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs(60)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `up -d --no-build EXTRA... SERVICES...` (every service but grafana).
    pub fn up(&self, what: &str, extra: &[&str]) {
        let mut args = vec!["up", "-d", "--no-build"];
        args.extend_from_slice(extra);
        args.extend_from_slice(SERVICES);
        self.compose_ok(what, &args);
    }

    /// The containers compose made for `service`, running or not.
    pub fn containers(&self, service: &str) -> Vec<State> {
        let out = self.compose_ok("listing containers", &["ps", "-q", service]);
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .filter_map(inspect)
            .collect()
    }

    /// Waits until every service runs and is healthy, with `workers`
    /// workers running, and the topology job exited 0; panics saying which
    /// service is not, with the logs. Returns how long it took.
    pub fn wait_ready(&self, what: &str, workers: usize, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let problems = self.readiness_problems(workers);
            if problems.is_empty() {
                return start.elapsed();
            }
            if start.elapsed() > within {
                panic!(
                    "{what}: the stack is not ready after {within:?}:\n  {}\n{}",
                    problems.join("\n  "),
                    self.logs(40)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn readiness_problems(&self, workers: usize) -> Vec<String> {
        let mut problems = Vec::new();
        for &service in SERVICES {
            let states = self.containers(service);
            if service == ONE_SHOT {
                match states.as_slice() {
                    [s] if s.status == "exited" && s.exit_code == 0 => {}
                    [s] if s.status == "exited" => problems.push(format!(
                        "{service} exited with {} (it must declare the topology and exit 0)",
                        s.exit_code
                    )),
                    other => problems.push(format!("{service}: {}", describe(other))),
                }
                continue;
            }
            let running: Vec<&State> = states.iter().filter(|s| s.status == "running").collect();
            let want = if service == "worker" { workers } else { 1 };
            if running.len() != want || !running.iter().all(|s| s.running_healthy()) {
                problems.push(format!(
                    "{service}: want {want} running and healthy, have {}",
                    describe(&states)
                ));
            }
        }
        problems
    }

    /// The host directory of the named volume `volume` (e.g. `store`).
    pub fn volume(&self, volume: &str) -> PathBuf {
        let name = format!("{}_{volume}", self.project);
        let out = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &name]);
        assert!(
            out.status.success(),
            "volume {name} does not exist: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// Whether the named volume `volume` exists.
    pub fn has_volume(&self, volume: &str) -> bool {
        let name = format!("{}_{volume}", self.project);
        docker(&["volume", "inspect", &name]).status.success()
    }

    /// The store volume, as the producer and the workers see it at
    /// /var/lib/exploder.
    pub fn store(&self) -> PathBuf {
        self.volume("store")
    }

    /// `host:port` of the compose registry, published on [`Stack::bind`].
    pub fn registry(&self) -> String {
        format!("{}:5000", self.bind)
    }

    /// Pushes `image` as `repo:tag` to the compose registry with `skopeo
    /// copy`, as a user would; returns the manifest digest.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) -> String {
        let layout = tempfile::tempdir().expect("tempdir");
        image
            .write_oci_layout(layout.path(), tag)
            .expect("write the OCI layout");
        crate::run_checked(
            Command::new("skopeo")
                .args(["--command-timeout", "120s"])
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", layout.path().display()))
                .arg(format!("docker://{}/{repo}:{tag}", self.registry())),
        );
        image.manifest_digest()
    }

    /// `compose exec -T SERVICE ARGS...`.
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "-T", service];
        all.extend_from_slice(args);
        self.compose(&all)
    }

    /// `exploder status -o json` run in the producer container.
    pub fn status(&self) -> Value {
        let out = self.exec("producer", &["exploder", "status", "-o", "json"]);
        assert!(
            out.status.success(),
            "`exploder status` in the producer container failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("exploder status -o json prints JSON")
    }

    /// Prometheus' active targets, as (job, scrape URL, health: `up`,
    /// `down` or `unknown`), through its published port; empty while it
    /// does not answer.
    pub fn prometheus_targets(&self) -> Vec<(String, String, String)> {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        );
        let url = format!("http://{}:9090/api/v1/targets", self.bind);
        let Ok(mut reply) = agent.get(&url).call() else {
            return Vec::new();
        };
        let body = reply.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let field = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (field("scrapePool"), field("scrapeUrl"), field("health"))
            })
            .collect()
    }

    /// The last `tail` lines of every service's log.
    pub fn logs(&self, tail: usize) -> String {
        let out = self.compose(&["logs", "--no-color", &format!("--tail={tail}")]);
        format!(
            "---- compose logs (last {tail} lines each) ----\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    }

    /// One container's whole log (stdout and stderr).
    pub fn container_log(&self, id: &str) -> String {
        let out = docker(&["logs", id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Limits what the registry container sends (to the workers: blobs)
    /// to `bytes_per_sec`, as a remote registry would be: an htb qdisc on
    /// its network interface, set from its network namespace. Gone with
    /// the container.
    pub fn throttle_registry(&self, bytes_per_sec: u64) {
        let registry = self
            .containers("registry")
            .into_iter()
            .find(|s| s.status == "running")
            .expect("the registry container runs");
        let pid = registry.pid.to_string();
        let rate = format!("{}bit", bytes_per_sec * 8);
        for tc in [
            vec![
                "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1",
            ],
            vec![
                "class", "replace", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate",
                &rate, "ceil", &rate,
            ],
        ] {
            crate::run_checked(
                Command::new("nsenter")
                    .args(["-t", &pid, "-n", "tc"])
                    .args(&tc),
            );
        }
    }

    /// The worker container ingesting the layer `diff_id` right now: the
    /// holder of the lock on its staging directory in the store's tmp/
    /// (`/proc/locks` names the process, the main process of one of the
    /// running workers). Waits for one at most `within`, looking every
    /// 20 ms: the containers are listed once, before.
    pub fn worker_ingesting(&self, diff_id: &str, within: Duration) -> State {
        let workers: Vec<State> = self
            .containers("worker")
            .into_iter()
            .filter(|w| w.status == "running")
            .collect();
        let hex = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
        let tmp = self.store().join("tmp");
        let prefix = format!("layer-{hex}.");
        let start = Instant::now();
        loop {
            let inodes: Vec<u64> = std::fs::read_dir(&tmp)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&prefix) && n.ends_with(".lock")
                })
                .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
                .collect();
            let holders = flock_holders(&inodes);
            if let Some(worker) = workers.iter().find(|w| holders.contains(&w.pid)) {
                return worker.clone();
            }
            assert!(
                start.elapsed() < within,
                "no worker started ingesting layer {diff_id} within {within:?}\n{}",
                self.logs(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Builds the exploder image with compose's own build (service
    /// `topology`: the Dockerfile), from the binaries [`exploder_image`]
    /// staged, unless an image of the same binaries and Dockerfile exists.
    fn build_image(&self) {
        let root = repo();
        // One stack at a time builds; the binaries stay as staged meanwhile.
        let _lock = crate::lock_file(&root.join("target/compose-prebuilt.lock"));
        if docker(&["image", "inspect", &self.image]).status.success() {
            return;
        }
        let arg = format!("EXPLODER_PREBUILT={PREBUILT}");
        let out = self.compose_ok(
            "building the exploder image from the Dockerfile",
            &["build", "--build-arg", &arg, ONE_SHOT],
        );
        // The classic builder keeps every step's image as cache; the
        // builder stage's hold this run's binaries and would pile up run
        // after run. Its last image goes (and with it the untagged chain
        // below it); the runtime stage's cache (its apt-get) stays.
        if let Some(id) = builder_stage_image(&out) {
            let _ = docker(&["rmi", &id]);
        }
        // Images of other binaries go once they are an hour old, unless a
        // stack still uses them (then docker refuses): another worktree's
        // run may be about to start on a younger one.
        let out = docker(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.CreatedSince}}",
            IMAGE_REPOSITORY,
        ]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (other, age) = line.split_once(' ').unwrap_or((line, ""));
            if other != self.image && !age.contains("second") && !age.contains("minute") {
                let _ = docker(&["rmi", other]);
            }
        }
    }
}

/// Stages this run's binaries (stripped: a debug build's symbols are ten
/// times its code) in target/compose-prebuilt/ and names the exploder
/// image after them and the Dockerfile:
/// `exploder-test/exploder:<sha256 prefix>`. Two stacks of the same
/// binaries share it; it is kept for the next run.
fn exploder_image() -> String {
    use sha2::Digest as _;
    let root = repo();
    let prebuilt = root.join(PREBUILT);
    std::fs::create_dir_all(&prebuilt).expect("create target/compose-prebuilt");
    let _lock = crate::lock_file(&root.join("target/compose-prebuilt.lock"));
    let mut hash = sha2::Sha256::new();
    for file in ["Dockerfile", ".dockerignore"] {
        hash.update(std::fs::read(root.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}")));
    }
    for bin in [
        crate::exploder_bin(),
        crate::exploder_worker_bin(),
        crate::exploder_producer_bin(),
    ] {
        let dest = prebuilt.join(bin.file_name().expect("a file name"));
        crate::run_checked(Command::new("strip").arg("-o").arg(&dest).arg(&bin));
        hash.update(std::fs::read(&dest).expect("read a stripped binary"));
    }
    format!("{IMAGE_REPOSITORY}:{}", &hex::encode(hash.finalize())[..16])
}

impl Drop for Stack {
    fn drop(&mut self) {
        let out = self.compose(&["down", "-v", "--remove-orphans", "-t", "10"]);
        if !out.status.success() {
            eprintln!(
                "compose {}: `down -v` failed: {}",
                self.project,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Every stack's project name starts so: `<prefix><name>-<pid>-<random>`.
const PROJECT_PREFIX: &str = "exploder-test-";

/// Removes what stacks of test runs that died without dropping them (a
/// SIGKILL, a Ctrl-C) left: their containers, networks and volumes, when
/// the run's process is gone and its containers are over an hour old
/// (another pid namespace sharing this engine may still use younger ones).
fn remove_abandoned_stacks() {
    let label = "com.docker.compose.project";
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={label}"),
        "--format",
        &format!("{{{{.Label \"{label}\"}}}} {{{{.RunningFor}}}}"),
    ]);
    let mut young = std::collections::BTreeSet::new();
    let mut abandoned = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (project, age) = line.split_once(' ').unwrap_or((line, ""));
        let Some(rest) = project.strip_prefix(PROJECT_PREFIX) else {
            continue;
        };
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_none_or(|p| Path::new(&format!("/proc/{p}")).exists());
        if alive || age.contains("second") || age.contains("minute") {
            young.insert(project.to_string());
        } else {
            abandoned.insert(project.to_string());
        }
    }
    for project in abandoned.difference(&young) {
        eprintln!("compose: removing the abandoned stack {project}");
        let filter = format!("label={label}={project}");
        for (list, remove) in [
            (vec!["ps", "-aq"], vec!["rm", "-f", "-v"]),
            (vec!["network", "ls", "-q"], vec!["network", "rm"]),
            (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
        ] {
            let out = docker(&[list.as_slice(), &["--filter", &filter]].concat());
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let _ = docker(&[remove.as_slice(), &ids].concat());
            }
        }
    }
}

/// How long one compose command may take: `up` waits for RabbitMQ's
/// healthcheck (up to its 30 s start period and 12 retries 10 s apart),
/// `down` for workers to stop (45 s each at most).
const COMPOSE_DEADLINE: Duration = Duration::from_secs(300);
/// How long one docker command may take (`docker stop` waits up to the
/// worker's 45 s stop grace period).
const DOCKER_DEADLINE: Duration = Duration::from_secs(120);

/// `docker ARGS...`, with a deadline ([`DOCKER_DEADLINE`]).
pub fn docker(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=10")
        .arg(DOCKER_DEADLINE.as_secs().to_string())
        .arg("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running docker: {e} (scripts/test installs docker.io)"))
}

/// `docker inspect` of one container, or `None` if it is gone.
pub fn inspect(id: &str) -> Option<State> {
    let out = docker(&["inspect", id]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let c = v.get(0)?;
    let state = &c["State"];
    Some(State {
        id: c["Id"].as_str()?.to_string(),
        name: c["Name"].as_str()?.trim_start_matches('/').to_string(),
        status: state["Status"].as_str()?.to_string(),
        health: state["Health"]["Status"].as_str().map(String::from),
        exit_code: state["ExitCode"].as_i64().unwrap_or(-1),
        pid: state["Pid"].as_u64().unwrap_or(0) as u32,
    })
}

fn describe(states: &[State]) -> String {
    if states.is_empty() {
        return "no container".into();
    }
    states
        .iter()
        .map(|s| {
            let health = s
                .health
                .as_deref()
                .map(|h| format!(", {h}"))
                .unwrap_or_default();
            format!("{} ({}{health}, exit {})", s.name, s.status, s.exit_code)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Panics saying what to do unless a Docker engine and Compose answer.
fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "-f", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "no Docker engine answers (`docker info`: {}): ./scripts/test installs docker.io \
             and starts dockerd; by hand: `dockerd >/tmp/dockerd.log 2>&1 &`",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "docker is not installed ({e}): ./scripts/test installs docker.io and docker-compose"
        ),
    }
    let _ = compose_program();
}

/// The Compose to run: v1 (`docker-compose`) if installed, else v2.
fn compose_program() -> (&'static str, &'static [&'static str]) {
    let v1 = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if v1 {
        return ("docker-compose", &["--ansi", "never"]);
    }
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        v2,
        "neither docker-compose nor `docker compose` runs: ./scripts/test installs docker-compose"
    );
    ("docker", &["compose", "--ansi", "never"])
}

/// Builds what compose/standins/images lists, when missing or stale
/// (`ensure_standins` in scripts/lib.sh; once per machine).
fn ensure_standins() {
    // 75 s on a machine without them (debootstrap and apt-get from the
    // mirror); a stuck download fails the test after 20 minutes.
    let out = Command::new("timeout")
        .args(["1200", "bash", "-c", ". scripts/lib.sh && ensure_standins"])
        .current_dir(repo())
        .output()
        .expect("run bash");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "building the stand-in images failed (scripts/lib.sh, ensure_standins):\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `.env.example` with `values` replacing (or added to) its settings.
fn env_from_example(values: &[(String, String)]) -> String {
    let example = std::fs::read_to_string(repo().join("compose/.env.example"))
        .expect("read compose/.env.example");
    let mut out = String::new();
    let mut done = Vec::new();
    for line in example.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match key.and_then(|k| values.iter().find(|(n, _)| n == k)) {
            Some((k, v)) if !line.trim_start().starts_with('#') => {
                out.push_str(&format!("{k}={v}\n"));
                done.push(k.clone());
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, v) in values {
        if !done.contains(k) {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

/// A loopback address (127.x.y.z) on which every port the stack publishes
/// is free: nothing this host runs on 127.0.0.1 or another stack's
/// address is in the way. Panics naming a port taken on every address (a
/// listener on 0.0.0.0).
fn free_loopback_address() -> Ipv4Addr {
    let mut rng = crate::SplitMix64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()),
    );
    let mut last = String::new();
    for _ in 0..20 {
        let addr = Ipv4Addr::new(
            127,
            rng.between(1, 254) as u8,
            rng.between(0, 255) as u8,
            rng.between(2, 254) as u8,
        );
        match PUBLISHED
            .iter()
            .find(|&&p| TcpListener::bind((addr, p)).is_err())
        {
            None => return addr,
            Some(p) => last = format!("{addr}:{p}"),
        }
    }
    panic!(
        "no loopback address has ports {PUBLISHED:?} free (last tried {last}): something \
         listens on one of them on every address (0.0.0.0); stop it or bind it to 127.0.0.1"
    );
}

/// The pids holding a flock on any of `inodes` (from /proc/locks).
fn flock_holders(inodes: &[u64]) -> Vec<u32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 3562 00:2d:1234567 0 EOF"; waiters
            // ("1: -> FLOCK ...") hold nothing.
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") {
                return None;
            }
            let pid: u32 = f.get(4)?.parse().ok()?;
            let inode: u64 = f.get(5)?.rsplit(':').next()?.parse().ok()?;
            inodes.contains(&inode).then_some(pid)
        })
        .collect()
}

/// The id of the builder stage's last image in the classic builder's
/// output: the last ` ---> <id>` before the second `FROM` step.
fn builder_stage_image(output: &str) -> Option<String> {
    let mut froms = 0;
    let mut last = None;
    for line in output.lines() {
        let line = line.trim();
        if line.starts_with("Step ") && line.contains(" : FROM ") {
            froms += 1;
            if froms == 2 {
                return last;
            }
        } else if let Some(id) = line.strip_prefix("---> ")
            && id.len() == 12
            && id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            last = Some(id.to_string());
        }
    }
    None
}
