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
    workers: Vec<Child>,
}

impl Fleet {
    pub fn new(name: &str) -> Fleet {
        let prefix = format!("test-{name}-{}-", &job::new_job_id()[..8]);
        Fleet {
            prefix,
            rt: tokio::runtime::Runtime::new().unwrap(),
            workers: Vec::new(),
        }
    }

    pub fn apply_topology(&self) {
        let out = run_exploder([
            "topology",
            "apply",
            "--amqp-url",
            AMQP,
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
        run_exploder([
            "enqueue",
            reference,
            "--amqp-url",
            AMQP,
            "--redis-url",
            REDIS,
            "--prefix",
            &self.prefix,
            "--store",
            store.to_str().unwrap(),
            "-o",
            "json",
        ])
    }

    /// Takes every message from a queue and decodes it as the workers will.
    pub fn drain(&self, kind: job::JobKind) -> Vec<Job> {
        let queue = Topology::new(&self.prefix).work_queue(kind);
        self.rt.block_on(async {
            let conn = lapin::Connection::connect(AMQP, Default::default())
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
                    matches!(version, Some(AMQPValue::ShortUInt(1))),
                    "{version:?}"
                );
                jobs.push(job::decode(&m.delivery.data, Some(1)).unwrap());
            }
            jobs
        })
    }

    /// Starts an `exploder-worker` on this fleet; killed when the fleet
    /// drops. Its log goes to `log` (for post-mortems).
    pub fn start_worker(&mut self, store: &Path, log: &Path, extra: &[&str]) -> u32 {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(crate::exploder_worker_bin())
            .args([
                "--amqp-url",
                AMQP,
                "--redis-url",
                REDIS,
                "--prefix",
                &self.prefix,
            ])
            .arg("--store")
            .arg(store)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn exploder-worker");
        let pid = child.id();
        self.workers.push(child);
        pid
    }

    /// The worker children, to signal or kill.
    pub fn workers(&mut self) -> &mut Vec<Child> {
        &mut self.workers
    }

    pub fn index(&self) -> Index {
        self.rt
            .block_on(Index::connect(REDIS, &self.prefix))
            .unwrap()
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
            if let Ok(conn) = lapin::Connection::connect(AMQP, Default::default()).await {
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
            let client = redis::Client::open(REDIS).unwrap();
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
