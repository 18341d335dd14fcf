//! What a script and a person read when a command fails or reports: with
//! `-o json` every failure is JSON on stdout, counts read in the singular
//! when there is one, and errors name things once and in words (issue 27,
//! item 8).

use exploder_tests::fleet::Fleet;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, explode_ok, run_exploder};

fn one_layer_image() -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755).file("etc/hostname", b"output\n", 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as the error object `-o json` promises for a failure.
#[track_caller]
fn json_error(out: &std::process::Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}; stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    });
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        v["error"]["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "{v}"
    );
    v
}

#[test]
fn inspect_of_a_missing_tag_with_json_output_prints_an_error_object() {
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store.path().join("images")).unwrap();
    let out = run_exploder([
        "inspect",
        "team/app:nothing",
        "--store",
        store.path().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json_error(&out);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("team/app:nothing") && message.contains("not linked"),
        "{v}"
    );
}

#[test]
fn a_refused_command_line_with_json_output_prints_an_error_object_with_exit_2() {
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "ls",
        "--store",
        store.path().to_str().unwrap(),
        "-o",
        "json",
        "--no-such-flag",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v = json_error(&out);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--no-such-flag"),
        "{v}"
    );
}

#[test]
fn a_usage_error_found_by_the_command_is_json_with_exit_2() {
    let store = tempfile::tempdir().unwrap();
    let out = run_exploder([
        "explode",
        "team/a:v1",
        "team/b:v1",
        "--name",
        "team/x",
        "--store",
        store.path().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v = json_error(&out);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--name"),
        "{v}"
    );
}

#[test]
fn the_output_variable_asks_for_json_errors_as_the_flag_does() {
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exploder_tests::exploder_bin())
        .args(["history", "team/app:nothing", "--store"])
        .arg(store.path())
        .env("EXPLODER_OUTPUT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    json_error(&out);
}

#[test]
fn a_failure_without_json_output_leaves_stdout_empty() {
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store.path().join("images")).unwrap();
    let out = run_exploder([
        "inspect",
        "team/app:nothing",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("not linked"), "{}", stderr(&out));
}

#[test]
fn an_image_of_one_layer_is_reported_as_1_layer() {
    let registry = Registry::start();
    registry.push("team/app", "v1", &one_layer_image());
    let store = tempfile::tempdir().unwrap();
    let out = explode_ok(
        &format!("{}/team/app:v1", registry.addr()),
        store.path(),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(1 layer, 1 ingested"), "{text}");
}

#[test]
fn a_policy_refusal_names_the_reference_once() {
    let registry = Registry::start();
    registry.push("team/app", "v1", &one_layer_image());
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"default": [{"type": "reject"}]}"#).unwrap();
    let reference = format!("{}/team/app:v1", registry.addr());
    let out = run_exploder([
        "explode",
        &reference,
        "--policy",
        policy.to_str().unwrap(),
        "--store",
        dir.path().join("store").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("refused by the signature policy"), "{err}");
    assert_eq!(err.matches(&reference).count(), 1, "{err}");
}

#[test]
fn a_missing_repository_is_reported_as_its_tag_list_not_found() {
    let fleet = Fleet::new("taglist");
    fleet.apply_topology();
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exploder.yaml");
    std::fs::write(
        &config,
        format!(
            "poll:\n  interval_seconds: 60\n  jitter: 0\n  watch:\n    \
             - registry: {}\n      repositories: [team/nothing]\n",
            registry.addr()
        ),
    )
    .unwrap();
    let out = run_exploder([
        "poll",
        "--once",
        "--config",
        config.to_str().unwrap(),
        "--store",
        dir.path().join("store").to_str().unwrap(),
        "--amqp-url",
        &fleet.amqp,
        "--redis-url",
        &fleet.redis,
        "--prefix",
        &fleet.prefix,
    ]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        said.contains("the repository's tag list was not found in")
            && said.contains("team/nothing"),
        "{said}"
    );
}
