//! The configuration tree: one serde structure read from `config.toml`,
//! strict (`deny_unknown_fields`), with units in key names and a default for
//! every field. The shipped `config.toml` spells out every default; a test
//! keeps the two equal. [`Config::validate`] runs at start-up and in
//! `--check-config`, and every error names the key at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::router::Router;

/// The configuration shipped in `config.toml`, also printed by `--print-default-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.toml");

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

/// The listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Plain MQTT over TCP.
    pub tcp: TcpListenerConfig,
    /// MQTT over TLS.
    pub tls: TlsListenerConfig,
    /// MQTT over WebSocket.
    pub ws: WsListenerConfig,
    /// MQTT over WebSocket over TLS (the `tls` listener's certificate and
    /// client-certificate settings).
    pub wss: WsListenerConfig,
    /// Most connections this replica holds at once (all listeners); further
    /// connections wait in the kernel backlog. Default 15000 (the machine's
    /// open-file limit is 20000).
    pub max_connections: usize,
    /// Set SO_REUSEPORT so several replicas on one host share a port. Default false.
    pub reuse_port: bool,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            tcp: TcpListenerConfig::default(),
            tls: TlsListenerConfig::default(),
            ws: WsListenerConfig {
                enabled: true,
                bind: SocketAddr::from(([0, 0, 0, 0], 8083)),
                path: "/mqtt".into(),
                proxy_protocol: false,
            },
            wss: WsListenerConfig {
                enabled: true,
                bind: SocketAddr::from(([0, 0, 0, 0], 8084)),
                path: "/mqtt".into(),
                proxy_protocol: false,
            },
            max_connections: 15_000,
            reuse_port: false,
        }
    }
}

/// Plain TCP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpListenerConfig {
    /// Serve this listener. Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:1883`.
    pub bind: SocketAddr,
    /// Every connection starts with a PROXY protocol v1 or v2 header (from
    /// a load balancer); without one it is closed. Default false.
    pub proxy_protocol: bool,
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            proxy_protocol: false,
        }
    }
}

/// TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
    /// Serve this listener. Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:8883`.
    pub bind: SocketAddr,
    /// Every connection starts with a PROXY protocol v1 or v2 header, before
    /// the TLS handshake. Default false.
    pub proxy_protocol: bool,
    /// PEM certificate chain, leaf first. Default `certs/server.crt`.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default `certs/server.key`.
    pub key_path: PathBuf,
    /// When `cert_path` or `key_path` is missing, generate a development CA
    /// and server certificate there (and `ca.crt` beside them) instead of
    /// failing. Default true; set false in production.
    pub generate_dev_certs: bool,
    /// Client certificates: `none` (not asked for), `optional` (verified when
    /// presented) or `required` (the handshake fails without one). Default `none`.
    pub client_auth: ClientAuth,
    /// PEM file of the CA certificates that sign device certificates;
    /// required unless `client_auth = "none"`. Default empty.
    pub client_ca_path: PathBuf,
    /// PEM file of certificate revocation lists for device certificates;
    /// empty for none. Default empty.
    pub crl_path: PathBuf,
    /// How often the certificate, key, CA and CRL files are checked for
    /// changes; a change is loaded without a restart (new handshakes use it).
    /// Default 10000.
    pub reload_interval_ms: u64,
}

/// A WebSocket listener (`listeners.ws`: plain, default 8083;
/// `listeners.wss`: TLS, default 8084).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsListenerConfig {
    /// Serve this listener. Default true.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
    /// HTTP path of the upgrade. Default `/mqtt`.
    pub path: String,
    /// Connections start with a PROXY protocol header. Default false.
    pub proxy_protocol: bool,
}

/// Whether the TLS listener asks devices for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// Verified against `client_ca_path` when the device presents one.
    Optional,
    /// Every device must present a certificate signed by `client_ca_path`.
    Required,
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        TlsListenerConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 8883)),
            proxy_protocol: false,
            cert_path: "certs/server.crt".into(),
            key_path: "certs/server.key".into(),
            generate_dev_certs: true,
            client_auth: ClientAuth::None,
            client_ca_path: PathBuf::new(),
            crl_path: PathBuf::new(),
            reload_interval_ms: 10_000,
        }
    }
}

/// MQTT protocol settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Deadline for the TLS handshake plus the whole CONNECT packet. Default 10000.
    pub connect_timeout_ms: u64,
    /// Largest packet accepted (fixed header included); larger ones close the
    /// connection (5.0: DISCONNECT 0x95) before their body is read. Announced
    /// to 5.0 clients as Maximum Packet Size. Default 262144.
    pub max_packet_size_bytes: usize,
    /// Unacknowledged QoS 1/2 PUBLISH packets per connection (5.0: announced as
    /// Receive Maximum; 3.1.1: the proxy stops reading at this many). Default 64.
    pub receive_maximum: u16,
    /// Inbound topic aliases per 5.0 connection (0 disables). Default 16.
    pub topic_alias_maximum: u16,
    /// Longest client id accepted, in bytes. Default 128.
    pub max_client_id_bytes: usize,
    /// Most user properties in one packet. Default 32.
    pub max_user_properties: usize,
    /// Give up on a client that does not read what the proxy writes. Default 30000.
    pub write_timeout_ms: u64,
    /// Give a client that connects with an empty client id a generated one
    /// (`auto-…`); false refuses it (3.1.1: 0x02, 5.0: 0x85). Default true.
    pub assign_client_ids: bool,
    /// Longest topic name in a PUBLISH and topic filter in a SUBSCRIBE, in
    /// bytes. Default 256.
    pub max_topic_bytes: usize,
    /// QoS 2 packet ids a connection may hold between PUBREC and PUBREL
    /// (3.1.1; for 5.0 Receive Maximum bounds them); more closes the
    /// connection. Default 256.
    pub max_awaiting_rel: usize,
    /// Once the first byte of a packet has arrived, the rest must follow
    /// within this time (slowloris guard; the CONNECT has
    /// `connect_timeout_ms`). Default 30000.
    pub partial_packet_timeout_ms: u64,
    /// How a connection's QoS 1/2 records are handed to Kafka, and what a
    /// failed delivery does to the ones behind it. Default `pipelined`.
    pub ordering: PublishOrdering,
}

