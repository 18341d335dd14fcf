//! Image references, parsed the way Docker parses them.
//!
//! [`Reference`] follows Docker's grammar (the `distribution/reference` Go
//! package, `ParseNormalizedNamed`):
//!
//! ```text
//! reference      := name [ ":" tag ] [ "@" digest ]
//! name           := [ domain "/" ] path-component { "/" path-component }
//! domain         := host [ ":" port ]
//! host           := domain-name | "[" ipv6 "]"
//! path-component := [a-z0-9]+ { separator [a-z0-9]+ }
//! separator      := "." | "_" | "__" | "-"+
//! tag            := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```
//!
//! with Docker's normalization: no domain means `docker.io`,
//! `index.docker.io` means `docker.io`, and a one-component repository on
//! `docker.io` lives under `library/`.
//!
//! [`ImageRef`] adds the transports skopeo users type (`docker://REF` is
//! the registry reference) and the local sources exploder reads besides a
//! registry: an OCI image layout (`oci:PATH[:TAG]`), the same in a tar
//! archive (`oci-archive:PATH[:TAG]`), `docker save`'s archive
//! (`docker-archive:PATH[:REF]`) and a registry's storage directory
//! (`file://ROOT/REPOSITORY[:TAG][@DIGEST]`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::digest::{Digest, DigestError};

/// What to fetch a manifest by: a tag, or a digest that pins the content
/// ([`Reference::target`] decides which).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestTarget {
    Tag(String),
    Digest(Digest),
}

/// The registry used when a reference names none (Docker's `defaultDomain`).
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The old name of Docker Hub, normalized to [`DEFAULT_REGISTRY`].
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
/// Where Docker Hub keeps official images: `redis` is `library/redis`.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag fetched when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker's `NameTotalLengthMax`: `registry/repository` at most this long.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Docker's tag grammar allows one leading character and 127 more.
const TAG_MAX_LEN: usize = 128;

const OCI_PREFIX: &str = "oci:";
const OCI_ARCHIVE_PREFIX: &str = "oci-archive:";
const DOCKER_ARCHIVE_PREFIX: &str = "docker-archive:";
const DOCKER_PREFIX: &str = "docker://";
const FILE_PREFIX: &str = "file://";
/// What a registry storage root contains (the filesystem driver's layout).
const STORAGE_MARKER: &str = "docker/registry/v2";

/// What the accepted forms look like, for error messages.
const ACCEPTED_FORMS: &str = "[docker://]REGISTRY/REPOSITORY[:TAG][@DIGEST], oci:PATH[:TAG], \
     oci-archive:PATH[:TAG], docker-archive:PATH[:REPOSITORY:TAG] or \
     file://ROOT/REPOSITORY[:TAG][@DIGEST]";

/// A registry reference parsed as Docker does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reference {
    /// `docker.io` by default; otherwise `host[:port]` as written, e.g.
    /// `localhost:5000`, `[::1]:5000`, `127.0.0.1:5000`.
    pub registry: String,
    /// The repository path, e.g. `library/redis` for `redis` on docker.io.
    pub repository: String,
    /// The tag as written; `None` if absent.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Any image reference exploder accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageRef {
    /// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`
    Registry(Reference),
    /// `oci:PATH[:TAG]`: an OCI image layout directory (like skopeo's `oci:`
    /// transport).
    OciLayout { path: PathBuf, tag: Option<String> },
    /// `oci-archive:PATH[:TAG]`: an OCI image layout in a tar archive (like
    /// skopeo's `oci-archive:`), read in place.
    OciArchive { path: PathBuf, tag: Option<String> },
    /// `docker-archive:PATH[:REPOSITORY:TAG]`: a `docker save` archive (like
    /// skopeo's `docker-archive:`); the image named by one of its
    /// `RepoTags`, or its only image. Read in place.
    DockerArchive {
        path: PathBuf,
        /// `REPOSITORY:TAG` as in the archive's `RepoTags`.
        name: Option<String>,
    },
    /// `file://ROOT/REPOSITORY[:TAG][@DIGEST]`: a registry storage root (the
    /// directory containing `docker/registry/v2`) and a repository in it.
    StorageDir {
        root: PathBuf,
        repository: String,
        tag: Option<String>,
        digest: Option<Digest>,
    },
}

/// A reference that could not be parsed. Every message names the whole
/// input and says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference {input:?}: {problem}")]
    Invalid { input: String, problem: Problem },
    // Not `#[source]`: the digest error is already part of this message, and
    // error reports that print the chain would print it twice.
    #[error("invalid reference {input:?}: {error}")]
    Digest { input: String, error: DigestError },
    #[error(
        "invalid reference {input:?}: no registry storage root found: no leading directory \
         of {} contains {STORAGE_MARKER}",
        .path.display()
    )]
    NoStorageRoot { input: String, path: PathBuf },
}

