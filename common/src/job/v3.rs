//! Schema version 3, frozen: never change these types (see the `job`
//! module documentation); a new schema gets a new module.
//!
//! What changed from version 2: export jobs (write one disk image of a
//! finalized image), and the disk images an image job asks for, which its
//! worker publishes as export jobs once the image is linked. Layer jobs
//! are version 1's; an image job is version 2's followed by its exports.

use serde::{Deserialize, Serialize};

use super::DecodeError;
use super::v1::LayerJob;
use super::v2::ImageJob as ImageJobV2;
use crate::digest::Digest;
use crate::store::DiskFormat;

/// The payload after the version; decoding must consume all of it.
pub(super) fn decode(payload: &[u8]) -> Result<Job, DecodeError> {
    let (job, rest) = postcard::take_from_bytes::<Job>(payload)
        .map_err(|e| DecodeError::Malformed(format!("schema v3: {e}")))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "schema v3: {} unexpected bytes after the job",
            rest.len()
        )));
    }
    Ok(job)
}

#[derive(Serialize, Deserialize)]
pub(super) enum Job {
    Layer(LayerJob),
    Image(ImageJob),
    Export(ExportJob),
}

#[derive(Serialize, Deserialize)]
pub(super) struct ImageJob {
    image: ImageJobV2,
    exports: Vec<Format>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ExportJob {
    id: String,
    manifest_digest: Digest,
    format: Format,
}

#[derive(Serialize, Deserialize)]
enum Format {
    Ext4,
    Erofs,
    Squashfs,
}

// Conversions, exhaustive as in v1: a new public field or variant does not
// compile until its wire fate is decided.

impl From<&super::Job> for Job {
    fn from(job: &super::Job) -> Job {
        match job {
            super::Job::Layer(j) => Job::Layer(j.into()),
            super::Job::Image(j) => Job::Image(j.into()),
            super::Job::Export(j) => Job::Export(j.into()),
        }
    }
}

impl From<Job> for super::Job {
    fn from(job: Job) -> super::Job {
        match job {
            Job::Layer(j) => super::Job::Layer(j.into()),
            Job::Image(j) => super::Job::Image(j.into()),
            Job::Export(j) => super::Job::Export(j.into()),
        }
    }
}

impl From<&super::ImageJob> for ImageJob {
    fn from(j: &super::ImageJob) -> ImageJob {
        ImageJob {
            image: j.into(),
            exports: j.exports.iter().map(|f| Format::from(*f)).collect(),
        }
    }
}

impl From<ImageJob> for super::ImageJob {
    fn from(ImageJob { image, exports }: ImageJob) -> super::ImageJob {
        let mut j: super::ImageJob = image.into();
        j.exports = exports.into_iter().map(DiskFormat::from).collect();
        j
    }
}

impl From<&super::ExportJob> for ExportJob {
    fn from(j: &super::ExportJob) -> ExportJob {
        let super::ExportJob {
            id,
            manifest_digest,
            format,
        } = j;
        ExportJob {
            id: id.clone(),
            manifest_digest: manifest_digest.clone(),
            format: (*format).into(),
        }
    }
}

impl From<ExportJob> for super::ExportJob {
    fn from(
        ExportJob {
            id,
            manifest_digest,
            format,
        }: ExportJob,
    ) -> super::ExportJob {
        super::ExportJob {
            id,
            manifest_digest,
            format: format.into(),
        }
    }
}

impl From<DiskFormat> for Format {
    fn from(f: DiskFormat) -> Format {
        match f {
            DiskFormat::Ext4 => Format::Ext4,
            DiskFormat::Erofs => Format::Erofs,
            DiskFormat::Squashfs => Format::Squashfs,
        }
    }
}

impl From<Format> for DiskFormat {
    fn from(f: Format) -> DiskFormat {
        match f {
            Format::Ext4 => DiskFormat::Ext4,
            Format::Erofs => DiskFormat::Erofs,
            Format::Squashfs => DiskFormat::Squashfs,
        }
    }
}
