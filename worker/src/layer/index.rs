//! The layer index: what a layer's tar said, in the order finalize needs.
//!
//! A layer is extracted into a tree, but a tree alone cannot carry
//! everything: whiteouts and opaque markers are instructions for lower
//! layers, implicit parent directories must not override a lower layer's
//! metadata, owners cannot be set when not running as root, and device
//! nodes are not created in the layer store. So each ingested layer keeps
//! this index, stored with postcard behind a version number.
//!
//! Paths are *physical* paths inside the layer tree (same-layer symlinks in
//! parent positions already followed), as raw bytes: tar names need not be
//! UTF-8.
//!
//! Where the layer's inodes are ([`Layout`]) follows from the version:
//! layers written before version 3 keep the extracted `tree/`; from
//! version 3 the tree is flattened before the layer is published (see
//! [`super::files`]): every non-directory is `files/<seq>`, named by the
//! position of the tar entry that made it, and directories exist only in
//! the index. A directory costs a block on most file systems, and a
//! rebuilt image shares its files with the last one (file objects) but
//! not its directories: the flat layer leaves a rebuild only the
//! directories of its rootfs to pay for.
//!
//! Every record carries its position in the tar ([`Seq`]): finalize replays
//! a layer in tar order, as `umoci unpack` does, because the order is
//! visible in the result when the layer meets lower-layer symlinks or
//! hardlinks (`usr/lib/x` then `lib/x` through a lower `lib -> usr/lib`:
//! the later one wins).

use exploder_common::store::file as store_file;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::meta::Meta;

/// Version 2 added [`Seq`]; version 3 is the flat layer
/// ([`Layout::Files`]), its index compressed with zstd. Versions 1 and 2
/// are still read (see [`LayerIndex::read`]).
pub const INDEX_VERSION: u32 = 3;

/// The most bytes a version 3 index may inflate to (a layer's index is a
/// few hundred bytes per entry).
const MAX_INFLATED: u64 = 4 << 30;

/// Where a layer's non-directories are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// At their physical paths in the layer's `tree/` (index versions 1
    /// and 2, and a layer being extracted).
    #[default]
    Tree,
    /// In `files/`, each named by its entry's [`Seq`] (version 3).
    Files,
}

/// The position of a tar entry in its layer, counting from 1.
pub type Seq = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    /// A regular file, stored in the layer (see [`Layout`]); same-layer
    /// hardlinks are one inode there too.
    File,
    /// A symlink (stored in the layer) and its target.
    Symlink(Vec<u8>),
    /// A FIFO, stored in the layer.
    Fifo,
    /// Device nodes are recorded, never created in the layer store.
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    /// A hardlink to a path from a lower layer, resolved at finalize.
    HardlinkLower(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub meta: Meta,
    /// The tar entry that last wrote this path.
    pub seq: Seq,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// Explicit entries, keyed by physical path; the empty path is the root
    /// directory entry (`./`). Sorted, so a subtree is one range.
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// Paths removed from lower layers (`.wh.<name>`), with the tar entry
    /// that first named them (a repeat cannot remove more: what follows
    /// the first is this layer's own).
    pub whiteouts: BTreeMap<Vec<u8>, Seq>,
    /// Directories whose lower-layer children are hidden (`.wh..wh..opq`),
    /// with the tar entry that first named them.
    pub opaques: BTreeMap<Vec<u8>, Seq>,
    /// Where the entries are: not stored, but implied by the version.
    #[serde(skip)]
    pub layout: Layout,
}

