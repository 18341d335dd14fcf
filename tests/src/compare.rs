//! Tree comparison at the lstat level, and before/after snapshots.
//!
//! "Byte-identical to umoci" means: the same entries, each with the same
//! file type, full mode (setuid/setgid/sticky included), owner, content,
//! symlink target, device numbers, xattrs and mtime (seconds and nanoseconds,
//! symlinks included), and the same hardlink groups. atime and ctime cannot
//! match and are ignored; directory sizes depend on the filesystem and are
//! ignored too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Xattrs not compared: the host's SELinux labels say nothing of the image.
const IGNORED_XATTRS: &[&[u8]] = &[b"security.selinux"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDevice => "char device",
            Kind::BlockDevice => "block device",
            Kind::Socket => "socket",
        })
    }
}

/// What is compared of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    /// Full `st_mode`, file-type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size and sha256 of regular files only.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub link_target: Option<Vec<u8>>,
    /// (major, minor) of devices only.
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub mtime: (i64, i64),
    /// (st_dev, st_ino): identity for hardlink groups within one tree.
    inode: (u64, u64),
}

/// Every entry under a directory, by path relative to it (the root is `""`),
/// and the hardlink groups among them.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub root: PathBuf,
    pub entries: BTreeMap<Vec<u8>, EntryInfo>,
}

/// Records every entry under `root` (not following symlinks), hashing file
/// contents. Panics on I/O errors: a tree that cannot be read is a failure.
pub fn snapshot_dir(root: &Path) -> Snapshot {
    let mut entries = BTreeMap::new();
    walk(root, Vec::new(), &mut entries);
    Snapshot {
        root: root.to_path_buf(),
        entries,
    }
}

fn walk(path: &Path, rel: Vec<u8>, out: &mut BTreeMap<Vec<u8>, EntryInfo>) {
    let info = entry_info(path);
    let is_dir = info.kind == Kind::Dir;
    out.insert(rel.clone(), info);
    if !is_dir {
        return;
    }
    let mut children: Vec<_> = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()))
        .map(|e| e.expect("read_dir entry").file_name())
        .collect();
    children.sort();
    for name in children {
        let mut child_rel = rel.clone();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(name.as_bytes());
        walk(&path.join(&name), child_rel, out);
    }
}

fn entry_info(path: &Path) -> EntryInfo {
    let md =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else {
        Kind::Socket
    };
    let (size, sha256) = if kind == Kind::File {
        (Some(md.size()), Some(hash_file(path)))
    } else {
        (None, None)
    };
    let link_target = (kind == Kind::Symlink).then(|| {
        std::fs::read_link(path)
            .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
            .into_os_string()
            .into_encoded_bytes()
    });
    let rdev = matches!(kind, Kind::CharDevice | Kind::BlockDevice).then(|| {
        let dev = md.rdev() as rustix::fs::Dev;
        (rustix::fs::major(dev), rustix::fs::minor(dev))
    });
    EntryInfo {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size,
        sha256,
        link_target,
        rdev,
        xattrs: xattrs(path),
        mtime: (md.mtime(), md.mtime_nsec()),
        inode: (md.dev(), md.ino()),
    }
}

fn hash_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// All xattrs of `path` itself (llistxattr/lgetxattr: never through a
/// symlink), minus [`IGNORED_XATTRS`].
fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(len) => len,
        // A filesystem without xattrs has none to compare.
        Err(rustix::io::Errno::NOTSUP) => return out,
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    let mut names = vec![0u8; len];
    let len = rustix::fs::llistxattr(path, &mut names[..])
        .unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()));
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if IGNORED_XATTRS.contains(&name) {
            continue;
        }
        let name_os = OsStr::from_bytes(name);
        let vlen = rustix::fs::lgetxattr_query(path, name_os)
            .unwrap_or_else(|e| panic!("lgetxattr {}: {e}", path.display()));
        let mut value = vec![0u8; vlen];
        let vlen = rustix::fs::lgetxattr(path, name_os, &mut value[..])
            .unwrap_or_else(|e| panic!("lgetxattr {}: {e}", path.display()));
        value.truncate(vlen);
        out.insert(name.to_vec(), value);
    }
    out
}

