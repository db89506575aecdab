//! The verifier: a Kafka consumer that reads every partition of the ingest
//! topics from the beginning while the run goes (librdkafka's mock broker
//! keeps only the last 5 MiB / 100k records per partition, so reading after
//! the run could miss records the broker already dropped; a real cluster
//! keeps them, and is read the same way), and checks what it finds against
//! the devices' ledger: every acknowledged QoS 1 message present, per-device
//! order kept, duplicates counted, end-to-end latency (send time in the
//! payload → record consumed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

#[derive(Default, Clone)]
struct DeviceSeen {
    /// Bit per QoS 1 seq seen (a device's seqs span its event and snapshot topics).
    seen: Vec<u64>,
    /// Per topic: the last seq seen for the first time.
    last_new: [Option<u64>; 2],
    duplicates: u64,
    order_violations: u64,
    /// The seqs found again, and those found out of order (for attributing
    /// them to a part of the run); rare outside faults.
    duplicate_seqs: Vec<u64>,
    violation_seqs: Vec<u64>,
}

impl DeviceSeen {
    fn record(&mut self, topic: usize, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            self.duplicate_seqs.push(seq);
            return;
        }
        self.seen[word] |= 1 << bit;
        // Within one topic (one partition per device), first occurrences must
        // come in publish order; gaps are counted as losses against the ledger.
        if matches!(self.last_new[topic], Some(last) if seq < last) {
            self.order_violations += 1;
            self.violation_seqs.push(seq);
        }
        self.last_new[topic] = Some(seq);
    }

    fn has(&self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        word < self.seen.len() && self.seen[word] & (1 << (seq % 64)) != 0
    }
}

/// What the verifier concluded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// QoS 1 messages the devices had acknowledged.
    pub acked: u64,
    /// QoS 1 records found (duplicates included).
    pub found_qos1: u64,
    /// QoS 0 records found.
    pub found_qos0: u64,
    /// Acknowledged messages not found in Kafka: must be 0.
    pub lost: u64,
    /// Records found more than once (device resends after a reconnect).
    pub duplicated: u64,
    /// First occurrences out of publish order, summed over devices: must be 0.
    pub order_violations: u64,
    /// Records not written by this run (other epochs or unparseable).
    pub foreign: u64,
    /// End-to-end latency p50, ms.
    pub e2e_p50_ms: f64,
    /// End-to-end latency p99, ms.
    pub e2e_p99_ms: f64,
}

struct Shared {
    stop: AtomicBool,
    found: AtomicU64,
}

/// What the consuming thread hands back when it stops.
struct Findings {
    seen: Vec<DeviceSeen>,
    qos0: u64,
    foreign: u64,
    e2e: Histogram<u64>,
}

/// A running verifier.
pub struct Verifier {
    shared: Arc<Shared>,
    /// `None` once [`Verifier::finish_by_part`] took it.
    handle: Option<JoinHandle<Result<Findings>>>,
}

fn field(payload: &[u8], name: &[u8]) -> Option<u64> {
    let pos = payload.windows(name.len()).position(|w| w == name)? + name.len();
    let digits = payload[pos..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[pos..pos + digits])
        .ok()?
        .parse()
        .ok()
}

