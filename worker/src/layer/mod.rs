//! The layer store: each layer ingested once, keyed by diff_id.
//!
//! ```text
//! layers/sha256/<diff_id hex>/
//!   files/<seq>   the layer's non-directories (regular files with final
//!                 metadata, symlinks, fifos), by tar position (see [`files`])
//!   index         every entry's path, kind and metadata, whiteouts (see [`index`])
//!   layer.json    provenance: blob digest, media type, sizes
//! ```
//!
//! Layers ingested before index version 3 have `tree/` (the extracted
//! tree) instead of `files/`; both are read.
//!
//! Ingest is containerd's content-store discipline applied to an extracted
//! layer: stream the blob through verification and extraction into a
//! private staging directory, check both digests, then publish with one
//! rename. A layer directory that exists is complete; a crash leaves only
//! staging garbage under `tmp/`.

pub mod decompress;
pub mod files;
pub mod index;
pub mod objects;
pub mod unpack;
pub mod writers;

#[cfg(test)]
pub(crate) mod parallel_tests;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use exploder_common::digest::{Algorithm, Digest, HashingReader};
use exploder_common::fetch::{BlobReader, FetchError};
use exploder_common::image::Layer;
use exploder_common::limits::Limits;
use exploder_common::store::{LAYER_INDEX, StoreLayout, sync_dir};
use serde::{Deserialize, Serialize};

use crate::inroot::InRoot;
use crate::space::{StoreFull, StoreSpace};
use unpack::{LayerUnpacker, UnpackError};
pub use writers::WriteThreads;

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
    #[error("layer {digest}: the layer stream is corrupt: {source}")]
    Corrupt {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The store ran out of space, or has too little to start (see
    /// [`crate::space`]).
    #[error("{0}")]
    StoreFull(#[from] StoreFull),
}

impl IngestError {
    /// Whether the same job may succeed later (network, disk trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            IngestError::Fetch(e) => e.is_transient(),
            IngestError::Io { .. } | IngestError::StoreFull(_) => true,
            IngestError::Unpack {
                source: UnpackError::Io { source, .. },
                ..
            } => io_is_transient(source),
            _ => false,
        }
    }
}

/// Whether an I/O error is the machine's trouble (full disk, quota, too
/// many open files, a read-only or failing file system) rather than the
/// layer's: such a job is retried, not dead-lettered.
pub fn io_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(rustix::io::Errno::from_raw_os_error),
        Some(
            rustix::io::Errno::NOSPC
                | rustix::io::Errno::DQUOT
                | rustix::io::Errno::IO
                | rustix::io::Errno::MFILE
                | rustix::io::Errno::NFILE
                | rustix::io::Errno::NOMEM
                | rustix::io::Errno::ROFS
                | rustix::io::Errno::AGAIN
        )
    )
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
    /// Regular files that are links of objects already in the store, and
    /// their bytes: what this layer did not have to write (0 in layers
    /// from before objects, or ingested with them off).
    #[serde(default)]
    pub shared_files: u64,
    #[serde(default)]
    pub shared_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct LayerStore {
    layout: StoreLayout,
    limits: Limits,
    /// Flush the staging tree to disk before publishing it (default). Off
    /// only for throwaway stores: a crash could then publish empty files.
    pub durable: bool,
    /// Threads creating the files of one layer (see [`unpack`]);
    /// `Fixed(1)`: the tar reader creates them itself.
    pub write_threads: WriteThreads,
    /// Whether there is room to start, and what a write that ran out of
    /// space means (no floor by default: a worker sets its own).
    pub space: StoreSpace,
    /// Share each regular file's content with every layer and image that
    /// has the same file (`<store>/objects/`, see [`objects`]); on by
    /// default (`--no-file-objects` turns it off).
    pub file_objects: bool,
}

