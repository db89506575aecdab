//! Framing and decoding of client packets, with no I/O: [`decode`] takes the
//! bytes read so far and returns a packet, "need more", or a
//! [`ProtocolError`]. The size check runs on the fixed header, before the body
//! is buffered, so a hostile remaining length costs nothing.
//!
//! This is our own strict decoder rather than `mqttbytes` (docs/mqtt.md,
//! "Codec"): it refuses what a server must refuse — U+0000 and disallowed code
//! points, wildcards in topic names, reserved flag bits, server-only packets,
//! duplicate properties — and it accepts what `mqttbytes` 0.6 cannot parse,
//! such as a 5.0 DISCONNECT with no reason code and the AUTH packet.
//!
//! Size: ~680 lines, one function per client packet and one for the
//! properties, each citing the spec clause it enforces; they share the
//! reader helpers at the top, and splitting them by packet would scatter
//! one grammar over several files. The tests are in `codec_tests.rs`.

use bytes::{Buf, Bytes, BytesMut};

use super::error::ProtocolError;
use super::packet::*;

/// Limits the decoder enforces before and while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest whole packet (fixed header included) accepted, in bytes.
    pub max_packet_size: usize,
    /// Most user properties accepted in one packet.
    pub max_user_properties: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 268_435_460,
            max_user_properties: usize::MAX,
        }
    }
}

/// The parsed fixed header of a packet whose length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// First byte: packet type and flags.
    pub byte1: u8,
    /// Bytes taken by the fixed header (2 to 5).
    pub header_len: usize,
    /// Remaining length (variable header + payload).
    pub remaining_len: usize,
}

/// Parses the fixed header. `Ok(None)` means more bytes are needed.
pub fn parse_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero byte means a longer encoding than needed [MQTT-1.5.5-1].
            if i > 0 && byte == 0 {
                return Err(ProtocolError::MalformedRemainingLength);
            }
            return Ok(Some(FixedHeader {
                byte1: buf[0],
                header_len: 2 + i,
                remaining_len: len,
            }));
        }
    }
    Err(ProtocolError::MalformedRemainingLength)
}

/// Decodes one client packet from the front of `buf`.
///
/// `version` is `None` until CONNECT has been accepted: then only CONNECT is
/// allowed. Returns `Ok(None)` when `buf` holds only part of a packet; the
/// caller reads more and calls again. On success the packet's bytes are
/// removed from `buf`.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    limits: &Limits,
) -> Result<Option<Packet>, ProtocolError> {
    let Some(header) = parse_fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header.header_len + header.remaining_len;
    if size > limits.max_packet_size {
        return Err(ProtocolError::PacketTooLarge {
            size,
            max: limits.max_packet_size,
        });
    }
    let packet_type = header.byte1 >> 4;
    let flags = header.byte1 & 0x0F;
    // Check type and flags as soon as the first byte is known, so a server-only
    // or reserved packet is refused before its body is waited for.
    check_type_and_flags(packet_type, flags, version)?;
    match (packet_type, version) {
        (1, Some(_)) => return Err(ProtocolError::SecondConnect),
        (t, None) if t != 1 => return Err(ProtocolError::FirstPacketNotConnect(type_name(t))),
        _ => {}
    }
    // No reserve here: the caller's reads grow the buffer as bytes arrive, so
    // an announced length costs nothing until the bytes are really sent.
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header.header_len);
    let mut r = Reader {
        buf: frame,
        packet: type_name(packet_type),
        limits,
    };
    let packet = match (packet_type, version) {
        (1, None) => Packet::Connect(Box::new(r.connect()?)),
        (1, Some(_)) => return Err(ProtocolError::SecondConnect),
        (_, None) => return Err(ProtocolError::FirstPacketNotConnect(type_name(packet_type))),
        (3, Some(v)) => Packet::Publish(r.publish(flags, v)?),
        (4, Some(v)) => Packet::PubAck(r.ack(v)?),
        (5, Some(v)) => Packet::PubRec(r.ack(v)?),
        (6, Some(v)) => Packet::PubRel(r.ack(v)?),
        (7, Some(v)) => Packet::PubComp(r.ack(v)?),
        (8, Some(v)) => Packet::Subscribe(r.subscribe(v)?),
        (10, Some(v)) => Packet::Unsubscribe(r.unsubscribe(v)?),
        (12, Some(_)) => {
            r.finish()?;
            Packet::PingReq
        }
        (14, Some(v)) => Packet::Disconnect(r.disconnect(v, DISCONNECT_PROPS)?),
        (15, Some(v)) => Packet::Auth(r.disconnect(v, AUTH_PROPS)?),
        // check_type_and_flags refused every other type.
        (t, _) => return Err(ProtocolError::ReservedPacketType(t)),
    };
    Ok(Some(packet))
}

