//! `signedIdentity`: how the identity a signature claims
//! (`critical.identity.docker-reference`) must relate to the reference the
//! image was asked for, as containers/image's `policy_reference_match.go`
//! decides it.

use exploder_common::reference::Reference;
use serde::Deserialize;

use crate::policy::repository_name;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedIdentity {
    /// The default: a tag reference must be signed as exactly that tag; a
    /// digest reference only needs the same repository.
    MatchRepoDigestOrExact,
    /// The signature names exactly the reference asked for (tag or digest).
    MatchExact,
    /// The same repository, whatever the tag.
    MatchRepository,
    /// The signature names exactly this reference, whatever was asked for.
    ExactReference(String),
    /// The signature names this repository.
    ExactRepository(String),
    /// The reference asked for, with `prefix` replaced by
    /// `signed_prefix`, then as `MatchRepoDigestOrExact`.
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum IdentityFile {
    // Struct variants: see `policy::RequirementFile`.
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact {},
    #[serde(rename = "matchExact")]
    MatchExact {},
    #[serde(rename = "matchRepository")]
    MatchRepository {},
    #[serde(rename = "exactReference", rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    #[serde(rename = "exactRepository", rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    #[serde(rename = "remapIdentity", rename_all = "camelCase")]
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

impl SignedIdentity {
    /// From the policy's `signedIdentity` (absent: the default).
    pub fn parse(value: Option<serde_json::Value>) -> Result<SignedIdentity, String> {
        let Some(value) = value else {
            return Ok(SignedIdentity::MatchRepoDigestOrExact);
        };
        let parsed: IdentityFile =
            serde_json::from_value(value).map_err(|e| format!("signedIdentity: {e}"))?;
        Ok(match parsed {
            IdentityFile::MatchRepoDigestOrExact {} => SignedIdentity::MatchRepoDigestOrExact,
            IdentityFile::MatchExact {} => SignedIdentity::MatchExact,
            IdentityFile::MatchRepository {} => SignedIdentity::MatchRepository,
            IdentityFile::ExactReference { docker_reference } => {
                let r = Reference::parse(&docker_reference)
                    .map_err(|e| format!("signedIdentity exactReference: {e}"))?;
                if name_only(&r) {
                    return Err(format!(
                        "signedIdentity exactReference {docker_reference:?} needs a tag or digest"
                    ));
                }
                SignedIdentity::ExactReference(docker_reference)
            }
            IdentityFile::ExactRepository { docker_repository } => {
                Reference::parse(&docker_repository)
                    .map_err(|e| format!("signedIdentity exactRepository: {e}"))?;
                SignedIdentity::ExactRepository(docker_repository)
            }
            IdentityFile::RemapIdentity {
                prefix,
                signed_prefix,
            } => SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            },
        })
    }

    /// Whether a signature claiming `signed` satisfies this rule for an
    /// image asked for as `intended`.
    pub fn matches(&self, intended: &Reference, signed: &str) -> bool {
        let Ok(signed) = Reference::parse(signed) else {
            return false;
        };
        match self {
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(intended, &signed),
            SignedIdentity::MatchExact => {
                !name_only(intended)
                    && !name_only(&signed)
                    && signed.to_string() == intended.to_string()
            }
            SignedIdentity::MatchRepository => {
                repository_name(&signed) == repository_name(intended)
            }
            SignedIdentity::ExactReference(want) => match Reference::parse(want) {
                Ok(want) => !name_only(&signed) && signed.to_string() == want.to_string(),
                Err(_) => false,
            },
            SignedIdentity::ExactRepository(want) => match Reference::parse(want) {
                Ok(want) => repository_name(&signed) == repository_name(&want),
                Err(_) => false,
            },
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => match remap(intended, prefix, signed_prefix) {
                Some(remapped) => repo_digest_or_exact(&remapped, &signed),
                None => false,
            },
        }
    }
}

fn name_only(r: &Reference) -> bool {
    r.tag.is_none() && r.digest.is_none()
}

/// A tag reference (also with a digest): the same string; a digest
/// reference: the same repository. A signature must name a tag or digest.
fn repo_digest_or_exact(intended: &Reference, signed: &Reference) -> bool {
    if name_only(signed) {
        return false;
    }
    match (&intended.tag, &intended.digest) {
        (Some(_), _) => signed.to_string() == intended.to_string(),
        (None, Some(_)) => repository_name(signed) == repository_name(intended),
        // Asked for by name alone: what is fetched is `:latest`.
        (None, None) => signed.to_string() == intended.to_string(),
    }
}

/// `intended` with its name's `prefix` (ending at a path component)
/// replaced by `signed_prefix`; `intended` itself when the prefix does not
/// apply; `None` when the result is not a reference.
fn remap(intended: &Reference, prefix: &str, signed_prefix: &str) -> Option<Reference> {
    let name = repository_name(intended);
    let applies = name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'/'));
    if !applies {
        return Some(intended.clone());
    }
    let text = intended.to_string().replacen(prefix, signed_prefix, 1);
    let mut r = Reference::parse(&text).ok()?;
    // Display writes `:latest` for a name alone; keep the original shape.
    if intended.tag.is_none() && intended.digest.is_some() {
        r.tag = None;
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn the_default_wants_the_tag_or_the_repository_of_a_digest() {
        let id = SignedIdentity::MatchRepoDigestOrExact;
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(id.matches(&r("reg.io/a/b:v1"), "reg.io/a/b:v1"));
        assert!(!id.matches(&r("reg.io/a/b:v1"), "reg.io/a/b:v2"));
        assert!(!id.matches(&r("reg.io/a/b:v1"), "reg.io/a/c:v1"));
        assert!(!id.matches(&r("reg.io/a/b:v1"), "reg.io/a/b"));
        assert!(id.matches(&r(&format!("reg.io/a/b@{d}")), "reg.io/a/b:v9"));
        assert!(!id.matches(&r(&format!("reg.io/a/b@{d}")), "reg.io/a/c:v9"));
        assert!(id.matches(&r("busybox:1"), "docker.io/library/busybox:1"));
    }

    #[test]
    fn each_identity_rule() {
        let parse =
            |v: &str| SignedIdentity::parse(Some(serde_json::from_str(v).unwrap())).unwrap();
        let intended = r("reg.io/team/app:v1");
        assert!(parse(r#"{"type":"matchExact"}"#).matches(&intended, "reg.io/team/app:v1"));
        assert!(!parse(r#"{"type":"matchExact"}"#).matches(&intended, "reg.io/team/app:v2"));
        assert!(parse(r#"{"type":"matchRepository"}"#).matches(&intended, "reg.io/team/app:v2"));
        assert!(!parse(r#"{"type":"matchRepository"}"#).matches(&intended, "reg.io/team/x:v1"));
        let exact = parse(r#"{"type":"exactReference","dockerReference":"other.io/x:1"}"#);
        assert!(exact.matches(&intended, "other.io/x:1"));
        assert!(!exact.matches(&intended, "reg.io/team/app:v1"));
        let repo = parse(r#"{"type":"exactRepository","dockerRepository":"other.io/x"}"#);
        assert!(repo.matches(&intended, "other.io/x:7"));
        assert!(!repo.matches(&intended, "reg.io/team/app:v1"));
        let remap = parse(
            r#"{"type":"remapIdentity","prefix":"reg.io/team","signedPrefix":"upstream.io/team"}"#,
        );
        assert!(remap.matches(&intended, "upstream.io/team/app:v1"));
        assert!(!remap.matches(&intended, "reg.io/team/app:v1"));
        assert!(!remap.matches(&r("reg.io/teamx/app:v1"), "upstream.io/teamx/app:v1"));
    }
}
