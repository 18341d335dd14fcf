//! File objects: each regular file's content stored once across every
//! layer and image (issue 28).
//!
//! ```text
//! objects/<first 2 hex of the key>/<key hex>       one inode, hardlinked into layers
//! objects/<first 2 hex of the key>/<key hex>.<n>   the key's copy n (n >= 1), see below
//! ```
//!
//! A layer's regular file is a hardlink of its object, and an image's
//! rootfs a hardlink of the layer's file, so one inode serves every
//! layer and image that holds the same file. A hardlink shares more than
//! content: owner, mode, times and xattrs are the inode's. So an object is
//! keyed by the content *and* that metadata ([`ObjectKey::of`]): two files
//! with the same bytes but another mtime are two objects.
//!
//! The rules, each owned where it is applied:
//!
//! - **Whole before visible.** An ingest links a file into `objects/` only
//!   once it is complete and has its final metadata, with one `linkat`
//!   that never replaces: of two workers on two hosts ingesting the same
//!   new content at once, one makes the object, the other keeps its own
//!   copy; both layers are right, and no lock is needed. A layer that
//!   links an object is flushed (`syncfs`, the whole file system, the
//!   object's data included) before it is published, so a published layer
//!   never holds an object a crash could empty. An object whose maker died
//!   before flushing may come back from a crash short (ext4, XFS: the size
//!   is written after the data); an ingest links an object only if its
//!   size is its content's, and replaces it otherwise.
//! - **The link limit.** ext4 allows 65,000 links to an inode. An object
//!   with [`LINK_CAP`] links counts as full: the next ingest keeps its own
//!   copy and renames it over the full object, which stays shared by what
//!   already links it. The margin is left for a layer's own hardlinks to a
//!   file it shares, and finalize copies a file whose inode is that full.
//! - **Trees stay exact.** Within one layer (the ingest) and within one
//!   rootfs (finalize), two paths share an inode only when the image
//!   hardlinks them: the n-th path of a layer with a key (counting from
//!   0) is a link of the key's copy n, another inode with the same
//!   content and metadata, and finalize copies a file whose inode another
//!   layer of the same image already put into the rootfs. Copies are
//!   objects like the first, so a rebuild's duplicates (a copyright file
//!   several packages of one source install) are shared with the last
//!   version's, each with its own copy.
//! - **gc** reclaims an object nothing else links (link count 1; see
//!   `exploder-worker`'s gc).
//!
//! A store written before objects keeps working: its layers keep their
//! own inodes, and new layers gain objects as they arrive.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

/// The directory under the store root.
pub const OBJECTS_DIR: &str = "objects";

/// Links an object may have before it counts as full (ext4 allows
/// 65,000): see the module documentation.
pub const LINK_CAP: u64 = 60_000;

/// What an object's inode carries besides its content, as the ingest
/// applies it (see [`ObjectKey::of`]).
pub struct ObjectMeta<'a> {
    /// Whether the ingest set the owners (it runs as root). A store
    /// shared by root and non-root workers keeps their files apart: the
    /// same declared metadata gives other inodes (a capability an
    /// unprivileged process cannot set, setgid cleared by the kernel).
    pub owners_applied: bool,
    /// The owner the inode has: the entry's when the ingest can chown,
    /// else the ingesting process's.
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// The xattrs the ingest sets, in any order.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Copies one key may have (see the module documentation); a layer with
/// more paths of one key gives the rest their own inodes.
pub const MAX_COPIES: u32 = 1024;

/// The name of an object: sha256 over a version tag, the content's
/// sha256, and the metadata a hardlink shares; and which copy of that
/// key it is (0: the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    digest: [u8; 32],
    copy: u32,
}

