//! Last wills: produced through the routes like a PUBLISH from the device
//! (header `mqtt.will = 1`) when a connection ends without a normal
//! DISCONNECT, after the 5.0 will delay unless the client id connects again
//! first (here, or announced by another replica: the session table holds
//! the pending will until then). A delayed will runs on the replica's task
//! tracker; when the replica drains, the delay is cut short and the will
//! produced before the producer's final flush: the proxy keeps no sessions,
//! so its sessions end with it, and a session's end is when a delayed will
//! is due [MQTT-3.1.3-9].

use std::sync::Arc;
use std::time::Duration;

use super::connection::Shared;
use crate::ingest::publish::Publisher;
use crate::ingest::will::produce_will;
use crate::kafka::now_ms;
use crate::mqtt::packet::{Publish, Version, Will};

/// A will held for the end of the connection.
pub(super) struct HeldWill {
    pub(super) will: Will,
    /// 5.0 will delay, capped by the session expiry interval [MQTT-3.1.3-9].
    pub(super) delay: Duration,
}

/// Produces `will` now, or after `delay` unless the client connects again.
pub(super) fn publish_will(
    shared: &Arc<Shared>,
    device_id: &str,
    client_id: &str,
    version: Version,
    will: Will,
    delay: Duration,
) {
    let disconnected_at = now_ms();
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: 0,
        properties: will.properties,
        payload: will.payload,
    };
    let produce = {
        let shared = shared.clone();
        let client_id = client_id.to_owned();
        let device_id = device_id.to_owned();
        move || {
            let who = Publisher {
                device_id: &device_id,
                client_id: &client_id,
            };
            produce_will(&shared.pipeline, &who, version, &publish);
        }
    };
    if delay.is_zero() {
        return produce();
    }
    shared.table.hold_will(device_id, disconnected_at);
    let tasks = shared.tasks.clone();
    let shared = shared.clone();
    let device_id = device_id.to_owned();
    tasks.spawn(async move {
        let draining = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = shared.shutdown.cancelled() => true,
        };
        if shared.table.release_will(&device_id, disconnected_at) {
            if draining {
                tracing::info!(
                    device_id,
                    "replica draining: the session ends with it, so its delayed will is produced now"
                );
            }
            produce();
        } else {
            tracing::info!(
                device_id,
                "last will cancelled: the client connected again within its delay"
            );
        }
    });
}
