//! Hostile and broken clients, end to end: malformed and oversized packets,
//! protocol violations, silence and dribbling, unroutable topics and misuse
//! of MQTT 5 features. Each test starts a real proxy on port 0, talks to it
//! over real sockets (hand-made bytes where no library would send them) and
//! checks the defined outcome: 3.1.1 clients are closed, 5.0 clients first
//! get a DISCONNECT with the reason code, nothing bad reaches Kafka, and
//! well-behaved clients on the same proxy do not notice.

use std::time::{Duration, Instant};

use crate::common::*;
use mqtt_kafka_proxy::config::UnmatchedAction;
use mqtt_kafka_proxy::mqtt::packet::{self as mp, reason, Packet, Properties, Version};

const V311: Version = Version::V311;
const V5: Version = Version::V5;

/// A CONNECT with 5.0 properties, which `connect_bytes` does not take.
fn connect_with(id: &str, v: Version, keep_alive: u16, properties: Properties) -> Vec<u8> {
    encode(
        &Packet::Connect(Box::new(mp::Connect {
            version: v,
            client_id: id.into(),
            clean_start: true,
            keep_alive,
            username: None,
            password: None,
            will: None,
            properties,
        })),
        v,
    )
}

/// One violation on a fresh connection: CONNECT, send `bad`, check the refusal.
async fn check_violation(port: u16, v: Version, case: &str, bad: &[u8], code: u8) {
    let mut raw = open(port, "hostile", v).await;
    raw.send(bad).await;
    expect_refusal(&mut raw, v, code, &format!("{case} ({v:?})")).await;
}

/// A connection that never gets as far as CONNACK: the proxy writes `expect`
/// (possibly nothing) and closes.
async fn check_before_connect(port: u16, case: &str, bytes: &[u8], expect: &[u8]) {
    let mut raw = Raw::connect(port).await;
    raw.send(bytes).await;
    let got = raw.read_to_close().await;
    assert_eq!(got, expect, "{case}: answer before closing");
}

// ---------------------------------------------------------------------------
// Malformed packets and protocol violations after CONNECT.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_the_connection() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let mut pid0 = publish_bytes(
            publish("devices/d/events/x", mp::QoS::AtLeastOnce, 1, b"x"),
            v,
        );
        // Packet id bytes follow the fixed header (2) and the topic (2 + 18).
        pid0[22] = 0;
        pid0[23] = 0;
        let mut dup_qos0 = publish_bytes(
            publish("devices/d/events/x", mp::QoS::AtMostOnce, 0, b"x"),
            v,
        );
        dup_qos0[0] |= 0b1000;
        let cases: Vec<(&str, Vec<u8>, u8)> = vec![
            (
                "remaining length of 5 bytes",
                vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
                reason::MALFORMED_PACKET,
            ),
            (
                "topic length runs past the packet",
                vec![0x30, 0x04, 0x00, 0x0A, b'a', b'b'],
                reason::MALFORMED_PACKET,
            ),
            (
                "PINGREQ with a body",
                vec![0xC0, 0x01, 0x00],
                reason::MALFORMED_PACKET,
            ),
            (
                "PUBACK with a truncated packet id",
                vec![0x40, 0x01, 0x00],
                reason::MALFORMED_PACKET,
            ),
            (
                "SUBSCRIBE without filters",
                match v {
                    Version::V311 => vec![0x82, 0x02, 0x00, 0x01],
                    Version::V5 => vec![0x82, 0x03, 0x00, 0x01, 0x00],
                },
                reason::PROTOCOL_ERROR,
            ),
            (
                "QoS 1 PUBLISH with packet id 0",
                pid0,
                reason::PROTOCOL_ERROR,
            ),
            ("DUP on a QoS 0 PUBLISH", dup_qos0, reason::PROTOCOL_ERROR),
        ];
        for (case, bytes, code) in cases {
            check_violation(port, v, case, &bytes, code).await;
        }
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_empty_topic_names_are_refused() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        for topic in ["devices/+/events/x", "devices/d/events/#", "#", ""] {
            let bad = publish_bytes(publish(topic, mp::QoS::AtMostOnce, 0, b"x"), v);
            let case = format!("PUBLISH to {topic:?}");
            check_violation(port, v, &case, &bad, reason::TOPIC_NAME_INVALID).await;
        }
    }
    // A response topic is a topic name too [MQTT-3.3.2-14].
    let mut p = publish("devices/d/events/x", mp::QoS::AtLeastOnce, 1, b"x");
    p.properties.response_topic = Some("replies/+".into());
    let bad = publish_bytes(p, V5);
    check_violation(
        port,
        V5,
        "wildcard response topic",
        &bad,
        reason::TOPIC_NAME_INVALID,
    )
    .await;
    let recs = nothing_but_sentinel(&t, "hostile").await;
    assert_eq!(recs.len(), 1, "no refused PUBLISH reached Kafka: {recs:?}");
    t.proxy.shutdown().await;
}

