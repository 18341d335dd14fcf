//! How big an ext4 image must be for a tree: computed, not guessed.
//!
//! hypeman sizes its `rootfs.ext4` at the tree's size plus 50% (after +20%
//! failed with "Could not allocate block"). Here the image is what the
//! tree needs as ext4 stores it (see [`Summary`]: data blocks per file,
//! directory blocks, long symlinks, external xattr blocks) plus the file
//! system's own metadata, computed for the features the export uses
//! (4 KiB blocks, 256-byte inodes, 64-bit group descriptors, sparse
//! superblock backups, no journal, no reserved GDT blocks, flex_bg):
//! per group a block bitmap, an inode bitmap and its share of the inode
//! table; the superblock and descriptor backups; `lost+found`. Then a
//! small margin (2%, at least 64 blocks) for what the estimate rounds.

use std::io;
use std::path::Path;
use std::process::Command;

use super::tree::Summary;

const BLOCKS_PER_GROUP: u64 = 32768;
const INODES_PER_BLOCK: u64 = 4096 / 256;
/// Reserved inodes (1 to 10) and lost+found's.
const RESERVED_INODES: u64 = 12;
/// mke2fs makes lost+found 16 KiB.
const LOST_AND_FOUND_BLOCKS: u64 = 4;

/// An ext4 image's size, in 4 KiB blocks, and its inode count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub blocks: u64,
    pub inodes: u64,
}

/// Whether group `g` holds a superblock backup (sparse_super: 0, 1 and
/// the powers of 3, 5 and 7).
fn has_backup(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// Blocks of file system metadata for `blocks` total and `inodes`.
fn overhead(blocks: u64, inodes: u64) -> u64 {
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
    let inodes_per_group = inodes.div_ceil(groups).div_ceil(INODES_PER_BLOCK) * INODES_PER_BLOCK;
    let inode_table = groups * (inodes_per_group / INODES_PER_BLOCK);
    let bitmaps = 2 * groups;
    let descriptors = (groups * 64).div_ceil(4096);
    let backups = (0..groups).filter(|&g| has_backup(g)).count() as u64;
    inode_table + bitmaps + backups * (1 + descriptors) + LOST_AND_FOUND_BLOCKS
}

impl Size {
    pub fn for_tree(tree: &Summary) -> Size {
        // A little spare, as mke2fs rounds inodes up per group anyway.
        let inodes = tree.inodes + RESERVED_INODES + tree.inodes / 100 + 16;
        let content = tree.file_blocks + tree.dir_blocks + tree.other_blocks;
        let mut blocks = content;
        // The metadata depends on the group count, which depends on the
        // total: settle it.
        for _ in 0..8 {
            let next = content + overhead(blocks, inodes);
            if next == blocks {
                break;
            }
            blocks = next;
        }
        blocks += (blocks / 50).max(64);
        // mke2fs drops a last group too small to hold its own metadata:
        // never leave one that small.
        let tail = blocks % BLOCKS_PER_GROUP;
        if blocks > BLOCKS_PER_GROUP && tail > 0 && tail < 2048 {
            blocks += 2048 - tail;
        }
        Size { blocks, inodes }
    }
}

/// The inodes in use in an ext4 image, from `dumpe2fs` (each group's
/// "Free inodes:" ranges, complemented): numbers only, so no name from the
/// image ever reaches a command.
fn used_inodes(image: &Path) -> io::Result<Vec<u64>> {
    let out = Command::new("dumpe2fs").arg(image).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "dumpe2fs {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let per_group: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Inodes per group:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("dumpe2fs: no inodes per group"))?;
    let mut used = Vec::new();
    // Per group, indented (the header has a "Free inodes:" total too).
    let groups = text
        .lines()
        .filter_map(|l| l.strip_prefix("  Free inodes:"));
    for (g, free) in groups.enumerate() {
        let first = g as u64 * per_group + 1;
        let mut is_free = vec![false; per_group as usize];
        for range in free.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (a, b): (u64, u64) = (
                a.parse().map_err(io::Error::other)?,
                b.parse().map_err(io::Error::other)?,
            );
            for ino in a.max(first)..=b.min(first + per_group - 1) {
                is_free[(ino - first) as usize] = true;
            }
        }
        used.extend(
            (0..per_group)
                .filter(|i| !is_free[*i as usize])
                .map(|i| first + i),
        );
    }
    Ok(used)
}

/// Makes an image's times depend on the tree alone. `mkfs.ext4 -d` copies
/// each file's atime and ctime from the tree (the first read of a file
/// moves its atime; ctime is when the store wrote it) and gives the root
/// directory the build time: every inode in use gets `time` as atime and
/// ctime (crtime is `time` already, E2FSPROGS_FAKE_TIME), the root its
/// tree mtime. Done with `debugfs -w` by inode number.
pub fn pin_times(image: &Path, time: i64, root_mtime: i64) -> io::Result<()> {
    let mut script = String::new();
    // Inode 1 and 3..=10 are reserved; 2 is the root.
    for ino in used_inodes(image)?
        .into_iter()
        .filter(|&i| i == 2 || i >= 11)
    {
        // `@` marks seconds: a bare number is read as a date when it can be.
        script.push_str(&format!(
            "sif <{ino}> atime @{time}\nsif <{ino}> ctime @{time}\n"
        ));
    }
    script.push_str(&format!("sif <2> mtime @{root_mtime}\n"));
    let dir = image.parent().unwrap_or(Path::new("."));
    let script_path = dir.join("debugfs.cmds");
    std::fs::write(&script_path, script)?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .output()?;
    let _ = std::fs::remove_file(&script_path);
    // debugfs reports a failed command on stderr and goes on: any message
    // beyond its banner is a failure.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !problems.is_empty() {
        return Err(io::Error::other(format!(
            "debugfs on {}: {}",
            image.display(),
            problems.join(" / ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_sit_in_groups_0_1_and_powers_of_3_5_7() {
        let with: Vec<u64> = (0..60).filter(|&g| has_backup(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn a_tree_gets_its_content_plus_metadata_and_a_small_margin() {
        let tree = Summary {
            inodes: 7_000,
            file_blocks: 30_000,
            dir_blocks: 900,
            other_blocks: 10,
            ..Summary::default()
        };
        let size = Size::for_tree(&tree);
        let content = 30_910;
        assert!(size.blocks > content + overhead(content, size.inodes));
        assert!(
            size.blocks < content * 110 / 100,
            "{size:?} for {content} blocks of content"
        );
        assert!(size.inodes >= 7_000 + RESERVED_INODES);
    }
}
