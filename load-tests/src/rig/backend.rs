//! The Kafka the rig runs against, chosen by `--kafka`: the embedded mock
//! broker in its own process (`mqtt-kafka-proxy dev-kafka`, in memory, one
//! event loop) or a real Apache Kafka cluster (`kafka_cluster::Cluster`:
//! KRaft JVM nodes on loopback, replicated, on disk). Either way the rig gets
//! a bootstrap list for the replicas, the verifier and the direct producer;
//! the pids whose CPU and memory count as "broker"; a line for the report;
//! and a stop that leaves nothing running.
//!
//! On the cluster the replicas create their own topics at start-up
//! (`[kafka.topics]`, `auto.create.topics.enable=false` on the brokers), so
//! this module only creates what the rig writes itself (the direct
//! producer's topic) and waits until the replicas' ingest topics are served
//! before the verifier reads them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_cluster::{Cluster, ClusterConfig, Link};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::process::{free_port, spawn_until, Proc};

/// Which Kafka the rig starts (`--kafka`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaBackend {
    /// librdkafka's mock cluster in a `mqtt-kafka-proxy dev-kafka` process.
    Embedded,
    /// A real Apache Kafka cluster of `--brokers` KRaft nodes (JVMs).
    Cluster,
}

/// How long the replicas' topics may take to be served with a leader on
/// every partition (a loaded 2-core machine creates ~200 partitions × RF 3).
const TOPICS_TIMEOUT: Duration = Duration::from_secs(120);

/// The running Kafka of one rig run.
pub struct RigKafka {
    /// Bootstrap list for every Kafka client of the run.
    pub bootstrap: String,
    /// Bootstrap list for the replicas: `bootstrap`, or with a link (the
    /// fault matrix) the forwarder in front of every broker.
    pub replica_bootstrap: String,
    /// What ran, for the report ("Apache Kafka 4.1.1, 3 brokers, …").
    pub description: String,
    inner: Inner,
}

enum Inner {
    Embedded(Proc),
    /// `None` once stopped. `dir` holds the nodes' data and logs. Shared
    /// with the fault matrix while it plays.
    Cluster {
        cluster: Option<Arc<Cluster>>,
        link: Option<Arc<Link>>,
        dir: PathBuf,
    },
}

