//! The replicas' config file for a rig run, written by the rig and read by
//! every replica it starts.

use std::path::Path;

use super::faults::Plan;
use super::{KafkaBackend, RigArgs};

/// The replicas' config file: one port for all (SO_REUSEPORT), TCP or TLS,
/// limits sized for the simulator, Kafka at `bootstrap`; on a real cluster
/// the replicas create their topics with `--partitions` partitions and the
/// brokers' default replication factor.
pub(super) fn replica_config(
    a: &RigArgs,
    port: u16,
    bootstrap: &str,
    certs: &Path,
    plan: Option<&Plan>,
) -> String {
    // Under the fault matrix: its delivery timeout and ordering, and a
    // drain that tells devices to go over a few seconds, as in production.
    let (delivery_timeout, ordering, shutdown) = match plan {
        Some(p) => (
            format!(
                "delivery_timeout_ms = {}\n{}",
                p.delivery_timeout_ms,
                p.queue_max_messages
                    .map(|n| format!("queue_max_messages = {n}\n"))
                    .unwrap_or_default()
            ),
            format!("ordering = \"{}\"\n", p.ordering),
            "[shutdown]\ndisconnect_spread_ms = 5000\n".to_string(),
        ),
        None => Default::default(),
    };
    let topics_section = match a.kafka {
        // The embedded broker has no admin API: it is started with every
        // topic the replicas use.
        KafkaBackend::Embedded => String::new(),
        KafkaBackend::Cluster => format!(
            "[kafka.topics]\npartitions = {}\nreplication_factor = -1\n",
            a.partitions
        ),
    };
    format!(
        r#"[listeners]
max_connections = 19000
reuse_port = true
[listeners.tcp]
enabled = {tcp}
bind = "127.0.0.1:{port}"
[listeners.tls]
enabled = {tls}
bind = "127.0.0.1:{port}"
cert_path = "{cert}"
key_path = "{key}"
generate_dev_certs = false
[mqtt]
connect_timeout_ms = 60000
{ordering}# The simulator puts 12,500 devices behind one source address.
[limits]
connects_per_second_per_source = 0
[ops]
bind = "127.0.0.1:0"
[listeners.ws]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
proxy_protocol = false
[listeners.wss]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
proxy_protocol = false
[kafka]
bootstrap_servers = "{bootstrap}"
linger_ms = {linger}
{delivery_timeout}{topics_section}{shutdown}[log]
level = "warn,mqtt_kafka_proxy::proxy=info"
"#,
        tcp = !a.tls,
        tls = a.tls,
        linger = a.linger_ms,
        cert = certs.join("server.crt").display(),
        key = certs.join("server.key").display(),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use mqtt_kafka_proxy::Config;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        rig: RigArgs,
    }

    fn args(flags: &[&str]) -> RigArgs {
        Cli::parse_from(std::iter::once("rig").chain(flags.iter().copied())).rig
    }

    fn parsed(a: &RigArgs, bootstrap: &str) -> Config {
        let text = replica_config(a, 18830, bootstrap, Path::new("/certs"), None);
        Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_embedded_broker_stays_the_default_with_the_replicas_config_as_before() {
        let a = args(&[]);
        assert_eq!(a.kafka, KafkaBackend::Embedded);
        let c = parsed(&a, "127.0.0.1:9092");
        assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
        // Topics come from the broker: the replicas' topic settings are the defaults.
        assert_eq!(
            c.kafka.topics,
            mqtt_kafka_proxy::config::TopicsConfig::default()
        );
        assert!(c.kafka_topics().contains(&"iot.sessions".to_string()));
    }

    #[test]
    fn on_the_cluster_the_replicas_create_the_topics_with_the_rigs_partitions() {
        let a = args(&["--kafka", "cluster", "--partitions", "12", "--tls"]);
        assert_eq!(
            a.brokers, 3,
            "three brokers unless --brokers says otherwise"
        );
        let bootstrap = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";
        let c = parsed(&a, bootstrap);
        assert_eq!(c.kafka.bootstrap_servers, bootstrap);
        assert!(c.kafka.topics.create);
        assert_eq!(c.kafka.topics.partitions, 12);
        assert_eq!(
            c.kafka.topics.replication_factor, -1,
            "the brokers' default.replication.factor"
        );
        assert!(c.listeners.tls.enabled && !c.listeners.tcp.enabled);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }
}
