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
//!
//! Layout: `cluster.rs` (the running cluster: start, readiness, fault
//! control, stop, the shared one), `cluster/node.rs` (a node's files:
//! `server.properties`, storage format, certificates, logs; its JVM's
//! start), `process.rs` (spawning tied to this process, stopping
//! children, `java`), `jars.rs` (the release's jars), `link.rs` (the
//! silenceable forwarder).

mod cluster;
mod jars;
mod link;
mod process;

pub use cluster::{shared, shared_sized, Cluster};
pub use jars::{jars, java_classpath};
pub use link::Link;
pub use process::{java, spawn_tied_with};

use std::path::PathBuf;

/// The Apache Kafka release every cluster runs; `pom.xml` pins the same.
pub const KAFKA_VERSION: &str = "4.1.1";

/// The SCRAM-SHA-512 user every cluster has on its `SASL` listener.
pub const SCRAM_USER: &str = "mqtt-proxy";
/// That user's password.
pub const SCRAM_PASSWORD: &str = "proxy-secret";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pom_pins_the_same_release() {
        let pom = include_str!("../pom.xml");
        assert!(pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")));
    }
}
