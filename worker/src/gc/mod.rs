//! Retention and garbage collection of the store (`exploder gc`).
//!
//! What is kept:
//! - every digest a link points at;
//! - per tag that exists (or was deleted less than `keep_younger_than`
//!   ago), the last `keep_revisions` digests of its history: the rollback
//!   revisions; a deleted tag keeps none once its delete is older;
//! - every digest a tag pointed at less than `keep_younger_than` ago;
//! - digest directories finalized less than `grace` ago (an explode that has
//!   not linked yet), and layers ingested less than `grace` ago;
//! - every layer a kept digest directory uses;
//! - every image the fleet is still working on, with its layers (the caller
//!   passes them: the image jobs recorded in Redis and the requests
//!   recorded in the store).
//!
//! Staging directories of dead workers in `tmp/` go too (the same sweep
//! every worker runs).
//!
//! Removal races with explodes running at the same time, so it goes in two
//! steps: a candidate is first *moved* into `gc/` (one rename: from then
//! on nothing sees it as present, so a new fan-out enqueues its layers
//! again), then the caller asks the fleet once more which images are in
//! progress, and anything one of them needs is moved back; the rest is
//! deleted. A fan-out records its image job before it checks, once more,
//! that the layers it found are still there (see `FanOut::enqueue`), so
//! either gc sees the job, or the fan-out sees the layer gone. That
//! protocol is [`collect`]'s; this module holds the rules ([`plan`]).
//!
//! A collection reads every tag twice, whatever it removes: once to plan,
//! once more after asking the fleet again (a tag may point at a candidate
//! by then). Everything else is looked up in hash sets, so removing 1,000
//! images of 100,000 costs the disk's deletes, not 1,000 reads of every
//! link. [`GcStats`] reports the reads and where the time went.

mod collect;

pub use collect::{
    GcError, Quarantined, collect, in_progress, linked_manifests, quarantine, reclaim_objects,
    recover,
};

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use exploder_common::digest::Digest;
use exploder_common::history::{self, Change};
use exploder_common::store::StoreLayout;
use exploder_common::store::file::{self as store_file, Kind};
use serde::Serialize;

use crate::finalize::ImageInfo;

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub keep_revisions: usize,
    pub keep_younger_than: Duration,
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_revisions: 3,
            keep_younger_than: Duration::from_secs(3600),
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a collection would remove (a dry run prints it) or removed.
#[derive(Debug, Default, Serialize)]
pub struct GcPlan {
    pub digests: Vec<Digest>,
    pub layers: Vec<Digest>,
    /// Bytes the layer candidates hold (their `layer.json` sizes).
    pub layer_bytes: u64,
    pub kept_digests: usize,
    pub kept_layers: usize,
    /// Staging directories of dead workers in `tmp/` (swept with the rest).
    pub dead_staging: usize,
    /// File objects nothing links any more (see
    /// `exploder_common::store::objects`), and their bytes: what
    /// [`collect`] reclaimed (0 in a [`plan`]; `exploder gc`'s dry run
    /// counts those unlinked now, and the layers it would remove free
    /// more).
    pub objects: u64,
    pub object_bytes: u64,
    /// Why each digest directory and layer goes or stays.
    pub verdicts: Vec<Verdict>,
    /// Records of kept images gc could not read: while there is one, no
    /// layer is removed (which of them that image needs is unknown).
    pub damaged: Vec<DamagedRecord>,
    /// Where the time went.
    pub stats: GcStats,
}

/// Where a collection spent its time, and how much of the store it read
/// to decide: what a benchmark of a large store looks at. Tags are read
/// a fixed number of times per gc (the plan, then once more before
/// deleting), whatever it removes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcStats {
    /// Tags whose link gc read (each read is one tag's link and the tail
    /// of its history).
    pub links_read: usize,
    /// Reading the tags, histories and image records, and deciding.
    pub planning_seconds: f64,
    /// Moving the candidates aside, asking the fleet again what is in
    /// progress and reading the links again.
    pub recheck_seconds: f64,
    /// Deleting (or putting back) what was set aside.
    pub removing_seconds: f64,
}

/// Why one digest directory or layer goes or stays.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// `digest` or `layer`.
    pub kind: &'static str,
    pub digest: Digest,
    pub remove: bool,
    pub reason: String,
}

fn age(path: &Path, now: SystemTime) -> Duration {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO)
}

