//! What every worker does besides its jobs, for the fleet as a whole:
//!
//! - the sweep: staging directories under `<store>/tmp/` whose owner died
//!   (killed mid-ingest or mid-finalize) are removed when the worker's
//!   session starts and every `--sweep-interval`; live ones are locked by
//!   their owner and never touched (`Staging::sweep`);
//! - the resync: one worker at a time (the Redis lease `resync`, renewed
//!   while a pass runs) re-drives the requests whose messages may be lost
//!   (`exploder_queue::resync`), every `--resync-interval`, a batch of at
//!   most `--resync-batch` per pass, and exports what each pass saw and
//!   did, and how long it took, as metrics.

use std::sync::Arc;

use exploder_queue::fanout::FanOut;
use exploder_queue::resync;
use tracing::{info, warn};

use super::Ctx;
use crate::layer::Staging;

/// Removes dead staging directories; returns how many.
pub async fn sweep(ctx: &Ctx) -> usize {
    let tmp = ctx.layers.layout().tmp_dir();
    match tokio::task::spawn_blocking(move || Staging::sweep(&tmp)).await {
        Ok(Ok(n)) => {
            if n > 0 {
                info!("swept {n} staging directories left by dead workers");
                ctx.metrics.staging_swept.inc_by(n as u64);
            }
            n
        }
        Ok(Err(e)) => {
            warn!("sweeping {}: {e}", ctx.layers.layout().tmp_dir().display());
            0
        }
        Err(e) => {
            warn!("sweep task: {e}");
            0
        }
    }
}

/// Sweeps now and every `--sweep-interval`, until the session ends.
pub async fn sweep_forever(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.config.sweep_interval);
    loop {
        tick.tick().await;
        sweep(&ctx).await;
    }
}

/// Runs the resync every `--resync-interval` while this worker holds the
/// lease, until the session ends.
pub async fn resync_forever(ctx: Arc<Ctx>) {
    let token = ctx.resync_token.clone();
    let interval = ctx.config.resync_interval;
    // Renewed while a pass runs (every third of it), so only a holder
    // that died or lost Redis hands it over, after at most this long.
    let ttl = interval * 3;
    let mut tick = tokio::time::interval(interval);
    // A pass that outlasted its interval is followed by one pass, not by
    // the ticks it missed all at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = resync::Cursor::default();
    loop {
        tick.tick().await;
        match ctx.index.hold_lease(resync::LEASE, &token, ttl).await {
            Ok(true) => {
                let lease = resync::IndexLease {
                    index: &ctx.index,
                    token: &token,
                    ttl,
                };
                cursor = resync_once(&ctx, &lease, &cursor).await;
            }
            Ok(false) => {
                ctx.metrics.clear_requests();
                // Another worker goes on from where it is; should the lease
                // come back, start from the first request.
                cursor = resync::Cursor::default();
            }
            Err(e) => warn!("resync: taking the lease: {e}"),
        }
    }
}

/// Gives the resync lease back if this worker holds it: a worker stopped
/// on purpose (a rolling restart) does not leave the fleet without a
/// resync for the rest of the lease (three intervals).
pub async fn release_resync(ctx: &Ctx) {
    if let Err(e) = ctx
        .index
        .release_lease(resync::LEASE, &ctx.resync_token)
        .await
    {
        warn!("resync: giving the lease back: {e}");
    }
}

/// One pass under `lease`; returns where the next one starts.
async fn resync_once(
    ctx: &Ctx,
    lease: &resync::IndexLease<'_>,
    cursor: &resync::Cursor,
) -> resync::Cursor {
    let fanout = FanOut {
        publisher: &ctx.publisher,
        index: &ctx.index,
        store: ctx.layers.layout(),
    };
    let m = &ctx.metrics;
    let pass = match resync::pass(&fanout, ctx.config.resync, cursor, lease).await {
        Ok(pass) => pass,
        Err(e) => {
            warn!("resync pass: {e}");
            m.resync_passes.with_label_values(&["failed"]).inc();
            return cursor.clone();
        }
    };
    m.resync_seconds.observe(pass.elapsed.as_secs_f64());
    m.resync_requests
        .with_label_values(&["redriven"])
        .inc_by(pass.redriven as u64);
    m.resync_requests
        .with_label_values(&["settled"])
        .inc_by(pass.settled as u64);
    m.redriven
        .with_label_values(&["image"])
        .inc_by(pass.image_jobs as u64);
    m.redriven
        .with_label_values(&["layer"])
        .inc_by(pass.layer_jobs as u64);
    let result = if pass.error.is_some() {
        "failed"
    } else if pass.lease_lost {
        "lease_lost"
    } else if pass.deferred > 0 {
        "partial"
    } else {
        "complete"
    };
    m.resync_passes.with_label_values(&[result]).inc();
    if pass.lease_lost {
        // The new holder exports the figures.
        m.clear_requests();
    } else {
        m.set_requests(&pass.summary);
        m.resync_deferred.set(pass.deferred as i64);
    }
    // One line per pass (one worker of the fleet, once an interval): how
    // long it took says whether the interval and the batch fit the backlog.
    info!(
        result,
        seconds = pass.elapsed.as_secs_f64(),
        outstanding = pass.summary.outstanding,
        failed = pass.summary.failed,
        redriven = pass.redriven,
        settled = pass.settled,
        deferred = pass.deferred,
        renewals = pass.renewals,
        "resync pass"
    );
    if let Some(e) = &pass.error {
        warn!("resync pass stopped: {e}");
    }
    pass.next
}
