//! Disk images of an exploded image: `digest/sha256/<hex>/rootfs.ext4`,
//! `rootfs.erofs`, `rootfs.squashfs`, built from its `rootfs/` with the
//! standard host tools (`mkfs.ext4 -d` from e2fsprogs, `mkfs.erofs` from
//! erofs-utils, `mksquashfs` from squashfs-tools), found on the host's
//! PATH, never inside an image.
//!
//! Like everything in the store, an image file is built in `tmp/` and
//! published by one rename: no partial file ever has its final name, and
//! an existing one is complete and not built again.
//!
//! Reproducible: the same image exported twice is the same bytes. The
//! file system UUID (and ext4's directory hash seed) come from the
//! manifest digest; every time a tool would stamp "now" is pinned to the
//! second after the newest mtime in the tree (`E2FSPROGS_FAKE_TIME`, erofs' and
//! squashfs' build times; ext4's atimes and ctimes, which `mkfs.ext4 -d`
//! copies from the tree, are pinned afterwards); file times, owners,
//! modes, xattrs, hardlinks, symlinks and special files come from the
//! tree. What a format cannot carry: ext4 adds `lost+found`; e2fsprogs
//! 1.47.0's `-d` and squashfs keep whole seconds of mtimes.

mod ext4;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;

use exploder_common::digest::Digest;
use exploder_common::store::StoreLayout;
use serde::Serialize;

use crate::layer::{Staging, io_is_transient};

pub use exploder_common::store::DiskFormat as Format;

/// The host program that builds a format, and the Debian package it is in.
fn tool(format: Format) -> (&'static str, &'static str) {
    match format {
        Format::Ext4 => ("mkfs.ext4", "e2fsprogs"),
        Format::Erofs => ("mkfs.erofs", "erofs-utils"),
        Format::Squashfs => ("mksquashfs", "squashfs-tools"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{format}: {tool} is not installed (install the Debian package {package}, or put {tool} \
         on PATH)"
    )]
    MissingTool {
        format: Format,
        tool: &'static str,
        package: &'static str,
    },
    #[error("{0} is not exploded in this store (no complete digest directory)")]
    NotExploded(Digest),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}) building the {format} image: {stderr}")]
    Tool {
        format: Format,
        tool: &'static str,
        status: String,
        stderr: String,
    },
}

