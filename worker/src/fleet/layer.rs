//! The layer job handler: ingest one layer blob once fleet-wide, then run
//! the fan-in for the images waiting for it.

use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::job::{self, JobKind, LayerJob};
use exploder_queue::index::IndexError;
use lapin::types::FieldTable;
use tracing::info;

use super::{Ctx, classify};
use exploder_queue::protocol::JobOutcome;

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
            .map_err(|e| JobOutcome::Transient(e.to_string()))
    }

    async fn ingest_claimed(&self, j: &LayerJob, token: &str) -> Result<(), JobOutcome> {
        if self.layers.contains(&j.diff_id) {
            // Published by the previous holder just before our claim.
            return Ok(());
        }
        let fetcher = self
            .fetcher(&j.source)
            .map_err(|e| classify(e.is_transient(), e))?;
        // Keep the lease alive while working, and only while working: if
        // this future is dropped (its session ended with the broker
        // connection), the guard stops the extender, so the lease runs out
        // and another delivery or the resync can take the layer. A leaked
        // extender held it for ever.
        let extender = AbortOnDrop({
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
        });
        let result = async {
            let blob = fetcher
                .blob(&j.digest, Some(j.size))
                .await
                .map_err(|e| classify(e.is_transient(), e))?;
            let (store, layer) = (self.layers.clone(), j.layer());
            let info = tokio::task::spawn_blocking(move || store.ingest(&layer, blob, |_| {}))
                .await
                .map_err(|e| JobOutcome::Transient(format!("ingest task: {e}")))?
                .map_err(|e| classify(e.is_transient(), e))?;
            if let Some(info) = info {
                self.metrics.bytes_downloaded.inc_by(info.compressed_bytes);
                self.metrics.bytes_written.inc_by(info.uncompressed_bytes);
            }
            Ok(())
        }
        .await;
        drop(extender);
        result
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

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