impl Snapshot {
    /// A copy without `prefix` and everything under it (e.g. the store
    /// inside a sandbox whose other contents must not change).
    pub fn excluding(&self, prefix: impl AsRef<[u8]>) -> Snapshot {
        let prefix = prefix.as_ref();
        let mut under = prefix.to_vec();
        under.push(b'/');
        let mut s = self.clone();
        s.entries
            .retain(|path, _| path.as_slice() != prefix && !path.starts_with(&under));
        s
    }

    /// Differences from `self` (expected) to `other` (actual), one line
    /// each; empty when equal.
    pub fn diff(&self, other: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (path, exp) in &self.entries {
            match other.entries.get(path) {
                None => out.push(format!("{}: missing in actual ({})", show(path), exp.kind)),
                Some(act) => compare_entry(path, exp, act, &mut out),
            }
        }
        for (path, act) in &other.entries {
            if !self.entries.contains_key(path) {
                out.push(format!("{}: extra in actual ({})", show(path), act.kind));
            }
        }
        self.compare_hardlinks(other, &mut out);
        out
    }

    /// Panics with the differences if `other` differs.
    pub fn assert_same(&self, other: &Snapshot) {
        fail_if_different(&self.root, &other.root, self.diff(other));
    }

    /// Every path grouped with the others that share its inode; singletons
    /// are left out. Directories cannot be hardlinked.
    fn hardlink_groups(&self) -> HashMap<&[u8], BTreeSet<&[u8]>> {
        let mut by_inode: HashMap<(u64, u64), BTreeSet<&[u8]>> = HashMap::new();
        for (path, e) in &self.entries {
            if e.kind != Kind::Dir {
                by_inode.entry(e.inode).or_default().insert(path);
            }
        }
        let mut groups = HashMap::new();
        for group in by_inode.into_values().filter(|g| g.len() > 1) {
            for &p in &group {
                groups.insert(p, group.clone());
            }
        }
        groups
    }

    fn compare_hardlinks(&self, other: &Snapshot, out: &mut Vec<String>) {
        let exp_groups = self.hardlink_groups();
        let act_groups = other.hardlink_groups();
        let empty = BTreeSet::new();
        // One line per distinct pair of groups, not one per member.
        let mut reported = BTreeSet::new();
        for path in self.entries.keys() {
            if !other.entries.contains_key(path) {
                continue;
            }
            let exp = exp_groups.get(path.as_slice()).unwrap_or(&empty);
            let act = act_groups.get(path.as_slice()).unwrap_or(&empty);
            if exp != act && reported.insert((exp.clone(), act.clone())) {
                out.push(format!(
                    "{}: hardlinked with {} in expected, with {} in actual",
                    show(path),
                    show_group(exp, path),
                    show_group(act, path),
                ));
            }
        }
    }
}

fn compare_entry(path: &[u8], exp: &EntryInfo, act: &EntryInfo, out: &mut Vec<String>) {
    let p = show(path);
    if exp.kind != act.kind {
        out.push(format!(
            "{p}: type expected {}, actual {}",
            exp.kind, act.kind
        ));
        return;
    }
    let mut field = |name: &str, e: String, a: String| {
        if e != a {
            out.push(format!("{p}: {name} expected {e}, actual {a}"));
        }
    };
    field(
        "mode",
        format!("{:#o}", exp.mode),
        format!("{:#o}", act.mode),
    );
    field("uid", exp.uid.to_string(), act.uid.to_string());
    field("gid", exp.gid.to_string(), act.gid.to_string());
    field("size", format!("{:?}", exp.size), format!("{:?}", act.size));
    // Same size but different bytes is still worth its own line.
    field(
        "content sha256",
        format!("{:?}", exp.sha256),
        format!("{:?}", act.sha256),
    );
    field(
        "symlink target",
        format!("{:?}", exp.link_target.as_deref().map(show)),
        format!("{:?}", act.link_target.as_deref().map(show)),
    );
    field(
        "device",
        format!("{:?}", exp.rdev),
        format!("{:?}", act.rdev),
    );
    field("xattrs", show_xattrs(&exp.xattrs), show_xattrs(&act.xattrs));
    field("mtime", show_time(exp.mtime), show_time(act.mtime));
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        // Escape what is not printable UTF-8 so a line stays one line.
        String::from_utf8_lossy(path).escape_debug().to_string()
    }
}

