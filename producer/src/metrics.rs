//! The producer's metrics, served on `--metrics-listen` with the queue
//! depths it exports for dashboards and autoscalers that cannot read
//! RabbitMQ's own plugin.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    /// `exploder_producer_events_total{source, outcome}`: outcome is one of
    /// accepted, duplicate, unlinked, ignored, rejected (the event was
    /// handled), unavailable (broker, Redis or registry down: a webhook
    /// event that could not be recorded is answered 503, a reconcile is
    /// retried by the scheduler), auth_failure, malformed, too_large,
    /// body_timeout, unsupported_media_type, rate_limited (refused at the
    /// door).
    pub events: IntCounterVec,
    /// `{kind}`: layer, image.
    pub jobs_published: IntCounterVec,
    /// Per published job: the time from publish to the broker's confirm.
    pub publish_confirm: Histogram,
    pub publish_nacks: IntCounter,
    /// `{reason}`: blocked, signature (the signature policy). Images
    /// refused rather than enqueued.
    pub images_refused: IntCounterVec,
    /// `{registry, code}`: the producer's manifest and tag-list requests.
    pub registry_requests: IntCounterVec,
    /// `{registry}`: the last `ratelimit-remaining` a registry sent.
    pub registry_ratelimit: IntGaugeVec,
    pub watch_relists: IntCounter,
    pub watch_last_event: Gauge,
    pub queue_ready: IntGaugeVec,
    pub queue_unacked: IntGaugeVec,
    pub queue_consumers: IntGaugeVec,
    pub dead_letters: IntGauge,
    pub broker_up: IntGauge,
    pub redis_up: IntGauge,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let by_queue = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["queue"]);
        let up = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help).const_label("component", "producer"))
        };
        let m = Metrics {
            events: IntCounterVec::new(
                Opts::new(
                    "exploder_producer_events_total",
                    "Events received by the producer, by source and outcome.",
                ),
                &["source", "outcome"],
            )?,
            jobs_published: IntCounterVec::new(
                Opts::new(
                    "exploder_producer_jobs_published_total",
                    "Jobs published and confirmed by the broker, by kind.",
                ),
                &["kind"],
            )?,
            publish_confirm: Histogram::with_opts(
                HistogramOpts::new(
                    "exploder_producer_publish_confirm_seconds",
                    "Time from publishing a job to the broker's confirm.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                ]),
            )?,
            publish_nacks: IntCounter::new(
                "exploder_producer_publish_nacks_total",
                "Publishes the broker refused (nack) or could not route.",
            )?,
            images_refused: IntCounterVec::new(
                Opts::new(
                    "exploder_producer_images_refused_total",
                    "Images refused rather than enqueued, by reason (blocked, signature).",
                ),
                &["reason"],
            )?,
            registry_requests: IntCounterVec::new(
                Opts::new(
                    "exploder_producer_registry_requests_total",
                    "Manifest and tag-list requests to registries, by HTTP status.",
                ),
                &["registry", "code"],
            )?,
            registry_ratelimit: IntGaugeVec::new(
                Opts::new(
                    "exploder_producer_registry_ratelimit_remaining",
                    "Pulls left in the registry's rate-limit window (Docker Hub's ratelimit-remaining).",
                ),
                &["registry"],
            )?,
            watch_relists: IntCounter::new(
                "exploder_producer_watch_relists_total",
                "Times the ImageStream watch listed everything again (start, 410 Gone, errors).",
            )?,
            watch_last_event: Gauge::new(
                "exploder_producer_watch_last_event_timestamp_seconds",
                "When the ImageStream watch last heard from the API server (0: not watching).",
            )?,
            queue_ready: by_queue(
                "exploder_queue_messages_ready",
                "Messages ready for delivery, per queue.",
            )?,
            queue_unacked: by_queue(
                "exploder_queue_messages_unacked",
                "Messages delivered and not yet acked, per queue (from the management API).",
            )?,
            queue_consumers: by_queue("exploder_queue_consumers", "Consumers per queue.")?,
            dead_letters: IntGauge::new(
                "exploder_queue_dead_letter_messages",
                "Jobs in the dead-letter queue.",
            )?,
            broker_up: up(
                "exploder_broker_up",
                "Whether RabbitMQ is reachable (1) or not (0).",
            )?,
            redis_up: up(
                "exploder_redis_up",
                "Whether Redis is reachable (1) or not (0).",
            )?,
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.jobs_published.clone()))?;
        registry.register(Box::new(m.publish_confirm.clone()))?;
        registry.register(Box::new(m.publish_nacks.clone()))?;
        // Exported at 0 from the start, so a rate or an alert on it has a
        // series before the first refusal.
        for reason in ["blocked", "signature"] {
            m.images_refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.images_refused.clone()))?;
        registry.register(Box::new(m.registry_requests.clone()))?;
        registry.register(Box::new(m.registry_ratelimit.clone()))?;
        registry.register(Box::new(m.watch_relists.clone()))?;
        registry.register(Box::new(m.watch_last_event.clone()))?;
        registry.register(Box::new(m.queue_ready.clone()))?;
        registry.register(Box::new(m.queue_unacked.clone()))?;
        registry.register(Box::new(m.queue_consumers.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.broker_up.clone()))?;
        registry.register(Box::new(m.redis_up.clone()))?;
        Ok(m)
    }

    /// Routes every registry request of this process into these metrics
    /// (once per process; later calls are ignored).
    pub fn observe_registries(self: &std::sync::Arc<Self>) {
        let m = self.clone();
        let _ = exploder_common::fetch::registry::OBSERVER.set(Box::new(
            move |registry: &str, code: u16, remaining: Option<u64>| {
                m.registry_requests
                    .with_label_values(&[registry, &code.to_string()])
                    .inc();
                if let Some(r) = remaining {
                    m.registry_ratelimit
                        .with_label_values(&[registry])
                        .set(r as i64);
                }
            },
        ));
    }

    pub fn event(&self, source: &str, outcome: &str) {
        self.events.with_label_values(&[source, outcome]).inc();
    }

    /// Unregistered counters, for tests and tools that export nothing.
    pub fn unregistered() -> Metrics {
        Metrics::new(&Registry::new()).expect("a fresh registry accepts the counters")
    }
}
