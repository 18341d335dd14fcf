//! `exploder gc`: remove digest directories no retained link references,
//! then layers no remaining digest uses (see `exploder_worker::gc` for the
//! rules and why it is safe beside a running fleet). A dry run unless
//! `--confirm`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use exploder_common::digest::Digest;
use exploder_common::job::{self, ImageJob, Job};
use exploder_common::request;
use exploder_common::store::StoreLayout;
use exploder_queue::connect::redact;
use exploder_queue::index::Index;
use exploder_worker::gc::{self, GcOptions, Quarantined};
use exploder_worker::layer::Staging;

use crate::Output;
use crate::fleet::{RedisArgs, parse_duration};

#[derive(Args)]
pub struct GcArgs {
    /// Delete for real (without it, only print what would go).
    #[arg(long)]
    confirm: bool,
    /// Digests to keep per tag, newest first (the current one included).
    #[arg(long, default_value_t = 3, env = "EXPLODER_KEEP_REVISIONS")]
    keep_revisions: usize,
    /// Keep every digest a tag pointed at more recently than this.
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "EXPLODER_KEEP_YOUNGER_THAN")]
    keep_younger_than: Duration,
    /// Never remove a digest directory or layer younger than this (an
    /// explode that has not linked yet).
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "EXPLODER_GC_GRACE")]
    grace: Duration,
    /// The store.
    #[arg(long, env = "EXPLODER_STORE")]
    store: PathBuf,
    #[command(flatten)]
    redis: RedisArgs,
    /// Prefix of the fleet's Redis keys.
    #[arg(long, env = "EXPLODER_PREFIX", default_value = "")]
    prefix: String,
    /// Output format (json: what was, or would be, removed).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// The images the fleet is working on: (manifest, layers), from the image
/// jobs recorded in Redis and the requests recorded in the store (which
/// survive Redis losing everything).
async fn in_progress(
    index: &Index,
    layout: &StoreLayout,
) -> Result<Vec<(Digest, Vec<Digest>)>, String> {
    let jobs = index
        .recorded_image_jobs()
        .await
        .map_err(|e| format!("reading the images in progress from Redis: {e}"))?;
    let mut held: Vec<ImageJob> = jobs
        .iter()
        .filter_map(|body| match job::decode(body, None) {
            Ok(Job::Image(j)) => Some(j),
            _ => None,
        })
        .collect();
    let (requests, _) = request::list(layout).map_err(|e| {
        format!(
            "reading the requests in {}: {e}",
            layout.requests_dir().display()
        )
    })?;
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

pub async fn gc(a: GcArgs) -> ExitCode {
    let layout = StoreLayout::new(&a.store);
    let index = match Index::connect(&a.redis.redis_url, &a.prefix).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "exploder: cannot reach Redis at {} ({e}): gc needs it to know which images are \
                 in progress; check EXPLODER_REDIS_URL",
                redact(&a.redis.redis_url)
            );
            return ExitCode::from(1);
        }
    };
    let opts = GcOptions {
        keep_revisions: a.keep_revisions,
        keep_younger_than: a.keep_younger_than,
        grace: a.grace,
    };
    let result = async {
        let restored = gc::recover(&layout)
            .map_err(|e| format!("restoring what an interrupted gc set aside: {e}"))?;
        if restored > 0 {
            eprintln!("exploder: gc: put back {restored} items an interrupted gc had set aside");
        }
        let held = in_progress(&index, &layout).await?;
        let plan =
            gc::plan(&layout, &opts, &held).map_err(|e| format!("scanning the store: {e}"))?;
        if !a.confirm {
            return Ok((plan, false));
        }
        let removed = collect(&layout, &index, plan).await?;
        Ok::<_, String>((removed, true))
    }
    .await;
    let (plan, confirmed) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exploder: gc: {e}");
            return ExitCode::from(1);
        }
    };
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"confirmed": confirmed, "removed": plan})
            )
            .expect("serializes")
        ),
        Output::Text => {
            let verb = if confirmed { "removed" } else { "would remove" };
            println!(
                "{verb} {} digest directories and {} layers ({} MiB); kept {} digests and {} layers",
                plan.digests.len(),
                plan.layers.len(),
                plan.layer_bytes >> 20,
                plan.kept_digests,
                plan.kept_layers
            );
            // Why each goes; in a dry run, why each of the rest stays.
            for v in plan.verdicts.iter().filter(|v| v.remove) {
                println!("  {:<6} {}  {}", v.kind, v.digest, v.reason);
            }
            let kept: Vec<_> = plan.verdicts.iter().filter(|v| !v.remove).collect();
            if !confirmed && !kept.is_empty() {
                println!("kept:");
                for v in kept {
                    println!("  {:<6} {}  {}", v.kind, v.digest, v.reason);
                }
            }
            if plan.dead_staging > 0 {
                let verb = if confirmed { "swept" } else { "would sweep" };
                println!(
                    "{verb} {} staging directories of dead workers in {}",
                    plan.dead_staging,
                    layout.tmp_dir().display()
                );
            }
            let nothing =
                plan.digests.is_empty() && plan.layers.is_empty() && plan.dead_staging == 0;
            if !confirmed && !nothing {
                println!("dry run: pass --confirm to delete");
            }
        }
    }
    ExitCode::SUCCESS
}

/// Moves every candidate out of sight, asks the fleet again what is in
/// progress, puts back what that needs (or what a tag points at again),
/// deletes the rest. Returns what was deleted. On any error everything
/// still set aside is put back.
async fn collect(
    layout: &StoreLayout,
    index: &Index,
    plan: gc::GcPlan,
) -> Result<gc::GcPlan, String> {
    let io = |what: String| move |e: std::io::Error| format!("{what}: {e}");
    let mut aside: Vec<(bool, Digest, u64, Quarantined)> = Vec::new();
    let result = async {
        for d in &plan.digests {
            if let Some(q) = gc::quarantine(layout, "digest", d, &layout.digest_dir(d))
                .map_err(io(format!("moving digest {d} aside")))?
            {
                aside.push((true, d.clone(), 0, q));
            }
        }
        for l in &plan.layers {
            let bytes = gc::layer_bytes(&layout.layer_dir(l));
            if let Some(q) = gc::quarantine(layout, "layer", l, &layout.layer_dir(l))
                .map_err(io(format!("moving layer {l} aside")))?
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
    let mut removed = gc::GcPlan {
        kept_digests: plan.kept_digests,
        kept_layers: plan.kept_layers,
        verdicts: plan.verdicts,
        ..Default::default()
    };
    let mut first_error = None;
    for (is_digest, d, bytes, q) in aside {
        let keep = if is_digest {
            held_manifests.contains(&&d) || gc::is_linked(layout, &d).unwrap_or(true)
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
            q.restore().map_err(io(format!("restoring {what} {d}")))
        } else {
            let r = q.delete().map_err(io(format!("deleting {what} {d}")));
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
            first_error.get_or_insert(format!("sweeping {}: {e}", layout.tmp_dir().display()));
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}
