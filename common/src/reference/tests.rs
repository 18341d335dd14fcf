//! The reference grammar's cases: Docker's normalization, the local
//! transports, and what each refusal says.

use super::*;

const SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn sha512() -> String {
    format!("sha512:{}", "ab".repeat(64))
}

fn parse(s: &str) -> Reference {
    Reference::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn problem(s: &str) -> Problem {
    match Reference::parse(s) {
        Err(ReferenceError::Invalid { problem, .. }) => problem,
        other => panic!("{s:?} should be invalid, got {other:?}"),
    }
}

fn reference(registry: &str, repository: &str, tag: Option<&str>) -> Reference {
    Reference {
        registry: registry.into(),
        repository: repository.into(),
        tag: tag.map(Into::into),
        digest: None,
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "exploder-reference-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bare_name_defaults_to_docker_hub_library() {
    assert_eq!(
        parse("redis"),
        reference("docker.io", "library/redis", None)
    );
}

#[test]
fn bare_name_with_tag_keeps_tag() {
    assert_eq!(
        parse("redis:7"),
        reference("docker.io", "library/redis", Some("7"))
    );
}

#[test]
fn user_repository_defaults_to_docker_hub_without_library() {
    assert_eq!(parse("user/app"), reference("docker.io", "user/app", None));
}

#[test]
fn index_docker_io_is_normalized_to_docker_io() {
    assert_eq!(
        parse("index.docker.io/redis"),
        reference("docker.io", "library/redis", None)
    );
    assert_eq!(
        parse("docker.io/redis"),
        reference("docker.io", "library/redis", None)
    );
}

#[test]
fn localhost_with_port_is_a_registry() {
    assert_eq!(
        parse("localhost:5000/a"),
        reference("localhost:5000", "a", None)
    );
}

#[test]
fn ip_with_port_is_a_registry_and_keeps_tag() {
    assert_eq!(
        parse("127.0.0.1:5000/team/app:v1"),
        reference("127.0.0.1:5000", "team/app", Some("v1"))
    );
}

#[test]
fn localhost_without_port_is_a_registry() {
    assert_eq!(parse("localhost/a"), reference("localhost", "a", None));
}

#[test]
fn host_and_port_without_path_is_a_docker_hub_name_and_tag() {
    // As Docker: with no '/', "localhost:5000" is the image localhost:5000.
    assert_eq!(
        parse("localhost:5000"),
        reference("docker.io", "library/localhost", Some("5000"))
    );
}

#[test]
fn bracketed_ipv6_with_port_is_a_registry() {
    let r = parse("[::1]:5000/x");
    assert_eq!(r, reference("[::1]:5000", "x", None));
    assert_eq!(r.host(), "::1");
}

#[test]
fn host_drops_the_port() {
    assert_eq!(parse("127.0.0.1:5000/a").host(), "127.0.0.1");
    assert_eq!(parse("localhost:5000/a").host(), "localhost");
    assert_eq!(parse("redis").host(), "docker.io");
}

#[test]
fn tag_and_digest_are_both_kept() {
    let r = parse(&format!("r.example/x:t@{SHA256}"));
    assert_eq!(r.tag.as_deref(), Some("t"));
    assert_eq!(r.digest, Some(SHA256.parse().unwrap()));
}

#[test]
fn target_prefers_digest_over_tag() {
    let r = parse(&format!("redis:7@{SHA256}"));
    assert_eq!(r.target(), ManifestTarget::Digest(SHA256.parse().unwrap()));
}

#[test]
fn target_is_tag_or_latest_without_digest() {
    assert_eq!(parse("redis:7").target(), ManifestTarget::Tag("7".into()));
    assert_eq!(
        parse("redis").target(),
        ManifestTarget::Tag("latest".into())
    );
    assert_eq!(parse("redis").tag_or_latest(), "latest");
}

#[test]
fn sha512_digest_is_accepted() {
    let r = parse(&format!("localhost:5000/a/b@{}", sha512()));
    assert_eq!(r.digest.unwrap().to_string(), sha512());
    assert_eq!(r.tag, None);
}

#[test]
fn uppercase_repository_is_rejected() {
    assert_eq!(problem("Redis"), Problem::Uppercase);
    assert_eq!(problem("docker.io/library/Redis:7"), Problem::Uppercase);
    assert_eq!(
        Reference::parse("Redis").unwrap_err().to_string(),
        r#"invalid reference "Redis": repository name must be lowercase"#
    );
}

#[test]
fn uppercase_first_component_is_a_registry_as_in_docker() {
    // Docker's splitDockerDomain: repositories cannot be uppercase, so
    // an uppercase first component can only be a host.
    assert_eq!(parse("Host/app"), reference("Host", "app", None));
}

#[test]
fn uppercase_tag_is_allowed() {
    assert_eq!(parse("redis:V1").tag.as_deref(), Some("V1"));
}

#[test]
fn tag_longer_than_128_is_rejected() {
    let ok = format!("redis:{}", "a".repeat(128));
    assert!(Reference::parse(&ok).is_ok());
    let long = "a".repeat(129);
    assert_eq!(problem(&format!("redis:{long}")), Problem::Tag(long));
}

#[test]
fn tag_starting_with_dot_or_dash_is_rejected() {
    assert_eq!(problem("redis:.v1"), Problem::Tag(".v1".into()));
    assert_eq!(problem("redis:-v1"), Problem::Tag("-v1".into()));
}

#[test]
fn empty_tag_is_rejected() {
    assert_eq!(problem("redis:"), Problem::Tag(String::new()));
}

#[test]
fn unknown_digest_algorithm_is_rejected_with_the_whole_reference() {
    let input = "redis@md5:d41d8cd98f00b204e9800998ecf8427e";
    let err = Reference::parse(input).unwrap_err();
    assert!(matches!(
        &err,
        ReferenceError::Digest { error: DigestError::Algorithm(a), .. } if a == "md5"
    ));
    let message = err.to_string();
    assert!(message.contains(input), "{message}");
    assert!(message.contains("sha256"), "{message}");
}

#[test]
fn empty_digest_is_rejected() {
    assert!(matches!(
        Reference::parse("redis@"),
        Err(ReferenceError::Digest { .. })
    ));
}

#[test]
fn doubled_dot_separator_is_rejected() {
    assert_eq!(problem("a..b"), Problem::PathComponent("a..b".into()));
}

#[test]
fn trailing_separator_is_rejected() {
    assert_eq!(problem("a-"), Problem::PathComponent("a-".into()));
}

#[test]
fn leading_separator_is_rejected() {
    assert_eq!(problem("-a"), Problem::PathComponent("-a".into()));
}

#[test]
fn triple_underscore_is_rejected() {
    assert_eq!(problem("a___b"), Problem::PathComponent("a___b".into()));
}

#[test]
fn allowed_separators_are_accepted() {
    for name in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1-b2.c3__d4"] {
        parse(name);
    }
}

#[test]
fn empty_and_whitespace_and_double_slash_are_rejected() {
    assert_eq!(problem(""), Problem::Empty);
    assert_eq!(problem(" redis"), Problem::Whitespace);
    assert_eq!(problem("redis\n"), Problem::Whitespace);
    assert_eq!(problem("//"), Problem::EmptyPathComponent);
    assert_eq!(problem("user//app"), Problem::EmptyPathComponent);
    assert_eq!(problem("user/app/"), Problem::EmptyPathComponent);
}

#[test]
fn registry_without_repository_is_rejected() {
    assert_eq!(problem("localhost:5000/"), Problem::EmptyRepository);
}

#[test]
fn invalid_registries_are_rejected() {
    for (input, registry) in [
        ("a_b.com/x", "a_b.com"),
        ("-a.com/x", "-a.com"),
        ("a..com/x", "a..com"),
        ("localhost:/x", "localhost:"),
        ("localhost:50a/x", "localhost:50a"),
        ("[::1/x", "[::1"),
        ("[]:5000/x", "[]:5000"),
        ("[::1]x/y", "[::1]x"),
    ] {
        assert_eq!(
            problem(input),
            Problem::Registry(registry.into()),
            "{input}"
        );
    }
}

#[test]
fn name_longer_than_255_is_rejected() {
    // "docker.io/" (10) + 245 = 255: the longest allowed.
    let ok = format!("user/{}", "a".repeat(240));
    assert!(Reference::parse(&ok).is_ok());
    let too_long = format!("user/{}", "a".repeat(241));
    assert!(matches!(
        problem(&too_long),
        Problem::NameTooLong { len: 256, .. }
    ));
}

#[test]
fn hex_image_id_is_not_a_name() {
    assert_eq!(problem(&"a".repeat(64)), Problem::HexName);
}

#[test]
fn is_loopback_for_loopback_registries() {
    for r in [
        "127.1.2.3/a",
        "127.0.0.1:5000/a",
        "localhost/a",
        "localhost:5000/a",
        "[::1]/a",
        "[::1]:5000/a",
    ] {
        assert!(parse(r).is_loopback(), "{r}");
    }
}

#[test]
fn is_loopback_false_for_other_registries() {
    for r in [
        "redis",
        "docker.io/a",
        "10.0.0.1:5000/a",
        "localhost.example.com/a",
        "[::2]/a",
    ] {
        assert!(!parse(r).is_loopback(), "{r}");
    }
}

#[test]
fn display_is_the_canonical_full_form() {
    assert_eq!(parse("redis").to_string(), "docker.io/library/redis:latest");
    assert_eq!(
        parse(&format!("localhost:5000/a/b@{SHA256}")).to_string(),
        format!("localhost:5000/a/b@{SHA256}")
    );
    assert_eq!(
        parse(&format!("r.example/x:t@{SHA256}")).to_string(),
        format!("r.example/x:t@{SHA256}")
    );
}

#[test]
fn display_round_trips() {
    for s in [
        "redis:7".to_string(),
        "[::1]:5000/x:v1".to_string(),
        format!("127.0.0.1:5000/team/app:v1@{}", sha512()),
        format!("localhost/a@{SHA256}"),
    ] {
        let r = parse(&s);
        assert_eq!(parse(&r.to_string()), r, "{s}");
    }
}

#[test]
fn reference_serializes_digest_as_string() {
    let json = serde_json::to_value(parse(&format!("redis@{SHA256}"))).unwrap();
    assert_eq!(json["digest"], SHA256);
    assert_eq!(json["repository"], "library/redis");
}

#[test]
fn image_ref_plain_reference_is_registry() {
    assert_eq!(
        ImageRef::parse("redis:7").unwrap(),
        ImageRef::Registry(reference("docker.io", "library/redis", Some("7")))
    );
}

#[test]
fn image_ref_serializes_with_kind() {
    let json = serde_json::to_value(ImageRef::parse("oci:/l:v1").unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"kind": "oci_layout", "path": "/l", "tag": "v1"})
    );
    let json = serde_json::to_value(ImageRef::parse("redis").unwrap()).unwrap();
    assert_eq!(json["kind"], "registry");
    assert_eq!(json["registry"], "docker.io");
}

