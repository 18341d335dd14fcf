//! The fleet worker: consume layer and image jobs, run the same handlers as
//! `exploder explode`, ack only after the work is durable in the store.
//!
//! Per delivery, one outcome:
//! - done: ack;
//! - wait (an image whose layers are not all in the store yet): publish a
//!   copy to the first retry tier, then ack — waiting is not a failure and
//!   does not count against the delivery limit;
//! - transient failure: publish a copy to the next retry tier (or, past the
//!   last tier, to the dead-letter queue), then ack;
//! - permanent failure (bad digest, hostile layer, limit, unreadable
//!   schema): publish to the dead-letter queue with the reason, then ack.
//!
//! If that publish fails the delivery is nacked back to its queue: a job is
//! never dropped. A worker killed at any point leaves its unacked
//! deliveries to the broker, which redelivers them; every handler is
//! idempotent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::fetch::plan::fetcher_for;
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::fetch::{FetchError, Fetcher, ManifestTarget, resolve};
use exploder_common::history::parse_rfc3339;
use exploder_common::image::Platform;
use exploder_common::job::{self, ImageJob, Job, JobKind, JobSource, LayerJob};
use exploder_common::limits::Limits;
use exploder_common::store::{Linked, StoreLayout};
use exploder_queue::connect::{connect, redact};
use exploder_queue::index::Index;
use exploder_queue::publish::Publisher;
use exploder_queue::topology::{RETRY_TIERS, Topology};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tracing::{Instrument, info, info_span, warn};

use crate::finalize::{FinalizeOptions, Finalizer};
use crate::layer::LayerStore;
use crate::metrics::WorkerMetrics;

const ATTEMPT_HEADER: &str = "x-exploder-attempt";
const WAITS_HEADER: &str = "x-exploder-waits";
const ERROR_HEADER: &str = "x-exploder-error";
const QUEUE_HEADER: &str = "x-exploder-queue";
/// An image waits for its layers at most this many times (at the first
/// retry tier's interval) before it is dead-lettered.
const MAX_WAITS: i64 = 720;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub prefix: String,
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
}

/// What became of one delivery.
enum Outcome {
    Done,
    Wait(String),
    Transient(String),
    Dead(String),
}

struct Ctx {
    config: WorkerConfig,
    topology: Topology,
    index: Index,
    publisher: Publisher,
    layers: Arc<LayerStore>,
    /// One fetcher per source, kept for the session: a registry client
    /// holds its connection pool and token, which every job of the same
    /// repository reuses.
    fetchers: std::sync::Mutex<std::collections::HashMap<JobSource, Arc<Fetcher>>>,
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
                let service = if format!("{e:#}").contains("Redis") {
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
    let conn = connect(&config.amqp_url, Duration::from_secs(3600)).await?;
    topology.apply(&conn).await?;
    let index = Index::connect(&config.redis_url, &config.prefix)
        .await
        .map_err(|e| anyhow::anyhow!("Redis at {}: {e}", redact(&config.redis_url)))?;
    let publisher = Publisher::open(&conn, topology.clone()).await?;
    metrics.broker_up.set(1);
    metrics.redis_up.set(1);
    let mut store = LayerStore::new(StoreLayout::new(&config.store), config.limits.clone());
    store.durable = config.finalize.durable;
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        topology: topology.clone(),
        index,
        publisher,
        layers: Arc::new(store),
        fetchers: Default::default(),
        metrics: metrics.clone(),
    });

    let channel = conn.create_channel().await?;
    channel
        .basic_qos(
            config.concurrency.clamp(1, u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        )
        .await?;
    let mut consumers = Vec::new();
    for kind in [JobKind::Layer, JobKind::Image] {
        let tag = format!("exploder-worker-{}-{}", std::process::id(), kind.as_str());
        let consumer = channel
            .basic_consume(
                topology.work_queue(kind).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push((tag, consumer));
    }
    info!(prefix = %config.prefix, concurrency = config.concurrency, "worker consuming");
    let tags: Vec<String> = consumers.iter().map(|(t, _)| t.clone()).collect();
    let mut deliveries = futures_util::stream::select_all(consumers.into_iter().map(|(_, c)| c));
    let mut inflight = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    inflight.spawn(async move { ctx.handle(delivery).await });
                }
                Some(Err(e)) => break Err(anyhow::anyhow!("consuming: {e}")),
                None => break Err(anyhow::anyhow!("the broker closed the consumer")),
            },
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            _ = &mut *shutdown => break Ok(()),
        }
    };
    if result.is_ok() {
        // Stop taking work, let in-flight jobs finish within the grace
        // period; whatever is still unacked goes back to the queue when the
        // connection closes.
        for tag in &tags {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
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
        let _ = conn.close(200, "worker shutting down".into()).await;
    }
    result
}

