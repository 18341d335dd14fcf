//! Where the fleet is: its broker, its Redis index, and the prefix that
//! names its queues, exchanges and keys on both.

use std::time::Duration;

use clap::Args;
use exploder_queue::connect::{AmqpOptions, DEFAULT_AMQP_URL};
use exploder_queue::index::DEFAULT_REDIS_URL;

use crate::duration::parse_duration;

/// `--amqp-url`.
#[derive(Args, Clone, Debug, Default)]
pub struct AmqpArgs {
    /// RabbitMQ URL [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(
        long,
        value_name = "URL",
        env = "EXPLODER_AMQP_URL",
        hide_env_values = true
    )]
    amqp_url: Option<String>,
}

impl AmqpArgs {
    /// The flag, else `config` (the producer's file), else the default.
    pub fn url(&self, config: Option<String>) -> String {
        self.amqp_url
            .clone()
            .or(config)
            .unwrap_or_else(|| DEFAULT_AMQP_URL.into())
    }
}

/// `--redis-url`.
#[derive(Args, Clone, Debug, Default)]
pub struct RedisArgs {
    /// Redis URL of the fleet's index [default: redis://127.0.0.1:6379/0].
    #[arg(
        long,
        value_name = "URL",
        env = "EXPLODER_REDIS_URL",
        hide_env_values = true
    )]
    redis_url: Option<String>,
}

impl RedisArgs {
    /// The flag, else `config` (the producer's file), else the default.
    pub fn url(&self, config: Option<String>) -> String {
        self.redis_url
            .clone()
            .or(config)
            .unwrap_or_else(|| DEFAULT_REDIS_URL.into())
    }
}

/// `--prefix`.
#[derive(Args, Clone, Debug, Default)]
pub struct PrefixArgs {
    /// Prefix of every queue, exchange and Redis key: several fleets (and
    /// tests) can share one broker and one Redis [default: none].
    #[arg(long, env = "EXPLODER_PREFIX")]
    prefix: Option<String>,
}

impl PrefixArgs {
    /// The flag, else `config` (the producer's file), else none.
    pub fn prefix(&self, config: Option<String>) -> String {
        self.prefix.clone().or(config).unwrap_or_default()
    }
}

/// How long a daemon waits on the broker and Redis: every network wait
/// has a deadline, so a partition (packets dropped, no reset) is noticed
/// and worked around instead of waited out.
#[derive(Args, Clone, Debug)]
pub struct DeadlineArgs {
    /// AMQP heartbeat asked of the broker: each side gives a silent
    /// connection up after two of them, and the broker then requeues the
    /// jobs a lost worker held (0: the broker's, RabbitMQ's 60s; a
    /// ?heartbeat= in the URL wins).
    #[arg(long, env = "EXPLODER_AMQP_HEARTBEAT", default_value = "10s", value_parser = parse_duration)]
    pub amqp_heartbeat: Duration,
    /// Deadline of each wait on the broker: a connection attempt (TCP, TLS
    /// and handshake), a round trip (a channel, a declare), a publish
    /// waiting for its confirm.
    #[arg(long, env = "EXPLODER_AMQP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub amqp_timeout: Duration,
    /// Deadline of each Redis command and connection attempt (a connection
    /// whose sent bytes go unacknowledged as long is dropped and made
    /// again).
    #[arg(long, env = "EXPLODER_REDIS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
}

impl Default for DeadlineArgs {
    fn default() -> Self {
        let amqp = AmqpOptions::default();
        DeadlineArgs {
            amqp_heartbeat: amqp.heartbeat,
            amqp_timeout: amqp.timeout,
            redis_timeout: exploder_queue::index::DEFAULT_REDIS_TIMEOUT,
        }
    }
}

impl DeadlineArgs {
    /// The broker's deadlines (a zero timeout is taken as 1 s: a wait
    /// that may not wait at all would never succeed).
    pub fn amqp(&self) -> AmqpOptions {
        AmqpOptions {
            heartbeat: self.amqp_heartbeat,
            timeout: self.amqp_timeout.max(MIN_TIMEOUT),
        }
    }

    /// Redis's deadline (at least 1 s, as for the broker).
    pub fn redis(&self) -> Duration {
        self.redis_timeout.max(MIN_TIMEOUT)
    }
}

