//! The README and docs/OPERATIONS.md against the binaries: every command of
//! the README's Usage block runs, as written, against a local registry, and
//! what the help says agrees with what the README says (issue 27, item 9).
//! A change to either that makes them disagree fails here.
//!
//! The Usage block is read from README.md itself. What a test machine
//! cannot have is mapped, and only this ([`MAPPING`]):
//!
//! | README                          | here                                        |
//! |---------------------------------|---------------------------------------------|
//! | `docker.io`, `quay.io`, `registry.lab:5000` | the local registry (`127.0.0.1:PORT`), holding every image the block names |
//! | `/srv/exploded`                 | a fresh store                               |
//! | `/var/lib/docker-registry`      | the local registry's storage directory      |
//! | `~/.docker/config.json`         | an auth file with no entries                |
//! | `/etc/containers/policy.json`   | a policy accepting anything                 |
//! | `./layout`, `./app.tar`, `./saved.tar` | made in the working directory: an OCI layout, `skopeo copy` to `oci-archive:` and `docker-archive:...:team/app:v1` |
//! | `sha256:...`                    | the digest of `team/app:v2`                 |
//! | `exploder explode ...`          | `exploder explode registry.lab:5000/team/app:v2 --store /srv/exploded` |

use std::path::Path;
use std::process::Command;

use exploder_tests::image::Index;
use exploder_tests::{Image, Layer, LayerBuilder, Registry, exploder_bin, run_exploder};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md")
}

fn operations() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md"))
        .expect("docs/OPERATIONS.md")
}

/// The command lines of the first ```sh block under `## Usage`, comments
/// taken off.
fn usage_commands(readme: &str) -> Vec<String> {
    let usage = &readme[readme.find("\n## Usage").expect("a Usage section")..];
    let block = &usage[usage.find("```sh\n").expect("a sh block") + "```sh\n".len()..];
    let block = &block[..block.find("```").expect("the block ends")];
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn image(content: &str) -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/content", content.as_bytes(), 0o644);
    Image::oci().layer(Layer::gzip(b.build()))
}

fn skopeo_copy(image: &Image, dest: &str) {
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "v1").unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(dest)
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's words and what they stand for here, longest first.
fn mapping(
    registry: &Registry,
    store: &Path,
    files: &Path,
    v2_digest: &str,
) -> Vec<(String, String)> {
    let addr = registry.addr();
    vec![
        (
            "exploder explode ...".into(),
            format!(
                "exploder explode {addr}/team/app:v2 --store {}",
                store.display()
            ),
        ),
        ("docker.io".into(), addr.clone()),
        ("quay.io".into(), addr.clone()),
        ("registry.lab:5000".into(), addr.clone()),
        ("/srv/exploded".into(), store.display().to_string()),
        (
            "/var/lib/docker-registry".into(),
            registry.storage_root().display().to_string(),
        ),
        (
            "~/.docker/config.json".into(),
            files.join("auth.json").display().to_string(),
        ),
        (
            "/etc/containers/policy.json".into(),
            files.join("policy.json").display().to_string(),
        ),
        ("sha256:...".into(), v2_digest.to_string()),
    ]
}

/// Runs one README line: `VAR=value ... exploder ARGS...`.
fn run_line(line: &str, cwd: &Path) -> std::process::Output {
    let mut words = line.split_whitespace().peekable();
    let mut env = Vec::new();
    while let Some(&w) = words.peek() {
        match w.split_once('=') {
            Some((k, v)) if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                env.push((k.to_string(), v.to_string()));
                words.next();
            }
            _ => break,
        }
    }
    assert_eq!(
        words.next(),
        Some("exploder"),
        "not an exploder command: {line}"
    );
    Command::new(exploder_bin())
        .args(words)
        .envs(env)
        .current_dir(cwd)
        .output()
        .expect("spawn exploder")
}

