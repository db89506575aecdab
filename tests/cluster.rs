//! Against a real 3-broker Apache Kafka cluster (KRaft, topics with
//! replication factor 3 and `min.insync.replicas=2`): what only a real
//! cluster can show. Brokers stopped until acks=all cannot be met, a
//! partition leader killed mid-stream, the whole cluster hung (readiness,
//! gauges and log lines while it hangs; `mqtt.ordering = "strict"` across a
//! hang longer than the delivery timeout), and the producer and command
//! consumer through the SASL/SCRAM and TLS listeners.
//!
//! These tests stop and hang brokers of the one cluster this binary starts,
//! so they run one at a time (a lock) and put the cluster back afterwards,
//! even when they fail. Built with `--features real-kafka` (tests/run.sh).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kafka_cluster::Cluster;
use mqtt_kafka_proxy::mqtt::packet::{QoS as Q, Version};
use mqtt_kafka_proxy::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use rumqttc::{Event, Packet, QoS};

/// The binary's cluster: three combined broker+controller nodes.
fn cluster() -> &'static Cluster {
    kafka_cluster::shared_sized(3)
}

/// One fault test at a time; the guard puts every broker back on drop.
struct Exclusive {
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

async fn exclusive() -> Exclusive {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let lock = LOCK.lock().await;
    tokio::task::spawn_blocking(cluster).await.unwrap();
    Exclusive { _lock: lock }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Err(e) = cluster().heal() {
            eprintln!("could not put the cluster back: {e}");
        }
    }
}

/// Runs a blocking cluster operation off the runtime's worker threads.
async fn on_cluster<T: Send + 'static>(
    f: impl FnOnce(&'static Cluster) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || f(cluster()))
        .await
        .unwrap()
}

/// A proxy on `bootstrap` with topics of its own, replicated 3 ways with
/// `min.insync.replicas=2` (the cluster's defaults, asked for explicitly).
async fn proxy_on(bootstrap: String, f: impl FnOnce(&mut Config)) -> TestProxy {
    TestProxy::start_on(Some(bootstrap), fresh_topic_suffix(), |c| {
        c.kafka.topics.replication_factor = 3;
        c.kafka
            .topics
            .config
            .insert("min.insync.replicas".into(), "2".into());
        // librdkafka's reconnect backoff grows to 10 s by default: come back
        // quickly once brokers return.
        c.kafka
            .producer
            .insert("reconnect.backoff.max.ms".into(), "200".into());
        f(c)
    })
    .await
}

