//! The whole pipeline in one process: resolve, ingest the missing layers
//! in parallel, finalize, link. `exploder explode` runs this; the fleet's
//! handlers call the same [`LayerStore::ingest`] and [`Finalizer`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use exploder_common::digest::Digest;
use exploder_common::fetch::plan::{PlanOptions, plan};
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::fetch::{FetchError, resolve};
use exploder_common::image::{Layer, Platform, ResolvedImage};
use exploder_common::job::LinkTarget;
use exploder_common::limits::Limits;
use exploder_common::reference::ImageRef;
use exploder_common::store::quota::{OverQuota, Quotas};
use exploder_common::store::{Block, LinkError, Linked, RegistryPaths, StoreLayout};
use serde::Serialize;
use tokio::sync::Semaphore;

use exploder_trust::{Trust, TrustError};

use crate::export::{self, ExportError, ExportReport, Format};
use crate::finalize::{FinalizeError, FinalizeOptions, Finalizer};
use crate::layer::{IngestError, LayerStore, Staging};
use crate::space::StoreFull;

#[derive(Clone, Debug)]
pub struct ExplodeOptions {
    pub store: PathBuf,
    /// Layers ingested at once.
    pub jobs: usize,
    pub platform: Platform,
    /// Whether `platform` was asked for (`--platform`) rather than the
    /// default: a single-platform image of another platform is then
    /// refused instead of exploded as it is.
    pub platform_asked: bool,
    pub limits: Limits,
    pub finalize: FinalizeOptions,
    pub registry: RegistryOptions,
    /// Read registry references from this registry storage directory
    /// instead of the HTTP API (`EXPLODER_BLOB_SOURCE`).
    pub blob_source: Option<PathBuf>,
    /// Link under this `namespace/image` instead of the one derived from the
    /// reference (needed for OCI layouts, which have no repository).
    pub name: Option<String>,
    /// Registries whose images are linked under a prefix of their own.
    pub registry_paths: RegistryPaths,
    /// Per-namespace storage quotas, checked before anything is fetched.
    pub quotas: Quotas,
    /// Disk images to write beside the rootfs once it is published.
    pub exports: Vec<Format>,
    /// The signature policy, checked after resolving and before anything
    /// is fetched or linked.
    pub trust: Arc<Trust>,
}

impl ExplodeOptions {
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            registry: self.registry.clone(),
            blob_source: self.blob_source.clone(),
            name: self.name.clone(),
            registry_paths: self.registry_paths.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExplodeError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error("linking {link}: {source}")]
    Link {
        link: String,
        #[source]
        source: LinkError,
    },
    #[error(transparent)]
    OverQuota(#[from] OverQuota),
    /// The image is blocked (`exploder block`).
    #[error("refused: {0}")]
    Blocked(Box<Block>),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("reading the store for a quota: {0}")]
    Quota(std::io::Error),
    #[error("reading the store's block list: {0}")]
    BlockList(std::io::Error),
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A link could not be written: the store is full (ingest and
    /// finalize say so through their own errors).
    #[error(transparent)]
    StoreFull(#[from] StoreFull),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ExplodeError {
    pub fn is_transient(&self) -> bool {
        match self {
            ExplodeError::Fetch(e) => e.is_transient(),
            ExplodeError::Ingest(e) => e.is_transient(),
            ExplodeError::Finalize(e) => e.is_transient(),
            ExplodeError::Link { source, .. } => matches!(source, LinkError::Io(_)),
            ExplodeError::OverQuota(_) | ExplodeError::Blocked(_) => false,
            ExplodeError::Export(e) => e.is_transient(),
            ExplodeError::Trust(e) => e.is_transient(),
            ExplodeError::Quota(_)
            | ExplodeError::BlockList(_)
            | ExplodeError::StoreFull(_)
            | ExplodeError::Internal(_) => true,
        }
    }
}

/// What happened to one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub status: LayerStatus,
}

/// Whether a layer was ingested by this explode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerStatus {
    /// Ingested now.
    Ingested,
    /// Already in the store.
    Present,
}

