//! The jobs the fleet passes over the queue: a [`LayerJob`] (fetch and
//! ingest one blob) and an [`ImageJob`] (finalize and link one image), and
//! their wire format.
//!
//! # Wire format
//!
//! An AMQP message carries one job:
//!
//! - body: [`encode`]'s bytes — the schema version as a postcard varint
//!   `u16`, immediately followed by the postcard encoding of that version's
//!   job (the private `v1::Job`, `v2::Job`), nothing after it;
//! - `content-type`: [`CONTENT_TYPE`];
//! - header [`SCHEMA_HEADER`]: the schema version, for operators and for
//!   routing without decoding. [`decode`] trusts the body's version over the
//!   header, so a message that lost its header still decodes.
//!
//! The public types below are what the code works with; each schema version
//! has its own frozen wire types (modules `v1`, `v2`), converted to and from them,
//! so a change to a public type (or to [`Layer`], which is also JSON) is a
//! compile error in the conversion, not a silent change of the wire format.
//!
//! # Upgrading the schema (rolling upgrades)
//!
//! postcard is not self-describing: bytes are read by position, so within a
//! version no field or enum variant may ever be reordered, removed, retyped
//! or inserted (the fixture test in `tests/job_fixtures.rs` enforces it).
//! Any change is a new version: add a frozen `v2` module, make [`decode`]
//! read version 2 *and every older version that may still be in flight*
//! (converting a v1 job to the current types), keep the v1 fixture test.
//! Workers upgrade first; producers keep emitting the old version (encode
//! with the old module) until every worker reads v2, and only then switch
//! [`SCHEMA_VERSION`]. A worker that meets a newer version gets
//! [`DecodeError::UnsupportedVersion`] and dead-letters the message with
//! that reason; it never crashes, and a replay after its upgrade succeeds.
//! [`encode_as`] writes an older version, for producers that must still
//! feed old workers.
//!
//! Versions: 1, the first; 2, image jobs carry the manifest and config
//! bytes and who decided them (see `v2`); 3, export jobs, and the disk
//! images an image job asks for (see `v3`); 4, the registry a storage
//! directory mirrors (see `v4`). A v1 image job still works:
//! the worker fetches its manifest and config from the source.
//!
//! The serde derives on the public types are for JSON (operator output such
//! as `dlq show`), not for the queue: postcard cannot even decode the
//! internally tagged [`Job`], so the two cannot be confused.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::{Compression, Layer, ResolvedImage};
use crate::store::{DiskFormat, ImageName};

mod v1;
mod v2;
mod v3;
mod v4;

/// The schema version [`encode`] writes and the newest one [`decode`] reads.
pub const SCHEMA_VERSION: u16 = 4;

/// The AMQP `content-type` of a job message.
pub const CONTENT_TYPE: &str = "application/vnd.exploder.job.v1+postcard";

/// The AMQP header that carries the schema version (an integer).
pub const SCHEMA_HEADER: &str = "x-exploder-schema";

/// Where a job's blobs and manifests are fetched from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobSource {
    /// The distribution API of `registry` (`host` or `host:port`).
    Registry {
        registry: String,
        repository: String,
    },
    /// A registry's storage directory: `root` contains `docker/registry/v2`.
    /// Must be the same path on every worker (a shared mount).
    StorageDir { root: PathBuf, repository: String },
}

/// The registry key of a registry's storage directory: `file://<root>`.
pub fn storage_registry_key(root: &std::path::Path) -> String {
    format!("file://{}", root.display())
}

impl JobSource {
    /// Which registry: `host[:port]`, or `file://<root>` for a registry's
    /// storage directory. Two sources with the same key are one registry
    /// (the store refuses to link one tag from two).
    pub fn registry_key(&self) -> String {
        match self {
            JobSource::Registry { registry, .. } => registry.clone(),
            JobSource::StorageDir { root, .. } => storage_registry_key(root),
        }
    }

