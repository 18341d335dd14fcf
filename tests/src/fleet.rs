//! A fleet of one's own on the real RabbitMQ and Redis: a unique prefix,
//! `exploder` fleet commands, workers as child processes, draining queues,
//! and cleanup of every queue and key the prefix made.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use exploder_common::job::{self, Job};
use exploder_queue::index::Index;
use exploder_queue::topology::Topology;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;

use crate::run_exploder;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379/0";

/// A prefix of its own, with its queues and Redis keys removed at the end.
pub struct Fleet {
    pub prefix: String,
    pub rt: tokio::runtime::Runtime,
    pub amqp: String,
    pub redis: String,
    workers: Vec<Child>,
    /// (webhook port, pid) of each producer, among `workers`.
    producers: Vec<(u16, u32)>,
}

impl Fleet {
    pub fn new(name: &str) -> Fleet {
        Fleet::with_services(name, AMQP, REDIS)
    }

    /// A fleet on a private broker and Redis (tests that restart or flush
    /// them must not disturb the others).
    pub fn with_services(name: &str, amqp: &str, redis: &str) -> Fleet {
        let prefix = format!("test-{name}-{}-", &job::new_job_id()[..8]);
        Fleet {
            prefix,
            rt: tokio::runtime::Runtime::new().unwrap(),
            amqp: amqp.to_string(),
            redis: redis.to_string(),
            workers: Vec::new(),
            producers: Vec::new(),
        }
    }

