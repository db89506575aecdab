//! The reference path of the ingest benchmark: the records the proxy would
//! write (same key, value and `mqtt.*` headers) produced straight into the
//! same Kafka by one lean rdkafka producer, with no per-record task or
//! future. Its producer settings are the proxy's ([`producer_config`]), so
//! the two paths differ only by what the proxy does.
//!
//! Two ways to run it: [`produce`] as fast as librdkafka takes records (the
//! physical limit of ingest), and [`produce_paced`] at a fixed rate,
//! recording each record's delivery-report latency (from `send()` to its
//! delivery callback), the figure the proxy's PUBACK latency is compared with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use mqtt_kafka_proxy::ingest::record;
use mqtt_kafka_proxy::mqtt::packet::{Properties, Publish, QoS, Version};
use mqtt_kafka_proxy::Config;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::measure::Pace;

/// The proxy's producer settings for `bootstrap`, from the same `config`
/// and the same function the proxy uses
/// ([`mqtt_kafka_proxy::kafka::producer::client_config`]): the comparison is
/// fair by construction. (Its statistics callback is left out: one JSON
/// document every 15 s.)
pub fn producer_config(config: &Config, bootstrap: &str) -> ClientConfig {
    let mut cc = mqtt_kafka_proxy::kafka::producer::client_config(
        &config.kafka,
        bootstrap,
        config.mqtt.max_packet_size_bytes,
    );
    cc.set("client.id", "ingest-bench-direct");
    cc
}

/// Counts delivery reports and records the latency of those sent at or
/// after `measure_from_ns`. The delivery opaque is the send time in
/// nanoseconds since `base`.
struct Reports {
    base: Instant,
    /// `u64::MAX` (the default) records nothing.
    measure_from_ns: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Microseconds from `send()` to the delivery report.
    latency_us: Mutex<Vec<u32>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if sent_ns as u64 >= self.measure_from_ns.load(Ordering::Relaxed) {
                    let us = (self.base.elapsed().as_nanos() as u64).saturating_sub(sent_ns as u64)
                        / 1000;
                    if let Ok(mut v) = self.latency_us.lock() {
                        v.push(us.min(u32::MAX as u64) as u32);
                    }
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One device's record as the proxy builds it: key = client id, MQTT topic
/// `devices/{id}/events/state`, QoS 1, 3.1.1.
struct DeviceRecord {
    key: String,
    publish: Publish,
}

impl DeviceRecord {
    fn new(d: u64) -> DeviceRecord {
        let key = crate::worker::device_id(d);
        DeviceRecord {
            publish: Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: format!("devices/{key}/events/state"),
                packet_id: 1,
                properties: Properties::default(),
                payload: bytes::Bytes::new(),
            },
            key,
        }
    }

    /// Sends one record, waiting while librdkafka's queue is full (the
    /// proxy stops reading sockets then); the opaque is the send time.
    fn send(&self, producer: &ThreadedProducer<Reports>, topic: &str, body: &[u8]) -> Result<()> {
        let headers = record::headers(&self.publish, &self.publish.topic, &self.key, Version::V311);
        let base = producer.context().base;
        let mut rec = BaseRecord::with_opaque_to(topic, 0usize)
            .key(&self.key)
            .payload(body)
            .headers(headers);
        loop {
            rec.delivery_opaque = base.elapsed().as_nanos() as usize;
            match producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => anyhow::bail!("direct produce: {e}"),
            }
        }
    }
}

fn create(config: &Config, bootstrap: &str) -> Result<ThreadedProducer<Reports>> {
    Ok(
        producer_config(config, bootstrap).create_with_context(Reports {
            base: Instant::now(),
            measure_from_ns: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_us: Mutex::new(Vec::new()),
        })?,
    )
}

/// Before the clock starts: one record to every partition of `topic`,
/// waiting for their delivery reports, so the producer has its metadata, its
/// idempotent producer id and a connection to every leader (the proxy's
/// producer, long-lived, has them too). Returns the records sent.
fn warm_up(producer: &ThreadedProducer<Reports>, topic: &str, body: &[u8]) -> Result<u64> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
    for p in 0..partitions {
        let mut rec = BaseRecord::with_opaque_to(topic, 0usize)
            .key("warm-up")
            .payload(body)
            .partition(p);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => anyhow::bail!("direct warm-up: {e}"),
            }
        }
    }
    await_reports(producer, partitions as u64)?;
    Ok(partitions as u64)
}

