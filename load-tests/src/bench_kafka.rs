//! The Kafka an in-process benchmark (`ingest-bench`, `command-bench`) runs
//! against, chosen by `--kafka`: the embedded mock broker in this process
//! (as the embedded figures in the README were measured), or a real Apache
//! Kafka cluster of `--brokers` KRaft JVM nodes on loopback
//! (`kafka_cluster::Cluster`, RF min(3, N), `min.insync.replicas` min(2, N),
//! topic auto-creation off). The proxy and the direct rdkafka client of a run
//! both bootstrap from [`BenchKafka::bootstrap`].
//!
//! The rig has its own backend (`rig/backend.rs`): it runs the embedded
//! broker as a separate `dev-kafka` process and keeps the cluster's logs
//! under its report directory; here everything is one process and the
//! cluster lives in a temporary directory removed on stop.
//!
//! On the cluster the proxy creates its topics at start-up (`[kafka.topics]`,
//! as in production); [`BenchKafka::await_topics`] waits until they are served
//! before anything writes to them. On the embedded broker they are created
//! here (the mock has no CreateTopics).

use anyhow::{Context, Result};
use kafka_cluster::{Cluster, ClusterConfig};
use mqtt_kafka_proxy::kafka::embedded::EmbeddedKafka;
use mqtt_kafka_proxy::Config;

use crate::rig::backend::{await_served, start_cluster};

pub use crate::rig::KafkaBackend;

/// The running Kafka of one benchmark run.
pub struct BenchKafka {
    /// Bootstrap list for the proxy and the direct client.
    pub bootstrap: String,
    /// What ran ("Apache Kafka 4.1.1, 3 brokers, RF 3, min.insync.replicas 2").
    pub description: String,
    inner: Inner,
}

/// `None` once stopped.
enum Inner {
    Embedded(Option<EmbeddedKafka>),
    Cluster(Option<Cluster>),
}

impl BenchKafka {
    /// Starts the chosen backend. On the embedded broker, every topic the
    /// proxy names (`Config::kafka_topics` of the default config) is created
    /// with `partitions` partitions.
    pub async fn start(backend: KafkaBackend, brokers: u32, partitions: u32) -> Result<BenchKafka> {
        match backend {
            KafkaBackend::Embedded => {
                let topics = Config::default().kafka_topics();
                let kafka = EmbeddedKafka::start(1, partitions, &topics, "127.0.0.1:0".parse()?)
                    .await
                    .context("embedded broker")?;
                Ok(BenchKafka {
                    bootstrap: kafka.bootstrap_servers().to_owned(),
                    description:
                        "embedded mock broker (librdkafka mock cluster, 1 broker, in this process)"
                            .into(),
                    inner: Inner::Embedded(Some(kafka)),
                })
            }
            KafkaBackend::Cluster => {
                anyhow::ensure!(brokers >= 1, "--brokers must be at least 1");
                let config = ClusterConfig {
                    brokers,
                    ..Default::default()
                };
                let cluster = start_cluster(config, "").await?;
                Ok(BenchKafka {
                    bootstrap: cluster.bootstrap(),
                    description: format!(
                        "Apache Kafka {}, {brokers} brokers",
                        kafka_cluster::KAFKA_VERSION
                    ),
                    inner: Inner::Cluster(Some(cluster)),
                })
            }
        }
    }

    /// Whether this is a real cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// The broker processes: every running cluster node; none for the
    /// embedded broker (it runs in this process).
    pub fn broker_pids(&self) -> Vec<u32> {
        match &self.inner {
            Inner::Cluster(Some(c)) => c.pids(),
            _ => Vec::new(),
        }
    }

    /// Sets what the proxy needs to use this Kafka: the bootstrap list and,
    /// on the cluster, topic creation with `partitions` partitions and the
    /// brokers' default replication factor.
    pub fn configure(&self, config: &mut Config, partitions: u32) {
        config.kafka.bootstrap_servers = self.bootstrap.clone();
        if self.is_cluster() {
            config.kafka.topics.create = true;
            config.kafka.topics.partitions = partitions as i32;
            config.kafka.topics.replication_factor = -1;
        }
    }

    /// On the cluster: waits until every topic of `topics` has
    /// `partitions` partitions, each with a leader (a created topic shows in
    /// the metadata a moment after CreateTopics returns), then adds the
    /// replication factor and `min.insync.replicas` of the first to the
    /// description. Nothing to do on the embedded broker.
    pub async fn await_topics(&mut self, topics: &[&str], partitions: u32) -> Result<()> {
        if !self.is_cluster() {
            return Ok(());
        }
        await_served(&self.bootstrap, topics, partitions, &mut self.description).await
    }

    /// Stops the backend; the cluster's nodes get a controlled shutdown.
    /// Idempotent.
    pub async fn stop(&mut self) {
        match &mut self.inner {
            Inner::Embedded(k) => drop(k.take()),
            Inner::Cluster(c) => {
                if let Some(c) = c.take() {
                    if tokio::task::spawn_blocking(move || c.stop()).await.is_err() {
                        eprintln!("stopping the Kafka cluster panicked");
                    }
                }
            }
        }
    }
}
