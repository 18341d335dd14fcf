//! Per-namespace storage quotas (`--quota NAMESPACE=SIZE`): an image whose
//! layers, counted once across everything the namespace links or has
//! requested (images in flight count: a burst cannot overshoot), would
//! take the namespace over its quota is refused before any job is
//! published or any layer fetched. The defence against someone filling a
//! shared store with huge images. `exploder explode`, `enqueue`, `poll`
//! and the producer all apply it.
//!
//! Sizes are the layers' compressed sizes from the manifests: known before
//! anything is downloaded, and what the registry itself bills.

use std::collections::{BTreeMap, HashMap};
use std::io;

use crate::digest::Digest;
use crate::image::ResolvedImage;
use crate::job::LinkTarget;
use crate::request;
use crate::store::StoreLayout;

#[derive(Clone, Debug, Default)]
pub struct Quotas {
    limits: BTreeMap<String, u64>,
}

/// Bytes as people read them: `812 B`, `4.2 MiB`, `1.3 GiB` (what
/// [`parse_size`] reads back, to the tenth).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `10GiB`, `500M`, `1T`, `4096` (bytes); binary units either way.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 500MiB, 10GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size {s:?}: units are KiB, MiB, GiB, TiB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Debug, thiserror::Error)]
#[error(
    "namespace {namespace} would use {would_use} bytes with this image, over its quota of \
     {quota} bytes (layers counted once across the namespace's linked images); remove old \
     images from it (exploder gc) or raise --quota {namespace}=SIZE"
)]
pub struct OverQuota {
    pub namespace: String,
    pub would_use: u64,
    pub quota: u64,
}

impl Quotas {
    /// From `NAMESPACE=SIZE` items.
    pub fn parse(items: &[String]) -> Result<Quotas, String> {
        let mut limits = BTreeMap::new();
        for item in items {
            let (ns, size) = item
                .split_once('=')
                .ok_or_else(|| format!("--quota {item:?}: expected NAMESPACE=SIZE"))?;
            limits.insert(ns.to_string(), parse_size(size)?);
        }
        Ok(Quotas { limits })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Refuses `image` if it would take the namespace of any of `links`
    /// over its quota.
    pub fn check_links(
        &self,
        store: &StoreLayout,
        links: &[LinkTarget],
        image: &ResolvedImage,
    ) -> io::Result<Result<(), OverQuota>> {
        for link in links {
            if let Err(over) = self.check(store, &link.namespace, image)? {
                return Ok(Err(over));
            }
        }
        Ok(Ok(()))
    }

    /// Refuses `image` for `namespace` if it would go over quota.
    pub fn check(
        &self,
        store: &StoreLayout,
        namespace: &str,
        image: &ResolvedImage,
    ) -> io::Result<Result<(), OverQuota>> {
        // A quota on `team` covers `team/x` too: check every enclosing
        // namespace that has one.
        let mut prefix = String::new();
        for part in namespace.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let Some(&quota) = self.limits.get(&prefix) else {
                continue;
            };
            let mut layers = namespace_layers(store, &prefix)?;
            for l in &image.layers {
                layers.insert(l.diff_id.clone(), l.size);
            }
            let would_use: u64 = layers.values().sum();
            if would_use > quota {
                return Ok(Err(OverQuota {
                    namespace: prefix,
                    would_use,
                    quota,
                }));
            }
        }
        Ok(Ok(()))
    }
}

/// The distinct layers (diff_id → compressed size) of every image linked
/// under `images/<namespace>/`, and of every image requested there and not
/// failed (in flight: not linked yet, its space about to be taken).
fn namespace_layers(store: &StoreLayout, namespace: &str) -> io::Result<HashMap<Digest, u64>> {
    let within = |ns: &str| ns == namespace || ns.starts_with(&format!("{namespace}/"));
    let mut layers = HashMap::new();
    for link in store.tags()? {
        if !within(&link.namespace) {
            continue;
        }
        if let Ok(Some(manifest)) = store.read_link(&link.name(), &link.tag) {
            layers.extend(image_layer_sizes(store, &manifest));
        }
    }
    let (requests, _) = request::list(store)?;
    for r in requests {
        if r.failed.is_none() && within(&r.link.namespace) {
            layers.extend(r.job.layers.iter().map(|l| (l.diff_id.clone(), l.size)));
        }
    }
    Ok(layers)
}

/// (diff_id, compressed size) of an exploded image: `image.json` lists the
/// diff_ids and `manifest.json` the sizes, in the same order.
fn image_layer_sizes(store: &StoreLayout, manifest: &Digest) -> Vec<(Digest, u64)> {
    let dir = store.digest_dir(manifest);
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&super::file::read(&dir.join(name), super::file::Kind::Image).ok()?)
            .ok()
    };
    let (Some(info), Some(m)) = (read("image.json"), read("manifest.json")) else {
        return Vec::new();
    };
    let diff_ids = info["diff_ids"].as_array().cloned().unwrap_or_default();
    let sizes = m["layers"].as_array().cloned().unwrap_or_default();
    diff_ids
        .iter()
        .zip(sizes.iter())
        .filter_map(|(d, l)| Some((d.as_str()?.parse().ok()?, l["size"].as_u64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert!(parse_size("10 parsecs").is_err());
        assert!(Quotas::parse(&["team".into()]).is_err());
        assert!(Quotas::parse(&["team=1GiB".into()]).is_ok());
    }
}
