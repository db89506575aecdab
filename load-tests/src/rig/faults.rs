//! `load-tests faults`: the fault matrix. The rig's fleet runs against a
//! real Kafka cluster (3 brokers, RF 3, `min.insync.replicas` 2) with the
//! verifier reading everything, and while the devices publish this module
//! plays the faults one after another: each is inflicted, lifted, and
//! followed by a quiet recovery period before the next. Before each fault
//! the workers are told to "mark" their ledgers, so every acknowledged
//! message belongs to exactly one row of the matrix (the baseline, or the
//! fault during or after which it was acknowledged), and the verifier's
//! losses, duplicates and order violations are counted per row.
//!
//! The replicas reach the brokers through a [`kafka_cluster::Link`], a
//! forwarder that can go silent (connections open, nothing moves): the
//! fault no signal to a broker can cause. The verifier and the direct
//! producer bypass it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kafka_cluster::{Cluster, Link};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::process::{lock, tell, Launcher, Proc, Stdins};
use super::{KafkaBackend, RigArgs};
use crate::report::{FaultRow, Sample};
use crate::verify::PartVerdict;
use crate::worker::Scenario;

/// One fault of the matrix.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the broker leading the most ingest partitions; restart it after `--down-s`.
    LeaderKill,
    /// SIGSTOP every broker for `--hang-s` (sockets open, nothing answers), then SIGCONT.
    Hang,
    /// SIGSTOP every broker for longer than the replicas' delivery timeout (+15 s).
    HangPastTimeout,
    /// SIGKILL every broker; restart them all from their data directories after 10 s.
    AllKill,
    /// The replicas' network path to Kafka goes silent for `--silent-s` (no reset, no FIN).
    SilentLink,
    /// SIGKILL one proxy replica; devices reconnect through the shared port; a new replica starts.
    ReplicaKill,
    /// Replace every replica in turn: start a new one, SIGTERM (drain) the old one.
    ReplicaRolling,
    /// SIGTERM (controlled shutdown) and restart every broker in turn.
    BrokerRolling,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader-kill",
            Fault::Hang => "hang",
            Fault::HangPastTimeout => "hang-past-timeout",
            Fault::AllKill => "all-kill",
            Fault::SilentLink => "silent-link",
            Fault::ReplicaKill => "replica-kill",
            Fault::ReplicaRolling => "replica-rolling",
            Fault::BrokerRolling => "broker-rolling",
        }
    }
}

/// Options of `load-tests faults`.
#[derive(clap::Args, Clone, Debug)]
pub struct FaultsArgs {
    /// The faults to play, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "leader-kill,hang,hang-past-timeout,all-kill,silent-link,replica-kill,replica-rolling,broker-rolling"
    )]
    pub faults: Vec<Fault>,
    /// Simulated devices (the fleet workload: change events and snapshots).
    #[arg(long, default_value_t = 100_000)]
    pub devices: u64,
    /// Time compression of the fleet workload (10: ten times seed-001's rates).
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Devices connect over TLS.
    #[arg(long)]
    pub tls: bool,
    /// Proxy replicas sharing the port (each holds at most 19,000
    /// connections: 8 carry 100k devices, and 7 the same after one is killed).
    #[arg(long, default_value_t = 8)]
    pub replicas: usize,
    /// Brokers of the cluster.
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 24)]
    pub partitions: u32,
    /// Connects per second, all workers together.
    #[arg(long, default_value_t = 2_000.0)]
    pub connect_rate: f64,
    /// Share of devices speaking MQTT 5.0 (they hear PUBACK 0x80 and
    /// DISCONNECT reasons; the rest are 3.1.1).
    #[arg(long, default_value_t = 0.5)]
    pub v5_share: f64,
    /// Seconds of traffic before the first fault (the baseline row).
    #[arg(long, default_value_t = 30.0)]
    pub baseline_s: f64,
    /// Quiet seconds after each fault is lifted, before the next.
    #[arg(long, default_value_t = 30.0)]
    pub recovery_s: f64,
    /// Seconds a killed leader stays down.
    #[arg(long, default_value_t = 30.0)]
    pub down_s: f64,
    /// Seconds of the hang (`hang`).
    #[arg(long, default_value_t = 60.0)]
    pub hang_s: f64,
    /// Seconds the link stays silent.
    #[arg(long, default_value_t = 60.0)]
    pub silent_s: f64,
    /// The replicas' `kafka.delivery_timeout_ms` (the proxy's default: 60 s).
    #[arg(long, default_value_t = 60_000)]
    pub delivery_timeout_ms: u64,
    /// The replicas' `mqtt.ordering`: "pipelined" (the proxy's default) or
    /// "strict" (per-device order kept across delivery failures).
    #[arg(long, default_value = "pipelined", value_parser = ["pipelined", "strict"])]
    pub ordering: String,
    /// The replicas' `kafka.queue_max_messages` (records each replica's
    /// producer holds before its connections stop reading); the proxy's
    /// default when absent.
    #[arg(long)]
    pub queue_max_messages: Option<u32>,
    /// The replicas' `kafka.linger_ms`.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Most devices per worker process.
    #[arg(long, default_value_t = 12_500)]
    pub devices_per_worker: u64,
    /// Where the report and logs go.
    #[arg(long, default_value = "load-tests/results/faults")]
    pub out: std::path::PathBuf,
}

