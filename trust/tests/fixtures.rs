//! Signatures made by real clients (cosign, GnuPG through containers/image;
//! see fixtures/README.md) verify here as they do there.
//!
//! The integration tests (tests/tests/signatures.rs) sign sigstore
//! attachments with the harness, because the skopeo packaged here has
//! sigstore disabled; this is what ties the verifier to cosign's real
//! output.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use exploder_trust::payload::{self, SIGSTORE_TYPE, SIMPLE_SIGNING_TYPE};
use exploder_trust::sigstore::{PublicKeys, SIGNATURE_ANNOTATION};
use exploder_trust::simple::{Failure, Keyring};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn a_cosign_signature_verifies_with_its_key_only() {
    let blob = fixture("cosign-valid.signature");
    let json = blob
        .strip_prefix(b"\0sigstore-json\n")
        .expect("dir: encoding");
    let doc: serde_json::Value = serde_json::from_slice(json).unwrap();
    let payload = STANDARD.decode(doc["payload"].as_str().unwrap()).unwrap();
    let signature = doc["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap();
    let keys = |f: &str| PublicKeys::parse(&[(f.to_string(), fixture(f))]).unwrap();
    assert!(keys("cosign.pub").verify(&payload, signature));
    assert!(!keys("cosign2.pub").verify(&payload, signature));
    let claim = payload::parse(&payload, SIGSTORE_TYPE).unwrap();
    assert_eq!(
        claim.manifest_digest.to_string(),
        "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
    );
    assert_eq!(
        claim.docker_reference,
        "192.168.64.2:5000/cosign-signed-single-sample"
    );
}

#[test]
fn a_gnupg_simple_signature_verifies_with_its_key_only() {
    let sig = fixture("image.signature");
    let ring = |f: &str| Keyring::parse(&[(f.to_string(), fixture(f))]).unwrap();
    let (payload, fingerprint) = ring("public-key.gpg").verify(&sig).unwrap();
    assert_eq!(fingerprint, "08CD26E446E2E95249B7A405E932F44B23E8DD43");
    let claim = payload::parse(&payload, SIMPLE_SIGNING_TYPE).unwrap();
    assert_eq!(
        claim.manifest_digest.to_string(),
        "sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"
    );
    assert_eq!(claim.docker_reference, "testing/manifest");
    assert_eq!(
        ring("public-key-2.gpg").verify(&sig).unwrap_err(),
        Failure::UnknownKey
    );
}
