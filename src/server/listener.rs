//! Listeners and accept loops. A connection permit is taken right after
//! `accept()` and before anything else, so at most
//! `listeners.max_connections` connections are served (plus one accepted
//! socket per listener waiting for a permit) and the rest wait in the
//! kernel backlog; accept errors (e.g. out of file
//! descriptors) back off instead of spinning. The loop does no per-client
//! I/O: the TLS handshake runs in the connection's task, under its deadline.
//! A source address that opens connections faster than
//! `limits.connects_per_second_per_source` has the excess closed at once,
//! before any task or buffer is spent on it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::{LogThrottle, SourceLimiter};
use crate::metrics as m;
use crate::server::proxy_protocol;
use crate::server::tls::TlsReloader;
use crate::server::tls_stream::{self, TlsStream};
use crate::server::websocket::{self, WsStream};
use crate::session::PeerCert;
use crate::session::{connection, Shared};

/// What a listener speaks.
#[derive(Clone)]
pub enum Transport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS, with the live (reloadable) configuration.
    Tls(Arc<TlsReloader>),
    /// MQTT over WebSocket, upgraded on this path.
    Ws(String),
    /// MQTT over WebSocket over TLS.
    Wss(Arc<TlsReloader>, String),
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls(_) => "tls",
            Transport::Ws(_) => "ws",
            Transport::Wss(..) => "wss",
        }
    }
}

/// Binds a listening socket, with SO_REUSEPORT when asked.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts connections until `cancel` fires, spawning one task each.
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    proxy_protocol: bool,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let name = transport.name();
    let refusals = Arc::new(LogThrottle::new(Duration::from_secs(1)));
    let sources = shared.sources.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        // Behind a PROXY-protocol balancer the socket's peer is the balancer:
        // the real source is known only after the header, in the task.
        if !proxy_protocol && !admit(&sources, peer, name, &refusals) {
            drop(tcp);
            continue;
        }
        // The permit is taken after accept and before anything is spent on
        // the connection: with several listeners sharing one semaphore, a
        // permit held across an idle accept() would lower the real cap by
        // one per listener. While no permit is free this loop accepts
        // nothing more, so the rest wait in the kernel backlog.
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // semaphore closed: shutting down
            },
        };
        metrics::counter!(m::CONNECTIONS_OPENED, "listener" => name).increment(1);
        // Small acknowledgements must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        // Runs first in each task: the PROXY header, under the connect deadline.
        // Boxed: a future the task captures is stored for the task's whole
        // life, and this one (~450 B, its header buffer) is needed only at
        // the start; boxed, it is freed once it is done.
        let start = Box::pin(preamble(
            tcp,
            peer,
            proxy_protocol,
            name,
            Duration::from_millis(shared.mqtt.connect_timeout_ms),
            sources.clone(),
            refusals.clone(),
        ));
        let (shared, cancel) = (shared.clone(), cancel.clone());
        match &transport {
            Transport::Tcp => spawn_connection(&tracker, permit, start, plain, shared, cancel),
            Transport::Tls(tls) => {
                let config = tls.config();
                let handshake = move |tcp: TcpStream| -> HandshakeFuture<TlsStream> {
                    Box::pin(async move {
                        let stream = tls_stream::accept(config, tcp).await?;
                        let cert = leaf_certificate(&stream);
                        Ok((stream, cert))
                    })
                };
                spawn_connection(&tracker, permit, start, handshake, shared, cancel);
            }
            Transport::Ws(path) => {
                let path = path.clone();
                let max = ws_message_max(&shared);
                let handshake = move |tcp: TcpStream| -> HandshakeFuture<WsStream<TcpStream>> {
                    Box::pin(async move { Ok((websocket::accept(tcp, &path, max).await?, None)) })
                };
                spawn_connection(&tracker, permit, start, handshake, shared, cancel);
            }
            Transport::Wss(tls, path) => {
                let config = tls.config();
                let path = path.clone();
                let max = ws_message_max(&shared);
                let handshake = move |tcp: TcpStream| -> HandshakeFuture<WsStream<TlsStream>> {
                    Box::pin(async move {
                        let stream = tls_stream::accept(config, tcp).await?;
                        let cert = leaf_certificate(&stream);
                        Ok((websocket::accept(stream, &path, max).await?, cert))
                    })
                };
                spawn_connection(&tracker, permit, start, handshake, shared, cancel);
            }
        }
    }
}

