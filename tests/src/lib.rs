//! Integration-test harness for exploder.
//!
//! Everything a test needs to produce an image, serve it, unpack it the
//! reference way and judge the result:
//!
//! - [`layer`]: hand-made layer tars, byte by byte, including the entries a
//!   hostile image would contain, and the compression helpers;
//! - [`image`]: images (OCI or Docker schema 2) and indexes made of those
//!   layers, written as an OCI image layout;
//! - [`registry`]: a throwaway `docker-registry` (distribution 2.8) on
//!   loopback to push them to;
//! - [`umoci`]: `umoci unpack`, the reference exploder must match byte for
//!   byte;
//! - [`compare`]: lstat-level tree comparison and before/after snapshots;
//! - [`debootstrap`]: a real, cached Debian rootfs for a realistic image;
//! - [`deployment`]: what compose/ and k8s/ share (env, ports, paths,
//!   probes), declared once for the tests of both;
//! - [`sandbox`]: a store with a victim beside it, and the checks every
//!   hostile image must pass;
//! - [`fleet`]: a fleet with its own prefix, workers and a producer;
//! - [`compose`]: the compose stack as shipped, on the Docker engine, with
//!   offline stand-ins for the Docker Hub images;
//! - [`netns`]: several hosts on one machine (network namespaces on a
//!   bridge), with blackhole partitions and capped links between them;
//! - [`slow_link`]: a bandwidth-capped relay, to make a loopback registry
//!   as slow as a remote one;
//! - [`fault_proxy`]: a proxy that breaks chosen requests (cuts, 429, 401,
//!   lying headers), for the registry client's retries and resumes;
//! - [`kubeapi`]: an API server speaking list/watch for ImageStreams;
//! - [`signing`]: GnuPG and cosign keys, `registries.d` and `policy.json`
//!   files for the signature tests;
//! - [`tls`]: an HTTPS server with a test CA, for TLS end to end;
//! - [`token_server`]: a Docker token server (users, identity tokens,
//!   per-repository access, signed JWTs) for a registry with `auth: token`;
//! - this file: finding and running the `exploder` binary, and reading its
//!   store.

pub mod compare;
pub mod compose;
pub mod credential_helper;
pub mod debootstrap;
pub mod deployment;
pub mod fault_proxy;
pub mod fleet;
pub mod gate;
pub mod image;
pub mod kubeapi;
pub mod layer;
pub mod netns;
pub mod objects;
pub mod prometheus;
pub mod rate_limited;
pub mod raw_http;
pub mod registry;
pub mod sandbox;
pub mod signing;
pub mod slow_link;
pub mod small_disk;
pub mod tls;
pub mod token_server;
pub mod umoci;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

pub use compare::{
    CompareOptions, Snapshot, assert_trees_equal, assert_trees_equal_with, compare_trees,
    compare_trees_with, snapshot_dir,
};
pub use debootstrap::{debootstrap_rootfs, tar_dir};
pub use gate::Gate;
pub use image::{Compression, Format, Image, Index, Layer};
pub use layer::{
    DEFAULT_MTIME, Entry, EntryOptions, LayerBuilder, LongName, Mtime, gzip, gzip_multi_member,
    zstd, zstd_multi_frame,
};
pub use registry::Registry;
pub use slow_link::SlowLink;
pub use umoci::{UmociBundle, try_umoci_unpack, umoci_reference, umoci_unpack};

