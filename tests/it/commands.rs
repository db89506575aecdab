//! Commands back to devices: a back-end writes a record to the commands topic
//! (key = device id) and the device, connected to any replica and
//! subscribed, receives it as a PUBLISH; every outcome lands in the receipts
//! topic. Also session takeover (same replica and across replicas) and the
//! lifecycle records.

use crate::common::*;
use rumqttc::{Event, Packet, QoS};

fn receipt(r: &Rec) -> serde_json::Value {
    serde_json::from_slice(&r.value).unwrap()
}

/// Waits for the receipt of the command with `id`.
async fn receipt_with_id(t: &TestProxy, id: &str) -> serde_json::Value {
    let want = id.to_owned();
    let recs = consume_until(
        &t.bootstrap(),
        &t.topic("iot.command-receipts"),
        move |rs| rs.iter().any(|r| receipt(r)["command_id"] == want.as_str()),
    )
    .await;
    recs.iter()
        .map(receipt)
        .find(|v| v["command_id"] == id)
        .unwrap()
}

/// Asserts the receipt of command `id`: its status and the replica that wrote it.
async fn assert_receipt(t: &TestProxy, id: &str, status: &str, replica: &str) {
    let r = receipt_with_id(t, id).await;
    assert_eq!(
        (r["status"].as_str(), r["replica"].as_str()),
        (Some(status), Some(replica)),
        "receipt of {id}: {r}"
    );
}

