//! The fleet worker: consume layer and image jobs, run the same handlers as
//! `exploder explode`, ack only after the work is durable in the store.
//!
//! Per delivery, one outcome, recorded before the delivery is acked:
//! - done: ack;
//! - wait (an image whose layers are not all in the store yet, or a store
//!   without room to start: `room`, `crate::space`): publish a copy to
//!   the first backoff tier, then ack — waiting is not a failure;
//! - transient failure: publish a copy to the next backoff tier (or, past
//!   the last tier, to the dead-letter queue), then ack;
//! - permanent failure (bad digest, hostile layer, limit, unreadable
//!   schema, a layer of the image failed): publish to the dead-letter
//!   queue with the reason, then ack;
//! - interrupted: the broker redelivers a job whose worker died or lost
//!   the broker. The job is not run here: the interruption is counted in
//!   its headers and the job published again as a fresh message (so the
//!   broker's own delivery counter starts over), then acked; past
//!   `--delivery-limit` interruptions it goes to the dead-letter queue
//!   instead. A job that crashes every worker ends there; one that was
//!   merely in the hands of workers killed for other reasons (node drains,
//!   OOM kills, a broker failover) survives them.
//!
//! If recording fails the delivery is nacked back to its queue: a job is
//! never dropped. A worker killed at any point leaves its unacked
//! deliveries to the broker, which redelivers them; every handler is
//! idempotent. Each outcome is logged (waits and interruptions at debug).
//!
//! Three kinds of jobs: layer jobs (`layer`), image jobs (`image`), which
//! publish an export job per disk image asked for once linked, and export
//! jobs (`export`). Besides jobs, every worker sweeps dead staging
//! directories and takes its turn at the resync (`upkeep`).
//!
//! Every wait on the network has a deadline: connecting, each round trip
//! to the broker, each publish and its confirm, each ack (`--amqp-timeout`),
//! each Redis command (`--redis-timeout`), the wait for another worker's
//! claim (`layer`). A short AMQP heartbeat (`--amqp-heartbeat`) ends a
//! session whose broker went silent, and lets the broker requeue the jobs
//! of a worker it lost. The health of the broker and of Redis (the
//! `exploder_broker_up` and `exploder_redis_up` gauges `/readyz` reads) is
//! probed every few seconds while a session runs ([`watch_health`]), not
//! only learnt when it ends.

mod claim;
mod consume;
mod export;
mod fetchers;
mod image;
mod layer;
mod room;
mod upkeep;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::fetch::{FetchError, Fetcher};
use exploder_common::job::{self, Job, JobKind, JobSource};
use exploder_common::limits::Limits;
use exploder_common::request;
use exploder_common::store::StoreLayout;
use exploder_queue::connect::{AmqpOptions, connect_with, redact, within};
use exploder_queue::headers;
use exploder_queue::index::{Index, IndexError};
use exploder_queue::protocol::{self, JobOutcome, Route};
use exploder_queue::publish::Publisher;
use exploder_queue::topology::Topology;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::finalize::FinalizeOptions;
use crate::layer::LayerStore;
use crate::metrics::WorkerMetrics;
use crate::space::{StoreFull, StoreSpace};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub prefix: String,
    /// The heartbeat and the deadline of every wait on the broker.
    pub amqp: AmqpOptions,
    /// The deadline of every Redis command.
    pub redis_timeout: Duration,
    pub store: PathBuf,
    /// The prefetch of each queue: jobs of each kind handled at once.
    pub concurrency: usize,
    /// On SIGTERM, how long in-flight jobs may take to finish.
    pub grace_period: Duration,
    pub limits: Limits,
    pub finalize: FinalizeOptions,
    pub registry: RegistryOptions,
    /// Lease on a layer being ingested; extended while working.
    pub claim_ttl: Duration,
    /// Interrupted deliveries a job survives (see the module documentation).
    pub delivery_limit: u32,
    /// How often dead staging directories are swept.
    pub sweep_interval: Duration,
    /// How often the resync looks at the requests (one worker at a time).
    pub resync_interval: Duration,
    /// How long a request may go without a sign of progress before the
    /// resync publishes its jobs again, and how many a pass handles.
    pub resync: exploder_queue::resync::Bounds,
    /// The signature policy, checked again before an image is linked.
    pub trust: Arc<exploder_trust::Trust>,
    /// Whether the store has room to start a layer or an image (shared
    /// with the readiness check).
    pub space: StoreSpace,
}

