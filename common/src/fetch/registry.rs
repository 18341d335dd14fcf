//! The distribution HTTP API, through `oci-client`.
//!
//! One [`RegistryFetcher`] serves one repository of one registry. What goes
//! through what:
//!
//! - authentication (the `/v2/` ping, the bearer-token exchange, basic
//!   credentials) and blob downloads (`pull_blob_stream`, and
//!   `pull_blob_stream_partial` to resume) go through `oci_client::Client`;
//! - manifest GETs and HEADs are sent with `reqwest` directly, with the
//!   token oci-client obtained, because `pull_manifest_raw` and
//!   `fetch_manifest_digest` hide what exploder needs from the response:
//!   the `Content-Type`, `Retry-After` on a 429 (Docker Hub's pull limit
//!   answers manifest GETs), the status of a 4xx, and a bound on how much
//!   of a body is buffered.
//!
//! oci-client's errors carry no headers, so a 429 on a blob request is
//! retried on the backoff alone; its 4xx statuses are recovered from the
//! error code in the body (`envelope_status`).
//!
//! The pieces, each below under its own heading: [`RegistryOptions`], the
//! credentials lookup (flags, then Docker's `config.json`), the plain-HTTP
//! decision, the retry policy (`RetryPolicy`, `backon` with
//! `Retry-After`), re-authentication on 401 (`Inner::call`) and the
//! resuming blob reader (`pump` and `ChannelReader`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use base64::Engine as _;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference as OciReference, RegistryOperation};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use tokio::sync::{RwLock, mpsc};
use tracing::{debug, warn};

use super::{BlobReader, FetchError, MAX_MANIFEST_BYTES, ManifestTarget, RawManifest};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::image::media_type;
use crate::reference::Reference;

const USER_AGENT: &str = concat!("exploder/", env!("CARGO_PKG_VERSION"));
const DOCKER_CONTENT_DIGEST: &str = "Docker-Content-Digest";
/// A connection that cannot be made in this time is a network error (retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A response that stalls this long between two reads is a network error:
/// a stalled blob download is then resumed instead of hanging forever.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How many chunks (each up to a few tens of KiB) a blob download may run
/// ahead of its reader.
const CHANNEL_CHUNKS: usize = 16;
/// How much of an error response's body is kept for the message.
const ERROR_BODY_LIMIT: u64 = 4096;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts ("host" or "host:port") reached over plain HTTP besides loopback
    /// ones (--insecure-registry / EXPLODER_INSECURE_REGISTRIES,
    /// comma-separated).
    pub insecure_registries: Vec<String>,
    /// Docker config.json to read `auths` from; None =
    /// EXPLODER_REGISTRY_AUTH_FILE, else ~/.docker/config.json (also honour
    /// DOCKER_CONFIG dir), missing file = anonymous.
    pub auth_file: Option<PathBuf>,
    /// Explicit credentials (flags) win over the file.
    pub username: Option<String>,
    pub password: Option<String>,
    /// A bearer/registry token given directly (flag), used as
    /// `RegistryAuth::Bearer`.
    pub token: Option<String>,
    /// Max attempts for 429/5xx/network errors (default when 0: 5).
    pub max_attempts: u32,
}

impl RegistryOptions {
    /// Options from EXPLODER_INSECURE_REGISTRIES, EXPLODER_REGISTRY_AUTH_FILE
    /// and EXPLODER_REGISTRY_USERNAME/PASSWORD/TOKEN. Empty values count as
    /// unset.
    pub fn from_env() -> Self {
        RegistryOptions {
            insecure_registries: env_var("EXPLODER_INSECURE_REGISTRIES")
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            auth_file: env_var("EXPLODER_REGISTRY_AUTH_FILE").map(PathBuf::from),
            username: env_var("EXPLODER_REGISTRY_USERNAME"),
            password: env_var("EXPLODER_REGISTRY_PASSWORD"),
            token: env_var("EXPLODER_REGISTRY_TOKEN"),
            max_attempts: 0,
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// "a, b,,c" → ["a", "b", "c"].
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------
// Credentials: flags first, then the `auths` of Docker's config.json
// ---------------------------------------------------------------------------

/// The credentials for `registry`: a token flag, else username/password
/// flags, else the matching `auths` entry of the auth file, else anonymous.
fn credentials(registry: &str, opts: &RegistryOptions) -> Result<RegistryAuth, FetchError> {
    if let Some(token) = &opts.token {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    match (&opts.username, &opts.password) {
        (Some(user), Some(password)) => {
            return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
        }
        (None, None) => {}
        _ => {
            return Err(FetchError::Invalid {
                what: "registry credentials".into(),
                message: "a username needs a password and a password needs a username".into(),
            });
        }
    }
    let Some(path) = auth_file_path(opts) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            debug!(path = %path.display(), "no registry auth file: pulling anonymously");
            return Ok(RegistryAuth::Anonymous);
        }
        Err(source) => {
            return Err(FetchError::Io {
                context: format!("reading registry auth file {}", path.display()),
                source,
            });
        }
    };
    let found = lookup_auth(&data, registry).map_err(|message| FetchError::Invalid {
        what: format!("registry auth file {}", path.display()),
        message,
    })?;
    Ok(found.unwrap_or(RegistryAuth::Anonymous))
}

/// The auth file to read: the option, EXPLODER_REGISTRY_AUTH_FILE,
/// $DOCKER_CONFIG/config.json, ~/.docker/config.json.
fn auth_file_path(opts: &RegistryOptions) -> Option<PathBuf> {
    opts.auth_file
        .clone()
        .or_else(|| env_var("EXPLODER_REGISTRY_AUTH_FILE").map(PathBuf::from))
        .or_else(|| env_var("DOCKER_CONFIG").map(|dir| PathBuf::from(dir).join("config.json")))
        .or_else(|| env_var("HOME").map(|home| PathBuf::from(home).join(".docker/config.json")))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    /// base64 of "user:password".
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
    identitytoken: Option<String>,
}

/// Finds the `auths` entry for `registry` in a config.json. Keys are
/// matched as Docker does: with or without a scheme and a path
/// ("https://index.docker.io/v1/" is docker.io); an exact key wins.
fn lookup_auth(config_json: &[u8], registry: &str) -> Result<Option<RegistryAuth>, String> {
    let config: DockerConfig = serde_json::from_slice(config_json).map_err(|e| e.to_string())?;
    let names = auth_key_names(registry);
    let entry = config.auths.get(registry).or_else(|| {
        config
            .auths
            .iter()
            .find(|(key, _)| names.contains(&auth_key_host(key)))
            .map(|(_, entry)| entry)
    });
    match entry {
        Some(entry) => entry_auth(entry).map_err(|e| format!("entry for {registry}: {e}")),
        None => Ok(None),
    }
}

/// The hosts an auth key may name for `registry`: Docker Hub goes by
/// several names.
fn auth_key_names(registry: &str) -> Vec<&str> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
        }
        other => vec![other],
    }
}

