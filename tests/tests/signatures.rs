//! The signature policy with signatures made by a real client: skopeo
//! signs on copy with a GnuPG key (simple signing, in a `file://` lookaside
//! storage that `registries.d` names), and each such case is checked
//! against `skopeo --policy FILE copy` on the same inputs too.
//!
//! sigstore: the Debian skopeo here has sigstore disabled (for signing and
//! verifying), so the harness attaches cosign-format signatures itself
//! (`signing::attach_sigstore`: the payload skopeo would sign, a cosign key
//! the harness generates, the `sha256-<hex>.sig` attachment), and skopeo is
//! not asked about them; exploder-trust's fixture tests verify real cosign
//! output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use exploder_tests::fleet::Fleet;
use exploder_tests::signing::{self, CosignKey, Expiring, GpgKey};
use exploder_tests::{Image, Layer, LayerBuilder, Registry, linked_rootfs, run_exploder};
use serde_json::json;

/// A registry, a lookaside directory and a `registries.d` naming both.
struct Setup {
    dir: tempfile::TempDir,
    registry: Registry,
    lookaside: PathBuf,
    registries_d: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start();
        let lookaside = dir.path().join("lookaside");
        let registries_d = signing::registries_d(dir.path(), &registry.addr(), &lookaside);
        Setup {
            dir,
            registry,
            lookaside,
            registries_d,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.addr())
    }

    fn global(&self) -> Vec<String> {
        vec![
            "--registries.d".into(),
            self.registries_d.display().to_string(),
        ]
    }

    /// Pushes with skopeo, unsigned.
    fn push(&self, repo: &str, tag: &str, image: &Image) -> String {
        self.registry
            .skopeo_copy_with(repo, tag, image, &self.global(), &[], &[])
    }

    /// Pushes with skopeo, then attaches a sigstore signature by `key`
    /// naming `repo:tag` (see the module documentation).
    fn push_sigstore(&self, repo: &str, tag: &str, image: &Image, key: &CosignKey) -> String {
        let digest = self.push(repo, tag, image);
        let identity = self.reference(&format!("{repo}:{tag}"));
        signing::attach_sigstore(&self.registry, repo, &digest, &identity, key);
        digest
    }

    /// Pushes with skopeo, signed with a GnuPG key (into the lookaside).
    fn push_gpg(&self, repo: &str, tag: &str, image: &Image, key: &GpgKey) -> String {
        self.registry.skopeo_copy_with(
            repo,
            tag,
            image,
            &self.global(),
            &key.sign_args(),
            &key.env(),
        )
    }

    fn policy(&self, name: &str, policy: serde_json::Value) -> PathBuf {
        signing::policy(self.path(), name, &policy)
    }

    /// A policy: everything from this registry under `requirement`,
    /// anything else rejected.
    fn registry_policy(&self, name: &str, requirement: serde_json::Value) -> PathBuf {
        self.policy(
            name,
            json!({"default": [{"type": "reject"}],
                   "transports": {"docker": {self.registry.addr(): [requirement]}}}),
        )
    }

    /// `exploder explode REF --policy POLICY --registries-d ...` into `store`.
    fn explode(&self, reference: &str, policy: &Path, store: &Path) -> Output {
        run_exploder([
            "explode",
            &self.reference(reference),
            "--store",
            store.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--registries-d",
            self.registries_d.to_str().unwrap(),
        ])
    }

    /// Whether `skopeo --policy POLICY copy` accepts the image.
    fn skopeo_accepts(&self, reference: &str, policy: &Path) -> bool {
        let out = tempfile::tempdir().unwrap();
        Command::new("skopeo")
            .arg("--policy")
            .arg(policy)
            .args(self.global())
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}", self.reference(reference)))
            .arg(format!("dir:{}", out.path().display()))
            .output()
            .expect("spawn skopeo")
            .status
            .success()
    }
}

