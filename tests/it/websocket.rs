//! MQTT over WebSocket and WebSocket/TLS: a rumqttc client (its websocket
//! transport, subprotocol `mqtt`) publishes and the record is in Kafka; the
//! wrong path is refused at the upgrade; a text frame closes the connection.

use crate::common::*;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_websocket_publishes_into_kafka() {
    let t = TestProxy::start().await;
    let port = t.proxy.ws_addr().unwrap().port();
    let mut opts = rumqttc::MqttOptions::new("ws-dev", format!("ws://127.0.0.1:{port}/mqtt"), port);
    opts.set_transport(rumqttc::Transport::Ws);
    let mut c = v4_connect(opts).await;
    c.client
        .publish(
            "devices/ws-dev/events/t",
            QoS::AtLeastOnce,
            false,
            b"over-ws".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(c.pubacks(1).await.len(), 1);
    let recs = consume_until(&t.bootstrap(), "iot.events", |r| !r.is_empty()).await;
    assert_eq!(recs[0].key, "ws-dev");
    assert_eq!(recs[0].value, b"over-ws");
    assert_eq!(
        recs[0].header("mqtt.topic").as_deref(),
        Some("devices/ws-dev/events/t")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_websocket_tls_publishes_into_kafka() {
    let t = TestProxy::start().await;
    let port = t.proxy.wss_addr().unwrap().port();
    let mut opts =
        rumqttc::MqttOptions::new("wss-dev", format!("wss://localhost:{port}/mqtt"), port);
    let ca = std::fs::read(t.ca_path()).unwrap();
    opts.set_transport(rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: None,
    }));
    let mut c = v4_connect(opts).await;
    c.client
        .publish(
            "devices/wss-dev/events/t",
            QoS::AtLeastOnce,
            false,
            b"over-wss".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(c.pubacks(1).await.len(), 1);
    let recs = consume_until(&t.bootstrap(), "iot.events", |r| !r.is_empty()).await;
    assert_eq!(recs[0].key, "wss-dev");
    assert_eq!(recs[0].value, b"over-wss");
}

/// Sends a hand-written upgrade request; returns the status line.
async fn upgrade(port: u16, path: &str, protocol: &str) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    (s, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_or_subprotocol_is_refused_and_text_frames_close() {
    let t = TestProxy::start().await;
    let port = t.proxy.ws_addr().unwrap().port();
    let (_, head) = upgrade(port, "/elsewhere", "mqtt").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (_, head) = upgrade(port, "/mqtt", "chat").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    let (mut s, head) = upgrade(port, "/mqtt", "mqtt").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{head}"
    );
    // A masked text frame "hi" [MQTT-6.0.0-1]: the proxy closes the connection.
    s.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a close frame may come first
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "text frame did not close the connection");
}
