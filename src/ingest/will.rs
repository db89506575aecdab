//! Last wills on the device → Kafka path: a will is produced through the
//! routes like a PUBLISH from the device, with header `mqtt.will = 1`.
//! When (after which delay, unless the client came back) is the connection
//! task's business (`session::will`).

use super::publish::{Pipeline, Publisher};
use super::record;
use crate::kafka::now_ms;
use crate::kafka::producer::{Delivery, Record};
use crate::metrics as m;
use crate::mqtt::packet::{Publish, Version};

/// Produces a last will through the routes, like a PUBLISH from the device
/// (header `mqtt.will = 1`), at QoS 0: nobody is left to acknowledge it.
pub fn produce_will(pipe: &Pipeline, who: &Publisher<'_>, version: Version, will: &Publish) {
    let Some(dest) = pipe.router.route(&will.topic, who.device_id) else {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => "no_route").increment(1);
        tracing::warn!(topic = %will.topic, "last will matches no route; not produced");
        return;
    };
    let headers = record::headers(will, &will.topic, who.client_id, version).insert(
        rdkafka::message::Header {
            key: record::H_WILL,
            value: Some("1"),
        },
    );
    // As for a PUBLISH: with authentication on, the identity is the key.
    let key = pipe.key(dest.key, who.device_id);
    let rec = Record {
        topic: dest.kafka_topic,
        key: key.as_bytes(),
        payload: &will.payload,
        headers,
        timestamp_ms: now_ms(),
    };
    match pipe.producer.send(rec, Box::new(Delivery::Fire)) {
        Ok(()) => tracing::info!(topic = %will.topic, "last will produced"),
        Err(_) => {
            metrics::counter!(m::QOS0_DROPPED).increment(1);
            tracing::warn!(topic = %will.topic, "last will could not be produced");
        }
    }
}