fn image(name: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("./", 0o755).dir("etc", 0o755);
    b.file(format!("etc/{name}"), name.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_accepted(out: &Output) {
    assert!(
        out.status.success(),
        "refused: {}{}",
        stderr(out),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Refused with exit code 1 and `reason` in the message; no link made.
#[track_caller]
fn assert_refused(out: &Output, reason: &str, store: &Path, repo: &str, tag: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused by the signature policy") && err.contains(reason),
        "expected {reason:?}: {err}"
    );
    assert!(
        !store.join(format!("images/{repo}/{tag}/link")).exists(),
        "linked although refused"
    );
}

fn digest_link(store: &Path, repo: &str, tag: &str) -> String {
    std::fs::read_to_string(store.join(format!("images/{repo}/{tag}/link")))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_gpg_signed_image_passes() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    s.push_gpg("team/app", "v1", &image("gpg"), &key);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let store = tempfile::tempdir().unwrap();
    assert_accepted(&s.explode("team/app:v1", &policy, store.path()));
    assert!(
        linked_rootfs(store.path(), "team", "app", "v1")
            .join("etc/gpg")
            .is_file()
    );
    assert!(s.skopeo_accepts("team/app:v1", &policy));
}

#[test]
fn a_sigstore_signed_image_passes() {
    let s = Setup::new();
    let key = CosignKey::generate(s.path(), "ours");
    s.push_sigstore("team/app", "v1", &image("sigstore"), &key);
    let policy = s.registry_policy("p", signing::sigstore_signed(&key));
    let store = tempfile::tempdir().unwrap();
    assert_accepted(&s.explode("team/app:v1", &policy, store.path()));
    assert!(
        linked_rootfs(store.path(), "team", "app", "v1")
            .join("etc/sigstore")
            .is_file()
    );
}

#[test]
fn an_unsigned_image_is_refused() {
    let s = Setup::new();
    let gpg = GpgKey::generate(s.path(), "ours");
    let cosign = CosignKey::generate(s.path(), "ours");
    s.push("team/app", "v1", &image("unsigned"));
    let store = tempfile::tempdir().unwrap();
    for (name, requirement) in [
        ("gpg", signing::signed_by(&gpg)),
        ("sigstore", signing::sigstore_signed(&cosign)),
    ] {
        let policy = s.registry_policy(name, requirement);
        let out = s.explode("team/app:v1", &policy, store.path());
        assert_refused(&out, "no signature", store.path(), "team/app", "v1");
        if name == "gpg" {
            assert!(!s.skopeo_accepts("team/app:v1", &policy));
        }
    }
    // Nothing of the image was fetched: the refusal comes before the layers.
    assert!(
        !store.path().join("layers/sha256").exists()
            || std::fs::read_dir(store.path().join("layers/sha256"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn an_image_signed_by_another_key_is_refused() {
    let s = Setup::new();
    let (ours, theirs) = (
        CosignKey::generate(s.path(), "ours"),
        CosignKey::generate(s.path(), "theirs"),
    );
    s.push_sigstore("team/app", "v1", &image("theirs"), &theirs);
    let (gpg_ours, gpg_theirs) = (
        GpgKey::generate(s.path(), "gours"),
        GpgKey::generate(s.path(), "gtheirs"),
    );
    s.push_gpg("team/gpg", "v1", &image("gtheirs"), &gpg_theirs);
    let store = tempfile::tempdir().unwrap();
    let policy = s.registry_policy("sigstore", signing::sigstore_signed(&ours));
    let out = s.explode("team/app:v1", &policy, store.path());
    assert_refused(
        &out,
        "signed by an unknown key",
        store.path(),
        "team/app",
        "v1",
    );
    let policy = s.registry_policy("gpg", signing::signed_by(&gpg_ours));
    let out = s.explode("team/gpg:v1", &policy, store.path());
    assert_refused(
        &out,
        "signed by an unknown key",
        store.path(),
        "team/gpg",
        "v1",
    );
    assert!(!s.skopeo_accepts("team/gpg:v1", &policy));
}

#[test]
fn a_signature_copied_from_another_image_is_refused() {
    let s = Setup::new();
    let cosign = CosignKey::generate(s.path(), "ours");
    let gpg = GpgKey::generate(s.path(), "ours");
    let signed = s.push_sigstore("team/app", "signed", &image("signed"), &cosign);
    let forged = s.push("team/app", "forged", &image("forged"));
    // The signed image's attachment, tagged for the other image.
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_string();
    let (sig, media_type) = s
        .registry
        .get_manifest("team/app", &format!("sha256-{}.sig", hex(&signed)))
        .unwrap();
    s.registry
        .push_manifest(
            "team/app",
            &format!("sha256-{}.sig", hex(&forged)),
            &media_type,
            &sig,
        )
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    let policy = s.registry_policy("sigstore", signing::sigstore_signed(&cosign));
    assert_accepted(&s.explode("team/app:signed", &policy, store.path()));
    let out = s.explode("team/app:forged", &policy, store.path());
    assert_refused(
        &out,
        "signature for another image",
        store.path(),
        "team/app",
        "forged",
    );

    // The same with simple signing: the lookaside directory copied.
    let signed = s.push_gpg("team/gpg", "signed", &image("gsigned"), &gpg);
    let forged = s.push("team/gpg", "forged", &image("gforged"));
    let dir = |d: &str| s.lookaside.join(format!("team/gpg@sha256={}", hex(d)));
    std::fs::create_dir_all(dir(&forged)).unwrap();
    std::fs::copy(
        dir(&signed).join("signature-1"),
        dir(&forged).join("signature-1"),
    )
    .unwrap();
    let policy = s.registry_policy("gpg", signing::signed_by(&gpg));
    let out = s.explode("team/gpg:forged", &policy, store.path());
    assert_refused(
        &out,
        "signature for another image",
        store.path(),
        "team/gpg",
        "forged",
    );
    assert!(!s.skopeo_accepts("team/gpg:forged", &policy));
}

#[test]
fn a_signature_for_another_tag_is_refused_unless_the_identity_rule_allows_it() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    let img = image("retagged");
    let signed = s.push_gpg("team/app", "v1", &img, &key);
    // The same image (same digest, same signature) pushed as v2 unsigned:
    // the signature names v1.
    assert_eq!(s.push("team/app", "v2", &img), signed);
    let store = tempfile::tempdir().unwrap();
    let policy = s.registry_policy("exact", signing::signed_by(&key));
    let out = s.explode("team/app:v2", &policy, store.path());
    assert_refused(
        &out,
        "signature for another image",
        store.path(),
        "team/app",
        "v2",
    );
    assert!(!s.skopeo_accepts("team/app:v2", &policy));
    // Asked for by digest, the default rule wants the repository only.
    assert_accepted(&s.explode(&format!("team/app@{signed}"), &policy, store.path()));
    let mut repo = signing::signed_by(&key);
    repo["signedIdentity"] = json!({"type": "matchRepository"});
    let policy = s.registry_policy("repo", repo);
    assert_accepted(&s.explode("team/app:v2", &policy, store.path()));
    assert!(s.skopeo_accepts("team/app:v2", &policy));
}

#[test]
fn a_tag_moved_to_an_unsigned_digest_is_refused_and_the_old_link_stays() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    let v1 = s.push_gpg("team/app", "latest", &image("first"), &key);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let store = tempfile::tempdir().unwrap();
    assert_accepted(&s.explode("team/app:latest", &policy, store.path()));
    assert_eq!(digest_link(store.path(), "team/app", "latest"), v1);
    let v2 = s.push("team/app", "latest", &image("second"));
    assert_ne!(v1, v2);
    let out = s.explode("team/app:latest", &policy, store.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no signature"), "{err}");
    assert_eq!(digest_link(store.path(), "team/app", "latest"), v1);
    assert!(!s.skopeo_accepts("team/app:latest", &policy));
    assert!(
        linked_rootfs(store.path(), "team", "app", "latest")
            .join("etc/first")
            .is_file()
    );
}

/// Refused by us, with `reason` and every one of `details` in the
/// message, and by skopeo.
#[track_caller]
fn assert_both_refuse(s: &Setup, reference: &str, policy: &Path, reason: &str, details: &[&str]) {
    let store = tempfile::tempdir().unwrap();
    let out = s.explode(reference, policy, store.path());
    let (repo, tag) = reference.split_once(':').unwrap();
    assert_refused(&out, reason, store.path(), repo, tag);
    for detail in details {
        assert!(
            stderr(&out).contains(detail),
            "no {detail:?}: {}",
            stderr(&out)
        );
    }
    assert!(
        !s.skopeo_accepts(reference, policy),
        "skopeo accepts {reference}"
    );
}

/// Accepted by us and by skopeo.
#[track_caller]
fn assert_both_accept(s: &Setup, reference: &str, policy: &Path) {
    let store = tempfile::tempdir().unwrap();
    assert_accepted(&s.explode(reference, policy, store.path()));
    assert!(
        s.skopeo_accepts(reference, policy),
        "skopeo refuses {reference}"
    );
}

#[test]
fn an_image_signed_before_its_key_expired_is_refused_until_the_key_is_extended() {
    let s = Setup::new();
    // Made 10 days ago, expired 8 days ago; the image signed 9 days ago.
    let key = GpgKey::generate_expiring(s.path(), "lapsed", Expiring::PrimaryKey, 10, 2);
    key.sign_as_of(Some(9));
    s.push_gpg("team/app", "v1", &image("expired"), &key);
    key.sign_as_of(None);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    assert_both_refuse(
        &s,
        "team/app:v1",
        &policy,
        "signed by an expired key",
        &[&format!("key {} expired on", key.fingerprint), "keyPath"],
    );
    // The owner extends it; the new export in keyPath: the same signature
    // passes.
    key.extend(Expiring::PrimaryKey);
    assert_both_accept(&s, "team/app:v1", &policy);
}

#[test]
fn an_image_signed_by_an_expired_signing_subkey_is_refused() {
    let s = Setup::new();
    let key = GpgKey::generate_expiring(s.path(), "lapsedsub", Expiring::SigningSubkey, 10, 2);
    key.sign_as_of(Some(9));
    s.push_gpg("team/app", "v1", &image("subkey"), &key);
    key.sign_as_of(None);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    assert_both_refuse(
        &s,
        "team/app:v1",
        &policy,
        "signed by an expired key",
        &[
            &format!("of key {} expired on", key.fingerprint),
            "signing subkey",
        ],
    );
    // Extended, it signs again for us. Not for skopeo 1.9.3, which refuses
    // every subkey signature (it compares the subkey's fingerprint with the
    // policy's primary keys; later containers/image maps it to its primary
    // key), so its refusal above does not tell expiry apart either.
    key.extend(Expiring::SigningSubkey);
    let store = tempfile::tempdir().unwrap();
    assert_accepted(&s.explode("team/app:v1", &policy, store.path()));
}

#[test]
fn an_image_signed_by_a_revoked_key_is_refused() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "revoked");
    s.push_gpg("team/app", "v1", &image("revoked"), &key);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    assert_both_accept(&s, "team/app:v1", &policy);
    // Revoked after signing (the certificate gpg made with the key): the
    // signature no longer counts.
    key.revoke();
    assert_both_refuse(
        &s,
        "team/app:v1",
        &policy,
        "signed by a revoked key",
        &[&format!("key {} was revoked", key.fingerprint), "keyPath"],
    );
}

#[test]
fn a_reject_scope_refuses_the_repository() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    s.push_gpg("team/app", "v1", &image("rejected"), &key);
    let policy = s.policy(
        "p",
        json!({"default": [{"type": "insecureAcceptAnything"}],
               "transports": {"docker": {
                   format!("{}/team/app", s.registry.addr()): [{"type": "reject"}]}}}),
    );
    let store = tempfile::tempdir().unwrap();
    let out = s.explode("team/app:v1", &policy, store.path());
    assert_refused(
        &out,
        "policy rejects this repository",
        store.path(),
        "team/app",
        "v1",
    );
    assert!(!s.skopeo_accepts("team/app:v1", &policy));
}

#[test]
fn the_most_specific_scope_wins() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    let addr = s.registry.addr();
    s.push("team/open", "v1", &image("open"));
    s.push("team/open", "frozen", &image("frozen"));
    s.push("team/closed", "v1", &image("closed"));
    s.push_gpg("other/signed", "v1", &image("signed"), &key);
    // The registry must be signed, team/open need not, but its tag
    // `frozen` is rejected; everything else is rejected.
    let policy = s.policy(
        "p",
        json!({"default": [{"type": "reject"}],
               "transports": {"docker": {
                   addr.clone(): [signing::signed_by(&key)],
                   format!("{addr}/team/open"): [{"type": "insecureAcceptAnything"}],
                   format!("{addr}/team/open:frozen"): [{"type": "reject"}]}}}),
    );
    let store = tempfile::tempdir().unwrap();
    let cases = [
        ("team/open:v1", None),
        ("team/open:frozen", Some("policy rejects this repository")),
        ("team/closed:v1", Some("no signature")),
        ("other/signed:v1", None),
    ];
    for (reference, refusal) in cases {
        let out = s.explode(reference, &policy, store.path());
        match refusal {
            None => assert_accepted(&out),
            Some(reason) => {
                let (repo, tag) = reference.split_once(':').unwrap();
                assert_refused(&out, reason, store.path(), repo, tag);
            }
        }
        assert_eq!(
            s.skopeo_accepts(reference, &policy),
            refusal.is_none(),
            "skopeo disagrees on {reference}"
        );
    }
}

#[test]
fn a_signature_on_the_index_covers_the_platform_manifest() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    let index = exploder_tests::image::Index::oci()
        .image(image("amd").platform("linux", "amd64", None))
        .image(image("arm").platform("linux", "arm64", None));
    let layout = tempfile::tempdir().unwrap();
    index.write_oci_layout(layout.path(), "v1").unwrap();
    let mut copy = vec!["--all".to_string()];
    copy.extend(key.sign_args());
    s.registry.skopeo_copy_layout(
        layout.path(),
        "team/multi",
        "v1",
        &s.global(),
        &copy,
        &key.env(),
    );
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let store = tempfile::tempdir().unwrap();
    assert_accepted(&s.explode("team/multi:v1", &policy, store.path()));
    assert!(
        linked_rootfs(store.path(), "team", "multi", "v1")
            .join("etc/amd")
            .is_file()
    );
    assert!(s.skopeo_accepts("team/multi:v1", &policy));
}

#[test]
fn a_broken_policy_is_a_usage_error() {
    let s = Setup::new();
    let policy = s.policy(
        "p",
        json!({"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent/key.pub"}]}),
    );
    let store = tempfile::tempdir().unwrap();
    let out = s.explode("team/app:v1", &policy, store.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/key.pub"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_fleet_refuses_at_fan_out_and_dead_letters_what_the_worker_refuses() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    s.push("team/app", "v1", &image("unsigned"));
    s.push_gpg("team/app", "v2", &image("signed"), &key);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let trust = [
        "--policy",
        policy.to_str().unwrap(),
        "--registries-d",
        s.registries_d.to_str().unwrap(),
    ];
    let mut fleet = Fleet::new("sig");
    fleet.apply_topology();
    let store = tempfile::tempdir().unwrap();
    let log = s.path().join("worker.log");

    // The fan-out refuses: nothing is published.
    let out = fleet.enqueue_with(&s.reference("team/app:v1"), store.path(), &trust);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no signature"), "{}", stderr(&out));
    assert!(fleet.drain(exploder_common::job::JobKind::Image).is_empty());

    // Enqueued without the policy (an older producer), the worker refuses
    // it for good: dead-lettered with the reason, never linked.
    fleet.enqueue_ok(&s.reference("team/app:v1"), store.path());
    fleet.enqueue_with(&s.reference("team/app:v2"), store.path(), &trust);
    fleet.start_worker(store.path(), &log, &trust);
    exploder_tests::wait_until(
        "the refusal dead-lettered and the signed image linked",
        Duration::from_secs(60),
        &[&log],
        || !fleet.peek_dead().is_empty() && store.path().join("images/team/app/v2/link").exists(),
    );
    let dead = fleet.peek_dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (job, reason) = &dead[0];
    assert!(
        matches!(job, Some(exploder_common::job::Job::Image(_))),
        "{job:?}"
    );
    assert!(
        reason.contains("refused by the signature policy") && reason.contains("no signature"),
        "{reason}"
    );
    assert!(!store.path().join("images/team/app/v1/link").exists());
    assert!(
        linked_rootfs(store.path(), "team", "app", "v2")
            .join("etc/signed")
            .is_file()
    );
}