/// A reader that fails once more than `max` bytes went through, and says
/// so through a flag (the tar and decompress layers re-wrap io errors).
struct Limited<R> {
    inner: R,
    left: u64,
    tripped: Arc<AtomicBool>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.tripped.store(true, Ordering::Relaxed);
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
            space: StoreSpace::new(layout.root(), 0),
            layout,
            limits,
            durable: true,
            write_threads: WriteThreads::Fixed(1),
            file_objects: true,
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
        self.layout.has_layer(diff_id)
    }

    /// The inodes of a published layer whose index says `layout`.
    pub fn files(&self, diff_id: &Digest, layout: index::Layout) -> io::Result<files::LayerFiles> {
        files::LayerFiles::open(
            &self.layout.layer_dir(diff_id),
            layout,
            self.limits.max_symlink_hops,
        )
    }

    pub fn index_path(&self, diff_id: &Digest) -> PathBuf {
        self.layout.layer_dir(diff_id).join(LAYER_INDEX)
    }

    /// Ingests one layer from its blob. Blocking: run it on a blocking
    /// thread. Returns `Ok(None)` if the layer was already present.
    ///
    /// On a store without room ([`StoreSpace::check`]) nothing is read nor
    /// written; a write that runs out of space fails the ingest with
    /// [`IngestError::StoreFull`] once its staging directory is removed.
    pub fn ingest(
        &self,
        layer: &Layer,
        blob: BlobReader,
        progress: impl FnMut(u64) + Send,
    ) -> Result<Option<LayerInfo>, IngestError> {
        if self.contains(&layer.diff_id) {
            return Ok(None);
        }
        let free = self.space.check()?;
        // The staging directory is gone once this returns: what the store
        // has left is measured after it.
        self.ingest_staged(layer, blob, progress)
            .map_err(|e| match self.space.ran_out(&e, free) {
                Some(full) => full.into(),
                None => e,
            })
    }

    fn ingest_staged(
        &self,
        layer: &Layer,
        blob: BlobReader,
        progress: impl FnMut(u64) + Send,
    ) -> Result<Option<LayerInfo>, IngestError> {
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
        let tree = staging.path.join(files::TREE_DIR);
        std::fs::create_dir(&tree).map_err(io_ctx(format!("creating {}", tree.display())))?;
        let objects = if self.file_objects {
            let o = objects::LayerObjects::open(
                &self.layout.objects_dir(),
                &staging.path,
                crate::meta::can_chown(),
                // Only a flushed store's files are safe to share (see
                // `objects`): a throwaway ingest links, but makes none.
                self.durable,
            )
            .map_err(io_ctx("opening the store's objects".into()))?;
            Some(Arc::new(o))
        } else {
            None
        };

        let (mut index, mut info) = self.extract(layer, blob, &tree, objects.clone(), progress)?;
        let flattening = std::time::Instant::now();
        files::flatten(&staging.path, &mut index, self.limits.max_symlink_hops)
            .map_err(io_ctx("moving the layer's files out of its tree".into()))?;
        tracing::debug!(
            "layer {}: {} entries flattened in {:?}",
            layer.diff_id,
            index.entries.len(),
            flattening.elapsed()
        );
        if let Some(objects) = &objects {
            (info.shared_files, info.shared_bytes) = objects.shared();
            tracing::debug!(
                "layer {}: {} files shared, {} objects created",
                layer.diff_id,
                info.shared_files,
                objects.created()
            );
        }
        index
            .write(&staging.path.join(LAYER_INDEX))
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

    /// Streams the blob through both digests and the unpacker. Two
    /// threads: one reads, hashes and decompresses the blob, the other
    /// hashes the tar stream and extracts it, so inflate overlaps with the
    /// file system work (decompression is single-core and the bottleneck).
    fn extract(
        &self,
        layer: &Layer,
        blob: BlobReader,
        tree: &Path,
        objects: Option<Arc<objects::LayerObjects>>,
        progress: impl FnMut(u64) + Send,
    ) -> Result<(index::LayerIndex, LayerInfo), IngestError> {
        let digest = &layer.digest;
        let compressed_tripped = Arc::new(AtomicBool::new(false));
        let uncompressed_tripped = Arc::new(AtomicBool::new(false));
        let root =
            InRoot::open(tree, self.limits.max_symlink_hops).map_err(|e| IngestError::Io {
                context: format!("opening {}", tree.display()),
                source: e,
            })?;

        let (compressed, extracted) = std::thread::scope(|scope| {
            // 16 chunks (4 MiB) in flight smooth out stalls of either side
            // (a burst of small files, writeback throttling).
            let (tx, rx) = std::sync::mpsc::sync_channel(16);
            let blob = Limited {
                inner: Progress {
                    inner: blob,
                    report: progress,
                },
                left: self.limits.max_compressed_bytes,
                tripped: compressed_tripped.clone(),
            };
            let decompressing = scope
                .spawn(move || decompress_stage(blob, layer.compression, digest.algorithm(), tx));
            let extracted = (|| {
                let uncompressed = HashingReader::new(
                    Limited {
                        inner: ChannelReader::new(rx),
                        left: self.limits.max_layer_bytes,
                        tripped: uncompressed_tripped.clone(),
                    },
                    Algorithm::Sha256,
                );
                let mut unpacker = LayerUnpacker::new(root, &self.limits);
                unpacker.start_writeback = self.durable;
                unpacker.write_threads = self.write_threads;
                unpacker.objects = objects;
                let uncompressed = unpacker.unpack(uncompressed)?;
                // What follows the end-of-archive blocks still belongs to
                // the diff_id: drain it before comparing.
                let (diff_id, bytes) = uncompressed.finish().map_err(UnpackError::Tar)?;
                Ok::<_, UnpackError>((unpacker.finish(), diff_id, bytes))
                // The receiver drops here, so a decompressor still
                // sending after an extraction error stops.
            })();
            let compressed = decompressing.join().unwrap_or_else(|_| {
                Compressed::Failed(io::Error::other("the decompression thread panicked"))
            });
            (compressed, extracted)
        });

        // The first cause wins: a limit, then what the blob stage saw (the
        // extraction error is then only its echo), then extraction.
        let limit_error = |limit, max, hint| IngestError::Limit {
            digest: digest.clone(),
            limit,
            max,
            hint,
        };
        if compressed_tripped.load(Ordering::Relaxed) {
            return Err(limit_error(
                "compressed layer size",
                self.limits.max_compressed_bytes,
                "raise --max-compressed-bytes (EXPLODER_MAX_COMPRESSED_BYTES) if the image is legitimate",
            ));
        }
        if uncompressed_tripped.load(Ordering::Relaxed) {
            return Err(limit_error(
                "uncompressed layer size",
                self.limits.max_layer_bytes,
                "raise --max-layer-bytes (EXPLODER_MAX_LAYER_BYTES) if the image is legitimate",
            ));
        }
        let (blob_digest, compressed_bytes) = match compressed {
            Compressed::Done { digest, bytes } => (digest, bytes),
            // Placeholders: the extraction error below is the cause.
            Compressed::Stopped => (digest.clone(), 0),
            Compressed::Magic(m) => {
                return Err(IngestError::Compression {
                    digest: digest.clone(),
                    media_type: layer.media_type.clone(),
                    found: m.found,
                });
            }
            Compressed::Broken {
                digest: Some(actual),
                ..
            } if &actual != digest => {
                return Err(IngestError::BlobDigest {
                    digest: digest.clone(),
                    actual,
                });
            }
            Compressed::Broken { error, .. } | Compressed::Failed(error) => {
                return Err(read_error(digest, error));
            }
        };
        let ((index, entries), diff_id, uncompressed_bytes) = extracted.map_err(|e| match e {
            UnpackError::Tar(source) => IngestError::Corrupt {
                digest: digest.clone(),
                source,
            },
            other => IngestError::Unpack {
                digest: digest.clone(),
                source: other,
            },
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
        Ok((
            index,
            LayerInfo {
                diff_id,
                blob_digest,
                media_type: layer.media_type.clone(),
                compressed_bytes,
                uncompressed_bytes,
                entries,
                shared_files: 0,
                shared_bytes: 0,
            },
        ))
    }
}

/// Classifies an error met while reading the blob: a fetch error carried
/// through `io::Error` keeps its own (transient or not) meaning; broken
/// compressed data is permanent; anything else is I/O trouble.
fn read_error(digest: &Digest, e: io::Error) -> IngestError {
    if e.get_ref().is_some_and(|inner| inner.is::<FetchError>()) {
        let inner = e.into_inner().expect("checked above");
        return IngestError::Fetch(*inner.downcast::<FetchError>().expect("checked above"));
    }
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            IngestError::Corrupt {
                digest: digest.clone(),
                source: e,
            }
        }
        _ => IngestError::Io {
            context: format!("reading layer {digest}"),
            source: e,
        },
    }
}

