//! From a reference to a plan: which fetcher, what to fetch, and where the
//! result is linked. Shared by `exploder explode`, the fan-out and the
//! workers, so a reference means the same thing everywhere.

use std::path::{Path, PathBuf};

use super::archive::DockerArchiveFetcher;
use super::oci_layout::OciLayoutFetcher;
use super::registry::{RegistryFetcher, RegistryOptions};
use super::storage_dir::StorageDirFetcher;
use super::{FetchError, Fetcher};
use crate::digest::Digest;
use crate::history::Origin;
use crate::job::{JobSource, storage_registry_key};
use crate::reference::{DEFAULT_TAG, ImageRef, ManifestTarget, Reference};
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

/// Where a reference is linked in the store and where its image comes
/// from, without fetching anything: `images/<name>/<tag>`, the name from
/// the repository (under the registry's own prefix, if it has one) or
/// `--name`. `exploder rm` and the inventory use it to find a reference's
/// tag; [`plan`] to link it.
pub fn link_for(reference: &ImageRef, opts: &PlanOptions) -> (ImageName, String, Origin) {
    let (name, tag, origin) = match reference {
        ImageRef::Registry(r) => (
            opts.registry_paths.name(&r.registry, &r.repository),
            link_tag(&r.tag, &r.digest),
            Origin {
                registry: Some(r.registry.clone()),
                repository: Some(r.repository.clone()),
                ..Origin::default()
            },
        ),
        ImageRef::StorageDir {
            root,
            repository,
            tag,
            digest,
        } => {
            let registry = storage_registry_key(root);
            (
                opts.registry_paths.name(&registry, repository),
                link_tag(tag, digest),
                Origin {
                    registry: Some(registry),
                    repository: Some(repository.clone()),
                    ..Origin::default()
                },
            )
        }
        ImageRef::OciLayout { path, tag } => local(path, "oci:", link_tag(tag, &None)),
        ImageRef::OciArchive { path, tag } => local(path, "oci-archive:", link_tag(tag, &None)),
        ImageRef::DockerArchive { path, name } => {
            // The tag of the image's name in the archive, else latest.
            let tag = name
                .as_deref()
                .and_then(|n| Reference::parse(n).ok())
                .and_then(|r| r.tag);
            local(path, "docker-archive:", link_tag(&tag, &None))
        }
    };
    let name = opts
        .name
        .as_deref()
        .map_or(name, ImageName::from_repository);
    (name, tag, origin)
}

/// A local source has no repository: it is linked as local/<file or
/// directory name> (without `.tar`), unless `--name` says otherwise.
fn local(path: &Path, transport: &str, tag: String) -> (ImageName, String, Origin) {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let name = file.strip_suffix(".tar").unwrap_or(&file).to_string();
    (
        ImageName::from_repository(&format!("local/{name}")),
        tag,
        Origin {
            registry: Some(format!("{transport}{}", path.display())),
            ..Origin::default()
        },
    )
}

pub fn plan(reference: &ImageRef, opts: &PlanOptions) -> Result<Plan, FetchError> {
    let (fetcher, target, source) = match reference {
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
            (fetcher, target_and_tag(&r.tag, &r.digest).0, Some(source))
        }
        ImageRef::StorageDir {
            root,
            repository,
            tag,
            digest,
        } => (
            Fetcher::StorageDir(StorageDirFetcher::new(root, repository)?),
            target_and_tag(tag, digest).0,
            Some(JobSource::StorageDir {
                root: root.clone(),
                repository: repository.clone(),
            }),
        ),
        ImageRef::OciLayout { path, tag } => (
            Fetcher::OciLayout(OciLayoutFetcher::new(path)?),
            target_and_tag(tag, &None).0,
            None,
        ),
        ImageRef::OciArchive { path, tag } => (
            Fetcher::OciLayout(OciLayoutFetcher::archive(path)?),
            target_and_tag(tag, &None).0,
            None,
        ),
        ImageRef::DockerArchive { path, name } => (
            Fetcher::DockerArchive(DockerArchiveFetcher::new(path, name.as_deref())?),
            // The archive is opened for one image; its manifest is made.
            ManifestTarget::Tag(DEFAULT_TAG.into()),
            None,
        ),
    };
    let (name, tag, origin) = link_for(reference, opts);
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
