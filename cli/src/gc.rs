//! `exploder gc`: remove digest directories no retained link references,
//! then layers no remaining digest uses (`exploder_worker::gc` holds the
//! rules and the protocol that makes it safe beside a running fleet; this
//! is its command line and its report). A dry run unless `--confirm`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use exploder_args::{PrefixArgs, RedisArgs, parse_duration};
use exploder_common::store::StoreLayout;
use exploder_queue::connect::redact;
use exploder_queue::index::Index;
use exploder_worker::gc::{self, GcOptions};

use crate::Output;
use crate::commands::count;

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
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::existing_store)]
    store: PathBuf,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    prefix: PrefixArgs,
    /// Output format (json: what was, or would be, removed).
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
}

pub async fn gc(a: GcArgs) -> ExitCode {
    let layout = StoreLayout::new(&a.store);
    let index = match Index::connect(&a.redis.url(None), &a.prefix.prefix(None)).await {
        Ok(i) => Some(i),
        // Only `exploder explode` ever wrote here: whatever is in progress
        // is in this machine's processes, and in the grace period.
        Err(_) if matches!(layout.fleet_used(), Ok(false)) => None,
        Err(e) => {
            let why = match layout.fleet_used() {
                Ok(_) => format!(
                    "a fleet uses this store ({} says so), and gc needs the fleet's Redis to \
                     know which images its workers are building",
                    layout.fleet_marker().display()
                ),
                Err(marker) => format!(
                    "cannot tell whether a fleet uses this store ({}: {marker}), and with one \
                     gc needs Redis to know which images are in progress",
                    layout.fleet_marker().display()
                ),
            };
            eprintln!(
                "exploder: cannot reach Redis at {} ({e}): {why}; check EXPLODER_REDIS_URL \
                 (and EXPLODER_PREFIX) and that Redis runs, then run gc again",
                redact(&a.redis.url(None))
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
            eprintln!(
                "exploder: gc: put back {} an interrupted gc had set aside",
                count(restored, "item")
            );
        }
        let held = gc::in_progress(index.as_ref(), &layout)
            .await
            .map_err(|e| e.to_string())?;
        let plan =
            gc::plan(&layout, &opts, &held).map_err(|e| format!("scanning the store: {e}"))?;
        if !a.confirm {
            // What a collection would reclaim of the objects now (the
            // layers it removes free more); a confirmed one walks them
            // once, after removing.
            let mut plan = plan;
            let objects = exploder_common::store::objects::usage(layout.root())
                .map_err(|e| format!("counting the file objects: {e}"))?;
            (plan.objects, plan.object_bytes) = (objects.unreferenced, objects.unreferenced_bytes);
            return Ok((plan, false));
        }
        let removed = gc::collect(&layout, index.as_ref(), plan)
            .await
            .map_err(|e| e.to_string())?;
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
                "{verb} {} and {} ({} MiB); kept {} and {}",
                count(plan.digests.len(), "digest directory"),
                count(plan.layers.len(), "layer"),
                plan.layer_bytes >> 20,
                count(plan.kept_digests, "digest"),
                count(plan.kept_layers, "layer")
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
            if plan.objects > 0 {
                let (verb, what) = if confirmed {
                    ("reclaimed", "nothing linked")
                } else {
                    ("would reclaim", "nothing links now")
                };
                println!(
                    "{verb} {} {what} ({} MiB)",
                    count(plan.objects as usize, "file object"),
                    plan.object_bytes >> 20
                );
            }
            // Where the time went: reading the store, or the disk deleting.
            let t = &plan.stats;
            if confirmed {
                println!(
                    "took {:.2}s to plan ({} tags read), {:.2}s to check again, {:.2}s to remove",
                    t.planning_seconds, t.links_read, t.recheck_seconds, t.removing_seconds
                );
            } else {
                println!(
                    "took {:.2}s to plan ({} tags read)",
                    t.planning_seconds, t.links_read
                );
            }
            let nothing = plan.digests.is_empty()
                && plan.layers.is_empty()
                && plan.dead_staging == 0
                && plan.objects == 0;
            if !confirmed && !nothing {
                println!("dry run: pass --confirm to delete");
            }
        }
    }
    if plan.damaged.is_empty() {
        return ExitCode::SUCCESS;
    }
    // Kept, and every layer with them; but the store needs a look.
    for d in &plan.damaged {
        eprintln!(
            "exploder: gc: a record gc needs is damaged: {d}; no layer was removed (and, for a \
             tag's record, no image), since what it protects is unknown. Restore the file from \
             a backup, or remove the tag or the image's tags (exploder rm) and explode it again, \
             then run gc again"
        );
    }
    ExitCode::from(1)
}
