//! librdkafka's own statistics (emitted every `ops.kafka_statistics_interval_ms`)
//! turned into gauges: the producer's queue depth, each broker's request
//! round-trip time, and the command consumer's lag per topic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::Statistics;

use crate::metrics as m;

/// Records one statistics report. `client` labels the gauges
/// (`producer` / `consumer`).
pub fn record(stats: &Statistics, client: &'static str) {
    metrics::gauge!(m::KAFKA_QUEUE_MESSAGES, "client" => client).set(stats.msg_cnt as f64);
    metrics::gauge!(m::KAFKA_QUEUE_BYTES, "client" => client).set(stats.msg_size as f64);
    for broker in stats.brokers.values() {
        // Bootstrap pseudo-brokers have no id and no round trips.
        if broker.nodeid < 0 {
            continue;
        }
        if let Some(rtt) = &broker.rtt {
            let id = broker.nodeid.to_string();
            // librdkafka reports microseconds.
            metrics::gauge!(m::KAFKA_BROKER_RTT_SECONDS, "client" => client, "broker" => id.clone(), "quantile" => "0.5")
                .set(rtt.p50 as f64 / 1e6);
            metrics::gauge!(m::KAFKA_BROKER_RTT_SECONDS, "client" => client, "broker" => id, "quantile" => "0.99")
                .set(rtt.p99 as f64 / 1e6);
        }
    }
    if client == "consumer" {
        for (name, topic) in &stats.topics {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            metrics::gauge!(m::KAFKA_CONSUMER_LAG, "topic" => name.clone()).set(lag as f64);
        }
    }
}

/// Context of the command consumer: statistics, and librdkafka's log lines
/// and errors through the proxy's forwarding ([`super::client_log`]).
pub struct ConsumerStats {
    /// The replica's Kafka watch reports Kafka unreachable.
    outage_reported: Arc<AtomicBool>,
}

impl ConsumerStats {
    /// A context that quiets reachability noise while `outage_reported` is set.
    pub fn new(outage_reported: Arc<AtomicBool>) -> ConsumerStats {
        ConsumerStats { outage_reported }
    }
}

impl ClientContext for ConsumerStats {
    fn stats(&self, statistics: Statistics) {
        record(&statistics, "consumer");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        let reported = self.outage_reported.load(Ordering::Relaxed);
        super::client_log::forward(level, fac, log_message, reported);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if self.outage_reported.load(Ordering::Relaxed)
            && super::client_log::is_reachability_error(error.rdkafka_error_code())
        {
            tracing::debug!(target: "librdkafka", "librdkafka: {error}: {reason}");
        } else {
            // As rdkafka's default context does.
            tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ConsumerStats {}
