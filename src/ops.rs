//! The operations endpoint, one small HTTP/1.1 server per replica on
//! `ops.bind`: `/metrics` (Prometheus text format, from the `metrics`
//! facade every module records into), `/healthz` (the process answers) and
//! `/readyz` (200 only while Kafka is reachable and the replica is not
//! draining). [`Health`] is the shared readiness state. [`watch_kafka`]
//! runs the Kafka check on its own blocking thread and timer, so neither a
//! probe nor a gauge ever waits on Kafka, and logs one line when Kafka
//! becomes unreachable (what devices experience) and one when it is back.

use std::net::SocketAddr;

use serde::Deserialize;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::OptionFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ingest::PublishOrdering;
use crate::kafka::producer::{KafkaState, Producer};

/// Readiness of one replica.
#[derive(Debug, Default)]
pub struct Health {
    /// Set at the start of shutdown: load balancers should stop sending.
    draining: AtomicBool,
    /// Set once the listeners are open: ready means "send devices here".
    started: AtomicBool,
    /// What the last Kafka check found ([`KafkaState`] as a number; 0 =
    /// not checked yet).
    kafka: AtomicU8,
}

impl Health {
    /// A replica that has not checked Kafka yet (not ready).
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Marks the replica as draining; `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Marks start-up as done (listeners open).
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records the outcome of a Kafka check.
    pub fn set_kafka(&self, state: KafkaState) {
        let code = match state {
            KafkaState::Reachable => 1,
            KafkaState::Unreachable => 2,
            KafkaState::Refused => 3,
        };
        self.kafka.store(code, Ordering::Release);
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            return Err("draining");
        }
        match self.kafka.load(Ordering::Acquire) {
            1 if self.started.load(Ordering::Acquire) => Ok(()),
            0 | 1 => Err("starting"),
            3 => Err("kafka refused the proxy's credentials or TLS (authentication failed)"),
            _ => Err("kafka unreachable"),
        }
    }
}

/// The process-wide Prometheus recorder. The `metrics` facade has one
/// global recorder, so several replicas in one process (tests) share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding application's):
                // render an empty registry rather than fail.
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// Serves `/metrics`, `/healthz`, `/readyz` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ops endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, metrics.render()),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// What the Kafka watch needs besides the producer: how often to look, and
/// what to tell the operator devices experience while Kafka is away.
#[derive(Debug, Clone, Copy)]
pub struct KafkaWatch {
    /// `ops.kafka_check_interval_ms`.
    pub check_every: Duration,
    /// `kafka.delivery_timeout_ms`: when held PUBLISHes are finally nacked.
    pub delivery_timeout: Duration,
    /// `mqtt.ordering`: whether a failed delivery also disconnects 5.0 devices.
    pub ordering: PublishOrdering,
}

/// How often the gauges are refreshed, whatever Kafka does.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// Checks Kafka reachability every `watch.check_every` until `cancel`: a
/// metadata request through the producer's connections, on a blocking
/// thread. The gauges (`kafka_records_in_flight`, `proxy_ready`) tick on
/// their own second meanwhile: a check that waits out its timeout on a hung
/// broker does not hold them back.
pub async fn watch_kafka(
    producer: Producer,
    health: Arc<Health>,
    watch: KafkaWatch,
    cancel: CancellationToken,
) {
    let mut check_tick = tokio::time::interval(watch.check_every);
    check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauge_tick = tokio::time::interval(GAUGE_EVERY.min(watch.check_every));
    gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = watch.check_every.min(Duration::from_secs(5));
    // The running check and when it started.
    let mut check: Option<(tokio::task::JoinHandle<KafkaState>, Instant)> = None;
    let mut last: Option<KafkaState> = None;
    // When the first check of the current run of failed ones started.
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // The check holds a producer handle, which must be gone
                // before the embedded broker is: wait it out (≤ `timeout`).
                if let Some((running, _)) = check.take() {
                    let _ = running.await;
                }
                return;
            }
            _ = gauge_tick.tick() => {}
            _ = check_tick.tick(), if check.is_none() => {
                let p = producer.clone();
                check = Some((tokio::task::spawn_blocking(move || p.check(timeout)), Instant::now()));
            }
            // Polled only while a check runs; a JoinHandle is cancellation-safe.
            state = OptionFuture::from(check.as_mut().map(|(h, _)| h)), if check.is_some() => {
                let started = check.take().map_or_else(Instant::now, |(_, at)| at);
                let state = match state {
                    Some(Ok(s)) => s,
                    _ => KafkaState::Unreachable,
                };
                health.set_kafka(state);
                let failed_for = if state == KafkaState::Reachable {
                    failing_since.take().map(|at| at.elapsed())
                } else {
                    failing_since.get_or_insert(started);
                    None
                };
                if last != Some(state) {
                    // Before the line: librdkafka lines after it are quieted.
                    producer.set_outage_reported(state == KafkaState::Unreachable);
                    log_change(state, failed_for, timeout, &watch, producer.in_flight());
                    last = Some(state);
                }
            }
        }
        metrics::gauge!(crate::metrics::KAFKA_IN_FLIGHT).set(producer.in_flight() as f64);
        metrics::gauge!(crate::metrics::READY).set(if health.ready().is_ok() { 1.0 } else { 0.0 });
    }
}

/// The one line an operator reads when Kafka's state changes. `failed_for`:
/// on recovery, how long checks had been failing (from the start of the
/// first failed one; none at start-up).
fn log_change(
    state: KafkaState,
    failed_for: Option<Duration>,
    timeout: Duration,
    watch: &KafkaWatch,
    records_in_flight: i64,
) {
    match state {
        KafkaState::Unreachable => {
            let v5 = match watch.ordering {
                PublishOrdering::Pipelined => "5.0 devices get PUBACK/PUBREC 0x80 and stay connected",
                PublishOrdering::Strict => "5.0 devices get PUBACK/PUBREC 0x80 then DISCONNECT 0x80 (mqtt.ordering = \"strict\")",
            };
            tracing::warn!(
                records_in_flight,
                "kafka unreachable: no broker answered a metadata request within {:.1} s. PUBLISHes are held unacknowledged (each connection stops reading at mqtt.receive_maximum); a record Kafka has not taken {} s after it arrived (kafka.delivery_timeout_ms) fails: {v5}, 3.1.1 devices are disconnected. /readyz reports not ready",
                timeout.as_secs_f64(),
                watch.delivery_timeout.as_secs_f64(),
            );
        }
        KafkaState::Reachable => match failed_for {
            Some(down) => tracing::info!(
                records_in_flight,
                "kafka reachable again after {:.0} s; held PUBLISHes are acknowledged as Kafka takes them, /readyz reports ready",
                down.as_secs_f64()
            ),
            None => tracing::info!("kafka reachable"),
        },
        KafkaState::Refused => tracing::error!(
            "kafka refused the proxy (authentication or TLS): /readyz reports not ready"
        ),
    }
}

/// The operations HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Serve the endpoint. Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:9090`.
    pub bind: SocketAddr,
    /// How often Kafka reachability (for `/readyz`) is checked. Default 5000.
    pub kafka_check_interval_ms: u64,
    /// librdkafka statistics interval (queue depth, broker round-trip
    /// time, consumer lag as metrics); 0 disables. Default 15000.
    pub kafka_statistics_interval_ms: u64,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 9090)),
            kafka_check_interval_ms: 5000,
            kafka_statistics_interval_ms: 15_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive; `RUST_LOG` overrides it. Default `info`.
    pub level: String,
    /// `text` (human-readable) or `json` (one object per line). Default `text`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
