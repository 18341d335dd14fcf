//! Schema version 2, frozen: never change these types (see the `job`
//! module documentation); a new schema gets a new module.
//!
//! What changed from version 1: an image job carries the manifest and
//! config bytes it was resolved from (verified at fan-out, a few KiB), so
//! finalize never goes back to the registry (a tag deleted right after its
//! push no longer fails its image job), and who decided it (`cli`,
//! `webhook/<endpoint>`, `poll`, `imagestream`). Layer jobs and every
//! nested type are version 1's, unchanged.

use serde::{Deserialize, Serialize};

use super::DecodeError;
use super::v1::{Layer, LayerJob, LinkTarget, Source};
use crate::digest::Digest;

/// The payload after the version; decoding must consume all of it.
pub(super) fn decode(payload: &[u8]) -> Result<Job, DecodeError> {
    let (job, rest) = postcard::take_from_bytes::<Job>(payload)
        .map_err(|e| DecodeError::Malformed(format!("schema v2: {e}")))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "schema v2: {} unexpected bytes after the job",
            rest.len()
        )));
    }
    Ok(job)
}

#[derive(Serialize, Deserialize)]
pub(super) enum Job {
    Layer(LayerJob),
    Image(ImageJob),
}

#[derive(Serialize, Deserialize)]
pub(super) struct ImageJob {
    id: String,
    manifest_digest: Digest,
    index_digest: Option<Digest>,
    config_digest: Digest,
    layers: Vec<Layer>,
    links: Vec<LinkTarget>,
    source: Source,
    enqueued_at: String,
    decided_by: String,
    embedded: Option<Embedded>,
}

#[derive(Serialize, Deserialize)]
struct Embedded {
    manifest_media_type: String,
    manifest: Vec<u8>,
    config: Vec<u8>,
}

// Conversions, exhaustive as in v1: a new public field does not compile
// until its wire fate is decided.

impl From<&super::Job> for Job {
    fn from(job: &super::Job) -> Job {
        match job {
            super::Job::Layer(j) => Job::Layer(j.into()),
            super::Job::Image(j) => Job::Image(j.into()),
            super::Job::Export(_) => unreachable!("encode_as refuses an export job below v3"),
        }
    }
}

impl From<Job> for super::Job {
    fn from(job: Job) -> super::Job {
        match job {
            Job::Layer(j) => super::Job::Layer(j.into()),
            Job::Image(j) => super::Job::Image(j.into()),
        }
    }
}

impl From<&super::ImageJob> for ImageJob {
    fn from(j: &super::ImageJob) -> ImageJob {
        let super::ImageJob {
            id,
            manifest_digest,
            index_digest,
            config_digest,
            layers,
            links,
            source,
            enqueued_at,
            decided_by,
            embedded,
            exports: _,
            mirrors: _,
        } = j;
        ImageJob {
            id: id.clone(),
            manifest_digest: manifest_digest.clone(),
            index_digest: index_digest.clone(),
            config_digest: config_digest.clone(),
            layers: layers.iter().map(Layer::from).collect(),
            links: links.iter().map(LinkTarget::from).collect(),
            source: source.into(),
            enqueued_at: enqueued_at.clone(),
            decided_by: decided_by.clone(),
            embedded: embedded.as_ref().map(|e| {
                let super::EmbeddedImage {
                    manifest_media_type,
                    manifest,
                    config,
                } = e;
                Embedded {
                    manifest_media_type: manifest_media_type.clone(),
                    manifest: manifest.clone(),
                    config: config.clone(),
                }
            }),
        }
    }
}

impl From<ImageJob> for super::ImageJob {
    fn from(j: ImageJob) -> super::ImageJob {
        let ImageJob {
            id,
            manifest_digest,
            index_digest,
            config_digest,
            layers,
            links,
            source,
            enqueued_at,
            decided_by,
            embedded,
        } = j;
        super::ImageJob {
            id,
            manifest_digest,
            index_digest,
            config_digest,
            layers: layers.into_iter().map(Into::into).collect(),
            links: links.into_iter().map(Into::into).collect(),
            source: source.into(),
            enqueued_at,
            decided_by,
            embedded: embedded.map(|e| {
                let Embedded {
                    manifest_media_type,
                    manifest,
                    config,
                } = e;
                super::EmbeddedImage {
                    manifest_media_type,
                    manifest,
                    config,
                }
            }),
            exports: Vec::new(),
            mirrors: None,
        }
    }
}
