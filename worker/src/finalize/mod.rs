//! Finalize: apply an image's ingested layers, in order, into
//! `digest/sha256/<manifest>/rootfs/`, publish it atomically, then link the
//! tag.
//!
//! The result must equal `umoci unpack` of the same image. Per layer, the
//! index's records are replayed in tar order, as umoci extracts:
//!
//! - a whiteout or opaque marker removes lower-layer content, but never
//!   what this layer already wrote (umoci's "upper paths"); what the layer
//!   writes after it simply lands on the cleared path;
//! - an entry replaces what is there unless both are directories;
//!   non-directories are materialized from the layer store (hardlink, copy
//!   or reflink); directories are created and their metadata remembered;
//!   a hardlink to a lower path links whatever is there at that moment.
//!
//! After the last layer, directory metadata is applied deepest first, so
//! creating children never disturbs a directory's mtime again.
//!
//! One difference is left: a path written twice by one layer is replayed
//! once, at its last position (the layer store keeps only the last
//! content). It shows only where the first write went through a lower
//! symlink that a later entry of the same layer replaced.
//!
//! If the digest directory already exists it is complete (it was published
//! by rename), and finalize only writes the link.
//!
//! # Parallel writes
//!
//! Putting a file into the rootfs (a hardlink, or a copy) is one inode
//! created, which on a slow disk costs far more than deciding it; so, as at
//! ingest (see [`crate::layer::unpack`] for the rules), the applier decides
//! everything on one thread, in tar order, and hands the creation of
//! files, symlinks, fifos and hardlinks to the layer writers' pool
//! (`--write-threads`). Directories are made by the applier itself, before
//! it goes on. It waits for the job at a path before looking at that path
//! (and for one creating a missing path component), for every job before
//! it removes anything (a whiteout, a replaced entry), and for the
//! layer's last job before the next layer: each layer applies onto the
//! complete result of the ones below. The first failure in tar order is
//! the image's error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use exploder_common::digest::Digest;
use exploder_common::history::{Origin, rfc3339_now};
use exploder_common::image::ResolvedImage;
use exploder_common::store::StoreLayout;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::inroot::{InRoot, Resolved, Target, list_dir, remove_all_at};
use crate::layer::files::LayerFiles;
use crate::layer::index::{Entry, Kind, LayerIndex, Op, remove_subtree};
use crate::layer::unpack::{UnpackError, apply_via_proc};
pub use crate::layer::writers::WriteThreads;
use crate::layer::writers::{self, Settings, Writers};
use crate::layer::{LayerStore, Staging, io_is_transient};
use crate::meta::{Meta, can_chown};
use crate::space::StoreFull;

pub mod recorded;

/// How files get from the layer store into an image's rootfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Materialize {
    /// Hardlink each file (like an OSTree checkout): no data is copied and
    /// images sharing a layer share its files. The trees are meant to be
    /// read-only: writing to a file in one image changes it in all.
    #[default]
    Hardlink,
    /// Copy each file: independent trees, at the cost of space and time.
    Copy,
    /// Reflink (FICLONE) each file where the file system can (btrfs, XFS),
    /// falling back to a copy.
    Reflink,
}

#[derive(Clone, Debug)]
pub struct FinalizeOptions {
    pub materialize: Materialize,
    /// Create device nodes recorded in layers (off by default: a block
    /// device in a served tree is a hole into the host).
    pub allow_devices: bool,
    pub durable: bool,
    /// Threads creating inodes within one layer at ingest and one image at
    /// finalize (`--write-threads`; `Fixed(1)`: none besides the reader).
    pub write_threads: WriteThreads,
    /// Share regular files through the store's objects at ingest (see
    /// [`crate::layer::objects`]).
    pub file_objects: bool,
}

