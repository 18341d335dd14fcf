//! The block list: images an administrator marked as not to be served
//! (a vulnerability, a leaked secret), by digest.
//!
//! ```text
//! <store>/blocked/sha256/<hex>.json   {"digest", "reason", "blocked_at", "by"}
//! ```
//!
//! One file per digest, written atomically, so the list needs no lock and
//! every process that reads the store (the CLI, producers, workers) sees
//! the same list, durably, whatever Redis remembers.
//!
//! The rule, kept by [`StoreLayout::link`] under the tag's lock: a blocked
//! image is never linked. A digest may be a manifest's or an index's (what
//! a registry shows for a multi-platform tag); an image is blocked when its
//! manifest digest is, or the index it was exploded from (its
//! `image.json`) is. [`StoreLayout::block`] records the block *before* it
//! unlinks the tags that point at the image, so a link racing the block
//! either sees the record and refuses, or is made first and then removed.
//!
//! Fan-out refuses a blocked image before recording a request, the worker
//! refuses its image job: both are courtesies that fail early and clearly.
//! This module is the guarantee.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{StoreLayout, Unlinked, file, sync_dir, write_file_atomic};
use crate::digest::Digest;
use crate::history::{self, Change, Origin, Record};
use crate::job::LinkTarget;

/// One entry of the block list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub digest: Digest,
    /// Why, as the administrator wrote it (shown in refusals and history).
    pub reason: String,
    /// When it was blocked (RFC 3339).
    pub blocked_at: String,
    /// Who blocked it (`cli/block`).
    pub by: String,
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is blocked: {} (since {}; `exploder unblock {}` lifts it)",
            self.digest, self.reason, self.blocked_at, self.digest
        )
    }
}

/// How a block's unlink reads in a tag's history: `reason=blocked:%20...`.
const UNLINK_REASON_PREFIX: &str = "blocked: ";

/// The administrator's reason, if `record` is the unlink of a block.
pub fn unlinked_by_block(record: &Record) -> Option<&str> {
    match record.change {
        Change::Unlinked => record
            .origin
            .reason
            .as_deref()?
            .strip_prefix(UNLINK_REASON_PREFIX),
        Change::Linked(_) => None,
    }
}

/// What [`StoreLayout::block`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocked {
    /// The digest was already blocked (the reason is replaced).
    pub already: bool,
    /// The tags that pointed at the image and were unlinked.
    pub unlinked: Vec<LinkTarget>,
}

impl StoreLayout {
    fn blocked_dir(&self) -> PathBuf {
        self.root.join("blocked")
    }

    fn block_path(&self, digest: &Digest) -> PathBuf {
        self.blocked_dir()
            .join(digest.algorithm().name())
            .join(format!("{}.json", digest.hex()))
    }

