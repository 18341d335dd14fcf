//! What every worker does besides its jobs, for the fleet as a whole:
//!
//! - the sweep: staging directories under `<store>/tmp/` whose owner died
//!   (killed mid-ingest or mid-finalize) are removed when the worker's
//!   session starts and every `--sweep-interval`; live ones are locked by
//!   their owner and never touched (`Staging::sweep`);
//! - the resync: one worker at a time (the Redis lease `resync`) re-drives
//!   the requests whose messages may be lost (`exploder_queue::resync`),
//!   every `--resync-interval`, and exports what it saw as metrics.

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
    let token = exploder_common::job::new_job_id();
    let interval = ctx.config.resync_interval;
    // Held across a few intervals, so one slow pass does not hand it over.
    let ttl = interval * 3;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match ctx.index.hold_lease(resync::LEASE, &token, ttl).await {
            Ok(true) => resync_once(&ctx).await,
            Ok(false) => ctx.metrics.clear_requests(),
            Err(e) => warn!("resync: taking the lease: {e}"),
        }
    }
}

async fn resync_once(ctx: &Ctx) {
    let fanout = FanOut {
        publisher: &ctx.publisher,
        index: &ctx.index,
        store: ctx.layers.layout(),
    };
    match resync::pass(&fanout, ctx.config.resync_after).await {
        Ok(pass) => {
            let m = &ctx.metrics;
            m.set_requests(&pass.summary);
            m.redriven
                .with_label_values(&["image"])
                .inc_by(pass.image_jobs as u64);
            m.redriven
                .with_label_values(&["layer"])
                .inc_by(pass.layer_jobs as u64);
            if pass.redriven > 0 || pass.settled > 0 {
                info!(
                    outstanding = pass.summary.outstanding,
                    failed = pass.summary.failed,
                    redriven = pass.redriven,
                    settled = pass.settled,
                    "resync pass"
                );
            }
        }
        Err(e) => warn!("resync pass: {e}"),
    }
}
