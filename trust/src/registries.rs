//! Where signatures are looked for, as `containers-registries.d(5)` says:
//! YAML files in a directory (default `/etc/containers/registries.d`), each
//! with an optional `default-docker` and per-scope `docker` entries
//! (the most specific scope that sets a value wins, then `default-docker`):
//!
//! ```yaml
//! docker:
//!   registry.example.com:
//!     lookaside: https://sigs.example.com/signatures   # simple signing
//!     use-sigstore-attachments: true                   # sigstore
//! ```
//!
//! `lookaside` (or its old name `sigstore`) is the base URL of simple
//! signing signatures (`file://` or `http(s)://`); the `-staging` variants
//! are for writers and ignored. Plain flags (`--signature-lookaside`,
//! `--sigstore-attachments`) apply to every registry no file configures.

use std::collections::BTreeMap;
use std::path::Path;

use exploder_common::reference::Reference;
use serde::Deserialize;

use crate::TrustError;
use crate::policy::docker_scopes;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Namespace {
    lookaside: Option<String>,
    #[allow(dead_code)]
    lookaside_staging: Option<String>,
    sigstore: Option<String>,
    #[allow(dead_code)]
    sigstore_staging: Option<String>,
    use_sigstore_attachments: Option<bool>,
}

impl Namespace {
    fn lookaside(&self) -> Option<&str> {
        self.lookaside
            .as_deref()
            .or(self.sigstore.as_deref())
            .filter(|s| !s.is_empty())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    default_docker: Option<Namespace>,
    #[serde(default)]
    docker: Option<BTreeMap<String, Namespace>>,
}

/// Where signatures of each registry are.
#[derive(Clone, Debug, Default)]
pub struct SignatureSources {
    default_docker: Option<Namespace>,
    docker: BTreeMap<String, Namespace>,
}

/// Where to look for one image's signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// Base URL of the lookaside storage, `file://` or `http(s)://`.
    pub lookaside: Option<String>,
    pub sigstore_attachments: bool,
}

impl SignatureSources {
    /// Reads every `*.yaml` in `dir` (a missing directory is empty), then
    /// lets the plain flags fill what no file says for every registry.
    pub fn load(
        dir: Option<&Path>,
        lookaside: Option<String>,
        sigstore_attachments: bool,
    ) -> Result<SignatureSources, TrustError> {
        let mut out = SignatureSources::default();
        if let Some(dir) = dir {
            out.read_dir(dir)?;
        }
        if lookaside.is_some() || sigstore_attachments {
            let d = out.default_docker.get_or_insert_with(Namespace::default);
            if d.lookaside().is_none() {
                d.lookaside = lookaside;
            }
            if d.use_sigstore_attachments.is_none() && sigstore_attachments {
                d.use_sigstore_attachments = Some(true);
            }
        }
        Ok(out)
    }

    fn read_dir(&mut self, dir: &Path) -> Result<(), TrustError> {
        let err = |what: String, message: String| TrustError::Config { what, message };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(err(
                    format!("registries.d {}", dir.display()),
                    e.to_string(),
                ));
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        paths.sort();
        for path in paths {
            let what = || format!("registries.d file {}", path.display());
            let text = std::fs::read_to_string(&path).map_err(|e| err(what(), e.to_string()))?;
            if text.trim().is_empty() {
                continue;
            }
            let file: File =
                serde_saphyr::from_str(&text).map_err(|e| err(what(), e.to_string()))?;
            if let Some(d) = file.default_docker {
                if self.default_docker.is_some() {
                    return Err(err(what(), "default-docker is set in two files".into()));
                }
                self.default_docker = Some(d);
            }
            for (scope, ns) in file.docker.unwrap_or_default() {
                if self.docker.insert(scope.clone(), ns).is_some() {
                    return Err(err(
                        what(),
                        format!("docker scope {scope:?} is set in two files"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where `reference`'s signatures are: per setting, the most specific
    /// scope that sets it, then `default-docker`.
    pub fn lookup(&self, reference: &Reference) -> Lookup {
        let chain: Vec<&Namespace> = docker_scopes(reference)
            .iter()
            .filter_map(|s| self.docker.get(s))
            .chain(self.default_docker.as_ref())
            .collect();
        Lookup {
            lookaside: chain.iter().find_map(|n| n.lookaside()).map(str::to_string),
            sigstore_attachments: chain
                .iter()
                .find_map(|n| n.use_sigstore_attachments)
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_scope_sets_each_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "default-docker:\n  lookaside: file:///default\ndocker:\n  r.io/team:\n    use-sigstore-attachments: true\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "docker:\n  r.io:\n    sigstore: https://sigs.r.io/s\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "not: [yaml").unwrap();
        let s = SignatureSources::load(Some(dir.path()), None, false).unwrap();
        let at = |r: &str| s.lookup(&Reference::parse(r).unwrap());
        assert_eq!(
            at("r.io/team/app:1"),
            Lookup {
                lookaside: Some("https://sigs.r.io/s".into()),
                sigstore_attachments: true
            }
        );
        assert_eq!(
            at("q.io/x:1"),
            Lookup {
                lookaside: Some("file:///default".into()),
                sigstore_attachments: false
            }
        );
    }

    #[test]
    fn flags_fill_what_no_file_says() {
        let s = SignatureSources::load(None, Some("file:///sigs".into()), true).unwrap();
        let l = s.lookup(&Reference::parse("r.io/a:1").unwrap());
        assert_eq!(l.lookaside.as_deref(), Some("file:///sigs"));
        assert!(l.sigstore_attachments);
    }
}
