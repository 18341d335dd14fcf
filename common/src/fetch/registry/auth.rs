//! Who the fetcher is to the registry, and keeping it authenticated.
//!
//! Owns the credentials lookup (a token flag, else username/password flags,
//! else what the auth files users already have say for the registry: a
//! credential helper or an `auths` entry, an identity token included), what
//! the direct requests send once authenticated ([`Authorization`]), the
//! authentication itself (the `/v2/` ping, and the token exchange of
//! `token` when the registry asks for bearer tokens), renewing a token
//! before it expires, and the one re-authentication after a 401
//! (`Inner::call`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;

use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use tracing::{debug, warn};

use super::error::{network_error, oci_error, status_error};
use super::options::{RegistryOptions, env_var};
use super::retry::{Failure, retry_after};
use super::token::{self, Challenge};
use super::{FetchError, Inner};

/// Credentials as the registry will see them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Credentials {
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
    /// A registry token sent as it is (--token, an auth file's
    /// `registrytoken`).
    Bearer(String),
    /// An OAuth2 refresh token (an auth file's `identitytoken`, a credential
    /// helper's `<token>` user), exchanged at the realm for access tokens.
    IdentityToken(String),
}

/// Credentials and where they were found, for messages.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Identity {
    pub(super) credentials: Credentials,
    /// "--username/--password", "auth file /path", ...
    pub(super) from: String,
}

impl Identity {
    /// "user alice (--username/--password)", "anonymous access (...)".
    pub(super) fn who(&self) -> String {
        let what = match &self.credentials {
            Credentials::Anonymous => "anonymous access".to_string(),
            Credentials::Basic { user, .. } => format!("user {user}"),
            Credentials::Bearer(_) => "the registry token".to_string(),
            Credentials::IdentityToken(_) => "the identity token".to_string(),
        };
        format!("{what} ({})", self.from)
    }
}

/// The credentials for `registry`: a token flag, else username/password
/// flags, else the first auth file that knows the registry (see
/// [`auth_file_paths`]), else anonymous.
pub(super) fn credentials(registry: &str, opts: &RegistryOptions) -> Result<Identity, FetchError> {
    let found = |credentials, from: &str| {
        Ok(Identity {
            credentials,
            from: from.to_string(),
        })
    };
    if let Some(token) = &opts.token {
        return found(Credentials::Bearer(token.clone()), "--registry-token");
    }
    match (&opts.username, &opts.password) {
        (Some(user), Some(password)) => {
            let basic = Credentials::Basic {
                user: user.clone(),
                password: password.clone(),
            };
            return found(basic, "--username/--password");
        }
        (None, None) => {}
        _ => {
            return Err(FetchError::Invalid {
                what: "registry credentials".into(),
                message: "a username needs a password and a password needs a username".into(),
            });
        }
    }
    for path in auth_file_paths(opts) {
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(FetchError::Io {
                    context: format!("reading registry auth file {}", path.display()),
                    source,
                });
            }
        };
        let invalid = |message: String| FetchError::Invalid {
            what: format!("registry auth file {}", path.display()),
            message,
        };
        let (credentials, from) = match lookup_auth(&data, registry).map_err(invalid)? {
            None => continue,
            Some(Found::Auth(auth)) => (auth, format!("auth file {}", path.display())),
            Some(Found::Helper(helper)) => match run_helper(&helper, registry).map_err(invalid)? {
                Some(auth) => (
                    auth,
                    format!(
                        "credential helper docker-credential-{helper}, named in {}",
                        path.display()
                    ),
                ),
                None => continue,
            },
        };
        debug!(path = %path.display(), registry, "credentials from the auth file");
        return found(credentials, &from);
    }
    debug!(
        registry,
        "no credentials for the registry: pulling anonymously"
    );
    found(
        Credentials::Anonymous,
        &format!("no credentials for {registry} in flags or auth files"),
    )
}

