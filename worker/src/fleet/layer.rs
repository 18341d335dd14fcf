//! The layer job handler: ingest one layer blob once fleet-wide, then run
//! the fan-in for the images waiting for it.

use std::sync::Arc;
use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::job::{self, JobKind, LayerJob};
use exploder_queue::index::IndexError;
use lapin::types::FieldTable;
use tokio::time::Instant;
use tracing::{info, warn};

use super::claim::{Claim, Progress, StopOnDrop, Watched};
use super::{Ctx, classify};
use exploder_queue::protocol::JobOutcome;

/// How often a worker waiting for another's claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(300);

impl Ctx {
    pub(super) async fn layer(&self, j: &LayerJob) -> JobOutcome {
        // A full store: wait for room before claiming or fetching anything.
        if !self.layers.contains(&j.diff_id)
            && let Err(wait) = self.room_to_start().await
        {
            return wait;
        }
        match self.ingest_layer(j).await {
            Ok(()) => JobOutcome::Done,
            Err(o) => o,
        }
    }

    async fn ingest_layer(&self, j: &LayerJob) -> Result<(), JobOutcome> {
        let redis = |e: IndexError| JobOutcome::Transient(e.to_string());
        if self.layers.contains(&j.diff_id) {
            self.metrics
                .dedupe_hits
                .with_label_values(&["layer_skipped"])
                .inc();
        } else {
            let token = job::new_job_id();
            let ttl = self.config.claim_ttl;
            // Two workers never download the same layer at once: the loser
            // waits for the winner's layer to appear (or its lease to
            // lapse), for at most a lease's length; then the job waits in
            // the first backoff tier, and this worker takes other work.
            let waiting_since = Instant::now();
            let (mut claimed, mut conflicted) = (None, false);
            while !self.layers.contains(&j.diff_id) {
                let asked = Instant::now();
                if self
                    .index
                    .claim(&j.diff_id, &token, ttl)
                    .await
                    .map_err(redis)?
                {
                    claimed = Some(asked);
                    break;
                }
                if !conflicted {
                    conflicted = true;
                    self.metrics.claim_conflicts.inc();
                }
                if waiting_since.elapsed() >= ttl {
                    return Err(JobOutcome::Wait(format!(
                        "layer {} is being ingested by another worker (waited {ttl:?})",
                        j.diff_id
                    )));
                }
                tokio::time::sleep(CLAIM_POLL).await;
            }
            match claimed {
                None => self
                    .metrics
                    .dedupe_hits
                    .with_label_values(&["download_skipped"])
                    .inc(),
                Some(claimed_at) => {
                    info!(layer = %j.diff_id, "claimed the layer: ingesting it");
                    let claim = Claim {
                        index: self.index.clone(),
                        diff_id: j.diff_id.clone(),
                        token,
                        ttl,
                        claimed_at,
                    };
                    let (result, lost) = self.ingest_claimed(j, &claim).await;
                    if !lost {
                        let _ = self.index.release_claim(&j.diff_id, &claim.token).await;
                    }
                    result?;
                }
            }
        }
        self.index.mark_ingested(&j.diff_id).await.map_err(redis)?;
        self.fan_in(&j.diff_id)
            .await
            .map_err(|e| JobOutcome::Transient(e.to_string()))
    }

    /// Ingests the layer under `claim`, renewing it while the ingest makes
    /// progress (see `claim`). Returns the outcome and whether the claim was lost:
    /// then the ingest was stopped, and the job fails for now unless the
    /// layer got published anyway (it had been read whole).
    async fn ingest_claimed(&self, j: &LayerJob, claim: &Claim) -> (Result<(), JobOutcome>, bool) {
        if self.layers.contains(&j.diff_id) {
            // Published by the previous holder just before our claim.
            return (Ok(()), false);
        }
        let fetcher = match self.fetcher(&j.source) {
            Ok(f) => f,
            Err(e) => return (Err(classify(e.is_transient(), e)), false),
        };
        let progress = Arc::new(Progress::default());
        // Dropped with this future (its session ended with the broker
        // connection): the ingest stops at its next read rather than
        // downloading for nobody, and the lease is no longer renewed.
        let _stop = StopOnDrop(progress.clone());
        let work = async {
            let blob = fetcher
                .blob(&j.digest, Some(j.size))
                .await
                .map_err(|e| classify(e.is_transient(), e))?;
            let blob = Watched::new(blob, progress.clone());
            let (store, layer) = (self.layers.clone(), j.layer());
            let info =
                tokio::task::spawn_blocking(move || store.ingest(&layer, Box::new(blob), |_| {}))
                    .await
                    .map_err(|e| JobOutcome::Transient(format!("ingest task: {e}")))?
                    .map_err(|e| classify(e.is_transient(), e))?;
            if let Some(info) = info {
                self.metrics.bytes_downloaded.inc_by(info.compressed_bytes);
                self.metrics.bytes_written.inc_by(info.uncompressed_bytes);
                self.metrics.files_shared.inc_by(info.shared_files);
                self.metrics.file_bytes_shared.inc_by(info.shared_bytes);
            }
            Ok(())
        };
        tokio::pin!(work);
        tokio::select! {
            result = &mut work => (result, false),
            why = claim.keep(&progress) => {
                warn!(layer = %j.diff_id, "lost the claim on the layer: {why}; stopping its ingest");
                progress.stop();
                // The reader fails at its next read; a read waiting on a
                // stalled registry ends at the registry's deadline.
                let result = work.await.map_err(|_| {
                    JobOutcome::Transient(format!(
                        "stopped ingesting layer {}: lost the claim on it ({why}); retried \
                         later, unless another worker ingested it meanwhile",
                        j.diff_id
                    ))
                });
                (result, true)
            }
        }
    }
    /// Publishes the image job of every image whose last layer this was.
    /// Only an accelerator: the image job published up front finalizes
    /// from its backoff tier anyway, and the resync re-drives what both
    /// lost.
    async fn fan_in(&self, diff_id: &Digest) -> anyhow::Result<()> {
        for manifest in self.index.fan_in(diff_id).await? {
            if let Some(body) = self.index.image_job(&manifest).await? {
                let id = format!("fan-in-{manifest}");
                self.publisher
                    .publish_raw(
                        &self.topology.work_exchange(),
                        JobKind::Image.as_str(),
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
}
