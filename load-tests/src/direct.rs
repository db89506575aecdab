//! The physical limit of ingest: records produced straight into the broker
//! by one lean rdkafka producer (idempotent, acks=all, linger 5 ms, the same
//! settings as the proxy's), with no per-record task or future.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

/// Counts delivery reports; nothing else happens per record.
struct Counter {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The physical limit: the same records, keyed by device, straight into the
/// broker from one lean producer loop (no per-record task or future).
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    devices: u64,
    messages: u64,
    body: &[u8],
) -> Result<f64> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let producer: ThreadedProducer<Counter> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .create_with_context(Counter {
                delivered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            })?;
        let keys: Vec<String> = (0..devices).map(crate::worker::device_id).collect();
        // One sending thread per core, so the direct path is limited by the
        // broker and librdkafka, not by a single caller thread.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let started = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (producer, keys, topic, body) = (&producer, &keys, &topic, &body);
                    scope.spawn(move || -> Result<()> {
                        let mut i = t;
                        while i < messages {
                            let key = &keys[(i % devices) as usize];
                            let mut record = BaseRecord::to(topic).key(key).payload(body);
                            loop {
                                match producer.send(record) {
                                    Ok(()) => break,
                                    Err((
                                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                        r,
                                    )) => {
                                        record = r;
                                        std::thread::sleep(Duration::from_micros(500));
                                    }
                                    Err((e, _)) => anyhow::bail!("direct produce: {e}"),
                                }
                            }
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
        let ctx = producer.context();
        while ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < messages
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        let secs = started.elapsed().as_secs_f64();
        let failed = ctx.failed.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} direct records failed");
        Ok(messages as f64 / secs)
    })
    .await?
}
