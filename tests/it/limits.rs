//! ACLs, rate limits and the defences against hostile clients, end to end:
//! topic rules on PUBLISH, SUBSCRIBE and the will; connects per source
//! address; half-open and slowloris connections; publish message and byte
//! rates (5.0 refused, 3.1.1 throttled); topic length; command
//! subscriptions per connection; QoS 2 ids never released; commands owed to a device that does not acknowledge; and the
//! replica's connection cap. Each test starts a real proxy on port 0 against
//! its embedded Kafka, talks to it over real sockets (raw bytes where exact
//! reason codes matter: rumqttc 0.24 turns an error ack into an event-loop
//! error) and reads Kafka with rdkafka to check what landed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use mqtt_kafka_proxy::config::{AclAction, AclRule, Permission};
use mqtt_kafka_proxy::mqtt::packet::{self as mp, reason, return_code, Version};
use mqtt_kafka_proxy::Config;
use tokio::io::AsyncReadExt;

const V311: Version = Version::V311;
const V5: Version = Version::V5;

// ---------------------------------------------------------------------------
// Wire helpers this file alone needs (the shared raw client is
// tests/common/wire.rs).
// ---------------------------------------------------------------------------

/// Skips a 5.0 property block at the start of `b`; returns what follows it.
fn after_properties(b: &[u8]) -> &[u8] {
    let (len, used) = varint(b);
    &b[used + len..]
}

/// The return / reason codes of a SUBACK body.
fn suback_codes(body: &[u8], v: Version) -> Vec<u8> {
    match v {
        Version::V311 => body[2..].to_vec(),
        Version::V5 => after_properties(&body[2..]).to_vec(),
    }
}

/// A CONNECT (keep-alive off) carrying a QoS 0 will on `will_topic`.
fn connect_with_will(id: &str, v: Version, will_topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut c = connect_packet(id, v, 0);
    c.will = Some(will(will_topic, payload, mp::QoS::AtMostOnce));
    connect_packet_bytes(c)
}

/// A TCP connection to the proxy from source address `ip` (any 127/8
/// address works on loopback), so per-source limits can be exercised.
async fn connect_from(ip: [u8; 4], port: u16) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    Raw { stream }
}

/// Reads `n` PUBACKs and returns (packet id, reason code) of each, in order.
async fn pubacks(raw: &mut Raw, n: usize) -> Vec<(u16, u8)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (b1, body) = read_packet(raw).await;
        assert_eq!(b1, 0x40, "PUBACK expected, got {b1:#04x} {body:02x?}");
        out.push(puback(&body));
    }
    out
}

/// PINGREQ answered: the connection is still up and served.
async fn still_served(raw: &mut Raw, case: &str) {
    raw.send(&[0xC0, 0x00]).await;
    assert_eq!(read_packet(raw).await, (0xD0, vec![]), "{case}: PINGRESP");
}

/// A bounded negative: the proxy writes nothing on `raw`, and does not close
/// it, for `window`. Used only where the claim is "not before X happens".
async fn assert_quiet(raw: &mut Raw, window: Duration, case: &str) {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(window, raw.stream.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("{case}: connection closed within {window:?}"),
        Ok(Ok(n)) => panic!("{case}: got {:02x?} within {window:?}", &buf[..n]),
        Ok(Err(e)) => panic!("{case}: {e} within {window:?}"),
    }
}

/// Waits for the proxy's first bytes or its close; returns what it wrote
/// (empty: closed without a word).
async fn first_words(raw: &mut Raw) -> Vec<u8> {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(PATIENCE, raw.stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        Ok(Err(_)) => Vec::new(), // reset: closed
        Err(_) => panic!("neither an answer nor a close within {PATIENCE:?}"),
    }
}

