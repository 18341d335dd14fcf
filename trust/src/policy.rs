//! `containers-policy.json(5)`, as skopeo, podman and CRI-O read it: which
//! requirements an image must satisfy, chosen by the most specific scope
//! that names it.
//!
//! ```json
//! {"default": [{"type": "reject"}],
//!  "transports": {"docker": {
//!     "registry.example.com": [{"type": "sigstoreSigned", "keyPath": "/etc/pki/ours.pub"}],
//!     "docker.io/library": [{"type": "insecureAcceptAnything"}]}}}
//! ```
//!
//! Scopes of the `docker` transport, most specific first: the exact
//! reference (`host/repo:tag` or `host/repo@sha256:…`), the repository
//! (`host/repo`), each namespace above it (`host/ns`), the host, the host's
//! wildcard domains (`*.example.com`), then the transport's `""` scope; the
//! top-level `default` last. Every requirement of the chosen scope must be
//! met. Requirement types: `insecureAcceptAnything`, `reject`, `signedBy`
//! (`keyType: GPGKeys`, `keyPath`/`keyPaths`/`keyData`) and
//! `sigstoreSigned` with a public key (`keyPath`/`keyPaths`/`keyData`).
//! Keyless sigstore (`fulcio`, `rekorPublicKey*`) and the other key types
//! are refused when the policy is loaded, never silently ignored; so are
//! unknown fields.
//!
//! Key paths are absolute, or relative to the policy file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use exploder_common::reference::Reference;
use serde::Deserialize;

use crate::TrustError;
use crate::identity::SignedIdentity;

/// A loaded policy: every key read and parsed, so a broken key file is an
/// error at start-up, not at the first image.
#[derive(Debug)]
pub struct Policy {
    default: Scope,
    /// transport → scope name → requirements.
    transports: BTreeMap<String, BTreeMap<String, Scope>>,
}

/// The requirements of one scope, with the scope's name for messages.
#[derive(Clone, Debug)]
pub struct Scope {
    pub name: String,
    pub requirements: Vec<Requirement>,
}

#[derive(Clone, Debug)]
pub enum Requirement {
    InsecureAcceptAnything,
    Reject,
    /// Simple signing with one of these OpenPGP keys.
    SignedBy {
        keys: crate::simple::Keyring,
        identity: SignedIdentity,
    },
    /// A sigstore signature by one of these public keys.
    SigstoreSigned {
        keys: crate::sigstore::PublicKeys,
        identity: SignedIdentity,
    },
}

