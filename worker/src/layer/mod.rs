//! The layer store: each layer ingested once, keyed by diff_id.
//!
//! ```text
//! layers/sha256/<diff_id hex>/
//!   tree/         the layer's files (regular files with final metadata)
//!   index         what finalize needs beyond the tree (see [`index`])
//!   layer.json    provenance: blob digest, media type, sizes
//! ```
//!
//! Ingest is containerd's content-store discipline applied to an extracted
//! layer: stream the blob through verification and extraction into a
//! private staging directory, check both digests, then publish with one
//! rename. A layer directory that exists is complete; a crash leaves only
//! staging garbage under `tmp/`.

pub mod decompress;
pub mod index;
pub mod unpack;

use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use exploder_common::digest::{Algorithm, Digest, HashingReader};
use exploder_common::fetch::BlobReader;
use exploder_common::image::Layer;
use exploder_common::limits::Limits;
use exploder_common::store::{StoreLayout, sync_dir};
use serde::{Deserialize, Serialize};

use crate::inroot::InRoot;
use unpack::{LayerUnpacker, UnpackError};

/// Why a layer could not be ingested. Everything but `Fetch` (when
/// transient) and `Io` is permanent: retrying the same blob gives the same
/// answer.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "layer {digest}: the blob's sha256 is {actual}, not the digest the manifest names \
         (the blob is corrupt or was tampered with in the registry)"
    )]
    BlobDigest { digest: Digest, actual: Digest },
    #[error(
        "layer {digest}: the uncompressed content is {actual}, but the image config's \
         rootfs.diff_ids says {expected}"
    )]
    DiffId {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {digest}: media type {media_type} but the blob starts with {found}")]
    Compression {
        digest: Digest,
        media_type: String,
        found: String,
    },
    #[error("layer {digest}: {limit} limit of {max} bytes exceeded; {hint}")]
    Limit {
        digest: Digest,
        limit: &'static str,
        max: u64,
        hint: &'static str,
    },
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {digest}: decompressing: {source}")]
    Corrupt {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] exploder_common::fetch::FetchError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl IngestError {
    /// Whether the same job may succeed later (network, disk trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            IngestError::Fetch(e) => e.is_transient(),
            IngestError::Io { .. } => true,
            _ => false,
        }
    }
}

/// Provenance of an ingested layer (`layer.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: Digest,
    pub blob_digest: Digest,
    pub media_type: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
}

#[derive(Clone, Debug)]
pub struct LayerStore {
    layout: StoreLayout,
    limits: Limits,
    /// Flush the staging tree to disk before publishing it (default). Off
    /// only for throwaway stores: a crash could then publish empty files.
    pub durable: bool,
}

/// A reader that fails once more than `max` bytes went through, and says
/// so through a flag (the tar and decompress layers re-wrap io errors).
struct Limited<R> {
    inner: R,
    left: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.tripped.set(true);
            return Err(io::Error::other("size limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts bytes for a progress callback.
struct Progress<R, F> {
    inner: R,
    report: F,
}

impl<R: Read, F: FnMut(u64)> Read for Progress<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.report)(n as u64);
        Ok(n)
    }
}

impl LayerStore {
    pub fn new(layout: StoreLayout, limits: Limits) -> Self {
        LayerStore {
            layout,
            limits,
            durable: true,
        }
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the layer is in the store (a published layer is complete).
    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.layout.layer_dir(diff_id).join("index").is_file()
    }

