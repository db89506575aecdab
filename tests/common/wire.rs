//! Wire helpers for raw-socket tests: build packets with the proxy's
//! encoder, read and parse what the proxy answers.

use bytes::Bytes;
use mqtt_kafka_proxy::mqtt::packet::{
    self as mp, reason, Packet, Properties, Publish, Subscribe, SubscribeFilter, Version,
};
use tokio::io::AsyncReadExt;

use super::{encode, Raw, PATIENCE};

/// Reads exactly `n` bytes, panicking with `what` if the proxy closes or stalls.
pub async fn read_n(raw: &mut Raw, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(PATIENCE, raw.stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(e)) => panic!("connection ended while reading {what}: {e}"),
        Err(_) => panic!("no {what} within {PATIENCE:?}"),
    }
}

/// Reads one whole packet from the proxy: (first byte, body).
pub async fn read_packet(raw: &mut Raw) -> (u8, Vec<u8>) {
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

/// Reads packets until one matches `pred`; panics if the connection closes first.
pub async fn read_until(raw: &mut Raw, pred: impl Fn(u8, &[u8]) -> bool) -> (u8, Vec<u8>) {
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
