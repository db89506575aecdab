//! A real Apache Kafka cluster on this machine: 1 or 3 combined
//! broker+controller KRaft nodes, each a plain JVM process on free loopback
//! ports with its data in a temporary directory. The tests, the load-test rig
//! and `load-tests kafka up` all start Kafka through this one crate.
//!
//! - [`jars`]: the pinned release's jars, fetched from Maven Central by
//!   `mvn dependency:copy-dependencies` with `kafka-cluster/pom.xml` (cached in
//!   `~/.m2` and under `target/kafka-jars/`). No tarball, no downloaded binary.
//! - [`Cluster::start`]: format the storage of every node (with a SCRAM user),
//!   start the nodes, wait until every broker is in the cluster's metadata.
//! - Every node has five listeners: `PLAINTEXT` (also between brokers),
//!   `CONTROLLER`, `SASL` (SASL_PLAINTEXT with SCRAM-SHA-512), `TLS` (SSL,
//!   a certificate from a CA generated per cluster) and `LINK` (plaintext,
//!   advertised at a port where a [`Link`] forwarder can stand in front of
//!   the node: a network path that can be made to go silent).
//! - Fault control per node: [`Cluster::kill`] (SIGKILL), [`Cluster::pause`]
//!   / [`Cluster::resume`] (SIGSTOP/SIGCONT: sockets open, nothing answers),
//!   [`Cluster::terminate`] (SIGTERM, controlled shutdown), [`Cluster::restart`]
//!   from the node's own data directory.
//! - Stopping: [`Cluster::stop`] or drop sends SIGTERM to every node and waits
//!   (SIGKILL after a deadline). The JVMs are also tied to this process's life
//!   (`PR_SET_PDEATHSIG`), so a crashed test leaves no broker behind.
//! - [`shared`]: one cluster per process for test binaries, stopped at exit.

mod link;

pub use link::Link;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// The Apache Kafka release every cluster runs; `pom.xml` pins the same.
pub const KAFKA_VERSION: &str = "4.1.1";

/// The SCRAM-SHA-512 user every cluster has on its `SASL` listener.
pub const SCRAM_USER: &str = "mqtt-proxy";
/// That user's password.
pub const SCRAM_PASSWORD: &str = "proxy-secret";

/// How long a cluster may take to serve metadata from every broker.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a cluster could not be fetched, started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Maven could not fetch the jars.
    #[error("fetching Apache Kafka {KAFKA_VERSION} jars with Maven failed (is `mvn` installed and Maven Central reachable? run tests/install-deps.sh): {0}")]
    Fetch(String),
    /// Formatting a node's storage failed.
    #[error("formatting node {node} failed: {output}")]
    Format {
        /// Node id.
        node: u32,
        /// What the storage tool printed.
        output: String,
    },
    /// A node exited or the cluster did not come up in time.
    #[error("kafka cluster not ready: {0}")]
    NotReady(String),
    /// Certificate generation failed.
    #[error("generating TLS certificates: {0}")]
    Certs(#[from] rcgen::Error),
    /// No such node.
    #[error("no node {0} in this cluster")]
    NoNode(u32),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Combined broker+controller nodes (1 or 3 in practice). Default 1.
    pub brokers: u32,
    /// Maximum JVM heap per node, MiB. Default 384.
    pub heap_mb: u32,
    /// Extra JVM options (GC, JIT). Default: serial GC and the C1 compiler
    /// only, which starts faster and burns less CPU on a 2-core machine.
    pub jvm_options: Vec<String>,
    /// Extra `server.properties` lines (`key`, `value`), applied last.
    pub server_properties: Vec<(String, String)>,
    /// Keep data here instead of a temporary directory removed on stop.
    pub data_dir: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            brokers: 1,
            heap_mb: 384,
            jvm_options: vec!["-XX:+UseSerialGC".into(), "-XX:TieredStopAtLevel=1".into()],
            server_properties: Vec::new(),
            data_dir: None,
        }
    }
}

/// The loopback ports of one node.
#[derive(Debug, Clone, Copy)]
struct Ports {
    plain: u16,
    controller: u16,
    sasl: u16,
    tls: u16,
    /// Where the `LINK` listener binds.
    link: u16,
    /// Where it is advertised: a [`Link`] forwards this port to `link`.
    link_front: u16,
}

/// Ports reserved per node.
const PORTS_PER_NODE: usize = 6;

/// One node: its id, ports, files and (while running) its process.
struct Node {
    id: u32,
    ports: Ports,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A running cluster. Dropping it stops every node.
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<Node>,
    root: PathBuf,
    /// Removes the root directory on drop when it is a temporary one.
    _temp: Option<tempfile::TempDir>,
    classpath: String,
}

