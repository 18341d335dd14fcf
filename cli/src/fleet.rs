//! Operator commands for the fleet's broker: `exploder topology apply|verify`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use exploder_queue::connect::{connect, redact};
use exploder_queue::topology::Topology;

/// Where the fleet's broker is and which fleet on it.
#[derive(Args, Clone)]
pub struct BrokerArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "EXPLODER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Prefix of every queue, exchange and Redis key: several fleets (and
    /// tests) can share one broker.
    #[arg(long, env = "EXPLODER_PREFIX", default_value = "")]
    pub prefix: String,
    /// How long to keep retrying to reach the broker.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}: units are ms, s, m, h")),
    }
}

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Declare every exchange and queue (idempotent).
    Apply(BrokerArgs),
    /// Check that every exchange and queue exists as declared; exit 1 and
    /// list the problems otherwise.
    Verify(BrokerArgs),
}

pub async fn topology(cmd: TopologyCommand) -> ExitCode {
    let (broker, apply) = match cmd {
        TopologyCommand::Apply(b) => (b, true),
        TopologyCommand::Verify(b) => (b, false),
    };
    let conn = match connect(&broker.amqp_url, broker.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "exploder: cannot reach RabbitMQ at {} ({e}); check EXPLODER_AMQP_URL and that the broker runs",
                redact(&broker.amqp_url)
            );
            return ExitCode::from(1);
        }
    };
    let topology = Topology::new(&broker.prefix);
    if apply {
        match topology.apply(&conn).await {
            Ok(()) => {
                println!("topology applied: {} queues", topology.queues().len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("exploder: {e}");
                ExitCode::from(1)
            }
        }
    } else {
        match topology.verify(&conn).await {
            Ok(problems) if problems.is_empty() => {
                println!("topology ok: {} queues", topology.queues().len());
                ExitCode::SUCCESS
            }
            Ok(problems) => {
                for p in problems {
                    eprintln!("exploder: {p}");
                }
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("exploder: verifying the topology: {e}");
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5x").is_err());
    }
}
