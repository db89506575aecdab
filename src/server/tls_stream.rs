//! A TLS server stream on rustls's unbuffered API ([`accept`] → [`TlsStream`]),
//! a drop-in for `tokio_rustls::server::TlsStream` that holds no buffer
//! while the connection is idle. It sits between the listener's accepted
//! socket and the session's `Framed` (or the WebSocket layer).
//!
//! Where bytes live:
//! - **Incoming TLS** is read into a per-worker-thread scratch buffer
//!   (`TLS_SCRATCH`, one TLS record big) and decrypted there. Only what is
//!   left at the end of a poll — a partial record, or whole records kept
//!   undecrypted because the caller's buffer was full — is copied into the
//!   connection's `incoming` Vec, which is freed as soon as it empties.
//! - **Plaintext** goes straight into the caller's `ReadBuf`. A record is not
//!   decrypted when its header says its payload may not fit what is left of
//!   the buffer (unless nothing was delivered yet, so a read always makes
//!   progress); only then does the part that does not fit wait in `spill`.
//! - **Outgoing TLS** is encrypted into the scratch buffer and written
//!   straight to the socket; only what the socket refused waits in
//!   `outgoing`, and no new plaintext is accepted until that drained.
//!
//! rustls 0.23 still copies each decrypted application-data record into a
//! Vec of its own (`ReadTraffic::next_record`); that Vec lives only for the
//! poll that decrypts it.
//!
//! Endings, as with tokio-rustls 0.26: the peer's close_notify is EOF
//! (`Ok(())` with nothing read); a TCP EOF without it is an `UnexpectedEof`
//! error ([`TlsStreamError::NoCloseNotify`]), so a truncation is never taken
//! for the end; a TLS error is `InvalidData` carrying the `rustls::Error`,
//! after the alert rustls prepared was offered to the socket.
//!
//! Size: one concern, the driver of rustls's unbuffered state machine; its
//! read, write and handshake paths share the state handling and the small
//! buffer helpers at the end (`Work`, `Scratch`, `seal`, `send`, `drain`),
//! which exist only for it. Past ~600 lines mostly through documentation of
//! where each byte lives.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncodeTlsData, EncryptError,
    InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest record rustls accepts: a 5-byte header and 2^14 + 2048 bytes
/// (RFC 5246 §6.2.3; TLS 1.3 allows only 2^14 + 256). A buffer this big
/// always has room to finish the partial record left by the previous read.
const MAX_RECORD: usize = 5 + 16_384 + 2_048;

/// Size of the per-thread scratch buffer: one whole record.
const SCRATCH_LEN: usize = MAX_RECORD;

/// The working buffer never grows past the largest handshake message rustls
/// assembles (2^16 - 1 bytes, e.g. a long client certificate chain) plus a
/// record; rustls refuses larger ones anyway.
const MAX_WORK: usize = 0xffff + MAX_RECORD;

/// Plaintext encrypted per step of a write: one full record.
const MAX_PLAINTEXT: usize = 16_384;

/// Every AEAD suite adds at least a 16-byte tag, so a record of length L
/// carries at most L - 16 bytes of plaintext.
const MIN_RECORD_EXPANSION: usize = 16;

/// A read asks the socket for the caller's free space plus this much (a
/// record header and TLS 1.3's largest expansion, RFC 8446 §5.2), or for the
/// rest of the record it is in, whichever is more: a caller reading in small
/// pieces does not pull kilobytes it cannot take into `incoming`.
const READ_SLACK: usize = 5 + 256;

/// While this much is owed to the peer (responses rustls produced while
/// reading, e.g. to a flood of key updates), reading stops until the peer
/// reads: the proxy's output to a client that does not read stays bounded.
const OUTGOING_LIMIT: usize = 64 * 1024;

