//! Extracting one layer's tar stream into its layer-store tree.
//!
//! One type, [`LayerUnpacker`], fed tar entries in order. Each edge case is
//! handled, and commented, in the one place it belongs:
//!
//! - paths are resolved with [`InRoot`] (chroot semantics) and never
//!   followed in the final component; a path that lexically climbs above
//!   the root (`../x`) is refused as hostile rather than silently clamped;
//! - whiteouts and opaque markers are *recorded* (they act on lower layers,
//!   at finalize) and never touch this layer's tree;
//! - a new entry over an existing one replaces it unless both are
//!   directories (then the directory stays and its metadata is updated);
//! - hardlinks are made inside the tree, or recorded for finalize when they
//!   name a path from a lower layer;
//! - device nodes are recorded, never created;
//! - regular files get their final metadata here, because finalize
//!   hardlinks them into every image that uses this layer; directories keep
//!   mode 0755 in the tree and get their real metadata at finalize;
//! - a regular file whose content and metadata the store already has is a
//!   link of that file object instead of a new inode, unless another path
//!   of this layer already took that object (see [`super::objects`]): the
//!   tree has a hardlink only where the tar made one.
//!
//! # Parallel writes
//!
//! Creating an inode costs far more than parsing its tar header on most
//! disks (and more still on network file systems), so the inodes are
//! created by a small pool of writer threads ([`super::writers`],
//! `--write-threads`), fed in tar order by this reader. The reader keeps
//! everything that decides *what* happens, and hands off only *creating*
//! one new inode in a directory that exists. The rules that keep the
//! result equal to applying the entries one by one:
//!
//! 1. The reader parses, hashes (upstream), checks limits, resolves every
//!    path ([`InRoot`]), decides replacements, and keeps the index. So the
//!    index and every error about the layer's content are decided in tar
//!    order, on one thread.
//! 2. Directories (explicit and implicit parents) are made by the reader
//!    itself, before it goes on: a directory exists before any entry
//!    below it is looked at. Their metadata is not applied in the layer
//!    tree (finalize does it, deepest first), so nothing waits for
//!    children.
//! 3. Files up to [`super::writers::SMALL_FILE`] (with their content),
//!    symlinks, fifos and hardlinks within the layer go to a writer, and
//!    are remembered by physical path until done. Larger files are written
//!    by the reader.
//! 4. Before the reader looks at a path, what was submitted there is done:
//!    it waits for the job at an entry's own path before checking what is
//!    there (duplicates: the later entry replaces the earlier one, in tar
//!    order), and a walk that finds a component missing waits for a job
//!    creating it and looks again (a symlink or file still being made
//!    must not be taken for a missing directory and created).
//! 5. A hardlink runs on the writer that creates its target, after it (a
//!    writer runs its jobs in order); the index already knows the target.
//! 6. Removing anything (an entry replaced by a different kind) first
//!    waits for all writers: what is below it may still be in flight.
//! 7. The layer is done when every job is; the first failure in tar order
//!    is the layer's error. Only then does the caller compare the diff_id
//!    and publish.
//!
//! The queue is bounded in bytes ([`super::writers::QUEUE_BYTES`]), so
//! memory does not grow with the layer. With `--write-threads 1` there is
//! no pool: the reader creates everything itself; with `auto` (the
//! default) the pool starts only once creating inodes proves slow (see
//! [`super::writers`]).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;