/// `mqtt.ordering`: the trade between throughput and a device's order in
/// Kafka when a delivery fails. QoS 0 records are never held by either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishOrdering {
    /// Up to `receive_maximum` records of a connection in the producer's
    /// hands at once; a failed delivery is nacked (5.0) and the records
    /// behind it may land, so a resend of the failed one lands after them.
    #[default]
    Pipelined,
    /// One record of a connection in the producer's hands at a time; later
    /// ones wait in the connection. A failed delivery is nacked and the
    /// connection closed, and the waiting records are never produced, so
    /// the device resends from the failed one, in order.
    Strict,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            connect_timeout_ms: 10_000,
            max_packet_size_bytes: 262_144,
            receive_maximum: 64,
            topic_alias_maximum: 16,
            max_client_id_bytes: 128,
            max_user_properties: 32,
            write_timeout_ms: 30_000,
            assign_client_ids: true,
            max_topic_bytes: 256,
            max_awaiting_rel: 256,
            partial_packet_timeout_ms: 30_000,
            ordering: PublishOrdering::Pipelined,
        }
    }
}

/// Kafka settings.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `embedded` starts an in-process Kafka-protocol broker; anything else is
    /// a librdkafka `bootstrap.servers` list. Default `embedded`.
    pub bootstrap_servers: String,
    /// How long the producer keeps retrying a record before the device gets a
    /// failure (librdkafka `message.timeout.ms`). Default 60000.
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch (`linger.ms`). Default 5.
    pub linger_ms: u64,
    /// Records the producer may hold in memory before the proxy stops reading
    /// from sockets (`queue.buffering.max.messages`). Default 10000: small
    /// enough that Kafka drains a full queue well within the delivery
    /// timeout (the fault matrix measured 100000 against 10000).
    pub queue_max_messages: u32,
    /// The embedded broker, used when `bootstrap_servers = "embedded"`.
    pub embedded: EmbeddedKafkaConfig,
    /// Any librdkafka option for every Kafka client of the proxy (producer
    /// and command consumer): connection and security settings such as
    /// `"security.protocol"`, `"sasl.mechanisms"`, `"sasl.username"`.
    /// Default empty.
    pub client: BTreeMap<String, String>,
    /// Any librdkafka producer option, passed through last so it wins
    /// (e.g. `"compression.type" = "lz4"`).
    pub producer: BTreeMap<String, String>,
    /// The topics the proxy needs, checked (and created) at start-up on a
    /// real cluster; not used with the embedded broker.
    pub topics: TopicsConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "embedded".into(),
            delivery_timeout_ms: 60_000,
            linger_ms: 5,
            queue_max_messages: 10_000,
            embedded: EmbeddedKafkaConfig::default(),
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            topics: TopicsConfig::default(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Pass-through options may hold SASL passwords or key material.
        let redact = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| {
                    let v = if is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), v.to_owned())
                })
                .collect()
        };
        let (client, producer) = (redact(&self.client), redact(&self.producer));
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("delivery_timeout_ms", &self.delivery_timeout_ms)
            .field("linger_ms", &self.linger_ms)
            .field("queue_max_messages", &self.queue_max_messages)
            .field("embedded", &self.embedded)
            .field("client", &client)
            .field("producer", &producer)
            .field("topics", &self.topics)
            .finish()
    }
}

/// Whether a librdkafka option holds a secret that logs must not show.
pub fn is_secret(key: &str) -> bool {
    ["password", "secret", "key.pem", "token"]
        .iter()
        .any(|s| key.contains(s))
}

/// The topics the proxy reads and writes, on a real Kafka cluster
/// (`kafka.topics`): checked at start-up and, unless told otherwise, created
/// when missing. The sessions and retained-commands topics are always created
/// with `cleanup.policy=compact`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Create missing topics; false makes a missing topic a start-up error.
    /// Default true.
    pub create: bool,
    /// Partitions of each created topic; -1: the broker's `num.partitions`.
    /// Default 6.
    pub partitions: i32,
    /// Replication factor of each created topic; -1: the broker's
    /// `default.replication.factor`. Default -1.
    pub replication_factor: i32,
    /// Upper bound on the start-up check and creation; a cluster that does
    /// not answer within it is checked again in the background. Default 30000.
    pub timeout_ms: u64,
    /// Topic configs for every created topic (e.g. `"min.insync.replicas" =
    /// "2"`, `"retention.ms" = "604800000"`). Default empty.
    pub config: BTreeMap<String, String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            create: true,
            partitions: 6,
            replication_factor: -1,
            timeout_ms: 30_000,
            config: BTreeMap::new(),
        }
    }
}

/// The embedded Kafka-protocol broker (librdkafka's mock cluster).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedKafkaConfig {
    /// Address where other Kafka clients (kcat, consumers) bootstrap from.
    /// Port 0 picks a free port. Default `127.0.0.1:9092`.
    pub listen: SocketAddr,
    /// Number of brokers. Default 1.
    pub brokers: u32,
    /// Partitions of each topic named by a route. Default 6.
    pub partitions: u32,
}

impl Default for EmbeddedKafkaConfig {
    fn default() -> Self {
        EmbeddedKafkaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            brokers: 1,
            partitions: 6,
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter; `{name}` names a single level, `+` and a final `#`
    /// are wildcards.
    pub filter: String,
    /// Kafka topic the records go to.
    pub kafka_topic: String,
    /// Record key template over `{client_id}` and the filter's named levels.
    /// Default `{client_id}`.
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    "{client_id}".into()
}

/// What happens when no route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedAction {
    /// Refuse the PUBLISH (5.0: reason 0x90; 3.1.1: close the connection).
    #[default]
    Refuse,
    /// Write the record to `dead_letter_topic`, keyed by client id.
    DeadLetter,
}