thread_local! {
    /// Per-worker-thread buffer for TLS bytes in flight within one poll:
    /// incoming records are read and decrypted here, outgoing ones encrypted
    /// here. Taken for the poll and put back after, so nothing is held
    /// across an `.await`; a nested use (TLS over a `TlsStream`) finds the
    /// slot empty and allocates its own.
    static TLS_SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Why a TLS stream failed, besides rustls's own errors (which are carried
/// as they are, inside an `InvalidData` `io::Error`, as tokio-rustls does),
/// so callers can tell the cases apart by downcasting.
#[derive(Debug, thiserror::Error)]
pub enum TlsStreamError {
    /// The peer closed the TCP connection before the handshake finished.
    #[error("tls handshake eof")]
    HandshakeEof,
    /// The peer closed the TCP connection without a TLS close_notify, so a
    /// truncation cannot be told from the end (kind `UnexpectedEof`, as
    /// tokio-rustls reports it).
    #[error("peer closed connection without sending TLS close_notify")]
    NoCloseNotify,
    /// rustls reported early data, which the server config never enables.
    #[error("unexpected TLS early data")]
    EarlyData,
    /// rustls reached a state this stream does not expect at this point.
    #[error("unexpected TLS state: {0}")]
    UnexpectedState(&'static str),
    /// A handshake message did not fit the largest working buffer.
    #[error("TLS handshake message larger than {MAX_WORK} bytes")]
    Oversized,
    /// rustls could not encode a handshake record.
    #[error("encoding a TLS record: {0}")]
    Encode(EncodeError),
    /// rustls could not encrypt (e.g. the key's record limit was reached).
    #[error("encrypting a TLS record: {0}")]
    Encrypt(EncryptError),
    /// A write after `shutdown()` sent close_notify.
    #[error("write after TLS close_notify")]
    WriteAfterShutdown,
    /// A read or write after the connection already failed.
    #[error("TLS connection failed earlier")]
    Failed,
    /// Both sides sent close_notify; nothing more can be written.
    #[error("TLS connection closed")]
    Closed,
}

impl TlsStreamError {
    fn into_io(self) -> io::Error {
        let kind = match self {
            TlsStreamError::HandshakeEof | TlsStreamError::NoCloseNotify => {
                io::ErrorKind::UnexpectedEof
            }
            TlsStreamError::WriteAfterShutdown | TlsStreamError::Closed => {
                io::ErrorKind::BrokenPipe
            }
            TlsStreamError::Encrypt(_) => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Where the connection stands, besides the handshake (which [`accept`]
/// finishes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and writing.
    Open,
    /// The peer sent close_notify: reads return EOF; writes still work.
    PeerClosed,
    /// TCP EOF without close_notify: reads fail with `UnexpectedEof`.
    TcpEof,
    /// A TLS error: every read and write fails.
    Failed,
}

/// A server-side TLS connection over `IO` (a `TcpStream` by default) that
/// holds no buffer while idle: see the module documentation for where bytes
/// live. Reads return plaintext and `Ok(())` with nothing filled at EOF
/// (after the peer's close_notify); writes encrypt; `shutdown` sends
/// close_notify once, then shuts the socket down.
// size_of::<TlsStream<TcpStream>>() = 1216 bytes (rustls 0.23.46, x86_64):
// 1088 of them the UnbufferedServerConnection, then the socket, three empty
// Vecs and a few words (see `idle_after_a_round_trip_holds_no_buffer`).
pub struct TlsStream<IO = TcpStream> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed: a partial record, or records
    /// kept undecrypted because the caller's buffer was full. Empty (and
    /// unallocated) while idle.
    incoming: Vec<u8>,
    /// Encrypted bytes the socket has not taken yet. Empty while idle.
    outgoing: Vec<u8>,
    /// Decrypted bytes the caller's buffer could not take, from
    /// `spill[spill_pos..]`. Empty while idle.
    spill: Vec<u8>,
    spill_pos: usize,
    phase: Phase,
    /// close_notify has been queued: no more application data.
    close_sent: bool,
}

/// Runs the TLS handshake on `io` as the server and returns the stream once
/// it is complete (the client's certificate, if any, verified) and the
/// server's last flight (TLS 1.3 session tickets included) was written.
///
/// There is no deadline inside: wrap the call in the connect timeout. An
/// error from rustls is sent to the client as an alert (when the socket
/// takes it at once) and returned as an `InvalidData` error carrying the
/// `rustls::Error`; TCP EOF before the end is `UnexpectedEof`.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        spill: Vec::new(),
        spill_pos: 0,
        phase: Phase::Open,
        close_sent: false,
    };
    std::future::poll_fn(|cx| stream.poll_input(cx, &mut ReadBuf::new(&mut []), true)).await?;
    std::future::poll_fn(|cx| stream.poll_drain_and_flush(cx)).await?;
    Ok(stream)
}

impl<IO> TlsStream<IO> {
    /// The client's certificate chain, leaf first, as verified during the
    /// handshake: the device identity on an mTLS listener. `None` when the
    /// client presented none.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The underlying socket, e.g. for its addresses.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The rustls connection, for what it negotiated (protocol version,
    /// cipher suite, ALPN).
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// Heap bytes this stream holds in buffers of its own (the capacity of
    /// its Vecs; rustls's connection state not included): 0 whenever the
    /// connection is idle, which is the point of this type; tests and
    /// memory accounting check it.
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.spill.capacity()
    }

    /// Copies spilled plaintext into `buf`; false when there is none.
    fn take_spill(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.spill.is_empty() {
            return false;
        }
        let rest = &self.spill[self.spill_pos..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.spill_pos += n;
        if self.spill_pos == self.spill.len() {
            self.spill = Vec::new();
            self.spill_pos = 0;
        }
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Runs the state machine over the leftover input and new socket bytes,
    /// delivering plaintext into `buf`. With `handshake`, returns once the
    /// handshake is complete instead of when plaintext arrived.
    fn poll_input(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        handshake: bool,
    ) -> Poll<io::Result<()>> {
        let mut work = Work::load(&self.incoming);
        let result = self.run_input(cx, buf, handshake, &mut work);
        keep(&mut self.incoming, work.input());
        result
    }

    fn run_input(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        handshake: bool,
        work: &mut Work,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        loop {
            let delivered = buf.filled().len() > before;
            if !self.outgoing.is_empty() {
                // Retried on every pass, so bytes produced while reading go
                // out as soon as the socket takes them; a Pending write
                // registered the waker for when it can.
                match drain(&mut self.io, &mut self.outgoing, cx) {
                    Poll::Ready(Err(e)) => return self.failed_io(e),
                    Poll::Pending if self.outgoing.len() > OUTGOING_LIMIT => {
                        return if delivered {
                            Poll::Ready(Ok(()))
                        } else {
                            Poll::Pending
                        };
                    }
                    _ => {}
                }
            }
            if delivered && !next_record_fits(work.input(), buf.remaining()) {
                return Poll::Ready(Ok(()));
            }
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(work.input());
            let step = match state {
                Err(e) => Step::Fail(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::Delivered;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(AppDataRecord {
                                discard: more,
                                payload,
                            }) => {
                                discard += more;
                                deliver(payload, buf, &mut self.spill);
                            }
                            Err(e) => {
                                step = Step::Fail(e);
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, &mut self.outgoing)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The bytes wait in `outgoing`, ahead of anything encrypted
                    // later, and are written at the top of the next pass.
                    transmit.done();
                    Step::Continue
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    Step::NeedInput
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::PeerClosed,
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // The config never enables early data (max_early_data_size 0).
                    Step::Error(TlsStreamError::EarlyData)
                }
                Ok(_) => Step::Error(TlsStreamError::UnexpectedState("unknown")),
            };
            work.discard(discard);
            match step {
                Step::Continue => {}
                Step::Delivered | Step::NeedInput if handshake && !self.conn.is_handshaking() => {
                    // Done; anything the client sent after its Finished was
                    // spilled (one record at most) or waits in `incoming`.
                    return Poll::Ready(Ok(()));
                }
                Step::Delivered => {}
                Step::NeedInput if delivered => return Poll::Ready(Ok(())),
                Step::NeedInput => {
                    let want = if handshake {
                        usize::MAX
                    } else {
                        buf.remaining()
                            .saturating_add(READ_SLACK)
                            .max(rest_of_record(work.input()))
                    };
                    let space = match work.space() {
                        Ok(space) => space,
                        Err(e) => return self.fail_with(e),
                    };
                    let len = space.len().min(want);
                    let mut read = ReadBuf::new(&mut space[..len]);
                    let n = match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return self.failed_io(e),
                        Poll::Ready(Ok(())) => read.filled().len(),
                    };
                    if n == 0 {
                        if handshake {
                            return self.fail_with(TlsStreamError::HandshakeEof);
                        }
                        // As tokio-rustls: an unclean close is an error, so
                        // a truncated stream is never mistaken for the end.
                        self.phase = Phase::TcpEof;
                        return Poll::Ready(Err(TlsStreamError::NoCloseNotify.into_io()));
                    }
                    work.filled(n);
                }
                Step::PeerClosed if handshake => {
                    return self.fail_with(TlsStreamError::HandshakeEof);
                }
                Step::PeerClosed => {
                    self.phase = Phase::PeerClosed;
                    return Poll::Ready(Ok(()));
                }
                Step::Fail(e) => return Poll::Ready(Err(self.fail(cx, e, work.input()))),
                Step::Error(e) => return self.fail_with(e),
            }
        }
    }

    /// Drives the state machine over the leftover input until it allows
    /// writing, then runs `op` with the writer. Records decrypted on the way
    /// (only ones already received) go to `spill`; nothing is read.
    fn write_traffic<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut Writer<'_, '_, '_, IO>) -> io::Result<R>,
    ) -> io::Result<R> {
        match self.phase {
            Phase::Failed => return Err(TlsStreamError::Failed.into_io()),
            Phase::Open | Phase::PeerClosed | Phase::TcpEof => {}
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step = match state {
                Err(e) => Step::Fail(e),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let mut writer = Writer {
                        traffic: &mut traffic,
                        io: &mut self.io,
                        outgoing: &mut self.outgoing,
                        cx,
                    };
                    let result = op(&mut writer);
                    discard_front(&mut self.incoming, discard);
                    if result.is_err() {
                        self.phase = Phase::Failed;
                    }
                    return result;
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::Continue;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(AppDataRecord {
                                discard: more,
                                payload,
                            }) => {
                                discard += more;
                                self.spill.extend_from_slice(payload);
                            }
                            Err(e) => {
                                step = Step::Fail(e);
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, &mut self.outgoing)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Step::Continue
                }
                Ok(ConnectionState::PeerClosed) => {
                    if self.phase == Phase::Open {
                        self.phase = Phase::PeerClosed;
                    }
                    Step::Continue
                }
                Ok(ConnectionState::Closed) => Step::Error(TlsStreamError::Closed),
                Ok(ConnectionState::BlockedHandshake) => Step::Error(
                    TlsStreamError::UnexpectedState("BlockedHandshake after the handshake"),
                ),
                Ok(ConnectionState::ReadEarlyData(_)) => Step::Error(TlsStreamError::EarlyData),
                Ok(_) => Step::Error(TlsStreamError::UnexpectedState("unknown")),
            };
            discard_front(&mut self.incoming, discard);
            match step {
                Step::Continue | Step::Delivered | Step::NeedInput | Step::PeerClosed => {}
                Step::Fail(e) => {
                    let mut input = std::mem::take(&mut self.incoming);
                    let error = self.fail(cx, e, &mut input);
                    self.incoming = input;
                    return Err(error);
                }
                Step::Error(TlsStreamError::Closed) => {
                    return Err(TlsStreamError::Closed.into_io());
                }
                Step::Error(e) => {
                    self.phase = Phase::Failed;
                    return Err(e.into_io());
                }
            }
        }
    }

    /// Records a TLS error: queues the alert rustls prepared for the peer,
    /// writes what the socket takes now without waiting, and returns the
    /// error as tokio-rustls does (`InvalidData` carrying it).
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error, input: &mut [u8]) -> io::Error {
        self.phase = Phase::Failed;
        // Queued records come out as `EncodeTlsData` before any input is
        // looked at. Only while some are queued: one more call would deframe
        // the offending input again, and rustls asserts (in debug builds)
        // that a fatal alert is sent once.
        while self.conn.wants_write() {
            let status = self.conn.process_tls_records(input);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if !matches!(encode(&mut data, &mut self.outgoing), Step::Continue) {
                        break;
                    }
                }
                // Plaintext decrypted before the error is of no use now.
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while traffic.next_record().is_some() {}
                }
                _ => break,
            }
        }
        let _ = drain(&mut self.io, &mut self.outgoing, cx);
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    fn fail_with(&mut self, error: TlsStreamError) -> Poll<io::Result<()>> {
        self.phase = Phase::Failed;
        Poll::Ready(Err(error.into_io()))
    }

    fn failed_io(&mut self, error: io::Error) -> Poll<io::Result<()>> {
        self.phase = Phase::Failed;
        Poll::Ready(Err(error))
    }

    /// Writes everything owed to the peer, then flushes the socket.
    fn poll_drain_and_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(drain(&mut self.io, &mut self.outgoing, cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// What one state of the rustls state machine asks of the loop driving it.
enum Step {
    /// Process the input again.
    Continue,
    /// Plaintext went to the caller (or the spill).
    Delivered,
    /// Everything received is processed: read more.
    NeedInput,
    /// The peer sent close_notify.
    PeerClosed,
    /// rustls failed: send its alert and fail.
    Fail(rustls::Error),
    /// This stream's own failure.
    Error(TlsStreamError),
}

/// Access to writing while rustls is in the `WriteTraffic` state.
struct Writer<'w, 'c, 'x, IO> {
    traffic: &'w mut rustls::unbuffered::WriteTraffic<'c, ServerConnectionData>,
    io: &'w mut IO,
    outgoing: &'w mut Vec<u8>,
    cx: &'w mut Context<'x>,
}

impl<IO: AsyncWrite + Unpin> Writer<'_, '_, '_, IO> {
    /// Encrypts `data` record by record, sending each straight to the
    /// socket, until all is sent or the socket refuses part of a record
    /// (kept in `outgoing`). Takes at least one record, even behind bytes
    /// already queued (they stay ahead of it), so a write never returns 0;
    /// returns how much plaintext was taken.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            let chunk = &data[taken..data.len().min(taken + MAX_PLAINTEXT)];
            let traffic = &mut *self.traffic;
            seal(self.io, self.outgoing, self.cx, |out| {
                traffic.encrypt(chunk, out)
            })?;
            taken += chunk.len();
            if taken == data.len() || !self.outgoing.is_empty() {
                return Ok(taken);
            }
        }
    }

    /// Sends a close_notify alert.
    fn close_notify(&mut self) -> io::Result<()> {
        let traffic = &mut *self.traffic;
        seal(self.io, self.outgoing, self.cx, |out| {
            traffic.queue_close_notify(out)
        })
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.take_spill(buf) {
            return Poll::Ready(Ok(()));
        }
        match this.phase {
            Phase::Open => this.poll_input(cx, buf, false),
            Phase::PeerClosed => Poll::Ready(Ok(())),
            Phase::TcpEof => Poll::Ready(Err(TlsStreamError::NoCloseNotify.into_io())),
            Phase::Failed => Poll::Ready(Err(TlsStreamError::Failed.into_io())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(TlsStreamError::WriteAfterShutdown.into_io()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Bounded buffering: no new plaintext is taken while the socket
        // still owes the bytes it refused before.
        ready!(drain(&mut this.io, &mut this.outgoing, cx))?;
        Poll::Ready(this.write_traffic(cx, |writer| writer.encrypt(data)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain_and_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.phase != Phase::Failed {
            this.write_traffic(cx, |writer| writer.close_notify())?;
            this.close_sent = true;
        }
        ready!(this.poll_drain_and_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO> fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("protocol", &self.conn.protocol_version())
            .field("phase", &self.phase)
            .field("close_sent", &self.close_sent)
            .field("buffered_bytes", &self.buffered_bytes())
            .finish_non_exhaustive()
    }
}

/// The buffer one poll reads and decrypts in: the thread's scratch buffer,
/// or a larger heap buffer while a handshake message bigger than a record is
/// assembled. `buf[start..end]` is the input rustls has not discarded.
struct Work {
    buf: Scratch,
    start: usize,
    end: usize,
}

impl Work {
    /// Starts from the connection's leftover input.
    fn load(leftover: &[u8]) -> Work {
        let mut buf = if leftover.len() < SCRATCH_LEN {
            Scratch::take()
        } else {
            Scratch(vec![0; leftover.len() + MAX_RECORD].into_boxed_slice())
        };
        buf.0[..leftover.len()].copy_from_slice(leftover);
        Work {
            buf,
            start: 0,
            end: leftover.len(),
        }
    }

    fn input(&mut self) -> &mut [u8] {
        &mut self.buf.0[self.start..self.end]
    }

    /// Removes `n` processed bytes from the front of the input.
    fn discard(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// The free space after the input (moved to the front first), growing
    /// the buffer when the input fills it.
    fn space(&mut self) -> Result<&mut [u8], TlsStreamError> {
        if self.start > 0 {
            self.buf.0.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.0.len() {
            if self.end >= MAX_WORK {
                return Err(TlsStreamError::Oversized);
            }
            let mut bigger = vec![0; (self.end * 2).min(MAX_WORK)].into_boxed_slice();
            bigger[..self.end].copy_from_slice(&self.buf.0[..self.end]);
            self.buf = Scratch(bigger);
        }
        Ok(&mut self.buf.0[self.end..])
    }

    /// Appends `n` bytes just read into [`Work::space`].
    fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

/// A buffer taken from [`TLS_SCRATCH`] (or allocated when the slot is
/// empty); a scratch-sized one goes back there when dropped.
struct Scratch(Box<[u8]>);

impl Scratch {
    fn take() -> Scratch {
        let buf = TLS_SCRATCH.try_with(Cell::take).ok().flatten();
        Scratch(buf.unwrap_or_else(|| vec![0; SCRATCH_LEN].into_boxed_slice()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.len() == SCRATCH_LEN {
            let buf = std::mem::take(&mut self.0);
            // Fails only while the thread is exiting; the buffer is freed then.
            let _ = TLS_SCRATCH.try_with(|slot| slot.set(Some(buf)));
        }
    }
}

/// Whether the record at the front of `input` can be decrypted into `room`
/// bytes without spilling, judged from its header's length (a record is
/// never shorter than its plaintext plus a tag). Without a whole header it
/// is worth processing: that only asks for more input.
fn next_record_fits(input: &[u8], room: usize) -> bool {
    match input {
        _ if room == 0 => false,
        [_, _, _, hi, lo, ..] => {
            usize::from(u16::from_be_bytes([*hi, *lo])).saturating_sub(MIN_RECORD_EXPANSION) <= room
        }
        _ => true,
    }
}

/// How many bytes the partial record at the front of `input` still lacks
/// (0 when unknown): one read then finishes it.
fn rest_of_record(input: &[u8]) -> usize {
    match input {
        [_, _, _, hi, lo, ..] => {
            (5 + usize::from(u16::from_be_bytes([*hi, *lo]))).saturating_sub(input.len())
        }
        _ => 0,
    }
}

/// Copies a decrypted record into the caller's buffer, spilling what does
/// not fit.
fn deliver(payload: &[u8], buf: &mut ReadBuf<'_>, spill: &mut Vec<u8>) {
    let n = payload.len().min(buf.remaining());
    buf.put_slice(&payload[..n]);
    spill.extend_from_slice(&payload[n..]);
}

/// Appends a handshake record (or alert) to `outgoing`, allocating exactly
/// what rustls says it needs.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, outgoing: &mut Vec<u8>) -> Step {
    let required = match data.encode(&mut []) {
        Ok(_) => return Step::Continue,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Step::Error(TlsStreamError::Encode(e)),
    };
    let start = outgoing.len();
    outgoing.resize(start + required, 0);
    match data.encode(&mut outgoing[start..]) {
        Ok(n) => {
            outgoing.truncate(start + n);
            Step::Continue
        }
        Err(e) => {
            outgoing.truncate(start);
            Step::Error(TlsStreamError::Encode(e))
        }
    }
}

/// Runs an encrypting operation into the scratch buffer (or an exact-size
/// heap buffer when rustls needs more, e.g. with a small fragment size) and
/// sends the result.
fn seal<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    outgoing: &mut Vec<u8>,
    cx: &mut Context<'_>,
    mut op: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let mut scratch = Scratch::take();
    match op(&mut scratch.0) {
        Ok(n) => send(io, outgoing, cx, &scratch.0[..n]),
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            drop(scratch);
            let mut big = vec![0; required_size];
            let n = op(&mut big).map_err(|e| TlsStreamError::Encrypt(e).into_io())?;
            send(io, outgoing, cx, &big[..n])
        }
        Err(e) => Err(TlsStreamError::Encrypt(e).into_io()),
    }
}

/// Writes `bytes` straight to the socket when nothing is queued before
/// them, and queues in `outgoing` what the socket does not take now.
fn send<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    outgoing: &mut Vec<u8>,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> io::Result<()> {
    let mut sent = 0;
    if outgoing.is_empty() {
        while sent < bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &bytes[sent..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
    }
    outgoing.extend_from_slice(&bytes[sent..]);
    Ok(())
}

/// Writes what `outgoing` holds; `Ready(Ok)` once it is empty (and freed).
fn drain<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    outgoing: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let mut sent = 0;
    let result = loop {
        if sent == outgoing.len() {
            break Poll::Ready(Ok(()));
        }
        match Pin::new(&mut *io).poll_write(cx, &outgoing[sent..]) {
            Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => sent += n,
            Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
            Poll::Pending => break Poll::Pending,
        }
    };
    discard_front(outgoing, sent);
    result
}

/// Removes `n` bytes from the front of `vec`, freeing it when it empties.
fn discard_front(vec: &mut Vec<u8>, n: usize) {
    if n >= vec.len() {
        *vec = Vec::new();
    } else if n > 0 {
        vec.drain(..n);
    }
}

/// Stores `bytes` as the whole of `vec`: freed when empty, reallocated when
/// its capacity is far more than needed, else reused.
fn keep(vec: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() || vec.capacity() > 2 * bytes.len() {
        *vec = Vec::new();
    }
    vec.clear();
    vec.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use futures::FutureExt;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::server::config::{ClientAuth, TlsListenerConfig};
    use crate::server::tls::{generate_dev_certs, server_config};

    const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

    /// Guards against a hang; never reached when the code works.
    const HANG: Duration = Duration::from_secs(20);

    /// A server certificate made by `generate_dev_certs`, and a separate
    /// device CA with one device certificate signed by it.
    struct Pki {
        _dir: tempfile::TempDir,
        cert_path: PathBuf,
        key_path: PathBuf,
        server_ca: CertificateDer<'static>,
        client_ca_path: PathBuf,
        device_cert: CertificateDer<'static>,
        device_key: Vec<u8>,
    }

    fn pki() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("server.crt");
        let key_path = dir.path().join("server.key");
        let ca_path = generate_dev_certs(&cert_path, &key_path).unwrap();
        let pem = std::fs::read(ca_path).unwrap();
        let server_ca = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .unwrap()
            .unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test device CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "device-42");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let device = params.signed_by(&key, &ca, &ca_key).unwrap();
        let client_ca_path = dir.path().join("devices-ca.crt");
        std::fs::write(&client_ca_path, ca.pem()).unwrap();
        Pki {
            _dir: dir,
            cert_path,
            key_path,
            server_ca,
            client_ca_path,
            device_cert: device.der().clone(),
            device_key: key.serialize_der(),
        }
    }

    /// The production server configuration (`tls::server_config`).
    fn server_cfg(pki: &Pki, client_auth: ClientAuth) -> Arc<ServerConfig> {
        server_config(&TlsListenerConfig {
            cert_path: pki.cert_path.clone(),
            key_path: pki.key_path.clone(),
            generate_dev_certs: false,
            client_auth,
            client_ca_path: pki.client_ca_path.clone(),
            ..TlsListenerConfig::default()
        })
        .unwrap()
    }

    fn client_cfg(
        pki: &Pki,
        versions: &[&'static SupportedProtocolVersion],
        with_cert: bool,
    ) -> TlsConnector {
        TlsConnector::from(client_config(pki, versions, with_cert))
    }

    fn client_config(
        pki: &Pki,
        versions: &[&'static SupportedProtocolVersion],
        with_cert: bool,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.server_ca.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let config = if with_cert {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.device_key.clone()));
            builder
                .with_client_auth_cert(vec![pki.device_cert.clone()], key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    async fn connect(
        connector: TlsConnector,
        addr: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await
    }

    /// Bytes that show misordering or loss: position-dependent.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
            .collect()
    }

    /// Sends a greeting larger than a record in one write, then echoes until
    /// the client's close_notify, then shuts down. Returns the stream.
    async fn greet_and_echo<IO: AsyncRead + AsyncWrite + Unpin>(
        mut stream: TlsStream<IO>,
        greeting: &[u8],
    ) -> TlsStream<IO> {
        stream.write_all(greeting).await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = vec![0; 8192];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await.unwrap();
        }
        stream.shutdown().await.unwrap();
        stream
    }

    /// The client writes `upload` and closes with close_notify while reading
    /// everything the server sends until the server's close_notify.
    async fn upload_and_read_all<S: AsyncRead + AsyncWrite>(client: S, upload: &[u8]) -> Vec<u8> {
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            wr.write_all(upload).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let read = async {
            let mut all = Vec::new();
            // read_to_end fails on an EOF without close_notify: this checks
            // the server's shutdown is clean.
            rd.read_to_end(&mut all).await.unwrap();
            all
        };
        tokio::join!(write, read).1
    }

    async fn echo(versions: &[&'static SupportedProtocolVersion], expect: ProtocolVersion) {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let greeting = pattern(100 * 1024, 1);
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let stream = accept(config, tcp).await.unwrap();
            assert_eq!(stream.connection().protocol_version(), Some(expect));
            greet_and_echo(stream, &greeting).await
        };
        let upload = pattern(100 * 1024 + 7, 2);
        let client = async {
            let client = connect(client_cfg(&pki, versions, false), addr)
                .await
                .unwrap();
            upload_and_read_all(client, &upload).await
        };
        let (stream, received) = tokio::time::timeout(HANG, async { tokio::join!(server, client) })
            .await
            .unwrap();
        assert_eq!(received.len(), greeting.len() + upload.len());
        assert!(received[..greeting.len()] == greeting[..], "greeting");
        assert!(received[greeting.len()..] == upload[..], "echo");
        assert_eq!(stream.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn echo_both_ways_tls13() {
        echo(TLS13, ProtocolVersion::TLSv1_3).await;
    }

    #[tokio::test]
    async fn echo_both_ways_tls12() {
        echo(TLS12, ProtocolVersion::TLSv1_2).await;
    }

    /// Forwards `from` to `to` one byte per write (`to` has Nagle off, so
    /// each byte tends to be a segment of its own).
    async fn dribble(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
        let mut buf = [0; 4096];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let _ = to.shutdown().await;
                return;
            }
            for byte in &buf[..n] {
                if to.write_all(&[*byte]).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A relay on its own port: the client's bytes reach `server` one by one,
    /// the server's come back as they are.
    async fn dribbling_relay(server: SocketAddr) -> SocketAddr {
        let (relay, addr) = listen().await;
        tokio::spawn(async move {
            let (client_side, _) = relay.accept().await.unwrap();
            let server_side = TcpStream::connect(server).await.unwrap();
            server_side.set_nodelay(true).unwrap();
            let (client_rd, mut client_wr) = client_side.into_split();
            let (mut server_rd, server_wr) = server_side.into_split();
            let back = async {
                let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
                let _ = client_wr.shutdown().await;
            };
            tokio::join!(dribble(client_rd, server_wr), back);
        });
        addr
    }

    #[tokio::test]
    async fn client_bytes_dribbled_one_by_one_through_a_relay() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let relay = dribbling_relay(addr).await;
        let config = server_cfg(&pki, ClientAuth::None);
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            greet_and_echo(accept(config, tcp).await.unwrap(), b"hello").await
        };
        // Two full records and a short one, each crossing many reads.
        let upload = pattern(2 * 16_384 + 100, 3);
        let client = async {
            let client = connect(client_cfg(&pki, TLS13, false), relay)
                .await
                .unwrap();
            upload_and_read_all(client, &upload).await
        };
        let (stream, received) = tokio::time::timeout(HANG, async { tokio::join!(server, client) })
            .await
            .unwrap();
        assert_eq!(&received[..5], b"hello");
        assert!(received[5..] == upload[..]);
        assert_eq!(stream.buffered_bytes(), 0);
    }

    /// Hands the reader one byte per read, whatever the socket holds: every
    /// record, handshake ones included, is assembled from many reads.
    struct OneByteReads(TcpStream);

    impl AsyncRead for OneByteReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let mut one = [0; 1];
            let mut read = ReadBuf::new(&mut one);
            ready!(Pin::new(&mut self.0).poll_read(cx, &mut read))?;
            buf.put_slice(read.filled());
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for OneByteReads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, data)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn every_record_assembled_from_one_byte_reads() {
        for (versions, with_cert) in [(TLS13, true), (TLS12, true), (TLS13, false)] {
            let pki = pki();
            let (listener, addr) = listen().await;
            let config = server_cfg(&pki, ClientAuth::Optional);
            let server = async {
                let (tcp, _) = listener.accept().await.unwrap();
                let stream = accept(config, OneByteReads(tcp)).await.unwrap();
                assert_eq!(stream.peer_certificates().is_some(), with_cert);
                greet_and_echo(stream, b"hi").await
            };
            let upload = pattern(16_384 + 1, 4);
            let client = async {
                let connector = client_cfg(&pki, versions, with_cert);
                upload_and_read_all(connect(connector, addr).await.unwrap(), &upload).await
            };
            let (stream, received) =
                tokio::time::timeout(HANG, async { tokio::join!(server, client) })
                    .await
                    .unwrap();
            assert!(received[2..] == upload[..]);
            assert_eq!(stream.buffered_bytes(), 0);
        }
    }

    /// The client sends `count` records of `size` bytes, all of them in the
    /// server's socket before it reads; the server reads them with a
    /// `chunk`-byte buffer. Returns the largest spill seen between reads.
    async fn small_reads(chunk: usize, count: usize, size: usize) -> usize {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let expected: Vec<u8> = (0..count).flat_map(|i| pattern(size, i as u8)).collect();
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = accept(config, tcp).await.unwrap();
            sent_rx.await.unwrap();
            let (mut got, mut max_spill, mut buf) = (Vec::new(), 0, vec![0; chunk]);
            while got.len() < expected.len() {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
                max_spill = max_spill.max(stream.spill.capacity());
                // A read never pulls more than it can deliver, plus a record.
                assert!(stream.incoming.len() <= chunk + READ_SLACK + size + 64);
            }
            assert!(got == expected);
            assert!(stream.read(&mut buf).now_or_never().is_none(), "idle");
            assert_eq!(stream.buffered_bytes(), 0);
            max_spill
        };
        let client = async {
            let mut client = connect(client_cfg(&pki, TLS13, false), addr).await.unwrap();
            for i in 0..count {
                // One write, one record.
                client.write_all(&pattern(size, i as u8)).await.unwrap();
            }
            client.flush().await.unwrap();
            sent_tx.send(()).unwrap();
            client
        };
        let (max_spill, _client) =
            tokio::time::timeout(HANG, async { tokio::join!(server, client) })
                .await
                .unwrap();
        max_spill
    }

    #[tokio::test]
    async fn many_records_in_one_read_through_a_ten_byte_buffer() {
        // A record bigger than the buffer must spill, but never more than
        // that one record: the next is not decrypted until the spill drains.
        let max_spill = small_reads(10, 200, 37).await;
        assert!(max_spill > 0 && max_spill <= 37, "{max_spill}");
    }

    #[tokio::test]
    async fn records_that_fit_whole_are_never_spilled() {
        // 64-byte buffer, 37-byte records: after one record, 27 bytes are
        // left and the next record's header says it may not fit, so it stays
        // ciphertext instead of being decrypted and spilled.
        assert_eq!(small_reads(64, 200, 37).await, 0);
    }

    #[tokio::test]
    async fn idle_after_a_round_trip_holds_no_buffer() {
        println!(
            "size_of::<TlsStream<TcpStream>>() = {} bytes, of which UnbufferedServerConnection = {}; \
             tokio_rustls::server::TlsStream<TcpStream> = {} bytes before its buffers",
            std::mem::size_of::<TlsStream<TcpStream>>(),
            std::mem::size_of::<UnbufferedServerConnection>(),
            std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>(),
        );
        // The struct stays lean: rustls's connection, the socket, three
        // Vecs and a few words.
        assert!(
            std::mem::size_of::<TlsStream<TcpStream>>()
                <= std::mem::size_of::<UnbufferedServerConnection>()
                    + std::mem::size_of::<TcpStream>()
                    + 3 * std::mem::size_of::<Vec<u8>>()
                    + 16
        );
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let request = pattern(100 * 1024, 5);
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = accept(config, tcp).await.unwrap();
            let mut got = vec![0; request.len()];
            stream.read_exact(&mut got).await.unwrap();
            assert!(got == request);
            stream.write_all(b"response").await.unwrap();
            stream.flush().await.unwrap();
            // Idle: the next read finds nothing.
            let mut buf = [0; 1024];
            assert!(stream.read(&mut buf).now_or_never().is_none());
            assert_eq!(stream.buffered_bytes(), 0, "{stream:?}");
            stream
        };
        let client = async {
            let mut client = connect(client_cfg(&pki, TLS13, false), addr).await.unwrap();
            client.write_all(&request).await.unwrap();
            let mut response = [0; 8];
            client.read_exact(&mut response).await.unwrap();
            assert_eq!(&response, b"response");
            client
        };
        tokio::time::timeout(HANG, async { tokio::join!(server, client) })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn first_data_arriving_with_the_client_finished_is_kept() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = accept(config, tcp).await.unwrap();
            // The handshake's last read brought the data record too: it was
            // decrypted into the spill, not lost.
            assert_eq!(stream.spill, b"first");
            let mut got = [0; 5];
            stream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"first");
            assert_eq!(stream.buffered_bytes(), 0);
        };
        // A hand-driven client, so its Finished and first record leave in
        // one TCP write.
        let client = async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn =
                rustls::ClientConnection::new(client_config(&pki, TLS13, false), name).unwrap();
            let (mut out, mut buf) = (Vec::new(), vec![0; 16 * 1024]);
            while conn.is_handshaking() {
                while conn.wants_write() {
                    conn.write_tls(&mut out).unwrap();
                }
                tcp.write_all(&out).await.unwrap();
                out.clear();
                let n = tcp.read(&mut buf).await.unwrap();
                conn.read_tls(&mut &buf[..n]).unwrap();
                conn.process_new_packets().unwrap();
            }
            std::io::Write::write_all(&mut conn.writer(), b"first").unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            tcp.write_all(&out).await.unwrap();
            tcp
        };
        tokio::time::timeout(HANG, async { tokio::join!(server, client) })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn mtls_identifies_the_device_and_refuses_a_client_without_certificate() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::Required);
        let run = async {
            // With a certificate: the verified leaf is the device's.
            let (server, client) = tokio::join!(
                async { accept(config.clone(), listener.accept().await.unwrap().0).await },
                connect(client_cfg(&pki, TLS13, true), addr)
            );
            let (server, _client) = (server.unwrap(), client.unwrap());
            let chain = server.peer_certificates().unwrap();
            assert_eq!(chain[0], pki.device_cert);

            // Without one: the server fails with rustls's error and tells
            // the client, which sees an error too (TLS 1.3 clients finish
            // their side first, so theirs comes on the first read).
            for versions in [TLS13, TLS12] {
                let (server, client) = tokio::join!(
                    async { accept(config.clone(), listener.accept().await.unwrap().0).await },
                    async {
                        let mut client = connect(client_cfg(&pki, versions, false), addr).await?;
                        client.read(&mut [0; 16]).await
                    }
                );
                let error = server.unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                let rustls_error = error.get_ref().unwrap().downcast_ref::<rustls::Error>();
                assert_eq!(rustls_error, Some(&rustls::Error::NoCertificatesPresented));
                assert!(client.is_err(), "{client:?}");
            }
        };
        tokio::time::timeout(HANG, run).await.unwrap();
    }

    #[tokio::test]
    async fn garbage_instead_of_client_hello_fails_with_an_alert() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let run = async {
            let (server, alert) = tokio::join!(
                async { accept(config, listener.accept().await.unwrap().0).await },
                async {
                    let mut tcp = TcpStream::connect(addr).await.unwrap();
                    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .unwrap();
                    let mut alert = Vec::new();
                    let _ = tcp.read_to_end(&mut alert).await;
                    alert
                }
            );
            let error = server.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            // A TLS alert record (content type 21) went back before the close.
            assert_eq!(alert.first(), Some(&21), "{alert:?}");
        };
        tokio::time::timeout(HANG, run).await.unwrap();
    }

    #[tokio::test]
    async fn client_closing_mid_handshake_fails_the_accept() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        // The start of a real ClientHello, then EOF.
        let mut hello = Vec::new();
        let client_config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        rustls::ClientConnection::new(Arc::new(client_config), name)
            .unwrap()
            .write_tls(&mut hello)
            .unwrap();
        let run = async {
            let (server, ()) = tokio::join!(
                async { accept(config, listener.accept().await.unwrap().0).await },
                async {
                    let mut tcp = TcpStream::connect(addr).await.unwrap();
                    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
                    tcp.shutdown().await.unwrap();
                    let _ = tcp.read_to_end(&mut Vec::new()).await;
                }
            );
            let error = server.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        };
        tokio::time::timeout(HANG, run).await.unwrap();
    }

    #[tokio::test]
    async fn close_notify_is_eof_and_shutdown_reaches_the_client_cleanly() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let run = async {
            let (server, client) = tokio::join!(
                async { accept(config, listener.accept().await.unwrap().0).await },
                connect(client_cfg(&pki, TLS12, false), addr)
            );
            let (mut server, mut client) = (server.unwrap(), client.unwrap());
            client.write_all(b"bye").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
            // EOF stays EOF; writing still works after the peer's close.
            assert_eq!(server.read(&mut [0; 8]).await.unwrap(), 0);
            server.write_all(b"late").await.unwrap();
            server.shutdown().await.unwrap();
            let mut late = Vec::new();
            // read_to_end fails on an EOF without close_notify.
            client.read_to_end(&mut late).await.unwrap();
            assert_eq!(late, b"late");
            assert!(
                server.write_all(b"x").await.is_err(),
                "write after shutdown"
            );
        };
        tokio::time::timeout(HANG, run).await.unwrap();
    }

    /// The client sends "data", then closes TCP without close_notify; returns
    /// what the server read before the error and the error.
    async fn unclean_close<S, F>(pki: &Pki, server_side: F) -> (Vec<u8>, io::Error)
    where
        F: FnOnce(TcpStream) -> S,
        S: std::future::Future<Output = Box<dyn AsyncReadUnpin>>,
    {
        let (listener, addr) = listen().await;
        let run = async {
            let (server, client) = tokio::join!(
                async { server_side(listener.accept().await.unwrap().0).await },
                connect(client_cfg(pki, TLS13, false), addr)
            );
            let (mut server, mut client) = (server, client.unwrap());
            client.write_all(b"data").await.unwrap();
            client.flush().await.unwrap();
            let (mut tcp, _) = client.into_inner();
            tcp.shutdown().await.unwrap();
            let mut got = Vec::new();
            let error = server.read_to_end(&mut got).await.unwrap_err();
            (got, error)
        };
        tokio::time::timeout(HANG, run).await.unwrap()
    }

    trait AsyncReadUnpin: AsyncRead + Unpin {}
    impl<T: AsyncRead + Unpin> AsyncReadUnpin for T {}

    #[tokio::test]
    async fn tcp_eof_without_close_notify_is_an_error_as_in_tokio_rustls() {
        let pki = pki();
        let config = server_cfg(&pki, ClientAuth::None);
        let ours = unclean_close(&pki, |tcp| {
            let config = config.clone();
            async move { Box::new(accept(config, tcp).await.unwrap()) as Box<dyn AsyncReadUnpin> }
        })
        .await;
        let theirs = unclean_close(&pki, |tcp| {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            async move { Box::new(acceptor.accept(tcp).await.unwrap()) as Box<dyn AsyncReadUnpin> }
        })
        .await;
        assert_eq!(ours.0, b"data");
        assert_eq!(theirs.0, b"data");
        assert_eq!(ours.1.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(ours.1.kind(), theirs.1.kind());
    }

    #[tokio::test]
    async fn key_update_from_the_client_mid_stream() {
        let pki = pki();
        let (listener, addr) = listen().await;
        let config = server_cfg(&pki, ClientAuth::None);
        let run = async {
            let (server, client) = tokio::join!(
                async { accept(config, listener.accept().await.unwrap().0).await },
                connect(client_cfg(&pki, TLS13, false), addr)
            );
            let (server, mut client) = (server.unwrap(), client.unwrap());
            let before = pattern(20_000, 6);
            let after = pattern(20_000, 7);
            let server = tokio::spawn(greet_and_echo(server, b"go"));
            client.write_all(&before).await.unwrap();
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&after).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(&got[..2], b"go");
            assert!(got[2..] == [before, after].concat()[..]);
            assert_eq!(server.await.unwrap().buffered_bytes(), 0);
        };
        tokio::time::timeout(HANG, run).await.unwrap();
    }

    #[tokio::test]
    async fn writing_to_a_client_that_does_not_read_buffers_at_most_a_record() {
        let pki = pki();
        // Small kernel buffers on both ends (fixed sizes turn off Linux's
        // autotuning, which could otherwise absorb megabytes).
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(8).unwrap();
        let config = server_cfg(&pki, ClientAuth::None);
        let client_socket = TcpSocket::new_v4().unwrap();
        client_socket.set_recv_buffer_size(64 * 1024).unwrap();
        let run = async {
            let (server, client) = tokio::join!(
                async { accept(config, listener.accept().await.unwrap().0).await },
                async {
                    let tcp = client_socket.connect(addr).await.unwrap();
                    let name = ServerName::try_from("localhost").unwrap();
                    client_cfg(&pki, TLS13, false).connect(name, tcp).await
                }
            );
            (server.unwrap(), client.unwrap())
        };
        let (mut server, _client) = tokio::time::timeout(HANG, run).await.unwrap();
        let big = vec![7; 8 * 1024 * 1024];
        // The client never reads: the write must stall, not buffer 8 MiB.
        let stalled =
            tokio::time::timeout(Duration::from_millis(500), server.write_all(&big)).await;
        assert!(
            stalled.is_err(),
            "8 MiB went into a client that does not read"
        );
        assert!(server.buffered_bytes() < 64 * 1024, "{server:?}");
        assert!(server.outgoing.len() <= MAX_RECORD);
    }
}