/// What is wrong with an invalid reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("reference is empty; expected {ACCEPTED_FORMS}")]
    Empty,
    #[error("leading or trailing whitespace")]
    Whitespace,
    #[error("unsupported transport {0:?}; expected {ACCEPTED_FORMS}")]
    UnsupportedTransport(String),
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("repository name is missing")]
    EmptyRepository,
    #[error("empty path component (\"//\" or a '/' at the start or end of the repository)")]
    EmptyPathComponent,
    #[error(
        "repository path component {0:?} is invalid: expected lowercase letters and digits, \
         separated by single '.', '_' or '__', or by dashes"
    )]
    PathComponent(String),
    #[error(
        "registry {0:?} is invalid: expected HOST[:PORT], HOST being a DNS name (letters, \
         digits, inner '-', separated by '.') or [IPv6], PORT being digits"
    )]
    Registry(String),
    #[error(
        "tag {0:?} is invalid: expected 1 to 128 characters of [A-Za-z0-9_.-], not starting \
         with '.' or '-'"
    )]
    Tag(String),
    #[error("name {name:?} is {len} characters long; at most 255 are allowed")]
    NameTooLong { name: String, len: usize },
    #[error(
        "a 64-character hexadecimal string is an image ID, not a repository name; \
         write sha256:... after '@' to pull by digest"
    )]
    HexName,
    #[error("the OCI layout path is empty; expected oci:PATH[:TAG]")]
    EmptyOciPath,
    #[error("the archive path is empty; expected {0}PATH")]
    EmptyArchivePath(&'static str),
    #[error("{0:?} names no image in an archive; expected REPOSITORY:TAG")]
    ArchiveName(String),
    #[error("the storage path is empty; expected file://ROOT/REPOSITORY[:TAG][@DIGEST]")]
    EmptyStoragePath,
    #[error("the storage root {0:?} is followed by no repository; expected file://ROOT/REPOSITORY")]
    NoRepositoryAfterRoot(String),
}

impl ReferenceError {
    /// The same error naming `input` (the whole text typed, with its
    /// transport) as the reference.
    fn with_input(self, input: &str) -> ReferenceError {
        let input = input.to_string();
        match self {
            ReferenceError::Invalid { problem, .. } => ReferenceError::Invalid { input, problem },
            ReferenceError::Digest { error, .. } => ReferenceError::Digest { input, error },
            ReferenceError::NoStorageRoot { path, .. } => {
                ReferenceError::NoStorageRoot { input, path }
            }
        }
    }
}

fn invalid(input: &str, problem: Problem) -> ReferenceError {
    ReferenceError::Invalid {
        input: input.to_string(),
        problem,
    }
}

