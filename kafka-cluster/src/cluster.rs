//! The running cluster: [`Cluster::start`] lays out the nodes (ports,
//! directories) and starts them, then readiness, addresses, fault control
//! per node and stopping; [`shared`] keeps one per process for test
//! binaries. A node's files and its JVM's start are in [`node`].

mod node;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::jars::java_classpath;
use crate::process::{lock, stop_children};
use crate::{io, ClusterConfig, ClusterError};
use node::{free_ports, log_tail, write_certs};

/// How long a cluster may take to serve metadata from every broker.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

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

    /// The process ids of the nodes that are running: what counts as
    /// "broker" when CPU and memory are measured.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| lock(&n.child).as_ref().map(|c| c.id()))
            .collect()
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
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
