//! Requested links: what the fleet was asked to link, recorded durably in
//! the store until it is linked or has failed for good.
//!
//! A message can be lost (a broker that drops what it was dead-lettering, a
//! Redis that forgets the fan-in records); the store is the truth. So
//! before any job is published, the fan-out records each link it asks for
//! here, and the fleet's resync re-publishes the jobs of a request that is
//! neither done, failed, nor showing signs of life. Level-triggered: what
//! was asked for is re-driven until it is done, whatever was lost.
//!
//! ```text
//! <store>/requests/<sha256 of "ns/image:tag">.json
//!   {"link": "team/app:v1", "manifest": "sha256:…", "decided_at": "…",
//!    "decided_by": "cli", "published_at": "…", "failed": null,
//!    "job": "<base64 of the encoded image job>"}
//! ```
//!
//! One request per link: the newest decision wins, as for the link itself
//! (see [`crate::store::StoreLayout::link`]). Every change happens under
//! the tag's lock, so a request and the link it asks for never disagree:
//!
//! - [`record`]: the fan-out, before publishing;
//! - linking or unlinking the tag settles the requests it makes moot (done
//!   inside `StoreLayout::link`/`unlink`);
//! - [`fail`]: the worker that dead-letters the image job; [`reopen`]:
//!   `exploder dlq replay`;
//! - [`touch`]: a worker handling the image job (the file's mtime is the
//!   request's last sign of life); [`mark_published`]: the resync.
//!
//! `link`, `manifest`, `decided_at` and `decided_by` repeat what the job
//! says, for people reading the file; the code reads the job.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::digest::Digest;
use crate::history::{self, rfc3339};
use crate::job::{self, ImageJob, Job, LinkTarget};
use crate::store::file as store_file;
use crate::store::{LinkError, StoreLayout, TagLock, other_registry, write_file_atomic};

/// One outstanding (or failed) request.
#[derive(Clone, Debug)]
pub struct Request {
    pub link: LinkTarget,
    pub job: ImageJob,
    /// When its jobs were last published (Unix seconds).
    pub published_at: i64,
    /// Why it failed for good (its image job was dead-lettered).
    pub failed: Option<String>,
    /// Its last sign of life (Unix seconds): written, or its image job
    /// handled by a worker.
    pub seen_at: i64,
}

impl Request {
    /// When the link was decided (Unix milliseconds).
    pub fn decided(&self) -> i64 {
        self.job.decided().unwrap_or(0)
    }

    /// What is known of it without its job.
    pub fn head(&self) -> Head {
        Head {
            link: self.link.clone(),
            job_id: self.job.id.clone(),
            manifest: self.job.manifest_digest.clone(),
            decided: self.decided(),
            decided_by: self.job.decided_by.clone(),
            published_at: self.published_at,
            failed: self.failed.is_some(),
            seen_at: self.seen_at,
        }
    }
}

/// A request without its job (which embeds the image's manifest and
/// config, kilobytes each): what a look over every request needs. The
/// resync holds one per request and reads the whole request ([`read`]) of
/// the few it works on, so its memory does not grow with the backlog's
/// images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub link: LinkTarget,
    /// The id of the job the request holds: [`read`] may find a newer one.
    pub job_id: String,
    pub manifest: Digest,
    /// When the link was decided (Unix milliseconds).
    pub decided: i64,
    pub decided_by: String,
    /// When its jobs were last published (Unix seconds).
    pub published_at: i64,
    /// Whether it failed for good.
    pub failed: bool,
    /// Its last sign of life (Unix seconds).
    pub seen_at: i64,
}

