//! Load tests and benchmarks for mqtt-kafka-proxy.
//!
//! `ingest-bench`: QoS 1 messages of ~200 bytes from many devices through the
//! proxy into an embedded Kafka-protocol broker, and in the same run the same
//! records produced straight into the same broker by an rdkafka producer (the
//! physical limit of ingest). Prints both rates and their ratio.

mod command_bench;
mod device;
mod direct;
mod kafka;
mod lean;
mod report;
mod rig;
mod verify;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mqtt_kafka_proxy::kafka::embedded::EmbeddedKafka;
use mqtt_kafka_proxy::Config;
use rdkafka::ClientConfig;

#[derive(Parser)]
#[command(about = "mqtt-kafka-proxy load tests and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Proxy QoS 1 ingest rate vs a direct rdkafka producer, same broker, same run.
    IngestBench(IngestArgs),
    /// Start a broker, K replicas and the simulated fleet; verify; write the report.
    Rig(rig::RigArgs),
    /// Commands from Kafka to devices on two replicas, beside a direct consumer.
    CommandBench(command_bench::CommandBenchArgs),
    /// A real Apache Kafka cluster (KRaft, 1 or 3 nodes) on loopback.
    #[command(subcommand)]
    Kafka(kafka::KafkaCmd),
    /// (Internal) one worker process of the rig; the argument is its JSON spec.
    Worker {
        /// The worker's spec as JSON.
        spec: String,
    },
}

#[derive(clap::Args, Clone)]
struct IngestArgs {
    /// Concurrent devices (MQTT connections).
    #[arg(long, default_value_t = 500)]
    devices: u64,
    /// Messages in total, per phase.
    #[arg(long, default_value_t = 300_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Unacknowledged QoS 1 messages per device.
    #[arg(long, default_value_t = 32)]
    window: u16,
    /// Partitions of the target topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Rounds of (direct, proxy); medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    raise_open_file_limit();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::IngestBench(a) => rt.block_on(ingest_bench(a)),
        Cmd::CommandBench(a) => rt.block_on(command_bench::run(a)),
        Cmd::Kafka(k) => rt.block_on(kafka::run(k)),
        Cmd::Worker { spec } => rt.block_on(worker::run(serde_json::from_str(&spec)?)),
        Cmd::Rig(a) => {
            let report = rt.block_on(rig::run(a.clone()))?;
            println!("{}", report.table());
            println!("report: {}/report.{{json,md,html}}", a.out.display());
            let v = &report.verdict;
            anyhow::ensure!(
                v.lost == 0 && v.order_violations == 0,
                "{} acknowledged messages lost, {} order violations",
                v.lost,
                v.order_violations
            );
            Ok(())
        }
    }
}

