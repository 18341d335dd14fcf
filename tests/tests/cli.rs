//! The command line as users and scripts meet it: output formats, exit
//! codes, messages that say what to do, environment configuration.

use exploder_tests::{Image, Layer, LayerBuilder, Registry, explode_ok, run_exploder};

fn small_image() -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/hostname", b"cli\n", 0o644);
    Image::oci()
        .layer(Layer::gzip(b.build()))
        .env("PATH=/bin")
        .label("team", "cli")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn parse_prints_docker_hub_defaults_as_json() {
    let out = run_exploder(["parse", "redis:7", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "registry");
    assert_eq!(v["registry"], "docker.io");
    assert_eq!(v["repository"], "library/redis");
    assert_eq!(v["tag"], "7");
}

#[test]
fn parse_prints_registry_port_and_digest_as_text() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let out = run_exploder(["parse", &format!("localhost:5000/team/app:v1@{digest}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("registry:   localhost:5000"), "{text}");
    assert!(text.contains("repository: team/app"), "{text}");
    assert!(text.contains(&digest), "{text}");
}

#[test]
fn parse_rejects_an_invalid_reference_with_exit_code_2_and_a_reason() {
    let out = run_exploder(["parse", "Team/App"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lowercase"), "{}", stderr(&out));
}

#[test]
fn manifest_prints_the_manifest_and_with_config_the_image_config() {
    let image = small_image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let reference = format!("{}/team/app:v1", registry.addr());
    let out = run_exploder(["manifest", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["layers"][0]["digest"], image.layer_digests()[0]);
    let out = run_exploder(["manifest", &reference, "--config"]);
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["config"]["Labels"]["team"], "cli");
}

#[test]
fn manifest_of_a_missing_tag_names_the_registry_and_repository() {
    let registry = Registry::start();
    let reference = format!("{}/team/nothing:v1", registry.addr());
    let out = run_exploder(["manifest", &reference]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("not found") && err.contains("team/nothing"),
        "{err}"
    );
}

#[test]
fn schema1_manifests_are_refused_with_a_clear_message() {
    let layout = tempfile::tempdir().unwrap();
    let schema1 = br#"{"schemaVersion":1,"name":"team/old","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
    small_image()
        .with_manifest_bytes(schema1.to_vec())
        .write_oci_layout(layout.path(), "v1")
        .unwrap();
    let out = run_exploder(["manifest", &format!("oci:{}:v1", layout.path().display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("schema 1"), "{}", stderr(&out));
}

#[test]
fn explode_exits_1_when_one_reference_fails_and_still_links_the_others() {
    let registry = Registry::start();
    registry.push("team/app", "v1", &small_image());
    let store = tempfile::tempdir().unwrap();
    let good = format!("{}/team/app:v1", registry.addr());
    let bad = format!("{}/team/app:missing", registry.addr());
    let out = run_exploder([
        "explode",
        &bad,
        &good,
        "--store",
        store.path().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert!(v[0]["error"].as_str().unwrap().contains("not found"), "{v}");
    assert_eq!(v[1]["ok"], true);
    assert!(store.path().join("images/team/app/v1/link").is_file());
}

#[test]
fn explode_reads_the_store_from_exploder_store() {
    let registry = Registry::start();
    registry.push("team/app", "v1", &small_image());
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exploder_tests::exploder_bin())
        .args(["explode", &format!("{}/team/app:v1", registry.addr())])
        .env("EXPLODER_STORE", store.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(store.path().join("images/team/app/v1/link").is_file());
}

#[test]
fn explode_writes_manifest_config_and_image_metadata_beside_the_rootfs() {
    let image = small_image();
    let registry = Registry::start();
    registry.push("team/app", "v1", &image);
    let store = tempfile::tempdir().unwrap();
    explode_ok(
        &format!("{}/team/app:v1", registry.addr()),
        store.path(),
        &[],
    );
    let dir = store
        .path()
        .join("digest/sha256")
        .join(image.manifest_digest().strip_prefix("sha256:").unwrap());
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        image.manifest_bytes()
    );
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        image.config_bytes()
    );
    let link = std::fs::read_to_string(store.path().join("images/team/app/v1/link")).unwrap();
    assert_eq!(link, image.manifest_digest());
}

#[test]
fn explode_help_explains_the_limits_and_their_environment_variables() {
    let out = run_exploder(["explode", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for needle in [
        "--max-layer-bytes",
        "EXPLODER_MAX_LAYER_BYTES",
        "EXPLODER_STORE",
        "--materialize",
        "--platform",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn explode_refuses_a_name_that_would_climb_out_of_the_store() {
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "explode",
        "oci:/nonexistent:v1",
        "--name",
        "../../etc/app",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--name"), "{}", stderr(&out));
}

/// `--help` of one binary (`exploder SUB`, `exploder-worker`,
/// `exploder-producer`).
fn help_of(binary: &[&str]) -> String {
    let (bin, args) = match binary {
        ["exploder-worker"] => (exploder_tests::exploder_worker_bin(), vec![]),
        ["exploder-producer"] => (exploder_tests::exploder_producer_bin(), vec![]),
        ["exploder", rest @ ..] => (exploder_tests::exploder_bin(), rest.to_vec()),
        other => panic!("no such binary {other:?}"),
    };
    let out = std::process::Command::new(bin)
        .args(args)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary:?} --help: {}", stderr(&out));
    stdout(&out)
}

/// The help of `flag`: its line and the description under it, with the
/// wrapping undone.
fn help_block(help: &str, flag: &str) -> Option<String> {
    let mut lines = help.lines().skip_while(|l| {
        let l = l.trim_start();
        let names_it = l.starts_with(&format!("{flag} "))
            || l == flag
            || l.starts_with(&format!("{flag}="))
            || l.contains(&format!(", {flag}"));
        !names_it
    });
    let first = lines.next()?;
    let rest = lines
        .take_while(|l| l.is_empty() || (l.starts_with(' ') && !l.trim_start().starts_with('-')));
    let words: Vec<&str> = std::iter::once(first)
        .chain(rest)
        .flat_map(str::split_whitespace)
        .collect();
    Some(words.join(" "))
}

#[test]
fn a_flag_shared_by_several_binaries_is_the_same_flag_in_each() {
    let worker = ["exploder-worker"];
    let producer = ["exploder-producer"];
    let explode = ["exploder", "explode"];
    let enqueue = ["exploder", "enqueue"];
    let gc = ["exploder", "gc"];
    let shared: &[(&str, &[&[&str]])] = &[
        ("--amqp-url", &[&worker, &producer, &enqueue]),
        ("--redis-url", &[&worker, &producer, &enqueue, &gc]),
        ("--prefix", &[&worker, &producer, &enqueue, &gc]),
        ("--insecure-registry", &[&worker, &producer, &explode]),
        ("--username", &[&worker, &producer, &explode]),
        ("--password", &[&worker, &producer, &explode]),
        ("--registry-token", &[&worker, &producer, &explode]),
        ("--authfile", &[&worker, &producer, &explode]),
        ("--materialize", &[&worker, &explode]),
        ("--max-layer-bytes", &[&worker, &explode]),
        ("--write-threads", &[&worker, &explode]),
        ("--quota", &[&producer, &explode, &enqueue]),
        ("--blob-source", &[&producer, &explode, &enqueue]),
        ("--platform", &[&producer, &explode, &enqueue]),
        ("--registry-path", &[&producer, &explode, &enqueue]),
        ("--log-format", &[&worker, &producer, &explode]),
        ("--metrics-listen", &[&worker, &producer]),
        ("--policy", &[&worker, &producer, &explode, &enqueue]),
        ("--registries-d", &[&worker, &producer, &explode, &enqueue]),
        (
            "--signature-lookaside",
            &[&worker, &producer, &explode, &enqueue],
        ),
        (
            "--sigstore-attachments",
            &[&worker, &producer, &explode, &enqueue],
        ),
    ];
    let mut helps = std::collections::HashMap::new();
    for (flag, binaries) in shared {
        let blocks: Vec<(String, String)> = binaries
            .iter()
            .map(|b| {
                let help = helps.entry(b.join(" ")).or_insert_with(|| help_of(b));
                let block = help_block(help, flag)
                    .unwrap_or_else(|| panic!("{} --help has no {flag}", b.join(" ")));
                (b.join(" "), block)
            })
            .collect();
        for (binary, block) in &blocks[1..] {
            assert_eq!(
                block, &blocks[0].1,
                "{flag} in {binary} differs from {flag} in {}",
                blocks[0].0
            );
        }
    }
}

/// Runs exploder with stdout and stderr as pipes whose readers are gone
/// (what `| head` leaves once it has its lines): stdout's when
/// `close_stdout`, else stderr's. Returns its exit status, or panics if it
/// has not ended within a minute (it used to hang for ever).
fn run_with_a_closed_pipe(args: &[&str], close_stdout: bool) -> std::process::ExitStatus {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(exploder_tests::exploder_bin());
    cmd.args(args).stdin(Stdio::null());
    let (open, closed) = if close_stdout {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        ("stderr", "stdout")
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        ("stdout", "stderr")
    };
    let mut child = cmd.spawn().unwrap();
    // The reader goes away before anything is written.
    if close_stdout {
        drop(child.stdout.take());
    } else {
        drop(child.stderr.take());
    }
    let kept = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = kept {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("exploder {args:?} with its {closed} closed has not ended in a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let said = reader.join().unwrap();
    assert!(
        !said.contains("panicked"),
        "exploder {args:?} panicked with its {closed} closed ({open}: {said})"
    );
    status
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_as_sigpipe_would() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path().to_str().unwrap();
    for args in [
        vec!["ls", "--store", store, "-o", "json"],
        vec!["parse", "redis:7", "-o", "json"],
    ] {
        let status = run_with_a_closed_pipe(&args, true);
        assert_eq!(status.code(), Some(141), "exploder {args:?}: {status}");
    }
}

#[test]
fn a_closed_stderr_neither_panics_nor_hangs_the_command() {
    // Without a topology, `status` and `topology verify` log the broker's
    // refusals and print their own error: every line lost, the command
    // still ends with its own answer.
    let prefix = format!("NOTOPOLOGY-{}-", std::process::id());
    for args in [
        vec!["status", "--prefix", &prefix],
        vec!["topology", "verify", "--prefix", &prefix],
        vec!["parse", "not a reference"],
    ] {
        let status = run_with_a_closed_pipe(&args, false);
        assert!(
            matches!(status.code(), Some(1) | Some(2)),
            "exploder {args:?}: {status}"
        );
    }
}

// Issue 27, item 5: nothing is overwritten without a word.

/// `small_image()` built for `os/arch`, told apart by a file.
fn image_for(os: &str, arch: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/arch", format!("{arch}\n").as_bytes(), 0o644);
    Image::oci()
        .layer(Layer::gzip(b.build()))
        .platform(os, arch, None)
}

#[test]
fn explode_refuses_one_name_for_several_references() {
    let layout = tempfile::tempdir().unwrap();
    small_image().write_oci_layout(layout.path(), "v1").unwrap();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("oci:{}:v1", layout.path().display());
    let out = run_exploder([
        "explode",
        &reference,
        &reference,
        "--name",
        "team/x",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--name"), "{}", stderr(&out));
    assert!(!store.path().join("images/team/x/latest/link").exists());
}

#[test]
fn explode_refuses_a_platform_a_single_platform_image_is_not_for() {
    let layout = tempfile::tempdir().unwrap();
    image_for("linux", "amd64")
        .write_oci_layout(layout.path(), "v1")
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("oci:{}:v1", layout.path().display());
    let out = run_exploder([
        "explode",
        &reference,
        "--platform",
        "linux/arm64",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
    // Without --platform, the image is exploded as it is.
    explode_ok(&reference, store.path(), &[]);
}

#[test]
fn exploding_a_second_platform_of_a_tag_says_the_tag_moved() {
    let layout = tempfile::tempdir().unwrap();
    let index = exploder_tests::Index::oci()
        .image(image_for("linux", "amd64"))
        .image(image_for("linux", "arm64"));
    index.write_oci_layout(layout.path(), "v1").unwrap();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("oci:{}:v1", layout.path().display());
    let first = explode_ok(&reference, store.path(), &["--name", "team/x"]);
    assert!(!stderr(&first).contains("warning"), "{}", stderr(&first));
    let out = explode_ok(
        &reference,
        store.path(),
        &["--name", "team/x", "--platform", "linux/arm64"],
    );
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
}

// Issue 27, item 6: errors name the cause.

#[test]
fn a_store_path_that_is_a_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store");
    std::fs::write(&file, b"").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        vec!["explode", "oci:/nowhere:v1", "--store", file],
        vec!["gc", "--store", file],
        vec!["ls", "--store", file],
    ] {
        let out = run_exploder(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(file) && err.contains("not a directory"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("interrupted gc"), "{err}");
    }
}

#[test]
fn ls_of_a_missing_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    let out = run_exploder(["ls", "--store", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn inspect_takes_the_short_digest_ls_prints() {
    let layout = tempfile::tempdir().unwrap();
    let image = small_image();
    image.write_oci_layout(layout.path(), "v1").unwrap();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("oci:{}:v1", layout.path().display());
    explode_ok(&reference, store.path(), &["--name", "team/app"]);
    let digest = image.manifest_digest();
    let short = &digest[.."sha256:".len() + 12];
    let out = run_exploder(["inspect", short, "--store", store.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&digest), "{}", stdout(&out));
    let out = run_exploder([
        "inspect",
        "sha256:000000000000",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("starting with"), "{}", stderr(&out));
}

/// `dir` bind-mounted read-only onto itself, until dropped.
struct ReadOnly<'a>(&'a std::path::Path);

impl<'a> ReadOnly<'a> {
    fn mount(dir: &'a std::path::Path) -> ReadOnly<'a> {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "mount {args:?}: {}", stderr(&out));
        };
        run(&["--bind"]);
        let guard = ReadOnly(dir);
        run(&["-o", "remount,bind,ro"]);
        guard
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn exploding_again_what_is_linked_writes_nothing() {
    let layout = tempfile::tempdir().unwrap();
    small_image().write_oci_layout(layout.path(), "v1").unwrap();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("oci:{}:v1", layout.path().display());
    explode_ok(&reference, store.path(), &["--name", "team/app"]);
    let _ro = ReadOnly::mount(store.path());
    let out = explode_ok(&reference, store.path(), &["--name", "team/app"]);
    assert!(stdout(&out).contains("image present"), "{}", stdout(&out));
}

// Issue 27, item 7: flags.

#[test]
fn every_size_flag_takes_units() {
    let layout = tempfile::tempdir().unwrap();
    small_image().write_oci_layout(layout.path(), "v1").unwrap();
    let store = tempfile::tempdir().unwrap();
    let reference = format!("oci:{}:v1", layout.path().display());
    explode_ok(
        &reference,
        store.path(),
        &[
            "--name",
            "team/app",
            "--max-layer-bytes",
            "10MB",
            "--max-compressed-bytes",
            "1GiB",
            "--max-header-bytes",
            "64KiB",
            "--quota",
            "team=50GiB",
        ],
    );
    let out = run_exploder([
        "explode",
        &reference,
        "--max-layer-bytes",
        "10 parsecs",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("MiB"), "{}", stderr(&out));
}

#[test]
fn credentials_are_one_kind_at_a_time_and_whole() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path().to_str().unwrap();
    for creds in [
        &["--username", "bot"][..],
        &["--password", "secret"],
        &[
            "--username",
            "bot",
            "--password",
            "secret",
            "--registry-token",
            "t",
        ],
        &["--registry-token", "t", "--password", "secret"],
    ] {
        let mut args = vec!["explode", "127.0.0.1:1/team/app:v1", "--store", store];
        args.extend_from_slice(creds);
        let out = run_exploder(&args);
        assert_eq!(out.status.code(), Some(2), "{creds:?}: {}", stderr(&out));
    }
}

#[test]
fn zero_jobs_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "explode",
        "oci:/nowhere:v1",
        "--jobs",
        "0",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn dlq_replay_without_an_id_names_all() {
    let out = run_exploder(["dlq", "replay"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--all"), "{}", stderr(&out));
}

#[test]
fn the_flags_named_in_issue_27_read_their_variables() {
    let layout = tempfile::tempdir().unwrap();
    small_image().write_oci_layout(layout.path(), "v1").unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exploder_tests::exploder_bin())
        .args(["explode", &format!("oci:{}:v1", layout.path().display())])
        .env("EXPLODER_STORE", store.path())
        .env("EXPLODER_NAME", "team/fromenv")
        .env("EXPLODER_NO_FSYNC", "true")
        .env("EXPLODER_OUTPUT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], true, "{v}");
    assert!(store.path().join("images/team/fromenv/v1/link").is_file());
}