/// Publishes a QoS 1 sentinel as `client_id` (so it lands on the same
/// partition as anything that client's earlier connections produced) and
/// returns every `iot.events` record up to and including it.
async fn nothing_but_sentinel(t: &TestProxy, client_id: &str) -> Vec<Rec> {
    let mut c = v4_connect(v4_options(client_id, t.tcp_port())).await;
    c.client
        .publish(
            format!("devices/{client_id}/events/sentinel"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    c.pubacks(1).await;
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), |r| {
        r.iter().any(|r| r.value == b"sentinel")
    })
    .await;
    let sentinel = recs.iter().find(|r| r.value == b"sentinel").unwrap();
    recs.iter()
        .filter(|r| r.partition == sentinel.partition && r.offset <= sentinel.offset)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_are_refused_from_the_fixed_header() {
    const MAX: usize = 1024;
    let t = TestProxy::start_with(|c| c.mqtt.max_packet_size_bytes = MAX).await;
    let port = t.tcp_port();

    // A packet of exactly `size` bytes, fixed header included.
    let sized = |v: Version, pid: u16, size: usize| {
        let p = |n: usize| {
            publish_bytes(
                publish(
                    "devices/big/events/x",
                    mp::QoS::AtLeastOnce,
                    pid,
                    &vec![b'p'; n],
                ),
                v,
            )
        };
        let guess = p(500).len();
        let bytes = p(500 + size - guess);
        assert_eq!(bytes.len(), size);
        bytes
    };

    for v in [V311, V5] {
        let (mut raw, connack) = open_ka(port, "big", v, 0).await;
        if v == V5 {
            let (props, _) = properties(&connack[2..]);
            assert_eq!(
                property(&props, 0x27),
                Some(&(MAX as u32).to_be_bytes()[..]),
                "Maximum Packet Size announced"
            );
        }
        // Exactly at the limit: accepted and acknowledged.
        raw.send(&sized(v, 1, MAX)).await;
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!((b1, &body[..2]), (0x40, &[0u8, 1][..]), "PUBACK 1");
        assert_eq!(reason_at(&body, 2), reason::SUCCESS);
        // One byte over: refused.
        raw.send(&sized(v, 2, MAX + 1)).await;
        expect_refusal(&mut raw, v, reason::PACKET_TOO_LARGE, "one byte over").await;

        // 10 MB announced, a few bytes sent: refused at once, not after
        // waiting for a body that never comes (keep-alive is off).
        let mut raw = open(port, "big", v).await;
        let mut huge = vec![0x32];
        put_varint(&mut huge, 10_000_000);
        huge.extend_from_slice(b"\x00\x03abc\x00\x01");
        raw.send(&huge).await;
        tokio::time::timeout(
            Duration::from_secs(5),
            expect_refusal(&mut raw, v, reason::PACKET_TOO_LARGE, "10 MB announced"),
        )
        .await
        .expect("refused without waiting for the body");
    }
    // Before CONNECT the same limit holds, and nothing is answered.
    let mut huge_connect = vec![0x10];
    put_varint(&mut huge_connect, 200_000_000);
    huge_connect.extend_from_slice(b"\x00\x04MQTT\x04");
    check_before_connect(port, "200 MB CONNECT", &huge_connect, &[]).await;
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// CONNECT: deadline, ordering, versions and refusals.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_before_the_deadline_closes_the_socket() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let t = TestProxy::start_with(|c| c.mqtt.connect_timeout_ms = 300).await;
    let port = t.tcp_port();
    let connect = connect_bytes("slow-device-with-a-long-client-id-0123456789", V311, 30);

    // Silent, then half a CONNECT: closed at the deadline, nothing written.
    for (case, bytes) in [
        ("silent", &[][..]),
        ("half CONNECT", &connect[..connect.len() / 2]),
    ] {
        let started = Instant::now();
        check_before_connect(port, case, bytes, &[]).await;
        let took = started.elapsed();
        assert!(
            took >= DEADLINE - Duration::from_millis(50),
            "{case}: closed only at the deadline, took {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{case}: took {took:?}");
    }

    // Dribbled: one byte every 50 ms still arrives, but the whole CONNECT
    // must be in before the deadline.
    let mut raw = Raw::connect(port).await;
    let (sent, got) = dribble(
        &mut raw,
        &connect,
        0,
        Duration::from_millis(50),
        "dribbling client",
    )
    .await;
    assert!(
        got.is_empty(),
        "no CONNACK for a dribbled CONNECT: {got:02x?}"
    );
    assert!(
        sent < connect.len(),
        "cut before the CONNECT was complete ({sent} of {} bytes)",
        connect.len()
    );
    // `sent < connect.len()` above already proves the cut came at the deadline.
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_must_be_connect() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PINGREQ", vec![0xC0, 0x00]),
        (
            "PUBLISH",
            publish_bytes(
                publish("devices/d/events/x", mp::QoS::AtMostOnce, 0, b"x"),
                V311,
            ),
        ),
        ("SUBSCRIBE", subscribe_bytes(&["a/b"], V311)),
        ("DISCONNECT", vec![0xE0, 0x00]),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello on the TCP port",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0, 0, 1, 0],
        ),
    ];
    for (case, bytes) in cases {
        check_before_connect(port, case, &bytes, &[]).await;
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_is_a_protocol_error() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let again = connect_bytes("hostile", v, 0);
        check_violation(port, v, "second CONNECT", &again, reason::PROTOCOL_ERROR).await;
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_versions_and_bad_connects_are_refused() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    const WRONG_VERSION: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

    // MQTT 3.1: "MQIsdp", level 3.
    let mut body = mqtt_string(b"MQIsdp");
    body.extend_from_slice(&[0x03, 0x02, 0x00, 0x3C]);
    body.extend_from_slice(&mqtt_string(b"old-client"));
    check_before_connect(port, "MQTT 3.1", &frame(0x10, &body), &WRONG_VERSION).await;
    // "MQTT" with levels 3 and 6. The level byte follows the fixed header
    // (2 bytes) and the protocol name (6 bytes).
    for level in [3u8, 6] {
        let mut c = connect_bytes("future-client", V5, 0);
        c[8] = level;
        check_before_connect(port, &format!("level {level}"), &c, &WRONG_VERSION).await;
    }
    // A protocol name that is not MQTT at all: closed, nothing said.
    let mut c = connect_bytes("not-mqtt", V311, 0);
    c[4..8].copy_from_slice(b"MQTX");
    check_before_connect(port, "protocol name MQTX", &c, &[]).await;
    // CONNECT's reserved flag [MQTT-3.1.2-3]: closed, nothing said.
    let mut c = connect_bytes("reserved-flag", V311, 0);
    c[9] |= 0x01;
    check_before_connect(port, "CONNECT reserved flag", &c, &[]).await;
    // U+0000 and ill-formed UTF-8 in the client id: closed, nothing said.
    for v in [V311, V5] {
        let c = connect_bytes("dev\0ice", v, 0);
        check_before_connect(port, "U+0000 in client id", &c, &[]).await;
        let mut c = connect_bytes("devXYice", v, 0);
        let at = c.len() - 5;
        c[at..at + 2].copy_from_slice(&[0xC3, 0x28]);
        check_before_connect(port, "ill-formed UTF-8 in client id", &c, &[]).await;
    }
    // 3.1.1: an empty client id needs a clean session [MQTT-3.1.3-8].
    let mut c = connect_bytes("", V311, 0);
    c[9] &= !0x02;
    check_before_connect(
        port,
        "empty id, no clean session",
        &c,
        &[0x20, 0x02, 0x00, 0x02],
    )
    .await;
    // A client id over the 128-byte limit.
    let long = "x".repeat(129);
    check_before_connect(
        port,
        "long client id (3.1.1)",
        &connect_bytes(&long, V311, 0),
        &[0x20, 0x02, 0x00, 0x02],
    )
    .await;
    let mut raw = Raw::connect(port).await;
    raw.send(&connect_bytes(&long, V5, 0)).await;
    let got = parse_packets(&raw.read_to_close().await);
    assert_eq!(got.len(), 1, "one CONNACK: {got:02x?}");
    assert_eq!(got[0].0, 0x20);
    assert_eq!(got[0].1[1], reason::CLIENT_IDENTIFIER_NOT_VALID);
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// UTF-8, reserved bits, server-only packets, properties.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_nul_in_topics_never_reach_kafka() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let mut bad_utf8 = publish_bytes(
            publish("devices/hostile/events/XY", mp::QoS::AtLeastOnce, 1, b"bad"),
            v,
        );
        let at = bad_utf8
            .windows(2)
            .position(|w| w == b"XY")
            .expect("placeholder");
        bad_utf8[at..at + 2].copy_from_slice(&[0xC3, 0x28]);
        check_violation(
            port,
            v,
            "ill-formed UTF-8 topic",
            &bad_utf8,
            reason::MALFORMED_PACKET,
        )
        .await;
        let nul = publish_bytes(
            publish("devices/hostile/events/\0", mp::QoS::AtLeastOnce, 1, b"bad"),
            v,
        );
        check_violation(port, v, "U+0000 in topic", &nul, reason::MALFORMED_PACKET).await;
        let control = publish_bytes(
            publish(
                "devices/hostile/events/\u{7}",
                mp::QoS::AtLeastOnce,
                1,
                b"bad",
            ),
            v,
        );
        check_violation(
            port,
            v,
            "U+0007 in topic",
            &control,
            reason::MALFORMED_PACKET,
        )
        .await;
    }
    // 5.0 strings in properties are checked the same way.
    let mut p = publish("devices/hostile/events/x", mp::QoS::AtLeastOnce, 1, b"bad");
    p.properties.user_properties = vec![("k\0".into(), "v".into())];
    check_violation(
        port,
        V5,
        "U+0000 in a user property",
        &publish_bytes(p, V5),
        reason::MALFORMED_PACKET,
    )
    .await;
    let mut p = publish(
        "devices/hostile/events/x",
        mp::QoS::AtLeastOnce,
        1,
        &[0xFF, 0xFE],
    );
    p.properties.payload_format_indicator = Some(1);
    check_violation(
        port,
        V5,
        "payload format UTF-8 with a binary payload",
        &publish_bytes(p, V5),
        reason::PAYLOAD_FORMAT_INVALID,
    )
    .await;
    let recs = nothing_but_sentinel(&t, "hostile").await;
    assert_eq!(
        recs.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        [b"sentinel".to_vec()],
        "only the sentinel reached Kafka"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_flags_reserved_types_and_qos3_close_the_connection() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let mut qos3 = publish_bytes(
            publish("devices/d/events/x", mp::QoS::AtLeastOnce, 1, b"x"),
            v,
        );
        qos3[0] = 0x36;
        let mut subscribe0 = subscribe_bytes(&["a/b"], v);
        subscribe0[0] = 0x80;
        let mut unsubscribe0 = encode(
            &Packet::Unsubscribe(mp::Unsubscribe {
                packet_id: 3,
                properties: Properties::default(),
                filters: vec!["a/b".into()],
            }),
            v,
        );
        unsubscribe0[0] = 0xA0;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("PUBLISH QoS 3", qos3),
            ("PUBREL with flags 0", vec![0x60, 0x02, 0x00, 0x01]),
            ("SUBSCRIBE with flags 0", subscribe0),
            ("UNSUBSCRIBE with flags 0", unsubscribe0),
            ("PINGREQ with flags 1", vec![0xC1, 0x00]),
            ("DISCONNECT with flags 8", vec![0xE8, 0x00]),
            ("PUBACK with flags 2", vec![0x42, 0x02, 0x00, 0x01]),
            ("reserved packet type 0", vec![0x00, 0x00]),
        ];
        for (case, bytes) in cases {
            check_violation(port, v, case, &bytes, reason::MALFORMED_PACKET).await;
        }
    }
    // AUTH does not exist in 3.1.1; in 5.0 without an authentication method it
    // is a protocol error.
    check_violation(port, V311, "AUTH", &[0xF0, 0x00], 0).await;
    check_violation(port, V5, "AUTH", &[0xF0, 0x00], reason::PROTOCOL_ERROR).await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_packets_close_the_connection() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    let cases: [(&str, &[u8]); 5] = [
        ("CONNACK", &[0x20, 0x02, 0x00, 0x00]),
        ("SUBACK", &[0x90, 0x03, 0x00, 0x01, 0x00]),
        ("UNSUBACK", &[0xB0, 0x02, 0x00, 0x01]),
        ("PINGRESP", &[0xD0, 0x00]),
        // The first byte is enough to refuse it; the 16 KB body never comes.
        ("SUBACK announcing 16 KB", &[0x90, 0xFF, 0x7F]),
    ];
    for v in [V311, V5] {
        for (case, bytes) in cases {
            check_violation(port, v, case, bytes, reason::PROTOCOL_ERROR).await;
        }
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_v5_properties_close_the_connection() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    // PUBLISH QoS 0 to a routed topic with a hand-made property block.
    let with_props = |props: &[u8]| {
        let mut body = mqtt_string(b"devices/d/events/x");
        put_varint(&mut body, props.len());
        body.extend_from_slice(props);
        body.extend_from_slice(b"payload");
        frame(0x30, &body)
    };
    let ct = |s: &[u8]| {
        let mut p = vec![0x03];
        p.extend_from_slice(&mqtt_string(s));
        p
    };
    let twice = [ct(b"a"), ct(b"b")].concat();
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "content type twice",
            with_props(&twice),
            reason::PROTOCOL_ERROR,
        ),
        (
            "payload format indicator twice",
            with_props(&[0x01, 0x00, 0x01, 0x00]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "message expiry twice",
            with_props(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "payload format indicator 2",
            with_props(&[0x01, 0x02]),
            reason::PROTOCOL_ERROR,
        ),
        (
            "session expiry (a CONNECT property) on PUBLISH",
            with_props(&[0x11, 0, 0, 0, 1]),
            reason::MALFORMED_PACKET,
        ),
        (
            "subscription identifier on PUBLISH",
            with_props(&[0x0B, 0x01]),
            reason::MALFORMED_PACKET,
        ),
        (
            "unknown property 0x7F",
            with_props(&[0x7F, 0x00]),
            reason::MALFORMED_PACKET,
        ),
        (
            "property block longer than the packet",
            with_props(&[0x01]),
            reason::MALFORMED_PACKET,
        ),
    ];
    for (case, bytes, code) in cases {
        check_violation(port, V5, case, &bytes, code).await;
    }
    // Too many user properties (default cap 32).
    let mut p = publish("devices/d/events/x", mp::QoS::AtMostOnce, 0, b"x");
    p.properties.user_properties = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    check_violation(
        port,
        V5,
        "33 user properties",
        &publish_bytes(p, V5),
        reason::IMPLEMENTATION_SPECIFIC_ERROR,
    )
    .await;
    // A user property in the reserved "mqtt." namespace is refused per message.
    let mut raw = open(port, "hostile", V5).await;
    let mut p = publish("devices/d/events/x", mp::QoS::AtLeastOnce, 9, b"x");
    p.properties.user_properties = vec![("mqtt.topic".into(), "devices/other/events/x".into())];
    raw.send(&publish_bytes(p, V5)).await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!((b1, &body[..2]), (0x40, &[0u8, 9][..]));
    assert_eq!(reason_at(&body, 2), reason::IMPLEMENTATION_SPECIFIC_ERROR);
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// Unroutable topics.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_topic_closes_a_v311_client_without_puback() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for qos in [
        mp::QoS::AtMostOnce,
        mp::QoS::AtLeastOnce,
        mp::QoS::ExactlyOnce,
    ] {
        let bad = publish_bytes(publish("nowhere/x", qos, 1, b"lost"), V311);
        check_violation(port, V311, &format!("unmatched {qos:?}"), &bad, 0).await;
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_topic_gets_reason_0x90_from_a_v5_connection_that_stays_usable() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    let mut raw = open(port, "v5-unrouted", V5).await;
    // Refused and routed, pipelined: acknowledged in order, each with its code.
    let mut two = publish_bytes(publish("nowhere/x", mp::QoS::AtLeastOnce, 1, b"lost"), V5);
    two.extend(publish_bytes(
        publish(
            "devices/v5-unrouted/events/ok",
            mp::QoS::AtLeastOnce,
            2,
            b"kept",
        ),
        V5,
    ));
    raw.send(&two).await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!((b1, &body[..2]), (0x40, &[0u8, 1][..]), "PUBACK 1 first");
    assert_eq!(reason_at(&body, 2), reason::TOPIC_NAME_INVALID);
    let (props, _) = properties(&body[3..]);
    assert!(
        property(&props, 0x1F).is_some(),
        "reason string sent by default"
    );
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!((b1, &body[..2]), (0x40, &[0u8, 2][..]), "then PUBACK 2");
    assert_eq!(reason_at(&body, 2), reason::SUCCESS);
    // QoS 2: PUBREC with the reason code.
    raw.send(&publish_bytes(
        publish("nowhere/y", mp::QoS::ExactlyOnce, 3, b"lost"),
        V5,
    ))
    .await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!((b1, &body[..2]), (0x50, &[0u8, 3][..]), "PUBREC 3");
    assert_eq!(reason_at(&body, 2), reason::TOPIC_NAME_INVALID);
    // Still usable.
    raw.send(&[0xC0, 0x00]).await;
    assert_eq!(read_packet(&mut raw).await, (0xD0, vec![]));
    // QoS 0 has no ack to carry the code: DISCONNECT 0x90.
    raw.send(&publish_bytes(
        publish("nowhere/z", mp::QoS::AtMostOnce, 0, b"lost"),
        V5,
    ))
    .await;
    expect_refusal(&mut raw, V5, reason::TOPIC_NAME_INVALID, "unmatched QoS 0").await;

    // Request Problem Information = 0: no reason string on the PUBACK [MQTT-3.1.2-29].
    let mut raw = Raw::connect(port).await;
    let props = Properties {
        request_problem_information: Some(0),
        ..Properties::default()
    };
    raw.send(&connect_with("quiet", V5, 0, props)).await;
    assert_eq!(read_packet(&mut raw).await.0, 0x20);
    raw.send(&publish_bytes(
        publish("nowhere/x", mp::QoS::AtLeastOnce, 4, b"lost"),
        V5,
    ))
    .await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x40);
    assert_eq!(reason_at(&body, 2), reason::TOPIC_NAME_INVALID);
    if body.len() > 3 {
        let (props, _) = properties(&body[3..]);
        assert!(
            property(&props, 0x1F).is_none(),
            "no reason string: {body:02x?}"
        );
    }

    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), 1).await;
    assert_eq!(recs[0].value, b"kept");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_topic_goes_to_the_dead_letter_topic_when_configured() {
    let t = TestProxy::start_with(|c| c.unmatched.action = UnmatchedAction::DeadLetter).await;
    let mut c4 = v4_connect(v4_options("dl-311", t.tcp_port())).await;
    c4.client
        .publish("nowhere/x", rumqttc::QoS::AtLeastOnce, false, "lost-311")
        .await
        .unwrap();
    c4.pubacks(1).await;
    let mut raw = open(t.tcp_port(), "dl-5", V5).await;
    raw.send(&publish_bytes(
        publish("nowhere/y", mp::QoS::AtLeastOnce, 1, b"lost-5"),
        V5,
    ))
    .await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x40);
    assert_eq!(
        reason_at(&body, 2),
        reason::SUCCESS,
        "dead-lettered is accepted"
    );

    let mut recs = consume(&t.bootstrap(), &t.topic("iot.deadletter"), 2).await;
    recs.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(recs[0].key, "dl-311");
    assert_eq!(recs[0].value, b"lost-311");
    assert_eq!(recs[0].header("mqtt.topic").as_deref(), Some("nowhere/x"));
    assert_eq!(recs[1].key, "dl-5");
    assert_eq!(recs[1].value, b"lost-5");
    assert_eq!(recs[1].header("mqtt.topic").as_deref(), Some("nowhere/y"));
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// SUBSCRIBE, QoS 2 resends, keep-alive, topic aliases, receive maximum.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_outside_the_allowed_filters_is_refused_and_the_connection_stays_up() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let mut raw = open(port, "subscriber", v).await;
        // Allowed is devices/subscriber/commands/#; neither of these is inside it.
        raw.send(&subscribe_bytes(
            &["commands/#", "devices/other/commands/#"],
            v,
        ))
        .await;
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!(b1, 0x90, "SUBACK ({v:?})");
        assert_eq!(&body[..2], &[0, 5], "SUBACK packet id");
        let codes = match v {
            Version::V311 => &body[2..],
            Version::V5 => properties(&body[2..]).1,
        };
        let refused = match v {
            Version::V311 => 0x80,
            Version::V5 => reason::NOT_AUTHORIZED,
        };
        assert_eq!(
            codes,
            [refused, refused],
            "one failure code per filter ({v:?})"
        );
        raw.send(&[0xC0, 0x00]).await;
        assert_eq!(
            read_packet(&mut raw).await,
            (0xD0, vec![]),
            "PINGRESP ({v:?})"
        );
        // UNSUBSCRIBE is answered too.
        raw.send(&encode(
            &Packet::Unsubscribe(mp::Unsubscribe {
                packet_id: 6,
                properties: Properties::default(),
                filters: vec!["commands/#".into()],
            }),
            v,
        ))
        .await;
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!((b1, &body[..2]), (0xB0, &[0u8, 6][..]), "UNSUBACK ({v:?})");
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_resend_before_pubrel_is_produced_once() {
    let t = TestProxy::start().await;
    let mut raw = open(t.tcp_port(), "q2-dev", V311).await;
    let topic = "devices/q2-dev/events/x";

    // Resent after PUBREC: PUBREC again, no second record.
    raw.send(&publish_bytes(
        publish(topic, mp::QoS::ExactlyOnce, 7, b"first"),
        V311,
    ))
    .await;
    assert_eq!(read_packet(&mut raw).await, (0x50, vec![0, 7]), "PUBREC 7");
    let mut resend = publish(topic, mp::QoS::ExactlyOnce, 7, b"first-resent");
    resend.dup = true;
    raw.send(&publish_bytes(resend, V311)).await;
    assert_eq!(
        read_packet(&mut raw).await,
        (0x50, vec![0, 7]),
        "PUBREC 7 again"
    );
    raw.send(&[0x62, 0x02, 0x00, 0x07]).await;
    assert_eq!(read_packet(&mut raw).await, (0x70, vec![0, 7]), "PUBCOMP 7");

    // Resent while the first is still being produced (same write): still one.
    let mut both = publish_bytes(publish(topic, mp::QoS::ExactlyOnce, 9, b"second"), V311);
    let mut resend = publish(topic, mp::QoS::ExactlyOnce, 9, b"second-resent");
    resend.dup = true;
    both.extend(publish_bytes(resend, V311));
    raw.send(&both).await;
    read_until(&mut raw, |b1, body| b1 == 0x50 && body == [0, 9]).await;
    raw.send(&[0x62, 0x02, 0x00, 0x09]).await;
    // A second PUBREC 9 may come before the PUBCOMP; both are correct.
    let (b1, _) = read_until(&mut raw, |b1, body| b1 != 0x50 || body != [0, 9]).await;
    assert_eq!(b1, 0x70, "PUBCOMP 9");

    // A QoS 1 sentinel on the same key: everything before it is in Kafka.
    raw.send(&publish_bytes(
        publish(topic, mp::QoS::AtLeastOnce, 10, b"sentinel"),
        V311,
    ))
    .await;
    assert_eq!(
        read_packet(&mut raw).await,
        (0x40, vec![0, 10]),
        "PUBACK 10"
    );
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), |r| {
        r.iter().any(|r| r.value == b"sentinel")
    })
    .await;
    let values: Vec<&[u8]> = recs.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(
        values,
        [&b"first"[..], b"second", b"sentinel"],
        "each QoS 2 message produced exactly once, with its first payload"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expiry_closes_the_connection() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    // 1.5 × keep-alive of 1 s, with room for a loaded machine.
    let in_window = |took: Duration, case: &str| {
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_secs(10),
            "{case}: closed after {took:?}, expected about 1.5 s"
        );
    };

    let silent = |v: Version| async move {
        // One client id per concurrent connection: a shared id would be a takeover.
        let (mut raw, _) = open_ka(port, &format!("sleepy-{v:?}"), v, 1).await;
        let started = Instant::now();
        expect_refusal(&mut raw, v, reason::KEEP_ALIVE_TIMEOUT, "silent").await;
        in_window(started.elapsed(), &format!("silent {v:?}"));
    };

    // PINGREQ every 500 ms for 2.5 s keeps it open; then silence closes it.
    let pinging = async {
        let (mut raw, _) = open_ka(port, "pinger", V311, 1).await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        for _ in 0..5 {
            tick.tick().await;
            raw.send(&[0xC0, 0x00]).await;
            assert_eq!(read_packet(&mut raw).await, (0xD0, vec![]), "PINGRESP");
        }
        let started = Instant::now();
        expect_refusal(&mut raw, V311, 0, "after pings").await;
        in_window(started.elapsed(), "after pings");
    };

    // A packet dribbled one byte per 100 ms is not activity: only whole
    // packets reset the clock.
    let dribbling = async {
        let (mut raw, _) = open_ka(port, "dribbler", V5, 1).await;
        let p = publish_bytes(
            publish(
                "devices/dribbler/events/x",
                mp::QoS::AtLeastOnce,
                1,
                &[b'z'; 100],
            ),
            V5,
        );
        let started = Instant::now();
        let (sent, got) = dribble(&mut raw, &p, 0, Duration::from_millis(100), "dribbler").await;
        in_window(started.elapsed(), "dribbler");
        assert!(sent < p.len(), "cut before the packet was complete");
        let packets = parse_packets(&got);
        assert_eq!(packets.len(), 1, "one DISCONNECT: {got:02x?}");
        assert_eq!(packets[0].0, 0xE0);
        assert_eq!(reason_at(&packets[0].1, 0), reason::KEEP_ALIVE_TIMEOUT);
    };

    tokio::join!(silent(V311), silent(V5), pinging, dribbling);
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_rules() {
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    let aliased = |topic: &str, alias: u16, pid: u16, payload: &[u8]| {
        let mut p = publish(topic, mp::QoS::AtLeastOnce, pid, payload);
        p.properties.topic_alias = Some(alias);
        publish_bytes(p, V5)
    };
    let topic_a = "devices/alias-dev/events/a";
    let topic_b = "devices/alias-dev/events/b";
    check_violation(
        port,
        V5,
        "alias 0",
        &aliased(topic_a, 0, 1, b"x"),
        reason::TOPIC_ALIAS_INVALID,
    )
    .await;
    check_violation(
        port,
        V5,
        "alias 17 > max 16",
        &aliased(topic_a, 17, 1, b"x"),
        reason::TOPIC_ALIAS_INVALID,
    )
    .await;
    check_violation(
        port,
        V5,
        "alias never set",
        &aliased("", 5, 1, b"x"),
        reason::PROTOCOL_ERROR,
    )
    .await;

    let (mut raw, connack) = open_ka(port, "alias-dev", V5, 0).await;
    let (props, _) = properties(&connack[2..]);
    assert_eq!(property(&props, 0x22), Some(&16u16.to_be_bytes()[..]));
    let mut all = aliased(topic_a, 3, 1, b"one");
    all.extend(aliased("", 3, 2, b"two"));
    all.extend(aliased(topic_b, 3, 3, b"three"));
    all.extend(aliased("", 3, 4, b"four"));
    raw.send(&all).await;
    for pid in 1..=4u16 {
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!(
            (b1, &body[..2]),
            (0x40, &pid.to_be_bytes()[..]),
            "PUBACK {pid}"
        );
        assert_eq!(reason_at(&body, 2), reason::SUCCESS, "PUBACK {pid}");
    }
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), 4).await;
    let got: Vec<(String, Option<String>)> = recs
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.value).into_owned(),
                r.header("mqtt.topic"),
            )
        })
        .collect();
    let want: Vec<(String, Option<String>)> = [
        ("one", topic_a),
        ("two", topic_a),
        ("three", topic_b),
        ("four", topic_b),
    ]
    .iter()
    .map(|(v, t)| (v.to_string(), Some(t.to_string())))
    .collect();
    assert_eq!(got, want, "the alias resolves to the full topic");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_receive_maximum_exceeded_is_disconnected() {
    let t = TestProxy::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let kafka = t.proxy.embedded_kafka().expect("embedded Kafka");
    // Kafka cannot acknowledge, so nothing leaves the in-flight window.
    kafka.broker_down(1).unwrap();
    let (mut raw, connack) = open_ka(t.tcp_port(), "greedy", V5, 0).await;
    let (props, _) = properties(&connack[2..]);
    assert_eq!(
        property(&props, 0x21),
        Some(&2u16.to_be_bytes()[..]),
        "Receive Maximum announced"
    );
    let mut three = Vec::new();
    for pid in 1..=3 {
        three.extend(publish_bytes(
            publish("devices/greedy/events/x", mp::QoS::AtLeastOnce, pid, b"x"),
            V5,
        ));
    }
    raw.send(&three).await;
    expect_refusal(
        &mut raw,
        V5,
        reason::RECEIVE_MAXIMUM_EXCEEDED,
        "third QoS 1",
    )
    .await;
    kafka.broker_up(1).unwrap();
    t.proxy.shutdown().await;
}

