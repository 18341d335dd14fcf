//! Credentials where users keep them: containers' `auth.json` (where
//! podman and skopeo log in) and Docker's `config.json`, with their
//! `auths` entries and credential helpers (`credHelpers`, `credsStore`:
//! `docker-credential-<name> get`). A registry with basic auth, an
//! `exploder explode` with no credential flag.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use exploder_tests::credential_helper;
use exploder_tests::registry::{PASSWORD, USER};
use exploder_tests::{Image, Layer, LayerBuilder, Registry, exploder_bin};

fn pushed(registry: &Registry) -> String {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/secret", b"private\n", 0o644);
    registry.push(
        "team/private",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    )
}

/// `exploder explode` with `env` and nothing of the user's own setup (a
/// HOME of its own, no auth variables but those given).
fn explode(reference: &str, home: &Path, env: &[(&str, String)]) -> Output {
    let store = home.join("store");
    let mut cmd = Command::new(exploder_bin());
    credential_helper::without_user_credentials(&mut cmd, home)
        .args(["explode", reference, "--store"])
        .arg(&store)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

fn linked(home: &Path) -> bool {
    home.join("store/images/team/private/v1/link").is_file()
}

#[test]
fn a_credential_helper_named_for_the_registry_gives_its_password() {
    let registry = Registry::start_with_basic_auth();
    pushed(&registry);
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    credential_helper::write(&bin, "vault", &registry.addr(), USER, PASSWORD);
    let auth = home.path().join("auth.json");
    std::fs::write(
        &auth,
        serde_json::json!({ "credHelpers": { registry.addr(): "vault" } }).to_string(),
    )
    .unwrap();
    let out = explode(
        &format!("{}/team/private:v1", registry.addr()),
        home.path(),
        &[
            ("REGISTRY_AUTH_FILE", auth.display().to_string()),
            ("PATH", credential_helper::path_with(&bin)),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(linked(home.path()));
    let asked = std::fs::read_to_string(credential_helper::asked_file(&bin)).unwrap();
    assert_eq!(asked.trim(), registry.addr());
}

#[test]
fn a_creds_store_in_dockers_config_serves_every_registry_without_an_entry() {
    let registry = Registry::start_with_basic_auth();
    pushed(&registry);
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    credential_helper::write(&bin, "desktop", &registry.addr(), USER, PASSWORD);
    std::fs::create_dir_all(home.path().join(".docker")).unwrap();
    std::fs::write(
        home.path().join(".docker/config.json"),
        serde_json::json!({ "auths": {}, "credsStore": "desktop" }).to_string(),
    )
    .unwrap();
    let out = explode(
        &format!("{}/team/private:v1", registry.addr()),
        home.path(),
        &[("PATH", credential_helper::path_with(&bin))],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(linked(home.path()));
}

#[test]
fn podmans_auth_json_in_the_runtime_dir_is_read_before_dockers_config() {
    let registry = Registry::start_with_basic_auth();
    pushed(&registry);
    let home = tempfile::tempdir().unwrap();
    let runtime = home.path().join("run");
    std::fs::create_dir_all(runtime.join("containers")).unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        runtime.join("containers/auth.json"),
        serde_json::json!({ "auths": { registry.addr(): { "auth": basic } } }).to_string(),
    )
    .unwrap();
    // A wrong password in Docker's file: the podman login comes first.
    std::fs::create_dir_all(home.path().join(".docker")).unwrap();
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:wrong"));
    std::fs::write(
        home.path().join(".docker/config.json"),
        serde_json::json!({ "auths": { registry.addr(): { "auth": wrong } } }).to_string(),
    )
    .unwrap();
    let out = explode(
        &format!("{}/team/private:v1", registry.addr()),
        home.path(),
        &[("XDG_RUNTIME_DIR", runtime.display().to_string())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(linked(home.path()));
}

#[test]
fn a_helper_that_is_not_installed_is_named_with_what_to_do() {
    let registry = Registry::start_with_basic_auth();
    pushed(&registry);
    let home = tempfile::tempdir().unwrap();
    let auth = home.path().join("auth.json");
    std::fs::write(
        &auth,
        serde_json::json!({ "credHelpers": { registry.addr(): "absent" } }).to_string(),
    )
    .unwrap();
    let out = explode(
        &format!("{}/team/private:v1", registry.addr()),
        home.path(),
        &[("REGISTRY_AUTH_FILE", auth.display().to_string())],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("docker-credential-absent"), "{stderr}");
    assert!(stderr.contains("PATH"), "{stderr}");
    assert!(!linked(home.path()));
}
