//! sigstore signatures with a public key, as cosign and skopeo
//! `--sign-by-sigstore-private-key` make them: an ECDSA P-256 / SHA-256
//! signature (ASN.1 DER, base64 in the layer annotation
//! `dev.cosignproject.cosign/signature`) over the exact bytes of the
//! payload blob (see `payload`).
//!
//! Verified with RustCrypto's `p256`; the key is a PEM `PUBLIC KEY`
//! (SubjectPublicKeyInfo), as `cosign generate-key-pair` writes
//! `cosign.pub`. Other key types cosign can use (RSA, Ed25519) are refused
//! when the policy is loaded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

/// The annotation that holds a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of a signature layer (its blob is the payload).
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The public keys a `sigstoreSigned` requirement trusts.
#[derive(Clone, Debug)]
pub struct PublicKeys {
    keys: Vec<VerifyingKey>,
}

impl PublicKeys {
    /// One PEM public key per source (label, bytes).
    pub fn parse(material: &[(String, Vec<u8>)]) -> Result<PublicKeys, String> {
        let mut keys = Vec::new();
        for (label, bytes) in material {
            let text =
                std::str::from_utf8(bytes).map_err(|_| format!("{label}: not a PEM public key"))?;
            let key = VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
                format!("{label}: not an ECDSA P-256 public key in PEM (cosign.pub): {e}")
            })?;
            keys.push(key);
        }
        Ok(PublicKeys { keys })
    }

    /// Whether one of the keys signed `payload` (`signature`: base64 DER).
    pub fn verify(&self, payload: &[u8], signature: &str) -> bool {
        let Ok(der) = STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(sig) = Signature::from_der(&der) else {
            return false;
        };
        self.keys.iter().any(|k| k.verify(payload, &sig).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        use p256::ecdsa::SigningKey;
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let keys = PublicKeys::parse(&[("k".into(), pem.into_bytes())]).unwrap();
        let sig = |k: &SigningKey, m: &[u8]| {
            let s: Signature = k.sign(m);
            STANDARD.encode(s.to_der().as_bytes())
        };
        assert!(keys.verify(b"payload", &sig(&sk, b"payload")));
        assert!(!keys.verify(b"payload2", &sig(&sk, b"payload")));
        assert!(!keys.verify(b"payload", &sig(&other, b"payload")));
        assert!(!keys.verify(b"payload", "not base64!"));
    }
}
