//! Image archives that are not what they claim (issue 26 items 8 and 9,
//! issue 27 item 6h): a path that is not a regular file is refused at
//! once, names from a hostile archive reach the terminal escaped, and an
//! archive cut short says it is truncated. The archives are made here, as
//! skopeo and `docker save` lay them out.

use std::process::Output;
use std::time::Duration;

use exploder_tests::{Image, Layer, LayerBuilder, Registry, run_exploder_guarded};

/// Generous: each command here takes well under a second when it works.
const GUARD: Duration = Duration::from_secs(120);

fn image() -> Image {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/data", vec![7u8; 200_000], 0o644);
    Image::oci().layer(Layer::uncompressed(b.build()))
}

/// A tar of `files` (name, bytes), in order, with its end-of-archive
/// blocks, as every tar tool writes it.
fn tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Written raw: a hostile name is whatever bytes the archive holds.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// `skopeo copy … oci-archive:`: an OCI layout, tarred.
fn oci_archive(image: &Image) -> Vec<u8> {
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "v1").unwrap();
    let mut files = Vec::new();
    for name in ["oci-layout", "index.json"] {
        files.push((
            name.to_string(),
            std::fs::read(layout.path().join(name)).unwrap(),
        ));
    }
    for entry in std::fs::read_dir(layout.path().join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        files.push((
            format!("blobs/sha256/{}", entry.file_name().to_string_lossy()),
            std::fs::read(entry.path()).unwrap(),
        ));
    }
    // The layer (the biggest blob) last, as a cut would find it.
    files.sort_by_key(|(_, b)| b.len());
    tar(&files)
}

/// `docker save`: `manifest.json` naming the config and the layer tars,
/// under the member names given (a hostile archive chooses them).
fn docker_archive(images: &[(&Image, &str, &[&str])], layer_member: &str) -> Vec<u8> {
    let mut listing = Vec::new();
    let mut files = Vec::new();
    for (image, config_member, tags) in images {
        listing.push(serde_json::json!({
            "Config": config_member,
            "RepoTags": tags,
            "Layers": [layer_member],
        }));
        files.push((config_member.to_string(), image.config_bytes()));
    }
    files.push((
        "manifest.json".to_string(),
        serde_json::to_vec(&listing).unwrap(),
    ));
    files.push((
        layer_member.to_string(),
        images[0].0.layers[0].tar().to_vec(),
    ));
    tar(&files)
}

fn explode(source: &str) -> Output {
    let store = tempfile::tempdir().unwrap();
    run_exploder_guarded(
        ["explode", source, "--store", store.path().to_str().unwrap()],
        GUARD,
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_raw_escape(out: &Output) {
    for (name, bytes) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        assert!(
            !bytes.contains(&0x1b) && !bytes.contains(&0x07),
            "a raw control character reached {name}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn an_archive_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("app.tar");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let cases = [
        ("a FIFO", format!("oci-archive:{}:v1", fifo.display())),
        ("a FIFO", format!("docker-archive:{}", fifo.display())),
        (
            "a directory",
            format!("oci-archive:{}", dir.path().display()),
        ),
        ("a character device", "docker-archive:/dev/zero".to_string()),
    ];
    for (what, source) in cases {
        let out = explode(&source);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{source}: {err}");
        assert!(
            err.contains(&format!("{what}, not a regular file")),
            "{source}: {err}"
        );
    }
}

#[test]
fn a_symlink_to_an_archive_given_by_the_user_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    std::fs::write(&archive, oci_archive(&image())).unwrap();
    let link = dir.path().join("latest.tar");
    std::os::unix::fs::symlink(&archive, &link).unwrap();
    let out = explode(&format!("oci-archive:{}:v1", link.display()));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_truncated_oci_archive_says_it_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let bytes = oci_archive(&image());
    let cut = bytes.len() - 100_000;
    std::fs::write(&archive, &bytes[..cut]).unwrap();
    let out = explode(&format!("oci-archive:{}:v1", archive.display()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let layer = format!(
        "blobs/sha256/{}",
        image().layers[0].digest().trim_start_matches("sha256:")
    );
    assert!(
        err.contains(&format!(
            "{}: the archive ends early (truncated?) at byte {cut} inside {layer}",
            archive.display()
        )),
        "{err}"
    );
}

#[test]
fn a_truncated_docker_archive_says_it_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let image = image();
    let bytes = docker_archive(
        &[(&image, "config.json", &["team/app:v1"])],
        "layer/layer.tar",
    );
    let cut = bytes.len() - 100_000;
    std::fs::write(&archive, &bytes[..cut]).unwrap();
    let out = explode(&format!("docker-archive:{}", archive.display()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: the archive ends early (truncated?) at byte {cut} inside layer/layer.tar",
            archive.display()
        )),
        "{err}"
    );
}

#[test]
fn repo_tags_with_terminal_escapes_are_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let image = image();
    // Two images and no name given: the error suggests the first tag.
    let bytes = docker_archive(
        &[
            (&image, "a.json", &["\x1b]0;owned\x07team/app:v1"]),
            (&image, "b.json", &["\x1b[2Jteam/app:v2"]),
        ],
        "layer.tar",
    );
    std::fs::write(&archive, bytes).unwrap();
    let out = explode(&format!("docker-archive:{}", archive.display()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\\u001b]0;owned\\u0007team/app:v1"),
        "{}",
        stderr(&out)
    );
    assert_no_raw_escape(&out);
}

#[test]
fn a_config_name_with_terminal_escapes_is_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let image = image();
    // manifest.json names a config the archive does not have.
    let listing = serde_json::json!([{
        "Config": "\x1b[2J\x1b]0;owned\x07.json",
        "RepoTags": ["team/app:v1"],
        "Layers": ["layer.tar"],
    }]);
    let bytes = tar(&[
        (
            "manifest.json".into(),
            serde_json::to_vec(&listing).unwrap(),
        ),
        ("layer.tar".into(), image.layers[0].tar().to_vec()),
    ]);
    std::fs::write(&archive, bytes).unwrap();
    let out = explode(&format!("docker-archive:{}", archive.display()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is missing"), "{}", stderr(&out));
    assert_no_raw_escape(&out);
}

#[test]
fn a_tar_member_name_with_terminal_escapes_is_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let image = image();
    let member = "\x1b]0;owned\x07\x1b[2J.tar";
    let bytes = docker_archive(&[(&image, "config.json", &["team/app:v1"])], member);
    // Cut inside that member: the error names it.
    std::fs::write(&archive, &bytes[..bytes.len() - 100_000]).unwrap();
    let out = explode(&format!("docker-archive:{}", archive.display()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("\\u001b]0;owned"), "{}", stderr(&out));
    assert_no_raw_escape(&out);
}

#[test]
fn a_layer_path_with_terminal_escapes_is_printed_escaped() {
    let mut b = LayerBuilder::new();
    b.raw_entry(exploder_tests::layer::Entry::file(
        "\x1b]0;owned\x07/../../\x1b[2Jescape",
        b"x",
        0o644,
    ));
    let registry = Registry::start();
    registry.push(
        "team/app",
        "v1",
        &Image::oci().layer(Layer::gzip(b.build())),
    );
    let out = explode(&format!("{}/team/app:v1", registry.addr()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_no_raw_escape(&out);
}
