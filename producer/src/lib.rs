//! The producer: event sources → reconcile → plan/fan-out → queue.
//!
//! - [`sources`]: where events come from (webhooks; more to come), each
//!   turning what it hears into [`event::Event`]s;
//! - [`serve`]: the daemon: build the configured sources, run the
//!   leader-only ones under the lease and the others always;
//! - [`events`]: webhook events recorded in a durable queue before they are
//!   answered, consumed by the producers;
//! - [`scheduler`]: runs reconciles one per link at a time and owns their
//!   retries;
//! - [`reconcile`]: one event → what the registry says now → jobs or an
//!   unlink, idempotently (the same for every source);
//! - the fan-out (a resolved image → its request, layer jobs and image
//!   job) is `exploder_queue::fanout`, shared with `exploder enqueue` and
//!   the workers' resync;
//! - [`broker`]: the publisher, reconnected on demand;
//! - [`leader`]: a Kubernetes Lease, so one replica polls and watches;
//! - [`config`]: `exploder-producer --config FILE`;
//! - [`metrics`]: events by source and outcome, publishes, the watch;
//! - [`queue_depth`]: exports the fleet's queue depths.

pub mod broker;
pub mod config;
pub mod event;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod queue_depth;
pub mod reconcile;
pub mod scheduler;
pub mod serve;
pub mod sources;
