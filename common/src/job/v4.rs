//! Schema version 4, frozen: never change these types (see the `job`
//! module documentation); a new schema gets a new module.
//!
//! What changed from version 3: an image job from a registry's storage
//! directory (`--blob-source`) says which registry the directory mirrors,
//! so its worker checks the signature policy for the same reference the
//! fan-out checked. Layer and export jobs are version 3's; an image job is
//! version 3's followed by that registry.

use serde::{Deserialize, Serialize};

use super::DecodeError;
use super::v1::LayerJob;
use super::v3::{ExportJob, ImageJob as ImageJobV3};

/// The payload after the version; decoding must consume all of it.
pub(super) fn decode(payload: &[u8]) -> Result<Job, DecodeError> {
    let (job, rest) = postcard::take_from_bytes::<Job>(payload)
        .map_err(|e| DecodeError::Malformed(format!("schema v4: {e}")))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "schema v4: {} unexpected bytes after the job",
            rest.len()
        )));
    }
    Ok(job)
}

// One job per message, decoded once: its size in memory does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
pub(super) enum Job {
    Layer(LayerJob),
    Image(ImageJob),
    Export(ExportJob),
}

#[derive(Serialize, Deserialize)]
pub(super) struct ImageJob {
    image: ImageJobV3,
    mirrors: Option<String>,
}

// Conversions, exhaustive as in v1: a new public field or variant does not
// compile until its wire fate is decided.

impl From<&super::Job> for Job {
    fn from(job: &super::Job) -> Job {
        match job {
            super::Job::Layer(j) => Job::Layer(j.into()),
            super::Job::Image(j) => Job::Image(ImageJob {
                image: j.into(),
                mirrors: j.mirrors.clone(),
            }),
            super::Job::Export(j) => Job::Export(j.into()),
        }
    }
}

impl From<Job> for super::Job {
    fn from(job: Job) -> super::Job {
        match job {
            Job::Layer(j) => super::Job::Layer(j.into()),
            Job::Image(ImageJob { image, mirrors }) => {
                let mut j: super::ImageJob = image.into();
                j.mirrors = mirrors;
                super::Job::Image(j)
            }
            Job::Export(j) => super::Job::Export(j.into()),
        }
    }
}
