//! Operations, end to end: the `/metrics`, `/healthz` and `/readyz`
//! endpoint as a scraper and a load balancer see it, the drain at shutdown
//! as devices see it (DISCONNECT 0x8B, or 0x9C with a Server Reference,
//! spread over a window), a rolling restart of one of two replicas that
//! loses no acknowledged message, and JSON log lines from the binary.
//!
//! The metrics recorder is process-global: proxies started by other tests
//! in this binary record into the same registry, so counters are checked to
//! have grown by at least what a test caused, never for exact values.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use mqtt_kafka_proxy::config::{AclAction, AclRule, Permission};
use mqtt_kafka_proxy::kafka::embedded::EmbeddedKafka;
use mqtt_kafka_proxy::mqtt::packet::{reason, Version};
use tokio::net::TcpStream;

const V5: Version = Version::V5;

/// One `/metrics` scrape: series (`name{labels}`) to value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn take(addr: SocketAddr) -> Scrape {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        let mut series = HashMap::new();
        for line in body.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            series.insert(name.to_owned(), value);
        }
        Scrape(series)
    }

    /// Sum over the series called `name` that carry every label in `labels`
    /// (0 when there is none: a counter not yet touched is not rendered).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, l) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|s| s.split_once('{').map_or(s.as_str(), |(n, _)| n) == name)
    }
}

/// Opens a 5.0 connection as `id` (keep-alive 60 s, Nagle off) and checks
/// the CONNACK is a success.
async fn connect_v5(port: u16, id: &str) -> Raw {
    let (raw, _) = open_ka(port, id, V5, 60).await;
    raw.stream.set_nodelay(true).unwrap();
    raw
}

