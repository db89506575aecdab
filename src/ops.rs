//! The operations endpoint, one small HTTP/1.1 server per replica on
//! `ops.bind`: `/metrics` (Prometheus text format, from the `metrics`
//! facade every module records into), `/healthz` (the process answers) and
//! `/readyz` (200 only while Kafka is reachable and the replica is not
//! draining). [`Health`] is the shared readiness state; the Kafka check
//! runs on its own timer so a probe never waits on Kafka.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
        let was = self.kafka.swap(code, Ordering::AcqRel);
        if was != code {
            match state {
                KafkaState::Reachable => tracing::info!("kafka reachable"),
                KafkaState::Unreachable => {
                    tracing::warn!("kafka unreachable: /readyz reports not ready")
                }
                KafkaState::Refused => tracing::error!(
                    "kafka refused the proxy (authentication or TLS): /readyz reports not ready"
                ),
            }
        }
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

/// Checks Kafka reachability every `every` until `cancel`: a metadata
/// request through the producer's connections, on a blocking thread.
pub async fn watch_kafka(
    producer: Producer,
    health: Arc<Health>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let p = producer.clone();
                let timeout = every.min(Duration::from_secs(5));
                let state = tokio::task::spawn_blocking(move || p.check(timeout))
                    .await
                    .unwrap_or(KafkaState::Unreachable);
                health.set_kafka(state);
                metrics::gauge!(crate::metrics::KAFKA_IN_FLIGHT).set(producer.in_flight() as f64);
                metrics::gauge!(crate::metrics::READY).set(if health.ready().is_ok() { 1.0 } else { 0.0 });
            }
        }
    }
}
