//! Simple signing ("atomic container signature"): an OpenPGP signed
//! message whose literal data is the JSON payload (see `payload`), as
//! skopeo/podman `--sign-by` write it (GnuPG through gpgme).
//!
//! Verified with rPGP (`pgp`): the keys of a `signedBy` requirement (a
//! `gpg --export` keyring, binary or armored, one or more keys), the
//! primary key and every subkey whose binding signature holds.
//!
//! A signature that holds but was made by a key that is revoked or has
//! expired is refused, as containers/image refuses it: its gpgme
//! mechanism (`signature/mechanism_gpgme.go`, `Verify`) fails on any
//! signature whose status is not plain success, and GnuPG reports such a
//! signature as `REVKEYSIG` or `EXPKEYSIG` (gpgme: `GPG_ERR_CERT_REVOKED`,
//! `GPG_ERR_KEY_EXPIRED`). GnuPG judges expiry at verification time, not
//! at the signature's creation (`check_signature_metadata_validity` in
//! g10/sig-check.c compares the key's expiry with the current time): an
//! image signed while its key was valid is refused once the key expires,
//! until the policy's keyPath holds an export with a later expiry. So
//! here: expired means expired now (or at the signature's creation, if
//! that is later: a signature from after the expiry never counts), and a
//! revocation counts whenever it was made. As GnuPG does, a subkey lapses
//! with its primary key, and copies of one key in several key files are
//! merged first (gpgme imports them all into one keyring), so the newest
//! self-signature and any revocation among them decide.

use std::fmt;
use std::io::{BufReader, Read};

use pgp::composed::{Message, PublicOrSecret, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{RevocationCode, Signature, SignatureType};
use pgp::types::{KeyDetails as _, Tag, VerifyingKey};

/// A signature larger than this is not a simple signing signature
/// (containers/image reads at most 4 MiB).
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 20;

/// The OpenPGP keys a `signedBy` requirement trusts.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<Trusted>,
}

/// One key of the keyring and what its self-signatures say.
#[derive(Clone, Debug)]
struct Trusted {
    key: SignedPublicKey,
    fingerprint: String,
    primary: Life,
    /// The subkeys whose binding holds: (index in `key.public_subkeys`,
    /// fingerprint, life).
    subkeys: Vec<(usize, String, Life)>,
}

/// Whether a key (or subkey) may sign: revoked for good, or until when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Life {
    /// Revoked, with the reason given if any.
    revoked: Option<Option<String>>,
    /// Expires at this time (Unix seconds); none: never.
    expires: Option<u32>,
}

impl Life {
    fn lapse_at(&self, at: u32) -> Option<Lapse> {
        if let Some(reason) = &self.revoked {
            return Some(Lapse::Revoked {
                reason: reason.clone(),
            });
        }
        // Valid up to and including its expiry second, as in GnuPG.
        self.expires
            .filter(|&since| since < at)
            .map(|since| Lapse::Expired { since })
    }
}

/// Why a key of the keyring may no longer sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lapse {
    /// Expired at `since` (Unix seconds).
    Expired { since: u32 },
    /// Revoked by its owner, with the reason given (code and text), if any.
    Revoked { reason: Option<String> },
}

/// A signature that holds, by a key of the keyring that may no longer
/// sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    /// The primary key's fingerprint: the key the policy's keyPath holds.
    pub key: String,
    /// The signing subkey's fingerprint, when the subkey itself lapsed.
    pub subkey: Option<String>,
    pub lapse: Lapse,
}

impl Unusable {
    pub fn is_revoked(&self) -> bool {
        matches!(self.lapse, Lapse::Revoked { .. })
    }
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subkey {
            Some(sub) => write!(f, "signing subkey {sub} of key {}", self.key)?,
            None => write!(f, "key {}", self.key)?,
        }
        match &self.lapse {
            Lapse::Expired { since } => write!(
                f,
                " expired on {}: if its owner extended it, put the new export \
                 (gpg --export) in the policy's keyPath",
                exploder_common::history::rfc3339(i64::from(*since))
            ),
            Lapse::Revoked { reason } => {
                f.write_str(" was revoked")?;
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                f.write_str(
                    ": put the signer's current key (gpg --export) in the policy's \
                     keyPath and have the image signed again",
                )
            }
        }
    }
}

/// Why a signature did not verify.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not an OpenPGP signed message at all.
    Malformed(String),
    /// Well formed, but none of the keys made it.
    UnknownKey,
    /// Made by one of the keys, which is revoked or expired.
    Unusable(Unusable),
}