impl FaultsArgs {
    /// The rig run under the matrix: the fleet on the cluster, traffic
    /// until the plan ends; and the plan.
    pub fn split(&self) -> (RigArgs, Plan) {
        let rig = RigArgs {
            scenario: Scenario::Fleet,
            devices: self.devices,
            replicas: self.replicas,
            tls: self.tls,
            speed: self.speed,
            // The workers are told to stop when the plan is done.
            duration_s: 24.0 * 3600.0,
            idle_s: 3.0,
            connect_rate: self.connect_rate,
            events_per_hour: 10.0,
            snapshot_period_s: 300.0,
            qos0_share: 0.0,
            window: 16,
            v5_share: self.v5_share,
            linger_ms: self.linger_ms,
            partitions: self.partitions,
            kafka: KafkaBackend::Cluster,
            brokers: self.brokers,
            devices_per_worker: self.devices_per_worker,
            mosquitto: false,
            mosquitto_devices: 0,
            out: self.out.clone(),
        };
        let plan = Plan {
            faults: self.faults.clone(),
            baseline: secs(self.baseline_s),
            recovery: secs(self.recovery_s),
            down: secs(self.down_s),
            hang: secs(self.hang_s),
            silent: secs(self.silent_s),
            delivery_timeout_ms: self.delivery_timeout_ms,
            ordering: self.ordering.clone(),
            queue_max_messages: self.queue_max_messages,
        };
        (rig, plan)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// What to play, and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    faults: Vec<Fault>,
    baseline: Duration,
    recovery: Duration,
    down: Duration,
    hang: Duration,
    silent: Duration,
    /// The replicas' delivery timeout (written into their config).
    pub delivery_timeout_ms: u64,
    /// The replicas' `mqtt.ordering`.
    pub ordering: String,
    /// The replicas' `kafka.queue_max_messages`, if not the default.
    pub queue_max_messages: Option<u32>,
}

/// What the plan can reach while the fleet runs.
pub struct Stage {
    /// When the workers started (the timeline's zero).
    pub started: Instant,
    /// The traffic starts this long after the plan is handed over.
    pub traffic_in: Duration,
    /// The running replicas.
    pub replicas: Arc<Mutex<Vec<Proc>>>,
    /// Starts replacements.
    pub launcher: Launcher,
    /// The workers' stdin ("mark").
    pub stdins: Stdins,
    /// The cluster.
    pub cluster: Option<Arc<Cluster>>,
    /// The replicas' path to the cluster.
    pub link: Option<Arc<Link>>,
    /// Direct bootstrap (not through the link), for metadata.
    pub bootstrap: String,
    /// The ingest topics.
    pub topics: Vec<String>,
}

/// One fault as it was played, in seconds of the timeline.
#[derive(Debug, Clone)]
pub struct Window {
    fault: Fault,
    detail: String,
    start: f64,
    end: f64,
    /// Where this fault's part of the run ends: the next fault's start, or
    /// the end of the plan.
    next: f64,
}

/// Plays the plan: baseline, then each fault, lifted, then a quiet
/// recovery period. Marks the workers' ledgers at each fault's start.
pub async fn play(plan: Plan, stage: Stage) -> Result<Vec<Window>> {
    let t = || stage.started.elapsed().as_secs_f64();
    tokio::time::sleep(stage.traffic_in + plan.baseline).await;
    let mut windows: Vec<Window> = Vec::new();
    for &fault in &plan.faults {
        tell(&stage.stdins, "mark");
        let start = t();
        if let Some(last) = windows.last_mut() {
            last.next = start;
        }
        println!("fault {}: inflicted at t={start:.0}s", fault.name());
        let (detail, end) = inflict(fault, &plan, &stage)
            .await
            .with_context(|| format!("fault {}", fault.name()))?;
        println!(
            "fault {}: lifted at t={end:.0}s ({detail}); recovering for {:.0} s",
            fault.name(),
            plan.recovery.as_secs_f64()
        );
        windows.push(Window {
            fault,
            detail,
            start,
            end,
            next: f64::INFINITY,
        });
        tokio::time::sleep(plan.recovery).await;
    }
    let done = t();
    if let Some(last) = windows.last_mut() {
        last.next = done;
    }
    Ok(windows)
}

/// Runs a blocking step (a JVM start, a drain) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Inflicts one fault and lifts it; returns what was done and when (in
/// timeline seconds) it was lifted.
async fn inflict(fault: Fault, plan: &Plan, st: &Stage) -> Result<(String, f64)> {
    let t = || st.started.elapsed().as_secs_f64();
    let cluster = st
        .cluster
        .clone()
        .context("the fault matrix needs the cluster")?;
    let ids: Vec<u32> = (1..=cluster.brokers()).collect();
    match fault {
        Fault::LeaderKill => {
            let bootstrap = st.bootstrap.clone();
            let topics = st.topics.clone();
            let (id, led, total) = blocking(move || busiest_leader(&bootstrap, &topics)).await?;
            cluster.kill(id)?;
            tokio::time::sleep(plan.down).await;
            let end = t();
            let c = cluster.clone();
            let took = timed(blocking(move || Ok(c.restart(id)?))).await?;
            Ok((
                format!(
                    "broker {id} (leader of {led}/{total} ingest partitions) SIGKILLed, restarted after {:.0} s, back in {took:.0} s",
                    plan.down.as_secs_f64()
                ),
                end,
            ))
        }
        Fault::Hang | Fault::HangPastTimeout => {
            let hang = match fault {
                Fault::Hang => plan.hang,
                _ => Duration::from_millis(plan.delivery_timeout_ms) + Duration::from_secs(15),
            };
            for &id in &ids {
                cluster.pause(id)?;
            }
            tokio::time::sleep(hang).await;
            for &id in &ids {
                cluster.resume(id)?;
            }
            Ok((
                format!(
                    "every broker SIGSTOPped {:.0} s (delivery timeout {:.0} s), then SIGCONT",
                    hang.as_secs_f64(),
                    plan.delivery_timeout_ms as f64 / 1000.0
                ),
                t(),
            ))
        }
        Fault::AllKill => {
            for &id in &ids {
                cluster.kill(id)?;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            let end = t();
            let c = cluster.clone();
            let took = timed(blocking(move || Ok(c.heal()?))).await?;
            Ok((
                format!("every broker SIGKILLed, restarted from its data after 10 s, back in {took:.0} s"),
                end,
            ))
        }
        Fault::SilentLink => {
            let link = st.link.clone().context("no link to silence")?;
            link.silence();
            tokio::time::sleep(plan.silent).await;
            link.restore();
            Ok((
                format!(
                    "the replicas' path to every broker silent {:.0} s (open, no reset), then restored",
                    plan.silent.as_secs_f64()
                ),
                t(),
            ))
        }
        Fault::ReplicaKill => {
            let mut victim = {
                let mut r = lock(&st.replicas);
                anyhow::ensure!(!r.is_empty(), "no replica to kill");
                r.remove(0)
            };
            st.launcher.retire(&victim);
            let name = victim.name.clone();
            let _ = victim.child.kill();
            let _ = victim.child.wait();
            let end = t();
            let launcher = st.launcher.clone();
            let fresh = blocking(move || launcher.start()).await?;
            lock(&st.replicas).push(fresh);
            Ok((format!("{name} SIGKILLed; a new replica started"), end))
        }
        Fault::ReplicaRolling => {
            let n = lock(&st.replicas).len();
            let mut names = Vec::new();
            for _ in 0..n {
                // Surge first, as a rolling update does: the new replica
                // listens before the old one drains.
                let launcher = st.launcher.clone();
                let fresh = blocking(move || launcher.start()).await?;
                lock(&st.replicas).push(fresh);
                let old = lock(&st.replicas).remove(0);
                st.launcher.retire(&old);
                names.push(old.name.clone());
                blocking(move || {
                    let mut old = old;
                    old.terminate(Duration::from_secs(120));
                    Ok(())
                })
                .await?;
            }
            Ok((
                format!(
                    "{} replaced one at a time (new one up, old one SIGTERM-drained)",
                    names.join(", ")
                ),
                t(),
            ))
        }
        Fault::BrokerRolling => {
            for &id in &ids {
                let c = cluster.clone();
                blocking(move || {
                    c.terminate(id)?;
                    Ok(c.restart(id)?)
                })
                .await?;
            }
            Ok((
                format!(
                    "brokers {ids:?} SIGTERMed (controlled shutdown) and restarted one at a time"
                ),
                t(),
            ))
        }
    }
}

/// Seconds a future took.
async fn timed(f: impl std::future::Future<Output = Result<()>>) -> Result<f64> {
    let at = Instant::now();
    f.await?;
    Ok(at.elapsed().as_secs_f64())
}

/// The broker leading the most partitions of `topics`: (id, led, total).
fn busiest_leader(bootstrap: &str, topics: &[String]) -> Result<(u32, usize, usize)> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()?;
    let mut led = std::collections::BTreeMap::<i32, usize>::new();
    let mut total = 0;
    for t in topics {
        let md = client.fetch_metadata(Some(t), Duration::from_secs(10))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                total += 1;
                if p.leader() >= 0 {
                    *led.entry(p.leader()).or_default() += 1;
                }
            }
        }
    }
    let (id, n) = led
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .context("no partition has a leader")?;
    Ok((id as u32, n, total))
}

