//! The image job handler: once every layer is in the store, finalize the
//! image from the manifest and config the job carries, and link its tags.

use exploder_common::digest::Digest;
use exploder_common::fetch::{ManifestTarget, resolve};
use exploder_common::image::{Platform, ResolvedImage};
use exploder_common::job::{ExportJob, ImageJob, Job, JobSource};
use exploder_common::reference::Reference;
use exploder_common::request;
use exploder_common::store::{Block, LinkError, Linked, StoreLayout};
use exploder_trust::Subject;
use tracing::{debug, info};

use super::{Ctx, classify};
use crate::finalize::Finalizer;
use exploder_queue::protocol::JobOutcome;

/// Whether every link of the job was decided again after it (a newer push
/// linked, or the tag was deleted): then the job is moot, and building its
/// image would only feed gc. Settles the job's requests when it is.
fn superseded_everywhere(layout: &StoreLayout, j: &ImageJob) -> std::io::Result<bool> {
    if j.links.is_empty() {
        return Ok(false);
    }
    for link in &j.links {
        if !request::settle_if_superseded(layout, link, j)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Who decides the links of ImageStream tags (`producer::sources::imagestream`).
const IMAGESTREAM: &str = "imagestream";

impl Ctx {
    pub(super) async fn image(&self, j: &ImageJob) -> JobOutcome {
        let layout = self.layers.layout().clone();
        let (l, job) = (layout.clone(), j.clone());
        let moot = tokio::task::spawn_blocking(move || {
            // A sign of life for the resync: this request's image job is
            // being handled, it need not be published again.
            for link in &job.links {
                if let Err(e) = request::touch(&l, link, &job.id) {
                    debug!(%link, "could not touch the request: {e}");
                }
            }
            superseded_everywhere(&l, &job)
        });
        match moot.await {
            Ok(Ok(true)) => {
                info!("not finalized: every link was decided again after this job");
                return JobOutcome::Done;
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return JobOutcome::Transient(format!("reading the tags' history: {e}")),
            Err(e) => return JobOutcome::Transient(format!("history task: {e}")),
        }
        // Blocked since it was enqueued: refused before any work (the
        // store would refuse the link anyway).
        match layout.image_block(&j.manifest_digest, j.index_digest.as_ref()) {
            Ok(Some(block)) => return self.refuse(&block),
            Ok(None) => {}
            Err(e) => return JobOutcome::Transient(format!("reading the block list: {e}")),
        }
        let built = layout.has_image(&j.manifest_digest);
        if !built {
            let missing: Vec<&Digest> = j
                .layers
                .iter()
                .map(|l| &l.diff_id)
                .filter(|d| !self.layers.contains(d))
                .collect();
            if !missing.is_empty() {
                // A layer that failed for good fails the image now, rather
                // than after a day of waiting.
                for d in &missing {
                    if let Ok(Some(reason)) = self.index.failure(d).await {
                        return JobOutcome::Dead(format!("layer {d} failed: {reason}"));
                    }
                }
                return JobOutcome::Wait(format!(
                    "{} of {} layers not ingested yet",
                    missing.len(),
                    j.layers.len()
                ));
            }
        }
        // A full store: wait for room before verifying or fetching anything.
        if !built && let Err(wait) = self.room_to_start().await {
            return wait;
        }
        // The signature policy, again (the fan-out checked it too): before
        // anything is finalized or linked. A refusal is permanent.
        if let Err(o) = self.verify(j).await {
            return o;
        }
        let image = if built {
            // Present: only the links are missing.
            None
        } else {
            match self.image_to_build(j).await {
                Ok(i) => Some(i),
                Err(o) => return o,
            }
        };
        let (store, opts, origin) = (
            self.layers.clone(),
            self.config.finalize.clone(),
            j.origin(),
        );
        if let Some(image) = image {
            let built = tokio::task::spawn_blocking(move || {
                Finalizer::new(&store, opts)
                    .build(&image, &origin)
                    .map_err(|e| classify(e.is_transient(), e))
            })
            .await;
            match built {
                Ok(Ok(_)) => info!(manifest = %j.manifest_digest, "image finalized"),
                Ok(Err(o)) => return o,
                Err(e) => return JobOutcome::Transient(format!("finalize task: {e}")),
            }
        }
        match self.link_all(j).await {
            Ok(()) => {
                // The disk images asked for, each an export job of its own
                // (retried and dead-lettered like any job). Published
                // before the ack: a failure retries this (idempotent) job.
                for format in &j.exports {
                    let export = Job::Export(ExportJob::new(&j.manifest_digest, *format));
                    if let Err(e) = self.publisher.publish(&export).await {
                        return JobOutcome::Transient(format!(
                            "publishing the {format} export: {e}"
                        ));
                    }
                }
                // Linked: no longer in progress, so gc weighs it like any
                // image. Best effort: a record left behind only makes gc
                // keep the image until the record expires.
                let encoded =
                    exploder_common::job::encode(&exploder_common::job::Job::Image(j.clone()));
                let _ = self
                    .index
                    .finish_image_job(&j.manifest_digest, &encoded)
                    .await;
                JobOutcome::Done
            }
            Err(o) => o,
        }
    }

    /// Checks the job's image against the signature policy as each of its
    /// links names it: `registry/repository:tag`, or `@digest` for a link
    /// named after the digest (a digest reference). ImageStream links are
    /// named after the stream's tags while their upstream is a digest
    /// (`dockerImageReference`), so they are checked as the digest
    /// reference the fan-out checked. A job read from a registry's
    /// storage directory (`--blob-source`) is checked as a reference to the
    /// registry it mirrors (schema v4 on); where the job does not say (a
    /// storage directory named directly, an older producer), the fan-out's
    /// check stands.
    async fn verify(&self, j: &ImageJob) -> Result<(), JobOutcome> {
        let trust = &self.config.trust;
        if !trust.is_enforcing() {
            return Ok(());
        }
        let (registry, repository) = match (&j.source, &j.mirrors) {
            (
                JobSource::Registry {
                    registry,
                    repository,
                },
                _,
            ) => (registry, repository),
            (JobSource::StorageDir { repository, .. }, Some(mirrors)) => (mirrors, repository),
            (JobSource::StorageDir { .. }, None) => {
                debug!(source = %j.source, "signature policy: checked at fan-out only");
                return Ok(());
            }
        };
        let fetcher = self
            .fetcher(&j.source)
            .map_err(|e| classify(e.is_transient(), e))?;
        let top = j.index_digest.as_ref().unwrap_or(&j.manifest_digest);
        let digest_tag = format!("{}-{}", top.algorithm().name(), top.hex());
        let by_digest = j.links.is_empty() || j.decided_by == IMAGESTREAM;
        let tags: Vec<Option<&str>> = if by_digest {
            vec![None]
        } else {
            j.links
                .iter()
                .map(|l| (l.tag != digest_tag).then_some(l.tag.as_str()))
                .collect()
        };
        for tag in tags {
            let reference = Reference {
                registry: registry.clone(),
                repository: repository.clone(),
                tag: tag.map(str::to_string),
                digest: tag.is_none().then(|| top.clone()),
            };
            let accepted = trust
                .verify(
                    Subject::Docker(&reference),
                    &fetcher,
                    &j.manifest_digest,
                    j.index_digest.as_ref(),
                )
                .await
                .map_err(|e| {
                    if e.refusal().is_some() {
                        self.metrics
                            .images_refused
                            .with_label_values(&["signature"])
                            .inc();
                    }
                    classify(e.is_transient(), e)
                })?;
            info!(%reference, by = ?accepted.by, "signature policy accepts");
        }
        Ok(())
    }

    /// Dead-letters the job of a blocked image, with the block's reason.
    fn refuse(&self, block: &Block) -> JobOutcome {
        info!(digest = %block.digest, reason = %block.reason, "blocked image refused");
        self.metrics
            .images_refused
            .with_label_values(&["blocked"])
            .inc();
        JobOutcome::Dead(format!("refused: {block}"))
    }

    /// The image to finalize: the one the job carries (schema v2), or, for
    /// a v1 job, fetched from its source by digest.
    async fn image_to_build(&self, j: &ImageJob) -> Result<ResolvedImage, JobOutcome> {
        match j.embedded_image() {
            Some(Ok(image)) => return Ok(image),
            Some(Err(corrupt)) => return Err(JobOutcome::Dead(corrupt)),
            None => {}
        }
        let fetcher = self
            .fetcher(&j.source)
            .map_err(|e| classify(e.is_transient(), e))?;
        let target = ManifestTarget::Digest(j.manifest_digest.clone());
        let mut image = resolve(&fetcher, &target, &Platform::default())
            .await
            .map_err(|e| classify(e.is_transient(), e))?;
        image.index_digest = j.index_digest.clone();
        Ok(image)
    }

    /// Links every tag of the job (each ordered by the job's decision time:
    /// a newer decision already applied wins over this older job). A store
    /// that ran out of space, and has not had room since, is not written
    /// to: the job waits.
    async fn link_all(&self, j: &ImageJob) -> Result<(), JobOutcome> {
        let (layout, job) = (self.layers.layout().clone(), j.clone());
        let space = self.layers.space.clone();
        tokio::task::spawn_blocking(move || {
            space
                .check_small_write()
                .map_err(|full| JobOutcome::Wait(full.to_string()))?;
            let (decided, origin) = (job.decided(), job.origin());
            for link in &job.links {
                let linked = layout
                    .link(
                        &link.name(),
                        &link.tag,
                        &job.manifest_digest,
                        decided,
                        &origin,
                    )
                    .map_err(|e| match e {
                        LinkError::Io(e) => JobOutcome::Transient(match space.ran_out(&e, None) {
                            Some(full) => full.context(&format!("linking {link}")).to_string(),
                            None => format!("linking {link}: {e}"),
                        }),
                        refused => JobOutcome::Dead(refused.to_string()),
                    })?;
                if let Linked::Superseded(newer) = linked {
                    info!(
                        %link,
                        newer = %newer.line(),
                        "not linked: the tag changed after this job was enqueued"
                    );
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| JobOutcome::Transient(format!("link task: {e}")))?
    }
}