/// With `--blob-source` the fleet reads the registry's storage directory,
/// but the policy is the one for the registry it mirrors: the job says
/// which (schema v4), and the worker checks that reference again.
#[test]
fn a_worker_checks_a_job_from_a_storage_directory_as_the_registry_it_mirrors() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    s.push("team/app", "v1", &image("unsigned"));
    s.push_gpg("team/app", "v2", &image("signed"), &key);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let trust = [
        "--policy",
        policy.to_str().unwrap(),
        "--registries-d",
        s.registries_d.to_str().unwrap(),
    ];
    let blob_source = format!("file://{}", s.registry.storage_root().display());
    let mut fleet = Fleet::new("sigdir");
    fleet.apply_topology();
    let store = tempfile::tempdir().unwrap();
    let log = s.path().join("worker.log");

    // An unsigned image enqueued by a producer without the policy, and a
    // signed one with it; both read from the storage directory.
    let from_dir = ["--blob-source", blob_source.as_str()];
    let out = fleet.enqueue_with(&s.reference("team/app:v1"), store.path(), &from_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let with_policy: Vec<&str> = trust.iter().chain(&from_dir).copied().collect();
    let out = fleet.enqueue_with(&s.reference("team/app:v2"), store.path(), &with_policy);
    assert!(out.status.success(), "{}", stderr(&out));
    fleet.start_worker(store.path(), &log, &trust);
    exploder_tests::wait_until(
        "the unsigned image dead-lettered and the signed one linked",
        Duration::from_secs(60),
        &[&log],
        || !fleet.peek_dead().is_empty() && store.path().join("images/team/app/v2/link").exists(),
    );
    let dead = fleet.peek_dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (job, reason) = &dead[0];
    let Some(exploder_common::job::Job::Image(job)) = job else {
        panic!("{job:?}")
    };
    assert_eq!(job.mirrors.as_deref(), Some(s.registry.addr().as_str()));
    assert!(
        reason.contains("refused by the signature policy") && reason.contains("no signature"),
        "{reason}"
    );
    assert!(!store.path().join("images/team/app/v1/link").exists());
    assert!(
        linked_rootfs(store.path(), "team", "app", "v2")
            .join("etc/signed")
            .is_file()
    );
}

