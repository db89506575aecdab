//! The rig: one command that starts Kafka (`--kafka embedded`: the
//! embedded broker as its own process, `mqtt-kafka-proxy dev-kafka`;
//! `--kafka cluster`: a real Apache Kafka cluster of `--brokers` JVM nodes,
//! see [`backend`]), K proxy replicas sharing one port with SO_REUSEPORT
//! (the kernel spreads connections like an L4 load balancer), the verifier,
//! and worker processes that simulate the fleet from several loopback
//! source addresses; it samples memory and CPU of every process (the
//! cluster's nodes together as "broker"), shows progress, measures a direct
//! producer into the same Kafka, writes the report, and tears everything
//! down, on error paths too.

//!
//! Layout: [`backend`] (the Kafka), [`process`] (children, the replicas'
//! launcher, /proc usage), [`config`] (the replicas' config file),
//! [`fleet`] (the worker processes and their ledgers), [`faults`] (the
//! fault matrix), [`mosquitto`] (the reference broker); this file runs them
//! in order and samples everything once a second.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{Report, Sample};
use crate::verify::Verifier;
use crate::worker::Scenario;

pub(crate) mod backend;
mod config;
pub mod faults;
mod fleet;
mod mosquitto;
mod process;

pub use backend::KafkaBackend;
use backend::RigKafka;
use config::replica_config;
use fleet::Fleet;
use process::{free_port, lock, pids_usage, tell, Launcher, Proc};

/// The topics the fleet writes through the replicas (the default routes).
const INGEST_TOPICS: [&str; 2] = ["iot.events", "iot.snapshots"];
/// The topic the direct-producer comparison writes.
const DIRECT_TOPIC: &str = "bench.direct";

/// Options of `load-tests rig`.
#[derive(clap::Args, Clone, Debug)]
pub struct RigArgs {
    /// What the devices do.
    #[arg(long, value_enum, default_value = "fleet")]
    pub scenario: Scenario,
    /// Simulated devices.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u64,
    /// Proxy replicas (processes) sharing the port.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Devices connect over TLS (verifying the generated CA).
    #[arg(long)]
    pub tls: bool,
    /// Time compression of the fleet scenario.
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Seconds of traffic after the idle period.
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    /// Quiet seconds after everyone connected (idle memory is measured here).
    #[arg(long, default_value_t = 5.0)]
    pub idle_s: f64,
    /// Target connects per second, all workers together.
    #[arg(long, default_value_t = 2_000.0)]
    pub connect_rate: f64,
    /// Change events per device per hour (fleet), before --speed.
    #[arg(long, default_value_t = 10.0)]
    pub events_per_hour: f64,
    /// Snapshot period in seconds (fleet), before --speed.
    #[arg(long, default_value_t = 300.0)]
    pub snapshot_period_s: f64,
    /// Share of messages published at QoS 0.
    #[arg(long, default_value_t = 0.0)]
    pub qos0_share: f64,
    /// Unacknowledged messages per device in the burst scenario.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Share of devices speaking MQTT 5.0 (the others 3.1.1).
    #[arg(long, default_value_t = 0.0)]
    pub v5_share: f64,
    /// The replicas' `kafka.linger_ms`: larger batches cost latency but spare
    /// the single-threaded embedded broker (see the README).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Partitions of each topic on the broker (on the cluster: the
    /// replicas' `[kafka.topics] partitions`).
    #[arg(long, default_value_t = 24)]
    pub partitions: u32,
    /// Which Kafka: the embedded mock broker in its own process, or a real
    /// Apache Kafka cluster (KRaft JVM nodes on loopback, RF min(3, brokers),
    /// min.insync.replicas min(2, brokers)).
    #[arg(long, value_enum, default_value = "embedded")]
    pub kafka: KafkaBackend,
    /// Brokers of the real cluster (with `--kafka cluster`).
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// Most devices per worker process (each process may hold < 20,000 files).
    #[arg(long, default_value_t = 12_500)]
    pub devices_per_worker: u64,
    /// Also measure Mosquitto's idle memory per connection (plain and TLS) with the same code.
    #[arg(long)]
    pub mosquitto: bool,
    /// Idle connections for the Mosquitto reference.
    #[arg(long, default_value_t = 10_000)]
    pub mosquitto_devices: u64,
    /// Where the report and logs go.
    #[arg(long, default_value = "load-tests/results/latest")]
    pub out: PathBuf,
}

