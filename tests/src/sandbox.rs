//! A sandbox for hostile images: a store, and beside it a `victim/`
//! directory (files, a subdirectory, a symlink) that hostile entries aim
//! at, by relative climbs (`../../victim`), by the sandbox's absolute path,
//! or through symlinks.
//!
//! [`Sandbox::explode`] runs the `exploder` binary on an image pushed to a
//! throwaway registry, and [`Explode`] holds what every hostile case
//! checks after it, so that a test says only its input and its outcome:
//!
//! - the sandbox outside the store is exactly as before: the lstat-level
//!   snapshot of the harness, plus inode numbers, link counts and ctimes
//!   (a hardlink made to a victim file changes only its link count and
//!   ctime), and no inode of the store is shared with a file outside it;
//! - refused images ([`Explode::refused`] and its variants): exit code 1,
//!   `exploder: REF: <error>` on stderr with a stable part of the message,
//!   `ok: false` and `transient: false` in the `-o json` result (a hostile
//!   image does not get better by retrying), no tag link, no image
//!   directory, nothing left in `tmp/`, and (when the layer itself is bad)
//!   nothing in `layers/`, in that order of severity;
//! - contained images ([`Explode::contained`]): exit code 0, nothing left
//!   in `tmp/`, and a rootfs, where the test then looks for the content.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::compare::{Snapshot, snapshot_dir};
use crate::image::Image;
use crate::registry::Registry;
use crate::{linked_rootfs, run_exploder};

/// Where a run pushes its image (`REPO:TAG`), and so the tag it links.
pub const REPO: &str = "team/app";
const NAMESPACE: &str = "team";
const IMAGE: &str = "app";
pub const TAG: &str = "v1";

/// What the files under the sandbox's `victim/` contain.
pub const SECRET: &[u8] = b"top secret\n";
pub const SUB_FILE: &[u8] = b"keep me\n";

// ---------------------------------------------------------------------------
// The sandbox: a store and the victim beside it
// ---------------------------------------------------------------------------

/// A temporary directory holding `store/` (exploder's store) and `victim/`
/// (what a hostile image must not reach).
pub struct Sandbox {
    _dir: tempfile::TempDir,
    /// Canonical path of the sandbox (no symlink on the way).
    root: PathBuf,
}

/// Identity of one entry beyond what [`Snapshot`] compares: a new hardlink
/// changes only the link count and the ctime of its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub ino: u64,
    pub nlink: u64,
    pub ctime: (i64, i64),
}

/// The sandbox outside the store at one moment.
struct Outside {
    snapshot: Snapshot,
    idents: BTreeMap<PathBuf, Ident>,
}

/// The [`Ident`] of an entry, from its metadata.
pub fn ident(md: &fs::Metadata) -> Ident {
    Ident {
        ino: md.ino(),
        nlink: md.nlink(),
        ctime: (md.ctime(), md.ctime_nsec()),
    }
}

/// Every path under `dir` (not following symlinks), with its metadata,
/// `dir` itself included; `skip` (a direct child) is left out.
fn walk(dir: &Path, skip: Option<&Path>, out: &mut Vec<(PathBuf, fs::Metadata)>) {
    let md = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("lstat {}: {e}", dir.display()));
    let is_dir = md.is_dir();
    out.push((dir.to_path_buf(), md));
    if !is_dir {
        return;
    }
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .collect();
    names.sort();
    for p in names {
        if Some(p.as_path()) == skip {
            continue;
        }
        walk(&p, None, out);
    }
}

/// One entry of a tree walked by file descriptors (trees built by hostile
/// layers can be deeper than `PATH_MAX`, so no absolute path is used).
pub struct FdEntry {
    pub rel: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub kind: rustix::fs::FileType,
}

