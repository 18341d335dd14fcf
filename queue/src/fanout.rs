//! Fan-out: an image job → the durable request for its links, a layer job
//! per missing layer, and the image job itself, published to the fleet.
//!
//! Order matters for crash safety and for the fan-in that follows:
//! 0. the caller has checked the image against the signature policy
//!    (`exploder_trust`; `enqueue` takes the verdict);
//! 1. record the request of each link in the store (`request::record`),
//!    durably, before anything is published: from then on a lost message
//!    cannot lose the image, the resync re-drives it;
//! 2. decide which layers are missing (the Redis index, confirmed against
//!    the store; a layer the store has but Redis forgot is re-indexed);
//! 3. record the image's pending layers in Redis *before* publishing any
//!    layer job, so a layer finishing at once finds the image waiting;
//! 4. publish the layer jobs, then the image job, each confirmed by the
//!    broker: sent one after the other, confirmed together (pipelined, see
//!    [`crate::publish`]). A crash in between at worst republishes: every
//!    handler is idempotent.
//!
//! The resync ([`crate::resync`]) re-drives a recorded request through the
//! same steps 2–4 ([`FanOut::redrive`]), publishing only what may be lost.

use std::collections::HashSet;
use std::time::Duration;

use exploder_common::digest::Digest;
use exploder_common::image::{Layer, ResolvedImage};
use exploder_common::job::{self, ImageJob, Job, JobSource, LayerJob, LinkTarget};
use exploder_common::request;
use exploder_common::store::{Block, DiskFormat, LinkError, StoreLayout};
use exploder_trust::Accepted;
use serde::Serialize;

use crate::index::{Index, IndexError};
use crate::publish::{PublishError, Publisher, Sent, confirm_all};

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error("{0} (check EXPLODER_REDIS_URL and that Redis runs)")]
    Index(#[from] IndexError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("recording the request in the store: {0}")]
    Store(#[from] std::io::Error),
    /// The store refuses the link (another registry's image holds the
    /// tag): retrying will not help.
    #[error(transparent)]
    Refused(LinkError),
    /// The image is blocked (`exploder block`): nothing was recorded or
    /// published.
    #[error("refused: {0}")]
    Blocked(Box<Block>),
    /// The policy check was of another image: a caller's bug.
    #[error("the signature policy accepted {accepted}, not the image {image} being enqueued")]
    NotChecked { accepted: Digest, image: Digest },
}

impl From<LinkError> for FanOutError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Io(e) => FanOutError::Store(e),
            LinkError::Blocked { block, .. } => FanOutError::Blocked(block),
            refused => FanOutError::Refused(refused),
        }
    }
}

/// An image whose request is recorded in the store
/// ([`FanOut::record`]), its jobs not yet published.
#[derive(Debug)]
pub struct Recorded {
    job: ImageJob,
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

/// What a re-drive published again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    pub layer_jobs: usize,
    pub image_job: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnqueuedLayer {
    pub job: String,
    pub diff_id: Digest,
    pub digest: Digest,
}

/// Which jobs a re-drive publishes again.
#[derive(Clone, Copy, Debug)]
pub struct Redrive {
    /// The image job too (no worker has shown signs of handling it).
    pub image_job: bool,
    /// A missing layer's job is published again at most this often
    /// fleet-wide (and never while a worker holds its claim).
    pub layer_interval: Duration,
}

pub struct FanOut<'a> {
    pub publisher: &'a Publisher,
    pub index: &'a Index,
    pub store: &'a StoreLayout,
}

