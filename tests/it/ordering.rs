//! `mqtt.ordering`: how many of a connection's QoS 1/2 records Kafka holds
//! at once, and what a failed delivery does to the records behind it.
//! `strict` must hand the producer one record per connection at a time, and
//! on a failed delivery nack it (5.0), close the connection and never
//! produce what waited behind it, so a device that resends from the failed
//! one keeps its order in Kafka.
//!
//! These drive the embedded broker's fault switch (`broker_down`);
//! tests/cluster.rs has the same failure with a real cluster hung by
//! SIGSTOP. The throughput cost of `strict` is measured by the ignored
//! `ordering_throughput` (run it with `--release --ignored --nocapture`).

use std::time::Duration;

use crate::common::*;
use mqtt_kafka_proxy::config::PublishOrdering;
use mqtt_kafka_proxy::mqtt::packet::{QoS as Q, Version};

/// session announcement) are in Kafka, so the producer's in-flight count
/// afterwards is only the test's messages.
async fn journal_settled(t: &TestProxy, client_id: &str) {
    for topic in ["iot.lifecycle", "iot.sessions"] {
        let id = client_id.to_owned();
        consume_until(&t.bootstrap(), &t.topic(topic), move |rs| {
            rs.iter().any(|r| r.key == id)
        })
        .await;
    }
}