impl Requirement {
    pub fn kind(&self) -> &'static str {
        match self {
            Requirement::InsecureAcceptAnything => "insecureAcceptAnything",
            Requirement::Reject => "reject",
            Requirement::SignedBy { .. } => "signedBy",
            Requirement::SigstoreSigned { .. } => "sigstoreSigned",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Vec<RequirementFile>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<RequirementFile>>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RequirementFile {
    // Struct variants, not unit ones: serde ignores deny_unknown_fields
    // on the unit variants of an internally tagged enum.
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    #[serde(rename = "reject")]
    Reject {},
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        key_type: String,
        key_path: Option<PathBuf>,
        key_paths: Option<Vec<PathBuf>>,
        key_data: Option<String>,
        signed_identity: Option<serde_json::Value>,
    },
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    SigstoreSigned {
        key_path: Option<PathBuf>,
        key_paths: Option<Vec<PathBuf>>,
        key_data: Option<String>,
        key_datas: Option<Vec<String>>,
        fulcio: Option<serde_json::Value>,
        rekor_public_key_path: Option<PathBuf>,
        rekor_public_key_paths: Option<Vec<PathBuf>>,
        rekor_public_key_data: Option<String>,
        rekor_public_key_datas: Option<Vec<String>>,
        signed_identity: Option<serde_json::Value>,
    },
}

impl Policy {
    /// Reads and checks `path` and every key it names.
    pub fn load(path: &Path) -> Result<Policy, TrustError> {
        let text = std::fs::read(path).map_err(|e| TrustError::Config {
            what: format!("policy {}", path.display()),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        Policy::parse(&text, base).map_err(|message| TrustError::Config {
            what: format!("policy {}", path.display()),
            message,
        })
    }

    /// Parses a policy; relative key paths are taken from `base`.
    pub fn parse(text: &[u8], base: &Path) -> Result<Policy, String> {
        let file: PolicyFile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let default = scope("default", file.default, base)?;
        let mut transports = BTreeMap::new();
        for (transport, scopes) in file.transports {
            let mut parsed = BTreeMap::new();
            for (name, reqs) in scopes {
                let label = format!("transports.{transport}.{name:?}");
                if transport == "docker" && !name.is_empty() {
                    check_docker_scope(&name).map_err(|e| format!("{label}: {e}"))?;
                }
                parsed.insert(name, scope(&label, reqs, base)?);
            }
            transports.insert(transport, parsed);
        }
        Ok(Policy {
            default,
            transports,
        })
    }

    /// The requirements for a registry reference: its most specific
    /// `docker` scope, else the transport's `""`, else `default`.
    pub fn for_docker(&self, reference: &Reference) -> &Scope {
        let scopes = self.transports.get("docker");
        if let Some(scopes) = scopes {
            for name in docker_scopes(reference) {
                if let Some(s) = scopes.get(&name) {
                    return s;
                }
            }
        }
        self.for_transport("docker")
    }

    /// The requirements for an image of another transport (`oci`,
    /// `oci-archive`, `docker-archive`, `file`): its transport's `""`
    /// scope, else `default`. Path scopes of those transports are not
    /// read.
    pub fn for_transport(&self, transport: &str) -> &Scope {
        self.transports
            .get(transport)
            .and_then(|s| s.get(""))
            .unwrap_or(&self.default)
    }
}

/// The scope names that may apply to `reference`, most specific first, as
/// containers/image's `PolicyConfigurationIdentity` and
/// `PolicyConfigurationNamespaces`.
pub fn docker_scopes(reference: &Reference) -> Vec<String> {
    let name = repository_name(reference);
    let mut out = Vec::new();
    match (&reference.digest, &reference.tag) {
        (Some(d), _) => out.push(format!("{name}@{d}")),
        (None, tag) => out.push(format!("{name}:{}", tag.as_deref().unwrap_or("latest"))),
    }
    let mut current = name.as_str();
    loop {
        out.push(current.to_string());
        match current.rfind('/') {
            Some(i) => current = &current[..i],
            None => break,
        }
    }
    // *.example.com, *.com for registry.example.com (host only: no port).
    let host = reference.host();
    let mut rest = host;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        if !rest.is_empty() {
            out.push(format!("*.{rest}"));
        }
    }
    out
}

/// `host/repository`: the name a policy and a signature identity use.
pub fn repository_name(reference: &Reference) -> String {
    format!("{}/{}", reference.registry, reference.repository)
}

fn check_docker_scope(name: &str) -> Result<(), String> {
    if let Some(domain) = name.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['/', '*', ':', '@']) {
            return Err("a wildcard scope is *.domain, nothing after it".into());
        }
        return Ok(());
    }
    if name.contains('*') {
        return Err("a wildcard is only allowed as the leading *. of a domain".into());
    }
    if name.ends_with('/') {
        return Err("a scope does not end with /".into());
    }
    Ok(())
}

