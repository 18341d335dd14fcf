//! Docker token authentication against a real registry: a
//! `docker-registry` with `auth: token` whose realm is the harness's token
//! server (users, identity tokens, per-repository access, signed JWTs).
//! Public repositories are pulled anonymously, private ones with the
//! credentials users keep (flags, auth.json, an identity token, a
//! credential helper); refusals name the registry and what to check; a
//! token is asked for each repository, renewed before it expires and
//! renewed once when the registry refuses it. The storage-directory path,
//! the fleet (`exploder enqueue` and a worker) and the producer (a push
//! notification) link from the same registry.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use exploder_tests::credential_helper;
use exploder_tests::fault_proxy::{Fault, FaultProxy};
use exploder_tests::fleet::Fleet;
use exploder_tests::token_server::{TokenRequest, TokenServer};
use exploder_tests::{
    Image, Layer, LayerBuilder, Registry, SlowLink, SplitMix64, exploder_bin, linked_rootfs,
    wait_until,
};

const ALICE: &str = "alice";
const ALICE_PASSWORD: &str = "alice-password";
const BOB: &str = "bob";
const BOB_PASSWORD: &str = "bob-password";

/// A token server where `library/public` is public, `team/private` is
/// alice's and `team/other` is bob's, and a registry that trusts it, with
/// an image in each repository (a file naming the repository).
fn token_registry() -> (TokenServer, Registry) {
    let tokens = TokenServer::start();
    tokens
        .user(ALICE, ALICE_PASSWORD)
        .user(BOB, BOB_PASSWORD)
        .public("library/public")
        .grant(ALICE, "team/private")
        .grant(BOB, "team/other");
    let registry = Registry::start_with_token_auth(&tokens);
    for repository in ["library/public", "team/private", "team/other"] {
        let mut b = LayerBuilder::new();
        b.dir("etc", 0o755)
            .file("etc/repository", repository.as_bytes(), 0o644);
        registry.push(
            repository,
            "v1",
            &Image::oci().layer(Layer::gzip(b.build())),
        );
    }
    (tokens, registry)
}

/// `exploder explode REFERENCE... --store HOME/store ARGS` with `env` and
/// nothing of the user's own setup (a HOME of its own, no auth variables
/// but those given).
fn explode(references: &[String], home: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(exploder_bin());
    credential_helper::without_user_credentials(&mut cmd, home)
        .arg("explode")
        .args(references)
        .arg("--store")
        .arg(home.join("store"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exploder failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The linked tree of `repository:v1` holds its own file.
fn assert_linked(home: &Path, repository: &str) {
    let (namespace, image) = repository.split_once('/').unwrap();
    let rootfs = linked_rootfs(&home.join("store"), namespace, image, "v1");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/repository")).unwrap(),
        repository
    );
}

fn not_linked(home: &Path, repository: &str) -> bool {
    !home
        .join("store/images")
        .join(repository)
        .join("v1/link")
        .exists()
}

fn reference(registry_addr: &str, repository: &str) -> String {
    format!("{registry_addr}/{repository}:v1")
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn password_flags<'a>(user: &'a str, password: &'a str) -> [&'a str; 4] {
    ["--username", user, "--password", password]
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes `json` as `HOME/auth.json` and returns the REGISTRY_AUTH_FILE
/// variable pointing at it.
fn auth_file(home: &Path, json: serde_json::Value) -> (&'static str, String) {
    let path = home.join("auth.json");
    std::fs::write(&path, json.to_string()).unwrap();
    ("REGISTRY_AUTH_FILE", path.display().to_string())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_public_repository_is_pulled_anonymously_with_a_token_for_it() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "library/public")],
        home.path(),
        &[],
        &[],
    );
    assert_ok(&out);
    assert_linked(home.path(), "library/public");
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].method, "GET");
    assert_eq!(asked[0].user, None, "anonymous");
    assert_eq!(asked[0].scopes, [pull_scope("library/public")]);
}

#[test]
fn a_private_repository_is_pulled_with_username_and_password_flags() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &password_flags(ALICE, ALICE_PASSWORD),
        &[],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].user.as_deref(), Some(ALICE));
    assert_eq!(asked[0].scopes, [pull_scope("team/private")]);
}