fn oci(s: &str) -> (PathBuf, Option<String>) {
    match ImageRef::parse(s) {
        Ok(ImageRef::OciLayout { path, tag }) => (path, tag),
        other => panic!("{s:?} should be an OCI layout, got {other:?}"),
    }
}

#[test]
fn oci_layout_without_tag() {
    assert_eq!(oci("oci:/tmp/layout"), ("/tmp/layout".into(), None));
}

#[test]
fn oci_layout_with_tag() {
    assert_eq!(
        oci("oci:/tmp/layout:v1"),
        ("/tmp/layout".into(), Some("v1".into()))
    );
}

#[test]
fn oci_layout_relative_path() {
    assert_eq!(oci("oci:./dir"), ("./dir".into(), None));
}

#[test]
fn oci_layout_colon_inside_path_is_not_a_tag() {
    assert_eq!(oci("oci:/a:b/c"), ("/a:b/c".into(), None));
}

#[test]
fn oci_layout_empty_path_is_rejected() {
    for s in ["oci:", "oci::v1"] {
        assert!(
            matches!(
                ImageRef::parse(s),
                Err(ReferenceError::Invalid {
                    problem: Problem::EmptyOciPath,
                    ..
                })
            ),
            "{s}"
        );
    }
}

#[test]
fn oci_layout_trailing_colon_is_an_empty_tag() {
    assert!(matches!(
        ImageRef::parse("oci:/tmp/layout:"),
        Err(ReferenceError::Invalid {
            problem: Problem::Tag(_),
            ..
        })
    ));
}