/// MQTT 3.1.1 has no Receive Maximum: a client may pipeline as many QoS 2
/// PUBLISH packets as it likes, and its PUBREL packets necessarily come after
/// them on the wire. The proxy's `receive_maximum` for 3.1.1 is documented as
/// "the proxy stops reading at this many"; it must not close the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_pipelined_beyond_receive_maximum_is_not_refused() {
    let t = TestProxy::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let mut raw = open(t.tcp_port(), "pipeliner", V311).await;
    let mut three = Vec::new();
    for pid in 1..=3 {
        three.extend(publish_bytes(
            publish(
                "devices/pipeliner/events/x",
                mp::QoS::ExactlyOnce,
                pid,
                &[b'0' + pid as u8],
            ),
            V311,
        ));
    }
    raw.send(&three).await;
    for pid in 1..=3u16 {
        let got = read_packet(&mut raw).await;
        assert_eq!(got, (0x50, pid.to_be_bytes().to_vec()), "PUBREC {pid}");
    }
    for pid in 1..=3u16 {
        let mut rel = vec![0x62, 0x02];
        rel.extend(pid.to_be_bytes());
        raw.send(&rel).await;
        assert_eq!(
            read_packet(&mut raw).await,
            (0x70, pid.to_be_bytes().to_vec()),
            "PUBCOMP {pid}"
        );
    }
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), 3).await;
    let values: Vec<&[u8]> = recs.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, [b"1", b"2", b"3"]);
    t.proxy.shutdown().await;
}

