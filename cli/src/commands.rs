//! The subcommands. Each parses its flags into the library's option types
//! and prints a result; the work itself lives in exploder-common and
//! exploder-worker.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use exploder_common::fetch::plan::plan;
use exploder_common::fetch::registry::RegistryOptions;
use exploder_common::fetch::resolve;
use exploder_common::image::Platform;
use exploder_common::limits::Limits;
use exploder_common::reference::ImageRef;
use exploder_common::store::{DiskFormat, RegistryPaths};
use exploder_producer::args::RegistryPathArgs;
use exploder_worker::explode::{self, ExplodeOptions, Observer, Quiet};
use exploder_worker::finalize::{FinalizeOptions, Materialize};

use crate::Output;
use crate::progress::Bars;

/// How to reach registries, and where their images are linked.
#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Use plain HTTP for this registry (host or host:port; repeatable).
    /// Loopback registries (127.0.0.0/8, localhost, [::1]) always use HTTP.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "EXPLODER_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Docker config.json to read credentials from (default
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE", env = "EXPLODER_REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// Registry user name (with --password).
    #[arg(long, env = "EXPLODER_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Registry password or token (with --username).
    #[arg(long, env = "EXPLODER_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Bearer token to send as is.
    #[arg(long, env = "EXPLODER_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    /// Platform to pick from a multi-platform image: OS/ARCH[/VARIANT].
    #[arg(long, default_value = "linux/amd64", env = "EXPLODER_PLATFORM")]
    platform: Platform,
    /// Read registry references from this registry storage directory
    /// (file:///var/lib/registry) instead of the HTTP API.
    #[arg(long, value_name = "URL", env = "EXPLODER_BLOB_SOURCE")]
    blob_source: Option<String>,
    #[command(flatten)]
    registry_paths: RegistryPathArgs,
}

impl RegistryArgs {
    /// Puts where and how to fetch into `opts`; a malformed flag is a usage
    /// error (exit code 2), reported here.
    pub(crate) fn apply(&self, opts: &mut ExplodeOptions) -> Result<(), ExitCode> {
        opts.registry = RegistryOptions {
            insecure_registries: self.insecure_registries.clone(),
            auth_file: self.authfile.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            token: self.registry_token.clone(),
            max_attempts: 0,
        };
        opts.platform = self.platform.clone();
        opts.registry_paths = self.registry_paths.to_paths(&[]).map_err(|e| {
            eprintln!("exploder: {e}");
            ExitCode::from(2)
        })?;
        opts.blob_source = match &self.blob_source {
            None => None,
            Some(s) => match s.strip_prefix("file://") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    eprintln!(
                        "exploder: --blob-source {s:?}: expected file:///path/to/registry/storage"
                    );
                    return Err(ExitCode::from(2));
                }
            },
        };
        Ok(())
    }
}

#[derive(Args)]
pub struct ParseArgs {
    /// The reference to parse.
    reference: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
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
    registry: RegistryArgs,
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
    let mut opts = explode_defaults(PathBuf::new());
    if let Err(code) = a.registry.apply(&mut opts) {
        return code;
    }
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

/// `--export`'s values, listed in `--help`.
fn disk_format() -> impl clap::builder::TypedValueParser<Value = DiskFormat> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(DiskFormat::ALL.map(DiskFormat::as_str))
        .map(|s| s.parse::<DiskFormat>().expect("a possible value"))
}

pub(crate) fn explode_defaults(store: PathBuf) -> ExplodeOptions {
    ExplodeOptions {
        store,
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        platform: Platform::default(),
        limits: Limits::default(),
        finalize: FinalizeOptions::default(),
        registry: RegistryOptions::default(),
        blob_source: None,
        name: None,
        registry_paths: RegistryPaths::default(),
        quotas: Default::default(),
        exports: Vec::new(),
    }
}

