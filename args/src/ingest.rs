//! How layers are ingested and images assembled and exported: the limits
//! on untrusted layers, namespace quotas, how files reach a rootfs, the
//! disk images written beside it, and the room a worker keeps free.

use std::path::Path;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use exploder_common::limits::Limits;
use exploder_common::store::DiskFormat;
use exploder_common::store::quota::{Quotas, parse_size};
use exploder_worker::finalize::{FinalizeOptions, Materialize, WriteThreads};
use exploder_worker::space::StoreSpace;

/// Limits applied to each untrusted layer.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Maximum uncompressed bytes of one layer (a size: bytes, or 10GiB,
    /// 500MB; every size flag takes the same units).
    #[arg(long, env = "EXPLODER_MAX_LAYER_BYTES", value_name = "SIZE", value_parser = parse_size, default_value_t = Limits::default().max_layer_bytes)]
    max_layer_bytes: u64,
    /// Maximum compressed bytes of one layer blob.
    #[arg(long, env = "EXPLODER_MAX_COMPRESSED_BYTES", value_name = "SIZE", value_parser = parse_size, default_value_t = Limits::default().max_compressed_bytes)]
    max_compressed_bytes: u64,
    /// Maximum tar entries in one layer.
    #[arg(long, env = "EXPLODER_MAX_ENTRIES", default_value_t = Limits::default().max_entries)]
    max_entries: u64,
    /// Maximum length of a path or link target in a layer.
    #[arg(long, env = "EXPLODER_MAX_PATH_LEN", default_value_t = Limits::default().max_path_len)]
    max_path_len: usize,
    /// Maximum bytes of tar metadata (header, PAX records, GNU long names)
    /// in front of one entry; they are held in memory whole.
    #[arg(long, env = "EXPLODER_MAX_HEADER_BYTES", value_name = "SIZE", value_parser = parse_size, default_value_t = Limits::default().max_header_bytes)]
    max_header_bytes: u64,
    /// Maximum symlinks followed resolving one path.
    #[arg(long, env = "EXPLODER_MAX_SYMLINK_HOPS", default_value_t = Limits::default().max_symlink_hops)]
    max_symlink_hops: u32,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_layer_bytes: self.max_layer_bytes,
            max_compressed_bytes: self.max_compressed_bytes,
            max_entries: self.max_entries,
            max_path_len: self.max_path_len,
            max_header_bytes: self.max_header_bytes,
            max_symlink_hops: self.max_symlink_hops,
        }
    }
}

/// `--quota`.
#[derive(Args, Clone, Debug, Default)]
pub struct QuotaArgs {
    /// Storage quota of a namespace: NAMESPACE=SIZE (e.g. team=50GiB); an
    /// image that would take it over (counting the layers of what the
    /// namespace links and has in flight, once each) is refused.
    /// Repeatable, or comma-separated in EXPLODER_QUOTA.
    #[arg(
        long = "quota",
        value_name = "NAMESPACE=SIZE",
        env = "EXPLODER_QUOTA",
        value_delimiter = ','
    )]
    quotas: Vec<String>,
}

impl QuotaArgs {
    pub fn quotas(&self) -> Result<Quotas, String> {
        Quotas::parse(&self.quotas)
    }
}

