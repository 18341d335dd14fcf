//! Blob downloads that survive a broken connection.
//!
//! A blob is read through oci-client (`pull_blob_stream`, and
//! `pull_blob_stream_partial` to resume) by an async task, the pump, which
//! feeds the reader a few chunks ahead through a [`ChunkReader`]. When the
//! connection breaks mid-body the pump reopens the blob with a Range request
//! from the bytes already delivered, so the reader sees one unbroken stream
//! from byte 0, which its caller hashes whole.
//!
//! What is not a broken connection is not resumed for ever: an answer
//! whose own Content-Length is shorter than the blob's descriptor is a
//! short blob (permanent); a download slower than the floor
//! (`--min-transfer-rate` over `--transfer-rate-window`) is resumed on a
//! new connection, then failed as transient when it stays slow; a small
//! blob (a config) has a total deadline, as a manifest has.

use std::io;
use std::sync::Arc;

use backon::BackoffBuilder;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::BlobResponse;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::error::{into_io, oci_error};
use super::retry::Failure;
use super::{BlobReader, FetchError, Inner};
use crate::digest::Digest;
use crate::io::{Chunk, ChunkReader};

/// How many chunks (each up to a few tens of KiB) a blob download may run
/// ahead of its reader.
const CHANNEL_CHUNKS: usize = 16;

type BlobStream = BoxStream<'static, Result<Bytes, io::Error>>;

/// Opens the blob and starts the pump: see [`super::RegistryFetcher::blob`].
/// With a `deadline`, the whole download (opening included) must end by
/// then: see [`super::RegistryFetcher::small_blob`].
pub(super) async fn open_reader(
    inner: Arc<Inner>,
    digest: &Digest,
    size: Option<u64>,
    deadline: Option<Instant>,
) -> Result<BlobReader, FetchError> {
    let open = inner.open_blob(digest, 0, size);
    let first = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, open)
            .await
            .map_err(|_| inner.overdue(digest, 0))??,
        None => open.await?,
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(pump(inner, digest.clone(), size, deadline, first, tx));
    Ok(Box::new(ChunkReader::new(rx)))
}

impl Inner {
    /// Opens a blob download at `offset` through oci-client (a Range request
    /// past 0). Returns the byte stream and how many of its leading bytes to
    /// drop: a server that ignores Range sends the whole blob again. An
    /// answer whose Content-Length says the blob ends before `size` is a
    /// [`FetchError::ShortBlob`]: the registry serves a short blob, which
    /// is not the same as a connection that breaks before the answer's own
    /// length (resumed).
    async fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
        size: Option<u64>,
    ) -> Result<(BlobStream, u64), FetchError> {
        let what = format!("blob {digest}");
        let wanted = digest;
        let digest = digest.to_string();
        let (stream, skip, served) = self
            .call(|| async {
                let opened = if offset == 0 {
                    // Full download: oci-client also verifies the digest at EOF.
                    self.client
                        .oci
                        .pull_blob_stream(&self.oci_ref, digest.as_str())
                        .await
                        .map(|s| (s.stream, 0, s.content_length))
                } else {
                    self.client
                        .oci
                        .pull_blob_stream_partial(&self.oci_ref, digest.as_str(), offset, None)
                        .await
                        .map(|response| match response {
                            BlobResponse::Partial(s) => {
                                (s.stream, 0, s.content_length.map(|n| offset + n))
                            }
                            BlobResponse::Full(s) => (s.stream, offset, s.content_length),
                        })
                };
                opened.map_err(|e| Failure::from(oci_error(e, &what, &self.location)))
            })
            .await?;
        if let (Some(expected), Some(served)) = (size, served)
            && served < expected
        {
            return Err(FetchError::ShortBlob {
                location: self.location.clone(),
                digest: wanted.clone(),
                served,
                expected,
            });
        }
        Ok((stream, skip))
    }

    /// A small blob not received in full by its deadline (transient).
    fn overdue(&self, digest: &Digest, received: u64) -> FetchError {
        FetchError::Network {
            location: self.location.clone(),
            message: format!(
                "blob {digest} was not received in full within {:?} (twice --registry-timeout; \
                 {received} bytes arrived)",
                self.deadlines.request
            ),
        }
    }
}

