//! Test harness: a real proxy started in-process on port 0, real MQTT
//! clients (rumqttc), and a real Kafka consumer (rdkafka) to read what
//! landed. No fixed ports, no sleeps. Shared by the two integration-test
//! binaries, tests/it/ and tests/cluster.rs. Beside this file: `wire` (the
//! raw MQTT client), `wait` (polling with a deadline), `http` (reqwest
//! probes and a fake HTTP service), `binary` (the real binary and its
//! config file), `ordered` (a device that resends in order), `hang`
//! (Kafka hung by SIGSTOP).
//!
//! Two Kafka backends, chosen by `MKP_TEST_KAFKA`: `embedded` (the default:
//! each proxy starts its own in-process mock broker) or `cluster` (a real
//! Apache Kafka cluster, one per test binary, from the `kafka-cluster`
//! crate). On the shared cluster every proxy gets its own topic names (a
//! suffix on every topic of its config), so tests running at once never read
//! each other's records: ask [`TestProxy::topic`] for a topic's name.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use mqtt_kafka_proxy::{Config, Proxy};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;

pub mod binary;
pub mod hang;
pub mod http;
pub mod ordered;
pub mod wait;
pub mod wire;
// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use ordered::*;
#[allow(unused_imports)]
pub use wait::*;
#[allow(unused_imports)]
pub use wire::*;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A proxy on ephemeral ports with its own certificate directory.
pub struct TestProxy {
    pub proxy: Proxy,
    pub dir: tempfile::TempDir,
    /// Appended to every topic name on the shared real cluster ("" on the
    /// embedded broker, which is this proxy's own).
    pub topic_suffix: String,
}

/// Whether this run's backend is a real Kafka cluster (`MKP_TEST_KAFKA=cluster`).
pub fn real_kafka() -> bool {
    match std::env::var("MKP_TEST_KAFKA").as_deref() {
        Ok("cluster") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("MKP_TEST_KAFKA={other}: expected embedded or cluster"),
    }
}

/// A topic suffix no other proxy of this process has.
pub fn fresh_topic_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("-t{}-{n}", std::process::id())
}

/// A fresh topic suffix on the shared real cluster, "" on the embedded broker.
pub fn topic_suffix_for_run() -> String {
    if real_kafka() {
        fresh_topic_suffix()
    } else {
        String::new()
    }
}

/// Appends `suffix` to every Kafka topic `c` names.
pub fn suffix_topics(c: &mut Config, suffix: &str) {
    let add = |t: &mut String| {
        if !t.is_empty() {
            t.push_str(suffix);
        }
    };
    for r in &mut c.routes {
        add(&mut r.kafka_topic);
    }
    add(&mut c.unmatched.dead_letter_topic);
    add(&mut c.commands.topic);
    add(&mut c.commands.receipts_topic);
    add(&mut c.commands.retained_topic);
    add(&mut c.lifecycle.topic);
    add(&mut c.lifecycle.sessions_topic);
}

/// A config for tests: loopback, port 0 everywhere, certs in a temp dir.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.listeners.tcp.bind = "127.0.0.1:0".parse().unwrap();
    c.listeners.tls.bind = "127.0.0.1:0".parse().unwrap();
    c.listeners.tls.cert_path = dir.join("server.crt");
    c.listeners.tls.key_path = dir.join("server.key");
    c.kafka.embedded.listen = "127.0.0.1:0".parse().unwrap();
    c.ops.bind = "127.0.0.1:0".parse().unwrap();
    c.listeners.ws.bind = "127.0.0.1:0".parse().unwrap();
    c.listeners.wss.bind = "127.0.0.1:0".parse().unwrap();
    c.kafka.embedded.partitions = 3;
    c.shutdown.drain_timeout_ms = 10_000;
    c
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl TestProxy {
    pub async fn start() -> TestProxy {
        Self::start_with(|_| {}).await
    }

    /// Starts a proxy on this run's backend; `f` adjusts the config (topic
    /// names as in the default config: they get this proxy's suffix after).
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestProxy {
        Self::start_on(None, topic_suffix_for_run(), f).await
    }

    /// Starts a second replica on the same Kafka and topics as `other`.
    pub async fn start_beside(other: &TestProxy, f: impl FnOnce(&mut Config)) -> TestProxy {
        Self::start_on(Some(other.bootstrap()), other.topic_suffix.clone(), f).await
    }

    /// Starts a proxy on `bootstrap` (default: this run's backend) with
    /// every topic name suffixed by `topic_suffix`.
    pub async fn start_on(
        bootstrap: Option<String>,
        topic_suffix: String,
        f: impl FnOnce(&mut Config),
    ) -> TestProxy {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        if let Some(b) = bootstrap {
            c.kafka.bootstrap_servers = b;
        } else if real_kafka() {
            let cluster = tokio::task::spawn_blocking(kafka_cluster::shared)
                .await
                .unwrap();
            c.kafka.bootstrap_servers = cluster.bootstrap();
        }
        f(&mut c);
        suffix_topics(&mut c, &topic_suffix);
        let proxy = Proxy::start(c).await.expect("proxy starts");
        TestProxy {
            proxy,
            dir,
            topic_suffix,
        }
    }

    /// The name `topic` (a name from the default config or the test's own
    /// routes) has for this proxy.
    pub fn topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.topic_suffix)
    }

    /// Where a Kafka client in another process bootstraps: the embedded
    /// broker's public forwarder, or the real cluster.
    pub fn public_bootstrap(&self) -> String {
        match self.proxy.embedded_kafka() {
            Some(k) => k.public_addr().to_string(),
            None => self.bootstrap(),
        }
    }

    pub fn tcp_port(&self) -> u16 {
        self.proxy.tcp_addr().unwrap().port()
    }

    pub fn tls_port(&self) -> u16 {
        self.proxy.tls_addr().unwrap().port()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn bootstrap(&self) -> String {
        self.proxy.kafka_bootstrap().to_owned()
    }
}

