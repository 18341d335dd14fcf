//! Event sources. Each one hears about changes its own way and hands
//! [`crate::event::Event`]s on: to the [`crate::scheduler::Scheduler`]
//! (ImageStream, and webhook events through the events queue), or to the
//! [`crate::reconcile::Reconciler`] directly (the poll, which reports
//! each tag's outcome in its scan, and leaves a tag that failed for now
//! to the scheduler's retries).
//!
//! - [`webhook`]: registries post to `/webhook/<endpoint>`;
//! - [`poll`]: a watch list of repositories, scanned every interval;
//! - [`imagestream`]: OpenShift ImageStreams, watched through the API server.
//!
//! Each is a [`Source`]: built from its configuration (where setting up can
//! fail, e.g. binding the webhook listener), then run until stopped.
//! [`crate::serve`] runs the ones that are [`Source::leader_only`] only
//! while this replica holds the lease, and the others always.

pub mod imagestream;
pub mod poll;
pub mod webhook;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::scheduler::Scheduler;

/// What a running source is given.
#[derive(Clone)]
pub struct Context {
    pub scheduler: Scheduler,
    /// Becomes `true` when the source must stop.
    pub stop: watch::Receiver<bool>,
}

impl Context {
    /// Resolves once the source must stop.
    pub async fn stopped(mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }
}

/// A built source.
pub trait Source: Send + Sync {
    /// For logs: `webhook`, `poll`, `imagestream`.
    fn name(&self) -> &'static str;
    /// Whether only one replica at a time may run it (the lease holder):
    /// polls and watches would do the same work twice; every replica
    /// serves webhooks.
    fn leader_only(&self) -> bool;
    /// Runs until `ctx.stop`; a leader-only source is run again each time
    /// this replica gains the lease.
    fn run(self: Arc<Self>, ctx: Context) -> BoxFuture<'static, ()>;
}

/// Cancels a leader-only source's retries when its run ends, or is
/// aborted because this replica lost the lease.
struct CancelRetriesOnDrop {
    scheduler: Scheduler,
    source: &'static str,
}

impl Drop for CancelRetriesOnDrop {
    fn drop(&mut self) {
        self.scheduler.cancel_retries_of(self.source);
    }
}

/// The poll source ([`poll::Poller`]).
pub struct PollSource {
    pub config: poll::PollConfig,
}

impl Source for PollSource {
    fn name(&self) -> &'static str {
        "poll"
    }

    fn leader_only(&self) -> bool {
        true
    }

    fn run(self: Arc<Self>, ctx: Context) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _cancel = CancelRetriesOnDrop {
                scheduler: ctx.scheduler.clone(),
                source: "poll",
            };
            let poller = poll::Poller {
                reconciler: ctx.scheduler.reconciler().clone(),
                config: self.config.clone(),
                retries: Some(ctx.scheduler.clone()),
            };
            poller.run(ctx.stopped()).await
        })
    }
}

/// The ImageStream watch ([`imagestream::run`]).
pub struct ImageStreamSource {
    pub config: imagestream::ImageStreamConfig,
}

impl Source for ImageStreamSource {
    fn name(&self) -> &'static str {
        "imagestream"
    }

    fn leader_only(&self) -> bool {
        true
    }

    fn run(self: Arc<Self>, ctx: Context) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _cancel = CancelRetriesOnDrop {
                scheduler: ctx.scheduler.clone(),
                source: imagestream::DECIDED_BY,
            };
            let scheduler = ctx.scheduler.clone();
            if let Err(e) = imagestream::run(scheduler, self.config.clone(), ctx.stopped()).await {
                tracing::error!("imagestream watch stopped: {e}");
            }
        })
    }
}