impl ExportError {
    pub fn is_transient(&self) -> bool {
        match self {
            ExportError::Io { source, .. } => io_is_transient(source),
            _ => false,
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExportError {
    let context = context.into();
    move |source| ExportError::Io { context, source }
}

/// What one export did.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub format: Format,
    pub path: PathBuf,
    /// The image file's size.
    pub bytes: u64,
    /// `built` now, or already `present`.
    pub status: &'static str,
}

/// The image files an exploded image has, with their sizes.
pub fn exported(layout: &StoreLayout, manifest: &Digest) -> Vec<(Format, u64)> {
    let dir = layout.digest_dir(manifest);
    Format::ALL
        .into_iter()
        .filter_map(|f| {
            let len = std::fs::metadata(dir.join(f.file_name())).ok()?.len();
            Some((f, len))
        })
        .collect()
}

/// Whether `tool` is a program on PATH (checked before building, so a
/// missing one is a clear error rather than a failed spawn).
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(tool)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// A UUID derived from the manifest digest (and a purpose, so the file
/// system UUID and the hash seed differ): the same image, the same bytes.
fn derived_uuid(manifest: &Digest, purpose: &str) -> String {
    let h = Digest::sha256_of(format!("exploder {purpose} {manifest}").as_bytes());
    let mut b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h.hex()[2 * i..2 * i + 2], 16).expect("hex digits"))
        .collect();
    // A version 4 / RFC 4122 variant layout, as tools expect.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Builds `format` for the exploded image `manifest` unless it exists.
/// Blocking. `durable`: fsync before publishing, as the rest of the store.
pub fn export(
    layout: &StoreLayout,
    manifest: &Digest,
    format: Format,
    durable: bool,
) -> Result<ExportReport, ExportError> {
    let dir = layout.digest_dir(manifest);
    let dest = dir.join(format.file_name());
    let report = |status, path: &Path| -> Result<ExportReport, ExportError> {
        let bytes = std::fs::metadata(path)
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        Ok(ExportReport {
            format,
            path: path.to_path_buf(),
            bytes,
            status,
        })
    };
    if dest.is_file() {
        // Published by rename: complete.
        return report("present", &dest);
    }
    let rootfs = dir.join("rootfs");
    if !dir.join("image.json").is_file() || !rootfs.is_dir() {
        return Err(ExportError::NotExploded(manifest.clone()));
    }
    let (tool, package) = tool(format);
    if !on_path(tool) {
        return Err(ExportError::MissingTool {
            format,
            tool,
            package,
        });
    }
    let tree = tree::Summary::of(&rootfs).map_err(io(format!("reading {}", rootfs.display())))?;
    let staging = Staging::new(
        &layout.tmp_dir(),
        &format!("export-{}-{}", format.as_str(), manifest.hex()),
    )
    .map_err(io("creating a staging directory"))?;
    let image = staging.path.join(format.file_name());
    let mut cmd = Command::new(tool);
    let uuid = derived_uuid(manifest, "uuid");
    // The second after the newest mtime: erofs-utils clamps mtimes to its
    // build time, and none may be clamped (not even its nanoseconds).
    let build_time = tree.newest_mtime.max(0) + 1;
    let time = build_time.to_string();
    match format {
        Format::Ext4 => {
            let size = ext4::Size::for_tree(&tree);
            cmd.env("E2FSPROGS_FAKE_TIME", &time)
                .args([
                    "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
                ])
                .args(["-O", "^has_journal,^resize_inode"])
                .arg("-N")
                .arg(size.inodes.to_string())
                .arg("-U")
                .arg(&uuid)
                .arg("-E")
                .arg(format!(
                    "hash_seed={},nodiscard,root_owner={}:{}",
                    derived_uuid(manifest, "hash seed"),
                    tree.root_uid,
                    tree.root_gid
                ))
                .arg("-d")
                .arg(&rootfs)
                .arg(&image)
                .arg(format!("{}k", size.blocks * 4));
        }
        Format::Erofs => {
            // SOURCE_DATE_EPOCH fixes the build time; erofs-utils 1.5 also
            // clamps newer mtimes to it, and none is newer than this one.
            cmd.env("SOURCE_DATE_EPOCH", &time)
                .args(["--quiet", "-U", &uuid])
                .arg(&image)
                .arg(&rootfs);
        }
        Format::Squashfs => {
            cmd.arg(&rootfs).arg(&image).args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-mkfs-time",
                &time,
            ]);
        }
    }
    let out = cmd.output().map_err(io(format!("running {tool}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = format!("{stderr}{stdout}");
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(ExportError::Tool {
            format,
            tool,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    if format == Format::Ext4 {
        ext4::pin_times(&image, build_time, tree.root_mtime)
            .map_err(io(format!("pinning the times of {}", image.display())))?;
    }
    exploder_common::failpoint::hit("export.before-publish");
    if durable {
        std::fs::File::open(&image)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing {}", image.display())))?;
    }
    std::fs::rename(&image, &dest).map_err(io(format!("publishing {}", dest.display())))?;
    if durable {
        exploder_common::store::sync_dir(&dir).map_err(io(format!("syncing {}", dir.display())))?;
    }
    report("built", &dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_derived_from_the_digest_and_purpose() {
        let d = Digest::sha256_of(b"manifest");
        let a = derived_uuid(&d, "uuid");
        assert_eq!(a, derived_uuid(&d, "uuid"));
        assert_ne!(a, derived_uuid(&d, "hash seed"));
        assert_ne!(a, derived_uuid(&Digest::sha256_of(b"other"), "uuid"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let e = ExportError::MissingTool {
            format: Format::Erofs,
            tool: "mkfs.erofs",
            package: "erofs-utils",
        };
        assert!(e.to_string().contains("erofs-utils"), "{e}");
        assert!(!on_path("no-such-tool-exploder"));
    }
}
