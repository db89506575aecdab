//! `Framed<S>`: a socket with its read and write buffers. Reading is left to
//! the caller's `select!` (through [`Framed::read_more`], which is
//! cancellation-safe); decoding is the codec's; writing collects encoded
//! packets and flushes them under a deadline, so a client that stops reading
//! cannot pin the task forever.

use std::time::Duration;

use bytes::BytesMut;
use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::mqtt::codec::{self, Limits};
use crate::mqtt::encode::encode;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::{Packet, Version};

/// Largest single read: a batch of small PUBLISH packets, or a TLS record.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Per-worker-thread read buffer shared by every connection on the thread.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}
/// Buffers larger than this are released when they empty, so an idle
/// connection does not keep the memory of its largest packet.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A socket plus its buffers.
pub struct Framed<S> {
    /// The byte stream (TCP or TLS).
    pub stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// The 5.0 client's Maximum Packet Size, if it announced one.
    max_outbound: Option<usize>,
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
            max_outbound: None,
        }
    }

    /// Reads whatever the socket has into the read buffer; `Ok(0)` is EOF.
    ///
    /// An idle connection holds no read buffer: the read goes into a
    /// per-thread scratch buffer and only the bytes that arrived are kept.
    /// Cancellation-safe: bytes are copied out in the same poll that reads
    /// them, so dropping the future loses nothing.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
        std::future::poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        metrics::counter!(crate::metrics::BYTES_RECEIVED)
                            .increment(rb.filled().len() as u64);
                        self.read_buf.extend_from_slice(rb.filled());
                        Poll::Ready(Ok(rb.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
        })
        .await
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

    /// Sets the largest packet the client accepts (5.0 Maximum Packet Size).
    pub fn set_max_outbound(&mut self, max: Option<usize>) {
        self.max_outbound = max;
    }

    /// Whether `packet` fits the client's Maximum Packet Size.
    pub fn fits(&self, packet: &Packet, version: Version) -> bool {
        let Some(max) = self.max_outbound else {
            return true;
        };
        let mut probe = BytesMut::new();
        encode(packet, version, &mut probe);
        probe.len() <= max
    }

    /// Queues a packet for the next [`Framed::flush`]. If it is larger than
    /// the client accepts, its reason string and user properties are dropped,
    /// as 5.0 prescribes [MQTT-3.4.2-2] [MQTT-3.9.2-1] [MQTT-3.14.2-3].
    pub fn queue(&mut self, packet: &Packet, version: Version) {
        let start = self.write_buf.len();
        encode(packet, version, &mut self.write_buf);
        let Some(max) = self.max_outbound else {
            return;
        };
        if self.write_buf.len() - start > max {
            self.write_buf.truncate(start);
            encode(
                &without_optional_properties(packet),
                version,
                &mut self.write_buf,
            );
        }
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
        metrics::counter!(crate::metrics::BYTES_SENT).increment(self.write_buf.len() as u64);
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

/// The packet minus the properties a sender may omit to fit the receiver's
/// Maximum Packet Size: reason string and user properties.
fn without_optional_properties(packet: &Packet) -> Packet {
    use crate::mqtt::packet::Properties;
    let strip = |p: &Properties| Properties {
        reason_string: None,
        user_properties: Vec::new(),
        ..p.clone()
    };
    let mut p = packet.clone();
    match &mut p {
        Packet::ConnAck(a) => a.properties = strip(&a.properties),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties = strip(&a.properties)
        }
        Packet::SubAck(a) | Packet::UnsubAck(a) => a.properties = strip(&a.properties),
        Packet::Disconnect(d) | Packet::Auth(d) => d.properties = strip(&d.properties),
        _ => {}
    }
    p
}
