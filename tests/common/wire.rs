//! The raw-wire MQTT client for tests that need exact bytes: connect and
//! handshake ([`open`], [`raw_v5_connect`]), build packets with the proxy's
//! encoder, read what the proxy answers (a packet, a packet or the close,
//! everything up to the close) and parse it (PUBACK, DISCONNECT, 5.0
//! properties), and [`expect_refusal`], the proxy's last words after a
//! violation.

use bytes::Bytes;
use mqtt_kafka_proxy::mqtt::packet::{
    self as mp, reason, Packet, Properties, Publish, Subscribe, SubscribeFilter, Version,
};
use tokio::io::AsyncReadExt;

use super::{connect_bytes, encode, Io, Raw, PATIENCE};

/// Opens a connection as `id` with keep-alive `ka` seconds and returns it
/// with the CONNACK body, which must accept.
pub async fn open_ka(port: u16, id: &str, v: Version, ka: u16) -> (Raw, Vec<u8>) {
    let mut raw = Raw::connect(port).await;
    let body = handshake_ka(&mut raw, id, v, ka).await;
    (raw, body)
}

/// Opens a connection with keep-alive disabled, so only what the test does
/// can close it.
pub async fn open(port: u16, id: &str, v: Version) -> Raw {
    open_ka(port, id, v, 0).await.0
}

/// Sends CONNECT (keep-alive off) on `raw` and checks the CONNACK accepts.
pub async fn handshake<S: Io>(raw: &mut Raw<S>, id: &str, v: Version) {
    handshake_ka(raw, id, v, 0).await;
}

/// Sends CONNECT with keep-alive `ka` on `raw`, checks the CONNACK accepts
/// and returns its body.
pub async fn handshake_ka<S: Io>(raw: &mut Raw<S>, id: &str, v: Version, ka: u16) -> Vec<u8> {
    raw.send(&connect_bytes(id, v, ka)).await;
    let (b1, body) = read_packet(raw).await;
    assert_eq!(
        b1, 0x20,
        "CONNACK for {id:?} expected, got {b1:#04x} {body:02x?}"
    );
    assert_eq!(body[1], 0x00, "CONNECT of {id:?} accepted: {body:02x?}");
    body
}

/// Connects a raw 5.0 client (keep-alive 30 s) and reads its CONNACK.
pub async fn raw_v5_connect(port: u16, id: &str) -> Raw {
    let mut raw = Raw::connect(port).await;
    raw.send(&connect_bytes(id, Version::V5, 30)).await;
    let (b1, _) = try_read_packet(&mut raw).await.expect("CONNACK");
    assert_eq!(b1, 0x20, "CONNACK");
    raw
}

/// Reads to the close and checks the proxy's last words after a violation:
/// 3.1.1 gets nothing, 5.0 gets exactly one DISCONNECT carrying `code`.
pub async fn expect_refusal<S: Io>(raw: &mut Raw<S>, v: Version, code: u8, case: &str) {
    let rest = raw.read_to_close().await;
    match v {
        Version::V311 => assert!(
            rest.is_empty(),
            "{case}: a 3.1.1 client is closed with nothing written; got {rest:02x?}"
        ),
        Version::V5 => {
            let packets = parse_packets(&rest);
            let types: Vec<u8> = packets.iter().map(|p| p.0).collect();
            assert_eq!(
                types,
                [0xE0],
                "{case}: one DISCONNECT then close; got {rest:02x?}"
            );
            assert_eq!(
                reason_at(&packets[0].1, 0),
                code,
                "{case}: DISCONNECT reason; got {rest:02x?}"
            );
        }
    }
}

/// Reads exactly `n` bytes, panicking with `what` if the proxy closes or stalls.
pub async fn read_n<S: Io>(raw: &mut Raw<S>, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(PATIENCE, raw.stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(e)) => panic!("connection ended while reading {what}: {e}"),
        Err(_) => panic!("no {what} within {PATIENCE:?}"),
    }
}

/// Reads one whole packet from the proxy: (first byte, body).
pub async fn read_packet<S: Io>(raw: &mut Raw<S>) -> (u8, Vec<u8>) {
    let byte1 = read_n(raw, 1, "a packet").await[0];
    let mut len = 0usize;
    for i in 0..4 {
        let b = read_n(raw, 1, "a remaining length").await[0];
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let body = read_n(raw, len, "a packet body").await;
            return (byte1, body);
        }
    }
    panic!("proxy wrote a remaining length of more than 4 bytes");
}

