//! `ingest-bench`: QoS 1 messages of ~200 bytes from many devices through
//! the proxy into Kafka and, in the same run, the same records (same keys,
//! value and headers, same producer settings) produced straight into the
//! same Kafka by a lean rdkafka producer (`direct.rs`). Kafka is the
//! embedded mock broker or a real cluster (`--kafka`, `bench_kafka.rs`).
//!
//! Two measurements, each alternating the paths round by round:
//! - **peak**: both paths as fast as they go (devices keep `--window`
//!   messages unacknowledged); the rates and their ratio;
//! - **latency at a fixed rate** (`--latency-rounds`): both paths at the
//!   same rate (`--rate`, by default half the median peak through the
//!   proxy), the direct producer's delivery-report latency beside the
//!   devices' PUBACK latency, and the difference: what the proxy adds.
//!
//! The run ends by checking that Kafka appended every record of both paths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mqtt_kafka_proxy::Config;
use rdkafka::ClientConfig;

use crate::bench_kafka::{BenchKafka, KafkaBackend};
use crate::measure::{loadavg, CpuMeter, Latency, Pace, Spread};
use crate::table::Table;
use crate::{direct, lean, worker};

/// The topic both paths write (the proxy's default route for
/// `devices/{id}/events/#`).
const TOPIC: &str = "iot.events";

/// Latency samples of the first second of each fixed-rate phase are left
/// out: connections and the idempotent producer's id are set up then.
const WARMUP: Duration = Duration::from_secs(1);

/// Options of `load-tests ingest-bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct IngestArgs {
    /// Concurrent devices (MQTT connections).
    #[arg(long, default_value_t = 500)]
    pub devices: u64,
    /// Messages in total, per peak phase.
    #[arg(long, default_value_t = 300_000)]
    pub messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Unacknowledged QoS 1 messages per device.
    #[arg(long, default_value_t = 32)]
    pub window: u16,
    /// Partitions of the target topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Rounds of (direct, proxy) at the peak rate; medians are reported.
    /// 0 skips the peak (then `--rate` is needed for the latency rounds).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Rounds of (direct, proxy) at a fixed rate, comparing the direct
    /// producer's delivery-report latency with the PUBACK latency. 0 skips them.
    #[arg(long, default_value_t = 5)]
    pub latency_rounds: u32,
    /// The fixed rate, messages per second over all devices (default: half
    /// the median peak rate through the proxy).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds per fixed-rate phase (the first second is warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub latency_s: f64,
    /// Which Kafka: the embedded mock broker (in this process) or a real
    /// Apache Kafka cluster (KRaft JVM nodes on loopback).
    #[arg(long, value_enum, default_value = "embedded")]
    pub kafka: KafkaBackend,
    /// Brokers of the real cluster (with `--kafka cluster`): RF min(3, N),
    /// min.insync.replicas min(2, N).
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
}

/// Runs the benchmark and prints its tables; the Kafka it started is
/// stopped on every path.
pub async fn run(a: IngestArgs) -> Result<()> {
    let mut kafka = BenchKafka::start(a.kafka, a.brokers, a.partitions).await?;
    let result = bench(&a, &mut kafka).await;
    kafka.stop().await;
    result
}

