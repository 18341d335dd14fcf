//! Image archives read in place: an OCI layout in a tar
//! (`oci-archive:`, read by [`super::oci_layout`] through [`TarIndex`]) and
//! `docker save`'s format (`docker-archive:`, [`DockerArchiveFetcher`]).
//!
//! Nothing is unpacked: one pass over the tar headers (seeking over the
//! data) records where each member's bytes are, and a blob is then read
//! from the archive file at that offset. Only uncompressed tars can be read
//! this way, which is what skopeo and `docker save` write. Archive contents
//! are as untrusted as a registry's: the members are only ever read, never
//! written anywhere, and every blob is verified by the ingest.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BlobReader, FetchError, MAX_MANIFEST_BYTES, RawManifest};
use crate::digest::{Algorithm, Digest, HashingReader};
use crate::image::media_type;

/// Most members an archive may have (an image has a few per layer).
const MAX_MEMBERS: usize = 100_000;

/// Where each regular file of a tar archive is: offset and size of its
/// data, by its path (without a leading `./`).
pub struct TarIndex {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

impl TarIndex {
    /// Reads the headers of the archive at `path` (and nothing else).
    pub fn open(path: &Path) -> Result<TarIndex, FetchError> {
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FetchError::NotFound {
                    what: "archive".into(),
                    location: path.display().to_string(),
                }
            } else {
                FetchError::Io {
                    context: format!("reading the archive {}", path.display()),
                    source: e,
                }
            }
        };
        let invalid = |message: String| FetchError::Invalid {
            what: format!("archive {}", path.display()),
            message,
        };
        let mut file = open_archive(path)?;
        let len = file.metadata().map_err(io)?.len();
        let truncated = |member: String| FetchError::Truncated {
            path: path.display().to_string(),
            at: len,
            member,
        };
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io)?;
        if n >= 2 && (magic[..2] == [0x1f, 0x8b] || magic[..4] == [0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(invalid(
                "it is compressed; only uncompressed tar archives (as skopeo and docker save \
                 write them) are read in place: decompress it first"
                    .into(),
            ));
        }
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        // The last member read, and where its data ends (rounded up to the
        // next 512-byte block, where the next header starts).
        let mut last: Option<(String, u64)> = None;
        let the_header_after = |last: &Option<(String, u64)>| match last {
            Some((name, _)) => format!("the header after {name}"),
            None => "the first header".to_string(),
        };
        for entry in archive.entries_with_seek().map_err(io)? {
            let entry = match entry {
                Ok(entry) => entry,
                // A header cut short: the file ends before its 512 bytes.
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof
                        || last.as_ref().map_or(0, |(_, end)| *end) + 512 > len =>
                {
                    return Err(truncated(the_header_after(&last)));
                }
                Err(e) => return Err(invalid(format!("not a tar archive: {e}"))),
            };
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_string();
            let (start, size) = (entry.raw_file_position(), entry.size());
            if start.saturating_add(size) > len {
                return Err(truncated(name));
            }
            last = Some((name.clone(), start + size.next_multiple_of(512)));
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            entry
                .path()
                .map_err(|e| invalid(format!("a member's name: {e}")))?;
            members.insert(name, (start, size));
            if members.len() > MAX_MEMBERS {
                return Err(invalid(format!("more than {MAX_MEMBERS} members")));
            }
        }
        // A tar ends with zero blocks (skopeo, docker save and every tar
        // tool write two): headers that stop at the end of the file without
        // one were cut at a member's boundary.
        if let Some((_, end)) = &last
            && end + 512 > len
        {
            return Err(truncated(the_header_after(&last)));
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// The member `name`'s bytes as a stream, or `None` if there is none.
    pub fn open_member(&self, name: &str) -> Result<Option<BlobReader>, FetchError> {
        let Some(&(offset, size)) = self.members.get(name) else {
            return Ok(None);
        };
        let mut file = open_archive(&self.path)?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| FetchError::Io {
                context: format!("reading {name} in {}", self.path.display()),
                source: e,
            })?;
        Ok(Some(Box::new(file.take(size))))
    }

    /// A small member (index, manifest, config) whole, refusing more than
    /// [`MAX_MANIFEST_BYTES`]; `None` if there is none.
    pub fn read_member(&self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        if let Some(&(_, size)) = self.members.get(name)
            && size > MAX_MANIFEST_BYTES
        {
            return Err(FetchError::Invalid {
                what: format!("{name} in {}", self.path.display()),
                message: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let Some(mut reader) = self.open_member(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| FetchError::Io {
            context: format!("reading {name} in {}", self.path.display()),
            source: e,
        })?;
        Ok(Some(bytes))
    }
}

/// The archive file at `path`, opened without blocking and required to be
/// a regular file: a FIFO, a device or a directory is refused at once (a
/// FIFO would block the open, a device never end). A symlink is followed:
/// the path is the user's own, given on the command line.
fn open_archive(path: &Path) -> Result<File, FetchError> {
    crate::store::file::open_regular_following(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FetchError::NotFound {
                what: "archive".into(),
                location: path.display().to_string(),
            }
        } else if let Some(d) = crate::store::file::not_regular(&e) {
            FetchError::Invalid {
                what: format!("archive {}", path.display()),
                message: format!(
                    "it is {d}, not a regular file: an archive is read in place, \
                     so save it to a file first"
                ),
            }
        } else {
            FetchError::Io {
                context: format!("opening the archive {}", path.display()),
                source: e,
            }
        }
    })
}

/// One image of a `docker save` archive (`manifest.json`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The image config fields this needs: the diff_ids of the layers.
#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<Digest>,
}