/// The matrix's rows: the baseline (part 0), then one per fault (part i+1).
pub fn rows(windows: &[Window], timeline: &[Sample], parts: &[PartVerdict]) -> Vec<FaultRow> {
    let within = |from: f64, to: f64| timeline.iter().filter(move |s| s.t >= from && s.t < to);
    let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
    // What the timeline says about the part from `from` to `to`: the
    // verifier's counts for it come from `p`.
    let row = |from: f64, to: f64, p: PartVerdict| FaultRow {
        acked: p.acked,
        lost: p.lost,
        duplicated: p.duplicated,
        order_violations: p.order_violations,
        peak_proxy_rss_mib: within(from, to)
            .map(|s| s.proxy_rss_mib)
            .fold(0.0, f64::max),
        proxy_rss_before_mib: within(0.0, from)
            .next_back()
            .map_or(0.0, |s| s.proxy_rss_mib),
        peak_puback_p99_ms: within(from, to)
            .map(|s| s.puback_p99_ms)
            .fold(0.0, f64::max),
        disconnects: grew(timeline, from, to, |s| s.reconnects),
        nacked: grew(timeline, from, to, |s| s.nacked),
        told_to_go: grew(timeline, from, to, |s| s.told_to_go),
        min_connected: within(from, to).map(|s| s.connected).min().unwrap_or(0),
        ..FaultRow::default()
    };
    let first = windows.first().map_or(f64::INFINITY, |w| w.start);
    let traffic_from = timeline
        .iter()
        .find(|s| s.acked_per_s > 0.0)
        .map_or(0.0, |s| s.t);
    let mut rows = vec![FaultRow {
        fault: "baseline".into(),
        detail: "no fault".into(),
        start_s: traffic_from,
        end_s: traffic_from,
        part_end_s: first.min(timeline.last().map_or(0.0, |s| s.t)),
        ..row(traffic_from, first, part(0))
    }];
    for (i, w) in windows.iter().enumerate() {
        // The median: the seconds before may hold the previous fault's
        // backlog surge, which a mean would take for the normal rate.
        let mut before: Vec<f64> = within(w.start - 20.0, w.start)
            .map(|s| s.acked_per_s)
            .collect();
        before.sort_by(f64::total_cmp);
        let rate_before = before.get(before.len() / 2).copied().unwrap_or(0.0);
        rows.push(FaultRow {
            fault: w.fault.name().into(),
            detail: w.detail.clone(),
            start_s: w.start,
            end_s: w.end,
            part_end_s: w.next,
            rate_before,
            recovery_s: recovery(timeline, w.end, w.next, rate_before),
            ..row(w.start, w.next, part(i + 1))
        });
    }
    rows
}