impl Default for FinalizeOptions {
    fn default() -> Self {
        FinalizeOptions {
            materialize: Materialize::Hardlink,
            allow_devices: false,
            durable: true,
            write_threads: WriteThreads::auto(),
            file_objects: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("layer {0} is not in the layer store; ingest it first")]
    MissingLayer(Digest),
    #[error("image {image}: layer {diff_id}: {path:?}: {source}")]
    Apply {
        image: Digest,
        diff_id: Digest,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {diff_id}: {message}; remove layers/sha256/{hex} to ingest it again", hex = diff_id.hex())]
    BadIndex { diff_id: Digest, message: String },
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

impl FinalizeError {
    pub fn is_transient(&self) -> bool {
        match self {
            FinalizeError::Io { .. }
            | FinalizeError::MissingLayer(_)
            | FinalizeError::StoreFull(_) => true,
            // The machine's trouble (disk full...), not the image's; or an
            // inode that reached the link limit while this image was
            // assembled (others link it too): built again, it is copied.
            FinalizeError::Apply { source, .. } => {
                io_is_transient(source)
                    || source.raw_os_error() == Some(Errno::MLINK.raw_os_error())
            }
            FinalizeError::BadIndex { .. } => false,
        }
    }
}

/// What finalize records about an image beside its rootfs (`image.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageInfo {
    pub manifest_digest: Digest,
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    pub diff_ids: Vec<Digest>,
    pub materialize: Materialize,
    /// Device nodes the layers contain that were not created.
    pub devices_skipped: Vec<String>,
    pub finalized_at: String,
    /// Where the image came from when it was built (registry and
    /// repository; absent in stores from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Origin>,
}

pub struct Finalizer<'a> {
    layers: &'a LayerStore,
    opts: FinalizeOptions,
}

impl<'a> Finalizer<'a> {
    pub fn new(layers: &'a LayerStore, opts: FinalizeOptions) -> Self {
        Finalizer { layers, opts }
    }

    fn layout(&self) -> &StoreLayout {
        self.layers.layout()
    }

    /// Builds the image's digest directory unless it already exists,
    /// recording where it came from (`origin`'s registry and repository).
    /// Returns whether it was built now. Blocking.
    ///
    /// On a store without room (the layer store's
    /// [`crate::space::StoreSpace::check`]) nothing is written; a write
    /// that runs out of space fails with [`FinalizeError::StoreFull`] once
    /// the staging directory is removed.
    pub fn build(&self, image: &ResolvedImage, origin: &Origin) -> Result<bool, FinalizeError> {
        if self.layout().has_image(&image.manifest_digest) {
            return Ok(false);
        }
        for l in &image.layers {
            if !self.layers.contains(&l.diff_id) {
                return Err(FinalizeError::MissingLayer(l.diff_id.clone()));
            }
        }
        let space = &self.layers.space;
        let free = space.check()?;
        // The staging directory is gone once this returns: what the store
        // has left is measured after it.
        self.build_staged(image, origin)
            .map_err(|e| match space.ran_out(&e, free) {
                Some(full) => full.into(),
                None => e,
            })
    }

