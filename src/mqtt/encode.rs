//! Encoding of MQTT packets, with no I/O. The proxy writes CONNACK, the
//! acknowledgements, SUBACK/UNSUBACK, PINGRESP, DISCONNECT and PUBLISH; the
//! client-side packets are encoded too, for the load-test client and for
//! round-trip tests of the decoder.

use bytes::{BufMut, BytesMut};

use super::packet::*;

/// Appends `packet` encoded for `version` to `out`.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    // Fast path for the packets written once per message: no scratch buffer.
    let plain_ack = |a: &Ack| a.reason == 0 && a.properties == Properties::default();
    let short = match packet {
        Packet::PubAck(a) if plain_ack(a) => Some((0x40, a.packet_id)),
        Packet::PubRec(a) if plain_ack(a) => Some((0x50, a.packet_id)),
        Packet::PubComp(a) if plain_ack(a) => Some((0x70, a.packet_id)),
        _ => None,
    };
    if let Some((byte1, id)) = short {
        out.extend_from_slice(&[byte1, 0x02]);
        out.extend_from_slice(&id.to_be_bytes());
        return;
    }
    let v5 = version == Version::V5;
    let mut body: Vec<u8> = Vec::new();
    let mut payload: &[u8] = &[];
    let byte1: u8 = match packet {
        Packet::Connect(c) => {
            put_binary(&mut body, b"MQTT");
            body.push(c.version.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.push(flags);
            body.extend_from_slice(&c.keep_alive.to_be_bytes());
            let cv5 = c.version == Version::V5;
            if cv5 {
                put_properties(&mut body, &c.properties);
            }
            put_binary(&mut body, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if cv5 {
                    put_properties(&mut body, &w.properties);
                }
                put_binary(&mut body, w.topic.as_bytes());
                put_binary(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_binary(&mut body, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_binary(&mut body, p);
            }
            0x10
        }
        Packet::ConnAck(a) => {
            body.push(a.session_present as u8);
            body.push(a.code);
            if v5 {
                put_properties(&mut body, &a.properties);
            }
            0x20
        }
        Packet::Publish(p) => {
            put_binary(&mut body, p.topic.as_bytes());
            if p.qos != QoS::AtMostOnce {
                body.extend_from_slice(&p.packet_id.to_be_bytes());
            }
            if v5 {
                put_properties(&mut body, &p.properties);
            }
            payload = &p.payload;
            0x30 | ((p.dup as u8) << 3) | ((p.qos as u8) << 1) | p.retain as u8
        }
        Packet::PubAck(a) => ack(&mut body, a, v5, 0x40),
        Packet::PubRec(a) => ack(&mut body, a, v5, 0x50),
        Packet::PubRel(a) => ack(&mut body, a, v5, 0x62),
        Packet::PubComp(a) => ack(&mut body, a, v5, 0x70),
        Packet::Subscribe(s) => {
            body.extend_from_slice(&s.packet_id.to_be_bytes());
            if v5 {
                put_properties(&mut body, &s.properties);
            }
            for f in &s.filters {
                put_binary(&mut body, f.filter.as_bytes());
                let mut options = f.qos as u8;
                if v5 {
                    options |= (f.no_local as u8) << 2
                        | (f.retain_as_published as u8) << 3
                        | f.retain_handling << 4;
                }
                body.push(options);
            }
            0x82
        }
        Packet::SubAck(s) | Packet::UnsubAck(s) => {
            body.extend_from_slice(&s.packet_id.to_be_bytes());
            if v5 {
                put_properties(&mut body, &s.properties);
            }
            let is_suback = matches!(packet, Packet::SubAck(_));
            // 3.1.1 UNSUBACK carries no codes.
            if is_suback || v5 {
                body.extend_from_slice(&s.codes);
            }
            if is_suback {
                0x90
            } else {
                0xB0
            }
        }
        Packet::Unsubscribe(u) => {
            body.extend_from_slice(&u.packet_id.to_be_bytes());
            if v5 {
                put_properties(&mut body, &u.properties);
            }
            for f in &u.filters {
                put_binary(&mut body, f.as_bytes());
            }
            0xA2
        }
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(d) => {
            reason_and_properties(&mut body, d, v5);
            0xE0
        }
        Packet::Auth(d) => {
            reason_and_properties(&mut body, d, v5);
            0xF0
        }
    };
    out.reserve(5 + body.len() + payload.len());
    out.put_u8(byte1);
    put_varint(out, (body.len() + payload.len()) as u32);
    out.extend_from_slice(&body);
    out.extend_from_slice(payload);
}

fn ack(body: &mut Vec<u8>, a: &Ack, v5: bool, byte1: u8) -> u8 {
    body.extend_from_slice(&a.packet_id.to_be_bytes());
    // 5.0 lets a success ack without properties omit the reason code (3.4.2.1).
    if v5 && (a.reason != 0 || a.properties != Properties::default()) {
        body.push(a.reason);
        put_properties(body, &a.properties);
    }
    byte1
}

fn reason_and_properties(body: &mut Vec<u8>, d: &Disconnect, v5: bool) {
    if v5 && (d.reason != 0 || d.properties != Properties::default()) {
        body.push(d.reason);
        put_properties(body, &d.properties);
    }
}

fn put_varint<B: BufMut>(out: &mut B, mut value: u32) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

fn put_binary(out: &mut Vec<u8>, data: &[u8]) {
    // Callers keep strings and binary data under 64 KiB: the decoder cannot
    // produce longer ones and the proxy's own strings are short.
    let len = data.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&data[..len]);
}

/// Writes a property block: its length, then each present property in id order.
pub fn put_properties(out: &mut Vec<u8>, p: &Properties) {
    let mut block: Vec<u8> = Vec::new();
    let b = &mut block;
    if let Some(v) = p.payload_format_indicator {
        b.extend_from_slice(&[0x01, v]);
    }
    if let Some(v) = p.message_expiry_interval {
        b.push(0x02);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = &p.content_type {
        b.push(0x03);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = &p.response_topic {
        b.push(0x08);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        b.push(0x09);
        put_binary(b, v);
    }
    if let Some(v) = p.subscription_identifier {
        b.push(0x0B);
        put_varint(b, v);
    }
    if let Some(v) = p.session_expiry_interval {
        b.push(0x11);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = &p.assigned_client_identifier {
        b.push(0x12);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = p.server_keep_alive {
        b.push(0x13);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = &p.authentication_method {
        b.push(0x15);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = &p.authentication_data {
        b.push(0x16);
        put_binary(b, v);
    }
    if let Some(v) = p.request_problem_information {
        b.extend_from_slice(&[0x17, v]);
    }
    if let Some(v) = p.will_delay_interval {
        b.push(0x18);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = p.request_response_information {
        b.extend_from_slice(&[0x19, v]);
    }
    if let Some(v) = &p.response_information {
        b.push(0x1A);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = &p.server_reference {
        b.push(0x1C);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = &p.reason_string {
        b.push(0x1F);
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = p.receive_maximum {
        b.push(0x21);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = p.topic_alias_maximum {
        b.push(0x22);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = p.topic_alias {
        b.push(0x23);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = p.maximum_qos {
        b.extend_from_slice(&[0x24, v]);
    }
    if let Some(v) = p.retain_available {
        b.extend_from_slice(&[0x25, v]);
    }
    for (k, v) in &p.user_properties {
        b.push(0x26);
        put_binary(b, k.as_bytes());
        put_binary(b, v.as_bytes());
    }
    if let Some(v) = p.maximum_packet_size {
        b.push(0x27);
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = p.wildcard_subscription_available {
        b.extend_from_slice(&[0x28, v]);
    }
    if let Some(v) = p.subscription_identifier_available {
        b.extend_from_slice(&[0x29, v]);
    }
    if let Some(v) = p.shared_subscription_available {
        b.extend_from_slice(&[0x2A, v]);
    }
    put_varint(out, block.len() as u32);
    out.extend_from_slice(&block);
}
