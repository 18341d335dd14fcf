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
            let (path, tag) = parse_path_and_tag(s, rest)?;
            Ok(ImageRef::OciLayout { path, tag })
        } else if let Some(rest) = s.strip_prefix(OCI_ARCHIVE_PREFIX) {
            let (path, tag) = parse_path_and_tag(s, rest)?;
            Ok(ImageRef::OciArchive { path, tag })
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

/// Whether `tag` is a tag by Docker's grammar, and nothing more: no
/// `@digest`, no `:`. For tags that come alone (a webhook's tag field),
/// checked before they are put into a reference.
pub fn is_valid_tag(tag: &str) -> bool {
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

/// `PATH[:TAG]` of `oci:` and `oci-archive:`. PATH may itself contain
/// ':', so the text after the last ':' is a tag only if it is a valid tag
/// (which never contains '/'): "oci:/a:b/c" is the path "/a:b/c". A
/// trailing ':' is an empty tag.
fn parse_path_and_tag(
    input: &str,
    rest: &str,
) -> Result<(PathBuf, Option<String>), ReferenceError> {
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if is_valid_tag(tag) => (path, Some(tag)),
        Some((path, "")) => (path, Some("")),
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(input, Problem::EmptyOciPath));
    }
    Ok((PathBuf::from(path), parse_tag(input, tag)?))
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
mod tests;
