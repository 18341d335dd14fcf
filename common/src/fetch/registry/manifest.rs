//! The requests exploder sends itself, with `reqwest` and the token
//! oci-client obtained: manifest GETs and HEADs, and the tag list.
//!
//! oci-client's `pull_manifest_raw` and `fetch_manifest_digest` hide what
//! exploder needs from the answer: the `Content-Type`, `Retry-After` on a
//! 429 (Docker Hub's pull limit answers manifest GETs), the status of a
//! 4xx, and a bound on how much of a body is buffered. This module owns
//! those requests: sending them authenticated (`Inner::send`, which also
//! reports every answer to the [`OBSERVER`]), checking a manifest against
//! its `Docker-Content-Digest` and its size limit, and following the tag
//! list's pages.

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use tracing::debug;

use super::auth::Authorization;
use super::error::{network_error, status_error};
use super::retry::{Failure, retry_after};
use super::{FetchError, Inner, MAX_MANIFEST_BYTES, RawManifest};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::image::media_type;
use crate::reference::ManifestTarget;

const DOCKER_CONTENT_DIGEST: &str = "Docker-Content-Digest";
/// How much of an error response's body is kept for the message.
const ERROR_BODY_LIMIT: u64 = 4096;

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
pub(super) const MAX_TAG_PAGES: usize = 10_000;

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

/// "manifest <tag>" / "manifest <digest>".
pub(super) fn describe(target: &ManifestTarget) -> String {
    match target {
        ManifestTarget::Tag(tag) => format!("manifest {tag}"),
        ManifestTarget::Digest(digest) => format!("manifest {digest}"),
    }
}

pub(super) fn header_digest(headers: &HeaderMap) -> Option<Digest> {
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
    /// A manifest GET or HEAD sent directly, accepting every manifest type
    /// exploder reads. A non-2xx answer becomes a [`Failure`] carrying its
    /// `Retry-After`.
    pub(super) async fn send_manifest_request(
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
            .client
            .http
            .request(method, &url)
            .header(ACCEPT, media_type::ACCEPTED.join(", "));
        self.send(request, &describe(target)).await
    }

    /// One page of the tag list at `url`; the next page's URL comes from
    /// the `Link: <...>; rel="next"` header, relative to the registry.
    pub(super) async fn get_tags_page(
        &self,
        url: &str,
    ) -> Result<(Vec<String>, Option<String>), Failure> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let response = self
            .send(self.client.http.get(url), "the repository's tag list")
            .await?;
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
    pub(super) fn origin(&self) -> &str {
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
        let authorization = self
            .authorization
            .read()
            .await
            .as_ref()
            .map(|state| state.authorization.clone());
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
    pub(super) async fn get_manifest(
        &self,
        target: &ManifestTarget,
    ) -> Result<RawManifest, Failure> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