/// `sha256:<hex>` of `bytes`, the digest form used in manifests and configs.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// splitmix64 (Steele, Lea and Flood): a seeded sequence, the same on
/// every machine, for tests that pick kill points and fault schedules from
/// a seed (no crate needed).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `lo..=hi` (the modulo bias is irrelevant for a schedule).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The listener is dropped before returning, so another process may grab the
/// port in between; callers that start a server retry on a bind failure.
/// `GET http://127.0.0.1:PORT/PATH`: the status and the body, `(0, "")`
/// if nothing answered; at most 10 s.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build(),
    );
    match agent.get(format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// An exclusive `flock` on `path` (created if missing), released when the
/// file is closed: one builder of a shared artifact at a time.
pub fn lock_file(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    f
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The profile output directory (`target/debug`) of the running executable:
/// its own directory, or the parent of `deps/` for a test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The cargo target directory (`target/`), for caches that outlive a run.
/// It is the nearest ancestor of the executable that cargo tagged with
/// `CACHEDIR.TAG` (cargo writes one at the top of every target dir), which
/// also covers `CARGO_TARGET_DIR` without resolving a relative value.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| profile.parent().unwrap_or(&profile).to_path_buf())
}

/// Path of a binary built by this workspace, next to the test executable.
/// `cargo test` builds only the test targets of the package under test, so
/// the binaries have to be built first (`cargo build --bins`).
fn workspace_bin(name: &str) -> PathBuf {
    let bin = profile_dir().join(name);
    assert!(
        bin.is_file(),
        "{} does not exist: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// The `exploder` CLI.
pub fn exploder_bin() -> PathBuf {
    workspace_bin("exploder")
}

/// The `exploder-worker` binary.
pub fn exploder_worker_bin() -> PathBuf {
    workspace_bin("exploder-worker")
}

/// The `exploder-producer` binary.
pub fn exploder_producer_bin() -> PathBuf {
    workspace_bin("exploder-producer")
}

/// `exploder gc` flags that keep nothing gc may remove: no grace, no age,
/// one revision per tag (the linked one).
pub const GC_KEEP_NOTHING: &[&str] = &[
    "--grace",
    "0s",
    "--keep-younger-than",
    "0s",
    "--keep-revisions",
    "1",
];

/// Runs `exploder ARGS...` to completion, capturing stdout and stderr.
pub fn run_exploder<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(exploder_bin())
        .args(args)
        .output()
        .expect("spawn exploder")
}

/// Runs `exploder ARGS...` to completion like [`run_exploder`], but as a
/// hang guard: a command still running after `guard` is killed and the
/// test fails saying it hung. `guard` is generous (not a timing claim):
/// it only turns "hangs for ever" into a failure.
pub fn run_exploder_guarded<I, S>(args: I, guard: std::time::Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::Read;
    use std::process::Stdio;
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let mut child = Command::new(exploder_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exploder");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for exploder") {
            break status;
        }
        if started.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!("exploder {args:?} hangs: still running after {guard:?}, killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs `exploder ARGS... --store STORE` and panics with its output unless
/// it succeeded.
pub fn exploder_ok(args: &[&str], store: &Path) -> Output {
    let mut all = args.to_vec();
    all.extend(["--store", store.to_str().expect("UTF-8 store path")]);
    let out = run_exploder(&all);
    assert!(
        out.status.success(),
        "exploder {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Runs `exploder explode REFERENCE --store STORE EXTRA...` and panics with
/// its output unless it succeeded.
pub fn explode_ok(reference: &str, store: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["explode", reference];
    args.extend_from_slice(extra);
    exploder_ok(&args, store)
}

/// Runs `exploder block DIGEST --reason REASON --store STORE` and panics
/// with its output unless it succeeded.
pub fn block_ok(store: &Path, digest: &str, reason: &str) -> Output {
    exploder_ok(&["block", digest, "--reason", reason], store)
}

/// Reads `STORE/images/<namespace>/<image>/<tag>/link` (`sha256:<hex>`) and
/// returns `STORE/digest/sha256/<hex>/rootfs`, the tree the link points at.
pub fn linked_rootfs(store: &Path, namespace: &str, image: &str, tag: &str) -> PathBuf {
    let link = store
        .join("images")
        .join(namespace)
        .join(image)
        .join(tag)
        .join("link");
    let text =
        std::fs::read_to_string(&link).unwrap_or_else(|e| panic!("read {}: {e}", link.display()));
    let text = text.trim();
    let hex = text
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{}: {text:?} is not sha256:<hex>", link.display()));
    store.join("digest").join("sha256").join(hex).join("rootfs")
}

/// Runs a command and panics with its output if it fails; returns stdout.
/// For the external tools the harness drives (umoci, tar, debootstrap).
pub(crate) fn run_checked(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

/// Polls `done` until it holds; past `within`, panics saying `what` with
/// the contents of `logs` (the daemons' logs, to see why).
pub fn wait_until(
    what: &str,
    within: std::time::Duration,
    logs: &[&Path],
    mut done: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !done() {
        if start.elapsed() > within {
            let logs: Vec<String> = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            panic!(
                "{what}: not after {within:?}\nlogs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
