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
//!
//! Rootless stores: a tree finalized without root has the worker's owner
//! on every file and no file capabilities; what the layers recorded is in
//! its `recorded` file (see [`crate::finalize::recorded`]). The tool then
//! runs under `fakeroot` (Debian's package of that name), after `chown`
//! and `setfattr --restore` (package `attr`) gave every path its recorded
//! owner and xattrs inside the same fakeroot session: the tools see what
//! the layers recorded, and nothing in the store changes (fakeroot keeps
//! both in its own table; `FAKEROOTDONTTRYCHOWN` keeps even a root export
//! from touching the shared files). fakeroot hides the files' real xattrs,
//! so all of them are restored from the record.

mod ext4;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;

use exploder_common::digest::Digest;
use exploder_common::store::StoreLayout;
use serde::Serialize;

use crate::finalize::recorded::{self, RecordedTree};
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
    #[error(
        "{format}: the image was exploded without root, and giving its files their recorded \
         owners and xattrs needs {tool} (install the Debian package {package})"
    )]
    MissingRootlessTool {
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
    let rootfs = layout.rootfs_dir(manifest);
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
    let recorded =
        recorded::read(&dir).map_err(io(format!("reading what {} recorded", dir.display())))?;
    let mut cmd = match &recorded {
        None => Command::new(tool),
        Some(recorded) => {
            for (tool, package) in [("fakeroot", "fakeroot"), ("setfattr", "attr")] {
                if !on_path(tool) {
                    return Err(ExportError::MissingRootlessTool {
                        format,
                        tool,
                        package,
                    });
                }
            }
            under_fakeroot(tool, &rootfs, recorded, &staging.path)
                .map_err(io("writing the recorded owners and xattrs for fakeroot"))?
        }
    };
    let (root_uid, root_gid) = recorded
        .as_ref()
        .and_then(|r| r.get(b"".as_slice()))
        .map_or((tree.root_uid, tree.root_gid), |r| (r.uid, r.gid));
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
                    root_uid,
                    root_gid
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

/// Runs `tool` (its arguments appended by the caller) in a fakeroot
/// session in which every path of `rootfs` first gets its recorded owner
/// (root's where none is recorded) and xattrs. The paths go to `chown`
/// through `xargs -0`, one list per owner; the xattrs to `setfattr
/// --restore` as a `getfattr --dump`; both written in `staging`.
fn under_fakeroot(
    tool: &str,
    rootfs: &Path,
    recorded: &RecordedTree,
    staging: &Path,
) -> std::io::Result<Command> {
    use std::os::unix::ffi::OsStrExt;
    let lists = staging.join("owners");
    std::fs::create_dir(&lists)?;
    let mut by_owner: std::collections::BTreeMap<(u32, u32), Vec<u8>> = Default::default();
    let mut dump = Vec::new();
    for (path, r) in recorded {
        let list = by_owner.entry((r.uid, r.gid)).or_default();
        list.extend_from_slice(rootfs.as_os_str().as_bytes());
        if !path.is_empty() {
            list.push(b'/');
            list.extend_from_slice(path);
        }
        list.push(0);
        if !r.xattrs.is_empty() {
            // Relative to the rootfs, where the script restores them.
            dump.extend_from_slice(b"# file: ");
            dump.extend_from_slice(&dump_quote(if path.is_empty() { b"." } else { path }));
            dump.push(b'\n');
            for (name, value) in &r.xattrs {
                dump.extend_from_slice(&dump_quote(name));
                dump.extend_from_slice(format!("=0x{}\n", hex::encode(value)).as_bytes());
            }
            dump.push(b'\n');
        }
    }
    for ((uid, gid), list) in &by_owner {
        std::fs::write(lists.join(format!("{uid}:{gid}")), list)?;
    }
    let xattrs = staging.join("xattrs");
    std::fs::write(&xattrs, &dump)?;
    // Paths no layer recorded (parents a layer only implied) are root's,
    // as in a store built as root.
    const SCRIPT: &str = r#"rootfs=$1 lists=$2 xattrs=$3; shift 3
chown -R -h 0:0 -- "$rootfs" || exit 1
for list in "$lists"/*; do
    [ -f "$list" ] || continue
    xargs -0 -r chown -h -- "${list##*/}" < "$list" || exit 1
done
if [ -s "$xattrs" ]; then
    (cd "$rootfs" && setfattr -h --restore="$xattrs") || exit 1
fi
exec "$@""#;
    let mut cmd = Command::new("fakeroot");
    cmd.env("FAKEROOTDONTTRYCHOWN", "1")
        .args(["--", "sh", "-c", SCRIPT, "sh"])
        .arg(std::path::absolute(rootfs)?)
        .arg(std::path::absolute(&lists)?)
        .arg(std::path::absolute(&xattrs)?)
        .arg(tool);
    Ok(cmd)
}

/// A path or name as `getfattr --dump` writes it and `setfattr --restore`
/// reads it: every byte that is not plain printable ASCII, and the
/// backslash and `=`, as a three-digit octal escape.
fn dump_quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'\\' && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        }
    }
    out
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
    fn dump_names_are_quoted_as_getfattr_does() {
        assert_eq!(dump_quote(b"usr/bin/ping"), b"usr/bin/ping");
        assert_eq!(dump_quote(b"a b\n=\\\xff"), b"a\\040b\\012\\075\\134\\377");
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
