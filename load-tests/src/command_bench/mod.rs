//! `command-bench`: commands from Kafka to devices held across two replicas,
//! beside a direct rdkafka consumer of the same records in the same run, on
//! the embedded broker or a real cluster (`--kafka`, `bench_kafka.rs`).
//!
//! Each round has two phases: **light** (`--light-rate` commands/s, paced,
//! for `--light-s`) and **burst** (`--commands` produced as fast as
//! librdkafka takes them). Both paths read every command: the devices
//! (subscribed, acknowledging at QoS 1) and one direct consumer assigned to
//! every partition. Latency is Kafka-to-receiver: the producer's clock at
//! `send()`, carried in the payload, to the device reading the PUBLISH or
//! the consumer polling the record. Rate (burst only) is commands over the
//! time from the first command produced to the last one received, the same
//! clock for both paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use mqtt_kafka_proxy::mqtt::codec::{decode, Limits};
use mqtt_kafka_proxy::mqtt::encode::encode;
use mqtt_kafka_proxy::mqtt::packet::*;
use mqtt_kafka_proxy::{Config, Proxy};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench_kafka::{BenchKafka, KafkaBackend};
use crate::measure::{loadavg, Latency, Pace};
use crate::worker::now_us;

mod report;

use report::table;
pub use report::{CommandReport, PhaseResult};

/// Options of `load-tests command-bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct CommandBenchArgs {
    /// Subscribed devices, split over two replicas.
    #[arg(long, default_value_t = 1000)]
    pub devices: u64,
    /// Commands of each burst (QoS 1), spread over the devices.
    #[arg(long, default_value_t = 100_000)]
    pub commands: u64,
    /// Commands per second of the light phase.
    #[arg(long, default_value_t = 100.0)]
    pub light_rate: f64,
    /// Seconds of the light phase.
    #[arg(long, default_value_t = 20.0)]
    pub light_s: f64,
    /// Rounds of (light, burst); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Which Kafka: the embedded mock broker (in this process) or a real
    /// Apache Kafka cluster (KRaft JVM nodes on loopback).
    #[arg(long, value_enum, default_value = "embedded")]
    pub kafka: KafkaBackend,
    /// Brokers of the real cluster (with `--kafka cluster`): RF min(3, N),
    /// min.insync.replicas min(2, N).
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// Where `command-bench.json` and `command-bench.md` go.
    #[arg(long, default_value = "load-tests/results/latest")]
    pub out: std::path::PathBuf,
}

/// A phase's tag: which counters and latency lists its commands go to.
fn tag(round: u32, burst: bool) -> usize {
    round as usize * 2 + burst as usize
}

/// The payload of one command: when it was produced and its phase tag.
fn command_payload(sent_us: u64, tag: usize, i: u64) -> String {
    format!("{{\"t\":{sent_us},\"ph\":{tag},\"cmd\":\"set\",\"value\":{i}}}")
}

/// (send time µs, phase tag) of a [`command_payload`].
fn parse_payload(payload: &[u8]) -> Option<(u64, usize)> {
    let s = std::str::from_utf8(payload).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.split_once(&format!("\"{name}\":"))?
            .1
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("t")?, field("ph")? as usize))
}

/// Per-phase progress of one path: commands received and when the last
/// one of the phase was (µs since the epoch).
struct Progress {
    received: Vec<AtomicU64>,
    expected: Vec<u64>,
    last_us: Vec<AtomicU64>,
}

impl Progress {
    fn new(expected: Vec<u64>) -> Progress {
        Progress {
            received: expected.iter().map(|_| AtomicU64::new(0)).collect(),
            last_us: expected.iter().map(|_| AtomicU64::new(0)).collect(),
            expected,
        }
    }

    fn record(&self, tag: usize, at_us: u64) {
        let Some(c) = self.received.get(tag) else {
            return;
        };
        if c.fetch_add(1, Ordering::Relaxed) + 1 == self.expected[tag] {
            self.last_us[tag].store(at_us, Ordering::Relaxed);
        }
    }