#[test]
fn a_private_repository_is_pulled_with_the_login_in_auth_json() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let auth = auth_file(
        home.path(),
        serde_json::json!({ "auths": { registry.addr(): {
            "auth": b64(&format!("{ALICE}:{ALICE_PASSWORD}"))
        } } }),
    );
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &[],
        &[auth],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    assert_eq!(tokens.requests()[0].user.as_deref(), Some(ALICE));
}

#[test]
fn a_wrong_password_names_the_registry_the_user_and_what_to_check() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &password_flags(ALICE, "not-her-password"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "a reference failed: exit 1");
    let said = stderr(&out);
    for part in [
        registry.addr().as_str(),
        &tokens.realm(),
        "user alice (--username/--password)",
        "401",
        "check the username and password",
        "podman login",
    ] {
        assert!(said.contains(part), "no {part:?} in: {said}");
    }
    assert!(not_linked(home.path(), "team/private"));
    // Refused credentials are not tried again and again.
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].status, 401);
    assert_eq!(
        registry.request_count("GET", "/v2/team/private/manifests/v1"),
        0
    );
}

#[test]
fn an_anonymous_pull_of_a_private_repository_says_to_log_in() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    for part in [
        format!("{}/team/private", registry.addr()),
        "denied (401)".to_string(),
        format!(
            "anonymous access (no credentials for {} in flags or auth files)",
            registry.addr()
        ),
        "podman login".to_string(),
    ] {
        assert!(said.contains(&part), "no {part:?} in: {said}");
    }
    assert!(not_linked(home.path(), "team/private"));
    // The token without access is asked for again once (it may have been
    // refused before its time), not more.
    assert_eq!(tokens.requests().len(), 2, "{:?}", tokens.requests());
}

#[test]
fn each_repository_gets_a_token_of_its_own_scope() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[
            reference(&registry.addr(), "team/private"),
            reference(&registry.addr(), "library/public"),
        ],
        home.path(),
        &password_flags(ALICE, ALICE_PASSWORD),
        &[],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    assert_linked(home.path(), "library/public");
    let scopes: Vec<Vec<String>> = tokens.requests().into_iter().map(|r| r.scopes).collect();
    assert_eq!(
        scopes,
        [
            vec![pull_scope("team/private")],
            vec![pull_scope("library/public")]
        ],
        "one token per repository, asked for that repository only"
    );
}

#[test]
fn a_user_allowed_one_repository_cannot_pull_another() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/other")],
        home.path(),
        &password_flags(BOB, BOB_PASSWORD),
        &[],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/other");

    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &password_flags(BOB, BOB_PASSWORD),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert!(
        said.contains("denied (401) for user bob (--username/--password)"),
        "{said}"
    );
    assert!(not_linked(home.path(), "team/private"));
    let last = tokens.requests().pop().unwrap();
    assert_eq!(last.user.as_deref(), Some(BOB));
    assert_eq!(last.scopes, [pull_scope("team/private")]);
}

/// A layer of `len` bytes that do not compress (the download takes as
/// long as its size says).
fn big_image(len: usize) -> Image {
    let mut rng = SplitMix64(15);
    let bytes: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .take(len)
        .collect();
    let mut b = LayerBuilder::new();
    b.dir("data", 0o755).file("data/big", bytes, 0o644);
    Image::oci().layer(Layer::uncompressed(b.build()))
}

#[test]
fn a_token_expiring_during_a_long_download_is_renewed_once() {
    let (tokens, registry) = token_registry();
    let image = big_image(3584 << 10);
    registry.push("team/private", "big", &image);
    let layer = image.layer_digests()[0].clone();
    // At 400 KiB/s the download is cut at 2.8 MiB, 7 s in, well after the
    // 5 s token is due for renewal (4 s); the rest, 1.75 s more, comes
    // with a Range request and the renewed token.
    tokens.expires_in(5);
    let slow = SlowLink::start(&registry.addr(), 400 << 10);
    let proxy = FaultProxy::start(&slow.addr());
    proxy.inject(
        &format!("GET /v2/team/private/blobs/{layer}"),
        Fault::CutAfter(2800 << 10),
    );
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[format!("{}/team/private:big", proxy.addr())],
        home.path(),
        &password_flags(ALICE, ALICE_PASSWORD),
        &[],
    );
    assert_ok(&out);
    assert_eq!(proxy.unused_faults(), 0, "the download was not cut");
    let ranges = proxy
        .seen()
        .iter()
        .filter(|h| h.starts_with(&format!("GET /v2/team/private/blobs/{layer}")))
        .filter(|h| h.to_ascii_lowercase().contains("range: bytes="))
        .count();
    assert_eq!(ranges, 1, "the download was resumed once");
    let rootfs = linked_rootfs(&home.path().join("store"), "team", "private", "big");
    let got = std::fs::read(rootfs.join("data/big")).unwrap();
    assert!(got == image_file(&image), "the resumed file differs");
    let asked: Vec<TokenRequest> = tokens.requests();
    assert_eq!(asked.len(), 2, "renewed exactly once: {asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| r.user.as_deref() == Some(ALICE) && r.scopes == [pull_scope("team/private")]),
        "{asked:?}"
    );
}

