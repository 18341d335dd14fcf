//! The producer: event sources → plan/fan-out → queue.
//!
//! - [`fanout`]: a resolved image becomes one job per layer not yet
//!   ingested and one image job (shared by `exploder enqueue` and, later,
//!   the event sources of `exploder-producer`).

pub mod fanout;
