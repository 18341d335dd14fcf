//! Progress bars for `exploder explode` on a terminal: one bar per layer
//! being ingested (bytes) and one for the layers of the image.

use std::collections::HashMap;
use std::sync::Mutex;

use exploder_common::digest::Digest;
use exploder_common::image::{Layer, ResolvedImage};
use exploder_worker::explode::Observer;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    /// Layers of the current image ingested so far.
    layers: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            layers: Mutex::new(None),
        }
    }
}

impl Observer for Bars {
    fn resolved(&self, reference: &str, image: &ResolvedImage, missing: &[Layer]) {
        let _ = self.multi.println(format!(
            "{reference}: {} ({}, {} to ingest)",
            image.manifest_digest,
            crate::commands::count(image.layers.len(), "layer"),
            missing.len()
        ));
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}",
        )
        .expect("template")
        .progress_chars("=> ");
        let overall = self.multi.add(ProgressBar::new(missing.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>14} {pos}/{len} ingested").expect("template"),
        );
        overall.set_prefix("layers");
        if let Some(old) = self.layers.lock().expect("layers lock").replace(overall) {
            old.finish_and_clear();
        }
        let mut bars = self.bars.lock().expect("bars lock");
        for l in missing {
            let bar = self.multi.add(ProgressBar::new(l.size));
            bar.set_style(style.clone());
            bar.set_prefix(l.digest.hex()[..12].to_string());
            bars.insert(l.diff_id.clone(), bar);
        }
    }

    fn layer_bytes(&self, diff_id: &Digest, bytes: u64) {
        if let Some(b) = self.bars.lock().expect("bars lock").get(diff_id) {
            b.inc(bytes);
        }
    }

    fn layer_done(&self, diff_id: &Digest) {
        if let Some(b) = self.bars.lock().expect("bars lock").remove(diff_id) {
            b.finish_and_clear();
        }
        if let Some(overall) = self.layers.lock().expect("layers lock").as_ref() {
            overall.inc(1);
            if overall.position() == overall.length().unwrap_or(0) {
                overall.finish_and_clear();
            }
        }
    }
}