async fn subscribed(port: u16, id: &str) -> V4 {
    let mut c = v4_connect(v4_options(id, port)).await;
    c.client
        .subscribe(format!("devices/{id}/commands/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let ack = next_matching(&mut c.events, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await
    .unwrap();
    let Event::Incoming(Packet::SubAck(ack)) = ack else {
        unreachable!()
    };
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_subscribed_device_at_qos_0_and_1_with_receipts() {
    let t = TestProxy::start_with(|c| c.commands.replica_id = "replica-a".into()).await;
    let mut dev = subscribed(t.tcp_port(), "dev-cmd").await;

    command(
        &t,
        "dev-cmd",
        "reboot now",
        &[
            ("command.name", "reboot"),
            ("command.id", "c-1"),
            ("mqtt.qos", "1"),
        ],
    )
    .await;
    let p = dev.next_publish().await;
    assert_eq!(p.topic, "devices/dev-cmd/commands/reboot");
    assert_eq!(&p.payload[..], b"reboot now");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    // rumqttc acknowledges it; the receipt says delivered.
    let r = receipt_with_id(&t, "c-1").await;
    assert_eq!(r["status"], "delivered");
    assert_eq!(r["device_id"], "dev-cmd");
    assert_eq!(r["replica"], "replica-a");
    assert_eq!(r["source"]["topic"], t.topic("iot.commands"));

    command(
        &t,
        "dev-cmd",
        "{\"led\":\"on\"}",
        &[
            ("mqtt.topic", "devices/dev-cmd/commands/led"),
            ("mqtt.qos", "0"),
            ("command.id", "c-2"),
        ],
    )
    .await;
    let p = dev.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.qos),
        ("devices/dev-cmd/commands/led", QoS::AtMostOnce)
    );
    assert_eq!(receipt_with_id(&t, "c-2").await["status"], "delivered");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_and_expired_commands_are_not_delivered_and_say_so() {
    let t = TestProxy::start().await;
    // Connected, never subscribed.
    let _idle = v4_connect(v4_options("dev-quiet", t.tcp_port())).await;
    command(&t, "dev-quiet", "x", &[("command.id", "c-unsub")]).await;
    assert_eq!(
        receipt_with_id(&t, "c-unsub").await["status"],
        "not_subscribed"
    );

    // Subscribed: an already expired command is skipped, the next one arrives.
    let mut dev = subscribed(t.tcp_port(), "dev-exp").await;
    command(
        &t,
        "dev-exp",
        "stale",
        &[
            ("command.id", "c-old"),
            ("mqtt.message_expiry_interval", "-5"),
        ],
    )
    .await;
    command(
        &t,
        "dev-exp",
        "fresh",
        &[
            ("command.id", "c-new"),
            ("mqtt.message_expiry_interval", "60"),
        ],
    )
    .await;
    let p = dev.next_publish().await;
    assert_eq!(
        &p.payload[..],
        b"fresh",
        "the expired command must not be delivered"
    );
    assert_eq!(receipt_with_id(&t, "c-old").await["status"], "expired");
    assert_eq!(receipt_with_id(&t, "c-new").await["status"], "delivered");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_replicas_both_receive_their_commands() {
    let a = TestProxy::start_with(|c| c.commands.replica_id = "A".into()).await;
    let b = second_replica(&a, "B").await;
    let mut on_a = subscribed(a.tcp_port(), "dev-a").await;
    let mut on_b = subscribed(b.tcp_port(), "dev-b").await;
    command(&a, "dev-a", "for a", &[("command.id", "ca")]).await;
    command(&a, "dev-b", "for b", &[("command.id", "cb")]).await;
    assert_eq!(&on_a.next_publish().await.payload[..], b"for a");
    assert_eq!(&on_b.next_publish().await.payload[..], b"for b");
    assert_receipt(&a, "ca", "delivered", "A").await;
    assert_receipt(&a, "cb", "delivered", "B").await;
    b.proxy.shutdown().await;
    a.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_connecting_again_takes_over_here_and_across_replicas() {
    let a = TestProxy::start_with(|c| c.commands.replica_id = "A".into()).await;
    let b = second_replica(&a, "B").await;
    // Same replica: the first connection gets DISCONNECT 0x8E.
    let mut first = v5_connect(v5_options("dev-twice", a.tcp_port())).await;
    let _second = v5_connect(v5_options("dev-twice", a.tcp_port())).await;
    let end = next_matching(&mut first.events, |_| false)
        .await
        .unwrap_err();
    assert!(end.contains("SessionTakenOver"), "{end}");

    // Across replicas: connected on A, connects on B, A closes its session.
    let mut on_a = v5_connect(v5_options("dev-roams", a.tcp_port())).await;
    let _on_b = v5_connect(v5_options("dev-roams", b.tcp_port())).await;
    let end = next_matching(&mut on_a.events, |_| false)
        .await
        .unwrap_err();
    assert!(end.contains("SessionTakenOver"), "{end}");
    b.proxy.shutdown().await;
    a.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_disconnects_are_recorded_in_the_lifecycle_topic() {
    let t = TestProxy::start().await;
    let c = v4_connect(v4_options("dev-life", t.tcp_port())).await;
    c.client.disconnect().await.unwrap();
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.lifecycle"), |rs| {
        rs.iter().filter(|r| r.key == "dev-life").count() >= 2
    })
    .await;
    let events: Vec<serde_json::Value> = recs
        .iter()
        .filter(|r| r.key == "dev-life")
        .map(receipt)
        .collect();
    assert_eq!(events[0]["event"], "connected");
    assert_eq!(events[1]["event"], "disconnected");
    assert_eq!(events[1]["reason"], "client_disconnected");
    t.proxy.shutdown().await;
}

/// The will payload of these tests.
const OFFLINE: &[u8] = b"{\"online\":false}";

/// A 3.1.1 CONNECT with a QoS 1 will on `will_topic`.
fn connect_with_will(id: &str, will_topic: &str) -> Vec<u8> {
    use mqtt_kafka_proxy::mqtt::packet::{QoS, Version};
    let mut c = connect_packet(id, Version::V311, 30);
    c.will = Some(will(will_topic, OFFLINE, QoS::AtLeastOnce));
    connect_packet_bytes(c)
}

/// Waits for the lifecycle record saying `id` disconnected: the proxy has
/// finished with that connection, will included.
async fn disconnected(t: &TestProxy, id: &str) {
    let want = id.to_owned();
    consume_until(&t.bootstrap(), &t.topic("iot.lifecycle"), move |rs| {
        rs.iter()
            .any(|r| r.key == want && receipt(r)["event"] == "disconnected")
    })
    .await;
}

/// A 5.0 CONNECT whose will waits `delay_s` (the session may outlive the
/// connection for as long).
fn connect_with_delayed_will(id: &str, will_topic: &str, delay_s: u32) -> Vec<u8> {
    use mqtt_kafka_proxy::mqtt::packet::{QoS, Version};
    let mut c = connect_packet(id, Version::V5, 30);
    let mut w = will(will_topic, OFFLINE, QoS::AtLeastOnce);
    w.properties.will_delay_interval = Some(delay_s);
    c.will = Some(w);
    c.properties.session_expiry_interval = Some(delay_s);
    connect_packet_bytes(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_is_held_then_produced_when_the_replica_drains() {
    // One partition, so the order of records in the topic is the order
    // Kafka took them in.
    let one_partition = |c: &mut mqtt_kafka_proxy::Config| {
        c.kafka.embedded.partitions = 1;
        c.kafka.topics.partitions = 1;
    };
    let a = TestProxy::start_with(one_partition).await;
    let b = TestProxy::start_beside(&a, one_partition).await;
    let topic = "devices/dev-later/events/status";

    let mut dying = Raw::connect(b.tcp_port()).await;
    dying
        .send(&connect_with_delayed_will("dev-later", topic, 3600))
        .await;
    let (b1, _) = read_packet(&mut dying).await;
    assert_eq!(b1, 0x20, "CONNACK");
    drop(dying);
    disconnected(&a, "dev-later").await;

    // Held: a record written after the connection ended comes first.
    let mut other = v4_connect(v4_options("dev-sentinel", a.tcp_port())).await;
    other
        .client
        .publish(
            "devices/dev-sentinel/events/x",
            QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    other.pubacks(1).await;
    let recs = consume_until(&a.bootstrap(), &a.topic("iot.events"), |rs| {
        rs.iter().any(|r| r.value == b"sentinel")
    })
    .await;
    assert!(
        recs.iter().all(|r| r.key != "dev-later"),
        "the will waits for its delay (or the end of the session)"
    );

    // The replica drains: its sessions end, so the will is due now, and it
    // is in Kafka when the shutdown returns.
    let report = b.proxy.shutdown().await;
    assert_eq!((report.connections_left, report.records_unflushed), (0, 0));
    let recs = consume_until(&a.bootstrap(), &a.topic("iot.events"), |rs| {
        rs.iter().any(|r| r.key == "dev-later")
    })
    .await;
    let sentinel = recs.iter().position(|r| r.value == b"sentinel").unwrap();
    let will = recs.iter().position(|r| r.key == "dev-later").unwrap();
    assert!(
        will > sentinel,
        "produced at the drain, not at the disconnect"
    );
    assert_eq!(recs[will].header("mqtt.will").as_deref(), Some("1"));
    assert_eq!(recs[will].value, OFFLINE);
    a.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_is_produced_when_a_connection_dies_not_on_a_clean_disconnect() {
    let t = TestProxy::start().await;

    // Killed: the socket closes without DISCONNECT.
    let mut killed = Raw::connect(t.tcp_port()).await;
    killed
        .send(&connect_with_will(
            "dev-dies",
            "devices/dev-dies/events/status",
        ))
        .await;
    assert_eq!(killed.read_exact(4).await, [0x20, 0x02, 0x00, 0x00]);
    drop(killed);
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), |rs| {
        rs.iter().any(|r| r.key == "dev-dies")
    })
    .await;
    let will = recs.iter().find(|r| r.key == "dev-dies").unwrap();
    assert_eq!(will.value, OFFLINE);
    assert_eq!(will.header("mqtt.will").as_deref(), Some("1"));
    assert_eq!(
        will.header("mqtt.topic").as_deref(),
        Some("devices/dev-dies/events/status")
    );

    // Clean: DISCONNECT discards the will. A sentinel from the same client id,
    // sent after the proxy recorded the disconnect, shares the will's
    // partition, so a wrongly produced will would be found before it.
    let mut clean = Raw::connect(t.tcp_port()).await;
    clean
        .send(&connect_with_will(
            "dev-leaves",
            "devices/dev-leaves/events/status",
        ))
        .await;
    assert_eq!(clean.read_exact(4).await, [0x20, 0x02, 0x00, 0x00]);
    clean.send(&[0xE0, 0x00]).await;
    clean.read_to_close().await;
    disconnected(&t, "dev-leaves").await;
    let mut again = v4_connect(v4_options("dev-leaves", t.tcp_port())).await;
    again
        .client
        .publish(
            "devices/dev-leaves/events/status",
            QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    again.pubacks(1).await;
    let recs = consume_until(&t.bootstrap(), &t.topic("iot.events"), |rs| {
        rs.iter()
            .any(|r| r.key == "dev-leaves" && r.value == b"sentinel")
    })
    .await;
    let mine: Vec<&Rec> = recs.iter().filter(|r| r.key == "dev-leaves").collect();
    assert_eq!(
        mine.len(),
        1,
        "only the sentinel: no will after a clean DISCONNECT"
    );
    t.proxy.shutdown().await;
}

fn persistent(id: &str, port: u16) -> rumqttc::MqttOptions {
    let mut o = v4_options(id, port);
    o.set_clean_session(false);
    o
}

async fn second_replica(a: &TestProxy, name: &'static str) -> TestProxy {
    TestProxy::start_beside(a, move |c| {
        c.commands.replica_id = name.into();
        c.listeners.tls.enabled = false;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_its_command_when_it_reconnects_to_the_other_replica() {
    let a = TestProxy::start_with(|c| c.commands.replica_id = "A".into()).await;
    let b = second_replica(&a, "B").await;
    // Persistent session on A, then offline.
    let dev = v4_connect(persistent("dev-away", a.tcp_port())).await;
    dev.client.disconnect().await.unwrap();
    disconnected(&a, "dev-away").await;

    command(
        &a,
        "dev-away",
        "while you were out",
        &[("command.id", "c-away")],
    )
    .await;
    // Back, on the other replica, without subscribing again.
    let mut back = v4_connect(persistent("dev-away", b.tcp_port())).await;
    let p = back.next_publish().await;
    assert_eq!(&p.payload[..], b"while you were out");
    assert_eq!(p.topic, "devices/dev-away/commands/command");
    assert_receipt(&a, "c-away", "delivered", "B").await;
    b.proxy.shutdown().await;
    a.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_rebuilds_its_offline_index_from_kafka() {
    let a = TestProxy::start_with(|c| c.commands.replica_id = "A".into()).await;
    let b = second_replica(&a, "B").await;
    let dev = v4_connect(persistent("dev-later", b.tcp_port())).await;
    dev.client.disconnect().await.unwrap();
    disconnected(&a, "dev-later").await;
    command(&a, "dev-later", "first", &[("command.id", "c-l1")]).await;
    // Replica B goes away and comes back empty-handed: it must read the
    // command back from Kafka.
    b.proxy.shutdown().await;
    command(&a, "dev-later", "second", &[("command.id", "c-l2")]).await;
    let b2 = second_replica(&a, "B2").await;
    let mut back = v4_connect(persistent("dev-later", b2.tcp_port())).await;
    let got = [back.next_publish().await, back.next_publish().await];
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"first"[..], b"second"], "both, in order");
    assert_eq!(receipt_with_id(&a, "c-l1").await["status"], "delivered");
    assert_eq!(receipt_with_id(&a, "c-l2").await["status"], "delivered");
    b2.proxy.shutdown().await;
    a.proxy.shutdown().await;
}

/// Writes desired state to the retained-commands topic.
async fn retained(t: &TestProxy, device: &str, mqtt_topic: &str, payload: &str) {
    produce_command(
        &t.bootstrap(),
        &t.topic("iot.retained-commands"),
        device,
        payload,
        &[("mqtt.topic", mqtt_topic)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_commands_are_sent_on_subscribe_latest_per_topic_even_after_a_restart() {
    let a = TestProxy::start_with(|c| c.commands.replica_id = "A".into()).await;
    let led = "devices/dev-state/commands/led";
    let fan = "devices/dev-state/commands/fan";
    retained(&a, "dev-state", led, "on").await;
    retained(&a, "dev-state", led, "off").await;
    retained(&a, "dev-state", fan, "2").await;
    retained(&a, "dev-state", fan, "").await; // deleted
                                              // A command after the retained ones: it arrives after them, so the device
                                              // has seen everything retained once this shows up.
    let marker = "devices/dev-state/commands/marker";

    // A replica started after the writes loads them from the topic.
    let b = second_replica(&a, "B").await;
    for port in [a.tcp_port(), b.tcp_port()] {
        let mut dev = subscribed(port, "dev-state").await;
        let p = dev.next_publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain),
            (led, &b"off"[..], true)
        );
        command(&a, "dev-state", "m", &[("mqtt.topic", marker)]).await;
        let p = dev.next_publish().await;
        assert_eq!(
            p.topic, marker,
            "only the latest led state; the fan state was deleted"
        );
        assert!(!p.retain);
        dev.client.disconnect().await.unwrap();
        disconnected(&a, "dev-state").await;
    }
    b.proxy.shutdown().await;
    a.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_falls_out_of_the_offline_queue_is_reported_as_dropped() {
    let t = TestProxy::start_with(|c| {
        c.commands.replica_id = "A".into();
        c.commands.max_queued_per_device = 1;
    })
    .await;
    let dev = v4_connect(persistent("dev-full", t.tcp_port())).await;
    dev.client.disconnect().await.unwrap();
    disconnected(&t, "dev-full").await;
    command(&t, "dev-full", "first", &[("command.id", "c-f1")]).await;
    command(&t, "dev-full", "second", &[("command.id", "c-f2")]).await;
    assert_receipt(&t, "c-f1", "dropped", "A").await;
    let mut back = v4_connect(persistent("dev-full", t.tcp_port())).await;
    assert_eq!(&back.next_publish().await.payload[..], b"second");
    assert_eq!(receipt_with_id(&t, "c-f2").await["status"], "delivered");
    t.proxy.shutdown().await;
}