impl Verifier {
    /// Starts consuming `topics` (each with `partitions` partitions) from
    /// the beginning. `fetch_wait_max_ms` bounds how long a broker holds a
    /// fetch with nothing new: short for the mock broker (see below), the
    /// usual order for a real one.
    pub fn start(
        bootstrap: &str,
        topics: &[&str],
        partitions: u32,
        devices: u64,
        epoch: u64,
        fetch_wait_max_ms: u32,
    ) -> Result<Verifier> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "load-test-verifier")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "52428800")
            // librdkafka's mock broker answers a fetch with one message set
            // per partition ("FIXME: Multiple messageSets ?" in
            // rdkafka_mock_handlers.c), so against it the verifier keeps up
            // only by fetching often: the rig passes 10 ms there.
            .set("fetch.wait.max.ms", fetch_wait_max_ms.to_string())
            // Brokers going away is what the fault matrix does: the
            // verifier reconnects and reads on; its own errors would only
            // bury the run's output.
            .set("log_level", "2")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..partitions as i32 {
                tpl.add_partition_offset(t, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            found: AtomicU64::new(0),
        });
        let s = shared.clone();
        let topics0 = topics.first().map(|t| t.to_string()).unwrap_or_default();
        let handle = std::thread::Builder::new()
            .name("verifier".into())
            .spawn(move || {
                let mut seen = vec![DeviceSeen::default(); devices as usize];
                let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
                let (mut qos0, mut foreign) = (0u64, 0u64);
                let mut idle_since: Option<Instant> = None;
                loop {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            idle_since = None;
                            let now_us =
                                SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
                            let p = m.payload().unwrap_or_default();
                            let parsed = (
                                field(p, b"\"d\":\"dev-"),
                                field(p, b"\"e\":"),
                                field(p, b"\"s\":"),
                                field(p, b"\"q\":"),
                                field(p, b"\"t\":"),
                            );
                            match parsed {
                                (Some(d), Some(e), Some(seq), Some(q), Some(t))
                                    if e == epoch && d < devices =>
                                {
                                    let _ = e2e.record(now_us.saturating_sub(t).max(1));
                                    if q == 0 {
                                        qos0 += 1;
                                    } else {
                                        let topic = usize::from(m.topic() != topics0);
                                        seen[d as usize].record(topic, seq);
                                    }
                                    s.found.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => foreign += 1,
                            }
                        }
                        Some(Err(KafkaError::MessageConsumption(
                            RDKafkaErrorCode::BrokerTransportFailure
                            | RDKafkaErrorCode::AllBrokersDown,
                        ))) => {}
                        Some(Err(e)) => eprintln!("verifier: {e}"),
                        None => {
                            // Stop once asked and nothing has arrived for 3 s.
                            let since = *idle_since.get_or_insert_with(Instant::now);
                            if s.stop.load(Ordering::Relaxed)
                                && since.elapsed() > Duration::from_secs(3)
                            {
                                break;
                            }
                        }
                    }
                }
                Ok(Findings {
                    seen,
                    qos0,
                    foreign,
                    e2e,
                })
            })?;
        Ok(Verifier {
            shared,
            handle: Some(handle),
        })
    }

    /// Records consumed so far.
    pub fn found(&self) -> u64 {
        self.shared.found.load(Ordering::Relaxed)
    }

    /// Stops once the topics are drained and checks against the ledger
    /// (`acked[i]` = QoS 1 messages device i had acknowledged: seqs 0..n);
    /// returns the verdict, and the same counts for each part of the run
    /// between the ledger's marks (`marks[k][i]`: device i's acknowledged
    /// count at mark k): part 0 is everything acknowledged before the first
    /// mark, part k what was acknowledged between marks k-1 and k, the last
    /// part what came after the last mark. A duplicate or an order violation
    /// counts in the part its seq was acknowledged in (or the last part, if
    /// it never was).
    pub fn finish_by_part(
        mut self,
        acked: &[u64],
        marks: &[Vec<u64>],
    ) -> Result<(Verdict, Vec<PartVerdict>)> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let f = self
            .handle
            .take()
            .ok_or_else(|| anyhow::anyhow!("verifier already finished"))?
            .join()
            .map_err(|_| anyhow::anyhow!("verifier panicked"))??;
        Ok((
            verdict(&f.seen, acked, f.qos0, f.foreign, &f.e2e),
            by_part(&f.seen, acked, marks),
        ))
    }
}

impl Drop for Verifier {
    /// A run that fails before [`Verifier::finish_by_part`] still stops the
    /// consuming thread (within ~3 s), rather than leaving it polling a
    /// Kafka that is being stopped.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Compares what was found with the ledger (`acked[i]`: device i's QoS 1
/// seqs 0..n were acknowledged).
fn verdict(
    seen: &[DeviceSeen],
    acked: &[u64],
    found_qos0: u64,
    foreign: u64,
    e2e: &Histogram<u64>,
) -> Verdict {
    let mut v = Verdict {
        found_qos0,
        foreign,
        ..Verdict::default()
    };
    for (d, n) in acked.iter().enumerate() {
        let s = &seen[d];
        v.acked += n;
        v.lost += (0..*n).filter(|seq| !s.has(*seq)).count() as u64;
        v.duplicated += s.duplicates;
        v.order_violations += s.order_violations;
        v.found_qos1 += s.seen.iter().map(|w| w.count_ones() as u64).sum::<u64>() + s.duplicates;
    }
    if !e2e.is_empty() {
        v.e2e_p50_ms = e2e.value_at_quantile(0.5) as f64 / 1000.0;
        v.e2e_p99_ms = e2e.value_at_quantile(0.99) as f64 / 1000.0;
    }
    v
}

/// The verdict's counts for one part of the run (see
/// [`Verifier::finish_by_part`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartVerdict {
    /// QoS 1 messages acknowledged in this part.
    pub acked: u64,
    /// Of those, not found in Kafka: must be 0.
    pub lost: u64,
    /// Records found again whose seq was acknowledged in this part.
    pub duplicated: u64,
    /// Records found out of order whose seq was acknowledged in this part.
    pub order_violations: u64,
}