#[test]
fn file_url_empty_path_is_rejected() {
    assert!(matches!(
        ImageRef::parse("file://"),
        Err(ReferenceError::Invalid {
            problem: Problem::EmptyStoragePath,
            ..
        })
    ));
}

#[test]
fn other_transports_are_rejected() {
    let err = ImageRef::parse("containers-storage://redis").unwrap_err();
    assert_eq!(
        err,
        invalid(
            "containers-storage://redis",
            Problem::UnsupportedTransport("containers-storage://".into())
        )
    );
    assert!(err.to_string().contains("oci:PATH"), "{err}");
    assert!(err.to_string().contains("docker-archive:"), "{err}");
}

#[test]
fn docker_scheme_is_the_registry_reference_skopeo_users_type() {
    assert_eq!(
        ImageRef::parse("docker://redis:7").unwrap(),
        ImageRef::parse("redis:7").unwrap()
    );
    assert!(ImageRef::parse("docker://localhost:5000/team/app@sha256:").is_err());
    let err = ImageRef::parse("docker://Team/App").unwrap_err();
    assert!(err.to_string().contains("docker://Team/App"), "{err}");
}

#[test]
fn oci_archive_takes_a_path_and_a_tag_like_oci() {
    assert_eq!(
        ImageRef::parse("oci-archive:/tmp/a:b/img.tar:v1").unwrap(),
        ImageRef::OciArchive {
            path: "/tmp/a:b/img.tar".into(),
            tag: Some("v1".into())
        }
    );
    assert_eq!(
        ImageRef::parse("oci-archive:img.tar").unwrap(),
        ImageRef::OciArchive {
            path: "img.tar".into(),
            tag: None
        }
    );
}

