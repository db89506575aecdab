//! The simulated fleet of one rig run: worker processes, each a slice of
//! the devices from its own loopback source address (`load-tests worker`),
//! their progress lines read by one thread per worker, and at the end their
//! ledgers (what the proxy acknowledged, per device and per mark) and
//! PUBACK latency histograms.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use super::process::{lock, tie_to_rig, Proc, Stdins};
use super::RigArgs;
use crate::worker::{Progress, WorkerSpec};

/// Each finished worker's PUBACK latency histogram, as (µs, count) pairs.
type Histograms = Arc<Mutex<Vec<Vec<(u64, u64)>>>>;

/// The running workers.
pub(super) struct Fleet {
    /// The worker processes.
    pub(super) workers: Vec<Proc>,
    /// Their stdin: the rig says "go", "mark" and "stop" there.
    pub(super) stdins: Stdins,
    /// Each worker's last progress line (its histogram left out).
    progress: Arc<Mutex<Vec<Progress>>>,
    /// Filled by the threads that read the workers' stdout.
    histograms: Histograms,
    /// One ledger file per worker.
    ledgers: Vec<PathBuf>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What the workers' ledgers say the proxy acknowledged.
pub(super) struct Ledgers {
    /// Per device: QoS 1 messages acknowledged at the end.
    pub(super) acked: Vec<u64>,
    /// Per mark, per device: acknowledged at that mark.
    pub(super) marks: Vec<Vec<u64>>,
}

impl Fleet {
    /// Starts `a.devices` devices over as many workers as
    /// `--devices-per-worker` needs, talking to `addr` (over TLS, verifying
    /// `ca`, with `--tls`); logs and ledgers go to `out`.
    pub(super) fn start(
        a: &RigArgs,
        exe: &Path,
        out: &Path,
        addr: SocketAddr,
        ca: &Path,
        epoch: u64,
    ) -> Result<Fleet> {
        let workers_n = a.devices.div_ceil(a.devices_per_worker).max(1) as usize;
        let per = a.devices.div_ceil(workers_n as u64);
        let mut fleet = Fleet {
            workers: Vec::new(),
            stdins: Arc::new(Mutex::new(Vec::new())),
            progress: Arc::new(Mutex::new(vec![Progress::default(); workers_n])),
            histograms: Arc::new(Mutex::new(Vec::new())),
            ledgers: Vec::new(),
            readers: Vec::new(),
        };
        for w in 0..workers_n {
            let first = w as u64 * per;
            let count = per.min(a.devices.saturating_sub(first));
            if count == 0 {
                break;
            }
            let ledger = out.join(format!("ledger-{w}.txt"));
            fleet.ledgers.push(ledger.clone());
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
            fleet.spawn(exe, out, &spec)?;
        }
        Ok(fleet)
    }

    /// Starts one worker and the thread that reads its progress.
    fn spawn(&mut self, exe: &Path, out: &Path, spec: &WorkerSpec) -> Result<()> {
        let w = spec.index;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg(serde_json::to_string(spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(out.join(format!("worker-{w}.err")))?);
        tie_to_rig(&mut cmd);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("worker stdout")?;
        lock(&self.stdins).push(child.stdin.take().context("worker stdin")?);
        let (progress, histograms) = (self.progress.clone(), self.histograms.clone());
        self.readers.push(std::thread::spawn(move || {
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
        self.workers.push(Proc {
            name: format!("worker-{w}"),
            child,
        });
        Ok(())
    }

    /// Workers started (some slices may be empty, so ≤ the planned count).
    pub(super) fn len(&self) -> usize {
        self.ledgers.len()
    }

    /// Every worker's last progress line.
    pub(super) fn snapshot(&self) -> Vec<Progress> {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// True once every worker has exited.
    pub(super) fn exited(&mut self) -> bool {
        self.workers
            .iter_mut()
            .all(|w| matches!(w.child.try_wait(), Ok(Some(_))))
    }

    /// Waits until every progress line is read (after the workers exited).
    pub(super) fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// The ledgers of `devices` devices. A line per device: its index, its
    /// acknowledged count at the end, then at every mark.
    pub(super) fn ledgers(&self, devices: u64) -> Result<Ledgers> {
        let mut acked = vec![0u64; devices as usize];
        let mut marks: Vec<Vec<u64>> = Vec::new();
        for l in &self.ledgers {
            let text =
                std::fs::read_to_string(l).with_context(|| format!("read {}", l.display()))?;
            for line in text.lines() {
                let mut it = line.split_whitespace();
                if let (Some(d), Some(n)) = (it.next(), it.next()) {
                    let d = d.parse::<usize>()?;
                    acked[d] = n.parse()?;
                    for (k, m) in it.enumerate() {
                        if marks.len() <= k {
                            marks.push(vec![0; devices as usize]);
                        }
                        marks[k][d] = m.parse()?;
                    }
                }
            }
        }
        Ok(Ledgers { acked, marks })
    }

    /// Every worker's PUBACK latencies (µs) in one histogram.
    pub(super) fn puback_latency(&self) -> Result<Histogram<u64>> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for h in self
            .histograms
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
        {
            for (v, c) in h {
                let _ = hist.record_n(v.max(1), c);
            }
        }
        Ok(hist)
    }
}
