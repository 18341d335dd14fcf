//! The HTTP side of a registry, shared by every repository of it.
//!
//! A fetcher serves one repository, but its connections and TLS sessions
//! belong to the registry: a worker that follows a registry for months
//! sees thousands of repositories, and one connection pool per repository
//! kept every socket it ever opened (issue 25: ~1,950 open files and
//! 300 MB at 2,000 repositories). So the process keeps one
//! [`RegistryClient`] per registry and configuration ([`ClientKey`]), and
//! every [`RegistryFetcher`](super::RegistryFetcher) of that registry
//! borrows it:
//!
//! - one `reqwest` pool for what exploder sends itself (the `/v2/` ping,
//!   token exchanges, manifests, tag lists), whose idle connections close
//!   after [`IDLE_CONNECTION`] and of which at most [`IDLE_PER_HOST`] stay
//!   open per host;
//! - one `oci_client::Client` for blob downloads. Its token cache is keyed
//!   by repository and never forgets an entry (it only ignores expired
//!   ones), so a client that has been handed the tokens of
//!   [`TOKEN_REPOSITORIES`] repositories is retired: later fetchers get a
//!   fresh one, and the old one goes with the last fetcher that holds it.
//!
//! The cache itself holds a client while a fetcher does, and for
//! [`IDLE_CLIENT`] after it was last asked for, so that `exploder enqueue`
//! resolving a thousand references one fetcher at a time reuses one pool,
//! and a process done with a registry keeps nothing of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};

use super::auth::Credentials;
use super::options::{RegistryOptions, plain_http_hosts};
use super::token::Challenge;
use super::{Deadlines, FetchError, USER_AGENT};

/// An idle connection is closed after this long.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(30);
/// Idle connections kept open per host, beyond which a returned
/// connection is closed.
pub const IDLE_PER_HOST: usize = 8;
/// A client nobody has asked for in this long is dropped from the cache.
pub const IDLE_CLIENT: Duration = Duration::from_secs(120);
/// How long what a registry's `/v2/` asked for is taken as its answer for
/// every new fetcher of it. A 401 always asks again.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Repositories whose tokens one oci-client token cache may hold before the
/// client is retired (a token is ~1–2 KB: a few MB at most).
pub const TOKEN_REPOSITORIES: usize = 1024;

/// What makes two fetchers' clients interchangeable: the registry, how it
/// is reached, its deadlines, and the credentials (oci-client keeps basic
/// credentials per registry and tokens per repository, so two identities
/// never share a client).
/// Not `Debug`: it holds secrets.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    registry: String,
    plain_http_hosts: Vec<String>,
    timeout: Option<Duration>,
    credentials: Credentials,
}

impl ClientKey {
    pub(super) fn new(
        registry: &str,
        resolved: &str,
        opts: &RegistryOptions,
        credentials: &Credentials,
    ) -> ClientKey {
        ClientKey {
            registry: registry.to_string(),
            plain_http_hosts: plain_http_hosts(registry, resolved, &opts.insecure_registries),
            timeout: opts.timeout,
            credentials: credentials.clone(),
        }
    }
}

/// One registry's HTTP clients (see the module documentation).
pub(super) struct RegistryClient {
    /// Blob downloads.
    pub(super) oci: oci_client::Client,
    /// The requests exploder sends itself.
    pub(super) http: reqwest::Client,
    /// Repositories whose token went into `oci`'s token cache.
    token_repositories: AtomicUsize,
    /// What the registry's `/v2/` last asked for, and when: every new
    /// fetcher authenticates, and would otherwise ping the registry first
    /// (a third of what resolving a small image costs).
    challenge: Mutex<Option<(Challenge, Instant)>>,
}

impl RegistryClient {
    fn build(key: &ClientKey, deadlines: Deadlines) -> Result<RegistryClient, String> {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(key.plain_http_hosts.clone()),
            platform_resolver: None,
            connect_timeout: Some(deadlines.connect),
            read_timeout: Some(deadlines.read),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        // Both clients take the process's provider; none installed is a panic.
        crate::tls::install_provider();
        // Not Client::new: on a bad config it falls back to defaults
        // (https everywhere) and only logs.
        let oci = oci_client::Client::try_from(config).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(deadlines.connect)
            .read_timeout(deadlines.read)
            .timeout(deadlines.request)
            .pool_idle_timeout(IDLE_CONNECTION)
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(RegistryClient {
            oci,
            http,
            token_repositories: AtomicUsize::new(0),
            challenge: Mutex::new(None),
        })
    }

