//! The registry client (`exploder_common::fetch::registry`) against a real
//! registry (the harness's `docker-registry`), and behind a proxy that
//! breaks chosen requests: what it fetches, how it authenticates, and how
//! it retries, waits, re-authenticates and resumes.
//!
//! The pure parts (credentials lookup, plain-HTTP decision, retry delays,
//! error mapping) are unit-tested beside their modules in `common`.

use std::io::{self, Read as _};
use std::time::{Duration, Instant};

use base64::Engine as _;
use exploder_common::digest::Digest;
use exploder_common::fetch::registry::{RegistryFetcher, RegistryOptions, RetryPolicy};
use exploder_common::fetch::{FetchError, Fetcher, MAX_MANIFEST_BYTES};
use exploder_common::image::media_type;
use exploder_common::reference::ManifestTarget;
use exploder_tests::fault_proxy::{Fault, FaultProxy};
use exploder_tests::registry::{PASSWORD, USER};
use exploder_tests::{Image, Layer, Registry, SplitMix64};

/// Pushed content, as the tests expect to read it back.
struct Pushed {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

/// Pushes an OCI image tagged `tag` whose one layer blob is `layer_size`
/// pseudo-random bytes (the fetcher does not look inside blobs).
fn push_image(registry: &Registry, repository: &str, tag: &str, layer_size: usize) -> Pushed {
    let mut random = SplitMix64(0x9e37_79b9_7f4a_7c15);
    let blob: Vec<u8> = (0..layer_size).map(|_| random.next_u64() as u8).collect();
    let layer = Layer::uncompressed(Vec::new()).with_blob(blob);
    let image = Image::oci().layer(layer.clone());
    let manifest_digest = registry.push(repository, tag, &image);
    Pushed {
        manifest: image.manifest_bytes(),
        manifest_digest: manifest_digest.parse().unwrap(),
        layer: layer.blob().to_vec(),
        layer_digest: layer.digest().parse().unwrap(),
    }
}

/// Options that do not read the developer's ~/.docker/config.json.
fn no_auth_file() -> RegistryOptions {
    RegistryOptions {
        auth_file: Some("/nonexistent/exploder-test/config.json".into()),
        ..RegistryOptions::default()
    }
}

/// A fetcher that retries three times in all, from 10 ms.
fn fast_fetcher(addr: &str, repository: &str, opts: &RegistryOptions) -> RegistryFetcher {
    let retry = RetryPolicy {
        max_attempts: 3,
        min_delay: Duration::from_millis(10),
    };
    RegistryFetcher::with_retry(addr, repository, opts, retry).unwrap()
}

/// Reads a blob the way the ingest does: on a blocking thread.
async fn read_blob(f: &RegistryFetcher, digest: &Digest, size: Option<u64>) -> io::Result<Vec<u8>> {
    let mut reader = f.blob(digest, size).await.map_err(io::Error::other)?;
    tokio::task::spawn_blocking(move || {
        let mut data = Vec::new();
        reader.read_to_end(&mut data).map(|_| data)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_from_a_real_registry() {
    let registry = Registry::start();
    let pushed = push_image(&registry, "team/app", "v1", 1 << 20);
    let f = fast_fetcher(&registry.addr(), "team/app", &no_auth_file());
    assert_eq!(f.location(), format!("{}/team/app", registry.addr()));

    let by_tag = f.manifest(&ManifestTarget::Tag("v1".into())).await.unwrap();
    assert_eq!(by_tag.bytes, pushed.manifest);
    assert_eq!(by_tag.digest, pushed.manifest_digest);
    assert_eq!(by_tag.media_type.as_deref(), Some(media_type::OCI_MANIFEST));
    let target = ManifestTarget::Digest(pushed.manifest_digest.clone());
    assert_eq!(f.manifest(&target).await.unwrap().bytes, pushed.manifest);

    let head = f
        .manifest_digest(&ManifestTarget::Tag("v1".into()))
        .await
        .unwrap();
    assert_eq!(head, pushed.manifest_digest);
    assert_eq!(
        f.manifest_digest(&target).await.unwrap(),
        pushed.manifest_digest
    );

    let size = Some(pushed.layer.len() as u64);
    let layer = read_blob(&f, &pushed.layer_digest, size).await.unwrap();
    assert!(layer == pushed.layer, "blob bytes differ");
    let layer = read_blob(&f, &pushed.layer_digest, None).await.unwrap();
    assert!(layer == pushed.layer, "blob bytes differ without a size");
    let short = read_blob(&f, &pushed.layer_digest, Some(1000))
        .await
        .unwrap_err();
    assert_eq!(short.kind(), io::ErrorKind::InvalidData, "{short}");

    // Bytes that do not match the digest (a corrupted registry store):
    // the reader hands them over as served, once, without resuming; the
    // caller's own hash (the ingest's) reports the mismatch with both
    // digests.
    let mut corrupted = pushed.layer.clone();
    corrupted[12345] ^= 1;
    registry.tamper_blob(&pushed.layer_digest.to_string(), &corrupted);
    let served = read_blob(&f, &pushed.layer_digest, size).await.unwrap();
    assert_eq!(served, corrupted);
    assert_ne!(Digest::sha256_of(&served), pushed.layer_digest);

    match f.manifest(&ManifestTarget::Tag("nope".into())).await {
        Err(e @ FetchError::NotFound { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("manifest nope") && message.contains("team/app"),
                "{message}"
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let missing = Digest::sha256_of(b"not pushed");
    match f.blob(&missing, None).await {
        Err(e @ FetchError::NotFound { .. }) => {
            assert!(e.to_string().contains(&format!("blob {missing}")), "{e}");
        }
        Err(e) => panic!("expected NotFound, got {e:?}"),
        Ok(_) => panic!("expected NotFound, got a reader"),
    }
    let other_repo = fast_fetcher(&registry.addr(), "no/such-repo", &no_auth_file());
    assert!(matches!(
        other_repo.manifest(&ManifestTarget::Tag("v1".into())).await,
        Err(FetchError::NotFound { .. })
    ));
    assert!(matches!(
        other_repo
            .manifest_digest(&ManifestTarget::Tag("v1".into()))
            .await,
        Err(FetchError::NotFound { .. })
    ));
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_flags_or_auth_file() {
    let registry = Registry::start_with_basic_auth();
    let pushed = push_image(&registry, "private/app", "v1", 4096);
    let tag = ManifestTarget::Tag("v1".into());

    let anonymous = fast_fetcher(&registry.addr(), "private/app", &no_auth_file());
    match anonymous.manifest(&tag).await {
        Err(FetchError::Unauthorized {
            status: 401,
            location,
            ..
        }) => assert!(location.ends_with("/private/app")),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(matches!(
        anonymous.blob(&pushed.layer_digest, None).await.err(),
        Some(FetchError::Unauthorized { .. })
    ));

    let wrong = RegistryOptions {
        username: Some(USER.into()),
        password: Some("wrong".into()),
        ..no_auth_file()
    };
    let wrong = fast_fetcher(&registry.addr(), "private/app", &wrong);
    assert!(matches!(
        wrong.manifest(&tag).await,
        Err(FetchError::Unauthorized { .. })
    ));

    let flags = RegistryOptions {
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..no_auth_file()
    };
    let f = fast_fetcher(&registry.addr(), "private/app", &flags);
    assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
    assert_eq!(
        f.manifest_digest(&tag).await.unwrap(),
        pushed.manifest_digest
    );
    assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let key = format!("http://{}/v2/", registry.addr());
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let config = serde_json::json!({ "auths": { key: { "auth": auth } } });
    std::fs::write(&file, config.to_string()).unwrap();
    let from_file = RegistryOptions {
        auth_file: Some(file),
        ..RegistryOptions::default()
    };
    let f = fast_fetcher(&registry.addr(), "private/app", &from_file);
    assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_retries_and_reauthenticates() {
    let registry = Registry::start();
    let pushed = push_image(&registry, "team/app", "v1", 1 << 20);
    let proxy = FaultProxy::start(&registry.addr());
    let f = fast_fetcher(&proxy.addr(), "team/app", &no_auth_file());
    let tag = ManifestTarget::Tag("v1".into());
    let blobs = "GET /v2/team/app/blobs/";
    let manifests = "GET /v2/team/app/manifests/";

    // A download cut mid-body resumes with a Range request and reads
    // the same bytes.
    proxy.inject(blobs, Fault::CutAfter(100_000));
    let layer = read_blob(&f, &pushed.layer_digest, Some(pushed.layer.len() as u64))
        .await
        .unwrap();
    assert!(layer == pushed.layer, "resumed blob bytes differ");
    let ranges: Vec<String> = proxy
        .seen()
        .into_iter()
        .filter(|h| h.to_ascii_lowercase().contains("range: bytes="))
        .collect();
    assert_eq!(ranges.len(), 1, "one resume expected: {ranges:?}");
    assert!(
        !ranges[0].contains("range: bytes=0-"),
        "resumed from byte 0: {}",
        ranges[0]
    );

    // Cut again while resuming, inside the answer's headers: the reopen
    // is retried and the reader still sees one unbroken stream.
    proxy.inject(blobs, Fault::CutAfter(50_000));
    proxy.inject(blobs, Fault::CutAfter(300));
    assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);

    // 5xx when opening a blob is retried.
    proxy.inject(
        blobs,
        Fault::Respond("503 Service Unavailable", vec![], vec![]),
    );
    assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);

    // 429 with Retry-After is waited out.
    proxy.inject(
        manifests,
        Fault::Respond(
            "429 Too Many Requests",
            vec!["Retry-After: 1".into()],
            vec![],
        ),
    );
    let started = Instant::now();
    assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );

    // A Retry-After too long to wait for returns the 429 (transient).
    proxy.inject(
        manifests,
        Fault::Respond(
            "429 Too Many Requests",
            vec!["Retry-After: 3600".into()],
            vec![],
        ),
    );
    let err = f.manifest(&tag).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Http { status: 429, .. }) && err.is_transient(),
        "{err:?}"
    );

    // Attempts run out on a registry that keeps failing.
    for _ in 0..3 {
        proxy.inject(
            "HEAD /v2/team/app/manifests/",
            Fault::Respond("502 Bad Gateway", vec![], vec![]),
        );
    }
    assert!(matches!(
        f.manifest_digest(&tag).await,
        Err(FetchError::Http { status: 502, .. })
    ));

    // One 401 makes the fetcher authenticate again (a new /v2/ ping)
    // and retry; two give Unauthorized.
    let pings = |p: &FaultProxy| {
        p.seen()
            .iter()
            .filter(|h| h.starts_with("GET /v2/ "))
            .count()
    };
    let before = pings(&proxy);
    proxy.inject(
        manifests,
        Fault::Respond("401 Unauthorized", vec![], vec![]),
    );
    assert_eq!(f.manifest(&tag).await.unwrap().bytes, pushed.manifest);
    assert_eq!(pings(&proxy), before + 1, "no re-authentication");
    proxy.inject(blobs, Fault::Respond("401 Unauthorized", vec![], vec![]));
    assert!(read_blob(&f, &pushed.layer_digest, None).await.unwrap() == pushed.layer);
    proxy.inject(
        manifests,
        Fault::Respond("401 Unauthorized", vec![], vec![]),
    );
    proxy.inject(manifests, Fault::Respond("403 Forbidden", vec![], vec![]));
    assert!(matches!(
        f.manifest(&tag).await,
        Err(FetchError::Unauthorized { status: 403, .. })
    ));

    // A Docker-Content-Digest that disagrees with the body.
    let wrong = Digest::sha256_of(b"something else");
    proxy.inject(
        manifests,
        Fault::Respond(
            "200 OK",
            vec![format!("Docker-Content-Digest: {wrong}")],
            b"{}".to_vec(),
        ),
    );
    assert!(matches!(
        f.manifest(&tag).await,
        Err(FetchError::DigestMismatch { .. })
    ));

    // An oversized manifest is refused from its Content-Length, and
    // without one, once over the limit.
    proxy.inject(
        manifests,
        Fault::Respond("200 OK", vec!["Content-Length: 99999999".into()], vec![]),
    );
    assert!(matches!(
        f.manifest(&tag).await,
        Err(FetchError::Invalid { .. })
    ));
    proxy.inject(
        manifests,
        Fault::Respond(
            "200 OK",
            vec!["Transfer-Encoding: chunked".into()],
            chunked(&vec![b' '; MAX_MANIFEST_BYTES as usize + 10]),
        ),
    );
    let err = f.manifest(&tag).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err:?}");

    assert_eq!(proxy.unused_faults(), 0, "unused faults");
    drop(proxy);
    drop(registry);
}

/// `data` as a chunked HTTP body: a body with no Content-Length.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// Every new fetcher authenticates; fetchers of one registry take what its
/// `/v2/` asked for from the first that asked, within a minute, instead of
/// pinging it again before their first request (a third of the requests
/// of resolving a small image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_of_one_registry_ask_its_v2_endpoint_once() {
    let registry = Registry::start();
    for repository in ["team/a", "team/b", "team/c"] {
        push_image(&registry, repository, "v1", 1024);
    }
    // The harness asked too, to know the registry was up.
    let before = registry.request_count("GET", "/v2/");
    for repository in ["team/a", "team/b", "team/c"] {
        let f = fast_fetcher(&registry.addr(), repository, &no_auth_file());
        f.manifest(&ManifestTarget::Tag("v1".into())).await.unwrap();
    }
    assert_eq!(registry.request_count("GET", "/v2/") - before, 1);
}

/// Far above the deadlines under test: reaching it is the failure.
const HANG_GUARD: Duration = Duration::from_secs(40);

/// Options with a registry timeout of one second: a request must end
/// within two.
fn impatient() -> RegistryOptions {
    RegistryOptions {
        timeout: Some(Duration::from_secs(1)),
        ..no_auth_file()
    }
}

/// A manifest trickled byte by byte (each byte well within the timeout
/// between reads) is given up at the request's total deadline, twice the
/// registry timeout, as a transient failure: not read for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_manifest_is_given_up_at_the_request_deadline() {
    let registry = Registry::start();
    push_image(&registry, "team/app", "v1", 1000);
    let proxy = FaultProxy::start(&registry.addr());
    let f = fast_fetcher(&proxy.addr(), "team/app", &impatient());
    // Every attempt trickles: 200 ms a byte, minutes for the answer.
    for _ in 0..3 {
        proxy.inject(
            "GET /v2/team/app/manifests/",
            Fault::Trickle(Duration::from_millis(200)),
        );
    }
    let tag = ManifestTarget::Tag("v1".into());
    let fetched = tokio::time::timeout(HANG_GUARD, f.manifest(&tag));
    let err = fetched
        .await
        .expect("the trickled manifest was still being read at the hang guard")
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Network { .. }) && err.is_transient(),
        "{err:?}"
    );
}

/// A config (a small blob) trickled byte by byte is given up at the
/// request's total deadline like a manifest, as a transient failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_config_is_given_up_at_the_request_deadline() {
    let registry = Registry::start();
    let image = Image::oci().layer(Layer::uncompressed(Vec::new()).with_blob(vec![7; 1000]));
    registry.push("team/app", "v1", &image);
    let proxy = FaultProxy::start(&registry.addr());
    let f = Fetcher::Registry(fast_fetcher(&proxy.addr(), "team/app", &impatient()));
    // Every attempt trickles: 200 ms a byte, minutes for the answer.
    for _ in 0..3 {
        proxy.inject(
            "GET /v2/team/app/blobs/",
            Fault::Trickle(Duration::from_millis(200)),
        );
    }
    let config: Digest = image.config_digest().parse().unwrap();
    let fetched = tokio::time::timeout(HANG_GUARD, f.small_blob(&config, MAX_MANIFEST_BYTES));
    let err = fetched
        .await
        .expect("the trickled config was still being read at the hang guard")
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().contains("not received in full within 2s"),
        "{err}"
    );
}
