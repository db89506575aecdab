//! A worker process: runs one slice of the fleet (well under the 20,000
//! open-file limit) from its own loopback source address, and reports to the
//! rig on stdout — one JSON line per second, then a final line with its
//! PUBACK latency histogram. It writes its ledger (per device: how many QoS 1
//! messages the proxy acknowledged, at the end and at every "mark" the rig
//! sent on stdin) to a file for the verifier.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mqtt_kafka_proxy::mqtt::packet::{QoS, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::device::{self, Outgoing, Rng, Stats, Target};

/// What the fleet does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Change events at random times plus a snapshot every 5 minutes (time compressed by --speed).
    Fleet,
    /// Every device publishes as fast as the proxy acknowledges.
    Burst,
    /// Connect and hold, publishing nothing.
    Connect,
}

/// Everything a worker needs; passed as one JSON argument by the rig.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Worker number, for logs.
    pub index: usize,
    /// Proxy address (all replicas share it with SO_REUSEPORT).
    pub addr: SocketAddr,
    /// Loopback source address of this worker's sockets.
    pub source: IpAddr,
    /// CA file for TLS; plain TCP when absent.
    pub tls_ca: Option<PathBuf>,
    /// First device index of the slice.
    pub first: u64,
    /// Devices in the slice.
    pub count: u64,
    /// Scenario.
    pub scenario: Scenario,
    /// Connects per second for this worker.
    pub connect_rate: f64,
    /// Quiet seconds after all devices of the worker connected (idle memory is measured then).
    pub idle_s: f64,
    /// Seconds of traffic after the quiet period.
    pub duration_s: f64,
    /// Time compression of the fleet scenario.
    pub speed: f64,
    /// Change events per device per hour (fleet).
    pub events_per_hour: f64,
    /// Snapshot period in seconds (fleet), before compression.
    pub snapshot_period_s: f64,
    /// Share of messages sent at QoS 0 (0..=1).
    pub qos0_share: f64,
    /// Unacknowledged messages per device (burst).
    pub window: usize,
    /// Share of devices speaking MQTT 5.0 (the rest 3.1.1), chosen per
    /// device, reproducibly.
    #[serde(default)]
    pub v5_share: f64,
    /// Run id carried in payloads.
    pub epoch: u64,
    /// Where to write the ledger.
    pub ledger: PathBuf,
}

/// One line of progress on stdout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Worker number.
    pub worker: usize,
    /// Seconds since the worker started.
    pub t: f64,
    /// Devices connected now.
    pub connected: u64,
    /// Successful connects so far (reconnects included).
    pub connects: u64,
    /// Failed or dropped connections so far.
    pub connect_failures: u64,
    /// PUBLISH packets written so far.
    pub sent: u64,
    /// QoS 0 PUBLISH packets written so far.
    pub sent_qos0: u64,
    /// PUBACKs so far.
    pub acked: u64,
    /// Reconnects so far.
    pub reconnects: u64,
    /// Negative PUBACKs so far (5.0 devices).
    #[serde(default)]
    pub nacked: u64,
    /// DISCONNECTs from the proxy so far (5.0 devices).
    #[serde(default)]
    pub told_to_go: u64,
    /// PUBACK latency p99 in this interval, µs.
    pub p99_us: u64,
    /// Seconds from start until every device of the slice had connected once.
    pub all_connected_s: Option<f64>,
    /// True on the last line.
    pub done: bool,
    /// Final line: PUBACK latency histogram as (µs, count).
    pub histogram: Vec<(u64, u64)>,
}

/// Microseconds since the Unix epoch: the clock payloads carry, so a
/// receiver in another process can tell a message's age.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The device id for an index: also its client id and Kafka key.
pub fn device_id(index: u64) -> String {
    format!("dev-{index:06}")
}

const KINDS: [&str; 4] = ["door", "power", "temperature", "alarm"];

/// A realistic JSON payload (~150–250 bytes) carrying what the verifier needs:
/// device, epoch, seq, QoS and the send time.
pub fn payload(
    id: &str,
    epoch: u64,
    seq: u64,
    qos: QoS,
    kind: &str,
    rng: &mut Rng,
) -> bytes::Bytes {
    let temp = 15.0 + rng.next_f64() * 15.0;
    let s = format!(
        "{{\"d\":\"{id}\",\"e\":{epoch},\"s\":{seq},\"q\":{q},\"t\":{t},\"kind\":\"{kind}\",\"state\":{{\"power\":\"{p}\",\"door\":\"{door}\",\"temp_c\":{temp:.2},\"rssi_dbm\":{rssi},\"fw\":\"2.4.1\"}}}}",
        q = qos as u8,
        t = now_us(),
        p = if rng.next_f64() < 0.9 { "on" } else { "off" },
        door = if rng.next_f64() < 0.7 { "closed" } else { "open" },
        rssi = -40 - (rng.next_f64() * 50.0) as i32,
    );
    bytes::Bytes::from(s)
}