    fn build_staged(&self, image: &ResolvedImage, origin: &Origin) -> Result<bool, FinalizeError> {
        let dest = self.layout().digest_dir(&image.manifest_digest);
        let io_ctx =
            |context: String| move |source: io::Error| FinalizeError::Io { context, source };
        let staging = Staging::new(
            &self.layout().tmp_dir(),
            &format!("image-{}", image.manifest_digest.hex()),
        )
        .map_err(io_ctx("creating a staging directory".into()))?;
        let rootfs = staging.path.join("rootfs");
        std::fs::create_dir(&rootfs).map_err(io_ctx(format!("creating {}", rootfs.display())))?;
        let chown = can_chown();
        let mut applier = Applier {
            rootfs: InRoot::open(&rootfs, self.layers.limits().max_symlink_hops)
                .map_err(io_ctx(format!("opening {}", rootfs.display())))?,
            opts: &self.opts,
            chown,
            recorded: (!chown).then(recorded::RecordedTree::new),
            dirs: BTreeMap::new(),
            root_meta: None,
            newest_mtime: 0,
            devices_skipped: Vec::new(),
            upper: BTreeSet::new(),
            track_upper: false,
            writers: Writers::spawn(
                self.opts.write_threads,
                Settings {
                    chown,
                    start_writeback: false,
                },
            ),
            layer_no: 0,
            inode_layers: HashMap::new(),
        };
        for (layer_no, l) in image.layers.iter().enumerate() {
            applier.layer_no = layer_no;
            let apply_err = |path: &[u8], source: io::Error| FinalizeError::Apply {
                image: image.manifest_digest.clone(),
                diff_id: l.diff_id.clone(),
                path: String::from_utf8_lossy(path).into_owned(),
                source,
            };
            let index = LayerIndex::read(&self.layers.index_path(&l.diff_id)).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    // Unreadable or from another version: retrying cannot help.
                    FinalizeError::BadIndex {
                        diff_id: l.diff_id.clone(),
                        message: e.to_string(),
                    }
                } else {
                    io_ctx(format!("reading the index of layer {}", l.diff_id))(e)
                }
            })?;
            let files = self
                .layers
                .files(&l.diff_id, index.layout)
                .map_err(io_ctx(format!("opening the files of layer {}", l.diff_id)))?;
            applier.apply_layer(&index, files, apply_err)?;
            exploder_common::failpoint::hit("finalize.mid-apply");
        }
        applier
            .finish_dirs(config_created(&image.config))
            .map_err(io_ctx("applying directory metadata".into()))?;

        let info = ImageInfo {
            manifest_digest: image.manifest_digest.clone(),
            index_digest: image.index_digest.clone(),
            config_digest: image.config_digest.clone(),
            diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
            materialize: self.opts.materialize,
            devices_skipped: applier.devices_skipped,
            finalized_at: rfc3339_now(),
            source: Some(origin.image_source()),
        };
        let write = |name: &str, data: &[u8]| {
            std::fs::write(staging.path.join(name), data).map_err(io_ctx(format!("writing {name}")))
        };
        if let Some(tree) = &applier.recorded {
            write(recorded::FILE_NAME, &recorded::encode(tree))?;
        }
        write("manifest.json", &image.manifest)?;
        write("config.json", &image.config)?;
        write(
            "image.json",
            &serde_json::to_vec_pretty(&info).expect("image info serializes"),
        )?;
        exploder_common::failpoint::hit("finalize.before-publish");
        staging
            .publish(&dest, self.opts.durable)
            .map_err(io_ctx(format!("publishing {}", dest.display())))?;
        exploder_common::failpoint::hit("finalize.before-link");
        Ok(true)
    }
}

/// The state of one image being assembled.
struct Applier<'o> {
    rootfs: InRoot,
    opts: &'o FinalizeOptions,
    chown: bool,
    /// When not root (`!chown`): the owners and xattrs the layers
    /// recorded, by physical rootfs path, for the `recorded` file.
    recorded: Option<recorded::RecordedTree>,
    /// Explicit directories and their metadata, by physical rootfs path;
    /// applied deepest first at the end.
    dirs: BTreeMap<Vec<u8>, Meta>,
    root_meta: Option<Meta>,
    /// The newest mtime of the entries applied (seconds).
    newest_mtime: i64,
    devices_skipped: Vec<String>,
    /// Physical paths the current layer has written, with their ancestors
    /// (umoci's "upper paths"), when the layer has whiteouts to check.
    upper: BTreeSet<Vec<u8>>,
    track_upper: bool,
    /// What creates the inodes (see "Parallel writes" above).
    writers: Writers,
    /// The layer being applied (counting from 0), and, by (dev, inode),
    /// the layer that first put each layer-store inode into the rootfs and
    /// whether it copied it (see `materialize`).
    layer_no: usize,
    inode_layers: HashMap<(u64, u64), (usize, bool)>,
}

/// An error of the writers as an error at a path.
fn at_path(e: UnpackError) -> (Vec<u8>, io::Error) {
    match e {
        UnpackError::Io { path, source } => (path.into_bytes(), source),
        other => (Vec::new(), io::Error::other(other.to_string())),
    }
}