    fn done(&self, tag: usize) -> bool {
        self.received[tag].load(Ordering::Relaxed) >= self.expected[tag]
    }
}

/// A device that subscribes to its command topics, acknowledges every
/// command, and returns its latencies (µs) per phase tag.
async fn device(
    addr: std::net::SocketAddr,
    id: String,
    expect: u64,
    progress: Arc<Progress>,
    subscribed: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Vec<Vec<u64>>> {
    let mut s = crate::lean::connect(addr, &id).await?;
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
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); progress.expected.len()];
    let mut got = 0u64;
    let mut buf = BytesMut::with_capacity(4096);
    let limits = Limits::default();
    while got < expect {
        if s.read_buf(&mut buf).await? == 0 {
            bail!("{id}: proxy closed after {got} commands");
        }
        out.clear();
        while let Some(p) = decode(&mut buf, Some(Version::V311), &limits)
            .map_err(|e| anyhow::anyhow!("{id}: {e}"))?
        {
            if let Packet::Publish(p) = p {
                let now = now_us();
                let (sent, tag) = parse_payload(&p.payload)
                    .with_context(|| format!("{id}: not a bench command: {:?}", p.payload))?;
                lat.get_mut(tag)
                    .with_context(|| format!("{id}: phase {tag} out of range"))?
                    .push(now.saturating_sub(sent));
                progress.record(tag, now);
                got += 1;
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

/// Runs the benchmark, prints its tables and writes them to `--out`; the
/// Kafka it started is stopped on every path.
pub async fn run(a: CommandBenchArgs) -> Result<()> {
    let mut kafka = BenchKafka::start(a.kafka, a.brokers, a.partitions).await?;
    let result = bench(&a, &mut kafka).await;
    kafka.stop().await;
    result
}

/// One round's phases: (tag, commands, paced?) in order, and which device
/// each command goes to (the `i`th command of the run to device
/// `i % devices`).
struct Plan {
    phases: Vec<(usize, u64, Option<Pace>)>,
    per_device: Vec<u64>,
}

impl Plan {
    fn new(a: &CommandBenchArgs) -> Plan {
        let light = Pace::for_duration(a.light_rate, Duration::from_secs_f64(a.light_s));
        let mut phases = Vec::new();
        for round in 0..a.rounds {
            if light.total > 0 {
                phases.push((tag(round, false), light.total, Some(light)));
            }
            phases.push((tag(round, true), a.commands, None));
        }
        let mut per_device = vec![0u64; a.devices as usize];
        let total: u64 = phases.iter().map(|p| p.1).sum();
        for i in 0..total {
            per_device[(i % a.devices) as usize] += 1;
        }
        Plan { phases, per_device }
    }

    /// Commands expected per tag (0 for a tag with no phase).
    fn expected(&self, tags: usize) -> Vec<u64> {
        let mut e = vec![0; tags];
        for (t, n, _) in &self.phases {
            e[*t] = *n;
        }
        e
    }
}

async fn bench(a: &CommandBenchArgs, kafka: &mut BenchKafka) -> Result<()> {
    anyhow::ensure!(
        a.devices > 0 && a.rounds > 0,
        "--devices and --rounds must be positive"
    );
    let load_before = loadavg();
    let mut ca = Config::default();
    kafka.configure(&mut ca, a.partitions);
    ca.listeners.tcp.bind = "127.0.0.1:0".parse()?;
    ca.listeners.tls.enabled = false;
    ca.log.level = "warn".into();
    ca.commands.replica_id = "A".into();
    ca.commands.max_queued_per_device = 1024;
    // As when the reports were recorded (3.1.1 devices: 32 unacknowledged).
    ca.commands.max_unacked_per_device = 32;
    // All devices share one source address.
    ca.limits.connects_per_second_per_source = 0;
    ca.listeners.max_connections = (a.devices as usize + 10).max(100);
    ca.ops.bind = "127.0.0.1:0".parse()?;
    ca.listeners.ws.enabled = false;
    ca.listeners.wss.enabled = false;
    let a_proxy = Proxy::start(ca.clone()).await?;
    let mut cb = ca.clone();
    cb.commands.replica_id = "B".into();
    let b_proxy = Proxy::start(cb).await?;
    let topics = ca.kafka_topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka.await_topics(&names, a.partitions).await?;
    let addrs = [
        a_proxy.tcp_addr().context("A")?,
        b_proxy.tcp_addr().context("B")?,
    ];
    let result = phases(a, kafka, &ca, addrs, load_before).await;
    b_proxy.shutdown().await;
    a_proxy.shutdown().await;
    result
}

async fn phases(
    a: &CommandBenchArgs,
    kafka: &BenchKafka,
    config: &Config,
    addrs: [std::net::SocketAddr; 2],
    load_before: String,
) -> Result<()> {
    let plan = Plan::new(a);
    let tags = tag(a.rounds, false);
    let to_devices = Arc::new(Progress::new(plan.expected(tags)));
    let to_direct = Arc::new(Progress::new(plan.expected(tags)));
    let commands_topic = config.commands.topic.clone();

    let mut devices = tokio::task::JoinSet::new();
    let (subscribed, mut ready) = tokio::sync::mpsc::unbounded_channel();
    for d in 0..a.devices {
        devices.spawn(device(
            addrs[(d % 2) as usize],
            crate::worker::device_id(d),
            plan.per_device[d as usize],
            to_devices.clone(),
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

    // The direct consumer starts at the current end of the commands topic,
    // with the proxy's command consumer's fetch.wait.max.ms (50).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", "command-bench-direct")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let md = consumer.fetch_metadata(Some(&commands_topic), Duration::from_secs(10))?;
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(&commands_topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(&commands_topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let total: u64 = plan.phases.iter().map(|p| p.1).sum();
    let direct_progress = to_direct.clone();
    let direct = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u64>>> {
        let mut lat: Vec<Vec<u64>> = vec![Vec::new(); tags];
        let mut got = 0u64;
        let mut idle_since = Instant::now();
        while got < total {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let now = now_us();
                    let (sent, tag) = parse_payload(m.payload().unwrap_or_default())
                        .context("direct consumer: not a bench command")?;
                    lat.get_mut(tag)
                        .context("direct consumer: phase out of range")?
                        .push(now.saturating_sub(sent));
                    direct_progress.record(tag, now);
                    got += 1;
                    idle_since = Instant::now();
                }
                Some(Err(e)) => eprintln!("direct consumer: {e}"),
                None if idle_since.elapsed() > Duration::from_secs(120) => {
                    bail!("direct consumer: nothing for 120 s after {got} of {total}")
                }
                None => {}
            }
        }
        Ok(lat)
    });

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("linger.ms", "5")
        .create()?;
    let producer = Arc::new(producer);
    let mut started_us = vec![0u64; tags];
    let mut index = 0u64;
    for &(t, n, pace) in &plan.phases {
        let (p, topic, devs) = (producer.clone(), commands_topic.clone(), a.devices);
        let first = index;
        started_us[t] = now_us();
        tokio::task::spawn_blocking(move || produce(&p, &topic, t, first, n, devs, pace)).await??;
        index += n;
        // The phase ends when both paths have every command: the next one
        // does not queue behind it.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !(to_devices.done(t) && to_direct.done(t)) {
            if Instant::now() > deadline {
                bail!(
                    "phase {t}: after 300 s the devices have {} and the direct consumer {} of {n} commands",
                    to_devices.received[t].load(Ordering::Relaxed),
                    to_direct.received[t].load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let mut device_lat: Vec<Vec<u64>> = vec![Vec::new(); tags];
    while let Some(r) = devices.join_next().await {
        for (t, l) in r??.into_iter().enumerate() {
            device_lat[t].extend(l);
        }
    }
    let mut direct_lat = direct.await??;

    let mut results = Vec::new();
    for &(t, n, pace) in &plan.phases {
        let rate = |p: &Progress| {
            let secs = p.last_us[t]
                .load(Ordering::Relaxed)
                .saturating_sub(started_us[t]) as f64
                / 1e6;
            n as f64 / secs.max(1e-6)
        };
        results.push(PhaseResult {
            round: t as u32 / 2 + 1,
            phase: if pace.is_some() { "light" } else { "burst" },
            commands: n,
            proxy_per_s: rate(&to_devices),
            proxy_latency: Latency::of_us(&mut device_lat[t]).context("no device samples")?,
            direct_per_s: rate(&to_direct),
            direct_latency: Latency::of_us(&mut direct_lat[t]).context("no direct samples")?,
        });
    }
    let report = CommandReport {
        kafka: kafka.description.clone(),
        devices: a.devices,
        replicas: 2,
        loadavg: (load_before, loadavg()),
        phases: results,
    };
    let table = table(a, &report);
    print!("{table}");
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("command-bench.md"), &table)?;
    std::fs::write(
        a.out.join("command-bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("report: {}/command-bench.{{json,md}}", a.out.display());
    Ok(())
}

/// Produces commands `first..first + n` of the run with tag `t`, paced or
/// as fast as librdkafka takes them, key = device `i % devices`.
fn produce(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    t: usize,
    first: u64,
    n: u64,
    devices: u64,
    pace: Option<Pace>,
) -> Result<()> {
    let started = Instant::now();
    for j in 0..n {
        if let Some(pace) = pace {
            let due = pace.due_at(j);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let i = first + j;
        let key = crate::worker::device_id(i % devices);
        let payload = command_payload(now_us(), t, i);
        let headers = OwnedHeaders::new().insert(Header {
            key: "mqtt.qos",
            value: Some("1"),
        });
        let mut rec = BaseRecord::to(topic)
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_send_time_and_phase() {
        let p = command_payload(1_700_000_000_123_456, 5, 42);
        assert_eq!(
            parse_payload(p.as_bytes()),
            Some((1_700_000_000_123_456, 5))
        );
        assert_eq!(parse_payload(b"{\"t\":12}"), None, "no phase");
        assert_eq!(parse_payload(b"not json"), None);
    }

    #[test]
    fn plan_spreads_every_phase_over_the_devices() {
        let a = CommandBenchArgs {
            devices: 4,
            commands: 10,
            light_rate: 2.0,
            light_s: 1.5,
            rounds: 2,
            partitions: 1,
            kafka: KafkaBackend::Embedded,
            brokers: 1,
            out: "unused".into(),
        };
        let plan = Plan::new(&a);
        let phases: Vec<(usize, u64)> = plan.phases.iter().map(|p| (p.0, p.1)).collect();
        // light: 2/s for 1.5 s = 3 commands; bursts of 10.
        assert_eq!(phases, vec![(0, 3), (1, 10), (2, 3), (3, 10)]);
        assert_eq!(plan.per_device.iter().sum::<u64>(), 26);
        assert_eq!(plan.per_device, vec![7, 7, 6, 6]);
        assert_eq!(plan.expected(4), vec![3, 10, 3, 10]);
        assert_eq!(tag(1, true), 3);
    }

    #[test]
    fn progress_notes_when_a_phase_is_complete() {
        let p = Progress::new(vec![2, 1]);
        p.record(0, 10);
        assert!(!p.done(0));
        p.record(0, 20);
        p.record(1, 30);
        p.record(7, 40); // an unknown tag is ignored
        assert!(p.done(0) && p.done(1));
        assert_eq!(p.last_us[0].load(Ordering::Relaxed), 20);
    }
}