/// Runs the worker to completion.
pub async fn run(spec: WorkerSpec) -> Result<()> {
    let tls = match &spec.tls_ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert?)?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        }
        None => None,
    };
    let target = Target {
        addr: spec.addr,
        source: spec.source,
        tls,
        keep_alive: Duration::from_secs(60),
    };
    let stats = Arc::new(Stats::default());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let interval = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let started = Instant::now();
    // Devices stop publishing when `stop` flips, then drain their acks.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Per device: QoS 1 messages acknowledged so far; updated on every ack so
    // devices cut off by the drain deadline are still accounted for.
    let ledger: Arc<Vec<AtomicU64>> =
        Arc::new((0..spec.count).map(|_| AtomicU64::new(0)).collect());
    let (first_connects_tx, mut first_connects_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Traffic starts when the rig says "go" on stdin (all workers connected),
    // after the idle period; EOF on stdin counts as "go" for standalone use.
    let (traffic_tx, traffic_rx) = watch::channel::<Option<tokio::time::Instant>>(None);
    let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // "mark" on stdin: remember every device's acknowledged count now, so
    // the rig can tell which acknowledged messages belong to which part of
    // the run (the fault matrix's rows).
    let (mark_tx, mut mark_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = go_tx.send(());
                    return;
                }
                Ok(_) if line.trim() == "go" => {
                    let _ = go_tx.send(());
                }
                Ok(_) if line.trim() == "mark" => {
                    let _ = mark_tx.send(false);
                }
                // The rig's fault matrix ends traffic when its plan is done.
                Ok(_) if line.trim() == "stop" => {
                    let _ = mark_tx.send(true);
                }
                Ok(_) => {}
            }
        }
    });
    let mut marks: Vec<Vec<u64>> = Vec::new();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..spec.count {
        let spec = spec.clone();
        let target = target.clone();
        let stats = stats.clone();
        let hist = hist.clone();
        let interval = interval.clone();
        let ledger = ledger.clone();
        let stop = stop_rx.clone();
        let first_connect = first_connects_tx.clone();
        let traffic = traffic_rx.clone();
        let start_at = started + Duration::from_secs_f64(i as f64 / spec.connect_rate.max(1.0));
        tasks.spawn(async move {
            tokio::time::sleep_until(start_at.into()).await;
            let slot = &ledger[i as usize];
            run_device(
                &spec,
                spec.first + i,
                &target,
                &stats,
                stop,
                traffic,
                first_connect,
                |acked, lat| {
                    slot.store(acked, Ordering::Relaxed);
                    let us = lat.as_micros().max(1) as u64;
                    let _ = hist.lock().map(|mut h| h.record(us));
                    let _ = interval.lock().map(|mut h| h.record(us));
                },
            )
            .await;
        });
    }
    drop(first_connects_tx);

    let mut all_connected_s = None;
    let mut connected_once = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut traffic_end: Option<Instant> = None;
    // After traffic stops, devices get this long to collect their last acks.
    const DRAIN: Duration = Duration::from_secs(60);
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = first_connects_rx.recv() => {
                connected_once += 1;
                if connected_once == spec.count {
                    all_connected_s = Some(started.elapsed().as_secs_f64());
                }
                continue;
            }
            Some(stop) = mark_rx.recv() => {
                if stop {
                    traffic_end = Some(Instant::now());
                } else {
                    marks.push(ledger.iter().map(|n| n.load(Ordering::Relaxed)).collect());
                }
                continue;
            }
            Some(()) = go_rx.recv(), if traffic_end.is_none() => {
                let start = tokio::time::Instant::now() + Duration::from_secs_f64(spec.idle_s);
                let _ = traffic_tx.send(Some(start));
                traffic_end = Some(start.into_std() + Duration::from_secs_f64(spec.duration_s));
                continue;
            }
            Some(_) = tasks.join_next() => {
                if tasks.is_empty() { break; }
                continue;
            }
        }
        if let Some(end) = traffic_end {
            if Instant::now() >= end && !*stop_tx.borrow() {
                let _ = stop_tx.send(true);
            }
            if Instant::now() >= end + DRAIN {
                eprintln!("worker {}: {} devices still waiting for acks after the drain; giving up on them", spec.index, tasks.len());
                tasks.abort_all();
                break;
            }
        }
        let p99 = interval.lock().map(|mut h| {
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(0.99)
            };
            h.reset();
            v
        });
        let line = progress(&spec, &stats, started, all_connected_s, p99.unwrap_or(0));
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        out.flush()?;
    }
    // Write the ledger, then the final line. A line per device: its index,
    // its acknowledged count at the end, then at every mark.
    let mut f = std::io::BufWriter::new(std::fs::File::create(&spec.ledger)?);
    for (i, n) in ledger.iter().enumerate() {
        write!(f, "{} {}", spec.first + i as u64, n.load(Ordering::Relaxed))?;
        for m in &marks {
            write!(f, " {}", m[i])?;
        }
        writeln!(f)?;
    }
    f.flush()?;
    let mut last = progress(&spec, &stats, started, all_connected_s, 0);
    last.done = true;
    last.histogram = hist
        .lock()
        .map(|h| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        })
        .unwrap_or_default();
    writeln!(out, "{}", serde_json::to_string(&last)?)?;
    out.flush()?;
    Ok(())
}

