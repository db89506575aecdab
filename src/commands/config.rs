//! `[commands]` (the Kafka → device path: topics, queues, who may
//! subscribe to what) and `[lifecycle]` (connect records and the
//! cross-replica session announcements).

use serde::Deserialize;

/// Commands: records on a Kafka topic delivered to connected devices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Consume commands and serve SUBSCRIBE. Default true.
    pub enabled: bool,
    /// Topic back-end services write commands to (key = device id). Default `iot.commands`.
    pub topic: String,
    /// Topic every command's outcome is written to. Default `iot.command-receipts`.
    pub receipts_topic: String,
    /// MQTT topic of a command without an `mqtt.topic` header; `{device_id}`
    /// and `{name}` (the `command.name` header, default `command`) are filled
    /// in. Default `devices/{device_id}/commands/{name}`.
    pub topic_template: String,
    /// Compacted topic of retained commands (desired state, latest per
    /// device and MQTT topic, sent on SUBSCRIBE); empty disables. Default
    /// `iot.retained-commands`.
    pub retained_topic: String,
    /// Filters a device may subscribe to; `{device_id}` is the device's own
    /// id. Default `["devices/{device_id}/commands/#"]`.
    pub subscribe_filters: Vec<String>,
    /// QoS of a command without an `mqtt.qos` header (0 or 1). Default 1.
    pub default_qos: u8,
    /// Commands queued per connection before further ones are dropped, and
    /// held per offline device (oldest dropped first). Default 64.
    pub max_queued_per_device: usize,
    /// QoS 1 commands sent to one connection and not yet acknowledged (also
    /// bounded by the 5.0 client's Receive Maximum). Default 16.
    pub max_unacked_per_device: u16,
    /// How long a command waits for an offline device with a persistent
    /// session (also how far back the start-up rebuild reads). Default 3600000.
    pub offline_max_age_ms: u64,
    /// Name of this replica in receipts and session records; empty means
    /// `hostname-pid`. Default empty.
    pub replica_id: String,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            enabled: true,
            topic: "iot.commands".into(),
            receipts_topic: "iot.command-receipts".into(),
            retained_topic: "iot.retained-commands".into(),
            topic_template: "devices/{device_id}/commands/{name}".into(),
            subscribe_filters: vec!["devices/{device_id}/commands/#".into()],
            default_qos: 1,
            max_queued_per_device: 64,
            max_unacked_per_device: 16,
            offline_max_age_ms: 3_600_000,
            replica_id: String::new(),
        }
    }
}

/// Lifecycle records and the sessions topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Topic for connected / disconnected records (key = device id); empty
    /// disables them. Default `iot.lifecycle`.
    pub topic: String,
    /// Compacted topic where replicas announce connects (key = client id), so
    /// a client id connecting to one replica closes its older session on
    /// another. Default `iot.sessions`.
    pub sessions_topic: String,
    /// How long a replica remembers which replica a client id last
    /// connected to (counted from that connect, or from its disconnect
    /// here), unless commands are still held for it. That replica writes
    /// the receipts of the client's commands that fall out of the offline
    /// index; a client id silent for longer is treated like one that never
    /// connected (its later commands fall out unreported, counted as
    /// `fell_out_unowned`). At least `commands.offline_max_age_ms`.
    /// Default 604800000 (7 days).
    pub owner_max_age_ms: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            topic: "iot.lifecycle".into(),
            sessions_topic: "iot.sessions".into(),
            owner_max_age_ms: 604_800_000,
        }
    }
}