impl RigKafka {
    /// Starts the chosen backend. `replica_topics` (every topic the
    /// replicas use) and `direct_topic` are created on the embedded broker,
    /// which has no admin API for the replicas to create theirs; on the
    /// cluster only `direct_topic` is, the replicas create the rest. With
    /// `link` (cluster only) the replicas reach the brokers through a
    /// [`Link`] that the fault matrix can silence.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        backend: KafkaBackend,
        brokers: u32,
        partitions: u32,
        replica_topics: &[String],
        direct_topic: &str,
        proxy_bin: &Path,
        out: &Path,
        link: bool,
    ) -> Result<RigKafka> {
        match backend {
            KafkaBackend::Embedded => {
                let port = free_port()?;
                let mut cmd = Command::new(proxy_bin);
                let mut all: Vec<&str> = replica_topics.iter().map(String::as_str).collect();
                all.push(direct_topic);
                cmd.args(["dev-kafka", "--listen", &format!("127.0.0.1:{port}")])
                    .args(["--partitions", &partitions.to_string()])
                    .args(["--topics", &all.join(",")])
                    .env("RUST_LOG", "warn");
                let (proc, _) = spawn_until(
                    "dev-kafka",
                    cmd,
                    "dev-kafka bootstrap=",
                    &out.join("dev-kafka.log"),
                )?;
                anyhow::ensure!(!link, "the fault matrix needs --kafka cluster");
                Ok(RigKafka {
                    bootstrap: format!("127.0.0.1:{port}"),
                    replica_bootstrap: format!("127.0.0.1:{port}"),
                    description: "embedded mock broker (librdkafka mock cluster, 1 broker, in memory, `mqtt-kafka-proxy dev-kafka`)".into(),
                    inner: Inner::Embedded(proc),
                })
            }
            KafkaBackend::Cluster => {
                anyhow::ensure!(brokers >= 1, "--brokers must be at least 1");
                // Data and logs under the run's directory, so the brokers'
                // logs stay for a post-mortem; a previous run's is removed
                // (a node refuses storage formatted for another cluster).
                let dir = out.join("kafka");
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("remove {}", dir.display()))?;
                }
                let config = ClusterConfig {
                    brokers,
                    data_dir: Some(dir.clone()),
                    ..Default::default()
                };
                let cluster =
                    start_cluster(config, &format!(" (data and logs: {})", dir.display())).await?;
                let link = if link {
                    Some(Arc::new(
                        Link::start(&cluster.link_ports()).context("start the link to Kafka")?,
                    ))
                } else {
                    None
                };
                let mut kafka = RigKafka {
                    bootstrap: cluster.bootstrap(),
                    replica_bootstrap: match link {
                        Some(_) => cluster.link_bootstrap(),
                        None => cluster.bootstrap(),
                    },
                    description: format!(
                        "Apache Kafka {}, {brokers} brokers",
                        kafka_cluster::KAFKA_VERSION
                    ),
                    inner: Inner::Cluster {
                        cluster: Some(Arc::new(cluster)),
                        link,
                        dir,
                    },
                };
                // From here on an error must still stop the JVMs: done by
                // Drop, but on a blocking thread is kinder to the runtime.
                if let Err(e) = create_topic(&kafka.bootstrap, direct_topic, partitions).await {
                    kafka.stop().await;
                    return Err(e);
                }
                Ok(kafka)
            }
        }
    }

    /// The cluster, for the fault matrix (none on the embedded broker).
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        match &self.inner {
            Inner::Cluster { cluster, .. } => cluster.clone(),
            Inner::Embedded(_) => None,
        }
    }

    /// The replicas' link to the cluster, when the run has one.
    pub fn link(&self) -> Option<Arc<Link>> {
        match &self.inner {
            Inner::Cluster { link, .. } => link.clone(),
            Inner::Embedded(_) => None,
        }
    }

    /// The processes that count as "broker" for CPU and memory: the
    /// dev-kafka process, or every running cluster node.
    pub fn pids(&self) -> Vec<u32> {
        match &self.inner {
            Inner::Embedded(p) => vec![p.pid()],
            Inner::Cluster {
                cluster: Some(c), ..
            } => c.pids(),
            Inner::Cluster { cluster: None, .. } => Vec::new(),
        }
    }

    /// On the cluster: waits until every topic of `topics` (created by the
    /// replicas, possibly still in the background) has `partitions`
    /// partitions with a leader, then reads its replication factor and
    /// `min.insync.replicas` into the description. Nothing to do on the
    /// embedded broker, which created them before it said it was ready.
    pub async fn await_topics(&mut self, topics: &[&str], partitions: u32) -> Result<()> {
        if !matches!(self.inner, Inner::Cluster { .. }) {
            return Ok(());
        }
        await_served(&self.bootstrap, topics, partitions, &mut self.description).await
    }

    /// Stops the backend and waits until every process is gone; the
    /// cluster's nodes get SIGTERM (controlled shutdown), SIGKILL after a
    /// deadline. Idempotent. Keeps the nodes' logs, drops their data.
    pub async fn stop(&mut self) {
        match &mut self.inner {
            Inner::Embedded(p) => {
                if let Ok(None) = p.child.try_wait() {
                    p.terminate(Duration::from_secs(10));
                }
            }
            Inner::Cluster { cluster, link, dir } => {
                let Some(c) = cluster.take() else {
                    return;
                };
                drop(link.take());
                let pids = c.pids();
                let started = Instant::now();
                // The fault matrix has let go of it by now; if not, the last
                // reference to drop stops the nodes.
                let stopped = tokio::task::spawn_blocking(move || {
                    if let Ok(c) = Arc::try_unwrap(c) {
                        c.stop();
                    }
                });
                if stopped.await.is_err() {
                    eprintln!("stopping the Kafka cluster panicked");
                }
                let left: Vec<u32> = pids
                    .into_iter()
                    .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                    .collect();
                if left.is_empty() {
                    println!(
                        "kafka cluster stopped in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                } else {
                    eprintln!("kafka nodes still running after stop: pids {left:?}");
                }
                remove_node_data(dir);
            }
        }
    }
}