/// The auth files to read, in order, as skopeo and podman do
/// (`containers-auth.json(5)`) and then Docker: `--authfile` alone if
/// given; else EXPLODER_REGISTRY_AUTH_FILE, REGISTRY_AUTH_FILE,
/// `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json`,
/// `~/.docker/config.json`. Missing files are skipped.
pub(super) fn auth_file_paths(opts: &RegistryOptions) -> Vec<PathBuf> {
    if let Some(file) = &opts.auth_file {
        return vec![file.clone()];
    }
    let home = env_var("HOME").map(PathBuf::from);
    [
        env_var("EXPLODER_REGISTRY_AUTH_FILE").map(PathBuf::from),
        env_var("REGISTRY_AUTH_FILE").map(PathBuf::from),
        env_var("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")),
        home.as_ref()
            .map(|h| h.join(".config/containers/auth.json")),
        env_var("DOCKER_CONFIG").map(|dir| PathBuf::from(dir).join("config.json")),
        home.as_ref().map(|h| h.join(".docker/config.json")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Registry host → the credential helper that holds its secret.
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    /// The credential helper for every registry without its own.
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    /// base64 of "user:password".
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
    identitytoken: Option<String>,
}

/// What an auth file says for a registry.
#[derive(Debug, PartialEq)]
enum Found {
    Auth(Credentials),
    /// Ask `docker-credential-<name>`.
    Helper(String),
}

/// Finds what a config.json / auth.json says for `registry`, in Docker's
/// order: its `credHelpers` entry, else its `auths` entry, else the
/// `credsStore`. Keys are matched as Docker does: with or without a scheme
/// and a path ("https://index.docker.io/v1/" is docker.io); an exact key
/// wins.
fn lookup_auth(config_json: &[u8], registry: &str) -> Result<Option<Found>, String> {
    let config: DockerConfig = serde_json::from_slice(config_json).map_err(|e| e.to_string())?;
    let names = auth_key_names(registry);
    let matching = |key: &String| key == registry || names.contains(&auth_key_host(key));
    if let Some((_, helper)) = config.cred_helpers.iter().find(|(k, _)| matching(k)) {
        return Ok(Some(Found::Helper(helper.clone())));
    }
    let entry = config.auths.get(registry).or_else(|| {
        config
            .auths
            .iter()
            .find(|(key, _)| names.contains(&auth_key_host(key)))
            .map(|(_, entry)| entry)
    });
    if let Some(entry) = entry
        && let Some(auth) = entry_auth(entry).map_err(|e| format!("entry for {registry}: {e}"))?
    {
        return Ok(Some(Found::Auth(auth)));
    }
    Ok(config
        .creds_store
        .filter(|s| !s.is_empty())
        .map(Found::Helper))
}

/// The hosts an auth key may name for `registry`: Docker Hub goes by
/// several names.
fn auth_key_names(registry: &str) -> Vec<&str> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
        }
        other => vec![other],
    }
}

/// "https://host:port/v1/" → "host:port" (Docker's `ConvertToHostname`).
pub(super) fn auth_key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// What a credential helper answers to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Asks `docker-credential-<name> get` for `registry`'s credentials, as
/// Docker does: the server URL on stdin, JSON on stdout; a `<token>` user
/// means the secret is an identity token. `None` when the helper has none
/// for it (then the next auth file is asked).
fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>, String> {
    let program = format!("docker-credential-{name}");
    // Docker stores Docker Hub under its v1 URL.
    let server = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "the credential helper {program} for {registry} cannot run ({e}): install it \
                 on PATH, or remove it from credHelpers/credsStore"
            )
        })?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if !out.status.success() {
        let message = format!("{} {}", said(&out.stdout), said(&out.stderr));
        // The helpers' own words for "nothing stored for this server".
        if message.to_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!(
            "the credential helper {program} failed for {registry} ({}): {}",
            out.status,
            message.trim()
        ));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{program} answered something other than credentials: {e}"))?;
    if answer.username == "<token>" {
        return Ok(Some(Credentials::IdentityToken(answer.secret)));
    }
    Ok(Some(Credentials::Basic {
        user: answer.username,
        password: answer.secret,
    }))
}

/// An `auths` entry's credentials, in the order containers/image and
/// Docker use them: a registry token as it is, else an identity token
/// (Docker writes it beside an `auth` of "user:" with no password), else
/// `auth`, else `username` and `password`.
fn entry_auth(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    if let Some(token) = nonempty(&entry.registrytoken) {
        return Ok(Some(Credentials::Bearer(token)));
    }
    if let Some(token) = nonempty(&entry.identitytoken) {
        return Ok(Some(Credentials::IdentityToken(token)));
    }
    if let Some(auth) = nonempty(&entry.auth) {
        // Padding is optional in what some tools write.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(auth.trim())
            .map_err(|e| format!("\"auth\" is not base64: {e}"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_string())?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or("\"auth\" does not decode to user:password")?;
        return Ok(Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        }));
    }
    if let (Some(user), Some(password)) = (nonempty(&entry.username), entry.password.clone()) {
        return Ok(Some(Credentials::Basic { user, password }));
    }
    Ok(None)
}