fn by_part(seen: &[DeviceSeen], acked: &[u64], marks: &[Vec<u64>]) -> Vec<PartVerdict> {
    let mut parts = vec![PartVerdict::default(); marks.len() + 1];
    for (d, &n) in acked.iter().enumerate() {
        let s = &seen[d];
        // Part k holds seqs [bounds[k], bounds[k + 1]).
        let mut bounds = vec![0u64];
        bounds.extend(marks.iter().map(|m| m.get(d).copied().unwrap_or(0)));
        let part_of = |seq: u64| bounds.iter().rposition(|&b| seq >= b).unwrap_or(0);
        for (k, p) in parts.iter_mut().enumerate() {
            let lo = bounds[k];
            let hi = bounds.get(k + 1).copied().unwrap_or(u64::MAX).min(n);
            if hi > lo {
                p.acked += hi - lo;
                p.lost += (lo..hi).filter(|seq| !s.has(*seq)).count() as u64;
            }
        }
        for &seq in &s.duplicate_seqs {
            parts[part_of(seq)].duplicated += 1;
        }
        for &seq in &s.violation_seqs {
            parts[part_of(seq)].order_violations += 1;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_fields_are_parsed() {
        let p = br#"{"d":"dev-000042","e":7,"s":13,"q":1,"t":1700000000123456,"kind":"door"}"#;
        assert_eq!(field(p, b"\"d\":\"dev-"), Some(42));
        assert_eq!(field(p, b"\"e\":"), Some(7));
        assert_eq!(field(p, b"\"s\":"), Some(13));
        assert_eq!(field(p, b"\"q\":"), Some(1));
        assert_eq!(field(p, b"\"t\":"), Some(1_700_000_000_123_456));
        assert_eq!(field(b"{}", b"\"s\":"), None);
    }

    #[test]
    fn in_order_records_with_a_resend_are_duplicates_not_violations() {
        let mut d = DeviceSeen::default();
        for seq in [0, 1, 2, 1, 2, 3] {
            d.record(0, seq);
        }
        assert_eq!((d.duplicates, d.order_violations), (2, 0));
        assert!((0..4).all(|s| d.has(s)));
        assert!(!d.has(4));
    }

    #[test]
    fn reordering_within_a_topic_is_a_violation_across_topics_is_not() {
        let mut d = DeviceSeen::default();
        // Events and snapshots share one sequence but live in two topics.
        d.record(0, 0);
        d.record(1, 2);
        d.record(0, 1);
        assert_eq!(d.order_violations, 0);
        d.record(0, 5);
        d.record(0, 4);
        assert_eq!(d.order_violations, 1);
    }

    #[test]
    fn parts_split_acks_losses_duplicates_and_violations_at_the_marks() {
        // Device 0: acked 0..10, marks at 3 and 7; seq 5 missing, seq 8
        // found twice, seq 1 found after 2 (a violation in part 0).
        let mut a = DeviceSeen::default();
        for seq in [0, 2, 1, 3, 4, 6, 7, 8, 8, 9, 10] {
            a.record(0, seq);
        }
        // Device 1: acked 0..2, both before the first mark; seq 4 (never
        // acknowledged) found twice: the duplicate counts in the last part.
        let mut b = DeviceSeen::default();
        for seq in [0, 1, 4, 4] {
            b.record(0, seq);
        }
        let marks = vec![vec![3, 2], vec![7, 2]];
        let parts = by_part(&[a, b], &[10, 2], &marks);
        let p = |acked, lost, duplicated, order_violations| PartVerdict {
            acked,
            lost,
            duplicated,
            order_violations,
        };
        assert_eq!(parts, vec![p(5, 0, 0, 1), p(4, 1, 0, 0), p(3, 0, 2, 0)]);
        // Without marks there is one part, equal to the whole verdict.
        let mut c = DeviceSeen::default();
        for seq in [0, 2] {
            c.record(0, seq);
        }
        assert_eq!(by_part(&[c], &[3], &[]), vec![p(3, 1, 0, 0)]);
    }

    #[test]
    fn the_verdict_counts_losses_duplicates_and_unacked_extras() {
        let mut a = DeviceSeen::default();
        for seq in [0, 1, 3, 70, 3] {
            a.record(0, seq);
        }
        let mut b = DeviceSeen::default();
        for seq in [0, 1] {
            b.record(1, seq);
        }
        let e2e = Histogram::<u64>::new(3).unwrap();
        // Device a had 4 acknowledged (seq 2 missing); b had 2, both found.
        let v = verdict(&[a, b], &[4, 2], 5, 1, &e2e);
        assert_eq!(v.acked, 6);
        assert_eq!(
            v.lost, 1,
            "seq 2 of device 0 was acknowledged but never found"
        );
        assert_eq!(v.duplicated, 1);
        assert_eq!(
            v.found_qos1, 7,
            "found counts duplicates and unacknowledged extras (70)"
        );
        assert_eq!((v.found_qos0, v.foreign), (5, 1));
    }
}
