//! The records the proxy writes about devices and commands: receipts
//! (what happened to each command), lifecycle records (connected /
//! disconnected) and session announcements (which replica holds a client
//! id, read by every replica to kick a session taken over elsewhere).

use rdkafka::message::OwnedHeaders;

use super::table::Command;
use super::{CommandsConfig, LifecycleConfig};
use crate::kafka::now_ms;
use crate::kafka::producer::{Delivery, Producer, Record, SendError};
use crate::metrics as m;

/// Writes receipts, lifecycle records and session announcements. QoS 0
/// style: nobody waits; failures are counted and logged.
pub struct Journal {
    producer: Producer,
    receipts_topic: String,
    lifecycle_topic: String,
    sessions_topic: String,
    /// This replica's name.
    pub replica: String,
}

/// What happened to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The device acknowledged it (QoS 1) or it was written to the device (QoS 0).
    Delivered,
    /// It expired before it could be delivered.
    Expired,
    /// The device is connected but not subscribed to the command's topic.
    NotSubscribed,
    /// Dropped: queue full, too large for the device, or the device left before acknowledging.
    Dropped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Expired => "expired",
            Status::NotSubscribed => "not_subscribed",
            Status::Dropped => "dropped",
        }
    }
}

impl Journal {
    /// A journal writing with `producer`.
    pub fn new(
        producer: Producer,
        commands: &CommandsConfig,
        lifecycle: &LifecycleConfig,
        replica: String,
    ) -> Journal {
        Journal {
            producer,
            receipts_topic: commands.receipts_topic.clone(),
            lifecycle_topic: lifecycle.topic.clone(),
            sessions_topic: lifecycle.sessions_topic.clone(),
            replica,
        }
    }

    fn write(&self, topic: &str, key: &str, value: &serde_json::Value) {
        if topic.is_empty() {
            return;
        }
        let payload = value.to_string();
        let rec = Record {
            topic,
            key: key.as_bytes(),
            payload: payload.as_bytes(),
            headers: OwnedHeaders::new(),
            timestamp_ms: now_ms(),
        };
        match self.producer.send(rec, Box::new(Delivery::Fire)) {
            Ok(()) => {}
            Err(SendError::QueueFull(..)) => {
                metrics::counter!(m::JOURNAL_DROPPED).increment(1);
                tracing::warn!(topic, key, "producer queue full; journal record dropped");
            }
            Err(SendError::Refused(e)) => {
                metrics::counter!(m::JOURNAL_DROPPED).increment(1);
                tracing::warn!(topic, key, error = %e, "journal record refused");
            }
        }
    }

    /// Writes the receipt of one command.
    pub fn receipt(&self, cmd: &Command, status: Status, detail: &str) {
        metrics::counter!(m::COMMANDS, "status" => status.as_str()).increment(1);
        let v = serde_json::json!({
            "status": status.as_str(),
            "detail": detail,
            "command_id": cmd.command_id,
            "device_id": cmd.device_id,
            "mqtt_topic": cmd.mqtt_topic,
            "source": {"topic": cmd.source.0, "partition": cmd.source.1, "offset": cmd.source.2},
            "replica": self.replica,
            "at_ms": now_ms(),
        });
        self.write(&self.receipts_topic, &cmd.device_id, &v);
    }

    /// Writes a connected / disconnected record.
    pub fn lifecycle(&self, client_id: &str, event: &str, peer: &str, reason: Option<&str>) {
        let v = serde_json::json!({
            "event": event,
            "client_id": client_id,
            "peer": peer,
            "reason": reason,
            "replica": self.replica,
            "at_ms": now_ms(),
        });
        self.write(&self.lifecycle_topic, client_id, &v);
    }

    /// Announces that `client_id` connected here at `at_ms`.
    pub fn announce(&self, client_id: &str, at_ms: i64) {
        let v = serde_json::json!({"replica": self.replica, "at_ms": at_ms});
        self.write(&self.sessions_topic, client_id, &v);
    }
}
