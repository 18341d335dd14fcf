//! The ordering rules of parallel extraction (see [`super::unpack`]): a
//! layer unpacked by several writer threads gives the tree, the index and
//! the error that the reader alone gives.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use exploder_common::limits::Limits;
use tar::EntryType;

use super::index::{Kind, LayerIndex};
use super::unpack::{LayerUnpacker, UnpackError};
use super::writers::{PROBE_WINDOW, WriteThreads};
use crate::inroot::InRoot;

/// A tar stream, entry by entry, in the order given.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn entry(&mut self, kind: EntryType, path: &str, mode: u32, data: &[u8], link: Option<&str>) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000 + self.0.get_ref().len() as u64);
        h.set_size(data.len() as u64);
        match link {
            Some(target) => self.0.append_link(&mut h, path, target).unwrap(),
            None => self.0.append_data(&mut h, path, data).unwrap(),
        }
    }

    /// A regular file under a name the builder would refuse (`..`).
    fn raw_file(&mut self, path: &str) -> &mut Self {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }

    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(EntryType::Directory, path, mode, b"", None);
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, path, 0o644, data, None);
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Symlink, path, 0o777, b"", Some(target));
        self
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Link, path, 0o644, b"", Some(target));
        self
    }

    fn fifo(&mut self, path: &str) -> &mut Self {
        self.entry(EntryType::Fifo, path, 0o600, b"", None);
        self
    }

    fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

struct Unpacked {
    dir: tempfile::TempDir,
    result: Result<LayerIndex, String>,
}

impl Unpacked {
    fn tree(&self) -> std::path::PathBuf {
        self.dir.path().join("tree")
    }

    fn index(&self) -> &LayerIndex {
        self.result.as_ref().expect("the layer unpacks")
    }
}

fn unpack(tar: &[u8], threads: usize) -> Unpacked {
    unpack_with(tar, WriteThreads::Fixed(threads))
}

fn unpack_with(tar: &[u8], threads: WriteThreads) -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let limits = Limits::default();
    let mut u = LayerUnpacker::new(
        InRoot::open(&tree, limits.max_symlink_hops).unwrap(),
        &limits,
    );
    u.write_threads = threads;
    let result = match u.unpack(tar) {
        Ok(_) => Ok(u.finish().0),
        Err(e) => Err(describe(&e)),
    };
    Unpacked { dir, result }
}

fn describe(e: &UnpackError) -> String {
    match e {
        UnpackError::Io { path, source } => format!("{path}: {:?}: {source}", source.kind()),
        other => other.to_string(),
    }
}

/// Every inode of a tree: type, mode, content or target, file mtime, and
/// which earlier path it is a hardlink of.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, String>,
        inodes: &mut BTreeMap<u64, String>,
    ) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                walk(root, &p, out, inodes);
                format!("dir {:o}", md.mode() & 0o7777)
            } else {
                let first = inodes
                    .entry(md.ino())
                    .or_insert_with(|| rel.clone())
                    .clone();
                let body = if ft.is_symlink() {
                    format!("symlink -> {}", std::fs::read_link(&p).unwrap().display())
                } else if ft.is_fifo() {
                    "fifo".to_string()
                } else {
                    let data = std::fs::read(&p).unwrap();
                    format!(
                        "file {} bytes, sum {}",
                        data.len(),
                        data.iter().map(|b| *b as u64).sum::<u64>()
                    )
                };
                format!(
                    "{body} mode {:o} mtime {} inode of {first}",
                    md.mode() & 0o7777,
                    md.mtime()
                )
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out, &mut BTreeMap::new());
    out
}

/// The same layer with the reader alone and with `threads` writers.
fn assert_same_as_one_thread(tar: &[u8], threads: usize) -> Unpacked {
    let one = unpack(tar, 1);
    let many = unpack(tar, threads);
    assert_eq!(
        one.result, many.result,
        "index or error with {threads} threads"
    );
    // A failed layer's tree is thrown away, whatever got into it.
    if one.result.is_ok() {
        assert_eq!(
            snapshot(&one.tree()),
            snapshot(&many.tree()),
            "tree with {threads} threads"
        );
    }
    many
}

#[test]
fn a_file_whose_directories_come_later_in_the_tar_is_placed_in_them() {
    let mut t = Tar::new();
    t.file("a/b/c/f", b"deep")
        .dir("a", 0o700)
        .dir("a/b", 0o750)
        .file("a/b/g", b"beside");
    let u = assert_same_as_one_thread(&t.build(), 4);
    assert_eq!(std::fs::read(u.tree().join("a/b/c/f")).unwrap(), b"deep");
    assert_eq!(u.index().entries[b"a/b".as_slice()].meta.mode, 0o750);
}

