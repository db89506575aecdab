//! One simulated device: a lean MQTT 3.1.1 or 5.0 client over TCP or TLS,
//! bound to a chosen loopback source address, that connects, publishes its
//! scenario's messages at QoS 1 (or 0), answers keep-alive, and reconnects
//! with jittered exponential backoff when the connection drops — resending
//! what was not acknowledged, as a real device does. A 5.0 device also
//! hears negative PUBACKs (reason ≥ 0x80) and the server's DISCONNECT with
//! its reason code.
//!
//! Why not rumqttc: each rumqttc client is an event loop with request
//! channels, a state machine and 10+ KB of buffers; 100,000 of them spread
//! over a handful of processes would cost more memory and CPU than the proxy
//! under test. This client keeps per device one socket, one small buffer and
//! the unacknowledged messages.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use mqtt_kafka_proxy::mqtt::codec::parse_fixed_header;
use mqtt_kafka_proxy::mqtt::encode::encode;
use mqtt_kafka_proxy::mqtt::packet::{Connect, Packet, Properties, Publish, QoS, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// Counters shared by every device of a worker, read by its reporter.
#[derive(Default)]
pub struct Stats {
    /// Devices currently connected (CONNACK received).
    pub connected: AtomicU64,
    /// Successful connects, including reconnects.
    pub connects: AtomicU64,
    /// Connection attempts that failed or dropped.
    pub connect_failures: AtomicU64,
    /// PUBLISH packets written (resends included).
    pub sent: AtomicU64,
    /// PUBACKs received.
    pub acked: AtomicU64,
    /// QoS 0 PUBLISH packets written.
    pub sent_qos0: AtomicU64,
    /// Reconnects after a drop.
    pub reconnects: AtomicU64,
    /// Negative PUBACKs (5.0, reason code ≥ 0x80).
    pub nacked: AtomicU64,
    /// DISCONNECT packets from the proxy (5.0), any reason.
    pub told_to_go: AtomicU64,
}

/// What the proxy said about one QoS 1 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckOf {
    /// The message's seq.
    pub seq: u64,
    /// The PUBACK's reason code (0: success; ≥ 0x80: not delivered).
    pub reason: u8,
    /// Time since the PUBLISH was written.
    pub latency: Duration,
}

/// The proxy sent DISCONNECT (5.0) with this reason code.
#[derive(Debug)]
pub struct ToldToGo(pub u8);

impl std::fmt::Display for ToldToGo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the proxy sent DISCONNECT {:#04x}", self.0)
    }
}

impl std::error::Error for ToldToGo {}

/// How a device reaches the proxy.
#[derive(Clone)]
pub struct Target {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Loopback source address to bind (spreads ephemeral ports).
    pub source: IpAddr,
    /// TLS connector and server name, or plain TCP.
    pub tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// Keep-alive announced in CONNECT.
    pub keep_alive: Duration,
}

/// A message the device owns until it is acknowledged.
pub struct Outgoing {
    /// Sequence number, per device, from 0.
    pub seq: u64,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: bytes::Bytes,
    /// QoS 0 or 1.
    pub qos: QoS,
}

/// Byte stream of either kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connected device session.
pub struct Session {
    version: Version,
    stream: Box<dyn Stream>,
    buf: BytesMut,
    /// (packet id, seq, sent at) of unacknowledged QoS 1 messages, in order.
    inflight: VecDeque<(u16, u64, Instant)>,
    next_id: u16,
    last_write: Instant,
}

/// Opens a TCP connection to `addr` with Nagle off (every packet is
/// small and waited for), from the loopback `source` address when given:
/// every device and benchmark client connects through here.
pub async fn open_tcp(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .context("bind source address")?;
    }
    let tcp = socket.connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Opens the socket from the device's source address and does TLS and
