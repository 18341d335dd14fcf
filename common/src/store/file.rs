//! Reading a file of the store: the one way every reader opens one.
//!
//! The store is shared, and a file in it may be anything a careless
//! operator, a bad restore or an attacker with write access left there: a
//! FIFO (a plain `open` blocks on it for ever), a symbolic link to
//! `/dev/zero` (a plain `read_to_end` never ends), a directory. None of
//! those is a file exploder writes: every store file is a regular file
//! published by a rename ([`super::write_file_atomic`]). So a store file is
//!
//! - opened with `O_NOFOLLOW | O_NONBLOCK` (a symlink in the last component
//!   is refused, a FIFO does not block the open), then `O_NONBLOCK` is
//!   cleared again;
//! - required to be a regular file, by `fstat` of what was opened (not a
//!   `stat` before, which a rename could race);
//! - read up to a bound that fits its kind ([`Kind`]): larger is damage.
//!
//! Anything else is a [`Damaged`] error naming the path, carried in an
//! `io::Error` of kind `InvalidData` (a missing file stays `NotFound`), so
//! that readers report the entry and skip it, never hang.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// What kind of store file is read, and so how much of it at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A tag's `link`: one digest.
    Link,
    /// A tag's `history`: one short line per change, for as long as the
    /// tag lives (a tag pushed every minute for years stays far below).
    History,
    /// A `blocked/*.json`, a layer's `layer.json`: a few lines.
    Record,
    /// A `requests/*.json`: a few lines and the image job it asks for
    /// (one line per layer).
    Request,
    /// A digest directory's `image.json`, `manifest.json`, `config.json`,
    /// the recorded ownership of a tree: bounded like the manifests and
    /// configs a registry may send.
    Image,
    /// A layer's entry index: one entry per file of the layer.
    LayerIndex,
}

impl Kind {
    /// The most bytes a sound file of this kind holds.
    pub const fn max_bytes(self) -> u64 {
        match self {
            Kind::Link => 4 << 10,
            Kind::History => 64 << 20,
            Kind::Record => 64 << 10,
            Kind::Request => 4 << 20,
            Kind::Image => 4 << 20,
            Kind::LayerIndex => 1 << 30,
        }
    }
}

/// What is wrong with a store file that exists but is not one exploder
/// could have written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A symbolic link (store files are never links).
    Symlink,
    /// Not a regular file: a FIFO, a device, a socket, a directory.
    NotRegular(&'static str),
    /// Larger than its kind ever is.
    TooLarge(u64),
}

/// A store file that exists but cannot be sound, by path: reported and
/// skipped by readers (and, for gc, a reason to keep everything).
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "{}: {}; exploder never writes such a file there: remove or restore it",
    .path.display(),
    describe(.problem)
)]
pub struct Damaged {
    pub path: PathBuf,
    pub problem: Problem,
}

impl Damaged {
    /// What is wrong, without the path.
    pub fn problem_text(&self) -> String {
        describe(&self.problem)
    }
}

fn describe(problem: &Problem) -> String {
    match problem {
        Problem::Symlink => "a symbolic link, not a regular file".into(),
        Problem::NotRegular(kind) => format!("{kind}, not a regular file"),
        Problem::TooLarge(max) => format!("larger than {max} bytes"),
    }
}

impl From<Damaged> for io::Error {
    fn from(d: Damaged) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, d)
    }
}

/// The [`Damaged`] an error carries, if it is one.
pub fn damaged(e: &io::Error) -> Option<&Damaged> {
    e.get_ref()?.downcast_ref::<Damaged>()
}

fn file_kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// Requires `file`, opened from `path`, to be a regular file.
fn require_regular(file: &File, path: &Path) -> io::Result<()> {
    let ft = file.metadata()?.file_type();
    if ft.is_file() {
        return Ok(());
    }
    Err(Damaged {
        path: path.to_path_buf(),
        problem: Problem::NotRegular(file_kind(ft)),
    }
    .into())
}

