//! A tag's two files and the order they change in: `history` is the
//! record, `link` what the record says, materialized.
//!
//! Every change of a link is recorded first, durably, and only then made
//! (write-ahead): `link` appends `<digest> decided=… by=…` and then
//! writes `link`; `unlink` appends `unlinked …` and then removes it. So a
//! change nobody recorded is never visible, and the history's last line
//! is the tag's state. The link file can lag behind it in two cases: a
//! writer between its two steps (it holds the tag's lock), or a writer
//! that died there. Readers and writers treat such a record as the change
//! to finish:
//!
//! - a writer, under the lock, finishes it before deciding anything
//!   ([`StoreLayout::current_locked`]);
//! - a reader ([`StoreLayout::read_link`]) that sees the two disagree
//!   waits for the lock (a live writer finishes first), then finishes what
//!   a dead one left; without write access to the store it answers what
//!   the record says.
//!
//! A record naming an image whose digest directory is gone is not
//! finished (a store written before this order could hold one, where a
//! crash removed the link but not yet its record, and gc then took the
//! image): the link file stands.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use super::{StoreLayout, file, sync_dir, write_file_atomic};
use crate::digest::Digest;
use crate::history::{self, Change, Record};
use crate::store::ImageName;

/// An exclusive `flock` on a tag's history for one read-decide-write
/// (producers unlinking and workers linking the same tag). Advisory and
/// local to a host's view of the file: on a shared store across machines
/// it needs a file system with working `flock` (NFSv4 has it). Not
/// re-entrant: a thread holding it must not take it again (another open
/// file description blocks on it), so code under the lock reads the tag
/// with [`StoreLayout::current_locked`], never [`StoreLayout::read_link`].
pub(crate) struct TagLock {
    history: fs::File,
    path: PathBuf,
}

