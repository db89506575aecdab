//! librdkafka's own statistics (emitted every `ops.kafka_statistics_interval_ms`)
//! turned into gauges: the producer's queue depth, each broker's request
//! round-trip time, and the command consumer's lag per topic.

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

/// Context of the command consumer: statistics only.
pub struct ConsumerStats;

impl ClientContext for ConsumerStats {
    fn stats(&self, statistics: Statistics) {
        record(&statistics, "consumer");
    }
}

impl ConsumerContext for ConsumerStats {}