impl Cluster {
    /// Fetches the jars if needed, formats and starts the nodes, and returns
    /// once every broker appears in the cluster's metadata. Blocking.
    pub fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let classpath = java_classpath()?;
        let (temp, root) = match &config.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("kafka-cluster-")
                    .tempdir()
                    .map_err(io("create a temporary directory"))?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        write_certs(&root)?;
        let ports = free_ports(config.brokers as usize * PORTS_PER_NODE)?;
        let nodes: Vec<Node> = (0..config.brokers)
            .map(|i| {
                let p = &ports[i as usize * PORTS_PER_NODE..(i as usize + 1) * PORTS_PER_NODE];
                Node {
                    id: i + 1,
                    ports: Ports {
                        plain: p[0],
                        controller: p[1],
                        sasl: p[2],
                        tls: p[3],
                        link: p[4],
                        link_front: p[5],
                    },
                    dir: root.join(format!("node-{}", i + 1)),
                    child: Mutex::new(None),
                }
            })
            .collect();
        let cluster = Cluster {
            config,
            nodes,
            root,
            _temp: temp,
            classpath,
        };
        cluster.format()?;
        for n in &cluster.nodes {
            cluster.spawn(n)?;
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// The `PLAINTEXT` bootstrap list (`127.0.0.1:port,…`).
    pub fn bootstrap(&self) -> String {
        self.list(|p| p.plain)
    }

    /// The `SASL_PLAINTEXT` (SCRAM-SHA-512) bootstrap list.
    pub fn sasl_bootstrap(&self) -> String {
        self.list(|p| p.sasl)
    }

    /// The `SSL` bootstrap list; the brokers' CA is [`Cluster::ca_path`].
    pub fn tls_bootstrap(&self) -> String {
        self.list(|p| p.tls)
    }

    /// The `LINK` bootstrap list: the ports a [`Link`] serves (nothing
    /// answers there until one is started with [`Link::start`]).
    pub fn link_bootstrap(&self) -> String {
        self.list(|p| p.link_front)
    }

    /// (front, back) port of every node's `LINK` listener: a forwarder
    /// listens on front and connects to back.
    pub fn link_ports(&self) -> Vec<(u16, u16)> {
        self.nodes
            .iter()
            .map(|n| (n.ports.link_front, n.ports.link))
            .collect()
    }

    /// The PEM CA certificate that signed every broker's TLS certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The cluster's root directory (nodes' data and logs).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Number of nodes.
    pub fn brokers(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// The process id of node `id`, if it is running.
    pub fn pid(&self, id: u32) -> Result<Option<u32>, ClusterError> {
        let n = self.node(id)?;
        Ok(lock(&n.child).as_ref().map(|c| c.id()))
    }

    /// SIGKILL node `id` and reap it: a crash, sockets reset.
    pub fn kill(&self, id: u32) -> Result<(), ClusterError> {
        let n = self.node(id)?;
        if let Some(mut c) = lock(&n.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// SIGSTOP node `id`: a hang, its sockets stay open and nothing answers.
    pub fn pause(&self, id: u32) -> Result<(), ClusterError> {
        self.signal(id, libc::SIGSTOP)
    }

    /// SIGCONT node `id` after [`Cluster::pause`].
    pub fn resume(&self, id: u32) -> Result<(), ClusterError> {
        self.signal(id, libc::SIGCONT)
    }

    /// SIGTERM node `id` and wait for its controlled shutdown (SIGKILL
    /// after a deadline).
    pub fn terminate(&self, id: u32) -> Result<(), ClusterError> {
        let n = self.node(id)?;
        let child = lock(&n.child).take();
        if let Some(c) = child {
            stop_children(vec![c]);
        }
        Ok(())
    }

    /// Starts node `id` again from its data directory (after kill or
    /// terminate) and waits until every broker is back in the metadata.
    pub fn restart(&self, id: u32) -> Result<(), ClusterError> {
        let n = self.node(id)?;
        if lock(&n.child).is_some() {
            return Ok(());
        }
        self.spawn(n)?;
        self.wait_ready()
    }

    /// Resumes paused nodes and starts stopped ones again, then waits until
    /// every broker is back: puts a cluster back after a fault test.
    pub fn heal(&self) -> Result<(), ClusterError> {
        for n in &self.nodes {
            let running = lock(&n.child).as_ref().map(|c| c.id());
            match running {
                // SAFETY: kill(2) on a child we own and have not reaped.
                Some(pid) => unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGCONT);
                },
                None => self.spawn(n)?,
            }
        }
        self.wait_ready()
    }

    /// Waits until every running node answers a metadata request itself
    /// and the cluster's metadata lists that many brokers.
    pub fn wait_ready(&self) -> Result<(), ClusterError> {
        let running: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| lock(&n.child).is_some())
            .collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        // Each node is asked through a fresh client bootstrapped at it alone,
        // whose first answer comes from that node (after a quick restart the
        // cluster's metadata may still list the old incarnation). librdkafka
        // names the broker that answered "host:port/id".
        let mut unconfirmed: Vec<String> = running
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.ports.plain))
            .collect();
        loop {
            for n in &running {
                let mut guard = lock(&n.child);
                if let Some(c) = guard.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        guard.take();
                        return Err(ClusterError::NotReady(format!(
                            "node {} exited ({status}); its log ends:\n{}",
                            n.id,
                            log_tail(&n.dir)
                        )));
                    }
                }
            }
            unconfirmed.retain(|addr| {
                let Ok(c) = ClientConfig::new()
                    .set("bootstrap.servers", addr.as_str())
                    .set("log_level", "0")
                    .create::<BaseConsumer>()
                else {
                    return true;
                };
                let answered = c.fetch_metadata(None, Duration::from_secs(2)).map(|md| {
                    md.orig_broker_name().starts_with(&format!("{addr}/"))
                        && md.brokers().len() >= running.len()
                });
                !matches!(answered, Ok(true))
            });
            let all_up = unconfirmed.is_empty();
            if all_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("node {}:\n{}", n.id, log_tail(&n.dir)))
                    .collect();
                return Err(ClusterError::NotReady(format!(
                    "{} brokers not serving metadata after {READY_TIMEOUT:?}\n{}",
                    running.len(),
                    tails.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops every node (SIGTERM, controlled shutdown; SIGKILL after a
    /// deadline) and removes a temporary data directory.
    pub fn stop(self) {
        drop(self)
    }

    fn stop_all(&self) {
        let children: Vec<Child> = self
            .nodes
            .iter()
            .filter_map(|n| lock(&n.child).take())
            .collect();
        stop_children(children);
    }

    fn list(&self, f: impl Fn(&Ports) -> u16) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", f(&n.ports)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&self, id: u32) -> Result<&Node, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or(ClusterError::NoNode(id))
    }

    fn signal(&self, id: u32, sig: libc::c_int) -> Result<(), ClusterError> {
        if let Some(pid) = self.pid(id)? {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
        Ok(())
    }

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
    fn format(&self) -> Result<(), ClusterError> {
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
    fn spawn(&self, n: &Node) -> Result<(), ClusterError> {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// SIGTERM every child at once, then wait; SIGKILL whatever is left after
/// [`STOP_TIMEOUT`].
fn stop_children(mut children: Vec<Child>) {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
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

/// Reserves `n` distinct free loopback ports (all bound at once, then freed).
fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
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
fn write_certs(root: &Path) -> Result<(), ClusterError> {
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
fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for f in ["stdout.log", "server.log"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        out.push_str(&format!("--- {f}\n{}\n", lines[from..].join("\n")));
    }
    out
}

/// The workspace's `target/` directory (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The directory holding the pinned release's jars, fetched with Maven on
/// first use (`mvn dependency:copy-dependencies`; artifacts cached in
/// `~/.m2`). Safe to call from several processes at once (a file lock).
pub fn jars() -> Result<PathBuf, ClusterError> {
    let target = target_dir();
    let dir = target.join(format!("kafka-jars/{KAFKA_VERSION}"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(target.join("kafka-jars")).map_err(io("create target/kafka-jars"))?;
    let lock_file = std::fs::File::create(target.join("kafka-jars/.lock"))
        .map_err(io("create target/kafka-jars/.lock"))?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when it closes.
    unsafe {
        libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX);
    }
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("pom.xml");
    let out = Command::new("mvn")
        .args(["-B", "-q", "-f"])
        .arg(&pom)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", dir.display()))
        .output()
        .map_err(|e| ClusterError::Fetch(format!("cannot run mvn: {e}")))?;
    if !out.status.success() {
        return Err(ClusterError::Fetch(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::write(dir.join(".complete"), KAFKA_VERSION).map_err(io("mark the jars complete"))?;
    Ok(dir)
}

/// The Kafka jars as a `java -cp` classpath.
pub fn java_classpath() -> Result<String, ClusterError> {
    Ok(format!("{}/*", jars()?.display()))
}

/// One cluster for the whole process (a test binary), started on first use
/// and stopped when the process exits. `MKP_TEST_KAFKA_BROKERS` sets its
/// size (default 1). Panics if it cannot start: a test cannot go on.
pub fn shared() -> &'static Cluster {
    let brokers = std::env::var("MKP_TEST_KAFKA_BROKERS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    shared_sized(brokers)
}

/// [`shared`] with a given size; the first call in a process decides it.
pub fn shared_sized(brokers: u32) -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = Cluster::start(ClusterConfig {
            brokers,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("start the shared Kafka cluster: {e}"));
        extern "C" fn stop_at_exit() {
            if let Some(c) = SHARED.get() {
                c.stop_all();
                if let Some(t) = &c._temp {
                    let _ = std::fs::remove_dir_all(t.path());
                }
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        cluster
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pom_pins_the_same_release() {
        let pom = include_str!("../pom.xml");
        assert!(pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")));
    }

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
