//! A Docker token server (the `realm` of a registry with `auth: token`) on
//! loopback, as Docker's token specification describes it.
//!
//! It knows users (name and password), identity tokens (OAuth2 refresh
//! tokens, one per user) and an access list: public repositories anyone
//! may pull, private ones only the users named for them. It answers
//!
//! - `GET /token?service=S&scope=repository:NAME:ACTIONS...`, anonymous or
//!   with basic credentials (wrong ones are a 401), with
//!   `{"token", "access_token", "expires_in"}`;
//! - `POST /token` with a form, `grant_type=refresh_token` (an identity
//!   token) or `grant_type=password`, with `{"access_token", "expires_in"}`
//!   (an unknown refresh token is a 400 `invalid_grant`).
//!
//! The token is a JWT (ES256) carrying the granted `access` (the requested
//! actions the caller may have; none is not an error, as Docker's servers
//! do), signed by [`KEY_PEM`] whose certificate [`CERT_PEM`] goes in the
//! `x5c` header and in the registry's `rootcertbundle`: distribution 2.8
//! checks the issuer, the audience (its `service`), `exp` and `nbf` (with
//! 60 s of leeway each), the chain and the signature.
//!
//! Every request is recorded ([`TokenServer::requests`]) so a test can say
//! how often a client authenticated and for which scopes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tempfile::TempDir;

/// The issuer the registry is configured to trust.
pub const ISSUER: &str = "exploder-test-token-issuer";
/// The service name (the token's audience) the registry is configured with.
pub const SERVICE: &str = "exploder-test-registry";

/// The signing key's certificate (`CN=exploder test token issuer`, ECDSA
/// P-256, self-signed, valid 2000-2100), made once with `openssl req` and
/// `openssl ca -selfsign`; it is the registry's whole `rootcertbundle`.
pub const CERT_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIBfTCCASOgAwIBAgIBATAKBggqhkjOPQQDAjAlMSMwIQYDVQQDDBpleHBsb2Rl
ciB0ZXN0IHRva2VuIGlzc3VlcjAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAw
MDAwMFowJTEjMCEGA1UEAwwaZXhwbG9kZXIgdGVzdCB0b2tlbiBpc3N1ZXIwWTAT
BgcqhkjOPQIBBggqhkjOPQMBBwNCAAQOYM+7RBOnwE4lJv2W4LGFjaW9q+sKeCBd
1nLsMDjQ/RcyxlBkBGj1EWWm7PKBsNuRj9ombYmKgvkkhMNHi020o0IwQDAPBgNV
HRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIChDAdBgNVHQ4EFgQUvX4UBQGe7XkR
6rU6TwXi3g6+Mn8wCgYIKoZIzj0EAwIDSAAwRQIgQkTYVSSLPSsiEz8QbX6ORAZj
tksl/v1K4Km/1hpGBtcCIQDNkJ2APRX0duXZNmIkOYrIW0Spk9wja7RykyP1hcqZ
aA==
-----END CERTIFICATE-----
";

/// The signing key (PKCS#8), a test key and nothing else.
const KEY_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9CfBDUp2bNxsNyUM
x2CW30m4w7CDW7MgcLLN+nC93pKhRANCAAQOYM+7RBOnwE4lJv2W4LGFjaW9q+sK
eCBd1nLsMDjQ/RcyxlBkBGj1EWWm7PKBsNuRj9ombYmKgvkkhMNHi020
-----END PRIVATE KEY-----
";

/// The base64 body of a PEM block (the DER, base64 as `x5c` wants it).
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// Repository → a token with push and pull on it.
pub type Minter = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// "GET" or "POST".
    pub method: String,
    /// Who asked: the user of the basic credentials, the password grant or
    /// the refresh token; `None` when anonymous or not recognised.
    pub user: Option<String>,
    /// The `scope` parameters, as sent.
    pub scopes: Vec<String>,
    /// The form's `grant_type` (POST only).
    pub grant_type: Option<String>,
    /// The form's `client_id` (POST only).
    pub client_id: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    passwords: BTreeMap<String, String>,
    /// Refresh token → user.
    refresh_tokens: BTreeMap<String, String>,
    public: BTreeSet<String>,
    /// Repository → users allowed to pull it.
    readers: BTreeMap<String, BTreeSet<String>>,
    expires_in: u64,
    /// This many next tokens are made for another audience, which the
    /// registry refuses (a token it no longer accepts).
    spoiled: usize,
    requests: Vec<TokenRequest>,
}

