//! What a process says about itself: its log format, and where a daemon
//! serves its metrics and health endpoints.

use clap::{Args, ValueEnum};

/// `--log-format`.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format on stderr (json: one object per line, for a log
    /// collector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EXPLODER_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogArgs {
    /// Starts logging; `default_filter` applies unless RUST_LOG is set.
    pub fn init(&self, default_filter: &str) {
        exploder_telemetry::logging::init(self.log_format == LogFormat::Json, default_filter);
    }
}

/// `--metrics-listen`, for the daemons. Each daemon has a default port of
/// its own, so that a producer and a worker on one host do not collide
/// (nor either with node_exporter's 9100).
#[derive(Args, Clone, Debug)]
pub struct MetricsArgs {
    /// Where /metrics, /healthz and /readyz are served [default:
    /// 0.0.0.0:9388 for exploder-producer, 0.0.0.0:9389 for
    /// exploder-worker]. Port 0: any free port; several workers on one
    /// host need a port each. A daemon that cannot listen there does not
    /// start.
    #[arg(long, env = "EXPLODER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// The producer's `--metrics-listen` when none is given.
pub const PRODUCER_METRICS_LISTEN: &str = "0.0.0.0:9388";
/// The worker's `--metrics-listen` when none is given.
pub const WORKER_METRICS_LISTEN: &str = "0.0.0.0:9389";

impl MetricsArgs {
    /// The address to serve on: the flag, else `default` (one of the
    /// constants above).
    pub fn listen(&self, default: &str) -> String {
        self.metrics_listen
            .clone()
            .unwrap_or_else(|| default.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both daemons run on one host as they come: a default port each,
    /// neither node_exporter's 9100, and `--help` says which.
    #[test]
    fn the_daemons_default_metrics_ports_differ_and_help_names_them() {
        assert_ne!(PRODUCER_METRICS_LISTEN, WORKER_METRICS_LISTEN);
        for default in [PRODUCER_METRICS_LISTEN, WORKER_METRICS_LISTEN] {
            assert!(!default.ends_with(":9100"), "{default}");
        }
        let help = MetricsArgs::augment_args(clap::Command::new("daemon"))
            .render_long_help()
            .to_string();
        assert!(help.contains(PRODUCER_METRICS_LISTEN), "{help}");
        assert!(help.contains(WORKER_METRICS_LISTEN), "{help}");
    }
}
