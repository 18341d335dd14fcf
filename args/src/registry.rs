//! How registries are reached (plain HTTP, credentials) and how a
//! reference is resolved and mapped into the store (platform, a registry's
//! storage directory instead of its API, per-registry link paths).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::image::Platform;
use exploder_common::store::RegistryPaths;
use exploder_common::store::quota::parse_size;

use crate::duration::parse_duration;

/// How to reach registries: every binary that pulls.
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Use plain HTTP for this registry (host or host:port; repeatable, or
    /// comma-separated in the variable). Loopback registries (127.0.0.0/8,
    /// localhost, [::1]) always use HTTP.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "EXPLODER_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Credentials file (a docker config.json or a containers auth.json),
    /// read alone [default: the first that knows the registry of
    /// REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, $DOCKER_CONFIG/config.json,
    /// ~/.docker/config.json].
    #[arg(long, value_name = "FILE", env = "EXPLODER_REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// Registry user name (with --password); wins over --authfile.
    #[arg(long, env = "EXPLODER_REGISTRY_USERNAME", requires = "password")]
    username: Option<String>,
    /// Registry password or token (with --username).
    #[arg(
        long,
        env = "EXPLODER_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    password: Option<String>,
    /// Bearer token to send as is (not with --username/--password: one
    /// kind of credentials at a time).
    #[arg(
        long,
        env = "EXPLODER_REGISTRY_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["username", "password"]
    )]
    registry_token: Option<String>,
    /// How long a registry may stay silent: connecting (at most 30s), and
    /// between two reads of an answer; a request gives up after twice this
    /// in all, a blob download (which resumes when it stalls) after three
    /// times this without a byte [default: 60s].
    #[arg(long, value_name = "DURATION", env = "EXPLODER_REGISTRY_TIMEOUT", value_parser = parse_duration)]
    registry_timeout: Option<Duration>,
    /// The slowest a blob download may go, in bytes a second over
    /// --transfer-rate-window (a size: 1KiB, 100kB; 0 turns it off). A
    /// slower download is resumed on a new connection, and fails as
    /// transient (retried later) when it stays that slow [default: 1KiB].
    #[arg(long, value_name = "SIZE", env = "EXPLODER_MIN_TRANSFER_RATE", value_parser = parse_size)]
    min_transfer_rate: Option<u64>,
    /// The window a blob download's rate is averaged over (see
    /// --min-transfer-rate) [default: 30s].
    #[arg(long, value_name = "DURATION", env = "EXPLODER_TRANSFER_RATE_WINDOW", value_parser = parse_duration)]
    transfer_rate_window: Option<Duration>,
}

impl RegistryArgs {
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure_registries: self.insecure_registries.clone(),
            auth_file: self.authfile.clone(),
            username: self.username.clone().filter(|s| !s.is_empty()),
            password: self.password.clone().filter(|s| !s.is_empty()),
            token: self.registry_token.clone().filter(|s| !s.is_empty()),
            max_attempts: 0,
            timeout: self.registry_timeout,
            min_transfer_rate: self.min_transfer_rate,
            transfer_rate_window: self.transfer_rate_window,
        }
    }
}

/// What to resolve and where it links: the commands that turn references
/// into images (`explode`, `enqueue`, `poll`) and the producer.
#[derive(Args, Clone, Debug, Default)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Platform to pick from a multi-platform image: OS/ARCH[/VARIANT]
    /// [default: linux/amd64].
    #[arg(long, env = "EXPLODER_PLATFORM")]
    platform: Option<String>,
    /// Read registry references from this registry storage directory
    /// (file:///var/lib/registry) instead of the registry API; fleet
    /// workers need the same path.
    #[arg(long, value_name = "URL", env = "EXPLODER_BLOB_SOURCE")]
    blob_source: Option<String>,
    #[command(flatten)]
    pub paths: RegistryPathArgs,
}

impl ResolveArgs {
    /// The flag, else `config` (the producer's file), else linux/amd64.
    pub fn platform(&self, config: Option<String>) -> Result<Platform, String> {
        match self.platform.clone().or(config) {
            None => Ok(Platform::default()),
            Some(p) => p.parse().map_err(|e| format!("--platform: {e}")),
        }
    }

    /// Whether a platform was asked for (flag or variable), rather than
    /// the default.
    pub fn platform_asked(&self) -> bool {
        self.platform.is_some()
    }

    /// The storage directory blobs are read from, if any: the flag, else
    /// `config`.
    pub fn blob_source(&self, config: Option<String>) -> Result<Option<PathBuf>, String> {
        match self.blob_source.clone().or(config) {
            None => Ok(None),
            Some(s) => match s.strip_prefix("file://") {
                Some(p) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
                _ => Err(format!(
                    "--blob-source {s:?}: expected file:///path/to/registry/storage"
                )),
            },
        }
    }
}

/// `--registry-path`: where each registry's images link in the store
/// (also for the commands that only read the store).
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryPathArgs {
    /// Link the images of registry HOST under images/PREFIX/... instead of
    /// images/... (repeatable, or comma-separated in
    /// EXPLODER_REGISTRY_PATHS). Needed when two registries hold the same
    /// repository names: the store refuses to move a tag from one
    /// registry's image to another's.
    #[arg(
        long = "registry-path",
        value_name = "HOST=PREFIX",
        env = "EXPLODER_REGISTRY_PATHS",
        value_delimiter = ','
    )]
    registry_paths: Vec<String>,
}

impl RegistryPathArgs {
    /// The mapping, the flags' over `more` (from a config file).
    pub fn paths(&self, more: &[String]) -> Result<RegistryPaths, String> {
        let mut items = more.to_vec();
        items.extend(self.registry_paths.iter().cloned());
        RegistryPaths::parse(&items).map_err(|e| format!("--registry-path: {e}"))
    }
}
