//! The worker's metrics (`exploder_worker_*`), served on `--metrics-listen`.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct WorkerMetrics {
    /// `{kind, result}`: result is ok, waiting, retried or dead_lettered.
    pub jobs: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub bytes_downloaded: IntCounter,
    pub bytes_written: IntCounter,
    /// `{what}`: layer_skipped (already in the store when the job came),
    /// download_skipped (another worker ingested it while this one waited).
    pub dedupe_hits: IntCounterVec,
    pub claim_conflicts: IntCounter,
    pub fan_in_finalizes: IntCounter,
    /// `{service}`: amqp, redis.
    pub reconnects: IntCounterVec,
    pub broker_up: IntGauge,
    pub redis_up: IntGauge,
}

impl WorkerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<WorkerMetrics> {
        let m = WorkerMetrics {
            jobs: IntCounterVec::new(
                Opts::new(
                    "exploder_worker_jobs_total",
                    "Jobs handled, by kind and result.",
                ),
                &["kind", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "exploder_worker_job_duration_seconds",
                    "Time to handle one job, by kind.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                ]),
                &["kind"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new("exploder_worker_jobs_in_flight", "Jobs being handled now."),
                &["kind"],
            )?,
            bytes_downloaded: IntCounter::new(
                "exploder_worker_layer_bytes_downloaded_total",
                "Compressed layer bytes downloaded and ingested.",
            )?,
            bytes_written: IntCounter::new(
                "exploder_worker_bytes_written_total",
                "Uncompressed layer bytes written to the layer store.",
            )?,
            dedupe_hits: IntCounterVec::new(
                Opts::new(
                    "exploder_worker_dedupe_hits_total",
                    "Layer work avoided because the layer was, or became, present.",
                ),
                &["what"],
            )?,
            claim_conflicts: IntCounter::new(
                "exploder_worker_claim_conflicts_total",
                "Layer jobs that found another worker's claim and waited for it.",
            )?,
            fan_in_finalizes: IntCounter::new(
                "exploder_worker_fan_in_finalizes_total",
                "Image jobs published by the fan-in when an image's last layer landed.",
            )?,
            reconnects: IntCounterVec::new(
                Opts::new(
                    "exploder_worker_reconnects_total",
                    "Sessions restarted after losing the broker or Redis.",
                ),
                &["service"],
            )?,
            broker_up: IntGauge::with_opts(
                Opts::new(
                    "exploder_broker_up",
                    "Whether RabbitMQ is reachable (1) or not (0).",
                )
                .const_label("component", "worker"),
            )?,
            redis_up: IntGauge::with_opts(
                Opts::new(
                    "exploder_redis_up",
                    "Whether Redis is reachable (1) or not (0).",
                )
                .const_label("component", "worker"),
            )?,
        };
        registry.register(Box::new(m.jobs.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.bytes_downloaded.clone()))?;
        registry.register(Box::new(m.bytes_written.clone()))?;
        registry.register(Box::new(m.dedupe_hits.clone()))?;
        registry.register(Box::new(m.claim_conflicts.clone()))?;
        registry.register(Box::new(m.fan_in_finalizes.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.broker_up.clone()))?;
        registry.register(Box::new(m.redis_up.clone()))?;
        Ok(m)
    }
}