/// What the tags of the store say about the digests they name: why each
/// retained one is kept, and, for the others, what last named them.
#[derive(Default)]
struct Retention {
    kept: HashMap<Digest, String>,
    last_named: HashMap<Digest, String>,
    links_read: usize,
    /// Tags whose link or history cannot be read (a FIFO, a symlink, a
    /// torn file): what they keep is unknown, so everything is kept.
    damaged: Vec<DamagedRecord>,
}

impl Retention {
    fn keep(&mut self, d: &Digest, why: impl FnOnce() -> String) {
        self.kept.entry(d.clone()).or_insert_with(why);
    }
}

/// The digests the tags of the store retain, and why.
fn retention(layout: &StoreLayout, opts: &GcOptions) -> io::Result<Retention> {
    let now = history::now();
    let young = now - opts.keep_younger_than.as_secs() as i64;
    let mut r = Retention::default();
    for link in layout.tags()? {
        let dir = layout.tag_dir(&link.name(), &link.tag);
        let tag = link.to_string();
        r.links_read += 1;
        // Named by the file at fault (a link's error may be its history's).
        let damaged = |path: &Path, e: io::Error| match store_file::damaged(&e) {
            Some(d) => DamagedRecord {
                path: d.path.display().to_string(),
                problem: d.problem_text(),
            },
            None => DamagedRecord {
                path: path.display().to_string(),
                problem: format!("cannot read it ({e})"),
            },
        };
        match layout.read_link(&link.name(), &link.tag) {
            Ok(Some(d)) => r.keep(&d, || format!("linked by {tag}")),
            Ok(None) => {}
            Err(e) => {
                r.damaged
                    .push(damaged(&layout.link_path(&link.name(), &link.tag), e));
                continue;
            }
        }
        let history = dir.join("history");
        let records = match store_file::read_to_string(&history, Kind::History) {
            Ok(t) => history::parse(&t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                r.damaged.push(damaged(&history, e));
                continue;
            }
        };
        // Deleted long enough ago: its revisions are no rollback target.
        let deleted = records
            .last()
            .filter(|last| last.change == Change::Unlinked)
            .map(|last| last.at);
        let keeps_revisions = deleted.is_none_or(|at| at > young);
        // A set, not a list: a tag pushed for years names thousands.
        let mut revisions: HashSet<&Digest> = HashSet::new();
        for rec in records.iter().rev() {
            let Change::Linked(d) = &rec.change else {
                continue;
            };
            // Strictly younger: --keep-younger-than 0s keeps nothing for
            // its age, even what was linked this very second.
            if rec.at > young {
                r.keep(d, || {
                    format!(
                        "{tag} pointed at it at {} (within --keep-younger-than)",
                        history::rfc3339(rec.at)
                    )
                });
            }
            if revisions.insert(d) {
                let n = revisions.len();
                if keeps_revisions && n <= opts.keep_revisions {
                    r.keep(d, || {
                        format!(
                            "revision {n} of {tag} (--keep-revisions {})",
                            opts.keep_revisions
                        )
                    });
                }
                r.last_named
                    .entry(d.clone())
                    .or_insert_with(|| match deleted {
                        Some(at) if n == 1 => format!(
                            "{tag} was deleted at {} (longer ago than --keep-younger-than)",
                            history::rfc3339(at)
                        ),
                        _ if deleted.is_some() => format!(
                            "an old revision of {tag}, which was deleted (longer ago than \
                         --keep-younger-than)"
                        ),
                        _ => format!(
                            "revision {n} of {tag}, beyond --keep-revisions {}",
                            opts.keep_revisions
                        ),
                    });
            }
        }
    }
    Ok(r)
}

/// Directory names under `<root>/sha256/` that parse as digests.
fn digests_under(dir: &Path) -> io::Result<Vec<Digest>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Ok(d) = format!("sha256:{}", name.to_string_lossy()).parse() {
            out.push(d);
        }
    }
    out.sort_by_key(|d: &Digest| d.to_string());
    Ok(out)
}

/// The layers a digest directory uses, for sizes (none if its
/// `image.json` is damaged; gc does not use this: see [`read_image_info`]).
pub fn image_layers(layout: &StoreLayout, manifest: &Digest) -> Vec<Digest> {
    read_image_info(layout, manifest)
        .map(|i| i.diff_ids)
        .unwrap_or_default()
}

/// A digest directory's `image.json` that cannot be read: the layers its
/// image uses are unknown.
#[derive(Clone, Debug, Serialize, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct DamagedRecord {
    pub path: String,
    pub problem: String,
}