/// What a connection starts from once its PROXY header (if any) is read:
/// the socket, the client's address, a balancer-verified certificate CN.
type Started = Option<(TcpStream, SocketAddr, Option<String>)>;

/// Reads the PROXY header when the listener expects one (under `deadline`),
/// and applies the per-source limit to the real source. `None`: closed.
async fn preamble(
    mut tcp: TcpStream,
    peer: SocketAddr,
    proxy_protocol: bool,
    name: &'static str,
    deadline: Duration,
    sources: Option<Arc<SourceLimiter>>,
    refusals: Arc<LogThrottle>,
) -> Started {
    if !proxy_protocol {
        return Some((tcp, peer, None));
    }
    match tokio::time::timeout(deadline, proxy_protocol::read_header(&mut tcp)).await {
        Ok(Ok(p)) => {
            let source = p.source.unwrap_or(peer);
            if !admit(&sources, source, name, &refusals) {
                return None;
            }
            Some((tcp, source, p.verified_cn))
        }
        Ok(Err(e)) => {
            metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => "proxy_header").increment(1);
            tracing::warn!(%peer, listener = name, error = %e, "connection closed: bad PROXY protocol header");
            None
        }
        Err(_) => {
            metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => "proxy_header").increment(1);
            tracing::warn!(%peer, listener = name, "connection closed: no PROXY protocol header before the connect deadline");
            None
        }
    }
}

/// One task per connection: the preamble, then the connection itself,
/// holding its permit until it ends.
fn spawn_connection<S, H>(
    tracker: &TaskTracker,
    permit: OwnedSemaphorePermit,
    start: impl Future<Output = Started> + Send + 'static,
    handshake: H,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) where
    H: FnOnce(TcpStream) -> HandshakeFuture<S> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The opening (PROXY header, handshake, CONNECT) is boxed: the task
    // keeps only what an open connection needs once it is done.
    let opening = {
        let shared = shared.clone();
        Box::pin(async move {
            let (tcp, peer, cn) = start.await?;
            connection::open(tcp, peer, cn, handshake, &shared, permit).await
        })
    };
    tracker.spawn(connection::run(opening, shared, cancel));
}

/// The client's leaf certificate, verified by rustls against the client CA
/// during the handshake; the device id is read from it at CONNECT.
fn leaf_certificate(stream: &TlsStream) -> PeerCert {
    stream
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
}

/// Largest WebSocket message: a whole MQTT packet, or a batch of small ones.
fn ws_message_max(shared: &Shared) -> usize {
    shared.mqtt.max_packet_size_bytes.max(64 * 1024) * 2
}

/// The per-source connect limit; logs at most once per second.
fn admit(
    sources: &Option<Arc<SourceLimiter>>,
    peer: SocketAddr,
    name: &'static str,
    refusals: &LogThrottle,
) -> bool {
    let Some(limiter) = sources else {
        return true;
    };
    if limiter.admit(peer.ip()) {
        return true;
    }
    metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "connect_rate").increment(1);
    if let Some(suppressed) = refusals.allow() {
        tracing::warn!(%peer, listener = name, suppressed, "connection refused: source address over limits.connects_per_second_per_source");
    }
    false
}

type HandshakeFuture<S> = Pin<Box<dyn Future<Output = std::io::Result<(S, PeerCert)>> + Send>>;

fn plain(tcp: TcpStream) -> HandshakeFuture<TcpStream> {
    Box::pin(std::future::ready(Ok((tcp, None))))
}