/// Runs the rig; returns the report (the caller fails the process if anything was lost).
pub async fn run(a: RigArgs) -> Result<Report> {
    run_with(a, None).await
}

/// Runs the rig, with the fault matrix `plan` played during the traffic
/// when given (then the traffic lasts as long as the plan).
pub async fn run_with(a: RigArgs, plan: Option<faults::Plan>) -> Result<Report> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("exe dir")?;
    let proxy_bin = bin_dir.join("mqtt-kafka-proxy");
    if !proxy_bin.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release --workspace`",
            proxy_bin.display()
        );
    }
    let out = a.out.clone();
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    // Certificates for the replicas and the devices.
    let certs = out.join("certs");
    let ca = mqtt_kafka_proxy::server::tls::generate_dev_certs(
        &certs.join("server.crt"),
        &certs.join("server.key"),
    )?;

    // Every topic the replicas use (routes, commands, sessions, lifecycle),
    // read from their own config.
    let replica_topics = mqtt_kafka_proxy::Config::parse(&replica_config(&a, 0, "", &certs, None))
        .map_err(|e| anyhow::anyhow!("the replicas' config: {e}"))?
        .kafka_topics();

    // The shared Kafka: the embedded broker's process or the cluster's JVMs.
    let mut kafka = RigKafka::start(
        a.kafka,
        a.brokers,
        a.partitions,
        &replica_topics,
        DIRECT_TOPIC,
        &proxy_bin,
        &out,
        plan.is_some(),
    )
    .await?;
    // Every exit from here on, error or not, stops Kafka before returning:
    // the cluster's JVMs must not outlive the run.
    let result = drive(
        &a, &mut kafka, &exe, &proxy_bin, &out, &ca, &certs, epoch, plan,
    )
    .await;
    kafka.stop().await;
    result
}

/// Everything after Kafka is up: replicas, verifier, workers, the direct
/// producer, teardown of the replicas and Kafka, the report.
#[allow(clippy::too_many_arguments)]
async fn drive(
    a: &RigArgs,
    kafka: &mut RigKafka,
    exe: &Path,
    proxy_bin: &Path,
    out: &Path,
    ca: &Path,
    certs: &Path,
    epoch: u64,
    plan: Option<faults::Plan>,
) -> Result<Report> {
    let bootstrap = kafka.bootstrap.clone();

    // K replicas on one port.
    let port = free_port()?;
    let config = replica_config(a, port, &kafka.replica_bootstrap, certs, plan.as_ref());
    let config_path = out.join("proxy.toml");
    std::fs::write(&config_path, config)?;
    let launcher = Launcher::new(proxy_bin, config_path, out);
    let mut replicas = Vec::new();
    for _ in 0..a.replicas {
        replicas.push(launcher.start()?);
    }
    let replicas = Arc::new(Mutex::new(replicas));
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let usage = |procs: &[Proc]| pids_usage(&procs.iter().map(Proc::pid).collect::<Vec<_>>());
    // Replicas come and go under the fault matrix: the CPU of those gone
    // is kept by the launcher.
    let replica_usage = |replicas: &Arc<Mutex<Vec<Proc>>>| {
        let (rss, cpu) = usage(&lock(replicas));
        (rss, cpu + launcher.retired_cpu())
    };
    let (baseline_rss, proxy_cpu0) = replica_usage(&replicas);
    let (_, broker_cpu0) = pids_usage(&kafka.pids());

    kafka.await_topics(&INGEST_TOPICS, a.partitions).await?;
    println!("kafka: {}", kafka.description);
    let verifier = Verifier::start(
        &bootstrap,
        &INGEST_TOPICS,
        a.partitions,
        a.devices,
        epoch,
        // The mock broker answers a fetch with one message set per
        // partition, so the verifier must fetch often to keep up; a real
        // broker fills the answer, and polling it every 10 ms would only
        // add broker CPU to what is measured.
        match a.kafka {
            KafkaBackend::Embedded => 10,
            KafkaBackend::Cluster => 100,
        },
    )?;

    // Workers: slices of the fleet, each from its own source address.
    let mut fleet = Fleet::start(a, exe, out, addr, ca, epoch)?;
    let stdins = fleet.stdins.clone();

    let bar = ProgressBar::new(a.devices);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} connected | {msg}")?
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut timeline = Vec::new();
    let (mut last_acked, mut peak_connected) = (0u64, 0u64);
    let mut idle_rss: Option<u64> = None;
    let mut all_connected_at: Option<Instant> = None;
    // Peaks while connecting (handshakes in flight) and while the traffic
    // flows, apart: "under load" is the second.
    let (mut connect_peak_rss, mut load_peak_rss) = (baseline_rss, baseline_rss);
    let mut broker_peak_rss = 0u64;
    let mut last_cpu = (proxy_cpu0, broker_cpu0, 0.0);
    // The fault matrix, once traffic has started; then the workers' traffic
    // lasts until the plan is done.
    let mut plan = plan;
    let mut played: Option<tokio::task::JoinHandle<Result<Vec<faults::Window>>>> = None;
    let mut windows: Option<Result<Vec<faults::Window>>> = None;
    // When the traffic really ran (under a plan it ends when the plan does).
    let (mut traffic_from, mut traffic_to): (Option<Instant>, Option<Instant>) = (None, None);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snapshot = fleet.snapshot();
        let connected: u64 = snapshot.iter().map(|p| p.connected).sum();
        let acked: u64 = snapshot.iter().map(|p| p.acked).sum();
        let p99 = snapshot.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let everyone = snapshot.iter().all(|p| p.all_connected_s.is_some());
        if everyone && all_connected_at.is_none() {
            all_connected_at = Some(Instant::now());
            // The whole fleet starts its traffic together, after the idle period.
            tell(&stdins, "go");
            traffic_from = Some(Instant::now() + Duration::from_secs_f64(a.idle_s));
            if let Some(p) = plan.take() {
                let stage = faults::Stage {
                    started,
                    traffic_in: Duration::from_secs_f64(a.idle_s),
                    replicas: replicas.clone(),
                    launcher: launcher.clone(),
                    stdins: stdins.clone(),
                    cluster: kafka.cluster(),
                    link: kafka.link(),
                    bootstrap: bootstrap.clone(),
                    topics: INGEST_TOPICS.iter().map(|t| t.to_string()).collect(),
                };
                played = Some(tokio::spawn(faults::play(p, stage)));
            }
        }
        if played.as_ref().is_some_and(|h| h.is_finished()) {
            if let Some(h) = played.take() {
                windows = Some(
                    h.await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("fault plan: {e}"))),
                );
                // Plan done (or failed): the traffic ends, the devices drain.
                tell(&stdins, "stop");
                traffic_to = Some(Instant::now());
            }
        }
        let (rss, proxy_cpu) = replica_usage(&replicas);
        let (broker_rss, broker_cpu) = pids_usage(&kafka.pids());
        let (_, workers_cpu) = usage(&fleet.workers);
        let cores = |now: f64, before: f64| (now - before).max(0.0);
        // Idle memory: everyone connected, traffic not started yet.
        if let Some(at) = all_connected_at {
            let settle = Duration::from_secs_f64((a.idle_s * 0.6).min(a.idle_s - 1.0).max(0.0));
            if idle_rss.is_none() && at.elapsed() >= settle {
                idle_rss = Some(rss);
            }
        }
        let flowing = traffic_from.is_some_and(|t| Instant::now() >= t) && traffic_to.is_none();
        if flowing {
            load_peak_rss = load_peak_rss.max(rss);
        } else if all_connected_at.is_none() {
            connect_peak_rss = connect_peak_rss.max(rss);
        }
        broker_peak_rss = broker_peak_rss.max(broker_rss);
        peak_connected = peak_connected.max(connected);
        timeline.push(Sample {
            t: started.elapsed().as_secs_f64(),
            connected,
            acked_per_s: acked.saturating_sub(last_acked) as f64,
            puback_p99_ms: p99 as f64 / 1000.0,
            proxy_rss_mib: rss as f64 / (1 << 20) as f64,
            broker_rss_mib: broker_rss as f64 / (1 << 20) as f64,
            proxy_cores: cores(proxy_cpu, last_cpu.0),
            broker_cores: cores(broker_cpu, last_cpu.1),
            workers_cores: cores(workers_cpu, last_cpu.2),
            reconnects: snapshot.iter().map(|p| p.reconnects).sum(),
            nacked: snapshot.iter().map(|p| p.nacked).sum(),
            told_to_go: snapshot.iter().map(|p| p.told_to_go).sum(),
        });
        last_cpu = (proxy_cpu, broker_cpu, workers_cpu);
        // Without a terminal the bar is hidden: print a line every 10 s for logs.
        if bar.is_hidden() && timeline.len() % 10 == 0 {
            println!(
                "t={:>4.0}s connected={} acked={} ({:.0}/s) puback_p99={:.1}ms found={} proxy_rss={:.0}MiB broker_rss={:.0}MiB cpu(proxy/broker/workers)={:.2}/{:.2}/{:.2}",
                started.elapsed().as_secs_f64(),
                connected,
                acked,
                acked.saturating_sub(last_acked),
                p99 as f64 / 1000.0,
                verifier.found(),
                rss as f64 / (1 << 20) as f64,
                broker_rss as f64 / (1 << 20) as f64,
                timeline.last().map_or(0.0, |s| s.proxy_cores),
                timeline.last().map_or(0.0, |s| s.broker_cores),
                timeline.last().map_or(0.0, |s| s.workers_cores),
            );
        }
        bar.set_position(connected.min(a.devices));
        bar.set_message(format!(
            "{} acked ({:.0}/s), p99 {:.1} ms, verifier {} found, proxy RSS {:.0} MiB",
            acked,
            acked.saturating_sub(last_acked),
            p99 as f64 / 1000.0,
            verifier.found(),
            rss as f64 / (1 << 20) as f64
        ));
        last_acked = acked;
        if fleet.exited() {
            break;
        }
    }
    bar.finish();
    fleet.join_readers();
    let (_, proxy_cpu1) = replica_usage(&replicas);
    let (_, broker_cpu1) = pids_usage(&kafka.pids());

    // Ledger → verdict.
    let ledgers = fleet.ledgers(a.devices)?;
    let (verdict, parts) = verifier.finish_by_part(&ledgers.acked, &ledgers.marks)?;
    let snapshot = fleet.snapshot();
    let sent: u64 = snapshot.iter().map(|p| p.sent).sum();
    let sent_qos0: u64 = snapshot.iter().map(|p| p.sent_qos0).sum();
    let acked: u64 = snapshot.iter().map(|p| p.acked).sum();
    let reconnects: u64 = snapshot.iter().map(|p| p.reconnects).sum();
    let connect_time_s = snapshot
        .iter()
        .filter_map(|p| p.all_connected_s)
        .fold(0.0, f64::max);
    let hist = fleet.puback_latency()?;
    let q = |x: f64| {
        if hist.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(x) as f64 / 1000.0
        }
    };

    // The same records straight into the same Kafka.
    let messages = verdict.found_qos1.max(acked).max(1);
    let sample = crate::worker::payload(
        "dev-000000",
        epoch,
        0,
        mqtt_kafka_proxy::mqtt::packet::QoS::AtLeastOnce,
        "door",
        &mut crate::device::Rng::new(1),
    );
    // The direct producer runs with the replicas' producer settings.
    let mut direct_config = mqtt_kafka_proxy::Config::default();
    direct_config.kafka.linger_ms = a.linger_ms;
    let direct_msg_s = crate::direct::produce(
        &direct_config,
        &bootstrap,
        DIRECT_TOPIC,
        a.devices,
        messages,
        &sample,
    )
    .await?;

    // Tear down: replicas drain on SIGTERM, then Kafka stops (before the
    // Mosquitto reference, which should not share the machine with it).
    for r in lock(&replicas).iter_mut() {
        r.terminate(Duration::from_secs(40));
    }
    kafka.stop().await;

    let traffic_s = match (traffic_from, traffic_to) {
        (Some(from), Some(to)) => to.saturating_duration_since(from).as_secs_f64(),
        _ => a.duration_s,
    }
    .max(1e-9);
    let throughput = acked as f64 / traffic_s;
    let reference = if a.mosquitto {
        Some(
            mosquitto::mosquitto_reference(
                exe,
                out,
                ca,
                a.mosquitto_devices.min(15_000),
                a.connect_rate,
            )
            .await?,
        )
    } else {
        None
    };
    let n = a.devices.max(1) as f64;
    let busy: Vec<&Sample> = timeline.iter().filter(|s| s.acked_per_s > 0.0).collect();
    let avg =
        |f: fn(&Sample) -> f64| busy.iter().map(|s| f(s)).sum::<f64>() / busy.len().max(1) as f64;
    let cores_during_traffic = (
        avg(|s| s.proxy_cores),
        avg(|s| s.broker_cores),
        avg(|s| s.workers_cores),
    );
    let report = Report {
        kafka: kafka.description.clone(),
        broker_rss_peak_mib: broker_peak_rss as f64 / (1 << 20) as f64,
        cores_during_traffic,
        scenario: format!("{:?}", a.scenario).to_lowercase(),
        devices: a.devices,
        replicas: a.replicas,
        workers: fleet.len(),
        tls: a.tls,
        speed: a.speed,
        duration_s: traffic_s,
        partitions: a.partitions,
        linger_ms: a.linger_ms,
        connect_time_s,
        connect_rate_per_s: a.devices as f64 / connect_time_s.max(1e-9),
        peak_connected,
        reconnects,
        sent,
        sent_qos0,
        acked,
        throughput_msg_s: throughput,
        direct_msg_s,
        ratio_proxy_direct: throughput / direct_msg_s.max(1e-9),
        puback_p50_ms: q(0.5),
        puback_p99_ms: q(0.99),
        puback_p999_ms: q(0.999),
        proxy_rss_baseline_mib: baseline_rss as f64 / (1 << 20) as f64,
        proxy_bytes_per_conn_idle: idle_rss
            .map_or(0.0, |r| r.saturating_sub(baseline_rss) as f64 / n),
        proxy_bytes_per_conn_load: load_peak_rss.saturating_sub(baseline_rss) as f64 / n,
        proxy_bytes_per_conn_connecting: connect_peak_rss.saturating_sub(baseline_rss) as f64 / n,
        proxy_cpu_s_per_1k_msgs: (proxy_cpu1 - proxy_cpu0) / (sent.max(1) as f64 / 1000.0),
        broker_cpu_s_per_1k_msgs: (broker_cpu1 - broker_cpu0) / (sent.max(1) as f64 / 1000.0),
        reference,
        faults: match &windows {
            Some(Ok(w)) => faults::rows(w, &timeline, &parts),
            _ => Vec::new(),
        },
        timeline,
        verdict,
    };
    report.write(out)?;
    if let Some(Err(e)) = windows {
        return Err(e.context("the fault plan did not complete; the report shows what ran"));
    }
    Ok(report)
}