impl FanOut<'_> {
    /// Whether a layer is ingested: Redis says so and the store agrees, or
    /// the store has it (Redis lost it: re-index).
    async fn is_present(&self, diff_id: &Digest) -> Result<bool, FanOutError> {
        let in_store = self.store.has_layer(diff_id);
        if in_store && !self.index.is_ingested(diff_id).await? {
            self.index.mark_ingested(diff_id).await?;
        }
        Ok(in_store)
    }

    /// Records the request of each link and publishes the image's jobs.
    /// `accepted` is the signature policy's verdict on this image
    /// ([`exploder_trust::Trust::verify`]): nothing is enqueued unchecked.
    /// `decided_by` says who asked (`cli`, `webhook/<endpoint>`, `poll`,
    /// `imagestream`); `exports`, the disk images to make once it is linked.
    pub async fn enqueue(
        &self,
        image: &ResolvedImage,
        accepted: &Accepted,
        source: JobSource,
        links: Vec<LinkTarget>,
        decided_by: &str,
        exports: Vec<DiskFormat>,
    ) -> Result<Enqueued, FanOutError> {
        let recorded = self
            .record(image, accepted, source, links, decided_by, exports)
            .await?;
        self.publish_recorded(recorded).await
    }

    /// Steps 0 and 1 of [`FanOut::enqueue`]: the decision, recorded in the
    /// store. A caller enqueueing several images at once records them one
    /// after the other, in the order decided (the newest decision of a
    /// link wins, and a quota counts the requests recorded before), and
    /// publishes them side by side ([`FanOut::publish_recorded`]).
    pub async fn record(
        &self,
        image: &ResolvedImage,
        accepted: &Accepted,
        source: JobSource,
        links: Vec<LinkTarget>,
        decided_by: &str,
        exports: Vec<DiskFormat>,
    ) -> Result<Recorded, FanOutError> {
        if accepted.manifest_digest != image.manifest_digest {
            return Err(FanOutError::NotChecked {
                accepted: accepted.manifest_digest.clone(),
                image: image.manifest_digest.clone(),
            });
        }
        if let Some(block) = self
            .store
            .image_block(&image.manifest_digest, image.index_digest.as_ref())?
        {
            return Err(FanOutError::Blocked(Box::new(block)));
        }
        let mut job = ImageJob::new(image, links, source, decided_by, exports);
        if let JobSource::StorageDir { .. } = job.source {
            // The worker checks the policy again, for the same registry.
            job.mirrors = accepted.registry.clone();
        }
        let (store, recorded) = (self.store.clone(), job.clone());
        tokio::task::spawn_blocking(move || request::record(&store, &recorded))
            .await
            .map_err(|e| FanOutError::Store(std::io::Error::other(e)))??;
        Ok(Recorded { job })
    }

    /// Steps 2–4 of [`FanOut::enqueue`] for a recorded request.
    pub async fn publish_recorded(&self, recorded: Recorded) -> Result<Enqueued, FanOutError> {
        let job = recorded.job;
        let (enqueued, _) = self.publish(&job, None).await?;
        tracing::info!(
            manifest = %job.manifest_digest,
            layer_jobs = enqueued.layer_jobs.len(),
            present = enqueued.present_layers.len(),
            "image enqueued"
        );
        Ok(enqueued)
    }

    /// Publishes a recorded request's jobs again (the resync): the layer
    /// jobs of missing layers nobody is ingesting and that were not
    /// re-published within `redrive.layer_interval`, and the image job if
    /// asked. The same job (same id) as recorded.
    pub async fn redrive(&self, job: &ImageJob, redrive: Redrive) -> Result<Redriven, FanOutError> {
        let (published, image_job) = self.publish(job, Some(redrive)).await?;
        Ok(Redriven {
            layer_jobs: published.layer_jobs.len(),
            image_job,
        })
    }

    /// Steps 2–4 of the module documentation. `redrive: None` publishes
    /// every missing layer's job and the image job. Also returns whether
    /// the image job was published.
    async fn publish(
        &self,
        job: &ImageJob,
        redrive: Option<Redrive>,
    ) -> Result<(Enqueued, bool), FanOutError> {
        let manifest = &job.manifest_digest;
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for layer in &job.layers {
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
        self.index.record_pending(manifest, &pending).await?;
        // Every job is sent first and confirmed after: one round trip to
        // the broker for all of them rather than one each.
        let (mut layer_jobs, mut sent) = (Vec::new(), Vec::new());
        for layer in &missing {
            if let Some(r) = redrive
                && !self.layer_needs_redrive(&layer.diff_id, r).await?
            {
                continue;
            }
            let (entry, s) = self.send_layer(layer, &job.source).await?;
            layer_jobs.push(entry);
            sent.push(s);
        }
        // Kept for the fan-in, which publishes it again the moment the last
        // layer lands; the copy published now waits for its layers in the
        // backoff tiers (and finalizes even if Redis forgets everything).
        // While recorded, the image counts as in progress for gc.
        let encoded = job::encode(&Job::Image(job.clone()));
        self.index.put_image_job(manifest, &encoded).await?;
        // gc may have taken a layer found present above before it could
        // see this record: look again now that the record exists (gc moves
        // a layer away *before* it looks for records, so one of the two
        // sees the other).
        let mut vanished = Vec::new();
        for diff_id in &present {
            if !self.store.has_layer(diff_id) {
                vanished.push(diff_id.clone());
            }
        }
        if !vanished.is_empty() {
            tracing::info!(
                count = vanished.len(),
                "layers collected meanwhile: enqueued again"
            );
            self.index.record_pending(manifest, &vanished).await?;
            for diff_id in &vanished {
                let layer = job
                    .layers
                    .iter()
                    .find(|l| &l.diff_id == diff_id)
                    .expect("a present layer is one of the image's");
                let (entry, s) = self.send_layer(layer, &job.source).await?;
                layer_jobs.push(entry);
                sent.push(s);
            }
            present.retain(|d| !vanished.contains(d));
        }
        // Sent after its layers' jobs on the same channel, so the broker
        // takes it after them; it no longer waits for their confirms (it
        // waits for the layers themselves in the backoff tiers anyway, and
        // a layer job that fails to publish fails the whole fan-out, which
        // is published again: every handler is idempotent).
        let image_job = redrive.is_none_or(|r| r.image_job);
        if image_job {
            sent.push(
                self.publisher
                    .send_raw(
                        &self.publisher.topology().work_exchange(),
                        job::JobKind::Image.as_str(),
                        &encoded,
                        &job.id,
                        Default::default(),
                    )
                    .await?,
            );
        }
        confirm_all(sent).await?;
        let enqueued = Enqueued {
            manifest_digest: manifest.clone(),
            image_job: job.id.clone(),
            layer_jobs,
            present_layers: present,
        };
        Ok((enqueued, image_job))
    }

    /// A missing layer's job may be lost: nobody holds its claim, and no
    /// re-drive published it within the interval (a guard in Redis, so a
    /// base layer shared by a thousand stuck images is published once).
    async fn layer_needs_redrive(
        &self,
        diff_id: &Digest,
        redrive: Redrive,
    ) -> Result<bool, FanOutError> {
        if self.index.is_claimed(diff_id).await? {
            return Ok(false);
        }
        Ok(self
            .index
            .guard_redrive(diff_id, redrive.layer_interval)
            .await?)
    }

    /// Sends a layer's job; the caller awaits its confirm.
    async fn send_layer(
        &self,
        layer: &Layer,
        source: &JobSource,
    ) -> Result<(EnqueuedLayer, Sent), FanOutError> {
        let job = LayerJob::new(layer, source.clone());
        let entry = EnqueuedLayer {
            job: job.id.clone(),
            diff_id: layer.diff_id.clone(),
            digest: layer.digest.clone(),
        };
        let sent = self.publisher.send(&Job::Layer(job)).await?;
        Ok((entry, sent))
    }
}