#[derive(Serialize, Deserialize)]
struct RequestFile {
    link: String,
    manifest: Digest,
    decided_at: String,
    decided_by: String,
    published_at: String,
    failed: Option<String>,
    job: String,
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

impl RequestFile {
    fn new(link: &LinkTarget, job: &ImageJob, published_at: i64, failed: Option<String>) -> Self {
        RequestFile {
            link: link.to_string(),
            manifest: job.manifest_digest.clone(),
            decided_at: job.enqueued_at.clone(),
            decided_by: job.decided_by.clone(),
            published_at: rfc3339(published_at),
            failed,
            job: STANDARD.encode(job::encode(&Job::Image(job.clone()))),
        }
    }

    fn read(path: &Path) -> io::Result<Option<(RequestFile, ImageJob, SystemTime)>> {
        let opened = match store_file::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mtime = opened.metadata()?.modified()?;
        let bytes = store_file::read_bounded(&opened, path, store_file::Kind::Request)?;
        let file: RequestFile = serde_json::from_slice(&bytes).map_err(|e| invalid(path, e))?;
        let body = STANDARD.decode(&file.job).map_err(|e| invalid(path, e))?;
        match job::decode(&body, None).map_err(|e| invalid(path, e))? {
            Job::Image(j) => Ok(Some((file, j, mtime))),
            Job::Layer(_) | Job::Export(_) => Err(invalid(path, "holds no image job")),
        }
    }

    fn write(&self, path: &Path) -> io::Result<()> {
        write_file_atomic(
            path,
            &serde_json::to_vec_pretty(self).expect("a request serializes"),
        )
    }
}

impl StoreLayout {
    /// Where the requested links wait until they are done.
    pub fn requests_dir(&self) -> PathBuf {
        self.root().join("requests")
    }