struct Ctx {
    config: WorkerConfig,
    /// This session's token for the resync lease, given back on a clean
    /// shutdown.
    resync_token: String,
    topology: Topology,
    index: Index,
    publisher: Publisher,
    layers: Arc<LayerStore>,
    /// The fetchers of the sources jobs came from, bounded (see
    /// [`fetchers`]): jobs of one repository share its authentication, and
    /// every repository of a registry its connections.
    fetchers: fetchers::Fetchers,
    metrics: Arc<WorkerMetrics>,
}

/// Runs until SIGTERM or SIGINT; reconnects with backoff when the broker or
/// Redis goes away, never exiting on a transient outage.
pub async fn run(config: WorkerConfig, metrics: Arc<WorkerMetrics>) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(shutdown_signal());
    loop {
        match session(&config, &metrics, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                metrics.broker_up.set(0);
                let service = if e.chain().any(|c| c.is::<IndexError>()) {
                    metrics.redis_up.set(0);
                    "redis"
                } else {
                    "amqp"
                };
                metrics.reconnects.with_label_values(&[service]).inc();
                warn!("worker session ended: {e:#}; reconnecting in 2s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// One connection's worth of work. `Ok` means a clean shutdown.
async fn session(
    config: &WorkerConfig,
    metrics: &Arc<WorkerMetrics>,
    shutdown: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
) -> anyhow::Result<()> {
    let topology = Topology::new(&config.prefix);
    let timeout = config.amqp.timeout;
    // Both at once, so that the gauges say which of the two is missing;
    // a signal while the broker is unreachable ends the worker at once.
    let redis = async {
        let index =
            Index::connect_with(&config.redis_url, &config.prefix, config.redis_timeout).await;
        metrics.redis_up.set(i64::from(index.is_ok()));
        index
    };
    let broker = connect_with(&config.amqp_url, Duration::from_secs(3600), &config.amqp);
    let (conn, index) = tokio::select! {
        connected = async { tokio::join!(broker, redis) } => connected,
        _ = &mut *shutdown => return Ok(()),
    };
    let conn = Arc::new(conn?);
    let index = index
        .map_err(|e| anyhow::Error::new(e).context(format!("at {}", redact(&config.redis_url))))?;
    within_deadline(timeout, "declaring the topology", topology.apply(&conn)).await?;
    let publisher = Publisher::open_with(&conn, topology.clone(), timeout).await?;
    metrics.broker_up.set(1);
    metrics.redis_up.set(1);
    let layout = StoreLayout::new(&config.store);
    // Before the first job: from now on gc must ask Redis what is in
    // progress (common::store::fleet).
    layout.mark_fleet("exploder-worker").map_err(|e| {
        anyhow::anyhow!(
            "cannot write {} ({e}): the store must be writable by the worker",
            layout.fleet_marker().display()
        )
    })?;
    let mut store = LayerStore::new(layout, config.limits.clone());
    store.durable = config.finalize.durable;
    store.write_threads = config.finalize.write_threads;
    store.file_objects = config.finalize.file_objects;
    store.space = config.space.clone();
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        resync_token: exploder_common::job::new_job_id(),
        topology: topology.clone(),
        index,
        publisher,
        layers: Arc::new(store),
        fetchers: fetchers::Fetchers::new(config.registry.clone()),
        metrics: metrics.clone(),
    });
    // Debris of dead workers goes before any new work starts.
    upkeep::sweep(&ctx).await;
    // The checks consumption waits on: the store now (Redis answered just
    // now), then every probe (see `consume`).
    let first: Vec<String> = consume::store_problem(config.store.clone())
        .await
        .into_iter()
        .collect();
    let (health_tx, mut health) = tokio::sync::watch::channel(first);
    let upkeep = [
        tokio::spawn(upkeep::sweep_forever(ctx.clone())),
        tokio::spawn(upkeep::resync_forever(ctx.clone())),
        tokio::spawn(watch_health(conn.clone(), ctx.clone(), health_tx)),
    ];

    let channel = within(timeout, "opening a channel", conn.create_channel()).await?;
    within(
        timeout,
        "setting the prefetch",
        channel.basic_qos(
            config.concurrency.clamp(1, u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        ),
    )
    .await?;
    let mut consumers = consume::Consumers::new(channel, topology.clone(), timeout);
    health.mark_changed();
    let mut inflight = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            next = consumers.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    inflight.spawn(async move { ctx.handle(delivery).await });
                }
                Some(Err(e)) => break Err(anyhow::anyhow!("consuming: {e}")),
                None => break Err(anyhow::anyhow!("the broker closed the consumer")),
            },
            Ok(()) = health.changed() => {
                let problems = health.borrow_and_update().clone();
                match (problems.is_empty(), consumers.is_on()) {
                    (true, false) => {
                        if let Err(e) = consumers.start().await {
                            break Err(e);
                        }
                        metrics.consuming.set(1);
                        info!(prefix = %config.prefix, concurrency = config.concurrency, "worker consuming: the store and Redis pass their checks");
                    }
                    (false, _) => {
                        consumers.stop(true).await;
                        metrics.consuming.set(0);
                        warn!(
                            in_flight = inflight.len(),
                            "not taking jobs until this is fixed: {}",
                            problems.join("; ")
                        );
                    }
                    (true, true) => {}
                }
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            _ = &mut *shutdown => break Ok(()),
        }
    };
    for task in &upkeep {
        task.abort();
    }
    if result.is_ok() {
        upkeep::release_resync(&ctx).await;
        // Stop taking work, let in-flight jobs finish within the grace
        // period; whatever is still unacked goes back to the queue when the
        // connection closes.
        consumers.stop(false).await;
        info!(
            in_flight = inflight.len(),
            "shutting down: finishing in-flight jobs"
        );
        let drained = tokio::time::timeout(config.grace_period, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                left = inflight.len(),
                "grace period over: the rest is requeued"
            );
        }
        let _ = within(
            timeout,
            "closing the connection",
            conn.close(200, "worker shutting down".into()),
        )
        .await;
    }
    metrics.consuming.set(0);
    result
}