/// "https://host:port/v1/" → "host:port" (Docker's `ConvertToHostname`).
fn auth_key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn entry_auth(entry: &AuthEntry) -> Result<Option<RegistryAuth>, String> {
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    if let Some(token) = nonempty(&entry.registrytoken) {
        return Ok(Some(RegistryAuth::Bearer(token)));
    }
    if let Some(auth) = nonempty(&entry.auth) {
        // Padding is optional in what some tools write.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(auth.trim())
            .map_err(|e| format!("\"auth\" is not base64: {e}"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_string())?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or("\"auth\" does not decode to user:password")?;
        return Ok(Some(RegistryAuth::Basic(user.into(), password.into())));
    }
    if let (Some(user), Some(password)) = (nonempty(&entry.username), entry.password.clone()) {
        return Ok(Some(RegistryAuth::Basic(user, password)));
    }
    if entry.identitytoken.is_some() {
        warn!(
            "identity tokens in the auth file (OAuth logins) are not supported: pulling anonymously"
        );
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Plain HTTP or HTTPS
// ---------------------------------------------------------------------------

/// Whether `registry` ("host" or "host:port") is reached over plain HTTP:
/// loopback registries (127.0.0.0/8, localhost, [::1]) always, others when
/// listed. A listed "host" covers every port of it; a listed "host:port"
/// only that port; a scheme or path on a listed entry is ignored.
fn uses_plain_http(registry: &str, insecure: &[String]) -> bool {
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
fn plain_http_hosts(registry: &str, resolved: &str, insecure: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = insecure
        .iter()
        .map(|e| auth_key_host(e.trim()).to_string())
        .collect();
    if uses_plain_http(registry, insecure) && !hosts.iter().any(|h| h == resolved) {
        hosts.push(resolved.to_string());
    }
    hosts
}

// ---------------------------------------------------------------------------
// Retry policy: exponential backoff with jitter, Retry-After honoured
// ---------------------------------------------------------------------------

const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MIN_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A server asking us to wait longer than this is not waited for: the
/// error is returned (it is transient), and the job is better retried
/// later by the queue than a worker held.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// One failed attempt: the error, and how long the server asked us to wait
/// before the next one (`Retry-After`), if it said.
struct Failure {
    error: FetchError,
    retry_after: Option<Duration>,
}

impl From<FetchError> for Failure {
    fn from(error: FetchError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// Transient errors (429, 5xx, network: [`FetchError::is_transient`]) are
/// retried up to `max_attempts` attempts in all, waiting an exponentially
/// growing, jittered delay, or what `Retry-After` asks when that is longer.
/// Other errors return at once.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    max_attempts: u32,
    min_delay: Duration,
}

impl RetryPolicy {
    fn from_options(opts: &RegistryOptions) -> Self {
        RetryPolicy {
            max_attempts: if opts.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                opts.max_attempts
            },
            min_delay: MIN_DELAY,
        }
    }

    /// Delays between attempts; `times` of them at most.
    fn backoff(&self, times: u32) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.min_delay)
            .with_max_delay(MAX_DELAY)
            .with_max_times(times as usize)
    }

    async fn run<T, F, Fut>(&self, location: &str, attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        attempt
            .retry(self.backoff(self.max_attempts.saturating_sub(1)))
            .when(|f: &Failure| f.error.is_transient())
            .adjust(|f: &Failure, backoff| next_delay(f.retry_after, backoff))
            .notify(
                |f: &Failure, delay| warn!(%location, error = %f.error, "retrying in {delay:?}"),
            )
            .await
            .map_err(|f| f.error)
    }
}

/// The wait before the next attempt: the backoff's, or the server's
/// `Retry-After` when longer. `None` gives up: attempts are exhausted
/// (`backoff` is `None`), or the server asked for more than
/// [`MAX_RETRY_AFTER`].
fn next_delay(retry_after: Option<Duration>, backoff: Option<Duration>) -> Option<Duration> {
    let backoff = backoff?;
    match retry_after {
        Some(wait) if wait > MAX_RETRY_AFTER => None,
        Some(wait) => Some(wait.max(backoff)),
        None => Some(backoff),
    }
}

/// `Retry-After` in its delay-seconds form. The HTTP-date form is not
/// parsed: the backoff's delay applies then.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

// ---------------------------------------------------------------------------
// Error mapping
// ---------------------------------------------------------------------------

/// An HTTP error status as a [`FetchError`]; `what` is "manifest <tag>" or
/// "blob <digest>".
fn status_error(status: u16, what: &str, location: &str, message: String) -> FetchError {
    match status {
        401 | 403 => FetchError::Unauthorized {
            location: location.to_string(),
            status,
        },
        404 => FetchError::NotFound {
            what: what.to_string(),
            location: location.to_string(),
        },
        _ => FetchError::Http {
            location: location.to_string(),
            status,
            message,
        },
    }
}

fn network_error(location: &str, e: &(dyn std::error::Error + 'static)) -> FetchError {
    // reqwest's own message is terse ("error sending request"): add the causes.
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    FetchError::Network {
        location: location.to_string(),
        message,
    }
}

/// oci-client keeps the body of a 4xx answer that carries an error envelope,
/// but not its status: take it back from the first error code.
fn envelope_status(envelope: &OciEnvelope) -> u16 {
    match envelope.errors.first().map(|e| &e.code) {
        Some(
            OciErrorCode::BlobUnknown
            | OciErrorCode::ManifestUnknown
            | OciErrorCode::NameUnknown
            | OciErrorCode::NotFound,
        ) => 404,
        Some(OciErrorCode::Unauthorized) => 401,
        Some(OciErrorCode::Denied) => 403,
        Some(OciErrorCode::Toomanyrequests) => 429,
        _ => 400,
    }
}

fn oci_error(e: OciDistributionError, what: &str, location: &str) -> FetchError {
    use OciDistributionError as E;
    match e {
        E::RequestError(e) => network_error(location, &e),
        E::UnauthorizedError { .. } => FetchError::Unauthorized {
            location: location.to_string(),
            status: 401,
        },
        E::AuthenticationFailure(reason) => {
            warn!(%location, %reason, "token exchange refused");
            FetchError::Unauthorized {
                location: location.to_string(),
                status: 401,
            }
        }
        E::ServerError { code, message, .. } => status_error(code, what, location, message),
        E::RegistryError { envelope, .. } => status_error(
            envelope_status(&envelope),
            what,
            location,
            envelope.to_string(),
        ),
        E::IoError(source) => FetchError::Io {
            context: format!("{what} from {location}"),
            source,
        },
        other => FetchError::Invalid {
            what: format!("answer for {what} from {location}"),
            message: other.to_string(),
        },
    }
}

/// A fetch error as an `io::Error` for the blob reader, keeping it as the
/// source and choosing a kind that keeps `is_transient` meaningful.
fn into_io(e: FetchError) -> io::Error {
    let kind = match &e {
        FetchError::NotFound { .. } => io::ErrorKind::NotFound,
        FetchError::Unauthorized { .. } => io::ErrorKind::PermissionDenied,
        FetchError::Invalid { .. } | FetchError::DigestMismatch { .. } => {
            io::ErrorKind::InvalidData
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

// ---------------------------------------------------------------------------
// The fetcher
// ---------------------------------------------------------------------------

/// The registry HTTP API for one repository.
pub struct RegistryFetcher {
    inner: Arc<Inner>,
}

/// What requests send to authenticate, once [`Inner::authenticate`] ran.
#[derive(Clone)]
enum Authorization {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

type BlobStream = BoxStream<'static, Result<Bytes, io::Error>>;

struct Inner {
    /// "registry/repository", for messages.
    location: String,
    /// oci-client's view of the repository. The tag is a placeholder: blob
    /// URLs and token scopes use only the registry and the repository.
    oci_ref: OciReference,
    client: oci_client::Client,
    /// For the manifest requests sent directly.
    http: reqwest::Client,
    /// `{scheme}://{resolved registry}/v2/{repository}`.
    base_url: String,
    credentials: RegistryAuth,
    /// What the direct requests send; `None` until the first authentication.
    authorization: RwLock<Option<Authorization>>,
    retry: RetryPolicy,
}

impl RegistryFetcher {
    /// For one repository (`registry` + `repository` as in Reference, e.g.
    /// "127.0.0.1:5000", "team/app"). "docker.io" is reached at
    /// "index.docker.io", as oci-client's `Reference::resolve_registry` does.
    pub fn new(
        registry: &str,
        repository: &str,
        opts: &RegistryOptions,
    ) -> Result<Self, FetchError> {
        Self::with_retry(registry, repository, opts, RetryPolicy::from_options(opts))
    }

    fn with_retry(
        registry: &str,
        repository: &str,
        opts: &RegistryOptions,
        retry: RetryPolicy,
    ) -> Result<Self, FetchError> {
        let location = format!("{registry}/{repository}");
        let credentials = credentials(registry, opts)?;
        let oci_ref = OciReference::with_tag(registry.into(), repository.into(), "latest".into());
        let resolved = oci_ref.resolve_registry().to_string();
        let scheme = if uses_plain_http(registry, &opts.insecure_registries) {
            "http"
        } else {
            "https"
        };
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http_hosts(
                registry,
                &resolved,
                &opts.insecure_registries,
            )),
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let setup_error = |e: String| FetchError::Invalid {
            what: format!("HTTP client for {location}"),
            message: e,
        };
        // Both clients take the process's provider; none installed is a panic.
        crate::tls::install_provider();
        // Not Client::new: on a bad config it falls back to defaults
        // (https everywhere) and only logs.
        let client =
            oci_client::Client::try_from(config).map_err(|e| setup_error(e.to_string()))?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| setup_error(e.to_string()))?;
        Ok(RegistryFetcher {
            inner: Arc::new(Inner {
                base_url: format!("{scheme}://{resolved}/v2/{repository}"),
                location,
                oci_ref,
                client,
                http,
                credentials,
                authorization: RwLock::new(None),
                retry,
            }),
        })
    }

    /// "registry/repository".
    pub fn location(&self) -> String {
        self.inner.location.clone()
    }

    /// The manifest's bytes exactly as served, with the served media type
    /// and the digest of the bytes (of the target's algorithm when fetched
    /// by digest, sha256 otherwise). A `Docker-Content-Digest` header that
    /// disagrees with the bytes is a [`FetchError::DigestMismatch`]; a body
    /// over [`MAX_MANIFEST_BYTES`] is refused before it is all read.
    pub async fn manifest(&self, target: &ManifestTarget) -> Result<RawManifest, FetchError> {
        let inner = &self.inner;
        inner.call(|| inner.get_manifest(target)).await
    }

    /// The manifest's digest from a HEAD request (which does not count
    /// against Docker Hub's pull limit); falls back to a GET when the
    /// registry sends no `Docker-Content-Digest`.
    pub async fn manifest_digest(&self, target: &ManifestTarget) -> Result<Digest, FetchError> {
        let inner = &self.inner;
        let what = describe(target);
        let header = inner
            .call(|| async {
                let response = inner.send_manifest_request(Method::HEAD, target).await?;
                Ok(header_digest(response.headers()))
            })
            .await?;
        match (header, target) {
            (Some(got), ManifestTarget::Digest(want))
                if got.algorithm() == want.algorithm() && &got != want =>
            {
                Err(FetchError::DigestMismatch {
                    what: format!("{what} in {} (Docker-Content-Digest)", inner.location),
                    expected: want.clone(),
                    actual: got,
                })
            }
            (Some(got), _) => Ok(got),
            (None, _) => Ok(self.manifest(target).await?.digest),
        }
    }

    /// Every tag of the repository, following the registry's pagination
    /// (`n=` per page, `Link: <...>; rel="next"`). Each page is retried
    /// like any request (429 honours `Retry-After`).
    pub async fn list_tags(&self, page_size: usize) -> Result<Vec<String>, FetchError> {
        let inner = &self.inner;
        let mut url = format!("{}/tags/list?n={page_size}", inner.base_url);
        let mut tags = Vec::new();
        // A registry whose Link loops would page forever: stop after as
        // many pages as a sane repository could have.
        for _ in 0..MAX_TAG_PAGES {
            let (page, next) = inner.call(|| inner.get_tags_page(&url)).await?;
            tags.extend(page);
            match next {
                Some(n) => url = n,
                None => return Ok(tags),
            }
        }
        Err(FetchError::Invalid {
            what: format!("tag list of {}", inner.location),
            message: format!("more than {MAX_TAG_PAGES} pages"),
        })
    }

    /// A streaming reader of the blob, to be read on a blocking thread
    /// (`spawn_blocking`). The download runs in a task a few chunks ahead of
    /// the reader; when the connection breaks mid-body it resumes with a
    /// Range request from the current offset (see `pump`). The bytes are
    /// not verified here as a whole (the caller hashes the full stream), but
    /// a download that ends with a digest oci-client found wrong, or that
    /// runs past `size`, fails with `InvalidData`.
    pub async fn blob(&self, digest: &Digest, size: Option<u64>) -> Result<BlobReader, FetchError> {
        let first = self.inner.open_blob(digest, 0).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(pump(self.inner.clone(), digest.clone(), size, first, tx));
        Ok(Box::new(ChannelReader {
            rx,
            chunk: Bytes::new(),
            finished: false,
        }))
    }
}

/// "manifest <tag>" / "manifest <digest>".
/// Called with (registry, HTTP status, `ratelimit-remaining`) for every
/// manifest and tag-list request (the producer's traffic; blobs are the
/// workers'), for metrics. Set once by a daemon that exports them.
pub type Observer = Box<dyn Fn(&str, u16, Option<u64>) + Send + Sync>;

pub static OBSERVER: std::sync::OnceLock<Observer> = std::sync::OnceLock::new();

/// Docker Hub's `ratelimit-remaining: 76;w=21600` → 76.
fn ratelimit_remaining(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("ratelimit-remaining")?.to_str().ok()?;
    v.split(';').next()?.trim().parse().ok()
}

/// One page of tags is small JSON; a registry sending more is broken.
const MAX_TAG_LIST_BYTES: u64 = 16 << 20;
const MAX_TAG_PAGES: usize = 10_000;

/// The URL of `rel="next"` in a `Link` header value.
fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        is_next.then(|| url.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

fn describe(target: &ManifestTarget) -> String {
    match target {
        ManifestTarget::Tag(tag) => format!("manifest {tag}"),
        ManifestTarget::Digest(digest) => format!("manifest {digest}"),
    }
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    let value = headers.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?;
    match value.trim().parse() {
        Ok(digest) => Some(digest),
        Err(e) => {
            debug!(%value, error = %e, "ignoring an unusable Docker-Content-Digest header");
            None
        }
    }
}

fn hash(algorithm: Algorithm, data: &[u8]) -> Digest {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(data);
    hasher.finish()
}

/// Reads a body, stopping once it is over `limit` bytes: what was read, and
/// whether it went over.
async fn read_body(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Ok((body, true));
        }
    }
    Ok((body, false))
}

impl Inner {
    /// Runs one request under the retry policy, authenticated (the first
    /// call authenticates). On a 401 it authenticates again and runs the
    /// request once more: the token may have expired, or oci-client may
    /// have swallowed a failed token exchange. A second 401 (or any 403) is
    /// returned as [`FetchError::Unauthorized`].
    async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        if self.authorization.read().await.is_none() {
            self.authenticate().await?;
        }
        match self.retry.run(&self.location, &mut attempt).await {
            Err(FetchError::Unauthorized { status: 401, .. }) => {
                debug!(location = %self.location, "401: authenticating again");
                self.authenticate().await?;
                self.retry.run(&self.location, &mut attempt).await
            }
            result => result,
        }
    }

    /// oci-client's `auth` for the repository with pull scope: pings
    /// `/v2/`, exchanges the credentials for a bearer token when the
    /// registry asks for one, and caches what blob requests will send.
    async fn authenticate(&self) -> Result<(), FetchError> {
        let token = self
            .retry
            .run(&self.location, || async {
                self.client
                    .auth(&self.oci_ref, &self.credentials, RegistryOperation::Pull)
                    .await
                    .map_err(|e| Failure::from(oci_error(e, "authentication", &self.location)))
            })
            .await?;
        let authorization = match (token, &self.credentials) {
            (Some(token), _) => Authorization::Bearer(token),
            // oci-client answers None both when the registry asked for basic
            // auth and when it asked for nothing: sending the configured
            // credentials is right in the first case and harmless in the other.
            (None, RegistryAuth::Basic(user, password)) => {
                Authorization::Basic(user.clone(), password.clone())
            }
            (None, _) => Authorization::Anonymous,
        };
        *self.authorization.write().await = Some(authorization);
        Ok(())
    }

    /// A manifest GET or HEAD sent directly, accepting every manifest type
    /// exploder reads. A non-2xx answer becomes a [`Failure`] carrying its
    /// `Retry-After`.
    async fn send_manifest_request(
        &self,
        method: Method,
        target: &ManifestTarget,
    ) -> Result<reqwest::Response, Failure> {
        let reference = match target {
            ManifestTarget::Tag(tag) => tag.clone(),
            ManifestTarget::Digest(digest) => digest.to_string(),
        };
        let url = format!("{}/manifests/{reference}", self.base_url);
        let request = self
            .http
            .request(method, &url)
            .header(ACCEPT, media_type::ACCEPTED.join(", "));
        self.send(request, &describe(target)).await
    }

    /// One page of the tag list at `url`; the next page's URL comes from
    /// the `Link: <...>; rel="next"` header, relative to the registry.
    async fn get_tags_page(&self, url: &str) -> Result<(Vec<String>, Option<String>), Failure> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let response = self.send(self.http.get(url), "the tag list").await?;
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .map(|path| match path.strip_prefix('/') {
                Some(_) => Ok(format!("{}{path}", self.origin())),
                // The next page must be on the same registry: the request
                // carries this registry's credentials.
                None if path.starts_with(&format!("{}/", self.origin())) => Ok(path.to_string()),
                None => Err(FetchError::Invalid {
                    what: format!("tag list of {}", self.location),
                    message: format!("next page {path:?} is on another host"),
                }),
            })
            .transpose()?;
        let (body, over) = read_body(response, MAX_TAG_LIST_BYTES)
            .await
            .map_err(|e| Failure::from(network_error(&self.location, &e)))?;
        let invalid = |message: String| FetchError::Invalid {
            what: format!("tag list of {}", self.location),
            message,
        };
        if over {
            return Err(invalid(format!("page larger than {MAX_TAG_LIST_BYTES} bytes")).into());
        }
        let list: TagList =
            serde_json::from_slice(&body).map_err(|e| Failure::from(invalid(e.to_string())))?;
        Ok((list.tags.unwrap_or_default(), next))
    }

    /// `{scheme}://{host}`: where `Link` paths are relative to.
    fn origin(&self) -> &str {
        self.base_url
            .find("/v2/")
            .map_or(&self.base_url, |i| &self.base_url[..i])
    }

    /// Sends a request with the current authorization. A non-2xx answer
    /// becomes a [`Failure`] carrying its `Retry-After`.
    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let authorization = self.authorization.read().await.clone();
        request = match authorization {
            Some(Authorization::Bearer(token)) => request.bearer_auth(token),
            Some(Authorization::Basic(user, password)) => request.basic_auth(user, Some(password)),
            Some(Authorization::Anonymous) | None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| Failure::from(network_error(&self.location, &e)))?;
        let status = response.status();
        if let Some(observe) = OBSERVER.get() {
            let registry = self.location.split('/').next().unwrap_or_default();
            observe(
                registry,
                status.as_u16(),
                ratelimit_remaining(response.headers()),
            );
        }
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let message = match read_body(response, ERROR_BODY_LIMIT).await {
            Ok((body, _)) => {
                String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_LIMIT as usize)])
                    .trim()
                    .to_string()
            }
            Err(_) => String::new(),
        };
        Err(Failure {
            error: status_error(status.as_u16(), what, &self.location, message),
            retry_after,
        })
    }

    /// One manifest GET: see [`RegistryFetcher::manifest`].
    async fn get_manifest(&self, target: &ManifestTarget) -> Result<RawManifest, Failure> {
        let what = || format!("{} in {}", describe(target), self.location);
        let too_large = || FetchError::Invalid {
            what: what(),
            message: format!("larger than the {MAX_MANIFEST_BYTES} byte limit for manifests"),
        };
        let response = self.send_manifest_request(Method::GET, target).await?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(too_large().into());
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
            .filter(|v| !v.is_empty());
        let served_digest = header_digest(response.headers());
        let (bytes, over) = read_body(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| Failure::from(network_error(&self.location, &e)))?;
        if over {
            return Err(too_large().into());
        }
        if let Some(expected) = served_digest {
            let actual = hash(expected.algorithm(), &bytes);
            if actual != expected {
                return Err(FetchError::DigestMismatch {
                    what: format!("{} (Docker-Content-Digest)", what()),
                    expected,
                    actual,
                }
                .into());
            }
        }
        let algorithm = match target {
            ManifestTarget::Digest(want) => want.algorithm(),
            ManifestTarget::Tag(_) => Algorithm::Sha256,
        };
        Ok(RawManifest {
            digest: hash(algorithm, &bytes),
            bytes,
            media_type,
        })
    }

    /// Opens a blob download at `offset` through oci-client (a Range request
    /// past 0). Returns the byte stream and how many of its leading bytes to
    /// drop: a server that ignores Range sends the whole blob again.
    async fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<(BlobStream, u64), FetchError> {
        let what = format!("blob {digest}");
        let digest = digest.to_string();
        self.call(|| async {
            let opened = if offset == 0 {
                // Full download: oci-client also verifies the digest at EOF.
                self.client
                    .pull_blob_stream(&self.oci_ref, digest.as_str())
                    .await
                    .map(|s| (s.stream, 0))
            } else {
                self.client
                    .pull_blob_stream_partial(&self.oci_ref, digest.as_str(), offset, None)
                    .await
                    .map(|response| match response {
                        BlobResponse::Partial(s) => (s.stream, 0),
                        BlobResponse::Full(s) => (s.stream, offset),
                    })
            };
            opened.map_err(|e| Failure::from(oci_error(e, &what, &self.location)))
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// The resuming blob reader: an async pump feeding a blocking Read
// ---------------------------------------------------------------------------

/// What the pump sends the reader.
enum Piece {
    Data(Bytes),
    End,
    Failed(io::Error),
}

/// Feeds a blob's bytes to the reader through `tx`. When the connection
/// breaks mid-body (an error, or an early end when `size` is known), it
/// reopens the blob with a Range request from the number of bytes already
/// delivered and goes on; the reader sees one unbroken stream from byte 0,
/// which its caller hashes whole. Up to `max_attempts` resumes in a row
/// without progress are made, with the policy's backoff between them; each
/// reopen is itself retried and re-authenticated like any request. Ends
/// after sending `End` or `Failed`, or as soon as the reader is dropped.
async fn pump(
    inner: Arc<Inner>,
    digest: Digest,
    size: Option<u64>,
    first: (BlobStream, u64),
    tx: mpsc::Sender<Piece>,
) {
    let (mut stream, mut skip) = first;
    let mut offset: u64 = 0;
    let mut delays = inner.retry.backoff(inner.retry.max_attempts).build();
    let fail = |e: io::Error| async { tx.send(Piece::Failed(e)).await.ok() };
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = stream.next() => next,
        };
        let broken = match next {
            Some(Ok(mut chunk)) => {
                // Bytes re-sent by a server that ignored the Range header.
                let dropped = skip.min(chunk.len() as u64);
                chunk.advance(dropped as usize);
                skip -= dropped;
                if chunk.is_empty() {
                    continue;
                }
                offset += chunk.len() as u64;
                if let Some(size) = size.filter(|&size| offset > size) {
                    let message = format!(
                        "blob {digest} from {} is longer than its {size} bytes",
                        inner.location
                    );
                    fail(io::Error::new(io::ErrorKind::InvalidData, message)).await;
                    return;
                }
                if tx.send(Piece::Data(chunk)).await.is_err() {
                    return;
                }
                // Progress: the next break gets the full set of resumes.
                delays = inner.retry.backoff(inner.retry.max_attempts).build();
                continue;
            }
            // oci-client's digest check at the end of a full download. The
            // reader's caller hashes every byte itself (from byte 0, across
            // resumes) and reports a mismatch with the digests in hand, so
            // end the stream here and let that check speak.
            Some(Err(e))
                if e.get_ref()
                    .is_some_and(|e| e.is::<oci_client::errors::DigestError>()) =>
            {
                debug!(location = %inner.location, %digest, "oci-client: {e}");
                let _ = tx.send(Piece::End).await;
                return;
            }
            Some(Err(e)) => e.to_string(),
            None if skip == 0 && size.is_none_or(|size| offset >= size) => {
                let _ = tx.send(Piece::End).await;
                return;
            }
            None => "the connection closed early".to_string(),
        };
        let Some(delay) = delays.next() else {
            let message =
                format!("download of blob {digest} kept breaking at byte {offset}: {broken}");
            fail(into_io(FetchError::Network {
                location: inner.location.clone(),
                message,
            }))
            .await;
            return;
        };
        warn!(location = %inner.location, %digest, offset, error = %broken, "blob download broke; resuming in {delay:?}");
        tokio::time::sleep(delay).await;
        match inner.open_blob(&digest, offset).await {
            Ok((resumed, resent)) => (stream, skip) = (resumed, resent),
            Err(e) => {
                fail(into_io(e)).await;
                return;
            }
        }
    }
}

/// The blocking side of [`pump`]: a `Read` over the chunks it sends. Must
/// be read outside the runtime's async worker threads (`spawn_blocking`),
/// where `blocking_recv` may wait.
struct ChannelReader {
    rx: mpsc::Receiver<Piece>,
    chunk: Bytes,
    finished: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            if self.finished {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(chunk)) => self.chunk = chunk,
                Some(Piece::End) => self.finished = true,
                Some(Piece::Failed(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the blob download stopped before the end",
                    ));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Option<RegistryAuth> {
        Some(RegistryAuth::Basic(user.into(), password.into()))
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_lookup_matches_docker_key_forms() {
        let config = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": { "auth": b64("hubuser:hubpass") },
                "127.0.0.1:5000": { "username": "local", "password": "pw:with:colons" },
                "http://reg.example:8443/some/path": { "auth": b64("pathuser:pathpass").trim_end_matches('=') },
                "ghcr.io": { "registrytoken": "tok" },
                "quay.io": { "identitytoken": "oauth-refresh" },
                "exact.example": { "auth": b64("exact:1") },
                "https://exact.example/v2/": { "auth": b64("normalized:2") }
            },
            "credsStore": "desktop"
        })
        .to_string();
        let find = |registry: &str| lookup_auth(config.as_bytes(), registry).unwrap();
        assert_eq!(find("docker.io"), basic("hubuser", "hubpass"));
        assert_eq!(find("index.docker.io"), basic("hubuser", "hubpass"));
        assert_eq!(find("127.0.0.1:5000"), basic("local", "pw:with:colons"));
        assert_eq!(find("reg.example:8443"), basic("pathuser", "pathpass"));
        assert_eq!(find("reg.example"), None, "the port is part of the key");
        assert_eq!(find("127.0.0.1:5001"), None);
        assert_eq!(find("ghcr.io"), Some(RegistryAuth::Bearer("tok".into())));
        assert_eq!(find("quay.io"), None, "identity tokens are not usable");
        assert_eq!(
            find("exact.example"),
            basic("exact", "1"),
            "an exact key wins"
        );
        assert_eq!(find("elsewhere.example"), None);
        assert_eq!(lookup_auth(b"{}", "docker.io").unwrap(), None);
    }

    #[test]
    fn auth_lookup_reports_broken_entries() {
        let bad = serde_json::json!({ "auths": { "r.example": { "auth": b64("no-colon") } } })
            .to_string();
        assert!(
            lookup_auth(bad.as_bytes(), "r.example")
                .unwrap_err()
                .contains("user:password")
        );
        let not_b64 = r#"{"auths":{"r.example":{"auth":"%%%"}}}"#;
        assert!(lookup_auth(not_b64.as_bytes(), "r.example").is_err());
        assert!(lookup_auth(b"not json", "r.example").is_err());
    }

    #[test]
    fn flags_win_over_the_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            serde_json::json!({ "auths": { "r.example": { "auth": b64("file:pw") } } }).to_string(),
        )
        .unwrap();
        let opts =
            |username: Option<&str>, password: Option<&str>, token: Option<&str>| RegistryOptions {
                auth_file: Some(file.clone()),
                username: username.map(String::from),
                password: password.map(String::from),
                token: token.map(String::from),
                ..RegistryOptions::default()
            };
        assert_eq!(
            credentials("r.example", &opts(None, None, None)).ok(),
            basic("file", "pw")
        );
        assert_eq!(
            credentials("r.example", &opts(Some("u"), Some("p"), None)).ok(),
            basic("u", "p")
        );
        assert_eq!(
            credentials("r.example", &opts(Some("u"), Some("p"), Some("t"))).ok(),
            Some(RegistryAuth::Bearer("t".into()))
        );
        assert!(credentials("r.example", &opts(Some("u"), None, None)).is_err());
        assert_eq!(
            credentials("other.example", &opts(None, None, None)).ok(),
            Some(RegistryAuth::Anonymous)
        );
        let missing = RegistryOptions {
            auth_file: Some(dir.path().join("absent.json")),
            ..RegistryOptions::default()
        };
        assert_eq!(
            credentials("r.example", &missing).ok(),
            Some(RegistryAuth::Anonymous)
        );
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
        let listed = split_list(" reg.local:5000, other.local ,,http://third.local:8080/ ");
        assert_eq!(
            listed,
            ["reg.local:5000", "other.local", "http://third.local:8080/"]
        );
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

    #[test]
    fn the_remaining_pulls_come_from_docker_hubs_header() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        assert_eq!(ratelimit_remaining(&h), Some(76));
        assert_eq!(ratelimit_remaining(&HeaderMap::new()), None);
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        assert_eq!(
            next_link(r#"</v2/team/app/tags/list?last=b&n=2>; rel="next""#),
            Some("/v2/team/app/tags/list?last=b&n=2")
        );
        assert_eq!(next_link(r#"<https://x/y>; rel="prev""#), None);
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        for unusable in ["", "-1", "1.5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(unusable), None, "{unusable:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_stretches_the_backoff_within_limits() {
        let s = Duration::from_secs;
        assert_eq!(next_delay(None, Some(s(1))), Some(s(1)));
        assert_eq!(next_delay(Some(s(5)), Some(s(1))), Some(s(5)));
        assert_eq!(next_delay(Some(s(0)), Some(s(1))), Some(s(1)));
        assert_eq!(next_delay(Some(s(5)), None), None, "attempts exhausted");
        assert_eq!(
            next_delay(Some(s(3600)), Some(s(1))),
            None,
            "too long to hold a worker"
        );
    }

    #[test]
    fn error_statuses_map_to_fetch_errors() {
        assert!(matches!(
            status_error(404, "blob x", "r/a", String::new()),
            FetchError::NotFound { .. }
        ));
        assert!(matches!(
            status_error(403, "blob x", "r/a", String::new()),
            FetchError::Unauthorized { status: 403, .. }
        ));
        assert!(status_error(429, "m", "r/a", String::new()).is_transient());
        assert!(status_error(502, "m", "r/a", String::new()).is_transient());
        assert!(!status_error(400, "m", "r/a", String::new()).is_transient());
        let envelope = |code: &str| -> OciEnvelope {
            serde_json::from_str(&format!(
                r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
            ))
            .unwrap()
        };
        assert_eq!(envelope_status(&envelope("BLOB_UNKNOWN")), 404);
        assert_eq!(envelope_status(&envelope("NAME_UNKNOWN")), 404);
        assert_eq!(envelope_status(&envelope("DENIED")), 403);
        assert_eq!(envelope_status(&envelope("TOOMANYREQUESTS")), 429);
        assert_eq!(envelope_status(&envelope("SOMETHING_ELSE")), 400);
    }

    /// Options that do not read the developer's ~/.docker/config.json.
    fn no_auth_file() -> RegistryOptions {
        RegistryOptions {
            auth_file: Some(PathBuf::from("/nonexistent/exploder-test/config.json")),
            ..RegistryOptions::default()
        }
    }

    // -----------------------------------------------------------------------
    // Against a real registry: Debian's docker-registry (distribution 2.8)
    // -----------------------------------------------------------------------

    use std::io::Write as _;
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
    /// From oci-client's tests: bcrypt of "testpassword".
    const HTPASSWD: &str = "testuser:$2y$05$8/q2bfRcX74EuxGf0qOcSuhWDQJXrgWiy6Fi73/JM2tKC66qSrLve";
    const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// A docker-registry on a free loopback port, killed on drop.
    struct TestRegistry {
        child: std::process::Child,
        addr: SocketAddr,
        dir: tempfile::TempDir,
    }

    impl Drop for TestRegistry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts a real registry; scripts/test installs it, so a missing
    /// binary is a failure, never a silent skip.
    async fn start_registry(with_htpasswd: bool) -> Option<TestRegistry> {
        assert!(
            std::path::Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is not installed: run ./scripts/test (it apt-get installs docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if with_htpasswd {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = std::process::Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = TestRegistry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        crate::tls::install_provider();
        while reqwest::get(format!("http://{addr}/v2/")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(registry)
    }

    /// Pushed content, as the tests expect to read it back.
    struct Pushed {
        manifest: Vec<u8>,
        manifest_digest: Digest,
        layer: Vec<u8>,
        layer_digest: Digest,
    }

    /// Pushes a config blob, a layer of `layer_size` pseudo-random bytes and
    /// an OCI manifest tagged `tag`, with plain HTTP.
    async fn push_image(
        addr: SocketAddr,
        name: &str,
        tag: &str,
        layer_size: usize,
        auth: Option<(&str, &str)>,
    ) -> Pushed {
        let http = reqwest::Client::new();
        let with_auth = |r: reqwest::RequestBuilder| match auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        };
        let push_blob = async |data: &[u8]| -> Digest {
            let digest = Digest::sha256_of(data);
            let started = with_auth(http.post(format!("http://{addr}/v2/{name}/blobs/uploads/")))
                .send()
                .await
                .unwrap();
            assert_eq!(started.status(), 202, "starting an upload");
            let location = started.headers()["location"].to_str().unwrap();
            let mut url = reqwest::Url::parse(location).unwrap_or_else(|_| {
                reqwest::Url::parse(&format!("http://{addr}{location}")).unwrap()
            });
            url.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            let done = with_auth(http.put(url))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(data.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(done.status(), 201, "finishing an upload");
            digest
        };
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let layer: Vec<u8> = (0..layer_size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = push_blob(config).await;
        let layer_digest = push_blob(&layer).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": { "mediaType": media_type::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len() },
            "layers": [{ "mediaType": LAYER_TYPE, "digest": layer_digest.to_string(), "size": layer.len() }]
        }))
        .unwrap();
        let put = with_auth(http.put(format!("http://{addr}/v2/{name}/manifests/{tag}")))
            .header(CONTENT_TYPE, media_type::OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            put.status(),
            201,
            "pushing the manifest: {}",
            put.text().await.unwrap_or_default()
        );
        Pushed {
            manifest_digest: Digest::sha256_of(&manifest),
            manifest,
            layer,
            layer_digest,
        }
    }

    /// Reads a blob the way the ingest does: on a blocking thread.
    async fn read_blob(
        f: &RegistryFetcher,
        digest: &Digest,
        size: Option<u64>,
    ) -> io::Result<Vec<u8>> {
        let mut reader = f.blob(digest, size).await.map_err(into_io)?;
        tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            reader.read_to_end(&mut data).map(|_| data)
        })
        .await
        .unwrap()
    }

    fn fast_fetcher(addr: SocketAddr, repository: &str, opts: &RegistryOptions) -> RegistryFetcher {
        let retry = RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_millis(10),
        };
        RegistryFetcher::with_retry(&addr.to_string(), repository, opts, retry).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_from_a_real_registry() {
        let Some(registry) = start_registry(false).await else {
            return;
        };
        let pushed = push_image(registry.addr, "team/app", "v1", 1 << 20, None).await;
        let f = fast_fetcher(registry.addr, "team/app", &no_auth_file());
        assert_eq!(f.location(), format!("{}/team/app", registry.addr));

        let by_tag = f.manifest(&ManifestTarget::Tag("v1".into())).await.unwrap();
        assert_eq!(by_tag.bytes, pushed.manifest);
        assert_eq!(by_tag.digest, pushed.manifest_digest);
        assert_eq!(by_tag.media_type.as_deref(), Some(media_type::OCI_MANIFEST));
        let target = ManifestTarget::Digest(pushed.manifest_digest.clone());
        assert_eq!(f.manifest(&target).await.unwrap().bytes, pushed.manifest);

        let head = f
            .manifest_digest(&ManifestTarget::Tag("v1".into()))
            .await
            .unwrap();
        assert_eq!(head, pushed.manifest_digest);
        assert_eq!(
            f.manifest_digest(&target).await.unwrap(),
            pushed.manifest_digest
        );

        let size = Some(pushed.layer.len() as u64);
        let layer = read_blob(&f, &pushed.layer_digest, size).await.unwrap();
        assert!(layer == pushed.layer, "blob bytes differ");
        let layer = read_blob(&f, &pushed.layer_digest, None).await.unwrap();
        assert!(layer == pushed.layer, "blob bytes differ without a size");
        let short = read_blob(&f, &pushed.layer_digest, Some(1000))
            .await
            .unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::InvalidData, "{short}");

        // Bytes that do not match the digest (a corrupted registry store):
        // the reader hands them over as served, once, without resuming; the
        // caller's own hash (the ingest's) reports the mismatch with both
        // digests.
        let hex = pushed.layer_digest.hex();
        let stored = registry.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        let mut corrupted = pushed.layer.clone();
        corrupted[12345] ^= 1;
        std::fs::write(&stored, &corrupted).unwrap();
        let served = read_blob(&f, &pushed.layer_digest, size).await.unwrap();
        assert_eq!(served, corrupted);
        assert_ne!(Digest::sha256_of(&served), pushed.layer_digest);

        match f.manifest(&ManifestTarget::Tag("nope".into())).await {
            Err(e @ FetchError::NotFound { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("manifest nope") && message.contains("team/app"),
                    "{message}"
                );
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        let missing = Digest::sha256_of(b"not pushed");
        match f.blob(&missing, None).await {
            Err(e @ FetchError::NotFound { .. }) => {
                assert!(e.to_string().contains(&format!("blob {missing}")), "{e}");
            }
            Err(e) => panic!("expected NotFound, got {e:?}"),
            Ok(_) => panic!("expected NotFound, got a reader"),
        }
        let other_repo = fast_fetcher(registry.addr, "no/such-repo", &no_auth_file());
        assert!(matches!(
            other_repo.manifest(&ManifestTarget::Tag("v1".into())).await,
            Err(FetchError::NotFound { .. })
        ));
        assert!(matches!(
            other_repo
                .manifest_digest(&ManifestTarget::Tag("v1".into()))
                .await,
            Err(FetchError::NotFound { .. })
        ));
        drop(registry);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn basic_auth_from_flags_or_auth_file() {
        let Some(registry) = start_registry(true).await else {
            return;
        };
        let pushed = push_image(
            registry.addr,
            "private/app",
            "v1",
            4096,
            Some(("testuser", "testpassword")),
        )
        .await;
        let tag = ManifestTarget::Tag("v1".into());

        let anonymous = fast_fetcher(registry.addr, "private/app", &no_auth_file());
        match anonymous.manifest(&tag).await {
            Err(FetchError::Unauthorized {
                status: 401,
                location,
            }) => assert!(location.ends_with("/private/app")),
            other => panic!("expected Unauthorized, got {other:?}"),
        }
        assert!(matches!(
            anonymous.blob(&pushed.layer_digest, None).await.err(),
            Some(FetchError::Unauthorized { .. })
        ));

        let wrong = RegistryOptions {
            username: Some("testuser".into()),
            password: Some("wrong".into()),
            ..no_auth_file()
        };
        let wrong = fast_fetcher(registry.addr, "private/app", &wrong);
        assert!(matches!(
            wrong.manifest(&tag).await,
            Err(FetchError::Unauthorized { .. })
        ));

        let flags = RegistryOptions {
            username: Some("testuser".into()),
            password: Some("testpassword".into()),
            ..no_auth_file()
        };
        let f = fast_fetcher(registry.addr, "private/app", &flags);
        assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
        assert_eq!(
            f.manifest_digest(&tag).await.unwrap(),
            pushed.manifest_digest
        );
        assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let key = format!("http://{}/v2/", registry.addr);
        let config =
            serde_json::json!({ "auths": { key: { "auth": b64("testuser:testpassword") } } });
        std::fs::write(&file, config.to_string()).unwrap();
        let from_file = RegistryOptions {
            auth_file: Some(file),
            ..RegistryOptions::default()
        };
        let f = fast_fetcher(registry.addr, "private/app", &from_file);
        assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
        drop(registry);
    }

    // -----------------------------------------------------------------------
    // A fault-injecting proxy in front of the registry
    // -----------------------------------------------------------------------

    /// What the proxy does to the next request whose request line starts
    /// with the given prefix (each fault is used once).
    enum Fault {
        /// Answer it itself (status line, extra headers, body), then close.
        /// A Content-Length is added unless the headers frame the body.
        Respond(&'static str, Vec<String>, Vec<u8>),
        /// Forward it, but cut the connection after this many bytes of the
        /// answer (headers included).
        CutAfter(usize),
    }

    /// A plain TCP proxy on a loopback port, one thread per direction and
    /// connection. HTTP/1.1 without pipelining: the requests it sees are
    /// GETs and HEADs without bodies, each sent after the previous answer.
    struct Proxy {
        addr: SocketAddr,
        faults: Arc<Mutex<Vec<(String, Fault)>>>,
        /// Request heads seen, in order.
        seen: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
    }

    impl Proxy {
        fn start(upstream: SocketAddr) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let proxy = Proxy {
                addr: listener.local_addr().unwrap(),
                faults: Arc::default(),
                seen: Arc::default(),
                stop: Arc::default(),
            };
            let (faults, seen, stop) =
                (proxy.faults.clone(), proxy.seen.clone(), proxy.stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (faults, seen) = (faults.clone(), seen.clone());
                    std::thread::spawn(move || Proxy::serve(client, upstream, &faults, &seen));
                }
            });
            proxy
        }

        fn inject(&self, request_prefix: &str, fault: Fault) {
            self.faults
                .lock()
                .unwrap()
                .push((request_prefix.to_string(), fault));
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }

        fn serve(
            mut client: TcpStream,
            upstream: SocketAddr,
            faults: &Mutex<Vec<(String, Fault)>>,
            seen: &Mutex<Vec<String>>,
        ) {
            let Ok(mut upstream) = TcpStream::connect(upstream) else {
                return;
            };
            // How many more answer bytes to let through (None: all).
            let budget: Arc<Mutex<Option<usize>>> = Arc::default();
            let (mut from_upstream, mut to_client) =
                (upstream.try_clone().unwrap(), client.try_clone().unwrap());
            let answer_budget = budget.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match from_upstream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut budget = answer_budget.lock().unwrap();
                    let allowed = budget.map_or(n, |left| left.min(n));
                    if to_client.write_all(&buf[..allowed]).is_err() {
                        break;
                    }
                    if let Some(left) = budget.as_mut() {
                        *left -= allowed;
                        if allowed < n {
                            break;
                        }
                    }
                }
                let _ = to_client.shutdown(Shutdown::Both);
                let _ = from_upstream.shutdown(Shutdown::Both);
            });
            let mut pending = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = pending.drain(..end + 4).collect();
                    let text = String::from_utf8_lossy(&head).to_string();
                    seen.lock().unwrap().push(text.clone());
                    let fault = {
                        let mut faults = faults.lock().unwrap();
                        let found = faults
                            .iter()
                            .position(|(prefix, _)| text.starts_with(prefix.as_str()));
                        found.map(|i| faults.remove(i).1)
                    };
                    match fault {
                        Some(Fault::Respond(status, headers, body)) => {
                            let mut answer = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
                            for h in headers {
                                answer.push_str(&h);
                                answer.push_str("\r\n");
                            }
                            let framed = answer.to_ascii_lowercase();
                            let framed = framed.contains("content-length:")
                                || framed.contains("transfer-encoding:");
                            if !framed && !text.starts_with("HEAD ") {
                                answer.push_str(&format!("Content-Length: {}\r\n", body.len()));
                            }
                            answer.push_str("\r\n");
                            let _ = client.write_all(answer.as_bytes());
                            let _ = client.write_all(&body);
                            let _ = client.shutdown(Shutdown::Both);
                            let _ = upstream.shutdown(Shutdown::Both);
                            return;
                        }
                        Some(Fault::CutAfter(bytes)) => *budget.lock().unwrap() = Some(bytes),
                        None => {}
                    }
                    if upstream.write_all(&head).is_err() {
                        return;
                    }
                }
            }
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumes_retries_and_reauthenticates() {
        let Some(registry) = start_registry(false).await else {
            return;
        };
        let pushed = push_image(registry.addr, "team/app", "v1", 1 << 20, None).await;
        let proxy = Proxy::start(registry.addr);
        let f = fast_fetcher(proxy.addr, "team/app", &no_auth_file());
        let tag = ManifestTarget::Tag("v1".into());
        let blobs = "GET /v2/team/app/blobs/";
        let manifests = "GET /v2/team/app/manifests/";

        // A download cut mid-body resumes with a Range request and reads
        // the same bytes.
        proxy.inject(blobs, Fault::CutAfter(100_000));
        let layer = read_blob(&f, &pushed.layer_digest, Some(pushed.layer.len() as u64))
            .await
            .unwrap();
        assert!(layer == pushed.layer, "resumed blob bytes differ");
        let ranges: Vec<String> = proxy
            .seen()
            .into_iter()
            .filter(|h| h.to_ascii_lowercase().contains("range: bytes="))
            .collect();
        assert_eq!(ranges.len(), 1, "one resume expected: {ranges:?}");
        assert!(
            !ranges[0].contains("range: bytes=0-"),
            "resumed from byte 0: {}",
            ranges[0]
        );

        // Cut again while resuming, inside the answer's headers: the reopen
        // is retried and the reader still sees one unbroken stream.
        proxy.inject(blobs, Fault::CutAfter(50_000));
        proxy.inject(blobs, Fault::CutAfter(300));
        assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);

        // 5xx when opening a blob is retried.
        proxy.inject(
            blobs,
            Fault::Respond("503 Service Unavailable", vec![], vec![]),
        );
        assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);

        // 429 with Retry-After is waited out.
        proxy.inject(
            manifests,
            Fault::Respond(
                "429 Too Many Requests",
                vec!["Retry-After: 1".into()],
                vec![],
            ),
        );
        let started = Instant::now();
        assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After not honoured"
        );

        // A Retry-After too long to wait for returns the 429 (transient).
        proxy.inject(
            manifests,
            Fault::Respond(
                "429 Too Many Requests",
                vec!["Retry-After: 3600".into()],
                vec![],
            ),
        );
        let err = f.manifest(&tag).await.unwrap_err();
        assert!(
            matches!(err, FetchError::Http { status: 429, .. }) && err.is_transient(),
            "{err:?}"
        );

        // Attempts run out on a registry that keeps failing.
        for _ in 0..3 {
            proxy.inject(
                "HEAD /v2/team/app/manifests/",
                Fault::Respond("502 Bad Gateway", vec![], vec![]),
            );
        }
        assert!(matches!(
            f.manifest_digest(&tag).await,
            Err(FetchError::Http { status: 502, .. })
        ));

        // One 401 makes the fetcher authenticate again (a new /v2/ ping)
        // and retry; two give Unauthorized.
        let pings = |p: &Proxy| {
            p.seen()
                .iter()
                .filter(|h| h.starts_with("GET /v2/ "))
                .count()
        };
        let before = pings(&proxy);
        proxy.inject(
            manifests,
            Fault::Respond("401 Unauthorized", vec![], vec![]),
        );
        assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
        assert_eq!(pings(&proxy), before + 1, "no re-authentication");
        proxy.inject(blobs, Fault::Respond("401 Unauthorized", vec![], vec![]));
        assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);
        proxy.inject(
            manifests,
            Fault::Respond("401 Unauthorized", vec![], vec![]),
        );
        proxy.inject(manifests, Fault::Respond("403 Forbidden", vec![], vec![]));
        assert!(matches!(
            f.manifest(&tag).await,
            Err(FetchError::Unauthorized { status: 403, .. })
        ));

        // A Docker-Content-Digest that disagrees with the body.
        let wrong = Digest::sha256_of(b"something else");
        proxy.inject(
            manifests,
            Fault::Respond(
                "200 OK",
                vec![format!("Docker-Content-Digest: {wrong}")],
                b"{}".to_vec(),
            ),
        );
        assert!(matches!(
            f.manifest(&tag).await,
            Err(FetchError::DigestMismatch { .. })
        ));

        // An oversized manifest is refused from its Content-Length, and
        // without one, once over the limit.
        proxy.inject(
            manifests,
            Fault::Respond("200 OK", vec!["Content-Length: 99999999".into()], vec![]),
        );
        assert!(matches!(
            f.manifest(&tag).await,
            Err(FetchError::Invalid { .. })
        ));
        proxy.inject(
            manifests,
            Fault::Respond(
                "200 OK",
                vec!["Transfer-Encoding: chunked".into()],
                chunked(&vec![b' '; MAX_MANIFEST_BYTES as usize + 10]),
            ),
        );
        let err = f.manifest(&tag).await.unwrap_err();
        assert!(err.to_string().contains("limit"), "{err:?}");

        assert!(proxy.faults.lock().unwrap().is_empty(), "unused faults");
        drop(proxy);
        drop(registry);
    }

    /// `data` as a chunked HTTP body: a body with no Content-Length.
    fn chunked(data: &[u8]) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        out
    }
}