/// Starts a cluster of `config.brokers` nodes off the runtime, saying
/// so (`note` after the broker count) and how long it took.
pub(crate) async fn start_cluster(config: ClusterConfig, note: &str) -> Result<Cluster> {
    println!(
        "starting Apache Kafka {} with {} broker(s){note}…",
        kafka_cluster::KAFKA_VERSION,
        config.brokers
    );
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(config))
        .await?
        .context("start the Kafka cluster")?;
    println!(
        "kafka cluster up in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        cluster.bootstrap()
    );
    Ok(cluster)
}

/// Waits (off the runtime) until every topic of `topics` is served with
/// `partitions` partitions, each with a leader; appends ", RF n,
/// min.insync.replicas m" of the first to a run's `description`.
pub(crate) async fn await_served(
    bootstrap: &str,
    topics: &[&str],
    partitions: u32,
    description: &mut String,
) -> Result<()> {
    let first = topics.first().context("no topics")?.to_string();
    let boot = bootstrap.to_owned();
    let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let replication =
        tokio::task::spawn_blocking(move || wait_served(&boot, &names, partitions as usize))
            .await??;
    let min_isr = topic_config(bootstrap, &first, "min.insync.replicas")
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
    description.push_str(&format!(
        ", RF {replication}, min.insync.replicas {min_isr}"
    ));
    Ok(())
}

/// Creates `topic` with `partitions` partitions and the brokers' default
/// replication factor, as the replicas create theirs; an existing one is fine.
async fn create_topic(bootstrap: &str, topic: &str, partitions: u32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
    for result in admin
        .create_topics([&new], &opts)
        .await
        .with_context(|| format!("create topic {topic}"))?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Polls metadata until every topic has `partitions` partitions, each
/// with a leader; returns the replication factor of the first topic.
fn wait_served(bootstrap: &str, topics: &[String], partitions: usize) -> Result<usize> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()?;
    let deadline = Instant::now() + TOPICS_TIMEOUT;
    loop {
        let mut waiting = Vec::new();
        let mut replication = 0;
        for (i, t) in topics.iter().enumerate() {
            let served = client
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    let topic = md.topics().first()?;
                    let ps = topic.partitions();
                    let ok = topic.error().is_none()
                        && ps.len() == partitions
                        && ps.iter().all(|p| p.error().is_none() && p.leader() >= 0);
                    ok.then(|| ps.first().map_or(0, |p| p.replicas().len()))
                });
            match served {
                Some(rf) if i == 0 => replication = rf,
                Some(_) => {}
                None => waiting.push(t.as_str()),
            }
        }
        if waiting.is_empty() {
            return Ok(replication);
        }
        if Instant::now() > deadline {
            bail!(
                "topics {waiting:?} not served with {partitions} partitions after {TOPICS_TIMEOUT:?}: did the proxy create them? (the rig: see replica-*.log)"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The effective value of one config of `topic` (its own or the broker default).
async fn topic_config(bootstrap: &str, topic: &str, key: &str) -> Result<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await?;
    let resource = results
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|code| anyhow::anyhow!("{code}"))?;
    resource
        .get(key)
        .and_then(|e| e.value.clone())
        .with_context(|| format!("{key} not in the answer"))
}

/// Removes each node's partition data after a stop (hundreds of MiB at
/// RF 3), keeping its `server.log` and `stdout.log`.
fn remove_node_data(dir: &Path) {
    let Ok(nodes) = std::fs::read_dir(dir) else {
        return;
    };
    for node in nodes.flatten() {
        let data = node.path().join("data");
        if data.is_dir() {
            let _ = std::fs::remove_dir_all(&data);
        }
    }
}