fn scope(label: &str, reqs: Vec<RequirementFile>, base: &Path) -> Result<Scope, String> {
    if reqs.is_empty() {
        return Err(format!(
            "{label}: no requirements (an empty list is refused, as containers/image does)"
        ));
    }
    let requirements = reqs
        .into_iter()
        .map(|r| requirement(r, base).map_err(|e| format!("{label}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Scope {
        name: label.to_string(),
        requirements,
    })
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

/// Exactly one of the key sources, as bytes.
fn key_material(
    path: Option<PathBuf>,
    paths: Option<Vec<PathBuf>>,
    data: Option<String>,
    datas: Option<Vec<String>>,
    base: &Path,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let given = [
        path.is_some(),
        paths.is_some(),
        data.is_some(),
        datas.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("exactly one of keyPath, keyPaths, keyData (keyDatas) is required".into());
    }
    let mut out = Vec::new();
    for p in path.into_iter().chain(paths.into_iter().flatten()) {
        let p = resolve(base, p);
        let bytes = std::fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        out.push((p.display().to_string(), bytes));
    }
    for (i, d) in data
        .into_iter()
        .chain(datas.into_iter().flatten())
        .enumerate()
    {
        let bytes = STANDARD
            .decode(d.trim())
            .map_err(|e| format!("keyData is not base64: {e}"))?;
        out.push((format!("keyData #{}", i + 1), bytes));
    }
    if out.is_empty() {
        return Err("keyPaths is empty".into());
    }
    Ok(out)
}

fn requirement(r: RequirementFile, base: &Path) -> Result<Requirement, String> {
    Ok(match r {
        RequirementFile::InsecureAcceptAnything {} => Requirement::InsecureAcceptAnything,
        RequirementFile::Reject {} => Requirement::Reject,
        RequirementFile::SignedBy {
            key_type,
            key_path,
            key_paths,
            key_data,
            signed_identity,
        } => {
            if key_type != "GPGKeys" {
                return Err(format!(
                    "signedBy keyType {key_type:?} is not supported (only GPGKeys)"
                ));
            }
            let material = key_material(key_path, key_paths, key_data, None, base)?;
            Requirement::SignedBy {
                keys: crate::simple::Keyring::parse(&material)?,
                identity: SignedIdentity::parse(signed_identity)?,
            }
        }
        RequirementFile::SigstoreSigned {
            key_path,
            key_paths,
            key_data,
            key_datas,
            fulcio,
            rekor_public_key_path,
            rekor_public_key_paths,
            rekor_public_key_data,
            rekor_public_key_datas,
            signed_identity,
        } => {
            if fulcio.is_some() {
                return Err("sigstoreSigned with fulcio (keyless) is not supported: \
                     use a public key (keyPath or keyData)"
                    .into());
            }
            if rekor_public_key_path.is_some()
                || rekor_public_key_paths.is_some()
                || rekor_public_key_data.is_some()
                || rekor_public_key_datas.is_some()
            {
                return Err("sigstoreSigned with a Rekor key is not supported \
                     (Rekor inclusion is not verified)"
                    .into());
            }
            let material = key_material(key_path, key_paths, key_data, key_datas, base)?;
            Requirement::SigstoreSigned {
                keys: crate::sigstore::PublicKeys::parse(&material)?,
                identity: SignedIdentity::parse(signed_identity)?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn scopes_go_from_the_reference_to_the_domain() {
        assert_eq!(
            docker_scopes(&r("registry.example.com:5000/team/app:v1")),
            [
                "registry.example.com:5000/team/app:v1",
                "registry.example.com:5000/team/app",
                "registry.example.com:5000/team",
                "registry.example.com:5000",
                "*.example.com",
                "*.com",
            ]
        );
        assert_eq!(
            docker_scopes(&r("busybox"))[0],
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn the_most_specific_scope_wins() {
        let p = Policy::parse(
            br#"{"default": [{"type": "reject"}],
                 "transports": {"docker": {
                    "r.example": [{"type": "reject"}],
                    "r.example/team": [{"type": "insecureAcceptAnything"}],
                    "r.example/team/app:bad": [{"type": "reject"}],
                    "*.example": [{"type": "insecureAcceptAnything"}]}}}"#,
            Path::new("/"),
        )
        .unwrap();
        let kinds = |s: &str| {
            p.for_docker(&r(s))
                .requirements
                .iter()
                .map(|x| x.kind())
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds("r.example/team/app:v1"), ["insecureAcceptAnything"]);
        assert_eq!(kinds("r.example/team/app:bad"), ["reject"]);
        assert_eq!(kinds("r.example/other:v1"), ["reject"]);
        assert_eq!(kinds("q.example/other:v1"), ["insecureAcceptAnything"]);
        assert_eq!(kinds("elsewhere.io/x:v1"), ["reject"]);
        assert_eq!(p.for_transport("oci").name, "default");
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        let bad = [
            r#"{"default": []}"#,
            r#"{"default": [{"type": "accept"}]}"#,
            r#"{"default": [{"type": "reject", "extra": 1}]}"#,
            r#"{"default": [{"type": "signedBy", "keyType": "X509Certificates", "keyData": ""}]}"#,
            r#"{"default": [{"type": "sigstoreSigned", "fulcio": {}}]}"#,
            r#"{"default": [{"type": "sigstoreSigned"}]}"#,
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"a/*": [{"type": "reject"}]}}}"#,
        ];
        for b in bad {
            assert!(Policy::parse(b.as_bytes(), Path::new("/")).is_err(), "{b}");
        }
    }
}
