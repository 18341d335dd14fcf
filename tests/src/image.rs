//! Images and indexes made of hand-made layers, serialised exactly once so
//! that the bytes pushed, written to an OCI layout and hashed are the same.
//!
//! Hostile variants are expressed as overrides: a layer whose blob bytes are
//! not its compressed tar ([`Layer::with_blob`]), a config whose diff_id is
//! wrong ([`Layer::with_diff_id`]), or a config or manifest replaced whole.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::layer;
use crate::sha256_digest;

pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Not in the Docker spec; containerd defines and accepts it.
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
}

/// Which family of media types a manifest (and its index) uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    /// Docker image manifest schema 2 and manifest list.
    Docker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// Gzip in several members ([`layer::gzip_multi_member`]).
    GzipMultiMember,
    Zstd,
    /// Skippable frame + two frames ([`layer::zstd_multi_frame`]).
    ZstdMultiFrame,
}

impl Compression {
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => layer::gzip(tar),
            Compression::GzipMultiMember => layer::gzip_multi_member(tar),
            Compression::Zstd => layer::zstd(tar),
            Compression::ZstdMultiFrame => layer::zstd_multi_frame(tar),
        }
    }
}

/// One layer: the tar, the blob served for it, and their digests (computed
/// once, at construction, because real rootfs layers are hundreds of MB).
#[derive(Clone, Debug)]
pub struct Layer {
    tar: Vec<u8>,
    compression: Compression,
    blob: Vec<u8>,
    digest: String,
    diff_id: String,
    media_type: Option<String>,
}

impl Layer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Self {
        let blob = compression.compress(&tar);
        let diff_id = sha256_digest(&tar);
        // Hashing a rootfs-sized layer takes a while in a debug build: the
        // uncompressed blob is the tar, so hash it once.
        let digest = if compression == Compression::None {
            diff_id.clone()
        } else {
            sha256_digest(&blob)
        };
        Layer {
            digest,
            diff_id,
            tar,
            compression,
            blob,
            media_type: None,
        }
    }

    pub fn uncompressed(tar: Vec<u8>) -> Self {
        Layer::new(tar, Compression::None)
    }

    pub fn gzip(tar: Vec<u8>) -> Self {
        Layer::new(tar, Compression::Gzip)
    }

    pub fn zstd(tar: Vec<u8>) -> Self {
        Layer::new(tar, Compression::Zstd)
    }

    /// Serve `blob` instead of the compressed tar (garbage, a truncated
    /// stream, a different tar...). The descriptor digest follows the new
    /// bytes, so the registry accepts it; the diff_id still names the tar.
    /// To make the blob mismatch its descriptor, push the good image and then
    /// [`crate::Registry::tamper_blob`].
    pub fn with_blob(mut self, blob: Vec<u8>) -> Self {
        self.digest = sha256_digest(&blob);
        self.blob = blob;
        self
    }

    /// Put `diff_id` in the config's `rootfs.diff_ids` instead of the tar's.
    pub fn with_diff_id(mut self, diff_id: impl Into<String>) -> Self {
        self.diff_id = diff_id.into();
        self
    }

    /// Descriptor media type instead of the one for the format and
    /// compression.
    pub fn with_media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = Some(media_type.into());
        self
    }

    /// The uncompressed tar this layer was made from.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// The bytes served as the blob.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Descriptor digest: sha256 of [`Layer::blob`].
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the config lists in `rootfs.diff_ids`.
    pub fn diff_id(&self) -> &str {
        &self.diff_id
    }

    pub fn media_type(&self, format: Format) -> String {
        if let Some(mt) = &self.media_type {
            return mt.clone();
        }
        use media_type::*;
        match (format, self.compression) {
            (Format::Oci, Compression::None) => OCI_LAYER,
            (Format::Oci, Compression::Gzip | Compression::GzipMultiMember) => OCI_LAYER_GZIP,
            (Format::Oci, Compression::Zstd | Compression::ZstdMultiFrame) => OCI_LAYER_ZSTD,
            (Format::Docker, Compression::None) => DOCKER_LAYER,
            (Format::Docker, Compression::Gzip | Compression::GzipMultiMember) => DOCKER_LAYER_GZIP,
            (Format::Docker, Compression::Zstd | Compression::ZstdMultiFrame) => DOCKER_LAYER_ZSTD,
        }
        .to_string()
    }
}

