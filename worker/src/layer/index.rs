//! The layer index: what a layer's tar said, in the order finalize needs.
//!
//! The extracted tree alone cannot carry everything: whiteouts and opaque
//! markers are instructions for lower layers, implicit parent directories
//! must not override a lower layer's metadata, owners cannot be set when not
//! running as root, and device nodes are not created in the layer store. So
//! each ingested layer keeps this index beside its `tree/`, stored with
//! postcard behind a version number.
//!
//! Paths are *physical* paths inside the layer tree (same-layer symlinks in
//! parent positions already followed), as raw bytes: tar names need not be
//! UTF-8.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::meta::Meta;

pub const INDEX_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    /// A regular file, present in the tree at this path; same-layer
    /// hardlinks are hardlinks in the tree too.
    File,
    /// A symlink (present in the tree) and its target.
    Symlink(Vec<u8>),
    /// A FIFO, present in the tree.
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// Explicit entries, keyed by physical path; the empty path is the root
    /// directory entry (`./`). Sorted, so parents come before children.
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// Paths removed from lower layers (`.wh.<name>`).
    pub whiteouts: BTreeSet<Vec<u8>>,
    /// Directories whose lower-layer children are hidden (`.wh..wh..opq`).
    pub opaques: BTreeSet<Vec<u8>>,
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

#[derive(Deserialize)]
struct Versioned {
    version: u32,
    index: LayerIndex,
}

/// The same layout as [`Versioned`], borrowing: writing needs no copy.
#[derive(Serialize)]
struct VersionedRef<'a> {
    version: u32,
    index: &'a LayerIndex,
}

impl LayerIndex {
    /// Removes `path` and everything below it (a replaced directory).
    pub fn remove_tree(&mut self, path: &[u8]) {
        remove_subtree(&mut self.entries, path);
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        let bytes = postcard::to_stdvec(&VersionedRef {
            version: INDEX_VERSION,
            index: self,
        })
        .map_err(io::Error::other)?;
        std::fs::write(path, bytes)
    }

    pub fn read(path: &Path) -> io::Result<LayerIndex> {
        let bytes = std::fs::read(path)?;
        let v: Versioned = postcard::from_bytes(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        if v.version != INDEX_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: layer index version {} (this exploder reads {INDEX_VERSION}); \
                     remove the layer directory to re-ingest it",
                    path.display(),
                    v.version
                ),
            ));
        }
        Ok(v.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Entry {
        Entry {
            kind: Kind::File,
            meta: Meta::default(),
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
        ix.whiteouts.insert(b"gone".to_vec());
        let p = dir.path().join("index");
        ix.write(&p).unwrap();
        assert_eq!(LayerIndex::read(&p).unwrap(), ix);
    }
}