    pub fn apply_topology(&self) {
        let out = run_exploder([
            "topology",
            "apply",
            "--amqp-url",
            &self.amqp,
            "--prefix",
            &self.prefix,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn enqueue(&self, reference: &str, store: &Path) -> Output {
        self.enqueue_with(reference, store, &[])
    }

    /// Enqueues and panics with exploder's stderr unless it succeeded.
    pub fn enqueue_ok(&self, reference: &str, store: &Path) -> Output {
        self.enqueue_ok_with(reference, store, &[])
    }

    /// [`Fleet::enqueue_with`], panicking with exploder's stderr unless it
    /// succeeded.
    pub fn enqueue_ok_with(&self, reference: &str, store: &Path, extra: &[&str]) -> Output {
        let out = self.enqueue_with(reference, store, extra);
        assert!(
            out.status.success(),
            "exploder enqueue {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The flags that point an `exploder` command at this fleet.
    fn services(&self) -> [&str; 6] {
        [
            "--amqp-url",
            &self.amqp,
            "--redis-url",
            &self.redis,
            "--prefix",
            &self.prefix,
        ]
    }

    /// `exploder enqueue REFERENCE -o json EXTRA...` on this fleet.
    pub fn enqueue_with(&self, reference: &str, store: &Path, extra: &[&str]) -> Output {
        self.enqueue_all(&[reference], store, extra)
    }

    /// `exploder enqueue REFERENCE... -o json EXTRA...` on this fleet: one
    /// command for every reference.
    pub fn enqueue_all(&self, references: &[&str], store: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["enqueue"];
        args.extend_from_slice(references);
        args.extend(self.services());
        args.extend(["--store", store.to_str().unwrap(), "-o", "json"]);
        args.extend_from_slice(extra);
        run_exploder(&args)
    }

    /// Takes every message from a queue and decodes it as the workers will.
    pub fn drain(&self, kind: job::JobKind) -> Vec<Job> {
        let queue = Topology::new(&self.prefix).work_queue(kind);
        self.rt.block_on(async {
            let conn = lapin::Connection::connect(&self.amqp, Default::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            let mut jobs = Vec::new();
            while let Some(m) = ch
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let props = &m.delivery.properties;
                assert_eq!(props.delivery_mode(), &Some(2), "jobs are persistent");
                assert_eq!(
                    props.content_type().as_ref().map(|c| c.as_str()),
                    Some(job::CONTENT_TYPE)
                );
                let version = props
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(job::SCHEMA_HEADER).cloned());
                assert!(
                    matches!(version, Some(AMQPValue::ShortUInt(v)) if v == job::SCHEMA_VERSION),
                    "{version:?}"
                );
                jobs.push(job::decode(&m.delivery.data, Some(job::SCHEMA_VERSION)).unwrap());
            }
            jobs
        })
    }

    /// Starts an `exploder-worker` on this fleet; killed when the fleet
    /// drops. Its log goes to `log` (for post-mortems).
    pub fn start_worker(&mut self, store: &Path, log: &Path, extra: &[&str]) -> u32 {
        self.start_worker_env(store, log, extra, &[])
    }

    /// As [`Fleet::start_worker`], with extra environment (a failpoint).
    pub fn start_worker_env(
        &mut self,
        store: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> u32 {
        let log = std::fs::File::create(log).unwrap();
        self.spawn_worker(store, log, extra, env)
    }

    /// As [`Fleet::start_worker`], but appends to `log` instead of
    /// truncating it: a worker restarted after a crash keeps one log with
    /// every incarnation in it.
    pub fn start_worker_appending(&mut self, store: &Path, log: &Path, extra: &[&str]) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.spawn_worker(store, log, extra, &[])
    }

    fn spawn_worker(
        &mut self,
        store: &Path,
        log: std::fs::File,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> u32 {
        let child = Command::new(crate::exploder_worker_bin())
            .envs(env.iter().copied())
            .args([
                "--amqp-url",
                &self.amqp,
                "--redis-url",
                &self.redis,
                "--prefix",
                &self.prefix,
            ])
            .arg("--store")
            .arg(store)
            .args(metrics_listen(extra))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn exploder-worker");
        let pid = child.id();
        self.workers.push(child);
        pid
    }

    /// Starts an `exploder-producer` on this fleet, listening on a free
    /// loopback port (returned once it accepts connections); killed when
    /// the fleet drops. `env` enables its sources (EXPLODER_WEBHOOK_TOKEN).
    pub fn start_producer(
        &mut self,
        store: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> u16 {
        self.start_producer_at(crate::free_port(), store, log, extra, env)
    }

    /// [`Self::start_producer`] listening on `port` (known before it starts,
    /// for a registry that must be told where to send its notifications).
    pub fn start_producer_at(
        &mut self,
        port: u16,
        store: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> u16 {
        let log_file = std::fs::File::create(log).unwrap();
        let mut child = Command::new(crate::exploder_producer_bin())
            .env_remove("EXPLODER_WEBHOOK_TOKEN")
            // Replies wait for their events' reconciles (up to 30 s), so a
            // test reads each event's outcome in the reply however loaded
            // the machine; tests of the default answer time pass "" (the
            // default, 500 ms) in `env`.
            .env("EXPLODER_WEBHOOK_ANSWER_WITHIN_MS", "30000")
            .envs(env.iter().copied())
            .args([
                "--amqp-url",
                &self.amqp,
                "--redis-url",
                &self.redis,
                "--prefix",
                &self.prefix,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--store")
            .arg(store)
            .args(metrics_listen(extra))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn exploder-producer");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "exploder-producer exited with {status}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "exploder-producer did not listen in 30 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.producers.push((port, child.id()));
        self.workers.push(child);
        port
    }

    /// SIGKILLs the producer listening on `port` (a crash, for failover).
    pub fn kill_producer(&mut self, port: u16) {
        let (_, pid) = *self
            .producers
            .iter()
            .find(|(p, _)| *p == port)
            .expect("a producer of this fleet");
        if let Some(child) = self.workers.iter_mut().find(|c| c.id() == pid) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs the worker `pid` (a crash: no grace period, nothing
    /// flushed) and reaps it, so the fleet no longer counts it.
    pub fn kill_worker(&mut self, pid: u32) -> std::process::ExitStatus {
        let i = self
            .workers
            .iter()
            .position(|w| w.id() == pid)
            .expect("a worker of this fleet");
        let mut worker = self.workers.swap_remove(i);
        // Fails only if it already exited; wait() reaps it either way.
        let _ = worker.kill();
        worker.wait().expect("reap the killed worker")
    }

    /// The worker `pid`'s exit status if it has exited (reaping it), or
    /// `None` while it runs.
    pub fn worker_exited(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        self.workers
            .iter_mut()
            .find(|w| w.id() == pid)
            .expect("a worker of this fleet")
            .try_wait()
            .unwrap()
    }

    /// Waits for the worker `pid` to exit, at most `within`.
    pub fn wait_worker(
        &mut self,
        pid: u32,
        within: std::time::Duration,
    ) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.worker_exited(pid) {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "worker {pid} still running after {within:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to the worker `pid` and waits for it to exit.
    pub fn terminate_worker(
        &mut self,
        pid: u32,
        within: std::time::Duration,
    ) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("a pid"),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        self.wait_worker(pid, within)
    }

    /// The dead-letter queue's messages, left in place (taken unacked, the
    /// channel closes, the broker requeues them): the job if it decodes,
    /// and the reason header (or the broker's reason when it dead-lettered
    /// the job itself).
    pub fn peek_dead(&self) -> Vec<(Option<Job>, String)> {
        let queue = Topology::new(&self.prefix).dead_letters();
        self.rt.block_on(async {
            let conn = lapin::Connection::connect(&self.amqp, Default::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            let mut out = Vec::new();
            while let Some(m) = ch
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
            {
                let header = |name: &str| {
                    let value = m
                        .delivery
                        .properties
                        .headers()
                        .as_ref()?
                        .inner()
                        .get(name)?;
                    Some(match value {
                        AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        other => format!("{other:?}"),
                    })
                };
                // A worker's reason; else the broker's own (a delivery
                // limit reached), which it keeps in x-first-death-*.
                let reason = header("x-exploder-error")
                    .or_else(|| {
                        let why = header("x-first-death-reason")?;
                        let queue = header("x-first-death-queue").unwrap_or_default();
                        Some(format!("dead-lettered by the broker: {why} in {queue}"))
                    })
                    .unwrap_or_default();
                out.push((job::decode(&m.delivery.data, None).ok(), reason));
            }
            let _ = conn.close(200, "peeked".into()).await;
            out
        })
    }

    /// Each queue of this fleet with its ready messages and consumers (a
    /// passive declare, which creates nothing), or why it could not be read.
    pub fn queue_depths(&self) -> Vec<QueueDepth> {
        queue_depths(&self.amqp, &self.prefix)
    }

    /// `exploder status --store STORE -o json` of this fleet.
    pub fn status(&self, store: &Path) -> serde_json::Value {
        let mut args = vec!["status"];
        args.extend(self.services());
        args.extend(["--store", store.to_str().unwrap(), "-o", "json"]);
        let out = run_exploder(&args);
        assert!(
            out.status.success(),
            "exploder status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status -o json is JSON")
    }

    /// Publishes `job` to its work queue encoded at schema `version`, as
    /// a producer of that version would (its header says so too).
    pub fn publish_as_schema(&self, job: &Job, version: u16) {
        let exchange = Topology::new(&self.prefix).work_exchange();
        self.rt.block_on(async {
            let conn = lapin::Connection::connect(&self.amqp, Default::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(Default::default()).await.unwrap();
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(job::SCHEMA_HEADER.into(), AMQPValue::ShortUInt(version));
            let properties = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(job.id().into())
                .with_headers(headers);
            ch.basic_publish(
                exchange.as_str().into(),
                job.kind().as_str().into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &job::encode_as(job, version),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
            let _ = conn.close(200, "published".into()).await;
        });
    }

    /// Deletes the image jobs the fan-out keeps in Redis for the fan-in
    /// (and their list): what a Redis that lost its data no longer has.
    pub fn forget_image_jobs(&self) {
        let pattern = format!("{}exploder:imagejob*", self.prefix);
        self.rt.block_on(async {
            let client = redis::Client::open(self.redis.as_str()).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut con)
                .await
                .unwrap();
            for k in keys {
                let _: () = redis::cmd("DEL")
                    .arg(&k)
                    .query_async(&mut con)
                    .await
                    .unwrap();
            }
        });
    }

    pub fn index(&self) -> Index {
        self.rt
            .block_on(Index::connect(&self.redis, &self.prefix))
            .unwrap()
    }
}

/// One queue as a passive declare sees it.
#[derive(Clone, Debug)]
pub struct QueueDepth {
    pub queue: String,
    /// (ready messages, consumers), or why the queue could not be read.
    pub depth: Result<(u32, u32), String>,
}

/// [`Fleet::queue_depths`] for the fleet of `prefix` on the broker at
/// `amqp`, from any thread (it brings its own runtime): for a look at the
/// queues while the fleet itself is busy elsewhere.
pub fn queue_depths(amqp: &str, prefix: &str) -> Vec<QueueDepth> {
    let queues = Topology::new(prefix).queues();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = match lapin::Connection::connect(amqp, Default::default()).await {
            Ok(c) => c,
            Err(e) => {
                return queues
                    .into_iter()
                    .map(|queue| QueueDepth {
                        queue,
                        depth: Err(format!("connecting: {e}")),
                    })
                    .collect();
            }
        };
        let mut out = Vec::new();
        for queue in queues {
            // A channel per queue: the broker closes the channel of a
            // passive declare that fails.
            let depth = match conn.create_channel().await {
                Ok(ch) => exploder_queue::topology::inspect_queue(&ch, &queue)
                    .await
                    .map(|d| (d.message_count(), d.consumer_count()))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            out.push(QueueDepth { queue, depth });
        }
        let _ = conn.close(200, "inspected".into()).await;
        out
    })
}

/// Daemons serve their metrics on a port of the test's choosing, or any
/// free one: many run at once on this host.
fn metrics_listen(extra: &[&str]) -> Vec<&'static str> {
    if extra.contains(&"--metrics-listen") {
        Vec::new()
    } else {
        vec!["--metrics-listen", "127.0.0.1:0"]
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let topology = Topology::new(&self.prefix);
        let pattern = format!("{}*", self.prefix);
        self.rt.block_on(async {
            if let Ok(conn) = lapin::Connection::connect(&self.amqp, Default::default()).await {
                let ch = conn.create_channel().await.unwrap();
                for q in topology.queues() {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for e in [topology.work_exchange(), topology.dead_letters()] {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), Default::default())
                        .await;
                }
            }
            let client = redis::Client::open(self.redis.as_str()).unwrap();
            if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut con)
                    .await
                    .unwrap_or_default();
                for k in keys {
                    let _: Result<(), _> = redis::cmd("DEL").arg(&k).query_async(&mut con).await;
                }
            }
        });
    }
}

/// A RabbitMQ node of a test's own (its own ports and data directory), so
/// the test can stop and restart it. Starts in about 3 seconds.
pub struct PrivateRabbit {
    dir: tempfile::TempDir,
    pub port: u16,
    dist_port: u16,
    node: String,
    /// Where its `rabbitmq_prometheus` plugin serves, if enabled.
    pub prometheus_port: Option<u16>,
    /// Where its management API serves, if enabled.
    pub management_port: Option<u16>,
}

impl PrivateRabbit {
    pub fn start() -> PrivateRabbit {
        PrivateRabbit::start_with(false)
    }

    /// A node with the plugins the compose file's RabbitMQ has: the
    /// broker's own metrics (`rabbitmq_prometheus`) and the management API
    /// the producer asks for unacked counts.
    pub fn start_with_metrics() -> PrivateRabbit {
        PrivateRabbit::start_with(true)
    }

    fn start_with(metrics: bool) -> PrivateRabbit {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let dist_port = crate::free_port();
        let node = format!("exploder-test-{port}@localhost");
        let mut conf = format!("listeners.tcp.1 = 127.0.0.1:{port}\n");
        let prometheus_port = metrics.then(crate::free_port);
        let management_port = metrics.then(crate::free_port);
        if let (Some(p), Some(m)) = (prometheus_port, management_port) {
            conf.push_str(&format!(
                "prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {p}\n\
                 management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {m}\n"
            ));
            std::fs::write(
                dir.path().join("plugins"),
                "[rabbitmq_prometheus,rabbitmq_management].\n",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        // The Debian wrapper runs the node as the rabbitmq user.
        Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .unwrap();
        let rabbit = PrivateRabbit {
            dir,
            port,
            dist_port,
            node,
            prometheus_port,
            management_port,
        };
        rabbit.up();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (again) and waits for its AMQP port.
    pub fn up(&self) {
        let d = self.dir.path();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "private RabbitMQ did not come up; see {}",
                d.join("log").display()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Stops the node (durable queues and persistent messages survive).
    pub fn down(&self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.down();
    }
}

/// A redis-server of a test's own, to FLUSHALL without touching others.
pub struct PrivateRedis {
    child: Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = crate::free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        PrivateRedis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn flushall(&self) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "FLUSHALL"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