impl Reference {
    /// Parses `s` as Docker's `ParseNormalizedNamed` does.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        check_outer_form(s)?;
        // Docker refuses a bare 64-hex name: it would be mistaken for an
        // image ID (`anchoredIdentifierRegexp`).
        if s.len() == 64 && s.bytes().all(is_lower_hex) {
            return Err(invalid(s, Problem::HexName));
        }
        let parts = split_tag_and_digest(s);
        let (registry, repository) = split_docker_domain(parts.name);
        validate_registry(s, &registry)?;
        validate_repository(s, &repository)?;
        check_name_length(s, &registry, &repository)?;
        Ok(Reference {
            registry,
            repository,
            tag: parse_tag(s, parts.tag)?,
            digest: parse_digest(s, parts.digest)?,
        })
    }

    /// The tag to fetch when there is no digest: the tag or "latest".
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// What to fetch: the digest if present (a digest pins the content, so
    /// Docker ignores the tag beside it), else the tag or "latest".
    pub fn target(&self) -> ManifestTarget {
        match &self.digest {
            Some(digest) => ManifestTarget::Digest(digest.clone()),
            None => ManifestTarget::Tag(self.tag_or_latest().to_string()),
        }
    }

    /// True for loopback registries: 127.0.0.0/8, "localhost" (with or
    /// without port), "[::1]".
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
            || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The host name without port ("127.0.0.1", "localhost", "::1",
    /// "docker.io").
    pub fn host(&self) -> &str {
        split_host_port(&self.registry).0
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// The canonical full form: always the registry, the tag if any, the digest
/// if any, and `:latest` when there is neither (what would be fetched).
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.tag, &self.digest) {
            (Some(tag), _) => write!(f, ":{tag}")?,
            (None, None) => write!(f, ":{DEFAULT_TAG}")?,
            (None, Some(_)) => {}
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl ImageRef {
    /// Parses any accepted form: `oci:`, `oci-archive:`, `docker-archive:`
    /// and `file://` prefixes select the local sources; `docker://` and no
    /// prefix are a registry reference.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        check_outer_form(s)?;
        if let Some(rest) = s.strip_prefix(OCI_PREFIX) {
            parse_oci_layout(s, rest)
        } else if let Some(rest) = s.strip_prefix(OCI_ARCHIVE_PREFIX) {
            match parse_oci_layout(s, rest)? {
                ImageRef::OciLayout { path, tag } => Ok(ImageRef::OciArchive { path, tag }),
                _ => unreachable!("parse_oci_layout gives an OCI layout"),
            }
        } else if let Some(rest) = s.strip_prefix(DOCKER_ARCHIVE_PREFIX) {
            parse_docker_archive(s, rest)
        } else if let Some(rest) = s.strip_prefix(DOCKER_PREFIX) {
            // skopeo's spelling of a registry reference.
            Reference::parse(rest)
                .map(ImageRef::Registry)
                .map_err(|e| e.with_input(s))
        } else if let Some(rest) = s.strip_prefix(FILE_PREFIX) {
            parse_storage_dir(s, rest)
        } else if let Some((scheme, _)) = s.split_once("://") {
            // Docker would reject "docker://x" with a confusing message
            // about the registry "docker:"; say what is accepted instead.
            Err(invalid(
                s,
                Problem::UnsupportedTransport(format!("{scheme}://")),
            ))
        } else {
            Reference::parse(s).map(ImageRef::Registry)
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Rejects what no form accepts: empty input and surrounding whitespace
/// (a copy-paste slip that would otherwise surface as an odd tag or path).
fn check_outer_form(s: &str) -> Result<(), ReferenceError> {
    if s.is_empty() {
        return Err(invalid(s, Problem::Empty));
    }
    if s.trim() != s {
        return Err(invalid(s, Problem::Whitespace));
    }
    Ok(())
}

/// A reference cut into its name and the raw text after ':' and '@'.
struct Parts<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Cuts `[name][:tag][@digest]`. Neither a tag nor a digest contains '/',
/// while a registry port (`localhost:5000/a`) or a storage path may contain
/// ':' or '@': so each suffix is taken after the *last* separator, and only
/// when no '/' follows it.
fn split_tag_and_digest(s: &str) -> Parts<'_> {
    let (rest, digest) = split_suffix(s, '@');
    let (name, tag) = split_suffix(rest, ':');
    Parts { name, tag, digest }
}

fn split_suffix(s: &str, separator: char) -> (&str, Option<&str>) {
    match s.rsplit_once(separator) {
        Some((head, suffix)) if !suffix.contains('/') => (head, Some(suffix)),
        _ => (s, None),
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry only if
/// it looks like a host: it contains '.' or ':' (a domain, an IP, a port),
/// is exactly "localhost", or has uppercase letters (repositories cannot).
/// Otherwise the image is on docker.io, where `index.docker.io` is an alias
/// and one-component names are official images under `library/`.
fn split_docker_domain(name: &str) -> (String, String) {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if looks_like_registry(first) => (first, rest),
        _ => (DEFAULT_REGISTRY, name),
    };
    let registry = if registry == LEGACY_DEFAULT_REGISTRY {
        DEFAULT_REGISTRY
    } else {
        registry
    };
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{repository}")
    } else {
        repository.to_string()
    };
    (registry.to_string(), repository)
}

fn looks_like_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// `host[:port]`, host a DNS-like name or a bracketed IPv6 address.
fn validate_registry(input: &str, registry: &str) -> Result<(), ReferenceError> {
    let bad = || invalid(input, Problem::Registry(registry.to_string()));
    let (host, port) = split_host_port(registry);
    let host_ok = if registry.starts_with('[') {
        registry.contains(']') && is_ipv6_literal(host)
    } else {
        is_domain_name(host)
    };
    // Docker's port is `[0-9]+`: present means non-empty.
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Splits `host[:port]`, taking the brackets off an IPv6 host. The port is
/// `None` when there is no ':' after the host.
fn split_host_port(registry: &str) -> (&str, Option<&str>) {
    if let Some(bracketed) = registry.strip_prefix('[') {
        return match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                // Junk after ']': leave it in the port so validation fails.
                None => (host, Some(rest)),
            },
            None => (bracketed, None),
        };
    }
    match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    }
}

/// Docker's `ipv6address`: `[a-fA-F0-9:]+` between the brackets (which
/// [`split_host_port`] took off).
fn is_ipv6_literal(host: &str) -> bool {
    !host.is_empty() && host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
}

/// Docker's `domainName`: components of letters and digits with '-' only
/// inside, separated by single dots.
fn is_domain_name(host: &str) -> bool {
    host.split('.').all(|label| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    })
}

/// Checks a repository path (`team/app`) by Docker's rules, for names given
/// apart from a reference (`exploder explode --name`): its components
/// become directories of the store, so `..` and friends must not pass.
pub fn validate_repository_name(repository: &str) -> Result<(), ReferenceError> {
    validate_repository(repository, repository)
}