/// A `docker save` archive. It has no registry manifest, so one is made
/// for the image: an OCI manifest whose config is the archive's config
/// and whose layers are the archive's layer tars, in order. Its digest is
/// what the image is stored under; the same archive always gives the same
/// manifest.
pub struct DockerArchiveFetcher {
    index: TarIndex,
    manifest: RawManifest,
    /// Blob digest → member name.
    blobs: HashMap<Digest, String>,
}

impl DockerArchiveFetcher {
    /// The image named `name` (`REPOSITORY:TAG`, one of its `RepoTags`),
    /// or the archive's only image.
    pub fn new(path: &Path, name: Option<&str>) -> Result<Self, FetchError> {
        let index = TarIndex::open(path)?;
        let location = format!("docker-archive:{}", path.display());
        let invalid = |message: String| FetchError::Invalid {
            what: location.clone(),
            message,
        };
        let listing = index
            .read_member("manifest.json")?
            .ok_or_else(|| invalid("no manifest.json: not a docker save archive".into()))?;
        let saved: Vec<SavedImage> =
            serde_json::from_slice(&listing).map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let tags = |i: &SavedImage| i.repo_tags.clone().unwrap_or_default();
        let image = match name {
            Some(n) => saved
                .iter()
                .find(|i| {
                    tags(i)
                        .iter()
                        .any(|t| t == n || normalized(t) == normalized(n))
                })
                .ok_or_else(|| FetchError::NotFound {
                    what: format!("image {n}"),
                    location: location.clone(),
                })?,
            None => match saved.as_slice() {
                [one] => one,
                _ => {
                    let all: Vec<String> = saved.iter().flat_map(tags).collect();
                    return Err(invalid(format!(
                        "it holds {} images: name one, e.g. docker-archive:{}:{}",
                        saved.len(),
                        path.display(),
                        all.first().map_or("REPOSITORY:TAG", |t| t.as_str())
                    )));
                }
            },
        };
        let config = index
            .read_member(&image.config)?
            .ok_or_else(|| invalid(format!("the config {} is missing", image.config)))?;
        let diff_ids = serde_json::from_slice::<Config>(&config)
            .map_err(|e| invalid(format!("the config {}: {e}", image.config)))?
            .rootfs
            .diff_ids;
        if diff_ids.len() != image.layers.len() {
            return Err(invalid(format!(
                "{} layers but {} diff_ids in the config",
                image.layers.len(),
                diff_ids.len()
            )));
        }
        let config_digest = Digest::sha256_of(&config);
        let mut blobs = HashMap::from([(config_digest.clone(), image.config.clone())]);
        let mut layers = Vec::new();
        for (member, diff_id) in image.layers.iter().zip(diff_ids) {
            let size = index
                .members
                .get(member)
                .map(|&(_, size)| size)
                .ok_or_else(|| invalid(format!("the layer {member} is missing")))?;
            // docker save writes layers uncompressed: the blob is the
            // diff_id's tar (the ingest checks it). Compressed ones (as some
            // tools write) are hashed here to be named.
            let (digest, media) = match compression_of(&index, member)? {
                None => (diff_id, media_type::OCI_LAYER),
                Some(media) => (hash_member(&index, member)?, media),
            };
            layers.push(serde_json::json!({
                "mediaType": media,
                "digest": digest.to_string(),
                "size": size,
            }));
            blobs.insert(digest, member.clone());
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {
                "mediaType": media_type::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers,
        }))
        .expect("a manifest serializes");
        Ok(DockerArchiveFetcher {
            index,
            manifest: RawManifest {
                digest: Digest::sha256_of(&manifest),
                bytes: manifest,
                media_type: Some(media_type::OCI_MANIFEST.into()),
            },
            blobs,
        })
    }

    pub fn location(&self) -> String {
        format!("docker-archive:{}", self.index.path().display())
    }

    /// The image's manifest, whatever was asked: the archive was opened
    /// for one image.
    pub fn manifest(&self) -> RawManifest {
        self.manifest.clone()
    }

    pub fn blob(&self, digest: &Digest) -> Result<BlobReader, FetchError> {
        let not_found = || FetchError::NotFound {
            what: format!("blob {digest}"),
            location: self.location(),
        };
        let member = self.blobs.get(digest).ok_or_else(not_found)?;
        self.index.open_member(member)?.ok_or_else(not_found)
    }
}

/// `docker.io/library/app:v1`, `library/app:v1` and `app:v1` are one name.
fn normalized(name: &str) -> String {
    crate::reference::Reference::parse(name)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| name.to_string())
}

/// The compressed layer media type of a member, from its first bytes;
/// `None` for a plain tar.
fn compression_of(index: &TarIndex, member: &str) -> Result<Option<&'static str>, FetchError> {
    let mut head = [0u8; 4];
    let mut reader = index.open_member(member)?.expect("listed");
    let n = reader.read(&mut head).unwrap_or(0);
    Ok(if n >= 2 && head[..2] == [0x1f, 0x8b] {
        Some(media_type::OCI_LAYER_GZIP)
    } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
        Some(media_type::OCI_LAYER_ZSTD)
    } else {
        None
    })
}

fn hash_member(index: &TarIndex, member: &str) -> Result<Digest, FetchError> {
    let reader = index.open_member(member)?.expect("listed");
    HashingReader::new(reader, Algorithm::Sha256)
        .finish()
        .map(|(digest, _)| digest)
        .map_err(|e| FetchError::Io {
            context: format!("reading {member} in {}", index.path().display()),
            source: e,
        })
}
