//! Signing keys for the signature tests, and the configuration skopeo and
//! exploder read: a GnuPG key in a throwaway `GNUPGHOME`, a cosign key
//! pair, `registries.d` and `policy.json` files.
//!
//! skopeo 1.9.3 signs on copy with `--sign-by` (GnuPG). Upstream it also
//! signs with `--sign-by-sigstore-private-key`, but cannot generate such a
//! key, so [`CosignKey`] writes cosign's format itself: a PEM block
//! `ENCRYPTED SIGSTORE PRIVATE KEY` around the JSON of go-securesystemslib's
//! `encrypted` package — scrypt parameters and salt, `nacl/secretbox` with
//! its nonce, and the sealed PKCS#8 DER of an ECDSA P-256 key — plus
//! `cosign.pub`, the SPKI public key in PEM.
//!
//! Debian's skopeo 1.9.3 (the one here) has sigstore disabled ("Debian-local
//! change: sigstore disabled", for signing and verifying), so
//! [`attach_sigstore`] writes what skopeo would: the payload containers/image
//! makes, signed with the key, as a cosign attachment in the registry. The
//! verifier is tied to real cosign output by exploder-trust's fixture tests.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b
}

/// A cosign key pair: the encrypted private key skopeo signs with, its
/// passphrase in a file, and the public key a policy trusts.
pub struct CosignKey {
    pub private_key: PathBuf,
    pub passphrase_file: PathBuf,
    pub public_key: PathBuf,
    signing: p256::ecdsa::SigningKey,
}

impl CosignKey {
    /// Writes `<name>.key`, `<name>.pass` and `<name>.pub` into `dir`.
    pub fn generate(dir: &Path, name: &str) -> CosignKey {
        let secret = loop {
            // A 32-byte string is a valid scalar with overwhelming odds.
            if let Ok(k) = p256::SecretKey::from_slice(&random::<32>()) {
                break k;
            }
        };
        let der = secret.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec();
        let passphrase = format!("pass-{name}");
        let (salt, nonce) = (random::<32>(), random::<24>());
        // go-securesystemslib's defaults: N = 2^15, r = 8, p = 1.
        let params = scrypt::Params::new(15, 8, 1, 32).expect("scrypt params");
        let mut key = [0u8; 32];
        scrypt::scrypt(passphrase.as_bytes(), &salt, &params, &mut key).expect("scrypt");
        let sealed = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), der.as_slice())
            .expect("secretbox");
        let json = serde_json::json!({
            "kdf": {
                "name": "scrypt",
                "params": {"N": 32768, "r": 8, "p": 1},
                "salt": STANDARD.encode(salt),
            },
            "cipher": {"name": "nacl/secretbox", "nonce": STANDARD.encode(nonce)},
            "ciphertext": STANDARD.encode(&sealed),
        });
        let body = STANDARD.encode(serde_json::to_vec(&json).unwrap());
        let mut pem = String::from("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n");
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("public PEM");
        let k = CosignKey {
            private_key: dir.join(format!("{name}.key")),
            passphrase_file: dir.join(format!("{name}.pass")),
            public_key: dir.join(format!("{name}.pub")),
            signing: p256::ecdsa::SigningKey::from(&secret),
        };
        std::fs::write(&k.private_key, pem).unwrap();
        std::fs::write(&k.passphrase_file, passphrase).unwrap();
        std::fs::write(&k.public_key, public).unwrap();
        k
    }

    /// The base64 DER ECDSA signature of `payload`, as cosign annotates it.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.signing.sign(payload);
        STANDARD.encode(sig.to_der().as_bytes())
    }

    /// skopeo's flags to sign with this key (upstream skopeo; not the
    /// Debian one, see the module documentation).
    pub fn sign_args(&self) -> Vec<String> {
        vec![
            "--sign-by-sigstore-private-key".into(),
            self.private_key.display().to_string(),
            "--sign-passphrase-file".into(),
            self.passphrase_file.display().to_string(),
        ]
    }
}

/// A GnuPG key in a `GNUPGHOME` of its own (its agent stopped on drop),
/// and its public key exported for a policy's `keyPath`.
pub struct GpgKey {
    pub home: PathBuf,
    pub fingerprint: String,
    pub public_keyring: PathBuf,
}

