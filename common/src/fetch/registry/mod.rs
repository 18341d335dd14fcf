//! The distribution HTTP API, through `oci-client`.
//!
//! One [`RegistryFetcher`] serves one repository of one registry; its
//! connections belong to the registry's shared client ([`client`]). What goes
//! through what:
//!
//! - authentication (the `/v2/` ping, the bearer-token exchange, basic
//!   credentials) is exploder's own, with `reqwest` (see `token` for why);
//! - blob downloads (`pull_blob_stream`, and `pull_blob_stream_partial` to
//!   resume) go through `oci_client::Client`, handed the token;
//! - manifest GETs and HEADs and the tag list are sent with `reqwest`
//!   directly (see [`manifest`] for why).
//!
//! oci-client's errors carry no headers, so a 429 on a blob request is
//! retried on the backoff alone; its 4xx statuses are recovered from the
//! error code in the body (see `error`).
//!
//! This file is the fetcher's public face; each mechanism has its module:
//!
//! - [`options`]: [`RegistryOptions`] and the plain-HTTP decision;
//! - [`client`]: the HTTP clients, one per registry in the process, shared
//!   by its fetchers;
//! - `auth`: credentials (flags, then auth files and credential helpers),
//!   authentication, renewing tokens and the re-authentication after a 401;
//! - `token`: Docker token authentication (challenges, the exchange at the
//!   realm, identity tokens);
//! - [`retry`]: the retry policy ([`RetryPolicy`]: `backon`, `Retry-After`);
//! - `error`: registry answers as [`FetchError`]s;
//! - [`manifest`]: the manifest and tag-list requests sent directly;
//! - `resume`: the blob reader that resumes a broken download.

mod auth;
pub mod client;
mod error;
pub mod manifest;
pub mod options;
mod resume;
pub mod retry;
mod token;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use oci_client::Reference as OciReference;
use reqwest::Method;
use tokio::sync::{Mutex, RwLock};

use super::{BlobReader, FetchError, MAX_MANIFEST_BYTES, RawManifest};
use crate::digest::Digest;
use crate::reference::ManifestTarget;
use auth::{AuthState, Identity, credentials};
use client::{CLIENTS, ClientKey, RegistryClient};
use manifest::{MAX_TAG_PAGES, describe, header_digest};
pub use manifest::{OBSERVER, Observer};
pub use options::RegistryOptions;
use options::uses_plain_http;
pub use retry::RetryPolicy;

const USER_AGENT: &str = concat!("exploder/", env!("CARGO_PKG_VERSION"));
/// A connection that cannot be made in this time (or in the registry
/// timeout, if shorter) is a network error (retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadlines of one registry's requests, from its timeout `t` (see
/// [`RegistryOptions::timeout`]).
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    /// Connecting.
    connect: Duration,
    /// Between two reads of an answer: a stalled blob download is then
    /// resumed instead of hanging.
    read: Duration,
    /// A whole request other than a blob download (a manifest, a tag list
    /// page, a token): a registry that trickles its answer byte by byte
    /// is not waited for without end.
    request: Duration,
    /// A blob download without a single byte, resumes included.
    stalled: Duration,
}

impl Deadlines {
    fn of(timeout: Option<Duration>) -> Deadlines {
        let t = timeout
            .unwrap_or(options::DEFAULT_TIMEOUT)
            .max(Duration::from_secs(1));
        Deadlines {
            connect: t.min(CONNECT_TIMEOUT),
            read: t,
            request: t * 2,
            stalled: t * 3,
        }
    }
}

/// The floor under a blob download's rate (see
/// [`RegistryOptions::min_transfer_rate`]).
#[derive(Clone, Copy, Debug)]
struct RateFloor {
    /// Bytes a second, averaged over `window`.
    bytes_per_sec: u64,
    window: Duration,
}

impl RateFloor {
    fn of(opts: &RegistryOptions) -> Option<RateFloor> {
        let bytes_per_sec = opts
            .min_transfer_rate
            .unwrap_or(options::DEFAULT_MIN_TRANSFER_RATE);
        let window = opts
            .transfer_rate_window
            .unwrap_or(options::DEFAULT_TRANSFER_RATE_WINDOW)
            .max(Duration::from_secs(1));
        (bytes_per_sec > 0).then_some(RateFloor {
            bytes_per_sec,
            window,
        })
    }

    /// The fewest bytes a window must bring.
    fn bytes_per_window(&self) -> u64 {
        (self.bytes_per_sec as f64 * self.window.as_secs_f64()) as u64
    }
}

/// The registry HTTP API for one repository.
pub struct RegistryFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    /// "registry/repository", for messages.
    location: String,
    /// oci-client's view of the repository. The tag is a placeholder: blob
    /// URLs and token scopes use only the registry and the repository.
    oci_ref: OciReference,
    /// The registry's connection pools, shared with every fetcher of it
    /// (see [`client`]).
    client: Arc<RegistryClient>,
    /// Whether this repository's token was counted against the blob
    /// client's token cache.
    token_counted: AtomicBool,
    /// `{scheme}://{resolved registry}/v2/{repository}`.
    base_url: String,
    credentials: Identity,
    /// What the direct requests send; `None` until the first authentication.
    authorization: RwLock<Option<AuthState>>,
    /// Held while authenticating: one authentication at a time.
    renewing: Mutex<()>,
    retry: RetryPolicy,
    deadlines: Deadlines,
    /// `None`: no floor (--min-transfer-rate 0).
    floor: Option<RateFloor>,
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

    /// [`RegistryFetcher::new`] with a retry policy of its own (tests use
    /// short delays).
    pub fn with_retry(
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
        let deadlines = Deadlines::of(opts.timeout);
        let key = ClientKey::new(registry, &resolved, opts, &credentials.credentials);
        let client = CLIENTS.get(&key, deadlines, &location)?;
        Ok(RegistryFetcher {
            inner: Arc::new(Inner {
                base_url: format!("{scheme}://{resolved}/v2/{repository}"),
                location,
                oci_ref,
                client,
                token_counted: AtomicBool::new(false),
                credentials,
                authorization: RwLock::new(None),
                renewing: Mutex::new(()),
                retry,
                deadlines,
                floor: RateFloor::of(opts),
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
    /// Range request from the current offset (see `resume`). The bytes are
    /// not verified here as a whole (the caller hashes the full stream), but
    /// a download that ends with a digest oci-client found wrong, or that
    /// runs past `size`, fails with `InvalidData`. A registry whose
    /// answer is shorter than `size` by its own Content-Length is a
    /// [`FetchError::ShortBlob`] at once; a download under the minimum
    /// rate for a window is resumed, and fails as [`FetchError::TooSlow`]
    /// when it stays that slow.
    pub async fn blob(&self, digest: &Digest, size: Option<u64>) -> Result<BlobReader, FetchError> {
        resume::open_reader(self.inner.clone(), digest, size, None).await
    }

    /// [`RegistryFetcher::blob`] for a small blob (a config): the whole
    /// download, opening included, must end within the deadline of a
    /// request (twice the registry timeout), as a manifest's must.
    pub async fn small_blob(&self, digest: &Digest) -> Result<BlobReader, FetchError> {
        let deadline = tokio::time::Instant::now() + self.inner.deadlines.request;
        resume::open_reader(self.inner.clone(), digest, None, Some(deadline)).await
    }
}