    pub fn repository(&self) -> &str {
        match self {
            JobSource::Registry { repository, .. } | JobSource::StorageDir { repository, .. } => {
                repository
            }
        }
    }
}

impl fmt::Display for JobSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobSource::Registry {
                registry,
                repository,
            } => write!(f, "{registry}/{repository}"),
            JobSource::StorageDir { root, repository } => {
                write!(f, "{repository} in storage {}", root.display())
            }
        }
    }
}

/// Fetch one layer blob and ingest it into the layer store. The images
/// waiting for it are not in the job: they live in Redis (fan-in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerJob {
    pub id: String,
    /// The blob digest (compressed, as stored in the registry).
    pub digest: Digest,
    /// The uncompressed tar's digest: the layer store key.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
    pub compression: Compression,
    pub source: JobSource,
}

impl LayerJob {
    /// A job with a fresh id for one layer of a resolved image.
    pub fn new(layer: &Layer, source: JobSource) -> LayerJob {
        LayerJob {
            id: new_job_id(),
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size,
            compression: layer.compression,
            source,
        }
    }

    /// The layer this job ingests.
    pub fn layer(&self) -> Layer {
        Layer {
            digest: self.digest.clone(),
            diff_id: self.diff_id.clone(),
            media_type: self.media_type.clone(),
            size: self.size,
            compression: self.compression,
        }
    }
}

/// A tag to link once the image is built:
/// `images/<namespace>/<image>/<tag>/link`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTarget {
    pub namespace: String,
    pub image: String,
    pub tag: String,
}

impl LinkTarget {
    pub fn new(name: &ImageName, tag: &str) -> LinkTarget {
        LinkTarget {
            namespace: name.namespace.clone(),
            image: name.image.clone(),
            tag: tag.to_string(),
        }
    }

    pub fn name(&self) -> ImageName {
        ImageName {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
        }
    }
}

impl fmt::Display for LinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.image, self.tag)
    }
}

/// Finalize one image from its ingested layers and link its references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageJob {
    pub id: String,
    /// The platform manifest: the image's identity in the store.
    pub manifest_digest: Digest,
    /// The index the reference pointed at, if any.
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    /// In order, lowest first.
    pub layers: Vec<Layer>,
    pub links: Vec<LinkTarget>,
    pub source: JobSource,
    /// When the job was enqueued, RFC 3339 UTC (milliseconds since v2):
    /// when the link was decided.
    pub enqueued_at: String,
    /// Who decided the link: `cli`, `webhook/<endpoint>`, `poll`,
    /// `imagestream` (empty for a v1 job).
    pub decided_by: String,
    /// The manifest and config, verified at fan-out, so finalize needs
    /// nothing from the source. `None` for a v1 job: fetched from `source`
    /// by digest.
    pub embedded: Option<EmbeddedImage>,
    /// Disk images to export once the image is linked (an export job each;
    /// schema v3 on).
    pub exports: Vec<DiskFormat>,
    /// For a job from a registry's storage directory (`--blob-source`):
    /// the registry it mirrors, i.e. the registry of the reference the
    /// signature policy was checked for at fan-out, so the worker checks
    /// the same scope again. `None` for other sources and before schema v4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirrors: Option<String>,
}

/// The bytes of an image's manifest and config, as fetched and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddedImage {
    pub manifest_media_type: String,
    #[serde(with = "base64_bytes")]
    pub manifest: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub config: Vec<u8>,
}

/// Bytes as base64 in JSON (operator output), not as arrays of numbers.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

impl ImageJob {
    /// A job with a fresh id, enqueued now, carrying the image's manifest
    /// and config.
    pub fn new(
        image: &ResolvedImage,
        links: Vec<LinkTarget>,
        source: JobSource,
        decided_by: &str,
        exports: Vec<DiskFormat>,
    ) -> ImageJob {
        ImageJob {
            id: new_job_id(),
            manifest_digest: image.manifest_digest.clone(),
            index_digest: image.index_digest.clone(),
            config_digest: image.config_digest.clone(),
            layers: image.layers.clone(),
            links,
            source,
            enqueued_at: crate::history::rfc3339_millis(crate::history::now_millis()),
            decided_by: decided_by.to_string(),
            embedded: Some(EmbeddedImage {
                manifest_media_type: image.manifest_media_type.clone(),
                manifest: image.manifest.clone(),
                config: image.config.clone(),
            }),
            exports,
            mirrors: None,
        }
    }