    /// The request file of one link.
    pub fn request_path(&self, link: &LinkTarget) -> PathBuf {
        let key = hex::encode(sha2::Sha256::digest(link.to_string().as_bytes()));
        self.requests_dir().join(format!("{key}.json"))
    }
}

/// Records that `job` asks for each of its links, durably, before its
/// messages are published. A link whose tag already has a later decision
/// (a newer push, a delete), or a later request, is not recorded: the job
/// is moot there. Returns the links recorded.
///
/// A tag linked to another registry's image is refused here already
/// ([`LinkError::OtherRegistry`], as `StoreLayout::link` would at the
/// end): the request is not recorded and nothing should be published.
pub fn record(store: &StoreLayout, job: &ImageJob) -> Result<Vec<LinkTarget>, LinkError> {
    // Before anything is in progress: gc must ask the fleet from now on.
    store.mark_fleet(&format!("a request decided by {}", job.decided_by))?;
    let decided = job.decided().unwrap_or(0);
    let origin = job.origin();
    let mut recorded = Vec::new();
    for link in &job.links {
        let name = link.name();
        StoreLayout::check_tag(&name, &link.tag)?;
        let lock = TagLock::acquire(&store.tag_dir(&name, &link.tag))?;
        let records = lock.records()?;
        if records
            .last()
            .is_some_and(|r| r.decided_or_written() > decided)
        {
            continue;
        }
        if let Ok(Some(current)) = store.current_locked(&lock, &name, &link.tag)
            && current != job.manifest_digest
            && let Some(refused) = other_registry(link, &records, &current, &origin)
        {
            return Err(refused);
        }
        let path = store.request_path(link);
        if let Some((_, existing, _)) = RequestFile::read(&path)?
            && existing.decided().unwrap_or(0) > decided
        {
            continue;
        }
        RequestFile::new(link, job, history::now(), None).write(&path)?;
        recorded.push(link.clone());
    }
    Ok(recorded)
}

/// Removes the request of a link that a change decided at `decided` makes
/// moot: every request decided earlier, and one decided in the same second
/// for the same digest (`digest` is what the tag now points at; `None`, an
/// unlink, settles any). Called by `StoreLayout::link`/`unlink` with the
/// tag's lock held.
pub(crate) fn settle_locked(
    store: &StoreLayout,
    link: &LinkTarget,
    decided: i64,
    digest: Option<&Digest>,
) -> io::Result<()> {
    let path = store.request_path(link);
    let Some(job) = read_leniently(&path)? else {
        return Ok(());
    };
    let asked = job.as_ref().map_or(0, |j| j.decided().unwrap_or(0));
    let same_digest = job
        .as_ref()
        .is_none_or(|j| digest.is_none_or(|d| d == &j.manifest_digest));
    if asked < decided || (asked == decided && same_digest) {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The `registry/repository` a request of `link` (outstanding or failed)
/// asks an image of, if that is another registry than `origin`'s: only
/// the registry a request came from may withdraw it (an origin naming no
/// registry, an operator's or an ImageStream's, may withdraw any). A file
/// that does not parse is of unknown origin: any change settles it. Called
/// by `StoreLayout::unlink` with the tag's lock held.
pub(crate) fn requested_from_other_registry(
    store: &StoreLayout,
    link: &LinkTarget,
    origin: &history::Origin,
) -> io::Result<Option<String>> {
    let Some(now) = &origin.registry else {
        return Ok(None);
    };
    let Some(Some(job)) = read_leniently(&store.request_path(link))? else {
        return Ok(None);
    };
    let asked = job.origin();
    Ok(match &asked.registry {
        Some(was) if was != now => Some(asked.source()),
        _ => None,
    })
}

/// Whether a change decided after `job` is recorded for `link` (a newer
/// push linked, or the tag was deleted): then the job is moot there, and
/// its request, if still recorded, is settled.
pub fn settle_if_superseded(
    store: &StoreLayout,
    link: &LinkTarget,
    job: &ImageJob,
) -> io::Result<bool> {
    let Some(decided) = job.decided() else {
        return Ok(false);
    };
    let name = link.name();
    let newer =
        |last: Option<&history::Record>| last.is_some_and(|r| r.decided_or_written() > decided);
    // A look without the lock first: the common answer is "no", and taking
    // the lock would create the tag's directory.
    if !newer(store.history(&name, &link.tag)?.last()) {
        return Ok(false);
    }
    let lock = TagLock::acquire(&store.tag_dir(&name, &link.tag))?;
    if !newer(lock.last()?.as_ref()) {
        return Ok(false);
    }
    settle_locked(store, link, decided, Some(&job.manifest_digest))?;
    Ok(true)
}

/// The job of a link's request, if there is one: `Some(None)` for a file
/// that does not parse (torn by a crash on a file system without atomic
/// rename, or from a future version), a request of unknown age that any
/// change settles, so it never blocks a tag.
fn read_leniently(path: &Path) -> io::Result<Option<Option<ImageJob>>> {
    match RequestFile::read(path) {
        Ok(found) => Ok(found.map(|(_, job, _)| Some(job))),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Some(None)),
        Err(e) => Err(e),
    }
}

/// Rewrites the request of `link` if it is still the one of job `job_id`.
/// Returns whether it was.
fn update(
    store: &StoreLayout,
    link: &LinkTarget,
    job_id: &str,
    change: impl FnOnce(&mut RequestFile),
) -> io::Result<bool> {
    let name = link.name();
    StoreLayout::check_tag(&name, &link.tag)?;
    let _lock = TagLock::acquire(&store.tag_dir(&name, &link.tag))?;
    let path = store.request_path(link);
    let Some((mut file, job, _)) = RequestFile::read(&path)? else {
        return Ok(false);
    };
    if job.id != job_id {
        return Ok(false);
    }
    change(&mut file);
    file.write(&path)?;
    Ok(true)
}

/// Marks the request failed for good (its image job was dead-lettered):
/// the resync leaves it alone until [`reopen`].
pub fn fail(
    store: &StoreLayout,
    link: &LinkTarget,
    job_id: &str,
    reason: &str,
) -> io::Result<bool> {
    update(store, link, job_id, |f| f.failed = Some(reason.to_string()))
}

/// Makes a failed request outstanding again (its job was replayed).
pub fn reopen(store: &StoreLayout, link: &LinkTarget, job_id: &str) -> io::Result<bool> {
    update(store, link, job_id, |f| {
        f.failed = None;
        f.published_at = rfc3339(history::now());
    })
}

/// Records that the request's jobs were published again at `at`.
pub fn mark_published(
    store: &StoreLayout,
    link: &LinkTarget,
    job_id: &str,
    at: i64,
) -> io::Result<bool> {
    update(store, link, job_id, |f| f.published_at = rfc3339(at))
}

/// A sign of life: a worker is handling the request's image job (its
/// mtime becomes now). No lock: at worst it touches a newer request of the
/// same link, which was just written anyway.
pub fn touch(store: &StoreLayout, link: &LinkTarget, job_id: &str) -> io::Result<()> {
    let path = store.request_path(link);
    match RequestFile::read(&path) {
        Ok(Some((_, job, _))) if job.id == job_id => std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(SystemTime::now()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every request in the store, oldest decision first. A file that does
/// not read is reported beside them, not fatal.
pub fn list(store: &StoreLayout) -> io::Result<(Vec<Request>, Vec<io::Error>)> {
    let (mut requests, unreadable) = scan(store, |r| r)?;
    requests.sort_by_cached_key(|r| (r.decided(), r.link.to_string()));
    Ok((requests, unreadable))
}

/// [`list`] without the jobs: each file is read whole, one at a time, and
/// only its [`Head`] kept.
pub fn list_heads(store: &StoreLayout) -> io::Result<(Vec<Head>, Vec<io::Error>)> {
    let (mut heads, unreadable) = scan(store, |r| r.head())?;
    heads.sort_by_cached_key(|h| (h.decided, h.link.to_string()));
    Ok((heads, unreadable))
}

/// The request of `link`, if one is recorded (it may hold another job
/// than a [`Head`] listed earlier: compare the ids).
pub fn read(store: &StoreLayout, link: &LinkTarget) -> io::Result<Option<Request>> {
    let path = store.request_path(link);
    match RequestFile::read(&path)? {
        Some((file, job, mtime)) => request_of(&path, file, job, mtime).map(Some),
        None => Ok(None),
    }
}

/// Every request file of the store, each turned into what `keep` makes of
/// it as it is read, unsorted.
fn scan<T>(
    store: &StoreLayout,
    mut keep: impl FnMut(Request) -> T,
) -> io::Result<(Vec<T>, Vec<io::Error>)> {
    let entries = match std::fs::read_dir(store.requests_dir()) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let (mut kept, mut unreadable) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry?.path();
        // Temporary files of atomic writes start with a dot.
        let is_request = path.extension().is_some_and(|e| e == "json")
            && path
                .file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
        if !is_request {
            continue;
        }
        match RequestFile::read(&path).and_then(|found| {
            found
                .map(|(f, j, m)| request_of(&path, f, j, m))
                .transpose()
        }) {
            Ok(Some(request)) => kept.push(keep(request)),
            Ok(None) => {}
            Err(e) => unreadable.push(e),
        }
    }
    Ok((kept, unreadable))
}

/// The request a file holds: its link must be one of its job's.
fn request_of(
    path: &Path,
    file: RequestFile,
    job: ImageJob,
    mtime: SystemTime,
) -> io::Result<Request> {
    let Some(link) = job
        .links
        .iter()
        .find(|l| l.to_string() == file.link)
        .cloned()
    else {
        return Err(invalid(path, "names a link its job does not have"));
    };
    Ok(Request {
        published_at: history::parse_rfc3339(&file.published_at).unwrap_or(0),
        failed: file.failed,
        seen_at: unix_seconds(mtime),
        link,
        job,
    })
}

/// The tags of `name` with a request recorded (outstanding or failed),
/// sorted: tags the fleet was asked for that may not be linked yet.
pub fn requested_tags(
    store: &StoreLayout,
    name: &crate::store::ImageName,
) -> io::Result<Vec<String>> {
    let (requests, _) = list_heads(store)?;
    let mut tags: Vec<String> = requests
        .into_iter()
        .filter(|r| &r.link.name() == name)
        .map(|r| r.link.tag)
        .collect();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What `exploder status` and the metrics say about the requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Neither linked nor failed yet.
    pub outstanding: usize,
    pub failed: usize,
    /// Seconds since the oldest outstanding request was decided.
    pub oldest_outstanding_seconds: Option<u64>,
}

impl Summary {
    pub fn of(requests: &[Head], now: i64) -> Summary {
        let mut s = Summary::default();
        for r in requests {
            if r.failed {
                s.failed += 1;
            } else {
                s.outstanding += 1;
                let age = (now - r.decided / 1000).max(0) as u64;
                s.oldest_outstanding_seconds =
                    Some(s.oldest_outstanding_seconds.unwrap_or(0).max(age));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Origin;
    use crate::image::ResolvedImage;
    use crate::job::JobSource;
    use crate::store::{ImageName, Linked};

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn job(manifest: char, decided: i64) -> ImageJob {
        let image = ResolvedImage {
            index_digest: None,
            manifest_digest: digest(manifest),
            manifest_media_type: crate::image::media_type::OCI_MANIFEST.into(),
            manifest: b"{}".to_vec(),
            config_digest: digest('c'),
            config: b"{}".to_vec(),
            layers: Vec::new(),
        };
        let mut j = ImageJob::new(
            &image,
            vec![LinkTarget::new(
                &ImageName::from_repository("team/app"),
                "v1",
            )],
            JobSource::Registry {
                registry: "r".into(),
                repository: "team/app".into(),
            },
            "cli",
            Vec::new(),
        );
        j.enqueued_at = history::rfc3339_millis(decided);
        j
    }

    fn app() -> ImageName {
        ImageName::from_repository("team/app")
    }

    fn outstanding(store: &StoreLayout) -> Vec<Request> {
        let (requests, unreadable) = list(store).unwrap();
        assert!(unreadable.is_empty(), "{unreadable:?}");
        requests
    }

    fn heads(requests: &[Request]) -> Vec<Head> {
        requests.iter().map(Request::head).collect()
    }

    #[test]
    fn heads_are_listed_in_the_order_of_the_requests_without_their_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let (mut a, mut b) = (job('a', 200), job('b', 100));
        b.links[0].tag = "v2".into();
        a.decided_by = "poll".into();
        record(&store, &a).unwrap();
        record(&store, &b).unwrap();
        let (listed, unreadable) = list_heads(&store).unwrap();
        assert!(unreadable.is_empty(), "{unreadable:?}");
        assert_eq!(listed, heads(&outstanding(&store)));
        assert_eq!(listed[0].job_id, b.id, "oldest decision first");
        assert_eq!(listed[1].decided_by, "poll");
        let whole = read(&store, &listed[1].link).unwrap().unwrap();
        assert_eq!(whole.job, a);
    }

    #[test]
    fn a_recorded_request_is_listed_until_its_link_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let j = job('a', 100);
        assert_eq!(record(&store, &j).unwrap(), j.links);
        let listed = outstanding(&store);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].job, j);
        assert_eq!(listed[0].link, j.links[0]);
        assert_eq!(listed[0].failed, None);
        assert_eq!(
            store
                .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
                .unwrap(),
            Linked::Changed
        );
        assert!(outstanding(&store).is_empty());
    }

    #[test]
    fn a_newer_request_replaces_an_older_one_and_survives_the_older_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        record(&store, &job('a', 100)).unwrap();
        let newer = job('b', 200);
        record(&store, &newer).unwrap();
        // A stale request is not recorded over a newer one.
        assert!(record(&store, &job('c', 150)).unwrap().is_empty());
        // The older job finishing links nothing and leaves the newer request.
        store
            .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
            .unwrap();
        let listed = outstanding(&store);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].job.id, newer.id);
    }

