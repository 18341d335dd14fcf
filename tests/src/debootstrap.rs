//! A real Debian rootfs (`debootstrap --variant=minbase` of this machine's
//! release), for an image with everything a distribution has: hardlinks,
//! setuid binaries, device nodes, absolute symlinks, thousands of files.
//!
//! It takes about 30 s to build, so it is cached in the cargo target dir
//! (`target/test-cache/debootstrap-<release>-<arch>/rootfs`) and survives
//! between runs. It is built in a temporary directory beside the cache and
//! renamed into place, so a killed build never leaves a half cache; a file
//! lock makes concurrent tests wait for one build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run_checked, target_dir};

/// Path of the cached minbase rootfs, building it first if needed. Panics if
/// debootstrap fails (it needs root and the Debian mirror of apt's sources).
pub fn debootstrap_rootfs() -> PathBuf {
    let release = os_release_codename();
    let arch = String::from_utf8(run_checked(
        Command::new("dpkg").arg("--print-architecture"),
    ))
    .expect("dpkg arch")
    .trim()
    .to_string();
    let cache = target_dir().join("test-cache");
    std::fs::create_dir_all(&cache).expect("create test-cache");
    let done = cache.join(format!("debootstrap-{release}-{arch}"));
    let rootfs = done.join("rootfs");

    let _lock = crate::lock_file(&cache.join("debootstrap.lock"));
    if rootfs.is_dir() {
        return rootfs;
    }
    remove_stale_builds(&cache);

    let build = tempfile::Builder::new()
        .prefix("debootstrap-build-")
        .tempdir_in(&cache)
        .expect("tempdir in test-cache");
    let build_rootfs = build.path().join("rootfs");
    let mirror = debian_mirror(&release);
    run_checked(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(&release)
            .arg(&build_rootfs)
            .arg(&mirror),
    );
    // What Debian's own container images drop: package caches and lists.
    // They are not needed, and they would add 30 MB to every layer.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        clear_files(&build_rootfs.join(dir));
    }
    let build = build.keep();
    std::fs::rename(&build, &done)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", build.display(), done.display()));
    rootfs
}

/// Removes builds that a killed run left behind. debootstrap mounts /proc
/// and /sys inside its target (and may bind /dev): unmount those first, or
/// removing the directory would reach into the host's.
fn remove_stale_builds(cache: &Path) {
    let Ok(dir) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("debootstrap-build-") {
            continue;
        }
        let path = entry.path();
        for mount in mounts_under(&path) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        if mounts_under(&path).is_empty() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 5 of mountinfo is the mount point (octal-escaped spaces are
    // irrelevant here: our paths have none).
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts
}

fn clear_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `VERSION_CODENAME` from /etc/os-release (e.g. `bookworm`).
fn os_release_codename() -> String {
    let text = std::fs::read_to_string("/etc/os-release").expect("read /etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .expect("no VERSION_CODENAME in /etc/os-release")
}

/// The mirror apt uses for `release`: the first `deb` source (one-line
/// `sources.list` or deb822 `*.sources`) that lists the release suite.
/// The machine may reach no other Debian mirror than that one.
fn debian_mirror(release: &str) -> String {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let deb822 = p.extension().is_some_and(|e| e == "sources");
            let one_line = p.extension().is_some_and(|e| e == "list");
            if (deb822 || one_line)
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                texts.push((deb822, t));
            }
        }
    }
    for (deb822, text) in &texts {
        let found = if *deb822 {
            mirror_from_deb822(text, release)
        } else {
            mirror_from_one_line(text, release)
        };
        if let Some(m) = found {
            return m;
        }
    }
    "http://deb.debian.org/debian".to_string()
}

fn mirror_from_one_line(text: &str, release: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        // Skip an options block: `deb [arch=amd64 signed-by=...] URL ...`.
        if words.peek()?.starts_with('[') {
            while !words.next()?.ends_with(']') {}
        }
        let uri = words.next()?;
        (words.next()? == release).then(|| uri.to_string())
    })
}

fn mirror_from_deb822(text: &str, release: &str) -> Option<String> {
    // Stanzas are separated by blank lines; fields are `Name: value`.
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types")?;
        if !types.split_whitespace().any(|t| t == "deb") {
            return None;
        }
        if field("Enabled").is_some_and(|e| e == "no") {
            return None;
        }
        let suites = field("Suites")?;
        if !suites.split_whitespace().any(|s| s == release) {
            return None;
        }
        field("URIs")?.split_whitespace().next().map(str::to_string)
    })
}

/// A layer tar of everything under `dir` (`./...` entries, numeric owners,
/// xattrs, sorted by name so the bytes do not depend on readdir order).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    run_checked(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("--xattrs")
            .arg("--xattrs-include=*")
            .arg("--sort=name")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg("-")
            .arg("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_parsing() {
        let deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://m.example/security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(deb822, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(mirror_from_deb822(deb822, "trixie"), None);
        let one = "# c\ndeb-src http://x/ bookworm main\ndeb [arch=amd64 signed-by=/k] http://m.example/d bookworm main\n";
        assert_eq!(
            mirror_from_one_line(one, "bookworm").as_deref(),
            Some("http://m.example/d")
        );
    }
}
