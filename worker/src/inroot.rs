//! Resolving paths inside a root directory with `openat2(RESOLVE_IN_ROOT)`
//! semantics, in userspace with directory file descriptors.
//!
//! Every path a layer names is resolved here before anything is written:
//!
//! - the walk starts at the root fd and moves one component at a time with
//!   `O_NOFOLLOW`, so no component is ever resolved by the host kernel
//!   against the host's `/`;
//! - `..` pops to the previous directory and stops at the root;
//! - a symlink met in a *parent* position is read and its target walked in
//!   its place; an absolute target restarts at the root (a rootfs contains
//!   `lib64 -> /usr/lib64`: cap-std's BENEATH semantics would refuse it);
//! - the *final* component is never followed: callers get the parent
//!   directory fd and the name, and act with `*at(parent, name)` calls.
//!
//! The kernel's `openat2` would do the same walk, but not with a
//! configurable symlink-hop limit, and we also want the physical path (where
//! the walk ended) for the layer index. Holding fds makes the walk immune to
//! renames above the current directory; the trees we walk are private
//! staging directories, so nothing races us below it either.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// A path resolved to the directory holding its final component.
pub struct Resolved {
    /// The directory that contains (or will contain) the final component.
    pub parent: Arc<OwnedFd>,
    /// The final component, never followed.
    pub name: Vec<u8>,
    /// Physical path of the final component relative to the root, after all
    /// symlinks in parent positions were followed: `usr/lib/x` for `lib/x`
    /// when `lib -> /usr/lib`.
    pub physical: Vec<u8>,
}

/// What a path names after lexical cleanup.
pub enum Target {
    /// The root itself (`.`, `./`, `/`, `a/..`).
    Root,
    Entry(Resolved),
}

/// A root directory plus a cache of the last walked directory chain (tar
/// entries come grouped by directory, so most lookups reuse it).
pub struct InRoot {
    root: Arc<OwnedFd>,
    max_hops: u32,
    /// Components of the last clean walk (plain names into real
    /// directories: no symlink, no `..`) and the fd of each directory along
    /// it: `dirs[i]` is the directory `comps[..=i]`.
    comps: Vec<Vec<u8>>,
    dirs: Vec<Arc<OwnedFd>>,
    /// Lookups made and components walked: the walk budget (see
    /// [`STEPS_PER_LOOKUP`]).
    lookups: u64,
    steps: u64,
    /// Physical paths of the parent directories a walk created because no
    /// entry named them (see [`InRoot::take_created`]).
    created: Vec<Vec<u8>>,
}

/// Components one lookup may walk on average. Real paths take tens; a
/// symlink maze (40 hops, each to a target of thousands of components)
/// takes tens of thousands per lookup, and with millions of entries would
/// keep a worker busy for hours.
pub const STEPS_PER_LOOKUP: u64 = 4096;

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The path's components with `x/..` pairs folded lexically, as umoci's
/// `CleanPath` does before resolving: `l/../f` names `f` even when `l` is
/// a symlink. A `..` above the start is dropped (it stops at the root).
/// Symlink *targets* met during the walk are not cleaned: there `..`
/// follows the directory actually reached, as the kernel does.
fn lexically_clean(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in components(path) {
        if c == b".." {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a path into components, dropping empty ones and `.`.
fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

fn errno(e: Errno, what: &str, path: &[u8]) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{what} {:?}: {e}", String::from_utf8_lossy(path)),
    )
}

/// Opens the directory at `path` as a handle for `*at` calls (`O_PATH`),
/// never following a symlink in its last component.
pub fn open_dir_handle(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, dir_flags(), Mode::empty())?)
}

impl InRoot {
    pub fn open(root: &Path, max_hops: u32) -> io::Result<InRoot> {
        let root = open_dir_handle(root)?;
        Ok(InRoot {
            root: Arc::new(root),
            max_hops,
            comps: Vec::new(),
            dirs: Vec::new(),
            lookups: 0,
            steps: 0,
            created: Vec::new(),
        })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Forgets cached directories. Must be called after anything that
    /// removes or replaces an existing entry, since the cache may hold it.
    pub fn invalidate(&mut self) {
        self.comps.clear();
        self.dirs.clear();
    }

    /// The parent directories walks created since the last call (physical
    /// paths, parents before children): directories no entry named, whose
    /// times are the creator's to decide.
    pub fn take_created(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.created)
    }