// ---------------------------------------------------------------------------
// 1. Metrics.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_publishes_refusals_and_commands() {
    use rumqttc::{Event, Packet as P4, QoS};
    const N: usize = 5;
    let t = TestProxy::start_with(|c| {
        c.commands.replica_id = "ops-metrics".into();
        // Authentication is off, so anything no rule matches is allowed.
        c.auth.acl = vec![AclRule {
            permission: Permission::Deny,
            action: AclAction::Publish,
            topic: "devices/+/events/secret".into(),
        }];
    })
    .await;
    let ops = t.proxy.ops_addr().expect("ops endpoint bound");
    let before = Scrape::take(ops).await;

    // Routed QoS 1 publishes, acknowledged.
    let mut dev = v4_connect(v4_options("ops-m1", t.tcp_port())).await;
    for i in 0..N {
        dev.client
            .publish(
                "devices/ops-m1/events/t",
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    dev.pubacks(N).await;

    // 5.0: an unrouted topic (0x90) and an ACL-denied one (0x87), both as
    // negative PUBACKs on a connection that stays open.
    let mut raw = connect_v5(t.tcp_port(), "ops-m5").await;
    raw.send(&qos1("elsewhere/x", 1, b"nowhere", V5)).await;
    raw.send(&qos1("devices/ops-m5/events/secret", 2, b"hush", V5))
        .await;
    for (want_id, want_code) in [(1, reason::TOPIC_NAME_INVALID), (2, reason::NOT_AUTHORIZED)] {
        let (b1, body) = try_read_packet(&mut raw)
            .await
            .expect("PUBACK, not a close");
        assert_eq!(b1, 0x40, "PUBACK expected, got {b1:#04x} {body:02x?}");
        assert_eq!(puback(&body), (want_id, want_code), "{body:02x?}");
    }

    // A command delivered to the subscribed device (rumqttc acknowledges it).
    dev.client
        .subscribe("devices/ops-m1/commands/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_matching(&mut dev.events, |e| {
        matches!(e, Event::Incoming(P4::SubAck(_)))
    })
    .await
    .unwrap();
    command(&t, "ops-m1", "blink", &[("command.id", "ops-cmd-1")]).await;
    let p = next_matching(&mut dev.events, |e| {
        matches!(e, Event::Incoming(P4::Publish(_)))
    })
    .await
    .unwrap();
    let Event::Incoming(P4::Publish(p)) = p else {
        unreachable!()
    };
    assert_eq!(&p.payload[..], b"blink");

    // The receipt (and its counter) follows the device's PUBACK: poll.
    let delivered_before = before.value("commands_total", &[("status", "delivered")]);
    let what = format!("commands_total{{status=\"delivered\"}} to grow from {delivered_before}");
    let after = poll_until(&what, PATIENCE, || async {
        let s = Scrape::take(ops).await;
        let delivered = s.value("commands_total", &[("status", "delivered")]);
        if delivered >= delivered_before + 1.0 {
            Ok(s)
        } else {
            Err(format!("{delivered}"))
        }
    })
    .await;

    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (b, a) = (before.value(name, labels), after.value(name, labels));
        assert!(
            a - b >= by,
            "{name}{labels:?} grew by {} (from {b} to {a}), expected at least {by}",
            a - b
        );
    };
    grew(
        "mqtt_publish_received_total",
        &[("qos", "1")],
        (N + 2) as f64,
    );
    grew(
        "mqtt_publish_routed_total",
        &[("kafka_topic", t.topic("iot.events").as_str())],
        N as f64,
    );
    grew("mqtt_publish_refused_total", &[("reason", "no_route")], 1.0);
    grew(
        "mqtt_publish_refused_total",
        &[("reason", "not_authorized")],
        1.0,
    );
    grew("acl_denied_total", &[("action", "publish")], 1.0);
    grew("kafka_produce_seconds_count", &[], N as f64);
    grew("mqtt_connections_opened_total", &[], 2.0);
    // Two CONNECTs and five PUBLISHes at least, in bytes.
    grew("mqtt_bytes_received_total", &[], 50.0);
    assert!(
        after.has("mqtt_connections"),
        "mqtt_connections gauge missing from /metrics"
    );
    assert!(
        after.value("mqtt_connections", &[]) >= 2.0,
        "mqtt_connections = {} while this test holds two connections open",
        after.value("mqtt_connections", &[])
    );
    assert!(
        after.has("kafka_produce_seconds_bucket"),
        "kafka_produce_seconds is not rendered as a histogram"
    );
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Readiness.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tracks_kafka_and_draining() {
    const GRACE: Duration = Duration::from_millis(1500);
    let t = TestProxy::start_with(|c| {
        c.ops.kafka_check_interval_ms = 100;
        c.shutdown.readiness_grace_ms = GRACE.as_millis() as u64;
        // Reconnect to the broker quickly once it is back (librdkafka's
        // default backoff grows to 10 s).
        c.kafka
            .producer
            .insert("reconnect.backoff.max.ms".into(), "100".into());
    })
    .await;
    let ops = t.proxy.ops_addr().expect("ops endpoint bound");
    let port = t.tcp_port();
    let kafka = t.proxy.embedded_kafka().unwrap().control();

    assert_eq!(http_get(ops, "/healthz").await, (200, "ok\n".into()));
    http_until(ops, "/readyz", 200, "ready").await;
    assert!(t.proxy.health().ready().is_ok());

    kafka.broker_down(1).unwrap();
    let body = http_until(ops, "/readyz", 503, "not ready").await;
    assert_eq!(body.trim(), "not ready: kafka unreachable");
    assert_eq!(
        http_get(ops, "/healthz").await.0,
        200,
        "liveness does not depend on Kafka"
    );
    kafka.broker_up(1).unwrap();
    http_until(ops, "/readyz", 200, "ready").await;

    let TestProxy {
        proxy, dir: _dir, ..
    } = t;
    let t0 = Instant::now();
    let drain = tokio::spawn(proxy.shutdown());
    let body = http_until(ops, "/readyz", 503, "not ready").await;
    assert_eq!(body.trim(), "not ready: draining");
    assert_eq!(http_get(ops, "/healthz").await, (200, "ok\n".into()));
    // Load balancers are still catching up: a new device is let in.
    let _late = v4_connect(v4_options("ops-late", port)).await;
    assert!(
        t0.elapsed() < GRACE,
        "test too slow: the CONNACK came {:?} after the drain began, past the grace",
        t0.elapsed()
    );
    // Then the listener closes, not before the grace has passed.
    eventually_async("the listener to close", || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
    assert!(
        t0.elapsed() >= GRACE,
        "listener closed {:?} into a {GRACE:?} readiness grace",
        t0.elapsed()
    );
    let report = tokio::time::timeout(PATIENCE, drain)
        .await
        .expect("drain ends")
        .unwrap();
    assert_eq!(report.connections_left, 0, "{report:?}");
    assert_eq!(report.records_unflushed, 0, "{report:?}");
}

// ---------------------------------------------------------------------------
// 3. DISCONNECT at shutdown.
// ---------------------------------------------------------------------------

/// What one idle 5.0 client saw at shutdown: the first packet, when it came.
async fn await_goodbye(mut s: Raw, id: String) -> (String, Instant, u8, Vec<(u8, Vec<u8>)>) {
    let (b1, body) = try_read_packet(&mut s)
        .await
        .unwrap_or_else(|| panic!("{id}: closed without a DISCONNECT"));
    let at = Instant::now();
    assert_eq!(
        b1, 0xE0,
        "{id}: DISCONNECT expected, got {b1:#04x} {body:02x?}"
    );
    let (code, props) = disconnect(&body);
    let after = try_read_packet(&mut s).await;
    assert!(
        after.is_none(),
        "{id}: packet after DISCONNECT: {after:02x?}"
    );
    (id, at, code, props)
}

/// A device whose CONNECT completes after the drain began (so after the
/// shutdown rang every registered doorbell) is drained too: CONNACK, then
/// DISCONNECT 0x8B, and the drain counts no connection left. It goes from
/// the CONNECT phase straight into its idle wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_completed_after_the_drain_began_is_drained_too() {
    for spread_ms in [0, 300] {
        let t = TestProxy::start_with(|c| {
            c.shutdown.readiness_grace_ms = 0;
            c.shutdown.disconnect_spread_ms = spread_ms;
            c.shutdown.drain_timeout_ms = 5_000;
        })
        .await;
        let port = t.tcp_port();
        let id = format!("late-comer-{spread_ms}");
        let connect = connect_bytes(&id, V5, 0);
        let (head, tail) = connect.split_at(connect.len() - 1);
        let mut late = Raw::connect(port).await;
        late.send(head).await;
        // The listener accepts in order: once a later client has its CONNACK,
        // the late-comer's task exists and waits for the rest of its CONNECT.
        let witness = connect_v5(port, &format!("witness-{spread_ms}")).await;
        let TestProxy {
            proxy, dir: _dir, ..
        } = t;
        let drain = tokio::spawn(proxy.shutdown());
        // The drain has begun (token cancelled, doorbells rung) once the
        // listener refuses new connections.
        eventually_async("the listener to refuse connections", || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_err()
        })
        .await;
        late.send(tail).await;
        let (b1, body) = read_packet(&mut late).await;
        assert_eq!(
            (b1, body[1]),
            (0x20, 0x00),
            "CONNACK accepting {id}: {body:02x?}"
        );
        let (_, _, code, _) = await_goodbye(late, id.clone()).await;
        assert_eq!(code, reason::SERVER_SHUTTING_DOWN, "{id}");
        let report = drain.await.unwrap();
        assert_eq!(report.connections_left, 0, "{id} was not drained");
        drop(witness);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_v5_with_server_reference_spread_over_the_window() {
    const REFERENCE: &str = "mqtt-b.example:8883";
    const SPREAD: Duration = Duration::from_millis(1500);
    const CLIENTS: usize = 10;
    let t = TestProxy::start_with(|c| {
        c.shutdown.server_reference = REFERENCE.into();
        c.shutdown.disconnect_spread_ms = SPREAD.as_millis() as u64;
        c.shutdown.drain_timeout_ms = 10_000;
    })
    .await;
    let plain = TestProxy::start().await;

    let mut goodbyes = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("ops-ref-{i}");
        let s = connect_v5(t.tcp_port(), &id).await;
        goodbyes.push(tokio::spawn(await_goodbye(s, id)));
    }
    let mut plain_goodbyes = Vec::new();
    for i in 0..2 {
        let id = format!("ops-plain-{i}");
        let s = connect_v5(plain.tcp_port(), &id).await;
        plain_goodbyes.push(tokio::spawn(await_goodbye(s, id)));
    }

    let t0 = Instant::now();
    let drains = tokio::spawn(async move {
        let (a, b) = tokio::join!(t.proxy.shutdown(), plain.proxy.shutdown());
        drop((t.dir, plain.dir));
        (a, b)
    });
    let mut arrivals = Vec::new();
    for g in goodbyes {
        let (id, at, code, props) = g.await.unwrap();
        assert_eq!(
            code,
            reason::USE_ANOTHER_SERVER,
            "{id}: DISCONNECT reason {code:#04x}, props {props:?}"
        );
        assert_eq!(
            property_text(&props, 0x1C).as_deref(),
            Some(REFERENCE),
            "{id}: Server Reference"
        );
        arrivals.push(at);
    }
    let first = *arrivals.iter().min().unwrap();
    let last = *arrivals.iter().max().unwrap();
    assert!(
        last - first > Duration::from_millis(50),
        "{CLIENTS} DISCONNECTs arrived within {:?}: not spread over {SPREAD:?}",
        last - first
    );
    assert!(
        last - t0 < SPREAD + Duration::from_secs(2),
        "the last DISCONNECT came {:?} after shutdown began, well past the {SPREAD:?} window",
        last - t0
    );
    for g in plain_goodbyes {
        let (id, _, code, props) = g.await.unwrap();
        assert_eq!(
            code,
            reason::SERVER_SHUTTING_DOWN,
            "{id}: without a server reference the reason is 0x8B; props {props:?}"
        );
        assert_eq!(
            property_text(&props, 0x1C),
            None,
            "{id}: no Server Reference"
        );
    }
    let (a, b) = drains.await.unwrap();
    assert_eq!((a.connections_left, b.connections_left), (0, 0));
}