impl Applier<'_> {
    fn apply_layer<E>(
        &mut self,
        index: &LayerIndex,
        mut files: LayerFiles,
        err: impl Fn(&[u8], io::Error) -> E,
    ) -> Result<(), E> {
        // What this layer wrote so far, for the whiteouts that follow it;
        // a layer without whiteouts needs no record.
        self.upper.clear();
        self.track_upper = !index.whiteouts.is_empty() || !index.opaques.is_empty();
        // Same-layer hardlink groups keep their shape in copy mode through
        // the inode map.
        let mut copies: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        for (seq, op) in index.in_tar_order().into_iter().enumerate() {
            let seq = seq as u64;
            let (path, applied) = match op {
                Op::Whiteout(path) => (path, self.whiteout(path)),
                Op::Opaque(path) => (path, self.opaque(path)),
                Op::Entry(path, entry) => {
                    (path, self.entry(seq, path, entry, &mut files, &mut copies))
                }
            };
            if let Err(e) = applied {
                // A writer may have failed on an earlier entry: that one is
                // the image's error, as if applied one by one.
                let first = self.writers.first_error(
                    seq,
                    UnpackError::Io {
                        path: String::from_utf8_lossy(path).into_owned(),
                        source: e,
                    },
                );
                let (path, e) = at_path(first);
                return Err(err(&path, e));
            }
            exploder_common::failpoint::hit("finalize.op");
        }
        self.writers.finish().map_err(|e| {
            let (path, e) = at_path(e);
            err(&path, e)
        })
    }

    /// Resolves `path` in the rootfs, waiting for a writer still creating
    /// a component of it (a symlink must not be taken for a missing
    /// directory).
    fn resolve(&mut self, path: &[u8], create: bool) -> io::Result<Target> {
        let writers = &mut self.writers;
        self.rootfs
            .resolve_waiting(path, create, &mut |p| writers.wait_for(p))
    }

    /// Hands the creation of `r` to a writer (run at once without a pool).
    fn submit(
        &mut self,
        seq: u64,
        path: &[u8],
        r: Resolved,
        op: writers::Op,
        after: Option<&[u8]>,
    ) -> io::Result<()> {
        let job = writers::Job {
            seq,
            path: path.to_vec(),
            parent: r.parent,
            name: r.name,
            op,
        };
        self.writers
            .submit(r.physical, job, after)
            .map_err(|e| at_path(e).1)
    }

    /// `.wh.<name>`: removes the named lower-layer path. Missing is fine.
    fn whiteout(&mut self, path: &[u8]) -> io::Result<()> {
        // Nothing is removed while a writer may still create below it.
        self.writers.drain();
        let r = match self.rootfs.resolve(path, false) {
            Ok(Target::Entry(r)) => r,
            Ok(Target::Root) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if self.upper.contains(&r.physical) {
            // This layer already wrote here (or below): only what lower
            // layers left around it goes.
            return self.remove_lower_children(r.physical);
        }
        remove_all_at(r.parent.as_fd(), &r.name)?;
        self.forget_subtree(&r.physical);
        self.rootfs.invalidate();
        Ok(())
    }

    /// `.wh..wh..opq`: removes every lower-layer child of the directory.
    fn opaque(&mut self, path: &[u8]) -> io::Result<()> {
        self.writers.drain();
        match self.rootfs.resolve_dir(path, false) {
            Ok((_, physical)) => self.remove_lower_children(physical),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the children of the directory at physical path `top` that
    /// lower layers put there, and below the ones this layer wrote, theirs,
    /// as umoci does: a whiteout never removes what its own layer wrote
    /// before it. Iterative over physical paths (only directories this
    /// layer wrote are descended), so no fd is held per level.
    fn remove_lower_children(&mut self, top: Vec<u8>) -> io::Result<()> {
        let mut todo = vec![top];
        while let Some(dir_path) = todo.pop() {
            let Some(dir) = self.open_real_dir(&dir_path)? else {
                continue;
            };
            for name in list_dir(dir.as_fd())? {
                let mut child = dir_path.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(&name);
                if self.upper.contains(&child) {
                    todo.push(child);
                } else {
                    remove_all_at(dir.as_fd(), &name)?;
                    self.forget_subtree(&child);
                }
            }
            self.rootfs.invalidate();
        }
        Ok(())
    }

    /// Opens the directory at a physical rootfs path, or `None` when
    /// something else (a file, a symlink: never followed) is there.
    fn open_real_dir(&mut self, physical: &[u8]) -> io::Result<Option<OwnedFd>> {
        if physical.is_empty() {
            return reopen_dir(self.rootfs.root()).map(Some);
        }
        let r = match self.rootfs.resolve(physical, false)? {
            Target::Entry(r) => r,
            Target::Root => return reopen_dir(self.rootfs.root()).map(Some),
        };
        match rustix::fs::openat(
            &*r.parent,
            r.name.as_slice(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOTDIR | Errno::LOOP | Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets what is remembered of `physical` and below (removed).
    fn forget_subtree(&mut self, physical: &[u8]) {
        remove_subtree(&mut self.dirs, physical);
        if let Some(tree) = &mut self.recorded {
            remove_subtree(tree, physical);
        }
    }

    /// Remembers the owner and xattrs the layer recorded for `physical`.
    fn record(&mut self, physical: &[u8], meta: &Meta) {
        if let Some(tree) = &mut self.recorded {
            tree.insert(
                physical.to_vec(),
                recorded::Recorded {
                    uid: meta.uid,
                    gid: meta.gid,
                    xattrs: meta.xattrs.clone(),
                },
            );
        }
    }

    /// Records that this layer wrote `physical` (and so its ancestors).
    fn mark_upper(&mut self, physical: &[u8]) {
        if !self.track_upper {
            return;
        }
        let mut p = physical;
        // Ancestors of a recorded path are recorded: stop at the first.
        while !p.is_empty() && self.upper.insert(p.to_vec()) {
            p = match p.iter().rposition(|b| *b == b'/') {
                Some(i) => &p[..i],
                None => b"",
            };
        }
    }

    fn entry(
        &mut self,
        seq: u64,
        path: &[u8],
        entry: &Entry,
        files: &mut LayerFiles,
        copies: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> io::Result<()> {
        self.newest_mtime = self.newest_mtime.max(entry.meta.mtime_sec);
        let r = match self.resolve(path, true)? {
            Target::Root => {
                self.record(b"", &entry.meta);
                self.root_meta = Some(entry.meta.clone());
                return Ok(());
            }
            Target::Entry(r) => r,
        };
        self.mark_upper(&r.physical);
        // Another path of this layer may reach the same place (through a
        // symlinked directory): what was submitted there comes first.
        self.writers.wait_for(&r.physical);
        let is_dir = entry.kind == Kind::Dir;
        match rustix::fs::statat(&*r.parent, r.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                self.writers.drain();
                remove_all_at(r.parent.as_fd(), &r.name)?;
                self.forget_subtree(&r.physical);
                self.rootfs.invalidate();
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        // A hardlink shares its target's inode, and so what was recorded
        // for it; every other entry that is created has its own.
        match &entry.kind {
            Kind::HardlinkLower(_) => {}
            Kind::CharDevice { .. } | Kind::BlockDevice { .. } if !self.opts.allow_devices => {}
            _ => self.record(&r.physical, &entry.meta),
        }
        match &entry.kind {
            Kind::Dir => {
                match rustix::fs::mkdirat(&*r.parent, r.name.as_slice(), Mode::from_raw_mode(0o755))
                {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                self.dirs.insert(r.physical, entry.meta.clone());
            }
            Kind::File | Kind::Symlink(_) | Kind::Fifo => {
                let t = files.locate(path, entry)?;
                self.materialize(seq, path, t, r, entry, copies)?;
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                if !self.opts.allow_devices {
                    self.devices_skipped
                        .push(String::from_utf8_lossy(&r.physical).into_owned());
                    return Ok(());
                }
                let ft = if matches!(entry.kind, Kind::CharDevice { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                rustix::fs::mknodat(
                    &*r.parent,
                    r.name.as_slice(),
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(*major, *minor),
                )?;
                let fd = open_path(&r)?;
                apply_via_proc(&entry.meta, fd.as_fd(), self.chown)?;
            }
            Kind::HardlinkLower(target) => {
                let t = match self.resolve(target, false) {
                    Ok(Target::Entry(t)) => t,
                    Ok(Target::Root) => return Err(io::Error::other("hardlink to the root")),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "hardlink target {:?} exists in no layer",
                                String::from_utf8_lossy(target)
                            ),
                        ));
                    }
                    Err(e) => return Err(e),
                };
                // The target may be this layer's, still being created.
                self.writers.wait_for(&t.physical);
                match rustix::fs::statat(&*t.parent, t.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(io::Error::other("hardlink to a directory"));
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "hardlink target {:?} exists in no layer",
                                String::from_utf8_lossy(target)
                            ),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
                if let Some(tree) = &mut self.recorded
                    && let Some(target) = tree.get(&t.physical).cloned()
                {
                    tree.insert(r.physical.clone(), target);
                }
                let op = writers::Op::Hardlink {
                    parent: t.parent,
                    name: t.name,
                };
                self.submit(seq, path, r, op, None)?;
            }
        }
        Ok(())
    }

    /// Puts the layer-store file `t` at rootfs position `r` (on a writer).
    // nlink_t is u32 on some targets.
    #[allow(clippy::unnecessary_cast)]
    fn materialize(
        &mut self,
        seq: u64,
        path: &[u8],
        t: Resolved,
        r: Resolved,
        entry: &Entry,
        copies: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> io::Result<()> {
        let mut how = self.opts.materialize;
        if entry.kind == Kind::File {
            let st = rustix::fs::statat(&*t.parent, t.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
            let key = (st.st_dev as u64, st.st_ino as u64);
            if how == Materialize::Hardlink {
                // One inode may serve several layers of this image (a file
                // object: the same content and metadata), or one layer
                // applied twice. A rootfs has two paths on one inode only
                // where a layer hardlinked them, so the inode is linked for
                // the first layer that has it, and copied for any other.
                // An inode near ext4's link limit (a file object every
                // image has) is copied too, before a link could fail half
                // way through a hardlink group. Every path of one inode in
                // a layer goes the way its first went: linked, or linked to
                // the first copy.
                match self.inode_layers.get(&key) {
                    Some(&(layer, _)) if layer != self.layer_no => how = Materialize::Copy,
                    Some(&(_, copied)) => {
                        if copied {
                            how = Materialize::Copy;
                        }
                    }
                    None => {
                        let full = st.st_nlink as u64 >= exploder_common::store::objects::LINK_CAP;
                        if full {
                            how = Materialize::Copy;
                        }
                        self.inode_layers.insert(key, (self.layer_no, full));
                    }
                }
            }
            if how != Materialize::Hardlink {
                if let Some(first) = copies.get(&key).cloned() {
                    // Same inode in the layer: keep the hardlink group,
                    // linking to the first copy once it is made.
                    if let Target::Entry(f) = self.rootfs.resolve(&first, false)? {
                        let op = writers::Op::Hardlink {
                            parent: f.parent,
                            name: f.name,
                        };
                        return self.submit(seq, path, r, op, Some(&first));
                    }
                }
                copies.insert(key, r.physical.clone());
            }
        }
        let (kind, meta, chown) = (entry.kind.clone(), entry.meta.clone(), self.chown);
        let (from, from_name) = (t.parent, t.name);
        let put: writers::Put = Box::new(move |parent, name| {
            put(
                from.as_fd(),
                &from_name,
                parent,
                name,
                &kind,
                &meta,
                how,
                chown,
            )
        });
        self.submit(seq, path, r, writers::Op::Put(put), None)
    }

    /// Applies directory metadata deepest first, then the root's. The
    /// directories no entry named (the root without a `./` entry, the
    /// parents a path implied) get the image's time, not the clock's: the
    /// config's `created` (`created`), else the newest mtime of the
    /// entries, else 0. Two explodes of one image then give the same tree,
    /// and the same disk images. umoci gives them the time of the unpack
    /// (the differential tests do not compare them).
    fn finish_dirs(&mut self, created: Option<i64>) -> io::Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            let (dir, _) = self.rootfs.resolve_dir(path, false)?;
            let fd = reopen_dir(dir.as_fd())?;
            meta.apply_fd(fd.as_fd(), self.chown)?;
        }
        self.rootfs.invalidate();
        let time = created.unwrap_or(self.newest_mtime).max(0);
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: time,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: time,
                tv_nsec: 0,
            },
        };
        for path in self.rootfs.take_created() {
            if dirs.contains_key(&path) {
                continue;
            }
            // Gone (a whiteout, a parent replaced by a file or a symlink),
            // or now reached through a symlink: not the directory that was
            // implied, and nothing to do.
            let r = match self.rootfs.resolve(&path, false) {
                Ok(Target::Entry(r)) if r.physical == path => r,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound
                            | io::ErrorKind::NotADirectory
                            | io::ErrorKind::InvalidInput
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            match rustix::fs::statat(&*r.parent, r.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            }
            rustix::fs::utimensat(
                &*r.parent,
                r.name.as_slice(),
                &times,
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        let root = reopen_dir(self.rootfs.root())?;
        match &self.root_meta {
            Some(meta) => meta.apply_fd(root.as_fd(), self.chown)?,
            None => rustix::fs::futimens(&root, &times)?,
        }
        Ok(())
    }
}

/// The config's `created` in Unix seconds (RFC 3339, any offset, the
/// fraction dropped), if it has a readable one.
fn config_created(config: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct Config {
        created: Option<String>,
    }
    let created = serde_json::from_slice::<Config>(config).ok()?.created?;
    parse_rfc3339_any_offset(&created)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` in Unix seconds.
fn parse_rfc3339_any_offset(s: &str) -> Option<i64> {
    let (civil, rest) = (s.get(..19)?, s.get(19..)?);
    let rest = match rest.strip_prefix('.') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest.get(1..)?.split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    let utc = exploder_common::history::parse_rfc3339(&format!("{civil}Z"))?;
    Some(utc - offset)
}

/// Puts the layer-store file `from_name` (in `from`) at `name` in
/// `parent`, as `how` says: a hardlink (a copy at the file system's link
/// limit: ext4 allows 65000 links to one inode, and this image gets its
/// own), a copy or a reflink, with the entry's metadata.
#[allow(clippy::too_many_arguments)]
fn put(
    from: BorrowedFd<'_>,
    from_name: &[u8],
    parent: BorrowedFd<'_>,
    name: &[u8],
    kind: &Kind,
    meta: &Meta,
    how: Materialize,
    chown: bool,
) -> io::Result<()> {
    if how == Materialize::Hardlink {
        match rustix::fs::linkat(from, from_name, parent, name, AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::MLINK) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match kind {
        Kind::Symlink(target) => {
            rustix::fs::symlinkat(target.as_slice(), parent, name)?;
            meta.apply_symlink(parent, name, chown)
        }
        Kind::Fifo => writers::make_fifo(parent, name, meta, chown),
        _ => {
            let src = rustix::fs::openat(
                from,
                from_name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&src)?;
            let dst = rustix::fs::openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let cloned =
                how == Materialize::Reflink && rustix::fs::ioctl_ficlone(&dst, &src).is_ok();
            if !cloned {
                copy_fd(&src, &dst, st.st_size as u64)?;
            }
            // The layer store holds the final metadata of the file (and
            // when not root, the index holds the intended owner).
            meta.apply_fd(dst.as_fd(), chown)
        }
    }
}

/// A readable fd for a directory held by an `O_PATH` fd.
fn reopen_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn open_path(r: &Resolved) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        &*r.parent,
        r.name.as_slice(),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn copy_fd(src: &OwnedFd, dst: &OwnedFd, mut len: u64) -> io::Result<()> {
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => len -= n as u64,
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) => {
                let mut s = std::fs::File::from(src.try_clone()?);
                let mut d = std::fs::File::from(dst.try_clone()?);
                io::copy(&mut s, &mut d)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod layout_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configs_created_time_is_read_in_any_offset() {
        let at = |created: &str| config_created(format!(r#"{{"created":"{created}"}}"#).as_bytes());
        assert_eq!(at("2024-01-02T03:04:05Z"), Some(1_704_164_645));
        assert_eq!(at("2024-01-02T03:04:05.123456789Z"), Some(1_704_164_645));
        assert_eq!(at("2024-01-02T05:04:05+02:00"), Some(1_704_164_645));
        assert_eq!(at("2024-01-01T23:04:05.5-04:00"), Some(1_704_164_645));
        assert_eq!(at("yesterday"), None);
        assert_eq!(config_created(b"{}"), None);
        assert_eq!(config_created(b"not json"), None);
    }
}