/// POSTs a registry's push notification for `repo:tag` (`digest`) to the
/// producer's registry webhook; returns the status and the answer.
fn notify_push(port: u16, registry: &str, repo: &str, tag: &str, digest: &str) -> (u16, String) {
    let body = format!(
        r#"{{"events":[{{"id":"{tag}","timestamp":"2026-11-24T14:00:00Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"{repo}","url":"http://{registry}/v2/{repo}/manifests/{digest}","tag":"{tag}"}},"request":{{"host":"{registry}"}}}}]}}"#
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let mut resp = agent
        .post(format!("http://127.0.0.1:{port}/webhook/registry"))
        .header("Authorization", "Bearer signature-test-token")
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .send(body.as_bytes())
        .expect("producer answers");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn the_producer_rejects_a_push_the_policy_refuses_and_enqueues_a_signed_one() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    let unsigned = s.push("team/app", "v1", &image("unsigned"));
    let signed = s.push_gpg("team/app", "v2", &image("signed"), &key);
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let store = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new("sigprod");
    fleet.apply_topology();
    let addr = s.registry.addr();
    let port = fleet.start_producer(
        store.path(),
        &s.path().join("producer.log"),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--registries-d",
            s.registries_d.to_str().unwrap(),
        ],
        &[
            ("EXPLODER_WEBHOOK_TOKEN", "signature-test-token"),
            ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", &addr),
        ],
    );
    let (status, answer) = notify_push(port, &addr, "team/app", "v1", &unsigned);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(r#""outcome":"refused""#) && answer.contains("no signature"),
        "{answer}"
    );
    assert!(fleet.drain(exploder_common::job::JobKind::Image).is_empty());
    let (status, answer) = notify_push(port, &addr, "team/app", "v2", &signed);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""outcome":"accepted""#), "{answer}");
    assert_eq!(fleet.drain(exploder_common::job::JobKind::Image).len(), 1);
}

