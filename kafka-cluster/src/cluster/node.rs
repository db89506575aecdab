//! One node's files and process: its `server.properties` (listeners,
//! replication sized to the cluster, small-machine thread counts), the
//! storage format with the cluster id and SCRAM user, the certificates the
//! `TLS` listener serves, its log4j config and the tail of its logs for
//! errors, and the start of its JVM.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Cluster, Node};
use crate::process::{java, lock, spawn_tied};
use crate::{io, ClusterError, SCRAM_PASSWORD, SCRAM_USER};

impl Cluster {
    /// The `server.properties` of one node.
    fn properties(&self, n: &Node) -> String {
        let count = self.nodes.len() as u32;
        let rf = count.min(3);
        let isr = count.min(2);
        let voters: Vec<String> = self
            .nodes
            .iter()
            .map(|m| format!("{}@127.0.0.1:{}", m.id, m.ports.controller))
            .collect();
        let p = n.ports;
        let mut props: Vec<(String, String)> = vec![
            ("process.roles", "broker,controller".into()),
            ("node.id", n.id.to_string()),
            ("controller.quorum.voters", voters.join(",")),
            ("listeners", format!("PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{},SASL://127.0.0.1:{},TLS://127.0.0.1:{},LINK://127.0.0.1:{}", p.plain, p.controller, p.sasl, p.tls, p.link)),
            ("advertised.listeners", format!("PLAINTEXT://127.0.0.1:{},SASL://127.0.0.1:{},TLS://127.0.0.1:{},LINK://127.0.0.1:{}", p.plain, p.sasl, p.tls, p.link_front)),
            ("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL:SASL_PLAINTEXT,TLS:SSL,LINK:PLAINTEXT".into()),
            ("controller.listener.names", "CONTROLLER".into()),
            ("inter.broker.listener.name", "PLAINTEXT".into()),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512".into()),
            ("listener.name.sasl.scram-sha-512.sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required;".into()),
            ("listener.name.tls.ssl.keystore.type", "PEM".into()),
            ("listener.name.tls.ssl.keystore.location", self.root.join("broker.pem").display().to_string()),
            ("listener.name.tls.ssl.client.auth", "none".into()),
            ("log.dirs", n.dir.join("data").display().to_string()),
            ("num.partitions", "3".into()),
            ("default.replication.factor", rf.to_string()),
            ("min.insync.replicas", isr.to_string()),
            ("offsets.topic.replication.factor", rf.to_string()),
            ("offsets.topic.num.partitions", "6".into()),
            ("transaction.state.log.replication.factor", rf.to_string()),
            ("transaction.state.log.min.isr", isr.to_string()),
            ("transaction.state.log.num.partitions", "4".into()),
            ("share.coordinator.state.topic.replication.factor", rf.to_string()),
            ("share.coordinator.state.topic.min.isr", isr.to_string()),
            ("group.initial.rebalance.delay.ms", "0".into()),
            // The proxy creates the topics it needs; nothing appears by accident.
            ("auto.create.topics.enable", "false".into()),
            // Small machine: few threads, a small cleaner buffer (it lives on the heap).
            ("num.network.threads", "2".into()),
            ("num.io.threads", "2".into()),
            ("background.threads", "2".into()),
            ("num.replica.fetchers", "1".into()),
            ("log.cleaner.threads", "1".into()),
            ("log.cleaner.dedupe.buffer.size", "8388608".into()),
            ("num.recovery.threads.per.data.dir", "1".into()),
            // Notice dead and lagging brokers in seconds, not tens of seconds.
            ("broker.heartbeat.interval.ms", "500".into()),
            ("broker.session.timeout.ms", "4000".into()),
            ("replica.lag.time.max.ms", "5000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        props.extend(self.config.server_properties.iter().cloned());
        props
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>()
    }

    /// Formats every node's storage, in parallel, with one cluster id and
    /// the SCRAM user.
    pub(super) fn format(&self) -> Result<(), ClusterError> {
        let cluster_id = random_uuid()?;
        let scram = format!("SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]");
        let mut running = Vec::new();
        for n in &self.nodes {
            std::fs::create_dir_all(&n.dir).map_err(io(format!("create {}", n.dir.display())))?;
            let props = n.dir.join("server.properties");
            std::fs::write(&props, self.properties(n))
                .map_err(io(format!("write {}", props.display())))?;
            std::fs::write(n.dir.join("log4j2.properties"), log4j_config(&n.dir))
                .map_err(io("write log4j2.properties"))?;
            let child = Command::new(java())
                .args([
                    "-Xmx256m",
                    "-XX:TieredStopAtLevel=1",
                    "-cp",
                    &self.classpath,
                ])
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    n.dir.join("log4j2.properties").display()
                ))
                .args(["kafka.tools.StorageTool", "format", "--ignore-formatted"])
                // "=" form: an id may start with "-", which argparse would take for an option.
                .arg(format!("--cluster-id={cluster_id}"))
                .arg("-c")
                .arg(&props)
                .args(["--add-scram", &scram])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io("run kafka.tools.StorageTool (is java installed?)"))?;
            running.push((n.id, child));
        }
        for (id, child) in running {
            let out = child
                .wait_with_output()
                .map_err(io("wait for the storage tool"))?;
            if !out.status.success() {
                return Err(ClusterError::Format {
                    node: id,
                    output: format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Starts one node's JVM (through the spawner thread, so the process
    /// dies with this one).
    pub(super) fn spawn(&self, n: &Node) -> Result<(), ClusterError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("stdout.log"))
            .map_err(io("open stdout.log"))?;
        let err = out.try_clone().map_err(io("open stdout.log"))?;
        let mut cmd = Command::new(java());
        cmd.arg(format!("-Xmx{}m", self.config.heap_mb))
            .arg(format!("-Xms{}m", (self.config.heap_mb / 2).max(64)))
            .args(&self.config.jvm_options)
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                n.dir.join("log4j2.properties").display()
            ))
            .args(["-cp", &self.classpath, "kafka.Kafka"])
            .arg(n.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = spawn_tied(cmd).map_err(io(format!("start Kafka node {}", n.id)))?;
        *lock(&n.child) = Some(child);
        Ok(())
    }
}

/// Reserves `n` distinct free loopback ports (all bound at once, then freed).
pub(super) fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(io("reserve a loopback port"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(io("read a reserved port"))
}

/// A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.
fn random_uuid() -> Result<String, ClusterError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("read /dev/urandom"))?;
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::new();
    for byte in b {
        bits = (bits << 8) | byte as u32;
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(A[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(A[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    Ok(out)
}

/// A CA (`ca.pem`) and one broker certificate for 127.0.0.1/localhost with
/// its PKCS#8 key (`broker.pem`: key then certificate, Kafka's PEM keystore).
pub(super) fn write_certs(root: &Path) -> Result<(), ClusterError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "kafka-cluster test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kafka-cluster broker");
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(root.join("ca.pem"), ca_cert.pem()).map_err(io("write ca.pem"))?;
    std::fs::write(
        root.join("broker.pem"),
        format!("{}{}", key.serialize_pem(), cert.pem()),
    )
    .map_err(io("write broker.pem"))
}

fn log4j_config(dir: &Path) -> String {
    format!(
        "rootLogger.level=INFO\nrootLogger.appenderRef.f.ref=F\nappender.f.type=File\nappender.f.name=F\nappender.f.fileName={}\nappender.f.layout.type=PatternLayout\nappender.f.layout.pattern=[%d] %p %m (%c)%n\nlogger.state.name=state.change.logger\nlogger.state.level=WARN\n",
        dir.join("server.log").display()
    )
}

/// The last lines of a node's logs, for error messages.
pub(super) fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for f in ["stdout.log", "server.log"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        out.push_str(&format!("--- {f}\n{}\n", lines[from..].join("\n")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = random_uuid().unwrap();
        assert_eq!(id.len(), 22);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(id, random_uuid().unwrap());
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut p = free_ports(12).unwrap();
        p.sort();
        p.dedup();
        assert_eq!(p.len(), 12);
    }
}