fn payload(n: usize) -> Vec<u8> {
    let mut p = "{\"device\":\"dev-0000\",\"state\":\"on\",\"temp\":21.5,\"pad\":\"".to_string();
    while p.len() + 2 < n {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

/// The proxy's configuration for the run: plain TCP on a free port, no
/// per-source connect limit (every device shares 127.0.0.1), Receive
/// Maximum = the window. The direct producer is built from the same config.
fn proxy_config(a: &IngestArgs, kafka: &BenchKafka) -> Result<Config> {
    let mut config = Config::default();
    kafka.configure(&mut config, a.partitions);
    config.listeners.tcp.bind = "127.0.0.1:0".parse()?;
    config.listeners.tls.enabled = false;
    config.listeners.max_connections = (a.devices as usize + 10).max(100);
    config.limits.connects_per_second_per_source = 0;
    config.ops.bind = "127.0.0.1:0".parse()?;
    config.listeners.ws.enabled = false;
    config.listeners.wss.enabled = false;
    config.log.level = "warn".into();
    config.mqtt.receive_maximum = a.window.max(1);
    Ok(config)
}

async fn bench(a: &IngestArgs, kafka: &mut BenchKafka) -> Result<()> {
    let load_before = loadavg();
    let started = Instant::now();
    let config = proxy_config(a, kafka)?;
    let proxy = mqtt_kafka_proxy::Proxy::start(config.clone()).await?;
    // The proxy drains before the check below and before Kafka stops, on
    // an error too (else its clients log every broker going away).
    let measured = match proxy.tcp_addr().context("tcp listener") {
        Ok(addr) => measure(a, &config, kafka, addr, &load_before).await,
        Err(e) => Err(e),
    };
    proxy.shutdown().await;
    let appended = measured?;
    let stored = stored_records(&kafka.bootstrap, TOPIC, a.partitions).await?;
    println!("records appended to {TOPIC}: {stored} (expected {appended})");
    println!(
        "load average after: {} ({:.0} s run)",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        stored == appended,
        "record count mismatch: {stored} != {appended}"
    );
    Ok(())
}

/// The peak and fixed-rate rounds; returns how many records they appended.
async fn measure(
    a: &IngestArgs,
    config: &Config,
    kafka: &mut BenchKafka,
    addr: std::net::SocketAddr,
    load_before: &str,
) -> Result<u64> {
    let body = payload(a.payload_bytes);
    kafka.await_topics(&[TOPIC], a.partitions).await?;
    println!(
        "ingest-bench on {}: {} devices, QoS 1 messages of {} bytes, window {}, {} partitions, producer linger {} ms, acks=all, idempotent (both paths); load average before: {load_before}",
        kafka.description, a.devices, body.len(), a.window, a.partitions, config.kafka.linger_ms
    );
    // Records Kafka should hold at the end, both paths, all phases.
    let mut appended = 0u64;

    let mut peak_proxy = None;
    if a.rounds > 0 {
        let mut direct_rates = Vec::new();
        let mut proxy_rates = Vec::new();
        let mut proxy_lat: Vec<u32> = Vec::new();
        println!(
            "\npeak: {} messages per phase, {} rounds",
            a.messages, a.rounds
        );
        let mut cpu = Vec::new();
        for round in 1..=a.rounds {
            let meter = Meters::start(kafka);
            let d = direct::produce(
                config,
                &kafka.bootstrap,
                TOPIC,
                a.devices,
                a.messages,
                &body,
            )
            .await?;
            let d_cpu = meter.cores();
            println!("round {round}: direct producer {d:>10.0} msg/s ({d_cpu})");
            direct_rates.push(d);
            // The direct producer's warm-up writes one record per partition.
            appended += a.messages + a.partitions as u64;
            let meter = Meters::start(kafka);
            let (p, acked, lat) = peak_through_proxy(addr, a, &body).await?;
            let p_cpu = meter.cores();
            println!("round {round}: through proxy   {p:>10.0} msg/s ({p_cpu})");
            cpu.push((d_cpu, p_cpu));
            proxy_rates.push(p);
            proxy_lat.extend(lat);
            appended += acked;
        }
        let d = Spread::of(&direct_rates).context("no rounds")?;
        let p = Spread::of(&proxy_rates).context("no rounds")?;
        let mut table = Table::new(&[
            "path",
            &format!("QoS 1 msg/s, median of {} rounds", a.rounds),
            "min",
            "max",
        ]);
        for (path, s) in [
            ("direct rdkafka producer", d),
            ("through mqtt-kafka-proxy", p),
        ] {
            table.row(&[
                path.to_string(),
                format!("{:.0}", s.median),
                format!("{:.0}", s.min),
                format!("{:.0}", s.max),
            ]);
        }
        table.row(&[
            "ratio proxy / direct (medians)",
            &format!("{:.2}", p.median / d.median),
            "",
            "",
        ]);
        let ratios: Vec<f64> = proxy_rates
            .iter()
            .zip(&direct_rates)
            .map(|(p, d)| p / d)
            .collect();
        if let Some(r) = Spread::of(&ratios) {
            table.row(&["ratio per round, median [min–max]", &r.show(2), "", ""]);
        }
        table.row(&Cores::row(
            "CPU cores (process, brokers) at the peak",
            &cpu,
        ));
        println!();
        print!("{table}");
        if let Some(l) = Latency::of_us(&mut proxy_lat) {
            println!(
                "PUBACK latency through the proxy at the peak (all rounds, window {} per device): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
                a.window, l.p50_ms, l.p99_ms, l.p999_ms
            );
        }
        peak_proxy = Some(p.median);
    }

    if a.latency_rounds > 0 {
        let rate = match (a.rate, peak_proxy) {
            (Some(r), _) => r,
            (None, Some(p)) => p / 2.0,
            (None, None) => anyhow::bail!("--rounds 0 needs --rate for the latency rounds"),
        };
        anyhow::ensure!(rate > 0.0, "the fixed rate must be positive");
        appended += latency_rounds(a, config, kafka, addr, &body, rate).await?;
    }
    Ok(appended)
}

/// The fixed-rate rounds; returns how many records they appended.
async fn latency_rounds(
    a: &IngestArgs,
    config: &Config,
    kafka: &BenchKafka,
    addr: std::net::SocketAddr,
    body: &[u8],
    rate: f64,
) -> Result<u64> {
    let phase = Duration::from_secs_f64(a.latency_s);
    anyhow::ensure!(
        phase > WARMUP,
        "--latency-s must be longer than the 1 s warm-up"
    );
    anyhow::ensure!(
        rate * (a.latency_s - WARMUP.as_secs_f64()) >= 10.0 * a.devices as f64,
        "at {rate} msg/s for {} s each of the {} devices sends fewer than 10 messages after the warm-up: raise --latency-s or lower --devices",
        a.latency_s,
        a.devices
    );
    println!(
        "\nlatency at a fixed rate: {rate:.0} msg/s{} for {:.0} s per phase ({} devices at {:.1} msg/s each through the proxy; first {} s of each phase not counted), {} rounds alternating direct and proxy",
        if a.rate.is_some() { "" } else { " (half the median peak through the proxy)" },
        a.latency_s,
        a.devices,
        rate / a.devices as f64,
        WARMUP.as_secs(),
        a.latency_rounds
    );
    let mut appended = 0;
    let mut rows: Vec<(Latency, Latency)> = Vec::new();
    let mut rates: Vec<(f64, f64)> = Vec::new();
    let mut cpu = Vec::new();
    for round in 1..=a.latency_rounds {
        let pace = Pace::for_duration(rate, phase);
        let meter = Meters::start(kafka);
        let mut d = direct::produce_paced(
            config,
            &kafka.bootstrap,
            TOPIC,
            a.devices,
            pace,
            WARMUP,
            body,
        )
        .await?;
        let d_cpu = meter.cores();
        appended += d.appended;
        let dl = Latency::of_us(&mut d.latency_us).context("no direct samples")?;
        let meter = Meters::start(kafka);
        let (p_rate, acked, mut p_lat) = paced_through_proxy(addr, a, body, rate, phase).await?;
        let p_cpu = meter.cores();
        cpu.push((d_cpu, p_cpu));
        appended += acked;
        let pl = Latency::of_us(&mut p_lat).context("no proxy samples")?;
        println!(
            "round {round}: direct {:.0} msg/s, delivery report p50 {:.2} ms p99 {:.2} ms ({d_cpu}) | proxy {:.0} msg/s, PUBACK p50 {:.2} ms p99 {:.2} ms ({p_cpu}) | added p50 {:+.2} ms p99 {:+.2} ms",
            d.rate, dl.p50_ms, dl.p99_ms, p_rate, pl.p50_ms, pl.p99_ms,
            pl.p50_ms - dl.p50_ms, pl.p99_ms - dl.p99_ms
        );
        rows.push((dl, pl));
        rates.push((d.rate, p_rate));
    }
    let col = |f: &dyn Fn(&(Latency, Latency)) -> f64| {
        Spread::of(&rows.iter().map(f).collect::<Vec<_>>()).map_or("-".into(), |s| s.show(2))
    };
    let mut table = Table::new(&[
        &format!(
            "at {rate:.0} msg/s, ms, median of {} rounds [min–max]",
            rows.len()
        ),
        "p50",
        "p99",
    ]);
    table
        .row(&[
            "direct producer: send → delivery report".to_string(),
            col(&|r| r.0.p50_ms),
            col(&|r| r.0.p99_ms),
        ])
        .row(&[
            "through the proxy: PUBLISH written → PUBACK read".to_string(),
            col(&|r| r.1.p50_ms),
            col(&|r| r.1.p99_ms),
        ])
        .row(&[
            "**added by the proxy** (proxy − direct, per round)".to_string(),
            col(&|r| r.1.p50_ms - r.0.p50_ms),
            col(&|r| r.1.p99_ms - r.0.p99_ms),
        ])
        .row(&Cores::row("CPU cores (process, brokers)", &cpu));
    let rate_of = |f: &dyn Fn(&(f64, f64)) -> f64| {
        Spread::of(&rates.iter().map(f).collect::<Vec<_>>()).map_or("-".into(), |s| s.show(0))
    };
    println!();
    print!("{table}");
    println!(
        "achieved msg/s: direct {}, proxy {}",
        rate_of(&|r| r.0),
        rate_of(&|r| r.1)
    );
    Ok(appended)
}

/// CPU used during one phase: this process (the proxy and the simulated
/// devices, or the direct producer) and the brokers (the cluster's JVMs; on
/// the embedded broker they are part of this process).
struct Meters {
    process: CpuMeter,
    brokers: Option<CpuMeter>,
}

impl Meters {
    fn start(kafka: &BenchKafka) -> Meters {
        let brokers = kafka.broker_pids();
        Meters {
            process: CpuMeter::start(vec![std::process::id()]),
            brokers: (!brokers.is_empty()).then(|| CpuMeter::start(brokers)),
        }
    }

    fn cores(&self) -> Cores {
        Cores {
            process: self.process.cores(),
            brokers: self.brokers.as_ref().map(CpuMeter::cores),
        }
    }
}

/// Cores used over a phase.
#[derive(Debug, Clone, Copy)]
struct Cores {
    process: f64,
    brokers: Option<f64>,
}

impl std::fmt::Display for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu: process {:.2}", self.process)?;
        if let Some(b) = self.brokers {
            write!(f, ", brokers {b:.2}")?;
        }
        Ok(())
    }
}

