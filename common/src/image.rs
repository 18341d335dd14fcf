//! A resolved image: the one manifest chosen for a platform, its config and
//! its ordered layers with their diff_ids. This is what every later stage
//! (fan-out, ingest, finalize) works from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// Every manifest type exploder can read, for `Accept` headers.
    pub const ACCEPTED: &[&str] = &[
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ];
}

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or `None` if the media
    /// type is not a layer type exploder can apply.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

/// One layer of a resolved image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Digest of the blob as stored in the registry (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar (`rootfs.diff_ids[i]`): the key of the
    /// layer store, so a gzip and a zstd copy of one layer are stored once.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
    pub compression: Compression,
}

/// An operating system / architecture / variant triple, `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad =
            || format!("invalid platform {s:?}: expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8");
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform an image config (its bytes) declares: `os`,
    /// `architecture` and `variant`; `None` when it names no os or
    /// architecture (some tools leave them out).
    pub fn of_config(config: &[u8]) -> Option<Platform> {
        #[derive(Deserialize)]
        struct Fields {
            os: Option<String>,
            architecture: Option<String>,
            variant: Option<String>,
        }
        let f: Fields = serde_json::from_slice(config).ok()?;
        Some(Platform {
            os: f.os.filter(|s| !s.is_empty())?,
            architecture: f.architecture.filter(|s| !s.is_empty())?,
            variant: f.variant.filter(|s| !s.is_empty()),
        })
    }

    /// Whether an image for `self` serves a request for `want`: same os
    /// and architecture, and the variant when both name one (configs of
    /// arm64 images often leave it out).
    pub fn serves(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || self.variant.is_none() || self.variant == want.variant)
    }
}

/// The image a reference resolved to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The index (manifest list) the reference pointed at, if any.
    pub index_digest: Option<Digest>,
    /// The platform manifest: the image's identity in the store.
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// The manifest bytes exactly as served (their sha256 is the digest).
    #[serde(skip)]
    pub manifest: Vec<u8>,
    pub config_digest: Digest,
    /// The config blob bytes exactly as served.
    #[serde(skip)]
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
}