impl ObjectKey {
    /// The key scheme (version 1), little-endian integers:
    ///
    /// ```text
    /// sha256( "exploder-object-v1\0"
    ///       ‖ sha256(content)                    32 bytes
    ///       ‖ owners applied u8 (1 as root, else 0)
    ///       ‖ uid u32 ‖ gid u32 ‖ mode & 0o7777 u32
    ///       ‖ mtime seconds i64 ‖ mtime nanoseconds u32
    ///       ‖ number of xattrs u32
    ///       ‖ for each xattr, sorted by name: len u32 ‖ name ‖ len u32 ‖ value )
    /// ```
    ///
    /// Any change to what the ingest applies to a file (another attribute,
    /// another rule for owners) needs a new version tag, or files would
    /// share inodes whose metadata differ.
    pub fn of(content_sha256: &[u8; 32], meta: &ObjectMeta<'_>) -> ObjectKey {
        let mut h = Sha256::new();
        h.update(b"exploder-object-v1\0");
        h.update(content_sha256);
        h.update([u8::from(meta.owners_applied)]);
        h.update(meta.uid.to_le_bytes());
        h.update(meta.gid.to_le_bytes());
        h.update((meta.mode & 0o7777).to_le_bytes());
        h.update(meta.mtime_sec.to_le_bytes());
        h.update(meta.mtime_nsec.to_le_bytes());
        let mut xattrs: Vec<_> = meta.xattrs.iter().collect();
        xattrs.sort();
        h.update((xattrs.len() as u32).to_le_bytes());
        for (name, value) in xattrs {
            h.update((name.len() as u32).to_le_bytes());
            h.update(name);
            h.update((value.len() as u32).to_le_bytes());
            h.update(value);
        }
        ObjectKey {
            digest: h.finalize().into(),
            copy: 0,
        }
    }

    /// The key's copy `n` (0: the first).
    pub fn copy(self, n: u32) -> ObjectKey {
        ObjectKey { copy: n, ..self }
    }

    /// The key's 64 hex digits (the same for every copy).
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The object's file name: `<hex>`, or `<hex>.<n>` for copy n.
    pub fn name(&self) -> String {
        match self.copy {
            0 => self.hex(),
            n => format!("{}.{n}", self.hex()),
        }
    }

    /// `<first 2 hex>/<name>`, relative to the objects directory.
    pub fn rel_path(&self) -> String {
        let name = self.name();
        format!("{}/{name}", &name[..2])
    }

    /// The key (and copy) an object's file name spells; `None` for any
    /// other name, a copy number not as [`ObjectKey::name`] writes it
    /// included.
    pub fn from_name(name: &str) -> Option<ObjectKey> {
        let (hex, copy) = match name.split_once('.') {
            None => (name, 0),
            Some((hex, n)) => {
                let copy: u32 = n.parse().ok()?;
                if copy == 0 || copy.to_string() != n {
                    return None;
                }
                (hex, copy)
            }
        };
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex, &mut digest).ok()?;
        Some(ObjectKey { digest, copy })
    }
}

/// The store's objects directory.
pub fn dir(root: &Path) -> PathBuf {
    root.join(OBJECTS_DIR)
}