/// Publishes one QoS 1 message from a fresh rumqttc 5.0 client `id` and
/// waits for its successful PUBACK.
async fn v5_publish_one(port: u16, id: &str, payload: &str) {
    let mut c = v5_connect(v5_options(id, port)).await;
    c.client
        .publish(
            format!("devices/{id}/events/x"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.to_owned(),
        )
        .await
        .unwrap();
    V5::pubacks_ok(&mut c, 1).await;
}

/// Every `iot.events` payload keyed `client_id` (the default route keys by
/// client id), in order: publishes a QoS 1 sentinel as `client_id` (same
/// key, so same partition, after everything its earlier connections
/// produced) and returns what precedes it. The sentinel topic is
/// `devices/{client_id}/events/sentinel`.
async fn records_of(t: &TestProxy, client_id: &str) -> Vec<String> {
    let sentinel = format!("sentinel-{client_id}");
    let mut c = v4_connect(v4_options(client_id, t.tcp_port())).await;
    c.client
        .publish(
            format!("devices/{client_id}/events/sentinel"),
            rumqttc::QoS::AtLeastOnce,
            false,
            sentinel.clone(),
        )
        .await
        .unwrap();
    c.pubacks(1).await;
    let want = sentinel.clone();
    let recs = consume_until(&t.bootstrap(), "iot.events", move |r| {
        r.iter().any(|r| r.value == want.as_bytes())
    })
    .await;
    let s = recs
        .iter()
        .find(|r| r.value == sentinel.as_bytes())
        .unwrap();
    recs.iter()
        .filter(|r| r.partition == s.partition && r.offset < s.offset && r.key == client_id)
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// ACLs.
// ---------------------------------------------------------------------------

fn rule(permission: Permission, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.into(),
    }
}

/// A fleet's rules with authentication off: `{device_id}` is the client id.
/// The final `deny all #` turns the default (allow, with authentication off)
/// into deny.
fn fleet_acl(c: &mut Config) {
    use AclAction::*;
    use Permission::*;
    c.auth.acl = vec![
        rule(Deny, All, "devices/{device_id}/secret/#"),
        rule(Allow, Publish, "devices/{device_id}/#"),
        rule(Allow, Subscribe, "devices/{device_id}/commands/#"),
        rule(Deny, All, "#"),
    ];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refuses_publish_per_message_on_v5_and_closes_v311() {
    let t = TestProxy::start_with(fleet_acl).await;
    let port = t.tcp_port();

    // 5.0 QoS 1: allowed and refused pipelined; each gets its own code, in order.
    let mut raw = open(port, "acl-5", V5).await;
    let sends: [(&str, &[u8]); 6] = [
        ("devices/acl-5/events/x", b"ok-1"),
        ("devices/acl-other/events/x", b"other-1"),
        ("devices/acl-5/secret/x", b"secret"),
        ("devices/acl-other/events/y", b"other-2"),
        ("elsewhere/x", b"elsewhere"),
        ("devices/acl-5/events/y", b"ok-2"),
    ];
    let mut all = Vec::new();
    for (i, (topic, payload)) in sends.iter().enumerate() {
        all.extend(qos1(topic, i as u16 + 1, payload, V5));
    }
    raw.send(&all).await;
    let denied = reason::NOT_AUTHORIZED;
    assert_eq!(
        pubacks(&mut raw, 6).await,
        [
            (1, reason::SUCCESS),
            (2, denied),
            (3, denied),
            (4, denied),
            (5, denied),
            (6, reason::SUCCESS)
        ],
        "own topic accepted; other device's, secret and unlisted topics refused with 0x87"
    );
    // The refusals did not end the connection: it still publishes.
    raw.send(&qos1("devices/acl-5/events/z", 7, b"ok-3", V5))
        .await;
    assert_eq!(pubacks(&mut raw, 1).await, [(7, reason::SUCCESS)]);
    still_served(&mut raw, "after 0x87 refusals").await;
    // QoS 0 has no ack to carry the code: DISCONNECT 0x87.
    raw.send(&publish_bytes(
        publish(
            "devices/acl-other/events/x",
            mp::QoS::AtMostOnce,
            0,
            b"other-qos0",
        ),
        V5,
    ))
    .await;
    expect_refusal(&mut raw, V5, denied, "5.0 QoS 0 to another device").await;

    // 3.1.1 has no negative ack: the connection is closed, nothing written.
    let mut raw = open(port, "acl-311", V311).await;
    raw.send(&qos1("devices/acl-311/events/x", 1, b"ok-311", V311))
        .await;
    assert_eq!(read_packet(&mut raw).await, (0x40, vec![0, 1]), "PUBACK 1");
    raw.send(&qos1("devices/acl-other/events/x", 2, b"other-311", V311))
        .await;
    expect_refusal(&mut raw, V311, 0, "3.1.1 QoS 1 to another device").await;
    let mut raw = open(port, "acl-311", V311).await;
    raw.send(&publish_bytes(
        publish(
            "devices/acl-other/events/x",
            mp::QoS::AtMostOnce,
            0,
            b"other-311-qos0",
        ),
        V311,
    ))
    .await;
    expect_refusal(&mut raw, V311, 0, "3.1.1 QoS 0 to another device").await;

    // Kafka holds exactly the allowed messages. Without the ACL the route
    // `devices/{device_id}/events/#` would have taken the other device's
    // topics under the publisher's own key, so they would show up here.
    assert_eq!(records_of(&t, "acl-5").await, ["ok-1", "ok-2", "ok-3"]);
    assert_eq!(records_of(&t, "acl-311").await, ["ok-311"]);
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refuses_subscribe_per_filter() {
    // commands.subscribe_filters is widened to the device's whole subtree, so
    // every refusal below except `devices/+/…` and the other device's filter
    // can only come from the ACL.
    let t = TestProxy::start_with(|c| {
        fleet_acl(c);
        c.commands.subscribe_filters = vec!["devices/{device_id}/#".into()];
    })
    .await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let id = format!("sub-{}", if v == V5 { "5" } else { "311" });
        let own = format!("devices/{id}/commands/#");
        let secret = format!("devices/{id}/secret/#");
        let status = format!("devices/{id}/status");
        let subtree = format!("devices/{id}/#");
        let filters = [
            own.as_str(),
            "devices/+/commands/#",
            "devices/other/commands/#",
            secret.as_str(),  // explicitly denied
            status.as_str(),  // allowed by subscribe_filters, not by the ACL
            subtree.as_str(), // overlaps the secret subtree
        ];
        let mut raw = open(port, &id, v).await;
        raw.send(&subscribe_bytes(&filters, v)).await;
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!((b1, &body[..2]), (0x90, &[0u8, 5][..]), "SUBACK ({v:?})");
        let no = match v {
            Version::V311 => return_code::SUBACK_FAILURE,
            Version::V5 => reason::NOT_AUTHORIZED,
        };
        assert_eq!(
            suback_codes(&body, v),
            [0x01, no, no, no, no, no],
            "granted QoS 1 for the own commands filter, refused for the rest ({v:?}); filters {filters:?}"
        );
        still_served(&mut raw, &format!("after SUBACK ({v:?})")).await;
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_topic_the_acl_denies_refuses_the_connect() {
    let t = TestProxy::start_with(fleet_acl).await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let id = format!("will-{}", if v == V5 { "5" } else { "311" });
        let refused = match v {
            Version::V311 => return_code::NOT_AUTHORIZED,
            Version::V5 => reason::NOT_AUTHORIZED,
        };
        for topic in [
            "devices/other/events/will".to_owned(),
            format!("devices/{id}/secret/will"),
        ] {
            let mut raw = Raw::connect(port).await;
            raw.send(&connect_with_will(&id, v, &topic, b"refused-will"))
                .await;
            let got = parse_packets(&raw.read_to_close().await);
            assert_eq!(
                got.len(),
                1,
                "one CONNACK, then close ({v:?}, {topic}): {got:02x?}"
            );
            assert_eq!(
                (got[0].0, got[0].1[1]),
                (0x20, refused),
                "CONNACK refuses a will on {topic} ({v:?})"
            );
        }
        // A will on the device's own topic is accepted and, on an unclean
        // close, produced.
        let mut raw = Raw::connect(port).await;
        let payload = format!("own-will-{id}");
        raw.send(&connect_with_will(
            &id,
            v,
            &format!("devices/{id}/events/will"),
            payload.as_bytes(),
        ))
        .await;
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!((b1, body[1]), (0x20, 0x00), "own will accepted ({v:?})");
        drop(raw);
        let want = payload.clone();
        let recs = consume_until(&t.bootstrap(), "iot.events", move |r| {
            r.iter().any(|r| r.value == want.as_bytes())
        })
        .await;
        let will = recs.iter().find(|r| r.value == payload.as_bytes()).unwrap();
        let before: Vec<&Rec> = recs
            .iter()
            .filter(|r| r.partition == will.partition && r.offset <= will.offset && r.key == id)
            .collect();
        assert_eq!(
            before.len(),
            1,
            "only the allowed will was produced ({v:?}): {before:?}"
        );
    }
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// Connection floods.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_the_per_source_rate_are_closed_at_once() {
    const BURST: usize = 5;
    const EXTRA: usize = 3;
    let t = TestProxy::start_with(|c| {
        c.limits.connects_per_second_per_source = 1;
        c.limits.connect_burst_per_source = BURST as u32;
        // A refused connection must be closed at once, not at this deadline.
        c.mqtt.connect_timeout_ms = 20_000;
    })
    .await;
    let port = t.tcp_port();
    let started = Instant::now();
    let mut admitted = Vec::new();
    for i in 0..BURST {
        let mut raw = connect_from([127, 0, 0, 2], port).await;
        handshake(&mut raw, &format!("burst-{i}"), V311).await;
        admitted.push(raw);
    }
    let mut extra_admitted = 0;
    for i in BURST..BURST + EXTRA {
        let mut raw = connect_from([127, 0, 0, 2], port).await;
        let asked = Instant::now();
        raw.send(&connect_bytes(&format!("burst-{i}"), V311, 0))
            .await;
        let got = first_words(&mut raw).await;
        if got.is_empty() {
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "connection {i} closed at once, not at the connect deadline; took {:?}",
                asked.elapsed()
            );
        } else {
            extra_admitted += 1;
            admitted.push(raw);
        }
    }
    // One token a second refills: only that many extra could have been let in.
    let refilled = started.elapsed().as_secs() as usize;
    assert!(
        extra_admitted <= refilled,
        "{extra_admitted} of {EXTRA} connections over the burst of {BURST} were served \
         ({refilled} tokens refilled in {:?})",
        started.elapsed()
    );
    // The admitted ones are unaffected, and another source is served.
    for (i, raw) in admitted.iter_mut().enumerate() {
        still_served(raw, &format!("admitted connection {i}")).await;
    }
    v5_publish_one(port, "other-source", "from-127.0.0.1").await;
    let recs = consume(&t.bootstrap(), "iot.events", 1).await;
    assert_eq!(recs[0].value, b"from-127.0.0.1");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flood_does_not_starve_a_good_device() {
    const FLOOD: usize = 200;
    const HALF_CONNECT: usize = 50;
    const DEADLINE: Duration = Duration::from_millis(3_000);
    let t =
        TestProxy::start_with(|c| c.mqtt.connect_timeout_ms = DEADLINE.as_millis() as u64).await;
    let port = t.tcp_port();
    let connect = connect_bytes("flooder-with-a-long-client-id-0123456789", V311, 30);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        // Taken before connecting: the proxy's deadline starts later, at accept.
        let opened = Instant::now();
        let mut raw = connect_from([127, 0, 0, 3], port).await;
        if i < HALF_CONNECT {
            raw.send(&connect[..connect.len() / 2]).await;
        }
        let closed = closed.clone();
        flood.push(tokio::spawn(async move {
            let got = raw.read_to_close().await;
            closed.fetch_add(1, Ordering::SeqCst);
            (got, opened.elapsed())
        }));
    }

    // A well-behaved device on another source is served while they hang.
    v5_publish_one(port, "steady-flood", "during-flood").await;
    let still_open = FLOOD - closed.load(Ordering::SeqCst);
    assert_eq!(
        still_open, FLOOD,
        "the good device was served while the whole flood was held open"
    );
    let recs = consume(&t.bootstrap(), "iot.events", 1).await;
    assert_eq!(recs[0].value, b"during-flood");

    // At the deadline every flood socket is closed, with nothing written.
    for (i, h) in flood.into_iter().enumerate() {
        let (got, lived) = h.await.unwrap();
        assert!(got.is_empty(), "flood socket {i} got {got:02x?}");
        assert!(
            lived >= DEADLINE,
            "flood socket {i} closed after {lived:?}, before the {DEADLINE:?} deadline"
        );
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_after_connect_is_cut_at_the_partial_packet_deadline() {
    const PARTIAL: Duration = Duration::from_millis(500);
    let t = TestProxy::start_with(|c| {
        c.mqtt.partial_packet_timeout_ms = PARTIAL.as_millis() as u64;
    })
    .await;
    let port = t.tcp_port();

    // A good device publishes back to back until the slowloris is over.
    let mut good = v5_connect(v5_options("steady-slow", port)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                good.client
                    .publish(
                        "devices/steady-slow/events/x",
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        n.to_string(),
                    )
                    .await
                    .unwrap();
                V5::pubacks_ok(&mut good, 1).await;
                n += 1;
            }
            n
        })
    };

    // Keep-alive is off, so only the partial-packet deadline can end these.
    let dribble = |v: Version| async move {
        let id = format!("slowloris-{}", if v == V5 { "5" } else { "311" });
        let mut raw = open(port, &id, v).await;
        let p = qos1(&format!("devices/{id}/events/x"), 1, &[b'z'; 200], v);
        raw.send(&p[..3]).await;
        let started = Instant::now();
        let (sent, got) = dribble(&mut raw, &p, 3, Duration::from_millis(100), &id).await;
        let lived = started.elapsed();
        assert!(
            sent < p.len(),
            "{id}: cut before the packet was complete ({sent} of {} bytes)",
            p.len()
        );
        assert!(
            lived >= PARTIAL - Duration::from_millis(20),
            "{id}: cut after {lived:?}, before the {PARTIAL:?} deadline"
        );
        let packets = parse_packets(&got);
        match v {
            Version::V311 => assert!(packets.is_empty(), "{id}: nothing written: {got:02x?}"),
            Version::V5 => {
                assert_eq!(packets.len(), 1, "{id}: one DISCONNECT: {got:02x?}");
                assert_eq!(
                    (packets[0].0, reason_at(&packets[0].1, 0)),
                    (0xE0, reason::MALFORMED_PACKET),
                    "{id}: DISCONNECT 0x81"
                );
            }
        }
    };
    tokio::join!(dribble(V5), dribble(V311));
    stop.store(true, Ordering::SeqCst);
    let n = publisher.await.unwrap();
    assert!(n >= 1, "the good device published during the slowloris");
    let recs = consume(&t.bootstrap(), "iot.events", n).await;
    let seq: Vec<usize> = recs
        .iter()
        .filter(|r| r.key == "steady-slow")
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seq, (0..n).collect::<Vec<_>>(), "all, in order");
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// Publish rates.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_rate_over_the_limit_is_disconnected_with_0x96() {
    const BURST: usize = 5;
    let t = TestProxy::start_with(|c| {
        c.limits.publish_per_second = 5;
        c.limits.publish_burst = BURST as u32;
    })
    .await;
    let port = t.tcp_port();
    let mut raw = open(port, "greedy-5", V5).await;
    let mut eight = Vec::new();
    for pid in 1..=8u16 {
        eight.extend(qos1("devices/greedy-5/events/x", pid, b"g", V5));
    }
    raw.send(&eight).await;
    let packets = parse_packets(&raw.read_to_close().await);
    let (last, acks) = packets.split_last().expect("something before the close");
    assert_eq!(
        (last.0, reason_at(&last.1, 0)),
        (0xE0, reason::MESSAGE_RATE_TOO_HIGH),
        "the 6th PUBLISH within a second ends the connection with DISCONNECT 0x96; got {packets:02x?}"
    );
    assert!(
        acks.len() <= BURST
            && acks
                .iter()
                .all(|(b1, body)| *b1 == 0x40 && reason_at(body, 2) == reason::SUCCESS),
        "before it, at most the {BURST} PUBLISH packets of the burst were acknowledged: {acks:02x?}"
    );

    // The limit is per connection: another device is unaffected.
    let mut calm = v5_connect(v5_options("calm-5", port)).await;
    for i in 0..BURST {
        calm.client
            .publish(
                "devices/calm-5/events/x",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
    V5::pubacks_ok(&mut calm, BURST).await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_bytes_over_the_budget_get_0x97_and_the_connection_stays() {
    let t = TestProxy::start_with(|c| {
        c.mqtt.max_packet_size_bytes = 1024;
        c.limits.publish_bytes_per_second = 1000;
        c.limits.publish_burst_bytes = 1024;
    })
    .await;
    let port = t.tcp_port();
    let mut raw = open(port, "bytes-5", V5).await;
    let big = |pid: u16, fill: u8| qos1("devices/bytes-5/events/x", pid, &[fill; 600], V5);
    let mut three = big(1, b'a');
    three.extend(big(2, b'b'));
    three.extend(big(3, b'c'));
    raw.send(&three).await;
    // 1024 in the bucket: 600 pass, then 424 are not enough for another 600
    // (the refill in the microseconds between them is negligible).
    assert_eq!(
        pubacks(&mut raw, 3).await,
        [
            (1, reason::SUCCESS),
            (2, reason::QUOTA_EXCEEDED),
            (3, reason::QUOTA_EXCEEDED)
        ],
        "the PUBLISH packets over the byte budget are refused with 0x97"
    );
    // Still up, and the refused ones were not charged: 10 bytes pass.
    raw.send(&qos1("devices/bytes-5/events/x", 4, b"small", V5))
        .await;
    assert_eq!(pubacks(&mut raw, 1).await, [(4, reason::SUCCESS)]);
    // Another device has its own budget.
    let mut other = v5_connect(v5_options("bytes-other", port)).await;
    other
        .client
        .publish(
            "devices/bytes-other/events/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            vec![b'o'; 600],
        )
        .await
        .unwrap();
    V5::pubacks_ok(&mut other, 1).await;
    assert_eq!(
        records_of(&t, "bytes-5").await,
        ["a".repeat(600), "small".into()],
        "the refused messages are not in Kafka"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_publish_rate_is_throttled_and_nothing_is_lost() {
    const N: usize = 45;
    const RATE: u32 = 20;
    const BURST: u32 = 5;
    let t = TestProxy::start_with(|c| {
        c.limits.publish_per_second = RATE;
        c.limits.publish_burst = BURST;
    })
    .await;
    let mut c = v4_connect(v4_options("throttled", t.tcp_port())).await;
    let started = Instant::now();
    for i in 0..N {
        c.client
            .publish(
                "devices/throttled/events/x",
                rumqttc::QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
    let ids = c.pubacks(N).await;
    let elapsed = started.elapsed();
    assert_eq!(ids.len(), N);
    // A lower bound: slowness cannot make it pass; it proves the reads were paced.
    let floor = Duration::from_secs_f64((N as u32 - BURST) as f64 / RATE as f64 * 0.9);
    assert!(
        elapsed >= floor,
        "{N} messages at {RATE}/s after a burst of {BURST} took only {elapsed:?} (< {floor:?}): not throttled"
    );
    // Not closed: no error from the event loop, and it still publishes.
    while let Ok(ev) = c.events.try_recv() {
        assert!(ev.is_ok(), "event loop error while throttled: {ev:?}");
    }
    c.client
        .publish(
            "devices/throttled/events/x",
            rumqttc::QoS::AtLeastOnce,
            false,
            N.to_string(),
        )
        .await
        .unwrap();
    c.pubacks(1).await;
    let recs = consume(&t.bootstrap(), "iot.events", N + 1).await;
    let seq: Vec<usize> = recs
        .iter()
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seq, (0..=N).collect::<Vec<_>>(), "all, in order");
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// Topic length, QoS 2 ids, commands owed, connection cap.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_filters_longer_than_max_topic_bytes_are_refused() {
    const MAX: usize = 32;
    let t = TestProxy::start_with(|c| c.mqtt.max_topic_bytes = MAX).await;
    let port = t.tcp_port();
    let topic = |id: &str, len: usize| {
        let mut s = format!("devices/{id}/events/");
        while s.len() < len {
            s.push('t');
        }
        s
    };
    let filter = |id: &str, len: usize| {
        let mut s = format!("devices/{id}/commands/");
        while s.len() < len {
            s.push('f');
        }
        s
    };

    // 5.0: PUBACK 0x90 for one byte over, the connection stays.
    let mut raw = open(port, "len5", V5).await;
    let mut two = qos1(&topic("len5", MAX), 1, b"at-limit-5", V5);
    two.extend(qos1(&topic("len5", MAX + 1), 2, b"over-5", V5));
    raw.send(&two).await;
    assert_eq!(
        pubacks(&mut raw, 2).await,
        [(1, reason::SUCCESS), (2, reason::TOPIC_NAME_INVALID)],
        "a {MAX}-byte topic passes, a {}-byte one gets 0x90",
        MAX + 1
    );
    let sub = subscribe_bytes(&[&filter("len5", MAX), &filter("len5", MAX + 1)], V5);
    raw.send(&sub).await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x90);
    assert_eq!(
        suback_codes(&body, V5),
        [0x01, reason::TOPIC_FILTER_INVALID],
        "a {}-byte filter gets 0x8F",
        MAX + 1
    );
    still_served(&mut raw, "5.0 after the refusals").await;

    // 3.1.1: SUBACK failure for the long filter, the long topic closes.
    let mut raw = open(port, "len3", V311).await;
    raw.send(&subscribe_bytes(
        &[&filter("len3", MAX), &filter("len3", MAX + 1)],
        V311,
    ))
    .await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x90);
    assert_eq!(
        suback_codes(&body, V311),
        [0x01, return_code::SUBACK_FAILURE]
    );
    raw.send(&qos1(&topic("len3", MAX), 1, b"at-limit-311", V311))
        .await;
    assert_eq!(read_packet(&mut raw).await, (0x40, vec![0, 1]), "PUBACK 1");
    raw.send(&qos1(&topic("len3", MAX + 1), 2, b"over-311", V311))
        .await;
    expect_refusal(&mut raw, V311, 0, "3.1.1 topic over max_topic_bytes").await;

    assert_eq!(records_of(&t, "len5").await, ["at-limit-5"]);
    assert_eq!(records_of(&t, "len3").await, ["at-limit-311"]);
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_max_subscriptions_are_refused_per_filter() {
    let t = TestProxy::start_with(|c| c.mqtt.max_subscriptions = 2).await;
    let port = t.tcp_port();
    let f = |id: &str, leaf: &str| format!("devices/{id}/commands/{leaf}");
    let unsubscribe = |filters: &[&str], v: Version| {
        let mut body = vec![0, 6];
        if v == V5 {
            body.push(0);
        }
        for filter in filters {
            body.extend(mqtt_string(filter.as_bytes()));
        }
        frame(0xA2, &body)
    };

    // 5.0: the third filter gets 0x97, the first two are granted.
    let mut raw = open(port, "subs5", V5).await;
    let (a, b, c) = (f("subs5", "a"), f("subs5", "b"), f("subs5", "c"));
    raw.send(&subscribe_bytes(&[&a, &b, &c], V5)).await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x90);
    assert_eq!(
        suback_codes(&body, V5),
        [0x01, 0x01, reason::QUOTA_EXCEEDED]
    );
    // At the limit, a filter it already holds is granted again (no new slot).
    raw.send(&subscribe_bytes(&[&a], V5)).await;
    let (_, body) = read_packet(&mut raw).await;
    assert_eq!(
        suback_codes(&body, V5),
        [0x01],
        "a held filter is re-granted"
    );
    // An UNSUBSCRIBE frees a slot for the refused filter.
    raw.send(&unsubscribe(&[&b], V5)).await;
    let (b1, _) = read_packet(&mut raw).await;
    assert_eq!(b1, 0xB0, "UNSUBACK");
    raw.send(&subscribe_bytes(&[&c], V5)).await;
    let (_, body) = read_packet(&mut raw).await;
    assert_eq!(
        suback_codes(&body, V5),
        [0x01],
        "granted once a slot is free"
    );
    still_served(&mut raw, "5.0 after the quota refusal").await;

    // 3.1.1: the same filter gets 0x80 and the connection stays.
    let mut raw = open(port, "subs3", V311).await;
    let (a, b, c) = (f("subs3", "a"), f("subs3", "b"), f("subs3", "c"));
    raw.send(&subscribe_bytes(&[&a, &b, &c], V311)).await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!(b1, 0x90);
    assert_eq!(
        suback_codes(&body, V311),
        [0x01, 0x01, return_code::SUBACK_FAILURE]
    );
    still_served(&mut raw, "3.1.1 after the quota refusal").await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_ids_never_released_are_capped_by_max_awaiting_rel() {
    let t = TestProxy::start_with(|c| c.mqtt.max_awaiting_rel = 3).await;
    let port = t.tcp_port();
    let q2 = |id: &str, pid: u16, v: Version| {
        publish_bytes(
            publish(
                &format!("devices/{id}/events/x"),
                mp::QoS::ExactlyOnce,
                pid,
                &[b'0' + pid as u8],
            ),
            v,
        )
    };

    let mut raw = open(port, "rel-311", V311).await;
    for pid in 1..=3u16 {
        raw.send(&q2("rel-311", pid, V311)).await;
        let got = read_packet(&mut raw).await;
        assert_eq!(got, (0x50, pid.to_be_bytes().to_vec()), "PUBREC {pid}");
    }
    // A resend of an id already awaiting PUBREL is not a new one.
    let mut resend = publish(
        "devices/rel-311/events/x",
        mp::QoS::ExactlyOnce,
        2,
        b"2-again",
    );
    resend.dup = true;
    raw.send(&publish_bytes(resend, V311)).await;
    assert_eq!(
        read_packet(&mut raw).await,
        (0x50, vec![0, 2]),
        "PUBREC 2 again"
    );
    // PUBREL frees a slot: one more id is taken.
    raw.send(&[0x62, 0x02, 0x00, 0x01]).await;
    assert_eq!(read_packet(&mut raw).await, (0x70, vec![0, 1]), "PUBCOMP 1");
    raw.send(&q2("rel-311", 4, V311)).await;
    assert_eq!(read_packet(&mut raw).await, (0x50, vec![0, 4]), "PUBREC 4");
    // Three held (2, 3, 4): a fourth closes the connection.
    raw.send(&q2("rel-311", 5, V311)).await;
    expect_refusal(&mut raw, V311, 0, "3.1.1 fourth unreleased QoS 2 id").await;

    let mut raw = open(port, "rel-5", V5).await;
    for pid in 1..=3u16 {
        raw.send(&q2("rel-5", pid, V5)).await;
        let (b1, body) = read_packet(&mut raw).await;
        assert_eq!(
            (b1, &body[..2]),
            (0x50, &pid.to_be_bytes()[..]),
            "PUBREC {pid}"
        );
        assert_eq!(reason_at(&body, 2), reason::SUCCESS);
    }
    raw.send(&q2("rel-5", 4, V5)).await;
    expect_refusal(
        &mut raw,
        V5,
        reason::RECEIVE_MAXIMUM_EXCEEDED,
        "5.0 fourth unreleased QoS 2 id",
    )
    .await;
    t.proxy.shutdown().await;
}

/// One PUBLISH from the proxy to a 5.0 client: (packet id, payload).
fn parse_v5_publish(b1: u8, body: &[u8]) -> (u16, Vec<u8>) {
    assert_eq!(
        b1 & 0xF0,
        0x30,
        "PUBLISH expected, got {b1:#04x} {body:02x?}"
    );
    assert_eq!((b1 >> 1) & 0x03, 1, "QoS 1 command");
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let rest = &body[2 + topic_len..];
    let pid = u16::from_be_bytes([rest[0], rest[1]]);
    (pid, after_properties(&rest[2..]).to_vec())
}

/// Reads the next command PUBLISH: (packet id, payload as text).
async fn next_command(raw: &mut Raw) -> (u16, String) {
    let (b1, body) = read_packet(raw).await;
    let (pid, payload) = parse_v5_publish(b1, &body);
    (pid, String::from_utf8(payload).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_max_unacked_wait_for_a_puback() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const N: usize = 5;
    let t = TestProxy::start_with(|c| c.commands.max_unacked_per_device = 2).await;
    let mut raw = open(t.tcp_port(), "owed-5", V5).await;
    raw.send(&subscribe_bytes(&["devices/owed-5/commands/#"], V5))
        .await;
    let (b1, body) = read_packet(&mut raw).await;
    assert_eq!((b1, suback_codes(&body, V5)), (0x90, vec![0x01]), "SUBACK");

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", t.bootstrap())
        .create()
        .unwrap();
    for i in 0..N {
        producer
            .send(
                FutureRecord::to("iot.commands")
                    .key("owed-5")
                    .payload(&format!("cmd-{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let first = next_command(&mut raw).await;
    let second = next_command(&mut raw).await;
    assert_eq!((first.1.as_str(), second.1.as_str()), ("cmd-0", "cmd-1"));
    // Bounded negative: with two owed, the third is held back.
    assert_quiet(
        &mut raw,
        Duration::from_secs(1),
        "a third command while two are unacknowledged",
    )
    .await;
    let puback = |pid: u16| {
        let mut p = vec![0x40, 0x02];
        p.extend(pid.to_be_bytes());
        p
    };
    raw.send(&puback(first.0)).await;
    let third = next_command(&mut raw).await;
    assert_eq!(third.1, "cmd-2", "one PUBACK lets the third through");
    raw.send(&puback(second.0)).await;
    let fourth = next_command(&mut raw).await;
    raw.send(&puback(third.0)).await;
    let fifth = next_command(&mut raw).await;
    assert_eq!((fourth.1.as_str(), fifth.1.as_str()), ("cmd-3", "cmd-4"));
    raw.send(&puback(fourth.0)).await;
    raw.send(&puback(fifth.0)).await;
    still_served(&mut raw, "after the commands").await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_next_connection_until_one_closes() {
    const MAX: usize = 3;
    let t = TestProxy::start_with(|c| c.listeners.max_connections = MAX).await;
    let port = t.tcp_port();
    let mut held = Vec::new();
    for i in 0..MAX {
        // Bounded so a cap that serves fewer than MAX fails with a clear
        // message instead of read_packet's generic one after PATIENCE.
        let raw = tokio::time::timeout(
            Duration::from_secs(10),
            open(port, &format!("held-{i}"), V311),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "connection {} of listeners.max_connections = {MAX} not served",
                i + 1
            )
        });
        held.push(raw);
    }
    // The kernel completes the handshake (backlog); the proxy does not serve it.
    let mut waiting = Raw::connect(port).await;
    waiting.send(&connect_bytes("waiting", V311, 0)).await;
    assert_quiet(
        &mut waiting,
        Duration::from_millis(500),
        "CONNECT while max_connections are open",
    )
    .await;
    // One closes: the waiting connection is served.
    let mut gone = held.remove(0);
    gone.send(&[0xE0, 0x00]).await;
    drop(gone);
    let (b1, body) = read_packet(&mut waiting).await;
    assert_eq!(
        (b1, body),
        (0x20, vec![0x00, 0x00]),
        "CONNACK once a slot is free"
    );
    for (i, raw) in held.iter_mut().enumerate() {
        still_served(raw, &format!("held connection {i}")).await;
    }
    still_served(&mut waiting, "the formerly waiting connection").await;
    t.proxy.shutdown().await;
}