/// A single-platform image: layers, config, manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub format: Format,
    pub layers: Vec<Layer>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Config blob bytes instead of the generated JSON.
    pub config_override: Option<Vec<u8>>,
    /// Manifest bytes instead of the generated JSON (pushed and written with
    /// the format's manifest media type).
    pub manifest_override: Option<Vec<u8>>,
}

impl Image {
    /// An empty linux/amd64 image with a PATH.
    pub fn new(format: Format) -> Self {
        Image {
            format,
            layers: Vec::new(),
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            labels: BTreeMap::new(),
            config_override: None,
            manifest_override: None,
        }
    }

    pub fn oci() -> Self {
        Image::new(Format::Oci)
    }

    pub fn docker() -> Self {
        Image::new(Format::Docker)
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self.variant = variant.map(Into::into);
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn with_config_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.config_override = Some(bytes);
        self
    }

    pub fn with_manifest_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.manifest_override = Some(bytes);
        self
    }

    /// The same layers (same tars, so same diff_ids) gzip-compressed under an
    /// OCI manifest, without blob overrides: what umoci 0.4.7 can unpack
    /// (it knows neither zstd nor Docker media types).
    pub fn for_umoci(&self) -> Image {
        let mut img = self.clone();
        img.format = Format::Oci;
        img.manifest_override = None;
        img.layers = self
            .layers
            .iter()
            .map(|l| {
                let mut g = Layer::gzip(l.tar.clone());
                g.diff_id = l.diff_id.clone();
                g
            })
            .collect();
        img
    }

    /// The config JSON: `rootfs.diff_ids` from the layers, platform, and the
    /// runtime config (Env, Entrypoint, Cmd, Labels).
    pub fn config_bytes(&self) -> Vec<u8> {
        if let Some(bytes) = &self.config_override {
            return bytes.clone();
        }
        let mut runtime = serde_json::Map::new();
        runtime.insert("Env".into(), json!(self.env));
        if !self.entrypoint.is_empty() {
            runtime.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            runtime.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.labels.is_empty() {
            runtime.insert("Labels".into(), json!(self.labels));
        }
        let mut config = json!({
            "created": "2020-09-13T12:26:40Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": Value::Object(runtime),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.diff_ids(),
            },
        });
        if let Some(variant) = &self.variant {
            config["variant"] = json!(variant);
        }
        serde_json::to_vec(&config).expect("serialise config")
    }

    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config_bytes())
    }

    pub fn manifest_media_type(&self) -> &'static str {
        match self.format {
            Format::Oci => media_type::OCI_MANIFEST,
            Format::Docker => media_type::DOCKER_MANIFEST,
        }
    }

    fn config_media_type(&self) -> &'static str {
        match self.format {
            Format::Oci => media_type::OCI_CONFIG,
            Format::Docker => media_type::DOCKER_CONFIG,
        }
    }

    pub fn manifest_bytes(&self) -> Vec<u8> {
        if let Some(bytes) = &self.manifest_override {
            return bytes.clone();
        }
        let config = self.config_bytes();
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "mediaType": l.media_type(self.format),
                    "digest": l.digest(),
                    "size": l.blob().len(),
                })
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.manifest_media_type(),
            "config": {
                "mediaType": self.config_media_type(),
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": layers,
        });
        serde_json::to_vec_pretty(&manifest).expect("serialise manifest")
    }

    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest_bytes())
    }

    /// Descriptor digests of the layers, in order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest().to_string()).collect()
    }

    /// What the config lists as `rootfs.diff_ids` (unless overridden whole).
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|l| l.diff_id().to_string())
            .collect()
    }

    /// Config and layer blobs as `(digest, bytes)`, config first.
    pub fn blobs(&self) -> Vec<(String, Vec<u8>)> {
        let config = self.config_bytes();
        let mut blobs = vec![(sha256_digest(&config), config)];
        for l in &self.layers {
            blobs.push((l.digest().to_string(), l.blob().to_vec()));
        }
        blobs
    }

    /// The platform object of an index entry.
    fn platform_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }

    /// Writes (or adds `tag` to) an OCI image layout in `dir`: `oci-layout`,
    /// `blobs/sha256/*` with exactly these bytes, and an `index.json` entry
    /// annotated `org.opencontainers.image.ref.name = tag`.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        for (digest, bytes) in self.blobs() {
            write_blob(dir, &digest, &bytes)?;
        }
        let manifest = self.manifest_bytes();
        write_blob(dir, &sha256_digest(&manifest), &manifest)?;
        add_to_layout_index(dir, self.manifest_media_type(), &manifest, tag)
    }
}

