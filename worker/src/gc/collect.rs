//! How gc removes what its plan lets go while the fleet keeps working:
//! set every candidate aside in `<store>/gc/` (one rename each), ask the
//! fleet again what is in progress, put back what that needs (or what a
//! tag points at again), delete the rest. A gc that dies half way leaves
//! its candidates in `gc/`; the next one puts them back first
//! ([`recover`]) and decides again.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use exploder_common::digest::Digest;
use exploder_common::job::{self, ImageJob, Job};
use exploder_common::request;
use exploder_common::store::{StoreLayout, objects};
use exploder_queue::index::{Index, IndexError};
use std::os::unix::fs::MetadataExt;

use super::{GcPlan, GcStats, layer_bytes};
use crate::layer::{Staging, remove_tree};

/// Why a collection stopped. Whatever it had set aside is put back first.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("reading the images in progress from Redis: {0}")]
    Index(#[from] IndexError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> GcError {
    move |source| GcError::Io { context, source }
}

/// A candidate moved out of sight into `<store>/gc/`, to be deleted or put
/// back. Not `tmp/`: a gc that dies between the move and the decision must
/// not lose something a tag needs, so the next gc first puts everything in
/// `gc/` back ([`recover`]) and decides again.
pub struct Quarantined {
    from: PathBuf,
    at: PathBuf,
}

impl Quarantined {
    /// Puts it back where it was (an image in progress needs it). If a
    /// worker rebuilt it there meanwhile, the set-aside copy is dropped.
    pub fn restore(self) -> io::Result<()> {
        match std::fs::rename(&self.at, &self.from) {
            Ok(()) => Ok(()),
            Err(_) if self.from.exists() => remove_tree(&self.at),
            Err(e) => Err(e),
        }
    }

    /// Deletes it.
    pub fn delete(self) -> io::Result<()> {
        remove_tree(&self.at)
    }
}

fn gc_dir(layout: &StoreLayout) -> PathBuf {
    layout.root().join("gc")
}