/// The broker leading most partitions of `topic`.
fn busiest_leader(bootstrap: &str, topic: &str) -> u32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut count: BTreeMap<i32, usize> = BTreeMap::new();
    for p in md.topics()[0].partitions() {
        *count.entry(p.leader()).or_default() += 1;
    }
    let (leader, _) = count.into_iter().max_by_key(|(_, n)| *n).unwrap();
    leader as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_down_no_success_is_acknowledged_and_the_resend_lands_once_they_return() {
    let _x = exclusive().await;
    let t = proxy_on(cluster().bootstrap(), |c| {
        c.kafka.delivery_timeout_ms = 8_000;
    })
    .await;
    let events = t.topic("iot.events");
    let port = t.tcp_port();
    // Warm: both devices get an acknowledgement while the cluster is whole.
    let mut v5 = raw_v5_connect(port, "rep-5").await;
    v5.send(&publish_bytes(
        publish("devices/rep-5/events/e", Q::AtLeastOnce, 1, b"before"),
        Version::V5,
    ))
    .await;
    expect_puback_ok(&mut v5, 1).await;
    let mut v4 = v4_connect(v4_options("rep-311", port)).await;
    v4.client
        .publish(
            "devices/rep-311/events/e",
            QoS::AtLeastOnce,
            false,
            "before",
        )
        .await
        .unwrap();
    v4.pubacks(1).await;

    // Two of three brokers gone: acks=all with min.insync.replicas=2 cannot
    // be met (and the controller quorum is lost with them).
    on_cluster(|c| {
        c.kill(2).unwrap();
        c.kill(3).unwrap();
    })
    .await;

    // 5.0: an error reason code on the PUBACK, never success.
    v5.send(&publish_bytes(
        publish("devices/rep-5/events/e", Q::AtLeastOnce, 2, b"during"),
        Version::V5,
    ))
    .await;
    let (b1, body) = read_packet(&mut v5).await;
    assert_eq!((b1, &body[..2]), (0x40, &[0, 2][..]), "PUBACK for packet 2");
    assert!(
        body.len() >= 3 && body[2] >= 0x80,
        "a PUBACK for a record Kafka does not hold must carry an error reason: {body:02x?}"
    );
    // 3.1.1 has no negative acknowledgement: the connection is closed.
    v4.client
        .publish(
            "devices/rep-311/events/e",
            QoS::AtLeastOnce,
            false,
            "during",
        )
        .await
        .unwrap();
    let end = v4.next_puback().await;
    assert!(
        end.is_err(),
        "3.1.1 got a PUBACK with two brokers down: {end:?}"
    );

    on_cluster(|c| c.heal().unwrap()).await;
    // The devices resend until acknowledged, as real ones do.
    let deadline = Instant::now() + PATIENCE * 2;
    let mut packet_id = 3;
    loop {
        assert!(Instant::now() < deadline, "5.0 resend never acknowledged");
        v5.send(&publish_bytes(
            publish(
                "devices/rep-5/events/e",
                Q::AtLeastOnce,
                packet_id,
                b"during",
            ),
            Version::V5,
        ))
        .await;
        let (_, body) = read_packet(&mut v5).await;
        if body.len() < 3 || body[2] == 0 {
            break;
        }
        packet_id += 1;
    }
    v4_publish_until_acked(
        port,
        "rep-311",
        "devices/rep-311/events/e",
        "during",
        deadline.saturating_duration_since(Instant::now()),
    )
    .await;
    let recs = consume_until(&t.bootstrap(), &events, |rs| {
        ["rep-5", "rep-311"]
            .iter()
            .all(|d| rs.iter().any(|r| r.key == *d && r.value == b"during"))
    })
    .await;
    for d in ["rep-5", "rep-311"] {
        let mine: Vec<&[u8]> = recs
            .iter()
            .filter(|r| r.key == d)
            .map(|r| &r.value[..])
            .collect();
        assert_eq!(mine[0], b"before", "{d}: {mine:?}");
        assert!(mine[1..].iter().all(|v| *v == b"during"), "{d}: {mine:?}");
    }
    t.proxy.shutdown().await;
}

