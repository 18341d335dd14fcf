//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BlobReader, FetchError, RawManifest};
use crate::digest::Digest;
use crate::reference::ManifestTarget;

pub struct OciLayoutFetcher {
    dir: PathBuf,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    annotations: Option<std::collections::HashMap<String, String>>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl OciLayoutFetcher {
    pub fn new(dir: &Path) -> Result<Self, FetchError> {
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            return Err(FetchError::NotFound {
                what: "OCI layout (oci-layout and index.json)".into(),
                location: dir.display().to_string(),
            });
        }
        Ok(OciLayoutFetcher {
            dir: dir.to_path_buf(),
        })
    }

    pub fn location(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Reads a small file (index.json, a manifest), refusing more than
    /// [`super::MAX_MANIFEST_BYTES`]: a hostile layout could point a blob
    /// at `/dev/zero`.
    fn read(&self, path: &Path, what: &str) -> Result<Vec<u8>, FetchError> {
        let bytes = read_bounded(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FetchError::NotFound {
                    what: what.to_string(),
                    location: self.location(),
                }
            } else {
                FetchError::Io {
                    context: format!("reading {what} from {}", self.location()),
                    source: e,
                }
            }
        })?;
        if bytes.len() as u64 > super::MAX_MANIFEST_BYTES {
            return Err(FetchError::Invalid {
                what: format!("{what} in {}", self.location()),
                message: format!("larger than {} bytes", super::MAX_MANIFEST_BYTES),
            });
        }
        Ok(bytes)
    }

    /// A tag is looked up by the `org.opencontainers.image.ref.name`
    /// annotation of `index.json`; a layout holding exactly one manifest
    /// also answers to "latest" when untagged (as skopeo's `oci:` does).
    pub fn manifest(&self, target: &ManifestTarget) -> Result<RawManifest, FetchError> {
        let (digest, media_type) = match target {
            ManifestTarget::Digest(d) => (d.clone(), None),
            ManifestTarget::Tag(tag) => {
                let bytes = self.read(&self.dir.join("index.json"), "index.json")?;
                let index: Index =
                    serde_json::from_slice(&bytes).map_err(|e| FetchError::Invalid {
                        what: format!("{}/index.json", self.location()),
                        message: e.to_string(),
                    })?;
                let tagged = index.manifests.iter().find(|m| {
                    m.annotations
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == tag)
                });
                let entry = match tagged {
                    Some(e) => e,
                    None if tag == "latest" && index.manifests.len() == 1 => &index.manifests[0],
                    None => {
                        return Err(FetchError::NotFound {
                            what: format!("tag {tag}"),
                            location: self.location(),
                        });
                    }
                };
                let digest = entry.digest.parse().map_err(|e| FetchError::Invalid {
                    what: format!("{}/index.json", self.location()),
                    message: format!("{e}"),
                })?;
                (digest, entry.media_type.clone())
            }
        };
        let bytes = self.read(&self.blob_path(&digest), &format!("manifest {digest}"))?;
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    pub fn blob(&self, digest: &Digest) -> Result<BlobReader, FetchError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FetchError::NotFound {
                    what: format!("blob {digest}"),
                    location: self.location(),
                }
            } else {
                FetchError::Io {
                    context: format!("opening {}", path.display()),
                    source: e,
                }
            }
        })?;
        Ok(Box::new(file))
    }
}

/// At most one byte more than [`super::MAX_MANIFEST_BYTES`] of a file.
pub(super) fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    File::open(path)?
        .take(super::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}