    /// Where its links come from, as their history records it.
    pub fn origin(&self) -> crate::history::Origin {
        let by = if self.decided_by.is_empty() {
            // A v1 job does not say.
            "fleet"
        } else {
            &self.decided_by
        };
        crate::history::Origin::of(&self.source, by)
    }

    /// When the link was decided (Unix milliseconds), if `enqueued_at`
    /// parses.
    pub fn decided(&self) -> Option<i64> {
        crate::history::parse_rfc3339_millis(&self.enqueued_at)
    }

    /// The image the job embeds, checked against the job's digests (a
    /// message corrupted on its way cannot build a wrong image). `None`
    /// for a v1 job, which embeds nothing.
    pub fn embedded_image(&self) -> Option<Result<ResolvedImage, String>> {
        let e = self.embedded.as_ref()?;
        let check = |what: &str, bytes: &[u8], want: &Digest| {
            let got = Digest::sha256_of(bytes);
            if &got == want {
                Ok(())
            } else {
                Err(format!(
                    "the job's embedded {what} is {got}, not {want}: the message is corrupt"
                ))
            }
        };
        Some(
            check("manifest", &e.manifest, &self.manifest_digest)
                .and_then(|()| check("config", &e.config, &self.config_digest))
                .map(|()| ResolvedImage {
                    index_digest: self.index_digest.clone(),
                    manifest_digest: self.manifest_digest.clone(),
                    manifest_media_type: e.manifest_media_type.clone(),
                    manifest: e.manifest.clone(),
                    config_digest: self.config_digest.clone(),
                    config: e.config.clone(),
                    layers: self.layers.clone(),
                }),
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    Layer,
    Image,
    Export,
}

impl JobKind {
    /// Every kind: one work queue each.
    pub const ALL: [JobKind; 3] = [JobKind::Layer, JobKind::Image, JobKind::Export];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Layer => "layer",
            JobKind::Image => "image",
            JobKind::Export => "export",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// A job is decoded once per message and handled whole: an image job being
// larger than the others costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    Layer(LayerJob),
    Image(ImageJob),
    Export(ExportJob),
}

impl Job {
    pub fn id(&self) -> &str {
        match self {
            Job::Layer(j) => &j.id,
            Job::Image(j) => &j.id,
            Job::Export(j) => &j.id,
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Job::Layer(_) => JobKind::Layer,
            Job::Image(_) => JobKind::Image,
            Job::Export(_) => JobKind::Export,
        }
    }

    /// The digest to log: the blob of a layer job, the manifest of an image
    /// or export job.
    pub fn digest(&self) -> &Digest {
        match self {
            Job::Layer(j) => &j.digest,
            Job::Image(j) => &j.manifest_digest,
            Job::Export(j) => &j.manifest_digest,
        }
    }
}

/// Write one disk image of an image already finalized (published by its
/// image job once linked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportJob {
    pub id: String,
    pub manifest_digest: Digest,
    pub format: DiskFormat,
}

impl ExportJob {
    /// A job with a fresh id.
    pub fn new(manifest_digest: &Digest, format: DiskFormat) -> ExportJob {
        ExportJob {
            id: new_job_id(),
            manifest_digest: manifest_digest.clone(),
            format,
        }
    }
}

/// A fresh job id: 16 random bytes, 32 lowercase hex digits.
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom (a bare chroot): unique enough from time, pid, a
        // counter and the thread.
        use sha2::Digest as _;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = format!(
            "{nanos} {} {} {:?}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::thread::current().id()
        );
        bytes.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
    }
    hex::encode(bytes)
}

