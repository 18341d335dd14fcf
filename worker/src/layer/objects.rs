//! The ingest's side of file objects (see
//! [`exploder_common::store::objects`] for the layout, the key and the
//! rules).
//!
//! One [`LayerObjects`] per layer ingest. For each regular file it is told
//! the content's sha256 and the metadata the file gets ([`claim`]); before
//! the file is written it says whether the file can be a link of an object
//! already in the store ([`place`]: then nothing is written), and once the
//! file is written, complete and with its final metadata, it makes the file
//! the key's object when the store has none that can serve ([`adopt`]).
//! The n-th path of the layer with a key (from 0) shares the key's copy
//! n, another inode of the same content and metadata, so the layer has no
//! hardlink its tar did not make, and a rebuild's duplicates are shared
//! with the last version's.
//!
//! Sharing only ever saves space: an error of the objects directory that
//! is not the machine's trouble (out of space, an I/O error) leaves the
//! file the layer's own instead of failing the layer.
//!
//! [`claim`]: LayerObjects::claim
//! [`place`]: LayerObjects::place
//! [`adopt`]: LayerObjects::adopt

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use exploder_common::store::StoreLayout;
use exploder_common::store::file as store_file;
use exploder_common::store::objects::{LINK_CAP, MAX_COPIES, ObjectKey, ObjectMeta};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::meta::Meta;

/// What to do with one regular file of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// More paths of this layer have the key than it may have copies
    /// ([`MAX_COPIES`]): the file is the layer's own.
    Own,
    /// The object this path may be a link of, or become: for the layer's
    /// n-th path with a key, the key's copy n.
    Object(ObjectKey),
}

/// What [`LayerObjects::place`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// The file is a link of the stored object: write nothing.
    Linked,
    /// Write the file, then hand this to [`LayerObjects::adopt`].
    Write(Adopt),
}

/// What becomes of a file the ingest wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopt {
    /// It stays the layer's own.
    No,
    /// It becomes the key's object (the store has none).
    Create(ObjectKey),
    /// It replaces the key's object, which can take no more links (ext4's
    /// limit) or is damaged (its size is not its content's: data a crash
    /// lost). What links the old one keeps it.
    Replace(ObjectKey),
}

/// The state of a key's object in the store.
enum Stored {
    Absent,
    Usable,
    /// Full or damaged: see [`Adopt::Replace`].
    Unusable,
    /// Not readable here: the file stays the layer's own.
    Unknown,
}

pub struct LayerObjects {
    /// `<store>/objects`.
    store: OwnedFd,
    /// The ingest's staging directory: a replacing object is linked there
    /// under a temporary name, then renamed over the old one.
    staging: OwnedFd,
    /// Keys paths of this layer claimed, and how many paths each.
    used: Mutex<HashMap<ObjectKey, u32>>,
    /// Whether the ingest sets owners (root); if not, the owner files get.
    chown: bool,
    own: (u32, u32),
    /// Whether this ingest makes new objects (not when it skips flushing:
    /// only a flushed store's files are safe to share).
    create: bool,
    files: AtomicU64,
    bytes: AtomicU64,
    created: AtomicU64,
}