/// The bytes of `data/big` in [`big_image`]'s image.
fn image_file(image: &Image) -> Vec<u8> {
    let blobs = image.blobs();
    let layer = &image.layer_digests()[0];
    let tar = &blobs.iter().find(|(d, _)| d == layer).unwrap().1;
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("data/big") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            return bytes;
        }
    }
    panic!("no data/big in the layer");
}

#[test]
fn a_token_the_registry_refuses_is_replaced_once() {
    let (tokens, registry) = token_registry();
    // The first token is refused by the registry (as an expired or revoked
    // one is): one new token, and the pull goes on.
    tokens.spoil_next(1);
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &password_flags(ALICE, ALICE_PASSWORD),
        &[],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    assert_eq!(tokens.requests().len(), 2, "{:?}", tokens.requests());

    // Refused twice in a row: an error, not a loop.
    tokens.spoil_next(100);
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &password_flags(ALICE, ALICE_PASSWORD),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("denied (401)"), "{}", stderr(&out));
    assert_eq!(tokens.requests().len(), 4, "{:?}", tokens.requests());
}

#[test]
fn an_identity_token_in_auth_json_is_exchanged_as_an_oauth2_refresh_token() {
    let (tokens, registry) = token_registry();
    let identity = tokens.identity_token(ALICE);
    let home = tempfile::tempdir().unwrap();
    // As `docker login` writes an OAuth login: a user without a password,
    // and the identity token.
    let auth = auth_file(
        home.path(),
        serde_json::json!({ "auths": { registry.addr(): {
            "auth": b64(&format!("{ALICE}:")), "identitytoken": identity
        } } }),
    );
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &[],
        &[auth],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(asked[0].client_id.as_deref(), Some("exploder"));
    assert_eq!(asked[0].user.as_deref(), Some(ALICE));
    assert_eq!(asked[0].scopes, [pull_scope("team/private")]);
}

#[test]
fn a_credential_helper_answering_token_gives_an_identity_token() {
    let (tokens, registry) = token_registry();
    let identity = tokens.identity_token(ALICE);
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    credential_helper::write(&bin, "oauth", &registry.addr(), "<token>", &identity);
    let auth = auth_file(
        home.path(),
        serde_json::json!({ "credHelpers": { registry.addr(): "oauth" } }),
    );
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &[],
        &[auth, ("PATH", credential_helper::path_with(&bin))],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(asked[0].user.as_deref(), Some(ALICE));
}

#[test]
fn a_revoked_identity_token_says_to_log_in_again() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let auth = auth_file(
        home.path(),
        serde_json::json!({ "auths": { registry.addr(): { "identitytoken": "revoked" } } }),
    );
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &[],
        std::slice::from_ref(&auth),
    );
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    for part in [
        registry.addr().as_str(),
        &format!("the identity token (auth file {})", auth.1),
        "invalid_grant",
        "log in again",
    ] {
        assert!(said.contains(part), "no {part:?} in: {said}");
    }
    assert_eq!(tokens.requests().len(), 1);
}

#[test]
fn the_storage_directory_path_links_a_token_registrys_image_without_a_token() {
    let (tokens, registry) = token_registry();
    let home = tempfile::tempdir().unwrap();
    let out = explode(
        &[reference(&registry.addr(), "team/private")],
        home.path(),
        &[
            "--blob-source",
            &format!("file://{}", registry.storage_root().display()),
        ],
        &[],
    );
    assert_ok(&out);
    assert_linked(home.path(), "team/private");
    assert!(
        tokens.requests().is_empty(),
        "the registry was not asked: {:?}",
        tokens.requests()
    );
}

