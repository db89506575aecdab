//! The configuration tree: one serde structure read from `config.toml`,
//! strict (`deny_unknown_fields`), with units in key names and a default for
//! every field. The shipped `config.toml` spells out every default; a test
//! keeps the two equal. [`Config::validate`] runs at start-up and in
//! `--check-config` (one path), builds what the configuration describes
//! once ([`Checked`]), and every error names the key at fault.
//!
//! Files: this one (the tree, reading, errors), `env.rs` (environment
//! overrides), `validate.rs` (ranges and consistency). Each section's type
//! lives with its domain: `server::config`, `session::config`,
//! `kafka::config`, `ingest::router`, `commands::config`, `auth::config`,
//! `limits`, `ops`.

mod env;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use self::env::merge;
pub use self::env::{apply_env, ENV_PREFIX};
pub use self::validate::Checked;
// Each section's type lives with the code it configures; the tree is
// assembled here (dependencies point from `config` to the domains only).
pub use crate::auth::config::{
    AclAction, AclRule, AuthConfig, AuthMethod, CertIdentity, CertificateAuthConfig,
    HttpAuthConfig, JwtAuthConfig, OnError, PasswordAuthConfig, Permission,
};
pub use crate::commands::config::{CommandsConfig, LifecycleConfig};
pub use crate::ingest::router::{RouteConfig, UnmatchedAction, UnmatchedConfig};
pub use crate::ingest::PublishOrdering;
pub use crate::kafka::config::{is_secret, EmbeddedKafkaConfig, KafkaConfig, TopicsConfig};
pub use crate::limits::LimitsConfig;
pub use crate::ops::{LogConfig, LogFormat, OpsConfig};
pub use crate::server::config::{
    ClientAuth, ListenersConfig, TcpListenerConfig, TlsListenerConfig, WsListenerConfig,
};
pub use crate::session::config::{MqttConfig, ShutdownConfig};

/// The configuration shipped in `config.toml`, also printed by `--print-default-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config.toml");

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// An environment override cannot be applied.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Why.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `mqtt.receive_maximum`.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where devices connect.
    pub listeners: ListenersConfig,
    /// MQTT protocol limits and timeouts.
    pub mqtt: MqttConfig,
    /// Kafka connection and producer settings.
    pub kafka: KafkaConfig,
    /// MQTT topic filter → Kafka topic, first match wins.
    pub routes: Vec<RouteConfig>,
    /// What happens to a PUBLISH that matches no route.
    pub unmatched: UnmatchedConfig,
    /// Commands from Kafka to devices.
    pub commands: CommandsConfig,
    /// Device lifecycle and cross-replica session records.
    pub lifecycle: LifecycleConfig,
    /// Who a device is: certificates, passwords, JWTs, an HTTP hook; and ACLs.
    pub auth: AuthConfig,
    /// Rate limits per source address and per device.
    pub limits: LimitsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Metrics and health endpoints.
    pub ops: OpsConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: ListenersConfig::default(),
            mqtt: MqttConfig::default(),
            kafka: KafkaConfig::default(),
            routes: vec![
                RouteConfig {
                    filter: "devices/{device_id}/events/#".into(),
                    kafka_topic: "iot.events".into(),
                    key: "{client_id}".into(),
                },
                RouteConfig {
                    filter: "devices/{device_id}/snapshot".into(),
                    kafka_topic: "iot.snapshots".into(),
                    key: "{client_id}".into(),
                },
            ],
            unmatched: UnmatchedConfig::default(),
            commands: CommandsConfig::default(),
            lifecycle: LifecycleConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            ops: OpsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Parses TOML text; unknown keys are errors. Does not validate.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads a config file, lays it over the shipped defaults, applies
    /// environment overrides (see [`apply_env`]) and parses the result; it
    /// does not validate ([`Config::validate`] does, at start-up and in
    /// `--check-config`). A missing file is fine when `allow_missing`
    /// (containers configured by environment only).
    pub fn load_with_env<I>(path: &Path, env: I, allow_missing: bool) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if allow_missing && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let file: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        // The file is laid over the shipped defaults, so a partial table
        // (or an environment variable alone) keeps every other key's default.
        let mut tree: toml::Table =
            DEFAULT_CONFIG_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: "config.toml (built in)".into(),
                    message: e.to_string(),
                })?;
        merge(&mut tree, file);
        apply_env(&mut tree, env)?;
        let config: Config =
            toml::Value::Table(tree)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!("{e} (after environment overrides)"),
                })?;
        Ok(config)
    }

    /// Whether the embedded broker is to be started.
    pub fn embedded_kafka(&self) -> bool {
        self.kafka.bootstrap_servers == "embedded"
    }
}

#[cfg(test)]
mod tests;
