//! Finding an image's signatures where skopeo and podman put them.
//!
//! - Simple signing, in the lookaside storage:
//!   `<base>/<repository>@<algorithm>=<hex>/signature-<n>`, n from 1 up to
//!   the first missing one; `file://` reads files, `http(s)://` GETs (a
//!   404 ends the list).
//! - sigstore, as registry attachments (cosign's convention): the manifest
//!   tagged `<algorithm>-<hex>.sig` in the image's repository, each layer a
//!   payload blob with its signature in an annotation. Fetched through the
//!   image's own fetcher, so credentials, retries and storage-directory
//!   sources work as for the image.

use std::collections::BTreeMap;

use exploder_common::digest::Digest;
use exploder_common::fetch::{FetchError, Fetcher, ManifestTarget};
use serde::Deserialize;

use crate::TrustError;
use crate::sigstore::{PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION};
use crate::simple::MAX_SIGNATURE_BYTES;

/// More signatures than this on one manifest is abuse, not signing.
pub const MAX_SIGNATURES: usize = 64;

/// A sigstore signature as found: the payload blob's bytes and the
/// base64 signature.
pub struct Attached {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// The simple signing signatures of `digest` in the lookaside at `base`.
pub async fn lookaside(
    http: &reqwest::Client,
    base: &str,
    repository: &str,
    digest: &Digest,
) -> Result<Vec<Vec<u8>>, TrustError> {
    let dir = format!(
        "{}/{repository}@{}={}",
        base.trim_end_matches('/'),
        digest.algorithm().name(),
        digest.hex()
    );
    let mut out = Vec::new();
    for n in 1..=MAX_SIGNATURES {
        let url = format!("{dir}/signature-{n}");
        let found = if let Some(path) = url.strip_prefix("file://") {
            read_file(path).await?
        } else if url.starts_with("http://") || url.starts_with("https://") {
            get(http, &url).await?
        } else {
            return Err(TrustError::Config {
                what: format!("lookaside {base}"),
                message: "expected a file://, http:// or https:// URL".into(),
            });
        };
        match found {
            Some(bytes) => out.push(bytes),
            None => break,
        }
    }
    Ok(out)
}

async fn read_file(path: &str) -> Result<Option<Vec<u8>>, TrustError> {
    let io = |e: std::io::Error| {
        TrustError::Fetch(FetchError::Io {
            context: format!("reading signature {path}"),
            source: e,
        })
    };
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
        Ok(m) if m.len() > MAX_SIGNATURE_BYTES => {
            return Err(TrustError::Fetch(FetchError::Invalid {
                what: format!("signature {path}"),
                message: format!("larger than {MAX_SIGNATURE_BYTES} bytes"),
            }));
        }
        Ok(_) => {}
    }
    tokio::fs::read(path).await.map(Some).map_err(io)
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, TrustError> {
    let network = |e: reqwest::Error| {
        TrustError::Fetch(FetchError::Network {
            location: url.to_string(),
            message: e.to_string(),
        })
    };
    let mut response = http.get(url).send().await.map_err(network)?;
    let status = response.status().as_u16();
    if status == 404 {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(TrustError::Fetch(FetchError::Http {
            location: url.to_string(),
            status,
            message: "reading a lookaside signature".into(),
        }));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_SIGNATURE_BYTES {
            return Err(TrustError::Fetch(FetchError::Invalid {
                what: format!("signature {url}"),
                message: format!("larger than {MAX_SIGNATURE_BYTES} bytes"),
            }));
        }
    }
    Ok(Some(body))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SigManifest {
    #[serde(default)]
    layers: Vec<SigLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SigLayer {
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The sigstore signatures attached to `digest` (none if there is no
/// `.sig` manifest).
pub async fn attachments(fetcher: &Fetcher, digest: &Digest) -> Result<Vec<Attached>, TrustError> {
    let tag = format!("{}-{}.sig", digest.algorithm().name(), digest.hex());
    let manifest = match fetcher.manifest(&ManifestTarget::Tag(tag.clone())).await {
        Ok(m) => m,
        Err(FetchError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(TrustError::Fetch(e)),
    };
    let doc: SigManifest = serde_json::from_slice(&manifest.bytes).map_err(|e| {
        TrustError::Fetch(FetchError::Invalid {
            what: format!("signature manifest {tag} in {}", fetcher.location()),
            message: e.to_string(),
        })
    })?;
    let mut out = Vec::new();
    for layer in doc.layers.iter().take(MAX_SIGNATURES) {
        if layer.media_type.as_deref() != Some(PAYLOAD_MEDIA_TYPE) {
            continue;
        }
        let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        let Ok(blob) = layer.digest.parse::<Digest>() else {
            continue;
        };
        let payload = fetcher
            .small_blob(&blob, MAX_SIGNATURE_BYTES)
            .await
            .map_err(TrustError::Fetch)?;
        out.push(Attached {
            payload,
            signature: signature.clone(),
        });
    }
    Ok(out)
}
