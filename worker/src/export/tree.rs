//! One walk of a rootfs, for what the exports need to know before a tool
//! runs: what an ext4 image must hold, the newest mtime (the build time
//! every tool is pinned to), the root's owner.

use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a tree holds, counted as ext4 stores it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Distinct inodes (hardlinks counted once), the root included.
    pub inodes: u64,
    /// Bytes of regular files (each inode once).
    pub file_bytes: u64,
    /// Data blocks (4 KiB) of regular files, with their extent blocks.
    pub file_blocks: u64,
    /// Blocks of directories (entries packed as ext4 does, with slack).
    pub dir_blocks: u64,
    /// Blocks of symlinks too long to live in their inode, and of xattrs
    /// too large to live in theirs.
    pub other_blocks: u64,
    /// The newest mtime in the tree, in seconds.
    pub newest_mtime: i64,
    pub root_uid: u32,
    pub root_gid: u32,
    /// The root directory's mtime, in seconds.
    pub root_mtime: i64,
}

const BLOCK: u64 = 4096;
/// A directory block's usable bytes (metadata_csum keeps a 12-byte tail).
const DIR_BLOCK_USABLE: u64 = BLOCK - 12;
/// Room for xattrs inside a 256-byte inode (after the 128-byte base, the
/// 32-byte extra fields and the 4-byte xattr header).
const INODE_XATTR_ROOM: u64 = 256 - 128 - 32 - 4;
/// A symlink target shorter than this lives in the inode ("fast").
const FAST_SYMLINK_MAX: u64 = 60;
/// Blocks one extent maps (128 MiB).
const EXTENT_BLOCKS: u64 = 32768;

fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}

/// An ext4 directory entry's size: 8 bytes of header, the name, rounded
/// up to 4.
fn dirent(name_len: usize) -> u64 {
    (8 + name_len as u64).div_ceil(4) * 4
}

/// Bytes of a path's xattrs as ext4 lays them out (16-byte entry, name
/// without its namespace prefix and value, each rounded up to 4).
fn xattr_bytes(path: &Path) -> io::Result<u64> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            names.resize(65536, 0);
            rustix::fs::llistxattr(path, &mut names)?
        }
        Err(rustix::io::Errno::NOTSUP) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut total = 0;
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = rustix::fs::lgetxattr_query(path, name).unwrap_or(0) as u64;
        let short = name.splitn(2, |b| *b == b'.').nth(1).unwrap_or(name).len() as u64;
        total += 16 + short.div_ceil(4) * 4 + value.div_ceil(4) * 4;
    }
    Ok(total)
}

impl Summary {
    /// Walks `root` without following symlinks.
    pub fn of(root: &Path) -> io::Result<Summary> {
        let meta = std::fs::symlink_metadata(root)?;
        let mut s = Summary {
            root_uid: meta.uid(),
            root_gid: meta.gid(),
            root_mtime: meta.mtime(),
            ..Summary::default()
        };
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut stack = vec![root.to_path_buf()];
        s.count(root, &meta, &mut seen)?;
        while let Some(dir) = stack.pop() {
            // "." and "..".
            let mut dir_bytes = dirent(1) + dirent(2);
            let mut dir_blocks = 0;
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name_len = entry.file_name().as_bytes().len();
                // Entries never straddle a block.
                if dir_bytes + dirent(name_len) > DIR_BLOCK_USABLE {
                    dir_blocks += 1;
                    dir_bytes = 0;
                }
                dir_bytes += dirent(name_len);
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path)?;
                if meta.is_dir() {
                    stack.push(path.clone());
                }
                s.count(&path, &meta, &mut seen)?;
            }
            dir_blocks += 1;
            // A directory of more than one block gets an htree root.
            if dir_blocks > 1 {
                dir_blocks += 1 + dir_blocks / 500;
            }
            s.dir_blocks += dir_blocks;
        }
        Ok(s)
    }

    fn count(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
        seen: &mut HashSet<(u64, u64)>,
    ) -> io::Result<()> {
        self.newest_mtime = self.newest_mtime.max(meta.mtime());
        if !meta.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            // Another name of an inode counted already.
            return Ok(());
        }
        self.inodes += 1;
        let ft = meta.file_type();
        if ft.is_file() {
            let data = blocks(meta.len());
            // Contiguous extents of up to 128 MiB, one more for a break at
            // a group boundary; past the 4 an inode holds, index blocks.
            let extents = data.div_ceil(EXTENT_BLOCKS) + u64::from(data > 0);
            let index = if extents > 4 {
                extents.div_ceil(340)
            } else {
                0
            };
            self.file_bytes += meta.len();
            self.file_blocks += data + index;
        } else if ft.is_symlink() && meta.len() >= FAST_SYMLINK_MAX {
            self.other_blocks += 1;
        }
        if xattr_bytes(path)? > INODE_XATTR_ROOM {
            self.other_blocks += 1;
        }
        Ok(())
    }
}
