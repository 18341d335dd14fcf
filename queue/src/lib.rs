//! The queue between fan-out and the handlers: RabbitMQ through lapin.
//!
//! - [`topology`]: every exchange and queue, their arguments, and declaring
//!   or verifying them idempotently (producer, workers and
//!   `exploder topology apply` all call the same code);
//! - [`connect`]: connections that retry with backoff instead of failing
//!   on a broker that is restarting;
//! - [`publish`]: confirmed, mandatory, persistent publishing of jobs;
//! - [`index`]: the Redis index (ingested layers, what each image waits
//!   for), always rebuildable from the store.
//!
//! Names carry an optional prefix (`EXPLODER_PREFIX`) so several fleets,
//! and every test, can share one broker without meeting.

pub mod connect;
pub mod index;
pub mod management;
pub mod publish;
pub mod topology;