    /// Resolves `path` (relative or absolute; both are taken relative to the
    /// root) to its parent directory and final name. Missing parent
    /// directories are created with mode 0755 when `create` is set; callers
    /// that care (the layer index) know them as "implicit".
    pub fn resolve(&mut self, path: &[u8], create: bool) -> io::Result<Target> {
        self.resolve_waiting(path, create, &mut |_| false)
    }

    /// [`InRoot::resolve`] in a tree that other threads are still adding
    /// entries to: when a component is missing, `wait_for` is called with
    /// its physical path; it returns whether an entry there was still being
    /// created (and is now done), and the walk then looks again. Without
    /// it, a missing component would be created as a directory (or be an
    /// error) although a symlink or file is about to appear there.
    pub fn resolve_waiting(
        &mut self,
        path: &[u8],
        create: bool,
        wait_for: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<Target> {
        let comps = lexically_clean(path);
        let Some((last, parents)) = comps.split_last() else {
            return Ok(Target::Root);
        };
        let (parent, mut physical) = self.walk(parents, create, path, wait_for)?;
        if !physical.is_empty() {
            physical.push(b'/');
        }
        physical.extend_from_slice(last);
        Ok(Target::Entry(Resolved {
            parent,
            name: last.to_vec(),
            physical,
        }))
    }

    /// Resolves `path` as a directory, following every component (a final
    /// symlink too), in-root. Used for "the directory this names": an opaque
    /// marker's directory, the rootfs directory a layer's directory maps to.
    /// Returns the directory and its physical path.
    pub fn resolve_dir(
        &mut self,
        path: &[u8],
        create: bool,
    ) -> io::Result<(Arc<OwnedFd>, Vec<u8>)> {
        self.resolve_dir_waiting(path, create, &mut |_| false)
    }

    /// [`InRoot::resolve_dir`] with `wait_for`, as in
    /// [`InRoot::resolve_waiting`].
    pub fn resolve_dir_waiting(
        &mut self,
        path: &[u8],
        create: bool,
        wait_for: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<(Arc<OwnedFd>, Vec<u8>)> {
        let comps = lexically_clean(path);
        self.walk(&comps, create, path, wait_for)
    }

    /// Walks `parents` from the root, returning the directory reached and
    /// its physical path.
    fn walk(
        &mut self,
        parents: &[&[u8]],
        create: bool,
        whole: &[u8],
        wait_for: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<(Arc<OwnedFd>, Vec<u8>)> {
        // Reuse the cached prefix.
        let mut k = 0;
        while k < parents.len() && k < self.comps.len() && parents[k] == self.comps[k].as_slice() {
            k += 1;
        }
        self.comps.truncate(k);
        self.dirs.truncate(k);
        // The walk state: a stack of (directory, name) from the root down.
        let mut stack: Vec<(Arc<OwnedFd>, Vec<u8>)> = self
            .dirs
            .iter()
            .cloned()
            .zip(self.comps.iter().cloned())
            .collect();
        let mut queue: VecDeque<Vec<u8>> = parents[k..].iter().map(|c| c.to_vec()).collect();
        let mut clean = true;
        let mut hops = 0u32;
        self.lookups += 1;
        // A little slack up front; afterwards the average must hold.
        let allowed = (self.lookups + 4) * STEPS_PER_LOOKUP;
        while let Some(c) = queue.pop_front() {
            self.steps += 1;
            if self.steps > allowed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "resolving {:?} exceeds the path walk budget ({STEPS_PER_LOOKUP} steps per path on average): a symlink maze?",
                        String::from_utf8_lossy(whole)
                    ),
                ));
            }
            if c == b".." {
                clean = false;
                stack.pop();
                continue;
            }
            let top = stack
                .last()
                .map(|(d, _)| d.clone())
                .unwrap_or(self.root.clone());
            match rustix::fs::statat(&*top, c.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        let fd =
                            rustix::fs::openat(&*top, c.as_slice(), dir_flags(), Mode::empty())
                                .map_err(|e| errno(e, "opening directory in", whole))?;
                        let fd = Arc::new(fd);
                        if clean {
                            self.comps.push(c.clone());
                            self.dirs.push(fd.clone());
                        }
                        stack.push((fd, c));
                    }
                    FileType::Symlink => {
                        hops += 1;
                        if hops > self.max_hops {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!(
                                    "too many symlinks (more than {}) resolving {:?} (limit: max symlink hops)",
                                    self.max_hops,
                                    String::from_utf8_lossy(whole)
                                ),
                            ));
                        }
                        clean = false;
                        let target = rustix::fs::readlinkat(&*top, c.as_slice(), Vec::new())
                            .map_err(|e| errno(e, "reading symlink in", whole))?
                            .into_bytes();
                        if target.first() == Some(&b'/') {
                            // Absolute: re-anchored at the root.
                            stack.clear();
                        }
                        for t in components(&target).into_iter().rev() {
                            queue.push_front(t.to_vec());
                        }
                    }
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!(
                                "{:?}: a parent component {:?} is not a directory",
                                String::from_utf8_lossy(whole),
                                String::from_utf8_lossy(&c)
                            ),
                        ));
                    }
                },
                Err(Errno::NOENT) if wait_for(&physical_path(&stack, Some(&c))) => {
                    // It was being created: look again.
                    queue.push_front(c);
                }
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*top, c.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) => self.created.push(physical_path(&stack, Some(&c))),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno(e, "creating a parent directory of", whole)),
                    }
                    // Walk into it on the next turn (it may also have been
                    // made by someone else as a symlink: re-check).
                    queue.push_front(c);
                }
                Err(e) => return Err(errno(e, "resolving", whole)),
            }
        }
        let physical = physical_path(&stack, None);
        let dir = stack
            .last()
            .map(|(d, _)| d.clone())
            .unwrap_or(self.root.clone());
        Ok((dir, physical))
    }
}