/// One record of a layer, as finalize replays it.
pub enum Op<'a> {
    Whiteout(&'a [u8]),
    Opaque(&'a [u8]),
    Entry(&'a [u8], &'a Entry),
}

/// Removes `path` and every key below it from a map keyed by paths. Keys
/// under `a/` sort contiguously between `a/` and `a0` (`'0'` follows
/// `'/'`), so this is one range.
pub fn remove_subtree<V>(map: &mut BTreeMap<Vec<u8>, V>, path: &[u8]) {
    map.remove(path);
    let mut lo = path.to_vec();
    lo.push(b'/');
    let mut hi = path.to_vec();
    hi.push(b'/' + 1);
    let doomed: Vec<Vec<u8>> = map.range(lo..hi).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// On disk: the version, then the index of that version.
#[derive(Serialize)]
struct VersionedRef<'a> {
    version: u32,
    index: &'a LayerIndex,
}

/// Version 1: no tar positions. Kept readable so a store ingested by an
/// older exploder needs no re-ingest; its layers replay in the order
/// version 1 applied them (whiteouts, opaques, entries by path), which is
/// what those images were built with.
mod v1 {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::Deserialize;

    use crate::meta::Meta;

    #[derive(Deserialize)]
    pub struct Entry {
        pub kind: super::Kind,
        pub meta: Meta,
    }

    #[derive(Deserialize)]
    pub struct LayerIndex {
        pub entries: BTreeMap<Vec<u8>, Entry>,
        pub whiteouts: BTreeSet<Vec<u8>>,
        pub opaques: BTreeSet<Vec<u8>>,
    }

    impl From<LayerIndex> for super::LayerIndex {
        fn from(old: LayerIndex) -> Self {
            let mut seq = 0..;
            let whiteouts = old
                .whiteouts
                .into_iter()
                .map(|p| (p, seq.next().unwrap()))
                .collect();
            let opaques = old
                .opaques
                .into_iter()
                .map(|p| (p, seq.next().unwrap()))
                .collect();
            let entries = old
                .entries
                .into_iter()
                .map(|(p, e)| {
                    let entry = super::Entry {
                        kind: e.kind,
                        meta: e.meta,
                        seq: seq.next().unwrap(),
                    };
                    (p, entry)
                })
                .collect();
            super::LayerIndex {
                entries,
                whiteouts,
                opaques,
                layout: super::Layout::Tree,
            }
        }
    }
}

impl LayerIndex {
    /// Removes `path` and everything below it (a replaced directory).
    pub fn remove_tree(&mut self, path: &[u8]) {
        remove_subtree(&mut self.entries, path);
    }

    /// Writes the index in the version of its layout: 3 (compressed) for
    /// a flat layer, 2 for a tree (what exploders before version 3 read).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let version = match self.layout {
            Layout::Files => INDEX_VERSION,
            Layout::Tree => 2,
        };
        let body = postcard::to_stdvec(&VersionedRef {
            version,
            index: self,
        })
        .map_err(io::Error::other)?;
        let bytes = match self.layout {
            Layout::Tree => body,
            Layout::Files => {
                // The version stays readable in front of the frame.
                let mut out = postcard::to_stdvec(&version).map_err(io::Error::other)?;
                let skip = out.len();
                out.extend(zstd::bulk::compress(&body[skip..], 3)?);
                out
            }
        };
        std::fs::write(path, bytes)
    }

    pub fn read(path: &Path) -> io::Result<LayerIndex> {
        let bytes = store_file::read(path, store_file::Kind::LayerIndex)?;
        let bad = |e: postcard::Error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        };
        let (version, rest) = postcard::take_from_bytes::<u32>(&bytes).map_err(bad)?;
        match version {
            INDEX_VERSION => {
                let mut inflated = Vec::new();
                zstd::stream::read::Decoder::new(rest)
                    .and_then(|d| d.take(MAX_INFLATED).read_to_end(&mut inflated))
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                let mut index: LayerIndex = postcard::from_bytes(&inflated).map_err(bad)?;
                index.layout = Layout::Files;
                Ok(index)
            }
            2 => postcard::from_bytes(rest).map_err(bad),
            1 => Ok(postcard::from_bytes::<v1::LayerIndex>(rest)
                .map_err(bad)?
                .into()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: layer index version {other} (this exploder reads 1 to {INDEX_VERSION}); \
                     remove the layer directory to re-ingest it",
                    path.display(),
                ),
            )),
        }
    }

    /// Every record in tar order.
    pub fn in_tar_order(&self) -> Vec<Op<'_>> {
        let mut ops: Vec<(Seq, Op<'_>)> =
            Vec::with_capacity(self.entries.len() + self.whiteouts.len() + self.opaques.len());
        ops.extend(self.whiteouts.iter().map(|(p, s)| (*s, Op::Whiteout(p))));
        ops.extend(self.opaques.iter().map(|(p, s)| (*s, Op::Opaque(p))));
        ops.extend(self.entries.iter().map(|(p, e)| (e.seq, Op::Entry(p, e))));
        // Positions are unique (each record comes from its own tar entry),
        // so this order is total.
        ops.sort_unstable_by_key(|(seq, _)| *seq);
        ops.into_iter().map(|(_, op)| op).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn file() -> Entry {
        Entry {
            kind: Kind::File,
            meta: Meta::default(),
            seq: 1,
        }
    }

    #[test]
    fn remove_tree_removes_descendants_only() {
        let mut ix = LayerIndex::default();
        for p in ["a", "a/b", "a/b/c", "a-c", "a0", "ab"] {
            ix.entries.insert(p.as_bytes().to_vec(), file());
        }
        ix.remove_tree(b"a");
        let left: Vec<_> = ix
            .entries
            .keys()
            .map(|k| String::from_utf8(k.clone()).unwrap())
            .collect();
        assert_eq!(left, ["a-c", "a0", "ab"]);
    }

    #[test]
    fn postcard_round_trip_keeps_non_utf8_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = LayerIndex::default();
        ix.entries.insert(vec![0xff, b'x'], file());
        ix.whiteouts.insert(b"gone".to_vec(), 2);
        let p = dir.path().join("index");
        ix.write(&p).unwrap();
        assert_eq!(LayerIndex::read(&p).unwrap(), ix);
    }

    /// A flat layer's index is version 3, compressed; a tree's stays
    /// version 2, and each reads back with its layout.
    #[test]
    fn the_version_on_disk_says_where_the_files_are() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = LayerIndex::default();
        for i in 0..100u64 {
            let e = Entry { seq: i, ..file() };
            ix.entries
                .insert(format!("usr/share/doc/{i}").into_bytes(), e);
        }
        let p = dir.path().join("index");
        for (layout, version) in [(Layout::Tree, 2u8), (Layout::Files, 3)] {
            ix.layout = layout;
            ix.write(&p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes[0], version);
            assert_eq!(LayerIndex::read(&p).unwrap(), ix);
        }
        let flat = std::fs::metadata(&p).unwrap().len();
        ix.layout = Layout::Tree;
        ix.write(&p).unwrap();
        assert!(flat * 3 < std::fs::metadata(&p).unwrap().len());
    }

    #[test]
    fn records_replay_in_tar_order() {
        let mut ix = LayerIndex::default();
        let at = |seq| Entry { seq, ..file() };
        ix.entries.insert(b"usr/lib/x".to_vec(), at(1));
        ix.entries.insert(b"lib/x".to_vec(), at(3));
        ix.whiteouts.insert(b"usr/lib/y".to_vec(), 2);
        ix.opaques.insert(b"etc".to_vec(), 4);
        let order: Vec<String> = ix
            .in_tar_order()
            .iter()
            .map(|op| match op {
                Op::Whiteout(p) => format!("wh {}", String::from_utf8_lossy(p)),
                Op::Opaque(p) => format!("opq {}", String::from_utf8_lossy(p)),
                Op::Entry(p, _) => String::from_utf8_lossy(p).into_owned(),
            })
            .collect();
        assert_eq!(order, ["usr/lib/x", "wh usr/lib/y", "lib/x", "opq etc"]);
    }

    /// A store ingested by an exploder that wrote version 1 stays usable:
    /// the old records replay in the order version 1 applied them.
    #[test]
    fn version_1_index_is_read_in_its_old_order() {
        #[derive(Serialize)]
        struct V1Entry {
            kind: Kind,
            meta: Meta,
        }
        #[derive(Serialize)]
        struct V1 {
            version: u32,
            entries: BTreeMap<Vec<u8>, V1Entry>,
            whiteouts: BTreeSet<Vec<u8>>,
            opaques: BTreeSet<Vec<u8>>,
        }
        let old = V1 {
            version: 1,
            entries: [b"a".to_vec(), b"b".to_vec()]
                .into_iter()
                .map(|p| {
                    let e = V1Entry {
                        kind: Kind::File,
                        meta: Meta::default(),
                    };
                    (p, e)
                })
                .collect(),
            whiteouts: [b"z".to_vec()].into(),
            opaques: [b"y".to_vec()].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        std::fs::write(&p, postcard::to_stdvec(&old).unwrap()).unwrap();
        let ix = LayerIndex::read(&p).unwrap();
        let order: Vec<Vec<u8>> = ix
            .in_tar_order()
            .iter()
            .map(|op| match op {
                Op::Whiteout(p) | Op::Opaque(p) | Op::Entry(p, _) => p.to_vec(),
            })
            .collect();
        assert_eq!(
            order,
            [b"z".to_vec(), b"y".to_vec(), b"a".to_vec(), b"b".to_vec()]
        );
    }
}
