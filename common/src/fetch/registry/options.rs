//! What a fetcher is configured with, and how it reaches a registry.
//!
//! Owns [`RegistryOptions`] (flags and `EXPLODER_*` environment) and the
//! plain-HTTP decision: loopback registries and the listed insecure ones
//! are reached over `http://`, all others over HTTPS, and oci-client is
//! handed the same decision (`plain_http_hosts`).

use std::path::PathBuf;
use std::time::Duration;

use crate::reference::Reference;

use super::auth::auth_key_host;

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts ("host" or "host:port") reached over plain HTTP besides loopback
    /// ones (--insecure-registry / EXPLODER_INSECURE_REGISTRIES,
    /// comma-separated).
    pub insecure_registries: Vec<String>,
    /// The one auth file to read (--authfile); None = the files podman,
    /// skopeo and docker write, in their order (`auth::auth_file_paths`);
    /// missing files are skipped.
    pub auth_file: Option<PathBuf>,
    /// Explicit credentials (flags) win over the file.
    pub username: Option<String>,
    pub password: Option<String>,
    /// A bearer/registry token given directly (flag), used as
    /// `RegistryAuth::Bearer`.
    pub token: Option<String>,
    /// Max attempts for 429/5xx/network errors (default when 0: 5).
    pub max_attempts: u32,
    /// How long a registry may stay silent (--registry-timeout; default
    /// when `None`: [`DEFAULT_TIMEOUT`]): connecting (at most 30 s), and
    /// between two reads of an answer. A request other than a blob
    /// download gives up after twice this in all; a blob download resumes
    /// when it stalls, and gives up after three times this without a byte.
    pub timeout: Option<Duration>,
    /// The slowest a blob download may go, in bytes a second, averaged
    /// over [`RegistryOptions::transfer_rate_window`]
    /// (--min-transfer-rate; default when `None`:
    /// [`DEFAULT_MIN_TRANSFER_RATE`]; 0 turns the floor off). A download
    /// under it is resumed on a new connection; after as many slow
    /// windows in a row as a request has attempts, it fails as
    /// [`super::FetchError::TooSlow`] (transient).
    pub min_transfer_rate: Option<u64>,
    /// The window the rate is averaged over (--transfer-rate-window;
    /// default when `None`: [`DEFAULT_TRANSFER_RATE_WINDOW`]).
    pub transfer_rate_window: Option<Duration>,
}

/// How long a registry may stay silent when not configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The floor under a blob download's rate when not configured: 1 KiB/s.
/// It is a guard against a registry (or a middlebox) that trickles a
/// download to hold a worker for ever, not a performance target: a 100 MB
/// layer at this rate would take more than a day, and the slowest links a
/// fleet shares among its downloads (64 downloads over 10 Mbit/s get ~20
/// KB/s each) stay well above it.
pub const DEFAULT_MIN_TRANSFER_RATE: u64 = 1 << 10;

/// The window a blob download's rate is averaged over when not configured:
/// long enough that a pause (a registry's garbage collection, a TCP
/// retransmission backoff) does not count as slowness, as curl's
/// `--speed-time` is usually set.
pub const DEFAULT_TRANSFER_RATE_WINDOW: Duration = Duration::from_secs(30);

pub(super) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether `registry` ("host" or "host:port") is reached over plain HTTP:
/// loopback registries (127.0.0.0/8, localhost, [::1]) always, others when
/// listed. A listed "host" covers every port of it; a listed "host:port"
/// only that port; a scheme or path on a listed entry is ignored.
pub(super) fn uses_plain_http(registry: &str, insecure: &[String]) -> bool {
    let reference = Reference {
        registry: registry.to_string(),
        repository: String::new(),
        tag: None,
        digest: None,
    };
    reference.is_loopback()
        || insecure
            .iter()
            .map(|entry| auth_key_host(entry.trim()))
            .any(|entry| {
                entry.eq_ignore_ascii_case(registry) || entry.eq_ignore_ascii_case(reference.host())
            })
}

/// The exception list for `ClientProtocol::HttpsExcept`, which oci-client
/// compares with the *resolved* registry ("index.docker.io" for
/// "docker.io"): the configured insecure hosts, plus this registry when it
/// is reached over plain HTTP.
pub(super) fn plain_http_hosts(registry: &str, resolved: &str, insecure: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = insecure
        .iter()
        .map(|e| auth_key_host(e.trim()).to_string())
        .collect();
    if uses_plain_http(registry, insecure) && !hosts.iter().any(|h| h == resolved) {
        hosts.push(resolved.to_string());
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::super::RegistryFetcher;
    use super::*;

    /// Options that do not read the developer's ~/.docker/config.json.
    fn no_auth_file() -> RegistryOptions {
        RegistryOptions {
            auth_file: Some(PathBuf::from("/nonexistent/exploder-test/config.json")),
            ..RegistryOptions::default()
        }
    }

    #[test]
    fn loopback_and_listed_registries_use_plain_http() {
        for registry in [
            "127.0.0.1:5000",
            "127.3.4.5",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(uses_plain_http(registry, &[]), "{registry}");
        }
        for registry in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
            "ghcr.io",
        ] {
            assert!(!uses_plain_http(registry, &[]), "{registry}");
        }
        let listed: Vec<String> = ["reg.local:5000", "other.local", "http://third.local:8080/"]
            .map(String::from)
            .into();
        assert!(uses_plain_http("reg.local:5000", &listed));
        assert!(
            !uses_plain_http("reg.local:5001", &listed),
            "a listed port covers only that port"
        );
        assert!(
            uses_plain_http("other.local:5000", &listed),
            "a listed host covers every port"
        );
        assert!(uses_plain_http("other.local", &listed));
        assert!(uses_plain_http("third.local:8080", &listed));
        assert!(!uses_plain_http("docker.io", &listed));
    }

    #[test]
    fn the_exception_list_names_the_resolved_registry() {
        assert_eq!(
            plain_http_hosts("127.0.0.1:5000", "127.0.0.1:5000", &[]),
            ["127.0.0.1:5000"]
        );
        assert_eq!(
            plain_http_hosts("[::1]:5000", "[::1]:5000", &[]),
            ["[::1]:5000"]
        );
        assert!(plain_http_hosts("docker.io", "index.docker.io", &[]).is_empty());
        let listed = vec!["http://reg.local:5000/".to_string()];
        assert_eq!(
            plain_http_hosts("reg.local:5000", "reg.local:5000", &listed),
            ["reg.local:5000"]
        );
        assert_eq!(
            plain_http_hosts("ghcr.io", "ghcr.io", &listed),
            ["reg.local:5000"]
        );
        // The fetcher and oci-client agree on the scheme.
        let f = RegistryFetcher::new("127.0.0.1:5000", "team/app", &no_auth_file()).unwrap();
        assert_eq!(f.inner.base_url, "http://127.0.0.1:5000/v2/team/app");
        let f = RegistryFetcher::new("docker.io", "library/alpine", &no_auth_file()).unwrap();
        assert_eq!(
            f.inner.base_url,
            "https://index.docker.io/v2/library/alpine"
        );
        assert_eq!(f.location(), "docker.io/library/alpine");
    }
}