/// Serves the files under `dir` over plain HTTP on loopback (GET; 404 for
/// what is missing), on a thread that lives as long as the test.
fn serve_dir(dir: PathBuf) -> u16 {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let answer = match std::fs::read(dir.join(path.trim_start_matches('/'))) {
                Ok(body) => {
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    a.extend(body);
                    a
                }
                Err(_) => {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                }
            };
            let _ = stream.write_all(&answer);
        }
    });
    port
}

#[test]
fn a_lookaside_over_http_named_by_a_plain_flag_works() {
    let s = Setup::new();
    let key = GpgKey::generate(s.path(), "ours");
    s.push_gpg("team/app", "v1", &image("http"), &key);
    s.push("team/app", "v2", &image("unsigned"));
    let port = serve_dir(s.lookaside.clone());
    let policy = s.registry_policy("p", signing::signed_by(&key));
    let store = tempfile::tempdir().unwrap();
    let explode = |tag: &str| {
        run_exploder([
            "explode",
            &s.reference(&format!("team/app:{tag}")),
            "--store",
            store.path().to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            // No registries.d: the flag says where signatures are.
            "--registries-d",
            s.path().join("none").to_str().unwrap(),
            "--signature-lookaside",
            &format!("http://127.0.0.1:{port}"),
        ])
    };
    assert_accepted(&explode("v1"));
    assert_refused(
        &explode("v2"),
        "no signature",
        store.path(),
        "team/app",
        "v2",
    );
}