impl LayerObjects {
    /// Opens the store's objects directory (creating it: a store from
    /// before objects gains it here). `chown`: whether files get the
    /// entries' owners; `create`: whether this ingest makes new objects.
    pub fn open(
        objects_dir: &Path,
        staging: &Path,
        chown: bool,
        create: bool,
    ) -> io::Result<LayerObjects> {
        std::fs::create_dir_all(objects_dir)?;
        let open = |p: &Path| -> io::Result<OwnedFd> {
            Ok(rustix::fs::open(
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        };
        Ok(LayerObjects {
            store: open(objects_dir)?,
            staging: open(staging)?,
            used: Mutex::new(HashMap::new()),
            chown,
            own: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            create,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            created: AtomicU64::new(0),
        })
    }

    /// The claim of a file with this content digest and metadata.
    pub fn claim(&self, content_sha256: &[u8; 32], meta: &Meta) -> Claim {
        let (uid, gid) = if self.chown {
            (meta.uid, meta.gid)
        } else {
            self.own
        };
        let key = ObjectKey::of(
            content_sha256,
            &ObjectMeta {
                owners_applied: self.chown,
                uid,
                gid,
                mode: meta.mode,
                mtime_sec: meta.mtime_sec,
                mtime_nsec: meta.mtime_nsec,
                xattrs: &meta.xattrs,
            },
        );
        let mut used = self.used.lock().expect("poisoned");
        let paths = used.entry(key).or_insert(0);
        let copy = *paths;
        *paths = paths.saturating_add(1);
        if copy < MAX_COPIES {
            Claim::Object(key.copy(copy))
        } else {
            Claim::Own
        }
    }

    /// The claim of a file whose whole content is at hand.
    pub fn claim_content(&self, content: &[u8], meta: &Meta) -> Claim {
        self.claim(&Sha256::digest(content).into(), meta)
    }

    // nlink_t is u32 on some targets.
    #[allow(clippy::unnecessary_cast)]
    fn stored(&self, key: &ObjectKey, len: u64) -> io::Result<Stored> {
        match rustix::fs::statat(
            &self.store,
            key.rel_path().as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if st.st_size as u64 != len || st.st_nlink as u64 >= LINK_CAP => {
                Ok(Stored::Unusable)
            }
            Ok(_) => Ok(Stored::Usable),
            Err(Errno::NOENT) => Ok(Stored::Absent),
            Err(e) => unshared(e).map(|()| Stored::Unknown),
        }
    }

    /// Before a file of `len` bytes is written at `name` in `parent`
    /// (where nothing is): makes it a link of the stored object when there
    /// is one that can serve.
    pub fn place(
        &self,
        claim: Claim,
        parent: BorrowedFd<'_>,
        name: &[u8],
        len: u64,
    ) -> io::Result<Placed> {
        let Claim::Object(key) = claim else {
            return Ok(Placed::Write(Adopt::No));
        };
        match self.stored(&key, len)? {
            Stored::Absent => return Ok(Placed::Write(Adopt::Create(key))),
            Stored::Unusable => return Ok(Placed::Write(Adopt::Replace(key))),
            Stored::Unknown => return Ok(Placed::Write(Adopt::No)),
            Stored::Usable => {}
        }
        match rustix::fs::linkat(
            &self.store,
            key.rel_path().as_str(),
            parent,
            name,
            AtFlags::empty(),
        ) {
            Ok(()) => {
                self.count(len);
                Ok(Placed::Linked)
            }
            // gc reclaimed it since.
            Err(Errno::NOENT) => Ok(Placed::Write(Adopt::Create(key))),
            Err(Errno::MLINK) => Ok(Placed::Write(Adopt::Replace(key))),
            Err(e) => unshared(e).map(|()| Placed::Write(Adopt::No)),
        }
    }

    /// After a file was written at `name` in `parent` (complete, with its
    /// final metadata): makes it the key's object as `adopt` says. Best
    /// effort: a file not adopted is only not shared.
    pub fn adopt(&self, adopt: Adopt, parent: BorrowedFd<'_>, name: &[u8]) {
        if !self.create {
            return;
        }
        let done = match adopt {
            Adopt::No => return,
            Adopt::Create(key) => self.create(&key, parent, name),
            Adopt::Replace(key) => self.replace(&key, parent, name),
        };
        match done {
            Ok(true) => {
                self.created.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("not shared as a file object: {e}"),
        }
    }

    /// One link, no replacing: of two ingests of the same new content at
    /// once (on two hosts), one makes the object, the other keeps its own
    /// copy (`EEXIST`). A link is atomic on every file system, NFS
    /// included, where `RENAME_NOREPLACE` is not.
    fn create(&self, key: &ObjectKey, parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
        let rel = key.rel_path();
        match self.under_prefix(&rel, || {
            rustix::fs::linkat(parent, name, &self.store, rel.as_str(), AtFlags::empty())
        }) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A link under a temporary name in the staging directory, renamed
    /// over the unusable object.
    fn replace(&self, key: &ObjectKey, parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
        let tmp = format!("object-{}", key.name());
        rustix::fs::linkat(parent, name, &self.staging, tmp.as_str(), AtFlags::empty())?;
        let rel = key.rel_path();
        match self.under_prefix(&rel, || {
            rustix::fs::renameat(&self.staging, tmp.as_str(), &self.store, rel.as_str())
        }) {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.staging, tmp.as_str(), AtFlags::empty());
                Err(e.into())
            }
        }
    }

    /// Runs `put` (which creates `rel` in the objects directory), making
    /// the prefix directory and trying once more if it is missing (the
    /// first object under that prefix).
    fn under_prefix(&self, rel: &str, put: impl Fn() -> Result<(), Errno>) -> Result<(), Errno> {
        match put() {
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&self.store, &rel[..2], Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => put(),
                    Err(e) => Err(e),
                }
            }
            done => done,
        }
    }

