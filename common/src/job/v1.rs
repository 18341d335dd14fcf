//! Schema version 1, frozen: never change these types (see the `job`
//! module documentation); a new schema gets a new module. Version 2 reuses
//! the layer job and the nested types unchanged.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Serialize};

use super::DecodeError;
use crate::digest::Digest;
use crate::image;

/// The payload after the version; decoding must consume all of it.
pub(super) fn decode(payload: &[u8]) -> Result<Job, DecodeError> {
    let (job, rest) = postcard::take_from_bytes::<Job>(payload)
        .map_err(|e| DecodeError::Malformed(format!("schema v1: {e}")))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "schema v1: {} unexpected bytes after the job",
            rest.len()
        )));
    }
    Ok(job)
}

// Digests are encoded as their "sha256:<hex>" string and validated when
// decoded (a bad digest is a malformed message).

#[derive(Serialize, Deserialize)]
pub(super) enum Job {
    Layer(LayerJob),
    Image(ImageJob),
}

#[derive(Serialize, Deserialize)]
pub(super) struct LayerJob {
    id: String,
    digest: Digest,
    diff_id: Digest,
    media_type: String,
    size: u64,
    compression: Compression,
    source: Source,
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
}

#[derive(Serialize, Deserialize)]
pub(super) struct Layer {
    digest: Digest,
    diff_id: Digest,
    media_type: String,
    size: u64,
    compression: Compression,
}

#[derive(Serialize, Deserialize)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Serialize, Deserialize)]
pub(super) enum Source {
    Registry {
        registry: String,
        repository: String,
    },
    /// The root's raw bytes: any Unix path, UTF-8 or not.
    StorageDir { root: Vec<u8>, repository: String },
}

#[derive(Serialize, Deserialize)]
pub(super) struct LinkTarget {
    namespace: String,
    image: String,
    tag: String,
}

// Conversions. Exhaustive destructuring everywhere, so adding a field to
// a public type does not compile until its wire fate is decided.

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

impl From<&super::LayerJob> for LayerJob {
    fn from(j: &super::LayerJob) -> LayerJob {
        let super::LayerJob {
            id,
            digest,
            diff_id,
            media_type,
            size,
            compression,
            source,
        } = j;
        LayerJob {
            id: id.clone(),
            digest: digest.clone(),
            diff_id: diff_id.clone(),
            media_type: media_type.clone(),
            size: *size,
            compression: (*compression).into(),
            source: source.into(),
        }
    }
}

impl From<LayerJob> for super::LayerJob {
    fn from(j: LayerJob) -> super::LayerJob {
        let LayerJob {
            id,
            digest,
            diff_id,
            media_type,
            size,
            compression,
            source,
        } = j;
        super::LayerJob {
            id,
            digest,
            diff_id,
            media_type,
            size,
            compression: compression.into(),
            source: source.into(),
        }
    }
}

/// A v1 image job cannot carry who decided it nor the embedded manifest
/// and config: a worker reading it fetches them from the source again.
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
            decided_by: _,
            embedded: _,
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
        } = j;
        super::ImageJob {
            id,
            manifest_digest,
            index_digest,
            config_digest,
            layers: layers.into_iter().map(image::Layer::from).collect(),
            links: links.into_iter().map(super::LinkTarget::from).collect(),
            source: source.into(),
            enqueued_at,
            decided_by: String::new(),
            embedded: None,
            exports: Vec::new(),
            mirrors: None,
        }
    }
}

impl From<&image::Layer> for Layer {
    fn from(l: &image::Layer) -> Layer {
        let image::Layer {
            digest,
            diff_id,
            media_type,
            size,
            compression,
        } = l;
        Layer {
            digest: digest.clone(),
            diff_id: diff_id.clone(),
            media_type: media_type.clone(),
            size: *size,
            compression: (*compression).into(),
        }
    }
}

impl From<Layer> for image::Layer {
    fn from(l: Layer) -> image::Layer {
        let Layer {
            digest,
            diff_id,
            media_type,
            size,
            compression,
        } = l;
        image::Layer {
            digest,
            diff_id,
            media_type,
            size,
            compression: compression.into(),
        }
    }
}

impl From<image::Compression> for Compression {
    fn from(c: image::Compression) -> Compression {
        match c {
            image::Compression::None => Compression::None,
            image::Compression::Gzip => Compression::Gzip,
            image::Compression::Zstd => Compression::Zstd,
        }
    }
}

impl From<Compression> for image::Compression {
    fn from(c: Compression) -> image::Compression {
        match c {
            Compression::None => image::Compression::None,
            Compression::Gzip => image::Compression::Gzip,
            Compression::Zstd => image::Compression::Zstd,
        }
    }
}

impl From<&super::JobSource> for Source {
    fn from(s: &super::JobSource) -> Source {
        match s {
            super::JobSource::Registry {
                registry,
                repository,
            } => Source::Registry {
                registry: registry.clone(),
                repository: repository.clone(),
            },
            super::JobSource::StorageDir { root, repository } => Source::StorageDir {
                root: root.as_os_str().as_bytes().to_vec(),
                repository: repository.clone(),
            },
        }
    }
}

impl From<Source> for super::JobSource {
    fn from(s: Source) -> super::JobSource {
        match s {
            Source::Registry {
                registry,
                repository,
            } => super::JobSource::Registry {
                registry,
                repository,
            },
            Source::StorageDir { root, repository } => super::JobSource::StorageDir {
                root: OsString::from_vec(root).into(),
                repository,
            },
        }
    }
}

impl From<&super::LinkTarget> for LinkTarget {
    fn from(l: &super::LinkTarget) -> LinkTarget {
        let super::LinkTarget {
            namespace,
            image,
            tag,
        } = l;
        LinkTarget {
            namespace: namespace.clone(),
            image: image.clone(),
            tag: tag.clone(),
        }
    }
}

impl From<LinkTarget> for super::LinkTarget {
    fn from(l: LinkTarget) -> super::LinkTarget {
        let LinkTarget {
            namespace,
            image,
            tag,
        } = l;
        super::LinkTarget {
            namespace,
            image,
            tag,
        }
    }
}