/// What the blob stage ended with.
enum Compressed {
    Done {
        digest: Digest,
        bytes: u64,
    },
    Magic(decompress::MagicMismatch),
    Failed(io::Error),
    /// Decompression failed; the blob's digest, if it could still be read.
    Broken {
        error: io::Error,
        digest: Option<Digest>,
    },
    /// The extracting side failed first and hung up.
    Stopped,
}

/// Uncompressed bytes travel between the threads in chunks of this size.
const CHUNK: usize = 256 << 10;

/// The blob stage: hash the blob as read, check its magic, decompress, and
/// send the tar stream on in chunks. Returns the blob digest once the blob
/// is read to its end (trailing bytes included).
fn decompress_stage(
    blob: impl Read,
    compression: exploder_common::image::Compression,
    algorithm: Algorithm,
    tx: SyncSender<io::Result<Vec<u8>>>,
) -> Compressed {
    let mut hashed = HashingReader::new(blob, algorithm);
    let mut decoder = match decompress::decompressor(&mut hashed, compression) {
        Ok(Ok(d)) => d,
        Ok(Err(m)) => return Compressed::Magic(m),
        Err(e) => return Compressed::Failed(e),
    };
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        // Fill whole chunks: fewer, larger messages.
        while filled < CHUNK {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    let _ = tx.send(Err(copy));
                    // Broken compressed data is usually a corrupt or
                    // tampered blob: read it to its end so the blob digest
                    // can name the real cause.
                    drop(decoder);
                    let digest = hashed.finish().ok().map(|(d, _)| d);
                    return Compressed::Broken { error: e, digest };
                }
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if tx.send(Ok(chunk)).is_err() {
            // The extracting side stopped (it failed): so do we.
            return Compressed::Stopped;
        }
    }
    drop(decoder);
    match hashed.finish() {
        Ok((digest, bytes)) => Compressed::Done { digest, bytes },
        Err(e) => Compressed::Failed(e),
    }
}