impl Cores {
    /// A table row: median [min–max] cores of the direct and proxy phases.
    fn row(what: &str, phases: &[(Cores, Cores)]) -> [String; 3] {
        let show = |f: &dyn Fn(&(Cores, Cores)) -> Option<f64>| {
            let v: Vec<f64> = phases.iter().filter_map(f).collect();
            Spread::of(&v).map_or("-".into(), |s| s.show(2))
        };
        [
            format!("{what}, median [min–max]"),
            format!(
                "direct phase: {}, {}",
                show(&|c| Some(c.0.process)),
                show(&|c| c.0.brokers)
            ),
            format!(
                "proxy phase: {}, {}",
                show(&|c| Some(c.1.process)),
                show(&|c| c.1.brokers)
            ),
        ]
    }
}

/// Every device publishes `messages / devices` as fast as its window
/// allows. Returns (acknowledged per second, acknowledged, PUBACK latencies).
async fn peak_through_proxy(
    addr: std::net::SocketAddr,
    a: &IngestArgs,
    body: &[u8],
) -> Result<(f64, u64, Vec<u32>)> {
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
    let (acked, lat) = lean::gather(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok((acked as f64 / secs, acked, lat))
}

/// Every device connects, then publishes at `rate / devices` for `phase`,
/// the devices' schedules spread evenly over one period so their messages
/// do not arrive in step. Returns (acknowledged per second, acknowledged,
/// PUBACK latencies after the warm-up).
async fn paced_through_proxy(
    addr: std::net::SocketAddr,
    a: &IngestArgs,
    body: &[u8],
    rate: f64,
    phase: Duration,
) -> Result<(f64, u64, Vec<u32>)> {
    let mut connecting = tokio::task::JoinSet::new();
    for d in 0..a.devices {
        connecting.spawn(async move {
            let id = worker::device_id(d);
            lean::connect(addr, &id).await.map(|s| (d, s))
        });
    }
    let mut streams = Vec::with_capacity(a.devices as usize);
    while let Some(r) = connecting.join_next().await {
        streams.push(r??);
    }
    let per_device = rate / a.devices as f64;
    let pace = Pace::for_duration(per_device, phase);
    let period = Duration::from_secs_f64(1.0 / per_device);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let measure_from = start.into_std() + WARMUP;
    let body: Arc<[u8]> = body.into();
    let mut tasks = tokio::task::JoinSet::new();
    for (d, stream) in streams {
        let body = body.clone();
        let window = a.window;
        let offset = period.mul_f64(d as f64 / a.devices as f64);
        tasks.spawn(async move {
            let id = worker::device_id(d);
            let topic = format!("devices/{id}/events/state");
            lean::publish_qos1_paced(
                stream,
                &id,
                &topic,
                &body,
                pace,
                start + offset,
                measure_from,
                window,
            )
            .await
        });
    }
    let (acked, lat) = lean::gather(tasks).await?;
    let secs = start.elapsed().as_secs_f64();
    Ok((acked as f64 / secs, acked, lat))
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