/// What lapses in [`GpgKey::generate_expiring`]: the primary key, or the
/// signing subkey of a primary key that only certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiring {
    PrimaryKey,
    SigningSubkey,
}

const DAY: u64 = 86_400;

fn days_ago(days: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days * DAY
}

impl GpgKey {
    /// `gpg --quick-gen-key NAME default default never` without a
    /// passphrase, in `dir/<name>.gnupg`; the public key exported to
    /// `dir/<name>.gpg`.
    pub fn generate(dir: &Path, name: &str) -> GpgKey {
        let key = GpgKey::home(dir, name);
        key.gen_key(name, None, &["default", "default", "never"]);
        key.finish()
    }

    /// A key made `made_days_ago` days ago whose primary key or signing
    /// subkey expired `lifetime_days` later (`gpg --faked-system-time`).
    /// Sign with it at a time it was valid: [`GpgKey::sign_as_of`].
    pub fn generate_expiring(
        dir: &Path,
        name: &str,
        what: Expiring,
        made_days_ago: u64,
        lifetime_days: u64,
    ) -> GpgKey {
        let key = GpgKey::home(dir, name);
        let made = days_ago(made_days_ago);
        let lifetime = format!("{lifetime_days}d");
        match what {
            Expiring::PrimaryKey => {
                key.gen_key(name, Some(made), &["default", "default", &lifetime]);
            }
            Expiring::SigningSubkey => {
                key.gen_key(name, Some(made), &["default", "cert", "never"]);
                let fingerprint = key.read_fingerprint();
                let faked = format!("--faked-system-time={made}");
                crate::run_checked(key.gpg().args([
                    faked.as_str(),
                    "--passphrase",
                    "",
                    "--quick-add-key",
                    &fingerprint,
                    "ed25519",
                    "sign",
                    &lifetime,
                ]));
            }
        }
        key.finish()
    }

    fn home(dir: &Path, name: &str) -> GpgKey {
        let home = dir.join(format!("{name}.gnupg"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        GpgKey {
            home,
            fingerprint: String::new(),
            public_keyring: dir.join(format!("{name}.gpg")),
        }
    }

    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &self.home).arg("--batch");
        c
    }

    /// `--quick-gen-key` for `name`, made at `made` (Unix seconds) if
    /// given.
    fn gen_key(&self, name: &str, made: Option<u64>, algo_usage_expire: &[&str]) {
        let uid = format!("{name} <{name}@exploder.test>");
        let mut gpg = self.gpg();
        if let Some(made) = made {
            gpg.arg(format!("--faked-system-time={made}"));
        }
        gpg.args(["--passphrase", "", "--quick-gen-key", &uid]);
        crate::run_checked(gpg.args(algo_usage_expire));
    }

    fn read_fingerprint(&self) -> String {
        let listing = crate::run_checked(self.gpg().args(["--with-colons", "--list-secret-keys"]));
        String::from_utf8_lossy(&listing)
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("a fingerprint")
            .to_string()
    }

    fn finish(mut self) -> GpgKey {
        self.fingerprint = self.read_fingerprint();
        self.export();
        self
    }

    /// (Re-)exports the public key to `public_keyring`.
    fn export(&self) {
        let _ = std::fs::remove_file(&self.public_keyring);
        crate::run_checked(
            self.gpg()
                .args(["--output"])
                .arg(&self.public_keyring)
                .args(["--export", &self.fingerprint]),
        );
    }

    /// Makes skopeo (gpgme, which runs gpg in this home) sign as if it
    /// were `days` days ago (`faked-system-time` in `gpg.conf`), or now
    /// again with `None`.
    pub fn sign_as_of(&self, days: Option<u64>) {
        let conf = self.home.join("gpg.conf");
        match days {
            Some(days) => {
                std::fs::write(&conf, format!("faked-system-time {}\n", days_ago(days))).unwrap()
            }
            None => {
                let _ = std::fs::remove_file(&conf);
            }
        }
    }