/// One device publishing QoS 1 one message at a time ("id:seq"), counting
/// what was acknowledged, until `stop`.
async fn steady_device(
    port: u16,
    id: String,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut c = v4_connect(v4_options(&id, port)).await;
    let mut ledger = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        c.client
            .publish(
                format!("devices/{id}/events/e"),
                QoS::AtLeastOnce,
                false,
                format!("{id}:{seq}"),
            )
            .await
            .unwrap();
        let ack = c.next_puback().await;
        assert!(
            ack.is_ok(),
            "{id}: connection lost during failover: {ack:?}"
        );
        ledger.push(seq);
        acked.store(ledger.len(), Ordering::Release);
    }
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_leader_killed_mid_stream_loses_no_acknowledged_message() {
    const DEVICES: usize = 6;
    let _x = exclusive().await;
    let t = proxy_on(cluster().bootstrap(), |c| {
        c.ops.kafka_check_interval_ms = 200;
    })
    .await;
    let events = t.topic("iot.events");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicUsize>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let devices: Vec<_> = (0..DEVICES)
        .map(|i| {
            tokio::spawn(steady_device(
                t.tcp_port(),
                format!("steady-{i}"),
                acked[i].clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually_within("every device acknowledged 20 times", PATIENCE * 2, || {
        acked.iter().all(|a| a.load(Ordering::Acquire) >= 20)
    })
    .await;
    let boot = t.bootstrap();
    let ev = events.clone();
    let victim = on_cluster(move |c| {
        let leader = busiest_leader(&boot, &ev);
        c.kill(leader).unwrap();
        leader
    })
    .await;
    let at_kill: Vec<usize> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    // Two brokers of three answer: the replica stays ready the whole time
    // (a load balancer must not drain every replica because one broker died).
    let watching = Arc::new(AtomicBool::new(true));
    let readiness = {
        let (watching, addr) = (watching.clone(), t.proxy.ops_addr().unwrap());
        tokio::spawn(async move {
            let mut answers = BTreeMap::<String, usize>::new();
            while watching.load(Ordering::Acquire) {
                let (status, body) = http_get(addr, "/readyz").await;
                let line = format!("{status} {}", body.trim());
                *answers.entry(line).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        })
    };
    // Leadership moves to an in-sync follower; publishing goes on.
    eventually_within(
        "20 more acknowledgements per device after the kill",
        PATIENCE * 2,
        || {
            acked
                .iter()
                .zip(&at_kill)
                .all(|(a, k)| a.load(Ordering::Acquire) >= k + 20)
        },
    )
    .await;
    watching.store(false, Ordering::Release);
    let answers = readiness.await.unwrap();
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        vec!["200 ready"],
        "/readyz while one broker of three was down: {answers:?}"
    );
    on_cluster(move |c| c.restart(victim).unwrap()).await;
    stop.store(true, Ordering::Release);
    let mut ledgers = BTreeMap::new();
    for (i, d) in devices.into_iter().enumerate() {
        ledgers.insert(format!("steady-{i}"), d.await.unwrap());
    }

    let want: BTreeMap<String, u64> = ledgers
        .iter()
        .map(|(id, l)| (id.clone(), *l.last().unwrap()))
        .collect();
    let want2 = want.clone();
    let recs = consume_until(&t.bootstrap(), &events, move |rs| {
        want2.iter().all(|(id, last)| {
            let v = format!("{id}:{last}");
            rs.iter().any(|r| r.key == *id && r.value == v.as_bytes())
        })
    })
    .await;
    for (id, ledger) in &ledgers {
        let seqs: Vec<u64> = recs
            .iter()
            .filter(|r| r.key == *id)
            .map(|r| {
                let v = String::from_utf8(r.value.clone()).unwrap();
                v.rsplit(':').next().unwrap().parse().unwrap()
            })
            .collect();
        let mut dedup = seqs.clone();
        dedup.dedup();
        assert_eq!(
            &dedup, ledger,
            "{id}: Kafka holds {} records, {} acknowledged; every acknowledged one in order, none twice",
            seqs.len(),
            ledger.len()
        );
        assert_eq!(seqs, dedup, "{id}: idempotent producer wrote a duplicate");
    }
    t.proxy.shutdown().await;
}

/// GETs an ops path: (status, body); answered within 5 s even while Kafka
/// hangs.
async fn ops_get(t: &TestProxy, path: &str) -> (u16, String) {
    let addr = t.proxy.ops_addr().expect("ops endpoint bound");
    http_get_within(addr, path, Duration::from_secs(5)).await
}

/// Polls an ops path until it answers `status` with `body` in it.
async fn ops_until(t: &TestProxy, path: &str, status: u16, body: &str) -> String {
    http_until(
        t.proxy.ops_addr().expect("ops endpoint bound"),
        path,
        status,
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_while_the_whole_cluster_hangs() {
    let _x = exclusive().await;
    let t = proxy_on(cluster().bootstrap(), |c| {
        c.ops.kafka_check_interval_ms = 200;
    })
    .await;
    ops_until(&t, "/readyz", 200, "ready").await;
    // SIGSTOP every broker: sockets stay open, nothing answers.
    on_cluster(|c| {
        for id in 1..=3 {
            c.pause(id).unwrap();
        }
    })
    .await;
    let body = ops_until(&t, "/readyz", 503, "not ready").await;
    assert_eq!(body.trim(), "not ready: kafka unreachable");
    // Liveness and metrics answer while Kafka hangs.
    assert_eq!(ops_get(&t, "/healthz").await.0, 200);
    let (status, metrics) = ops_get(&t, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == "proxy_ready 0"),
        "proxy_ready is not 0 while Kafka hangs"
    );
    on_cluster(|c| {
        for id in 1..=3 {
            c.resume(id).unwrap();
        }
    })
    .await;
    ops_until(&t, "/readyz", 200, "ready").await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cluster_is_reported_in_one_clear_line_and_the_gauges_stay_live() {
    let _x = exclusive().await;
    let pids = on_cluster(|c| {
        (1..=3)
            .map(|id| c.pid(id).unwrap().expect("every broker runs"))
            .collect()
    })
    .await;
    common::hang::a_hang_is_reported_and_the_gauges_stay_live(&cluster().bootstrap(), pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_ordering_keeps_a_device_in_order_across_a_hang_longer_than_the_delivery_timeout() {
    const TIMEOUT_MS: u64 = 4_000;
    let _x = exclusive().await;
    let t = proxy_on(cluster().bootstrap(), |c| {
        c.mqtt.ordering = mqtt_kafka_proxy::config::PublishOrdering::Strict;
        c.kafka.delivery_timeout_ms = TIMEOUT_MS;
    })
    .await;
    let events = t.topic("iot.events");
    let port = t.tcp_port();
    let (d5, d4) = ("strict-hang-5", "strict-hang-311");
    let (topic5, topic4) = (
        format!("devices/{d5}/events/e"),
        format!("devices/{d4}/events/e"),
    );
    let m = |d: &str, i: u64| format!("{d}:{i}");
    let mut v5 = raw_v5_connect(port, d5).await;
    v5.send(&publish_bytes(
        publish(&topic5, Q::AtLeastOnce, 1, m(d5, 1).as_bytes()),
        Version::V5,
    ))
    .await;
    let (b1, body) = read_packet(&mut v5).await;
    assert_eq!(
        (b1, body.get(2).copied().unwrap_or(0)),
        (0x40, 0),
        "PUBACK 1"
    );
    let mut v4 = v4_connect(v4_options(d4, port)).await;
    v4.client
        .publish(&topic4, QoS::AtLeastOnce, false, m(d4, 1))
        .await
        .unwrap();
    v4.pubacks(1).await;

    // Every broker hangs: sockets open, nothing answers.
    on_cluster(|c| {
        for id in 1..=3 {
            c.pause(id).unwrap();
        }
    })
    .await;
    // Message 2, then message 3 half a delivery timeout later: pipelined,
    // message 3 could land after message 2 failed, before its resend.
    v5.send(&publish_bytes(
        publish(&topic5, Q::AtLeastOnce, 2, m(d5, 2).as_bytes()),
        Version::V5,
    ))
    .await;
    v4.client
        .publish(&topic4, QoS::AtLeastOnce, false, m(d4, 2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS / 2)).await;
    v5.send(&publish_bytes(
        publish(&topic5, Q::AtLeastOnce, 3, m(d5, 3).as_bytes()),
        Version::V5,
    ))
    .await;
    v4.client
        .publish(&topic4, QoS::AtLeastOnce, false, m(d4, 3))
        .await
        .unwrap();
    // 5.0: PUBACK 0x80 for message 2, DISCONNECT 0x80, the close; nothing
    // for message 3. 3.1.1: closed without a PUBACK.
    let seen = packets_to_close(&mut v5).await;
    assert_eq!(kinds(&seen), [(0x40, 0x80), (0xE0, 0x80)], "{seen:02x?}");
    assert_eq!(&seen[0].1[..2], &[0, 2], "the nack is for message 2");
    let end = v4.next_puback().await;
    assert!(
        end.is_err(),
        "3.1.1 got a PUBACK for a failed record: {end:?}"
    );

    on_cluster(|c| {
        for id in 1..=3 {
            c.resume(id).unwrap();
        }
    })
    .await;
    let outbox5: Vec<String> = (2..=4).map(|i| m(d5, i)).collect();
    publish_in_order_until_acked(port, d5, &topic5, &outbox5, PATIENCE * 2).await;
    for i in 2..=4 {
        v4_publish_until_acked(port, d4, &topic4, &m(d4, i), PATIENCE * 2).await;
    }
    let want = [m(d5, 4), m(d4, 4)];
    let recs = consume_until(&t.bootstrap(), &events, move |rs| {
        want.iter()
            .all(|w| rs.iter().any(|r| r.value == w.as_bytes()))
    })
    .await;
    for d in [d5, d4] {
        assert_device_order(d, &seqs(&recs, d), 4);
    }
    t.proxy.shutdown().await;
}

/// Publishes one QoS 1 message through `t`, has a command delivered to the
/// same device, and reads both outcomes back with a plaintext client: the
/// producer and the command consumer both went through `t`'s listener.
async fn produce_and_command_through(t: &TestProxy, device: &str) {
    let mut dev = v4_connect(v4_options(device, t.tcp_port())).await;
    dev.client
        .subscribe(format!("devices/{device}/commands/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    next_matching(&mut dev.events, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await
    .unwrap();
    dev.client
        .publish(
            format!("devices/{device}/events/e"),
            QoS::AtLeastOnce,
            false,
            "secured",
        )
        .await
        .unwrap();
    dev.pubacks(1).await;
    let plain = cluster().bootstrap();
    let recs = consume(&plain, &t.topic("iot.events"), 1).await;
    assert_eq!(
        (recs[0].key.as_str(), &recs[0].value[..]),
        (device, &b"secured"[..])
    );

    produce_command(
        &plain,
        &t.topic("iot.commands"),
        device,
        "open",
        &[("command.id", "sec-1")],
    )
    .await;
    let p = dev.next_publish().await;
    assert_eq!(&p.payload[..], b"open");
    let receipts = consume_until(&plain, &t.topic("iot.command-receipts"), |rs| {
        !rs.is_empty()
    })
    .await;
    let r: serde_json::Value = serde_json::from_slice(&receipts[0].value).unwrap();
    assert_eq!(
        (r["command_id"].as_str(), r["status"].as_str()),
        (Some("sec-1"), Some("delivered"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_command_consumer_authenticate_with_sasl_scram_sha_512() {
    let _x = exclusive().await;
    let t = proxy_on(cluster().sasl_bootstrap(), |c| {
        for (k, v) in [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", kafka_cluster::SCRAM_USER),
            ("sasl.password", kafka_cluster::SCRAM_PASSWORD),
        ] {
            c.kafka.client.insert(k.into(), v.into());
        }
    })
    .await;
    produce_and_command_through(&t, "sasl-dev").await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_command_consumer_connect_over_tls() {
    let _x = exclusive().await;
    let ca = cluster().ca_path().display().to_string();
    let t = proxy_on(cluster().tls_bootstrap(), move |c| {
        c.kafka
            .client
            .insert("security.protocol".into(), "SSL".into());
        c.kafka.client.insert("ssl.ca.location".into(), ca);
    })
    .await;
    produce_and_command_through(&t, "tls-dev").await;
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kafka_credentials_say_so_keep_the_replica_up_and_not_ready() {
    let _x = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let ops_port = free_port();
    let path = ConfigFile::tcp_only(&cluster().sasl_bootstrap(), ops_port)
        .set("ops", "kafka_check_interval_ms", 500)
        .set("kafka.client", "security.protocol", "SASL_PLAINTEXT")
        .set("kafka.client", "sasl.mechanisms", "SCRAM-SHA-512")
        .set("kafka.client", "sasl.username", kafka_cluster::SCRAM_USER)
        .set("kafka.client", "sasl.password", "not-the-password")
        .write(dir.path(), "config.toml");
    let (mut child, mut lines) = spawn_binary(&path, &["--log-format", "json"]);
    // A clear line saying Kafka refused the credentials.
    let line = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"target\":\"mqtt_kafka_proxy") && line.contains("credentials") {
                return line;
            }
        }
        panic!("proxy exited without saying why");
    })
    .await
    .expect("an authentication error is logged");
    assert!(
        line.contains("\"ERROR\"") && line.contains("sasl.username"),
        "the line should be an error naming the settings to check: {line}"
    );
    // Not ready, still serving its endpoint: no crash loop.
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], ops_port));
    poll_until("/readyz to say why it is not ready", PATIENCE, || async {
        let (status, body) = try_http_get(ops, "/readyz").await?;
        assert_ne!(status, 200, "ready with wrong credentials: {body}");
        // "starting" until the first check has run.
        if body.contains("authentication") {
            assert_eq!(status, 503, "{body}");
            return Ok(());
        }
        Err(format!("{status} {body:?}"))
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "the proxy exited");
    // Drain the log so the pipe never fills, then stop it cleanly.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
