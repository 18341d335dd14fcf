//! What a rootless store's tree could not carry: `digest/sha256/<hex>/recorded`.
//!
//! A worker that is not root cannot chown, nor set `security.capability`,
//! so the rootfs it builds has its own owner on every file and no file
//! capabilities. What the layers recorded is not lost: finalize writes it
//! here, one record per path of the final tree (its owner and the xattrs
//! the layer kept), and exports (disk images) give it to the files they
//! build. A store built as root has no such file: its tree carries it all.
//!
//! Format: records of `<uid> <gid> <xattr count> <path>\0`, each followed
//! by its xattrs as `<name>\0<hex of the value>\0`; the path is relative to
//! the rootfs (the root itself is the empty path); sorted by path. Paths
//! and names are bytes as the layers wrote them, so NUL ends each field
//! (none holds one) and nothing is escaped.

use exploder_common::store::file as store_file;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// The file's name in a digest directory.
pub const FILE_NAME: &str = "recorded";

/// What the layers recorded for one path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub uid: u32,
    pub gid: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Path (relative to the rootfs) to what was recorded for it.
pub type RecordedTree = BTreeMap<Vec<u8>, Recorded>;

pub fn encode(tree: &RecordedTree) -> Vec<u8> {
    let mut out = Vec::with_capacity(tree.len() * 32);
    for (path, r) in tree {
        out.extend_from_slice(format!("{} {} {} ", r.uid, r.gid, r.xattrs.len()).as_bytes());
        out.extend_from_slice(path);
        out.push(0);
        for (name, value) in &r.xattrs {
            out.extend_from_slice(name);
            out.push(0);
            out.extend_from_slice(hex::encode(value).as_bytes());
            out.push(0);
        }
    }
    out
}

pub fn decode(data: &[u8]) -> io::Result<RecordedTree> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("recorded: {what}"));
    let mut tree = RecordedTree::new();
    if data.is_empty() {
        return Ok(tree);
    }
    let body = data
        .strip_suffix(b"\0")
        .ok_or_else(|| bad("the last record is not terminated"))?;
    // Every field ends with a NUL: split the fields without the last one's.
    let mut fields = body.split(|b| *b == 0);
    while let Some(head) = fields.next() {
        let mut parts = head.splitn(4, |b| *b == b' ');
        let mut number = |name: &str| -> io::Result<u64> {
            let field = parts.next().ok_or_else(|| bad(&format!("no {name}")))?;
            std::str::from_utf8(field)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(&format!("{name} is not a number")))
        };
        let uid = u32::try_from(number("uid")?).map_err(|_| bad("uid out of range"))?;
        let gid = u32::try_from(number("gid")?).map_err(|_| bad("gid out of range"))?;
        let count = number("xattr count")?;
        let path = parts.next().ok_or_else(|| bad("no path"))?.to_vec();
        let mut xattrs = Vec::new();
        for _ in 0..count {
            let name = fields.next().ok_or_else(|| bad("an xattr has no name"))?;
            let value = fields.next().ok_or_else(|| bad("an xattr has no value"))?;
            let value = hex::decode(value).map_err(|_| bad("an xattr value is not hex"))?;
            xattrs.push((name.to_vec(), value));
        }
        tree.insert(path, Recorded { uid, gid, xattrs });
    }
    Ok(tree)
}

/// What was recorded for the exploded image in `digest_dir`, or `None`
/// when its tree carries it itself (built as root).
pub fn read(digest_dir: &Path) -> io::Result<Option<RecordedTree>> {
    let path = digest_dir.join(FILE_NAME);
    match store_file::read(&path, store_file::Kind::LayerIndex) {
        Ok(data) => decode(&data).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_any_bytes_in_paths_and_values() {
        let mut tree = RecordedTree::new();
        tree.insert(Vec::new(), Recorded::default());
        tree.insert(
            b"usr/bin/ping".to_vec(),
            Recorded {
                uid: 0,
                gid: 0,
                xattrs: vec![
                    (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 32]),
                    (b"user.empty".to_vec(), Vec::new()),
                ],
            },
        );
        tree.insert(
            b"odd name\nwith\xffbytes".to_vec(),
            Recorded {
                uid: 1000,
                gid: 1001,
                xattrs: Vec::new(),
            },
        );
        assert_eq!(decode(&encode(&tree)).unwrap(), tree);
    }

    #[test]
    fn a_truncated_file_is_invalid_data() {
        for bad in [&b"0 0 0 etc"[..], b"x 0 0 etc\0", b"0 0 1 etc\0user.a\0"] {
            let err = decode(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        assert!(decode(b"").unwrap().is_empty());
    }
}
