//! The registry client's connections belong to the registry, not to the
//! repository: fetchers of hundreds of repositories of one registry,
//! all alive at once, hold about the files that a few do (issue 25).
//!
//! One test in this file on purpose: it counts the files of its own
//! process (`/proc/self/fd`), which tests running beside it would change.

use std::io::Read as _;

use exploder_common::digest::Digest;
use exploder_common::fetch::registry::{RegistryFetcher, RegistryOptions};
use exploder_common::reference::ManifestTarget;
use exploder_tests::{Image, Layer, LayerBuilder, Registry};

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Fetches the manifest and the one layer of `repository:v1`, as a worker
/// does.
async fn pull(fetcher: &RegistryFetcher, layer: &Digest) {
    let manifest = fetcher
        .manifest(&ManifestTarget::Tag("v1".into()))
        .await
        .unwrap();
    assert!(!manifest.bytes.is_empty());
    let mut reader = fetcher.blob(layer, None).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_of_hundreds_of_repositories_share_the_registrys_connections() {
    const REPOSITORIES: usize = 300;
    let registry = Registry::start();
    let mut top = LayerBuilder::new();
    top.file("etc/motd", b"hello".as_slice(), 0o644);
    let layer = Layer::gzip(top.build());
    let image = Image::oci().layer(layer.clone());
    for i in 0..REPOSITORIES {
        registry.store_directly(&format!("team/r{i:03}"), "v1", &image);
    }
    let digest: Digest = layer.digest().parse().unwrap();
    let opts = RegistryOptions {
        auth_file: Some("/nonexistent/exploder-test/config.json".into()),
        ..RegistryOptions::default()
    };
    // Every fetcher stays alive, as the ones of a busy worker do.
    let mut fetchers = Vec::new();
    let mut after_a_few = 0;
    for i in 0..REPOSITORIES {
        let fetcher =
            RegistryFetcher::new(&registry.addr(), &format!("team/r{i:03}"), &opts).unwrap();
        pull(&fetcher, &digest).await;
        fetchers.push(fetcher);
        if i == 9 {
            after_a_few = open_files();
        }
    }
    let after_all = open_files();
    eprintln!("open files after 10 repositories: {after_a_few}; after {REPOSITORIES}: {after_all}");
    assert!(
        after_all <= after_a_few + 8,
        "{after_a_few} files open after 10 repositories, {after_all} after {REPOSITORIES}"
    );
}
