//! `command-bench`: commands from Kafka to devices held across two replicas,
//! beside a direct rdkafka consumer of the same records in the same run.
//! Reports command throughput and Kafka-to-device latency (producer send
//! time in the payload → PUBLISH read by the device).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use mqtt_kafka_proxy::mqtt::codec::{decode, Limits};
use mqtt_kafka_proxy::mqtt::encode::encode;
use mqtt_kafka_proxy::mqtt::packet::*;
use mqtt_kafka_proxy::{Config, Proxy};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options of `load-tests command-bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct CommandBenchArgs {
    /// Subscribed devices, split over two replicas.
    #[arg(long, default_value_t = 1000)]
    pub devices: u64,
    /// Commands to send (QoS 1), spread over the devices.
    #[arg(long, default_value_t = 100_000)]
    pub commands: u64,
    /// Where `command-bench.json` and `command-bench.md` go.
    #[arg(long, default_value = "load-tests/results/latest")]
    pub out: std::path::PathBuf,
}

/// What the command benchmark measured.
#[derive(Debug, serde::Serialize)]
pub struct CommandReport {
    /// Subscribed devices (half on each replica).
    pub devices: u64,
    /// Replicas holding the devices.
    pub replicas: u32,
    /// Commands produced.
    pub commands: u64,
    /// Commands the devices received.
    pub delivered: u64,
    /// Through the proxy: commands per second.
    pub proxy_per_s: f64,
    /// Through the proxy: Kafka-to-device latency p50 / p99, ms.
    pub proxy_latency_ms: (f64, f64),
    /// Direct consumer of the same records: per second.
    pub direct_per_s: f64,
    /// Direct consumer: latency p50 / p99, ms.
    pub direct_latency_ms: (f64, f64),
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn sent_us(payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    s.strip_prefix("{\"t\":")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A device that subscribes to its command topics and acknowledges every command.
async fn device(
    addr: std::net::SocketAddr,
    id: String,
    expect: u64,
    subscribed: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Vec<u64>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    crate::device::handshake(&mut s, &id, 60).await?;
    let mut out = BytesMut::new();
    let sub = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![SubscribeFilter {
            filter: format!("devices/{id}/commands/#"),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }],
    };
    encode(&Packet::Subscribe(sub), Version::V311, &mut out);
    s.write_all(&out).await?;
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.context("SUBACK")?;
    if suback != [0x90, 0x03, 0x00, 0x01, 0x01] {
        bail!("{id}: subscription refused: {suback:02x?}");
    }
    let _ = subscribed.send(());
    let mut lat = Vec::with_capacity(expect as usize);
    let mut buf = BytesMut::with_capacity(4096);
    let limits = Limits::default();
    while (lat.len() as u64) < expect {
        if s.read_buf(&mut buf).await? == 0 {
            bail!("{id}: proxy closed after {} commands", lat.len());
        }
        out.clear();
        while let Some(p) = decode(&mut buf, Some(Version::V311), &limits)
            .map_err(|e| anyhow::anyhow!("{id}: {e}"))?
        {
            if let Packet::Publish(p) = p {
                lat.push(now_us().saturating_sub(sent_us(&p.payload).unwrap_or(0)));
                if p.qos == QoS::AtLeastOnce {
                    encode(
                        &Packet::PubAck(Ack::new(p.packet_id, 0)),
                        Version::V311,
                        &mut out,
                    );
                }
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
    }
    Ok(lat)
}

fn percentiles(lat: &[u64]) -> Result<(f64, f64)> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for v in lat {
        h.record((*v).max(1))?;
    }
    Ok((
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

/// Runs the benchmark and prints its table.
pub async fn run(a: CommandBenchArgs) -> Result<()> {
    let mut ca = Config::default();
    ca.listeners.tcp.bind = "127.0.0.1:0".parse()?;
    ca.listeners.tls.enabled = false;
    ca.kafka.embedded.listen = "127.0.0.1:0".parse()?;
    ca.log.level = "warn".into();
    ca.commands.replica_id = "A".into();
    ca.commands.max_queued_per_device = 1024;
    // As when the reports were recorded (3.1.1 devices: 32 unacknowledged).
    ca.commands.max_unacked_per_device = 32;
    // All 1,000 devices share one source address.
    ca.limits.connects_per_second_per_source = 0;
    ca.ops.bind = "127.0.0.1:0".parse()?;
    ca.listeners.ws.enabled = false;
    ca.listeners.wss.enabled = false;
    let a_proxy = Proxy::start(ca.clone()).await?;
    let bootstrap = a_proxy.kafka_bootstrap().to_owned();
    let mut cb = ca.clone();
    cb.kafka.bootstrap_servers = bootstrap.clone();
    cb.commands.replica_id = "B".into();
    let b_proxy = Proxy::start(cb).await?;
    let addrs = [
        a_proxy.tcp_addr().context("A")?,
        b_proxy.tcp_addr().context("B")?,
    ];

    let per = a.commands / a.devices;
    let mut devices = tokio::task::JoinSet::new();
    let (subscribed, mut ready) = tokio::sync::mpsc::unbounded_channel();
    for d in 0..a.devices {
        let addr = addrs[(d % 2) as usize];
        devices.spawn(device(
            addr,
            crate::worker::device_id(d),
            per,
            subscribed.clone(),
        ));
    }
    drop(subscribed);
    // A SUBACK is written after the subscription is in place: once every
    // device has read its SUBACK, every command reaches a subscriber.
    for _ in 0..a.devices {
        tokio::time::timeout(Duration::from_secs(60), ready.recv())
            .await
            .context("devices did not subscribe in 60 s")?
            .context("a device failed before subscribing")?;
    }

    // The direct consumer starts at the current end of the commands topic.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "command-bench-direct")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = consumer.fetch_metadata(Some("iot.commands"), Duration::from_secs(10))?;
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks("iot.commands", p, Duration::from_secs(10))?;
        tpl.add_partition_offset("iot.commands", p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let total = per * a.devices;
    let direct = tokio::task::spawn_blocking(move || -> Result<(f64, Vec<u64>)> {
        let mut lat = Vec::with_capacity(total as usize);
        let mut first: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        while (lat.len() as u64) < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                first.get_or_insert_with(Instant::now);
                lat.push(
                    now_us().saturating_sub(sent_us(m.payload().unwrap_or_default()).unwrap_or(0)),
                );
            }
        }
        let secs = first.map_or(1.0, |f| f.elapsed().as_secs_f64());
        Ok((lat.len() as f64 / secs, lat))
    });

    // Produce the commands.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()?;
    let started = Instant::now();
    for i in 0..total {
        let key = crate::worker::device_id(i % a.devices);
        let payload = format!("{{\"t\":{},\"cmd\":\"set\",\"value\":{i}}}", now_us());
        let headers = OwnedHeaders::new().insert(Header {
            key: "mqtt.qos",
            value: Some("1"),
        });
        let mut rec = BaseRecord::to("iot.commands")
            .key(&key)
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    drop(producer);
    let mut lat = Vec::new();
    while let Some(r) = devices.join_next().await {
        lat.extend(r??);
    }
    let proxy_rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    let (direct_rate, direct_lat) = direct.await??;
    let (p50, p99) = percentiles(&lat)?;
    let (d50, d99) = percentiles(&direct_lat)?;
    let report = CommandReport {
        devices: a.devices,
        replicas: 2,
        commands: total,
        delivered: lat.len() as u64,
        proxy_per_s: proxy_rate,
        proxy_latency_ms: (p50, p99),
        direct_per_s: direct_rate,
        direct_latency_ms: (d50, d99),
    };
    let table = format!(
        "command-bench: {} devices over 2 replicas, {total} QoS 1 commands ({per} per device)\n\n\
         | path | commands/s | latency p50 | latency p99 |\n|---|---|---|---|\n\
         | Kafka → proxy → device (PUBLISH read) | {proxy_rate:.0} | {p50:.1} ms | {p99:.1} ms |\n\
         | Kafka → direct rdkafka consumer | {direct_rate:.0} | {d50:.1} ms | {d99:.1} ms |\n\
         | delivered / consumed | {} / {} | | |\n",
        a.devices,
        lat.len(),
        direct_lat.len()
    );
    print!("{table}");
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("command-bench.md"), &table)?;
    std::fs::write(
        a.out.join("command-bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("report: {}/command-bench.{{json,md}}", a.out.display());
    b_proxy.shutdown().await;
    a_proxy.shutdown().await;
    anyhow::ensure!(
        report.delivered == total,
        "{} of {total} commands delivered",
        report.delivered
    );
    Ok(())
}
