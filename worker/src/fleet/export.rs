//! The export job handler: one disk image of an image its image job
//! finalized and linked (`crate::export`).

use exploder_common::job::ExportJob;

use super::{Ctx, classify};
use crate::export;
use exploder_queue::protocol::JobOutcome;

impl Ctx {
    pub(super) async fn export(&self, j: &ExportJob) -> JobOutcome {
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
                JobOutcome::Done
            }
            Ok(Err(e)) => classify(e.is_transient(), e),
            Err(e) => JobOutcome::Transient(format!("export task: {e}")),
        }
    }
}