fn progress(
    spec: &WorkerSpec,
    s: &Stats,
    started: Instant,
    all: Option<f64>,
    p99: u64,
) -> Progress {
    Progress {
        worker: spec.index,
        t: started.elapsed().as_secs_f64(),
        connected: s.connected.load(Ordering::Relaxed),
        connects: s.connects.load(Ordering::Relaxed),
        connect_failures: s.connect_failures.load(Ordering::Relaxed),
        sent: s.sent.load(Ordering::Relaxed),
        sent_qos0: s.sent_qos0.load(Ordering::Relaxed),
        acked: s.acked.load(Ordering::Relaxed),
        reconnects: s.reconnects.load(Ordering::Relaxed),
        nacked: s.nacked.load(Ordering::Relaxed),
        told_to_go: s.told_to_go.load(Ordering::Relaxed),
        p99_us: p99,
        all_connected_s: all,
        done: false,
        histogram: Vec::new(),
    }
}

/// One device's life; returns how many QoS 1 messages were acknowledged,
/// counted as the longest acknowledged prefix 0..n of its QoS 1 sequence
/// (what the ledger holds: unacknowledged messages are resent after a
/// reconnect, and a 5.0 device resends one the proxy refused (PUBACK ≥ 0x80)
/// at once, behind what it already sent — so later messages can be
/// acknowledged before it).
#[allow(clippy::too_many_arguments)]
async fn run_device(
    spec: &WorkerSpec,
    index: u64,
    target: &Target,
    stats: &Stats,
    mut stop: watch::Receiver<bool>,
    mut traffic: watch::Receiver<Option<tokio::time::Instant>>,
    first_connect: tokio::sync::mpsc::UnboundedSender<()>,
    mut on_ack: impl FnMut(u64, Duration),
) -> u64 {
    let id = device_id(index);
    let mut rng = Rng::new(index + 1);
    let speed = spec.speed.max(0.001);
    let event_mean = Duration::from_secs_f64(3600.0 / spec.events_per_hour.max(1e-9) / speed);
    let snapshot_period = Duration::from_secs_f64(spec.snapshot_period_s / speed);
    let version = if rng.next_f64() < spec.v5_share {
        Version::V5
    } else {
        Version::V311
    };
    // Messages not yet part of the acknowledged prefix, each with whether
    // the proxy acknowledged it already.
    let mut owned: std::collections::VecDeque<(Outgoing, bool)> = Default::default();
    let mut next_seq = 0u64;
    let mut next_seq0 = 0u64;
    let mut acked = 0u64;
    let mut attempt = 0u32;
    let mut announced = false;
    let mut acks = Vec::new();
    let mut next_event: Option<tokio::time::Instant> = None;
    let mut next_snapshot: Option<tokio::time::Instant> = None;
    'connection: loop {
        let mut session = match device::connect(target, &id, version).await {
            Ok(s) => s,
            Err(_) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                if *stop.borrow() && owned.is_empty() {
                    return acked;
                }
                tokio::time::sleep(device::backoff(attempt, rng.next_f64())).await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.connected.fetch_add(1, Ordering::Relaxed);
        if !announced {
            announced = true;
            let _ = first_connect.send(());
        }
        // What the device still owns goes again, in order.
        let mut failed = false;
        for (m, _) in owned.iter().filter(|(_, done)| !done) {
            if session.publish(m, stats).await.is_err() {
                failed = true;
                break;
            }
        }
        let mut keep_alive = tokio::time::interval(target.keep_alive / 4);
        while !failed {
            if next_event.is_none() {
                if let Some(start) = *traffic.borrow() {
                    // Traffic starts together for the whole fleet, each device at a random phase.
                    next_event = Some(match spec.scenario {
                        Scenario::Burst => start,
                        _ => start + rng.exp(event_mean),
                    });
                    next_snapshot = Some(start + snapshot_period.mul_f64(rng.next_f64()));
                }
            }
            let stopping = *stop.borrow();
            if stopping && owned.is_empty() {
                let _ = session.publish_disconnect().await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                return acked;
            }
            let fleet = spec.scenario == Scenario::Fleet && !stopping && next_event.is_some();
            let burst = spec.scenario == Scenario::Burst
                && !stopping
                && next_event.is_some()
                && owned.len() < spec.window;
            let burst_ready = burst
                && tokio::time::Instant::now()
                    >= next_event.unwrap_or_else(tokio::time::Instant::now);
            let mut new_message: Option<&'static str> = None;
            tokio::select! {
                r = session.read_acks(&mut acks) => {
                    if let Err(e) = r {
                        if e.is::<device::ToldToGo>() {
                            stats.told_to_go.fetch_add(1, Ordering::Relaxed);
                        }
                        failed = true;
                    }
                    for a in std::mem::take(&mut acks) {
                        let Some(pos) = owned.iter().position(|(m, done)| m.seq == a.seq && !done) else {
                            failed = true;
                            break;
                        };
                        if a.reason >= 0x80 {
                            // Refused: send it again now, behind what is in flight.
                            stats.nacked.fetch_add(1, Ordering::Relaxed);
                            if !failed && session.publish(&owned[pos].0, stats).await.is_err() {
                                failed = true;
                            }
                            continue;
                        }
                        owned[pos].1 = true;
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        while owned.front().is_some_and(|(_, done)| *done) {
                            if let Some((m, _)) = owned.pop_front() {
                                acked = m.seq + 1;
                            }
                        }
                        on_ack(acked, a.latency);
                    }
                }
                _ = async {}, if burst_ready => new_message = Some("state"),
                _ = sleep_opt(next_event), if fleet || (burst && !burst_ready) => {
                    if spec.scenario == Scenario::Fleet {
                        new_message = Some(KINDS[(rng.next_f64() * KINDS.len() as f64) as usize % KINDS.len()]);
                        next_event = Some(tokio::time::Instant::now() + rng.exp(event_mean));
                    }
                }
                _ = sleep_opt(next_snapshot), if fleet => {
                    new_message = Some("snapshot");
                    next_snapshot = Some(tokio::time::Instant::now() + snapshot_period);
                }
                _ = keep_alive.tick() => {
                    if session.keep_alive(target.keep_alive).await.is_err() { failed = true; }
                }
                _ = stop.changed(), if !stopping => {}
                _ = traffic.changed(), if next_event.is_none() => {}
            }
            if let Some(kind) = new_message {
                let qos = if rng.next_f64() < spec.qos0_share {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                let seq = if qos == QoS::AtMostOnce {
                    next_seq0
                } else {
                    next_seq
                };
                let topic = if kind == "snapshot" {
                    format!("devices/{id}/snapshot")
                } else {
                    format!("devices/{id}/events/{kind}")
                };
                let m = Outgoing {
                    seq,
                    topic,
                    payload: payload(&id, spec.epoch, seq, qos, kind, &mut rng),
                    qos,
                };
                if session.publish(&m, stats).await.is_err() {
                    failed = true;
                }
                if qos == QoS::AtMostOnce {
                    next_seq0 += 1;
                } else {
                    next_seq += 1;
                    owned.push_back((m, false));
                }
            }
        }
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if *stop.borrow() && owned.is_empty() {
            return acked;
        }
        tokio::time::sleep(device::backoff(attempt, rng.next_f64())).await;
        attempt += 1;
        continue 'connection;
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
