//! PROXY protocol v1/v2 on a listener: the real client address reaches the
//! connection (its lifecycle record's `peer`, which is also what is logged),
//! a balancer-verified certificate CN becomes the identity, and a missing or
//! malformed header closes the connection before any MQTT is read.

use crate::common::*;
use mqtt_kafka_proxy::config::{AclAction, AclRule, AuthMethod, Permission};
use mqtt_kafka_proxy::mqtt::packet::*;
use mqtt_kafka_proxy::server::proxy_protocol::encode_v2;

/// Sends the header, CONNECT and a QoS 1 PUBLISH; returns CONNACK + PUBACK bytes.
async fn session(port: u16, header: &[u8], id: &str) -> Vec<u8> {
    let mut raw = Raw::connect(port).await;
    let mut bytes = header.to_vec();
    bytes.extend(connect_bytes(id, Version::V311, 30));
    bytes.extend(qos1(
        &format!("devices/{id}/events/t"),
        1,
        b"hi",
        Version::V311,
    ));
    raw.send(&bytes).await;
    raw.read_exact(8).await
}

async fn lifecycle_peer(t: &TestProxy, key: &str) -> String {
    let key = key.to_owned();
    let recs = consume_until(&t.bootstrap(), "iot.lifecycle", {
        let key = key.clone();
        move |r| r.iter().any(|r| r.key == key)
    })
    .await;
    let rec = recs.iter().find(|r| r.key == key).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
    v["peer"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_give_the_real_client_address() {
    let t = TestProxy::start_with(|c| c.listeners.tcp.proxy_protocol = true).await;
    let port = t.tcp_port();

    let got = session(
        port,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n",
        "pp-v1",
    )
    .await;
    assert_eq!(got, [0x20, 2, 0, 0, 0x40, 2, 0, 1], "CONNACK then PUBACK");
    assert_eq!(lifecycle_peer(&t, "pp-v1").await, "203.0.113.7:51234");

    let v2 = encode_v2(
        "[2001:db8::42]:40000".parse().unwrap(),
        "[2001:db8::1]:1883".parse().unwrap(),
        None,
    );
    let got = session(port, &v2, "pp-v2").await;
    assert_eq!(got, [0x20, 2, 0, 0, 0x40, 2, 0, 1]);
    assert_eq!(lifecycle_peer(&t, "pp-v2").await, "[2001:db8::42]:40000");

    // The records themselves landed.
    let recs = consume_until(&t.bootstrap(), "iot.events", |r| r.len() >= 2).await;
    let mut keys: Vec<&str> = recs.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["pp-v1", "pp-v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_headers_close_the_connection() {
    let t = TestProxy::start_with(|c| c.listeners.tcp.proxy_protocol = true).await;
    let port = t.tcp_port();
    for (case, header) in [
        ("no header", &b""[..]),
        ("bad port", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1883\r\n"),
        (
            "family mismatch",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 1883\r\n",
        ),
        ("v2 bad version", b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c"),
    ] {
        let mut raw = Raw::connect(port).await;
        let mut bytes = header.to_vec();
        bytes.extend(connect_bytes("pp-bad", Version::V311, 30));
        raw.send(&bytes).await;
        let answered = raw.read_to_close().await;
        assert!(
            answered.is_empty(),
            "{case}: the proxy answered {answered:02x?}"
        );
    }
    // A listener without proxy_protocol treats a header as a bad first packet.
    let plain = TestProxy::start().await;
    let mut raw = Raw::connect(plain.tcp_port()).await;
    raw.send(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 1883\r\n").await;
    assert!(raw.read_to_close().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_verified_certificate_cn_is_the_identity() {
    let t = TestProxy::start_with(|c| {
        c.listeners.tcp.proxy_protocol = true;
        c.auth.methods = vec![AuthMethod::Certificate];
        c.auth.acl = vec![AclRule {
            permission: Permission::Allow,
            action: AclAction::Publish,
            topic: "devices/{device_id}/#".into(),
        }];
    })
    .await;
    let port = t.tcp_port();
    let header = encode_v2(
        "198.51.100.9:40000".parse().unwrap(),
        "10.0.0.1:1883".parse().unwrap(),
        Some("dev-cn"),
    );
    // The client id claims to be someone else; the key is the CN.
    let mut raw = Raw::connect(port).await;
    let mut bytes = header.clone();
    bytes.extend(connect_bytes("someone-else", Version::V311, 30));
    bytes.extend(qos1("devices/dev-cn/events/t", 1, b"cn", Version::V311));
    raw.send(&bytes).await;
    assert_eq!(raw.read_exact(8).await, [0x20, 2, 0, 0, 0x40, 2, 0, 1]);
    let recs = consume_until(&t.bootstrap(), "iot.events", |r| !r.is_empty()).await;
    assert_eq!(recs[0].key, "dev-cn");

    // No verified certificate in the header: nothing recognises the client.
    let header = encode_v2(
        "198.51.100.9:40001".parse().unwrap(),
        "10.0.0.1:1883".parse().unwrap(),
        None,
    );
    let mut raw = Raw::connect(port).await;
    let mut bytes = header;
    bytes.extend(connect_bytes("dev-cn", Version::V311, 30));
    raw.send(&bytes).await;
    // CONNACK 0x05 not authorized, then close.
    assert_eq!(raw.read_to_close().await, [0x20, 2, 0, 5]);
}
