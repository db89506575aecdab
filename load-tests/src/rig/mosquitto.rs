//! The Mosquitto reference (`--mosquitto`): its idle memory per
//! connection, plain and TLS, measured with the rig's own workers and /proc
//! sampling, for the report beside the proxy's.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{free_port, proc_usage, Proc};
use crate::report::Reference;
use crate::worker::{Progress, Scenario, WorkerSpec};

/// Mosquitto holding `n` idle plain connections, then (a fresh instance) `n`
/// idle TLS connections, measured with the same workers and /proc sampling.
pub(super) async fn mosquitto_reference(
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
