//! A lean MQTT 3.1.1 publisher for load generation: pre-encoded PUBLISH
//! packets, a fixed window of unacknowledged QoS 1 messages, and PUBACKs
//! parsed straight off the socket. It spends as little CPU as possible so the
//! machine's cores go to the proxy and the broker being measured.
//!
//! Two ways to publish: [`publish_qos1`] as fast as the window allows (the
//! peak rate), and [`publish_qos1_paced`] on a schedule (the PUBACK latency
//! at a fixed rate).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use mqtt_kafka_proxy::mqtt::encode::encode;
use mqtt_kafka_proxy::mqtt::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::measure::Pace;

/// What one device's run measured.
#[derive(Debug, Default, Clone)]
pub struct DeviceResult {
    /// PUBACKs received.
    pub acked: u64,
    /// Microseconds from PUBLISH written to PUBACK read, one per message.
    pub ack_latency_us: Vec<u32>,
}

/// Connects as `client_id`, publishes `count` QoS 1 messages of `payload`
/// to `topic` with at most `window` unacknowledged, and waits for every PUBACK.
pub async fn publish_qos1(
    addr: std::net::SocketAddr,
    client_id: &str,
    topic: &str,
    payload: &[u8],
    count: u64,
    window: u16,
) -> Result<DeviceResult> {
    let stream = connect(addr, client_id).await?;
    let mut run = Run::new(stream, client_id, topic, payload, count, window, 8192);
    while run.result.acked < count {
        // Fill the window in one write.
        run.send_up_to(count.min(run.result.acked + run.window))
            .await?;
        run.buf.clear();
        let n = tokio::time::timeout(Duration::from_secs(60), run.rd.read_buf(&mut run.buf))
            .await
            .context("no PUBACK for 60 s")??;
        run.took(n, None)?;
    }
    Ok(run.finish().await)
}

/// Connects as `client_id` (3.1.1, clean session) over plain TCP and reads
/// the CONNACK.
pub async fn connect(addr: std::net::SocketAddr, client_id: &str) -> Result<TcpStream> {
    let mut stream = crate::device::open_tcp(addr, None).await?;
    crate::device::handshake(&mut stream, client_id, 60).await?;
    Ok(stream)
}

/// Publishes `pace.total` QoS 1 messages on `stream` (connected as
/// `client_id`) on `pace`'s schedule from `start` (waking at most once a
/// millisecond and writing every message due in one write), with at most
/// `window` unacknowledged, and waits for every PUBACK. Latency is recorded
/// for messages written at or after `measure_from` (after the warm-up).
/// A message that the window holds back is written as soon as an
/// acknowledgement frees a slot; its latency counts from that write.
#[allow(clippy::too_many_arguments)]
pub async fn publish_qos1_paced(
    stream: TcpStream,
    client_id: &str,
    topic: &str,
    payload: &[u8],
    pace: Pace,
    start: tokio::time::Instant,
    measure_from: Instant,
    window: u16,
) -> Result<DeviceResult> {
    let count = pace.total;
    let mut run = Run::new(stream, client_id, topic, payload, count, window, 4096);
    let tick = Duration::from_millis(1);
    tokio::time::sleep_until(start).await;
    while run.result.acked < count {
        let elapsed = start.elapsed();
        run.send_up_to(pace.due(elapsed).min(run.result.acked + run.window))
            .await?;
        // Sleep until the next message is due, unless the window is full
        // (then only an acknowledgement can let it out).
        let wake = if run.sent < run.result.acked + run.window {
            pace.wait(run.sent, start.elapsed(), tick)
        } else {
            None
        };
        run.buf.clear();
        tokio::select! {
            // Cancellation-safe: read_buf appends only what it read.
            n = run.rd.read_buf(&mut run.buf) => run.took(n?, Some(measure_from))?,
            _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(60))) => {
                anyhow::ensure!(wake.is_some(), "{client_id}: no PUBACK for 60 s");
            }
        }
    }
    Ok(run.finish().await)
}

/// Every device's result of a set of publishing tasks, summed: PUBACKs and
/// their latencies (µs). The first failure fails the whole.
pub async fn gather(
    mut tasks: tokio::task::JoinSet<Result<DeviceResult>>,
) -> Result<(u64, Vec<u32>)> {
    let mut acked = 0;
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r??;
        acked += r.acked;
        lat.extend(r.ack_latency_us);
    }
    Ok((acked, lat))
}

/// One device's publishing run: the connection's halves, the pre-encoded
/// PUBLISH, the packet ids in flight and the buffers, shared by the peak
/// and the paced publisher.
struct Run<'a> {
    client_id: &'a str,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    /// Most messages unacknowledged.
    window: u64,
    ids: PacketIds,
    template: Template,
    /// Messages written so far.
    sent: u64,
    out: BytesMut,
    /// What the last read brought.
    buf: BytesMut,
    /// Bytes read but not yet a whole PUBACK.
    pending: BytesMut,
    result: DeviceResult,
}

