//! The on-disk layout of the store, and the atomic writes that keep it
//! crash-safe.
//!
//! ```text
//! <store>/
//!   images/<namespace>/<image>/<tag>/link      "sha256:<manifest hex>"
//!   images/<namespace>/<image>/<tag>/history   one line per change (see `history`)
//!   requests/<sha256 of the link>.json          a link asked for and not yet made (see `request`)
//!   blocked/sha256/<hex>.json                   an image never to be linked (see `block`)
//!   digest/sha256/<manifest hex>/rootfs/        the exploded image
//!   digest/sha256/<manifest hex>/manifest.json
//!   digest/sha256/<manifest hex>/config.json
//!   digest/sha256/<manifest hex>/rootfs.{ext4,erofs,squashfs}   disk images (see `DiskFormat`)
//!   layers/sha256/<diff_id hex>/                one ingested layer (see exploder-worker)
//!   objects/<2 hex>/<key hex>                   one file's content and metadata, shared by hardlinks (see `objects`)
//!   tmp/                                        staging; anything here is garbage after a crash
//!   gc/                                         set aside by a running gc (put back by the next if it died)
//!   fleet                                       a fleet has used the store (see `fleet`)
//! ```
//!
//! The rule that makes a crash harmless: everything is built under `tmp/`
//! and published by one `rename(2)` into place; the tag link is written last.
//! Nothing ever points at a path under `tmp/`, so a crash at any instruction
//! leaves at worst garbage there, which the next run removes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

mod block;
mod disk;
pub mod file;
mod fleet;
mod name;
pub mod objects;
pub mod quota;
mod tag;

pub use block::{Block, Blocked, unlinked_by_block};
pub use disk::DiskFormat;
pub use fleet::FLEET_MARKER;
pub use name::{ImageName, RegistryPaths};
pub(crate) use tag::TagLock;

use crate::digest::Digest;

/// The file in a layer directory that lists its entries (written by
/// exploder-worker's layer store), published last: see
/// [`StoreLayout::has_layer`].
pub const LAYER_INDEX: &str = "index";
use crate::history::{self, Change, Origin, Record};
use crate::job::LinkTarget;
use crate::request;

/// Paths of the store rooted at one directory.
#[derive(Clone, Debug)]
pub struct StoreLayout {
    root: PathBuf,
}