/// The physical path of a walk's stack of (directory, name), plus `next`.
fn physical_path(stack: &[(Arc<OwnedFd>, Vec<u8>)], next: Option<&[u8]>) -> Vec<u8> {
    stack
        .iter()
        .map(|(_, n)| n.as_slice())
        .chain(next)
        .collect::<Vec<_>>()
        .join(&b'/')
}

/// Removes `name` in `parent` and, if it is a directory, everything below
/// it, without following any symlink.
///
/// Iterative, holding one directory fd at a time: a hostile layer can build
/// a tree thousands of levels deep (symlinks let each path stay short), and
/// neither the stack nor the fd table may grow with its depth. Moving up
/// uses `..` of the directory we descended into, which in our private
/// staging trees is the directory we came from.
pub fn remove_all_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
        return Ok(());
    }
    let open_dir = |at: BorrowedFd<'_>, n: &[u8]| {
        rustix::fs::openat(
            at,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    // One frame per level: the directory's name and the subdirectories of
    // it still to remove. Memory grows with the tree, not the stack.
    let mut frames: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    let mut cur = open_dir(parent, name)?;
    frames.push((name.to_vec(), unlink_files_list_dirs(cur.as_fd())?));
    loop {
        let next = frames.last_mut().and_then(|(_, dirs)| dirs.pop());
        if let Some(child) = next {
            cur = open_dir(cur.as_fd(), &child)?;
            frames.push((child, unlink_files_list_dirs(cur.as_fd())?));
            continue;
        }
        // `cur` is empty: remove it from its parent and go up.
        let (done, _) = frames.pop().expect("a frame per open directory");
        if frames.is_empty() {
            rustix::fs::unlinkat(parent, done.as_slice(), AtFlags::REMOVEDIR)?;
            return Ok(());
        }
        cur = open_dir(cur.as_fd(), b"..")?;
        rustix::fs::unlinkat(&cur, done.as_slice(), AtFlags::REMOVEDIR)?;
    }
}

/// Unlinks every non-directory in `dir` and returns the names of its
/// subdirectories.
fn unlink_files_list_dirs(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            dirs.push(n.to_vec());
        } else {
            files.push(n.to_vec());
        }
    }
    for f in files {
        rustix::fs::unlinkat(dir, f.as_slice(), AtFlags::empty())?;
    }
    Ok(dirs)
}