use exploder_common::limits::Limits;
use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::index::{Entry, Kind, LayerIndex};
use super::objects::LayerObjects;
use super::writers::{self, Job, Op, Settings, WriteThreads, Writers};
use crate::inroot::{InRoot, Resolved, Target, remove_all_at};
use crate::meta::{Meta, can_chown, xattr_allowed};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Why an entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {path:?}: {reason}")]
    Hostile { path: String, reason: String },
    #[error("{what} limit exceeded: {value} > {max} ({hint})")]
    Limit {
        what: &'static str,
        value: u64,
        max: u64,
        hint: &'static str,
    },
    #[error("entry {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer tar: {0}")]
    Tar(#[source] io::Error),
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub struct LayerUnpacker<'a> {
    tree: InRoot,
    limits: &'a Limits,
    chown: bool,
    index: LayerIndex,
    entries: u64,
    /// File bytes written so far.
    written: u64,
    buf: Vec<u8>,
    /// Start writeback of each file as soon as it is written (when the
    /// layer will be flushed before publishing anyway).
    pub start_writeback: bool,
    /// Threads creating files (`Fixed(1)`: the reader itself; see the
    /// module documentation).
    pub write_threads: WriteThreads,
    /// Where regular files are shared with the store's objects (see
    /// [`super::objects`]); `None`: every file is the layer's own.
    pub objects: Option<Arc<LayerObjects>>,
    writers: Writers,
}

/// What one tar header says, in the form the unpacker needs.
struct Header {
    path: Vec<u8>,
    kind: EntryType,
    link: Option<Vec<u8>>,
    meta: Meta,
    device: (u32, u32),
}

impl<'a> LayerUnpacker<'a> {
    pub fn new(tree: InRoot, limits: &'a Limits) -> Self {
        LayerUnpacker {
            tree,
            limits,
            chown: can_chown(),
            index: LayerIndex::default(),
            entries: 0,
            written: 0,
            buf: vec![0; 1 << 20],
            start_writeback: false,
            write_threads: WriteThreads::Fixed(1),
            objects: None,
            writers: Writers::inline(Settings {
                chown: false,
                start_writeback: false,
            }),
        }
    }

    /// Extracts every entry of the tar stream `tar` and hands the stream
    /// back: the caller drains what follows the end-of-archive marker (it
    /// still counts toward the diff_id).
    pub fn unpack<R: Read>(&mut self, tar: R) -> Result<R, UnpackError> {
        self.writers = Writers::spawn(
            self.write_threads,
            Settings {
                chown: self.chown,
                start_writeback: self.start_writeback,
            },
        );
        match self.unpack_entries(tar) {
            Ok(rest) => self.writers.finish().map(|()| rest),
            Err(e) => Err(self.writers.first_error(self.entries, e)),
        }
    }