    /// A large file the ingest already wrote at `name` in `parent` (hashed
    /// as it was written): replaced by a link of the stored object (linked
    /// under a temporary name and renamed over it, so the tree never misses
    /// the file), or adopted.
    pub fn share_written(
        &self,
        claim: Claim,
        parent: BorrowedFd<'_>,
        name: &[u8],
        len: u64,
    ) -> io::Result<()> {
        let Claim::Object(key) = claim else {
            return Ok(());
        };
        let adopt = match self.stored(&key, len)? {
            Stored::Absent => Adopt::Create(key),
            Stored::Unusable => Adopt::Replace(key),
            Stored::Unknown => Adopt::No,
            Stored::Usable => {
                let mut tmp = b".exploder-object.".to_vec();
                tmp.extend_from_slice(key.name().as_bytes());
                match rustix::fs::linkat(
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
                    Err(Errno::NOENT) => Adopt::Create(key),
                    Err(Errno::MLINK) => Adopt::Replace(key),
                    // EEXIST: the layer has an entry of that name itself (a
                    // crafted one); the file stays the layer's own.
                    Err(e) => return unshared(e),
                }
            }
        };
        self.adopt(adopt, parent, name);
        Ok(())
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

    /// Objects this layer's files became.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }
}

/// An error of the objects directory: the machine's trouble fails the
/// layer (it would fail the next write anyway); anything else (a file
/// system without hardlinks, another owner's object under
/// `fs.protected_hardlinks`, an object gone stale on NFS) only leaves the
/// file unshared.
fn unshared(e: Errno) -> io::Result<()> {
    let e = io::Error::from(e);
    if super::io_is_transient(&e) {
        Err(e)
    } else {
        tracing::debug!("not shared as a file object: {e}");
        Ok(())
    }
}

/// What the store's file objects hold and saved, for `inspect` and
/// `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Objects in `<store>/objects/`.
    pub objects: u64,
    /// Files of the store's layers that are links of an object some
    /// earlier layer made, and their bytes: the space the objects saved
    /// (from each layer's `layer.json`; a layer gc removed takes its count
    /// with it).
    pub shared_files: u64,
    pub saved_bytes: u64,
}

