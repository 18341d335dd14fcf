//! Room in the store before a job starts (see [`crate::space`]): a layer
//! job whose layer is missing, or an image job with a rootfs to build,
//! waits while the store is full, before it claims, fetches or verifies
//! anything. The handlers check again, on their blocking thread, right
//! before they write.

use exploder_queue::protocol::JobOutcome;

use super::Ctx;

impl Ctx {
    /// `Err(Wait)` while the store has no room to start work.
    pub(super) async fn room_to_start(&self) -> Result<(), JobOutcome> {
        let space = self.layers.space.clone();
        match tokio::task::spawn_blocking(move || space.check()).await {
            Ok(Err(full)) => Err(JobOutcome::Wait(full.to_string())),
            // A check that could not run: the work meets the real error.
            Ok(Ok(_)) | Err(_) => Ok(()),
        }
    }
}