    fn unpack_entries<R: Read>(&mut self, tar: R) -> Result<R, UnpackError> {
        let budget = Rc::new(HeaderBudget::default());
        let mut archive = tar::Archive::new(Budgeted {
            inner: tar,
            budget: budget.clone(),
        });
        let mut entries = archive.entries().map_err(UnpackError::Tar)?;
        loop {
            // The parser reads one entry's header, PAX records and GNU long
            // names into memory whole, whatever size they claim: bound what
            // it may read until it hands the entry over.
            budget.open(self.limits.max_header_bytes);
            let next = entries.next();
            budget.close();
            if budget.tripped.get() {
                return Err(UnpackError::Limit {
                    what: "tar metadata bytes of one entry (header, PAX records, GNU long names)",
                    value: self.limits.max_header_bytes + 1,
                    max: self.limits.max_header_bytes,
                    hint: "raise --max-header-bytes",
                });
            }
            let Some(entry) = next else { break };
            self.writers.check()?;
            let mut entry = entry.map_err(UnpackError::Tar)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(UnpackError::Limit {
                    what: "entries per layer",
                    value: self.entries,
                    max: self.limits.max_entries,
                    hint: "raise --max-entries",
                });
            }
            let header = self.read_header(&mut entry)?;
            self.apply(header, &mut entry)?;
            // Content nobody read (a directory or link entry that claims a
            // size) is skipped now, outside the header budget.
            io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Tar)?;
            if self.entries == 2 {
                exploder_common::failpoint::hit("ingest.mid-extract");
            }
            exploder_common::failpoint::hit("ingest.entry");
        }
        Ok(archive.into_inner().inner)
    }

    pub fn finish(self) -> (LayerIndex, u64) {
        (self.index, self.entries)
    }

    fn read_header<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Header, UnpackError> {
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        for p in std::iter::once(&path).chain(link.as_ref()) {
            if p.len() > self.limits.max_path_len {
                return Err(UnpackError::Limit {
                    what: "path length",
                    value: p.len() as u64,
                    max: self.limits.max_path_len as u64,
                    hint: "raise --max-path-len",
                });
            }
            if p.contains(&0) {
                return Err(hostile(&path, "NUL byte in a path"));
            }
        }
        let h = entry.header();
        let bad = |what: &str, e: io::Error| hostile(&path, &format!("bad {what} field: {e}"));
        let mut meta = Meta {
            mode: h.mode().map_err(|e| bad("mode", e))? & 0o7777,
            uid: h.uid().map_err(|e| bad("uid", e))? as u32,
            gid: h.gid().map_err(|e| bad("gid", e))? as u32,
            mtime_sec: h.mtime().map_err(|e| bad("mtime", e))? as i64,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        let kind = h.entry_type();
        let device = if matches!(kind, EntryType::Char | EntryType::Block) {
            (
                h.device_major().map_err(|e| bad("device", e))?.unwrap_or(0),
                h.device_minor().map_err(|e| bad("device", e))?.unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        // PAX records override the ustar fields: sub-second mtimes, ids
        // above 2^21, and xattrs (SCHILY.xattr.*, as GNU tar and Go write).
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Tar)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::Tar)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                match key {
                    b"mtime" => {
                        if let Some((s, ns)) = parse_pax_time(value) {
                            meta.mtime_sec = s;
                            meta.mtime_nsec = ns;
                        }
                    }
                    b"uid" => {
                        meta.uid =
                            parse_pax_id(value).ok_or_else(|| hostile(&path, "bad PAX uid"))?
                    }
                    b"gid" => {
                        meta.gid =
                            parse_pax_id(value).ok_or_else(|| hostile(&path, "bad PAX gid"))?
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                            && xattr_allowed(name)
                        {
                            meta.xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(Header {
            path,
            kind,
            link,
            meta,
            device,
        })
    }

    fn apply<R: Read>(&mut self, h: Header, content: &mut R) -> Result<(), UnpackError> {
        let path = h.path.clone();
        let io_err = |source: io::Error| UnpackError::Io {
            path: lossy(&path),
            source,
        };
        if escapes_root(&h.path) {
            return Err(hostile(&h.path, "path climbs above the root with '..'"));
        }
        let name = h
            .path
            .rsplit(|b| *b == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"");
        // Whiteouts first: they are instructions, not files.
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.record_whiteout(&h.path, name, target);
        }
        let writers = &mut self.writers;
        let resolved = match self
            .tree
            .resolve_waiting(&h.path, true, &mut |p| writers.wait_for(p))
            .map_err(io_err)?
        {
            Target::Root => {
                // `./` describes the rootfs directory itself. Anything but a
                // directory there would replace the root (CVE-2021-29136).
                if h.kind != EntryType::Directory {
                    return Err(hostile(&h.path, "a non-directory entry for the root"));
                }
                self.index.entries.insert(
                    Vec::new(),
                    Entry {
                        kind: Kind::Dir,
                        meta: h.meta,
                        seq: self.entries,
                    },
                );
                return Ok(());
            }
            Target::Entry(r) => r,
        };
        let is_dir = h.kind == EntryType::Directory;
        // An earlier entry at this path may still be in a writer's hands.
        self.writers.wait_for(&resolved.physical);
        // Replace what is there unless both are directories. Never write
        // through an earlier entry: the old one is removed, not opened.
        match rustix::fs::statat(
            &*resolved.parent,
            resolved.name.as_slice(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if is_dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                // What is below it may still be in flight: let it land.
                self.writers.drain();
                remove_all_at(resolved.parent.as_fd(), &resolved.name).map_err(io_err)?;
                self.index.remove_tree(&resolved.physical);
                self.tree.invalidate();
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err(e.into())),
        }
        // The index follows the tree: a directory over a directory keeps
        // its recorded children; anything else (including a device, which
        // the tree never holds) replaces the old record and what was below.
        let dir_over_dir = is_dir
            && matches!(
                self.index.entries.get(&resolved.physical),
                None | Some(Entry {
                    kind: Kind::Dir,
                    ..
                })
            );
        if !dir_over_dir {
            self.index.remove_tree(&resolved.physical);
        }
        let kind = match h.kind {
            EntryType::Directory => {
                match rustix::fs::mkdirat(
                    &*resolved.parent,
                    resolved.name.as_slice(),
                    Mode::from_raw_mode(0o755),
                ) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(e.into())),
                }
                Kind::Dir
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(&h, &resolved, content)?;
                Kind::File
            }
            EntryType::Symlink => {
                let target = h.link.clone().unwrap_or_default();
                if target.is_empty() {
                    return Err(hostile(&h.path, "symlink with an empty target"));
                }
                let op = Op::Symlink {
                    target: target.clone(),
                    meta: h.meta.clone(),
                };
                self.submit(&h, &resolved, op, None)?;
                Kind::Symlink(target)
            }
            EntryType::Link => return self.hardlink(&h, &resolved),
            EntryType::Fifo => {
                let op = Op::Fifo {
                    meta: h.meta.clone(),
                };
                self.submit(&h, &resolved, op, None)?;
                Kind::Fifo
            }
            // Devices are recorded, never created in the layer store: a block
            // device in a served tree is a hole into the host.
            EntryType::Char => Kind::CharDevice {
                major: h.device.0,
                minor: h.device.1,
            },
            EntryType::Block => Kind::BlockDevice {
                major: h.device.0,
                minor: h.device.1,
            },
            other => {
                return Err(hostile(
                    &h.path,
                    &format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        // A directory entry over this layer's own directory only changes
        // metadata (applied at the end of finalize anyway): it keeps the
        // position where the directory came to be, so that what the layer
        // wrote into it in between lands in it at finalize too, not in
        // whatever a lower layer had at that path.
        let seq = match self.index.entries.get(&resolved.physical) {
            Some(Entry {
                kind: Kind::Dir,
                seq,
                ..
            }) if dir_over_dir => *seq,
            _ => self.entries,
        };
        let entry = Entry {
            kind,
            meta: h.meta,
            seq,
        };
        self.index.entries.insert(resolved.physical, entry);
        Ok(())
    }

    /// `.wh.<name>` hides `<name>` of lower layers; `.wh..wh..opq` hides
    /// every lower child of its directory. Neither touches this layer's
    /// tree: a whiteout never removes what this same layer wrote, whichever
    /// comes first in the tar.
    fn record_whiteout(
        &mut self,
        path: &[u8],
        marker: &[u8],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let dir_len = path.len() - path.iter().rev().position(|b| *b != b'/').unwrap_or(0);
        let dir = &path[..dir_len - marker.len()];
        let io_err = |source: io::Error| UnpackError::Io {
            path: lossy(path),
            source,
        };
        let writers = &mut self.writers;
        let mut wait_for = |p: &[u8]| writers.wait_for(p);
        if marker == OPAQUE {
            let (_, physical_dir) = self
                .tree
                .resolve_dir_waiting(dir, true, &mut wait_for)
                .map_err(io_err)?;
            self.index
                .opaques
                .entry(physical_dir)
                .or_insert(self.entries);
            return Ok(());
        }
        // `.wh.`, `.wh..` and `.wh...` would name the directory itself, its
        // parent, or nothing: refuse them.
        if target.is_empty() || target == b"." || target == b".." || target == b"..." {
            return Err(hostile(path, "whiteout of '', '.' or '..'"));
        }
        let mut whited = dir.to_vec();
        whited.extend_from_slice(target);
        match self.tree.resolve_waiting(&whited, true, &mut wait_for) {
            Ok(Target::Entry(r)) => {
                self.index
                    .whiteouts
                    .entry(r.physical)
                    .or_insert(self.entries);
            }
            Ok(Target::Root) => return Err(hostile(path, "whiteout of the root")),
            // Under a path this layer made a non-directory: nothing of a
            // lower layer can be there (umoci accepts it too).
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {}
            Err(e) => return Err(io_err(e)),
        }
        Ok(())
    }

    /// A hardlink to an earlier entry of this layer is made in the tree; one
    /// to a path this layer does not have is recorded for finalize, where
    /// the lower layers are present (and missing there is an error).
    fn hardlink(&mut self, h: &Header, at: &Resolved) -> Result<(), UnpackError> {
        let io_err = |source: io::Error| UnpackError::Io {
            path: lossy(&h.path),
            source,
        };
        let target = h.link.clone().unwrap_or_default();
        if target.is_empty() || escapes_root(&target) {
            return Err(hostile(
                &h.path,
                "hardlink target is empty or outside the root",
            ));
        }
        let writers = &mut self.writers;
        let t = match self
            .tree
            .resolve_waiting(&target, false, &mut |p| writers.wait_for(p))
        {
            Ok(Target::Entry(t)) => t,
            Ok(Target::Root) => return Err(hostile(&h.path, "hardlink to the root directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.record_lower_hardlink(h, at, target);
            }
            Err(e) => return Err(io_err(e)),
        };
        let existing = self.index.entries.get(&t.physical).cloned();
        match existing {
            Some(Entry {
                kind: Kind::Dir, ..
            }) => Err(hostile(&h.path, "hardlink to a directory")),
            Some(Entry {
                kind:
                    kind @ (Kind::CharDevice { .. } | Kind::BlockDevice { .. } | Kind::HardlinkLower(_)),
                meta,
                ..
            }) => {
                // Not in the tree: repeat the record (a lower hardlink's
                // target, or the device numbers) at the new path.
                let entry = Entry {
                    kind,
                    meta,
                    seq: self.entries,
                };
                self.index.entries.insert(at.physical.clone(), entry);
                Ok(())
            }
            Some(entry) => {
                let op = Op::Hardlink {
                    parent: t.parent.clone(),
                    name: t.name.clone(),
                };
                // After the job that creates the target, if it is still
                // queued.
                self.submit(h, at, op, Some(&t.physical))?;
                let entry = Entry {
                    seq: self.entries,
                    ..entry
                };
                self.index.entries.insert(at.physical.clone(), entry);
                Ok(())
            }
            None => self.record_lower_hardlink(h, at, target),
        }
    }

    fn record_lower_hardlink(
        &mut self,
        h: &Header,
        at: &Resolved,
        target: Vec<u8>,
    ) -> Result<(), UnpackError> {
        self.index.entries.insert(
            at.physical.clone(),
            Entry {
                kind: Kind::HardlinkLower(target),
                meta: h.meta.clone(),
                seq: self.entries,
            },
        );
        Ok(())
    }

    /// Hands `op` (creating `at`) to the writers.
    fn submit(
        &mut self,
        h: &Header,
        at: &Resolved,
        op: Op,
        after: Option<&[u8]>,
    ) -> Result<(), UnpackError> {
        let job = Job {
            seq: self.entries,
            path: h.path.clone(),
            parent: at.parent.clone(),
            name: at.name.clone(),
            op,
        };
        self.writers.submit(at.physical.clone(), job, after)
    }

    /// A small file goes to a writer with its content; a large one is
    /// written here, streamed.
    fn write_file<R: Read>(
        &mut self,
        h: &Header,
        at: &Resolved,
        content: &mut R,
    ) -> Result<(), UnpackError> {
        let io_err = |source: io::Error| UnpackError::Io {
            path: lossy(&h.path),
            source,
        };
        let mut head = Vec::new();
        content
            .by_ref()
            .take(writers::SMALL_FILE as u64 + 1)
            .read_to_end(&mut head)
            .map_err(io_err)?;
        self.count_written(head.len()).map_err(io_err)?;
        if head.len() <= writers::SMALL_FILE {
            let op = Op::File {
                content: head,
                meta: h.meta.clone(),
                objects: self.objects.clone(),
            };
            return self.submit(h, at, op, None);
        }
        (|| {
            let mut file = writers::create_file(at.parent.as_fd(), &at.name)?;
            // The content's digest for its object, in the same pass as
            // the write.
            let mut hash = self.objects.as_ref().map(|_| Sha256::new());
            let mut len = head.len() as u64;
            file.write_all(&head)?;
            if let Some(hasher) = &mut hash {
                hasher.update(&head);
            }
            drop(head);
            loop {
                let n = match content.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                self.count_written(n)?;
                file.write_all(&self.buf[..n])?;
                if let Some(hasher) = &mut hash {
                    hasher.update(&self.buf[..n]);
                }
                len += n as u64;
            }
            writers::finish_file(&file, &h.meta, self.writers.settings())?;
            drop(file);
            if let (Some(objects), Some(hash)) = (&self.objects, hash) {
                let claim = objects.claim(&hash.finalize().into(), &h.meta);
                objects.share_written(claim, at.parent.as_fd(), &at.name, len)?;
            }
            Ok(())
        })()
        .map_err(io_err)
    }

    /// Counts file bytes written. Sparse entries expand beyond the tar
    /// stream's size: what is written counts, not only what is read.
    fn count_written(&mut self, n: usize) -> io::Result<()> {
        self.written += n as u64;
        if self.written > self.limits.max_layer_bytes {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "the layer writes more than the {} byte limit (sparse files count at their full size); raise --max-layer-bytes",
                    self.limits.max_layer_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Applies metadata to a special file held by an `O_PATH` fd: fchmod and
/// friends refuse `O_PATH` fds, so go through `/proc/self/fd`, which names
/// exactly this inode (no path lookup that could be redirected).
pub(crate) fn apply_via_proc(
    meta: &Meta,
    fd: std::os::fd::BorrowedFd<'_>,
    chown: bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if chown {
        rustix::fs::chownat(
            fd,
            "",
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::EMPTY_PATH,
        )?;
    }
    rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(meta.mode & 0o7777))?;
    for (name, value) in &meta.xattrs {
        match rustix::fs::setxattr(
            proc.as_str(),
            name.as_slice(),
            value,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime_sec,
        tv_nsec: meta.mtime_nsec as _,
    };
    rustix::fs::utimensat(
        fd,
        "",
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::EMPTY_PATH,
    )?;
    Ok(())
}

/// How many bytes the tar parser may still read while it assembles an
/// entry; unlimited outside [`HeaderBudget::open`]..[`HeaderBudget::close`].
#[derive(Default)]
struct HeaderBudget {
    left: Cell<Option<u64>>,
    tripped: Cell<bool>,
}

impl HeaderBudget {
    fn open(&self, max: u64) {
        self.left.set(Some(max));
    }

    fn close(&self) {
        self.left.set(None);
    }
}

/// The layer's tar stream as the parser sees it: reads fail once the
/// budget is spent, before the parser can buffer more.
struct Budgeted<R> {
    inner: R,
    budget: Rc<HeaderBudget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 && !buf.is_empty() {
            self.budget.tripped.set(true);
            return Err(io::Error::other("tar metadata of one entry over its limit"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.left.set(Some(left - n as u64));
        Ok(n)
    }
}

fn hostile(path: &[u8], reason: &str) -> UnpackError {
    UnpackError::Hostile {
        path: lossy(path),
        reason: reason.to_string(),
    }
}

/// Whether `path`, read lexically, climbs above where it starts.
pub(crate) fn escapes_root(path: &[u8]) -> bool {
    let mut depth: i64 = 0;
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// `1700000000.123456789` → (seconds, nanoseconds). Negative times are
/// taken as they are (pre-1970 mtimes exist in the wild).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if s.starts_with('-') && nsec > 0 {
        Some((secs - 1, 1_000_000_000 - nsec))
    } else {
        Some((secs, nsec))
    }
}

fn parse_pax_id(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_escape_is_detected() {
        assert!(escapes_root(b"../x"));
        assert!(escapes_root(b"a/../../x"));
        assert!(!escapes_root(b"a/../x"));
        assert!(!escapes_root(b"/etc/x"));
    }

    #[test]
    fn pax_time_keeps_nanoseconds() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
    }
}
