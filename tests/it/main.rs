//! The integration suite, one test binary: every module below starts real
//! proxies in-process on port 0 (or the real binary) and talks to them with
//! real MQTT and Kafka clients. One binary links once; filter by module,
//! e.g. `cargo test --test it -- ingest:: commands::`.
//!
//! Shared state to know about: the metrics recorder is process-global
//! (tests assert increases, never exact values), and with
//! `MKP_TEST_KAFKA=cluster` every proxy of this process uses one real Kafka
//! cluster, each with topic names of its own (`common`). The tests that
//! stop, hang or kill brokers are not here: they run in tests/cluster.rs, a
//! binary (and so a cluster) of their own, so a fault never reaches a test
//! of this binary running at the same moment. tests/deploy_metrics.rs is
//! a binary of its own too: it checks that the proxy exports every metric
//! the alerts and the dashboard use, and in a shared process the metrics
//! other tests record would make that check pass for them.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod cli;
mod clients;
mod commands;
mod docs;
mod hostile;
mod ingest;
mod kafka_hang;
mod kafka_outage;
mod limits;
mod ops;
mod ordering;
mod proxy_protocol;
/// Topic creation needs a real cluster (the embedded broker creates any
/// topic asked for): built with `--features real-kafka` (tests/run.sh).
#[cfg(feature = "real-kafka")]
mod topics;
mod websocket;