fn show_group(group: &BTreeSet<&[u8]>, except: &[u8]) -> String {
    let others: Vec<String> = group
        .iter()
        .filter(|p| **p != except)
        .map(|p| show(p))
        .collect();
    if others.is_empty() {
        "nothing".into()
    } else {
        format!("[{}]", others.join(", "))
    }
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", show(k), String::from_utf8_lossy(v).escape_debug()))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn show_time((secs, nanos): (i64, i64)) -> String {
    format!("{secs}.{nanos:09}")
}

/// What a comparison leaves out, for metadata umoci itself does not make
/// deterministic. umoci gives directories it creates implicitly (a parent
/// with no entry of its own) the current time, and creating one also bumps
/// its parent's mtime without restoring it; the root's mtime is only the
/// image's when it has a `./` entry and no implicit directory in the root.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Paths (relative, `""` = root) whose mtime is not compared.
    pub ignore_mtime_of: BTreeSet<Vec<u8>>,
}

impl CompareOptions {
    pub fn ignore_mtime_of(mut self, path: impl AsRef<[u8]>) -> Self {
        self.ignore_mtime_of.insert(path.as_ref().to_vec());
        self
    }

    /// Shorthand for `ignore_mtime_of("")`.
    pub fn ignore_root_mtime(self) -> Self {
        self.ignore_mtime_of("")
    }

    /// Copies the ignored fields of `expected` into `actual` so the diff
    /// does not see them.
    fn apply(&self, expected: &Snapshot, actual: &mut Snapshot) {
        for path in &self.ignore_mtime_of {
            if let (Some(e), Some(a)) = (expected.entries.get(path), actual.entries.get_mut(path)) {
                a.mtime = e.mtime;
            }
        }
    }
}

/// Differences from `expected` to `actual`, one readable line each (empty =
/// equal). The root directory is compared too, as `<root>`.
pub fn compare_trees(expected: &Path, actual: &Path) -> Vec<String> {
    compare_trees_with(expected, actual, &CompareOptions::default())
}

/// [`compare_trees`] leaving out what `opts` says.
pub fn compare_trees_with(expected: &Path, actual: &Path, opts: &CompareOptions) -> Vec<String> {
    let exp = snapshot_dir(expected);
    let mut act = snapshot_dir(actual);
    opts.apply(&exp, &mut act);
    exp.diff(&act)
}

/// Panics listing the first 50 differences if the trees differ.
pub fn assert_trees_equal(expected: &Path, actual: &Path) {
    fail_if_different(expected, actual, compare_trees(expected, actual));
}

/// [`assert_trees_equal`] leaving out what `opts` says.
pub fn assert_trees_equal_with(expected: &Path, actual: &Path, opts: &CompareOptions) {
    fail_if_different(expected, actual, compare_trees_with(expected, actual, opts));
}

fn fail_if_different(expected: &Path, actual: &Path, diffs: Vec<String>) {
    if diffs.is_empty() {
        return;
    }
    let shown: Vec<&str> = diffs.iter().take(50).map(String::as_str).collect();
    let more = diffs.len().saturating_sub(50);
    panic!(
        "trees differ ({} differences{}):\n  expected: {}\n  actual:   {}\n{}",
        diffs.len(),
        if more > 0 {
            format!(", first 50 shown, {more} more")
        } else {
            String::new()
        },
        expected.display(),
        actual.display(),
        shown.join("\n")
    );
}
