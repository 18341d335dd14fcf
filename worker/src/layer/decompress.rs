//! Choosing the decompressor from the media type, after checking that the
//! blob's first bytes agree with it.
//!
//! A mismatch (a gzip blob declared as zstd, garbage declared as gzip) is an
//! error before any byte is extracted: the media type is part of what the
//! manifest digest vouches for, so a disagreement means a broken or hostile
//! image, not something to guess around.

use std::io::{self, Cursor, Read};

use exploder_common::image::Compression;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// zstd skippable frames start with 0x184D2A50..=0x184D2A5F (little endian).
fn is_zstd_skippable(b: &[u8]) -> bool {
    b.len() >= 4 && (b[0] & 0xf0) == 0x50 && b[1..4] == [0x2a, 0x4d, 0x18]
}

fn describe(prefix: &[u8]) -> String {
    if prefix.starts_with(&GZIP_MAGIC) {
        "gzip magic".into()
    } else if prefix.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(prefix) {
        "zstd magic".into()
    } else if prefix.is_empty() {
        "nothing (empty blob)".into()
    } else {
        format!("bytes {}", hex_prefix(prefix))
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The reason a blob's first bytes contradict its media type.
#[derive(Debug)]
pub struct MagicMismatch {
    pub declared: Compression,
    pub found: String,
}

/// Wraps `blob` in the decompressor `declared` calls for.
pub fn decompressor<'a>(
    mut blob: impl Read + 'a,
    declared: Compression,
) -> io::Result<Result<Box<dyn Read + 'a>, MagicMismatch>> {
    let mut prefix = [0u8; 4];
    let mut n = 0;
    while n < prefix.len() {
        match blob.read(&mut prefix[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let prefix = &prefix[..n];
    let ok = match declared {
        Compression::Gzip => prefix.starts_with(&GZIP_MAGIC),
        Compression::Zstd => prefix.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(prefix),
        // An uncompressed tar has its magic at offset 257; what we can
        // check is that it is not a compressed stream in disguise.
        Compression::None => !prefix.starts_with(&GZIP_MAGIC) && !prefix.starts_with(&ZSTD_MAGIC),
    };
    if !ok {
        return Ok(Err(MagicMismatch {
            declared,
            found: describe(prefix),
        }));
    }
    let whole = Cursor::new(prefix.to_vec()).chain(blob);
    Ok(Ok(match declared {
        // Multi-member gzip (pigz, concatenated layers) is valid gzip.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 << 10, whole),
        )),
        // zstd's decoder reads every frame and skips skippable ones.
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole)?),
        Compression::None => Box::new(whole),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(blob: Vec<u8>, c: Compression) -> Result<Vec<u8>, String> {
        match decompressor(Cursor::new(blob), c).unwrap() {
            Ok(mut r) => {
                let mut out = Vec::new();
                r.read_to_end(&mut out).map_err(|e| e.to_string())?;
                Ok(out)
            }
            Err(m) => Err(m.found),
        }
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let mut blob = gz(b"hello ");
        blob.extend(gz(b"world"));
        assert_eq!(read_all(blob, Compression::Gzip).unwrap(), b"hello world");
    }

    #[test]
    fn zstd_with_skippable_frame_and_two_frames() {
        let mut blob = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        blob.extend(zstd::encode_all(&b"ab"[..], 1).unwrap());
        blob.extend(zstd::encode_all(&b"cd"[..], 1).unwrap());
        assert_eq!(read_all(blob, Compression::Zstd).unwrap(), b"abcd");
    }

    #[test]
    fn gzip_declared_as_zstd_is_refused() {
        let found = read_all(gz(b"x"), Compression::Zstd).unwrap_err();
        assert_eq!(found, "gzip magic");
    }

    #[test]
    fn garbage_declared_as_gzip_is_refused() {
        let found = read_all(b"not a tar".to_vec(), Compression::Gzip).unwrap_err();
        assert!(found.starts_with("bytes 6e 6f 74"), "{found}");
    }

    #[test]
    fn compressed_blob_declared_uncompressed_is_refused() {
        assert!(read_all(gz(b"x"), Compression::None).is_err());
    }
}
