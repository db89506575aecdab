//! Kafka going away: while the broker is down no QoS 1 PUBLISH is
//! acknowledged and the proxy stops reading once `receive_maximum` records
//! are in flight; when it returns every acknowledged message is in Kafka, in
//! order. If delivery finally fails the device never gets a success ack.

use crate::common::*;
use rumqttc::{Event, Packet, QoS};

fn pubacks_so_far(c: &mut V4) -> usize {
    let mut n = 0;
    while let Ok(ev) = c.events.try_recv() {
        if matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_puback_while_kafka_is_down_and_nothing_lost_after() {
    const WINDOW: u16 = 10;
    const N: usize = 30;
    let t = TestProxy::start_with(|c| c.mqtt.receive_maximum = WINDOW).await;
    let kafka = t.proxy.embedded_kafka().unwrap();
    let mut o = v4_options("outage", t.tcp_port());
    o.set_inflight(100);
    let mut c = v4_connect(o).await;
    // One message before the outage proves the path works.
    c.client
        .publish("devices/outage/events/e", QoS::AtLeastOnce, false, "before")
        .await
        .unwrap();
    assert_eq!(c.pubacks(1).await.len(), 1);
    journal_settled(&t, "outage").await;

    kafka.broker_down(1).unwrap();
    for i in 0..N {
        c.client
            .publish(
                "devices/outage/events/e",
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    // The proxy reads exactly one window of records, then stops reading.
    eventually("a full window in flight", || {
        t.proxy.producer_in_flight() == WINDOW as i64
    })
    .await;
    assert_eq!(pubacks_so_far(&mut c), 0, "no PUBACK while Kafka is down");
    assert_eq!(
        t.proxy.producer_in_flight(),
        WINDOW as i64,
        "the socket is not read beyond receive_maximum"
    );

    kafka.broker_up(1).unwrap();
    c.pubacks(N).await;
    let recs = consume(&t.bootstrap(), "iot.events", N + 1).await;
    let vals: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    let mut want = vec!["before".to_string()];
    want.extend((0..N).map(|i| format!("m{i}")));
    assert_eq!(vals, want, "every acknowledged message, once, in order");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_delivery_closes_311_and_nacks_v5() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::Event as E5;
    let t = TestProxy::start_with(|c| {
        c.kafka.delivery_timeout_ms = 1500;
        // Reconnect to the broker quickly once it is back (librdkafka's
        // default backoff grows to 10 s, longer than the delivery timeout).
        c.kafka
            .producer
            .insert("reconnect.backoff.max.ms".into(), "100".into());
    })
    .await;
    let kafka = t.proxy.embedded_kafka().unwrap();
    let mut v4 = v4_connect(v4_options("fail-311", t.tcp_port())).await;
    let mut v5 = v5_connect(v5_options("fail-5", t.tcp_port())).await;
    kafka.broker_down(1).unwrap();

    v4.client
        .publish("devices/fail-311/events/e", QoS::AtLeastOnce, false, "lost")
        .await
        .unwrap();
    // 3.1.1 has no negative ack: the proxy closes so the client resends.
    let end = v4.next_puback().await;
    assert!(
        end.is_err(),
        "3.1.1 must not get a PUBACK for a failed record: {end:?}"
    );

    v5.client
        .publish("devices/fail-5/events/e", Q5::AtLeastOnce, false, "lost")
        .await
        .unwrap();
    let ack = next_matching(&mut v5.events, |e| matches!(e, E5::Incoming(P5::PubAck(_)))).await;
    // rumqttc reports a PUBACK with an error reason code as an event-loop error.
    match ack {
        Err(e) => assert!(e.contains("UnspecifiedError"), "unexpected error: {e}"),
        Ok(E5::Incoming(P5::PubAck(a))) => {
            panic!("5.0 must get an error reason code, got {:?}", a.reason)
        }
        Ok(other) => panic!("unexpected event {other:?}"),
    }

    kafka.broker_up(1).unwrap();
    // After the outage the device resends until it is acknowledged, as a
    // real one does: a record sent before the producer has reconnected may
    // still time out, and then the proxy closes again.
    v4_publish_until_acked(
        t.tcp_port(),
        "fail-311",
        "devices/fail-311/events/e",
        "resent",
        PATIENCE,
    )
    .await;
    let recs = consume_until(&t.bootstrap(), "iot.events", |r| {
        r.iter().any(|r| r.value == b"resent")
    })
    .await;
    assert!(recs
        .iter()
        .any(|r| r.key == "fail-311" && r.value == b"resent"));
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_acks_then_disconnects_v5_with_0x8b() {
    use mqtt_kafka_proxy::mqtt::packet::{Packet, Properties, Publish, QoS as Q, Version};
    let t = TestProxy::start().await;
    let port = t.tcp_port();
    let kafka = t.proxy.embedded_kafka().unwrap().control();
    // A raw client sees every byte, in order (rumqttc drops events queued
    // before a server DISCONNECT).
    let mut raw = Raw::connect(port).await;
    raw.send(&connect_bytes("draining", Version::V5, 30)).await;
    let connack = raw.read_exact(2).await;
    assert_eq!(connack[0], 0x20);
    raw.read_exact(connack[1] as usize).await;
    journal_settled(&t, "draining").await;
    let TestProxy {
        proxy, dir: _dir, ..
    } = t;
    kafka.broker_down(1).unwrap();
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: Q::AtLeastOnce,
        retain: false,
        topic: "devices/draining/events/e".into(),
        packet_id: 9,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"in-flight"),
    });
    raw.send(&encode(&publish, Version::V5)).await;
    eventually("the record in flight", || proxy.producer_in_flight() == 1).await;

    let drain = tokio::spawn(proxy.shutdown());
    // The drain has begun once the listener refuses new connections.
    eventually_async("the listener to refuse connections", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    // Kafka returns mid-drain: the in-flight record is acknowledged, then goodbye.
    kafka.broker_up(1).unwrap();
    let rest = raw.read_to_close().await;
    assert_eq!(
        &rest[..4],
        &[0x40, 0x02, 0x00, 0x09],
        "success PUBACK for packet 9 first"
    );
    assert_eq!(rest[4], 0xE0, "then DISCONNECT: {rest:02x?}");
    assert_eq!(rest[6], 0x8B, "reason: server shutting down");
    let report = drain.await.unwrap();
    assert_eq!(report.connections_left, 0);
    assert_eq!(report.records_unflushed, 0);
}