    /// Revokes the key with the revocation certificate gpg wrote when it
    /// made it (`openpgp-revocs.d`, its armor behind a `:` that keeps it
    /// from being imported by mistake) and re-exports the public key.
    pub fn revoke(&self) {
        let certificate = self
            .home
            .join("openpgp-revocs.d")
            .join(format!("{}.rev", self.fingerprint));
        let text = std::fs::read_to_string(&certificate).unwrap();
        let armored = text.replace(":-----BEGIN PGP", "-----BEGIN PGP");
        let usable = self.home.join("revocation.asc");
        std::fs::write(&usable, armored).unwrap();
        crate::run_checked(self.gpg().arg("--import").arg(&usable));
        self.export();
    }

    /// Lifts the expiry of the primary key or of the subkeys
    /// (`gpg --quick-set-expire FPR never [SUBKEY-FPR...]`; `*` would skip
    /// expired subkeys), as an owner extends a key, and re-exports the
    /// public key.
    pub fn extend(&self, what: Expiring) {
        let mut gpg = self.gpg();
        gpg.args(["--quick-set-expire", &self.fingerprint, "never"]);
        if what == Expiring::SigningSubkey {
            let listing = crate::run_checked(self.gpg().args(["--with-colons", "--list-keys"]));
            let listing = String::from_utf8_lossy(&listing);
            // Each `sub` record is followed by its `fpr` record.
            let mut lines = listing.lines();
            while let Some(line) = lines.next() {
                if line.starts_with("sub:") {
                    let fpr = lines.next().and_then(|l| l.split(':').nth(9));
                    gpg.arg(fpr.expect("a subkey fingerprint"));
                }
            }
        }
        crate::run_checked(&mut gpg);
        self.export();
    }

    /// skopeo's flags to sign with this key (with [`GpgKey::env`]).
    pub fn sign_args(&self) -> Vec<String> {
        vec!["--sign-by".into(), self.fingerprint.clone()]
    }

    /// The environment skopeo signs in.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("GNUPGHOME".into(), self.home.display().to_string())]
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// A `registries.d` directory with one file configuring `scope` (a
/// registry, `host:port`): simple signing signatures in `lookaside` (a
/// directory, as `file://`), sigstore signatures as attachments.
pub fn registries_d(dir: &Path, scope: &str, lookaside: &Path) -> PathBuf {
    let d = dir.join("registries.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all(lookaside).unwrap();
    std::fs::write(
        d.join("test.yaml"),
        format!(
            "docker:\n  {scope}:\n    lookaside: file://{}\n    use-sigstore-attachments: true\n",
            lookaside.display()
        ),
    )
    .unwrap();
    d
}

/// Writes `policy` (JSON) to `dir/<name>.json`.
pub fn policy(dir: &Path, name: &str, policy: &serde_json::Value) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(policy).unwrap()).unwrap();
    p
}

/// A `sigstoreSigned` requirement for `key`.
pub fn sigstore_signed(key: &CosignKey) -> serde_json::Value {
    serde_json::json!({"type": "sigstoreSigned", "keyPath": key.public_key})
}

/// A `signedBy` requirement for `key`.
pub fn signed_by(key: &GpgKey) -> serde_json::Value {
    serde_json::json!({"type": "signedBy", "keyType": "GPGKeys", "keyPath": key.public_keyring})
}

/// The payload containers/image signs for sigstore: `digest` as
/// `identity` (a Docker reference).
pub fn sigstore_payload(digest: &str, identity: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": {"creator": "exploder-tests"},
    }))
    .unwrap()
}

/// Attaches a sigstore signature of `digest` (signed by `key` as
/// `identity`) in `repo`, as cosign and skopeo do: an OCI manifest tagged
/// `sha256-<hex>.sig` whose layer is the payload, with the signature in the
/// `dev.cosignproject.cosign/signature` annotation.
pub fn attach_sigstore(
    registry: &crate::Registry,
    repo: &str,
    digest: &str,
    identity: &str,
    key: &CosignKey,
) {
    let payload = sigstore_payload(digest, identity);
    let signature = key.sign(&payload);
    let payload_digest = registry.push_blob(repo, &payload).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
    }))
    .unwrap();
    let config_digest = registry.push_blob(repo, &config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(),
            "digest": config_digest,
        },
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": {"dev.cosignproject.cosign/signature": signature},
        }],
    }))
    .unwrap();
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    registry
        .push_manifest(
            repo,
            &format!("sha256-{hex}.sig"),
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .unwrap();
}