/// Unmatched-topic policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnmatchedConfig {
    /// `refuse` or `dead_letter`. Default `refuse`.
    pub action: UnmatchedAction,
    /// Topic for `dead_letter`. Default `iot.deadletter`.
    pub dead_letter_topic: String,
}

impl Default for UnmatchedConfig {
    fn default() -> Self {
        UnmatchedConfig {
            action: UnmatchedAction::Refuse,
            dead_letter_topic: "iot.deadletter".into(),
        }
    }
}

/// Commands: records on a Kafka topic delivered to connected devices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Consume commands and serve SUBSCRIBE. Default true.
    pub enabled: bool,
    /// Topic back-end services write commands to (key = device id). Default `iot.commands`.
    pub topic: String,
    /// Topic every command's outcome is written to. Default `iot.command-receipts`.
    pub receipts_topic: String,
    /// MQTT topic of a command without an `mqtt.topic` header; `{device_id}`
    /// and `{name}` (the `command.name` header, default `command`) are filled
    /// in. Default `devices/{device_id}/commands/{name}`.
    pub topic_template: String,
    /// Compacted topic of retained commands (desired state, latest per
    /// device and MQTT topic, sent on SUBSCRIBE); empty disables. Default
    /// `iot.retained-commands`.
    pub retained_topic: String,
    /// Filters a device may subscribe to; `{device_id}` is the device's own
    /// id. Default `["devices/{device_id}/commands/#"]`.
    pub subscribe_filters: Vec<String>,
    /// QoS of a command without an `mqtt.qos` header (0 or 1). Default 1.
    pub default_qos: u8,
    /// Commands queued per connection before further ones are dropped, and
    /// held per offline device (oldest dropped first). Default 64.
    pub max_queued_per_device: usize,
    /// QoS 1 commands sent to one connection and not yet acknowledged (also
    /// bounded by the 5.0 client's Receive Maximum). Default 16.
    pub max_unacked_per_device: u16,
    /// How long a command waits for an offline device with a persistent
    /// session (also how far back the start-up rebuild reads). Default 3600000.
    pub offline_max_age_ms: u64,
    /// Name of this replica in receipts and session records; empty means
    /// `hostname-pid`. Default empty.
    pub replica_id: String,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            enabled: true,
            topic: "iot.commands".into(),
            receipts_topic: "iot.command-receipts".into(),
            retained_topic: "iot.retained-commands".into(),
            topic_template: "devices/{device_id}/commands/{name}".into(),
            subscribe_filters: vec!["devices/{device_id}/commands/#".into()],
            default_qos: 1,
            max_queued_per_device: 64,
            max_unacked_per_device: 16,
            offline_max_age_ms: 3_600_000,
            replica_id: String::new(),
        }
    }
}

/// Lifecycle records and the sessions topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Topic for connected / disconnected records (key = device id); empty
    /// disables them. Default `iot.lifecycle`.
    pub topic: String,
    /// Compacted topic where replicas announce connects (key = client id), so
    /// a client id connecting to one replica closes its older session on
    /// another. Default `iot.sessions`.
    pub sessions_topic: String,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            topic: "iot.lifecycle".into(),
            sessions_topic: "iot.sessions".into(),
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Upper bound on the whole drain: waiting for in-flight acknowledgements
    /// and flushing the producer. Default 30000.
    pub drain_timeout_ms: u64,
    /// How long `/readyz` reports "draining" before the listeners close, so
    /// load balancers stop sending new connections first. Default 0 (in
    /// Kubernetes a preStop hook usually gives this time).
    pub readiness_grace_ms: u64,
    /// Connections are told to go (5.0: DISCONNECT) at random moments
    /// spread over this window, so the fleet does not reconnect at once.
    /// Must be below `drain_timeout_ms`. Default 0.
    pub disconnect_spread_ms: u64,
    /// When set, 5.0 clients get DISCONNECT 0x9C (use another server) with
    /// this Server Reference instead of 0x8B (server shutting down). Default empty.
    pub server_reference: String,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 30_000,
            readiness_grace_ms: 0,
            disconnect_spread_ms: 0,
            server_reference: String::new(),
        }
    }
}

/// An authentication method, tried in the order of `auth.methods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// The verified TLS client certificate (`listeners.tls.client_auth`).
    Certificate,
    /// User name and password against `auth.password.file`.
    Password,
    /// A JWT in the password field.
    Jwt,
    /// An external HTTP service.
    Http,
}

/// Authentication and authorization.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Methods tried in order; the first that recognises the client decides
    /// (allow or deny), one that does not (no certificate, unknown user, not
    /// a JWT) passes to the next; if none recognises it, it is refused. Empty:
    /// authentication off, the device id is the client id. Default empty.
    pub methods: Vec<AuthMethod>,
    /// How often the password file and JWT key files are checked for
    /// changes. Default 10000.
    pub reload_interval_ms: u64,
    /// Certificate identity.
    pub certificate: CertificateAuthConfig,
    /// Password file.
    pub password: PasswordAuthConfig,
    /// JWT verification.
    pub jwt: JwtAuthConfig,
    /// HTTP auth hook.
    pub http: HttpAuthConfig,
    /// Publish / subscribe rules, first match wins. Nothing matching: denied
    /// when authentication is on, allowed when it is off. Default empty.
    pub acl: Vec<AclRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            methods: Vec::new(),
            reload_interval_ms: 10_000,
            certificate: CertificateAuthConfig::default(),
            password: PasswordAuthConfig::default(),
            jwt: JwtAuthConfig::default(),
            http: HttpAuthConfig::default(),
            acl: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// True when devices must authenticate.
    pub fn enabled(&self) -> bool {
        !self.methods.is_empty()
    }
}

