//! The real binary in a process of its own: its config file, built as a
//! TOML table ([`ConfigFile`]), and the child process with its stdout as
//! lines.

use std::path::{Path, PathBuf};

/// A config file for the binary. Sections are dotted paths
/// (`"kafka.client"`); keys are written as given, so librdkafka property
/// names with dots stay one key.
#[derive(Debug, Default, Clone)]
pub struct ConfigFile(toml::Table);

impl ConfigFile {
    /// MQTT over plain TCP on loopback port 0 with the TLS and WebSocket
    /// listeners off, the ops endpoint on `ops_port` (a port the test knows
    /// before the binary logs anything) and Kafka at `bootstrap`.
    pub fn tcp_only(bootstrap: &str, ops_port: u16) -> ConfigFile {
        ConfigFile::default()
            .set("listeners.tcp", "bind", "127.0.0.1:0")
            .set("listeners.tls", "enabled", false)
            .set("listeners.ws", "enabled", false)
            .set("listeners.wss", "enabled", false)
            .set("ops", "bind", format!("127.0.0.1:{ops_port}"))
            .set("kafka", "bootstrap_servers", bootstrap)
    }

    /// Every listener and the embedded broker on loopback port 0, the
    /// WebSocket listeners off (their port is not logged in a form the
    /// tests parse), certificates in `dir`.
    pub fn loopback(dir: &Path) -> ConfigFile {
        let d = dir.display();
        ConfigFile::default()
            .set("listeners.tcp", "bind", "127.0.0.1:0")
            .set("listeners.tls", "bind", "127.0.0.1:0")
            .set("listeners.tls", "cert_path", format!("{d}/s.crt"))
            .set("listeners.tls", "key_path", format!("{d}/s.key"))
            .set("listeners.ws", "enabled", false)
            .set("listeners.wss", "enabled", false)
            .set("kafka.embedded", "listen", "127.0.0.1:0")
            .set("ops", "bind", "127.0.0.1:0")
    }

    /// Sets `key = value` in `[section]`.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> ConfigFile {
        let mut table = &mut self.0;
        for part in section.split('.') {
            let entry = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} in [{section}] is a value, not a table"));
        }
        table.insert(key.to_owned(), value.into());
        self
    }

    /// Writes the file as `dir/name`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, toml::to_string(&self.0).unwrap()).unwrap();
        path
    }
}

/// Writes [`ConfigFile::loopback`] as `dir/config.toml`.
pub fn write_loopback_config(dir: &Path) -> PathBuf {
    ConfigFile::loopback(dir).write(dir, "config.toml")
}

/// A loopback port free at the moment of asking, for a binary that must be
/// told its port in advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the real binary with `config` and `args`, stdout piped as lines.
pub fn spawn_binary(
    config: &std::path::Path,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    spawn_binary_logging(config, args, "info")
}

/// [`spawn_binary`] with `RUST_LOG` set to `filter`.
pub fn spawn_binary_logging(
    config: &std::path::Path,
    args: &[&str],
    filter: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-proxy"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", filter)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}
