//! The rolling-upgrade guarantee: job messages written by an older schema
//! version still decode.
//!
//! `tests/fixtures/job-v1-*.bin` are v1 message bodies, generated once from
//! the fixed jobs below and committed. They are never regenerated: if a
//! change to `exploder_common::job` makes `v1_fixtures_decode` fail, the
//! change broke every v1 message still in a queue. Make it a new schema
//! version instead (see the `job` module documentation).
//!
//! When `SCHEMA_VERSION` is bumped, run
//! `EXPLODER_WRITE_FIXTURES=1 cargo test -p exploder-common --test job_fixtures`
//! to write `job-v<new>-*.bin` (existing fixtures are never overwritten),
//! commit them, and add a decode test for them next to the v1 one.

use std::path::PathBuf;

use exploder_common::digest::Digest;
use exploder_common::image::{Compression, Layer};
use exploder_common::job::{
    self, EmbeddedImage, ExportJob, ImageJob, Job, JobSource, LayerJob, LinkTarget, SCHEMA_VERSION,
};
use exploder_common::store::DiskFormat;

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

/// The layer job of the fixtures: every field fixed.
fn fixed_layer_job() -> Job {
    Job::Layer(LayerJob {
        id: "0123456789abcdef0123456789abcdef".into(),
        digest: digest("sha256:1111111111111111111111111111111111111111111111111111111111111111"),
        diff_id: digest("sha256:2222222222222222222222222222222222222222222222222222222222222222"),
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        size: 3_000_000_000,
        compression: Compression::Zstd,
        source: JobSource::Registry {
            registry: "registry.example.com:5000".into(),
            repository: "team/sub/app".into(),
        },
    })
}

/// The image job of the fixtures at `version`: every field fixed, every
/// variant of the nested enums that fits (version 1 carries neither who
/// decided nor the manifest and config).
fn fixed_image_job(version: u16) -> Job {
    let layer = |blob: char, tar: char, media_type: &str, size, compression| Layer {
        digest: digest(&format!("sha256:{}", blob.to_string().repeat(64))),
        diff_id: digest(&format!("sha256:{}", tar.to_string().repeat(64))),
        media_type: media_type.into(),
        size,
        compression,
    };
    Job::Image(ImageJob {
        id: "fedcba9876543210fedcba9876543210".into(),
        manifest_digest: digest(
            "sha256:3333333333333333333333333333333333333333333333333333333333333333",
        ),
        index_digest: Some(digest(
            "sha256:4444444444444444444444444444444444444444444444444444444444444444",
        )),
        config_digest: digest(
            "sha256:5555555555555555555555555555555555555555555555555555555555555555",
        ),
        layers: vec![
            layer(
                'a',
                'b',
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                31_415,
                Compression::Gzip,
            ),
            layer(
                'c',
                'd',
                "application/vnd.oci.image.layer.v1.tar",
                0,
                Compression::None,
            ),
            layer(
                'e',
                'f',
                "application/vnd.oci.image.layer.v1.tar+zstd",
                1 << 40,
                Compression::Zstd,
            ),
        ],
        links: vec![
            LinkTarget {
                namespace: "library".into(),
                image: "redis".into(),
                tag: "7.2".into(),
            },
            LinkTarget {
                namespace: "team/sub".into(),
                image: "app".into(),
                tag: "sha256-3333333333333333333333333333333333333333333333333333333333333333"
                    .into(),
            },
        ],
        source: JobSource::StorageDir {
            root: "/srv/registry".into(),
            repository: "library/redis".into(),
        },
        enqueued_at: "2024-02-29T23:59:58Z".into(),
        decided_by: match version {
            1 => String::new(),
            _ => "webhook/registry".into(),
        },
        embedded: match version {
            1 => None,
            _ => Some(EmbeddedImage {
                manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                manifest: b"{\"schemaVersion\":2}".to_vec(),
                // Not UTF-8: bytes are bytes.
                config: vec![0, 0xff, b'{', b'}', 0x80],
            }),
        },
        exports: match version {
            1 | 2 => Vec::new(),
            _ => vec![DiskFormat::Squashfs, DiskFormat::Ext4, DiskFormat::Erofs],
        },
        mirrors: match version {
            1..=3 => None,
            _ => Some("registry.example.com:5000".into()),
        },
    })
}

/// The export job of the fixtures (version 3 on).
fn fixed_export_job() -> Job {
    Job::Export(ExportJob {
        id: "00112233445566778899aabbccddeeff".into(),
        manifest_digest: digest(
            "sha256:6666666666666666666666666666666666666666666666666666666666666666",
        ),
        format: DiskFormat::Erofs,
    })
}

