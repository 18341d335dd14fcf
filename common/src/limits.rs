//! Resource limits applied to untrusted layers.
//!
//! Every limit is configurable (flags and `EXPLODER_*` variables in the
//! binaries); the defaults are generous enough for real images, including
//! multi-GiB CUDA and ML layers, while still stopping a decompression bomb.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum uncompressed bytes of one layer (the tar stream).
    pub max_layer_bytes: u64,
    /// Maximum compressed bytes of one layer blob.
    pub max_compressed_bytes: u64,
    /// Maximum number of tar entries in one layer.
    pub max_entries: u64,
    /// Maximum length in bytes of one entry path (and of a link target).
    pub max_path_len: usize,
    /// Maximum bytes of tar metadata before one entry: its header plus the
    /// PAX records and GNU long names in front of it, which a tar parser
    /// must hold in memory whole.
    pub max_header_bytes: u64,
    /// Maximum number of symlinks followed while resolving one path inside
    /// a rootfs (Linux allows 40).
    pub max_symlink_hops: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 64 << 30,
            max_compressed_bytes: 32 << 30,
            max_entries: 4_000_000,
            max_path_len: 4096,
            max_header_bytes: 1 << 20,
            max_symlink_hops: 40,
        }
    }
}
