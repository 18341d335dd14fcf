//! Whether the worker takes jobs: only while its store takes writes and
//! Redis answers (checks `/readyz` also reports), on a live broker
//! session (a worker cut from the broker loses its session, and its
//! consumers with it, at the heartbeat). A worker that cannot store what
//! it ingests would otherwise take every job and push each through the
//! backoff tiers to the dead-letter queue.
//!
//! When a check fails the worker cancels its consumers (`basic.cancel`):
//! jobs in hand finish, deliveries the broker had already sent are
//! returned to their queue (nack, requeue), and the queues keep the rest
//! for other workers. When every check passes again it consumes again.
//! Each transition is one log line saying why, and the
//! `exploder_worker_consuming` gauge follows.

use std::path::PathBuf;
use std::time::Duration;

use exploder_common::job::JobKind;
use exploder_queue::connect::within;
use exploder_queue::topology::Topology;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tracing::warn;

/// How long the store's probe may take: a hung network file system is a
/// failed check, not a hung worker.
const STORE_WITHIN: Duration = Duration::from_secs(5);

/// Whether the store takes writes (the probe `/readyz` uses: a file made
/// and removed in its `tmp/`), off the runtime's threads, within
/// [`STORE_WITHIN`].
pub(super) async fn store_problem(store: PathBuf) -> Option<String> {
    let at = store.clone();
    let probe = tokio::task::spawn_blocking(move || exploder_telemetry::store_writable(&at));
    match tokio::time::timeout(STORE_WITHIN, probe).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(problem))) => Some(problem),
        Ok(Err(e)) => Some(format!("checking the store {}: {e}", store.display())),
        Err(_) => Some(format!(
            "the store {} did not answer within {STORE_WITHIN:?}",
            store.display()
        )),
    }
}

/// The worker's consumers on its channel, one per work queue, while on.
pub(super) struct Consumers {
    channel: Channel,
    topology: Topology,
    timeout: Duration,
    tags: Vec<String>,
    deliveries: Option<SelectAll<Consumer>>,
}

impl Consumers {
    pub(super) fn new(channel: Channel, topology: Topology, timeout: Duration) -> Consumers {
        let tags = JobKind::ALL
            .iter()
            .map(|kind| format!("exploder-worker-{}-{}", std::process::id(), kind.as_str()))
            .collect();
        Consumers {
            channel,
            topology,
            timeout,
            tags,
            deliveries: None,
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.deliveries.is_some()
    }

    /// Consumes every work queue.
    pub(super) async fn start(&mut self) -> anyhow::Result<()> {
        let mut consumers = Vec::new();
        for (kind, tag) in JobKind::ALL.into_iter().zip(&self.tags) {
            let consume = self.channel.basic_consume(
                self.topology.work_queue(kind).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            );
            consumers.push(within(self.timeout, "a consume", consume).await?);
        }
        self.deliveries = Some(futures_util::stream::select_all(consumers));
        Ok(())
    }

    /// The next delivery while on; never while off.
    pub(super) async fn next(&mut self) -> Option<lapin::Result<Delivery>> {
        match &mut self.deliveries {
            Some(deliveries) => deliveries.next().await,
            None => std::future::pending().await,
        }
    }

    /// Cancels the consumers; with `give_back`, the deliveries the broker
    /// sent before the cancel took effect are returned to their queues
    /// (else they go back when the connection closes).
    pub(super) async fn stop(&mut self, give_back: bool) {
        let Some(mut deliveries) = self.deliveries.take() else {
            return;
        };
        for tag in &self.tags {
            let cancel = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            if let Err(e) = within(self.timeout, "a cancel", cancel).await {
                warn!("cancelling consumer {tag}: {e}");
            }
        }
        if !give_back {
            return;
        }
        // Each consumer's stream ends after what it had been sent.
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let drained = tokio::time::timeout(self.timeout, async {
            while let Some(Ok(delivery)) = deliveries.next().await {
                if let Err(e) = delivery.acker.nack(requeue).await {
                    warn!("returning a delivery to its queue: {e}");
                }
            }
        });
        if drained.await.is_err() {
            warn!(
                "the broker did not end the cancelled consumers within {:?}",
                self.timeout
            );
        }
    }
}