impl StoreLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the top-level directories if missing.
    pub fn ensure(&self) -> io::Result<()> {
        for d in ["images", "digest/sha256", "layers/sha256", "tmp"] {
            fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }

    /// Where staging directories and temporary files are made. Same file
    /// system as the rest of the store, so a rename publishes atomically.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The file objects layer trees hardlink (see [`objects`]).
    pub fn objects_dir(&self) -> PathBuf {
        objects::dir(&self.root)
    }

    /// The ingested layer with this diff_id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(diff_id.algorithm().name())
            .join(diff_id.hex())
    }

    /// Whether the layer with this diff_id is ingested: its index is the
    /// last file a layer directory is published with, so a layer without
    /// one is not there.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).join(LAYER_INDEX).is_file()
    }

    /// The exploded image with this manifest digest.
    pub fn digest_dir(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("digest")
            .join(manifest.algorithm().name())
            .join(manifest.hex())
    }

    /// The root file system tree of the image with this manifest digest.
    pub fn rootfs_dir(&self, manifest: &Digest) -> PathBuf {
        self.digest_dir(manifest).join("rootfs")
    }

    /// Whether the image with this manifest digest is exploded (its digest
    /// directory is published whole, rootfs included).
    pub fn has_image(&self, manifest: &Digest) -> bool {
        self.rootfs_dir(manifest).is_dir()
    }

    /// Refuses a name or tag that would not stay one directory level each
    /// under `images/` (`..`, `/`, empty, NUL). Names come from references,
    /// webhook payloads, tag lists and ImageStreams: all are parsed before
    /// they get here, and this is the last line if one is not.
    pub fn check_tag(name: &ImageName, tag: &str) -> io::Result<()> {
        let safe = |c: &str| {
            !c.is_empty() && c != "." && c != ".." && c.len() <= 255 && !c.contains(['/', '\0'])
        };
        if name.namespace.split('/').all(safe) && safe(&name.image) && safe(tag) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}/{}:{tag} is not a name the store can hold",
                    name.namespace, name.image
                ),
            ))
        }
    }

    /// The directory holding a tag's `link` and `history`. Callers that
    /// write check the name first ([`Self::check_tag`]).
    pub fn tag_dir(&self, name: &ImageName, tag: &str) -> PathBuf {
        let mut p = self.root.join("images");
        for c in name.namespace.split('/') {
            p.push(c);
        }
        p.push(&name.image);
        p.push(tag);
        p
    }

    pub fn link_path(&self, name: &ImageName, tag: &str) -> PathBuf {
        self.tag_dir(name, tag).join("link")
    }

    /// Points a tag at `digest` (only once its digest directory exists),
    /// atomically, and records the change in the tag's history with its
    /// `origin`.
    ///
    /// `decided` is when the fleet decided the tag should point there, in
    /// Unix milliseconds (the image job's enqueue time). Jobs finish out of
    /// order: if the history already holds a change decided *later* (a
    /// newer push linked, or the tag was deleted), this stale one is not
    /// applied. Within the same millisecond the job wins: a tie cannot tell
    /// which came first. `None` links unconditionally (`exploder explode`:
    /// the user asked now).
    ///
    /// A tag linked to an image of one registry is never moved to an image
    /// of another ([`LinkError::OtherRegistry`]): the store path drops the
    /// registry, so two registries would overwrite each other's tags.
    ///
    /// A blocked image (see [`block`]) is never linked
    /// ([`LinkError::Blocked`]).
    pub fn link(
        &self,
        name: &ImageName,
        tag: &str,
        digest: &Digest,
        decided: Option<i64>,
        origin: &Origin,
    ) -> Result<Linked, LinkError> {
        Self::check_tag(name, tag)?;
        let link = LinkTarget::new(name, tag);
        // Linked there already, with no request to settle: a no-op, which
        // must not write (the store may be read-only to this reader). As if
        // ordered before any writer holding the lock now; only for a link
        // decided now, since one decided earlier may be superseded.
        if decided.is_none()
            && self.read_link(name, tag).ok().flatten().as_ref() == Some(digest)
            && !self.request_path(&link).exists()
            && self.exploded_image_block(digest)?.is_none()
        {
            return Ok(Linked::Unchanged);
        }
        let guard = TagLock::acquire(&self.tag_dir(name, tag))?;
        // Under the tag's lock: `block` records the block before it takes
        // the lock to unlink, so one of the two sees the other.
        if let Some(block) = self.exploded_image_block(digest)? {
            return Err(LinkError::Blocked {
                link: link.to_string(),
                block: Box::new(block),
            });
        }
        // The requests this decision makes moot go with it (see `request`).
        let settle = |at: i64| request::settle_locked(self, &link, at, Some(digest));
        // A change recorded by a writer that died before making it is the
        // tag's state: finish it before deciding on top of it.
        let current = self.current_locked(&guard, name, tag);
        let records = guard.records()?;
        if let Some(decided) = decided
            && let Some(newer) = records.last().filter(|r| r.decided_or_written() > decided)
        {
            settle(decided)?;
            return Ok(Linked::Superseded(newer.clone()));
        }
        let decided_at = decided.unwrap_or_else(history::now_millis);
        // A link that does not parse (torn by a crash on a file system
        // without atomic rename) is simply replaced.
        match current {
            Ok(Some(current)) if &current == digest => {
                settle(decided_at)?;
                return Ok(Linked::Unchanged);
            }
            Ok(Some(current)) => {
                if let Some(refused) = other_registry(&link, &records, &current, origin) {
                    return Err(refused);
                }
            }
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            Err(e) => return Err(e.into()),
        }
        // The record first, then the link (see `tag`): a reader never sees
        // a link nobody recorded, and a crash between the two leaves a
        // record that readers and the next writer finish.
        guard.append(&Record {
            at: history::now(),
            change: Change::Linked(digest.clone()),
            decided,
            origin: origin.clone(),
        })?;
        crate::failpoint::hit("store.link.recorded");
        self.make_link(name, tag, Some(digest))?;
        settle(decided_at)?;
        Ok(Linked::Changed)
    }

    /// Records a decision, at `decided`, that the tag stays at `digest`,
    /// where it already points (the tag moved away and back upstream): a
    /// job for the digest in between, still in flight, must not move it.
    /// Returns whether it was recorded (the link points there).
    pub fn reaffirm(
        &self,
        name: &ImageName,
        tag: &str,
        digest: &Digest,
        decided: i64,
        origin: &Origin,
    ) -> io::Result<bool> {
        Self::check_tag(name, tag)?;
        let guard = TagLock::acquire(&self.tag_dir(name, tag))?;
        if self
            .current_locked(&guard, name, tag)
            .ok()
            .flatten()
            .as_ref()
            != Some(digest)
        {
            return Ok(false);
        }
        guard.append(&Record {
            at: history::now(),
            change: Change::Linked(digest.clone()),
            decided: Some(decided),
            origin: origin.clone(),
        })?;
        request::settle_locked(self, &LinkTarget::new(name, tag), decided, Some(digest))?;
        Ok(true)
    }

    /// Removes a tag's link (the tag was deleted upstream, or by hand),
    /// atomically, and records it in the history, decided by `by`. A link
    /// decided after `decided` (the tag was pushed again since) is kept.
    /// Returns the digest it pointed at.
    ///
    /// The unlink is recorded even when there is no link yet: a job
    /// enqueued before the delete may still be on its way, and the record
    /// is what stops it from linking the deleted tag.
    ///
    /// `origin` says who decided it and, for a registry's event (the tag is
    /// gone there), which registry: a tag linked to an image of another
    /// registry is kept ([`Unlinked::OtherRegistry`]), as [`Self::link`]
    /// never moves it to one, and so is a tag requested from another
    /// registry and not linked yet, with its request
    /// ([`Unlinked::RequestedFromOtherRegistry`]): only the registry a link
    /// or a request came from may withdraw it. An origin naming no registry
    /// (an operator's `exploder rm`, an ImageStream deleted) unlinks
    /// whatever is linked or requested.
    pub fn unlink(
        &self,
        name: &ImageName,
        tag: &str,
        decided: i64,
        origin: &Origin,
    ) -> io::Result<Unlinked> {
        self.unlink_checked(name, tag, decided, origin, None)
    }

    /// [`Self::unlink`], only if the tag still points at `digest` (else
    /// [`Unlinked::NotLinked`], nothing recorded).
    pub fn unlink_if_at(
        &self,
        name: &ImageName,
        tag: &str,
        digest: &Digest,
        decided: i64,
        origin: &Origin,
    ) -> io::Result<Unlinked> {
        self.unlink_checked(name, tag, decided, origin, Some(digest))
    }

    fn unlink_checked(
        &self,
        name: &ImageName,
        tag: &str,
        decided: i64,
        origin: &Origin,
        only_at: Option<&Digest>,
    ) -> io::Result<Unlinked> {
        Self::check_tag(name, tag)?;
        let dir = self.tag_dir(name, tag);
        // A tag the store never knew (no history: never linked, and never
        // requested, as a request is recorded under the tag's lock, which
        // creates the history) is left without a trace: otherwise every
        // event naming a tag its registry does not have would leave a tag
        // directory for ever.
        if !exists(&dir.join("history"))? && !exists(&dir.join("link"))? {
            return Ok(Unlinked::Unknown);
        }
        let guard = TagLock::acquire(&dir)?;
        let current = match self.current_locked(&guard, name, tag) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
            Err(e) => return Err(e),
        };
        let records = guard.records()?;
        let last = records.last().cloned();
        if let Some(newer) = last.clone().filter(|r| r.decided_or_written() > decided) {
            return Ok(Unlinked::Superseded(newer));
        }
        if only_at.is_some() && current.as_ref() != only_at {
            return Ok(Unlinked::NotLinked);
        }
        if let Some(current) = &current
            && let Some(LinkError::OtherRegistry { linked, .. }) =
                other_registry(&LinkTarget::new(name, tag), &records, current, origin)
        {
            return Ok(Unlinked::OtherRegistry { linked });
        }
        // Nor is a link asked of another registry withdrawn: its request
        // (outstanding or failed) is that registry's to settle.
        if let Some(requested) =
            request::requested_from_other_registry(self, &LinkTarget::new(name, tag), origin)?
        {
            return Ok(Unlinked::RequestedFromOtherRegistry { requested });
        }
        // The record first, then the removal (see `tag`). Repeated deletes
        // of a gone tag add nothing.
        if current.is_some() || last.is_none_or(|r| r.change != Change::Unlinked) {
            guard.append(&Record {
                at: history::now(),
                change: Change::Unlinked,
                decided: Some(decided),
                origin: origin.clone(),
            })?;
        }
        crate::failpoint::hit("store.unlink.recorded");
        // Also a torn link file, which `current` counts as none.
        self.make_link(name, tag, None)?;
        // What was requested for the tag before the delete is moot.
        request::settle_locked(self, &LinkTarget::new(name, tag), decided, None)?;
        Ok(match current {
            Some(d) => Unlinked::Removed(d),
            None => Unlinked::NotLinked,
        })
    }

    /// A tag's history, oldest first (empty if it never had a link).
    pub fn history(&self, name: &ImageName, tag: &str) -> io::Result<Vec<Record>> {
        Self::check_tag(name, tag)?;
        match file::read_to_string(
            &self.tag_dir(name, tag).join("history"),
            file::Kind::History,
        ) {
            Ok(text) => Ok(history::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Every tag the store knows, linked or not (a directory under
    /// `images/` holding a `link` or a `history`), sorted.
    pub fn tags(&self) -> io::Result<Vec<LinkTarget>> {
        let images = self.root.join("images");
        let mut found = Vec::new();
        let mut stack = vec![images.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A tag directory may also hold a nested repository's images
            // (`images/org/app/dev/` is tag `dev` of org/app and the parent
            // of org/app/dev's tags): keep walking below it.
            if dir.join("link").is_file() || dir.join("history").is_file() {
                let parts: Vec<String> = dir
                    .strip_prefix(&images)
                    .unwrap_or(&dir)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if let [namespace @ .., image, tag] = parts.as_slice()
                    && !namespace.is_empty()
                {
                    found.push(LinkTarget {
                        namespace: namespace.join("/"),
                        image: image.clone(),
                        tag: tag.clone(),
                    });
                }
            }
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        found.sort_by_key(|l| l.to_string());
        Ok(found)
    }

    /// The tags of an image that currently have a link, sorted.
    pub fn linked_tags(&self, name: &ImageName) -> io::Result<Vec<String>> {
        let image_dir = self.tag_dir(name, "x");
        let image_dir = image_dir.parent().expect("a tag dir has a parent");
        let entries = match fs::read_dir(image_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut tags = Vec::new();
        for entry in entries {
            let entry = entry?;
            let tag = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // What the history records, not only the link file (see `tag`).
            if (path.join("link").is_file() || path.join("history").is_file())
                && matches!(self.read_link(name, &tag), Ok(Some(_)))
            {
                tags.push(tag);
            }
        }
        tags.sort();
        Ok(tags)
    }
}

/// Why [`StoreLayout::link`] did not link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The tag is linked to an image of another registry.
    #[error(
        "{link} is linked to an image from {linked}; refusing to link it to one from {refused}: \
         the two registries would overwrite each other's tags. Give one registry a path of its \
         own (--registry-path {refused_registry}=PREFIX, or EXPLODER_REGISTRY_PATHS), or remove \
         the tag first (exploder rm {link})"
    )]
    OtherRegistry {
        link: String,
        /// `registry/repository` of the image linked now.
        linked: String,
        /// `registry/repository` of the image refused.
        refused: String,
        refused_registry: String,
    },
    /// The image is blocked (`exploder block`).
    #[error("{link} is not linked: {block}")]
    Blocked { link: String, block: Box<Block> },
}

/// The refusal to link `link`, now at `current`, to an image from
/// `origin`, if the image linked now came from another registry (its
/// history says which; links older than that record allow anything).
pub(crate) fn other_registry(
    link: &LinkTarget,
    records: &[Record],
    current: &Digest,
    origin: &Origin,
) -> Option<LinkError> {
    let linked_from = &records
        .iter()
        .rev()
        .find(|r| r.change == Change::Linked(current.clone()))?
        .origin;
    match (&linked_from.registry, &origin.registry) {
        (Some(was), Some(now)) if was != now => Some(LinkError::OtherRegistry {
            link: link.to_string(),
            linked: linked_from.source(),
            refused: origin.source(),
            refused_registry: now.clone(),
        }),
        _ => None,
    }
}

/// What [`StoreLayout::link`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Linked {
    Changed,
    /// The tag already pointed there.
    Unchanged,
    /// A change decided later is already recorded; this one was not applied.
    Superseded(Record),
}

/// What [`StoreLayout::unlink`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Unlinked {
    /// The link was removed; it pointed at this digest.
    Removed(Digest),
    /// There was no link.
    NotLinked,
    /// The store never knew the tag (no link, no history, no request):
    /// nothing was written.
    Unknown,
    /// The tag was linked by a change decided later: kept.
    Superseded(Record),
    /// The tag is linked to an image of another registry (`linked`:
    /// its `registry/repository`) than the one that asked: kept.
    OtherRegistry { linked: String },
    /// The tag has a request (outstanding or failed) for an image of
    /// another registry (`requested`: its `registry/repository`) than the
    /// one that asked: the request is kept, and nothing is recorded.
    RequestedFromOtherRegistry { requested: String },
}

