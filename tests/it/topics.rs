//! The proxy's topics on a real Apache Kafka cluster (KRaft, started by the
//! `kafka_cluster` crate, `auto.create.topics.enable=false`): created at
//! start-up with the configured settings and compaction where the topic
//! keeps state, left alone when they exist, and a start-up error that names
//! every missing topic when they cannot be created. Every test uses topic
//! names of its own, so all share one cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_kafka_proxy::config::{RouteConfig, UnmatchedAction};
use mqtt_kafka_proxy::kafka::topics::{self, TopicCheck, TopicsError};
use mqtt_kafka_proxy::kafka::ClientSettings;
use mqtt_kafka_proxy::{Config, Proxy, StartError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// The shared cluster (started on first use, on a blocking thread).
async fn cluster() -> &'static kafka_cluster::Cluster {
    tokio::task::spawn_blocking(kafka_cluster::shared)
        .await
        .expect("cluster start")
}

/// A prefix no other test (or earlier run) uses.
fn unique(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}-{nanos}-{}-{test}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback config against `bootstrap` where every topic is named
/// `{prefix}.…`.
fn config(dir: &std::path::Path, bootstrap: &str, prefix: &str) -> Config {
    crate::common::init_logging();
    let mut c = crate::common::test_config(dir);
    c.kafka.bootstrap_servers = bootstrap.to_owned();
    c.routes = vec![
        RouteConfig {
            filter: "devices/{device_id}/events/#".into(),
            kafka_topic: format!("{prefix}.events"),
            key: "{client_id}".into(),
        },
        RouteConfig {
            filter: "devices/{device_id}/snapshot".into(),
            kafka_topic: format!("{prefix}.snapshots"),
            key: "{client_id}".into(),
        },
    ];
    c.unmatched.action = UnmatchedAction::DeadLetter;
    c.unmatched.dead_letter_topic = format!("{prefix}.deadletter");
    c.commands.topic = format!("{prefix}.commands");
    c.commands.receipts_topic = format!("{prefix}.receipts");
    c.commands.retained_topic = format!("{prefix}.retained");
    c.commands.replica_id = prefix.to_owned();
    c.lifecycle.topic = format!("{prefix}.lifecycle");
    c.lifecycle.sessions_topic = format!("{prefix}.sessions");
    c.kafka.topics.timeout_ms = 20_000;
    c
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

/// Partition counts of the topics of `names` that exist.
/// Polls the metadata until all of `names` show (a broker learns of a new
/// topic a moment after CreateTopics returns), or [`crate::common::PATIENCE`] ends.
async fn visible_partitions(bootstrap: &str, names: &[String]) -> HashMap<String, usize> {
    let deadline = Instant::now() + crate::common::PATIENCE;
    loop {
        let counts = partitions(bootstrap, names);
        if counts.len() == names.len() || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn partitions(bootstrap: &str, names: &[String]) -> HashMap<String, usize> {
    let md = admin(bootstrap)
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .filter(|t| names.iter().any(|n| n == t.name()))
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect()
}

/// One config value of each topic.
async fn topic_config(bootstrap: &str, names: &[String], key: &str) -> HashMap<String, String> {
    let admin = admin(bootstrap);
    let specs: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let results = admin
        .describe_configs(&specs, &AdminOptions::new())
        .await
        .expect("describe configs");
    names
        .iter()
        .zip(results)
        .map(|(name, r)| {
            let r = r.unwrap_or_else(|e| panic!("describe {name}: {e}"));
            let value = r.get(key).and_then(|e| e.value.clone()).unwrap_or_default();
            (name.clone(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_gets_every_topic_compacted_where_it_keeps_state() {
    let kafka = cluster().await;
    let bootstrap = kafka.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("fresh");
    let mut c = config(dir.path(), &bootstrap, &prefix);
    c.kafka.topics.partitions = 4;
    c.kafka
        .topics
        .config
        .insert("retention.ms".into(), "3600000".into());
    let needed = c.kafka_topics();
    assert_eq!(needed.len(), 8, "{needed:?}");

    let proxy = Proxy::start(c).await.expect("proxy starts");

    let counts = visible_partitions(&bootstrap, &needed).await;
    for name in &needed {
        assert_eq!(counts.get(name), Some(&4), "{name}: {counts:?}");
    }
    let policies = topic_config(&bootstrap, &needed, "cleanup.policy").await;
    for name in &needed {
        let compacted = name.ends_with(".sessions") || name.ends_with(".retained");
        let expected = if compacted { "compact" } else { "delete" };
        assert_eq!(policies[name], expected, "{name}");
    }
    let retention = topic_config(&bootstrap, &needed, "retention.ms").await;
    assert!(retention.values().all(|v| v == "3600000"), "{retention:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_missing_topics_fail_start_up_by_name() {
    let kafka = cluster().await;
    let bootstrap = kafka.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("nocreate");
    let mut c = config(dir.path(), &bootstrap, &prefix);
    c.kafka.topics.create = false;
    let needed = c.kafka_topics();
    // One of them exists: it is not named.
    let existing = NewTopic::new(&needed[0], 1, TopicReplication::Fixed(1));
    admin(&bootstrap)
        .create_topics([&existing], &AdminOptions::new())
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    // Real Kafka: the broker's metadata shows it a moment after creation.
    assert_eq!(visible_partitions(&bootstrap, &needed[..1]).await.len(), 1);

    let started = Instant::now();
    let err = match Proxy::start(c).await {
        Ok(_) => panic!("started with topics missing"),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    match err {
        StartError::Topics(TopicsError::Missing { missing, create }) => {
            assert!(!create);
            let names: Vec<&str> = missing.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, needed[1..], "{text}");
        }
        other => panic!("unexpected error: {other}"),
    }
    for name in &needed[1..] {
        assert!(text.contains(name.as_str()), "{name} not in: {text}");
    }
    assert!(!text.contains(&format!("{} (", needed[0])), "{text}");
    assert!(text.contains("kafka.topics.create = false"), "{text}");
    assert!(
        text.contains(&format!(
            "{prefix}.sessions (does not exist; it needs cleanup.policy=compact)"
        )),
        "{text}"
    );
    // Nothing was created.
    assert_eq!(partitions(&bootstrap, &needed).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_topics_are_left_as_they_are() {
    let kafka = cluster().await;
    let bootstrap = kafka.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("existing");

    // A first replica creates them with 3 partitions.
    let mut first = config(dir.path(), &bootstrap, &prefix);
    first.kafka.topics.partitions = 3;
    let needed = first.kafka_topics();
    let a = Proxy::start(first).await.expect("first replica starts");

    // A second one, configured differently, finds and keeps them.
    let dir2 = tempfile::tempdir().unwrap();
    let mut second = config(dir2.path(), &bootstrap, &prefix);
    second.commands.replica_id = format!("{prefix}-b");
    second.kafka.topics.partitions = 5;
    second
        .kafka
        .topics
        .config
        .insert("retention.ms".into(), "60000".into());
    let b = Proxy::start(second).await.expect("second replica starts");
    let counts = visible_partitions(&bootstrap, &needed).await;
    assert!(
        needed.iter().all(|n| counts.get(n) == Some(&3)),
        "{counts:?}"
    );
    let retention = topic_config(&bootstrap, &needed, "retention.ms").await;
    assert!(retention.values().all(|v| v != "60000"), "{retention:?}");
    b.shutdown().await;
    a.shutdown().await;

    // A sessions topic someone made without compaction is reported, not changed.
    let prefix = unique("uncompacted");
    let dir3 = tempfile::tempdir().unwrap();
    let c = config(dir3.path(), &bootstrap, &prefix);
    let sessions = c.lifecycle.sessions_topic.clone();
    let plain = NewTopic::new(&sessions, 2, TopicReplication::Fixed(1));
    admin(&bootstrap)
        .create_topics([&plain], &AdminOptions::new())
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let sessions_only = std::slice::from_ref(&sessions);
    assert_eq!(visible_partitions(&bootstrap, sessions_only).await.len(), 1);
    let p = Proxy::start(c)
        .await
        .expect("starts with an uncompacted topic");
    let policy = topic_config(
        &bootstrap,
        std::slice::from_ref(&sessions),
        "cleanup.policy",
    )
    .await;
    assert_eq!(policy[&sessions], "delete");
    assert_eq!(
        partitions(&bootstrap, std::slice::from_ref(&sessions))[&sessions],
        2
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_above_the_broker_count_is_a_clear_start_up_error() {
    let kafka = cluster().await;
    let bootstrap = kafka.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("rf");
    let mut c = config(dir.path(), &bootstrap, &prefix);
    let rf = kafka.brokers() as i32 + 1;
    c.kafka.topics.replication_factor = rf;
    let needed = c.kafka_topics();

    let err = match Proxy::start(c).await {
        Ok(_) => panic!("started with replication factor {rf}"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        matches!(
            err,
            StartError::Topics(TopicsError::Missing { create: true, .. })
        ),
        "{text}"
    );
    for name in &needed {
        assert!(text.contains(name.as_str()), "{name} not in: {text}");
    }
    assert!(
        text.contains(&format!(
            "replication factor {rf} is more than the {} broker(s) the cluster has (INVALID_REPLICATION_FACTOR)",
            kafka.brokers()
        )),
        "{text}"
    );
    assert!(partitions(&bootstrap, &needed).is_empty());
}

/// Kafka that does not answer at start-up: the check is skipped with a
/// warning, and done in the background once Kafka answers. A forwarder in
/// front of the cluster refuses (closes) bootstrap connections until told to
/// relay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_checked_again_in_the_background() {
    let kafka = cluster().await;
    let bootstrap = kafka.bootstrap();
    let target = bootstrap.split(',').next().unwrap().to_owned();
    let relay = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap().to_string();
    let relaying = relay.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !relaying.load(Ordering::Acquire) {
                continue; // dropped: closed at once
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("later");
    let mut c = config(dir.path(), &front, &prefix);
    c.kafka.topics.timeout_ms = 1_000;
    let needed = c.kafka_topics();
    let required = topics::required(
        &needed,
        &[&c.lifecycle.sessions_topic, &c.commands.retained_topic],
    );
    let settings = ClientSettings {
        statistics_interval_ms: 0,
        options: Default::default(),
        ..Default::default()
    };
    let started = Instant::now();
    let check = TopicCheck::start(&front, &settings, &c.kafka.topics, required)
        .await
        .expect("no answer is not a start-up error");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!check.verified());

    relay.store(true, Ordering::Release);
    crate::common::eventually("the background check to finish", || check.verified()).await;
    let counts = visible_partitions(&bootstrap, &needed).await;
    assert_eq!(counts.len(), needed.len(), "{counts:?}");
    let policies = topic_config(&bootstrap, &needed, "cleanup.policy").await;
    assert_eq!(policies[&format!("{prefix}.sessions")], "compact");
}
