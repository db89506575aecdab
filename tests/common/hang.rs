//! Kafka hung, not down: the brokers' processes stopped with SIGSTOP. Their
//! sockets stay open and the kernel still completes new TCP handshakes,
//! but nothing answers — the outage in which librdkafka blames "broker
//! version < 0.10" and a blocking reachability check waits out its timeout.
//! [`a_hang_is_reported_and_the_gauges_stay_live`] runs the real binary
//! (JSON logs) against brokers the caller can stop, and reads its log and
//! `/metrics` while they hang; tests/it/kafka_hang.rs runs it on the
//! embedded broker in a process of its own, tests/cluster.rs on a real
//! cluster.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    free_port, poll_until, spawn_binary_logging, try_http_get, v4_connect, v4_options, ConfigFile,
    PATIENCE,
};

/// Every line the process logged so far, parsed (`{"raw": line}` if not JSON).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<serde_json::Value>>>);

impl Log {
    pub fn collect(
        &self,
        mut lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    ) {
        let log = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                log.lock().unwrap().push(v);
            }
        });
    }

    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.0.lock().unwrap().clone()
    }

    /// Waits for a line whose message contains `text`; returns it and its index.
    pub async fn wait_for(&self, text: &str) -> (usize, serde_json::Value) {
        self.wait_where(text, 0, |v| message(v).contains(text))
            .await
    }

    /// Waits for a line at index `from` or later that `pred` accepts.
    pub async fn wait_where(
        &self,
        what: &str,
        from: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (usize, serde_json::Value) {
        let what = format!("a log line: {what}");
        poll_until(&what, PATIENCE * 2, || {
            let found = self
                .snapshot()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, v)| pred(v))
                .ok_or_else(|| format!("logged:\n{}", self.dump()));
            std::future::ready(found)
        })
        .await
    }

    pub fn dump(&self) -> String {
        self.snapshot()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn message(v: &serde_json::Value) -> String {
    match (v["fields"]["message"].as_str(), v["raw"].as_str()) {
        (Some(m), _) => m.to_owned(),
        (None, Some(raw)) => raw.to_owned(),
        _ => v.to_string(),
    }
}

pub fn level(v: &serde_json::Value) -> &str {
    v["level"].as_str().unwrap_or("")
}

/// `kill -SIG pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Stopped processes, continued on drop (also when the test fails).
pub struct Stopped(pub Vec<u32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, "CONT");
        }
    }
}

