//! The worker's metrics (`exploder_worker_*`), served on `--metrics-listen`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct WorkerMetrics {
    /// `{kind, result}`: result is ok, waiting, retried, interrupted or
    /// dead_lettered.
    pub jobs: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub bytes_downloaded: IntCounter,
    pub bytes_written: IntCounter,
    /// Files ingested as links of file objects already in the store, and
    /// their bytes: what file objects saved (issue 28).
    pub files_shared: IntCounter,
    pub file_bytes_shared: IntCounter,
    /// `{what}`: layer_skipped (already in the store when the job came),
    /// download_skipped (another worker ingested it while this one waited).
    pub dedupe_hits: IntCounterVec,
    pub claim_conflicts: IntCounter,
    pub fan_in_finalizes: IntCounter,
    /// `{service}`: amqp, redis.
    pub reconnects: IntCounterVec,
    pub broker_up: IntGauge,
    pub redis_up: IntGauge,
    /// Whether the worker takes jobs now (1) or has stopped because its
    /// store, the broker or Redis fails its check (0).
    pub consuming: IntGauge,
    /// Staging directories of dead workers removed by the sweep.
    pub staging_swept: IntCounter,
    /// `{job}`: image, layer: jobs the resync published again.
    pub redriven: IntCounterVec,
    /// Requested links neither linked nor failed (the resync holder's view;
    /// 0 on the other workers: take the max across workers).
    pub requests_outstanding: IntGauge,
    pub requests_failed: IntGauge,
    pub request_oldest_age: IntGauge,
    /// How long each resync pass took (this worker's passes only).
    pub resync_seconds: Histogram,
    /// `{outcome}`: redriven, settled. Requests the resync passes handled.
    pub resync_requests: IntCounterVec,
    /// `{result}`: complete (every request that needed work got it),
    /// partial (the batch was full: the next pass goes on), lease_lost,
    /// failed.
    pub resync_passes: IntCounterVec,
    /// Requests that needed work and were left to the next pass by the
    /// last pass's batch (resync lease holder; 0 elsewhere).
    pub resync_deferred: IntGauge,
    /// `{reason}`: blocked. Image jobs refused (dead-lettered, never
    /// retried) for what the image is, not for a failure.
    pub images_refused: IntCounterVec,
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
            files_shared: IntCounter::new(
                "exploder_worker_files_shared_total",
                "Regular files of ingested layers that are links of file objects already in the store.",
            )?,
            file_bytes_shared: IntCounter::new(
                "exploder_worker_file_bytes_shared_total",
                "Bytes of those files: what file objects saved the store.",
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
            consuming: IntGauge::new(
                "exploder_worker_consuming",
                "Whether the worker takes jobs (1), or stopped taking them because its \
                 store, RabbitMQ or Redis fails its check (0).",
            )?,
            redis_up: IntGauge::with_opts(
                Opts::new(
                    "exploder_redis_up",
                    "Whether Redis is reachable (1) or not (0).",
                )
                .const_label("component", "worker"),
            )?,
            staging_swept: IntCounter::new(
                "exploder_worker_staging_swept_total",
                "Staging directories of dead workers removed from the store's tmp/.",
            )?,
            redriven: IntCounterVec::new(
                Opts::new(
                    "exploder_resync_redriven_jobs_total",
                    "Jobs the resync published again for requests with no sign of progress.",
                ),
                &["job"],
            )?,
            requests_outstanding: IntGauge::new(
                "exploder_requests_outstanding",
                "Requested links neither linked nor failed yet (exported by the worker \
                 holding the resync lease; 0 elsewhere).",
            )?,
            requests_failed: IntGauge::new(
                "exploder_requests_failed",
                "Requested links whose image job was dead-lettered (resync lease holder).",
            )?,
            request_oldest_age: IntGauge::new(
                "exploder_request_oldest_age_seconds",
                "Age of the oldest outstanding requested link, since it was decided \
                 (resync lease holder; 0 when none).",
            )?,
            resync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "exploder_worker_resync_seconds",
                    "Time each resync pass took (a pass should end well within \
                     --resync-interval).",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                ]),
            )?,
            resync_requests: IntCounterVec::new(
                Opts::new(
                    "exploder_worker_resync_requests_total",
                    "Requests the resync handled, by outcome: redriven (jobs published \
                     again), settled (found linked).",
                ),
                &["outcome"],
            )?,
            resync_passes: IntCounterVec::new(
                Opts::new(
                    "exploder_worker_resync_passes_total",
                    "Resync passes, by result: complete, partial (batch full, the next \
                     pass goes on), lease_lost, failed.",
                ),
                &["result"],
            )?,
            resync_deferred: IntGauge::new(
                "exploder_worker_resync_deferred_requests",
                "Requests needing work that the last resync pass left to the next one \
                 (its batch was full; resync lease holder, 0 elsewhere).",
            )?,
            images_refused: IntCounterVec::new(
                Opts::new(
                    "exploder_worker_images_refused_total",
                    "Image jobs refused (dead-lettered with the reason), by reason (blocked, signature).",
                ),
                &["reason"],
            )?,
        };
        // Every label value known in advance is exported from the start, at
        // 0: a panel or an alert on a series that does not exist yet draws
        // nothing (or never fires) instead of a flat 0.
        for what in ["layer_skipped", "download_skipped"] {
            m.dedupe_hits.with_label_values(&[what]);
        }
        for service in ["amqp", "redis"] {
            m.reconnects.with_label_values(&[service]);
        }
        for job in ["image", "layer"] {
            m.redriven.with_label_values(&[job]);
        }
        for outcome in ["redriven", "settled"] {
            m.resync_requests.with_label_values(&[outcome]);
        }
        for result in ["complete", "partial", "lease_lost", "failed"] {
            m.resync_passes.with_label_values(&[result]);
        }
        for reason in ["blocked", "signature"] {
            m.images_refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.jobs.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.bytes_downloaded.clone()))?;
        registry.register(Box::new(m.bytes_written.clone()))?;
        registry.register(Box::new(m.files_shared.clone()))?;
        registry.register(Box::new(m.file_bytes_shared.clone()))?;
        registry.register(Box::new(m.dedupe_hits.clone()))?;
        registry.register(Box::new(m.claim_conflicts.clone()))?;
        registry.register(Box::new(m.fan_in_finalizes.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.broker_up.clone()))?;
        registry.register(Box::new(m.redis_up.clone()))?;
        registry.register(Box::new(m.consuming.clone()))?;
        registry.register(Box::new(m.staging_swept.clone()))?;
        registry.register(Box::new(m.redriven.clone()))?;
        registry.register(Box::new(m.requests_outstanding.clone()))?;
        registry.register(Box::new(m.requests_failed.clone()))?;
        registry.register(Box::new(m.request_oldest_age.clone()))?;
        registry.register(Box::new(m.images_refused.clone()))?;
        registry.register(Box::new(m.resync_seconds.clone()))?;
        registry.register(Box::new(m.resync_requests.clone()))?;
        registry.register(Box::new(m.resync_passes.clone()))?;
        registry.register(Box::new(m.resync_deferred.clone()))?;
        Ok(m)
    }

    /// What the resync saw (this worker holds its lease).
    pub fn set_requests(&self, s: &exploder_common::request::Summary) {
        self.requests_outstanding.set(s.outstanding as i64);
        self.requests_failed.set(s.failed as i64);
        self.request_oldest_age
            .set(s.oldest_outstanding_seconds.unwrap_or(0) as i64);
    }

    /// Another worker holds the resync lease: its figures are the fleet's.
    pub fn clear_requests(&self) {
        self.set_requests(&Default::default());
        self.resync_deferred.set(0);
    }
}