#[test]
fn docker_archive_names_an_image_by_repository_and_tag() {
    assert_eq!(
        ImageRef::parse("docker-archive:/tmp/img.tar:team/app:v1").unwrap(),
        ImageRef::DockerArchive {
            path: "/tmp/img.tar".into(),
            name: Some("team/app:v1".into())
        }
    );
    assert_eq!(
        ImageRef::parse("docker-archive:img.tar").unwrap(),
        ImageRef::DockerArchive {
            path: "img.tar".into(),
            name: None
        }
    );
    for bad in [
        "docker-archive:",
        "docker-archive::x:v1",
        "docker-archive:a.tar:Team/x",
    ] {
        assert!(ImageRef::parse(bad).is_err(), "{bad}");
    }
    assert!(ImageRef::parse("docker-archive:a.tar:team/app").is_err());
}

fn storage_tree(name: &str) -> (TempDir, String) {
    let tmp = TempDir::new(name);
    // The storage root sits below a directory with a ':' to show the
    // split is found on disk, not in the text.
    let root = tmp.0.join("srv:1/registry");
    std::fs::create_dir_all(root.join(STORAGE_MARKER)).unwrap();
    let root = root.to_str().unwrap().to_string();
    (tmp, root)
}

#[test]
fn file_url_splits_root_and_repository_on_disk() {
    let (_tmp, root) = storage_tree("split");
    let parsed = ImageRef::parse(&format!("file://{root}/team/app:v1@{SHA256}")).unwrap();
    assert_eq!(
        parsed,
        ImageRef::StorageDir {
            root: PathBuf::from(&root),
            repository: "team/app".into(),
            tag: Some("v1".into()),
            digest: Some(SHA256.parse().unwrap()),
        }
    );
}

#[test]
fn file_url_takes_the_longest_storage_root() {
    let (_tmp, outer) = storage_tree("longest");
    let inner = format!("{outer}/nested");
    std::fs::create_dir_all(Path::new(&inner).join(STORAGE_MARKER)).unwrap();
    match ImageRef::parse(&format!("file://{inner}/app")).unwrap() {
        ImageRef::StorageDir {
            root,
            repository,
            tag,
            digest,
        } => {
            assert_eq!(root, PathBuf::from(&inner));
            assert_eq!(repository, "app");
            assert_eq!((tag, digest), (None, None));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn file_url_repository_follows_repository_rules() {
    let (_tmp, root) = storage_tree("rules");
    assert!(matches!(
        ImageRef::parse(&format!("file://{root}/Team/app")),
        Err(ReferenceError::Invalid {
            problem: Problem::Uppercase,
            ..
        })
    ));
    assert!(matches!(
        ImageRef::parse(&format!("file://{root}/team/app:.bad")),
        Err(ReferenceError::Invalid {
            problem: Problem::Tag(_),
            ..
        })
    ));
}

#[test]
fn file_url_root_without_repository_is_rejected() {
    let (_tmp, root) = storage_tree("norepo");
    assert!(matches!(
        ImageRef::parse(&format!("file://{root}")),
        Err(ReferenceError::Invalid {
            problem: Problem::NoRepositoryAfterRoot(_),
            ..
        })
    ));
}

#[test]
fn file_url_without_storage_root_is_a_clear_error() {
    let tmp = TempDir::new("none");
    let path = format!("{}/team/app", tmp.0.display());
    let input = format!("file://{path}:v1");
    let err = ImageRef::parse(&input).unwrap_err();
    assert_eq!(
        err,
        ReferenceError::NoStorageRoot {
            input: input.clone(),
            path: PathBuf::from(&path),
        }
    );
    let message = err.to_string();
    assert!(message.contains(&input), "{message}");
    assert!(message.contains("docker/registry/v2"), "{message}");
}