/// Which part of a client certificate is the device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CertIdentity {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first URI subject alternative name (e.g. `spiffe://fleet/dev-1`).
    SanUri,
}

/// Certificate authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateAuthConfig {
    /// Where the device id comes from: `cn` or `san_uri`. Default `cn`.
    pub identity: CertIdentity,
}

/// Password authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordAuthConfig {
    /// `user:argon2-hash` lines, written by `mqtt-kafka-proxy passwd FILE
    /// USER`; the user name is the device id. Default empty.
    pub file: PathBuf,
}

/// JWT authentication: the token is the CONNECT password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtAuthConfig {
    /// PEM public key (RSA or EC) or a JWKS document, for RS256 / ES256.
    /// Default empty.
    pub key_file: PathBuf,
    /// File holding the HS256 shared secret (trailing newline ignored).
    /// Default empty.
    pub secret_file: PathBuf,
    /// Accepted algorithms (`HS256`, `RS256`, `ES256`). Default all three;
    /// only those with a key configured can succeed.
    pub algorithms: Vec<String>,
    /// Required `iss`; empty: not checked. Default empty.
    pub issuer: String,
    /// Required `aud` (one of the token's); empty: not checked. Default empty.
    pub audience: String,
    /// Claim holding the device id. Default `sub`.
    pub device_id_claim: String,
    /// Clock skew allowed for `exp` and `nbf`, in seconds. Default 30.
    pub leeway_s: u64,
}

impl Default for JwtAuthConfig {
    fn default() -> Self {
        JwtAuthConfig {
            key_file: PathBuf::new(),
            secret_file: PathBuf::new(),
            algorithms: vec!["HS256".into(), "RS256".into(), "ES256".into()],
            issuer: String::new(),
            audience: String::new(),
            device_id_claim: "sub".into(),
            leeway_s: 30,
        }
    }
}

/// What the proxy does when the auth service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse (CONNACK 0x88 server unavailable / 3.1.1 0x03).
    #[default]
    Deny,
    /// Let the client in (fail open).
    Allow,
}

/// HTTP auth hook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// URL POSTed a JSON request per decision. Default empty.
    pub url: String,
    /// Per-request deadline. Default 1000.
    pub timeout_ms: u64,
    /// How long an allow answer is reused. Default 60000.
    pub allow_cache_ttl_ms: u64,
    /// How long a deny answer is reused. Default 10000.
    pub deny_cache_ttl_ms: u64,
    /// Most cached answers. Default 100000.
    pub cache_max_entries: usize,
    /// When the service is down, slow or answers 5xx. Default `deny`.
    pub on_error: OnError,
    /// Also ask for each PUBLISH topic (cached per device and topic). Default false.
    pub check_publish: bool,
    /// Also ask for each SUBSCRIBE filter. Default false.
    pub check_subscribe: bool,
    /// Keep-alive connections kept to the service, which is also the most
    /// requests in flight at once (more wait for a free one). Default 64.
    pub max_idle_connections: usize,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            url: String::new(),
            timeout_ms: 1000,
            allow_cache_ttl_ms: 60_000,
            deny_cache_ttl_ms: 10_000,
            cache_max_entries: 100_000,
            on_error: OnError::Deny,
            check_publish: false,
            check_subscribe: false,
            max_idle_connections: 64,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// What an ACL rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    /// PUBLISH topic names.
    Publish,
    /// SUBSCRIBE topic filters.
    Subscribe,
    /// Both.
    All,
}

/// One ACL rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// `allow` or `deny`.
    pub permission: Permission,
    /// `publish`, `subscribe` or `all`.
    pub action: AclAction,
    /// Topic filter with `{device_id}`, `{username}`, `{client_id}`.
    pub topic: String,
}