/// Reads one packet: `None` once the proxy has closed the connection (EOF
/// or reset). Panics if nothing comes within [`PATIENCE`].
pub async fn try_read_packet<S: Io>(raw: &mut Raw<S>) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(PATIENCE, async {
        let mut byte1 = [0u8; 1];
        raw.stream.read_exact(&mut byte1).await.ok()?;
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            raw.stream.read_exact(&mut b).await.ok()?;
            len |= ((b[0] & 0x7F) as usize) << (7 * i);
            if b[0] & 0x80 == 0 {
                let mut body = vec![0u8; len];
                raw.stream.read_exact(&mut body).await.ok()?;
                return Some((byte1[0], body));
            }
        }
        panic!("proxy wrote a remaining length of more than 4 bytes");
    })
    .await
    .unwrap_or_else(|_| panic!("no packet and no close within {PATIENCE:?}"))
}

/// Reads the next packet, which must be a PUBACK for `packet_id` whose
/// reason is success.
pub async fn expect_puback_ok<S: Io>(raw: &mut Raw<S>, packet_id: u16) {
    let (b1, body) = try_read_packet(raw).await.expect("PUBACK, not a close");
    assert_eq!(
        (b1, &body[..2]),
        (0x40, &packet_id.to_be_bytes()[..]),
        "PUBACK for packet {packet_id}"
    );
    assert!(body.len() < 3 || body[2] == 0, "success: {body:02x?}");
}

/// Reads one packet, or says why none came: the connection closed, or
/// (over TLS) an alert arrived. Panics if nothing comes within [`PATIENCE`].
pub async fn next_packet<S: Io>(raw: &mut Raw<S>) -> Result<(u8, Vec<u8>), String> {
    async fn byte<S: Io>(raw: &mut Raw<S>) -> Result<u8, String> {
        let mut b = [0u8; 1];
        match raw.stream.read(&mut b).await {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(b[0]),
            Err(e) => Err(e.to_string()),
        }
    }
    let read = async {
        let b1 = byte(raw).await?;
        let mut len = 0usize;
        for i in 0..4 {
            let b = byte(raw).await?;
            len |= ((b & 0x7F) as usize) << (7 * i);
            if b & 0x80 == 0 {
                let mut body = vec![0; len];
                raw.stream
                    .read_exact(&mut body)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok((b1, body));
            }
        }
        Err("remaining length of more than 4 bytes".to_string())
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("nothing from the proxy within {PATIENCE:?}"))
}

/// Reads every packet until the proxy closes the connection.
pub async fn packets_to_close<S: Io>(raw: &mut Raw<S>) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    while let Some(p) = try_read_packet(raw).await {
        seen.push(p);
    }
    seen
}

/// Each packet as (first byte, reason code): a PUBACK's code after its
/// packet id, any other packet's first body byte (DISCONNECT's reason);
/// an omitted code is success.
pub fn kinds(packets: &[(u8, Vec<u8>)]) -> Vec<(u8, u8)> {
    packets
        .iter()
        .map(|(b1, body)| (*b1, reason_at(body, if *b1 == 0x40 { 2 } else { 0 })))
        .collect()
}

/// A 5.0 PUBACK body: (packet id, reason code; omitted means success).
pub fn puback(body: &[u8]) -> (u16, u8) {
    (u16::from_be_bytes([body[0], body[1]]), reason_at(body, 2))
}

/// A 5.0 DISCONNECT body: (reason code, properties as [`properties`] gives
/// them).
pub fn disconnect(body: &[u8]) -> (u8, Vec<(u8, Vec<u8>)>) {
    let props = match body.get(1..) {
        Some(b) if !b.is_empty() => properties(b).0,
        _ => Vec::new(),
    };
    (reason_at(body, 0), props)
}

/// The reason string (5.0 property 0x1F) of an ack or DISCONNECT body whose
/// reason code is at `skip`.
pub fn reason_string(body: &[u8], skip: usize) -> Option<String> {
    if body.len() <= skip + 1 {
        return None;
    }
    let (props, _) = properties(&body[skip + 1..]);
    property_text(&props, 0x1F)
}

