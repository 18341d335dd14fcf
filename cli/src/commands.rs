//! The subcommands. Each parses its flags into the library's option types
//! and prints a result; the work itself lives in exploder-common and
//! exploder-worker.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use exploder_args::{ExportArgs, FinalizeArgs, LimitArgs, QuotaArgs, ResolveArgs, TrustArgs};
use exploder_common::fetch::plan::plan;
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::fetch::resolve;
use exploder_common::image::Platform;
use exploder_common::limits::Limits;
use exploder_common::reference::ImageRef;
use exploder_common::store::RegistryPaths;
use exploder_worker::explode::{self, ExplodeOptions, Observer, Quiet};
use exploder_worker::finalize::FinalizeOptions;

use crate::Output;
use crate::progress::Bars;

/// `1 layer`, `3 layers`, `2 digest directories`: a count and its noun,
/// in the plural unless there is one.
pub(crate) fn count(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// The options of a command that resolves references into `store`: the
/// defaults, then where and how to fetch, then the quotas if it takes
/// them. A malformed flag is a usage error (exit code 2), reported here.
pub(crate) fn resolve_options(
    store: PathBuf,
    resolve: &ResolveArgs,
    quotas: Option<&QuotaArgs>,
) -> Result<ExplodeOptions, ExitCode> {
    let usage = |e: String| {
        eprintln!("exploder: {e}");
        ExitCode::from(2)
    };
    let mut opts = explode_defaults(store);
    opts.registry = resolve.registry.options();
    opts.platform = resolve.platform(None).map_err(usage)?;
    opts.platform_asked = resolve.platform_asked();
    opts.registry_paths = resolve.paths.paths(&[]).map_err(usage)?;
    opts.blob_source = resolve.blob_source(None).map_err(usage)?;
    if let Some(q) = quotas {
        opts.quotas = q.quotas().map_err(usage)?;
    }
    Ok(opts)
}

#[cfg(test)]
#[test]
fn counts_say_one_in_the_singular() {
    assert_eq!(count(1, "layer"), "1 layer");
    assert_eq!(count(0, "layer"), "0 layers");
    assert_eq!(count(2, "digest directory"), "2 digest directories");
}

#[derive(Args)]
pub struct ParseArgs {
    /// The reference to parse.
    reference: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
}

pub fn parse(a: ParseArgs) -> ExitCode {
    match ImageRef::parse(&a.reference) {
        Ok(r) => {
            if a.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r).expect("serializes"));
            } else {
                match &r {
                    ImageRef::Registry(x) => {
                        println!("kind:       registry");
                        println!("registry:   {}", x.registry);
                        println!("repository: {}", x.repository);
                        println!("tag:        {}", x.tag.as_deref().unwrap_or("-"));
                        println!(
                            "digest:     {}",
                            x.digest
                                .as_ref()
                                .map(|d| d.to_string())
                                .unwrap_or("-".into())
                        );
                        println!("canonical:  {x}");
                    }
                    ImageRef::OciLayout { path, tag } => {
                        println!("kind:       oci_layout");
                        println!("path:       {}", path.display());
                        println!("tag:        {}", tag.as_deref().unwrap_or("-"));
                    }
                    ImageRef::OciArchive { path, tag } => {
                        println!("kind:       oci_archive");
                        println!("path:       {}", path.display());
                        println!("tag:        {}", tag.as_deref().unwrap_or("-"));
                    }
                    ImageRef::DockerArchive { path, name } => {
                        println!("kind:       docker_archive");
                        println!("path:       {}", path.display());
                        println!("name:       {}", name.as_deref().unwrap_or("-"));
                    }
                    ImageRef::StorageDir {
                        root,
                        repository,
                        tag,
                        digest,
                    } => {
                        println!("kind:       storage_dir");
                        println!("root:       {}", root.display());
                        println!("repository: {repository}");
                        println!("tag:        {}", tag.as_deref().unwrap_or("-"));
                        println!(
                            "digest:     {}",
                            digest.as_ref().map(|d| d.to_string()).unwrap_or("-".into())
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("exploder: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Args)]
pub struct ManifestArgs {
    /// The image reference.
    reference: String,
    /// Print the image config instead of the manifest.
    #[arg(long)]
    config: bool,
    /// Print a summary (digests, layers) as JSON instead of the raw
    /// document.
    #[arg(long)]
    summary: bool,
    #[command(flatten)]
    registry: ResolveArgs,
}

pub(crate) fn parse_reference(s: &str) -> Result<ImageRef, ExitCode> {
    ImageRef::parse(s).map_err(|e| {
        eprintln!("exploder: {e}");
        ExitCode::from(2)
    })
}

pub async fn manifest(a: ManifestArgs) -> ExitCode {
    let reference = match parse_reference(&a.reference) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let opts = match resolve_options(PathBuf::new(), &a.registry, None) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let result = async {
        let plan = plan(&reference, &opts.plan_options())?;
        resolve(&plan.fetcher, &plan.target, &opts.platform).await
    }
    .await;
    match result {
        Ok(image) => {
            if a.summary {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&image).expect("serializes")
                );
            } else {
                let doc = if a.config {
                    &image.config
                } else {
                    &image.manifest
                };
                // Pretty-print JSON for people; the bytes as served are in
                // the store (manifest.json, config.json).
                match serde_json::from_slice::<serde_json::Value>(doc) {
                    Ok(v) => println!("{}", serde_json::to_string_pretty(&v).expect("serializes")),
                    Err(_) => println!("{}", String::from_utf8_lossy(doc)),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("exploder: {}: {e}", a.reference);
            ExitCode::from(1)
        }
    }
}

fn explode_defaults(store: PathBuf) -> ExplodeOptions {
    ExplodeOptions {
        store,
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        platform: Platform::default(),
        platform_asked: false,
        limits: Limits::default(),
        finalize: FinalizeOptions::default(),
        registry: RegistryOptions::default(),
        blob_source: None,
        name: None,
        registry_paths: RegistryPaths::default(),
        quotas: Default::default(),
        exports: Vec::new(),
        trust: Arc::new(exploder_trust::Trust::accept_all()),
    }
}

#[derive(Args)]
pub struct ExplodeArgs {
    /// Image references: REGISTRY/REPO[:TAG][@DIGEST] (also
    /// docker://REGISTRY/REPO[:TAG], skopeo's spelling), oci:PATH[:TAG] (an
    /// OCI layout), oci-archive:FILE[:TAG] (a tar of one),
    /// docker-archive:FILE[:REF] (docker save), file://ROOT/REPO[:TAG] (a
    /// registry's storage directory).
    #[arg(required = true)]
    references: Vec<String>,
    /// The store directory.
    #[arg(long, env = "EXPLODER_STORE", value_parser = exploder_args::store_dir)]
    store: PathBuf,
    /// Layers ingested in parallel (default: number of cores).
    #[arg(short, long, env = "EXPLODER_JOBS", value_parser = parse_jobs)]
    jobs: Option<usize>,
    #[command(flatten)]
    finalize: FinalizeArgs,
    /// Link under NAMESPACE/IMAGE instead of the reference's repository
    /// (OCI layouts default to local/<directory name>).
    #[arg(long, value_name = "NAMESPACE/IMAGE", env = "EXPLODER_NAME")]
    name: Option<String>,
    /// Skip flushing to disk before publishing (only for throwaway stores:
    /// a crash could publish empty files).
    #[arg(long, env = "EXPLODER_NO_FSYNC")]
    no_fsync: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, env = "EXPLODER_OUTPUT")]
    output: Output,
    /// Never show progress bars.
    #[arg(long, env = "EXPLODER_NO_PROGRESS")]
    no_progress: bool,
    #[command(flatten)]
    registry: ResolveArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    quotas: QuotaArgs,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    exports: ExportArgs,
}

/// `--jobs`: at least one, or nothing would ever be ingested.
fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 jobs would ingest nothing: give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

pub async fn explode(a: ExplodeArgs) -> ExitCode {
    let mut references = Vec::new();
    for r in &a.references {
        match parse_reference(r) {
            Ok(x) => references.push((r.clone(), x)),
            Err(code) => return code,
        }
    }
    let mut opts = match resolve_options(a.store.clone(), &a.registry, Some(&a.quotas)) {
        Ok(o) => o,
        Err(code) => return code,
    };
    if let Some(j) = a.jobs {
        opts.jobs = j;
    }
    opts.limits = a.limits.limits();
    opts.finalize = a.finalize.options(!a.no_fsync);
    // One name for several images would link each over the one before.
    if a.name.is_some() && references.len() > 1 {
        eprintln!(
            "exploder: --name links one image, but {} references were given: \
             explode them one at a time, each with its own --name",
            references.len()
        );
        return ExitCode::from(2);
    }
    if let Some(name) = &a.name
        && let Err(e) = exploder_common::reference::validate_repository_name(name)
    {
        eprintln!("exploder: --name: {e}");
        return ExitCode::from(2);
    }
    opts.name = a.name.clone();
    opts.exports = a.exports.formats.clone();
    match a.trust.load() {
        Ok(t) => opts.trust = Arc::new(t),
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(2);
        }
    }

    let show_bars = !a.no_progress && a.output == Output::Text && std::io::stderr().is_terminal();
    let observer: Arc<dyn Observer> = if show_bars {
        Arc::new(Bars::new())
    } else {
        Arc::new(Quiet)
    };
    // Only a JSON document needs every report until the end: text output
    // is printed as each image is done, and 10,000 references kept as
    // JSON values cost tens of MiB (issue 25's measure).
    let mut results = Vec::new();
    let mut failed = false;
    for (text, reference) in &references {
        match explode::explode(reference, text, &opts, observer.clone()).await {
            Ok(report) => {
                warn_platform_flip(&opts.store, &report);
                if a.output == Output::Text {
                    let ingested = report
                        .layers
                        .iter()
                        .filter(|l| l.status == explode::LayerStatus::Ingested)
                        .count();
                    println!(
                        "{text}: {} -> {} ({}, {ingested} ingested, image {})",
                        report.manifest_digest,
                        report.rootfs.display(),
                        count(report.layers.len(), "layer"),
                        report.image_status
                    );
                    for e in &report.exports {
                        println!(
                            "{text}: {} {} ({}, {})",
                            e.format,
                            e.path.display(),
                            crate::inventory::human_bytes(e.bytes),
                            e.status
                        );
                    }
                }
                if a.output == Output::Json {
                    results
                        .push(serde_json::json!({"reference": text, "ok": true, "result": report}));
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("exploder: {text}: {e}");
                if a.output == Output::Json {
                    results.push(serde_json::json!({"reference": text, "ok": false, "error": e.to_string(), "transient": e.is_transient()}));
                }
            }
        }
    }
    crate::finish(a.output, &results, failed)
}

/// A tag holds one image: exploding another platform of the same tag moves
/// it from one platform to the other, which nobody asking for a second
/// platform means to do. Said, not refused: moving a tag is also how a
/// deliberate switch is made.
fn warn_platform_flip(store: &std::path::Path, report: &explode::ExplodeReport) {
    let Some(before) = &report.replaced else {
        return;
    };
    let layout = exploder_common::store::StoreLayout::new(store);
    let platform = |d: &exploder_common::digest::Digest| {
        exploder_common::store::file::read(
            &layout.digest_dir(d).join("config.json"),
            exploder_common::store::file::Kind::Image,
        )
        .ok()
        .and_then(|c| Platform::of_config(&c))
    };
    if let (Some(was), Some(now)) = (platform(before), platform(&report.manifest_digest))
        && was != now
    {
        eprintln!(
            "exploder: warning: {}/{}:{} linked {before} ({was}) and now links {} ({now}): \
             a tag holds one platform; give each platform its own --name to keep both",
            report.namespace, report.image, report.tag, report.manifest_digest
        );
    }
}