/// The extracting side's view of the chunks: a plain `Read`.
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: Receiver<io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender is gone: end of stream (or it failed, which it
                // reports itself).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A private directory under the store's `tmp/`, removed on drop unless
/// published.
///
/// Its owner holds an exclusive `flock` on `<dir>.lock` beside it for as
/// long as it lives; the kernel drops the lock when the owner dies. So the
/// sweep can tell leftovers of crashed runs from live work without trusting
/// host names or pids (containers share host names, not pid namespaces).
pub struct Staging {
    pub path: PathBuf,
    lock_path: PathBuf,
    /// Held until drop.
    _lock: std::fs::File,
    published: bool,
}

/// Opens (creating) a lock file and tries to take it exclusively.
fn try_lock(path: &Path) -> io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Staging {
    /// Creates `tmp/<prefix>.<pid>.<nonce>`, locked before it exists.
    pub fn new(tmp: &Path, prefix: &str) -> io::Result<Staging> {
        std::fs::create_dir_all(tmp)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for attempt in 0..100u32 {
            let name = format!("{prefix}.{}.{nanos:x}{attempt}", std::process::id());
            let lock_path = tmp.join(format!("{name}.lock"));
            // Lock first, then create: a sweep that sees the directory
            // always finds its lock held.
            let Some(lock) = try_lock(&lock_path)? else {
                continue;
            };
            let path = tmp.join(&name);
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Staging {
                        path,
                        lock_path,
                        _lock: lock,
                        published: false,
                    });
                }
                Err(e) => {
                    // Our lock file goes with the attempt (a full store
                    // fails here): not left for the sweep.
                    let _ = std::fs::remove_file(&lock_path);
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
            }
        }
        Err(io::Error::other(
            "could not create a unique staging directory",
        ))
    }

    /// Removes staging directories whose owners are gone (their lock is
    /// free). Returns how many were removed. Nothing points into `tmp/`, so
    /// this is always safe.
    pub fn sweep(tmp: &Path) -> io::Result<usize> {
        Self::visit_dead(tmp, true)
    }

    /// How many staging directories [`Staging::sweep`] would remove now.
    pub fn count_dead(tmp: &Path) -> io::Result<usize> {
        Self::visit_dead(tmp, false)
    }

    fn visit_dead(tmp: &Path, remove: bool) -> io::Result<usize> {
        let mut removed = 0;
        let entries = match std::fs::read_dir(tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(dir) = name.strip_suffix(".lock") {
                // A lock without its directory: its owner died between the
                // two steps of `new`.
                if remove && !tmp.join(dir).exists() && try_lock(&entry.path())?.is_some() {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let lock_path = tmp.join(format!("{name}.lock"));
            if let Some(_lock) = try_lock(&lock_path)? {
                if remove {
                    remove_tree(&entry.path())?;
                    let _ = std::fs::remove_file(&lock_path);
                }
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
        // Still holding the lock: no sweep can be looking at this name.
        let _ = std::fs::remove_file(&self.lock_path);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_what_dead_owners_left_and_spares_live_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let live = Staging::new(tmp.path(), "layer-live").unwrap();
        std::fs::write(live.path.join("f"), b"in progress").unwrap();
        // What a killed owner leaves: its directory and an unlocked lock
        // file (the kernel released the lock with the process), or a lock
        // file alone.
        let dead = tmp.path().join("layer-dead.1.abc0");
        std::fs::create_dir_all(dead.join("tree/sub")).unwrap();
        std::fs::write(tmp.path().join("layer-dead.1.abc0.lock"), b"").unwrap();
        std::fs::write(tmp.path().join("image-gone.2.def0.lock"), b"").unwrap();
        assert_eq!(Staging::count_dead(tmp.path()).unwrap(), 1);
        assert!(dead.exists(), "counting removes nothing");
        assert_eq!(Staging::sweep(tmp.path()).unwrap(), 1);
        assert!(!dead.exists());
        assert!(live.path.join("f").is_file());
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        drop(live);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_full_disk_is_the_machines_trouble_not_the_layers() {
        assert!(io_is_transient(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(io_is_transient(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!io_is_transient(&io::Error::from_raw_os_error(
            libc::ENOTDIR
        )));
        assert!(!io_is_transient(&io::Error::other("not an os error")));
    }
}