/// Counts the objects (names only: no file is opened) and sums what each
/// layer recorded it shared. Linear in objects and layers.
pub fn summary(layout: &StoreLayout) -> io::Result<Summary> {
    let mut s = Summary::default();
    let objects_dir = layout.objects_dir();
    match std::fs::read_dir(&objects_dir) {
        Ok(subs) => {
            for sub in subs {
                let sub = sub?;
                if sub.file_name().len() == 2 && sub.file_type()?.is_dir() {
                    s.objects += std::fs::read_dir(sub.path())?.count() as u64;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let layers = layout.root().join("layers/sha256");
    let entries = match std::fs::read_dir(&layers) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(s),
        Err(e) => return Err(e),
    };
    for layer in entries {
        let json = layer?.path().join("layer.json");
        // A layer being gc'd, or damaged: it saved nothing countable.
        let Ok(bytes) = store_file::read(&json, store_file::Kind::Record) else {
            continue;
        };
        if let Ok(info) = serde_json::from_slice::<super::LayerInfo>(&bytes) {
            s.shared_files += info.shared_files;
            s.saved_bytes += info.shared_bytes;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        objects: std::path::PathBuf,
        tree: std::path::PathBuf,
        layer: LayerObjects,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        let staging = dir.path().join("staging");
        let tree = staging.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let layer = LayerObjects::open(&objects, &staging, false, true).unwrap();
        Fixture {
            _dir: dir,
            objects,
            tree,
            layer,
        }
    }

    fn meta() -> Meta {
        Meta {
            mode: 0o644,
            ..Meta::default()
        }
    }

    /// Writes `content` at `name` in the tree as the writers do: placed
    /// from an object, or written and adopted.
    fn ingest(f: &Fixture, layer: &LayerObjects, name: &str, content: &[u8]) -> Placed {
        let parent =
            rustix::fs::open(&f.tree, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let claim = layer.claim_content(content, &meta());
        let placed = layer
            .place(claim, parent.as_fd(), name.as_bytes(), content.len() as u64)
            .unwrap();
        if let Placed::Write(adopt) = placed {
            let path = f.tree.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
            layer.adopt(adopt, parent.as_fd(), name.as_bytes());
        }
        placed
    }

    fn object_of(f: &Fixture, layer: &LayerObjects, content: &[u8]) -> std::path::PathBuf {
        let Claim::Object(key) = layer.claim_content(content, &meta()) else {
            panic!("no object");
        };
        f.objects.join(key.rel_path())
    }

    #[test]
    fn a_second_path_of_one_layer_with_the_same_key_gets_the_keys_second_copy() {
        let f = fixture();
        let Placed::Write(Adopt::Create(first)) = ingest(&f, &f.layer, "a", b"same") else {
            panic!("the first path makes the object");
        };
        let Placed::Write(Adopt::Create(second)) = ingest(&f, &f.layer, "b", b"same") else {
            panic!("the second path makes the second copy");
        };
        assert_eq!(second, first.copy(1));
        let ino = |n: &str| std::fs::metadata(f.tree.join(n)).unwrap().ino();
        assert_ne!(ino("a"), ino("b"));
        assert_eq!(f.layer.created(), 2);
        // The next version's two paths link the two copies.
        let staging = f.tree.parent().unwrap();
        let next = LayerObjects::open(&f.objects, staging, false, true).unwrap();
        assert_eq!(ingest(&f, &next, "c", b"same"), Placed::Linked);
        assert_eq!(ingest(&f, &next, "d", b"same"), Placed::Linked);
        assert_eq!((ino("c"), ino("d")), (ino("a"), ino("b")));
    }

    #[test]
    fn paths_of_one_key_beyond_the_copies_a_key_may_have_are_the_layers_own() {
        let f = fixture();
        for _ in 0..MAX_COPIES {
            assert!(matches!(
                f.layer.claim_content(b"x", &meta()),
                Claim::Object(_)
            ));
        }
        assert_eq!(f.layer.claim_content(b"x", &meta()), Claim::Own);
    }

    #[test]
    fn the_next_layer_links_the_object_and_writes_nothing() {
        let f = fixture();
        ingest(&f, &f.layer, "a", b"shared");
        let staging = f.tree.parent().unwrap();
        let next = LayerObjects::open(&f.objects, staging, false, true).unwrap();
        assert_eq!(ingest(&f, &next, "b", b"shared"), Placed::Linked);
        assert_eq!(next.shared(), (1, 6));
        let ino = |n: &str| std::fs::metadata(f.tree.join(n)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"));
    }

    #[test]
    fn an_object_of_the_wrong_size_is_replaced_not_linked() {
        let f = fixture();
        // What a power loss leaves of an object nothing flushed: short.
        let probe = LayerObjects::open(&f.objects, f.tree.parent().unwrap(), false, true).unwrap();
        let object = object_of(&f, &probe, b"whole content");
        std::fs::create_dir_all(object.parent().unwrap()).unwrap();
        std::fs::write(&object, b"whole").unwrap();
        assert!(matches!(
            ingest(&f, &f.layer, "a", b"whole content"),
            Placed::Write(Adopt::Replace(_))
        ));
        assert_eq!(std::fs::read(&object).unwrap(), b"whole content");
        assert_eq!(
            std::fs::metadata(&object).unwrap().ino(),
            std::fs::metadata(f.tree.join("a")).unwrap().ino()
        );
    }

    #[test]
    fn of_two_ingests_making_one_object_the_first_wins_and_the_other_keeps_its_copy() {
        let f = fixture();
        let staging = f.tree.parent().unwrap();
        let other = LayerObjects::open(&f.objects, staging, false, true).unwrap();
        // Both looked before either made it.
        let parent =
            rustix::fs::open(&f.tree, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut adopts = Vec::new();
        for (layer, name) in [(&f.layer, "a"), (&other, "b")] {
            let claim = layer.claim_content(b"new", &meta());
            let Placed::Write(adopt) = layer
                .place(claim, parent.as_fd(), name.as_bytes(), 3)
                .unwrap()
            else {
                panic!("nothing to link yet");
            };
            std::fs::write(f.tree.join(name), b"new").unwrap();
            adopts.push((layer, name, adopt));
        }
        for (layer, name, adopt) in adopts {
            layer.adopt(adopt, parent.as_fd(), name.as_bytes());
        }
        assert_eq!((f.layer.created(), other.created()), (1, 0));
        let object = object_of(
            &f,
            &LayerObjects::open(&f.objects, staging, false, true).unwrap(),
            b"new",
        );
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&object), ino(&f.tree.join("a")));
        assert_ne!(ino(&object), ino(&f.tree.join("b")));
    }

    #[test]
    fn an_ingest_that_does_not_flush_links_objects_but_makes_none() {
        let f = fixture();
        let staging = f.tree.parent().unwrap();
        let throwaway = LayerObjects::open(&f.objects, staging, false, false).unwrap();
        assert!(matches!(
            ingest(&f, &throwaway, "a", b"x"),
            Placed::Write(Adopt::Create(_))
        ));
        assert_eq!(throwaway.created(), 0);
        ingest(&f, &f.layer, "b", b"y");
        assert_eq!(ingest(&f, &throwaway, "c", b"y"), Placed::Linked);
    }
}