const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The whole fleet as a daemon reaches it: broker, index and prefix, and
/// how long it waits on each.
#[derive(Args, Clone, Debug, Default)]
pub struct FleetArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
}

/// How many interrupted deliveries (the process handling a message died or
/// lost the broker) a message survives before it is dead-lettered: the
/// producer's, for the events of its events queue.
#[derive(Args, Clone, Debug)]
pub struct DeliveryLimitArgs {
    /// Interrupted deliveries a message survives: each time the daemon
    /// handling it dies or loses the broker, it is counted and put back;
    /// past this many it goes to the dead-letter queue (a job that crashes
    /// workers, or a webhook event whose reconcile kills producers, ends
    /// there instead of crash-looping them).
    #[arg(
        long,
        env = "EXPLODER_DELIVERY_LIMIT",
        default_value_t = exploder_queue::topology::DEFAULT_DELIVERY_LIMIT
    )]
    pub delivery_limit: u32,
}

/// The broker as the command line's client commands reach it (`enqueue`,
/// `poll`, `status`, `dlq`, `topology`): they give up after a while
/// instead of waiting for ever as the daemons do.
#[derive(Args, Clone, Debug)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    /// How long to keep trying to reach the broker (each attempt is cut
    /// at 30s at most).
    #[arg(long, env = "EXPLODER_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl BrokerArgs {
    pub fn amqp_url(&self) -> String {
        self.amqp.url(None)
    }

    pub fn prefix(&self) -> String {
        self.prefix.prefix(None)
    }
}

/// `--management-url`.
#[derive(Args, Clone, Debug, Default)]
pub struct ManagementArgs {
    /// RabbitMQ's management API (http://HOST:15672), asked for the unacked
    /// counts of the queues only; without it, or when it does not answer
    /// (the plugin is optional), unacked counts are left out.
    #[arg(long, value_name = "URL", env = "EXPLODER_MANAGEMENT_URL")]
    management_url: Option<String>,
}

impl ManagementArgs {
    /// The flag, else `default`.
    pub fn url(&self, default: Option<&str>) -> Option<String> {
        self.management_url
            .clone()
            .or_else(|| default.map(String::from))
    }
}

/// `exploder enqueue --jobs`.
#[derive(Args, Clone, Debug)]
pub struct EnqueueJobsArgs {
    /// References worked on at once: resolved (registry round trips),
    /// recorded in the store and published. Output and exit code are as
    /// if one at a time, in the order given.
    #[arg(
        long,
        env = "EXPLODER_ENQUEUE_JOBS",
        default_value_t = DEFAULT_ENQUEUE_JOBS,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub jobs: u16,
}

/// Enough references in flight to keep the broker's and the store's
/// round trips overlapped, few enough not to hammer one registry.
pub const DEFAULT_ENQUEUE_JOBS: u16 = 16;

impl Default for EnqueueJobsArgs {
    fn default() -> Self {
        EnqueueJobsArgs {
            jobs: DEFAULT_ENQUEUE_JOBS,
        }
    }
}

/// The worker's resync: how often, after how long, and how much per pass.
#[derive(Args, Clone, Debug)]
pub struct ResyncArgs {
    /// How often the resync looks at the requested links (one worker of
    /// the fleet at a time, under a lease in Redis).
    #[arg(long, env = "EXPLODER_RESYNC_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How long a requested link may show no sign of progress before the
    /// resync publishes its jobs again. Keep it above the longest backoff
    /// tier (5m) and how long a job may sit in a busy queue.
    #[arg(long, env = "EXPLODER_RESYNC_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub resync_after: Duration,
    /// Requests a resync pass re-drives or settles at most; the next pass
    /// goes on where it stopped, so a backlog is worked through a batch
    /// per --resync-interval.
    #[arg(
        long,
        env = "EXPLODER_RESYNC_BATCH",
        default_value_t = exploder_queue::resync::DEFAULT_BATCH,
        value_parser = parse_batch
    )]
    pub resync_batch: usize,
}

fn parse_batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a pass must do something: at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl ResyncArgs {
    /// How often a pass starts (at least every second).
    pub fn interval(&self) -> Duration {
        self.resync_interval.max(MIN_TIMEOUT)
    }

    /// What one pass may do.
    pub fn bounds(&self) -> exploder_queue::resync::Bounds {
        exploder_queue::resync::Bounds {
            after: self.resync_after,
            batch: self.resync_batch,
        }
    }
}