/// The server; it stops accepting when dropped.
pub struct TokenServer {
    port: u16,
    state: Arc<Mutex<State>>,
    key: Arc<EcdsaKeyPair>,
    /// Holds `root.pem` (the registry's `rootcertbundle`).
    dir: TempDir,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TokenServer {
    /// A server with no users and no repositories yet, issuing tokens that
    /// last 300 s.
    pub fn start() -> TokenServer {
        let der = STANDARD.decode(pem_body(KEY_PEM)).expect("key PEM");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .expect("the test signing key");
        let dir = tempfile::Builder::new()
            .prefix("token-server-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("root.pem"), CERT_PEM).expect("write root.pem");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        listener.set_nonblocking(true).unwrap();
        let server = TokenServer {
            port: listener.local_addr().unwrap().port(),
            state: Arc::new(Mutex::new(State {
                expires_in: 300,
                ..State::default()
            })),
            key: Arc::new(key),
            dir,
            stop: Arc::default(),
        };
        let (state, key, stop) = (
            server.state.clone(),
            server.key.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (state, key) = (state.clone(), key.clone());
                        std::thread::spawn(move || serve(conn, &state, &key));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        server
    }

    /// `http://127.0.0.1:PORT/token`: the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate of the signing key, as a file for `rootcertbundle`.
    pub fn root_cert_file(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// Adds a user with a password.
    pub fn user(&self, name: &str, password: &str) -> &Self {
        let mut s = self.state.lock().unwrap();
        s.passwords.insert(name.into(), password.into());
        self
    }

    /// An identity token (OAuth2 refresh token) for `user`, as `docker
    /// login` to an OAuth registry stores it.
    pub fn identity_token(&self, user: &str) -> String {
        let token = format!("refresh-{user}-{}", self.port);
        let mut s = self.state.lock().unwrap();
        s.refresh_tokens.insert(token.clone(), user.into());
        token
    }

    /// Anyone may pull `repository`, anonymously too.
    pub fn public(&self, repository: &str) -> &Self {
        self.state.lock().unwrap().public.insert(repository.into());
        self
    }

    /// `user` may pull `repository`.
    pub fn grant(&self, user: &str, repository: &str) -> &Self {
        let mut s = self.state.lock().unwrap();
        s.readers
            .entry(repository.into())
            .or_default()
            .insert(user.into());
        self
    }

    /// Tokens issued from now on last `seconds` (`expires_in` and `exp`).
    pub fn expires_in(&self, seconds: u64) -> &Self {
        self.state.lock().unwrap().expires_in = seconds;
        self
    }

    /// The next `n` tokens are made for another audience: the registry
    /// refuses them as it would a revoked or expired token.
    pub fn spoil_next(&self, n: usize) -> &Self {
        self.state.lock().unwrap().spoiled = n;
        self
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Mints tokens directly, for the harness's own pushes: given a
    /// repository, a token with push and pull on it (none for "").
    pub fn minter(&self) -> Minter {
        let key = self.key.clone();
        Arc::new(move |repository: &str| {
            let access = match repository {
                "" => vec![],
                r => vec![(r.to_string(), vec!["pull".into(), "push".into()])],
            };
            sign(&key, "harness", SERVICE, &access, 3600)
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT for `subject` granting `access`, as distribution verifies it.
fn sign(
    key: &EcdsaKeyPair,
    subject: &str,
    audience: &str,
    access: &[(String, Vec<String>)],
    expires_in: u64,
) -> String {
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [pem_body(CERT_PEM)],
    });
    let issued = now();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": audience,
        "exp": issued + expires_in,
        "nbf": issued,
        "iat": issued,
        "jti": format!("{subject}-{issued}-{}", rand_u64()),
        "access": access
            .iter()
            .map(|(name, actions)| serde_json::json!({
                "type": "repository", "name": name, "actions": actions,
            }))
            .collect::<Vec<_>>(),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("sign the token");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// `a%3Ab+c` → `a:b c`.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2&a=3` → [(a, 1), (b, 2), (a, 3)].
fn params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn first(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Answers one request on `conn`, then closes it.
fn serve(conn: TcpStream, state: &Mutex<State>, key: &EcdsaKeyPair) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => head.push(line.trim_end().to_string()),
        }
    }
    let Some(request_line) = head.first() else {
        return;
    };
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or(""),
    );
    let header = |name: &str| {
        head[1..].iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut body = vec![
        0u8;
        header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
    ];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let basic = header("authorization")
        .and_then(|v| v.strip_prefix("Basic ").map(str::to_string))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let form = match method.as_str() {
        "POST" => params(&String::from_utf8_lossy(&body)),
        _ => params(query),
    };
    let (status, answer) = {
        let mut s = state.lock().unwrap();
        let (status, answer, record) = answer(&mut s, key, &method, path, &form, basic);
        s.requests.push(record);
        (status, answer)
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        answer.len()
    );
    if status == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"token\"\r\n");
    }
    response.push_str("\r\n");
    let mut conn = reader.into_inner();
    let _ = conn.write_all(response.as_bytes());
    let _ = conn.write_all(answer.as_bytes());
    let _ = conn.flush();
}

/// The status, body and record of one request.
fn answer(
    s: &mut State,
    key: &EcdsaKeyPair,
    method: &str,
    path: &str,
    form: &[(String, String)],
    basic: Option<(String, String)>,
) -> (u16, String, TokenRequest) {
    let mut record = TokenRequest {
        method: method.to_string(),
        user: None,
        scopes: form
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .collect(),
        grant_type: first(form, "grant_type"),
        client_id: first(form, "client_id"),
        status: 200,
    };
    let error = |status: u16, code: &str, message: &str, mut record: TokenRequest| {
        record.status = status;
        let body = serde_json::json!({
            "error": code,
            "errors": [{"code": code.to_uppercase(), "message": message}],
        });
        (status, body.to_string(), record)
    };
    if path != "/token" || !matches!(method, "GET" | "POST") {
        return error(404, "not_found", "no such endpoint", record);
    }
    if first(form, "service").as_deref() != Some(SERVICE) {
        return error(400, "invalid_request", "unknown service", record);
    }
    // Who is asking.
    let user = match (method, record.grant_type.as_deref()) {
        ("POST", Some("refresh_token")) => {
            let token = first(form, "refresh_token").unwrap_or_default();
            match s.refresh_tokens.get(&token) {
                Some(user) => Some(user.clone()),
                None => {
                    return error(400, "invalid_grant", "unknown refresh token", record);
                }
            }
        }
        ("POST", Some("password")) => {
            let (u, p) = (first(form, "username"), first(form, "password"));
            match (u, p) {
                (Some(u), Some(p)) if s.passwords.get(&u) == Some(&p) => Some(u),
                _ => return error(401, "unauthorized", "wrong username or password", record),
            }
        }
        ("POST", _) => return error(400, "unsupported_grant_type", "unknown grant", record),
        _ => match basic {
            Some((u, p)) if s.passwords.get(&u) == Some(&p) => Some(u),
            Some(_) => return error(401, "unauthorized", "wrong username or password", record),
            None => None,
        },
    };
    record.user = user.clone();
    // What it may have of what it asked for.
    let mut access = Vec::new();
    for scope in &record.scopes {
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let may_pull = s.public.contains(name)
            || user
                .as_ref()
                .is_some_and(|u| s.readers.get(name).is_some_and(|r| r.contains(u)));
        let granted: Vec<String> = actions
            .split(',')
            .filter(|a| *a == "pull" && may_pull)
            .map(str::to_string)
            .collect();
        if !granted.is_empty() {
            access.push((name.to_string(), granted));
        }
    }
    let audience = if s.spoiled > 0 {
        s.spoiled -= 1;
        "some-other-service"
    } else {
        SERVICE
    };
    let subject = user.as_deref().unwrap_or("");
    let token = sign(key, subject, audience, &access, s.expires_in);
    let body = if method == "POST" {
        serde_json::json!({"access_token": token, "expires_in": s.expires_in})
    } else {
        serde_json::json!({"token": token, "access_token": token, "expires_in": s.expires_in})
    };
    (200, body.to_string(), record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            params("scope=repository%3Ateam%2Fapp%3Apull&service=a+b&x"),
            vec![
                ("scope".into(), "repository:team/app:pull".into()),
                ("service".into(), "a b".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(url_decode("100%"), "100%");
    }
}