fn type_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

fn check_type_and_flags(
    packet_type: u8,
    flags: u8,
    version: Option<Version>,
) -> Result<(), ProtocolError> {
    let expected = match packet_type {
        0 => return Err(ProtocolError::ReservedPacketType(0)),
        15 if version == Some(Version::V311) => return Err(ProtocolError::ReservedPacketType(15)),
        2 | 9 | 11 | 13 => return Err(ProtocolError::ServerOnlyPacket(type_name(packet_type))),
        3 => {
            // PUBLISH flags are DUP, QoS and RETAIN; only QoS 3 is invalid.
            if (flags >> 1) & 0b11 == 3 {
                return Err(ProtocolError::InvalidQoS);
            }
            return Ok(());
        }
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(ProtocolError::ReservedFlags {
            packet: type_name(packet_type),
            flags,
        });
    }
    Ok(())
}

// Which properties each packet type may carry (MQTT 5.0 table 2-4).
const CONNECT_PROPS: &[u8] = &[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27];
const WILL_PROPS: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26];
// 0x0B (subscription identifier) is server-to-client only on PUBLISH [MQTT-3.3.4-6].
const PUBLISH_PROPS: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x23, 0x26];
const ACK_PROPS: &[u8] = &[0x1F, 0x26];
const SUBSCRIBE_PROPS: &[u8] = &[0x0B, 0x26];
const UNSUBSCRIBE_PROPS: &[u8] = &[0x26];
const DISCONNECT_PROPS: &[u8] = &[0x11, 0x1C, 0x1F, 0x26];
const AUTH_PROPS: &[u8] = &[0x15, 0x16, 0x1F, 0x26];