/// Every entry under `dir` (not following symlinks), breadth first with
/// `*at` calls, holding only a few descriptors at a time whatever the
/// depth. `dir` itself is not listed.
pub fn walk_fds(dir: &Path) -> Vec<FdEntry> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    use std::collections::VecDeque;
    use std::rc::Rc;
    let mut out = Vec::new();
    let root = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Rc::new(fd),
        Err(rustix::io::Errno::NOENT) => return out,
        Err(e) => panic!("open {}: {e}", dir.display()),
    };
    let mut queue: VecDeque<(Rc<std::os::fd::OwnedFd>, Vec<u8>, Vec<u8>)> = VecDeque::new();
    let list = |fd: &std::os::fd::OwnedFd| -> Vec<Vec<u8>> {
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(fd).expect("read dir") {
            let e = e.expect("dir entry");
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        names
    };
    for n in list(&root) {
        queue.push_back((root.clone(), n.clone(), n));
    }
    drop(root);
    while let Some((parent, name, rel)) = queue.pop_front() {
        let st = rustix::fs::statat(&*parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .unwrap_or_else(|e| panic!("statat {}: {e}", String::from_utf8_lossy(&rel)));
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Directory {
            let fd = Rc::new(
                rustix::fs::openat(
                    &*parent,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .unwrap_or_else(|e| panic!("openat {}: {e}", String::from_utf8_lossy(&rel))),
            );
            for n in list(&fd) {
                queue.push_back((fd.clone(), n.clone(), join(&rel, &n)));
            }
        }
        out.push(FdEntry {
            rel,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            kind,
        });
    }
    out
}

impl Sandbox {
    /// A fresh sandbox: an empty store and the victim beside it.
    #[allow(clippy::new_without_default)] // makes directories: not a default value
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("hostile-")
            .tempdir()
            .expect("sandbox tempdir");
        let root = dir.path().canonicalize().expect("canonicalize sandbox");
        fs::create_dir(root.join("store")).unwrap();
        fs::create_dir_all(root.join("victim/sub")).unwrap();
        fs::write(root.join("victim/secret"), SECRET).unwrap();
        fs::write(root.join("victim/sub/file"), SUB_FILE).unwrap();
        fs::set_permissions(
            root.join("victim/secret"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("secret", root.join("victim/alias")).unwrap();
        fs::write(root.join("beside-the-store"), b"also outside\n").unwrap();
        Sandbox { _dir: dir, root }
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn victim(&self) -> PathBuf {
        self.root.join("victim")
    }

    /// The sandbox's victim directory as an absolute path, as bytes (for
    /// symlink targets and entry paths).
    pub fn victim_abs(&self) -> Vec<u8> {
        self.victim().as_os_str().as_bytes().to_vec()
    }

    /// The sandbox's victim path without its leading `/`: where an absolute
    /// reference to it lands inside a rootfs.
    pub fn victim_in_root(&self) -> PathBuf {
        self.victim()
            .strip_prefix("/")
            .expect("absolute")
            .to_path_buf()
    }

    /// A relative symlink target that climbs from any depth up to the host
    /// `/` and then down into the sandbox's victim directory, if the host
    /// resolved it: `../../../.. ... /tmp/hostile-XXXX/victim`.
    pub fn victim_by_climbing(&self) -> Vec<u8> {
        let mut t = b"../".repeat(24);
        t.extend_from_slice(self.victim_in_root().as_os_str().as_bytes());
        t
    }

    fn outside(&self) -> Outside {
        let mut all = Vec::new();
        walk(&self.root, Some(&self.store()), &mut all);
        Outside {
            snapshot: self.snapshot_outside(),
            idents: all.iter().map(|(p, md)| (p.clone(), ident(md))).collect(),
        }
    }

    /// The harness snapshot of every child of the sandbox but the store,
    /// keyed by path relative to the sandbox. (`snapshot_dir(root)
    /// .excluding("store")` would walk the store first, and a hostile layer
    /// can make it deeper than `PATH_MAX`.) The sandbox directory itself is
    /// covered by [`Ident`]: any change in it changes its ctime.
    fn snapshot_outside(&self) -> Snapshot {
        let mut entries = BTreeMap::new();
        let mut names: Vec<_> = fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "store")
            .collect();
        names.sort();
        for name in names {
            let child = snapshot_dir(&self.root.join(&name));
            for (rel, info) in child.entries {
                let key = if rel.is_empty() {
                    name.as_bytes().to_vec()
                } else {
                    join(name.as_bytes(), &rel)
                };
                entries.insert(key, info);
            }
        }
        Snapshot {
            root: self.root.clone(),
            entries,
        }
    }

    /// Panics if anything outside the store changed since `before`, or if a
    /// file of the store is the same inode as a file outside it.
    fn assert_outside_untouched(&self, before: &Outside) {
        let after = self.outside();
        before.snapshot.assert_same(&after.snapshot);
        assert_eq!(
            before.idents, after.idents,
            "inode, link count or ctime of an entry outside the store changed"
        );
        let outside: BTreeSet<(u64, u64)> = {
            let mut all = Vec::new();
            walk(&self.root, Some(&self.store()), &mut all);
            all.iter()
                .filter(|(_, md)| !md.is_dir())
                .map(|(_, md)| (md.dev(), md.ino()))
                .collect()
        };
        for e in walk_fds(&self.store()) {
            assert!(
                e.kind == rustix::fs::FileType::Directory || !outside.contains(&(e.dev, e.ino)),
                "{} in the store is a hardlink to a file outside it",
                String::from_utf8_lossy(&e.rel)
            );
        }
    }

    fn link_path(&self) -> PathBuf {
        self.store()
            .join("images")
            .join(NAMESPACE)
            .join(IMAGE)
            .join(TAG)
            .join("link")
    }

    pub fn rootfs(&self) -> PathBuf {
        linked_rootfs(&self.store(), NAMESPACE, IMAGE, TAG)
    }

    /// The image directory (`digest/sha256/<hex>/`) the link points at.
    pub fn image_dir(&self) -> PathBuf {
        self.rootfs().parent().unwrap().to_path_buf()
    }

    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        let hex = diff_id.strip_prefix("sha256:").expect("sha256 diff_id");
        self.store().join("layers/sha256").join(hex)
    }

    /// Panics unless `dir` is absent or empty.
    fn assert_empty_or_absent(&self, rel: &str) {
        let dir = self.store().join(rel);
        match fs::read_dir(&dir) {
            Ok(entries) => {
                let names: Vec<_> = entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                assert!(
                    names.is_empty(),
                    "{} should be empty, holds {names:?}",
                    dir.display()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        }
    }

    /// After a refused image: no tag link, no image directory, no staging.
    fn assert_nothing_published(&self) {
        assert!(
            fs::symlink_metadata(self.link_path()).is_err(),
            "a link was written for a refused image: {}",
            self.link_path().display()
        );
        self.assert_empty_or_absent("digest/sha256");
        self.assert_empty_or_absent("tmp");
    }

    /// After a layer was refused at ingest: nothing in the layer store.
    fn assert_no_layers(&self) {
        self.assert_empty_or_absent("layers/sha256");
    }

    fn assert_layer_absent(&self, diff_id: &str) {
        let dir = self.layer_dir(diff_id);
        assert!(
            fs::symlink_metadata(&dir).is_err(),
            "the refused layer was kept: {}",
            dir.display()
        );
    }

    /// Runs `exploder explode REF --store DIR -o json ARGS...`.
    fn run(&self, reference: &str, extra: &[&str]) -> Run {
        let store = self.store();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "explode".as_ref(),
            reference.as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            "-o".as_ref(),
            "json".as_ref(),
            "--no-fsync".as_ref(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let out = run_exploder(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        Run {
            reference: reference.to_string(),
            code: out.status.code(),
            stdout,
            stderr,
            json,
        }
    }

    /// A run of `exploder explode` on `image`, pushed to a throwaway
    /// registry as `REPO:TAG`; say what it must come to with [`Explode`].
    pub fn explode<'a>(&'a self, image: &'a Image) -> Explode<'a> {
        Explode {
            sandbox: self,
            what: What::Image(image),
            args: Vec::new(),
        }
    }

    /// A run of `exploder explode REFERENCE` (an image the test pushed
    /// itself, to tamper with it in the registry).
    pub fn explode_reference<'a>(&'a self, reference: &str) -> Explode<'a> {
        Explode {
            sandbox: self,
            what: What::Reference(reference.to_string()),
            args: Vec::new(),
        }
    }
}

impl Drop for Sandbox {
    /// Removes the store without recursion (a hostile layer can leave a
    /// tree deeper than a recursive removal, or the descriptor limit,
    /// copes with); the temporary directory then removes the rest.
    fn drop(&mut self) {
        remove_tree_flat(&self.store());
    }
}

/// Removes the tree at `path` with a bounded stack and two descriptors at
/// a time: the grandchildren of the top directory are moved up into it
/// until only files and empty directories are left.
fn remove_tree_flat(path: &Path) {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(top) = rustix::fs::open(path, flags, Mode::empty()) else {
        return;
    };
    let list = |fd: &std::os::fd::OwnedFd| -> Vec<Vec<u8>> {
        let Ok(dir) = rustix::fs::Dir::read_from(fd) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect()
    };
    let mut counter = 0u64;
    loop {
        let names = list(&top);
        if names.is_empty() {
            break;
        }
        for n in names {
            let Ok(st) = rustix::fs::statat(&top, n.as_slice(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                if let Ok(d) = rustix::fs::openat(&top, n.as_slice(), flags, Mode::empty()) {
                    for g in list(&d) {
                        counter += 1;
                        let _ = rustix::fs::renameat(
                            &d,
                            g.as_slice(),
                            &top,
                            format!(".flat-{counter}").as_str(),
                        );
                    }
                }
                let _ = rustix::fs::unlinkat(&top, n.as_slice(), AtFlags::REMOVEDIR);
            } else {
                let _ = rustix::fs::unlinkat(&top, n.as_slice(), AtFlags::empty());
            }
        }
    }
    let _ = fs::remove_dir(path);
}

/// One run of the binary.
struct Run {
    reference: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    json: Value,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn result(&self) -> &Value {
        &self.json[0]
    }

    fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "expected success:\n{}", self.describe());
        assert_eq!(
            self.result()["ok"],
            Value::Bool(true),
            "{}",
            self.describe()
        );
    }

    /// Exit 1 with `exploder: REF: <error>` on stderr and `ok: false` in
    /// the JSON result.
    fn assert_failed(&self) {
        assert_eq!(
            self.code,
            Some(1),
            "expected a refusal:\n{}",
            self.describe()
        );
        self.error_line();
        assert_eq!(
            self.result()["ok"],
            Value::Bool(false),
            "{}",
            self.describe()
        );
    }

    fn error_line(&self) -> &str {
        let prefix = format!("exploder: {}: ", self.reference);
        self.stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line on stderr:\n{}", self.describe()))
    }

    /// The error says every one of `needles`, and is permanent: a hostile
    /// image does not get better by retrying, and a fleet retries
    /// transient failures.
    fn assert_says(&self, needles: &[&str]) {
        let line = self.error_line();
        for needle in needles {
            assert!(
                line.contains(needle),
                "the error does not say {needle:?}:\n{line}\n{}",
                self.describe()
            );
        }
        assert_eq!(
            self.result()["transient"],
            Value::Bool(false),
            "a hostile image was reported as a transient failure (it would be retried forever):\n{}",
            self.describe()
        );
    }
}

/// `a/b`, for paths as bytes.
pub fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = a.to_vec();
    v.push(b'/');
    v.extend_from_slice(b);
    v
}

/// What an [`Explode`] runs on.
enum What<'a> {
    Image(&'a Image),
    Reference(String),
}

/// One run of `exploder explode` into a [`Sandbox`], and the outcome it
/// must have. Every outcome first checks that nothing outside the store
/// changed.
#[must_use = "say the outcome: refused, refused_without_layer, refused_at_finalize or contained"]
pub struct Explode<'a> {
    sandbox: &'a Sandbox,
    what: What<'a>,
    args: Vec<String>,
}

impl Explode<'_> {
    /// Adds flags to `exploder explode`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The image is refused and no layer is kept: its layers are what is
    /// refused.
    pub fn refused(self, says: &[&str]) {
        self.refused_leaving(says, Sandbox::assert_no_layers);
    }

    /// The image is refused and the layer `diff_id` is not kept (the
    /// layers below it may be).
    pub fn refused_without_layer(self, diff_id: &str, says: &[&str]) {
        self.refused_leaving(says, |sb| sb.assert_layer_absent(diff_id));
    }

    /// The image is refused once its layers are in: when they are put
    /// together (finalize), which keeps the layers it ingested.
    pub fn refused_at_finalize(self, says: &[&str]) {
        self.refused_leaving(says, |_| {});
    }

    /// The image is exploded with everything inside the store: exit 0,
    /// nothing left in `tmp/`, a rootfs at the tag's link.
    pub fn contained(self) {
        let sb = self.sandbox;
        let run = self.run_outside_untouched();
        run.assert_ok();
        sb.assert_empty_or_absent("tmp");
        assert!(
            sb.rootfs().is_dir(),
            "no rootfs at {}",
            sb.rootfs().display()
        );
    }

    /// Refused, in order of severity: exit code and result, no link, image
    /// or staging, `layers` (what the store may keep of the layers), then
    /// the wording of the error and that it is permanent.
    fn refused_leaving(self, says: &[&str], layers: impl FnOnce(&Sandbox)) {
        let sb = self.sandbox;
        let run = self.run_outside_untouched();
        run.assert_failed();
        sb.assert_nothing_published();
        layers(sb);
        run.assert_says(says);
    }

    /// Runs the binary; panics if anything outside the store changed.
    fn run_outside_untouched(&self) -> Run {
        let sb = self.sandbox;
        let before = sb.outside();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let run = match &self.what {
            What::Image(image) => {
                let registry = Registry::start();
                registry.push(REPO, TAG, image);
                sb.run(&format!("{}/{REPO}:{TAG}", registry.addr()), &args)
            }
            What::Reference(reference) => sb.run(reference, &args),
        };
        sb.assert_outside_untouched(&before);
        run
    }
}
