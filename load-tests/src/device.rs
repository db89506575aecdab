//! One simulated device: a lean MQTT 3.1.1 client over TCP or TLS, bound to
//! a chosen loopback source address, that connects, publishes its scenario's
//! messages at QoS 1 (or 0), answers keep-alive, and reconnects with
//! jittered exponential backoff when the connection drops — resending what
//! was not acknowledged, as a real device does.
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
}

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
    stream: Box<dyn Stream>,
    buf: BytesMut,
    /// (packet id, seq, sent at) of unacknowledged QoS 1 messages, in order.
    inflight: VecDeque<(u16, u64, Instant)>,
    next_id: u16,
    last_write: Instant,
}

/// Opens the socket from the device's source address and does TLS and
/// CONNECT/CONNACK.
pub async fn connect(target: &Target, client_id: &str) -> Result<Session> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket
        .bind(SocketAddr::new(target.source, 0))
        .context("bind source address")?;
    let tcp: TcpStream = socket.connect(target.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let mut stream: Box<dyn Stream> = match &target.tls {
        Some((connector, name)) => Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .context("TLS handshake")?,
        ),
        None => Box::new(tcp),
    };
    handshake(&mut stream, client_id, target.keep_alive.as_secs() as u16).await?;
    Ok(Session {
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
    let mut out = BytesMut::new();
    let c = Connect {
        version: Version::V311,
        client_id: client_id.into(),
        clean_start: true,
        keep_alive: keep_alive_s,
        username: None,
        password: None,
        will: None,
        properties: Properties::default(),
    };
    encode(&Packet::Connect(Box::new(c)), Version::V311, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.context("CONNACK")?;
    if ack != [0x20, 0x02, 0x00, 0x00] {
        bail!("{client_id}: connect refused: {ack:02x?}");
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
        encode(&Packet::Publish(p), Version::V311, &mut out);
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
    /// returns the seqs acknowledged with their PUBACK latency.
    /// Cancellation-safe: only the read is awaited.
    pub async fn read_acks(&mut self, acked: &mut Vec<(u64, Duration)>) -> Result<()> {
        let mut chunk = [0u8; 512];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("proxy closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        while self.buf.len() >= 2 {
            let len = self.buf[1] as usize;
            if self.buf[1] & 0x80 != 0 {
                bail!(
                    "unexpected long packet from the proxy: {:02x?}",
                    &self.buf[..2]
                );
            }
            if self.buf.len() < 2 + len {
                break;
            }
            let packet = self.buf.split_to(2 + len);
            match packet[0] {
                0x40 if len == 2 => {
                    let id = u16::from_be_bytes([packet[2], packet[3]]);
                    match self.inflight.front() {
                        Some(&(front, seq, at)) if front == id => {
                            self.inflight.pop_front();
                            acked.push((seq, at.elapsed()));
                        }
                        _ => bail!("PUBACK {id} out of order"),
                    }
                }
                0xD0 => {}
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
