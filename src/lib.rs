//! mqtt-kafka-proxy: a Kafka-native MQTT proxy. Devices speak MQTT 3.1.1 or
//! 5.0 over TCP or TLS; every PUBLISH becomes one Kafka record keyed by the
//! device id, and the device's PUBACK is written only once Kafka has it.
//! The proxy stores nothing; Kafka is the source of truth.
//!
//! # Layout
//!
//! ```text
//! device → Kafka (ingest)
//!
//!   device ─MQTT/TLS/WS─▶ server::listener ──spawn──▶ session::connection ──PUBLISH──▶ ingest::publish
//!                         (permit, accept,            (socket, CONNECT phase,        (checks, limits,
//!                          TLS, PROXY v2)              select! loop; authorize:       ingest::router → topic/key,
//!                                                      ACL + HTTP hook)               ingest::record → headers)
//!                                                            ▲                                │
//!                                                            │ PUBACK / PUBREC in order       ▼
//!                                                      ingest::inflight ◀── delivery ── kafka::producer ──▶ Kafka
//!
//! Kafka → device (commands)
//!
//!   Kafka iot.commands ──▶ commands::consumer ──▶ commands::table ──▶ session (commands::outbound) ──PUBLISH──▶ device
//!         (every partition,     │  not connected here: commands::offline (persistent sessions)
//!          every replica)       │  iot.retained-commands: commands::retained (sent on SUBSCRIBE)
//!                               └─ outcomes ──▶ commands::journal ──▶ iot.command-receipts, lifecycle, sessions
//! ```
//!
//! Modules (dependencies point down this list; no import circle, checked
//! by a test):
//!
//! - [`mqtt`]: packets, the strict decoder, the encoder, topic matching (no I/O).
//! - [`metrics`]: every metric name.
//! - [`limits`]: token buckets, per-source connect limits, log throttling; `[limits]`.
//! - [`kafka`]: Kafka clients: the producer, the start-up topic check, the
//!   embedded broker, librdkafka statistics and logs; `[kafka]`.
//! - [`auth`]: who a device is (certificate, password file, JWT, HTTP hook)
//!   and what it may touch (ACL); `[auth]`.
//! - [`ingest`]: device → Kafka: the per-connection PUBLISH path, routes,
//!   the record format, the in-flight window; `[[routes]]`, `[unmatched]`.
//! - [`commands`]: Kafka → device: consumer, session table, offline index,
//!   retained store, per-connection outbound state, receipts journal;
//!   `[commands]`, `[lifecycle]`.
//! - [`session`]: the connection task (socket, CONNECT, busy spells with
//!   their `select!` loop, the small idle wait, authorization, wills, close
//!   reasons); `[mqtt]`, `[shutdown]`.
//! - [`server`]: listeners and transports (TCP, TLS on rustls's unbuffered
//!   API, WebSocket, PROXY protocol); `[listeners]`.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz`, the Kafka watch; `[ops]`, `[log]`.
//! - [`config`]: the file, environment overrides and validation; it
//!   assembles the sections the modules above define.
//! - [`proxy`]: start-up and graceful shutdown of one replica.
//!
//! Where to change what:
//!
//! - an MQTT property → Kafka header mapping: `ingest/record.rs` (`headers`);
//! - a new authentication method: `auth/config.rs` (`AuthMethod`), a
//!   `by_…` method in `auth/mod.rs`, validation in `config/validate.rs`;
//! - a new command receipt status: `commands/journal.rs` (`Status`), where
//!   it is decided in `commands/outbound.rs` or `commands/consumer.rs`;
//! - a new listener transport: `server/config.rs` (its section),
//!   `server/listener.rs` (`Transport` and the accept loop), started in
//!   `proxy.rs`;
//! - a new PUBLISH check or limit: `ingest/publish.rs` (`admit` before
//!   authorization, `produce` after);
//! - a new configuration key: the section type in its module (above),
//!   its range check in `config/validate.rs`, its default in `config.toml`.

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

#[cfg(test)]
mod structure_tests;

pub use config::Config;
pub use proxy::{run, Proxy, StartError};
