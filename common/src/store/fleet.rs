//! Whether a fleet has ever used the store: `<store>/fleet`.
//!
//! A store only `exploder explode` writes has no images in progress
//! anywhere but in the one process exploding, so `exploder gc` needs no
//! Redis to collect it. A store the fleet uses (workers, the producer,
//! `exploder enqueue`, `exploder poll`) does: the image jobs in flight are
//! recorded there. The marker is written by the first fleet process that
//! touches the store, before it records or consumes anything, and never
//! removed: a store once shared stays a fleet store.

use std::io;
use std::path::PathBuf;

use super::{StoreLayout, write_file_atomic};

/// The marker's file name, at the top of the store.
pub const FLEET_MARKER: &str = "fleet";

impl StoreLayout {
    /// `<store>/fleet`.
    pub fn fleet_marker(&self) -> PathBuf {
        self.root().join(FLEET_MARKER)
    }

    /// Records that a fleet process (`who`: `exploder-worker`, ...) uses
    /// the store. Idempotent and cheap when already recorded; the first
    /// writer's words stay.
    pub fn mark_fleet(&self, who: &str) -> io::Result<()> {
        let path = self.fleet_marker();
        if path.exists() {
            return Ok(());
        }
        let text = format!(
            "This store is used by an exploder fleet (first: {who}, at Unix time {}).\n\
             exploder gc needs the fleet's Redis to collect it.\n",
            crate::history::now()
        );
        write_file_atomic(&path, text.as_bytes())
    }

    /// Whether a fleet process ever used the store. An unreadable marker
    /// is an error: "no fleet" must not be guessed.
    pub fn fleet_used(&self) -> io::Result<bool> {
        match std::fs::symlink_metadata(self.fleet_marker()) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_a_fleet_store_once_marked_and_stays_one() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path());
        assert!(!layout.fleet_used().unwrap());
        layout.mark_fleet("exploder-worker").unwrap();
        layout.mark_fleet("exploder enqueue").unwrap();
        assert!(layout.fleet_used().unwrap());
        let text = std::fs::read_to_string(layout.fleet_marker()).unwrap();
        assert!(text.contains("exploder-worker"), "{text}");
    }
}