/// The repository: path components separated by single '/'. Docker checks
/// case first, so "Redis" gets the clear "must be lowercase" message rather
/// than a generic syntax error.
fn validate_repository(input: &str, repository: &str) -> Result<(), ReferenceError> {
    if repository.is_empty() {
        return Err(invalid(input, Problem::EmptyRepository));
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(input, Problem::Uppercase));
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(invalid(input, Problem::EmptyPathComponent));
        }
        if !is_path_component(component) {
            return Err(invalid(
                input,
                Problem::PathComponent(component.to_string()),
            ));
        }
    }
    Ok(())
}

/// Docker's `pathComponent`: runs of `[a-z0-9]` joined by one separator,
/// where a separator is ".", "_", "__" or any number of dashes; it can
/// neither start nor end the component.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let run = bytes[i..]
            .iter()
            .take_while(|b| is_lower_alnum(**b))
            .count();
        if run == 0 {
            return false; // empty, or a separator at the start or doubled up
        }
        i += run;
        if i == bytes.len() {
            return true;
        }
        let sep = bytes[i..]
            .iter()
            .take_while(|b| !is_lower_alnum(**b))
            .count();
        if !is_separator(&bytes[i..i + sep]) {
            return false;
        }
        i += sep; // the next run must follow, so a trailing separator fails
    }
}

fn is_separator(sep: &[u8]) -> bool {
    matches!(sep, b"." | b"_" | b"__") || (!sep.is_empty() && sep.iter().all(|b| *b == b'-'))
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Docker's `NameTotalLengthMax` applies to the normalized name.
fn check_name_length(input: &str, registry: &str, repository: &str) -> Result<(), ReferenceError> {
    let name = format!("{registry}/{repository}");
    let len = name.len();
    if len > NAME_TOTAL_LENGTH_MAX {
        return Err(invalid(input, Problem::NameTooLong { name, len }));
    }
    Ok(())
}

/// Docker's tag: `[\w][\w.-]{0,127}`. An empty tag ("redis:") is an error,
/// not a missing one.
fn parse_tag(input: &str, tag: Option<&str>) -> Result<Option<String>, ReferenceError> {
    match tag {
        None => Ok(None),
        Some(tag) if is_valid_tag(tag) => Ok(Some(tag.to_string())),
        Some(tag) => Err(invalid(input, Problem::Tag(tag.to_string()))),
    }
}

fn is_valid_tag(tag: &str) -> bool {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX_LEN
        && is_word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|b| is_word(*b) || *b == b'.' || *b == b'-')
}

/// Digests go through [`Digest`], which knows the algorithms exploder can
/// verify (sha256, sha512); its error is kept, with the whole reference.
fn parse_digest(input: &str, digest: Option<&str>) -> Result<Option<Digest>, ReferenceError> {
    digest
        .map(|d| {
            d.parse().map_err(|error| ReferenceError::Digest {
                input: input.to_string(),
                error,
            })
        })
        .transpose()
}

/// `oci:PATH[:TAG]`. PATH may itself contain ':', so the text after the last
/// ':' is a tag only if it is a valid tag (which never contains '/'):
/// "oci:/a:b/c" is the path "/a:b/c". A trailing ':' is an empty tag.
fn parse_oci_layout(input: &str, rest: &str) -> Result<ImageRef, ReferenceError> {
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if is_valid_tag(tag) => (path, Some(tag)),
        Some((path, "")) => (path, Some("")),
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(input, Problem::EmptyOciPath));
    }
    let tag = parse_tag(input, tag)?;
    Ok(ImageRef::OciLayout {
        path: PathBuf::from(path),
        tag,
    })
}

/// `docker-archive:PATH[:REPOSITORY:TAG]`. As in skopeo, PATH ends at the
/// first ':' (it cannot contain one); what follows names the image by one
/// of the archive's `RepoTags`.
fn parse_docker_archive(input: &str, rest: &str) -> Result<ImageRef, ReferenceError> {
    let (path, name) = match rest.split_once(':') {
        Some((path, name)) => (path, Some(name)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(
            input,
            Problem::EmptyArchivePath(DOCKER_ARCHIVE_PREFIX),
        ));
    }
    let name = match name {
        None => None,
        Some(n) => {
            // It must read as a tagged reference: REPOSITORY:TAG.
            match Reference::parse(n) {
                Ok(r) if r.tag.is_some() && r.digest.is_none() => Some(n.to_string()),
                _ => return Err(invalid(input, Problem::ArchiveName(n.to_string()))),
            }
        }
    };
    Ok(ImageRef::DockerArchive {
        path: PathBuf::from(path),
        name,
    })
}