/// The names in the open directory `dir`, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        (t, root)
    }

    fn physical(r: &mut InRoot, p: &str) -> String {
        match r.resolve(p.as_bytes(), true).unwrap() {
            Target::Root => "<root>".into(),
            Target::Entry(e) => String::from_utf8(e.physical).unwrap(),
        }
    }

    #[test]
    fn dotdot_stops_at_the_root() {
        let (_t, root) = setup();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "../../etc/passwd"), "etc/passwd");
        assert!(root.join("etc").is_dir());
        assert!(!_t.path().join("etc").exists());
    }

    #[test]
    fn absolute_symlinks_are_reanchored_at_the_root() {
        let (t, root) = setup();
        symlink("/", root.join("up")).unwrap();
        symlink(t.path(), root.join("host")).unwrap();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "up/x"), "x");
        // A symlink to the host temp dir means that path inside the root.
        let inside = format!("{}/y", t.path().display())
            .trim_start_matches('/')
            .to_string();
        assert_eq!(physical(&mut r, "host/y"), inside);
    }

    #[test]
    fn relative_symlink_climbing_out_stays_inside() {
        let (_t, root) = setup();
        symlink("../../../../outside", root.join("esc")).unwrap();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "esc/f"), "outside/f");
        assert!(root.join("outside").is_dir());
    }

    #[test]
    fn final_component_is_never_followed() {
        let (_t, root) = setup();
        symlink("/etc/shadow", root.join("link")).unwrap();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "link"), "link");
    }

    #[test]
    fn symlink_loops_hit_the_hop_limit() {
        let (_t, root) = setup();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let mut r = InRoot::open(&root, 40).unwrap();
        let err = r.resolve(b"a/x", true).err().unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn a_symlink_maze_runs_out_of_walk_budget() {
        let (_t, root) = setup();
        std::fs::create_dir(root.join("d")).unwrap();
        // Each `s` resolves to `d` through 1600 components.
        let target = format!("{}.", "../d/".repeat(800));
        symlink(format!("d/{target}"), root.join("s")).unwrap();
        symlink(&target, root.join("d/s")).unwrap();
        let mut r = InRoot::open(&root, 40).unwrap();
        let maze = format!("{}f", "s/".repeat(39));
        let err = r.resolve(maze.as_bytes(), false).err().unwrap();
        assert!(err.to_string().contains("walk budget"), "{err}");
        // Ordinary paths are unaffected.
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "s/f"), "d/f");
    }

    #[test]
    fn trailing_dotdot_names_the_parent_and_root_is_root() {
        let (_t, root) = setup();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "a/b/.."), "a");
        assert_eq!(physical(&mut r, "./"), "<root>");
        assert_eq!(physical(&mut r, "a/.."), "<root>");
        assert_eq!(physical(&mut r, "/"), "<root>");
    }

    #[test]
    fn file_in_parent_position_is_an_error() {
        let (_t, root) = setup();
        std::fs::write(root.join("f"), b"").unwrap();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert!(r.resolve(b"f/x", true).is_err());
    }

    #[test]
    fn cache_sees_a_replaced_directory_after_invalidate() {
        let (_t, root) = setup();
        let mut r = InRoot::open(&root, 40).unwrap();
        assert_eq!(physical(&mut r, "d/x"), "d/x");
        std::fs::remove_dir(root.join("d")).unwrap();
        symlink("/e", root.join("d")).unwrap();
        r.invalidate();
        assert_eq!(physical(&mut r, "d/x"), "e/x");
    }

    #[test]
    fn remove_all_handles_trees_deeper_than_the_stack() {
        let (_t, root) = setup();
        let r = InRoot::open(&root, 40).unwrap();
        // 5000 levels, built by fd so no path gets long.
        let mut fd = rustix::fs::openat(
            r.root(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        rustix::fs::mkdirat(&fd, "deep", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            "deep",
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        for _ in 0..5000 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            drop(
                rustix::fs::openat(
                    &fd,
                    "f",
                    OFlags::WRONLY | OFlags::CREATE,
                    Mode::from_raw_mode(0o644),
                )
                .unwrap(),
            );
            fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .unwrap();
        }
        drop(fd);
        // A thread with a small stack proves the removal does not recurse.
        let root_fd =
            rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove_all_at(root_fd.as_fd(), b"deep").unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!root.join("deep").exists());
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let (t, root) = setup();
        let keep = t.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("f"), b"x").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        symlink(&keep, root.join("d/l")).unwrap();
        let r = InRoot::open(&root, 40).unwrap();
        remove_all_at(r.root(), b"d").unwrap();
        assert!(!root.join("d").exists());
        assert!(keep.join("f").exists());
    }
}
