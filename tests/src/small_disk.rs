//! An ext4 file system of a test's own: a file loop-mounted on a fresh
//! directory, unmounted even when the test fails. For what only a real,
//! small file system shows: running out of space (`tests/full_store.rs`),
//! ext4's 65,000 links per inode (`tests/file_objects.rs`).
//!
//! Needs root (mount, loop devices) and mkfs.ext4 (e2fsprogs, which
//! scripts/test installs).

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;

/// An ext4 file system in a file, loop-mounted on a fresh directory;
/// unmounted (the loop device with it) and deleted on drop.
pub struct SmallDisk {
    /// The file system's file and the mount point; deleted once unmounted
    /// (fields drop after `drop`).
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

impl SmallDisk {
    /// `mib` MiB, no blocks reserved for root (what is free is free to
    /// everyone, so the numbers below are exact).
    pub fn new(mib: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("exploder-full-store-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("disk.ext4");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-b", "4096"])
            .arg(&image));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount -o loop {} (needs root and loop devices): {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let disk = SmallDisk { _dir: dir, mnt };
        std::fs::create_dir(disk.store()).unwrap();
        disk
    }

    /// The store: a directory on the small file system (its filler sits
    /// beside it).
    pub fn store(&self) -> PathBuf {
        self.mnt.join("store")
    }

    /// Bytes free for writers.
    pub fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.mnt).unwrap();
        s.f_bavail * s.f_frsize
    }

    /// Takes all but `left` bytes with a filler file (allocated, not
    /// sparse); returns what is free then (at most `left`).
    ///
    /// A worker may still be freeing blocks as the filler grows (a
    /// request record it removes after linking an image), so the filler
    /// is grown again until what is free is at most `left`.
    pub fn fill_leaving(&self, left: u64) -> u64 {
        let filler = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(self.filler())
            .unwrap();
        let mut taken = 0;
        for _ in 0..100 {
            let free = self.free();
            if free <= left {
                return free;
            }
            let take = free - left;
            rustix::fs::fallocate(&filler, rustix::fs::FallocateFlags::empty(), taken, take)
                .unwrap();
            filler.sync_all().unwrap();
            taken += take;
        }
        panic!("{} bytes free after filling, wanted {left}", self.free());
    }

    /// Fills the file system to the last block.
    pub fn fill_up(&self) {
        self.fill_leaving(64 << 10);
        let mut top = std::fs::File::create(self.mnt.join("top-off")).unwrap();
        let block = [0x55u8; 4096];
        loop {
            use std::io::Write;
            match top.write_all(&block).and_then(|()| top.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break;
                }
                Err(e) => panic!("topping off: {e}"),
            }
        }
        assert_eq!(self.free(), 0);
    }

    /// Frees the space the filler took ("an operator freed space").
    pub fn free_space(&self) {
        std::fs::remove_file(self.filler()).unwrap();
        let _ = std::fs::remove_file(self.mnt.join("top-off"));
    }

    pub fn filler(&self) -> PathBuf {
        self.mnt.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Whatever still has a file open there (a worker being killed)
        // keeps a plain umount busy: detach it lazily then.
        let plain = Command::new("umount").arg(&self.mnt).output();
        if !plain.is_ok_and(|o| o.status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
