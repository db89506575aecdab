//! The record format downstream systems rely on (docs/record-format.md):
//! key = device id, value = payload unchanged, MQTT metadata in headers
//! named `mqtt.*`, MQTT 5 user properties as headers under their own names,
//! timestamp = when the proxy received the PUBLISH.

use rdkafka::message::{Header, OwnedHeaders};

use crate::mqtt::packet::{Publish, Version};

/// Header: the MQTT topic name the device published to.
pub const H_TOPIC: &str = "mqtt.topic";
/// Header: QoS of the PUBLISH, `0`, `1` or `2`.
pub const H_QOS: &str = "mqtt.qos";
/// Header: retain flag, `0` or `1`.
pub const H_RETAIN: &str = "mqtt.retain";
/// Header: the MQTT client id of the connection.
pub const H_CLIENT_ID: &str = "mqtt.client_id";
/// Header: protocol version, `3.1.1` or `5.0`.
pub const H_PROTOCOL: &str = "mqtt.protocol";
/// Header (5.0): content type property.
pub const H_CONTENT_TYPE: &str = "mqtt.content_type";
/// Header (5.0): response topic property.
pub const H_RESPONSE_TOPIC: &str = "mqtt.response_topic";
/// Header (5.0): correlation data property, raw bytes.
pub const H_CORRELATION_DATA: &str = "mqtt.correlation_data";
/// Header (5.0): payload format indicator, `0` (bytes) or `1` (UTF-8).
pub const H_PAYLOAD_FORMAT: &str = "mqtt.payload_format";
/// Header (5.0): message expiry interval in seconds.
pub const H_MESSAGE_EXPIRY: &str = "mqtt.message_expiry_interval";

/// Header: `1` on a record produced from a device's last will.
pub const H_WILL: &str = "mqtt.will";

/// Prefix reserved for the proxy's own headers; user properties may not use it.
pub const RESERVED_PREFIX: &str = "mqtt.";

const DIGITS: [&str; 3] = ["0", "1", "2"];

/// Builds the headers for one PUBLISH. `topic` is the resolved topic name
/// (after a 5.0 topic alias).
pub fn headers(publish: &Publish, topic: &str, client_id: &str, version: Version) -> OwnedHeaders {
    let p = &publish.properties;
    let n = 5 + p.user_properties.len() + 5;
    let mut h = OwnedHeaders::new_with_capacity(n)
        .insert(Header {
            key: H_TOPIC,
            value: Some(topic),
        })
        .insert(Header {
            key: H_QOS,
            value: Some(DIGITS[publish.qos as usize]),
        })
        .insert(Header {
            key: H_RETAIN,
            value: Some(DIGITS[publish.retain as usize]),
        })
        .insert(Header {
            key: H_CLIENT_ID,
            value: Some(client_id),
        })
        .insert(Header {
            key: H_PROTOCOL,
            value: Some(match version {
                Version::V311 => "3.1.1",
                Version::V5 => "5.0",
            }),
        });
    if version == Version::V311 {
        return h;
    }
    if let Some(v) = &p.content_type {
        h = h.insert(Header {
            key: H_CONTENT_TYPE,
            value: Some(v.as_str()),
        });
    }
    if let Some(v) = &p.response_topic {
        h = h.insert(Header {
            key: H_RESPONSE_TOPIC,
            value: Some(v.as_str()),
        });
    }
    if let Some(v) = &p.correlation_data {
        h = h.insert(Header {
            key: H_CORRELATION_DATA,
            value: Some(v.as_ref()),
        });
    }
    if let Some(v) = p.payload_format_indicator {
        h = h.insert(Header {
            key: H_PAYLOAD_FORMAT,
            value: Some(DIGITS[(v as usize).min(1)]),
        });
    }
    if let Some(v) = p.message_expiry_interval {
        h = h.insert(Header {
            key: H_MESSAGE_EXPIRY,
            value: Some(v.to_string().as_str()),
        });
    }
    for (k, v) in &p.user_properties {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_str()),
        });
    }
    h
}

/// The first user property whose name uses the reserved `mqtt.` prefix, if any:
/// such a PUBLISH is refused so a device cannot forge the proxy's headers.
pub fn reserved_user_property(publish: &Publish) -> Option<&str> {
    publish
        .properties
        .user_properties
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| k.starts_with(RESERVED_PREFIX))
}
