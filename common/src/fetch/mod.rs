//! Where image content comes from, and resolving a reference to an image.
//!
//! Three fetchers share one small interface (a manifest by tag or digest, a
//! blob by digest as a byte stream):
//!
//! - [`registry`]: the distribution HTTP API through `oci-client`;
//! - [`storage_dir`]: a registry's storage directory read directly, for
//!   workers that run beside the registry;
//! - [`oci_layout`]: an OCI image layout, a directory or in a tar
//!   archive;
//! - [`archive`]: archives read in place, and `docker save`'s format.
//!
//! [`resolve`] is written once on top of that interface: it follows an index
//! to the platform's manifest, reads the config and pairs each layer with
//! its diff_id. Blob bytes are never trusted here: the ingest verifies them.

pub mod archive;
pub mod oci_layout;
pub mod plan;
pub mod registry;
pub mod storage_dir;

use std::io::Read;

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::{Compression, Layer, Platform, ResolvedImage, media_type};
/// What the fetchers take a manifest by; it is the reference's to say
/// ([`crate::reference::Reference::target`]).
pub use crate::reference::ManifestTarget;

/// A manifest as served, before it is parsed.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub bytes: Vec<u8>,
    /// The media type the source declared (Content-Type, descriptor), if any.
    pub media_type: Option<String>,
    /// The digest of `bytes`.
    pub digest: Digest,
}

/// A blob's bytes, read on a blocking thread by the ingest.
pub type BlobReader = Box<dyn Read + Send>;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what} was not found in {location}: check the repository name and tag")]
    NotFound { what: String, location: String },
    /// The registry refused a request; `who` says with which credentials
    /// (from where), empty when unknown.
    #[error(
        "access to {location} denied ({status}){}: check that the credentials may pull it \
         (podman login or docker login, --authfile or REGISTRY_AUTH_FILE, a credential \
         helper, --username/--password)",
        if who.is_empty() { String::new() } else { format!(" for {who}") }
    )]
    Unauthorized {
        location: String,
        status: u16,
        who: String,
    },
    /// The registry's token service (its `realm`) refused to issue a token
    /// for these credentials.
    #[error("{0}")]
    TokenRefused(Box<TokenRefusal>),
    #[error("registry {location} answered HTTP {status}: {message}")]
    Http {
        location: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("no manifest for platform {platform} in {location} (available: {available})")]
    NoPlatform {
        platform: String,
        location: String,
        available: String,
    },
    /// A single-platform image whose config names another platform than
    /// the one asked for (an index would have been searched instead).
    #[error(
        "{location} is a single-platform image for {image}, not {asked}: \
         drop --platform to explode it as it is, or name an image built for {asked}"
    )]
    WrongPlatform {
        location: String,
        asked: String,
        image: String,
    },
    /// The registry's TLS certificate was not accepted: permanent until
    /// someone changes the certificate or what this host trusts.
    #[error(
        "{location}: the registry's TLS certificate is not trusted ({message}); \
         if a private CA signed it, add the CA to this host's trust store or point \
         SSL_CERT_FILE at a file holding it (--insecure-registry is for registries \
         on plain HTTP, not for HTTPS with a bad certificate)"
    )]
    Certificate { location: String, message: String },
    #[error("network error talking to {location}: {message}")]
    Network { location: String, message: String },
    /// An archive cut short (an interrupted copy or download): its headers
    /// promise more bytes than the file has.
    #[error(
        "{path}: the archive ends early (truncated?) at byte {at} inside {member}: \
         copy or save it again"
    )]
    Truncated {
        path: String,
        at: u64,
        member: String,
    },
    /// A blob download that stayed under the minimum rate for a whole
    /// window, each try: transient (the registry or the path to it may
    /// recover).
    #[error(
        "blob {digest} from {location} came too slowly: {rate} bytes/s over {window:?}, \
         under the minimum of {min_rate} bytes/s ({received} bytes received, {tries} tries); \
         the registry or the network to it is congested, try again later \
         (--min-transfer-rate and --transfer-rate-window set the floor)"
    )]
    TooSlow {
        location: String,
        digest: Digest,
        /// Bytes received in all, across the tries.
        received: u64,
        /// The rate of the last window, in bytes a second.
        rate: u64,
        min_rate: u64,
        window: std::time::Duration,
        tries: u32,
    },
    /// A registry whose own answer (its Content-Length) is shorter than
    /// the manifest's descriptor says the blob is: it serves another or a
    /// truncated blob under this digest, which retrying cannot change.
    #[error(
        "blob {digest} from {location}: {served} bytes, the manifest says {expected}: \
         the registry serves a truncated or different blob under this digest; \
         push the image to it again"
    )]
    ShortBlob {
        location: String,
        digest: Digest,
        served: u64,
        expected: u64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A token service's refusal: which registry and realm, which credentials
/// (from where), what it said, and what to do.
#[derive(Debug, thiserror::Error)]
#[error(
    "{registry} refused {who} at its token service {realm} (HTTP {status}: {detail}): {advice}"
)]
pub struct TokenRefusal {
    pub registry: String,
    pub realm: String,
    pub who: String,
    pub status: u16,
    pub detail: String,
    pub advice: String,
}

