//! From a reference to a plan: which fetcher, what to fetch, and where the
//! result is linked. Shared by `exploder explode`, the fan-out and the
//! workers, so a reference means the same thing everywhere.

use std::path::PathBuf;

use super::oci_layout::OciLayoutFetcher;
use super::registry::{RegistryFetcher, RegistryOptions};
use super::storage_dir::StorageDirFetcher;
use super::{FetchError, Fetcher, ManifestTarget};
use crate::digest::Digest;
use crate::history::Origin;
use crate::job::JobSource;
use crate::reference::ImageRef;
use crate::store::{ImageName, RegistryPaths};

/// What planning needs besides the reference.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    pub registry: RegistryOptions,
    /// Read registry references from this registry storage directory
    /// instead of the HTTP API (`EXPLODER_BLOB_SOURCE`).
    pub blob_source: Option<PathBuf>,
    /// Link under this `namespace/image` instead of the one derived from the
    /// reference (needed for OCI layouts, which have no repository).
    pub name: Option<String>,
    /// Registries whose images are linked under a prefix of their own.
    pub registry_paths: RegistryPaths,
}

/// Where a reference's content comes from, what to fetch, and where it is
/// linked.
pub struct Plan {
    pub fetcher: Fetcher,
    pub target: ManifestTarget,
    pub name: ImageName,
    pub tag: String,
    /// Where fleet workers fetch from; `None` for an OCI layout, which
    /// only this process can read.
    pub source: Option<JobSource>,
    /// Where the image comes from, as the tag's history records it (`by`
    /// left for the caller to say).
    pub origin: Origin,
}

impl Plan {
    /// The origin of a link made from this plan, decided by `by`.
    pub fn origin_by(&self, by: &str) -> Origin {
        Origin {
            by: Some(by.to_string()),
            ..self.origin.clone()
        }
    }
}

/// The tag a digest-only reference is linked under: `sha256-<hex>`, the
/// convention cosign and others use for digest-named tags.
fn digest_tag(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().name(), d.hex())
}

/// What to fetch for a tag and/or digest (the digest wins, as in Docker),
/// and the tag to link: the tag as written, else `sha256-<hex>` for a
/// digest-only reference, else `latest`.
fn target_and_tag(tag: &Option<String>, digest: &Option<Digest>) -> (ManifestTarget, String) {
    let target = match (digest, tag) {
        (Some(d), _) => ManifestTarget::Digest(d.clone()),
        (None, Some(t)) => ManifestTarget::Tag(t.clone()),
        (None, None) => ManifestTarget::Tag("latest".into()),
    };
    let link_tag = match (tag, digest) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => digest_tag(d),
        (None, None) => "latest".into(),
    };
    (target, link_tag)
}

/// The tag a reference with this tag and/or digest is linked under (see
/// [`plan`]): sources that build links themselves use the same rule.
pub fn link_tag(tag: &Option<String>, digest: &Option<Digest>) -> String {
    target_and_tag(tag, digest).1
}

pub fn plan(reference: &ImageRef, opts: &PlanOptions) -> Result<Plan, FetchError> {
    let (fetcher, (target, tag), repository, source) = match reference {
        ImageRef::Registry(r) => {
            let (fetcher, source) = match &opts.blob_source {
                Some(root) => (
                    Fetcher::StorageDir(StorageDirFetcher::new(root, &r.repository)?),
                    JobSource::StorageDir {
                        root: root.clone(),
                        repository: r.repository.clone(),
                    },
                ),
                None => (
                    Fetcher::Registry(RegistryFetcher::new(
                        &r.registry,
                        &r.repository,
                        &opts.registry,
                    )?),
                    JobSource::Registry {
                        registry: r.registry.clone(),
                        repository: r.repository.clone(),
                    },
                ),
            };
            (
                fetcher,
                target_and_tag(&r.tag, &r.digest),
                r.repository.clone(),
                Some(source),
            )
        }
        ImageRef::StorageDir {
            root,
            repository,
            tag,
            digest,
        } => (
            Fetcher::StorageDir(StorageDirFetcher::new(root, repository)?),
            target_and_tag(tag, digest),
            repository.clone(),
            Some(JobSource::StorageDir {
                root: root.clone(),
                repository: repository.clone(),
            }),
        ),
        ImageRef::OciLayout { path, tag } => {
            let fetcher = Fetcher::OciLayout(OciLayoutFetcher::new(path)?);
            // An OCI layout has no repository: link it as local/<dir name>.
            let dir = path
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "image".into());
            (
                fetcher,
                target_and_tag(tag, &None),
                format!("local/{dir}"),
                None,
            )
        }
    };
    let origin = match (&source, reference) {
        (Some(s), _) => Origin::of(s, ""),
        (None, ImageRef::OciLayout { path, .. }) => Origin {
            registry: Some(format!(
                "oci:{}",
                path.canonicalize()
                    .unwrap_or_else(|_| path.clone())
                    .display()
            )),
            ..Origin::default()
        },
        (None, _) => Origin::default(),
    };
    let name = match (&opts.name, &source) {
        (Some(name), _) => ImageName::from_repository(name),
        (None, Some(s)) => opts.registry_paths.name(&s.registry_key(), &repository),
        (None, None) => ImageName::from_repository(&repository),
    };
    Ok(Plan {
        fetcher,
        target,
        name,
        tag,
        source,
        origin,
    })
}

/// The fetcher a fleet worker uses for a job's source.
pub fn fetcher_for(source: &JobSource, registry: &RegistryOptions) -> Result<Fetcher, FetchError> {
    Ok(match source {
        JobSource::Registry {
            registry: host,
            repository,
        } => Fetcher::Registry(RegistryFetcher::new(host, repository, registry)?),
        JobSource::StorageDir { root, repository } => {
            Fetcher::StorageDir(StorageDirFetcher::new(root, repository)?)
        }
    })
}
