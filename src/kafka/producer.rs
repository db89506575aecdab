//! The producer: one idempotent librdkafka producer per replica (acks=all),
//! shared by all connections. A record carries a [`Delivery`] that says who
//! waits for its outcome: a connection that owes the device a PUBACK or
//! PUBREC gets the result on a oneshot channel; QoS 0 records are only
//! counted. When librdkafka's queue is full, [`Producer::send`] hands the
//! record back and connections wait on [`Producer::wait_for_space`] instead
//! of reading more from their sockets — backpressure, never a buffer.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use tokio::sync::{oneshot, Notify};

use super::config::KafkaConfig;
use super::KafkaError;
use crate::limits::LogThrottle;
use crate::metrics as m;

/// The outcome of one record: `Ok` once Kafka has it (acks=all), or why not.
pub type DeliveryOutcome = Result<(), String>;

/// Who is told about a record's outcome.
#[derive(Debug)]
pub enum Delivery {
    /// A connection waiting to acknowledge a QoS 1/2 PUBLISH.
    Ack(oneshot::Sender<DeliveryOutcome>),
    /// A QoS 0 record: failures are counted, nobody waits.
    Fire,
}

/// What the last look at Kafka found, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaState {
    /// A broker answered.
    Reachable,
    /// No broker answered in time.
    Unreachable,
    /// A broker refused the proxy's credentials (SASL) or TLS handshake.
    Refused,
}

/// librdkafka callbacks: delivery reports, errors, logs.
pub struct ProxyContext {
    space: Notify,
    waiting: AtomicUsize,
    /// Records handed to librdkafka and not yet reported on. Unlike
    /// librdkafka's `outq_len`, this counts records only, not protocol requests.
    records: AtomicI64,
    /// Records Kafka acknowledged so far: the reachability check counts
    /// deliveries during its window as an answer.
    delivered: AtomicU64,
    /// A broker refused authentication or the TLS handshake since the last
    /// successful metadata request.
    refused: Arc<AtomicBool>,
    /// librdkafka reports a refusal on every reconnect: one line a minute.
    refused_log: LogThrottle,
    /// The Kafka watch has logged that no broker answers: librdkafka's
    /// per-broker lines about it go to debug until it answers again (shared
    /// with the command consumer's context).
    outage_reported: Arc<AtomicBool>,
}

impl ClientContext for ProxyContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        super::stats::record(&statistics, "producer");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        let reported = self.outage_reported.load(Ordering::Relaxed);
        super::client_log::forward(level, fac, log_message, reported);
    }

    fn error(&self, error: RdError, reason: &str) {
        metrics::counter!(m::KAFKA_CLIENT_ERRORS).increment(1);
        let refusal = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication) => Some(
                "Kafka refused the proxy's credentials (SASL authentication failed): check kafka.client sasl.mechanisms, sasl.username and sasl.password; this replica stays up, reports not ready on /readyz and keeps retrying",
            ),
            Some(RDKafkaErrorCode::SSL) => Some(
                "TLS to Kafka failed: check kafka.client ssl.ca.location (the brokers' CA) and security.protocol; this replica stays up, reports not ready on /readyz and keeps retrying",
            ),
            _ => None,
        };
        match refusal {
            Some(what) => {
                self.refused.store(true, Ordering::Release);
                if let Some(held_back) = self.refused_log.allow() {
                    tracing::error!(reason, held_back, "{what}");
                }
            }
            // The watch's "kafka unreachable" line already says this.
            None if self.outage_reported.load(Ordering::Relaxed)
                && super::client_log::is_reachability_error(error.rdkafka_error_code()) =>
            {
                tracing::debug!(%error, reason, "kafka client error")
            }
            None => tracing::warn!(%error, reason, "kafka client error"),
        }
    }
}

/// The context of the reachability probe: a client of its own, so its
/// metadata requests never queue behind the producer's produce requests.
/// (Kafka answers one request per connection at a time, and while a dead
/// follower is still in the ISR an `acks=all` produce request waits for it:
/// on the producer's own connections a metadata request went unanswered for
/// the ~4 s the cluster took to fence a SIGKILLed broker, although two of
/// three brokers were fine.) Its log lines go the producer's way; a
/// refusal marks the producer's `refused`; other errors are the watch's to
/// report.
struct ProbeContext {
    refused: Arc<AtomicBool>,
    outage_reported: Arc<AtomicBool>,
}

