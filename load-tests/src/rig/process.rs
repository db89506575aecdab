//! The rig's processes: a child that is stopped when dropped ([`Proc`]),
//! spawning one and waiting for its "ready" line, the replicas' launcher
//! (which keeps the CPU time of replicas that are gone), the workers'
//! stdin, and RSS/CPU read from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A child process that is terminated when dropped.
pub struct Proc {
    /// For logs: `replica-0`, `worker-3`, …
    pub(super) name: String,
    pub(super) child: Child,
}

impl Proc {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn terminate(&mut self, grace: Duration) {
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
pub(super) fn tell(stdins: &Stdins, line: &str) {
    use std::io::Write;
    for stdin in lock(stdins).iter_mut() {
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    started: Arc<AtomicUsize>,
    /// CPU seconds of the replicas that are gone.
    retired_cpu: Arc<Mutex<f64>>,
}

impl Launcher {
    /// A launcher of `proxy_bin --config config`, logs under `out`.
    pub(super) fn new(proxy_bin: &Path, config: PathBuf, out: &Path) -> Launcher {
        Launcher {
            proxy_bin: proxy_bin.to_owned(),
            config,
            out: out.to_owned(),
            started: Arc::new(AtomicUsize::new(0)),
            retired_cpu: Arc::new(Mutex::new(0.0)),
        }
    }

    /// Starts one replica and waits until it listens (blocking).
    pub(super) fn start(&self) -> Result<Proc> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
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
    pub(super) fn retire(&self, p: &Proc) {
        *lock(&self.retired_cpu) += proc_usage(p.pid()).1;
    }

    /// CPU seconds of the replicas retired so far.
    pub(super) fn retired_cpu(&self) -> f64 {
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
    (rss, crate::measure::cpu_seconds(&[pid]))
}

/// Summed RSS and CPU seconds of several processes (the cluster's nodes).
pub(super) fn pids_usage(pids: &[u32]) -> (u64, f64) {
    pids.iter()
        .map(|p| proc_usage(*p))
        .fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The child gets SIGTERM when the rig dies (even by SIGKILL), so no
/// replica or worker outlives it. `PR_SET_PDEATHSIG` fires when the
/// *spawning thread* exits: the rig spawns from the thread that runs
/// `block_on`, which lives as long as the process.
pub(super) fn tie_to_rig(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns a process and waits for a stdout line containing `ready`; returns
/// the process and that line. Later stdout lines go to `log`.
pub(super) fn spawn_until(
    name: &str,
    mut cmd: Command,
    ready: &str,
    log: &Path,
) -> Result<(Proc, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
