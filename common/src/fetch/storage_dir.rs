//! A registry's storage directory, read directly.
//!
//! Workers that run beside a registry (the original OpenShift exploder did)
//! skip HTTP entirely and read the distribution storage layout:
//!
//! ```text
//! <root>/docker/registry/v2/blobs/sha256/<xx>/<hex>/data
//! <root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link
//! <root>/docker/registry/v2/repositories/<repo>/_manifests/revisions/sha256/<hex>/link
//! <root>/docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link
//! ```
//!
//! A blob is only served if the repository links it, as the registry does,
//! so one repository cannot read another's blobs by digest.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{BlobReader, FetchError, RawManifest};
use crate::digest::Digest;
use crate::reference::ManifestTarget;

pub struct StorageDirFetcher {
    v2: PathBuf,
    repository: String,
}

impl StorageDirFetcher {
    /// `root` is the directory that contains `docker/registry/v2`.
    pub fn new(root: &Path, repository: &str) -> Result<Self, FetchError> {
        let v2 = root.join("docker/registry/v2");
        if !v2.is_dir() {
            return Err(FetchError::NotFound {
                what: "registry storage (docker/registry/v2)".into(),
                location: root.display().to_string(),
            });
        }
        Ok(StorageDirFetcher {
            v2,
            repository: repository.to_string(),
        })
    }

    pub fn location(&self) -> String {
        format!("file://{}/{}", self.root().display(), self.repository)
    }

    fn root(&self) -> &Path {
        self.v2
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .unwrap_or(&self.v2)
    }

    fn repo_dir(&self) -> PathBuf {
        self.v2.join("repositories").join(&self.repository)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.v2
            .join("blobs")
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn read_link(&self, path: &Path, what: &str) -> Result<Digest, FetchError> {
        let text = std::fs::read_to_string(path).map_err(|e| self.io_error(what, e))?;
        text.trim().parse().map_err(|e| FetchError::Invalid {
            what: format!("{what} link {}", path.display()),
            message: format!("{e}"),
        })
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> FetchError {
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
    }

    pub fn manifest(&self, target: &ManifestTarget) -> Result<RawManifest, FetchError> {
        let digest = match target {
            ManifestTarget::Tag(tag) => {
                let link = self
                    .repo_dir()
                    .join("_manifests/tags")
                    .join(tag)
                    .join("current/link");
                self.read_link(&link, &format!("manifest {tag}"))?
            }
            ManifestTarget::Digest(d) => {
                // The revision link proves the manifest belongs to this
                // repository.
                let link = self
                    .repo_dir()
                    .join("_manifests/revisions")
                    .join(d.algorithm().name())
                    .join(d.hex())
                    .join("link");
                self.read_link(&link, &format!("manifest {d}"))?
            }
        };
        let what = format!("manifest {digest}");
        let path = self.blob_path(&digest);
        let bytes = super::oci_layout::read_bounded(&path).map_err(|e| self.io_error(&what, e))?;
        if bytes.len() as u64 > super::MAX_MANIFEST_BYTES {
            return Err(FetchError::Invalid {
                what,
                message: format!(
                    "larger than the {} byte manifest limit",
                    super::MAX_MANIFEST_BYTES
                ),
            });
        }
        Ok(RawManifest {
            bytes,
            media_type: None,
            digest,
        })
    }

    pub fn blob(&self, digest: &Digest) -> Result<BlobReader, FetchError> {
        let what = format!("blob {digest}");
        let layer_link = self
            .repo_dir()
            .join("_layers")
            .join(digest.algorithm().name())
            .join(digest.hex())
            .join("link");
        // Configs and layers are linked under _layers; refuse blobs the
        // repository does not reference.
        self.read_link(&layer_link, &what)?;
        let file = File::open(self.blob_path(digest)).map_err(|e| self.io_error(&what, e))?;
        Ok(Box::new(file))
    }
}
