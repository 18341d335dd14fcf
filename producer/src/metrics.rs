//! The producer's counters, registered in a Prometheus registry the
//! metrics endpoint serves.

use prometheus::{IntCounterVec, Opts, Registry};

pub struct Metrics {
    /// `exploder_producer_events_total{source, outcome}`: outcome is one of
    /// accepted, duplicate, unlinked, ignored, rejected (the event was
    /// handled), unavailable (broker, Redis or registry down: the sender
    /// retries), auth_failure, malformed, too_large (refused at the door).
    pub events: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let events = IntCounterVec::new(
            Opts::new(
                "exploder_producer_events_total",
                "Events received by the producer, by source and outcome.",
            ),
            &["source", "outcome"],
        )?;
        registry.register(Box::new(events.clone()))?;
        Ok(Metrics { events })
    }

    pub fn event(&self, source: &str, outcome: &str) {
        self.events.with_label_values(&[source, outcome]).inc();
    }

    /// Unregistered counters, for tests and tools that export nothing.
    pub fn unregistered() -> Metrics {
        Metrics::new(&Registry::new()).expect("a fresh registry accepts the counters")
    }
}
