//! A lean MQTT 3.1.1 publisher for load generation: pre-encoded PUBLISH
//! packets, a fixed window of unacknowledged QoS 1 messages, and PUBACKs
//! parsed straight off the socket. It spends as little CPU as possible so the
//! machine's cores go to the proxy and the broker being measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use mqtt_kafka_proxy::mqtt::encode::encode;
use mqtt_kafka_proxy::mqtt::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    crate::device::handshake(&mut stream, client_id, 60).await?;
    let mut out = BytesMut::new();

    let mut result = DeviceResult {
        acked: 0,
        ack_latency_us: Vec::with_capacity(count as usize),
    };
    let (mut rd, mut wr) = stream.into_split();
    let window = window.max(1) as u64;
    // Send times by packet id; ids cycle through 1..=window*2 so they never collide.
    let ids = window * 2;
    let mut sent_at = vec![Instant::now(); ids as usize + 1];
    let mut sent = 0u64;
    let mut buf = BytesMut::with_capacity(8192);
    let mut pending = BytesMut::new();
    let mut template = BytesMut::new();
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 1,
        properties: Properties::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    };
    encode(&Packet::Publish(p), Version::V311, &mut template);
    // Fixed header (1 + length bytes), then the topic (2 + len), then the id.
    let len_bytes = template[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let id_offset = 1 + len_bytes + 2 + topic.len();
    while result.acked < count {
        // Fill the window in one write.
        out.clear();
        while sent < count && sent - result.acked < window {
            let id = (sent % ids) as u16 + 1;
            // Patch the packet id into the pre-encoded PUBLISH.
            let at = out.len();
            out.extend_from_slice(&template);
            out[at + id_offset..at + id_offset + 2].copy_from_slice(&id.to_be_bytes());
            sent_at[id as usize] = Instant::now();
            sent += 1;
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        buf.clear();
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read_buf(&mut buf))
            .await
            .context("no PUBACK for 60 s")??;
        if n == 0 {
            bail!(
                "{client_id}: proxy closed the connection after {} acks",
                result.acked
            );
        }
        pending.extend_from_slice(&buf);
        while pending.len() >= 4 {
            if pending[0] != 0x40 || pending[1] != 0x02 {
                bail!("{client_id}: unexpected packet {:02x?}", &pending[..4]);
            }
            let id = u16::from_be_bytes([pending[2], pending[3]]);
            let _ = pending.split_to(4);
            let us = sent_at[id as usize]
                .elapsed()
                .as_micros()
                .min(u32::MAX as u128) as u32;
            result.ack_latency_us.push(us);
            result.acked += 1;
        }
    }
    let _ = wr.write_all(&[0xE0, 0x00]).await;
    Ok(result)
}