impl ClientContext for ProbeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        let reported = self.outage_reported.load(Ordering::Relaxed);
        super::client_log::forward(level, fac, log_message, reported);
    }

    fn error(&self, error: RdError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL) => {
                self.refused.store(true, Ordering::Release)
            }
            _ => tracing::debug!(%error, reason, "kafka reachability probe error"),
        }
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl ProducerContext for ProxyContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        self.records.fetch_sub(1, Ordering::AcqRel);
        let outcome = match result {
            Ok(msg) => {
                self.delivered.fetch_add(1, Ordering::AcqRel);
                // The record's timestamp is when the proxy received the PUBLISH.
                if let Some(at) = rdkafka::Message::timestamp(msg).to_millis() {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(at);
                    metrics::histogram!(m::KAFKA_PRODUCE_SECONDS)
                        .record((now - at).max(0) as f64 / 1000.0);
                }
                Ok(())
            }
            Err((e, _)) => Err(e.to_string()),
        };
        match (*delivery, outcome) {
            (Delivery::Ack(tx), outcome) => {
                if let Err(e) = &outcome {
                    metrics::counter!(m::KAFKA_DELIVERY_FAILED).increment(1);
                    tracing::debug!(error = %e, "kafka delivery failed");
                }
                // The connection may be gone; then nobody is owed an ack.
                let _ = tx.send(outcome);
            }
            (Delivery::Fire, Ok(())) => {}
            (Delivery::Fire, Err(e)) => {
                metrics::counter!(m::QOS0_DROPPED).increment(1);
                tracing::debug!(error = %e, "qos 0 record dropped");
            }
        }
        // Only touch the Notify when someone waits: this runs once per record.
        // One record out makes room for one record in: wake one waiting
        // connection (first come, first served), not all of them — with
        // thousands of connections waiting, waking every one on every
        // delivery kept the replicas busy retrying into a full queue.
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.space.notify_one();
        }
    }
}

/// A record ready to send; the caller keeps key, payload and topic alive.
pub struct Record<'a> {
    /// Kafka topic.
    pub topic: &'a str,
    /// Record key (device id).
    pub key: &'a [u8],
    /// Record value (the PUBLISH payload).
    pub payload: &'a [u8],
    /// MQTT metadata headers.
    pub headers: OwnedHeaders,
    /// Receive time, ms since the epoch.
    pub timestamp_ms: i64,
}

/// Why a record was not enqueued.
pub enum SendError {
    /// librdkafka's queue is full: wait for space and retry with these parts.
    QueueFull(OwnedHeaders, Box<Delivery>),
    /// Any other refusal (e.g. record too large, fatal producer error). The
    /// delivery is dropped, so a waiting connection sees its channel close.
    Refused(String),
}

/// The producer's librdkafka settings: what the proxy's producer runs with
/// (plus its statistics interval), and what a benchmark's direct producer
/// must run with for a fair comparison. The `[kafka.client]` and
/// `[kafka.producer]` pass-through maps come last.
pub fn client_config(cfg: &KafkaConfig, bootstrap: &str, max_record_bytes: usize) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("client.id", "mqtt-kafka-proxy")
        // Idempotence: retries cannot duplicate or reorder a device's records.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            cfg.queue_max_messages.to_string(),
        )
        // A record must fit whatever a device may send, plus headers.
        .set(
            "message.max.bytes",
            (max_record_bytes + 64 * 1024).max(1_000_000).to_string(),
        );
    for (k, v) in cfg.client.iter().chain(&cfg.producer) {
        cc.set(k, v);
    }
    cc
}

/// The shared producer.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ThreadedProducer<ProxyContext>>,
    /// Sends nothing: answers [`Producer::check`] on connections of its own.
    probe: Arc<ThreadedProducer<ProbeContext>>,
}

