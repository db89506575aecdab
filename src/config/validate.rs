//! [`Config::validate`]: ranges and consistency, every error naming its
//! key, and the objects the configuration describes, built once here and
//! handed to start-up ([`Checked`]).

use super::{invalid, Config, ConfigError};
use crate::auth::acl::{self, Subject};
use crate::auth::config::AuthMethod;
use crate::ingest::router::{self, Router, UnmatchedAction};
use crate::server::config::ClientAuth;

/// What a valid configuration builds: shared by `--check-config` and
/// start-up, so both refuse exactly the same files.
pub struct Checked {
    /// The routes, compiled.
    pub router: Router,
    /// Every Kafka topic the proxy reads or writes: routes, dead letters,
    /// commands, receipts, retained commands, lifecycle and sessions.
    pub kafka_topics: Vec<String>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("kafka_topics", &self.kafka_topics)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Checks ranges and consistency (every error names its key) and builds
    /// the router.
    pub fn validate(&self) -> Result<Checked, ConfigError> {
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
        if m.max_subscriptions == 0 {
            return Err(invalid("mqtt.max_subscriptions", "must be at least 1"));
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
        let router = Router::new(&self.routes, &self.unmatched)
            .map_err(|e| invalid("routes", e.to_string()))?;
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
        if self.lifecycle.owner_max_age_ms < c.offline_max_age_ms {
            return Err(invalid(
                "lifecycle.owner_max_age_ms",
                "must be at least commands.offline_max_age_ms",
            ));
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
        let kafka_topics = self.kafka_topics();
        Ok(Checked {
            router,
            kafka_topics,
        })
    }

    /// Every Kafka topic the proxy reads or writes: routes, dead letters,
    /// commands, receipts, retained commands, lifecycle and sessions.
    pub fn kafka_topics(&self) -> Vec<String> {
        let mut topics = router::kafka_topics(&self.routes, &self.unmatched);
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
            let who = Subject {
                device_id: "x",
                username: Some("x"),
                client_id: "x",
            };
            // Sample values are single plain levels, so render never refuses them.
            let sample = acl::render(&rule.topic, &who).unwrap_or_default();
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