/// The value of an unlabelled gauge on `/metrics`.
pub async fn gauge(ops_port: u16, name: &str) -> Option<f64> {
    let ops = SocketAddr::from(([127, 0, 0, 1], ops_port));
    let (_, body) = tokio::time::timeout(Duration::from_secs(5), try_http_get(ops, "/metrics"))
        .await
        .expect("/metrics answers within 5 s while Kafka hangs")
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls the gauge until `pred` holds; panics after `limit`.
pub async fn gauge_until(ops_port: u16, name: &str, limit: Duration, pred: impl Fn(f64) -> bool) {
    poll_until(name, limit, || async {
        match gauge(ops_port, name).await {
            Some(v) if pred(v) => Ok(()),
            v => Err(format!("{name} is {v:?}")),
        }
    })
    .await
}

/// Starts the real binary on `bootstrap` (the reachability check at its
/// default 5 s, request timeouts of 2 s so librdkafka reconnects within the
/// test), has a 3.1.1 device publish, stops every process in `brokers` and
/// checks, while they hang: `kafka_records_in_flight` shows the records
/// published during the hang within 2.5 s (the gauges tick every second
/// whatever the blocking check does); one WARN line says Kafka is
/// unreachable and what devices experience; librdkafka's unanswered
/// ApiVersion request is explained, never blamed on the broker version;
/// librdkafka's restatements of the outage are debug lines once the outage
/// is reported. Then continues them: one INFO line "reachable again after
/// N s", every held PUBLISH acknowledged, the process exits 0 on SIGTERM.
pub async fn a_hang_is_reported_and_the_gauges_stay_live(bootstrap: &str, brokers: Vec<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let ops_port = free_port();
    // The reachability check at its default interval (5 s, so a blocking
    // check takes up to 5 s): the gauges must not wait for it. Request
    // timeouts short enough that librdkafka reconnects, and asks the hung
    // broker for its API versions, within the test.
    let path = ConfigFile::tcp_only(bootstrap, ops_port)
        .set("kafka.client", "socket.timeout.ms", "2000")
        .set("kafka.client", "api.version.request.timeout.ms", "2000")
        .set("kafka.client", "reconnect.backoff.max.ms", "500")
        .write(dir.path(), "proxy.toml");
    // librdkafka lines the proxy demotes to debug are kept, to be checked.
    let (mut proxy, lines) =
        spawn_binary_logging(&path, &["--log-format", "json"], "info,librdkafka=debug");
    let log = Log::default();
    log.collect(lines);
    let (_, listening) = log.wait_for("MQTT over TCP listening").await;
    let port: u16 = listening["fields"]["addr"]
        .as_str()
        .and_then(|a| {
            a.trim_start_matches("Some(127.0.0.1:")
                .trim_end_matches(')')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("addr field in {listening}"));
    log.wait_for("kafka reachable").await;

    let mut device = v4_connect(v4_options("hung-1", port)).await;
    let topic = "devices/hung-1/events/e";
    device
        .client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, "before")
        .await
        .unwrap();
    device.pubacks(1).await;
    // The proxy's own lifecycle records are delivered too.
    gauge_until(ops_port, "kafka_records_in_flight", PATIENCE, |v| v == 0.0).await;

    for pid in &brokers {
        signal(*pid, "STOP");
    }
    let stopped = Stopped(brokers);
    for i in 1..=5 {
        device
            .client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                format!("during-{i}"),
            )
            .await
            .unwrap();
    }
    // The gauge ticks every second whatever the reachability check is doing.
    gauge_until(
        ops_port,
        "kafka_records_in_flight",
        Duration::from_millis(2_500),
        |v| v >= 5.0,
    )
    .await;

    // One line that says what is happening and what devices experience.
    let (unreachable_at, line) = log.wait_for("kafka unreachable").await;
    let text = message(&line);
    assert_eq!(level(&line), "WARN", "{line}");
    for part in [
        "0x80",
        "kafka.delivery_timeout_ms",
        "60 s",
        "3.1.1 devices are disconnected",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    gauge_until(ops_port, "proxy_ready", Duration::from_millis(2_500), |v| {
        v == 0.0
    })
    .await;
    // librdkafka's own account of the new connection's unanswered first
    // request, saying what it means.
    log.wait_for("no answer to the first request on a new connection")
        .await;
    // librdkafka goes on restating the outage: at debug now.
    log.wait_where(
        "a librdkafka line after the outage line",
        unreachable_at,
        |v| v["target"] == "librdkafka" && level(v) == "DEBUG",
    )
    .await;

    drop(stopped);
    let (back_at, line) = log.wait_for("kafka reachable again after").await;
    assert_eq!(level(&line), "INFO", "{line}");
    let secs: f64 = message(&line)
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(secs >= 1.0, "the outage lasted seconds: {line}");
    device.pubacks(5).await;
    gauge_until(ops_port, "kafka_records_in_flight", PATIENCE, |v| v == 0.0).await;

    let all = log.snapshot();
    let misleading: Vec<_> = all
        .iter()
        .filter(|v| message(v).contains("broker version"))
        .collect();
    assert!(misleading.is_empty(), "misleading lines: {misleading:?}");
    // While the outage is reported, librdkafka's per-broker restatements of
    // it are debug lines, not warnings.
    let noise: Vec<_> = all[unreachable_at..back_at]
        .iter()
        .filter(|v| level(v) == "WARN" || level(v) == "ERROR")
        .filter(|v| v["target"] == "librdkafka" || message(v) == "kafka client error")
        .collect();
    assert!(noise.is_empty(), "outage noise above debug: {noise:#?}");

    signal(proxy.id().unwrap(), "TERM");
    let status = tokio::time::timeout(PATIENCE, proxy.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
