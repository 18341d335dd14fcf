//! The ingest's side of file objects (see
//! [`exploder_common::store::objects`] for the layout and the rules).
//!
//! One [`LayerObjects`] per layer ingest. For each regular file it is told
//! the content's sha256 and the metadata the file gets; it answers whether
//! the file can be a hardlink of an object already in the store (then
//! nothing is written: [`LayerObjects::link_existing`]), and takes the
//! file the ingest wrote as a pending object otherwise
//! ([`LayerObjects::offer`]). The first path of the layer with a key may
//! share; any later one gets its own copy, so the layer tree has no
//! hardlink its tar did not make.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use exploder_common::store::objects::{self, ObjectKey, ObjectMeta, PENDING_DIR, Published};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::meta::Meta;

/// What to do with one regular file of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Another path of this layer has the key (or objects are off): the
    /// file is the layer's own and offered to no one.
    Own,
    /// The first path of this layer with `key`: it may be a link of the
    /// stored object, or become it.
    First(ObjectKey),
}

pub struct LayerObjects {
    /// `<store>/objects`.
    store: OwnedFd,
    store_path: PathBuf,
    /// `<staging>/pending`.
    pending: OwnedFd,
    pending_path: PathBuf,
    /// Keys some path of this layer claimed.
    used: Mutex<HashSet<ObjectKey>>,
    /// The owner files get when the ingest cannot chown.
    own: Option<(u32, u32)>,
    files: AtomicU64,
    bytes: AtomicU64,
}

impl LayerObjects {
    /// Opens the store's objects directory (creating it: a store from
    /// before objects gains it here) and the staging directory's
    /// `pending/`. `chown`: whether files get the entries' owners.
    pub fn open(objects_dir: &Path, staging: &Path, chown: bool) -> io::Result<LayerObjects> {
        std::fs::create_dir_all(objects_dir)?;
        let pending_path = staging.join(PENDING_DIR);
        std::fs::create_dir(&pending_path)?;
        let open = |p: &Path| -> io::Result<OwnedFd> {
            Ok(rustix::fs::open(
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        };
        Ok(LayerObjects {
            store: open(objects_dir)?,
            store_path: objects_dir.to_path_buf(),
            pending: open(&pending_path)?,
            pending_path,
            used: Mutex::new(HashSet::new()),
            own: (!chown).then(|| {
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                )
            }),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// The claim of a file with this content digest and metadata.
    pub fn claim(&self, content_sha256: &[u8; 32], meta: &Meta) -> Claim {
        let (uid, gid) = self.own.unwrap_or((meta.uid, meta.gid));
        let key = ObjectKey::of(
            content_sha256,
            &ObjectMeta {
                uid,
                gid,
                mode: meta.mode,
                mtime_sec: meta.mtime_sec,
                mtime_nsec: meta.mtime_nsec,
                xattrs: &meta.xattrs,
            },
        );
        if self.used.lock().expect("poisoned").insert(key) {
            Claim::First(key)
        } else {
            Claim::Own
        }
    }

    /// The claim of a file whose whole content is at hand.
    pub fn claim_content(&self, content: &[u8], meta: &Meta) -> Claim {
        self.claim(&Sha256::digest(content).into(), meta)
    }

    /// Makes `name` in `parent` a link of the stored object, if there is
    /// one that can take another link. `Ok(None)`: it is; write nothing.
    /// `Ok(Some(next))`: write the file, then [`offer`](Self::offer) it
    /// (as the key's next object if the stored one is full).
    pub fn link_existing(
        &self,
        claim: Claim,
        parent: BorrowedFd<'_>,
        name: &[u8],
        len: u64,
    ) -> io::Result<Option<bool>> {
        let Claim::First(key) = claim else {
            return Ok(Some(false));
        };
        match rustix::fs::linkat(
            &self.store,
            key.rel_path().as_str(),
            parent,
            name,
            AtFlags::empty(),
        ) {
            Ok(()) => {
                self.count(len);
                Ok(None)
            }
            Err(Errno::NOENT) => Ok(Some(false)),
            Err(Errno::MLINK) => Ok(Some(true)),
            // Not ours to link (fs.protected_hardlinks and another
            // owner), or elsewhere: this layer keeps its own copy.
            Err(Errno::PERM | Errno::ACCESS | Errno::XDEV) => Ok(Some(false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the file the ingest already wrote at `name` in `parent`
    /// (a large file, hashed as it was written) by a link of the stored
    /// object, or offers it. The tree never misses the file: the link is
    /// made under a temporary name and renamed over it.
    pub fn share_written(
        &self,
        claim: Claim,
        parent: BorrowedFd<'_>,
        name: &[u8],
        len: u64,
    ) -> io::Result<()> {
        let Claim::First(key) = claim else {
            return Ok(());
        };
        let mut tmp = b".exploder-object.".to_vec();
        tmp.extend_from_slice(key.hex().as_bytes());
        let next = match rustix::fs::linkat(
            &self.store,
            key.rel_path().as_str(),
            parent,
            tmp.as_slice(),
            AtFlags::empty(),
        ) {
            Ok(()) => {
                rustix::fs::renameat(parent, tmp.as_slice(), parent, name)?;
                self.count(len);
                return Ok(());
            }
            Err(Errno::NOENT) => false,
            Err(Errno::MLINK) => true,
            Err(Errno::PERM | Errno::ACCESS | Errno::XDEV) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.offer(claim, next, parent, name);
        Ok(())
    }

    /// Offers the file the ingest wrote (complete, with its final
    /// metadata) as the key's object, to be published with the layer.
    /// Best effort: a file not offered is only not shared.
    pub fn offer(&self, claim: Claim, next: bool, parent: BorrowedFd<'_>, name: &[u8]) {
        let Claim::First(key) = claim else {
            return;
        };
        if let Err(e) = rustix::fs::linkat(
            parent,
            name,
            self.pending.as_fd(),
            key.pending_name(next).as_str(),
            AtFlags::empty(),
        ) {
            tracing::debug!("offering object {}: {e}", key.hex());
        }
    }

    fn count(&self, len: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Files that are links of objects already in the store, and their
    /// bytes: what the layer did not write.
    pub fn shared(&self) -> (u64, u64) {
        (
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Moves the offered objects into the store. Only once the staging
    /// tree is flushed (see [`objects::publish`]).
    pub fn publish(&self) -> io::Result<Published> {
        objects::publish(&self.pending_path, &self.store_path)
    }
}

impl std::fmt::Debug for LayerObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerObjects")
            .field("store", &self.store_path)
            .field("pending", &self.pending_path)
            .finish_non_exhaustive()
    }
}
