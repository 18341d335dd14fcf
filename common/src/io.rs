//! Byte streams handed from async code to blocking code.
//!
//! The ingest reads blobs with `std::io::Read` on a blocking thread, while
//! downloads are async. [`ChunkReader`] is the blocking end of a bounded
//! channel an async task sends [`Chunk`]s into: the sender runs at most the
//! channel's bound ahead of the reader, and the end of the stream is said
//! explicitly ([`Chunk::End`]), so a sender that stops without saying so (a
//! task that panicked or was dropped) is an error, never a short stream.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// What the sending task sends the reader.
pub enum Chunk {
    /// The next bytes of the stream.
    Data(Bytes),
    /// The stream is complete.
    End,
    /// The stream failed: the reader returns this error.
    Failed(io::Error),
}

/// A `Read` over the chunks sent into a channel by an async task. Must be
/// read outside the runtime's async worker threads (`spawn_blocking`),
/// where `blocking_recv` may wait.
pub struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    chunk: Bytes,
    finished: bool,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChunkReader {
            rx,
            chunk: Bytes::new(),
            finished: false,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            if self.finished {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(chunk)) => self.chunk = chunk,
                Some(Chunk::End) => self.finished = true,
                Some(Chunk::Failed(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream's sender stopped before the end",
                    ));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(rx: mpsc::Receiver<Chunk>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ChunkReader::new(rx).read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn the_chunks_are_read_in_order_up_to_the_end() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"ab"))).unwrap();
        tx.try_send(Chunk::Data(Bytes::from_static(b"cd"))).unwrap();
        tx.try_send(Chunk::End).unwrap();
        assert_eq!(read_all(rx).unwrap(), b"abcd");
    }

    #[test]
    fn a_failure_is_the_readers_error() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"ab"))).unwrap();
        let failure = io::Error::new(io::ErrorKind::InvalidData, "bad bytes");
        tx.try_send(Chunk::Failed(failure)).unwrap();
        assert_eq!(read_all(rx).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_sender_gone_without_the_end_is_an_error_not_a_short_stream() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"ab"))).unwrap();
        drop(tx);
        assert_eq!(
            read_all(rx).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
