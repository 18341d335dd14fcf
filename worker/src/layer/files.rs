//! Where a layer's inodes are kept once it is published (see
//! [`super::index::Layout`]).
//!
//! A layer is extracted into `tree/`: the unpacker resolves every path
//! through what the layer already made (a symlink in a parent position, a
//! hardlink to an earlier entry), so during extraction the tree is the
//! layer's working state. Once extraction is done, nothing needs its
//! directories any more: finalize creates the rootfs directories from the
//! index, and takes only the non-directories (files, symlinks, fifos) from
//! the layer store. So before publishing, [`flatten`] moves each
//! non-directory to `files/<seq>` (the tar position of the entry that made
//! it, unique in the layer) and removes the emptied tree.
//!
//! Nothing about an inode changes: a rename keeps its link count, so a
//! file object a layer uses stays linked by the layer, and a hardlink
//! group of the layer is two names in `files/` for one inode.
//!
//! [`LayerFiles`] is the one way finalize finds an entry's inode, in
//! either layout: layers ingested before version 3 keep their tree.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::index::{Entry, Kind, LayerIndex, Layout};
use crate::inroot::{InRoot, Resolved, Target, open_dir_handle, remove_all_at};

/// The directory of a flat layer's non-directories.
pub const FILES_DIR: &str = "files";
/// The directory a layer is extracted into (and kept in, before version 3).
pub const TREE_DIR: &str = "tree";

/// Whether the entry is an inode of the layer store (directories are
/// made at finalize; devices and lower hardlinks are only recorded).
fn is_stored(entry: &Entry) -> bool {
    matches!(entry.kind, Kind::File | Kind::Symlink(_) | Kind::Fifo)
}

/// The name of an entry's inode in `files/`.
fn file_name(entry: &Entry) -> Vec<u8> {
    entry.seq.to_string().into_bytes()
}

/// Moves every stored entry of `layer_dir`'s extracted tree to
/// `files/<seq>`, removes what is left of the tree (its directories), and
/// marks the index flat. Run on a staging directory, after extraction is
/// complete and before the index is written.
pub fn flatten(layer_dir: &Path, index: &mut LayerIndex, max_symlink_hops: u32) -> io::Result<()> {
    // Names must not collide: a rename would silently replace the other.
    let mut seen = HashSet::new();
    if let Some(e) = index
        .entries
        .values()
        .filter(|e| is_stored(e))
        .find(|e| !seen.insert(e.seq))
    {
        return Err(io::Error::other(format!(
            "two entries of the layer come from tar entry {}",
            e.seq
        )));
    }
    let files_path = layer_dir.join(FILES_DIR);
    std::fs::create_dir(&files_path)?;
    let files = open_dir_handle(&files_path)?;
    let mut tree = InRoot::open(&layer_dir.join(TREE_DIR), max_symlink_hops)?;
    // In path order, so the walk's cached directories serve runs of
    // siblings.
    for (path, entry) in index.entries.iter().filter(|(_, e)| is_stored(e)) {
        let Target::Entry(t) = tree.resolve(path, false)? else {
            return Err(io::Error::other("a layer entry names the root"));
        };
        rustix::fs::renameat(
            &*t.parent,
            t.name.as_slice(),
            files.as_fd(),
            file_name(entry).as_slice(),
        )?;
    }
    drop(tree);
    let dir = open_dir_handle(layer_dir)?;
    remove_all_at(dir.as_fd(), TREE_DIR.as_bytes())?;
    index.layout = Layout::Files;
    Ok(())
}

/// A published layer's inodes, in its layout.
pub enum LayerFiles {
    Tree(InRoot),
    Files(Arc<OwnedFd>),
}

impl LayerFiles {
    pub fn open(layer_dir: &Path, layout: Layout, max_symlink_hops: u32) -> io::Result<Self> {
        Ok(match layout {
            Layout::Tree => {
                LayerFiles::Tree(InRoot::open(&layer_dir.join(TREE_DIR), max_symlink_hops)?)
            }
            Layout::Files => {
                LayerFiles::Files(Arc::new(open_dir_handle(&layer_dir.join(FILES_DIR))?))
            }
        })
    }

    /// Where the inode of the stored entry at physical `path` is.
    pub fn locate(&mut self, path: &[u8], entry: &Entry) -> io::Result<Resolved> {
        match self {
            LayerFiles::Tree(tree) => match tree.resolve(path, false)? {
                Target::Entry(t) => Ok(t),
                Target::Root => Err(io::Error::other("layer tree entry names the root")),
            },
            LayerFiles::Files(dir) => Ok(Resolved {
                parent: dir.clone(),
                name: file_name(entry),
                physical: path.to_vec(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use exploder_common::limits::Limits;

    use super::*;
    use crate::layer::unpack::LayerUnpacker;

    fn tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    /// Extracts `tar` into `<dir>/tree` as ingest does, then flattens it.
    fn extract_and_flatten(dir: &Path, tar: &[u8]) -> LayerIndex {
        let tree = dir.join(TREE_DIR);
        std::fs::create_dir(&tree).unwrap();
        let limits = Limits::default();
        let mut u = LayerUnpacker::new(InRoot::open(&tree, 40).unwrap(), &limits);
        u.unpack(tar).unwrap();
        let mut index = u.finish().0;
        assert_eq!(index.layout, Layout::Tree);
        flatten(dir, &mut index, 40).unwrap();
        index
    }

    #[test]
    fn a_flat_layer_keeps_each_non_directory_under_its_tar_position_and_no_tree() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar(|b| {
            let mut h = header(tar::EntryType::Directory, 0);
            b.append_data(&mut h, "usr/", &b""[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 5);
            b.append_data(&mut h, "usr/a", &b"hello"[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "lib", "usr").unwrap();
            let mut h = header(tar::EntryType::Fifo, 0);
            b.append_data(&mut h, "deep/er/pipe", &b""[..]).unwrap();
        });
        let index = extract_and_flatten(dir.path(), &layer);
        assert_eq!(index.layout, Layout::Files);
        assert!(!dir.path().join(TREE_DIR).exists());
        let files = dir.path().join(FILES_DIR);
        let mut names: Vec<String> = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["2", "3", "4"], "tar positions count from 1");
        assert_eq!(std::fs::read(files.join("2")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(files.join("3")).unwrap(),
            Path::new("usr")
        );
        assert!(
            std::fs::symlink_metadata(files.join("4"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let mut at = LayerFiles::open(dir.path(), index.layout, 40).unwrap();
        let entry = &index.entries[&b"usr/a"[..]];
        let r = at.locate(b"usr/a", entry).unwrap();
        assert_eq!(r.name, b"2");
    }

    #[test]
    fn a_hardlink_group_of_the_layer_stays_one_inode() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar(|b| {
            let mut h = header(tar::EntryType::Regular, 3);
            b.append_data(&mut h, "a", &b"one"[..]).unwrap();
            let mut h = header(tar::EntryType::Link, 0);
            b.append_link(&mut h, "b/c", "a").unwrap();
        });
        extract_and_flatten(dir.path(), &layer);
        let files = dir.path().join(FILES_DIR);
        let (a, c) = (
            std::fs::metadata(files.join("1")).unwrap(),
            std::fs::metadata(files.join("2")).unwrap(),
        );
        assert_eq!(a.ino(), c.ino());
        assert_eq!(a.nlink(), 2);
    }
}