/// Lifts the soft open-file limit to the hard one: each worker holds
/// thousands of sockets.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid resource and a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn payload(n: usize) -> Vec<u8> {
    let mut p = format!("{{\"device\":\"dev-0000\",\"state\":\"on\",\"temp\":21.5,\"pad\":\"");
    while p.len() + 2 < n {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

async fn ingest_bench(a: IngestArgs) -> Result<()> {
    let topic = "iot.events".to_string();
    // Every topic the proxy names: it checks at start-up that they exist.
    let topics = Config::default().kafka_topics();
    let kafka = EmbeddedKafka::start(1, a.partitions, &topics, "127.0.0.1:0".parse()?)
        .await
        .context("embedded broker")?;
    let bootstrap = kafka.bootstrap_servers().to_owned();
    let body = payload(a.payload_bytes);
    println!(
        "ingest-bench: {} devices, {} QoS 1 messages of {} bytes per phase, window {}, {} partitions, {} rounds",
        a.devices, a.messages, body.len(), a.window, a.partitions, a.rounds
    );

    // The proxy shares the broker with the direct producer.
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap.clone();
    config.listeners.tcp.bind = "127.0.0.1:0".parse()?;
    config.listeners.tls.enabled = false;
    config.listeners.max_connections = (a.devices as usize + 10).max(100);
    // Every simulated device shares one source address.
    config.limits.connects_per_second_per_source = 0;
    config.ops.bind = "127.0.0.1:0".parse()?;
    config.listeners.ws.enabled = false;
    config.listeners.wss.enabled = false;
    config.log.level = "warn".into();
    config.mqtt.receive_maximum = a.window.max(1);
    let proxy = mqtt_kafka_proxy::Proxy::start(config).await?;
    let addr = proxy.tcp_addr().context("tcp listener")?;

    let mut direct_rates = Vec::new();
    let mut proxy_rates = Vec::new();
    let mut proxy_lat: Vec<u32> = Vec::new();
    for round in 1..=a.rounds {
        let d = direct::produce(&bootstrap, &topic, a.devices, a.messages, &body).await?;
        println!("round {round}: direct producer {d:>10.0} msg/s");
        direct_rates.push(d);
        let (p, lat) = through_proxy(addr, &a, &body).await?;
        println!("round {round}: through proxy   {p:>10.0} msg/s");
        proxy_rates.push(p);
        proxy_lat.extend(lat);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (md, mp) = (median(&mut direct_rates), median(&mut proxy_rates));
    proxy_lat.sort_unstable();
    let pct = |q: f64| proxy_lat[((proxy_lat.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!();
    println!(
        "| path | QoS 1 msg/s, median of {} rounds | min | max |",
        a.rounds
    );
    println!("|---|---|---|---|");
    println!(
        "| direct rdkafka producer | {md:.0} | {:.0} | {:.0} |",
        direct_rates[0],
        direct_rates[direct_rates.len() - 1]
    );
    println!(
        "| through mqtt-kafka-proxy | {mp:.0} | {:.0} | {:.0} |",
        proxy_rates[0],
        proxy_rates[proxy_rates.len() - 1]
    );
    println!("| ratio proxy / direct (medians) | {:.2} | | |", mp / md);
    println!(
        "PUBACK latency through the proxy (all rounds, window {} per device): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        a.window,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    proxy.shutdown().await;
    // Self-check: the broker holds every record of both paths, all rounds.
    let stored = stored_records(&bootstrap, &topic, a.partitions).await?;
    let direct_total = a.rounds as u64 * a.messages;
    let proxy_total = a.rounds as u64 * (a.messages / a.devices) * a.devices;
    let expected = direct_total + proxy_total;
    println!("records appended to the broker: {stored} (expected {expected})");
    anyhow::ensure!(
        stored == expected,
        "record count mismatch: {stored} != {expected}"
    );
    drop(kafka);
    Ok(())
}

/// Sum of the high watermarks of `topic`: how many records the broker has
/// appended. (Not high - low: librdkafka's mock broker keeps only the last
/// 5 MiB / 100,000 records of each partition and advances the low watermark.)
async fn stored_records(bootstrap: &str, topic: &str, partitions: u32) -> Result<u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "ingest-bench-check")
            .create()?;
        let mut total = 0;
        for p in 0..partitions as i32 {
            let (_low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            total += high as u64;
        }
        Ok(total)
    })
    .await?
}

async fn through_proxy(
    addr: std::net::SocketAddr,
    a: &IngestArgs,
    body: &[u8],
) -> Result<(f64, Vec<u32>)> {
    let per = a.messages / a.devices;
    let body: Arc<[u8]> = body.into();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for d in 0..a.devices {
        let body = body.clone();
        let window = a.window;
        tasks.spawn(async move {
            let id = worker::device_id(d);
            let topic = format!("devices/{id}/events/state");
            lean::publish_qos1(addr, &id, &topic, &body, per, window).await
        });
    }
    let mut acked = 0;
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r??;
        acked += r.acked;
        lat.extend(r.ack_latency_us);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((acked as f64 / secs, lat))
}
