//! An OCI image layout (`oci-layout`, `index.json`, `blobs/`): a
//! directory (`oci:`), or the same in a tar archive read in place
//! (`oci-archive:`, see [`super::archive`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::archive::TarIndex;
use super::{BlobReader, FetchError, RawManifest};
use crate::digest::Digest;
use crate::reference::ManifestTarget;

pub struct OciLayoutFetcher {
    root: Root,
}

/// Where the layout's files are.
enum Root {
    Dir(PathBuf),
    Archive(TarIndex),
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
            root: Root::Dir(dir.to_path_buf()),
        })
    }

    /// The layout in the tar archive at `path`.
    pub fn archive(path: &Path) -> Result<Self, FetchError> {
        let index = TarIndex::open(path)?;
        if !index.contains("oci-layout") || !index.contains("index.json") {
            return Err(FetchError::NotFound {
                what: "OCI layout (oci-layout and index.json)".into(),
                location: format!("oci-archive:{}", path.display()),
            });
        }
        Ok(OciLayoutFetcher {
            root: Root::Archive(index),
        })
    }

    pub fn location(&self) -> String {
        match &self.root {
            Root::Dir(dir) => format!("oci:{}", dir.display()),
            Root::Archive(index) => format!("oci-archive:{}", index.path().display()),
        }
    }

    /// `blobs/<algorithm>/<hex>`.
    fn blob_name(digest: &Digest) -> String {
        format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
    }

    /// Reads a small file (index.json, a manifest) by its name in the
    /// layout, refusing more than [`super::MAX_MANIFEST_BYTES`]: a hostile
    /// layout could point a blob at `/dev/zero`.
    fn read(&self, name: &str, what: &str) -> Result<Vec<u8>, FetchError> {
        let not_found = || FetchError::NotFound {
            what: what.to_string(),
            location: self.location(),
        };
        let bytes = match &self.root {
            Root::Dir(dir) => read_bounded(&dir.join(name)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    not_found()
                } else {
                    FetchError::Io {
                        context: format!("reading {what} from {}", self.location()),
                        source: e,
                    }
                }
            })?,
            Root::Archive(index) => index.read_member(name)?.ok_or_else(not_found)?,
        };
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
                let bytes = self.read("index.json", "index.json")?;
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
        let bytes = self.read(&Self::blob_name(&digest), &format!("manifest {digest}"))?;
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    pub fn blob(&self, digest: &Digest) -> Result<BlobReader, FetchError> {
        let not_found = || FetchError::NotFound {
            what: format!("blob {digest}"),
            location: self.location(),
        };
        let dir = match &self.root {
            Root::Archive(index) => {
                return index
                    .open_member(&Self::blob_name(digest))?
                    .ok_or_else(not_found);
            }
            Root::Dir(dir) => dir,
        };
        let path = dir.join(Self::blob_name(digest));
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                not_found()
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
