//! Every flag of exploder's binaries, defined once.
//!
//! `exploder`, `exploder-worker` and `exploder-producer` compose their
//! command lines from the groups here (`#[command(flatten)]`), so a flag is
//! spelled, documented, defaulted and read from its `EXPLODER_*` variable
//! the same way wherever it appears, and each group turns itself into the
//! option struct of the library that owns the concept
//! ([`RegistryArgs::options`] → `RegistryOptions`, [`LimitArgs::limits`] →
//! `Limits`, ...). The engine crates (common, queue, worker, producer) do
//! not depend on clap; only this crate and the binaries (in `cli`) do.
//! ripgrep's `grep-cli` is the model.
//!
//! Flags the producer can also take from its config file are `Option`s
//! here, resolved by a method that takes the config's value: flag (or
//! variable), then config, then the default the doc comment names.

mod duration;
mod fleet;
mod ingest;
mod output;
mod registry;
mod store;
mod trust;

pub use duration::{parse_duration, parse_interval};
pub use fleet::{
    AmqpArgs, BrokerArgs, DEFAULT_ENQUEUE_JOBS, DeadlineArgs, DeliveryLimitArgs, EnqueueJobsArgs,
    FleetArgs, ManagementArgs, PrefixArgs, RedisArgs, ResyncArgs,
};
pub use ingest::{ExportArgs, FinalizeArgs, LimitArgs, QuotaArgs, SpaceArgs};
pub use output::{LogArgs, MetricsArgs, PRODUCER_METRICS_LISTEN, WORKER_METRICS_LISTEN};
pub use registry::{RegistryArgs, RegistryPathArgs, ResolveArgs};
pub use store::{existing_store, store_dir};
pub use trust::TrustArgs;
