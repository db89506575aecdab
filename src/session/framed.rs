//! `Framed<S>`: a socket with its read and write buffers. Reading is left to
//! the caller's `select!` (through [`Framed::read_more`], which is
//! cancellation-safe); decoding is the codec's; writing collects encoded
//! packets and flushes them under a deadline, so a client that stops reading
//! cannot pin the task forever.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mqtt::codec::{self, Limits};
use crate::mqtt::encode::encode;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::{Packet, Version};

/// Read buffer granularity: big enough for a batch of small PUBLISH packets.
const READ_CHUNK: usize = 4096;
/// Buffers larger than this are released when they empty, so an idle
/// connection does not keep the memory of its largest packet.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A socket plus its buffers.
pub struct Framed<S> {
    /// The byte stream (TCP or TLS).
    pub stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

/// Why a write did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The socket failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not read for the whole write timeout.
    #[error("client did not read for {0:?}")]
    Timeout(Duration),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Framed {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
        }
    }

    /// Reads whatever the socket has into the read buffer; `Ok(0)` is EOF.
    /// Cancellation-safe: if the future is dropped, no bytes are lost.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.read_buf).await
    }

    /// Decodes the next complete packet from what has been read.
    pub fn decode(
        &mut self,
        version: Option<Version>,
        limits: &Limits,
    ) -> Result<Option<Packet>, ProtocolError> {
        let packet = codec::decode(&mut self.read_buf, version, limits)?;
        if self.read_buf.is_empty() && self.read_buf.capacity() > KEEP_CAPACITY {
            self.read_buf = BytesMut::new();
        }
        Ok(packet)
    }

    /// Whether unprocessed bytes are buffered.
    pub fn has_buffered_input(&self) -> bool {
        !self.read_buf.is_empty()
    }

    /// Queues a packet for the next [`Framed::flush`].
    pub fn queue(&mut self, packet: &Packet, version: Version) {
        encode(packet, version, &mut self.write_buf);
    }

    /// Whether packets are queued.
    pub fn has_pending_writes(&self) -> bool {
        !self.write_buf.is_empty()
    }

    /// Writes every queued packet, within `timeout`.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), WriteError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.write_buf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(WriteError::Timeout(timeout)),
        }
        self.write_buf.clear();
        if self.write_buf.capacity() > KEEP_CAPACITY {
            self.write_buf = BytesMut::new();
        }
        Ok(())
    }

    /// Queues one packet and flushes, for the last words before closing.
    pub async fn send_now(&mut self, packet: &Packet, version: Version, timeout: Duration) {
        self.queue(packet, version);
        // The connection is closing anyway; a failed goodbye changes nothing.
        let _ = self.flush(timeout).await;
        let _ = tokio::time::timeout(timeout, self.stream.shutdown()).await;
    }
}