impl FetchError {
    /// Whether trying again later may succeed (network trouble, 429, 5xx),
    /// as opposed to an answer that will not change by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Http { status, .. } => *status == 429 || *status >= 500,
            FetchError::Network { .. } | FetchError::TooSlow { .. } => true,
            FetchError::Io { source, .. } => source.kind() != std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// One of the places image content comes from.
pub enum Fetcher {
    Registry(registry::RegistryFetcher),
    StorageDir(storage_dir::StorageDirFetcher),
    OciLayout(oci_layout::OciLayoutFetcher),
    DockerArchive(archive::DockerArchiveFetcher),
}

impl Fetcher {
    /// Human-readable location, for messages: `127.0.0.1:5000/team/app`.
    pub fn location(&self) -> String {
        match self {
            Fetcher::Registry(f) => f.location(),
            Fetcher::StorageDir(f) => f.location(),
            Fetcher::OciLayout(f) => f.location(),
            Fetcher::DockerArchive(f) => f.location(),
        }
    }

    pub async fn manifest(&self, target: &ManifestTarget) -> Result<RawManifest, FetchError> {
        let m = match self {
            Fetcher::Registry(f) => f.manifest(target).await?,
            Fetcher::StorageDir(f) => f.manifest(target)?,
            Fetcher::OciLayout(f) => f.manifest(target)?,
            Fetcher::DockerArchive(f) => f.manifest(),
        };
        // The bytes must hash to the digest the source claims for them (a
        // storage directory's tag link, an index.json entry, a registry's
        // Docker-Content-Digest), and to the digest asked for.
        let actual = hash_as(&m.digest, &m.bytes);
        let expected = match target {
            ManifestTarget::Digest(want) => want,
            ManifestTarget::Tag(_) => &m.digest,
        };
        if &actual != expected || m.digest != actual {
            return Err(FetchError::DigestMismatch {
                what: format!("manifest in {}", self.location()),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(m)
    }

    /// The digest `target` names now: a `HEAD` for a registry (it does not
    /// count against pull limits), the manifest itself elsewhere. The
    /// cheap look the producer and the poller take before resolving.
    pub async fn manifest_digest(&self, target: &ManifestTarget) -> Result<Digest, FetchError> {
        match self {
            Fetcher::Registry(f) => f.manifest_digest(target).await,
            _ => Ok(self.manifest(target).await?.digest),
        }
    }

    /// A blob's bytes. The reader is not verified: callers hash what they
    /// read (the ingest does, while extracting). Must be called from within
    /// a tokio runtime; the reader may be used on a blocking thread.
    pub async fn blob(&self, digest: &Digest, size: Option<u64>) -> Result<BlobReader, FetchError> {
        match self {
            Fetcher::Registry(f) => f.blob(digest, size).await,
            Fetcher::StorageDir(f) => f.blob(digest),
            Fetcher::OciLayout(f) => f.blob(digest),
            Fetcher::DockerArchive(f) => f.blob(digest),
        }
    }

    /// A small blob (a config) read fully and verified; from a registry,
    /// within a request's total deadline.
    pub async fn small_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, FetchError> {
        let reader = match self {
            Fetcher::Registry(f) => f.small_blob(digest).await?,
            _ => self.blob(digest, None).await?,
        };
        let what = format!("blob {digest} from {}", self.location());
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            reader.take(limit + 1).read_to_end(&mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| FetchError::Io {
            context: what.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|e| FetchError::Io {
            context: what.clone(),
            source: e,
        })?;
        if data.len() as u64 > limit {
            return Err(FetchError::Invalid {
                what,
                message: format!("larger than the {limit} byte limit for configs"),
            });
        }
        let got = hash_as(digest, &data);
        if &got != digest {
            return Err(FetchError::DigestMismatch {
                what,
                expected: digest.clone(),
                actual: got,
            });
        }
        Ok(data)
    }
}

fn hash_as(like: &Digest, data: &[u8]) -> Digest {
    let mut h = like.hasher();
    h.update(data);
    h.finish()
}

/// The largest manifest or config exploder reads (distribution uses 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: Option<i64>,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct ConfigDoc {
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Resolves `target` to one image: follows an index to the manifest for
/// `platform` (variant honoured), reads the config, pairs layers with
/// diff_ids. Records both the index digest and the chosen manifest digest.
pub async fn resolve(
    fetcher: &Fetcher,
    target: &ManifestTarget,
    platform: &Platform,
) -> Result<ResolvedImage, FetchError> {
    let location = fetcher.location();
    let first = fetcher.manifest(target).await?;
    let first_doc = parse_manifest(&first, &location)?;
    let (index_digest, raw, doc) = if let Some(list) = &first_doc.manifests {
        let chosen = select_platform(list, platform, &location)?;
        let raw = fetcher
            .manifest(&ManifestTarget::Digest(chosen.clone()))
            .await?;
        let doc = parse_manifest(&raw, &location)?;
        if doc.manifests.is_some() {
            return Err(FetchError::Unsupported(format!(
                "{location}: index {chosen} points at another index; nested indexes are not supported"
            )));
        }
        (Some(first.digest.clone()), raw, doc)
    } else {
        (None, first, first_doc)
    };
    let invalid = |message: String| FetchError::Invalid {
        what: format!("manifest {} in {location}", raw.digest),
        message,
    };
    let config = doc
        .config
        .as_ref()
        .ok_or_else(|| invalid("no config descriptor".into()))?;
    let config_digest = parse_digest(&config.digest).map_err(invalid)?;
    let config_bytes = fetcher
        .small_blob(&config_digest, MAX_MANIFEST_BYTES)
        .await?;
    let config_doc: ConfigDoc =
        serde_json::from_slice(&config_bytes).map_err(|e| FetchError::Invalid {
            what: format!("image config {config_digest}"),
            message: e.to_string(),
        })?;
    let diff_ids = config_doc
        .rootfs
        .ok_or_else(|| invalid("config has no rootfs.diff_ids".into()))?
        .diff_ids;
    let descs = doc.layers.as_deref().unwrap_or_default();
    if descs.len() != diff_ids.len() {
        return Err(invalid(format!(
            "{} layers but the config lists {} diff_ids",
            descs.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(descs.len());
    for (d, diff_id) in descs.iter().zip(&diff_ids) {
        let media_type = d.media_type.clone().unwrap_or_default();
        let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
            FetchError::Unsupported(format!(
                "{location}: layer {} has media type {media_type:?}, which is not an image layer \
                 (is this an artifact such as a Helm chart or a signature?)",
                d.digest
            ))
        })?;
        let size = d
            .size
            .filter(|s| *s >= 0)
            .ok_or_else(|| invalid(format!("layer {} has no valid size", d.digest)))?
            as u64;
        layers.push(Layer {
            digest: parse_digest(&d.digest).map_err(invalid)?,
            diff_id: parse_digest(diff_id).map_err(invalid)?,
            media_type,
            size,
            compression,
        });
    }
    let manifest_media_type = doc
        .media_type
        .clone()
        .or(raw.media_type.clone())
        .unwrap_or_else(|| media_type::OCI_MANIFEST.to_string());
    Ok(ResolvedImage {
        index_digest,
        manifest_digest: raw.digest.clone(),
        manifest_media_type,
        manifest: raw.bytes,
        config_digest,
        config: config_bytes,
        layers,
    })
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    s.parse()
        .map_err(|e: crate::digest::DigestError| e.to_string())
}

fn parse_manifest(raw: &RawManifest, location: &str) -> Result<ManifestDoc, FetchError> {
    let schema1 =
        |mt: &str| mt == media_type::DOCKER_SCHEMA1 || mt == media_type::DOCKER_SCHEMA1_SIGNED;
    let schema1_error = || {
        FetchError::Unsupported(format!(
            "{location}: manifest {} is Docker schema 1, which is deprecated and not supported; \
             re-push the image with a current client (e.g. skopeo copy --format v2s2)",
            raw.digest
        ))
    };
    if raw.media_type.as_deref().is_some_and(schema1) {
        return Err(schema1_error());
    }
    let doc: ManifestDoc = serde_json::from_slice(&raw.bytes).map_err(|e| FetchError::Invalid {
        what: format!("manifest {} in {location}", raw.digest),
        message: e.to_string(),
    })?;
    if doc.schema_version == Some(1) || doc.media_type.as_deref().is_some_and(schema1) {
        return Err(schema1_error());
    }
    Ok(doc)
}

/// Picks the manifest for `want` from an index. The variant is honoured:
/// when `want` names one it must match; when it does not, an entry without
/// a variant is preferred, then the first entry for the os/arch
/// (oci-client's default resolver ignores variants, hence our own).
fn select_platform(
    list: &[Descriptor],
    want: &Platform,
    location: &str,
) -> Result<Digest, FetchError> {
    let matches_arch = |p: &Platform| p.os == want.os && p.architecture == want.architecture;
    let candidates: Vec<&Descriptor> = list
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(matches_arch))
        .collect();
    let chosen = match &want.variant {
        Some(v) => candidates
            .iter()
            .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == Some(v)),
        None => candidates
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
            .or(candidates.first()),
    };
    match chosen {
        Some(d) => parse_digest(&d.digest).map_err(|message| FetchError::Invalid {
            what: format!("index in {location}"),
            message,
        }),
        None => Err(FetchError::NoPlatform {
            platform: want.to_string(),
            location: location.to_string(),
            available: list
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(platform: &str, digest_byte: char) -> Descriptor {
        Descriptor {
            media_type: Some(media_type::OCI_MANIFEST.into()),
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
            size: Some(1),
            platform: Some(platform.parse().unwrap()),
        }
    }

    #[test]
    fn platform_selection_honours_variant() {
        let list = vec![
            desc("linux/arm/v6", 'a'),
            desc("linux/arm/v7", 'b'),
            desc("linux/amd64", 'c'),
        ];
        let pick = |p: &str| {
            select_platform(&list, &p.parse().unwrap(), "x")
                .unwrap()
                .hex()[..1]
                .to_string()
        };
        assert_eq!(pick("linux/arm/v7"), "b");
        assert_eq!(pick("linux/arm/v6"), "a");
        assert_eq!(pick("linux/amd64"), "c");
        assert!(matches!(
            select_platform(&list, &"linux/arm/v8".parse().unwrap(), "x"),
            Err(FetchError::NoPlatform { .. })
        ));
    }

    #[test]
    fn schema1_is_rejected_with_a_clear_message() {
        let raw = RawManifest {
            bytes: br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_vec(),
            media_type: None,
            digest: Digest::sha256_of(b""),
        };
        let err = parse_manifest(&raw, "r/x").err().unwrap().to_string();
        assert!(err.contains("schema 1"), "{err}");
    }
}
