use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reads and validates, as start-up and `--check-config` do.
fn with_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load_with_env(&path, env(pairs), false)?;
    config.validate()?;
    Ok(config)
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