const V1_LAYER: &[u8] = include_bytes!("fixtures/job-v1-layer.bin");
const V1_IMAGE: &[u8] = include_bytes!("fixtures/job-v1-image.bin");
const V2_LAYER: &[u8] = include_bytes!("fixtures/job-v2-layer.bin");
const V2_IMAGE: &[u8] = include_bytes!("fixtures/job-v2-image.bin");
const V3_LAYER: &[u8] = include_bytes!("fixtures/job-v3-layer.bin");
const V3_IMAGE: &[u8] = include_bytes!("fixtures/job-v3-image.bin");
const V3_EXPORT: &[u8] = include_bytes!("fixtures/job-v3-export.bin");
const V4_LAYER: &[u8] = include_bytes!("fixtures/job-v4-layer.bin");
const V4_IMAGE: &[u8] = include_bytes!("fixtures/job-v4-image.bin");
const V4_EXPORT: &[u8] = include_bytes!("fixtures/job-v4-export.bin");

#[test]
fn v1_fixtures_decode() {
    for (what, body, expected) in [
        ("layer", V1_LAYER, fixed_layer_job()),
        ("image", V1_IMAGE, fixed_image_job(1)),
    ] {
        for header in [Some(1), None] {
            assert_eq!(
                job::decode(body, header).as_ref(),
                Ok(&expected),
                "job-v1-{what}.bin, header {header:?}"
            );
        }
    }
}

#[test]
fn v2_fixtures_decode() {
    for (what, body, expected) in [
        ("layer", V2_LAYER, fixed_layer_job()),
        ("image", V2_IMAGE, fixed_image_job(2)),
    ] {
        for header in [Some(2), None] {
            assert_eq!(
                job::decode(body, header).as_ref(),
                Ok(&expected),
                "job-v2-{what}.bin, header {header:?}"
            );
        }
    }
}

#[test]
fn v3_fixtures_decode() {
    for (what, body, expected) in [
        ("layer", V3_LAYER, fixed_layer_job()),
        ("image", V3_IMAGE, fixed_image_job(3)),
        ("export", V3_EXPORT, fixed_export_job()),
    ] {
        for header in [Some(3), None] {
            assert_eq!(
                job::decode(body, header).as_ref(),
                Ok(&expected),
                "job-v3-{what}.bin, header {header:?}"
            );
        }
    }
}

#[test]
fn v4_fixtures_decode() {
    for (what, body, expected) in [
        ("layer", V4_LAYER, fixed_layer_job()),
        ("image", V4_IMAGE, fixed_image_job(4)),
        ("export", V4_EXPORT, fixed_export_job()),
    ] {
        for header in [Some(4), None] {
            assert_eq!(
                job::decode(body, header).as_ref(),
                Ok(&expected),
                "job-v4-{what}.bin, header {header:?}"
            );
        }
    }
}

/// A producer that still feeds older workers writes exactly their bytes.
#[test]
fn encoding_as_an_older_version_matches_its_fixtures() {
    assert_eq!(job::encode_as(&fixed_layer_job(), 1), V1_LAYER);
    assert_eq!(job::encode_as(&fixed_image_job(4), 1), V1_IMAGE);
    assert_eq!(job::encode_as(&fixed_layer_job(), 2), V2_LAYER);
    assert_eq!(job::encode_as(&fixed_image_job(4), 2), V2_IMAGE);
    assert_eq!(job::encode_as(&fixed_layer_job(), 3), V3_LAYER);
    assert_eq!(job::encode_as(&fixed_image_job(4), 3), V3_IMAGE);
    assert_eq!(job::encode_as(&fixed_export_job(), 3), V3_EXPORT);
}

fn fixture_path(kind: &str, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("job-v{version}-{kind}.bin"))
}

/// The encoder still writes the committed bytes of the current version: a
/// schema change that forgot to bump the version fails here too.
#[test]
fn encoding_matches_the_current_fixtures() {
    for (kind, job) in [
        ("layer", fixed_layer_job()),
        ("image", fixed_image_job(SCHEMA_VERSION)),
        ("export", fixed_export_job()),
    ] {
        let path = fixture_path(kind, SCHEMA_VERSION);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (EXPLODER_WRITE_FIXTURES=1 writes it)",
                path.display()
            )
        });
        assert_eq!(job::encode(&job), committed, "{}", path.display());
    }
}

/// Writes the fixtures of the current schema version; a no-op unless
/// `EXPLODER_WRITE_FIXTURES=1`. Never overwrites a fixture with different
/// bytes: committed fixtures are the messages of the past.
#[test]
fn write_fixtures() {
    if std::env::var("EXPLODER_WRITE_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    for (kind, job) in [
        ("layer", fixed_layer_job()),
        ("image", fixed_image_job(SCHEMA_VERSION)),
        ("export", fixed_export_job()),
    ] {
        let path = fixture_path(kind, SCHEMA_VERSION);
        let body = job::encode(&job);
        match std::fs::read(&path) {
            Ok(existing) if existing == body => {}
            // An empty placeholder (so that `include_bytes!` compiles) is
            // filled in.
            Ok(existing) if existing.is_empty() => write(&path, &body),
            Ok(_) => panic!(
                "{} exists with different bytes: a committed fixture is never rewritten",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write(&path, &body),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

fn write(path: &std::path::Path, body: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    eprintln!("wrote {} ({} bytes)", path.display(), body.len());
}
