//! A throwaway `docker-registry` (Debian's distribution 2.8) on loopback.
//!
//! Each [`Registry`] has its own storage directory and port and is killed on
//! drop. Its stdout and stderr go to one log file: distribution writes the
//! combined-format access log (`"GET /v2/... HTTP/1.1" 200 ...`) to stdout,
//! which is what tests count requests in.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::image::{Image, Index};
use crate::token_server::{ISSUER, Minter, SERVICE, TokenServer};
use crate::{free_port, sha256_digest};

/// The user of [`Registry::start_with_basic_auth`].
pub const USER: &str = "testuser";
/// The password of [`USER`].
pub const PASSWORD: &str = "testpassword";
/// An htpasswd line for [`USER`]: bcrypt (cost 5) of [`PASSWORD`].
const HTPASSWD: &str = "testuser:$2a$05$NSRv4gNhExxUXK5SMBz8OepBuczGEQZiKKkwUK4Bz68JOOIFsU8Zq";

pub struct Registry {
    child: Child,
    /// The address it listens on: 127.0.0.1, or an address of a test's
    /// network namespace ([`Registry::start_on`]).
    host: String,
    port: u16,
    /// Holds the config, the log and `storage/`; removed on drop.
    dir: TempDir,
    storage: PathBuf,
    agent: ureq::Agent,
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers. Panics if it
    /// cannot (a port grabbed between [`free_port`] and the bind is retried).
    pub fn start() -> Registry {
        Self::start_with("")
    }

    /// A registry that posts its notifications (distribution's
    /// `notifications.endpoints`) to `url` with `Authorization: Bearer
    /// <token>`, retrying every second until it gets a 2xx.
    pub fn start_notifying(url: &str, token: &str) -> Registry {
        Self::start_with(&format!(
            "notifications:\n  endpoints:\n    - name: exploder\n      url: {url}\n      \
             headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 5s\n      \
             threshold: 1\n      backoff: 1s\n"
        ))
    }

    /// A registry that answers only requests with basic credentials
    /// [`USER`] and [`PASSWORD`] (distribution's `htpasswd` auth). The
    /// harness's own requests (pushes, deletes) send them.
    pub fn start_with_basic_auth() -> Registry {
        Self::start_with_auth(&Auth::Htpasswd, "")
    }

    /// A registry with `auth: token` whose realm is `tokens` (Docker's
    /// token authentication: a 401 with a `Bearer realm=...` challenge,
    /// then requests with the JWT the realm issued). The harness's own
    /// requests send a token minted for the repository with push and pull.
    pub fn start_with_token_auth(tokens: &TokenServer) -> Registry {
        Self::start_with_auth(
            &Auth::Token {
                realm: tokens.realm(),
                root_cert: tokens.root_cert_file(),
                mint: tokens.minter(),
            },
            "",
        )
    }

    fn start_with(extra_config: &str) -> Registry {
        Self::start_with_auth(&Auth::None, extra_config)
    }

    /// A registry listening on `host`, an address of the network namespace
    /// of the calling thread (see [`crate::netns::Host::run`]: call it, and
    /// push to it, from there), with `extra_config` appended to its config
    /// (notifications).
    pub fn start_on(host: &str, extra_config: &str) -> Registry {
        let mut last_error = None;
        for _ in 0..5 {
            match Self::try_start_on(host, &Auth::None, extra_config) {
                Ok(r) => return r,
                Err(e) => last_error = Some(e),
            }
        }
        panic!("docker-registry did not start: {:?}", last_error.unwrap());
    }

    fn start_with_auth(auth: &Auth, extra_config: &str) -> Registry {
        let mut last_error = None;
        for _ in 0..5 {
            match Self::try_start(auth, extra_config) {
                Ok(r) => return r,
                Err(e) => last_error = Some(e),
            }
        }
        panic!("docker-registry did not start: {:?}", last_error.unwrap());
    }