/// Produces one command for `device` to `t`'s commands topic.
pub async fn command(t: &TestProxy, device: &str, payload: &str, headers: &[(&str, &str)]) {
    produce_command(
        &t.bootstrap(),
        &t.topic("iot.commands"),
        device,
        payload,
        headers,
    )
    .await
}

/// Waits until the proxy's own records about `client_id` (lifecycle and
/// session announcement) are in Kafka, so the producer's in-flight count
/// afterwards is only the test's messages.
pub async fn journal_settled(t: &TestProxy, client_id: &str) {
    for topic in ["iot.lifecycle", "iot.sessions"] {
        let id = client_id.to_owned();
        consume_until(&t.bootstrap(), &t.topic(topic), move |rs| {
            rs.iter().any(|r| r.key == id)
        })
        .await;
    }
}

/// Produces one command record for `device` to `topic`, as a back-end
/// service does; `headers` are (name, value) pairs.
pub async fn produce_command(
    bootstrap: &str,
    topic: &str,
    device: &str,
    payload: &str,
    headers: &[(&str, &str)],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(device)
                .payload(payload)
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Reconnects a 3.1.1 client `id` and publishes `payload` at QoS 1 until a
/// PUBACK comes, as a real device does after an outage (the proxy closes a
/// 3.1.1 connection whose record Kafka did not take). Panics after `limit`.
pub async fn v4_publish_until_acked(
    port: u16,
    id: &str,
    topic: &str,
    payload: &str,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: never acknowledged after the outage"
        );
        let mut again = v4_connect(v4_options(id, port)).await;
        again
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        if again.next_puback().await.is_ok() {
            return;
        }
    }
}

/// One Kafka record as a downstream consumer sees it.
#[derive(Debug, Clone)]
pub struct Rec {
    pub topic: String,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
}

impl Rec {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads `topic` from the beginning until `done` says the records so far are
/// enough, or panics after [`PATIENCE`] with what it got.
pub async fn consume_until(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[Rec]) -> bool + Send + 'static,
) -> Vec<Rec> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len();
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p as i32, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut recs = Vec::new();
        while !done(&recs) {
            assert!(
                std::time::Instant::now() < deadline,
                "gave up on {topic} after {} records",
                recs.len()
            );
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            recs.push(Rec {
                topic: m.topic().to_owned(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
            });
        }
        recs
    })
    .await
    .unwrap()
}

/// Reads exactly until `n` records are in hand.
pub async fn consume(bootstrap: &str, topic: &str, n: usize) -> Vec<Rec> {
    consume_until(bootstrap, topic, move |r| r.len() >= n).await
}

/// Runs a rumqttc event loop (3.1.1 or 5.0) in a task, forwarding its events
/// to a channel; the first error is forwarded too and ends the loop.
macro_rules! pump {
    ($el:expr) => {{
        let mut el = $el;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        rx
    }};
}

/// A rumqttc 3.1.1 client whose event loop runs in a task.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
}

pub fn v4_options(id: &str, port: u16) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub fn tls_transport(ca: &std::path::Path) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
        ca: std::fs::read(ca).unwrap(),
        alpn: None,
        client_auth: None,
    })
}

/// Connects and waits for CONNACK. The event loop stops at the first error.
pub async fn v4_connect(opts: rumqttc::MqttOptions) -> V4 {
    let (client, el) = rumqttc::AsyncClient::new(opts, 1000);
    let mut rx = pump!(el);
    let connack = next_matching(&mut rx, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
    })
    .await;
    assert!(connack.is_ok(), "no CONNACK: {connack:?}");
    V4 { client, events: rx }
}

/// Waits for the next event matching `pred`; returns the loop's error if it stops.
pub async fn next_matching<E: std::fmt::Debug>(
    rx: &mut mpsc::UnboundedReceiver<Result<E, String>>,
    pred: impl Fn(&E) -> bool,
) -> Result<E, String> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match rx.recv().await {
                Some(Ok(e)) if pred(&e) => return Ok(e),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("event loop ended".into()),
            }
        }
    })
    .await
    .expect("event within the test's patience")
}