impl Producer {
    /// Creates the producer. `bootstrap` is the resolved broker list.
    pub fn new(
        cfg: &KafkaConfig,
        bootstrap: &str,
        max_record_bytes: usize,
        statistics_interval_ms: u64,
    ) -> Result<Producer, KafkaError> {
        let mut cc = client_config(cfg, bootstrap, max_record_bytes);
        if statistics_interval_ms > 0 {
            cc.set("statistics.interval.ms", statistics_interval_ms.to_string());
        }
        // The probe: the same brokers and security settings, nothing else.
        let mut probe_cc = ClientConfig::new();
        probe_cc
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "mqtt-kafka-proxy-probe");
        for (k, v) in &cfg.client {
            probe_cc.set(k, v);
        }
        let refused = Arc::new(AtomicBool::new(false));
        let outage_reported: Arc<AtomicBool> = Arc::default();
        let probe: ThreadedProducer<ProbeContext> = probe_cc
            .create_with_context(ProbeContext {
                refused: refused.clone(),
                outage_reported: outage_reported.clone(),
            })
            .map_err(KafkaError::Client)?;
        let context = ProxyContext {
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
            records: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
            refused,
            refused_log: LogThrottle::new(Duration::from_secs(60)),
            outage_reported,
        };
        let inner: ThreadedProducer<ProxyContext> = cc
            .create_with_context(context)
            .map_err(KafkaError::Client)?;
        Ok(Producer {
            inner: Arc::new(inner),
            probe: Arc::new(probe),
        })
    }

    /// Enqueues a record. Never blocks.
    pub fn send(&self, record: Record<'_>, delivery: Box<Delivery>) -> Result<(), SendError> {
        let base = BaseRecord::with_opaque_to(record.topic, delivery)
            .key(record.key)
            .payload(record.payload)
            .headers(record.headers)
            .timestamp(record.timestamp_ms);
        // Counted before the send: the delivery callback may run before send returns.
        let records = &self.inner.context().records;
        records.fetch_add(1, Ordering::AcqRel);
        let sent = self.inner.send(base);
        if sent.is_err() {
            records.fetch_sub(1, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => Ok(()),
            Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                metrics::counter!(m::KAFKA_QUEUE_FULL).increment(1);
                let headers = rec.headers.unwrap_or_default();
                Err(SendError::QueueFull(headers, rec.delivery_opaque))
            }
            Err((e, _)) => Err(SendError::Refused(e.to_string())),
        }
    }

    /// Waits until a delivery made room for this waiter (waiters are woken
    /// one per delivered record, in the order they began waiting), or at
    /// most `max_wait`.
    pub async fn wait_for_space(&self, max_wait: Duration) {
        let ctx = self.inner.context();
        let notified = ctx.space.notified();
        ctx.waiting.fetch_add(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(max_wait, notified).await;
        ctx.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a broker answers a metadata request within `timeout`, and if
    /// not, whether one refused the proxy (blocking; call from a blocking
    /// thread).
    pub fn check(&self, timeout: Duration) -> KafkaState {
        let ctx = self.inner.context();
        // The probe's request goes to one broker; if that one just died
        // (killed, restarting) it fails at once while the others are fine.
        // Kafka is reachable if any broker answers within the budget — ask
        // again until it runs out — or if Kafka acknowledged records
        // meanwhile.
        let delivered = ctx.delivered.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + timeout;
        let reachable = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self
                .probe
                .client()
                .fetch_metadata(None, left.max(Duration::from_millis(100)))
                .is_ok()
            {
                break true;
            }
            if ctx.delivered.load(Ordering::Acquire) > delivered {
                break true;
            }
            if std::time::Instant::now() + Duration::from_millis(100) >= deadline {
                break ctx.delivered.load(Ordering::Acquire) > delivered;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if reachable {
            ctx.refused.store(false, Ordering::Release);
            KafkaState::Reachable
        } else if ctx.refused.load(Ordering::Acquire) {
            KafkaState::Refused
        } else {
            KafkaState::Unreachable
        }
    }

    /// Tells the log forwarding whether the Kafka watch has reported Kafka
    /// unreachable (librdkafka's reachability lines go to debug meanwhile).
    pub fn set_outage_reported(&self, reported: bool) {
        self.inner
            .context()
            .outage_reported
            .store(reported, Ordering::Relaxed);
    }

    /// The flag [`Producer::set_outage_reported`] sets, for the replica's
    /// other Kafka clients ([`super::ClientSettings::outage_reported`]).
    pub fn outage_flag(&self) -> Arc<AtomicBool> {
        self.inner.context().outage_reported.clone()
    }

    /// Records handed to the producer that have no outcome yet.
    pub fn in_flight(&self) -> i64 {
        self.inner.context().records.load(Ordering::Acquire)
    }

    /// Waits (on a blocking thread) until every queued record has an outcome,
    /// or the timeout passes. Returns the number of records still without one.
    pub async fn flush(&self, timeout: Duration) -> i64 {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _ = inner.flush(timeout);
            inner.context().records.load(Ordering::Acquire)
        })
        .await;
        result.unwrap_or(-1)
    }
}