/// What woke the pump.
enum Step {
    /// The next item of the download.
    Next(Option<Result<Bytes, io::Error>>),
    /// The rate window ended.
    WindowEnd,
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Feeds a blob's bytes to the reader through `tx`. When the connection
/// breaks mid-body (an error, or an early end when `size` is known), it
/// reopens the blob with a Range request from the number of bytes already
/// delivered and goes on; the reader sees one unbroken stream from byte 0,
/// which its caller hashes whole. Up to `max_attempts` resumes in a row
/// without progress are made, with the policy's backoff between them; each
/// reopen is itself retried and re-authenticated like any request, and
/// the resumes give up once no byte arrived for the stall deadline (a
/// registry behind a partition: each attempt would otherwise wait out
/// its connect timeout, attempt after attempt).
///
/// A window (`--transfer-rate-window`) that brings fewer bytes than the
/// floor asks (`--min-transfer-rate`) is a break too: the download resumes
/// on a new connection, and after `max_attempts` slow windows in a row it
/// fails as [`FetchError::TooSlow`]. A `deadline` ends the download, as a
/// transient failure, when it passes. Ends after sending `End` or
/// `Failed`, or as soon as the reader is dropped.
async fn pump(
    inner: Arc<Inner>,
    digest: Digest,
    size: Option<u64>,
    deadline: Option<Instant>,
    first: (BlobStream, u64),
    tx: mpsc::Sender<Chunk>,
) {
    let (mut stream, mut skip) = first;
    let mut offset: u64 = 0;
    let mut delays = inner.retry.backoff(inner.retry.max_attempts).build();
    let stalled = inner.deadlines.stalled;
    let mut progressed = Instant::now();
    // The current rate window: when it started, and the bytes it brought.
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    let mut slow_windows: u32 = 0;
    let fail = |e: io::Error| async { tx.send(Chunk::Failed(e)).await.ok() };
    loop {
        let window_end = inner.floor.map(|floor| window_start + floor.window);
        let step = tokio::select! {
            _ = tx.closed() => return,
            _ = sleep_until(deadline) => {
                fail(into_io(inner.overdue(&digest, offset))).await;
                return;
            }
            _ = sleep_until(window_end) => Step::WindowEnd,
            next = stream.next() => Step::Next(next),
        };
        let broken = match step {
            Step::WindowEnd => {
                let floor = inner.floor.expect("a window ends only under a floor");
                let (start, bytes) = (window_start, window_bytes);
                (window_start, window_bytes) = (Instant::now(), 0);
                if bytes >= floor.bytes_per_window() {
                    slow_windows = 0;
                    continue;
                }
                slow_windows += 1;
                let rate = (bytes as f64 / start.elapsed().as_secs_f64().max(0.001)) as u64;
                if slow_windows >= inner.retry.max_attempts {
                    fail(into_io(FetchError::TooSlow {
                        location: inner.location.clone(),
                        digest: digest.clone(),
                        received: offset,
                        rate,
                        min_rate: floor.bytes_per_sec,
                        window: floor.window,
                        tries: slow_windows,
                    }))
                    .await;
                    return;
                }
                format!(
                    "{rate} bytes/s over {:?}, under the minimum of {} bytes/s",
                    floor.window, floor.bytes_per_sec
                )
            }
            Step::Next(Some(Ok(mut chunk))) => {
                // Bytes re-sent by a server that ignored the Range header.
                let dropped = skip.min(chunk.len() as u64);
                chunk.advance(dropped as usize);
                skip -= dropped;
                if chunk.is_empty() {
                    continue;
                }
                offset += chunk.len() as u64;
                window_bytes += chunk.len() as u64;
                if let Some(size) = size.filter(|&size| offset > size) {
                    let message = format!(
                        "blob {digest} from {} is longer than its {size} bytes",
                        inner.location
                    );
                    fail(io::Error::new(io::ErrorKind::InvalidData, message)).await;
                    return;
                }
                // A reader slower than the registry (a busy disk) holds
                // the download back: that wait is not the registry's.
                let waiting = Instant::now();
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    return;
                }
                window_start += waiting.elapsed();
                // Progress: the next break gets the full set of resumes.
                delays = inner.retry.backoff(inner.retry.max_attempts).build();
                progressed = Instant::now();
                continue;
            }
            // oci-client's digest check at the end of a full download. The
            // reader's caller hashes every byte itself (from byte 0, across
            // resumes) and reports a mismatch with the digests in hand, so
            // end the stream here and let that check speak.
            Step::Next(Some(Err(e)))
                if e.get_ref()
                    .is_some_and(|e| e.is::<oci_client::errors::DigestError>()) =>
            {
                debug!(location = %inner.location, %digest, "oci-client: {e}");
                let _ = tx.send(Chunk::End).await;
                return;
            }
            Step::Next(Some(Err(e))) => e.to_string(),
            Step::Next(None) if skip == 0 && size.is_none_or(|size| offset >= size) => {
                let _ = tx.send(Chunk::End).await;
                return;
            }
            Step::Next(None) => "the connection closed early".to_string(),
        };
        let Some(delay) = delays.next() else {
            let message =
                format!("download of blob {digest} kept breaking at byte {offset}: {broken}");
            fail(into_io(FetchError::Network {
                location: inner.location.clone(),
                message,
            }))
            .await;
            return;
        };
        warn!(location = %inner.location, %digest, offset, error = %broken, "blob download broke; resuming in {delay:?}");
        let resume = async {
            tokio::time::sleep(delay).await;
            inner.open_blob(&digest, offset, size).await
        };
        let stall = progressed + stalled;
        let until = deadline.map_or(stall, |deadline| deadline.min(stall));
        match tokio::time::timeout_at(until, resume).await {
            Ok(Ok((resumed, resent))) => {
                (stream, skip) = (resumed, resent);
                // The time spent resuming is not the new connection's.
                (window_start, window_bytes) = (Instant::now(), 0);
            }
            Ok(Err(e)) => {
                fail(into_io(e)).await;
                return;
            }
            Err(_) if until < stall => {
                fail(into_io(inner.overdue(&digest, offset))).await;
                return;
            }
            Err(_) => {
                let message = format!(
                    "download of blob {digest} stalled at byte {offset}: no byte for {stalled:?} \
                     ({broken})"
                );
                fail(into_io(FetchError::Network {
                    location: inner.location.clone(),
                    message,
                }))
                .await;
                return;
            }
        }
    }
}
