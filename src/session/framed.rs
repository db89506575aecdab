//! `Framed<S>`: a socket with its read and write buffers. Reading is left to
//! the caller's `select!` (through [`Framed::read_more`], which is
//! cancellation-safe); decoding is the codec's; writing collects encoded
//! packets and flushes them under a deadline, so a client that stops reading
//! cannot pin the task forever.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::BytesMut;
use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    /// Allocated while bytes wait in either direction: an idle connection
    /// holds one empty pointer instead of two empty buffers.
    bufs: Option<Box<Buffers>>,
    /// The 5.0 client's Maximum Packet Size, if it announced one.
    max_outbound: Option<NonZeroU32>,
}

/// Bytes read and not yet decoded; packets encoded and not yet written.
#[derive(Default)]
struct Buffers {
    read: BytesMut,
    write: BytesMut,
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
            bufs: None,
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
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// [`Framed::read_more`] as a poll, for the connection's hand-polled wait.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.release_empty();
        SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    metrics::counter!(crate::metrics::BYTES_RECEIVED)
                        .increment(rb.filled().len() as u64);
                    let bufs = self.bufs.get_or_insert_with(Box::default);
                    bufs.read.extend_from_slice(rb.filled());
                    Poll::Ready(Ok(rb.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }

    /// Decodes the next complete packet from what has been read.
    pub fn decode(
        &mut self,
        version: Option<Version>,
        limits: &Limits,
    ) -> Result<Option<Packet>, ProtocolError> {
        let Some(bufs) = self.bufs.as_mut() else {
            return Ok(None);
        };
        let packet = codec::decode(&mut bufs.read, version, limits)?;
        if bufs.read.is_empty() && bufs.read.capacity() > KEEP_CAPACITY {
            bufs.read = BytesMut::new();
        }
        Ok(packet)
    }

    /// Frees the buffers once both are empty.
    fn release_empty(&mut self) {
        if self
            .bufs
            .as_ref()
            .is_some_and(|b| b.read.is_empty() && b.write.is_empty())
        {
            self.bufs = None;
        }
    }

    /// Whether unprocessed bytes are buffered.
    pub fn has_buffered_input(&self) -> bool {
        self.bufs.as_ref().is_some_and(|b| !b.read.is_empty())
    }

    /// Sets the largest packet the client accepts (5.0 Maximum Packet Size).
    pub fn set_max_outbound(&mut self, max: Option<u32>) {
        self.max_outbound = max.and_then(NonZeroU32::new);
    }

    /// The client's Maximum Packet Size, if it set one.
    fn max_outbound(&self) -> Option<usize> {
        self.max_outbound.map(|m| m.get() as usize)
    }

    /// Whether `packet` fits the client's Maximum Packet Size.
    pub fn fits(&self, packet: &Packet, version: Version) -> bool {
        let Some(max) = self.max_outbound() else {
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
        let max = self.max_outbound();
        let write = &mut self.bufs.get_or_insert_with(Box::default).write;
        let start = write.len();
        encode(packet, version, write);
        let Some(max) = max else {
            return;
        };
        if write.len() - start > max {
            write.truncate(start);
            encode(&without_optional_properties(packet), version, write);
        }
    }

    /// Whether packets are queued.
    pub fn has_pending_writes(&self) -> bool {
        self.bufs.as_ref().is_some_and(|b| !b.write.is_empty())
    }

    /// Writes every queued packet, within `timeout`.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), WriteError> {
        let Some(bufs) = self.bufs.as_mut().filter(|b| !b.write.is_empty()) else {
            return Ok(());
        };
        let write = async {
            self.stream.write_all(&bufs.write).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(WriteError::Timeout(timeout)),
        }
        metrics::counter!(crate::metrics::BYTES_SENT).increment(bufs.write.len() as u64);
        bufs.write.clear();
        if bufs.write.capacity() > KEEP_CAPACITY {
            bufs.write = BytesMut::new();
        }
        self.release_empty();
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