/// Rate limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// New connections accepted per second from one source address (token
    /// bucket); more are closed at once. 0 disables. Default 100.
    pub connects_per_second_per_source: u32,
    /// Burst of new connections from one source address. Default 500.
    pub connect_burst_per_source: u32,
    /// PUBLISH packets per second per connection; 0 disables. Over it, 5.0:
    /// DISCONNECT 0x96; 3.1.1: the socket is read slower. Default 0.
    pub publish_per_second: u32,
    /// Burst of PUBLISH packets. Default 100.
    pub publish_burst: u32,
    /// PUBLISH payload bytes per second per connection; 0 disables. Over it,
    /// 5.0: the PUBLISH is refused with 0x97 quota exceeded; 3.1.1: the
    /// socket is read slower. Default 0.
    pub publish_bytes_per_second: u64,
    /// Burst of payload bytes. Default 1048576.
    pub publish_burst_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connects_per_second_per_source: 100,
            connect_burst_per_source: 500,
            publish_per_second: 0,
            publish_burst: 100,
            publish_bytes_per_second: 0,
            publish_burst_bytes: 1_048_576,
        }
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

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; unknown keys are errors. Does not validate.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads a config file, applies environment overrides (see
    /// [`apply_env`]), then parses and validates the result. A missing file
    /// is fine when `allow_missing` (containers configured by environment only).
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
        config.validate()?;
        Ok(config)
    }

    /// Every Kafka topic the proxy reads or writes: routes, dead letters,
    /// commands, receipts, lifecycle and sessions.
    pub fn kafka_topics(&self) -> Vec<String> {
        let mut topics = Router::new(&self.routes, &self.unmatched)
            .map(|r| r.kafka_topics())
            .unwrap_or_default();
        if self.commands.enabled {
            topics.push(self.commands.topic.clone());
            topics.push(self.commands.receipts_topic.clone());
            if !self.commands.retained_topic.is_empty() {
                topics.push(self.commands.retained_topic.clone());
            }
        }
        topics.push(self.lifecycle.sessions_topic.clone());
        if !self.lifecycle.topic.is_empty() {
            topics.push(self.lifecycle.topic.clone());
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Whether the embedded broker is to be started.
    pub fn embedded_kafka(&self) -> bool {
        self.kafka.bootstrap_servers == "embedded"
    }

    /// Checks ranges and consistency; every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.listeners;
        if !l.tcp.enabled && !l.tls.enabled && !l.ws.enabled && !l.wss.enabled {
            return Err(invalid(
                "listeners",
                "at least one of listeners.tcp, .tls, .ws and .wss must be enabled",
            ));
        }
        for (key, ws) in [("listeners.ws.path", &l.ws), ("listeners.wss.path", &l.wss)] {
            if ws.enabled && !ws.path.starts_with('/') {
                return Err(invalid(key, "must start with /"));
            }
        }
        if l.max_connections == 0 {
            return Err(invalid("listeners.max_connections", "must be at least 1"));
        }
        let m = &self.mqtt;
        if m.connect_timeout_ms == 0 {
            return Err(invalid("mqtt.connect_timeout_ms", "must be at least 1"));
        }
        if !(64..=268_435_460).contains(&m.max_packet_size_bytes) {
            return Err(invalid(
                "mqtt.max_packet_size_bytes",
                "must be between 64 and 268435460 (the MQTT maximum)",
            ));
        }
        if m.receive_maximum == 0 {
            return Err(invalid("mqtt.receive_maximum", "must be at least 1"));
        }
        if !(1..=65_535).contains(&m.max_client_id_bytes) {
            return Err(invalid(
                "mqtt.max_client_id_bytes",
                "must be between 1 and 65535",
            ));
        }
        if m.write_timeout_ms == 0 {
            return Err(invalid("mqtt.write_timeout_ms", "must be at least 1"));
        }
        if !(1..=65_535).contains(&m.max_topic_bytes) {
            return Err(invalid(
                "mqtt.max_topic_bytes",
                "must be between 1 and 65535",
            ));
        }
        if m.max_awaiting_rel == 0 {
            return Err(invalid("mqtt.max_awaiting_rel", "must be at least 1"));
        }
        if m.partial_packet_timeout_ms == 0 {
            return Err(invalid(
                "mqtt.partial_packet_timeout_ms",
                "must be at least 1",
            ));
        }
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "must be \"embedded\" or a host:port list",
            ));
        }
        if k.delivery_timeout_ms == 0 {
            return Err(invalid("kafka.delivery_timeout_ms", "must be at least 1"));
        }
        if k.queue_max_messages == 0 {
            return Err(invalid("kafka.queue_max_messages", "must be at least 1"));
        }
        if !(1..=16).contains(&k.embedded.brokers) {
            return Err(invalid(
                "kafka.embedded.brokers",
                "must be between 1 and 16",
            ));
        }
        if !(1..=1024).contains(&k.embedded.partitions) {
            return Err(invalid(
                "kafka.embedded.partitions",
                "must be between 1 and 1024",
            ));
        }
        let t = &k.topics;
        if t.partitions == 0 || t.partitions < -1 {
            return Err(invalid(
                "kafka.topics.partitions",
                "must be at least 1, or -1 for the broker's num.partitions",
            ));
        }
        if !(1..=i16::MAX as i32).contains(&t.replication_factor) && t.replication_factor != -1 {
            return Err(invalid(
                "kafka.topics.replication_factor",
                "must be between 1 and 32767, or -1 for the broker's default.replication.factor",
            ));
        }
        if t.timeout_ms == 0 {
            return Err(invalid("kafka.topics.timeout_ms", "must be at least 1"));
        }
        if let Some(key) = t.config.keys().find(|key| key.trim().is_empty()) {
            return Err(invalid(
                "kafka.topics.config",
                format!("{key:?} is not a topic config name"),
            ));
        }
        for key in k.producer.keys().chain(k.client.keys()) {
            if key == "bootstrap.servers" {
                return Err(invalid(
                    "kafka.producer.\"bootstrap.servers\"",
                    "set kafka.bootstrap_servers instead",
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(invalid(
                "routes",
                "at least one [[routes]] entry is required",
            ));
        }
        if self.unmatched.action == UnmatchedAction::DeadLetter
            && self.unmatched.dead_letter_topic.is_empty()
        {
            return Err(invalid(
                "unmatched.dead_letter_topic",
                "must be set when unmatched.action = \"dead_letter\"",
            ));
        }
        Router::new(&self.routes, &self.unmatched).map_err(|e| invalid("routes", e.to_string()))?;
        let c = &self.commands;
        if c.enabled {
            if c.topic.is_empty() || c.receipts_topic.is_empty() {
                return Err(invalid(
                    "commands.topic",
                    "commands.topic and commands.receipts_topic must be set",
                ));
            }
            if c.default_qos > 1 {
                return Err(invalid("commands.default_qos", "must be 0 or 1"));
            }
            if c.max_queued_per_device == 0 {
                return Err(invalid(
                    "commands.max_queued_per_device",
                    "must be at least 1",
                ));
            }
            for f in &c.subscribe_filters {
                if f.is_empty() || f.contains('#') && !f.ends_with('#') {
                    return Err(invalid(
                        "commands.subscribe_filters",
                        format!("{f:?} is not a topic filter"),
                    ));
                }
            }
        }
        if c.max_unacked_per_device == 0 {
            return Err(invalid(
                "commands.max_unacked_per_device",
                "must be at least 1",
            ));
        }
        self.validate_security()?;
        if self.lifecycle.sessions_topic.is_empty() {
            return Err(invalid("lifecycle.sessions_topic", "must be set"));
        }
        if self.shutdown.drain_timeout_ms == 0 {
            return Err(invalid("shutdown.drain_timeout_ms", "must be at least 1"));
        }
        if self.shutdown.disconnect_spread_ms >= self.shutdown.drain_timeout_ms {
            return Err(invalid(
                "shutdown.disconnect_spread_ms",
                "must be below shutdown.drain_timeout_ms",
            ));
        }
        if self.ops.enabled && self.ops.kafka_check_interval_ms == 0 {
            return Err(invalid("ops.kafka_check_interval_ms", "must be at least 1"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

impl Config {
    /// The TLS, authentication, ACL and limits part of [`Config::validate`].
    fn validate_security(&self) -> Result<(), ConfigError> {
        let tls = &self.listeners.tls;
        if tls.reload_interval_ms == 0 {
            return Err(invalid(
                "listeners.tls.reload_interval_ms",
                "must be at least 1",
            ));
        }
        if tls.client_auth != ClientAuth::None && tls.client_ca_path.as_os_str().is_empty() {
            return Err(invalid(
                "listeners.tls.client_ca_path",
                "must be set when listeners.tls.client_auth is \"optional\" or \"required\"",
            ));
        }
        let a = &self.auth;
        if a.reload_interval_ms == 0 {
            return Err(invalid("auth.reload_interval_ms", "must be at least 1"));
        }
        let mut seen = Vec::new();
        for m in &a.methods {
            if seen.contains(m) {
                return Err(invalid("auth.methods", format!("{m:?} is listed twice")));
            }
            seen.push(*m);
            match m {
                AuthMethod::Certificate => {
                    let own_tls = tls.enabled && tls.client_auth != ClientAuth::None;
                    // Or TLS terminated by a balancer that passes the CN in PROXY v2.
                    let proxied = self.listeners.tcp.proxy_protocol || tls.proxy_protocol;
                    if !own_tls && !proxied {
                        return Err(invalid(
                            "auth.methods",
                            "\"certificate\" needs listeners.tls.client_auth, or a listener with proxy_protocol behind a TLS-terminating balancer",
                        ));
                    }
                }
                AuthMethod::Password => {
                    if a.password.file.as_os_str().is_empty() {
                        return Err(invalid(
                            "auth.password.file",
                            "must be set when auth.methods has \"password\"",
                        ));
                    }
                }
                AuthMethod::Jwt => {
                    let j = &a.jwt;
                    if j.key_file.as_os_str().is_empty() && j.secret_file.as_os_str().is_empty() {
                        return Err(invalid(
                            "auth.jwt.key_file",
                            "auth.jwt.key_file or auth.jwt.secret_file must be set when auth.methods has \"jwt\"",
                        ));
                    }
                    if j.algorithms.is_empty() {
                        return Err(invalid("auth.jwt.algorithms", "must not be empty"));
                    }
                    for alg in &j.algorithms {
                        if !["HS256", "RS256", "ES256"].contains(&alg.as_str()) {
                            return Err(invalid(
                                "auth.jwt.algorithms",
                                format!("{alg:?} is not one of HS256, RS256, ES256"),
                            ));
                        }
                    }
                    if j.leeway_s > 86_400 {
                        return Err(invalid("auth.jwt.leeway_s", "must be at most 86400"));
                    }
                    if j.device_id_claim.is_empty() {
                        return Err(invalid("auth.jwt.device_id_claim", "must be set"));
                    }
                }
                AuthMethod::Http => {}
            }
        }
        let h = &a.http;
        let http_used =
            a.methods.contains(&AuthMethod::Http) || h.check_publish || h.check_subscribe;
        if http_used {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err(invalid(
                    "auth.http.url",
                    "must be an http:// or https:// URL",
                ));
            }
            if h.timeout_ms == 0 {
                return Err(invalid("auth.http.timeout_ms", "must be at least 1"));
            }
            if h.max_idle_connections == 0 {
                return Err(invalid(
                    "auth.http.max_idle_connections",
                    "must be at least 1",
                ));
            }
        }
        for (i, rule) in a.acl.iter().enumerate() {
            let who = crate::auth::acl::Subject {
                device_id: "x",
                username: Some("x"),
                client_id: "x",
            };
            // Sample values are single plain levels, so render never refuses them.
            let sample = crate::auth::acl::render(&rule.topic, &who).unwrap_or_default();
            if sample.contains('{') || sample.contains('}') {
                return Err(invalid(
                    "auth.acl",
                    format!("rule {i} topic {:?}: only {{device_id}}, {{username}} and {{client_id}} may be used", rule.topic),
                ));
            }
            if !crate::mqtt::topic::valid_filter(&sample) {
                return Err(invalid(
                    "auth.acl",
                    format!("rule {i} topic {:?} is not a topic filter", rule.topic),
                ));
            }
        }
        let l = &self.limits;
        if l.connects_per_second_per_source > 0 && l.connect_burst_per_source == 0 {
            return Err(invalid(
                "limits.connect_burst_per_source",
                "must be at least 1",
            ));
        }
        if l.publish_per_second > 0 && l.publish_burst == 0 {
            return Err(invalid("limits.publish_burst", "must be at least 1"));
        }
        if l.publish_bytes_per_second > 0
            && l.publish_burst_bytes < self.mqtt.max_packet_size_bytes as u64
        {
            return Err(invalid(
                "limits.publish_burst_bytes",
                "must be at least mqtt.max_packet_size_bytes, or the largest PUBLISH could never pass",
            ));
        }
        Ok(())
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else
/// (values, arrays such as `[[routes]]`) replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "MQTT_KAFKA_PROXY__";

/// Applies `MQTT_KAFKA_PROXY__SECTION__KEY=value` overrides to a parsed
/// config file. Levels are separated by `__` and matched lower-cased
/// (`MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS`); under `kafka.producer` the
/// rest of the name is a librdkafka option with `_` for `.`
/// (`..__KAFKA__PRODUCER__SASL_PASSWORD` → `"sasl.password"`), and so is it
/// under `kafka.topics.config` (`..__KAFKA__TOPICS__CONFIG__MIN_INSYNC_REPLICAS`
/// → `"min.insync.replicas"`). The value is
/// read as TOML when it parses as a number, boolean or array, else as a
/// string. A variable ending in `_FILE` takes its value from that file
/// (trailing newline dropped), for secrets mounted as files.
pub fn apply_env<I>(tree: &mut toml::Table, env: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order: a plain variable and its _FILE twin both set is an error below.
    vars.sort();
    let mut seen = std::collections::HashSet::new();
    for (var, raw) in vars {
        let env_err = |reason: String| ConfigError::Env {
            var: var.clone(),
            reason,
        };
        let mut name = &var[ENV_PREFIX.len()..];
        let mut value = raw.clone();
        // `_FILE` means "read the value from this file", unless the whole
        // name is a key of its own (`auth.password.file`, `auth.jwt.key_file`).
        if let Some(base) = name
            .strip_suffix("_FILE")
            .filter(|_| !has_key(tree, &env_path(name)))
        {
            name = base;
            value = std::fs::read_to_string(&raw)
                .map_err(|e| env_err(format!("cannot read {raw}: {e}")))?
                .trim_end_matches(['\n', '\r'])
                .to_owned();
        }
        if !seen.insert(name.to_owned()) {
            return Err(env_err("set both directly and with _FILE".into()));
        }
        let path = env_path(name);
        if path.iter().any(|p| p.is_empty()) {
            return Err(env_err("empty level between __ separators".into()));
        }
        // Option maps hold strings, even `"min.insync.replicas" = "2"`.
        let parsed = if in_option_map(&path) {
            toml::Value::String(value)
        } else {
            parse_env_value(&value)
        };
        let (last, parents) = path.split_last().ok_or_else(|| env_err("no key".into()))?;
        let mut table = &mut *tree;
        for p in parents {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| env_err(format!("{p} is not a section")))?;
        }
        table.insert(last.clone(), parsed);
    }
    Ok(())
}

/// The key path an environment variable name (without the prefix) names.
fn env_path(name: &str) -> Vec<String> {
    let mut path: Vec<String> = name.split("__").map(|p| p.to_ascii_lowercase()).collect();
    // librdkafka option maps: `_` stands for `.`.
    if path.len() > 2 && path[0] == "kafka" && (path[1] == "producer" || path[1] == "client") {
        let option = path[2..].join("_").replace('_', ".");
        path.truncate(2);
        path.push(option);
    }
    // So does it in Kafka topic config names (`min.insync.replicas`).
    if path.len() > 3 && path[..3] == ["kafka", "topics", "config"] {
        let option = path[3..].join("_").replace('_', ".");
        path.truncate(3);
        path.push(option);
    }
    path
}

/// Whether `path` is an entry of a string-valued option map (librdkafka
/// options, Kafka topic configs).
fn in_option_map(path: &[String]) -> bool {
    path.len() == 3 && path[0] == "kafka" && (path[1] == "producer" || path[1] == "client")
        || path.len() == 4 && path[..3] == ["kafka", "topics", "config"]
}

/// Whether `path` names an existing key of `tree`.
fn has_key(tree: &toml::Table, path: &[String]) -> bool {
    let mut table = tree;
    for (i, p) in path.iter().enumerate() {
        match table.get(p) {
            Some(toml::Value::Table(t)) if i + 1 < path.len() => table = t,
            Some(_) if i + 1 == path.len() => return true,
            _ => return false,
        }
    }
    false
}

fn parse_env_value(value: &str) -> toml::Value {
    let wrapped = format!("v = {value}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(value.to_owned()),
        },
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with_env(&path, env(pairs), false)
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let c = with_env(
            "[mqtt]\nreceive_maximum = 10\n[kafka]\nlinger_ms = 1\n",
            &[
                ("MQTT_KAFKA_PROXY__MQTT__RECEIVE_MAXIMUM", "20"),
                (
                    "MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS",
                    "k1:9092,k2:9092",
                ),
                ("MQTT_KAFKA_PROXY__LISTENERS__TLS__ENABLED", "false"),
                (
                    "MQTT_KAFKA_PROXY__COMMANDS__SUBSCRIBE_FILTERS",
                    "[\"d/{device_id}/#\"]",
                ),
                ("MQTT_KAFKA_PROXY__KAFKA__PRODUCER__COMPRESSION_TYPE", "lz4"),
                ("OTHER__MQTT__RECEIVE_MAXIMUM", "99"),
            ],
        )
        .unwrap();
        assert_eq!(c.mqtt.receive_maximum, 20);
        assert_eq!(
            c.kafka.linger_ms, 1,
            "keys not overridden keep the file's value"
        );
        assert_eq!(c.kafka.bootstrap_servers, "k1:9092,k2:9092");
        assert!(!c.listeners.tls.enabled);
        assert_eq!(
            c.commands.subscribe_filters,
            vec!["d/{device_id}/#".to_string()]
        );
        assert_eq!(
            c.kafka.producer.get("compression.type").map(String::as_str),
            Some("lz4")
        );
    }

    #[test]
    fn file_suffix_reads_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "hunter2\n").unwrap();
        let secret = secret.display().to_string();
        let c = with_env(
            "",
            &[(
                "MQTT_KAFKA_PROXY__KAFKA__PRODUCER__SASL_PASSWORD_FILE",
                secret.as_str(),
            )],
        )
        .unwrap();
        assert_eq!(
            c.kafka.producer.get("sasl.password").map(String::as_str),
            Some("hunter2")
        );
        let err = with_env(
            "",
            &[(
                "MQTT_KAFKA_PROXY__KAFKA__PRODUCER__SASL_PASSWORD_FILE",
                "/nonexistent/pw",
            )],
        )
        .unwrap_err();
        assert!(err.to_string().contains("SASL_PASSWORD_FILE"), "{err}");
    }

    #[test]
    fn partial_tables_and_keys_named_file_work() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("passwd");
        let pw = pw.display().to_string();
        let c = with_env(
            "[listeners.wss]\nbind = \"127.0.0.1:9999\"\n",
            &[
                ("MQTT_KAFKA_PROXY__LISTENERS__WS__PROXY_PROTOCOL", "true"),
                // A key that is itself called `file`: the value, not a file to read.
                ("MQTT_KAFKA_PROXY__AUTH__PASSWORD__FILE", pw.as_str()),
                (
                    "MQTT_KAFKA_PROXY__KAFKA__CLIENT__SECURITY_PROTOCOL",
                    "sasl_plaintext",
                ),
            ],
        )
        .unwrap();
        assert!(c.listeners.ws.proxy_protocol);
        assert_eq!(
            c.listeners.ws.bind.port(),
            8083,
            "other keys keep their defaults"
        );
        assert_eq!(c.listeners.wss.bind.port(), 9999);
        assert_eq!(c.listeners.wss.path, "/mqtt");
        assert_eq!(c.auth.password.file.display().to_string(), pw);
        assert_eq!(
            c.kafka.client.get("security.protocol").map(String::as_str),
            Some("sasl_plaintext")
        );
    }

    #[test]
    fn topic_settings_come_from_the_environment_as_strings() {
        let c = with_env(
            "",
            &[
                ("MQTT_KAFKA_PROXY__KAFKA__TOPICS__PARTITIONS", "12"),
                ("MQTT_KAFKA_PROXY__KAFKA__TOPICS__CREATE", "false"),
                (
                    "MQTT_KAFKA_PROXY__KAFKA__TOPICS__CONFIG__MIN_INSYNC_REPLICAS",
                    "2",
                ),
                ("MQTT_KAFKA_PROXY__KAFKA__PRODUCER__LINGER_MS", "20"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.topics.partitions, 12);
        assert!(!c.kafka.topics.create);
        assert_eq!(
            c.kafka
                .topics
                .config
                .get("min.insync.replicas")
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            c.kafka.producer.get("linger.ms").map(String::as_str),
            Some("20")
        );
    }

    #[test]
    fn bad_overrides_name_the_variable_or_the_key() {
        let err = with_env("", &[("MQTT_KAFKA_PROXY__MQTT__RECIEVE_MAXIMUM", "5")]).unwrap_err();
        assert!(err.to_string().contains("recieve_maximum"), "{err}");
        let err = with_env("", &[("MQTT_KAFKA_PROXY__MQTT__RECEIVE_MAXIMUM", "0")]).unwrap_err();
        assert!(err.to_string().contains("mqtt.receive_maximum"), "{err}");
        let err = with_env("", &[("MQTT_KAFKA_PROXY__MQTT__RECEIVE_MAXIMUM__X", "1")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("MQTT_KAFKA_PROXY__MQTT__RECEIVE_MAXIMUM__X"),
            "{err}"
        );
    }

    #[test]
    fn shipped_config_is_the_default_and_valid() {
        let shipped = Config::parse(DEFAULT_CONFIG_TOML).expect("config.toml parses");
        assert_eq!(shipped, Config::default());
        shipped.validate().expect("config.toml is valid");
    }

    #[test]
    fn ordering_is_pipelined_or_strict() {
        let c = Config::parse("[mqtt]\nordering = \"strict\"\n").unwrap();
        assert_eq!(c.mqtt.ordering, PublishOrdering::Strict);
        assert_eq!(Config::default().mqtt.ordering, PublishOrdering::Pipelined);
        let err = Config::parse("[mqtt]\nordering = \"fifo\"\n").unwrap_err();
        assert!(
            err.contains("ordering") && err.contains("pipelined") && err.contains("strict"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = Config::parse("[mqtt]\nrecieve_maximum = 5\n").unwrap_err();
        assert!(err.contains("recieve_maximum"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            ("[mqtt]\nreceive_maximum = 0\n", "mqtt.receive_maximum"),
            (
                "[mqtt]\nmax_packet_size_bytes = 10\n",
                "mqtt.max_packet_size_bytes",
            ),
            (
                "[listeners.tcp]\nenabled = false\n[listeners.tls]\nenabled = false\n[listeners.ws]\nenabled = false\nbind = \"0.0.0.0:8083\"\npath = \"/mqtt\"\nproxy_protocol = false\n[listeners.wss]\nenabled = false\nbind = \"0.0.0.0:8084\"\npath = \"/mqtt\"\nproxy_protocol = false\n",
                "listeners",
            ),
            (
                "[kafka]\nbootstrap_servers = \" \"\n",
                "kafka.bootstrap_servers",
            ),
            (
                "[[routes]]\nfilter = \"a/#/b\"\nkafka_topic = \"t\"\n",
                "routes",
            ),
            (
                "[[auth.acl]]\npermission = \"allow\"\naction = \"publish\"\ntopic = \"d/{tenant}/#\"\n",
                "auth.acl",
            ),
            (
                "[[auth.acl]]\npermission = \"allow\"\naction = \"publish\"\ntopic = \"d/#/{device_id}\"\n",
                "auth.acl",
            ),
            (
                "[unmatched]\naction = \"dead_letter\"\ndead_letter_topic = \"\"\n",
                "unmatched.dead_letter_topic",
            ),
            ("[kafka.topics]\npartitions = 0\n", "kafka.topics.partitions"),
            (
                "[kafka.topics]\nreplication_factor = -2\n",
                "kafka.topics.replication_factor",
            ),
            ("[kafka.topics]\ntimeout_ms = 0\n", "kafka.topics.timeout_ms"),
            (
                "[kafka.topics.config]\n\"\" = \"1\"\n",
                "kafka.topics.config",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn debug_redacts_secret_producer_options() {
        let mut c = Config::default();
        c.kafka
            .producer
            .insert("sasl.password".into(), "hunter2".into());
        let shown = format!("{:?}", c);
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("<redacted>"));
    }
}