/// Reads packets until one matches `pred`; panics if the connection closes first.
pub async fn read_until<S: Io>(
    raw: &mut Raw<S>,
    pred: impl Fn(u8, &[u8]) -> bool,
) -> (u8, Vec<u8>) {
    loop {
        let (b1, body) = read_packet(raw).await;
        if pred(b1, &body) {
            return (b1, body);
        }
    }
}

/// Splits a byte stream from the proxy into packets; panics on a torn packet.
pub fn parse_packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let byte1 = bytes[0];
        let (len, used) = varint(&bytes[1..]);
        let start = 1 + used;
        assert!(
            bytes.len() >= start + len,
            "torn packet {byte1:#04x} in {bytes:02x?}"
        );
        out.push((byte1, bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    out
}

/// Decodes a variable byte integer: (value, bytes used).
pub fn varint(b: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer in {b:02x?}");
}

pub fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            return;
        }
    }
}

/// Parses a 5.0 property block at the start of `b` into (id, value) pairs
/// (string values without their length prefix) and returns the bytes after it.
pub fn properties(b: &[u8]) -> (Vec<(u8, Vec<u8>)>, &[u8]) {
    let (len, used) = varint(b);
    let (mut block, rest) = b[used..].split_at(len);
    let mut props = Vec::new();
    while !block.is_empty() {
        let id = block[0];
        block = &block[1..];
        let take = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                let n = u16::from_be_bytes([block[0], block[1]]) as usize;
                block = &block[2..];
                n
            }
            0x26 => {
                let k = u16::from_be_bytes([block[0], block[1]]) as usize;
                let v = u16::from_be_bytes([block[2 + k], block[3 + k]]) as usize;
                4 + k + v
            }
            other => panic!("unexpected property {other:#04x}"),
        };
        props.push((id, block[..take].to_vec()));
        block = &block[take..];
    }
    (props, rest)
}

pub fn property(props: &[(u8, Vec<u8>)], id: u8) -> Option<&[u8]> {
    props
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| v.as_slice())
}

/// A string property as text.
pub fn property_text(props: &[(u8, Vec<u8>)], id: u8) -> Option<String> {
    property(props, id).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The reason code of a 5.0 DISCONNECT or ack body that starts after `skip`
/// bytes; an omitted reason code means success.
pub fn reason_at(body: &[u8], skip: usize) -> u8 {
    body.get(skip).copied().unwrap_or(reason::SUCCESS)
}

/// A PUBLISH as a test builds it; fields are changed by the caller.
pub fn publish(topic: &str, qos: mp::QoS, packet_id: u16, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A slowloris client: writes `bytes[from..]` one byte per `every` (the
/// first after one `every`) while reading whatever the proxy writes, until
/// the proxy closes the connection. Returns how many bytes of `bytes` were
/// sent in all (`from` included) and what the proxy wrote. Panics if the
/// connection is still open after [`PATIENCE`].
pub async fn dribble(
    raw: &mut Raw,
    bytes: &[u8],
    from: usize,
    every: std::time::Duration,
    who: &str,
) -> (usize, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let (mut rd, mut wr) = raw.stream.split();
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate
    let (mut sent, mut got, mut buf) = (from, Vec::new(), [0u8; 256]);
    tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::select! {
                _ = tick.tick(), if sent < bytes.len() => {
                    if wr.write_all(&bytes[sent..sent + 1]).await.is_ok() {
                        sent += 1;
                    }
                }
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: still open after {PATIENCE:?}"));
    (sent, got)
}

/// A last will of `payload` on `topic` at `qos` (no properties).
pub fn will(topic: &str, payload: &[u8], qos: mp::QoS) -> mp::Will {
    mp::Will {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        properties: Properties::default(),
    }
}

/// A QoS 1 PUBLISH, encoded.
pub fn qos1(topic: &str, packet_id: u16, payload: &[u8], v: Version) -> Vec<u8> {
    publish_bytes(publish(topic, mp::QoS::AtLeastOnce, packet_id, payload), v)
}

pub fn publish_bytes(p: Publish, v: Version) -> Vec<u8> {
    encode(&Packet::Publish(p), v)
}

pub fn subscribe_bytes(filters: &[&str], v: Version) -> Vec<u8> {
    let s = Subscribe {
        packet_id: 5,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|f| SubscribeFilter {
                filter: (*f).into(),
                qos: mp::QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            })
            .collect(),
    };
    encode(&Packet::Subscribe(s), v)
}

/// Builds a packet from its first byte and body.
pub fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

pub fn mqtt_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}