    pub fn tree_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layout.layer_dir(diff_id).join("tree")
    }

    pub fn index_path(&self, diff_id: &Digest) -> PathBuf {
        self.layout.layer_dir(diff_id).join("index")
    }

    /// Ingests one layer from its blob. Blocking: run it on a blocking
    /// thread. Returns `Ok(None)` if the layer was already present.
    pub fn ingest(
        &self,
        layer: &Layer,
        blob: BlobReader,
        progress: impl FnMut(u64),
    ) -> Result<Option<LayerInfo>, IngestError> {
        if self.contains(&layer.diff_id) {
            return Ok(None);
        }
        let io_ctx = |context: String| move |source: io::Error| IngestError::Io { context, source };
        self.layout.ensure().map_err(io_ctx(format!(
            "preparing the store {}",
            self.layout.root().display()
        )))?;
        let staging = Staging::new(
            &self.layout.tmp_dir(),
            &format!("layer-{}", layer.diff_id.hex()),
        )
        .map_err(io_ctx("creating a staging directory".into()))?;
        let tree = staging.path.join("tree");
        std::fs::create_dir(&tree).map_err(io_ctx(format!("creating {}", tree.display())))?;

        let info = self.extract(layer, blob, &tree, progress)?;
        let (index, info) = info;
        index
            .write(&staging.path.join("index"))
            .map_err(io_ctx("writing the layer index".into()))?;
        let json = serde_json::to_vec_pretty(&info).expect("layer info serializes");
        std::fs::write(staging.path.join("layer.json"), json)
            .map_err(io_ctx("writing layer.json".into()))?;
        exploder_common::failpoint::hit("ingest.before-publish");
        let dest = self.layout.layer_dir(&layer.diff_id);
        staging
            .publish(&dest, self.durable)
            .map_err(io_ctx(format!("publishing {}", dest.display())))?;
        Ok(Some(info))
    }

    fn extract(
        &self,
        layer: &Layer,
        blob: BlobReader,
        tree: &Path,
        progress: impl FnMut(u64),
    ) -> Result<(index::LayerIndex, LayerInfo), IngestError> {
        let digest = &layer.digest;
        let compressed_tripped = Rc::new(Cell::new(false));
        let uncompressed_tripped = Rc::new(Cell::new(false));
        let limit_error = |limit, max, hint| IngestError::Limit {
            digest: digest.clone(),
            limit,
            max,
            hint,
        };
        let check_limits = |err: IngestError| -> IngestError {
            if compressed_tripped.get() {
                limit_error(
                    "compressed layer size",
                    self.limits.max_compressed_bytes,
                    "raise --max-compressed-bytes (EXPLODER_MAX_COMPRESSED_BYTES) if the image is legitimate",
                )
            } else if uncompressed_tripped.get() {
                limit_error(
                    "uncompressed layer size",
                    self.limits.max_layer_bytes,
                    "raise --max-layer-bytes (EXPLODER_MAX_LAYER_BYTES) if the image is legitimate",
                )
            } else {
                err
            }
        };

        let blob = Progress {
            inner: blob,
            report: progress,
        };
        let compressed = HashingReader::new(
            Limited {
                inner: blob,
                left: self.limits.max_compressed_bytes,
                tripped: compressed_tripped.clone(),
            },
            digest.algorithm(),
        );
        let mut compressed = compressed;
        let decoder = match decompress::decompressor(&mut compressed, layer.compression) {
            Ok(Ok(d)) => d,
            Ok(Err(m)) => {
                return Err(IngestError::Compression {
                    digest: digest.clone(),
                    media_type: layer.media_type.clone(),
                    found: m.found,
                });
            }
            Err(e) => {
                return Err(check_limits(IngestError::Io {
                    context: format!("reading layer {digest}"),
                    source: e,
                }));
            }
        };
        let uncompressed = HashingReader::new(
            Limited {
                inner: decoder,
                left: self.limits.max_layer_bytes,
                tripped: uncompressed_tripped.clone(),
            },
            Algorithm::Sha256,
        );
        let mut archive = tar::Archive::new(uncompressed);
        let root =
            InRoot::open(tree, self.limits.max_symlink_hops).map_err(|e| IngestError::Io {
                context: format!("opening {}", tree.display()),
                source: e,
            })?;
        let mut unpacker = LayerUnpacker::new(root, &self.limits);
        let unpacked = unpacker.unpack(&mut archive);
        if let Err(e) = unpacked {
            let err = match e {
                UnpackError::Tar(source) => IngestError::Corrupt {
                    digest: digest.clone(),
                    source,
                },
                other => IngestError::Unpack {
                    digest: digest.clone(),
                    source: other,
                },
            };
            return Err(check_limits(err));
        }
        // What follows the end-of-archive blocks still belongs to both
        // digests: drain it before comparing.
        let (diff_id, uncompressed_bytes) = archive.into_inner().finish().map_err(|e| {
            check_limits(IngestError::Corrupt {
                digest: digest.clone(),
                source: e,
            })
        })?;
        let (blob_digest, compressed_bytes) = compressed.finish().map_err(|e| {
            check_limits(IngestError::Io {
                context: format!("reading layer {digest}"),
                source: e,
            })
        })?;
        if &blob_digest != digest {
            return Err(IngestError::BlobDigest {
                digest: digest.clone(),
                actual: blob_digest,
            });
        }
        if diff_id != layer.diff_id {
            return Err(IngestError::DiffId {
                digest: digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        let (index, entries) = unpacker.finish();
        Ok((
            index,
            LayerInfo {
                diff_id,
                blob_digest,
                media_type: layer.media_type.clone(),
                compressed_bytes,
                uncompressed_bytes,
                entries,
            },
        ))
    }
}

/// A private directory under the store's `tmp/`, removed on drop unless
/// published.
pub struct Staging {
    pub path: PathBuf,
    published: bool,
}

/// This host's name, part of staging names so that a sweep only judges
/// staging directories of processes it can see (a store may be shared by
/// several machines).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['.', '/'], "_"))
        .unwrap_or_else(|_| "host".into())
}

impl Staging {
    /// Creates `tmp/<prefix>.<host>.<pid>.<nonce>`.
    pub fn new(tmp: &Path, prefix: &str) -> io::Result<Staging> {
        std::fs::create_dir_all(tmp)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let host = host_name();
        for attempt in 0..100u32 {
            let path = tmp.join(format!(
                "{prefix}.{host}.{}.{nanos:x}{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Staging {
                        path,
                        published: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "could not create a unique staging directory",
        ))
    }

    /// Removes staging directories left by dead processes of this host (a
    /// crash). Returns how many were removed. Nothing points into `tmp/`,
    /// so this is always safe for processes that are gone.
    pub fn sweep(tmp: &Path) -> io::Result<usize> {
        let host = host_name();
        let mut removed = 0;
        let entries = match std::fs::read_dir(tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let parts: Vec<&str> = name.rsplitn(4, '.').collect();
            // [nonce, pid, host, prefix]
            let [_, pid, h, _] = parts.as_slice() else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if *h == host
                && pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                remove_tree(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Publishes the staging directory at `dest` by one rename. If `dest`
    /// already exists (another worker won the race), the staging copy is
    /// dropped: both are complete and equal.
    pub fn publish(mut self, dest: &Path, durable: bool) -> io::Result<()> {
        if durable {
            let dir = std::fs::File::open(&self.path)?;
            rustix::fs::syncfs(&dir)?;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::rename(&self.path, dest) {
            Ok(()) => {
                self.published = true;
                if durable && let Some(parent) = dest.parent() {
                    sync_dir(parent)?;
                }
                Ok(())
            }
            Err(e) if dest.exists() => {
                tracing::debug!(
                    "{} already published ({e}); dropping the staging copy",
                    dest.display()
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes a directory tree without following symlinks.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = rustix::fs::open(
        parent,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )?;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    crate::inroot::remove_all_at(dir.as_fd(), name.as_bytes())
}

/// Shared between threads of the explode pipeline.
pub type SharedLayerStore = Arc<LayerStore>;
