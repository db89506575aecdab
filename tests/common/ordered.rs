//! A device that keeps its own order: a raw 5.0 client that resends what
//! was not acknowledged, oldest first, on a new connection (as firmware with
//! a persistent outbox does), and the checks on what Kafka then holds.

use mqtt_kafka_proxy::mqtt::packet::{QoS, Version};

use super::{publish, publish_bytes, raw_v5_connect, try_read_packet, Rec};

/// Publishes `msgs` at QoS 1 from device `id` on `topic` and resends every
/// one not acknowledged with success, oldest first, on a new connection,
/// until all are acknowledged. Returns how many connections it took.
pub async fn publish_in_order_until_acked(
    port: u16,
    id: &str,
    topic: &str,
    msgs: &[String],
    limit: std::time::Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut acked = 0;
    let mut connections = 0;
    while acked < msgs.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: {} of {} messages acknowledged before the deadline",
            acked,
            msgs.len()
        );
        connections += 1;
        let mut raw = raw_v5_connect(port, id).await;
        let outbox = &msgs[acked..];
        for (i, m) in outbox.iter().enumerate() {
            let p = publish(topic, QoS::AtLeastOnce, i as u16 + 1, m.as_bytes());
            raw.send(&publish_bytes(p, Version::V5)).await;
        }
        // Acknowledgements come in publish order [MQTT-4.6.0-2].
        for i in 0..outbox.len() {
            let Some((b1, body)) = try_read_packet(&mut raw).await else {
                break;
            };
            if b1 == 0xE0 {
                break;
            }
            assert_eq!(
                b1, 0x40,
                "{id}: expected a PUBACK, got {b1:#04x} {body:02x?}"
            );
            assert_eq!(
                u16::from_be_bytes([body[0], body[1]]),
                i as u16 + 1,
                "{id}: PUBACKs out of order"
            );
            if body.len() > 2 && body[2] != 0 {
                // Resend from this one on a new connection.
                break;
            }
            acked += 1;
        }
    }
    connections
}

/// The sequence numbers of device `key`'s records whose values are
/// `"{key}:{seq}"`, in Kafka order.
pub fn seqs(recs: &[Rec], key: &str) -> Vec<u64> {
    recs.iter()
        .filter(|r| r.key == key)
        .map(|r| {
            let v = String::from_utf8_lossy(&r.value);
            v.rsplit(':')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{key}: unexpected value {v:?}"))
        })
        .collect()
}

/// Kafka holds `1..=n` for this device, each first appearing in order, and
/// no record ever lands after a later one (a resend may repeat the one
/// just before it: duplicates are allowed, going back is not).
pub fn assert_device_order(key: &str, seqs: &[u64], n: u64) {
    let violations: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        violations.is_empty(),
        "{key}: records reordered in Kafka ({} violation(s), e.g. {:?}); Kafka order: {seqs:?}",
        violations.len(),
        violations.first()
    );
    let mut distinct = seqs.to_vec();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=n).collect::<Vec<_>>(),
        "{key}: every message once or more, none missing; Kafka order: {seqs:?}"
    );
}