/// A cursor over one packet's body that knows which packet it reads, for errors.
struct Reader<'l> {
    buf: Bytes,
    packet: &'static str,
    limits: &'l Limits,
}

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.remaining() < n {
            return Err(ProtocolError::Truncated(self.packet));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// Variable byte integer (section 1.5.5).
    fn varint(&mut self) -> Result<u32, ProtocolError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= ((byte & 0x7F) as u32) << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(ProtocolError::MalformedRemainingLength);
                }
                return Ok(value);
            }
        }
        Err(ProtocolError::MalformedRemainingLength)
    }

    fn binary(&mut self) -> Result<Bytes, ProtocolError> {
        let len = self.u16()? as usize;
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    fn string(&mut self) -> Result<String, ProtocolError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(|_| ProtocolError::InvalidUtf8)?;
        check_code_points(s)?;
        Ok(s.to_owned())
    }

    /// A topic filter: a string of at least one character [MQTT-4.7.3-1].
    fn filter(&mut self) -> Result<String, ProtocolError> {
        let f = self.string()?;
        if f.is_empty() {
            return Err(ProtocolError::EmptyTopicFilter);
        }
        Ok(f)
    }

    fn packet_id(&mut self) -> Result<u16, ProtocolError> {
        match self.u16()? {
            0 => Err(ProtocolError::PacketIdZero),
            id => Ok(id),
        }
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.has_remaining() {
            return Err(ProtocolError::TrailingBytes(self.packet));
        }
        Ok(())
    }

    /// Reads a property block, refusing unknown, misplaced and duplicate properties.
    fn properties(&mut self, allowed: &[u8]) -> Result<Properties, ProtocolError> {
        let len = self.varint()? as usize;
        self.need(len)?;
        let mut block = Reader {
            buf: self.buf.split_to(len),
            packet: self.packet,
            limits: self.limits,
        };
        let mut p = Properties::default();
        while block.buf.has_remaining() {
            let id = block.varint()?;
            let id = u8::try_from(id).map_err(|_| ProtocolError::UnknownProperty(0xFF))?;
            if !allowed.contains(&id) {
                return Err(if KNOWN_PROPS.contains(&id) {
                    ProtocolError::PropertyNotAllowed {
                        id,
                        packet: self.packet,
                    }
                } else {
                    ProtocolError::UnknownProperty(id)
                });
            }
            block.property(id, &mut p)?;
        }
        Ok(p)
    }

    fn property(&mut self, id: u8, p: &mut Properties) -> Result<(), ProtocolError> {
        fn set<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), ProtocolError> {
            if slot.is_some() {
                return Err(ProtocolError::DuplicateProperty(id));
            }
            *slot = Some(value);
            Ok(())
        }
        fn bool_byte(id: u8, v: u8) -> Result<u8, ProtocolError> {
            if v > 1 {
                return Err(ProtocolError::InvalidPropertyValue(id));
            }
            Ok(v)
        }
        match id {
            0x01 => {
                let v = self.u8()?;
                set(&mut p.payload_format_indicator, id, bool_byte(id, v)?)
            }
            0x02 => {
                let v = self.u32()?;
                set(&mut p.message_expiry_interval, id, v)
            }
            0x03 => {
                let v = self.string()?;
                set(&mut p.content_type, id, v)
            }
            0x08 => {
                let v = self.string()?;
                // A response topic is a topic name [MQTT-3.3.2-14].
                if v.is_empty() {
                    return Err(ProtocolError::EmptyTopicName);
                }
                check_topic_name(&v)?;
                set(&mut p.response_topic, id, v)
            }
            0x09 => {
                let v = self.binary()?;
                set(&mut p.correlation_data, id, v)
            }
            0x0B => {
                let v = self.varint()?;
                if v == 0 {
                    return Err(ProtocolError::InvalidPropertyValue(id));
                }
                set(&mut p.subscription_identifier, id, v)
            }
            0x11 => {
                let v = self.u32()?;
                set(&mut p.session_expiry_interval, id, v)
            }
            0x15 => {
                let v = self.string()?;
                set(&mut p.authentication_method, id, v)
            }
            0x16 => {
                let v = self.binary()?;
                set(&mut p.authentication_data, id, v)
            }
            0x17 => {
                let v = self.u8()?;
                set(&mut p.request_problem_information, id, bool_byte(id, v)?)
            }
            0x18 => {
                let v = self.u32()?;
                set(&mut p.will_delay_interval, id, v)
            }
            0x19 => {
                let v = self.u8()?;
                set(&mut p.request_response_information, id, bool_byte(id, v)?)
            }
            0x1C => {
                let v = self.string()?;
                set(&mut p.server_reference, id, v)
            }
            0x1F => {
                let v = self.string()?;
                set(&mut p.reason_string, id, v)
            }
            0x21 => {
                let v = self.u16()?;
                if v == 0 {
                    return Err(ProtocolError::InvalidPropertyValue(id));
                }
                set(&mut p.receive_maximum, id, v)
            }
            0x22 => {
                let v = self.u16()?;
                set(&mut p.topic_alias_maximum, id, v)
            }
            0x23 => {
                let v = self.u16()?;
                set(&mut p.topic_alias, id, v)
            }
            0x26 => {
                if p.user_properties.len() >= self.limits.max_user_properties {
                    return Err(ProtocolError::TooManyUserProperties {
                        count: p.user_properties.len() + 1,
                        max: self.limits.max_user_properties,
                    });
                }
                let k = self.string()?;
                let v = self.string()?;
                p.user_properties.push((k, v));
                Ok(())
            }
            0x27 => {
                let v = self.u32()?;
                if v == 0 {
                    return Err(ProtocolError::InvalidPropertyValue(id));
                }
                set(&mut p.maximum_packet_size, id, v)
            }
            // Only reachable for ids in an `allowed` list, all handled above.
            other => Err(ProtocolError::UnknownProperty(other)),
        }
    }

    fn connect(&mut self) -> Result<Connect, ProtocolError> {
        let name = self.binary()?;
        let level = self.u8()?;
        if name.as_ref() != b"MQTT" {
            // MQTT 3.1 ("MQIsdp", level 3) gets a "wrong version" answer below.
            if name.as_ref() == b"MQIsdp" {
                return Err(ProtocolError::UnsupportedProtocolLevel(level));
            }
            return Err(ProtocolError::BadProtocolName(
                String::from_utf8_lossy(&name).into_owned(),
            ));
        }
        let version = match level {
            4 => Version::V311,
            5 => Version::V5,
            other => return Err(ProtocolError::UnsupportedProtocolLevel(other)),
        };
        let flags = self.u8()?;
        if flags & 0x01 != 0 {
            return Err(ProtocolError::ConnectReservedFlag);
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0b11;
        let will_retain = flags & 0x20 != 0;
        let has_password = flags & 0x40 != 0;
        let has_username = flags & 0x80 != 0;
        if will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
            return Err(ProtocolError::WillFlags);
        }
        if version == Version::V311 && has_password && !has_username {
            return Err(ProtocolError::PasswordWithoutUsername);
        }
        let keep_alive = self.u16()?;
        let properties = match version {
            Version::V5 => self.properties(CONNECT_PROPS)?,
            Version::V311 => Properties::default(),
        };
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(ProtocolError::InvalidPropertyValue(0x16));
        }
        let client_id = self.string()?;
        let will = if will_flag {
            let will_properties = match version {
                Version::V5 => self.properties(WILL_PROPS)?,
                Version::V311 => Properties::default(),
            };
            // The cap is per packet: CONNECT and will properties together.
            let user_properties =
                properties.user_properties.len() + will_properties.user_properties.len();
            if user_properties > self.limits.max_user_properties {
                return Err(ProtocolError::TooManyUserProperties {
                    count: user_properties,
                    max: self.limits.max_user_properties,
                });
            }
            let topic = self.string()?;
            check_topic_name(&topic)?;
            if topic.is_empty() {
                return Err(ProtocolError::EmptyTopicName);
            }
            let payload = self.binary()?;
            Some(Will {
                topic,
                payload,
                // will_qos is 0..=2 here: 3 was refused above.
                qos: QoS::from_bits(will_qos).unwrap_or(QoS::AtMostOnce),
                retain: will_retain,
                properties: will_properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(self.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(self.binary()?)
        } else {
            None
        };
        self.finish()?;
        Ok(Connect {
            version,
            client_id,
            clean_start,
            keep_alive,
            username,
            password,
            will,
            properties,
        })
    }

    fn publish(&mut self, flags: u8, version: Version) -> Result<Publish, ProtocolError> {
        let dup = flags & 0b1000 != 0;
        let retain = flags & 0b0001 != 0;
        // QoS 3 was refused by check_type_and_flags.
        let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(ProtocolError::InvalidQoS)?;
        if dup && qos == QoS::AtMostOnce {
            return Err(ProtocolError::DupOnQos0);
        }
        let topic = self.string()?;
        check_topic_name(&topic)?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()?
        };
        let properties = match version {
            Version::V5 => self.properties(PUBLISH_PROPS)?,
            Version::V311 => Properties::default(),
        };
        // An empty topic is legal only with a 5.0 topic alias; the session checks the alias.
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(ProtocolError::EmptyTopicName);
        }
        let payload = std::mem::take(&mut self.buf);
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err()
        {
            return Err(ProtocolError::PayloadNotUtf8);
        }
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    fn ack(&mut self, version: Version) -> Result<Ack, ProtocolError> {
        let packet_id = self.packet_id()?;
        let mut ack = Ack::new(packet_id, 0);
        if version == Version::V5 && self.buf.has_remaining() {
            ack.reason = self.u8()?;
            if self.buf.has_remaining() {
                ack.properties = self.properties(ACK_PROPS)?;
            }
        }
        self.finish()?;
        Ok(ack)
    }

    fn subscribe(&mut self, version: Version) -> Result<Subscribe, ProtocolError> {
        let packet_id = self.packet_id()?;
        let properties = match version {
            Version::V5 => self.properties(SUBSCRIBE_PROPS)?,
            Version::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while self.buf.has_remaining() {
            let filter = self.filter()?;
            let options = self.u8()?;
            let reserved = match version {
                Version::V311 => options & 0b1111_1100,
                Version::V5 => options & 0b1100_0000,
            };
            let retain_handling = (options >> 4) & 0b11;
            if reserved != 0 || retain_handling == 3 {
                return Err(ProtocolError::SubscriptionOptions);
            }
            let qos = QoS::from_bits(options & 0b11).ok_or(ProtocolError::SubscriptionOptions)?;
            filters.push(SubscribeFilter {
                filter,
                qos,
                no_local: options & 0b0100 != 0,
                retain_as_published: options & 0b1000 != 0,
                retain_handling,
            });
        }
        if filters.is_empty() {
            return Err(ProtocolError::NoTopicFilter("SUBSCRIBE"));
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    fn unsubscribe(&mut self, version: Version) -> Result<Unsubscribe, ProtocolError> {
        let packet_id = self.packet_id()?;
        let properties = match version {
            Version::V5 => self.properties(UNSUBSCRIBE_PROPS)?,
            Version::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while self.buf.has_remaining() {
            filters.push(self.filter()?);
        }
        if filters.is_empty() {
            return Err(ProtocolError::NoTopicFilter("UNSUBSCRIBE"));
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    fn disconnect(
        &mut self,
        version: Version,
        allowed: &[u8],
    ) -> Result<Disconnect, ProtocolError> {
        let mut d = Disconnect::default();
        if version == Version::V5 && self.buf.has_remaining() {
            d.reason = self.u8()?;
            if self.buf.has_remaining() {
                d.properties = self.properties(allowed)?;
            }
        }
        self.finish()?;
        Ok(d)
    }
}

const KNOWN_PROPS: &[u8] = &[
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C,
    0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
];

/// Refuses U+0000 [MQTT-1.5.4-2], and the control characters and non-characters
/// that 5.0 section 1.5.4 says a receiver may treat as malformed: they would
/// otherwise reach Kafka keys and headers, where downstream tools choke on them.
pub fn check_code_points(s: &str) -> Result<(), ProtocolError> {
    // Fast path: printable ASCII is by far the common case.
    if s.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Ok(());
    }
    for c in s.chars() {
        let cp = c as u32;
        if cp == 0 {
            return Err(ProtocolError::NullCharacter);
        }
        let control = cp < 0x20 || (0x7F..=0x9F).contains(&cp);
        let non_character = (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE;
        if control || non_character {
            return Err(ProtocolError::DisallowedCodePoint(cp));
        }
    }
    Ok(())
}

/// A topic name must not hold wildcards [MQTT-3.3.2-2]. (Emptiness is checked
/// by the caller, since a 5.0 topic alias may stand for an empty name.)
pub fn check_topic_name(topic: &str) -> Result<(), ProtocolError> {
    if topic.contains(['+', '#']) {
        return Err(ProtocolError::WildcardInTopicName(topic.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
