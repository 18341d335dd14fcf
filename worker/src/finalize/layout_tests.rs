//! Layers in either layout give the same rootfs (see
//! [`crate::layer::index::Layout`]): a store ingested before index
//! version 3 (each layer an extracted tree) keeps finalizing, also for
//! images that mix its layers with flat ones ingested since.

use std::io::Cursor;
use std::path::Path;

use exploder_common::digest::Digest;
use exploder_common::history::Origin;
use exploder_common::image::{Compression, Layer, ResolvedImage};
use exploder_common::limits::Limits;
use exploder_common::store::StoreLayout;
use tar::EntryType;

use super::{FinalizeOptions, Finalizer};
use crate::inroot::InRoot;
use crate::layer::LayerStore;
use crate::layer::parallel_tests::snapshot;
use crate::layer::unpack::LayerUnpacker;

fn tar(entries: &[(EntryType, &str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, (kind, path, data)) in entries.iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == EntryType::Directory {
            0o750
        } else {
            0o640
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000 + i as u64);
        match kind {
            EntryType::Symlink | EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A base: directories, files, a hardlink group, symlinks, a fifo.
fn lower() -> Vec<u8> {
    use EntryType::*;
    tar(&[
        (Directory, "usr/", ""),
        (Directory, "usr/lib/", ""),
        (Regular, "usr/lib/a", "alpha"),
        (Regular, "usr/lib/b", "beta"),
        (Link, "usr/lib/b2", "usr/lib/b"),
        (Symlink, "lib", "usr/lib"),
        (Fifo, "run/pipe", ""),
        (Directory, "etc/", ""),
        (Regular, "etc/conf", "one"),
        (Regular, "etc/old", "gone soon"),
    ])
}

/// What a later layer does to a base: a whiteout, an opaque directory,
/// a write through a lower symlink, a hardlink to a lower file.
fn upper() -> Vec<u8> {
    use EntryType::*;
    tar(&[
        (Regular, "etc/.wh.old", ""),
        (Regular, "lib/c", "gamma"),
        (Link, "usr/a-again", "usr/lib/a"),
        (Directory, "etc/", ""),
        (Regular, "etc/.wh..wh..opq", ""),
        (Regular, "etc/conf", "two"),
        (Regular, "usr/lib/b", "beta, rewritten"),
    ])
}

fn layer(tar: &[u8]) -> Layer {
    let digest = Digest::sha256_of(tar);
    Layer {
        digest: digest.clone(),
        diff_id: digest,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: tar.len() as u64,
        compression: Compression::None,
    }
}

/// Ingests `tar`: flat as ingest does now, or as a tree with a version 2
/// index, as ingest did before version 3.
fn ingest(store: &LayerStore, tar: &[u8], flat: bool) {
    let l = layer(tar);
    if flat {
        let blob = Box::new(Cursor::new(tar.to_vec()));
        store.ingest(&l, blob, |_| {}).unwrap().unwrap();
        return;
    }
    let dir = store.layout().layer_dir(&l.diff_id);
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut u = LayerUnpacker::new(InRoot::open(&tree, 40).unwrap(), store.limits());
    u.unpack(tar).unwrap();
    let index = u.finish().0;
    index.write(&dir.join("index")).unwrap();
    assert_eq!(std::fs::read(dir.join("index")).unwrap()[0], 2);
}

/// Explodes the two-layer image into a new store whose layers were
/// ingested flat or as trees, and returns its rootfs.
fn rootfs(dir: &Path, flat: [bool; 2]) -> std::path::PathBuf {
    let layout = StoreLayout::new(dir);
    layout.ensure().unwrap();
    let mut store = LayerStore::new(layout.clone(), Limits::default());
    store.durable = false;
    let tars = [lower(), upper()];
    for (tar, flat) in tars.iter().zip(flat) {
        ingest(&store, tar, flat);
    }
    let config = br#"{"created":"2024-01-02T03:04:05Z"}"#.to_vec();
    let manifest = b"{}".to_vec();
    let image = ResolvedImage {
        index_digest: None,
        manifest_digest: Digest::sha256_of(&manifest),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest,
        config_digest: Digest::sha256_of(&config),
        config,
        layers: tars.iter().map(|t| layer(t)).collect(),
    };
    let opts = FinalizeOptions {
        durable: false,
        ..FinalizeOptions::default()
    };
    let built = Finalizer::new(&store, opts)
        .build(&image, &Origin::default())
        .unwrap();
    assert!(built);
    layout.rootfs_dir(&image.manifest_digest)
}

#[test]
fn tree_layers_from_before_version_3_give_the_rootfs_flat_layers_give() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let flat = snapshot(&rootfs(dirs[0].path(), [true, true]));
    assert!(flat["usr/lib/c"].starts_with("file 5 bytes"), "{flat:?}");
    assert!(!flat.contains_key("etc/old"), "{flat:?}");
    for (dir, layouts) in dirs[1..]
        .iter()
        .zip([[false, false], [false, true], [true, false]])
    {
        assert_eq!(
            snapshot(&rootfs(dir.path(), layouts)),
            flat,
            "layers as trees: {layouts:?}"
        );
    }
}
