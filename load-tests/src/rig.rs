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

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{Reference, Report, Sample};
use crate::verify::Verifier;
use crate::worker::{Progress, Scenario, WorkerSpec};

pub(crate) mod backend;
pub mod faults;

pub use backend::KafkaBackend;
use backend::RigKafka;

/// The topics the fleet writes through the replicas (the default routes).
const INGEST_TOPICS: [&str; 2] = ["iot.events", "iot.snapshots"];
/// The topic the direct-producer comparison writes.
const DIRECT_TOPIC: &str = "bench.direct";

/// Each finished worker's PUBACK latency histogram, as (µs, count) pairs,
/// filled by the threads that read the workers' stdout.
type Histograms = Arc<Mutex<Vec<Vec<(u64, u64)>>>>;

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

/// A child process that is terminated when dropped.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn terminate(&mut self, grace: Duration) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not exit within {:?}; killing it", self.name, grace);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The workers' stdin: the rig says "go", "mark" and "stop" there.
pub type Stdins = Arc<Mutex<Vec<std::process::ChildStdin>>>;

/// Writes one line to every worker.
fn tell(stdins: &Stdins, line: &str) {
    use std::io::Write;
    for stdin in lock(stdins).iter_mut() {
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts proxy replicas with the run's config (at start-up, and again
/// when the fault matrix replaces one); keeps the CPU time of replicas that
/// are gone so the run's CPU totals stay whole.
#[derive(Clone)]
pub struct Launcher {
    proxy_bin: PathBuf,
    config: PathBuf,
    out: PathBuf,
    /// Replicas started so far (names the logs: replica-0, replica-1, …).
    started: Arc<std::sync::atomic::AtomicUsize>,
    retired_cpu: Arc<Mutex<f64>>,
}

impl Launcher {
    /// Starts one replica and waits until it listens (blocking).
    fn start(&self) -> Result<Proc> {
        let n = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cmd = Command::new(&self.proxy_bin);
        cmd.arg("--config").arg(&self.config).env("NO_COLOR", "1");
        let (p, _) = spawn_until(
            &format!("replica-{n}"),
            cmd,
            "listening",
            &self.out.join(format!("replica-{n}.log")),
        )?;
        Ok(p)
    }

    /// Notes the CPU time of a replica about to go.
    fn retire(&self, p: &Proc) {
        *lock(&self.retired_cpu) += proc_usage(p.pid()).1;
    }

    fn retired_cpu(&self) -> f64 {
        *lock(&self.retired_cpu)
    }
}

/// RSS in bytes and CPU seconds of a process, from /proc.
pub fn proc_usage(pid: u32) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
        * 1024;
    // SAFETY: sysconf is always safe to call.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// Summed RSS and CPU seconds of several processes (the cluster's nodes).
fn pids_usage(pids: &[u32]) -> (u64, f64) {
    pids.iter()
        .map(|p| proc_usage(*p))
        .fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The child gets SIGTERM when the rig dies (even by SIGKILL), so no
/// replica or worker outlives it. `PR_SET_PDEATHSIG` fires when the
/// *spawning thread* exits: the rig spawns from the thread that runs
/// `block_on`, which lives as long as the process.
fn tie_to_rig(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns a process and waits for a stdout line containing `ready`; returns
/// the process and that line. Later stdout lines go to `log`.
fn spawn_until(name: &str, mut cmd: Command, ready: &str, log: &Path) -> Result<(Proc, String)> {
    let stderr = std::fs::File::create(log.with_extension("err"))?;
    cmd.stdout(Stdio::piped()).stderr(stderr);
    // Replacement replicas are started from blocking-pool threads, which
    // exit when idle: the spawn goes through a thread that does not.
    let mut child = kafka_cluster::spawn_tied_with(cmd, libc::SIGTERM)
        .with_context(|| format!("start {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut proc = Proc {
        name: name.to_owned(),
        child,
    };
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(ready) => break l,
            Some(Ok(_)) => {}
            _ => {
                let _ = proc.child.wait();
                bail!(
                    "{name} exited before it was ready; see {}",
                    log.with_extension("err").display()
                );
            }
        }
    };
    let mut out = std::fs::File::create(log)?;
    std::thread::spawn(move || {
        use std::io::Write;
        for l in lines.map_while(Result::ok) {
            let _ = writeln!(out, "{l}");
        }
    });
    Ok((proc, line))
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
    let launcher = Launcher {
        proxy_bin: proxy_bin.to_owned(),
        config: config_path,
        out: out.to_owned(),
        started: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        retired_cpu: Arc::new(Mutex::new(0.0)),
    };
    let mut replicas = Vec::new();
    for _ in 0..a.replicas {
        replicas.push(launcher.start()?);
    }
    let replicas = Arc::new(Mutex::new(replicas));
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let usage = |procs: &[Proc]| {
        procs
            .iter()
            .map(|p| proc_usage(p.pid()))
            .fold((0u64, 0f64), |a, b| (a.0 + b.0, a.1 + b.1))
    };
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
    let workers_n = a.devices.div_ceil(a.devices_per_worker).max(1) as usize;
    let per = a.devices.div_ceil(workers_n as u64);
    let progress: Arc<Mutex<Vec<Progress>>> =
        Arc::new(Mutex::new(vec![Progress::default(); workers_n]));
    let histograms: Histograms = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    let stdins: Stdins = Arc::new(Mutex::new(Vec::new()));
    let mut ledgers = Vec::new();
    let mut readers = Vec::new();
    for w in 0..workers_n {
        let first = w as u64 * per;
        let count = per.min(a.devices.saturating_sub(first));
        if count == 0 {
            break;
        }
        let ledger = out.join(format!("ledger-{w}.txt"));
        ledgers.push(ledger.clone());
        let spec = WorkerSpec {
            index: w,
            addr,
            source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + w as u8)),
            tls_ca: a.tls.then(|| ca.to_path_buf()),
            first,
            count,
            scenario: a.scenario,
            connect_rate: a.connect_rate / workers_n as f64,
            idle_s: a.idle_s,
            duration_s: a.duration_s,
            speed: a.speed,
            events_per_hour: a.events_per_hour,
            snapshot_period_s: a.snapshot_period_s,
            qos0_share: a.qos0_share,
            window: a.window,
            v5_share: a.v5_share,
            epoch,
            ledger,
        };
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(out.join(format!("worker-{w}.err")))?);
        tie_to_rig(&mut cmd);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("worker stdout")?;
        lock(&stdins).push(child.stdin.take().context("worker stdin")?);
        let (progress, histograms) = (progress.clone(), histograms.clone());
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(p) = serde_json::from_str::<Progress>(&line) {
                    if p.done {
                        if let Ok(mut h) = histograms.lock() {
                            h.push(p.histogram.clone());
                        }
                    }
                    if let Ok(mut all) = progress.lock() {
                        all[p.worker] = Progress {
                            histogram: Vec::new(),
                            ..p
                        };
                    }
                }
            }
        }));
        workers.push(Proc {
            name: format!("worker-{w}"),
            child,
        });
    }

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
    let mut peak_rss = baseline_rss;
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
        let snapshot = progress.lock().map(|p| p.clone()).unwrap_or_default();
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
        let (_, workers_cpu) = usage(&workers);
        let cores = |now: f64, before: f64| (now - before).max(0.0);
        // Idle memory: everyone connected, traffic not started yet.
        if let Some(at) = all_connected_at {
            let settle = Duration::from_secs_f64((a.idle_s * 0.6).min(a.idle_s - 1.0).max(0.0));
            if idle_rss.is_none() && at.elapsed() >= settle {
                idle_rss = Some(rss);
            }
        }
        peak_rss = peak_rss.max(rss);
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
        if workers
            .iter_mut()
            .all(|w| matches!(w.child.try_wait(), Ok(Some(_))))
        {
            break;
        }
    }
    bar.finish();
    for r in readers {
        let _ = r.join();
    }
    let (_, proxy_cpu1) = replica_usage(&replicas);
    let (_, broker_cpu1) = pids_usage(&kafka.pids());

    // Ledger → verdict.
    let mut acked_per_device = vec![0u64; a.devices as usize];
    let mut marks: Vec<Vec<u64>> = Vec::new();
    for l in &ledgers {
        for line in std::fs::read_to_string(l)
            .with_context(|| format!("read {}", l.display()))?
            .lines()
        {
            let mut it = line.split_whitespace();
            if let (Some(d), Some(n)) = (it.next(), it.next()) {
                let d = d.parse::<usize>()?;
                acked_per_device[d] = n.parse()?;
                for (k, m) in it.enumerate() {
                    if marks.len() <= k {
                        marks.push(vec![0; a.devices as usize]);
                    }
                    marks[k][d] = m.parse()?;
                }
            }
        }
    }
    let (verdict, parts) = verifier.finish_by_part(&acked_per_device, &marks)?;
    let snapshot = progress.lock().map(|p| p.clone()).unwrap_or_default();
    let sent: u64 = snapshot.iter().map(|p| p.sent).sum();
    let sent_qos0: u64 = snapshot.iter().map(|p| p.sent_qos0).sum();
    let acked: u64 = snapshot.iter().map(|p| p.acked).sum();
    let reconnects: u64 = snapshot.iter().map(|p| p.reconnects).sum();
    let connect_time_s = snapshot
        .iter()
        .filter_map(|p| p.all_connected_s)
        .fold(0.0, f64::max);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for h in histograms.lock().map(|h| h.clone()).unwrap_or_default() {
        for (v, c) in h {
            let _ = hist.record_n(v.max(1), c);
        }
    }
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
            mosquitto_reference(
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
        workers: ledgers.len(),
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
        proxy_bytes_per_conn_load: peak_rss.saturating_sub(baseline_rss) as f64 / n,
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

/// The replicas' config file: one port for all (SO_REUSEPORT), TCP or TLS,
/// limits sized for the simulator, Kafka at `bootstrap`; on a real cluster
/// the replicas create their topics with `--partitions` partitions and the
/// brokers' default replication factor.
fn replica_config(
    a: &RigArgs,
    port: u16,
    bootstrap: &str,
    certs: &Path,
    plan: Option<&faults::Plan>,
) -> String {
    // Under the fault matrix: its delivery timeout and ordering, and a
    // drain that tells devices to go over a few seconds, as in production.
    let (delivery_timeout, ordering, shutdown) = match plan {
        Some(p) => (
            format!(
                "delivery_timeout_ms = {}\n{}",
                p.delivery_timeout_ms,
                p.queue_max_messages
                    .map(|n| format!("queue_max_messages = {n}\n"))
                    .unwrap_or_default()
            ),
            format!("ordering = \"{}\"\n", p.ordering),
            "[shutdown]\ndisconnect_spread_ms = 5000\n".to_string(),
        ),
        None => Default::default(),
    };
    let topics_section = match a.kafka {
        // The embedded broker has no admin API: it is started with every
        // topic the replicas use.
        KafkaBackend::Embedded => String::new(),
        KafkaBackend::Cluster => format!(
            "[kafka.topics]\npartitions = {}\nreplication_factor = -1\n",
            a.partitions
        ),
    };
    format!(
        r#"[listeners]
max_connections = 19000
reuse_port = true
[listeners.tcp]
enabled = {tcp}
bind = "127.0.0.1:{port}"
[listeners.tls]
enabled = {tls}
bind = "127.0.0.1:{port}"
cert_path = "{cert}"
key_path = "{key}"
generate_dev_certs = false
[mqtt]
connect_timeout_ms = 60000
{ordering}# The simulator puts 12,500 devices behind one source address.
[limits]
connects_per_second_per_source = 0
[ops]
bind = "127.0.0.1:0"
[listeners.ws]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
proxy_protocol = false
[listeners.wss]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
proxy_protocol = false
[kafka]
bootstrap_servers = "{bootstrap}"
linger_ms = {linger}
{delivery_timeout}{topics_section}{shutdown}[log]
level = "warn,mqtt_kafka_proxy::proxy=info"
"#,
        tcp = !a.tls,
        tls = a.tls,
        linger = a.linger_ms,
        cert = certs.join("server.crt").display(),
        key = certs.join("server.key").display(),
    )
}

/// Mosquitto holding `n` idle plain connections, then (a fresh instance) `n`
/// idle TLS connections, measured with the same workers and /proc sampling.
async fn mosquitto_reference(
    exe: &Path,
    out: &Path,
    ca: &Path,
    n: u64,
    rate: f64,
) -> Result<Reference> {
    let mosquitto = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("mosquitto not found: apt-get install mosquitto")?;
    let certs = ca.parent().context("certs dir")?;
    let mut per_conn = Vec::new();
    for tls in [false, true] {
        let port = free_port()?;
        // `user root`: mosquitto otherwise drops to its own user, which cannot
        // read the 0600 key generated for this run.
        let mut conf = format!("user root\nper_listener_settings false\nallow_anonymous true\nmax_connections -1\nlog_dest stderr\nlog_type error\nlistener {port} 127.0.0.1\n");
        if tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                ca.display(),
                certs.join("server.crt").display(),
                certs.join("server.key").display()
            ));
        }
        let conf_path = out.join(format!(
            "mosquitto-{}.conf",
            if tls { "tls" } else { "plain" }
        ));
        std::fs::write(&conf_path, conf)?;
        let mut child = Proc {
            name: "mosquitto".into(),
            child: Command::new(&mosquitto)
                .arg("-c")
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(out.join("mosquitto.err"))?)
                .spawn()?,
        };
        // Ready when the port accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (base, _) = proc_usage(child.pid());
        let spec = WorkerSpec {
            index: 0,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            source: IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2)),
            tls_ca: tls.then(|| ca.to_owned()),
            first: 0,
            count: n,
            scenario: Scenario::Connect,
            connect_rate: rate,
            idle_s: 8.0,
            duration_s: 0.0,
            speed: 1.0,
            events_per_hour: 0.0,
            snapshot_period_s: 300.0,
            qos0_share: 0.0,
            window: 1,
            v5_share: 0.0,
            epoch: 0,
            ledger: out.join("mosquitto-ledger.txt"),
        };
        let mut worker = Command::new(exe)
            .arg("worker")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = worker.stdout.take().context("stdout")?;
        let mut measured = None;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            let Ok(p) = serde_json::from_str::<Progress>(&line) else {
                continue;
            };
            if let Some(all) = p.all_connected_s {
                if let Some(mut stdin) = worker.stdin.take() {
                    use std::io::Write;
                    let _ = writeln!(stdin, "go");
                }
                if measured.is_none() && p.t > all + 3.0 {
                    measured = Some(proc_usage(child.pid()).0);
                }
            }
        }
        let _ = worker.wait();
        let rss = measured.context("mosquitto: not every connection was established")?;
        per_conn.push(rss.saturating_sub(base) as f64 / n as f64);
        child.terminate(Duration::from_secs(5));
    }
    Ok(Reference {
        name: "Mosquitto".into(),
        connections: n,
        plain_bytes_per_conn: per_conn[0],
        tls_bytes_per_conn: per_conn[1],
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use mqtt_kafka_proxy::Config;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        rig: RigArgs,
    }

    fn args(flags: &[&str]) -> RigArgs {
        Cli::parse_from(std::iter::once("rig").chain(flags.iter().copied())).rig
    }

    fn parsed(a: &RigArgs, bootstrap: &str) -> Config {
        let text = replica_config(a, 18830, bootstrap, Path::new("/certs"), None);
        Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_embedded_broker_stays_the_default_with_the_replicas_config_as_before() {
        let a = args(&[]);
        assert_eq!(a.kafka, KafkaBackend::Embedded);
        let c = parsed(&a, "127.0.0.1:9092");
        assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
        // Topics come from the broker: the replicas' topic settings are the defaults.
        assert_eq!(
            c.kafka.topics,
            mqtt_kafka_proxy::config::TopicsConfig::default()
        );
        assert!(c.kafka_topics().contains(&"iot.sessions".to_string()));
    }

    #[test]
    fn on_the_cluster_the_replicas_create_the_topics_with_the_rigs_partitions() {
        let a = args(&["--kafka", "cluster", "--partitions", "12", "--tls"]);
        assert_eq!(
            a.brokers, 3,
            "three brokers unless --brokers says otherwise"
        );
        let bootstrap = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";
        let c = parsed(&a, bootstrap);
        assert_eq!(c.kafka.bootstrap_servers, bootstrap);
        assert!(c.kafka.topics.create);
        assert_eq!(c.kafka.topics.partitions, 12);
        assert_eq!(
            c.kafka.topics.replication_factor, -1,
            "the brokers' default.replication.factor"
        );
        assert!(c.listeners.tls.enabled && !c.listeners.tcp.enabled);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }

    #[test]
    fn broker_usage_sums_every_node() {
        // A sleeping child's RSS does not move between two reads.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // Until exec is done the RSS is the forked test binary's.
        let comm = format!("/proc/{pid}/comm");
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        let (one, _) = pids_usage(&[pid]);
        let (two, _) = pids_usage(&[pid, pid]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(one > 0);
        assert_eq!(two, 2 * one);
        assert_eq!(pids_usage(&[]), (0, 0.0));
    }
}