impl Keyring {
    /// Every key in each source (label, bytes). Copies of one key (the
    /// same primary fingerprint) are merged.
    pub fn parse(material: &[(String, Vec<u8>)]) -> Result<Keyring, String> {
        let mut keys: Vec<SignedPublicKey> = Vec::new();
        for (label, bytes) in material {
            let (iter, _) = PublicOrSecret::from_reader_many(&bytes[..])
                .map_err(|e| format!("{label}: not an OpenPGP key: {e}"))?;
            let mut found = false;
            for k in iter {
                let k = match k.map_err(|e| format!("{label}: {e}"))? {
                    PublicOrSecret::Public(k) => k,
                    PublicOrSecret::Secret(k) => k.to_public_key(),
                };
                found = true;
                match keys.iter_mut().find(|o| o.fingerprint() == k.fingerprint()) {
                    Some(other) => merge(other, k),
                    None => keys.push(k),
                }
            }
            if !found {
                return Err(format!("{label}: no OpenPGP key in it"));
            }
        }
        Ok(Keyring {
            keys: keys.into_iter().map(Trusted::new).collect(),
        })
    }

    /// Fingerprints, for messages.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }

    /// The payload of `signature` if one of the keys signed it and may
    /// still sign, with the fingerprint of the primary key that did.
    pub fn verify(&self, signature: &[u8]) -> Result<(Vec<u8>, String), Failure> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        self.verify_at(signature, now)
    }

    /// [`Keyring::verify`] as if the time were `now` (Unix seconds).
    fn verify_at(&self, signature: &[u8], now: u32) -> Result<(Vec<u8>, String), Failure> {
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
        for t in &self.keys {
            let primary: (&dyn VerifyingKey, Option<&(usize, String, Life)>) =
                (&t.key.primary_key, None);
            let subkeys = t.subkeys.iter().map(|s| {
                let key: &dyn VerifyingKey = &t.key.public_subkeys[s.0].key;
                (key, Some(s))
            });
            for (verifier, subkey) in std::iter::once(primary).chain(subkeys) {
                let Ok(sig) = msg.verify(verifier) else {
                    continue;
                };
                let at = sig.created().map_or(now, |c| c.as_secs().max(now));
                // A subkey lapses with its primary key.
                let lapse = t.primary.lapse_at(at).map(|l| (None, l)).or_else(|| {
                    let (_, fingerprint, life) = subkey?;
                    life.lapse_at(at).map(|l| (Some(fingerprint.clone()), l))
                });
                return match lapse {
                    Some((subkey, lapse)) => Err(Failure::Unusable(Unusable {
                        key: t.fingerprint.clone(),
                        subkey,
                        lapse,
                    })),
                    None => Ok((payload, t.fingerprint.clone())),
                };
            }
        }
        Err(Failure::UnknownKey)
    }
}

impl Trusted {
    fn new(key: SignedPublicKey) -> Trusted {
        let primary = &key.primary_key;
        let revoked = key
            .details
            .revocation_signatures
            .iter()
            .find(|s| {
                s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok()
            })
            .map(reason);
        // The newest self-signature (direct or on a user ID) says when
        // the key expires.
        let direct = key
            .details
            .direct_signatures
            .iter()
            .filter(|s| s.verify_key(primary).is_ok());
        let on_users = key.details.users.iter().flat_map(|u| {
            u.signatures.iter().filter(move |s| {
                s.is_certification()
                    && s.typ() != Some(SignatureType::CertRevocation)
                    && s.verify_certification(primary, Tag::UserId, &u.id).is_ok()
            })
        });
        let newest = direct.chain(on_users).max_by_key(|s| s.created());
        let life = Life {
            revoked,
            expires: expiry(primary.created_at().as_secs(), newest),
        };
        let subkeys = key
            .public_subkeys
            .iter()
            .enumerate()
            .filter(|(_, sub)| sub.verify_bindings(primary).is_ok())
            .map(|(i, sub)| {
                let fingerprint = hex::encode_upper(sub.key.fingerprint().as_bytes());
                (i, fingerprint, subkey_life(sub))
            })
            .collect();
        Trusted {
            fingerprint: hex::encode_upper(key.fingerprint().as_bytes()),
            primary: life,
            subkeys,
            key,
        }
    }
}