#[test]
fn every_command_of_the_readme_usage_block_runs_against_a_local_registry() {
    let registry = Registry::start();
    registry.push("library/debian", "bookworm", &image("debian"));
    let app = image("app v2");
    registry.push("team/app", "v2", &app);
    registry.push("org/private", "1.0", &image("private"));
    registry.push("library/redis", "7", &image("redis"));
    let alpine = Index::oci()
        .image(image("alpine amd64").platform("linux", "amd64", None))
        .image(image("alpine arm64").platform("linux", "arm64", Some("v8")));
    registry.push_index("library/alpine", "3", &alpine);

    let store = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("auth.json"), r#"{"auths": {}}"#).unwrap();
    std::fs::write(
        files.path().join("policy.json"),
        r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let local = image("local");
    local
        .write_oci_layout(&cwd.path().join("layout"), "v1")
        .unwrap();
    skopeo_copy(
        &local,
        &format!("oci-archive:{}:v1", cwd.path().join("app.tar").display()),
    );
    skopeo_copy(
        &local,
        &format!(
            "docker-archive:{}:team/app:v1",
            cwd.path().join("saved.tar").display()
        ),
    );

    let mapping = mapping(
        &registry,
        store.path(),
        files.path(),
        &app.manifest_digest(),
    );
    let commands = usage_commands(&readme());
    assert!(
        commands.len() >= 20,
        "the Usage block was not found: {commands:#?}"
    );
    for written in &commands {
        let mut line = written.clone();
        for (from, to) in &mapping {
            line = line.replace(from.as_str(), to);
        }
        let out = run_line(&line, cwd.path());
        assert!(
            out.status.success(),
            "README: {written}\nran: {line}\nexit {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        // What the README's archive lines say they link: --name's
        // repository, not local/<file>.
        if written.contains("-archive:") {
            let images = store.path().join("images");
            assert!(
                images.join("team/app/v1/link").is_file(),
                "README: {written} did not link team/app:v1"
            );
            for file in ["app", "saved"] {
                assert!(
                    !images.join("local").join(file).exists(),
                    "README: {written} linked local/{file}, not what it says"
                );
            }
        }
    }
}

/// `exploder SUBCOMMAND --help`.
fn help(subcommand: &[&str]) -> String {
    let mut args = subcommand.to_vec();
    args.push("--help");
    let out = run_exploder(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_flag_the_readme_usage_block_gives_is_in_the_help_of_its_command() {
    for line in usage_commands(&readme()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "exploder") else {
            continue;
        };
        let Some(sub) = words.get(at + 1).filter(|w| !w.starts_with('-')) else {
            continue;
        };
        let sub: &str = sub;
        let text = help(&[sub]);
        for flag in words[at + 2..].iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "README: {line}\n`exploder {sub} --help` has no {flag}:\n{text}"
            );
        }
    }
}

#[test]
fn every_environment_variable_the_readme_names_is_in_some_help() {
    let readme = readme();
    let mut all_help = String::new();
    for sub in [
        "parse", "manifest", "explode", "enqueue", "poll", "gc", "ls", "inspect", "history", "rm",
        "block", "unblock", "status",
    ] {
        all_help.push_str(&help(&[sub]));
    }
    for sub in [["topology", "apply"], ["dlq", "list"], ["dlq", "replay"]] {
        all_help.push_str(&help(&sub));
    }
    for bin in ["exploder-worker", "exploder-producer"] {
        let out = Command::new(exploder_bin().with_file_name(bin))
            .arg("--help")
            .output()
            .unwrap();
        all_help.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    // As wrapped lines join.
    let all_help = all_help.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut names: Vec<&str> = readme
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|w| w.starts_with("EXPLODER_") && !w.ends_with('_'))
        .collect();
    names.sort();
    names.dedup();
    // The producer's webhook variables belong to its config file
    // (producer/src/config.rs: a token and a registry list per dialect),
    // not to flags.
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !n.starts_with("EXPLODER_WEBHOOK_"))
        .filter(|n| !all_help.contains(&format!("[env: {n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "named in the README, set by no flag: {missing:?}"
    );
}

#[test]
fn every_reference_form_in_the_readme_is_in_explode_help() {
    let text = help(&["explode"]);
    let readme = readme();
    for form in [
        "oci:",
        "oci-archive:",
        "docker-archive:",
        "docker://",
        "file://",
    ] {
        assert!(readme.contains(form), "README no longer shows {form}");
        assert!(
            text.contains(form),
            "`exploder explode --help` lacks {form}:\n{text}"
        );
    }
}

#[test]
fn authfile_help_lists_the_files_the_readme_says_are_read() {
    let text = help(&["explode"])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let readme = readme();
    let credentials = &readme[readme
        .find("### Credentials")
        .expect("a Credentials section")..];
    let paragraph = &credentials[..credentials.find("In each").expect("the file list ends")];
    let files: Vec<&str> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|f| {
            f.contains("auth.json") || f.contains("config.json") || *f == "REGISTRY_AUTH_FILE"
        })
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        assert!(
            text.contains(file),
            "the README says {file} is read; --authfile's help does not:\n{text}"
        );
    }
}

#[test]
fn operations_says_blob_source_images_are_recorded_as_from_their_registry() {
    let registry = Registry::start();
    registry.push("team/app", "v1", &image("blob source"));
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(exploder_bin())
        .args([
            "explode",
            &format!("{}/team/app:v1", registry.addr()),
            "--store",
        ])
        .arg(store.path())
        .env(
            "EXPLODER_BLOB_SOURCE",
            format!("file://{}", registry.storage_root().display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history = run_exploder([
        "history",
        "team/app:v1",
        "-o",
        "json",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.contains(&registry.addr()), "{text}");
    assert!(!text.contains("file://"), "{text}");
    let ops = operations()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        ops.contains(
            "Images read through `--blob-source` are recorded as from the registry the \
             reference names"
        ),
        "docs/OPERATIONS.md no longer says what history shows"
    );
}