/// Moves `dir` (a digest or layer directory) into `<store>/gc/<kind>-<hex>`.
/// `None` if it is gone already.
pub fn quarantine(
    layout: &StoreLayout,
    kind: &str,
    digest: &Digest,
    dir: &Path,
) -> io::Result<Option<Quarantined>> {
    std::fs::create_dir_all(gc_dir(layout))?;
    let q = Quarantined {
        from: dir.to_path_buf(),
        at: gc_dir(layout).join(format!("{kind}-{}", digest.hex())),
    };
    if q.at.exists() {
        remove_tree(&q.at)?;
    }
    match std::fs::rename(dir, &q.at) {
        Ok(()) => Ok(Some(q)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the objects nothing links any more (link count 1: only
/// `objects/` holds them), beside ingests that may be linking them right
/// now: each is first moved into `gc/object-<hex>` (one rename: from then
/// on an ingest that looks for it finds nothing and writes its own copy),
/// and its link count read again there. Still 1: nobody linked it before
/// the move, and nobody can reach it since: deleted. More: an ingest
/// linked it just before the move: put back (unless a new object for the
/// key was made meanwhile; the ingest keeps its link either way). Returns
/// how many were deleted and their bytes.
pub fn reclaim_objects(layout: &StoreLayout) -> io::Result<(u64, u64)> {
    let mut unlinked = Vec::new();
    objects::walk(layout.root(), |found| {
        if found.links <= 1 {
            unlinked.push(found);
        }
        Ok(())
    })?;
    if unlinked.is_empty() {
        return Ok((0, 0));
    }
    std::fs::create_dir_all(gc_dir(layout))?;
    let (mut removed, mut bytes) = (0, 0);
    for found in unlinked {
        let size = found.bytes;
        if reclaim_object(layout, found)? {
            removed += 1;
            bytes += size;
        }
    }
    Ok((removed, bytes))
}

/// One object [`objects::walk`] found with one link: set aside, checked
/// again, deleted or put back. Returns whether it was deleted.
fn reclaim_object(layout: &StoreLayout, found: objects::Found) -> io::Result<bool> {
    let from = layout.objects_dir().join(&found.rel);
    let at = gc_dir(layout).join(format!("object-{}", found.key.name()));
    match std::fs::rename(&from, &at) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let links = match std::fs::symlink_metadata(&at) {
        Ok(md) => md.nlink(),
        // Another gc's recover() put it back meanwhile: it decides.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if links <= 1 {
        std::fs::remove_file(&at)?;
        Ok(true)
    } else {
        restore_object(layout, &at, &found.key.name())?;
        Ok(false)
    }
}

/// Puts an object set aside at `at` back under its key, unless the key
/// has an object again (then the set-aside one goes: what links it keeps
/// it). A link, not a rename: it never replaces, on NFS too.
fn restore_object(layout: &StoreLayout, at: &Path, name: &str) -> io::Result<()> {
    if let Some(key) = objects::ObjectKey::from_name(name) {
        let to = layout.objects_dir().join(key.rel_path());
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::hard_link(at, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_file(at) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Puts back whatever an interrupted gc left set aside. Returns how many.
pub fn recover(layout: &StoreLayout) -> io::Result<usize> {
    let entries = match std::fs::read_dir(gc_dir(layout)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut restored = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, hex)) = name.split_once('-') else {
            continue;
        };
        if kind == "object" {
            // `<key hex>` or, for a copy, `<key hex>.<n>`.
            restore_object(layout, &entry.path(), hex)?;
            restored += 1;
            continue;
        }
        let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
            continue;
        };
        let from = match kind {
            "digest" => layout.digest_dir(&digest),
            "layer" => layout.layer_dir(&digest),
            _ => continue,
        };
        Quarantined {
            from,
            at: entry.path(),
        }
        .restore()?;
        restored += 1;
    }
    Ok(restored)
}

/// Every manifest a link points at now, and how many tags were read: one
/// pass over the tags, read as `read_link` reads them (a change recorded
/// but not yet made is waited for or finished, so a link being written
/// right now is seen). A tag that cannot be read protects nothing, as it
/// did when each candidate was checked on its own.
pub fn linked_manifests(layout: &StoreLayout) -> io::Result<(HashSet<Digest>, usize)> {
    let tags = layout.tags()?;
    let linked = tags
        .iter()
        .filter_map(|link| layout.read_link(&link.name(), &link.tag).ok().flatten())
        .collect();
    Ok((linked, tags.len()))
}

/// The images the fleet is working on: (manifest, layers), from the image
/// jobs recorded in Redis and the requests recorded in the store (which
/// survive Redis losing everything). `index` is `None` only for a store no
/// fleet ever used (`StoreLayout::fleet_used`): no image job of it can be
/// in Redis.
pub async fn in_progress(
    index: Option<&Index>,
    layout: &StoreLayout,
) -> Result<Vec<(Digest, Vec<Digest>)>, GcError> {
    let jobs = match index {
        Some(index) => index.recorded_image_jobs().await?,
        None => Vec::new(),
    };
    let mut held: Vec<ImageJob> = jobs
        .iter()
        .filter_map(|body| match job::decode(body, None) {
            Ok(Job::Image(j)) => Some(j),
            _ => None,
        })
        .collect();
    let (requests, _) = request::list(layout).map_err(io_error(format!(
        "reading the requests in {}",
        layout.requests_dir().display()
    )))?;
    held.extend(
        requests
            .into_iter()
            .filter(|r| r.failed.is_none())
            .map(|r| r.job),
    );
    Ok(held
        .into_iter()
        .map(|j| {
            (
                j.manifest_digest,
                j.layers.into_iter().map(|l| l.diff_id).collect(),
            )
        })
        .collect())
}

/// A candidate set aside: a digest directory or a layer.
struct Aside {
    kind: Kind,
    digest: Digest,
    /// A layer's size (its `layer.json`), read before it moved.
    bytes: u64,
    q: Quarantined,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Digest,
    Layer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Digest => "digest",
            Kind::Layer => "layer",
        }
    }
}

/// Moves every candidate out of sight, asks the fleet again what is in
/// progress, puts back what that needs (or what a tag points at again),
/// deletes the rest. Returns what was deleted. On any error everything
/// still set aside is put back.
///
/// The tags are read once, after the fleet was asked: not once per
/// candidate. That is as safe as reading them per candidate, which also
/// happened after the fleet was asked: a fleet link to a candidate is
/// either still requested then (its request is settled only after the
/// link is written, under the tag's lock) and so in progress, or written,
/// and so read here.
pub async fn collect(
    layout: &StoreLayout,
    index: Option<&Index>,
    plan: GcPlan,
) -> Result<GcPlan, GcError> {
    let started = Instant::now();
    let mut aside: Vec<Aside> = Vec::new();
    let result = async {
        for d in &plan.digests {
            if let Some(q) = quarantine(layout, "digest", d, &layout.digest_dir(d))
                .map_err(io_error(format!("moving digest {d} aside")))?
            {
                aside.push(Aside {
                    kind: Kind::Digest,
                    digest: d.clone(),
                    bytes: 0,
                    q,
                });
            }
        }
        for l in &plan.layers {
            let bytes = layer_bytes(&layout.layer_dir(l));
            if let Some(q) = quarantine(layout, "layer", l, &layout.layer_dir(l))
                .map_err(io_error(format!("moving layer {l} aside")))?
            {
                aside.push(Aside {
                    kind: Kind::Layer,
                    digest: l.clone(),
                    bytes,
                    q,
                });
            }
        }
        in_progress(index, layout).await
    }
    .await;
    let held = match result {
        Ok(h) => h,
        Err(e) => {
            for a in aside {
                let _ = a.q.restore();
            }
            return Err(e);
        }
    };
    let mut stats = plan.stats.clone();
    let (mut removed, mut first_error) = settle(layout, plan, aside, &held, &mut stats, started);
    // Last: the layers just deleted were what held some objects.
    let reclaiming = Instant::now();
    match reclaim_objects(layout) {
        Ok((n, bytes)) => {
            removed.objects = n;
            removed.object_bytes = bytes;
        }
        Err(e) => {
            first_error.get_or_insert(GcError::Io {
                context: format!("reclaiming objects in {}", layout.objects_dir().display()),
                source: e,
            });
        }
    }
    stats.removing_seconds += reclaiming.elapsed().as_secs_f64();
    // One command for every layer deleted. Best effort: the index is a
    // hint a worker confirms against the store.
    if let Some(index) = index {
        let _ = index.forget_layers(&removed.layers).await;
    }
    removed.stats = stats;
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// The decision after the fleet was asked again: each candidate set aside
/// is put back if an image in progress (`held`) or a link needs it, and
/// deleted otherwise; then dead staging directories are swept. Reads the
/// tags once, and only if a digest directory is at stake. Returns what
/// was deleted and the first error met (the rest goes on regardless).
fn settle(
    layout: &StoreLayout,
    plan: GcPlan,
    aside: Vec<Aside>,
    held: &[(Digest, Vec<Digest>)],
    stats: &mut GcStats,
    started: Instant,
) -> (GcPlan, Option<GcError>) {
    let held_manifests: HashSet<&Digest> = held.iter().map(|(m, _)| m).collect();
    let held_layers: HashSet<&Digest> = held.iter().flat_map(|(_, l)| l).collect();
    // `None`: the tags could not be listed, so any digest may be linked
    // again: every digest directory goes back (fail safe).
    let linked = if aside.iter().any(|a| a.kind == Kind::Digest) {
        match linked_manifests(layout) {
            Ok((linked, read)) => {
                stats.links_read += read;
                Some(linked)
            }
            Err(_) => None,
        }
    } else {
        Some(HashSet::new())
    };
    stats.recheck_seconds = started.elapsed().as_secs_f64();
    let removing = Instant::now();
    let verdicts: HashMap<(&'static str, Digest), usize> = plan
        .verdicts
        .iter()
        .enumerate()
        .map(|(i, v)| ((v.kind, v.digest.clone()), i))
        .collect();
    let mut removed = GcPlan {
        kept_digests: plan.kept_digests,
        kept_layers: plan.kept_layers,
        verdicts: plan.verdicts,
        damaged: plan.damaged,
        ..Default::default()
    };
    let mut first_error = None;
    for Aside {
        kind,
        digest: d,
        bytes,
        q,
    } in aside
    {
        let keep = match kind {
            Kind::Digest => {
                held_manifests.contains(&d) || linked.as_ref().is_none_or(|l| l.contains(&d))
            }
            Kind::Layer => held_layers.contains(&d),
        };
        let what = kind.name();
        let done = if keep {
            match kind {
                Kind::Digest => removed.kept_digests += 1,
                Kind::Layer => removed.kept_layers += 1,
            }
            if let Some(&i) = verdicts.get(&(what, d.clone())) {
                let v = &mut removed.verdicts[i];
                v.remove = false;
                v.reason = "needed again while gc ran (in progress, or linked again)".into();
            }
            q.restore()
                .map_err(io_error(format!("restoring {what} {d}")))
        } else {
            let r = q.delete().map_err(io_error(format!("deleting {what} {d}")));
            if r.is_ok() {
                match kind {
                    Kind::Digest => removed.digests.push(d),
                    Kind::Layer => {
                        removed.layer_bytes += bytes;
                        removed.layers.push(d);
                    }
                }
            }
            r
        };
        if let Err(e) = done {
            first_error.get_or_insert(e);
        }
    }
    match Staging::sweep(&layout.tmp_dir()) {
        Ok(n) => removed.dead_staging = n,
        Err(e) => {
            first_error.get_or_insert(GcError::Io {
                context: format!("sweeping {}", layout.tmp_dir().display()),
                source: e,
            });
        }
    }
    stats.removing_seconds = removing.elapsed().as_secs_f64();
    (removed, first_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::Verdict;
    use exploder_common::history::Origin;
    use exploder_common::store::ImageName;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    /// A store holding digest directories for `images`, and a plan that
    /// removes them all.
    fn store_and_plan(images: &[&Digest]) -> (tempfile::TempDir, StoreLayout, GcPlan) {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path());
        let mut plan = GcPlan::default();
        for d in images {
            std::fs::create_dir_all(layout.rootfs_dir(d)).unwrap();
            plan.digests.push((*d).clone());
            plan.verdicts.push(Verdict {
                kind: "digest",
                digest: (*d).clone(),
                remove: true,
                reason: "no tag names it".into(),
            });
        }
        (dir, layout, plan)
    }

    fn set_aside(layout: &StoreLayout, plan: &GcPlan) -> Vec<Aside> {
        plan.digests
            .iter()
            .map(|d| Aside {
                kind: Kind::Digest,
                digest: d.clone(),
                bytes: 0,
                q: quarantine(layout, "digest", d, &layout.digest_dir(d))
                    .unwrap()
                    .unwrap(),
            })
            .collect()
    }

    #[test]
    fn a_digest_linked_while_it_was_set_aside_is_put_back_and_the_rest_deleted() {
        let (a, b) = (digest('a'), digest('b'));
        let (_dir, layout, plan) = store_and_plan(&[&a, &b]);
        let aside = set_aside(&layout, &plan);
        assert!(!layout.has_image(&a));
        // A worker that found the image built links it meanwhile.
        let app = ImageName::from_repository("team/app");
        layout
            .link(&app, "v1", &a, None, &Origin::by("test"))
            .unwrap();
        let mut stats = GcStats::default();
        let (removed, error) = settle(&layout, plan, aside, &[], &mut stats, Instant::now());
        assert!(error.is_none());
        assert!(layout.has_image(&a));
        assert!(!layout.has_image(&b));
        assert_eq!(removed.digests, vec![b]);
        let verdict = removed.verdicts.iter().find(|v| v.digest == a).unwrap();
        assert!(!verdict.remove, "{verdict:?}");
    }

    #[test]
    fn a_digest_an_image_in_progress_needs_is_put_back() {
        let a = digest('a');
        let (_dir, layout, plan) = store_and_plan(&[&a]);
        let aside = set_aside(&layout, &plan);
        let held = vec![(a.clone(), Vec::new())];
        let mut stats = GcStats::default();
        let (removed, error) = settle(&layout, plan, aside, &held, &mut stats, Instant::now());
        assert!(error.is_none());
        assert!(layout.has_image(&a));
        assert!(removed.digests.is_empty());
    }

    /// An object in the store, `objects/<2 hex>/<hex>`, holding `content`.
    fn object(layout: &StoreLayout, content: &[u8]) -> objects::Found {
        let key = objects::ObjectKey::of(
            &[content.len() as u8; 32],
            &objects::ObjectMeta {
                owners_applied: true,
                uid: 0,
                gid: 0,
                mode: 0o644,
                mtime_sec: 0,
                mtime_nsec: 0,
                xattrs: &[],
            },
        );
        let path = layout.objects_dir().join(key.rel_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        objects::Found {
            rel: key.rel_path(),
            key,
            links: 1,
            bytes: content.len() as u64,
        }
    }

    #[test]
    fn an_object_linked_after_gc_saw_it_unlinked_is_put_back() {
        let store = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(store.path());
        let found = object(&layout, b"shared");
        let stored = layout.objects_dir().join(&found.rel);
        // An ingest links it between gc's walk and its move.
        let layer_file = store.path().join("layer-file");
        std::fs::hard_link(&stored, &layer_file).unwrap();
        std::fs::create_dir_all(gc_dir(&layout)).unwrap();
        assert!(!reclaim_object(&layout, found).unwrap());
        assert_eq!(std::fs::read(&stored).unwrap(), b"shared");
        assert_eq!(std::fs::read_dir(gc_dir(&layout)).unwrap().count(), 0);
    }

    #[test]
    fn objects_nothing_links_are_deleted_and_linked_ones_stay() {
        let store = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(store.path());
        let garbage = object(&layout, b"garbage");
        let kept = object(&layout, b"kept by a layer");
        let kept_path = layout.objects_dir().join(&kept.rel);
        std::fs::hard_link(&kept_path, store.path().join("layer-file")).unwrap();
        assert_eq!(reclaim_objects(&layout).unwrap(), (1, 7));
        assert!(!layout.objects_dir().join(&garbage.rel).exists());
        assert!(kept_path.exists());
    }

    #[test]
    fn an_object_an_interrupted_gc_set_aside_is_put_back_by_the_next() {
        let store = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(store.path());
        let found = object(&layout, b"interrupted");
        // And the key's second copy (`<hex>.1`).
        let copy = found.key.copy(1);
        let copy_path = layout.objects_dir().join(copy.rel_path());
        std::fs::write(&copy_path, b"interrupted").unwrap();
        let stored = layout.objects_dir().join(&found.rel);
        std::fs::create_dir_all(gc_dir(&layout)).unwrap();
        for (path, key) in [(&stored, found.key), (&copy_path, copy)] {
            let aside = gc_dir(&layout).join(format!("object-{}", key.name()));
            std::fs::rename(path, aside).unwrap();
        }
        assert_eq!(recover(&layout).unwrap(), 2);
        assert_eq!(std::fs::read(&stored).unwrap(), b"interrupted");
        assert_eq!(std::fs::read(&copy_path).unwrap(), b"interrupted");
    }

    #[test]
    fn the_tags_are_read_once_whatever_the_number_of_candidates() {
        let candidates: Vec<Digest> = "0123456789".chars().map(digest).collect();
        let app = ImageName::from_repository("team/app");
        let mut reads = Vec::new();
        for n in [1, candidates.len()] {
            let wanted: Vec<&Digest> = candidates[..n].iter().collect();
            let (_dir, layout, plan) = store_and_plan(&wanted);
            for t in 0..25 {
                let kept = digest('f');
                layout
                    .link(&app, &format!("t{t}"), &kept, None, &Origin::by("test"))
                    .unwrap();
            }
            let aside = set_aside(&layout, &plan);
            let mut stats = GcStats::default();
            let (removed, _) = settle(&layout, plan, aside, &[], &mut stats, Instant::now());
            assert_eq!(removed.digests.len(), n);
            reads.push(stats.links_read);
        }
        assert_eq!(reads, vec![25, 25]);
    }
}
