//! The Kafka side, shared by both data paths: the producer every record
//! goes through ([`producer`]), the embedded Kafka-protocol broker used
//! when `bootstrap_servers = "embedded"` ([`embedded`]), librdkafka
//! statistics as metrics ([`stats`]), the start-up check that creates the
//! proxy's topics on a real cluster ([`topics`]), librdkafka's log lines
//! forwarded to `tracing` ([`client_log`]) and the `[kafka]` section
//! ([`config`]). What goes into a record is [`crate::ingest::record`]'s;
//! the command consumer is [`crate::commands::consumer`].

pub mod client_log;
pub mod config;
pub mod embedded;
pub mod producer;
pub mod stats;
pub mod topics;

pub use self::config::KafkaConfig;

/// Now, in milliseconds since the epoch (Kafka's timestamp unit).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Settings every Kafka client of the proxy shares.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// librdkafka `statistics.interval.ms` (0: off).
    pub statistics_interval_ms: u64,
    /// `kafka.client` pass-through options (security, SASL, …).
    pub options: std::collections::BTreeMap<String, String>,
    /// Set while the replica's Kafka watch reports Kafka unreachable (the
    /// producer's flag, [`producer::Producer::outage_flag`]): the client's
    /// librdkafka lines about unanswered brokers go to debug meanwhile.
    pub outage_reported: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Errors from the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the client configuration.
    #[error("kafka client config: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// The embedded broker could not start or be driven.
    #[error("embedded kafka: {0}")]
    Embedded(String),
    /// Binding the embedded broker's public bootstrap address failed.
    #[error("embedded kafka cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