fn open_dir(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// One object found by [`walk`].
pub struct Found {
    /// `<2 hex>/<name>`, relative to the objects directory.
    pub rel: String,
    pub key: ObjectKey,
    /// Links to its inode, the objects directory's own included: 1 means
    /// nothing else holds it.
    pub links: u64,
    /// The bytes of its content.
    pub bytes: u64,
}

/// Every object in the store, with its link count, in no order. A store
/// without objects has none. Names that are not objects are skipped.
pub fn walk(root: &Path, mut each: impl FnMut(Found) -> io::Result<()>) -> io::Result<()> {
    let objects = dir(root);
    let top = match std::fs::read_dir(&objects) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for sub in top {
        let sub = sub?;
        let Some(prefix) = sub.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if prefix.len() != 2 || !sub.file_type()?.is_dir() {
            continue;
        }
        let fd = match open_dir(&sub.path()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in std::fs::read_dir(sub.path())? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(key) = ObjectKey::from_name(&name) else {
                continue;
            };
            let st = match rustix::fs::statat(&fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Reclaimed by a gc meanwhile.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            each(Found {
                rel: format!("{prefix}/{name}"),
                key,
                links: st.st_nlink as u64,
                bytes: st.st_size as u64,
            })?;
        }
    }
    Ok(())
}

/// How many objects the store holds, and their bytes (each counted once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
    /// Objects nothing links any more, and their bytes: gc reclaims them.
    pub unreferenced: u64,
    pub unreferenced_bytes: u64,
}

/// Counts the store's objects ([`walk`]).
pub fn usage(root: &Path) -> io::Result<Usage> {
    let mut u = Usage::default();
    walk(root, |f| {
        u.objects += 1;
        u.bytes += f.bytes;
        if f.links <= 1 {
            u.unreferenced += 1;
            u.unreferenced_bytes += f.bytes;
        }
        Ok(())
    })?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(xattrs: &[(Vec<u8>, Vec<u8>)]) -> ObjectMeta<'_> {
        ObjectMeta {
            owners_applied: true,
            uid: 0,
            gid: 0,
            mode: 0o644,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            xattrs,
        }
    }

    #[test]
    fn a_key_changes_with_content_and_with_every_attribute_a_hardlink_shares() {
        let content = [7u8; 32];
        let base = ObjectKey::of(&content, &meta(&[]));
        assert_eq!(base, ObjectKey::of(&content, &meta(&[])));
        assert_ne!(base, ObjectKey::of(&[8u8; 32], &meta(&[])));
        let variants: [fn(&mut ObjectMeta<'_>); 6] = [
            |m| m.owners_applied = false,
            |m| m.uid = 1,
            |m| m.gid = 1,
            |m| m.mode = 0o755,
            |m| m.mtime_sec += 1,
            |m| m.mtime_nsec = 1,
        ];
        for change in variants {
            let mut m = meta(&[]);
            change(&mut m);
            assert_ne!(base, ObjectKey::of(&content, &m));
        }
        let cap = [(b"security.capability".to_vec(), vec![1, 2])];
        assert_ne!(base, ObjectKey::of(&content, &meta(&cap)));
    }

    #[test]
    fn xattrs_are_keyed_in_name_order_whatever_order_they_came_in() {
        let a = (b"user.a".to_vec(), b"1".to_vec());
        let b = (b"user.b".to_vec(), b"2".to_vec());
        let content = [1u8; 32];
        assert_eq!(
            ObjectKey::of(&content, &meta(&[a.clone(), b.clone()])),
            ObjectKey::of(&content, &meta(&[b, a]))
        );
    }

    #[test]
    fn a_name_spells_its_key_back() {
        let key = ObjectKey::of(&[3u8; 32], &meta(&[]));
        assert_eq!(key.name(), key.hex());
        assert_eq!(ObjectKey::from_name(&key.hex()), Some(key));
        assert_eq!(ObjectKey::from_name("not-a-key"), None);
        assert_eq!(&key.rel_path()[..3], &format!("{}/", &key.hex()[..2]));
    }

    #[test]
    fn a_copy_is_named_by_its_key_and_number() {
        let key = ObjectKey::of(&[3u8; 32], &meta(&[]));
        let second = key.copy(1);
        assert_ne!(second, key);
        assert_eq!(second.name(), format!("{}.1", key.hex()));
        assert_eq!(ObjectKey::from_name(&second.name()), Some(second));
        assert_eq!(second.copy(0), key);
        for bad in [".0", ".01", ".x", ".", ".-1"] {
            assert_eq!(
                ObjectKey::from_name(&format!("{}{bad}", key.hex())),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn usage_counts_objects_and_those_nothing_links() {
        let store = tempfile::tempdir().unwrap();
        let key = ObjectKey::of(&[5u8; 32], &meta(&[]));
        let path = dir(store.path()).join(key.rel_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "four").unwrap();
        // Not an object's name: skipped.
        std::fs::write(path.with_file_name("stray"), "x").unwrap();
        let u = usage(store.path()).unwrap();
        assert_eq!((u.objects, u.bytes, u.unreferenced), (1, 4, 1));
        assert_eq!(u.unreferenced_bytes, 4);
        std::fs::hard_link(&path, store.path().join("layer-file")).unwrap();
        assert_eq!(usage(store.path()).unwrap().unreferenced, 0);
    }
}