/// What requests send to authenticate, once [`Inner::authenticate`] ran.
#[derive(Clone)]
pub(super) enum Authorization {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

/// The current authentication.
pub(super) struct AuthState {
    pub(super) authorization: Authorization,
    /// When a token from the realm is to be renewed.
    renew_at: Option<Instant>,
    /// Counts authentications, so that tasks that saw the same 401 or the
    /// same expired token renew it once between them.
    generation: u64,
}

impl AuthState {
    fn fresh(&self) -> bool {
        self.renew_at.is_none_or(|at| Instant::now() < at)
    }
}

/// A token is renewed this long before it expires (at most half its life),
/// so that oci-client, which drops a token from its cache at the `exp` the
/// token states, does not renew it by itself with its own exchange.
const RENEW_EARLY: Duration = Duration::from_secs(1);

/// How long after it was received a token that lasts `life` is renewed.
fn renew_after(life: Duration) -> Duration {
    life - RENEW_EARLY.min(life / 2)
}

impl Inner {
    /// Runs one request under the retry policy, authenticated (the first
    /// call authenticates; a token about to expire is renewed first). On a
    /// 401 it authenticates again and runs the request once more: the
    /// token may have been refused before its time. A second 401 (or any
    /// 403) is returned as [`FetchError::Unauthorized`], saying which
    /// credentials were refused.
    pub(super) async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let generation = self.authenticated().await?;
        let result = match self.retry.run(&self.location, &mut attempt).await {
            Err(FetchError::Unauthorized { status: 401, .. }) => {
                debug!(location = %self.location, "401: authenticating again");
                self.renew(Some(generation)).await?;
                self.retry.run(&self.location, &mut attempt).await
            }
            result => result,
        };
        result.map_err(|e| match e {
            FetchError::Unauthorized {
                location,
                status,
                who,
            } if who.is_empty() => FetchError::Unauthorized {
                location,
                status,
                who: self.credentials.who(),
            },
            other => other,
        })
    }

    /// The current authentication's generation, authenticating first when
    /// there is none or its token is due for renewal.
    async fn authenticated(&self) -> Result<u64, FetchError> {
        if let Some(state) = &*self.authorization.read().await
            && state.fresh()
        {
            return Ok(state.generation);
        }
        self.renew(None).await
    }

    /// Authenticates, unless another task did while this one waited: one
    /// authentication at a time, and none when the current one is fresh
    /// and newer than `stale` (the one a request was refused with).
    async fn renew(&self, stale: Option<u64>) -> Result<u64, FetchError> {
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(state) = &*self.authorization.read().await
            && state.fresh()
            && Some(state.generation) != stale
        {
            return Ok(state.generation);
        }
        self.authenticate(stale.is_some()).await
    }

    /// Asks what the registry wants (`challenge`) and does it: nothing, basic
    /// credentials, or a bearer token for the repository with pull scope
    /// from its realm (see `token`). A token given as such (--token) is
    /// sent without asking. What blob requests send is handed to
    /// oci-client. Returns the new generation.
    async fn authenticate(&self, refused: bool) -> Result<u64, FetchError> {
        let identity = &self.credentials;
        let (authorization, lifetime) = match &identity.credentials {
            Credentials::Bearer(token) => (Authorization::Bearer(token.clone()), None),
            credentials => match self.challenge(refused).await? {
                Challenge::Bearer { realm, service } => {
                    let scope = format!("repository:{}:pull", self.oci_ref.repository());
                    let registry = self.location.split('/').next().unwrap_or_default();
                    let who = identity.who();
                    let token = self
                        .retry
                        .run(&self.location, || {
                            token::exchange(
                                &self.client.http,
                                registry,
                                &realm,
                                service.as_deref(),
                                &scope,
                                credentials,
                                &who,
                            )
                        })
                        .await?;
                    debug!(location = %self.location, %realm, lifetime = ?token.lifetime, "token obtained");
                    (Authorization::Bearer(token.token), Some(token.lifetime))
                }
                Challenge::Basic | Challenge::None => match credentials {
                    // Harmless when the registry asked for nothing.
                    Credentials::Basic { user, password } => {
                        (Authorization::Basic(user.clone(), password.clone()), None)
                    }
                    Credentials::IdentityToken(_) => {
                        warn!(
                            location = %self.location,
                            "the registry does not use tokens: its identity token is not sent"
                        );
                        (Authorization::Anonymous, None)
                    }
                    _ => (Authorization::Anonymous, None),
                },
            },
        };
        self.hand_to_oci_client(&authorization).await?;
        let mut state = self.authorization.write().await;
        let generation = state.as_ref().map_or(0, |s| s.generation + 1);
        *state = Some(AuthState {
            authorization,
            renew_at: lifetime.map(|life| Instant::now() + renew_after(life)),
            generation,
        });
        Ok(generation)
    }

