//! The queue between fan-out and the handlers: RabbitMQ through lapin.
//!
//! - [`topology`]: every exchange and queue, their arguments, and declaring
//!   or verifying them idempotently (producer, workers and
//!   `exploder topology apply` all call the same code);
//! - [`connect`]: connections that retry with backoff instead of failing
//!   on a broker that is restarting;
//! - [`publish`]: confirmed, mandatory, persistent publishing of jobs;
//! - [`index`]: the Redis index (ingested layers, what each image waits
//!   for), always rebuildable from the store;
//! - [`headers`]: the bookkeeping headers jobs carry between queues;
//! - [`protocol`]: where an outcome sends a job (backoff tier, work queue,
//!   dead letters) and what a dead letter says;
//! - [`fanout`]: an image → its durable request, layer jobs and image job;
//! - [`resync`]: re-driving requests whose messages may be lost;
//! - [`stats`]: how full the queues are (status, queue depth metrics).
//!
//! Names carry an optional prefix (`EXPLODER_PREFIX`) so several fleets,
//! and every test, can share one broker without meeting.

pub mod connect;
pub mod fanout;
pub mod headers;
pub mod index;
pub mod management;
pub mod protocol;
pub mod publish;
pub mod resync;
pub mod stats;
pub mod topology;
