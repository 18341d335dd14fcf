//! The on-disk layout of the store, and the atomic writes that keep it
//! crash-safe.
//!
//! ```text
//! <store>/
//!   images/<namespace>/<image>/<tag>/link      "sha256:<manifest hex>"
//!   images/<namespace>/<image>/<tag>/history   one "<rfc3339> <digest>" line per change
//!   digest/sha256/<manifest hex>/rootfs/        the exploded image
//!   digest/sha256/<manifest hex>/manifest.json
//!   digest/sha256/<manifest hex>/config.json
//!   layers/sha256/<diff_id hex>/                one ingested layer (see exploder-worker)
//!   tmp/                                        staging; anything here is garbage after a crash
//! ```
//!
//! The rule that makes a crash harmless: everything is built under `tmp/`
//! and published by one `rename(2)` into place; the tag link is written last.
//! Nothing ever points at a path under `tmp/`, so a crash at any instruction
//! leaves at worst garbage there, which the next run removes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Paths of the store rooted at one directory.
#[derive(Clone, Debug)]
pub struct StoreLayout {
    root: PathBuf,
}

impl StoreLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the top-level directories if missing.
    pub fn ensure(&self) -> io::Result<()> {
        for d in ["images", "digest/sha256", "layers/sha256", "tmp"] {
            fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }

    /// Where staging directories and temporary files are made. Same file
    /// system as the rest of the store, so a rename publishes atomically.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The ingested layer with this diff_id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(diff_id.algorithm().name())
            .join(diff_id.hex())
    }

    /// The exploded image with this manifest digest.
    pub fn digest_dir(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("digest")
            .join(manifest.algorithm().name())
            .join(manifest.hex())
    }

    /// The directory holding a tag's `link` and `history`.
    pub fn tag_dir(&self, name: &ImageName, tag: &str) -> PathBuf {
        let mut p = self.root.join("images");
        for c in name.namespace.split('/') {
            p.push(c);
        }
        p.push(&name.image);
        p.push(tag);
        p
    }

    pub fn link_path(&self, name: &ImageName, tag: &str) -> PathBuf {
        self.tag_dir(name, tag).join("link")
    }

    /// Reads a tag's link, if present.
    pub fn read_link(&self, name: &ImageName, tag: &str) -> io::Result<Option<Digest>> {
        match fs::read_to_string(self.link_path(name, tag)) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Where an image is linked in the store: `images/<namespace>/<image>/`.
///
/// The image is the last component of the repository path and the namespace
/// is everything before it (`library/redis` → `library`, `redis`;
/// `team/sub/app` → `team/sub`, `app`). A single-component repository (only
/// possible outside Docker Hub) gets the namespace `library`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    pub namespace: String,
    pub image: String,
}

impl ImageName {
    pub fn from_repository(repository: &str) -> ImageName {
        match repository.rsplit_once('/') {
            Some((ns, image)) => ImageName {
                namespace: ns.to_string(),
                image: image.to_string(),
            },
            None => ImageName {
                namespace: "library".to_string(),
                image: repository.to_string(),
            },
        }
    }
}

/// Writes `data` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync the directory.
pub fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Unique per call: threads of one process (a worker's concurrent jobs)
    // may replace the same file at once.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Appends one line to a file and syncs it. Used for histories, where a
/// torn last line after a crash is acceptable and detectable.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// Fsyncs a directory so that renames into it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_everything_before_the_last_component() {
        assert_eq!(
            ImageName::from_repository("library/redis"),
            ImageName {
                namespace: "library".into(),
                image: "redis".into()
            }
        );
        assert_eq!(
            ImageName::from_repository("team/sub/app"),
            ImageName {
                namespace: "team/sub".into(),
                image: "app".into()
            }
        );
        assert_eq!(ImageName::from_repository("app").namespace, "library");
    }

    #[test]
    fn concurrent_atomic_writes_never_leave_an_empty_or_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = std::sync::Arc::new(dir.path().join("link"));
        write_file_atomic(&p, b"sha256:start").unwrap();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        write_file_atomic(&p, format!("sha256:{t}-{i}").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..2000 {
            let s = fs::read_to_string(&*p).unwrap();
            assert!(s.starts_with("sha256:"), "read {s:?}");
        }
        for w in writers {
            w.join().unwrap();
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/link");
        write_file_atomic(&p, b"one").unwrap();
        write_file_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}

/// The current time as RFC 3339 UTC with seconds (`2026-11-22T15:04:05Z`),
/// for history files and records.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, Howard Hinnant).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