/// Why a message body is not a job this worker can run. Both are permanent:
/// the message goes to the dead-letter queue with this as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Written by a producer with a schema this worker does not know
    /// (usually a newer one, during a rolling upgrade).
    #[error(
        "unsupported job schema version {found} (this worker reads versions up to {supported})"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("malformed job message: {0}")]
    Malformed(String),
}

/// The message body for `job` at [`SCHEMA_VERSION`].
pub fn encode(job: &Job) -> Vec<u8> {
    encode_as(job, SCHEMA_VERSION)
}

/// The message body for `job` at an older `version`, for old workers
/// (what the version cannot carry is left out; see its module). Panics on
/// a version this code does not write, or an export job below version 3:
/// programming errors.
pub fn encode_as(job: &Job, version: u16) -> Vec<u8> {
    let older = |v| match job {
        Job::Export(_) => panic!("an export job needs job schema 3, not {v}"),
        _ => job,
    };
    // Strings, sequences and integers only: encoding into a Vec cannot fail.
    let encoded = match version {
        1 => postcard::to_stdvec(&(version, v1::Job::from(older(1)))),
        2 => postcard::to_stdvec(&(version, v2::Job::from(older(2)))),
        3 => postcard::to_stdvec(&(version, v3::Job::from(job))),
        4 => postcard::to_stdvec(&(version, v4::Job::from(job))),
        other => panic!("job schema version {other} cannot be written"),
    };
    encoded.expect("postcard encoding of a job cannot fail")
}