/// With Kafka down, publishes four QoS 1 messages and a PINGREQ; once the
/// PINGRESP is back every PUBLISH before it has been handled. Returns the
/// records the producer then holds, and checks the four acknowledgements
/// and records once Kafka is back.
async fn records_given_to_the_producer(ordering: PublishOrdering, id: &str) -> i64 {
    let t = TestProxy::start_with(|c| c.mqtt.ordering = ordering).await;
    let kafka = t.proxy.embedded_kafka().unwrap();
    let mut raw = raw_v5_connect(t.tcp_port(), id).await;
    journal_settled(&t, id).await;
    kafka.broker_down(1).unwrap();
    let topic = format!("devices/{id}/events/e");
    for i in 1..=4u16 {
        let p = publish(&topic, Q::AtLeastOnce, i, format!("{id}:{i}").as_bytes());
        raw.send(&publish_bytes(p, Version::V5)).await;
    }
    raw.send(&[0xC0, 0x00]).await;
    // Packets are handled in order: the PINGRESP means all four were read.
    let (b1, _) = try_read_packet(&mut raw).await.expect("PINGRESP");
    assert_eq!(b1, 0xD0, "PINGRESP while the records wait, no PUBACK");
    let given = t.proxy.producer_in_flight();

    kafka.broker_up(1).unwrap();
    for i in 1..=4u16 {
        expect_puback_ok(&mut raw, i).await;
    }
    let want = format!("{id}:4");
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), move |rs| {
        rs.iter().any(|r| r.value == want.as_bytes())
    })
    .await;
    assert_device_order(id, &seqs(&recs, id), 4);
    t.proxy.shutdown().await;
    given
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_hands_the_producer_one_record_per_connection_until_it_is_acknowledged() {
    let given = records_given_to_the_producer(PublishOrdering::Strict, "strict-one").await;
    assert_eq!(
        given, 1,
        "strict: the second PUBLISH waits in the connection until the first is acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_hands_the_producer_the_whole_window() {
    let given = records_given_to_the_producer(PublishOrdering::Pipelined, "piped-all").await;
    assert_eq!(
        given, 4,
        "pipelined: every PUBLISH read goes to the producer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_a_held_record_goes_on_after_a_qos0_record_waited_for_queue_space() {
    // A producer queue of one record: with Kafka down, message 1 fills it,
    // message 2 (QoS 1) is held behind it, and a QoS 0 message finds the
    // queue full and waits for space (the socket is not read meanwhile).
    let t = TestProxy::start_with(|c| {
        c.mqtt.ordering = PublishOrdering::Strict;
        c.kafka.queue_max_messages = 1;
    })
    .await;
    let kafka = t.proxy.embedded_kafka().unwrap();
    let id = "strict-q0";
    let mut raw = raw_v5_connect(t.tcp_port(), id).await;
    // The proxy's own records at connect (delivered, or dropped for want of
    // queue space) are out of the way.
    eventually("an empty producer queue", || {
        t.proxy.producer_in_flight() == 0
    })
    .await;
    kafka.broker_down(1).unwrap();
    let topic = format!("devices/{id}/events/e");
    for (i, qos) in [
        (1u16, Q::AtLeastOnce),
        (2, Q::AtLeastOnce),
        (0, Q::AtMostOnce),
    ] {
        let payload = format!("{id}:{}", if i == 0 { 3 } else { i });
        raw.send(&publish_bytes(
            publish(&topic, qos, i, payload.as_bytes()),
            Version::V5,
        ))
        .await;
    }
    eventually("message 1 with the producer", || {
        t.proxy.producer_in_flight() == 1
    })
    .await;
    kafka.broker_up(1).unwrap();
    // Message 1 acknowledged, the QoS 0 message sent once there is room,
    // and the held message 2 released after it: both PUBACKs arrive.
    for i in 1..=2u16 {
        expect_puback_ok(&mut raw, i).await;
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_a_failed_delivery_is_nacked_and_disconnected_and_the_resend_keeps_order() {
    const TIMEOUT_MS: u64 = 2_000;
    let t = TestProxy::start_with(|c| {
        c.mqtt.ordering = PublishOrdering::Strict;
        c.kafka.delivery_timeout_ms = TIMEOUT_MS;
        // Reconnect to the broker quickly once it is back (librdkafka's
        // default backoff grows to 10 s).
        c.kafka
            .producer
            .insert("reconnect.backoff.max.ms".into(), "100".into());
    })
    .await;
    let kafka = t.proxy.embedded_kafka().unwrap();
    let port = t.tcp_port();
    let (d5, d4) = ("strict-5", "strict-311");
    let (topic5, topic4) = (
        format!("devices/{d5}/events/e"),
        format!("devices/{d4}/events/e"),
    );
    let m = |d: &str, i: u64| format!("{d}:{i}");

    // Message 1 of each device lands while Kafka is up.
    let mut v5 = raw_v5_connect(port, d5).await;
    v5.send(&publish_bytes(
        publish(&topic5, Q::AtLeastOnce, 1, m(d5, 1).as_bytes()),
        Version::V5,
    ))
    .await;
    let (b1, body) = try_read_packet(&mut v5).await.expect("PUBACK 1");
    assert_eq!((b1, body.get(2).copied().unwrap_or(0)), (0x40, 0));
    let mut v4 = v4_connect(v4_options(d4, port)).await;
    v4.client
        .publish(&topic4, rumqttc::QoS::AtLeastOnce, false, m(d4, 1))
        .await
        .unwrap();
    v4.pubacks(1).await;

    kafka.broker_down(1).unwrap();
    // Message 2, then message 3 half a delivery timeout later: pipelined,
    // message 3 would still be retrying when message 2 fails and Kafka
    // returns, land, and the resent message 2 would land after it.
    v5.send(&publish_bytes(
        publish(&topic5, Q::AtLeastOnce, 2, m(d5, 2).as_bytes()),
        Version::V5,
    ))
    .await;
    v4.client
        .publish(&topic4, rumqttc::QoS::AtLeastOnce, false, m(d4, 2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS / 2)).await;
    v5.send(&publish_bytes(
        publish(&topic5, Q::AtLeastOnce, 3, m(d5, 3).as_bytes()),
        Version::V5,
    ))
    .await;
    v4.client
        .publish(&topic4, rumqttc::QoS::AtLeastOnce, false, m(d4, 3))
        .await
        .unwrap();

    // 5.0: the negative PUBACK for message 2 with a reason string, then
    // DISCONNECT 0x80, then the close; nothing for message 3.
    let seen = packets_to_close(&mut v5).await;
    assert_eq!(
        kinds(&seen),
        [(0x40, 0x80), (0xE0, 0x80)],
        "PUBACK 0x80 then DISCONNECT 0x80: {seen:02x?}"
    );
    assert_eq!(&seen[0].1[..2], &[0, 2], "the nack is for message 2");
    assert!(
        reason_string(&seen[0].1, 2).is_some(),
        "the nack says why: {:02x?}",
        seen[0].1
    );
    let why = reason_string(&seen[1].1, 0).unwrap_or_default();
    assert!(why.contains("strict"), "DISCONNECT reason string: {why:?}");
    // 3.1.1: no negative ack; the connection closes without a PUBACK.
    let end = v4.next_puback().await;
    assert!(
        end.is_err(),
        "3.1.1 got a PUBACK for a failed record: {end:?}"
    );

    kafka.broker_up(1).unwrap();
    // Each device resends from its failed message, in order, then goes on.
    let outbox5: Vec<String> = (2..=4).map(|i| m(d5, i)).collect();
    publish_in_order_until_acked(port, d5, &topic5, &outbox5, PATIENCE).await;
    for i in 2..=4 {
        v4_publish_until_acked(port, d4, &topic4, &m(d4, i), PATIENCE).await;
    }

    let want = [m(d5, 4), m(d4, 4)];
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), move |rs| {
        want.iter()
            .all(|w| rs.iter().any(|r| r.value == w.as_bytes()))
    })
    .await;
    for d in [d5, d4] {
        assert_device_order(d, &seqs(&recs, d), 4);
    }
    t.proxy.shutdown().await;
}

/// One 3.1.1 device on a raw socket publishing QoS 1 with up to `window`
/// unacknowledged for `run`; returns how many PUBACKs came within it.
async fn publish_for(port: u16, id: String, window: usize, run: Duration) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = Raw::connect(port).await;
    raw.send(&connect_bytes(&id, Version::V311, 60)).await;
    assert_eq!(raw.read_exact(4).await[..2], [0x20, 0x02], "CONNACK");
    let topic = format!("devices/{id}/events/e");
    let (mut rd, mut wr) = raw.stream.into_split();
    let payload = vec![b'x'; 200];
    let end = tokio::time::Instant::now() + run;
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut in_run = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial = 0usize;
    loop {
        let sending = tokio::time::Instant::now() < end;
        if !sending {
            // Count what was acknowledged within the run; drain the rest.
            let counted = *in_run.get_or_insert(acked);
            if acked == sent {
                return counted;
            }
        }
        let mut batch = Vec::new();
        while sending && sent - acked < window as u64 {
            sent += 1;
            let id = (sent % 65_535) as u16 + 1;
            batch.extend(publish_bytes(
                publish(&topic, Q::AtLeastOnce, id, &payload),
                Version::V311,
            ));
        }
        if !batch.is_empty() {
            wr.write_all(&batch).await.unwrap();
        }
        // PUBACKs are 4 bytes each; count whole ones.
        let n = tokio::time::timeout(PATIENCE, rd.read(&mut buf))
            .await
            .expect("PUBACKs keep coming")
            .unwrap();
        assert!(n > 0, "{id}: proxy closed the connection");
        partial += n;
        acked += (partial / 4) as u64;
        partial %= 4;
    }
}

/// Not a timed test: measures QoS 1 PUBACKs per second per device in each
/// mode on the embedded broker and prints them. Run:
/// `cargo test --release --test ordering -- --ignored --nocapture ordering_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn ordering_throughput() {
    const RUN: Duration = Duration::from_secs(5);
    println!("mode       linger_ms devices window  total msg/s  per device msg/s");
    for (ordering, linger_ms) in [
        (PublishOrdering::Pipelined, 5),
        (PublishOrdering::Strict, 5),
        (PublishOrdering::Strict, 0),
    ] {
        for devices in [1usize, 100] {
            let t = TestProxy::start_with(|c| {
                c.mqtt.ordering = ordering;
                c.kafka.linger_ms = linger_ms;
            })
            .await;
            let port = t.tcp_port();
            let tasks: Vec<_> = (0..devices)
                .map(|i| tokio::spawn(publish_for(port, format!("bench-{i}"), 64, RUN)))
                .collect();
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            let rate = total as f64 / RUN.as_secs_f64();
            println!(
                "{:<10} {linger_ms:>9} {devices:>7} {:>6} {rate:>12.0} {:>17.0}",
                format!("{ordering:?}").to_lowercase(),
                64,
                rate / devices as f64
            );
            t.proxy.shutdown().await;
        }
    }
}
