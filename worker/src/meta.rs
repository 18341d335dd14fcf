//! File metadata as recorded from a tar header, and applying it.
//!
//! The order is the one that keeps every bit: chown first (it clears
//! setuid/setgid), then chmod (never on a symlink: Linux has no symlink
//! modes and `fchmodat` would follow it), then xattrs, then times.
//! Directory times are applied by callers after the directory's children.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Extended attributes kept from the layer (see [`xattr_allowed`]).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Which xattrs a rootfs keeps: `user.*` and file capabilities. `trusted.*`
/// needs CAP_SYS_ADMIN and means something to the host, `security.selinux`
/// labels are the host's business; anything else (ACLs, other security
/// modules) is dropped rather than guessed at.
pub fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// Whether this process can set owners (it runs as root).
pub fn can_chown() -> bool {
    rustix::process::geteuid().is_root()
}

impl Meta {
    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime_sec,
            tv_nsec: self.mtime_nsec as _,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }

    /// Applies everything to an open file or directory (not a symlink).
    pub fn apply_fd(&self, fd: BorrowedFd<'_>, chown: bool) -> io::Result<()> {
        if chown {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
            )?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(self.mode & 0o7777))?;
        for (name, value) in &self.xattrs {
            match rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()) {
                // Not supported here, or (security.capability) not allowed
                // to an unprivileged process: the tree goes without.
                Ok(()) | Err(Errno::NOTSUP) => {}
                Err(Errno::PERM) if !chown => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("setting xattr {}: {e}", String::from_utf8_lossy(name)),
                    ));
                }
            }
        }
        Ok(rustix::fs::futimens(fd, &self.times())?)
    }

    /// Applies owner and times to a symlink `name` in `parent`, without
    /// following it. Symlinks have no mode, and Linux refuses `user.*`
    /// xattrs on them.
    pub fn apply_symlink(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        chown: bool,
    ) -> io::Result<()> {
        if chown {
            rustix::fs::chownat(
                parent,
                name,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        rustix::fs::utimensat(parent, name, &self.times(), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}