/// `file://ROOT/REPOSITORY[:TAG][@DIGEST]`. Where ROOT ends cannot be told
/// from the text (both are paths), so it is found on disk: the longest
/// leading directory that holds `docker/registry/v2`, as a registry's
/// filesystem storage driver lays it out.
fn parse_storage_dir(input: &str, rest: &str) -> Result<ImageRef, ReferenceError> {
    if rest.is_empty() {
        return Err(invalid(input, Problem::EmptyStoragePath));
    }
    let parts = split_tag_and_digest(rest);
    let (root, repository) = find_storage_root(input, parts.name)?;
    validate_repository(input, repository)?;
    Ok(ImageRef::StorageDir {
        root,
        repository: repository.to_string(),
        tag: parse_tag(input, parts.tag)?,
        digest: parse_digest(input, parts.digest)?,
    })
}

/// Tries each '/' of `path` from the right: the text before it is a root
/// candidate (the filesystem root for a leading '/'), the text after it the
/// repository. The whole path is tried last, only to say that the
/// repository is missing.
fn find_storage_root<'a>(input: &str, path: &'a str) -> Result<(PathBuf, &'a str), ReferenceError> {
    let is_root = |dir: &str| {
        let dir = if dir.is_empty() { "/" } else { dir };
        Path::new(dir).join(STORAGE_MARKER).is_dir()
    };
    for (i, _) in path.rmatch_indices('/') {
        let (dir, repository) = (&path[..i], &path[i + 1..]);
        if is_root(dir) {
            let root = if dir.is_empty() { "/" } else { dir };
            return Ok((PathBuf::from(root), repository));
        }
    }
    if !path.is_empty() && is_root(path) {
        return Err(invalid(
            input,
            Problem::NoRepositoryAfterRoot(path.to_string()),
        ));
    }
    Err(ReferenceError::NoStorageRoot {
        input: input.to_string(),
        path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn sha512() -> String {
        format!("sha512:{}", "ab".repeat(64))
    }

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn problem(s: &str) -> Problem {
        match Reference::parse(s) {
            Err(ReferenceError::Invalid { problem, .. }) => problem,
            other => panic!("{s:?} should be invalid, got {other:?}"),
        }
    }

    fn reference(registry: &str, repository: &str, tag: Option<&str>) -> Reference {
        Reference {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.map(Into::into),
            digest: None,
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "exploder-reference-{name}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let dir = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn bare_name_defaults_to_docker_hub_library() {
        assert_eq!(
            parse("redis"),
            reference("docker.io", "library/redis", None)
        );
    }

    #[test]
    fn bare_name_with_tag_keeps_tag() {
        assert_eq!(
            parse("redis:7"),
            reference("docker.io", "library/redis", Some("7"))
        );
    }

    #[test]
    fn user_repository_defaults_to_docker_hub_without_library() {
        assert_eq!(parse("user/app"), reference("docker.io", "user/app", None));
    }

    #[test]
    fn index_docker_io_is_normalized_to_docker_io() {
        assert_eq!(
            parse("index.docker.io/redis"),
            reference("docker.io", "library/redis", None)
        );
        assert_eq!(
            parse("docker.io/redis"),
            reference("docker.io", "library/redis", None)
        );
    }

    #[test]
    fn localhost_with_port_is_a_registry() {
        assert_eq!(
            parse("localhost:5000/a"),
            reference("localhost:5000", "a", None)
        );
    }

    #[test]
    fn ip_with_port_is_a_registry_and_keeps_tag() {
        assert_eq!(
            parse("127.0.0.1:5000/team/app:v1"),
            reference("127.0.0.1:5000", "team/app", Some("v1"))
        );
    }

    #[test]
    fn localhost_without_port_is_a_registry() {
        assert_eq!(parse("localhost/a"), reference("localhost", "a", None));
    }

    #[test]
    fn host_and_port_without_path_is_a_docker_hub_name_and_tag() {
        // As Docker: with no '/', "localhost:5000" is the image localhost:5000.
        assert_eq!(
            parse("localhost:5000"),
            reference("docker.io", "library/localhost", Some("5000"))
        );
    }

    #[test]
    fn bracketed_ipv6_with_port_is_a_registry() {
        let r = parse("[::1]:5000/x");
        assert_eq!(r, reference("[::1]:5000", "x", None));
        assert_eq!(r.host(), "::1");
    }

    #[test]
    fn host_drops_the_port() {
        assert_eq!(parse("127.0.0.1:5000/a").host(), "127.0.0.1");
        assert_eq!(parse("localhost:5000/a").host(), "localhost");
        assert_eq!(parse("redis").host(), "docker.io");
    }

    #[test]
    fn tag_and_digest_are_both_kept() {
        let r = parse(&format!("r.example/x:t@{SHA256}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.digest, Some(SHA256.parse().unwrap()));
    }

    #[test]
    fn target_prefers_digest_over_tag() {
        let r = parse(&format!("redis:7@{SHA256}"));
        assert_eq!(r.target(), ManifestTarget::Digest(SHA256.parse().unwrap()));
    }

    #[test]
    fn target_is_tag_or_latest_without_digest() {
        assert_eq!(parse("redis:7").target(), ManifestTarget::Tag("7".into()));
        assert_eq!(
            parse("redis").target(),
            ManifestTarget::Tag("latest".into())
        );
        assert_eq!(parse("redis").tag_or_latest(), "latest");
    }

    #[test]
    fn sha512_digest_is_accepted() {
        let r = parse(&format!("localhost:5000/a/b@{}", sha512()));
        assert_eq!(r.digest.unwrap().to_string(), sha512());
        assert_eq!(r.tag, None);
    }

    #[test]
    fn uppercase_repository_is_rejected() {
        assert_eq!(problem("Redis"), Problem::Uppercase);
        assert_eq!(problem("docker.io/library/Redis:7"), Problem::Uppercase);
        assert_eq!(
            Reference::parse("Redis").unwrap_err().to_string(),
            r#"invalid reference "Redis": repository name must be lowercase"#
        );
    }

    #[test]
    fn uppercase_first_component_is_a_registry_as_in_docker() {
        // Docker's splitDockerDomain: repositories cannot be uppercase, so
        // an uppercase first component can only be a host.
        assert_eq!(parse("Host/app"), reference("Host", "app", None));
    }

    #[test]
    fn uppercase_tag_is_allowed() {
        assert_eq!(parse("redis:V1").tag.as_deref(), Some("V1"));
    }

    #[test]
    fn tag_longer_than_128_is_rejected() {
        let ok = format!("redis:{}", "a".repeat(128));
        assert!(Reference::parse(&ok).is_ok());
        let long = "a".repeat(129);
        assert_eq!(problem(&format!("redis:{long}")), Problem::Tag(long));
    }

    #[test]
    fn tag_starting_with_dot_or_dash_is_rejected() {
        assert_eq!(problem("redis:.v1"), Problem::Tag(".v1".into()));
        assert_eq!(problem("redis:-v1"), Problem::Tag("-v1".into()));
    }

    #[test]
    fn empty_tag_is_rejected() {
        assert_eq!(problem("redis:"), Problem::Tag(String::new()));
    }

    #[test]
    fn unknown_digest_algorithm_is_rejected_with_the_whole_reference() {
        let input = "redis@md5:d41d8cd98f00b204e9800998ecf8427e";
        let err = Reference::parse(input).unwrap_err();
        assert!(matches!(
            &err,
            ReferenceError::Digest { error: DigestError::Algorithm(a), .. } if a == "md5"
        ));
        let message = err.to_string();
        assert!(message.contains(input), "{message}");
        assert!(message.contains("sha256"), "{message}");
    }

    #[test]
    fn empty_digest_is_rejected() {
        assert!(matches!(
            Reference::parse("redis@"),
            Err(ReferenceError::Digest { .. })
        ));
    }

    #[test]
    fn doubled_dot_separator_is_rejected() {
        assert_eq!(problem("a..b"), Problem::PathComponent("a..b".into()));
    }

    #[test]
    fn trailing_separator_is_rejected() {
        assert_eq!(problem("a-"), Problem::PathComponent("a-".into()));
    }

    #[test]
    fn leading_separator_is_rejected() {
        assert_eq!(problem("-a"), Problem::PathComponent("-a".into()));
    }

    #[test]
    fn triple_underscore_is_rejected() {
        assert_eq!(problem("a___b"), Problem::PathComponent("a___b".into()));
    }

    #[test]
    fn allowed_separators_are_accepted() {
        for name in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1-b2.c3__d4"] {
            parse(name);
        }
    }

    #[test]
    fn empty_and_whitespace_and_double_slash_are_rejected() {
        assert_eq!(problem(""), Problem::Empty);
        assert_eq!(problem(" redis"), Problem::Whitespace);
        assert_eq!(problem("redis\n"), Problem::Whitespace);
        assert_eq!(problem("//"), Problem::EmptyPathComponent);
        assert_eq!(problem("user//app"), Problem::EmptyPathComponent);
        assert_eq!(problem("user/app/"), Problem::EmptyPathComponent);
    }

    #[test]
    fn registry_without_repository_is_rejected() {
        assert_eq!(problem("localhost:5000/"), Problem::EmptyRepository);
    }

    #[test]
    fn invalid_registries_are_rejected() {
        for (input, registry) in [
            ("a_b.com/x", "a_b.com"),
            ("-a.com/x", "-a.com"),
            ("a..com/x", "a..com"),
            ("localhost:/x", "localhost:"),
            ("localhost:50a/x", "localhost:50a"),
            ("[::1/x", "[::1"),
            ("[]:5000/x", "[]:5000"),
            ("[::1]x/y", "[::1]x"),
        ] {
            assert_eq!(
                problem(input),
                Problem::Registry(registry.into()),
                "{input}"
            );
        }
    }

    #[test]
    fn name_longer_than_255_is_rejected() {
        // "docker.io/" (10) + 245 = 255: the longest allowed.
        let ok = format!("user/{}", "a".repeat(240));
        assert!(Reference::parse(&ok).is_ok());
        let too_long = format!("user/{}", "a".repeat(241));
        assert!(matches!(
            problem(&too_long),
            Problem::NameTooLong { len: 256, .. }
        ));
    }

    #[test]
    fn hex_image_id_is_not_a_name() {
        assert_eq!(problem(&"a".repeat(64)), Problem::HexName);
    }

    #[test]
    fn is_loopback_for_loopback_registries() {
        for r in [
            "127.1.2.3/a",
            "127.0.0.1:5000/a",
            "localhost/a",
            "localhost:5000/a",
            "[::1]/a",
            "[::1]:5000/a",
        ] {
            assert!(parse(r).is_loopback(), "{r}");
        }
    }

    #[test]
    fn is_loopback_false_for_other_registries() {
        for r in [
            "redis",
            "docker.io/a",
            "10.0.0.1:5000/a",
            "localhost.example.com/a",
            "[::2]/a",
        ] {
            assert!(!parse(r).is_loopback(), "{r}");
        }
    }

    #[test]
    fn display_is_the_canonical_full_form() {
        assert_eq!(parse("redis").to_string(), "docker.io/library/redis:latest");
        assert_eq!(
            parse(&format!("localhost:5000/a/b@{SHA256}")).to_string(),
            format!("localhost:5000/a/b@{SHA256}")
        );
        assert_eq!(
            parse(&format!("r.example/x:t@{SHA256}")).to_string(),
            format!("r.example/x:t@{SHA256}")
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "redis:7".to_string(),
            "[::1]:5000/x:v1".to_string(),
            format!("127.0.0.1:5000/team/app:v1@{}", sha512()),
            format!("localhost/a@{SHA256}"),
        ] {
            let r = parse(&s);
            assert_eq!(parse(&r.to_string()), r, "{s}");
        }
    }

    #[test]
    fn reference_serializes_digest_as_string() {
        let json = serde_json::to_value(parse(&format!("redis@{SHA256}"))).unwrap();
        assert_eq!(json["digest"], SHA256);
        assert_eq!(json["repository"], "library/redis");
    }

    #[test]
    fn image_ref_plain_reference_is_registry() {
        assert_eq!(
            ImageRef::parse("redis:7").unwrap(),
            ImageRef::Registry(reference("docker.io", "library/redis", Some("7")))
        );
    }

    #[test]
    fn image_ref_serializes_with_kind() {
        let json = serde_json::to_value(ImageRef::parse("oci:/l:v1").unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "oci_layout", "path": "/l", "tag": "v1"})
        );
        let json = serde_json::to_value(ImageRef::parse("redis").unwrap()).unwrap();
        assert_eq!(json["kind"], "registry");
        assert_eq!(json["registry"], "docker.io");
    }

    fn oci(s: &str) -> (PathBuf, Option<String>) {
        match ImageRef::parse(s) {
            Ok(ImageRef::OciLayout { path, tag }) => (path, tag),
            other => panic!("{s:?} should be an OCI layout, got {other:?}"),
        }
    }

    #[test]
    fn oci_layout_without_tag() {
        assert_eq!(oci("oci:/tmp/layout"), ("/tmp/layout".into(), None));
    }

    #[test]
    fn oci_layout_with_tag() {
        assert_eq!(
            oci("oci:/tmp/layout:v1"),
            ("/tmp/layout".into(), Some("v1".into()))
        );
    }

    #[test]
    fn oci_layout_relative_path() {
        assert_eq!(oci("oci:./dir"), ("./dir".into(), None));
    }

    #[test]
    fn oci_layout_colon_inside_path_is_not_a_tag() {
        assert_eq!(oci("oci:/a:b/c"), ("/a:b/c".into(), None));
    }

    #[test]
    fn oci_layout_empty_path_is_rejected() {
        for s in ["oci:", "oci::v1"] {
            assert!(
                matches!(
                    ImageRef::parse(s),
                    Err(ReferenceError::Invalid {
                        problem: Problem::EmptyOciPath,
                        ..
                    })
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn oci_layout_trailing_colon_is_an_empty_tag() {
        assert!(matches!(
            ImageRef::parse("oci:/tmp/layout:"),
            Err(ReferenceError::Invalid {
                problem: Problem::Tag(_),
                ..
            })
        ));
    }

    #[test]
    fn file_url_empty_path_is_rejected() {
        assert!(matches!(
            ImageRef::parse("file://"),
            Err(ReferenceError::Invalid {
                problem: Problem::EmptyStoragePath,
                ..
            })
        ));
    }

    #[test]
    fn other_transports_are_rejected() {
        let err = ImageRef::parse("containers-storage://redis").unwrap_err();
        assert_eq!(
            err,
            invalid(
                "containers-storage://redis",
                Problem::UnsupportedTransport("containers-storage://".into())
            )
        );
        assert!(err.to_string().contains("oci:PATH"), "{err}");
        assert!(err.to_string().contains("docker-archive:"), "{err}");
    }

    #[test]
    fn docker_scheme_is_the_registry_reference_skopeo_users_type() {
        assert_eq!(
            ImageRef::parse("docker://redis:7").unwrap(),
            ImageRef::parse("redis:7").unwrap()
        );
        assert!(ImageRef::parse("docker://localhost:5000/team/app@sha256:").is_err());
        let err = ImageRef::parse("docker://Team/App").unwrap_err();
        assert!(err.to_string().contains("docker://Team/App"), "{err}");
    }

    #[test]
    fn oci_archive_takes_a_path_and_a_tag_like_oci() {
        assert_eq!(
            ImageRef::parse("oci-archive:/tmp/a:b/img.tar:v1").unwrap(),
            ImageRef::OciArchive {
                path: "/tmp/a:b/img.tar".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:img.tar").unwrap(),
            ImageRef::OciArchive {
                path: "img.tar".into(),
                tag: None
            }
        );
    }

    #[test]
    fn docker_archive_names_an_image_by_repository_and_tag() {
        assert_eq!(
            ImageRef::parse("docker-archive:/tmp/img.tar:team/app:v1").unwrap(),
            ImageRef::DockerArchive {
                path: "/tmp/img.tar".into(),
                name: Some("team/app:v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:img.tar").unwrap(),
            ImageRef::DockerArchive {
                path: "img.tar".into(),
                name: None
            }
        );
        for bad in [
            "docker-archive:",
            "docker-archive::x:v1",
            "docker-archive:a.tar:Team/x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        assert!(ImageRef::parse("docker-archive:a.tar:team/app").is_err());
    }

    fn storage_tree(name: &str) -> (TempDir, String) {
        let tmp = TempDir::new(name);
        // The storage root sits below a directory with a ':' to show the
        // split is found on disk, not in the text.
        let root = tmp.0.join("srv:1/registry");
        std::fs::create_dir_all(root.join(STORAGE_MARKER)).unwrap();
        let root = root.to_str().unwrap().to_string();
        (tmp, root)
    }

    #[test]
    fn file_url_splits_root_and_repository_on_disk() {
        let (_tmp, root) = storage_tree("split");
        let parsed = ImageRef::parse(&format!("file://{root}/team/app:v1@{SHA256}")).unwrap();
        assert_eq!(
            parsed,
            ImageRef::StorageDir {
                root: PathBuf::from(&root),
                repository: "team/app".into(),
                tag: Some("v1".into()),
                digest: Some(SHA256.parse().unwrap()),
            }
        );
    }

    #[test]
    fn file_url_takes_the_longest_storage_root() {
        let (_tmp, outer) = storage_tree("longest");
        let inner = format!("{outer}/nested");
        std::fs::create_dir_all(Path::new(&inner).join(STORAGE_MARKER)).unwrap();
        match ImageRef::parse(&format!("file://{inner}/app")).unwrap() {
            ImageRef::StorageDir {
                root,
                repository,
                tag,
                digest,
            } => {
                assert_eq!(root, PathBuf::from(&inner));
                assert_eq!(repository, "app");
                assert_eq!((tag, digest), (None, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_url_repository_follows_repository_rules() {
        let (_tmp, root) = storage_tree("rules");
        assert!(matches!(
            ImageRef::parse(&format!("file://{root}/Team/app")),
            Err(ReferenceError::Invalid {
                problem: Problem::Uppercase,
                ..
            })
        ));
        assert!(matches!(
            ImageRef::parse(&format!("file://{root}/team/app:.bad")),
            Err(ReferenceError::Invalid {
                problem: Problem::Tag(_),
                ..
            })
        ));
    }

    #[test]
    fn file_url_root_without_repository_is_rejected() {
        let (_tmp, root) = storage_tree("norepo");
        assert!(matches!(
            ImageRef::parse(&format!("file://{root}")),
            Err(ReferenceError::Invalid {
                problem: Problem::NoRepositoryAfterRoot(_),
                ..
            })
        ));
    }

    #[test]
    fn file_url_without_storage_root_is_a_clear_error() {
        let tmp = TempDir::new("none");
        let path = format!("{}/team/app", tmp.0.display());
        let input = format!("file://{path}:v1");
        let err = ImageRef::parse(&input).unwrap_err();
        assert_eq!(
            err,
            ReferenceError::NoStorageRoot {
                input: input.clone(),
                path: PathBuf::from(&path),
            }
        );
        let message = err.to_string();
        assert!(message.contains(&input), "{message}");
        assert!(message.contains("docker/registry/v2"), "{message}");
    }
}