/// A subkey whose bindings all hold (revocations included): revoked by
/// any revocation, expiring as its newest binding says.
fn subkey_life(sub: &SignedPublicSubKey) -> Life {
    let revoked = sub
        .signatures
        .iter()
        .find(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
        .map(reason);
    let newest = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .max_by_key(|s| s.created());
    Life {
        revoked,
        expires: expiry(sub.key.created_at().as_secs(), newest),
    }
}

/// The expiry a self-signature sets: a time after the key's creation;
/// none or zero: never.
fn expiry(created: u32, sig: Option<&Signature>) -> Option<u32> {
    let after = sig?.key_expiration_time()?.as_secs();
    (after > 0).then(|| created.saturating_add(after))
}

/// A revocation's reason, as operators read it: `compromised: TEXT`.
fn reason(sig: &Signature) -> Option<String> {
    let code = sig.revocation_reason_code()?;
    let code = match code {
        RevocationCode::NoReason => "no reason given".to_string(),
        RevocationCode::KeySuperseded => "superseded".into(),
        RevocationCode::KeyCompromised => "compromised".into(),
        RevocationCode::KeyRetired => "retired".into(),
        RevocationCode::CertUserIdInvalid => "user ID no longer valid".into(),
        other => format!("reason {}", u8::from(*other)),
    };
    let text = sig
        .revocation_reason_string()
        .map(|t| String::from_utf8_lossy(t).trim().to_string())
        .unwrap_or_default();
    Some(if text.is_empty() {
        code
    } else {
        format!("{code}: {text}")
    })
}

/// `from`'s signatures and subkeys added to `into` (the same key).
fn merge(into: &mut SignedPublicKey, from: SignedPublicKey) {
    let (d, f) = (&mut into.details, from.details);
    d.revocation_signatures.extend(f.revocation_signatures);
    d.direct_signatures.extend(f.direct_signatures);
    d.users.extend(f.users);
    d.user_attributes.extend(f.user_attributes);
    for sub in from.public_subkeys {
        let fingerprint = sub.key.fingerprint();
        match into
            .public_subkeys
            .iter_mut()
            .find(|s| s.key.fingerprint() == fingerprint)
        {
            Some(s) => {
                for sig in sub.signatures {
                    if !s.signatures.contains(&sig) {
                        s.signatures.push(sig);
                    }
                }
            }
            None => into.public_subkeys.push(sub),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fixtures are GnuPG's (tests/fixtures/make-gpg-lifetimes.sh):
    //! keys made on 2020-01-01, signing on 2020-01-31, revoked on
    //! 2020-03-01, expiring on 2020-12-31.

    use super::*;

    const FEB_2020: u32 = 1_580_515_200; // 2020-02-01
    const JUNE_2020: u32 = 1_590_969_600; // 2020-06-01
    const EXPIRY: u32 = 1_609_372_800; // 2020-12-31
    const JUNE_2021: u32 = 1_622_505_600; // 2021-06-01

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn ring(files: &[&str]) -> Keyring {
        let material: Vec<_> = files.iter().map(|f| (f.to_string(), fixture(f))).collect();
        Keyring::parse(&material).unwrap()
    }

    fn unusable(result: Result<(Vec<u8>, String), Failure>) -> Unusable {
        match result {
            Err(Failure::Unusable(u)) => u,
            other => panic!("expected an unusable key: {other:?}"),
        }
    }

    #[test]
    fn an_expiring_key_signs_until_its_expiry_then_not() {
        let keys = ring(&["expiring.gpg"]);
        let sig = fixture("expiring.signature");
        let fingerprint = keys.fingerprints()[0].clone();
        assert_eq!(keys.verify_at(&sig, JUNE_2020).unwrap().1, fingerprint);
        assert!(keys.verify_at(&sig, EXPIRY).is_ok());
        // Expired at verification time, although the signature was made
        // while it was valid: what GnuPG (EXPKEYSIG) and skopeo say.
        let u = unusable(keys.verify_at(&sig, EXPIRY + 1));
        assert_eq!(
            u,
            Unusable {
                key: fingerprint.clone(),
                subkey: None,
                lapse: Lapse::Expired { since: EXPIRY },
            }
        );
        assert!(!u.is_revoked());
        let shown = u.to_string();
        assert!(
            shown.starts_with(&format!(
                "key {fingerprint} expired on 2020-12-31T00:00:00Z"
            )) && shown.contains("policy's keyPath"),
            "{shown}"
        );
        assert!(matches!(
            keys.verify(&sig),
            Err(Failure::Unusable(Unusable {
                lapse: Lapse::Expired { .. },
                ..
            }))
        ));
    }

    #[test]
    fn a_signature_made_after_the_expiry_is_refused_whatever_the_clock_says() {
        // Signed on 2020-01-31; the newest self-signature makes the key
        // expire on 2020-01-06. A clock set before that changes nothing.
        let keys = ring(&["late.gpg"]);
        let sig = fixture("late.signature");
        let u = unusable(keys.verify_at(&sig, 1_578_000_000));
        assert_eq!(
            u.lapse,
            Lapse::Expired {
                since: 1_578_268_800
            }
        );
    }

    #[test]
    fn the_newest_self_signature_decides_and_copies_of_a_key_merge() {
        let sig = fixture("expiring.signature");
        // Renewed (expiry lifted on 2020-06-01): valid again.
        let renewed = ring(&["expiring-renewed.gpg"]);
        assert!(renewed.verify_at(&sig, JUNE_2021).is_ok());
        // Both exports in keyPaths: one key, the newer self-signature wins
        // whatever the order, as in the keyring gpgme imports them into.
        for files in [
            ["expiring.gpg", "expiring-renewed.gpg"],
            ["expiring-renewed.gpg", "expiring.gpg"],
        ] {
            let keys = ring(&files);
            assert_eq!(keys.fingerprints().len(), 1);
            assert!(keys.verify_at(&sig, JUNE_2021).is_ok(), "{files:?}");
        }
    }

    #[test]
    fn an_expired_signing_subkey_is_refused() {
        let keys = ring(&["expiring-subkey.gpg"]);
        let sig = fixture("expiring-subkey.signature");
        assert!(keys.verify_at(&sig, JUNE_2020).is_ok());
        let u = unusable(keys.verify_at(&sig, JUNE_2021));
        assert_eq!(u.key, keys.fingerprints()[0]);
        let subkey = u.subkey.clone().expect("the subkey lapsed");
        assert_ne!(subkey, u.key);
        assert_eq!(u.lapse, Lapse::Expired { since: EXPIRY });
        assert!(
            u.to_string()
                .starts_with(&format!("signing subkey {subkey} of key {}", u.key)),
            "{u}"
        );
    }

    #[test]
    fn a_revoked_key_is_refused_even_for_signatures_made_before() {
        let sig = fixture("revoked.signature");
        let keys = ring(&["revoked.gpg"]);
        // Signed on 2020-01-31, revoked on 2020-03-01: refused at any time.
        for now in [FEB_2020, JUNE_2020] {
            let u = unusable(keys.verify_at(&sig, now));
            assert_eq!(
                u,
                Unusable {
                    key: keys.fingerprints()[0].clone(),
                    subkey: None,
                    lapse: Lapse::Revoked {
                        reason: Some("compromised: the laptop holding it was stolen".into())
                    },
                }
            );
            assert!(u.is_revoked());
        }
        let shown = unusable(keys.verify_at(&sig, JUNE_2020)).to_string();
        assert!(
            shown.contains("was revoked (compromised: the laptop holding it was stolen)")
                && shown.contains("policy's keyPath"),
            "{shown}"
        );
        // The export from before the revocation verifies; with the revoked
        // copy next to it, the revocation counts.
        let before = ring(&["revoked-before.gpg"]);
        assert!(before.verify_at(&sig, JUNE_2020).is_ok());
        for files in [
            ["revoked-before.gpg", "revoked.gpg"],
            ["revoked.gpg", "revoked-before.gpg"],
        ] {
            let u = unusable(ring(&files).verify_at(&sig, JUNE_2020));
            assert!(u.is_revoked(), "{files:?}");
        }
    }

    #[test]
    fn a_revoked_signing_subkey_is_refused() {
        let keys = ring(&["revoked-subkey.gpg"]);
        let u = unusable(keys.verify_at(&fixture("revoked-subkey.signature"), FEB_2020));
        assert_eq!(u.key, keys.fingerprints()[0]);
        assert!(u.subkey.is_some());
        assert_eq!(
            u.lapse,
            Lapse::Revoked {
                reason: Some("retired: replaced by a hardware token".into())
            }
        );
    }

    #[test]
    fn a_key_of_another_keyring_is_still_unknown() {
        // An expired or revoked key the policy does not trust is no
        // different from any other unknown key.
        let keys = ring(&["expiring.gpg"]);
        assert_eq!(
            keys.verify_at(&fixture("revoked.signature"), JUNE_2020),
            Err(Failure::UnknownKey)
        );
    }

    #[test]
    fn lapses_without_a_reason_or_an_expiry() {
        let never = Life::default();
        assert_eq!(never.lapse_at(u32::MAX), None);
        let revoked = Life {
            revoked: Some(None),
            expires: Some(10),
        };
        // Revocation first: it is the graver and final one.
        assert_eq!(revoked.lapse_at(0), Some(Lapse::Revoked { reason: None }));
        let u = Unusable {
            key: "AB".into(),
            subkey: None,
            lapse: Lapse::Revoked { reason: None },
        };
        assert!(u.to_string().starts_with("key AB was revoked: "), "{u}");
    }
}
