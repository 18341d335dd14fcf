//! Command-line arguments both binaries that run handlers share
//! (`exploder explode` and `exploder-worker`), so a limit is spelled the
//! same way, with the same variable, wherever layers are ingested.

use std::time::Duration;

use clap::Args;
use exploder_common::limits::Limits;

/// Limits applied to each untrusted layer.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Maximum uncompressed bytes of one layer.
    #[arg(long, env = "EXPLODER_MAX_LAYER_BYTES", default_value_t = Limits::default().max_layer_bytes)]
    max_layer_bytes: u64,
    /// Maximum compressed bytes of one layer blob.
    #[arg(long, env = "EXPLODER_MAX_COMPRESSED_BYTES", default_value_t = Limits::default().max_compressed_bytes)]
    max_compressed_bytes: u64,
    /// Maximum tar entries in one layer.
    #[arg(long, env = "EXPLODER_MAX_ENTRIES", default_value_t = Limits::default().max_entries)]
    max_entries: u64,
    /// Maximum length of a path or link target in a layer.
    #[arg(long, env = "EXPLODER_MAX_PATH_LEN", default_value_t = Limits::default().max_path_len)]
    max_path_len: usize,
    /// Maximum bytes of tar metadata (header, PAX records, GNU long names)
    /// in front of one entry; they are held in memory whole.
    #[arg(long, env = "EXPLODER_MAX_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes)]
    max_header_bytes: u64,
    /// Maximum symlinks followed resolving one path.
    #[arg(long, env = "EXPLODER_MAX_SYMLINK_HOPS", default_value_t = Limits::default().max_symlink_hops)]
    max_symlink_hops: u32,
}

impl LimitArgs {
    pub fn to_limits(&self) -> Limits {
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

/// How the handlers write to the store.
#[derive(Args, Clone, Debug)]
pub struct WriteArgs {
    /// Threads creating the files, symlinks and hardlinks of one layer
    /// (default: number of cores; 1: the tar reader alone). Creating
    /// inodes, more than decompression, bounds ingest on most disks.
    #[arg(long, env = "EXPLODER_WRITE_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    write_threads: Option<u16>,
}

impl WriteArgs {
    pub fn write_threads(&self) -> usize {
        self.write_threads
            .map(usize::from)
            .unwrap_or_else(crate::finalize::default_write_threads)
    }
}

/// A duration flag: `30s`, `5m`, `2h`, `500ms` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}: units are ms, s, m, h")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").is_err());
    }
}
