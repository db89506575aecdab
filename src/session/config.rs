//! `[mqtt]` (protocol limits and timeouts of every connection) and
//! `[shutdown]` (how connections are drained).

use serde::Deserialize;

use crate::ingest::PublishOrdering;

/// MQTT protocol settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Deadline for the TLS handshake plus the whole CONNECT packet. Default 10000.
    pub connect_timeout_ms: u64,
    /// Largest packet accepted (fixed header included); larger ones close the
    /// connection (5.0: DISCONNECT 0x95) before their body is read. Announced
    /// to 5.0 clients as Maximum Packet Size. Default 262144.
    pub max_packet_size_bytes: usize,
    /// Unacknowledged QoS 1/2 PUBLISH packets per connection (5.0: announced as
    /// Receive Maximum; 3.1.1: the proxy stops reading at this many). Default 64.
    pub receive_maximum: u16,
    /// Inbound topic aliases per 5.0 connection (0 disables). Default 16.
    pub topic_alias_maximum: u16,
    /// Longest client id accepted, in bytes. Default 128.
    pub max_client_id_bytes: usize,
    /// Most user properties in one packet. Default 32.
    pub max_user_properties: usize,
    /// Give up on a client that does not read what the proxy writes. Default 30000.
    pub write_timeout_ms: u64,
    /// Give a client that connects with an empty client id a generated one
    /// (`auto-…`); false refuses it (3.1.1: 0x02, 5.0: 0x85). Default true.
    pub assign_client_ids: bool,
    /// Longest topic name in a PUBLISH and topic filter in a SUBSCRIBE, in
    /// bytes. Default 256.
    pub max_topic_bytes: usize,
    /// QoS 2 packet ids a connection may hold between PUBREC and PUBREL
    /// (3.1.1; for 5.0 Receive Maximum bounds them); more closes the
    /// connection. Default 256.
    pub max_awaiting_rel: usize,
    /// Command subscriptions one connection may hold; one more filter is
    /// refused (5.0: SUBACK 0x97 Quota exceeded; 3.1.1: 0x80). Default 32.
    pub max_subscriptions: usize,
    /// Once the first byte of a packet has arrived, the rest must follow
    /// within this time (slowloris guard; the CONNECT has
    /// `connect_timeout_ms`). Default 30000.
    pub partial_packet_timeout_ms: u64,
    /// How a connection's QoS 1/2 records are handed to Kafka, and what a
    /// failed delivery does to the ones behind it. Default `pipelined`.
    pub ordering: PublishOrdering,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            connect_timeout_ms: 10_000,
            max_packet_size_bytes: 262_144,
            receive_maximum: 64,
            topic_alias_maximum: 16,
            max_client_id_bytes: 128,
            max_user_properties: 32,
            write_timeout_ms: 30_000,
            assign_client_ids: true,
            max_topic_bytes: 256,
            max_awaiting_rel: 256,
            max_subscriptions: 32,
            partial_packet_timeout_ms: 30_000,
            ordering: PublishOrdering::Pipelined,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Upper bound on the whole drain: waiting for in-flight acknowledgements
    /// and flushing the producer. Default 30000.
    pub drain_timeout_ms: u64,
    /// How long `/readyz` reports "draining" before the listeners close, so
    /// load balancers stop sending new connections first. Default 0 (in
    /// Kubernetes a preStop hook usually gives this time).
    pub readiness_grace_ms: u64,
    /// Connections are told to go (5.0: DISCONNECT) at random moments
    /// spread over this window, so the fleet does not reconnect at once.
    /// Must be below `drain_timeout_ms`. Default 0.
    pub disconnect_spread_ms: u64,
    /// When set, 5.0 clients get DISCONNECT 0x9C (use another server) with
    /// this Server Reference instead of 0x8B (server shutting down). Default empty.
    pub server_reference: String,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 30_000,
            readiness_grace_ms: 0,
            disconnect_spread_ms: 0,
            server_reference: String::new(),
        }
    }
}
