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

/// `--metrics-listen`, for the daemons.
#[derive(Args, Clone, Debug)]
pub struct MetricsArgs {
    /// Where /metrics, /healthz and /readyz are served (port 0: any free
    /// port; several daemons on one host need different ports).
    #[arg(long, env = "EXPLODER_METRICS_LISTEN", default_value = "0.0.0.0:9100")]
    pub metrics_listen: String,
}