/// Decodes a message body. `schema_header` is the [`SCHEMA_HEADER`] value if
/// the message had one; the version in the body wins over it, and it is only
/// used to report a body without a readable version as
/// [`DecodeError::UnsupportedVersion`] when it names a newer schema.
pub fn decode(body: &[u8], schema_header: Option<u16>) -> Result<Job, DecodeError> {
    let (version, payload) = match postcard::take_from_bytes::<u16>(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(match schema_header {
                Some(found) if found > SCHEMA_VERSION => DecodeError::UnsupportedVersion {
                    found,
                    supported: SCHEMA_VERSION,
                },
                _ => DecodeError::Malformed(format!("no schema version: {e}")),
            });
        }
    };
    match version {
        1 => v1::decode(payload).map(Job::from),
        2 => v2::decode(payload).map(Job::from),
        3 => v3::decode(payload).map(Job::from),
        4 => v4::decode(payload).map(Job::from),
        found => Err(DecodeError::UnsupportedVersion {
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn layer(n: &str, compression: Compression) -> Layer {
        Layer {
            digest: digest(&format!("blob {n}")),
            diff_id: digest(&format!("tar {n}")),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 1234,
            compression,
        }
    }

    fn layer_job() -> Job {
        Job::Layer(LayerJob::new(
            &layer("a", Compression::Zstd),
            JobSource::Registry {
                registry: "127.0.0.1:5000".into(),
                repository: "team/app".into(),
            },
        ))
    }

    fn image_job() -> Job {
        let image = ResolvedImage {
            index_digest: Some(digest("index")),
            manifest_digest: digest("manifest"),
            manifest_media_type: crate::image::media_type::OCI_MANIFEST.into(),
            manifest: b"{}".to_vec(),
            config_digest: digest("config"),
            config: b"{}".to_vec(),
            layers: vec![layer("a", Compression::Gzip), layer("b", Compression::None)],
        };
        let mut job = ImageJob::new(
            &image,
            vec![
                LinkTarget::new(&ImageName::from_repository("team/app"), "1.0"),
                LinkTarget::new(&ImageName::from_repository("team/app"), "latest"),
            ],
            JobSource::StorageDir {
                root: PathBuf::from("/srv/registry"),
                repository: "team/app".into(),
            },
            "cli",
            vec![DiskFormat::Erofs],
        );
        job.mirrors = Some("registry.example.com".into());
        Job::Image(job)
    }

    fn export_job() -> Job {
        Job::Export(ExportJob::new(&digest("manifest"), DiskFormat::Squashfs))
    }

    /// A v4 body whose version varint says `version` instead.
    fn with_version(version: u16, job: &Job) -> Vec<u8> {
        let body = encode(job);
        assert_eq!(body[0], 4, "v4 is a one-byte varint");
        let mut out = postcard::to_stdvec(&version).unwrap();
        out.extend_from_slice(&body[1..]);
        out
    }

    #[test]
    fn round_trips_both_kinds() {
        for job in [layer_job(), image_job(), export_job()] {
            let body = encode(&job);
            assert_eq!(body[0], 4, "the body starts with the version");
            assert_eq!(decode(&body, Some(SCHEMA_VERSION)).unwrap(), job);
            assert_eq!(decode(&body, None).unwrap(), job, "no header needed");
        }
    }

    #[test]
    fn accessors() {
        let l = layer_job();
        assert_eq!(l.kind(), JobKind::Layer);
        assert_eq!(l.kind().as_str(), "layer");
        assert_eq!(l.id().len(), 32);
        assert_eq!(l.digest(), &digest("blob a"));
        let Job::Layer(lj) = &l else { unreachable!() };
        assert_eq!(lj.layer(), layer("a", Compression::Zstd));
        assert_eq!(lj.source.to_string(), "127.0.0.1:5000/team/app");

        let i = image_job();
        assert_eq!(i.kind(), JobKind::Image);
        assert_eq!(i.kind().to_string(), "image");
        assert_eq!(i.digest(), &digest("manifest"));
        assert_ne!(i.id(), l.id());
        let Job::Image(ij) = &i else { unreachable!() };
        assert_eq!(ij.links[0].to_string(), "team/app:1.0");
        assert_eq!(ij.links[1].name(), ImageName::from_repository("team/app"));
        assert!(ij.enqueued_at.ends_with('Z'), "{}", ij.enqueued_at);
    }

    #[test]
    fn job_ids_are_random_hex() {
        let a = new_job_id();
        let b = new_job_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn newer_versions_are_unsupported_not_fatal() {
        for version in [5, 99, 300, u16::MAX, 0] {
            for header in [None, Some(4), Some(version)] {
                assert_eq!(
                    decode(&with_version(version, &image_job()), header),
                    Err(DecodeError::UnsupportedVersion {
                        found: version,
                        supported: SCHEMA_VERSION
                    }),
                    "version {version}, header {header:?}"
                );
            }
        }
        let e = decode(&with_version(99, &layer_job()), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported job schema version 99 (this worker reads versions up to 4)"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let body = encode(&image_job());
        let mut trailing = body.clone();
        trailing.push(0);
        let mut bad_digest = encode(&layer_job());
        // id: length 32 + 32 bytes; then the digest string: length, "sha256:…".
        let at = 2 + 1 + 32 + 1 + 7;
        assert_eq!(&bad_digest[at - 7..at], b"sha256:");
        bad_digest[at] = b'X';
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("version overflows u16", vec![0xff, 0xff, 0xff]),
            ("truncated", body[..body.len() / 2].to_vec()),
            ("only the version", vec![4]),
            ("unknown job kind", vec![4, 7, 0, 0]),
            ("v1 unknown job kind", vec![1, 7, 0, 0]),
            ("trailing bytes", trailing),
            ("bad digest", bad_digest),
        ];
        for (what, body) in cases {
            match decode(&body, Some(4)) {
                Err(DecodeError::Malformed(msg)) => assert!(!msg.is_empty(), "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn unreadable_version_with_a_newer_header_is_unsupported() {
        // A future schema might change the framing itself: the header still
        // gives the dead-letter queue the right reason.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff], Some(5)),
            Err(DecodeError::UnsupportedVersion {
                found: 5,
                supported: SCHEMA_VERSION
            })
        );
        assert!(matches!(decode(&[], None), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn the_body_wins_over_the_header() {
        let job = layer_job();
        // Header claims a newer or older version, the body is v4: decoded.
        for header in [Some(0), Some(1), Some(99)] {
            assert_eq!(decode(&encode(&job), header).unwrap(), job);
        }
        // Header claims v4, the body is v5: unsupported.
        assert_eq!(
            decode(&with_version(5, &job), Some(4)),
            Err(DecodeError::UnsupportedVersion {
                found: 5,
                supported: SCHEMA_VERSION
            })
        );
    }

    #[test]
    fn non_utf8_storage_roots_survive() {
        use std::os::unix::ffi::OsStringExt;
        let job = Job::Layer(LayerJob::new(
            &layer("c", Compression::None),
            JobSource::StorageDir {
                root: std::ffi::OsString::from_vec(b"/srv/\xffreg".to_vec()).into(),
                repository: "x/y".into(),
            },
        ));
        assert_eq!(decode(&encode(&job), None).unwrap(), job);
    }

    #[test]
    fn a_v1_image_job_loses_only_what_v1_cannot_carry() {
        let Job::Image(mut job) = image_job() else {
            unreachable!()
        };
        let Job::Image(old) = decode(&encode_as(&Job::Image(job.clone()), 1), None).unwrap() else {
            unreachable!()
        };
        assert_eq!(old.embedded, None, "a v1 worker fetches them");
        assert_eq!(old.decided_by, "");
        job.embedded = None;
        job.decided_by = String::new();
        job.exports = Vec::new();
        job.mirrors = None;
        assert_eq!(old, job);
        assert!(old.embedded_image().is_none());
    }

    #[test]
    fn a_v2_image_job_asks_for_no_disk_images() {
        let Job::Image(job) = image_job() else {
            unreachable!()
        };
        assert_eq!(job.exports, [DiskFormat::Erofs]);
        let Job::Image(v2) = decode(&encode_as(&Job::Image(job.clone()), 2), None).unwrap() else {
            unreachable!()
        };
        assert!(v2.exports.is_empty());
        assert_eq!(v2.embedded, job.embedded, "v2 carries the rest");
    }

    #[test]
    fn a_v3_image_job_does_not_say_which_registry_a_storage_directory_mirrors() {
        let Job::Image(job) = image_job() else {
            unreachable!()
        };
        let Job::Image(v3) = decode(&encode_as(&Job::Image(job.clone()), 3), None).unwrap() else {
            unreachable!()
        };
        assert_eq!(v3.mirrors, None);
        assert_eq!(v3.exports, job.exports, "v3 carries the rest");
        let Job::Image(v4) = decode(&encode(&Job::Image(job.clone())), None).unwrap() else {
            unreachable!()
        };
        assert_eq!(v4.mirrors.as_deref(), Some("registry.example.com"));
    }

    #[test]
    #[should_panic(expected = "an export job needs job schema 3")]
    fn an_export_job_cannot_be_written_for_older_workers() {
        encode_as(&export_job(), 2);
    }

    #[test]
    fn the_embedded_image_is_checked_against_the_jobs_digests() {
        let Job::Image(mut job) = image_job() else {
            unreachable!()
        };
        job.manifest_digest = Digest::sha256_of(b"{}");
        job.config_digest = Digest::sha256_of(b"{}");
        let image = job.embedded_image().unwrap().unwrap();
        assert_eq!(image.manifest, b"{}");
        assert_eq!(image.layers, job.layers);
        job.embedded.as_mut().unwrap().config = b"{ }".to_vec();
        let e = job.embedded_image().unwrap().unwrap_err();
        assert!(
            e.contains("embedded config") && e.contains("corrupt"),
            "{e}"
        );
    }

    #[test]
    fn json_is_tagged() {
        let v = serde_json::to_value(layer_job()).unwrap();
        assert_eq!(v["kind"], "layer");
        assert_eq!(v["source"]["type"], "registry");
        assert_eq!(v["compression"], "zstd");
        let i = image_job();
        let back: Job = serde_json::from_value(serde_json::to_value(&i).unwrap()).unwrap();
        assert_eq!(back, i);
    }
}