#[test]
fn a_fleet_pulls_from_a_token_registry_with_credentials_from_the_environment() {
    let (tokens, registry) = token_registry();
    let mut fleet = Fleet::new("token");
    fleet.apply_topology();
    let store = tempfile::tempdir().unwrap();
    let log = store.path().join("worker.log");
    let reference = reference(&registry.addr(), "team/private");
    let out = fleet.enqueue_with(
        &reference,
        store.path(),
        &password_flags(ALICE, ALICE_PASSWORD),
    );
    assert!(
        out.status.success(),
        "exploder enqueue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.start_worker_env(
        store.path(),
        &log,
        &[],
        &[
            ("EXPLODER_REGISTRY_USERNAME", ALICE),
            ("EXPLODER_REGISTRY_PASSWORD", ALICE_PASSWORD),
        ],
    );
    let link = store.path().join("images/team/private/v1/link");
    wait_until(
        "team/private:v1 linked by the worker",
        Duration::from_secs(60),
        &[&log],
        || link.is_file(),
    );
    let rootfs = linked_rootfs(store.path(), "team", "private", "v1");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/repository")).unwrap(),
        "team/private"
    );
    // `exploder enqueue` resolved the image and the worker fetched its
    // blobs, each with a token of its own.
    let asked = tokens.requests();
    assert!(asked.len() >= 2, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| r.user.as_deref() == Some(ALICE) && r.status == 200),
        "{asked:?}"
    );
}

#[test]
fn the_producer_resolves_a_push_from_a_token_registry_for_its_workers() {
    const WEBHOOK_TOKEN: &str = "webhook-token-for-token-auth";
    let (tokens, registry) = token_registry();
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/pushed", b"v2", 0o644);
    let digest = registry.push(
        "team/private",
        "v2",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    let store = tempfile::tempdir().unwrap();
    let (plog, wlog) = (
        store.path().join("producer.log"),
        store.path().join("worker.log"),
    );
    let credentials = [
        ("EXPLODER_REGISTRY_USERNAME", ALICE),
        ("EXPLODER_REGISTRY_PASSWORD", ALICE_PASSWORD),
    ];
    let addr = registry.addr();
    let mut fleet = Fleet::new("token-producer");
    fleet.apply_topology();
    let mut producer_env = vec![
        ("EXPLODER_WEBHOOK_TOKEN", WEBHOOK_TOKEN),
        ("EXPLODER_WEBHOOK_REGISTRY_REGISTRIES", addr.as_str()),
    ];
    producer_env.extend(credentials);
    let port = fleet.start_producer(store.path(), &plog, &[], &producer_env);
    fleet.start_worker_env(store.path(), &wlog, &[], &credentials);
    // The notification distribution sends for the push.
    let event = format!(
        r#"{{"events":[{{"id":"e1","timestamp":"2026-11-30T08:00:00Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","repository":"team/private","url":"http://{addr}/v2/team/private/manifests/{digest}","tag":"v2"}},"request":{{"host":"{addr}"}}}}]}}"#
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let mut answer = agent
        .post(format!("http://127.0.0.1:{port}/webhook/registry"))
        .header("Authorization", &format!("Bearer {WEBHOOK_TOKEN}"))
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .send(event.as_bytes())
        .expect("the producer answers");
    let body = answer.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(answer.status().as_u16(), 200, "{body}");
    assert!(body.contains(r#""outcome":"accepted""#), "{body}");
    let link = store.path().join("images/team/private/v2/link");
    wait_until(
        "team/private:v2 linked",
        Duration::from_secs(60),
        &[&plog, &wlog],
        || link.is_file(),
    );
    let rootfs = linked_rootfs(store.path(), "team", "private", "v2");
    assert_eq!(std::fs::read(rootfs.join("etc/pushed")).unwrap(), b"v2");
    let asked = tokens.requests();
    assert!(asked.len() >= 2, "the producer and the worker: {asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| r.user.as_deref() == Some(ALICE) && r.status == 200),
        "{asked:?}"
    );
}