/// `fut`, cut at `timeout` with an error naming `what`.
async fn within_deadline<T, E>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(anyhow::anyhow!(
            "RabbitMQ did not answer {what} within {timeout:?}"
        )),
    }
}

/// How often the health of the broker and Redis is probed while a session
/// runs, and the most a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Keeps `exploder_broker_up` and `exploder_redis_up` (what `/readyz`
/// reads) true to what a round trip finds now: a broker or a Redis that
/// went silent (a partition drops packets, nothing resets the connection)
/// makes the worker unready within seconds, not when the session ends.
/// Runs until the session ends, which sets `broker_up` to 0 itself.
async fn watch_health(
    conn: Arc<lapin::Connection>,
    ctx: Arc<Ctx>,
    problems: tokio::sync::watch::Sender<Vec<String>>,
) {
    let broker_within = ctx.config.amqp.timeout.min(PROBE_EVERY);
    let redis_within = ctx.config.redis_timeout.min(PROBE_EVERY);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One channel for the probes (a new one each time would leave one
    // open behind every probe a slow broker answered late).
    let mut probe: Option<lapin::Channel> = None;
    loop {
        tick.tick().await;
        let broker = async {
            if probe.as_ref().is_none_or(|c| !c.status().connected()) {
                probe = Some(within(broker_within, "a probe", conn.create_channel()).await?);
            }
            let channel = probe.as_ref().expect("opened just now");
            // A round trip that changes nothing: no consumer is on it.
            let qos = channel.basic_qos(1, BasicQosOptions::default());
            within(broker_within, "a probe", qos).await
        };
        let redis = tokio::time::timeout(redis_within, ctx.index.ping());
        let store = consume::store_problem(ctx.config.store.clone());
        let (broker, redis, store) = tokio::join!(broker, redis, store);
        let broker_up = broker.is_ok() && conn.status().connected();
        let redis_up = matches!(redis, Ok(Ok(())));
        if ctx.metrics.broker_up.get() == 1 && !broker_up {
            warn!("RabbitMQ stopped answering: {broker:?}");
        }
        if ctx.metrics.redis_up.get() == 1 && !redis_up {
            warn!("Redis stopped answering within {redis_within:?}");
        }
        ctx.metrics.broker_up.set(i64::from(broker_up));
        ctx.metrics.redis_up.set(i64::from(redis_up));
        // The broker is not among them: a worker cut from it loses its
        // session, and its consumers with it, at the heartbeat; a cancel
        // sent into the partition would only wait out its deadline.
        let mut now = Vec::new();
        if !redis_up {
            now.push("Redis is not answering".to_string());
        }
        now.extend(store);
        // Only a change wakes the consumer loop.
        problems.send_if_modified(|before| {
            let changed = *before != now;
            *before = now;
            changed
        });
    }
}

/// The job's message headers (empty if it has none).
fn delivery_headers(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

impl Ctx {
    fn fetcher(&self, source: &JobSource) -> Result<Arc<Fetcher>, FetchError> {
        self.fetchers.get(source)
    }

    async fn handle(&self, delivery: Delivery) {
        let schema = headers::int(&delivery_headers(&delivery), job::SCHEMA_HEADER)
            .and_then(|v| u16::try_from(v).ok());
        let decoded = job::decode(&delivery.data, schema);
        let (id, kind, digest, reference) = match &decoded {
            Ok(Job::Layer(j)) => (
                j.id.clone(),
                JobKind::Layer,
                j.digest.to_string(),
                j.source.to_string(),
            ),
            Ok(Job::Image(j)) => (
                j.id.clone(),
                JobKind::Image,
                j.manifest_digest.to_string(),
                j.links
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Ok(Job::Export(j)) => (
                j.id.clone(),
                JobKind::Export,
                j.manifest_digest.to_string(),
                j.format.to_string(),
            ),
            // Undecodable: the routing key still tells which queue it came from.
            Err(_) => {
                let kind = JobKind::ALL
                    .into_iter()
                    .find(|k| delivery.routing_key.as_str() == k.as_str())
                    .unwrap_or(JobKind::Layer);
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "?".into());
                (id, kind, "?".into(), "?".into())
            }
        };
        let span = info_span!("job", job = %id, kind = kind.as_str(), digest = %digest, reference = %reference);
        // The digest `exploder enqueue --wait` watches: a layer's diff_id,
        // an image's manifest.
        let job_key: Option<Digest> = match &decoded {
            Ok(Job::Layer(j)) => Some(j.diff_id.clone()),
            Ok(Job::Image(j)) => Some(j.manifest_digest.clone()),
            // An export failing says nothing of whether the image is linked.
            Ok(Job::Export(_)) | Err(_) => None,
        };
        let m = &self.metrics;
        let in_flight = m.in_flight.with_label_values(&[kind.as_str()]);
        in_flight.inc();
        let started = std::time::Instant::now();
        async {
            let outcome = match &decoded {
                // Counted and put back before anything else: a job that
                // kills its worker must not run again before it is counted.
                _ if delivery.redelivered => JobOutcome::Interrupted,
                Err(e) => JobOutcome::Dead(format!("cannot decode the job: {e}")),
                Ok(Job::Layer(j)) => self.layer(j).await,
                Ok(Job::Image(j)) => self.image(j).await,
                Ok(Job::Export(j)) => self.export(j).await,
            };
            let label = match &outcome {
                JobOutcome::Done => "ok",
                JobOutcome::Wait(_) => "waiting",
                JobOutcome::Transient(_) => "retried",
                JobOutcome::Interrupted => "interrupted",
                JobOutcome::Dead(_) => "dead_lettered",
            };
            let dead = self.settle(&delivery, kind, &id, outcome).await;
            let result = if dead.is_some() {
                "dead_lettered"
            } else {
                label
            };
            m.jobs.with_label_values(&[kind.as_str(), result]).inc();
            m.duration
                .with_label_values(&[kind.as_str()])
                .observe(started.elapsed().as_secs_f64());
            in_flight.dec();
            // For `exploder enqueue --wait` and the images waiting for a
            // layer: why the job gave up, or that it no longer has (a
            // replay that worked).
            if let Some(d) = &job_key {
                if label == "ok" {
                    let _ = self.index.clear_failed(d).await;
                } else if let Some(reason) = &dead {
                    let _ = self.index.mark_failed(d, reason).await;
                }
            }
            // An export's failure is its own: the image stays linked.
            if let Ok(Job::Export(j)) = &decoded {
                let format = j.format.to_string();
                if label == "ok" {
                    let _ = self
                        .index
                        .clear_export_failed(&j.manifest_digest, &format)
                        .await;
                } else if let Some(reason) = &dead {
                    let _ = self
                        .index
                        .mark_export_failed(&j.manifest_digest, &format, reason)
                        .await;
                }
            }
            // An image job that failed for good fails its requests: the
            // resync leaves them alone until the job is replayed.
            if let (Some(reason), Ok(Job::Image(j))) = (&dead, &decoded) {
                let (layout, j, reason) = (self.layers.layout().clone(), j.clone(), reason.clone());
                let failed = tokio::task::spawn_blocking(move || {
                    for link in &j.links {
                        request::fail(&layout, link, &j.id, &reason)?;
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(failed, Ok(Ok(()))) {
                    warn!("could not mark the request failed: {failed:?}");
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Records the outcome (a copy published where it goes next), then
    /// acks; nacks (requeue) when it could not be recorded. Returns the
    /// reason when the job went to the dead-letter queue.
    async fn settle(
        &self,
        delivery: &Delivery,
        kind: JobKind,
        id: &str,
        outcome: JobOutcome,
    ) -> Option<String> {
        let received = delivery_headers(delivery);
        match &outcome {
            JobOutcome::Done => info!("job done"),
            JobOutcome::Wait(why) => debug!("waiting: {why}"),
            JobOutcome::Transient(why) => warn!("transient failure: {why}"),
            JobOutcome::Interrupted => debug!("redelivered after an interruption"),
            JobOutcome::Dead(_) => {}
        }
        let (route, carried) = protocol::route(
            &self.topology,
            kind,
            &received,
            outcome,
            self.config.delivery_limit,
        );
        let mut dead = None;
        let next = match route {
            Route::Done => None,
            Route::Republish {
                exchange,
                routing_key,
            } => Some((exchange, routing_key)),
            Route::DeadLetter { reason } => {
                dead = Some(reason);
                None
            }
        };
        let recorded = match (&dead, next) {
            (Some(reason), _) => {
                warn!("dead-lettering: {reason}");
                self.publisher
                    .publish_raw(
                        &self.topology.dead_letters(),
                        "",
                        &delivery.data,
                        id,
                        carried,
                    )
                    .await
            }
            (None, Some((exchange, routing_key))) => {
                self.publisher
                    .publish_raw(&exchange, &routing_key, &delivery.data, id, carried)
                    .await
            }
            (None, None) => Ok(()),
        };
        let timeout = self.config.amqp.timeout;
        let settled = match recorded {
            Ok(()) => within(timeout, "an ack", delivery.ack(BasicAckOptions::default())).await,
            Err(e) => {
                // Only a dead letter that is really recorded counts as one.
                dead = None;
                warn!("could not record the outcome ({e}); requeueing the job");
                within(
                    timeout,
                    "a nack",
                    delivery.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    }),
                )
                .await
            }
        };
        if let Err(e) = settled {
            warn!("settling the delivery failed ({e}); the broker will redeliver it");
        }
        dead
    }
}

/// A handler's error as an outcome: transient (the next backoff tier) or
/// dead. A store without room to start is neither: the job waits in the
/// first tier, its retries untouched, for as long as the store stays full
/// (see `crate::space`).
fn classify<E: std::error::Error + 'static>(transient: bool, e: E) -> JobOutcome {
    match StoreFull::find(&e) {
        Some(full) if full.not_tried() => JobOutcome::Wait(e.to_string()),
        _ if transient => JobOutcome::Transient(e.to_string()),
        _ => JobOutcome::Dead(e.to_string()),
    }
}