/// The record finalize wrote beside an image's rootfs (`image.json`),
/// read as every store file is (`store::file`): a regular file, not
/// followed through a symlink, without blocking on a FIFO, bounded.
pub fn read_image_info(
    layout: &StoreLayout,
    manifest: &Digest,
) -> Result<ImageInfo, DamagedRecord> {
    let path = layout.digest_dir(manifest).join("image.json");
    let damaged = |problem: String| DamagedRecord {
        path: path.display().to_string(),
        problem,
    };
    let bytes =
        store_file::read(&path, Kind::Image).map_err(|e| match store_file::damaged(&e) {
            Some(d) => damaged(d.problem_text()),
            None => damaged(format!("cannot read it ({e})")),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| damaged(format!("does not parse ({e})")))
}

/// Decides what a collection removes, and why each digest directory and
/// layer goes or stays. `in_progress` are the images the fleet is working
/// on (manifest, layers): kept whatever their age.
pub fn plan(
    layout: &StoreLayout,
    opts: &GcOptions,
    in_progress: &[(Digest, Vec<Digest>)],
) -> io::Result<GcPlan> {
    let started = Instant::now();
    let now = SystemTime::now();
    let mut retention = retention(layout, opts)?;
    for (m, _) in in_progress {
        retention.keep(m, || {
            "in progress (the fleet is building or linking it)".into()
        });
    }
    let mut plan = GcPlan {
        dead_staging: crate::layer::Staging::count_dead(&layout.tmp_dir())?,
        damaged: std::mem::take(&mut retention.damaged),
        ..GcPlan::default()
    };
    // Fail safe: a tag whose files do not read may name any image.
    let unknown_tag = plan
        .damaged
        .first()
        .map(|d| format!("a tag's record is damaged ({}): every image stays", d.path));
    plan.stats.links_read = retention.links_read;
    // Layer → why it is needed.
    let mut used: HashMap<Digest, String> = HashMap::new();
    for (m, layers) in in_progress {
        for l in layers {
            used.entry(l.clone())
                .or_insert_with(|| format!("used by {m}, in progress"));
        }
    }
    let grace = || format!("younger than --grace {}s", opts.grace.as_secs());
    for d in digests_under(&layout.root().join("digest/sha256"))? {
        let dir = layout.digest_dir(&d);
        let kept = retention
            .kept
            .get(&d)
            .cloned()
            .or_else(|| unknown_tag.clone())
            .or_else(|| (age(&dir, now) < opts.grace).then(grace));
        let (remove, reason) = match kept {
            Some(why) => {
                match read_image_info(layout, &d) {
                    Ok(info) => {
                        for l in info.diff_ids {
                            used.entry(l)
                                .or_insert_with(|| format!("used by kept image {d}"));
                        }
                    }
                    Err(damaged) => plan.damaged.push(damaged),
                }
                plan.kept_digests += 1;
                (false, why)
            }
            None => {
                plan.digests.push(d.clone());
                let why = retention
                    .last_named
                    .get(&d)
                    .cloned()
                    .unwrap_or_else(|| "no tag names it".into());
                (true, why)
            }
        };
        plan.verdicts.push(Verdict {
            kind: "digest",
            digest: d,
            remove,
            reason,
        });
    }
    for l in digests_under(&layout.root().join("layers/sha256"))? {
        let dir = layout.layer_dir(&l);
        // Fail safe: a kept image whose layers are unknown may need any.
        let unknown = plan.damaged.first().map(|d| {
            format!(
                "a record gc needs is damaged ({}): every layer stays",
                d.path
            )
        });
        let kept = used
            .get(&l)
            .cloned()
            .or(unknown)
            .or_else(|| (age(&dir, now) < opts.grace).then(grace));
        let (remove, reason) = match kept {
            Some(why) => {
                plan.kept_layers += 1;
                (false, why)
            }
            None => {
                plan.layer_bytes += layer_bytes(&dir);
                plan.layers.push(l.clone());
                (true, "no kept image uses it".to_string())
            }
        };
        plan.verdicts.push(Verdict {
            kind: "layer",
            digest: l,
            remove,
            reason,
        });
    }
    plan.stats.planning_seconds = started.elapsed().as_secs_f64();
    Ok(plan)
}

/// The uncompressed size a layer directory records (0 if unreadable).
pub fn layer_bytes(dir: &Path) -> u64 {
    store_file::read(&dir.join("layer.json"), Kind::Record)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["uncompressed_bytes"].as_u64())
        .unwrap_or(0)
}
