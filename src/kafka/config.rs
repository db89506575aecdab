//! `[kafka]`: the cluster, librdkafka pass-through options, the start-up
//! topic check and the embedded broker.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// Kafka settings.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `embedded` starts an in-process Kafka-protocol broker; anything else is
    /// a librdkafka `bootstrap.servers` list. Default `embedded`.
    pub bootstrap_servers: String,
    /// How long the producer keeps retrying a record before the device gets a
    /// failure (librdkafka `message.timeout.ms`). Default 60000.
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch (`linger.ms`). Default 5.
    pub linger_ms: u64,
    /// Records the producer may hold in memory before the proxy stops reading
    /// from sockets (`queue.buffering.max.messages`). Default 10000: small
    /// enough that Kafka drains a full queue well within the delivery
    /// timeout (the fault matrix measured 100000 against 10000).
    pub queue_max_messages: u32,
    /// The embedded broker, used when `bootstrap_servers = "embedded"`.
    pub embedded: EmbeddedKafkaConfig,
    /// Any librdkafka option for every Kafka client of the proxy (producer
    /// and command consumer): connection and security settings such as
    /// `"security.protocol"`, `"sasl.mechanisms"`, `"sasl.username"`.
    /// Default empty.
    pub client: BTreeMap<String, String>,
    /// Any librdkafka producer option, passed through last so it wins
    /// (e.g. `"compression.type" = "lz4"`).
    pub producer: BTreeMap<String, String>,
    /// The topics the proxy needs, checked (and created) at start-up on a
    /// real cluster; not used with the embedded broker.
    pub topics: TopicsConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "embedded".into(),
            delivery_timeout_ms: 60_000,
            linger_ms: 5,
            queue_max_messages: 10_000,
            embedded: EmbeddedKafkaConfig::default(),
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            topics: TopicsConfig::default(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Pass-through options may hold SASL passwords or key material.
        let redact = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| {
                    let v = if is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), v.to_owned())
                })
                .collect()
        };
        let (client, producer) = (redact(&self.client), redact(&self.producer));
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("delivery_timeout_ms", &self.delivery_timeout_ms)
            .field("linger_ms", &self.linger_ms)
            .field("queue_max_messages", &self.queue_max_messages)
            .field("embedded", &self.embedded)
            .field("client", &client)
            .field("producer", &producer)
            .field("topics", &self.topics)
            .finish()
    }
}

/// Whether a librdkafka option holds a secret that logs must not show.
pub fn is_secret(key: &str) -> bool {
    ["password", "secret", "key.pem", "token"]
        .iter()
        .any(|s| key.contains(s))
}

/// The topics the proxy reads and writes, on a real Kafka cluster
/// (`kafka.topics`): checked at start-up and, unless told otherwise, created
/// when missing. The sessions and retained-commands topics are always created
/// with `cleanup.policy=compact`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Create missing topics; false makes a missing topic a start-up error.
    /// Default true.
    pub create: bool,
    /// Partitions of each created topic; -1: the broker's `num.partitions`.
    /// Default 6.
    pub partitions: i32,
    /// Replication factor of each created topic; -1: the broker's
    /// `default.replication.factor`. Default -1.
    pub replication_factor: i32,
    /// Upper bound on the start-up check and creation; a cluster that does
    /// not answer within it is checked again in the background. Default 30000.
    pub timeout_ms: u64,
    /// Topic configs for every created topic (e.g. `"min.insync.replicas" =
    /// "2"`, `"retention.ms" = "604800000"`). Default empty.
    pub config: BTreeMap<String, String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            create: true,
            partitions: 6,
            replication_factor: -1,
            timeout_ms: 30_000,
            config: BTreeMap::new(),
        }
    }
}

/// The embedded Kafka-protocol broker (librdkafka's mock cluster).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedKafkaConfig {
    /// Address where other Kafka clients (kcat, consumers) bootstrap from.
    /// Port 0 picks a free port. Default `127.0.0.1:9092`.
    pub listen: SocketAddr,
    /// Number of brokers. Default 1.
    pub brokers: u32,
    /// Partitions of each topic named by a route. Default 6.
    pub partitions: u32,
}

impl Default for EmbeddedKafkaConfig {
    fn default() -> Self {
        EmbeddedKafkaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            brokers: 1,
            partitions: 6,
        }
    }
}