    /// What the registry asks for: the registry's recent answer to another
    /// fetcher, unless a request was `refused` (a 401: ask again, the
    /// registry's configuration may have changed), else a ping.
    async fn challenge(&self, refused: bool) -> Result<Challenge, FetchError> {
        if !refused && let Some(challenge) = self.client.recent_challenge() {
            return Ok(challenge);
        }
        let challenge = self.retry.run(&self.location, || self.ping()).await?;
        self.client.remember_challenge(&challenge);
        Ok(challenge)
    }

    /// `GET /v2/`: what the registry asks for.
    async fn ping(&self) -> Result<Challenge, Failure> {
        let url = format!("{}/v2/", self.origin());
        let response = self
            .client
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| Failure::from(network_error(&self.location, &e)))?;
        let status = response.status().as_u16();
        match token::challenge(response.headers()) {
            Challenge::None if status == 429 || status >= 500 => Err(Failure {
                retry_after: retry_after(response.headers()),
                error: status_error(status, "/v2/", &self.location, String::new()),
            }),
            challenge => Ok(challenge),
        }
    }

    /// Makes oci-client send `authorization` with blob requests: the token
    /// in its cache, and basic credentials as its credentials for the
    /// registry. Nothing for anonymous access: oci-client would otherwise
    /// ping `/v2/` before every blob request.
    async fn hand_to_oci_client(&self, authorization: &Authorization) -> Result<(), FetchError> {
        if let Credentials::Basic { user, password } = &self.credentials.credentials {
            let basic = RegistryAuth::Basic(user.clone(), password.clone());
            self.client
                .oci
                .store_auth_if_needed(self.oci_ref.resolve_registry(), &basic)
                .await;
        }
        if let Authorization::Bearer(token) = authorization {
            // With a bearer token oci-client only caches it: no request.
            self.client
                .oci
                .auth(
                    &self.oci_ref,
                    &RegistryAuth::Bearer(token.clone()),
                    RegistryOperation::Pull,
                )
                .await
                .map_err(|e| oci_error(e, "authentication", &self.location))?;
            if !self.token_counted.swap(true, Ordering::Relaxed) {
                self.client.note_token_repository();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        })
    }

    fn found(user: &str, password: &str) -> Option<Found> {
        basic(user, password).map(Found::Auth)
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_lookup_matches_docker_key_forms() {
        let config = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": { "auth": b64("hubuser:hubpass") },
                "127.0.0.1:5000": { "username": "local", "password": "pw:with:colons" },
                "http://reg.example:8443/some/path": { "auth": b64("pathuser:pathpass").trim_end_matches('=') },
                "ghcr.io": { "registrytoken": "tok" },
                "quay.io": { "identitytoken": "oauth-refresh" },
                "docker-login.example": { "auth": b64("oauthuser:"), "identitytoken": "refresh" },
                "exact.example": { "auth": b64("exact:1") },
                "https://exact.example/v2/": { "auth": b64("normalized:2") }
            },
        })
        .to_string();
        let find = |registry: &str| lookup_auth(config.as_bytes(), registry).unwrap();
        assert_eq!(find("docker.io"), found("hubuser", "hubpass"));
        assert_eq!(find("index.docker.io"), found("hubuser", "hubpass"));
        assert_eq!(find("127.0.0.1:5000"), found("local", "pw:with:colons"));
        assert_eq!(find("reg.example:8443"), found("pathuser", "pathpass"));
        assert_eq!(find("reg.example"), None, "the port is part of the key");
        assert_eq!(find("127.0.0.1:5001"), None);
        assert_eq!(
            find("ghcr.io"),
            Some(Found::Auth(Credentials::Bearer("tok".into())))
        );
        assert_eq!(
            find("quay.io"),
            Some(Found::Auth(Credentials::IdentityToken(
                "oauth-refresh".into()
            )))
        );
        assert_eq!(
            find("docker-login.example"),
            Some(Found::Auth(Credentials::IdentityToken("refresh".into()))),
            "an identity token wins over the password-less auth Docker writes beside it"
        );
        assert_eq!(
            find("exact.example"),
            found("exact", "1"),
            "an exact key wins"
        );
        assert_eq!(find("elsewhere.example"), None);
        assert_eq!(lookup_auth(b"{}", "docker.io").unwrap(), None);
    }

    #[test]
    fn tokens_are_renewed_a_little_before_they_expire() {
        let s = Duration::from_secs;
        assert_eq!(renew_after(s(300)), s(299));
        assert_eq!(renew_after(s(60)), s(59));
        assert_eq!(
            renew_after(s(2)),
            s(1),
            "never more than half its life early"
        );
        assert_eq!(renew_after(s(0)), s(0));
    }

    #[test]
    fn credential_helpers_are_found_in_dockers_order() {
        let config = serde_json::json!({
            "auths": {
                "127.0.0.1:5000": { "auth": b64("file:pw") },
                "placeholder.example": {}
            },
            "credHelpers": { "https://helped.example/v1/": "secretservice" },
            "credsStore": "desktop"
        })
        .to_string();
        let find = |registry: &str| lookup_auth(config.as_bytes(), registry).unwrap();
        assert_eq!(
            find("helped.example"),
            Some(Found::Helper("secretservice".into()))
        );
        assert_eq!(find("127.0.0.1:5000"), found("file", "pw"));
        assert_eq!(
            find("placeholder.example"),
            Some(Found::Helper("desktop".into())),
            "an entry without credentials leaves it to the store"
        );
        assert_eq!(find("other.example"), Some(Found::Helper("desktop".into())));
    }

    #[test]
    fn auth_lookup_reports_broken_entries() {
        let bad = serde_json::json!({ "auths": { "r.example": { "auth": b64("no-colon") } } })
            .to_string();
        assert!(
            lookup_auth(bad.as_bytes(), "r.example")
                .unwrap_err()
                .contains("user:password")
        );
        let not_b64 = r#"{"auths":{"r.example":{"auth":"%%%"}}}"#;
        assert!(lookup_auth(not_b64.as_bytes(), "r.example").is_err());
        assert!(lookup_auth(b"not json", "r.example").is_err());
    }

    #[test]
    fn flags_win_over_the_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            serde_json::json!({ "auths": { "r.example": { "auth": b64("file:pw") } } }).to_string(),
        )
        .unwrap();
        let opts =
            |username: Option<&str>, password: Option<&str>, token: Option<&str>| RegistryOptions {
                auth_file: Some(file.clone()),
                username: username.map(String::from),
                password: password.map(String::from),
                token: token.map(String::from),
                ..RegistryOptions::default()
            };
        let of = |registry: &str, opts: &RegistryOptions| {
            credentials(registry, opts).ok().map(|i| i.credentials)
        };
        let from_file = credentials("r.example", &opts(None, None, None)).unwrap();
        assert_eq!(Some(from_file.credentials.clone()), basic("file", "pw"));
        assert_eq!(
            from_file.who(),
            format!("user file (auth file {})", file.display())
        );
        assert_eq!(
            of("r.example", &opts(Some("u"), Some("p"), None)),
            basic("u", "p")
        );
        assert_eq!(
            of("r.example", &opts(Some("u"), Some("p"), Some("t"))),
            Some(Credentials::Bearer("t".into()))
        );
        assert!(credentials("r.example", &opts(Some("u"), None, None)).is_err());
        let anonymous = credentials("other.example", &opts(None, None, None)).unwrap();
        assert_eq!(anonymous.credentials, Credentials::Anonymous);
        assert_eq!(
            anonymous.who(),
            "anonymous access (no credentials for other.example in flags or auth files)"
        );
        let missing = RegistryOptions {
            auth_file: Some(dir.path().join("absent.json")),
            ..RegistryOptions::default()
        };
        assert_eq!(of("r.example", &missing), Some(Credentials::Anonymous));
    }
}
