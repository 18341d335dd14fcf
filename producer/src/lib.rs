//! The producer: event sources → plan/fan-out → queue.
//!
//! Not built yet (issue 3 and 4): for now the `exploder-producer` binary only
//! explains that, and `exploder explode` runs the whole pipeline in one
//! process.