    fn try_start(auth: &Auth, extra_config: &str) -> Result<Registry> {
        Self::try_start_on("127.0.0.1", auth, extra_config)
    }

    fn try_start_on(host: &str, auth: &Auth, extra_config: &str) -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("registry-").tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let port = free_port();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}:{port}\n{extra_config}",
            storage.display()
        );
        match auth {
            Auth::None => {}
            Auth::Htpasswd => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, HTPASSWD)?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    path.display()
                ));
            }
            Auth::Token {
                realm, root_cert, ..
            } => config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n",
                root_cert.display()
            )),
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn docker-registry (apt-get install docker-registry)")?;
        let agent_config = ureq::Agent::config_builder()
            // Tests look at 4xx answers themselves.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)));
        let agent_config = match auth {
            Auth::None => agent_config,
            Auth::Htpasswd => agent_config.middleware(send_credentials),
            Auth::Token { mint, .. } => agent_config.middleware(SendToken(mint.clone())),
        };
        let agent = ureq::Agent::new_with_config(agent_config.build());
        let mut reg = Registry {
            child,
            host: host.to_string(),
            port,
            dir,
            storage,
            agent,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/v2/", self.url());
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}:\n{}", self.log_now());
            }
            // The agent sends the credentials when the registry wants them.
            if let Ok(resp) = self.agent.get(&url).call()
                && resp.status() == 200
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not answer in 20 s:\n{}",
            self.log_now()
        )
    }

    /// `127.0.0.1:PORT` (or `HOST:PORT`), as used in an image reference.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `http://127.0.0.1:PORT` (or `http://HOST:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The storage root: it contains `docker/registry/v2`.
    pub fn storage_root(&self) -> &Path {
        &self.storage
    }

    /// Where the registry keeps the bytes of a blob.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stores `image` as `repo:tag` by writing its blobs and the
    /// repository's links straight into the registry's storage, as a push
    /// would leave them (the registry reads its storage on every request).
    /// Hundreds of repositories then take a second, not a push each.
    pub fn store_directly(&self, repo: &str, tag: &str, image: &Image) {
        let v2 = self
            .storage_root()
            .join("docker/registry/v2/repositories")
            .join(repo);
        let write_link = |dir: PathBuf, digest: &str| {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("link"), digest).unwrap();
        };
        let manifest_bytes = image.manifest_bytes();
        let manifest = sha256_digest(&manifest_bytes);
        let mut blobs = image.blobs();
        blobs.push((manifest.clone(), manifest_bytes));
        for (digest, bytes) in blobs {
            let data = self.blob_data_path(&digest);
            if !data.is_file() {
                std::fs::create_dir_all(data.parent().unwrap()).unwrap();
                std::fs::write(&data, &bytes).unwrap();
            }
            if digest != manifest {
                write_link(v2.join("_layers/sha256").join(&digest[7..]), &digest);
            }
        }
        write_link(
            v2.join("_manifests/revisions/sha256").join(&manifest[7..]),
            &manifest,
        );
        let tag_dir = v2.join("_manifests/tags").join(tag);
        write_link(tag_dir.join("current"), &manifest);
        write_link(tag_dir.join("index/sha256").join(&manifest[7..]), &manifest);
    }

    /// Replaces the stored bytes of a blob after the registry verified them
    /// on upload: it then serves `bytes` under `digest` (the registry stats
    /// the file for the length, so any size works).
    pub fn tamper_blob(&self, digest: &str, bytes: &[u8]) {
        let path = self.blob_data_path(digest);
        assert!(path.is_file(), "{} is not stored", digest);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The log so far (access log and application log interleaved).
    ///
    /// The access-log line is written after the response has been sent, so
    /// a test that counts requests right after its client returned could
    /// miss the last one: this waits until the file stops growing for 100 ms
    /// (at most 2 s).
    pub fn log(&self) -> String {
        let path = self.dir.path().join("registry.log");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if now == len || Instant::now() > deadline {
                break;
            }
            len = now;
        }
        self.log_now()
    }

    fn log_now(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("registry.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Access-log lines of requests `METHOD PATH` (path without query),
    /// e.g. `request_count("GET", "/v2/lib/x/blobs/sha256:...")`.
    pub fn request_count(&self, method: &str, path: &str) -> usize {
        let exact = format!("\"{method} {path} ");
        let with_query = format!("\"{method} {path}?");
        self.log()
            .lines()
            .filter(|l| l.contains(&exact) || l.contains(&with_query))
            .count()
    }

    /// How many times `GET /v2/<repo>/blobs/<digest>` was served.
    pub fn blob_get_count(&self, repo: &str, digest: &str) -> usize {
        self.request_count("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic: POST then PUT with
    /// the digest, which the registry verifies).
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let resp = self
            .agent
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.url()))
            .send_empty()?;
        if resp.status() != 202 {
            bail!("POST blob upload for {repo}: {}", resp.status());
        }
        let location = resp
            .headers()
            .get("location")
            .context("no Location in upload answer")?
            .to_str()?
            .to_string();
        // distribution 2.8 answers with an absolute URL; accept a path too.
        let mut url = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let mut resp = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)?;
        if resp.status() != 201 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            bail!("PUT blob {digest} to {repo}: {}: {body}", resp.status());
        }
        Ok(digest)
    }

    /// PUTs manifest bytes at `/v2/<repo>/manifests/<reference>` (a tag or
    /// a digest) and returns the digest the registry computed.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String> {
        let mut resp = self
            .agent
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("Content-Type", media_type)
            .send(bytes)?;
        if resp.status() != 201 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            bail!("PUT manifest {repo}:{reference}: {}: {body}", resp.status());
        }
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .context("no Docker-Content-Digest")?
            .to_str()?
            .to_string();
        Ok(digest)
    }

    fn push_image_contents(&self, repo: &str, image: &Image) -> Result<()> {
        for (digest, bytes) in image.blobs() {
            let pushed = self.push_blob(repo, &bytes)?;
            assert_eq!(pushed, digest);
        }
        Ok(())
    }

    /// Pushes the blobs and the manifest of `image` exactly as built and
    /// tags it; returns the manifest digest. Panics on any failure.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) -> String {
        self.try_push(repo, tag, image)
            .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e:#}"))
    }

    /// [`Registry::push`] that returns the registry's refusal instead of
    /// panicking (for manifests it may reject).
    pub fn try_push(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        self.push_image_contents(repo, image)?;
        let manifest = image.manifest_bytes();
        let digest = self.push_manifest(repo, tag, image.manifest_media_type(), &manifest)?;
        if digest != sha256_digest(&manifest) {
            bail!("registry computed {digest} for the manifest");
        }
        Ok(digest)
    }

    /// Pushes every image (blobs, manifest by digest), then the index under
    /// `tag`; returns the index digest.
    pub fn push_index(&self, repo: &str, tag: &str, index: &Index) -> String {
        self.try_push_index(repo, tag, index)
            .unwrap_or_else(|e| panic!("push index {repo}:{tag}: {e:#}"))
    }

    pub fn try_push_index(&self, repo: &str, tag: &str, index: &Index) -> Result<String> {
        for img in &index.images {
            self.push_image_contents(repo, img)?;
            let m = img.manifest_bytes();
            self.push_manifest(repo, &sha256_digest(&m), img.manifest_media_type(), &m)?;
        }
        let bytes = index.manifest_bytes();
        self.push_manifest(repo, tag, index.media_type(), &bytes)
    }

    /// `DELETE /v2/<repo>/manifests/<digest>` (deletes are enabled).
    /// Pushes `image` with `skopeo copy` from an OCI layout, as a user
    /// would. Returns the manifest digest.
    pub fn skopeo_copy(&self, repo: &str, tag: &str, image: &Image) -> String {
        let layout = tempfile::tempdir().expect("tempdir");
        image
            .write_oci_layout(layout.path(), tag)
            .expect("write OCI layout");
        crate::run_checked(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", layout.path().display()))
                .arg(format!("docker://{}/{repo}:{tag}", self.addr())),
        );
        sha256_digest(&image.manifest_bytes())
    }

    /// `skopeo GLOBAL... copy --dest-tls-verify=false COPY... oci:LAYOUT:TAG
    /// docker://<this registry>/REPO:TAG` with `env` (signing flags and
    /// `--registries.d` go in `copy` and `global`); panics with skopeo's
    /// output unless it succeeded.
    pub fn skopeo_copy_layout(
        &self,
        layout: &Path,
        repo: &str,
        tag: &str,
        global: &[String],
        copy: &[String],
        env: &[(String, String)],
    ) {
        crate::run_checked(
            Command::new("skopeo")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .args(global)
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .args(copy)
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}/{repo}:{tag}", self.addr())),
        );
    }

    /// [`Registry::skopeo_copy`] with extra flags: see
    /// [`Registry::skopeo_copy_layout`]. Returns the manifest digest.
    pub fn skopeo_copy_with(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        global: &[String],
        copy: &[String],
        env: &[(String, String)],
    ) -> String {
        let layout = tempfile::tempdir().expect("tempdir");
        image
            .write_oci_layout(layout.path(), tag)
            .expect("write OCI layout");
        self.skopeo_copy_layout(layout.path(), repo, tag, global, copy, env);
        sha256_digest(&image.manifest_bytes())
    }

    /// `GET /v2/<repo>/manifests/<reference>`: the bytes and media type.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<(Vec<u8>, String)> {
        let mut resp = self
            .agent
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json",
            )
            .call()?;
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.body_mut().read_to_vec()?;
        Ok((bytes, media_type))
    }

    pub fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        let resp = self
            .agent
            .delete(format!("{}/v2/{repo}/manifests/{digest}", self.url()))
            .call()?;
        if resp.status() != 202 {
            bail!("DELETE manifest {repo}@{digest}: {}", resp.status());
        }
        Ok(())
    }
}

