//! Simple signing ("atomic container signature"): an OpenPGP signed
//! message whose literal data is the JSON payload (see `payload`), as
//! skopeo/podman `--sign-by` write it (GnuPG through gpgme).
//!
//! Verified with rPGP (`pgp`): the keys of a `signedBy` requirement (a
//! `gpg --export` keyring, binary or armored, one or more keys), the
//! primary key and every subkey whose binding signature holds.

use std::io::{BufReader, Read};

use pgp::composed::{Message, PublicOrSecret, SignedPublicKey};
use pgp::types::{KeyDetails as _, VerifyingKey};

/// A signature larger than this is not a simple signing signature
/// (containers/image reads at most 4 MiB).
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 20;

/// The OpenPGP keys a `signedBy` requirement trusts.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

/// Why a signature did not verify.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not an OpenPGP signed message at all.
    Malformed(String),
    /// Well formed, but none of the keys made it.
    UnknownKey,
}

impl Keyring {
    /// Every key in each source (label, bytes).
    pub fn parse(material: &[(String, Vec<u8>)]) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (label, bytes) in material {
            let (iter, _) = PublicOrSecret::from_reader_many(&bytes[..])
                .map_err(|e| format!("{label}: not an OpenPGP key: {e}"))?;
            let before = keys.len();
            for k in iter {
                match k.map_err(|e| format!("{label}: {e}"))? {
                    PublicOrSecret::Public(k) => keys.push(k),
                    PublicOrSecret::Secret(k) => keys.push(k.to_public_key()),
                }
            }
            if keys.len() == before {
                return Err(format!("{label}: no OpenPGP key in it"));
            }
        }
        Ok(Keyring { keys })
    }

    /// Fingerprints, for messages.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.fingerprint().as_bytes()))
            .collect()
    }

    /// The payload of `signature` if one of the keys signed it, with the
    /// fingerprint of the primary key that did.
    pub fn verify(&self, signature: &[u8]) -> Result<(Vec<u8>, String), Failure> {
        let malformed = |e: &dyn std::fmt::Display| Failure::Malformed(e.to_string());
        let msg = if signature.starts_with(b"-----BEGIN") {
            Message::from_armor(BufReader::new(signature))
                .map_err(|e| malformed(&e))?
                .0
        } else {
            Message::from_bytes(signature).map_err(|e| malformed(&e))?
        };
        let mut msg = msg.decompress().map_err(|e| malformed(&e))?;
        if !msg.is_signed() {
            return Err(Failure::Malformed(
                "an OpenPGP message without a signature".into(),
            ));
        }
        let mut payload = Vec::new();
        (&mut msg)
            .take(MAX_SIGNATURE_BYTES + 1)
            .read_to_end(&mut payload)
            .map_err(|e| malformed(&e))?;
        if payload.len() as u64 > MAX_SIGNATURE_BYTES {
            return Err(Failure::Malformed("payload too large".into()));
        }
        for key in &self.keys {
            let fingerprint = hex::encode_upper(key.fingerprint().as_bytes());
            let mut verifiers: Vec<&dyn VerifyingKey> = vec![&key.primary_key];
            for sub in &key.public_subkeys {
                if sub.verify_bindings(&key.primary_key).is_ok() {
                    verifiers.push(&sub.key);
                }
            }
            if verifiers.iter().any(|v| msg.verify(*v).is_ok()) {
                return Ok((payload, fingerprint));
            }
        }
        Err(Failure::UnknownKey)
    }
}
