//! The TCP forwarders in front of the embedded broker's mock brokers: one
//! listener per broker, each advertised in metadata instead of the broker's
//! own ephemeral port, so every Kafka connection (the proxy's own and other
//! processes') passes through here.
//!
//! A connection starts in the handshake phase: while the client's requests
//! are ApiVersions, the forwarder serves v3/v4 for the mock (see
//! [`super::api_versions`]), one request at a time. At the first other
//! request it writes what it has buffered to the broker and becomes a plain
//! byte copy for the rest of the connection. That is safe because clients
//! (librdkafka, Java, kafka-python, kafkajs) send ApiVersions only when a
//! connection opens, retrying on the same connection only after an
//! UNSUPPORTED_VERSION answer, which the handshake phase also covers; a later
//! ApiVersions would reach the mock unchanged, as it did before forwarders.
//!
//! A broker taken down with `broker_down` is taken down here, not in the
//! mock: its forwarder closes every relayed connection and closes each new
//! one as soon as it is accepted, until `broker_up`. The mock's own
//! listener stays open: librdkafka's mock re-binds a downed broker's port
//! on the way up and aborts the process when another socket took that
//! ephemeral port meanwhile, which happened once in five runs of the
//! integration tests (one process, many sockets).
//!
//! The forwarders run on a thread and runtime of their own ([`Relays`]), as
//! the mock brokers do: on the proxy's runtime a relayed response waited in
//! the run queue behind hundreds of device tasks, which showed as PUBACK
//! latency in the ingest benchmark.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api_versions::{self, Plan, WireError, API_VERSIONS_KEY};

/// Copy buffer per direction once a connection is past its handshake:
/// Fetch responses and Produce batches are often tens of KiB, and larger
/// reads mean fewer system calls on the load tests' data path.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// The largest ApiVersions request or response the handshake phase buffers;
/// real ones are well under 1 KiB. A bigger "ApiVersions" request is relayed
/// without interpretation.
const MAX_HANDSHAKE_FRAME: usize = 64 * 1024;

/// Why a forwarded connection ended early (logged at debug: clients
/// reconnect, and a broker taken down ends connections on purpose).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("connect to mock broker {target}: {source}")]
    Connect {
        target: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("mock broker sent a {0}-byte ApiVersions response")]
    ResponseTooLarge(usize),
}

/// The forwarders' own thread, with a single-threaded runtime; stopping it
/// ends every forwarder and every connection through them.
pub(super) struct Relays {
    handle: tokio::runtime::Handle,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Relays {
    /// Starts the thread.
    pub(super) fn start() -> std::io::Result<Relays> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka-relay".into())
            .spawn(move || runtime.block_on(stopped.cancelled()))?;
        Ok(Relays {
            handle,
            stop,
            thread: Some(thread),
        })
    }

    /// Forwards connections accepted on `listener` (a non-blocking socket
    /// bound at `addr`) to the mock broker at `target` while `up`.
    pub(super) fn spawn(
        &self,
        listener: std::net::TcpListener,
        addr: SocketAddr,
        target: SocketAddr,
        up: watch::Receiver<bool>,
    ) {
        let stop = self.stop.clone();
        self.handle.spawn(async move {
            // Registered with this runtime's reactor, so inside its task.
            match TcpListener::from_std(listener) {
                Ok(l) => serve(l, addr, target, up, stop).await,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "embedded Kafka forwarder cannot listen")
                }
            }
        });
    }

    /// Stops every forwarder and waits for the thread.
    pub(super) fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts on `listener` (bound at `addr`) and relays each connection to
/// the mock broker at `target` until `stop`. While `up` is false the relays
/// end and every new connection is closed as soon as it is accepted.
async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    up: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::debug!(%addr, error = %e, "embedded Kafka forwarder: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !*up.borrow() {
            // The broker is down: the client's connection ends at once.
            drop(client);
            continue;
        }
        let stop = stop.clone();
        let mut up = up.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                // Taken down: the connection closes, as a dead broker's would.
                _ = up.wait_for(|up| !*up) => {}
                r = relay(client, target) => if let Err(e) = r {
                    tracing::debug!(%target, error = %e, "embedded Kafka forwarder: connection ended");
                },
            }
        });
    }
}

/// One client connection: the handshake phase, then a plain copy.
async fn relay(mut client: TcpStream, target: SocketAddr) -> Result<(), RelayError> {
    let mut broker = TcpStream::connect(target)
        .await
        .map_err(|source| RelayError::Connect { target, source })?;
    // Requests and responses are whole frames written at once; Nagle would
    // only add the delayed-ACK wait to every small request.
    client.set_nodelay(true)?;
    broker.set_nodelay(true)?;
    let Some(pending) = handshake(&mut client, &mut broker).await? else {
        return Ok(());
    };
    broker.write_all(&pending).await?;
    drop(pending);
    // From here on neither side's bytes are looked at.
    tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut broker,
        COPY_BUFFER_BYTES,
        COPY_BUFFER_BYTES,
    )
    .await?;
    Ok(())
}

/// Serves the client's ApiVersions requests one at a time. Returns the bytes
/// read from the client from the first other request on (to be written to
/// the broker before copying), or `None` if the client closed first.
async fn handshake(
    client: &mut TcpStream,
    broker: &mut TcpStream,
) -> Result<Option<BytesMut>, RelayError> {
    let mut from_client = BytesMut::with_capacity(512);
    let mut out = BytesMut::with_capacity(512);
    let mut from_broker = BytesMut::with_capacity(512);
    loop {
        let start = loop {
            match api_versions::peek_request(&from_client) {
                Some(start) => break start,
                None => {
                    if client.read_buf(&mut from_client).await? == 0 {
                        return Ok(None);
                    }
                }
            }
        };
        // Anything but a well-formed, modest ApiVersions request ends the
        // handshake; the broker judges it.
        let start = match start {
            Ok(s) if s.api_key == API_VERSIONS_KEY && s.size <= MAX_HANDSHAKE_FRAME => s,
            _ => {
                // Nothing unanswered is left; should the broker have sent
                // more than one answer, it still reaches the client, in order.
                client.write_all(&from_broker).await?;
                return Ok(Some(from_client));
            }
        };
        while from_client.len() < start.frame_len() {
            if client.read_buf(&mut from_client).await? == 0 {
                return Ok(None);
            }
        }
        let frame = from_client.split_to(start.frame_len());
        out.clear();
        match api_versions::plan(&frame, &mut out)? {
            Plan::Relay => {
                broker.write_all(&frame).await?;
                let response = read_response(broker, &mut from_broker).await?;
                client.write_all(&response).await?;
            }
            Plan::Downgrade => {
                broker.write_all(&out).await?;
                let response = read_response(broker, &mut from_broker).await?;
                out.clear();
                api_versions::translate_v2_response(&response, &mut out)?;
                client.write_all(&out).await?;
            }
            Plan::Refuse => client.write_all(&out).await?,
        }
    }
}

/// Reads one response frame (size prefix included) from the broker. Only one
/// request is outstanding in the handshake phase, so it is that request's.
async fn read_response(broker: &mut TcpStream, buf: &mut BytesMut) -> Result<BytesMut, RelayError> {
    loop {
        if buf.len() >= 4 {
            let size = (&buf[..4]).get_i32();
            let size = usize::try_from(size).map_err(|_| WireError::BadLength("response size"))?;
            if size > MAX_HANDSHAKE_FRAME {
                return Err(RelayError::ResponseTooLarge(size));
            }
            if buf.len() >= 4 + size {
                return Ok(buf.split_to(4 + size));
            }
        }
        if broker.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}
