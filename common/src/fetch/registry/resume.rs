//! Blob downloads that survive a broken connection.
//!
//! A blob is read through oci-client (`pull_blob_stream`, and
//! `pull_blob_stream_partial` to resume) by an async task, the pump, which
//! feeds the reader a few chunks ahead through a [`ChunkReader`]. When the
//! connection breaks mid-body the pump reopens the blob with a Range request
//! from the bytes already delivered, so the reader sees one unbroken stream
//! from byte 0, which its caller hashes whole.

use std::io;
use std::sync::Arc;

use backon::BackoffBuilder;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::BlobResponse;
use tokio::sync::mpsc;
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
pub(super) async fn open_reader(
    inner: Arc<Inner>,
    digest: &Digest,
    size: Option<u64>,
) -> Result<BlobReader, FetchError> {
    let first = inner.open_blob(digest, 0).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(pump(inner, digest.clone(), size, first, tx));
    Ok(Box::new(ChunkReader::new(rx)))
}

impl Inner {
    /// Opens a blob download at `offset` through oci-client (a Range request
    /// past 0). Returns the byte stream and how many of its leading bytes to
    /// drop: a server that ignores Range sends the whole blob again.
    async fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<(BlobStream, u64), FetchError> {
        let what = format!("blob {digest}");
        let digest = digest.to_string();
        self.call(|| async {
            let opened = if offset == 0 {
                // Full download: oci-client also verifies the digest at EOF.
                self.client
                    .oci
                    .pull_blob_stream(&self.oci_ref, digest.as_str())
                    .await
                    .map(|s| (s.stream, 0))
            } else {
                self.client
                    .oci
                    .pull_blob_stream_partial(&self.oci_ref, digest.as_str(), offset, None)
                    .await
                    .map(|response| match response {
                        BlobResponse::Partial(s) => (s.stream, 0),
                        BlobResponse::Full(s) => (s.stream, offset),
                    })
            };
            opened.map_err(|e| Failure::from(oci_error(e, &what, &self.location)))
        })
        .await
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
/// its connect timeout, attempt after attempt). Ends after sending `End`
/// or `Failed`, or as soon as the reader is dropped.
async fn pump(
    inner: Arc<Inner>,
    digest: Digest,
    size: Option<u64>,
    first: (BlobStream, u64),
    tx: mpsc::Sender<Chunk>,
) {
    let (mut stream, mut skip) = first;
    let mut offset: u64 = 0;
    let mut delays = inner.retry.backoff(inner.retry.max_attempts).build();
    let stalled = inner.deadlines.stalled;
    let mut progressed = tokio::time::Instant::now();
    let fail = |e: io::Error| async { tx.send(Chunk::Failed(e)).await.ok() };
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = stream.next() => next,
        };
        let broken = match next {
            Some(Ok(mut chunk)) => {
                // Bytes re-sent by a server that ignored the Range header.
                let dropped = skip.min(chunk.len() as u64);
                chunk.advance(dropped as usize);
                skip -= dropped;
                if chunk.is_empty() {
                    continue;
                }
                offset += chunk.len() as u64;
                if let Some(size) = size.filter(|&size| offset > size) {
                    let message = format!(
                        "blob {digest} from {} is longer than its {size} bytes",
                        inner.location
                    );
                    fail(io::Error::new(io::ErrorKind::InvalidData, message)).await;
                    return;
                }
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    return;
                }
                // Progress: the next break gets the full set of resumes.
                delays = inner.retry.backoff(inner.retry.max_attempts).build();
                progressed = tokio::time::Instant::now();
                continue;
            }
            // oci-client's digest check at the end of a full download. The
            // reader's caller hashes every byte itself (from byte 0, across
            // resumes) and reports a mismatch with the digests in hand, so
            // end the stream here and let that check speak.
            Some(Err(e))
                if e.get_ref()
                    .is_some_and(|e| e.is::<oci_client::errors::DigestError>()) =>
            {
                debug!(location = %inner.location, %digest, "oci-client: {e}");
                let _ = tx.send(Chunk::End).await;
                return;
            }
            Some(Err(e)) => e.to_string(),
            None if skip == 0 && size.is_none_or(|size| offset >= size) => {
                let _ = tx.send(Chunk::End).await;
                return;
            }
            None => "the connection closed early".to_string(),
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
            inner.open_blob(&digest, offset).await
        };
        match tokio::time::timeout_at(progressed + stalled, resume).await {
            Ok(Ok((resumed, resent))) => (stream, skip) = (resumed, resent),
            Ok(Err(e)) => {
                fail(into_io(e)).await;
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