/// The same with a stock client and the default configuration: rumqttc with
/// 100 messages in flight sends QoS 2 PUBLISH packets ahead of its PUBRELs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_rumqttc_qos2_burst_completes_with_the_default_config() {
    const N: usize = 200;
    let t = TestProxy::start().await;
    let mut o = v4_options("burst", t.tcp_port());
    o.set_inflight(100);
    let mut c = v4_connect(o).await;
    for i in 0..N {
        c.client
            .publish(
                "devices/burst/events/x",
                rumqttc::QoS::ExactlyOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
    for i in 0..N {
        next_matching(&mut c.events, |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)))
        })
        .await
        .unwrap_or_else(|e| panic!("after {i} PUBCOMPs: {e}"));
    }
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), N).await;
    let seq: Vec<usize> = recs
        .iter()
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seq, (0..N).collect::<Vec<_>>());
    t.proxy.shutdown().await;
}

/// A 5.0 client's Maximum Packet Size binds the proxy: reason strings that
/// would push an ack or DISCONNECT over it are left out [MQTT-3.1.2-24]
/// [MQTT-3.4.2-2] [MQTT-3.9.2-1] [MQTT-3.14.2-3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_maximum_packet_size_bounds_what_the_proxy_sends() {
    const CLIENT_MAX: usize = 32;
    let t = TestProxy::start().await;
    let mut raw = Raw::connect(t.tcp_port()).await;
    let props = Properties {
        maximum_packet_size: Some(CLIENT_MAX as u32),
        ..Properties::default()
    };
    raw.send(&connect_with("small-device", V5, 0, props)).await;
    let mut sizes = Vec::new();
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!((b1, body[1]), (0x20, 0x00), "CONNACK accepts");
    sizes.push(("CONNACK", 2 + body.len()));
    // Unmatched QoS 1: PUBACK 0x90.
    raw.send(&publish_bytes(
        publish("nowhere/at/all/x", mp::QoS::AtLeastOnce, 1, b"x"),
        V5,
    ))
    .await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(
        (b1, reason_at(&body, 2)),
        (0x40, reason::TOPIC_NAME_INVALID)
    );
    sizes.push(("PUBACK", 2 + body.len()));
    // SUBSCRIBE to a filter this device may not use: SUBACK 0x87.
    raw.send(&subscribe_bytes(&["commands/#"], V5)).await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x90);
    assert_eq!(properties(&body[2..]).1, [reason::NOT_AUTHORIZED]);
    sizes.push(("SUBACK", 2 + body.len()));
    // Wildcard topic: DISCONNECT 0x90.
    raw.send(&publish_bytes(
        publish("devices/+/events/x", mp::QoS::AtMostOnce, 0, b"x"),
        V5,
    ))
    .await;
    let rest = parse_packets(&raw.read_to_close().await);
    assert_eq!(rest.len(), 1, "one DISCONNECT: {rest:02x?}");
    assert_eq!(
        (rest[0].0, reason_at(&rest[0].1, 0)),
        (0xE0, reason::TOPIC_NAME_INVALID)
    );
    let mut header = Vec::new();
    put_varint(&mut header, rest[0].1.len());
    sizes.push(("DISCONNECT", 1 + header.len() + rest[0].1.len()));
    let over: Vec<_> = sizes.iter().filter(|(_, n)| *n > CLIENT_MAX).collect();
    assert!(
        over.is_empty(),
        "packets over the client's Maximum Packet Size of {CLIENT_MAX}: {over:?}"
    );
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// Well-behaved clients next to hostile ones.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_clients_are_unaffected_by_hostile_ones() {
    const EACH: usize = 50;
    let t = TestProxy::start_with(|c| c.mqtt.connect_timeout_ms = 2_000).await;
    let port = t.tcp_port();

    let mut hostile = Vec::new();
    for round in 0..5 {
        let id = format!("hostile-{round}");
        hostile.push(tokio::spawn(async move {
            // Oversized.
            let mut raw = open(port, &id, V5).await;
            let mut huge = vec![0x30];
            put_varint(&mut huge, 100_000_000);
            raw.send(&huge).await;
            expect_refusal(&mut raw, V5, reason::PACKET_TOO_LARGE, "huge").await;
            // Wildcard topic.
            let mut raw = open(port, &id, V311).await;
            raw.send(&publish_bytes(
                publish("devices/+/events/x", mp::QoS::AtLeastOnce, 1, b"x"),
                V311,
            ))
            .await;
            expect_refusal(&mut raw, V311, 0, "wildcard").await;
            // Server-only packet.
            let mut raw = open(port, &id, V5).await;
            raw.send(&[0x20, 0x02, 0x00, 0x00]).await;
            expect_refusal(&mut raw, V5, reason::PROTOCOL_ERROR, "CONNACK from client").await;
            // Garbage instead of CONNECT, and a silent socket.
            check_before_connect(port, "garbage", b"\xFF\xFF\xFF\xFF\xFF", &[]).await;
            check_before_connect(port, "silent", &[], &[]).await;
        }));
    }

    let good = tokio::spawn(async move {
        let mut c4 = v4_connect(v4_options("good-311", port)).await;
        let mut c5 = v5_connect(v5_options("good-5", port)).await;
        for i in 0..EACH {
            c4.client
                .publish(
                    "devices/good-311/events/x",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .unwrap();
            c5.client
                .publish(
                    "devices/good-5/events/x",
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .unwrap();
        }
        c4.pubacks(EACH).await;
        V5::pubacks_ok(&mut c5, EACH).await;
    });

    for h in hostile {
        h.await.unwrap();
    }
    good.await.unwrap();
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), 2 * EACH).await;
    for key in ["good-311", "good-5"] {
        let seq: Vec<usize> = recs
            .iter()
            .filter(|r| r.key == key)
            .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
            .collect();
        assert_eq!(seq, (0..EACH).collect::<Vec<_>>(), "{key}: all, in order");
    }
    t.proxy.shutdown().await;
}
