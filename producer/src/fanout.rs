//! Fan-out: one resolved image → a layer job per missing layer and one
//! image job.
//!
//! Order matters for crash safety and for the fan-in that follows:
//! 1. decide which layers are missing (the Redis index, confirmed against
//!    the store; a layer the store has but Redis forgot is re-indexed);
//! 2. record the image's pending layers in Redis *before* publishing any
//!    layer job, so a layer finishing at once finds the image waiting;
//! 3. publish the layer jobs, then the image job, each confirmed by the
//!    broker. A crash in between at worst republishes on retry: every
//!    handler is idempotent.

use std::collections::HashSet;

use exploder_common::digest::Digest;
use exploder_common::image::ResolvedImage;
use exploder_common::job::{ImageJob, Job, JobSource, LayerJob, LinkTarget};
use exploder_common::store::StoreLayout;
use exploder_queue::index::Index;
use exploder_queue::publish::{PublishError, Publisher};
use serde::Serialize;

use crate::quota::{OverQuota, Quotas};

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error("Redis: {0} (check EXPLODER_REDIS_URL and that Redis runs)")]
    Index(#[from] redis::RedisError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    OverQuota(#[from] OverQuota),
    #[error("reading the store to check a quota: {0}")]
    Store(#[from] std::io::Error),
}

/// What was published for one image.
#[derive(Clone, Debug, Serialize)]
pub struct Enqueued {
    pub manifest_digest: Digest,
    pub image_job: String,
    pub layer_jobs: Vec<EnqueuedLayer>,
    /// Layers already ingested: no job.
    pub present_layers: Vec<Digest>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnqueuedLayer {
    pub job: String,
    pub diff_id: Digest,
    pub digest: Digest,
}

pub struct FanOut<'a> {
    pub publisher: &'a Publisher,
    pub index: &'a Index,
    pub store: &'a StoreLayout,
    pub quotas: &'a Quotas,
}

impl FanOut<'_> {
    /// Whether a layer is ingested: Redis says so and the store agrees, or
    /// the store has it (Redis lost it: re-index).
    async fn is_present(&self, diff_id: &Digest) -> Result<bool, FanOutError> {
        let in_store = self.store.layer_dir(diff_id).join("index").is_file();
        if in_store && !self.index.is_ingested(diff_id).await? {
            self.index.mark_ingested(diff_id).await?;
        }
        Ok(in_store)
    }

    pub async fn enqueue(
        &self,
        image: &ResolvedImage,
        source: JobSource,
        links: Vec<LinkTarget>,
    ) -> Result<Enqueued, FanOutError> {
        for link in &links {
            self.quotas
                .check(self.store, &link.namespace, image)?
                .map_err(FanOutError::OverQuota)?;
        }
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for layer in &image.layers {
            if !seen.insert(layer.diff_id.clone()) {
                continue;
            }
            if self.is_present(&layer.diff_id).await? {
                present.push(layer.diff_id.clone());
            } else {
                missing.push(layer.clone());
            }
        }
        let pending: Vec<Digest> = missing.iter().map(|l| l.diff_id.clone()).collect();
        self.index
            .record_pending(&image.manifest_digest, &pending)
            .await?;
        let mut layer_jobs = Vec::new();
        for layer in &missing {
            let job = LayerJob::new(layer, source.clone());
            let entry = EnqueuedLayer {
                job: job.id.clone(),
                diff_id: layer.diff_id.clone(),
                digest: layer.digest.clone(),
            };
            self.publisher.publish(&Job::Layer(job)).await?;
            layer_jobs.push(entry);
        }
        let job = Job::Image(ImageJob::new(image, links, source.clone()));
        let image_job = job.id().to_string();
        // Kept for the fan-in, which publishes it again the moment the last
        // layer lands; the copy published now waits for its layers in the
        // retry tiers (and finalizes even if Redis forgets everything).
        // While recorded, the image counts as in progress for gc.
        self.index
            .put_image_job(&image.manifest_digest, &exploder_common::job::encode(&job))
            .await?;
        // gc may have taken a layer found present above before it could
        // see this record: look again now that the record exists (gc moves
        // a layer away *before* it looks for records, so one of the two
        // sees the other).
        let mut vanished = Vec::new();
        for diff_id in &present {
            if !self.store.layer_dir(diff_id).join("index").is_file() {
                vanished.push(diff_id.clone());
            }
        }
        if !vanished.is_empty() {
            tracing::info!(
                count = vanished.len(),
                "layers collected meanwhile: enqueued again"
            );
            self.index
                .record_pending(&image.manifest_digest, &vanished)
                .await?;
            for diff_id in &vanished {
                let layer = image
                    .layers
                    .iter()
                    .find(|l| &l.diff_id == diff_id)
                    .expect("a present layer is one of the image's");
                let job = LayerJob::new(layer, source.clone());
                layer_jobs.push(EnqueuedLayer {
                    job: job.id.clone(),
                    diff_id: layer.diff_id.clone(),
                    digest: layer.digest.clone(),
                });
                self.publisher.publish(&Job::Layer(job)).await?;
            }
            present.retain(|d| !vanished.contains(d));
        }
        self.publisher.publish(&job).await?;
        tracing::info!(
            manifest = %image.manifest_digest,
            layer_jobs = layer_jobs.len(),
            present = present.len(),
            "image enqueued"
        );
        Ok(Enqueued {
            manifest_digest: image.manifest_digest.clone(),
            image_job,
            layer_jobs,
            present_layers: present,
        })
    }
}