    #[test]
    fn a_superseded_job_settles_its_own_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        record(&store, &job('a', 100)).unwrap();
        store
            .unlink(&app(), "v1", 150, &Origin::by("test"))
            .unwrap();
        assert!(outstanding(&store).is_empty(), "the delete settles it");
        // A request decided before a recorded delete is moot.
        assert!(record(&store, &job('a', 120)).unwrap().is_empty());
    }

    #[test]
    fn only_the_registry_a_request_came_from_withdraws_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let j = job('a', 100);
        record(&store, &j).unwrap();
        let registry = |r: &str| Origin {
            registry: Some(r.into()),
            repository: Some("team/app".into()),
            by: Some("webhook/registry".into()),
            reason: None,
        };
        // Another registry not having the tag says nothing of this request.
        assert_eq!(
            store.unlink(&app(), "v1", 150, &registry("other")).unwrap(),
            crate::store::Unlinked::RequestedFromOtherRegistry {
                requested: "r/team/app".into()
            }
        );
        assert_eq!(outstanding(&store).len(), 1, "the request is kept");
        assert!(
            store.history(&app(), "v1").unwrap().is_empty(),
            "nothing recorded that would stop its job from linking"
        );
        // Its own registry's delete withdraws it.
        store.unlink(&app(), "v1", 160, &registry("r")).unwrap();
        assert!(outstanding(&store).is_empty());
    }

    #[test]
    fn a_same_second_link_of_another_digest_keeps_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        record(&store, &job('b', 100)).unwrap();
        store
            .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
            .unwrap();
        assert_eq!(outstanding(&store).len(), 1);
    }

    #[test]
    fn fail_and_reopen_apply_to_the_same_job_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let j = job('a', 100);
        record(&store, &j).unwrap();
        let link = &j.links[0];
        assert!(!fail(&store, link, "another job", "no").unwrap());
        assert!(fail(&store, link, &j.id, "layer x failed").unwrap());
        let listed = outstanding(&store);
        assert_eq!(listed[0].failed.as_deref(), Some("layer x failed"));
        assert_eq!(
            Summary::of(&heads(&listed), 160),
            Summary {
                outstanding: 0,
                failed: 1,
                oldest_outstanding_seconds: None
            }
        );
        assert!(reopen(&store, link, &j.id).unwrap());
        let listed = outstanding(&store);
        assert_eq!(listed[0].failed, None);
        assert_eq!(
            Summary::of(&heads(&listed), 160).oldest_outstanding_seconds,
            Some(160),
            "decided 100 ms after the epoch"
        );
    }

    #[test]
    fn touch_and_mark_published_record_signs_of_life() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let j = job('a', 100);
        record(&store, &j).unwrap();
        let link = &j.links[0];
        let path = store.request_path(link);
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(outstanding(&store)[0].seen_at, 1_000);
        touch(&store, link, "another job").unwrap();
        assert_eq!(outstanding(&store)[0].seen_at, 1_000);
        touch(&store, link, &j.id).unwrap();
        assert!(outstanding(&store)[0].seen_at > 1_000);
        assert!(mark_published(&store, link, &j.id, 5_000).unwrap());
        assert_eq!(outstanding(&store)[0].published_at, 5_000);
    }

    #[test]
    fn an_unreadable_request_is_reported_and_settled_by_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreLayout::new(dir.path());
        let link = LinkTarget::new(&app(), "v1");
        let path = store.request_path(&link);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{torn").unwrap();
        let (requests, unreadable) = list(&store).unwrap();
        assert!(requests.is_empty());
        assert_eq!(unreadable.len(), 1);
        store
            .link(&app(), "v1", &digest('a'), Some(100), &Origin::default())
            .unwrap();
        assert!(!path.exists());
    }
}