    /// The block on exactly this digest, if any.
    pub fn blocked(&self, digest: &Digest) -> io::Result<Option<Block>> {
        match file::read(&self.block_path(digest), file::Kind::Record) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.block_path(digest).display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The block that applies to an image: on its manifest digest, or on
    /// `index` (the index it is resolved from, when known).
    pub fn image_block(
        &self,
        manifest: &Digest,
        index: Option<&Digest>,
    ) -> io::Result<Option<Block>> {
        if let Some(block) = self.blocked(manifest)? {
            return Ok(Some(block));
        }
        match index {
            Some(index) => self.blocked(index),
            None => Ok(None),
        }
    }

    /// The block that applies to an exploded image: on its manifest
    /// digest, or on the index its `image.json` says it came from.
    pub fn exploded_image_block(&self, manifest: &Digest) -> io::Result<Option<Block>> {
        self.image_block(manifest, self.exploded_from_index(manifest).as_ref())
    }

    /// The index digest an exploded image's `image.json` records.
    fn exploded_from_index(&self, manifest: &Digest) -> Option<Digest> {
        let data = file::read(
            &self.digest_dir(manifest).join("image.json"),
            file::Kind::Image,
        )
        .ok()?;
        let info: serde_json::Value = serde_json::from_slice(&data).ok()?;
        info["index_digest"].as_str()?.parse().ok()
    }

    /// Every block, oldest first, and beside them the entries that do not
    /// read (a damaged file, by path): skipped, not fatal.
    pub fn blocks(&self) -> io::Result<(Vec<Block>, Vec<io::Error>)> {
        let (mut blocks, mut unreadable) = (Vec::new(), Vec::new());
        let top = match fs::read_dir(self.blocked_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((blocks, unreadable)),
            Err(e) => return Err(e),
        };
        for algorithm in top {
            let algorithm = algorithm?;
            if !algorithm.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(algorithm.path())? {
                let path = entry?.path();
                // Temporary files of an interrupted write are not entries.
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let block = file::read(&path, file::Kind::Record).and_then(|data| {
                    serde_json::from_slice::<Block>(&data).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: {e}", path.display()),
                        )
                    })
                });
                match block {
                    Ok(b) => blocks.push(b),
                    Err(e) => unreadable.push(e),
                }
            }
        }
        blocks.sort_by(|a, b| {
            (&a.blocked_at, a.digest.to_string()).cmp(&(&b.blocked_at, b.digest.to_string()))
        });
        Ok((blocks, unreadable))
    }

    /// Blocks `digest` (a manifest's or an index's) for `reason`, decided
    /// by `by`, then unlinks every tag linked to an image it blocks, each
    /// recorded in the tag's history with the reason. Blocking again
    /// replaces the reason and unlinks what was linked since.
    pub fn block(&self, digest: &Digest, reason: &str, by: &str) -> io::Result<Blocked> {
        let already = self.blocked(digest)?.is_some();
        let block = Block {
            digest: digest.clone(),
            reason: reason.to_string(),
            blocked_at: history::rfc3339_now(),
            by: by.to_string(),
        };
        let json = serde_json::to_vec_pretty(&block).map_err(io::Error::other)?;
        // Recorded first: from here on no link to the image is made.
        write_file_atomic(&self.block_path(digest), &json)?;
        let origin = Origin {
            reason: Some(format!("{UNLINK_REASON_PREFIX}{reason}")),
            ..Origin::by(by)
        };
        let mut unlinked = Vec::new();
        for link in self.tags()? {
            let (name, tag) = (link.name(), link.tag.clone());
            let Ok(Some(current)) = self.read_link(&name, &tag) else {
                continue;
            };
            if &current != digest && self.exploded_from_index(&current).as_ref() != Some(digest) {
                continue;
            }
            if let Unlinked::Removed(_) =
                self.unlink_if_at(&name, &tag, &current, history::now_millis(), &origin)?
            {
                unlinked.push(link);
            }
        }
        Ok(Blocked { already, unlinked })
    }

    /// Lifts the block on `digest`. Returns whether there was one. Tags
    /// unlinked by the block stay unlinked: the next push, poll or
    /// `exploder enqueue` links them again.
    pub fn unblock(&self, digest: &Digest) -> io::Result<bool> {
        let path = self.block_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(path.parent().expect("a block file has a directory"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImageName, LinkError, Linked};

    fn digest(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn store() -> (tempfile::TempDir, StoreLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path());
        (dir, layout)
    }

    fn name() -> ImageName {
        ImageName {
            namespace: "team".into(),
            image: "app".into(),
        }
    }

    /// An exploded image's digest directory (what `link` requires), with
    /// the index it came from.
    fn exploded(layout: &StoreLayout, manifest: &Digest, index: Option<&Digest>) {
        let dir = layout.digest_dir(manifest);
        fs::create_dir_all(layout.rootfs_dir(manifest)).unwrap();
        let info = serde_json::json!({"manifest_digest": manifest, "index_digest": index});
        fs::write(dir.join("image.json"), info.to_string()).unwrap();
    }

    #[test]
    fn a_blocked_manifest_is_never_linked() {
        let (_d, layout) = store();
        let m = digest("m");
        exploded(&layout, &m, None);
        layout.block(&m, "CVE-2026-0001", "cli/block").unwrap();
        let err = layout
            .link(&name(), "v1", &m, None, &Origin::by("cli/explode"))
            .unwrap_err();
        assert!(matches!(err, LinkError::Blocked { .. }), "{err}");
        assert!(err.to_string().contains("CVE-2026-0001"), "{err}");
        assert_eq!(layout.read_link(&name(), "v1").unwrap(), None);
    }

    #[test]
    fn blocking_an_index_blocks_the_images_exploded_from_it() {
        let (_d, layout) = store();
        let (m, index) = (digest("m"), digest("index"));
        exploded(&layout, &m, Some(&index));
        layout.block(&index, "bad base", "cli/block").unwrap();
        assert!(
            layout
                .link(&name(), "v1", &m, None, &Origin::by("cli/explode"))
                .is_err()
        );
        assert_eq!(
            layout.exploded_image_block(&m).unwrap().unwrap().digest,
            index
        );
    }

    #[test]
    fn blocking_unlinks_the_tags_and_says_why_in_their_history() {
        let (_d, layout) = store();
        let (m, other) = (digest("m"), digest("other"));
        exploded(&layout, &m, None);
        exploded(&layout, &other, None);
        let origin = Origin::by("cli/explode");
        layout.link(&name(), "v1", &m, None, &origin).unwrap();
        layout.link(&name(), "v2", &m, None, &origin).unwrap();
        layout.link(&name(), "v3", &other, None, &origin).unwrap();
        let blocked = layout.block(&m, "leaked key", "cli/block").unwrap();
        let unlinked: Vec<String> = blocked.unlinked.iter().map(|l| l.to_string()).collect();
        assert_eq!(unlinked, ["team/app:v1", "team/app:v2"]);
        assert_eq!(layout.read_link(&name(), "v1").unwrap(), None);
        assert_eq!(layout.read_link(&name(), "v3").unwrap(), Some(other));
        let last = layout.history(&name(), "v1").unwrap().pop().unwrap();
        assert_eq!(last.origin.reason.as_deref(), Some("blocked: leaked key"));
        assert_eq!(unlinked_by_block(&last), Some("leaked key"));
        assert_eq!(last.origin.by.as_deref(), Some("cli/block"));
    }

    #[test]
    fn unblocking_allows_the_link_again() {
        let (_d, layout) = store();
        let m = digest("m");
        exploded(&layout, &m, None);
        layout.block(&m, "r", "cli/block").unwrap();
        assert!(layout.unblock(&m).unwrap());
        assert!(!layout.unblock(&m).unwrap());
        let linked = layout
            .link(&name(), "v1", &m, None, &Origin::by("cli/explode"))
            .unwrap();
        assert_eq!(linked, Linked::Changed);
    }

    #[test]
    fn the_list_holds_every_block_with_its_reason() {
        let (_d, layout) = store();
        assert!(layout.blocks().unwrap().0.is_empty());
        layout.block(&digest("a"), "first", "cli/block").unwrap();
        let again = layout.block(&digest("a"), "second", "cli/block").unwrap();
        assert!(again.already);
        layout.block(&digest("b"), "other", "cli/block").unwrap();
        let (blocks, _) = layout.blocks().unwrap();
        assert_eq!(blocks.len(), 2);
        let a = blocks.iter().find(|b| b.digest == digest("a")).unwrap();
        assert_eq!(a.reason, "second");
    }
}
