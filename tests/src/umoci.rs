//! The reference unpacker: `umoci unpack` (Debian's umoci 0.4.7).
//!
//! umoci knows neither zstd nor Docker media types: unpack
//! [`crate::Image::for_umoci`] of the image under test (same tars, gzip, OCI).
//! It runs as root, not `--rootless`, so owners, devices and xattrs are real.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A bundle unpacked by umoci, deleted on drop. Derefs to its rootfs path,
/// so it can be passed where a `&Path` to the tree is expected.
pub struct UmociBundle {
    // Only held for its Drop, which deletes the bundle.
    _dir: TempDir,
    bundle: PathBuf,
    rootfs: PathBuf,
}

impl UmociBundle {
    /// `BUNDLE/rootfs`: the tree to compare against.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The bundle directory (`config.json`, `umoci.json`, the mtree, rootfs).
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }
}

impl std::ops::Deref for UmociBundle {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.rootfs
    }
}

impl AsRef<Path> for UmociBundle {
    fn as_ref(&self) -> &Path {
        &self.rootfs
    }
}

/// `umoci unpack --image LAYOUT:TAG BUNDLE` into a fresh temporary directory;
/// panics with umoci's output if it fails.
pub fn umoci_unpack(layout: &Path, tag: &str) -> UmociBundle {
    try_umoci_unpack(layout, tag)
        .unwrap_or_else(|e| panic!("umoci unpack {}:{tag} failed: {e}", layout.display()))
}

/// umoci's unpack of `image`'s layers: the image written as a gzip'd OCI
/// layout (what Debian's umoci reads; see [`Image::for_umoci`]) and
/// unpacked. The reference every comparison is made against.
pub fn umoci_reference(image: &crate::Image) -> UmociBundle {
    let layout = tempfile::tempdir().expect("tempdir");
    image
        .for_umoci()
        .write_oci_layout(layout.path(), "ref")
        .expect("write the OCI layout");
    umoci_unpack(layout.path(), "ref")
}

/// Like [`umoci_unpack`] but returns umoci's error output instead of
/// panicking: for images umoci itself refuses.
pub fn try_umoci_unpack(layout: &Path, tag: &str) -> Result<UmociBundle, String> {
    let dir = tempfile::Builder::new()
        .prefix("umoci-")
        .tempdir()
        .expect("tempdir");
    // umoci wants to create the bundle directory itself.
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("spawn umoci (apt-get install umoci)");
    if !out.status.success() {
        return Err(format!(
            "{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(UmociBundle {
        _dir: dir,
        rootfs: bundle.join("rootfs"),
        bundle,
    })
}