/// The result of exploding one reference.
#[derive(Clone, Debug, Serialize)]
pub struct ExplodeReport {
    pub reference: String,
    pub manifest_digest: Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub namespace: String,
    pub image: String,
    pub tag: String,
    pub link: PathBuf,
    pub rootfs: PathBuf,
    /// `built` now, or already `present`.
    pub image_status: &'static str,
    pub link_changed: bool,
    /// What the tag linked to before, when this explode moved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Digest>,
    pub layers: Vec<LayerReport>,
    /// The disk images asked for, built now or present.
    pub exports: Vec<ExportReport>,
}

/// Progress callbacks, for progress bars. Called from several threads.
pub trait Observer: Send + Sync {
    fn resolved(&self, _reference: &str, _image: &ResolvedImage, _missing: &[Layer]) {}
    fn layer_bytes(&self, _diff_id: &Digest, _bytes: u64) {}
    fn layer_done(&self, _diff_id: &Digest) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Explodes one reference into the store and links it.
pub async fn explode(
    reference: &ImageRef,
    display: &str,
    opts: &ExplodeOptions,
    observer: Arc<dyn Observer>,
) -> Result<ExplodeReport, ExplodeError> {
    let plan = plan(reference, &opts.plan_options())?;
    let image = resolve(&plan.fetcher, &plan.target, &opts.platform).await?;
    // An index was searched for the platform; a single manifest was not,
    // and its config is the only place that says what it is for.
    if opts.platform_asked
        && image.index_digest.is_none()
        && let Some(has) = Platform::of_config(&image.config)
        && !has.serves(&opts.platform)
    {
        return Err(FetchError::WrongPlatform {
            location: plan.fetcher.location(),
            asked: opts.platform.to_string(),
            image: has.to_string(),
        }
        .into());
    }
    // Refused: nothing of the image is fetched, nothing is linked.
    let accepted = opts
        .trust
        .verify_image(reference, display, &plan.fetcher, &image)
        .await?;
    if !accepted.by.is_empty() {
        tracing::info!(manifest = %image.manifest_digest, by = ?accepted.by, "signature policy accepts");
    }
    let origin = plan.origin_by("cli/explode");
    let layout = StoreLayout::new(&opts.store);
    if let Some(block) = layout
        .image_block(&image.manifest_digest, image.index_digest.as_ref())
        .map_err(ExplodeError::BlockList)?
    {
        return Err(ExplodeError::Blocked(Box::new(block)));
    }
    opts.quotas
        .check_links(&layout, &[LinkTarget::new(&plan.name, &plan.tag)], &image)
        .map_err(ExplodeError::Quota)??;
    // Leftovers of crashed runs on this host are garbage: remove them.
    let tmp = layout.tmp_dir();
    match tokio::task::spawn_blocking(move || Staging::sweep(&tmp)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!("removed {n} staging directories left by crashed runs"),
        Ok(Err(e)) => tracing::warn!("sweeping {}: {e}", layout.tmp_dir().display()),
        Err(e) => tracing::warn!("sweeping {}: {e}", layout.tmp_dir().display()),
    }
    let mut store = LayerStore::new(layout.clone(), opts.limits.clone());
    store.durable = opts.finalize.durable;
    store.write_threads = opts.finalize.write_threads;
    store.file_objects = opts.finalize.file_objects;
    let store = Arc::new(store);

    // Each distinct missing diff_id once (images often repeat empty layers).
    let mut seen = HashSet::new();
    let missing: Vec<Layer> = image
        .layers
        .iter()
        .filter(|l| !store.contains(&l.diff_id) && seen.insert(l.diff_id.clone()))
        .cloned()
        .collect();
    observer.resolved(display, &image, &missing);
    let reports: Vec<LayerReport> = image
        .layers
        .iter()
        .map(|l| LayerReport {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
            status: if missing.iter().any(|m| m.diff_id == l.diff_id) {
                LayerStatus::Ingested
            } else {
                LayerStatus::Present
            },
        })
        .collect();

    let fetcher = Arc::new(plan.fetcher);
    let permits = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for layer in missing {
        let (fetcher, store, permits, observer) = (
            fetcher.clone(),
            store.clone(),
            permits.clone(),
            observer.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let blob = fetcher.blob(&layer.digest, Some(layer.size)).await?;
            let diff_id = layer.diff_id.clone();
            let obs = observer.clone();
            let job = layer.clone();
            let started = std::time::Instant::now();
            let info = tokio::task::spawn_blocking(move || {
                store.ingest(&job, blob, |n| obs.layer_bytes(&diff_id, n))
            })
            .await
            .map_err(|e| ExplodeError::Internal(e.to_string()))??;
            if let Some(info) = info {
                tracing::info!(
                    diff_id = %info.diff_id,
                    compressed_bytes = info.compressed_bytes,
                    uncompressed_bytes = info.uncompressed_bytes,
                    entries = info.entries,
                    seconds = started.elapsed().as_secs_f64(),
                    "layer ingested"
                );
            }
            observer.layer_done(&layer.diff_id);
            Ok::<_, ExplodeError>(())
        });
    }
    // The first failure wins. Ingests already running on blocking threads
    // finish on their own (and may publish their layer: harmless, it is
    // complete); the rest are not started.
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tasks.abort_all();
                return Err(e);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(ExplodeError::Internal(e.to_string())),
        }
    }

    let finalize_opts = opts.finalize.clone();
    let image = Arc::new(image);
    let (built, link_changed, replaced) = {
        let (store, image, name, tag, origin) = (
            store.clone(),
            image.clone(),
            plan.name.clone(),
            plan.tag.clone(),
            origin,
        );
        tokio::task::spawn_blocking(
            move || -> Result<(bool, bool, Option<Digest>), ExplodeError> {
                let finalizer = Finalizer::new(&store, finalize_opts);
                let started = std::time::Instant::now();
                let built = finalizer.build(&image, &origin)?;
                if built {
                    tracing::info!(
                        manifest = %image.manifest_digest,
                        seconds = started.elapsed().as_secs_f64(),
                        "image finalized"
                    );
                }
                let link = format!("{}/{}:{}", name.namespace, name.image, tag);
                // Read outside the tag's lock: only to say what a change replaced.
                let before = store.layout().read_link(&name, &tag).ok().flatten();
                let changed = store
                    .layout()
                    .link(&name, &tag, &image.manifest_digest, None, &origin)
                    .map_err(|source| match &source {
                        LinkError::Io(e) => match store.space.ran_out(e, None) {
                            Some(full) => full.context(&format!("linking {link}")).into(),
                            None => ExplodeError::Link { link, source },
                        },
                        _ => ExplodeError::Link { link, source },
                    })?;
                let changed = changed == Linked::Changed;
                Ok((built, changed, before.filter(|_| changed)))
            },
        )
        .await
        .map_err(|e| ExplodeError::Internal(e.to_string()))??
    };
    let mut exports = Vec::new();
    for &format in &opts.exports {
        let (layout, manifest, durable) = (
            layout.clone(),
            image.manifest_digest.clone(),
            opts.finalize.durable,
        );
        let started = std::time::Instant::now();
        let report = tokio::task::spawn_blocking(move || {
            export::export(&layout, &manifest, format, durable)
        })
        .await
        .map_err(|e| ExplodeError::Internal(e.to_string()))??;
        tracing::info!(
            %format,
            bytes = report.bytes,
            status = report.status,
            seconds = started.elapsed().as_secs_f64(),
            "disk image"
        );
        exports.push(report);
    }
    Ok(ExplodeReport {
        reference: display.to_string(),
        manifest_digest: image.manifest_digest.clone(),
        index_digest: image.index_digest.clone(),
        namespace: plan.name.namespace.clone(),
        image: plan.name.image.clone(),
        tag: plan.tag.clone(),
        link: layout.link_path(&plan.name, &plan.tag),
        rootfs: layout.rootfs_dir(&image.manifest_digest),
        image_status: if built { "built" } else { "present" },
        link_changed,
        replaced,
        layers: reports,
        exports,
    })
}