#[test]
fn a_path_written_twice_keeps_the_last_entry() {
    let mut t = Tar::new();
    for i in 0..200 {
        t.file(&format!("d/f{i}"), format!("first {i}").as_bytes());
    }
    for i in 0..200 {
        match i % 4 {
            0 => t.file(&format!("d/f{i}"), format!("second {i}").as_bytes()),
            1 => t.symlink(&format!("d/f{i}"), "elsewhere"),
            2 => t.fifo(&format!("d/f{i}")),
            _ => t
                .dir(&format!("d/f{i}"), 0o755)
                .file(&format!("d/f{i}/in"), b"x"),
        };
    }
    let u = assert_same_as_one_thread(&t.build(), 4);
    assert_eq!(std::fs::read(u.tree().join("d/f0")).unwrap(), b"second 0");
    assert_eq!(
        std::fs::read_link(u.tree().join("d/f1")).unwrap(),
        Path::new("elsewhere")
    );
    assert!(
        std::fs::symlink_metadata(u.tree().join("d/f2"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(std::fs::read(u.tree().join("d/f3/in")).unwrap(), b"x");
}

#[test]
fn a_hardlink_to_a_file_another_thread_writes_is_the_same_inode() {
    let mut t = Tar::new();
    for i in 0..300 {
        t.file(&format!("f{i}"), format!("content {i}").as_bytes());
        if i % 3 == 0 {
            t.hardlink(&format!("h{i}"), &format!("f{i}"));
        }
    }
    for i in (0..300).step_by(3) {
        t.hardlink(&format!("late/h{i}"), &format!("h{i}"));
    }
    let u = assert_same_as_one_thread(&t.build(), 4);
    let tree = u.tree();
    for i in (0..300).step_by(3) {
        let ino = std::fs::metadata(tree.join(format!("f{i}"))).unwrap().ino();
        assert_eq!(
            std::fs::metadata(tree.join(format!("h{i}"))).unwrap().ino(),
            ino
        );
        assert_eq!(
            std::fs::metadata(tree.join(format!("late/h{i}")))
                .unwrap()
                .ino(),
            ino
        );
    }
}

#[test]
fn a_directory_repeated_with_another_mode_keeps_its_children_and_takes_the_last_mode() {
    let mut t = Tar::new();
    t.dir("d", 0o700);
    for i in 0..100 {
        t.file(&format!("d/f{i}"), b"kept");
    }
    t.dir("d", 0o755).file("d/last", b"after");
    let u = assert_same_as_one_thread(&t.build(), 4);
    let d = &u.index().entries[b"d".as_slice()];
    assert_eq!((d.kind.clone(), d.meta.mode, d.seq), (Kind::Dir, 0o755, 1));
    assert_eq!(std::fs::read_dir(u.tree().join("d")).unwrap().count(), 101);
}

#[test]
fn an_entry_through_a_symlink_of_the_same_layer_follows_it() {
    let mut t = Tar::new();
    t.dir("real", 0o755);
    for i in 0..50 {
        // Each symlink is used right after it is submitted.
        t.symlink(&format!("l{i}"), "real")
            .file(&format!("l{i}/f{i}"), b"through");
    }
    let u = assert_same_as_one_thread(&t.build(), 4);
    assert_eq!(
        std::fs::read_dir(u.tree().join("real")).unwrap().count(),
        50
    );
    assert!(u.index().entries.contains_key(b"real/f49".as_slice()));
}

#[test]
fn below_a_file_of_the_same_layer_an_entry_fails_and_a_whiteout_is_a_no_op() {
    let mut ok = Tar::new();
    ok.file("made", b"a file").file("made-whiteout-next", b"x");
    ok.entry(EntryType::Regular, "made/.wh.zzz", 0o644, b"", None);
    assert_same_as_one_thread(&ok.build(), 4);
    let mut bad = Tar::new();
    bad.file("made", b"a file")
        .file("made/inside", b"cannot be");
    let u = assert_same_as_one_thread(&bad.build(), 4);
    let e = u.result.unwrap_err();
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn the_first_failure_in_tar_order_is_the_layers_error() {
    let mut t = Tar::new();
    for i in 0..100 {
        t.file(&format!("f{i}"), b"fine");
    }
    // A symlink target the kernel refuses (4096 bytes: within the layer
    // limits, one over PATH_MAX with its NUL) fails on a writer thread;
    // the hostile entry after it fails on the reader.
    t.symlink("long", &"x/".repeat(2048));
    for i in 0..100 {
        t.file(&format!("g{i}"), b"fine");
    }
    t.raw_file("x/../../escape");
    let u = assert_same_as_one_thread(&t.build(), 4);
    let e = u.result.unwrap_err();
    assert!(e.starts_with("long: ") && e.contains("too long"), "{e}");
}

/// A small deterministic generator (the tests must not depend on luck).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// A layer of deep trees with every kind of entry: directories (also
/// repeated), files small and large, written twice, symlinks used as
/// parents right away, hardlinks (in the layer, to lower paths, chained),
/// fifos, whiteouts and opaque markers; ending with directories replaced by
/// files while their contents may still be in flight.
fn mixed_layer(seed: u64, entries: usize) -> Vec<u8> {
    let mut r = Lcg(seed);
    let mut t = Tar::new();
    let parent = |r: &mut Lcg| {
        let depth = r.below(7);
        (0..depth)
            .map(|_| r.pick(&["d0", "d1", "d2", "l0", "l1"]))
            .collect::<Vec<_>>()
            .join("/")
    };
    let at = |p: &str, name: &str| {
        if p.is_empty() {
            name.to_string()
        } else {
            format!("{p}/{name}")
        }
    };
    let mut files: Vec<String> = Vec::new();
    for i in 0..entries {
        let p = parent(&mut r);
        match r.below(20) {
            0..=4 => {
                t.dir(
                    &at(&p, r.pick(&["d0", "d1", "d2"])),
                    [0o755, 0o700, 0o750][r.below(3) as usize],
                );
            }
            5..=10 => {
                let path = at(&p, r.pick(&["f0", "f1", "f2", "f3"]));
                let size = if r.below(200) == 0 {
                    1_500_000
                } else {
                    r.below(3000) as usize
                };
                t.file(&path, &vec![(i % 251) as u8; size]);
                files.push(path);
            }
            11..=12 => {
                let target = r.pick(&["d0", "d1/d2", "/d2", "../d0", "nowhere", "/"]);
                t.symlink(&at(&p, r.pick(&["l0", "l1"])), target);
            }
            13..=14 => {
                let target = match files.is_empty() || r.below(5) == 0 {
                    true => "lower/file".to_string(),
                    false => files[r.below(files.len() as u64) as usize].clone(),
                };
                let path = at(&p, r.pick(&["f0", "h0", "h1"]));
                t.hardlink(&path, &target);
                files.push(path);
            }
            15 => {
                t.symlink(&at(&p, r.pick(&["f1", "f2"])), "f0");
            }
            16 => {
                t.fifo(&at(&p, "f3"));
            }
            17..=18 => {
                let name = format!(".wh.{}", r.pick(&["f0", "d1", "h0", "l1"]));
                t.entry(EntryType::Regular, &at(&p, &name), 0o644, b"", None);
            }
            _ => {
                t.entry(
                    EntryType::Regular,
                    &at(&p, ".wh..wh..opq"),
                    0o644,
                    b"",
                    None,
                );
            }
        }
    }
    for d in ["d0/d1", "d2", "d1/d0/d2"] {
        t.file(d, b"a directory no more");
    }
    t.build()
}

#[test]
fn mixed_layers_unpack_the_same_with_any_number_of_threads() {
    for seed in 1..=2 {
        let tar = mixed_layer(seed, 600);
        for threads in [2, 5] {
            let u = assert_same_as_one_thread(&tar, threads);
            assert!(u.result.is_ok(), "seed {seed}: {:?}", u.result);
        }
    }
}

/// `auto` mode with every create taken as slow: the pool starts after the
/// first window of creates, in the middle of the layer.
#[test]
fn a_pool_started_in_the_middle_of_a_layer_gives_what_the_reader_alone_gives() {
    let every_create_slow = WriteThreads::Auto {
        threads: 3,
        slow_create: Duration::ZERO,
    };
    for seed in 3..=4 {
        let tar = mixed_layer(seed, 20 * PROBE_WINDOW);
        let one = unpack(&tar, 1);
        let auto = unpack_with(&tar, every_create_slow);
        assert!(one.result.is_ok(), "seed {seed}: {:?}", one.result);
        assert_eq!(one.result, auto.result, "seed {seed}: index");
        assert_eq!(
            snapshot(&one.tree()),
            snapshot(&auto.tree()),
            "seed {seed}: tree"
        );
    }
}
