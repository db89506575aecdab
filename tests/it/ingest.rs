//! The ingest path end to end: real MQTT clients publish to the proxy over
//! TCP and TLS, and a real Kafka consumer finds the records with the right
//! topic, key, value and headers, in publish order.

use std::collections::HashMap;

use crate::common::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_publishes_at_every_qos_reach_kafka_with_headers() {
    let t = TestProxy::start().await;
    let mut c = v4_connect(v4_options("dev-311", t.tcp_port())).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        c.client
            .publish(
                format!("devices/d/events/q{i}"),
                qos,
                false,
                format!("payload-{i}"),
            )
            .await
            .unwrap();
    }
    // QoS 2 completes with PUBCOMP: by then every record has been produced.
    next_matching(&mut c.events, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)))
    })
    .await
    .unwrap();
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), 3).await;
    let mut by_qos: HashMap<String, &Rec> = HashMap::new();
    for r in &recs {
        by_qos.insert(r.header("mqtt.qos").unwrap(), r);
    }
    for i in 0..3 {
        let r = by_qos[&i.to_string()];
        assert_eq!(r.key, "dev-311");
        assert_eq!(r.value, format!("payload-{i}").as_bytes());
        assert_eq!(
            r.header("mqtt.topic").unwrap(),
            format!("devices/d/events/q{i}")
        );
        assert_eq!(r.header("mqtt.client_id").unwrap(), "dev-311");
        assert_eq!(r.header("mqtt.retain").unwrap(), "0");
        assert_eq!(r.header("mqtt.protocol").unwrap(), "3.1.1");
        assert!(r.timestamp_ms > 1_600_000_000_000, "receive time set");
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_become_headers() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::Event;
    let t = TestProxy::start().await;
    let mut c = v5_connect(v5_options("dev-5", t.tcp_port())).await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(64));
    assert_eq!(props.max_packet_size, Some(262_144));
    assert_eq!(props.topic_alias_max, Some(16));
    let p = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("devices/dev-5/replies".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![("fw".into(), "1.2.3".into()), ("fw".into(), "again".into())],
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(90),
        ..Default::default()
    };
    for qos in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce] {
        c.client
            .publish_with_properties("devices/dev-5/snapshot", qos, true, "{\"t\":21}", p.clone())
            .await
            .unwrap();
    }
    next_matching(&mut c.events, |e| {
        matches!(e, Event::Incoming(Packet::PubComp(_)))
    })
    .await
    .unwrap();
    let recs = consume(&t.bootstrap(), &t.topic("iot.snapshots"), 3).await;
    let mut qos_seen: Vec<String> = recs.iter().map(|r| r.header("mqtt.qos").unwrap()).collect();
    qos_seen.sort();
    assert_eq!(qos_seen, ["0", "1", "2"]);
    for r in &recs {
        assert_eq!(r.key, "dev-5");
        assert_eq!(r.value, b"{\"t\":21}");
        assert_eq!(r.header("mqtt.protocol").unwrap(), "5.0");
        assert_eq!(r.header("mqtt.retain").unwrap(), "1");
        assert_eq!(r.header("mqtt.content_type").unwrap(), "application/json");
        assert_eq!(
            r.header("mqtt.response_topic").unwrap(),
            "devices/dev-5/replies"
        );
        let corr = r
            .headers
            .iter()
            .find(|(k, _)| k == "mqtt.correlation_data")
            .unwrap();
        assert_eq!(corr.1, b"\x00\x01corr");
        assert_eq!(r.header("mqtt.payload_format").unwrap(), "1");
        assert_eq!(r.header("mqtt.message_expiry_interval").unwrap(), "90");
        let fw: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| k == "fw")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(
            fw,
            vec![b"1.2.3".to_vec(), b"again".to_vec()],
            "repeated user properties kept in order"
        );
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_qos1_messages_from_one_device_arrive_in_order() {
    const N: usize = 10_000;
    let t = TestProxy::start().await;
    let mut o = v4_options("ordered", t.tcp_port());
    o.set_inflight(100);
    let mut c = v4_connect(o).await;
    let client = c.client.clone();
    tokio::spawn(async move {
        for i in 0..N {
            client
                .publish(
                    "devices/ordered/events/seq",
                    QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .unwrap();
        }
    });
    c.pubacks(N).await;
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), N).await;
    let seq: Vec<usize> = recs
        .iter()
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        seq,
        (0..N).collect::<Vec<_>>(),
        "one device's records in publish order"
    );
    assert!(recs.iter().all(|r| r.partition == recs[0].partition));
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_keep_per_device_order() {
    let t = TestProxy::start().await;
    devices_publish_in_order(&t, 20, 300).await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_waiting_for_a_full_producer_queue_each_get_their_turn() {
    // Room for 2 records in the producer: 20 devices with 20 messages each
    // wait for space record after record. Each delivered record wakes one
    // waiting connection; a lost wake-up costs a 1 s recheck, so losing
    // them would not finish within the test's patience.
    let t = TestProxy::start_with(|c| c.kafka.queue_max_messages = 2).await;
    tokio::time::timeout(PATIENCE, devices_publish_in_order(&t, 20, 20))
        .await
        .expect("400 records through a 2-record queue within the patience");
    t.proxy.shutdown().await;
}

/// `devices` 3.1.1 devices publish `each` QoS 1 messages at once; every
/// PUBACK arrives and Kafka holds each device's records in order.
async fn devices_publish_in_order(t: &TestProxy, devices: usize, each: usize) {
    let port = t.tcp_port();
    let mut tasks = Vec::new();
    for d in 0..devices {
        tasks.push(tokio::spawn(async move {
            let id = format!("dev-{d}");
            let mut c = v4_connect(v4_options(&id, port)).await;
            let client = c.client.clone();
            let topic = format!("devices/{id}/events/x");
            tokio::spawn(async move {
                for i in 0..each {
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
                        .await
                        .unwrap();
                }
            });
            c.pubacks(each).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), devices * each).await;
    let mut per_device: HashMap<String, Vec<usize>> = HashMap::new();
    for r in &recs {
        per_device
            .entry(r.key.clone())
            .or_default()
            .push(std::str::from_utf8(&r.value).unwrap().parse().unwrap());
    }
    assert_eq!(per_device.len(), devices);
    for (dev, seq) in per_device {
        assert_eq!(seq, (0..each).collect::<Vec<_>>(), "order of {dev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_verify_the_generated_ca_and_publish() {
    let t = TestProxy::start().await;
    assert!(t.ca_path().exists(), "development CA generated");
    let mut o = rumqttc::MqttOptions::new("tls-dev", "localhost", t.tls_port());
    o.set_transport(tls_transport(&t.ca_path()));
    let mut c = v4_connect(o).await;
    for i in 0..100 {
        c.client
            .publish(
                "devices/tls-dev/events/e",
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    c.pubacks(100).await;
    let recs = consume(&t.bootstrap(), &t.topic("iot.events"), 100).await;
    let vals: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(vals, (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(recs.iter().all(|r| r.key == "tls-dev"));

    // A client that trusts some other CA must fail the handshake.
    let other = tempfile::tempdir().unwrap();
    let other_ca = mqtt_kafka_proxy::server::tls::generate_dev_certs(
        &other.path().join("s.crt"),
        &other.path().join("s.key"),
    )
    .unwrap();
    let mut o = rumqttc::MqttOptions::new("tls-wrong-ca", "localhost", t.tls_port());
    o.set_transport(tls_transport(&other_ca));
    let (_client, mut el) = rumqttc::AsyncClient::new(o, 10);
    let err = tokio::time::timeout(PATIENCE, el.poll()).await.unwrap();
    assert!(
        err.is_err(),
        "handshake with an untrusted CA must fail: {err:?}"
    );
    t.proxy.shutdown().await;
}

/// A client may send PUBLISH right behind CONNECT without waiting for
/// CONNACK; the buffered PUBLISH is served at once, not when more bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_pipelined_behind_connect_is_served() {
    use mqtt_kafka_proxy::mqtt::packet::*;
    let t = TestProxy::start().await;
    let mut raw = Raw::connect(t.tcp_port()).await;
    let mut bytes = connect_bytes("pipelined", Version::V311, 30);
    bytes.extend(encode(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "devices/pipelined/events/t".into(),
            packet_id: 7,
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"first"),
        }),
        Version::V311,
    ));
    raw.send(&bytes).await;
    assert_eq!(raw.read_exact(8).await, [0x20, 2, 0, 0, 0x40, 2, 0, 7]);
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), |r| !r.is_empty()).await;
    assert_eq!(recs[0].value, b"first");
}