/// ureq middleware: basic credentials [`USER`]:[`PASSWORD`] on every
/// request.
fn send_credentials(
    mut request: ureq::http::Request<ureq::SendBody>,
    next: ureq::middleware::MiddlewareNext,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let value = ureq::http::HeaderValue::try_from(format!("Basic {credentials}"))
        .expect("a valid header value");
    request.headers_mut().insert("authorization", value);
    next.handle(request)
}

/// ureq middleware: a bearer token for the request's repository (the
/// path's `/v2/<name>/blobs|manifests|tags/...`) with push and pull.
struct SendToken(Minter);

impl ureq::middleware::Middleware for SendToken {
    fn handle(
        &self,
        mut request: ureq::http::Request<ureq::SendBody>,
        next: ureq::middleware::MiddlewareNext,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let path = request.uri().path().to_string();
        let repository = path
            .strip_prefix("/v2/")
            .and_then(|rest| {
                ["/blobs/", "/manifests/", "/tags/"]
                    .iter()
                    .filter_map(|kind| rest.find(kind))
                    .min()
                    .map(|end| rest[..end].to_string())
            })
            .unwrap_or_default();
        let value = ureq::http::HeaderValue::try_from(format!("Bearer {}", (self.0)(&repository)))
            .expect("a valid header value");
        request.headers_mut().insert("authorization", value);
        next.handle(request)
    }
}

/// How a registry authenticates requests.
enum Auth {
    None,
    /// [`USER`]/[`PASSWORD`] in an htpasswd file.
    Htpasswd,
    /// Tokens from a [`TokenServer`].
    Token {
        realm: String,
        root_cert: PathBuf,
        mint: Minter,
    },
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