/// Waits until `count` delivery reports arrived; fails on any failed one.
fn await_reports(producer: &ThreadedProducer<Reports>, count: u64) -> Result<()> {
    let ctx = producer.context();
    while ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < count {
        std::thread::sleep(Duration::from_micros(200));
    }
    let failed = ctx.failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} direct records failed");
    Ok(())
}

/// The physical limit: `messages` records, keyed by device in turn, from
/// one sending thread per core, as fast as librdkafka takes them, with the
/// producer settings of the proxy running `config`, after a [`warm_up`].
/// Returns records per second, counted until the last delivery report
/// (the warm-up adds one record per partition to those appended).
pub async fn produce(
    config: &Config,
    bootstrap: &str,
    topic: &str,
    devices: u64,
    messages: u64,
    body: &[u8],
) -> Result<f64> {
    let (config, bootstrap, topic, body) = (
        config.clone(),
        bootstrap.to_owned(),
        topic.to_owned(),
        body.to_vec(),
    );
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let producer = create(&config, &bootstrap)?;
        let warm = warm_up(&producer, &topic, &body)?;
        let records: Vec<DeviceRecord> = (0..devices).map(DeviceRecord::new).collect();
        // One sending thread per core, so the direct path is limited by the
        // broker and librdkafka, not by a single caller thread.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let started = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (producer, records, topic, body) = (&producer, &records, &topic, &body);
                    scope.spawn(move || -> Result<()> {
                        let mut i = t;
                        while i < messages {
                            records[(i % devices) as usize].send(producer, topic, body)?;
                            i += threads;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
            }
            Ok(())
        })?;
        await_reports(&producer, warm + messages)?;
        Ok(messages as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// What a paced run measured.
pub struct Paced {
    /// Records appended, warm-up included (all of them, or the run failed).
    pub appended: u64,
    /// Delivered per second over the run.
    pub rate: f64,
    /// Delivery-report latency of the records sent after the warm-up, µs.
    pub latency_us: Vec<u32>,
}

/// `pace.total` records at `pace.rate_per_s` from one thread that wakes at
/// most once a millisecond and sends every record due (keys cycling through
/// `devices`), after a [`warm_up`], recording the delivery-report latency
/// of those sent after `warmup`.
pub async fn produce_paced(
    config: &Config,
    bootstrap: &str,
    topic: &str,
    devices: u64,
    pace: Pace,
    warmup: Duration,
    body: &[u8],
) -> Result<Paced> {
    let (config, bootstrap, topic, body) = (
        config.clone(),
        bootstrap.to_owned(),
        topic.to_owned(),
        body.to_vec(),
    );
    tokio::task::spawn_blocking(move || -> Result<Paced> {
        let records: Vec<DeviceRecord> = (0..devices).map(DeviceRecord::new).collect();
        let producer = create(&config, &bootstrap)?;
        let warm = warm_up(&producer, &topic, &body)?;
        let started = Instant::now();
        let ctx = producer.context();
        let from = started.duration_since(ctx.base) + warmup;
        ctx.measure_from_ns
            .store(from.as_nanos() as u64, Ordering::Relaxed);
        let mut sent = 0u64;
        while sent < pace.total {
            let due = pace.due(started.elapsed());
            while sent < due {
                let r = &records[(sent % devices) as usize];
                r.send(&producer, &topic, &body)?;
                sent += 1;
            }
            if let Some(w) = pace.wait(sent, started.elapsed(), Duration::from_millis(1)) {
                std::thread::sleep(w);
            }
        }
        await_reports(&producer, warm + pace.total)?;
        let secs = started.elapsed().as_secs_f64();
        let latency_us = std::mem::take(
            &mut *ctx
                .latency_us
                .lock()
                .map_err(|_| anyhow::anyhow!("a delivery callback panicked"))?,
        );
        Ok(Paced {
            appended: warm + pace.total,
            rate: pace.total as f64 / secs,
            latency_us,
        })
    })
    .await?
}