// ---------------------------------------------------------------------------
// 4. Rolling restart.
// ---------------------------------------------------------------------------

/// What one device saw and had acknowledged.
#[derive(Debug, Default)]
struct Ledger {
    id: String,
    /// Sequence numbers acknowledged, in order.
    acked: Vec<u64>,
    /// Sequence numbers sent more than once (after a connection ended unacked).
    resent: Vec<u64>,
    /// DISCONNECT reason codes received from replica A.
    disconnects_from_a: Vec<u8>,
    /// A's connection ended without a DISCONNECT first.
    closed_silently_by_a: bool,
    acks_on_b: usize,
}

/// A device publishing QoS 1 one message at a time: seq N, wait for its
/// PUBACK, N+1. When its connection ends it reconnects to B and resends the
/// unacknowledged message. It stops once `a_gone` and it has had
/// `min_on_b` acknowledgements from B.
async fn device(
    id: String,
    a_port: u16,
    b_port: u16,
    acks_on_a: Arc<AtomicUsize>,
    a_gone: Arc<AtomicBool>,
    min_on_b: usize,
) -> Ledger {
    let mut l = Ledger {
        id: id.clone(),
        ..Ledger::default()
    };
    let topic = format!("devices/{id}/events/seq");
    let mut on_a = true;
    let mut s = connect_v5(a_port, &id).await;
    let mut seq = 0u64;
    let mut sends_of_seq = 0;
    loop {
        let packet_id = (seq % 65_000 + 1) as u16;
        let payload = format!("{id}:{seq}");
        sends_of_seq += 1;
        if sends_of_seq == 2 {
            l.resent.push(seq);
        }
        // Written whole or not at all as far as the test cares: a failed
        // write shows up as the close read below.
        s.send(&qos1(&topic, packet_id, payload.as_bytes(), V5))
            .await;
        // Stop-and-wait: the only packets due are this PUBACK or A's goodbye.
        let acked = match try_read_packet(&mut s).await {
            Some((0x40, body)) => {
                let (pid, code) = puback(&body);
                assert_eq!(pid, packet_id, "{id}: PUBACK for another packet");
                assert_eq!(code, reason::SUCCESS, "{id}: seq {seq} refused {code:#04x}");
                true
            }
            Some((0xE0, body)) => {
                let (code, _) = disconnect(&body);
                assert!(on_a, "{id}: B sent DISCONNECT {code:#04x}");
                l.disconnects_from_a.push(code);
                // Nothing may follow but the close.
                let more = try_read_packet(&mut s).await;
                assert!(more.is_none(), "{id}: packet after DISCONNECT: {more:02x?}");
                false
            }
            Some((b1, body)) => panic!("{id}: unexpected packet {b1:#04x} {body:02x?}"),
            None => {
                assert!(on_a, "{id}: B closed the connection");
                l.closed_silently_by_a = true;
                false
            }
        };
        if !acked {
            on_a = false;
            s = connect_v5(b_port, &id).await;
            continue; // resend the same seq
        }
        l.acked.push(seq);
        if on_a {
            acks_on_a.fetch_add(1, Ordering::Release);
        } else {
            l.acks_on_b += 1;
        }
        seq += 1;
        sends_of_seq = 0;
        if a_gone.load(Ordering::Acquire) && l.acks_on_b >= min_on_b {
            s.send(&[0xE0, 0x00]).await;
            return l;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_one_replica_loses_no_acknowledged_message() {
    const DEVICES: usize = 10;
    // The broker outlives both replicas: the real cluster does; on the
    // embedded backend a broker of the test's own.
    let dir = tempfile::tempdir().unwrap();
    let topics = test_config(dir.path()).kafka_topics();
    let kafka = if real_kafka() {
        None
    } else {
        Some(
            EmbeddedKafka::start(1, 3, &topics, "127.0.0.1:0".parse().unwrap())
                .await
                .expect("broker starts"),
        )
    };
    let boot = kafka.as_ref().map(|k| k.bootstrap_servers().to_owned());
    let suffix = topic_suffix_for_run();
    let replica = |name: &'static str| {
        TestProxy::start_on(boot.clone(), suffix.clone(), move |c| {
            c.commands.replica_id = name.into();
            c.listeners.tls.enabled = false;
            c.shutdown.readiness_grace_ms = 0;
            c.shutdown.disconnect_spread_ms = 500;
        })
    };
    let a = replica("A").await;
    let b = replica("B").await;

    let a_gone = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicUsize>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let devices: Vec<_> = (0..DEVICES)
        .map(|i| {
            tokio::spawn(device(
                format!("ops-roll-{i}"),
                a.tcp_port(),
                b.tcp_port(),
                progress[i].clone(),
                a_gone.clone(),
                5,
            ))
        })
        .collect();
    // Mid-stream: every device has had a few messages acknowledged by A.
    eventually("every device publishing through A", || {
        progress.iter().all(|p| p.load(Ordering::Acquire) >= 5)
    })
    .await;
    let TestProxy {
        proxy, dir: _a_dir, ..
    } = a;
    let report = tokio::time::timeout(PATIENCE, proxy.shutdown())
        .await
        .expect("A drains");
    assert_eq!(report.connections_left, 0, "{report:?}");
    assert_eq!(report.records_unflushed, 0, "{report:?}");
    a_gone.store(true, Ordering::Release);

    let mut ledgers = Vec::new();
    for d in devices {
        ledgers.push(
            tokio::time::timeout(PATIENCE, d)
                .await
                .expect("device ends")
                .unwrap(),
        );
    }
    for l in &ledgers {
        assert!(
            !l.closed_silently_by_a,
            "{}: A closed the connection without a DISCONNECT (saw {:02x?})",
            l.id, l.disconnects_from_a
        );
        assert_eq!(
            l.disconnects_from_a,
            vec![reason::SERVER_SHUTTING_DOWN],
            "{}: DISCONNECTs from A",
            l.id
        );
        assert!(l.acks_on_b >= 5, "{}: did not continue on B", l.id);
    }

    // Every acknowledged (device, seq) is in Kafka, once per send at most,
    // in order per device.
    let want: BTreeMap<String, u64> = ledgers
        .iter()
        .map(|l| (l.id.clone(), *l.acked.last().unwrap()))
        .collect();
    let want2 = want.clone();
    let recs = consume_until(&b.bootstrap(), &b.topic("iot.events"), move |rs| {
        want2.iter().all(|(id, last)| {
            let v = format!("{id}:{last}");
            rs.iter().any(|r| r.key == *id && r.value == v.as_bytes())
        })
    })
    .await;
    for l in &ledgers {
        let seqs: Vec<u64> = recs
            .iter()
            .filter(|r| r.key == l.id)
            .map(|r| {
                let v = String::from_utf8(r.value.clone()).unwrap();
                let (dev, seq) = v
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{}: bad payload {v:?}", l.id));
                assert_eq!(dev, l.id, "record keyed {} carries {v:?}", l.id);
                seq.parse().unwrap()
            })
            .collect();
        let mut distinct = seqs.clone();
        distinct.dedup();
        assert_eq!(
            distinct, l.acked,
            "{}: Kafka holds {seqs:?}, acknowledged {:?}",
            l.id, l.acked
        );
        for w in seqs.windows(2) {
            assert!(
                w[0] != w[1] || l.resent.contains(&w[0]),
                "{}: seq {} twice in Kafka but sent once",
                l.id,
                w[0]
            );
        }
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for s in &seqs {
            *counts.entry(*s).or_default() += 1;
        }
        for (s, n) in counts {
            assert!(n <= 2, "{}: seq {s} {n} times in Kafka", l.id);
        }
    }
    b.proxy.shutdown().await;
    drop(kafka);
}

// ---------------------------------------------------------------------------
// 5. JSON logs.
// ---------------------------------------------------------------------------

fn json_line(line: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
    assert!(v.is_object(), "log line is not an object: {line}");
    assert!(v["level"].is_string(), "no \"level\": {line}");
    assert!(
        v["fields"]["message"].is_string() || v["message"].is_string(),
        "no message: {line}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_loopback_config(dir.path());
    let (mut child, mut lines) = spawn_binary(&path, &["--log-format", "json"]);
    let mut seen = Vec::new();
    let port: u16 = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v = json_line(&line);
            seen.push(v.clone());
            if v["fields"]["message"] == "MQTT over TCP listening" {
                let addr = v["fields"]["addr"].as_str().unwrap_or_default().to_owned();
                return addr
                    .trim_start_matches("Some(127.0.0.1:")
                    .trim_end_matches(')')
                    .parse()
                    .unwrap_or_else(|_| panic!("addr field {addr:?}"));
            }
        }
        panic!("proxy exited before listening; logged {seen:?}");
    })
    .await
    .expect("proxy listens");

    // A connection logs inside its span: the client id is a JSON field.
    let mut c = v4_connect(v4_options("json-1", port)).await;
    c.client
        .publish(
            "devices/json-1/events/e",
            rumqttc::QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    c.pubacks(1).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(json_line(&line));
        }
    })
    .await
    .expect("the proxy exits and closes stdout");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let opened = rest
        .iter()
        .find(|v| v["fields"]["message"] == "connection opened")
        .unwrap_or_else(|| panic!("no \"connection opened\" line in {rest:?}"));
    assert_eq!(opened["span"]["client_id"], "json-1", "{opened}");
    assert!(
        rest.iter()
            .any(|v| v["fields"]["message"] == "shutdown complete"),
        "no \"shutdown complete\" line in {rest:?}"
    );
}