/// CONNECT/CONNACK in `version`.
pub async fn connect(target: &Target, client_id: &str, version: Version) -> Result<Session> {
    let tcp = open_tcp(target.addr, Some(target.source)).await?;
    let mut stream: Box<dyn Stream> = match &target.tls {
        Some((connector, name)) => Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .context("TLS handshake")?,
        ),
        None => Box::new(tcp),
    };
    handshake_in(
        &mut stream,
        client_id,
        target.keep_alive.as_secs() as u16,
        version,
    )
    .await?;
    Ok(Session {
        version,
        stream,
        buf: BytesMut::new(),
        inflight: VecDeque::new(),
        next_id: 1,
        last_write: Instant::now(),
    })
}

/// Sends a clean-session 3.1.1 CONNECT and waits for an accepting CONNACK.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    client_id: &str,
    keep_alive_s: u16,
) -> Result<()> {
    handshake_in(stream, client_id, keep_alive_s, Version::V311).await
}

/// Sends a clean-start CONNECT in `version` and waits for an accepting CONNACK.
pub async fn handshake_in<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    client_id: &str,
    keep_alive_s: u16,
    version: Version,
) -> Result<()> {
    let mut out = BytesMut::new();
    let c = Connect {
        version,
        client_id: client_id.into(),
        clean_start: true,
        keep_alive: keep_alive_s,
        username: None,
        password: None,
        will: None,
        properties: Properties::default(),
    };
    encode(&Packet::Connect(Box::new(c)), version, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    // CONNACK: 3.1.1 is 4 bytes; 5.0 adds properties after the reason code.
    let mut ack = vec![0u8; 2];
    stream.read_exact(&mut ack).await.context("CONNACK")?;
    let header = loop {
        match parse_fixed_header(&ack) {
            Ok(Some(h)) => break h,
            Ok(None) if ack.len() < 5 => {
                let mut b = [0u8; 1];
                stream.read_exact(&mut b).await.context("CONNACK")?;
                ack.push(b[0]);
            }
            _ => bail!("{client_id}: malformed CONNACK {ack:02x?}"),
        }
    };
    let mut rest = vec![0u8; header.remaining_len];
    stream.read_exact(&mut rest).await.context("CONNACK")?;
    if header.byte1 != 0x20 || rest.len() < 2 || rest[1] != 0 {
        bail!("{client_id}: connect refused: {ack:02x?} {rest:02x?}");
    }
    Ok(())
}

impl Session {
    /// Writes one PUBLISH; QoS 1 messages are tracked until their PUBACK.
    pub async fn publish(&mut self, m: &Outgoing, stats: &Stats) -> Result<()> {
        let packet_id = if m.qos == QoS::AtMostOnce {
            0
        } else {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            self.inflight.push_back((id, m.seq, Instant::now()));
            id
        };
        let p = Publish {
            dup: false,
            qos: m.qos,
            retain: false,
            topic: m.topic.clone(),
            packet_id,
            properties: Properties::default(),
            payload: m.payload.clone(),
        };
        let mut out = BytesMut::new();
        encode(&Packet::Publish(p), self.version, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        self.last_write = Instant::now();
        stats.sent.fetch_add(1, Ordering::Relaxed);
        if m.qos == QoS::AtMostOnce {
            stats.sent_qos0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends PINGREQ if nothing was written for half the keep-alive.
    pub async fn keep_alive(&mut self, keep_alive: Duration) -> Result<()> {
        if self.last_write.elapsed() >= keep_alive / 2 {
            self.stream.write_all(&[0xC0, 0x00]).await?;
            self.stream.flush().await?;
            self.last_write = Instant::now();
        }
        Ok(())
    }

    /// Waits for bytes from the proxy and handles every complete packet;
    /// returns what the PUBACKs said, in order. A DISCONNECT from the proxy
    /// ends the session with a [`ToldToGo`] error (after the PUBACKs before
    /// it are returned). Cancellation-safe: only the read is awaited.
    pub async fn read_acks(&mut self, acked: &mut Vec<AckOf>) -> Result<()> {
        let mut chunk = [0u8; 512];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("proxy closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        loop {
            let Some(h) = parse_fixed_header(&self.buf)
                .map_err(|e| anyhow::anyhow!("from the proxy: {e}"))?
            else {
                break;
            };
            if self.buf.len() < h.header_len + h.remaining_len {
                break;
            }
            let packet = self.buf.split_to(h.header_len + h.remaining_len);
            let body = &packet[h.header_len..];
            match h.byte1 {
                0x40 if body.len() >= 2 => {
                    let id = u16::from_be_bytes([body[0], body[1]]);
                    let reason = body.get(2).copied().unwrap_or(0);
                    match self.inflight.front() {
                        Some(&(front, seq, at)) if front == id => {
                            self.inflight.pop_front();
                            acked.push(AckOf {
                                seq,
                                reason,
                                latency: at.elapsed(),
                            });
                        }
                        _ => bail!("PUBACK {id} out of order"),
                    }
                }
                0xD0 => {}
                0xE0 => {
                    let reason = body.first().copied().unwrap_or(0);
                    self.buf.clear();
                    return Err(ToldToGo(reason).into());
                }
                other => bail!("unexpected packet type {other:#04x} from the proxy"),
            }
        }
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Says goodbye properly.
    pub async fn publish_disconnect(&mut self) -> Result<()> {
        self.stream.write_all(&[0xE0, 0x00]).await?;
        self.stream.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// Jittered exponential backoff for reconnects: 100 ms doubling to 10 s, ±50%.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(7)).min(10_000);
    Duration::from_millis((base as f64 * (0.5 + jitter)) as u64)
}

/// A tiny xorshift generator: reproducible per device, no shared state.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds from a device index (never zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean (Poisson arrivals).
    pub fn exp(&mut self, mean: Duration) -> Duration {
        let u = self.next_f64().max(1e-12);
        mean.mul_f64(-u.ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(seq: u64) -> Outgoing {
        Outgoing {
            seq,
            topic: "devices/d/events/x".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            qos: QoS::AtLeastOnce,
        }
    }

    /// A session in `version` over an in-memory pipe; the other end plays the proxy.
    fn piped(version: Version) -> (Session, tokio::io::DuplexStream) {
        let (ours, proxy) = tokio::io::duplex(4096);
        let s = Session {
            version,
            stream: Box::new(ours),
            buf: BytesMut::new(),
            inflight: VecDeque::new(),
            next_id: 1,
            last_write: Instant::now(),
        };
        (s, proxy)
    }

    #[tokio::test]
    async fn a_v5_session_hears_success_refusal_ping_and_disconnect_in_order() {
        let (mut s, mut proxy) = piped(Version::V5);
        let stats = Stats::default();
        for seq in [7, 8] {
            s.publish(&outgoing(seq), &stats).await.unwrap();
        }
        // Drain what the device wrote, so the pipe never fills.
        let mut sink = vec![0u8; 4096];
        let _ = proxy.read(&mut sink).await.unwrap();
        // PUBACK 1 success (short form); PUBACK 2 with 0x80 and a reason
        // string property; PINGRESP; DISCONNECT 0x8B.
        let mut bytes = vec![0x40, 0x02, 0x00, 0x01];
        bytes.extend([0x40, 0x08, 0x00, 0x02, 0x80, 0x04, 0x1F, 0x00, 0x01, b'x']);
        bytes.extend([0xD0, 0x00]);
        bytes.extend([0xE0, 0x01, 0x8B]);
        proxy.write_all(&bytes).await.unwrap();
        let mut acks = Vec::new();
        let mut told = None;
        while told.is_none() {
            if let Err(e) = s.read_acks(&mut acks).await {
                told = Some(e.downcast::<ToldToGo>().expect("a DISCONNECT").0);
            }
        }
        assert_eq!(told, Some(0x8B));
        let seen: Vec<(u64, u8)> = acks.iter().map(|a| (a.seq, a.reason)).collect();
        assert_eq!(seen, vec![(7, 0x00), (8, 0x80)]);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_puback_for_a_message_not_at_the_front_is_an_error() {
        let (mut s, mut proxy) = piped(Version::V311);
        s.publish(&outgoing(0), &Stats::default()).await.unwrap();
        proxy.write_all(&[0x40, 0x02, 0x00, 0x09]).await.unwrap();
        let err = s.read_acks(&mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
    }
}