    /// What the registry's `/v2/` answered within [`CHALLENGE_TTL`], if it
    /// was asked.
    pub(super) fn recent_challenge(&self) -> Option<Challenge> {
        let cached = self.challenge.lock().expect("challenge lock");
        cached
            .as_ref()
            .filter(|(_, at)| at.elapsed() < CHALLENGE_TTL)
            .map(|(c, _)| c.clone())
    }

    pub(super) fn remember_challenge(&self, challenge: &Challenge) {
        *self.challenge.lock().expect("challenge lock") = Some((challenge.clone(), Instant::now()));
    }

    /// Counts a repository whose token went into the blob client's cache.
    pub(super) fn note_token_repository(&self) {
        self.token_repositories.fetch_add(1, Ordering::Relaxed);
    }

    fn retired(&self) -> bool {
        self.token_repositories.load(Ordering::Relaxed) >= TOKEN_REPOSITORIES
    }
}

struct Cached {
    client: Arc<RegistryClient>,
    last_used: Instant,
}

/// The clients of one process, by [`ClientKey`].
#[derive(Default)]
pub(super) struct ClientCache {
    clients: Mutex<HashMap<ClientKey, Cached>>,
}

/// The process's cache: every fetcher asks it.
pub(super) static CLIENTS: LazyLock<ClientCache> = LazyLock::new(ClientCache::default);

impl ClientCache {
    /// The client for `key`, built when there is none (or the one there is
    /// retired). Clients no fetcher holds and none asked for in
    /// [`IDLE_CLIENT`] are dropped on the way; one still in use stays, so
    /// that its registry's next fetcher shares it rather than a second one.
    pub(super) fn get(
        &self,
        key: &ClientKey,
        deadlines: Deadlines,
        location: &str,
    ) -> Result<Arc<RegistryClient>, FetchError> {
        let now = Instant::now();
        let mut clients = self.clients.lock().expect("registry client cache lock");
        clients.retain(|_, c| {
            Arc::strong_count(&c.client) > 1 || now.duration_since(c.last_used) < IDLE_CLIENT
        });
        if let Some(cached) = clients.get_mut(key)
            && !cached.client.retired()
        {
            cached.last_used = now;
            return Ok(cached.client.clone());
        }
        let client = Arc::new(RegistryClient::build(key, deadlines).map_err(|message| {
            FetchError::Invalid {
                what: format!("HTTP client for {location}"),
                message,
            }
        })?);
        clients.insert(
            key.clone(),
            Cached {
                client: client.clone(),
                last_used: now,
            },
        );
        Ok(client)
    }

    /// How many clients the cache holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(registry: &str) -> ClientKey {
        ClientKey::new(
            registry,
            registry,
            &RegistryOptions::default(),
            &Credentials::Anonymous,
        )
    }

    fn deadlines() -> Deadlines {
        Deadlines::of(None)
    }

    #[test]
    fn fetchers_of_one_registry_share_one_client() {
        let cache = ClientCache::default();
        let a = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        let b = cache.get(&key("127.0.0.1:5000"), deadlines(), "b").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn another_registry_or_other_credentials_get_a_client_of_their_own() {
        let cache = ClientCache::default();
        let a = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        let b = cache.get(&key("127.0.0.1:5001"), deadlines(), "b").unwrap();
        let basic = Credentials::Basic {
            user: "u".into(),
            password: "p".into(),
        };
        let with_basic = ClientKey::new(
            "127.0.0.1:5000",
            "127.0.0.1:5000",
            &RegistryOptions::default(),
            &basic,
        );
        let c = cache.get(&with_basic, deadlines(), "c").unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_client_a_fetcher_still_holds_is_kept_however_long_ago_it_was_asked_for() {
        let cache = ClientCache::default();
        let held = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        let idle = cache.get(&key("127.0.0.1:5001"), deadlines(), "b").unwrap();
        drop(idle);
        for c in cache.clients.lock().unwrap().values_mut() {
            c.last_used -= IDLE_CLIENT;
        }
        let again = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        assert!(Arc::ptr_eq(&held, &again));
        assert_eq!(cache.len(), 1, "the client nobody holds is dropped");
    }

    #[test]
    fn a_client_holding_the_tokens_of_too_many_repositories_is_replaced() {
        let cache = ClientCache::default();
        let old = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        for _ in 0..TOKEN_REPOSITORIES - 1 {
            old.note_token_repository();
        }
        let same = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        assert!(Arc::ptr_eq(&old, &same));
        old.note_token_repository();
        let new = cache.get(&key("127.0.0.1:5000"), deadlines(), "a").unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(cache.len(), 1);
    }
}
