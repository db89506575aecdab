//! Retained commands: desired state per device. Back-end services write
//! them to a compacted topic (key = device id, header `mqtt.topic` or the
//! topic template as for commands); every replica keeps the latest per
//! device and MQTT topic, rebuilt from that topic at start-up, and sends the
//! matching ones to a device when it subscribes. An empty value deletes.

use dashmap::DashMap;

use super::table::Command;
use crate::mqtt::topic;

/// Latest retained command per device and MQTT topic.
#[derive(Default)]
pub struct RetainedStore {
    map: DashMap<String, Vec<Command>>,
}

impl RetainedStore {
    /// Stores (or, with an empty payload, deletes) a retained command.
    pub fn set(&self, cmd: &Command) {
        let mut entry = self.map.entry(cmd.device_id.clone()).or_default();
        entry.retain(|c| c.mqtt_topic != cmd.mqtt_topic);
        if !cmd.payload.is_empty() {
            entry.push(cmd.clone());
        }
        let empty = entry.is_empty();
        drop(entry);
        if empty {
            self.map.remove_if(&cmd.device_id, |_, v| v.is_empty());
        }
    }

    /// The device's retained commands whose topic matches `filter`.
    pub fn matching(&self, device_id: &str, filter: &str) -> Vec<Box<Command>> {
        self.map
            .get(device_id)
            .map(|v| {
                v.iter()
                    .filter(|c| topic::matches(filter, &c.mqtt_topic))
                    .map(|c| Box::new(c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(topic: &str, payload: &'static [u8]) -> Command {
        Command {
            device_id: "d".into(),
            mqtt_topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            qos: crate::mqtt::packet::QoS::AtLeastOnce,
            expires_at_ms: None,
            command_id: None,
            source: ("iot.retained-commands".into(), 0, 0),
            created_ms: 0,
            retain: true,
        }
    }

    #[test]
    fn latest_per_topic_and_empty_deletes() {
        let s = RetainedStore::default();
        s.set(&cmd("devices/d/commands/led", b"on"));
        s.set(&cmd("devices/d/commands/led", b"off"));
        s.set(&cmd("devices/d/commands/fan", b"2"));
        let led = s.matching("d", "devices/d/commands/led");
        assert_eq!(led.len(), 1);
        assert_eq!(&led[0].payload[..], b"off");
        assert_eq!(s.matching("d", "devices/d/commands/#").len(), 2);
        s.set(&cmd("devices/d/commands/led", b""));
        assert!(s.matching("d", "devices/d/commands/led").is_empty());
        assert!(s.matching("other", "#").is_empty());
    }
}