/// How much a cumulative counter of the timeline grew from `from` to `to`.
fn grew(timeline: &[Sample], from: f64, to: f64, f: fn(&Sample) -> u64) -> u64 {
    let at = |t: f64| timeline.iter().take_while(|s| s.t < t).last().map_or(0, f);
    at(to).saturating_sub(at(from))
}

/// Seconds from `end` until the acknowledged rate, as a 3-second mean, is
/// back to 90% of `rate_before` (0 if it never dropped below); `None` if
/// that does not happen before `until`.
fn recovery(timeline: &[Sample], end: f64, until: f64, rate_before: f64) -> Option<f64> {
    if rate_before <= 0.0 {
        return None;
    }
    let idx: Vec<usize> = (0..timeline.len())
        .filter(|&i| timeline[i].t >= end && timeline[i].t < until)
        .collect();
    for &i in &idx {
        let lo = i.saturating_sub(1);
        let hi = (i + 1).min(timeline.len() - 1);
        let mean =
            timeline[lo..=hi].iter().map(|s| s.acked_per_s).sum::<f64>() / (hi - lo + 1) as f64;
        if mean >= 0.9 * rate_before {
            return Some((timeline[i].t - end).max(0.0));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rate: f64, reconnects: u64) -> Sample {
        Sample {
            t,
            acked_per_s: rate,
            connected: 100 - reconnects.min(100),
            proxy_rss_mib: 10.0 + t,
            reconnects,
            ..Sample::default()
        }
    }

    #[test]
    fn recovery_is_counted_from_the_end_of_the_fault_on_a_three_second_mean() {
        // 100/s, an outage from t=30 to t=40, then 50, 95, 100, 100…
        let mut tl: Vec<Sample> = (0..30).map(|t| sample(t as f64, 100.0, 0)).collect();
        tl.extend((30..40).map(|t| sample(t as f64, 0.0, 5)));
        tl.extend(
            [50.0, 95.0, 100.0, 100.0, 100.0]
                .iter()
                .enumerate()
                .map(|(i, r)| sample(40.0 + i as f64, *r, 7)),
        );
        // t=40: mean(0, 50, 95) = 48; t=41: mean(50, 95, 100) = 81.7; t=42: 98.3 ≥ 90.
        assert_eq!(recovery(&tl, 40.0, 100.0, 100.0), Some(2.0));
        assert_eq!(
            recovery(&tl, 40.0, 42.0, 100.0),
            None,
            "not before the part ends"
        );
        assert_eq!(
            recovery(&tl, 40.0, 100.0, 0.0),
            None,
            "no traffic before: nothing to recover"
        );
        assert_eq!(grew(&tl, 25.0, 45.0, |s| s.reconnects), 7);
    }

    #[test]
    fn rows_take_part_counts_and_the_timeline_within_each_window() {
        let tl: Vec<Sample> = (0..100)
            .map(|t| {
                sample(
                    t as f64,
                    if (50..60).contains(&t) { 0.0 } else { 100.0 },
                    if t >= 55 { 3 } else { 0 },
                )
            })
            .collect();
        let windows = vec![Window {
            fault: Fault::Hang,
            detail: "x".into(),
            start: 50.0,
            end: 60.0,
            next: 90.0,
        }];
        let parts = vec![
            PartVerdict {
                acked: 5000,
                ..Default::default()
            },
            PartVerdict {
                acked: 3000,
                lost: 0,
                duplicated: 4,
                order_violations: 1,
            },
        ];
        let rows = rows(&windows, &tl, &parts);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].fault.as_str(), rows[0].acked, rows[0].part_end_s),
            ("baseline", 5000, 50.0)
        );
        let r = &rows[1];
        assert_eq!((r.acked, r.duplicated, r.order_violations), (3000, 4, 1));
        assert_eq!(r.rate_before, 100.0);
        assert_eq!(r.disconnects, 3);
        assert_eq!(r.min_connected, 97);
        assert_eq!(r.proxy_rss_before_mib, 10.0 + 49.0);
        assert_eq!(r.peak_proxy_rss_mib, 10.0 + 89.0);
        // t=60: mean(0, 100, 100) = 66.7; t=61: 100.
        assert_eq!(r.recovery_s, Some(1.0));
    }
}
