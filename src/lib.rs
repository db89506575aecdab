//! mqtt-kafka-proxy: a Kafka-native MQTT proxy. Devices speak MQTT 3.1.1 or
//! 5.0 over TCP or TLS; every PUBLISH becomes one Kafka record keyed by the
//! device id, and the device's PUBACK is written only once Kafka has it.
//! The proxy stores nothing; Kafka is the source of truth.
//!
//! # Layout
//!
//! ```text
//! device ─MQTT/TLS─▶ server::listener ─spawn─▶ session::connection ──PUBLISH──▶ router ──▶ kafka::producer ──▶ Kafka
//!                    (permit, accept,          (TLS handshake, CONNECT,        (route →     (idempotent,
//!                     backoff)                  select! loop, flow control)     topic, key)   acks=all)
//!                                                      ▲                                          │
//!                                                      └──────────── delivery report ─────────────┘
//!                                                                   (PUBACK / PUBREC)
//!
//! Kafka iot.commands ──▶ kafka::commands (every partition, every replica) ──▶ session::table
//!     (sharded by device id) ──▶ connection ──PUBLISH──▶ device;  outcomes ──▶ iot.command-receipts
//!     devices not here ──▶ session::offline (bounded, rebuilt from Kafka); iot.retained-commands ──▶ session::retained
//! ```
//!
//! - [`config`]: the configuration tree and its validation.
//! - [`mqtt`]: packets, the strict decoder and the encoder (no I/O).
//! - [`server`]: listeners, accept loops, TLS.
//! - [`session`]: the per-connection task, its in-flight window
//!   (`mqtt.ordering`) and its framed socket.
//! - [`router`]: MQTT topic → Kafka topic and key.
//! - [`kafka`]: the producer, the record format, the command consumer, the
//!   start-up topic check on a real cluster, the embedded broker (with the
//!   forwarders that let every Kafka client read it), librdkafka's log
//!   lines forwarded to `tracing`.
//! - [`metrics`]: every metric name.
//! - [`proxy`]: start-up and graceful shutdown of the whole replica.

pub mod auth;
pub mod commands;
pub mod config;
pub mod ingest;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod mqtt;
pub mod ops;
pub mod proxy;
pub mod server;
pub mod session;

pub use config::Config;
pub use proxy::{run, Proxy, StartError};
