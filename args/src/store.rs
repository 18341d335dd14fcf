//! `--store`: checked when the flag is read, so a wrong path is a usage
//! error naming the path, not an I/O error from deep inside whatever
//! first touched the store.

use std::path::PathBuf;

/// A store a command may create: anything but an existing non-directory.
pub fn store_dir(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_dir() => Err(format!(
            "{s} is a file, not a directory: --store (EXPLODER_STORE) names the store's directory"
        )),
        _ => Ok(path),
    }
}

/// A store a command only reads or changes: it must exist. A missing
/// store is a typo in the path far more often than an empty store.
pub fn existing_store(s: &str) -> Result<PathBuf, String> {
    let path = store_dir(s)?;
    match std::fs::metadata(&path) {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{s} does not exist: --store (EXPLODER_STORE) names an existing store; \
             `exploder explode` creates one"
        )),
        Err(e) => Err(format!("{s}: {e}")),
    }
}
