//! Client compatibility: records published through the proxy with MQTT 5
//! (user properties → Kafka headers) are read back by the mainstream Kafka
//! clients, each run as a subprocess against the public bootstrap address
//! (the embedded broker's forwarder, or the real cluster with
//! `MKP_TEST_KAFKA=cluster`): kcat (librdkafka), kafka-python (latest),
//! kafkajs 2.2.4 and Java's console consumer (Apache Kafka 4.1.1). Each must
//! print the right key, value and header for every record, in order.
//!
//! The clients come from `tests/install-clients.sh`, which the first test
//! runs (it is idempotent and quick once everything is there); the scripts
//! the Python and Node clients run live in `tests/clients/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::Event;

/// Records each test publishes (one device, so one partition, in order).
const RECORDS: usize = 4;
/// Upper bound on one client run, JVM start-up and group join included.
const CLIENT_PATIENCE: Duration = Duration::from_secs(90);

/// One record as the test expects every client to print it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    key: String,
    value: String,
    /// The `source` user property, which must come back as a header.
    source: String,
}

/// One record as a client printed it.
#[derive(Debug)]
struct Printed {
    key: String,
    headers: Vec<(String, String)>,
    value: String,
}

impl Printed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/install-clients.sh` once per test process.
fn install_clients() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo().join("tests/install-clients.sh"))
            .output()
            .map_err(|e| format!("run install-clients.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "install-clients.sh failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Starts a proxy, publishes [`RECORDS`] QoS 1 records from device `device`
/// with MQTT 5 user properties, waits for every PUBACK, and returns the
/// proxy, the topic and what a reader must find.
async fn publish(device: &str) -> (TestProxy, String, Vec<Expected>) {
    let t = TestProxy::start().await;
    let mut c = v5_connect(v5_options(device, t.tcp_port())).await;
    let mut expected = Vec::new();
    for i in 0..RECORDS {
        let value = format!("{{\"device\":\"{device}\",\"seq\":{i},\"temp\":2{i}.5}}");
        let source = format!("sensor-{i}");
        let props = PublishProperties {
            user_properties: vec![("source".into(), source.clone())],
            ..Default::default()
        };
        c.client
            .publish_with_properties(
                format!("devices/{device}/events/state"),
                QoS::AtLeastOnce,
                false,
                value.clone(),
                props,
            )
            .await
            .unwrap();
        expected.push(Expected {
            key: device.to_owned(),
            value,
            source,
        });
    }
    for n in 0..RECORDS {
        next_matching(&mut c.events, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_)))
        })
        .await
        .unwrap_or_else(|e| panic!("after {n} PUBACKs: {e}"));
    }
    let topic = t.topic("iot.events");
    (t, topic, expected)
}

/// Runs a client to completion (killed after [`CLIENT_PATIENCE`]); returns
/// its stdout and stderr.
async fn run(what: &str, cmd: &mut tokio::process::Command) -> (String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let out = tokio::time::timeout(CLIENT_PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {CLIENT_PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Parses lines of three tab-separated fields in the order `order` names
/// (`k`ey, `h`eaders, `v`alue); headers are `name<sep>value` joined by commas.
fn parse(stdout: &str, order: [char; 3], sep: char) -> Vec<Printed> {
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.splitn(3, '\t').collect();
            assert_eq!(fields.len(), 3, "not three fields: {line:?}");
            let field = |c: char| fields[order.iter().position(|&o| o == c).unwrap()];
            let headers = field('h')
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| match h.split_once(sep) {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (h.to_owned(), String::new()),
                })
                .collect();
            Printed {
                key: field('k').to_owned(),
                headers,
                value: field('v').to_owned(),
            }
        })
        .collect()
}

/// Every expected record, in order, with its key, value and `source` and
/// `mqtt.protocol` headers; nothing else.
fn assert_read(client: &str, printed: &[Printed], expected: &[Expected], stderr: &str) {
    let got: Vec<Expected> = printed
        .iter()
        .map(|p| Expected {
            key: p.key.clone(),
            value: p.value.clone(),
            source: p.header("source").unwrap_or("<none>").to_owned(),
        })
        .collect();
    assert_eq!(
        got, expected,
        "{client} printed\n{printed:#?}\nstderr:\n{stderr}"
    );
    for p in printed {
        assert_eq!(p.header("mqtt.protocol"), Some("5.0"), "{client}: {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_records_with_headers() {
    install_clients();
    let (t, topic, expected) = publish("dev-kcat").await;
    let (stdout, stderr) = run(
        "kcat",
        tokio::process::Command::new("kcat")
            .args(["-C", "-q", "-e", "-o", "beginning"])
            .args(["-b", &t.public_bootstrap(), "-t", &topic])
            .args(["-f", "%k\t%h\t%s\n"]),
    )
    .await;
    let printed = parse(&stdout, ['k', 'h', 'v'], '=');
    assert_read("kcat", &printed, &expected, &stderr);
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_records_with_headers() {
    install_clients();
    let (t, topic, expected) = publish("dev-python").await;
    let python = repo().join("target/py-clients/bin/python");
    let (stdout, stderr) = run(
        "kafka-python",
        tokio::process::Command::new(python)
            .arg(repo().join("tests/clients/consume.py"))
            .args([&t.public_bootstrap(), &topic, &RECORDS.to_string(), "60"]),
    )
    .await;
    let printed = parse(&stdout, ['k', 'h', 'v'], '=');
    assert_read("kafka-python", &printed, &expected, &stderr);
    // It used to fail to bootstrap on the mock's ApiVersions v4 answer.
    assert!(!stderr.contains("Unable to decode"), "{stderr}");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_reads_records_with_headers_and_leaves_its_group_cleanly() {
    install_clients();
    let (t, topic, expected) = publish("dev-kafkajs").await;
    let (stdout, stderr) = run(
        "kafkajs",
        tokio::process::Command::new("node")
            .env("NODE_PATH", repo().join("target/js-clients/node_modules"))
            .arg(repo().join("tests/clients/consume.js"))
            .args([&t.public_bootstrap(), &topic, &RECORDS.to_string(), "60000"]),
    )
    .await;
    let printed = parse(&stdout, ['k', 'h', 'v'], '=');
    assert_read("kafkajs", &printed, &expected, &stderr);
    // Its LeaveGroup v3 answer from the mock used to be undecodable.
    assert!(!stderr.contains("LeaveGroup"), "{stderr}");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_console_consumer_reads_records_with_headers() {
    install_clients();
    let (t, topic, expected) = publish("dev-java").await;
    let classpath = tokio::task::spawn_blocking(kafka_cluster::java_classpath)
        .await
        .unwrap()
        .expect("Kafka jars (mvn)");
    let log_config: PathBuf = repo().join("tests/clients/log4j2.properties");
    let (stdout, stderr) = run(
        "kafka-console-consumer",
        tokio::process::Command::new("java")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                log_config.display()
            ))
            .args(["-cp", &classpath])
            .arg("org.apache.kafka.tools.consumer.ConsoleConsumer")
            .args(["--bootstrap-server", &t.public_bootstrap()])
            .args(["--topic", &topic, "--from-beginning"])
            .args(["--max-messages", &RECORDS.to_string()])
            .args(["--timeout-ms", "60000"])
            .args(["--property", "print.key=true"])
            .args(["--property", "print.headers=true"]),
    )
    .await;
    // The console consumer exits 0 even when it timed out; the count tells.
    assert!(
        stderr.contains(&format!("Processed a total of {RECORDS} messages")),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Its default layout: headers (name:value,...), key, value.
    let printed = parse(&stdout, ['h', 'k', 'v'], ':');
    assert_read("kafka-console-consumer", &printed, &expected, &stderr);
    t.proxy.shutdown().await;
}
