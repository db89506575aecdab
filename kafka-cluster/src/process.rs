//! Processes: every JVM is spawned from one long-lived thread with
//! `PR_SET_PDEATHSIG`, so none outlives this process; children are stopped
//! with SIGTERM and a deadline; the `java` to run.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a node may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// SIGTERM every child at once, then wait; SIGKILL whatever is left after
/// [`STOP_TIMEOUT`].
pub(crate) fn stop_children(mut children: Vec<Child>) {
    for c in &children {
        // SAFETY: kill(2) on children we own and have not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !children.is_empty() {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        if Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the Option consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `java` to run: `$JAVA_HOME/bin/java`, else the one on `PATH`.
pub fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// Spawns `cmd` from one long-lived thread with `PR_SET_PDEATHSIG` set:
/// the kernel sends the child SIGKILL when the spawning *thread* exits, so
/// the thread must outlive every test task; this one lives as long as the
/// process.
pub(crate) fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    spawn_tied_with(cmd, libc::SIGKILL)
}

/// Spawns `cmd` so that it gets `signal` when this process dies, from any
/// thread: `PR_SET_PDEATHSIG` fires when the *spawning thread* exits (a
/// tokio blocking-pool thread exits after 10 s idle), so every spawn goes
/// through one thread that lives as long as the process.
pub fn spawn_tied_with(cmd: Command, signal: libc::c_int) -> std::io::Result<Child> {
    type Job = (Command, libc::c_int, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kafka-cluster-spawner".into())
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                while let Ok((mut cmd, signal, reply)) = rx.recv() {
                    // SAFETY: only async-signal-safe calls between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the kafka-cluster spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(tx)
        .send((cmd, signal, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}