impl TagLock {
    pub(crate) fn acquire(tag_dir: &Path) -> io::Result<TagLock> {
        fs::create_dir_all(tag_dir)?;
        let history = file::open_with(
            &tag_dir.join("history"),
            OFlags::RDWR | OFlags::APPEND | OFlags::CREATE,
        )?;
        rustix::fs::flock(&history, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(TagLock {
            history,
            path: tag_dir.join("history"),
        })
    }

    /// Every record, oldest first (read from the start each time).
    pub(crate) fn records(&self) -> io::Result<Vec<Record>> {
        (&self.history).seek(SeekFrom::Start(0))?;
        let bytes = file::read_bounded(&self.history, &self.path, file::Kind::History)?;
        Ok(history::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The newest record.
    pub(crate) fn last(&self) -> io::Result<Option<Record>> {
        Ok(self.records()?.pop())
    }

    /// Appends `record`, durably: the change it records may be made only
    /// once this returns.
    pub(crate) fn append(&self, record: &Record) -> io::Result<()> {
        (&self.history).write_all(format!("{}\n", record.line()).as_bytes())?;
        self.history.sync_data()
    }
}

/// What the link file must become for the record `last` to hold, when it
/// does not already: `Some(Some(d))` write `d`, `Some(None)` remove it.
/// `file` is the link file as read (`Err`: torn or unreadable).
fn unfinished(
    store: &StoreLayout,
    last: Option<&Record>,
    file: &io::Result<Option<Digest>>,
) -> Option<Option<Digest>> {
    match &last?.change {
        Change::Linked(d) => {
            let done = matches!(file, Ok(Some(current)) if current == d);
            (!done && store.has_image(d)).then(|| Some(d.clone()))
        }
        Change::Unlinked => (!matches!(file, Ok(None))).then_some(None),
    }
}

impl StoreLayout {
    /// The link file alone, as written (`InvalidData` if it does not parse).
    fn read_link_file(&self, name: &ImageName, tag: &str) -> io::Result<Option<Digest>> {
        match file::read_to_string(&self.link_path(name, tag), file::Kind::Link) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What the tag is linked to: the change its history records last
    /// (see the module documentation). A link that does not parse is
    /// `InvalidData` unless a record says what it should be.
    pub fn read_link(&self, name: &ImageName, tag: &str) -> io::Result<Option<Digest>> {
        Self::check_tag(name, tag)?;
        let file = self.read_link_file(name, tag);
        let last = last_record(&self.tag_dir(name, tag).join("history"))?;
        let Some(recorded) = unfinished(self, last.as_ref(), &file) else {
            return file;
        };
        // Behind its record: wait for the writer, or finish for the dead.
        match TagLock::acquire(&self.tag_dir(name, tag)) {
            Ok(guard) => {
                let file = self.read_link_file(name, tag);
                match unfinished(self, guard.last()?.as_ref(), &file) {
                    None => file,
                    // The record is the answer even if the link cannot be
                    // made now (a full store): the next writer finishes it.
                    Some(target) => {
                        let _ = self.make_link(name, tag, target.as_ref());
                        Ok(target)
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                Ok(recorded)
            }
            Err(e) => Err(e),
        }
    }

    /// The tag's link, under its lock, after finishing the change its last
    /// record says and the link file does not show yet (a writer died
    /// between the two). Returns the link file as it is then; an error if
    /// the change cannot be finished (a full store), so that a writer never
    /// decides on top of it nor records anything more.
    pub(crate) fn current_locked(
        &self,
        guard: &TagLock,
        name: &ImageName,
        tag: &str,
    ) -> io::Result<Option<Digest>> {
        let file = self.read_link_file(name, tag);
        match unfinished(self, guard.last()?.as_ref(), &file) {
            None => file,
            Some(target) => {
                self.make_link(name, tag, target.as_ref())?;
                Ok(target)
            }
        }
    }

    /// Makes the link file say `target` (a recorded change's second step):
    /// written atomically, or removed, durably either way.
    pub(crate) fn make_link(
        &self,
        name: &ImageName,
        tag: &str,
        target: Option<&Digest>,
    ) -> io::Result<()> {
        let path = self.link_path(name, tag);
        match target {
            Some(d) => write_file_atomic(&path, d.to_string().as_bytes()),
            None => match fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.tag_dir(name, tag)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        }
    }
}

/// The last record of a history file, read from its end (a tag pushed
/// for months has a long history; readers want only its state). `None`
/// when there is no file or no record.
pub(crate) fn last_record(path: &Path) -> io::Result<Option<Record>> {
    const TAIL: u64 = 8192;
    let mut file = match file::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    (&mut file).take(TAIL).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // From the middle of the file, the first line may be cut: skip it.
    let whole = if start > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    match history::parse(whole).pop() {
        Some(r) => Ok(Some(r)),
        // No whole record in the tail (lines this long are not written,
        // but a torn tail could hide the last good one): read it all.
        None if start > 0 => {
            let text = file::read_to_string(path, file::Kind::History)?;
            Ok(history::parse(&text).pop())
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Origin;
    use crate::store::tests::{app, digest};
    use crate::store::{Linked, Unlinked};

    /// A store with `d` exploded (its rootfs present).
    fn store_with(images: &[&Digest]) -> (tempfile::TempDir, StoreLayout) {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        for d in images {
            fs::create_dir_all(store.rootfs_dir(d)).unwrap();
        }
        (dir, store)
    }

    /// What a writer that died between its record and its link leaves.
    fn record_only(store: &StoreLayout, change: Change) {
        let guard = TagLock::acquire(&store.tag_dir(&app(), "v1")).unwrap();
        guard
            .append(&Record {
                at: history::now(),
                change,
                decided: Some(history::now_millis()),
                origin: Origin::by("test"),
            })
            .unwrap();
    }

    fn link_file(store: &StoreLayout) -> Option<String> {
        fs::read_to_string(store.link_path(&app(), "v1")).ok()
    }

    #[test]
    fn a_link_recorded_but_not_yet_written_reads_as_linked_and_is_written_by_the_reader() {
        let a = digest('a');
        let (_dir, store) = store_with(&[&a]);
        record_only(&store, Change::Linked(a.clone()));
        assert_eq!(link_file(&store), None);
        assert_eq!(store.read_link(&app(), "v1").unwrap(), Some(a.clone()));
        assert_eq!(link_file(&store), Some(a.to_string()));
        assert_eq!(store.linked_tags(&app()).unwrap(), vec!["v1".to_string()]);
    }

    #[test]
    fn an_unlink_recorded_but_not_yet_made_reads_as_unlinked_and_the_reader_removes_the_link() {
        let a = digest('a');
        let (_dir, store) = store_with(&[&a]);
        store
            .link(&app(), "v1", &a, Some(100), &Origin::default())
            .unwrap();
        record_only(&store, Change::Unlinked);
        assert_eq!(store.read_link(&app(), "v1").unwrap(), None);
        assert_eq!(link_file(&store), None);
        assert!(store.linked_tags(&app()).unwrap().is_empty());
    }

    #[test]
    fn the_next_change_finishes_the_recorded_one_before_deciding() {
        let a = digest('a');
        let (_dir, store) = store_with(&[&a]);
        // Died after recording a -> the tag's state is a, so linking a
        // again changes nothing and adds no record ...
        record_only(&store, Change::Linked(a.clone()));
        assert_eq!(
            store
                .link(&app(), "v1", &a, None, &Origin::default())
                .unwrap(),
            Linked::Unchanged
        );
        assert_eq!(link_file(&store), Some(a.to_string()));
        assert_eq!(store.history(&app(), "v1").unwrap().len(), 1);
        // ... and an unlink recorded but not made is finished by the next
        // unlink, which reports the tag as already gone.
        record_only(&store, Change::Unlinked);
        assert_eq!(
            store
                .unlink(&app(), "v1", history::now_millis() + 1, &Origin::by("t"))
                .unwrap(),
            Unlinked::NotLinked
        );
        assert_eq!(link_file(&store), None);
    }

    #[test]
    fn a_record_whose_image_is_gone_leaves_the_link_file_as_it_is() {
        // A store from before this order: the link removed, its unlink
        // never recorded, the image collected since.
        let a = digest('a');
        let (_dir, store) = store_with(&[]);
        record_only(&store, Change::Linked(a));
        assert_eq!(store.read_link(&app(), "v1").unwrap(), None);
        assert_eq!(link_file(&store), None);
    }

    #[test]
    fn the_last_record_is_read_from_the_end_of_a_long_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history");
        let mut text = String::new();
        for i in 0..2000 {
            let r = Record {
                at: 1_700_000_000 + i,
                change: Change::Linked(digest(if i % 2 == 0 { 'a' } else { 'b' })),
                decided: Some((1_700_000_000 + i) * 1000),
                origin: Origin::by("poll"),
            };
            text.push_str(&r.line());
            text.push('\n');
        }
        // A torn last line is skipped.
        text.push_str("2026-11-2");
        fs::write(&path, &text).unwrap();
        let last = last_record(&path).unwrap().unwrap();
        assert_eq!(last.at, 1_700_001_999);
        assert_eq!(last.change, Change::Linked(digest('b')));
        assert_eq!(last_record(&dir.path().join("none")).unwrap(), None);
    }
}
