//! What a test can check of the store's file objects (`<store>/objects/`,
//! issue 28) from the outside.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Every object under `<store>/objects/`, by name, with its link count.
pub fn objects(store: &Path) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let Ok(top) = std::fs::read_dir(store.join("objects")) else {
        return found;
    };
    for sub in top {
        for o in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let o = o.unwrap();
            found.insert(
                o.file_name().into_string().unwrap(),
                o.metadata().unwrap().nlink(),
            );
        }
    }
    found
}

/// The key docs/ARCHITECTURE.md names for a file: sha256 over the version
/// tag, the content's sha256, and the metadata a hardlink shares.
pub fn documented_key(path: &Path) -> String {
    let md = std::fs::symlink_metadata(path).unwrap();
    let mut h = Sha256::new();
    h.update(b"exploder-object-v1\0");
    h.update(Sha256::digest(std::fs::read(path).unwrap()));
    // Owners applied: the ingest ran as root (as the tests do).
    h.update([u8::from(rustix::process::geteuid().is_root())]);
    h.update(md.uid().to_le_bytes());
    h.update(md.gid().to_le_bytes());
    h.update((md.mode() & 0o7777).to_le_bytes());
    h.update(md.mtime().to_le_bytes());
    h.update((md.mtime_nsec() as u32).to_le_bytes());
    // No xattrs on the files of these tests.
    h.update(0u32.to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every object is named by the documented key of what it holds (a
/// copy: the key, `.`, the copy's number).
pub fn assert_objects_named_by_their_content(store: &Path) {
    for name in objects(store).keys() {
        let path = store.join("objects").join(&name[..2]).join(name);
        let key = name.split_once('.').map_or(name.as_str(), |(key, _)| key);
        assert_eq!(documented_key(&path), key, "{}", path.display());
    }
}