/// Opens a store file for reading as the module documentation says:
/// never through a symlink, never blocking, a regular file or an error.
pub fn open(path: &Path) -> io::Result<File> {
    open_with(path, OFlags::RDONLY)
}

/// [`open`] with other access flags (`RDWR | APPEND | CREATE` for a
/// history that is locked and appended to).
pub(crate) fn open_with(path: &Path, access: OFlags) -> io::Result<File> {
    let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::from_raw_mode(0o666)) {
        Ok(fd) => fd,
        // ELOOP is what O_NOFOLLOW answers for a symlink.
        Err(rustix::io::Errno::LOOP) => {
            return Err(Damaged {
                path: path.to_path_buf(),
                problem: Problem::Symlink,
            }
            .into());
        }
        Err(e) => return Err(io::Error::from(e)),
    };
    let file = File::from(fd);
    require_regular(&file, path)?;
    // Blocking reads again: a regular file never blocks anyway, but the
    // flag stays off what the caller gets.
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok(file)
}

/// Opens a path a user gave (an archive named on the command line) for
/// reading: a symlink is followed (the path is the user's own, unlike a
/// store entry), but what it leads to must be a regular file, checked
/// without blocking on a FIFO.
pub fn open_regular_following(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let file = File::from(rustix::fs::open(path, flags, Mode::empty())?);
    require_regular(&file, path)?;
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok(file)
}

/// What a file that is not a regular one is (`a FIFO`), if that is what
/// `e` says.
pub fn not_regular(e: &io::Error) -> Option<&'static str> {
    match damaged(e)?.problem {
        Problem::NotRegular(kind) => Some(kind),
        _ => None,
    }
}

/// Reads what remains of `file` (opened from `path`), at most
/// `kind.max_bytes()`.
pub fn read_bounded(file: impl Read, path: &Path, kind: Kind) -> io::Result<Vec<u8>> {
    let max = kind.max_bytes();
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Damaged {
            path: path.to_path_buf(),
            problem: Problem::TooLarge(max),
        }
        .into());
    }
    Ok(bytes)
}

/// The whole of a store file of `kind` (`NotFound` if there is none).
pub fn read(path: &Path, kind: Kind) -> io::Result<Vec<u8>> {
    read_bounded(open(path)?, path, kind)
}

/// [`read`], as text (invalid UTF-8 is replaced: the parsers of store
/// records skip what they do not understand).
pub fn read_to_string(path: &Path, kind: Kind) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&read(path, kind)?).into_owned())
}

/// [`read`], or `None` when there is no such file.
pub fn read_if_exists(path: &Path, kind: Kind) -> io::Result<Option<Vec<u8>>> {
    match read(path, kind) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path) -> PathBuf {
        let p = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        p
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path());
        let e = read(&p, Kind::Link).unwrap_err();
        assert_eq!(damaged(&e).unwrap().problem, Problem::NotRegular("a FIFO"));
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), b"x").unwrap();
        let p = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("real"), &p).unwrap();
        let e = read(&p, Kind::Link).unwrap_err();
        assert_eq!(damaged(&e).unwrap().problem, Problem::Symlink);
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path(), Kind::Record).unwrap_err();
        assert_eq!(
            damaged(&e).unwrap().problem,
            Problem::NotRegular("a directory")
        );
    }

    #[test]
    fn a_file_larger_than_its_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("link");
        std::fs::write(&p, vec![b'a'; Kind::Link.max_bytes() as usize + 1]).unwrap();
        let e = read(&p, Kind::Link).unwrap_err();
        assert!(matches!(damaged(&e).unwrap().problem, Problem::TooLarge(_)));
        std::fs::write(&p, vec![b'a'; Kind::Link.max_bytes() as usize]).unwrap();
        assert_eq!(read(&p, Kind::Link).unwrap().len(), 4096);
    }

    #[test]
    fn a_missing_file_is_not_found_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(&dir.path().join("none"), Kind::Link).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(damaged(&e).is_none());
        assert!(
            read_if_exists(&dir.path().join("none"), Kind::Link)
                .unwrap()
                .is_none()
        );
    }
}
