//! The export job handler: one disk image of an image its image job
//! finalized and linked (`crate::export`).

use exploder_common::job::ExportJob;

use super::{Ctx, Outcome, classify};
use crate::export;

impl Ctx {
    pub(super) async fn export(&self, j: &ExportJob) -> Outcome {
        let (layout, manifest, format, durable) = (
            self.layers.layout().clone(),
            j.manifest_digest.clone(),
            j.format,
            self.config.finalize.durable,
        );
        let done = tokio::task::spawn_blocking(move || {
            export::export(&layout, &manifest, format, durable)
        })
        .await;
        match done {
            Ok(Ok(report)) => {
                tracing::info!(
                    %format,
                    bytes = report.bytes,
                    status = report.status,
                    "disk image"
                );
                Outcome::Done
            }
            Ok(Err(e)) => classify(e.is_transient(), e),
            Err(e) => Outcome::Transient(format!("export task: {e}")),
        }
    }
}
