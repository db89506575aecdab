//! Device → Kafka: what happens to a PUBLISH after the connection task has
//! decoded it and the ACL / hook allowed its topic. [`publish::Ingest`] is
//! one connection's part of this path: the checks the protocol and the
//! limits ask for, the route ([`router`]), the record ([`record`]), the
//! hand-off to the producer (waiting for queue space when it is full) and
//! the acknowledgements, written in the order the PUBLISH packets arrived
//! ([`inflight`]). Last wills take the same route ([`will`]).
//!
//! Files: `publish.rs` (the per-connection path), `inflight.rs` (the
//! in-flight window and `mqtt.ordering`), `router.rs` (routes and their
//! `[[routes]]` / `[unmatched]` configuration), `record.rs` (the Kafka
//! record format), `limiter.rs` (per-connection publish rate limits), `will.rs` (last
//! wills, produced like a PUBLISH).

pub mod inflight;
pub mod limiter;
pub mod publish;
pub mod record;
pub mod router;
pub mod will;

use serde::Deserialize;

pub use self::publish::{Ingest, Pipeline};

/// `mqtt.ordering`: the trade between throughput and a device's order in
/// Kafka when a delivery fails. QoS 0 records are never held by either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishOrdering {
    /// Up to `receive_maximum` records of a connection in the producer's
    /// hands at once; a failed delivery is nacked (5.0) and the records
    /// behind it may land, so a resend of the failed one lands after them.
    #[default]
    Pipelined,
    /// One record of a connection in the producer's hands at a time; later
    /// ones wait in the connection. A failed delivery is nacked and the
    /// connection closed, and the waiting records are never produced, so
    /// the device resends from the failed one, in order.
    Strict,
}
