//! The disk image formats an exploded image can be exported to, and the
//! file each is in: `digest/sha256/<hex>/rootfs.<format>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A disk image format (`--export`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// An ext4 file system a VM boots from (no journal, no reserved blocks).
    Ext4,
    /// An erofs image: read-only, what composefs, Kata and nydus mount.
    Erofs,
    /// A squashfs image: what Apptainer/Singularity sites run.
    Squashfs,
}

impl DiskFormat {
    pub const ALL: [DiskFormat; 3] = [DiskFormat::Ext4, DiskFormat::Erofs, DiskFormat::Squashfs];

    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Ext4 => "ext4",
            DiskFormat::Erofs => "erofs",
            DiskFormat::Squashfs => "squashfs",
        }
    }

    /// `rootfs.<format>`, beside `rootfs/` in the digest directory.
    pub fn file_name(self) -> String {
        format!("rootfs.{}", self.as_str())
    }

    /// A list as written in flags, config files and annotations:
    /// `ext4,erofs` (spaces allowed, duplicates dropped, order kept).
    pub fn parse_list(text: &str) -> Result<Vec<DiskFormat>, String> {
        let mut out = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let f: DiskFormat = item.parse()?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DiskFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DiskFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!("unknown disk image format {s:?}: expected ext4, erofs or squashfs")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_written_everywhere() {
        assert_eq!(
            DiskFormat::parse_list(" ext4, squashfs,ext4 ").unwrap(),
            [DiskFormat::Ext4, DiskFormat::Squashfs]
        );
        assert!(DiskFormat::parse_list("ext4,zip").is_err());
        assert!(DiskFormat::parse_list("").unwrap().is_empty());
        assert_eq!(DiskFormat::Erofs.file_name(), "rootfs.erofs");
    }
}
