//! How gc removes what its plan lets go while the fleet keeps working:
//! set every candidate aside in `<store>/gc/` (one rename each), ask the
//! fleet again what is in progress, put back what that needs (or what a
//! tag points at again), delete the rest. A gc that dies half way leaves
//! its candidates in `gc/`; the next one puts them back first
//! ([`recover`]) and decides again.

use std::io;
use std::path::{Path, PathBuf};

use exploder_common::digest::Digest;
use exploder_common::job::{self, ImageJob, Job};
use exploder_common::request;
use exploder_common::store::StoreLayout;
use exploder_queue::index::{Index, IndexError};

use super::{GcPlan, layer_bytes};
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

/// Whether any link points at `digest` now (checked again just before a
/// digest directory is deleted: a tag may have moved back to it).
pub fn is_linked(layout: &StoreLayout, digest: &Digest) -> io::Result<bool> {
    for link in layout.tags()? {
        if layout
            .read_link(&link.name(), &link.tag)
            .ok()
            .flatten()
            .as_ref()
            == Some(digest)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The images the fleet is working on: (manifest, layers), from the image
/// jobs recorded in Redis and the requests recorded in the store (which
/// survive Redis losing everything).
pub async fn in_progress(
    index: &Index,
    layout: &StoreLayout,
) -> Result<Vec<(Digest, Vec<Digest>)>, GcError> {
    let jobs = index.recorded_image_jobs().await?;
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

/// Moves every candidate out of sight, asks the fleet again what is in
/// progress, puts back what that needs (or what a tag points at again),
/// deletes the rest. Returns what was deleted. On any error everything
/// still set aside is put back.
pub async fn collect(layout: &StoreLayout, index: &Index, plan: GcPlan) -> Result<GcPlan, GcError> {
    let mut aside: Vec<(bool, Digest, u64, Quarantined)> = Vec::new();
    let result = async {
        for d in &plan.digests {
            if let Some(q) = quarantine(layout, "digest", d, &layout.digest_dir(d))
                .map_err(io_error(format!("moving digest {d} aside")))?
            {
                aside.push((true, d.clone(), 0, q));
            }
        }
        for l in &plan.layers {
            let bytes = layer_bytes(&layout.layer_dir(l));
            if let Some(q) = quarantine(layout, "layer", l, &layout.layer_dir(l))
                .map_err(io_error(format!("moving layer {l} aside")))?
            {
                aside.push((false, l.clone(), bytes, q));
            }
        }
        in_progress(index, layout).await
    }
    .await;
    let held = match result {
        Ok(h) => h,
        Err(e) => {
            for (_, _, _, q) in aside {
                let _ = q.restore();
            }
            return Err(e);
        }
    };
    let held_manifests: Vec<&Digest> = held.iter().map(|(m, _)| m).collect();
    let held_layers: Vec<&Digest> = held.iter().flat_map(|(_, l)| l).collect();
    let mut removed = GcPlan {
        kept_digests: plan.kept_digests,
        kept_layers: plan.kept_layers,
        verdicts: plan.verdicts,
        damaged: plan.damaged,
        ..Default::default()
    };
    let mut first_error = None;
    for (is_digest, d, bytes, q) in aside {
        let keep = if is_digest {
            held_manifests.contains(&&d) || is_linked(layout, &d).unwrap_or(true)
        } else {
            held_layers.contains(&&d)
        };
        let what = if is_digest { "digest" } else { "layer" };
        let done = if keep {
            if is_digest {
                removed.kept_digests += 1;
            } else {
                removed.kept_layers += 1;
            }
            if let Some(v) = removed
                .verdicts
                .iter_mut()
                .find(|v| v.kind == what && v.digest == d)
            {
                v.remove = false;
                v.reason = "needed again while gc ran (in progress, or linked again)".into();
            }
            q.restore()
                .map_err(io_error(format!("restoring {what} {d}")))
        } else {
            let r = q.delete().map_err(io_error(format!("deleting {what} {d}")));
            if r.is_ok() {
                if is_digest {
                    removed.digests.push(d);
                } else {
                    let _ = index.forget_layer(&d).await;
                    removed.layer_bytes += bytes;
                    removed.layers.push(d);
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
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}
