//! Fuzz target for the client packet decoder (`mqtt::codec::decode`).
//!
//! The first input byte picks the decoder state (before CONNECT, 3.1.1 or
//! 5.0) and the limits; the rest is a byte stream decoded packet by packet.
//! Besides "never panics", it checks the contracts the connection task relies
//! on: "need more" consumes nothing, a packet consumes its bytes, a packet is
//! never larger than the limit, and every decoded packet encodes back to bytes
//! that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_kafka_proxy::mqtt::codec::{decode, Limits};
use mqtt_kafka_proxy::mqtt::encode::encode;
use mqtt_kafka_proxy::mqtt::packet::{Packet, Version};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut state = match selector % 3 {
        0 => None,
        1 => Some(Version::V311),
        _ => Some(Version::V5),
    };
    let limits = Limits {
        max_packet_size: if selector & 0x80 != 0 { 64 } else { 1 << 20 },
        max_user_properties: usize::from((selector >> 2) & 0x0F),
    };
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match decode(&mut buf, state, &limits) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "need-more consumed bytes");
                return;
            }
            Err(_) => return,
            Ok(Some(packet)) => {
                let used = before - buf.len();
                assert!(used >= 2 && used <= limits.max_packet_size);
                let version = match (&packet, state) {
                    (Packet::Connect(c), _) => c.version,
                    (_, Some(v)) => v,
                    (_, None) => unreachable!("only CONNECT decodes before CONNECT"),
                };
                let decode_state = if state.is_none() { None } else { Some(version) };
                let mut wire = BytesMut::new();
                encode(&packet, version, &mut wire);
                let again = decode(&mut wire, decode_state, &Limits::default())
                    .expect("a decoded packet re-encodes to valid bytes")
                    .expect("a re-encoded packet is complete");
                assert_eq!(again, packet, "encode(decode(x)) round trip");
                assert!(wire.is_empty(), "re-encoded packet left bytes behind");
                state = Some(version);
            }
        }
    }
});