/// Whether anything is at `path` (a symlink counts, even dangling).
fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `data` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync the directory.
pub fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Unique per call: threads of one process (a worker's concurrent jobs)
    // may replace the same file at once.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // A full disk fails the write: the temporary file goes with it.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Fsyncs a directory so that renames into it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn namespace_is_everything_before_the_last_component() {
        assert_eq!(
            ImageName::from_repository("library/redis"),
            ImageName {
                namespace: "library".into(),
                image: "redis".into()
            }
        );
        assert_eq!(
            ImageName::from_repository("team/sub/app"),
            ImageName {
                namespace: "team/sub".into(),
                image: "app".into()
            }
        );
        assert_eq!(ImageName::from_repository("app").namespace, "library");
    }

    #[test]
    fn concurrent_atomic_writes_never_leave_an_empty_or_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = std::sync::Arc::new(dir.path().join("link"));
        write_file_atomic(&p, b"sha256:start").unwrap();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        write_file_atomic(&p, format!("sha256:{t}-{i}").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..2000 {
            let s = fs::read_to_string(&*p).unwrap();
            assert!(s.starts_with("sha256:"), "read {s:?}");
        }
        for w in writers {
            w.join().unwrap();
        }
    }

    pub(crate) fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    pub(crate) fn app() -> ImageName {
        ImageName::from_repository("team/app")
    }

    #[test]
    fn an_older_job_finishing_last_does_not_move_the_tag_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let (old, new) = (digest('a'), digest('b'));
        assert_eq!(
            store
                .link(&app(), "v1", &new, Some(200), &Origin::default())
                .unwrap(),
            Linked::Changed
        );
        assert!(matches!(
            store
                .link(&app(), "v1", &old, Some(100), &Origin::default())
                .unwrap(),
            Linked::Superseded(_)
        ));
        assert_eq!(store.read_link(&app(), "v1").unwrap(), Some(new.clone()));
        // Same second: the job wins (a tie cannot be ordered).
        assert_eq!(
            store
                .link(&app(), "v1", &old, Some(200), &Origin::default())
                .unwrap(),
            Linked::Changed
        );
    }

    #[test]
    fn a_tag_reaffirmed_after_moving_back_is_not_moved_by_the_job_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        store
            .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
            .unwrap();
        // Upstream: a -> b (job enqueued at 110) -> a again (seen at 120).
        assert!(
            store
                .reaffirm(&app(), "v1", &digest('a'), 120, &Origin::default())
                .unwrap()
        );
        assert!(matches!(
            store
                .link(&app(), "v1", &digest('b'), Some(110), &Origin::default())
                .unwrap(),
            Linked::Superseded(_)
        ));
        assert_eq!(store.read_link(&app(), "v1").unwrap(), Some(digest('a')));
    }

    #[test]
    fn unlinking_a_tag_never_known_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        assert_eq!(
            store
                .unlink(&app(), "never", 1, &Origin::by("test"))
                .unwrap(),
            Unlinked::Unknown
        );
        assert!(!store.tag_dir(&app(), "never").exists());
        assert!(store.tags().unwrap().is_empty());
    }

    #[test]
    fn unlink_removes_the_link_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        store
            .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
            .unwrap();
        assert_eq!(
            store
                .unlink(&app(), "v1", 150, &Origin::by("test"))
                .unwrap(),
            Unlinked::Removed(digest('a'))
        );
        assert_eq!(store.read_link(&app(), "v1").unwrap(), None);
        assert_eq!(
            store
                .unlink(&app(), "v1", 160, &Origin::by("test"))
                .unwrap(),
            Unlinked::NotLinked
        );
        let h = store.history(&app(), "v1").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].change, Change::Unlinked);
        assert!(store.linked_tags(&app()).unwrap().is_empty());
    }

    #[test]
    fn a_job_enqueued_before_the_tag_was_deleted_does_not_relink_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        store
            .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
            .unwrap();
        store
            .unlink(&app(), "v1", 150, &Origin::by("test"))
            .unwrap();
        assert!(matches!(
            store
                .link(&app(), "v1", &digest('b'), Some(120), &Origin::default())
                .unwrap(),
            Linked::Superseded(_)
        ));
        assert_eq!(store.read_link(&app(), "v1").unwrap(), None);
    }

    #[test]
    fn names_that_leave_their_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        for (ns, image, tag) in [
            ("team", "app", ".."),
            ("team", "app", "/etc/x"),
            ("team/..", "app", "v1"),
            ("team", "..", "v1"),
            ("", "app", "v1"),
            ("team", "app", ""),
        ] {
            let name = ImageName {
                namespace: ns.into(),
                image: image.into(),
            };
            let e = store
                .link(&name, tag, &digest('a'), None, &Origin::default())
                .unwrap_err();
            assert!(
                matches!(e, LinkError::Io(e) if e.kind() == io::ErrorKind::InvalidInput),
                "{ns}/{image}:{tag}"
            );
            assert!(store.unlink(&name, tag, 1, &Origin::by("test")).is_err());
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn a_delete_before_the_first_link_stops_an_older_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        // The older job's request was recorded (under the tag's lock, which
        // makes its history): the delete is recorded against it.
        drop(TagLock::acquire(&store.tag_dir(&app(), "v1")).unwrap());
        assert_eq!(
            store
                .unlink(&app(), "v1", 150, &Origin::by("test"))
                .unwrap(),
            Unlinked::NotLinked
        );
        assert!(matches!(
            store
                .link(&app(), "v1", &digest('a'), Some(120), &Origin::default())
                .unwrap(),
            Linked::Superseded(_)
        ));
        store
            .unlink(&app(), "v1", 160, &Origin::by("test"))
            .unwrap();
        assert_eq!(store.history(&app(), "v1").unwrap().len(), 1, "no repeats");
    }

    #[test]
    fn a_stale_delete_keeps_a_tag_pushed_again_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        store
            .link(&app(), "v1", &digest('a'), Some(200), &Origin::default())
            .unwrap();
        assert!(matches!(
            store
                .unlink(&app(), "v1", 150, &Origin::by("test"))
                .unwrap(),
            Unlinked::Superseded(_)
        ));
        assert_eq!(store.linked_tags(&app()).unwrap(), ["v1"]);
    }

    fn from(registry: &str) -> Origin {
        Origin {
            registry: Some(registry.into()),
            repository: Some("team/app".into()),
            by: Some("cli/explode".into()),
            reason: None,
        }
    }

    #[test]
    fn a_tag_of_one_registry_is_not_moved_to_another_registrys_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        store
            .link(&app(), "v1", &digest('a'), None, &from("one:5000"))
            .unwrap();
        let e = store
            .link(&app(), "v1", &digest('b'), None, &from("two:5000"))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("one:5000/team/app")
                && msg.contains("two:5000/team/app")
                && msg.contains("--registry-path two:5000=")
                && msg.contains("exploder rm team/app:v1"),
            "{msg}"
        );
        assert_eq!(store.read_link(&app(), "v1").unwrap(), Some(digest('a')));
        // The same registry moves it; the same digest from another is no
        // change; after a removal another registry may take the tag.
        store
            .link(&app(), "v1", &digest('c'), None, &from("one:5000"))
            .unwrap();
        assert_eq!(
            store
                .link(&app(), "v1", &digest('c'), None, &from("two:5000"))
                .unwrap(),
            Linked::Unchanged
        );
        store
            .unlink(&app(), "v1", history::now_millis(), &Origin::by("cli/rm"))
            .unwrap();
        store
            .link(&app(), "v1", &digest('b'), None, &from("two:5000"))
            .unwrap();
        let h = store.history(&app(), "v1").unwrap();
        assert_eq!(h.last().unwrap().origin, from("two:5000"));
        assert_eq!(h[h.len() - 2].origin.by.as_deref(), Some("cli/rm"));
    }

    #[test]
    fn only_the_registry_a_tag_came_from_unlinks_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        store
            .link(&app(), "v1", &digest('a'), None, &from("one:5000"))
            .unwrap();
        // Another registry not having the tag says nothing about this one.
        assert_eq!(
            store
                .unlink(&app(), "v1", history::now_millis(), &from("two:5000"))
                .unwrap(),
            Unlinked::OtherRegistry {
                linked: "one:5000/team/app".into()
            }
        );
        assert_eq!(store.read_link(&app(), "v1").unwrap(), Some(digest('a')));
        // Its own registry's delete unlinks, and the history says whose.
        assert_eq!(
            store
                .unlink(&app(), "v1", history::now_millis(), &from("one:5000"))
                .unwrap(),
            Unlinked::Removed(digest('a'))
        );
        let h = store.history(&app(), "v1").unwrap();
        assert_eq!(h.last().unwrap().change, Change::Unlinked);
        assert_eq!(h.last().unwrap().origin, from("one:5000"));
    }

    #[test]
    fn tags_lists_every_tag_directory_nested_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let o = Origin::default();
        store.link(&app(), "v1", &digest('a'), None, &o).unwrap();
        // org/app:dev, and the repository org/app/dev below it.
        let org = ImageName::from_repository("org/app");
        store.link(&org, "dev", &digest('b'), None, &o).unwrap();
        let nested = ImageName::from_repository("org/app/dev");
        store.link(&nested, "v2", &digest('c'), None, &o).unwrap();
        // A tag linked once and unlinked since: its history remains.
        store
            .link(&app(), "gone", &digest('d'), Some(4), &o)
            .unwrap();
        store
            .unlink(&app(), "gone", 5, &Origin::by("cli/rm"))
            .unwrap();
        let tags: Vec<String> = store
            .tags()
            .unwrap()
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(
            tags,
            [
                "org/app/dev:v2",
                "org/app:dev",
                "team/app:gone",
                "team/app:v1"
            ]
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/link");
        write_file_atomic(&p, b"one").unwrap();
        write_file_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