fn header_int(delivery: &Delivery, name: &str) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(*v as i64),
        AMQPValue::ShortShortUInt(v) => Some(*v as i64),
        AMQPValue::ShortInt(v) => Some(*v as i64),
        AMQPValue::ShortUInt(v) => Some(*v as i64),
        AMQPValue::LongInt(v) => Some(*v as i64),
        AMQPValue::LongUInt(v) => Some(*v as i64),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

impl Ctx {
    fn fetcher(&self, source: &JobSource) -> Result<Arc<Fetcher>, FetchError> {
        let mut cache = self.fetchers.lock().expect("fetcher cache lock");
        if let Some(f) = cache.get(source) {
            return Ok(f.clone());
        }
        let f = Arc::new(fetcher_for(source, &self.config.registry)?);
        cache.insert(source.clone(), f.clone());
        Ok(f)
    }

    async fn handle(&self, delivery: Delivery) {
        let schema = header_int(&delivery, job::SCHEMA_HEADER).and_then(|v| u16::try_from(v).ok());
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
            // Undecodable: the routing key still tells which queue it came from.
            Err(_) => {
                let kind = if delivery.routing_key.as_str() == JobKind::Image.as_str() {
                    JobKind::Image
                } else {
                    JobKind::Layer
                };
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
            Err(_) => None,
        };
        let m = &self.metrics;
        let in_flight = m.in_flight.with_label_values(&[kind.as_str()]);
        in_flight.inc();
        let started = std::time::Instant::now();
        async {
            let outcome = match decoded {
                Err(e) => Outcome::Dead(format!("cannot decode the job: {e}")),
                Ok(Job::Layer(j)) => self.layer(&j).await,
                Ok(Job::Image(j)) => self.image(&j).await,
            };
            let done = matches!(outcome, Outcome::Done);
            let waiting = matches!(outcome, Outcome::Wait(_));
            let dead = self.settle(&delivery, kind, &id, outcome).await;
            let result = match (done, waiting, &dead) {
                (true, _, _) => "ok",
                (_, _, Some(_)) => "dead_lettered",
                (_, true, None) => "waiting",
                _ => "retried",
            };
            m.jobs.with_label_values(&[kind.as_str(), result]).inc();
            m.duration
                .with_label_values(&[kind.as_str()])
                .observe(started.elapsed().as_secs_f64());
            in_flight.dec();
            // For `exploder enqueue --wait`: why the job gave up, or that
            // it no longer has (a replay that worked).
            if let Some(d) = &job_key {
                if done {
                    let _ = self.index.clear_failed(d).await;
                } else if let Some(reason) = dead {
                    let _ = self.index.mark_failed(d, &reason).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Acks after the outcome is safely recorded; nacks (requeue) when it
    /// could not be.
    /// Returns the reason when the job went to the dead-letter queue.
    async fn settle(
        &self,
        delivery: &Delivery,
        kind: JobKind,
        id: &str,
        outcome: Outcome,
    ) -> Option<String> {
        let mut dead = None;
        let recorded = match outcome {
            Outcome::Done => {
                info!("job done");
                Ok(())
            }
            Outcome::Wait(why) => {
                let waits = header_int(delivery, WAITS_HEADER).unwrap_or(0) + 1;
                if waits > MAX_WAITS {
                    let reason = format!("gave up waiting: {why}");
                    dead = Some(reason.clone());
                    self.dead_letter(delivery, kind, id, &reason).await
                } else {
                    let mut h = FieldTable::default();
                    h.insert(WAITS_HEADER.into(), AMQPValue::LongLongInt(waits));
                    self.publisher
                        .publish_raw(
                            "",
                            &self.topology.retry_queue(kind, RETRY_TIERS[0].0),
                            &delivery.data,
                            id,
                            h,
                        )
                        .await
                }
            }
            Outcome::Transient(why) => {
                let attempt = header_int(delivery, ATTEMPT_HEADER).unwrap_or(0);
                match RETRY_TIERS.get(attempt as usize) {
                    Some((tier, _)) => {
                        warn!(
                            attempt = attempt + 1,
                            tier, "transient failure, retrying: {why}"
                        );
                        let mut h = FieldTable::default();
                        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt + 1));
                        h.insert(
                            ERROR_HEADER.into(),
                            AMQPValue::LongString(LongString::from(why.as_bytes().to_vec())),
                        );
                        self.publisher
                            .publish_raw(
                                "",
                                &self.topology.retry_queue(kind, tier),
                                &delivery.data,
                                id,
                                h,
                            )
                            .await
                    }
                    None => {
                        let reason = format!("still failing after {attempt} retries: {why}");
                        dead = Some(reason.clone());
                        self.dead_letter(delivery, kind, id, &reason).await
                    }
                }
            }
            Outcome::Dead(why) => {
                let recorded = self.dead_letter(delivery, kind, id, &why).await;
                dead = Some(why);
                recorded
            }
        };
        // Only a dead letter that is really recorded counts as one.
        if recorded.is_err() {
            dead = None;
        }
        let settled = match recorded {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await,
            Err(e) => {
                warn!("could not record the outcome ({e}); requeueing the job");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(e) = settled {
            warn!("settling the delivery failed ({e}); the broker will redeliver it");
        }
        dead
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        kind: JobKind,
        id: &str,
        reason: &str,
    ) -> Result<(), exploder_queue::publish::PublishError> {
        warn!("dead-lettering: {reason}");
        let mut h = FieldTable::default();
        h.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
        );
        if let Some(attempts) = header_int(delivery, ATTEMPT_HEADER) {
            h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempts));
        }
        h.insert(
            QUEUE_HEADER.into(),
            AMQPValue::LongString(LongString::from(
                self.topology.work_queue(kind).into_bytes(),
            )),
        );
        self.publisher
            .publish_raw(&self.topology.dead_letters(), "", &delivery.data, id, h)
            .await
    }

    async fn layer(&self, j: &LayerJob) -> Outcome {
        match self.ingest_layer(j).await {
            Ok(()) => Outcome::Done,
            Err(o) => o,
        }
    }

    async fn ingest_layer(&self, j: &LayerJob) -> Result<(), Outcome> {
        let redis = |e: redis::RedisError| Outcome::Transient(format!("Redis: {e}"));
        if self.layers.contains(&j.diff_id) {
            self.metrics
                .dedupe_hits
                .with_label_values(&["layer_skipped"])
                .inc();
        } else {
            let token = job::new_job_id();
            let ttl = self.config.claim_ttl;
            // Two workers never download the same layer at once: the loser
            // waits for the winner's layer to appear (or its lease to lapse).
            let (mut claimed, mut conflicted) = (false, false);
            while !self.layers.contains(&j.diff_id) {
                if self
                    .index
                    .claim(&j.diff_id, &token, ttl)
                    .await
                    .map_err(redis)?
                {
                    claimed = true;
                    break;
                }
                if !conflicted {
                    conflicted = true;
                    self.metrics.claim_conflicts.inc();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if !claimed {
                self.metrics
                    .dedupe_hits
                    .with_label_values(&["download_skipped"])
                    .inc();
            }
            if claimed {
                let result = self.ingest_claimed(j, &token).await;
                let _ = self.index.release_claim(&j.diff_id, &token).await;
                result?;
            }
        }
        self.index.mark_ingested(&j.diff_id).await.map_err(redis)?;
        self.fan_in(&j.diff_id)
            .await
            .map_err(|e| Outcome::Transient(e.to_string()))
    }

    async fn ingest_claimed(&self, j: &LayerJob, token: &str) -> Result<(), Outcome> {
        if self.layers.contains(&j.diff_id) {
            // Published by the previous holder just before our claim.
            return Ok(());
        }
        let fetcher = self
            .fetcher(&j.source)
            .map_err(|e| classify(e.is_transient(), e))?;
        // Keep the lease alive while working.
        let extender = {
            let (index, diff_id, token, ttl) = (
                self.index.clone(),
                j.diff_id.clone(),
                token.to_string(),
                self.config.claim_ttl,
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if !matches!(index.extend_claim(&diff_id, &token, ttl).await, Ok(true)) {
                        break;
                    }
                }
            })
        };
        let result = async {
            let blob = fetcher
                .blob(&j.digest, Some(j.size))
                .await
                .map_err(|e| classify(e.is_transient(), e))?;
            let (store, layer) = (self.layers.clone(), j.layer());
            let info = tokio::task::spawn_blocking(move || store.ingest(&layer, blob, |_| {}))
                .await
                .map_err(|e| Outcome::Transient(format!("ingest task: {e}")))?
                .map_err(|e| classify(e.is_transient(), e))?;
            if let Some(info) = info {
                self.metrics.bytes_downloaded.inc_by(info.compressed_bytes);
                self.metrics.bytes_written.inc_by(info.uncompressed_bytes);
            }
            Ok(())
        }
        .await;
        extender.abort();
        result
    }

    /// Publishes the image job of every image whose last layer this was.
    async fn fan_in(&self, diff_id: &Digest) -> anyhow::Result<()> {
        for manifest in self.index.fan_in(diff_id).await? {
            if let Some(body) = self.index.image_job(&manifest).await? {
                let id = format!("fan-in-{manifest}");
                let kind = JobKind::Image;
                self.publisher
                    .publish_raw(
                        &self.topology.work_exchange(),
                        kind.as_str(),
                        &body,
                        &id,
                        FieldTable::default(),
                    )
                    .await?;
                self.metrics.fan_in_finalizes.inc();
                info!(%manifest, "last layer landed: image job published");
            }
        }
        Ok(())
    }

    async fn image(&self, j: &ImageJob) -> Outcome {
        let missing: Vec<&Digest> = j
            .layers
            .iter()
            .map(|l| &l.diff_id)
            .filter(|d| !self.layers.contains(d))
            .collect();
        let layout = self.layers.layout().clone();
        if !layout
            .digest_dir(&j.manifest_digest)
            .join("rootfs")
            .is_dir()
            && !missing.is_empty()
        {
            return Outcome::Wait(format!(
                "{} of {} layers not ingested yet",
                missing.len(),
                j.layers.len()
            ));
        }
        // The job names the image; its manifest and config bytes (kept
        // beside the rootfs) come from the source, by digest, verified.
        let fetcher = match self.fetcher(&j.source) {
            Ok(f) => f,
            Err(e) => return classify(e.is_transient(), e),
        };
        let target = ManifestTarget::Digest(j.manifest_digest.clone());
        let mut image = match resolve(&fetcher, &target, &Platform::default()).await {
            Ok(i) => i,
            Err(e) => return classify(e.is_transient(), e),
        };
        image.index_digest = j.index_digest.clone();
        let (store, job, opts) = (self.layers.clone(), j.clone(), self.config.finalize.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<(), Outcome> {
            let finalizer = Finalizer::new(&store, opts);
            finalizer
                .build(&image)
                .map_err(|e| classify(e.is_transient(), e))?;
            // The enqueue time orders this job against other pushes and
            // deletes of the same tag: a newer decision already applied
            // wins over this (older) job.
            let decided = parse_rfc3339(&job.enqueued_at);
            for link in &job.links {
                let linked = finalizer
                    .link(&link.name(), &link.tag, &job.manifest_digest, decided)
                    .map_err(|e| Outcome::Transient(format!("linking {link}: {e}")))?;
                if let Linked::Superseded(newer) = linked {
                    tracing::info!(
                        %link,
                        newer = %newer.line(),
                        "not linked: the tag changed after this job was enqueued"
                    );
                }
            }
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {
                // Linked: no longer in progress, so gc weighs it like any
                // image. Best effort: a record left behind only makes gc
                // keep the image until the record expires.
                let encoded = job::encode(&Job::Image(j.clone()));
                let _ = self
                    .index
                    .finish_image_job(&j.manifest_digest, &encoded)
                    .await;
                Outcome::Done
            }
            Ok(Err(o)) => o,
            Err(e) => Outcome::Transient(format!("finalize task: {e}")),
        }
    }
}

fn classify(transient: bool, e: impl std::fmt::Display) -> Outcome {
    if transient {
        Outcome::Transient(e.to_string())
    } else {
        Outcome::Dead(e.to_string())
    }
}
