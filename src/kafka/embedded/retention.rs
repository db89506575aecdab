//! Watches the embedded broker for records it dropped. librdkafka's mock
//! broker keeps only the last 5 MiB or 100,000 produce batches of each
//! partition (`max_size` / `max_cnt`, set in `rd_kafka_mock_partition_init`
//! with no setter or config property in librdkafka 2.12) and silently
//! advances the partition's low watermark past what it deletes. The mock has
//! no DeleteRecords, so a low watermark above 0 is exactly the number of
//! records dropped. A thread of its own asks for every partition's low
//! watermark periodically, warns when a count grows and counts the drops in
//! [`crate::metrics::EMBEDDED_KAFKA_RECORDS_DROPPED`].
//!
//! It is a thread, not a task, because rdkafka's metadata and offset calls
//! block; and not the broker's own thread, which must stay free to take
//! brokers down and up for failure tests while a check waits.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::kafka::KafkaError;

/// How often the watcher looks.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Upper bound on each metadata or offsets request of a check.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The embedded broker's storage limits, as its start-up line and warnings
/// word them.
pub(super) const LIMITS: &str =
    "it keeps only the last 5 MiB or 100,000 produce batches per partition";

enum Msg {
    /// Check now and answer the total dropped so far (tests).
    CheckNow(mpsc::Sender<Result<u64, String>>),
    Stop,
}

/// The running watcher; stopping it joins its thread.
pub(super) struct RetentionWatch {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

/// A cloneable handle that asks the watcher to check at once.
#[derive(Clone)]
pub(super) struct CheckHandle {
    tx: mpsc::Sender<Msg>,
}

impl RetentionWatch {
    /// Starts watching the cluster reachable at `bootstrap` every `every`.
    pub(super) fn start(bootstrap: &str, every: Duration) -> Result<RetentionWatch, KafkaError> {
        let consumer: BaseConsumer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "embedded-kafka-retention-watch")
            .create_with_context(Quiet)
            .map_err(KafkaError::Client)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka-watch".into())
            .spawn(move || watch(consumer, rx, every))
            .map_err(|e| KafkaError::Embedded(format!("spawn watch thread: {e}")))?;
        Ok(RetentionWatch {
            tx,
            thread: Some(thread),
        })
    }

    pub(super) fn handle(&self) -> CheckHandle {
        CheckHandle {
            tx: self.tx.clone(),
        }
    }

    /// Stops the watcher and waits for it (at most one request timeout),
    /// so its client is gone before the broker it talks to.
    pub(super) fn stop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RetentionWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl CheckHandle {
    /// Checks now; returns how many records the broker has dropped in all.
    pub(super) fn check_now(&self) -> Result<u64, KafkaError> {
        let (tx, rx) = mpsc::channel();
        let gone = || KafkaError::Embedded("retention watch gone".into());
        self.tx.send(Msg::CheckNow(tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?.map_err(KafkaError::Embedded)
    }
}

fn watch(consumer: BaseConsumer<Quiet>, rx: mpsc::Receiver<Msg>, every: Duration) {
    let mut seen = Dropped::default();
    loop {
        match rx.recv_timeout(every) {
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Msg::CheckNow(reply)) => {
                let _ = reply.send(check(&consumer, &mut seen));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = check(&consumer, &mut seen) {
                    // Brokers taken down on purpose make checks fail; the
                    // next one catches up.
                    tracing::debug!(error = %e, "embedded Kafka retention check failed");
                }
            }
        }
    }
}

/// One look at every partition's low watermark.
fn check(consumer: &BaseConsumer<Quiet>, seen: &mut Dropped) -> Result<u64, String> {
    let metadata = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map_err(|e| format!("metadata: {e}"))?;
    let mut earliest = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            // As a ListOffsets timestamp, "beginning" (-2) asks for the
            // earliest offset: the low watermark, for all partitions at once.
            earliest
                .add_partition_offset(t.name(), p.id(), Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    if earliest.count() == 0 {
        return Ok(seen.total());
    }
    let lows = consumer
        .offsets_for_times(earliest, REQUEST_TIMEOUT)
        .map_err(|e| format!("low watermarks: {e}"))?;
    let lows = lows
        .elements()
        .into_iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(low) => Some(((e.topic().to_owned(), e.partition()), low)),
            _ => None,
        });
    for grown in seen.update(lows) {
        tracing::warn!(
            topic = %grown.topic,
            partition = grown.partition,
            dropped = grown.total,
            newly = grown.newly,
            "embedded Kafka broker dropped {} records from {}/{} ({LIMITS}); readers that start now miss them — use a real Kafka cluster for long runs",
            grown.total,
            grown.topic,
            grown.partition,
        );
        metrics::counter!(crate::metrics::EMBEDDED_KAFKA_RECORDS_DROPPED, "topic" => grown.topic)
            .increment(grown.newly);
    }
    Ok(seen.total())
}

/// Records dropped so far, by topic and partition.
#[derive(Debug, Default)]
struct Dropped(HashMap<(String, i32), u64>);

/// A partition whose drop count grew.
#[derive(Debug, PartialEq, Eq)]
struct Grown {
    topic: String,
    partition: i32,
    /// Dropped in all.
    total: u64,
    /// Dropped since the last check.
    newly: u64,
}

impl Dropped {
    /// Takes the low watermarks just read; returns the partitions whose
    /// count grew, in topic and partition order.
    fn update(&mut self, lows: impl IntoIterator<Item = ((String, i32), i64)>) -> Vec<Grown> {
        let mut grown = Vec::new();
        for (tp, low) in lows {
            let Ok(low) = u64::try_from(low) else {
                continue;
            };
            let before = self.0.get(&tp).copied().unwrap_or(0);
            if low > before {
                grown.push(Grown {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    total: low,
                    newly: low - before,
                });
                self.0.insert(tp, low);
            }
        }
        grown.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        grown
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// A client context that keeps librdkafka's errors at debug: the watcher
/// runs beside failure tests that take brokers down on purpose.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        let _ = level;
        tracing::debug!(target: "librdkafka", fac, "{log_message}");
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "embedded Kafka retention watch");
    }
}

impl ConsumerContext for Quiet {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_owned(), p)
    }

    #[test]
    fn only_growth_is_reported_with_the_increase() {
        let mut d = Dropped::default();
        assert_eq!(d.update([(tp("a", 0), 0), (tp("a", 1), 0)]), vec![]);
        let g = d.update([(tp("b", 0), 5), (tp("a", 1), 3), (tp("a", 0), 0)]);
        assert_eq!(
            g,
            vec![
                Grown {
                    topic: "a".into(),
                    partition: 1,
                    total: 3,
                    newly: 3
                },
                Grown {
                    topic: "b".into(),
                    partition: 0,
                    total: 5,
                    newly: 5
                },
            ]
        );
        assert_eq!(d.total(), 8);
        // Unchanged: nothing to say.
        assert_eq!(d.update([(tp("b", 0), 5), (tp("a", 1), 3)]), vec![]);
        let g = d.update([(tp("b", 0), 12)]);
        assert_eq!(g[0].newly, 7);
        assert_eq!(g[0].total, 12);
        assert_eq!(d.total(), 15);
    }

    #[test]
    fn unknown_or_lower_watermarks_change_nothing() {
        let mut d = Dropped::default();
        d.update([(tp("a", 0), 10)]);
        // -1: no answer for the partition; lower: a topic recreated.
        assert_eq!(d.update([(tp("a", 0), -1)]), vec![]);
        assert_eq!(d.update([(tp("a", 0), 4)]), vec![]);
        assert_eq!(d.total(), 10);
    }
}