impl V4 {
    /// Waits for the next PUBLISH from the proxy (a command).
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        let ev = next_matching(&mut self.events, |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)))
        })
        .await
        .unwrap();
        let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev else {
            unreachable!()
        };
        p
    }

    /// Waits for the next PUBACK: its packet id, or the event loop's error
    /// if the connection ends first.
    pub async fn next_puback(&mut self) -> Result<u16, String> {
        let ev = next_matching(&mut self.events, |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
        })
        .await?;
        let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a)) = ev else {
            unreachable!()
        };
        Ok(a.pkid)
    }

    /// Waits until `n` PUBACKs have arrived; returns their packet ids in order.
    pub async fn pubacks(&mut self, n: usize) -> Vec<u16> {
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let id = self
                .next_puback()
                .await
                .unwrap_or_else(|e| panic!("after {} PUBACKs: {e}", ids.len()));
            ids.push(id);
        }
        ids
    }
}

/// A rumqttc 5.0 client whose event loop runs in a task.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

pub fn v5_options(id: &str, port: u16) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub async fn v5_connect(opts: rumqttc::v5::MqttOptions) -> V5 {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    let (client, el) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let mut rx = pump!(el);
    let ev = next_matching(&mut rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await
    .expect("CONNACK");
    let Event::Incoming(Packet::ConnAck(connack)) = ev else {
        unreachable!()
    };
    V5 {
        client,
        events: rx,
        connack,
    }
}

/// A stream a raw client speaks over: TCP, or TLS over TCP.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl V5 {
    /// Waits for `n` PUBACKs and checks each is a success.
    pub async fn pubacks_ok(&mut self, n: usize) {
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
        use rumqttc::v5::Event;
        for i in 0..n {
            let ev = next_matching(&mut self.events, |e| {
                matches!(e, Event::Incoming(P5::PubAck(_)))
            })
            .await
            .unwrap_or_else(|e| panic!("after {i} PUBACKs: {e}"));
            if let Event::Incoming(P5::PubAck(a)) = ev {
                assert_eq!(a.reason, PubAckReason::Success, "PUBACK {}", a.pkid);
            }
        }
    }
}

/// A raw client for bytes no well-behaved library would send, over TCP or
/// (`Raw<Box<dyn Io>>`) TLS; tests/common/wire.rs reads and parses what the
/// proxy answers.
pub struct Raw<S = tokio::net::TcpStream> {
    pub stream: S,
}

impl Raw {
    pub async fn connect(port: u16) -> Raw {
        Raw {
            stream: tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        }
    }
}

impl<S: Io> Raw<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        // The proxy may already have closed; tests check what it answered.
        let _ = self.stream.write_all(bytes).await;
        // A TLS stream holds records until flushed.
        let _ = self.stream.flush().await;
    }

    /// Reads until the proxy closes the connection; returns all it sent.
    /// Panics if it is still open after [`PATIENCE`].
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let r = tokio::time::timeout(PATIENCE, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "proxy did not close the connection; got {out:02x?}"
        );
        out
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; n];
        tokio::time::timeout(PATIENCE, self.stream.read_exact(&mut buf))
            .await
            .expect("answer within patience")
            .expect("read");
        buf
    }
}

/// Encodes a packet with the proxy's own encoder, for raw clients.
pub fn encode(
    packet: &mqtt_kafka_proxy::mqtt::packet::Packet,
    v: mqtt_kafka_proxy::mqtt::packet::Version,
) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    mqtt_kafka_proxy::mqtt::encode::encode(packet, v, &mut b);
    b.to_vec()
}

/// A 3.1.1 CONNECT for `id` with keep-alive `ka` seconds.
pub fn connect_bytes(id: &str, v: mqtt_kafka_proxy::mqtt::packet::Version, ka: u16) -> Vec<u8> {
    connect_packet_bytes(connect_packet(id, v, ka))
}

/// A clean-start CONNECT as a test builds it (no credentials, no will);
/// fields are changed by the caller, then [`connect_packet_bytes`].
pub fn connect_packet(
    id: &str,
    v: mqtt_kafka_proxy::mqtt::packet::Version,
    ka: u16,
) -> mqtt_kafka_proxy::mqtt::packet::Connect {
    mqtt_kafka_proxy::mqtt::packet::Connect {
        version: v,
        client_id: id.into(),
        clean_start: true,
        keep_alive: ka,
        username: None,
        password: None,
        will: None,
        properties: Default::default(),
    }
}

/// A CONNECT, encoded in its own protocol version.
pub fn connect_packet_bytes(c: mqtt_kafka_proxy::mqtt::packet::Connect) -> Vec<u8> {
    let v = c.version;
    encode(
        &mqtt_kafka_proxy::mqtt::packet::Packet::Connect(Box::new(c)),
        v,
    )
}
