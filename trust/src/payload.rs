//! The JSON both kinds of signature sign: what image (its manifest digest)
//! and what identity (a Docker reference) the signer vouches for.
//!
//! ```json
//! {"critical": {"type": "atomic container signature",
//!               "image": {"docker-manifest-digest": "sha256:…"},
//!               "identity": {"docker-reference": "registry.example.com/app:v1"}},
//!  "optional": {"creator": "…", "timestamp": 1700000000}}
//! ```
//!
//! Simple signing uses the type `atomic container signature`, sigstore
//! `cosign container image signature`. As in containers/image, the
//! `critical` object must hold exactly these fields: a signer's tool that
//! adds a critical field means something this reader does not know.

use exploder_common::digest::Digest;
use serde::Deserialize;

pub const SIMPLE_SIGNING_TYPE: &str = "atomic container signature";
pub const SIGSTORE_TYPE: &str = "cosign container image signature";

/// What a verified payload claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub manifest_digest: Digest,
    pub docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)]
    optional: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: Image,
    identity: Identity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    reference: String,
}

/// Parses a payload whose signature was verified; `kind` is the type it
/// must declare.
pub fn parse(bytes: &[u8], kind: &str) -> Result<Claim, String> {
    let p: Payload =
        serde_json::from_slice(bytes).map_err(|e| format!("signature payload: {e}"))?;
    if p.critical.kind != kind {
        return Err(format!(
            "signature payload of type {:?}, expected {kind:?}",
            p.critical.kind
        ));
    }
    let manifest_digest = p
        .critical
        .image
        .digest
        .parse()
        .map_err(|e| format!("signature payload: docker-manifest-digest: {e}"))?;
    Ok(Claim {
        manifest_digest,
        docker_reference: p.critical.identity.reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_says_what_and_who() {
        let d = format!("sha256:{}", "b".repeat(64));
        let text = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a:1"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"atomic container signature"}},"optional":{{"creator":"x"}}}}"#
        );
        let c = parse(text.as_bytes(), SIMPLE_SIGNING_TYPE).unwrap();
        assert_eq!(c.manifest_digest.to_string(), d);
        assert_eq!(c.docker_reference, "r.io/a:1");
        assert!(parse(text.as_bytes(), SIGSTORE_TYPE).is_err());
        let extra = text.replace(r#""type""#, r#""new":1,"type""#);
        assert!(parse(extra.as_bytes(), SIMPLE_SIGNING_TYPE).is_err());
    }
}