/// How the store is written: layers ingested, an image's rootfs
/// assembled from the layer store.
#[derive(Args, Clone, Debug)]
pub struct FinalizeArgs {
    /// How files get from the layer store into image trees.
    #[arg(long, value_enum, default_value_t, env = "EXPLODER_MATERIALIZE")]
    materialize: MaterializeArg,
    /// Create device nodes found in layers (off: they are recorded in
    /// image.json and skipped; a block device in a served tree is a hole
    /// into the host).
    #[arg(long, env = "EXPLODER_ALLOW_DEVICES")]
    allow_devices: bool,
    /// Threads creating the files, symlinks and hardlinks of one layer,
    /// and the inodes of one image at finalize: a number (1: the tar
    /// reader alone), or auto (the default): the reader alone until creating an inode
    /// proves slow (over 60 µs, as on a busy disk or a network file
    /// system), then one writer per core.
    #[arg(long, env = "EXPLODER_WRITE_THREADS", value_name = "N|auto", default_value = "auto", value_parser = parse_write_threads)]
    write_threads: WriteThreads,
    /// Give every layer its own copy of each file. By default each
    /// regular file's content is stored once across every layer and image
    /// (in <store>/objects/, keyed by content, owner, mode, times and
    /// xattrs) and hardlinked where it is used, so a rebuilt image costs
    /// only what changed.
    #[arg(long, env = "EXPLODER_NO_FILE_OBJECTS")]
    no_file_objects: bool,
}

impl FinalizeArgs {
    /// The options; `durable` says whether to flush before publishing.
    pub fn options(&self, durable: bool) -> FinalizeOptions {
        FinalizeOptions {
            materialize: self.materialize.0,
            allow_devices: self.allow_devices,
            durable,
            write_threads: self.write_threads,
            file_objects: !self.no_file_objects,
        }
    }
}

/// `--write-threads`: `auto` or 1 to 256.
fn parse_write_threads(s: &str) -> Result<WriteThreads, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(WriteThreads::auto());
    }
    match s.parse::<u16>() {
        Ok(n @ 1..=256) => Ok(WriteThreads::Fixed(n.into())),
        _ => Err(format!(
            "{s:?} is not auto or a number of threads from 1 to 256"
        )),
    }
}

/// `--store-min-free`, for workers.
#[derive(Args, Clone, Debug)]
pub struct SpaceArgs {
    /// Free space the store must keep for this worker to start ingesting a
    /// layer or finalizing an image, and to report ready: below it, jobs
    /// wait in the first backoff tier (their retries untouched) and
    /// /readyz says the store is full. After a write runs out of space,
    /// the store counts as full until it has this much more room than the
    /// failed work had. 0: no floor (a job that runs out of space is
    /// retried like any transient failure). A size: 500MiB, 10GiB.
    #[arg(
        long,
        env = "EXPLODER_STORE_MIN_FREE",
        value_name = "SIZE",
        default_value = "1GiB",
        value_parser = parse_size
    )]
    store_min_free: u64,
}

impl SpaceArgs {
    /// How this worker judges the room of the store at `store`.
    pub fn space(&self, store: &Path) -> StoreSpace {
        StoreSpace::new(store, self.store_min_free)
    }
}

/// [`Materialize`] as a flag value; the engine's enum knows nothing of
/// clap.
#[derive(Clone, Copy, Debug, Default)]
struct MaterializeArg(Materialize);

impl ValueEnum for MaterializeArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            MaterializeArg(Materialize::Hardlink),
            MaterializeArg(Materialize::Copy),
            MaterializeArg(Materialize::Reflink),
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self.0 {
            Materialize::Hardlink => PossibleValue::new("hardlink").help(
                "Hardlink each file (like an OSTree checkout): no data is copied and images \
                 sharing a layer share its files. The trees are meant to be read-only: writing \
                 to a file in one image changes it in all",
            ),
            Materialize::Copy => PossibleValue::new("copy")
                .help("Copy each file: independent trees, at the cost of space and time"),
            Materialize::Reflink => PossibleValue::new("reflink").help(
                "Reflink (FICLONE) each file where the file system can (btrfs, XFS), falling \
                 back to a copy",
            ),
        })
    }
}

/// `--export`, for `explode` and `enqueue`.
#[derive(Args, Clone, Debug, Default)]
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

fn disk_format() -> impl TypedValueParser<Value = DiskFormat> {
    PossibleValuesParser::new(DiskFormat::ALL.map(DiskFormat::as_str))
        .map(|s| s.parse::<DiskFormat>().expect("a possible value"))
}
