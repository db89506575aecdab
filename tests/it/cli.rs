//! The binary and standard command-line clients: `--check-config`,
//! `--print-default-config`, SIGTERM, and `mosquitto_pub` (Debian's
//! mosquitto-clients, installed by `.ci/run`) publishing through the proxy.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-kafka-proxy");

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = Command::new(BIN)
        .args([
            "--check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_rejects_bad_files_naming_the_key() {
    let cases = [
        ("[mqtt]\nrecieve_maximum = 10\n", "recieve_maximum"),
        ("[mqtt]\nreceive_maximum = 0\n", "mqtt.receive_maximum"),
        ("[mqtt]\nreceive_maximum = \"ten\"\n", "receive_maximum"),
        ("[kafka]\nlinger_ms = -1\n", "linger_ms"),
        ("[listeners.tcp]\nbind = \"not-an-address\"\n", "bind"),
        (
            "[[routes]]\nfilter = \"a/{x}\"\nkafka_topic = \"t\"\nkey = \"{y}\"\n",
            "routes",
        ),
        ("[mqtt\n", "TOML"),
    ];
    for (text, key) in cases {
        let (ok, msg) = check_config(text);
        assert!(!ok, "{text:?} must be refused");
        assert!(
            msg.contains(key),
            "message for {text:?} must name {key}: {msg}"
        );
    }
    let (ok, msg) = check_config("");
    assert!(ok, "an empty file means all defaults: {msg}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["--check-config", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/config.toml"), "{err}");
}

#[test]
fn print_default_config_prints_the_defaults() {
    let out = Command::new(BIN)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = mqtt_kafka_proxy::Config::parse(&text).unwrap();
    assert_eq!(parsed, mqtt_kafka_proxy::Config::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_loopback_config(dir.path());
    let (mut child, mut lines) = spawn_binary(&path, &[]);
    let port: u16 = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line
                .split("MQTT over TCP listening addr=Some(127.0.0.1:")
                .nth(1)
            {
                return rest.trim_end_matches(')').parse().unwrap();
            }
        }
        panic!("proxy exited before listening");
    })
    .await
    .expect("proxy listens");
    let mut c = v4_connect(v4_options("sig", port)).await;
    c.client
        .publish(
            "devices/sig/events/e",
            rumqttc::QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    c.pubacks(1).await;
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within the drain deadline")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

fn mosquitto_pub() -> tokio::process::Command {
    let found = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    assert!(
        found,
        "mosquitto_pub not found: install Debian's mosquitto-clients (.ci/run does)"
    );
    tokio::process::Command::new("mosquitto_pub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_publishes_over_tcp_and_tls() {
    let t = TestProxy::start().await;
    let status = mosquitto_pub()
        .args(["-h", "127.0.0.1", "-p", &t.tcp_port().to_string()])
        .args([
            "-i",
            "mosq-1",
            "-q",
            "1",
            "-t",
            "devices/mosq-1/events/door",
            "-m",
            "opened",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let status = mosquitto_pub()
        .args([
            "-h",
            "localhost",
            "-p",
            &t.tls_port().to_string(),
            "--cafile",
        ])
        .arg(t.ca_path())
        .args([
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "user-property",
            "site",
            "plant-7",
        ])
        .args([
            "-i",
            "mosq-2",
            "-q",
            "2",
            "-t",
            "devices/mosq-2/events/temp",
            "-m",
            "21.5",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let recs = consume(&t.bootstrap(), "iot.events", 2).await;
    let one = recs
        .iter()
        .find(|r| r.key == "mosq-1")
        .expect("mosq-1 record");
    assert_eq!(one.value, b"opened");
    assert_eq!(one.header("mqtt.qos").unwrap(), "1");
    let two = recs
        .iter()
        .find(|r| r.key == "mosq-2")
        .expect("mosq-2 record");
    assert_eq!(two.value, b"21.5");
    assert_eq!(two.header("site").unwrap(), "plant-7");
    assert_eq!(two.header("mqtt.protocol").unwrap(), "5.0");

    // An unrouted topic is refused: mosquitto_pub reports the failure.
    let out = mosquitto_pub()
        .args(["-h", "127.0.0.1", "-p", &t.tcp_port().to_string()])
        .args([
            "-V",
            "mqttv5",
            "-i",
            "mosq-3",
            "-q",
            "1",
            "-t",
            "elsewhere",
            "-m",
            "x",
        ])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Topic Name invalid"), "{text}");
    t.proxy.shutdown().await;
}

/// The binary reads MQTT_KAFKA_PROXY__* variables: they win over the file,
/// `_FILE` variables read secrets from files, and a bad override is an error
/// naming the variable or the key.
#[test]
fn environment_overrides_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[mqtt]\nreceive_maximum = 10\n").unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--check-config", "--config"]).arg(&path);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(run(&[]).0, "the file alone is valid");
    // The file's 10 is replaced by an invalid 0: the override won.
    let (ok, err) = run(&[("MQTT_KAFKA_PROXY__MQTT__RECEIVE_MAXIMUM", "0")]);
    assert!(!ok);
    assert!(err.contains("mqtt.receive_maximum"), "{err}");
    let (ok, err) = run(&[("MQTT_KAFKA_PROXY__MQTT__NO_SUCH_KEY", "1")]);
    assert!(!ok);
    assert!(err.contains("no_such_key"), "{err}");
    let (ok, err) = run(&[(
        "MQTT_KAFKA_PROXY__AUTH__JWT__SECRET_FILE_FILE",
        "/nonexistent/secret",
    )]);
    assert!(!ok);
    assert!(
        err.contains("MQTT_KAFKA_PROXY__AUTH__JWT__SECRET_FILE_FILE"),
        "{err}"
    );
    let secret = dir.path().join("bootstrap");
    std::fs::write(&secret, "kafka-a:9092,kafka-b:9092\n").unwrap();
    let (ok, err) = run(&[(
        "MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS_FILE",
        secret.to_str().unwrap(),
    )]);
    assert!(ok, "{err}");
}