#[derive(Args)]
pub struct ExplodeArgs {
    /// Image references: REGISTRY/REPO[:TAG][@DIGEST], oci:PATH[:TAG],
    /// file://ROOT/REPO[:TAG].
    #[arg(required = true)]
    references: Vec<String>,
    /// The store directory.
    #[arg(long, env = "EXPLODER_STORE")]
    store: PathBuf,
    /// Layers ingested in parallel (default: number of cores).
    #[arg(short, long, env = "EXPLODER_JOBS")]
    jobs: Option<usize>,
    /// How files get from the layer store into the image rootfs.
    #[arg(long, value_enum, default_value_t, env = "EXPLODER_MATERIALIZE")]
    materialize: Materialize,
    /// Create device nodes found in layers (off: they are recorded in
    /// image.json and skipped).
    #[arg(long, env = "EXPLODER_ALLOW_DEVICES")]
    allow_devices: bool,
    /// Link under NAMESPACE/IMAGE instead of the reference's repository
    /// (OCI layouts default to local/<directory name>).
    #[arg(long, value_name = "NAMESPACE/IMAGE")]
    name: Option<String>,
    /// Skip flushing to disk before publishing (only for throwaway stores:
    /// a crash could publish empty files).
    #[arg(long)]
    no_fsync: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// Never show progress bars.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    limits: exploder_worker::args::LimitArgs,
    #[command(flatten)]
    write: exploder_worker::args::WriteArgs,
    #[command(flatten)]
    quotas: exploder_producer::args::QuotaArgs,
    #[command(flatten)]
    exports: ExportArgs,
}

/// `--export`, for `explode` and `enqueue`.
#[derive(Args, Clone)]
pub struct ExportArgs {
    /// Also write disk images of each image beside its rootfs:
    /// rootfs.ext4, rootfs.erofs, rootfs.squashfs (any of them, comma
    /// separated). Built with the host's mkfs.ext4, mkfs.erofs and
    /// mksquashfs; reproducible, and not rebuilt when present. In the
    /// fleet, an export job each once the image is linked.
    #[arg(
        long = "export",
        value_name = "FORMAT",
        env = "EXPLODER_EXPORT",
        value_delimiter = ',',
        value_parser = disk_format()
    )]
    pub formats: Vec<DiskFormat>,
}

pub async fn explode(a: ExplodeArgs) -> ExitCode {
    let mut references = Vec::new();
    for r in &a.references {
        match parse_reference(r) {
            Ok(x) => references.push((r.clone(), x)),
            Err(code) => return code,
        }
    }
    let mut opts = explode_defaults(a.store.clone());
    if let Err(code) = a.registry.apply(&mut opts) {
        return code;
    }
    if let Some(j) = a.jobs {
        opts.jobs = j.max(1);
    }
    opts.limits = a.limits.to_limits();
    opts.finalize = FinalizeOptions {
        materialize: a.materialize,
        allow_devices: a.allow_devices,
        durable: !a.no_fsync,
        write_threads: a.write.write_threads(),
    };
    if let Some(name) = &a.name
        && let Err(e) = exploder_common::reference::validate_repository_name(name)
    {
        eprintln!("exploder: --name: {e}");
        return ExitCode::from(2);
    }
    opts.name = a.name.clone();
    opts.exports = a.exports.formats.clone();
    opts.quotas = match a.quotas.to_quotas() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("exploder: {e}");
            return ExitCode::from(2);
        }
    };

    let show_bars = !a.no_progress && a.output == Output::Text && std::io::stderr().is_terminal();
    let observer: Arc<dyn Observer> = if show_bars {
        Arc::new(Bars::new())
    } else {
        Arc::new(Quiet)
    };
    let mut results = Vec::new();
    let mut failed = false;
    for (text, reference) in &references {
        match explode::explode(reference, text, &opts, observer.clone()).await {
            Ok(report) => {
                if a.output == Output::Text {
                    let ingested = report
                        .layers
                        .iter()
                        .filter(|l| l.status == explode::LayerStatus::Ingested)
                        .count();
                    println!(
                        "{text}: {} -> {} ({} layers, {ingested} ingested, image {})",
                        report.manifest_digest,
                        report.rootfs.display(),
                        report.layers.len(),
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
                results.push(serde_json::json!({"reference": text, "ok": true, "result": report}));
            }
            Err(e) => {
                failed = true;
                eprintln!("exploder: {text}: {e}");
                results.push(serde_json::json!({"reference": text, "ok": false, "error": e.to_string(), "transient": e.is_transient()}));
            }
        }
    }
    crate::finish(a.output, &results, failed)
}