/// Several platform images under one OCI index or Docker manifest list.
#[derive(Clone, Debug)]
pub struct Index {
    pub format: Format,
    pub images: Vec<Image>,
    pub manifest_override: Option<Vec<u8>>,
}

impl Index {
    pub fn new(format: Format) -> Self {
        Index {
            format,
            images: Vec::new(),
            manifest_override: None,
        }
    }

    pub fn oci() -> Self {
        Index::new(Format::Oci)
    }

    pub fn docker() -> Self {
        Index::new(Format::Docker)
    }

    /// Adds an image; its os/architecture/variant become the entry's platform.
    pub fn image(mut self, image: Image) -> Self {
        self.images.push(image);
        self
    }

    pub fn media_type(&self) -> &'static str {
        match self.format {
            Format::Oci => media_type::OCI_INDEX,
            Format::Docker => media_type::DOCKER_MANIFEST_LIST,
        }
    }

    pub fn manifest_bytes(&self) -> Vec<u8> {
        if let Some(bytes) = &self.manifest_override {
            return bytes.clone();
        }
        let manifests: Vec<Value> = self
            .images
            .iter()
            .map(|img| {
                let m = img.manifest_bytes();
                json!({
                    "mediaType": img.manifest_media_type(),
                    "digest": sha256_digest(&m),
                    "size": m.len(),
                    "platform": img.platform_json(),
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": self.media_type(),
            "manifests": manifests,
        });
        serde_json::to_vec_pretty(&index).expect("serialise index")
    }

    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest_bytes())
    }

    /// Every image's blobs and manifest, then the index, in an OCI layout;
    /// `tag` names the index.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        for img in &self.images {
            for (digest, bytes) in img.blobs() {
                write_blob(dir, &digest, &bytes)?;
            }
            let m = img.manifest_bytes();
            write_blob(dir, &sha256_digest(&m), &m)?;
        }
        let index = self.manifest_bytes();
        write_blob(dir, &sha256_digest(&index), &index)?;
        add_to_layout_index(dir, self.media_type(), &index, tag)
    }
}

fn write_blob(dir: &Path, digest: &str, bytes: &[u8]) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .context("digest is not sha256")?;
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("mkdir {}", blobs.display()))?;
    let path = blobs.join(hex);
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))
}

/// Writes `oci-layout` and adds (or replaces) the entry for `tag` in
/// `index.json`, so several images can share one layout.
fn add_to_layout_index(dir: &Path, media_type: &str, manifest: &[u8], tag: &str) -> Result<()> {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index_path = dir.join("index.json");
    let mut index: Value = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("parse index.json")?,
        Err(_) => json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [],
        }),
    };
    const REF_NAME: &str = "org.opencontainers.image.ref.name";
    let manifests = index["manifests"]
        .as_array_mut()
        .context("index.json manifests is not an array")?;
    manifests.retain(|m| m["annotations"][REF_NAME] != json!(tag));
    manifests.push(json!({
        "mediaType": media_type,
        "digest": sha256_digest(manifest),
        "size": manifest.len(),
        "annotations": { REF_NAME: tag },
    }));
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)
        .with_context(|| format!("write {}", index_path.display()))
}