impl<'a> Run<'a> {
    fn new(
        stream: TcpStream,
        client_id: &'a str,
        topic: &str,
        payload: &[u8],
        count: u64,
        window: u16,
        read_buf: usize,
    ) -> Run<'a> {
        let (rd, wr) = stream.into_split();
        let window = window.max(1) as u64;
        Run {
            client_id,
            rd,
            wr,
            window,
            ids: PacketIds::new(window, Instant::now()),
            template: Template::new(topic, payload),
            sent: 0,
            out: BytesMut::new(),
            buf: BytesMut::with_capacity(read_buf),
            pending: BytesMut::new(),
            result: DeviceResult {
                acked: 0,
                ack_latency_us: Vec::with_capacity(count as usize),
            },
        }
    }

    /// Writes messages until `allowed` are out, in one write.
    async fn send_up_to(&mut self, allowed: u64) -> Result<()> {
        if self.sent >= allowed {
            return Ok(());
        }
        self.out.clear();
        while self.sent < allowed {
            self.template.put(&mut self.out, self.ids.send(self.sent));
            self.sent += 1;
        }
        self.wr.write_all(&self.out).await?;
        Ok(())
    }

    /// Takes the PUBACKs of a read of `n` bytes into `buf` (0: the proxy
    /// closed the connection).
    fn took(&mut self, n: usize, measure_from: Option<Instant>) -> Result<()> {
        if n == 0 {
            bail!(
                "{}: proxy closed the connection after {} acks",
                self.client_id,
                self.result.acked
            );
        }
        self.pending.extend_from_slice(&self.buf);
        read_pubacks(
            self.client_id,
            &mut self.pending,
            &self.ids,
            measure_from,
            &mut self.result,
        )
    }

    /// Says goodbye (DISCONNECT) and returns what was measured.
    async fn finish(mut self) -> DeviceResult {
        let _ = self.wr.write_all(&[0xE0, 0x00]).await;
        self.result
    }
}

/// A PUBLISH encoded once; each message patches its packet id in.
struct Template {
    bytes: BytesMut,
    id_offset: usize,
}

impl Template {
    fn new(topic: &str, payload: &[u8]) -> Template {
        let mut bytes = BytesMut::new();
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 1,
            properties: Properties::default(),
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        encode(&Packet::Publish(p), Version::V311, &mut bytes);
        // Fixed header (1 + length bytes), then the topic (2 + len), then the id.
        let len_bytes = bytes[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
        Template {
            id_offset: 1 + len_bytes + 2 + topic.len(),
            bytes,
        }
    }

    /// Appends the PUBLISH with packet id `id` to `out`.
    fn put(&self, out: &mut BytesMut, id: u16) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        out[at + self.id_offset..at + self.id_offset + 2].copy_from_slice(&id.to_be_bytes());
    }
}

/// Packet ids and send times: ids cycle through 1..=window*2, so an id is
/// never reused while its message is unacknowledged.
struct PacketIds {
    ids: u64,
    sent_at: Vec<Instant>,
}

impl PacketIds {
    fn new(window: u64, now: Instant) -> PacketIds {
        PacketIds {
            ids: window * 2,
            sent_at: vec![now; window as usize * 2 + 1],
        }
    }

    /// The id of the `n`th message, stamped as sent now.
    fn send(&mut self, n: u64) -> u16 {
        let id = (n % self.ids) as u16 + 1;
        self.sent_at[id as usize] = Instant::now();
        id
    }
}

/// Takes every complete PUBACK off `pending`, counting it and recording its
/// latency (only for messages sent at or after `measure_from`, if given).
fn read_pubacks(
    client_id: &str,
    pending: &mut BytesMut,
    ids: &PacketIds,
    measure_from: Option<Instant>,
    result: &mut DeviceResult,
) -> Result<()> {
    while pending.len() >= 4 {
        if pending[0] != 0x40 || pending[1] != 0x02 {
            bail!("{client_id}: unexpected packet {:02x?}", &pending[..4]);
        }
        let id = u16::from_be_bytes([pending[2], pending[3]]);
        let _ = pending.split_to(4);
        let sent_at = *ids
            .sent_at
            .get(id as usize)
            .with_context(|| format!("{client_id}: PUBACK for unknown packet id {id}"))?;
        if measure_from.is_none_or(|from| sent_at >= from) {
            let us = sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
            result.ack_latency_us.push(us);
        }
        result.acked += 1;
    }
    Ok(())
}
