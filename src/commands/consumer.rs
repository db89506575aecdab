//! The reverse path: the command consumer and the records the proxy writes
//! about devices (receipts, lifecycle, session announcements).
//!
//! Every replica reads every partition of the commands topic (no consumer
//! group: a device may be connected to any replica) from the end as of
//! start-up, and hands each command to the session table; only the replica
//! holding the device acts on it. The same thread reads the sessions topic,
//! where replicas announce connects, and kicks local sessions that a newer
//! connect elsewhere replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::stats::ConsumerStats;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::journal::{Journal, Status};
use super::offline::OfflineIndex;
use super::retained::RetainedStore;
use super::table::{Command, Offer, SessionTable};
use super::{CommandsConfig, LifecycleConfig};
use crate::kafka::{now_ms, KafkaError};
use crate::metrics as m;
use crate::mqtt::packet::QoS;

/// Header: explicit MQTT topic of a command.
pub const H_TOPIC: &str = "mqtt.topic";
/// Header: command name for the topic template.
pub const H_NAME: &str = "command.name";
/// Header: command id, echoed in the receipt.
pub const H_ID: &str = "command.id";
/// Header: QoS of a command, `0` or `1`.
pub const H_QOS: &str = "mqtt.qos";
/// Header: seconds after the record's timestamp when the command expires.
pub const H_EXPIRY: &str = "mqtt.message_expiry_interval";

/// Decodes a commands-topic record.
pub fn parse_command<M: Message>(m: &M, cfg: &CommandsConfig) -> Result<Command, String> {
    let device_id = m
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty())
        .ok_or("record without a UTF-8 device id key")?
        .to_owned();
    let header = |name: &str| -> Option<String> {
        let h = m.headers()?;
        h.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    let mqtt_topic = match header(H_TOPIC) {
        Some(t) => t,
        None => {
            let name = header(H_NAME).unwrap_or_else(|| "command".into());
            cfg.topic_template
                .replace("{device_id}", &device_id)
                .replace("{name}", &name)
        }
    };
    if mqtt_topic.is_empty() || mqtt_topic.contains(['+', '#']) || mqtt_topic.contains('\0') {
        return Err(format!("invalid MQTT topic {mqtt_topic:?}"));
    }
    let qos = match header(H_QOS).as_deref() {
        None => cfg.default_qos,
        Some("0") => 0,
        Some("1") | Some("2") => 1,
        Some(other) => return Err(format!("invalid {H_QOS} header {other:?}")),
    };
    let timestamp = m.timestamp().to_millis().unwrap_or_else(now_ms);
    let expires_at_ms = match header(H_EXPIRY) {
        None => None,
        Some(s) => Some(
            timestamp
                + 1000
                    * s.parse::<i64>()
                        .map_err(|_| format!("invalid {H_EXPIRY} header {s:?}"))?,
        ),
    };
    Ok(Command {
        device_id,
        mqtt_topic,
        payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        qos: if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        expires_at_ms,
        command_id: header(H_ID),
        source: (m.topic().to_owned(), m.partition(), m.offset()),
        created_ms: timestamp,
        retain: false,
    })
}

/// How often the offline index is swept for commands that aged out.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The running consumer thread.
pub struct CommandConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CommandConsumer {
    /// Assigns every partition of the commands and sessions topics from
    /// their current end (so start-up returns only once nothing written
    /// after it can be missed) and starts consuming.
    // The shared state it feeds is passed in one by one, as `Proxy::start` builds it.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        bootstrap: &str,
        cfg: &CommandsConfig,
        lifecycle: &LifecycleConfig,
        table: Arc<SessionTable>,
        offline: Arc<OfflineIndex>,
        retained: Arc<RetainedStore>,
        journal: Arc<Journal>,
        settings: &crate::kafka::ClientSettings,
    ) -> Result<CommandConsumer, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", bootstrap)
            .set("group.id", format!("mqtt-kafka-proxy-{}", journal.replica))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50");
        if settings.statistics_interval_ms > 0 {
            cc.set(
                "statistics.interval.ms",
                settings.statistics_interval_ms.to_string(),
            );
        }
        for (k, v) in &settings.options {
            cc.set(k, v);
        }
        let consumer: BaseConsumer<ConsumerStats> = cc
            .create_with_context(ConsumerStats::new(settings.outage_reported.clone()))
            .map_err(KafkaError::Client)?;
        let mut topics = vec![lifecycle.sessions_topic.clone()];
        if cfg.enabled {
            topics.push(cfg.topic.clone());
            topics.push(cfg.receipts_topic.clone());
            if !cfg.retained_topic.is_empty() {
                topics.push(cfg.retained_topic.clone());
            }
        }
        let state = Rebuild {
            offline: &offline,
            retained: &retained,
            table: &table,
            journal: &journal,
        };
        // Kafka may not answer yet (down, or refusing our credentials): the
        // replica starts anyway, not ready, and the thread below keeps trying;
        // commands are not delivered until it succeeds.
        let mut assigned = match assign_from_now(&consumer, cfg, lifecycle, &topics, state) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "command consumer: kafka did not answer at start-up; retrying in the background, commands wait until then");
                false
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let cfg = cfg.clone();
        let lifecycle = lifecycle.clone();
        let owner_max_age_ms = i64::try_from(lifecycle.owner_max_age_ms).unwrap_or(i64::MAX);
        let thread = std::thread::Builder::new()
            .name("command-consumer".into())
            .spawn(move || {
                let mut backoff = Duration::from_secs(1);
                while !assigned && !flag.load(Ordering::Relaxed) {
                    // In steps, so that a stop is not held up by the backoff.
                    let until = std::time::Instant::now() + backoff;
                    while std::time::Instant::now() < until && !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    let state = Rebuild {
                        offline: &offline,
                        retained: &retained,
                        table: &table,
                        journal: &journal,
                    };
                    match assign_from_now(&consumer, &cfg, &lifecycle, &topics, state) {
                        Ok(()) => {
                            tracing::info!("command consumer: kafka answered, consuming commands");
                            assigned = true;
                        }
                        Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "command consumer: kafka still not answering"),
                    }
                }
                let mut last_sweep = std::time::Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    if last_sweep.elapsed() >= SWEEP_EVERY {
                        last_sweep = std::time::Instant::now();
                        for gone in offline.sweep(now_ms()) {
                            report_gone(&gone, &table, &journal);
                        }
                        let before = now_ms().saturating_sub(owner_max_age_ms);
                        let owners = table.prune_owners(before, |id| offline.holds(id));
                        metrics::gauge!(m::SESSION_OWNERS).set(owners as f64);
                    }
                    let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "command consumer error");
                            continue;
                        }
                    };
                    if msg.topic() == lifecycle.sessions_topic {
                        on_session(&msg, &table, &journal);
                    } else if msg.topic() == cfg.receipts_topic {
                        if let Some((device, source)) = parse_receipt(&msg) {
                            offline.settle(&device, &source);
                        }
                    } else if msg.topic() == cfg.retained_topic {
                        on_retained(&msg, &cfg, &table, &retained, &journal);
                    } else {
                        on_command(&msg, &cfg, &table, &offline, &journal);
                    }
                }
            })
            .map_err(|e| KafkaError::Embedded(format!("spawn command consumer: {e}")))?;
        Ok(CommandConsumer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn on_command<M: Message>(
    msg: &M,
    cfg: &CommandsConfig,
    table: &SessionTable,
    offline: &OfflineIndex,
    journal: &Journal,
) {
    let cmd = match parse_command(msg, cfg) {
        Ok(c) => Box::new(c),
        Err(e) => {
            metrics::counter!(m::COMMANDS, "status" => "invalid").increment(1);
            tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "command record ignored");
            return;
        }
    };
    if cmd.expires_at_ms.is_some_and(|at| at <= now_ms()) {
        // Only the replica holding the device reports it, so each outcome is written once.
        if table.contains(&cmd.device_id) {
            journal.receipt(&cmd, Status::Expired, "expired before delivery");
        }
        return;
    }
    match table.offer(cmd) {
        Offer::Queued => {}
        // Maybe connected to another replica, maybe offline: held until a
        // receipt says it was handled, or the device connects here.
        Offer::NotHere(cmd) => {
            for gone in offline.hold(cmd, now_ms()) {
                report_gone(&gone, table, journal);
            }
        }
        Offer::NotSubscribed(cmd) => {
            journal.receipt(&cmd, Status::NotSubscribed, "device has no subscription")
        }
        Offer::QueueFull(cmd) => {
            journal.receipt(&cmd, Status::Dropped, "device command queue full")
        }
    }
}

fn on_session<M: Message>(msg: &M, table: &SessionTable, journal: &Journal) {
    let Some(client_id) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        return;
    };
    let Some(v) = msg
        .payload()
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
    else {
        return;
    };
    let replica = v
        .get("replica")
        .and_then(|r| r.as_str())
        .unwrap_or_default();
    let at_ms = v.get("at_ms").and_then(|a| a.as_i64()).unwrap_or(0);
    table.note_owner(client_id, replica, at_ms);
    if replica != journal.replica && table.kick_if_older(client_id, at_ms) {
        tracing::info!(
            client_id,
            replica,
            "session taken over by a newer connect on another replica"
        );
    }
}

/// The device id and source (topic, partition, offset) a receipt is about.
fn parse_receipt<M: Message>(msg: &M) -> Option<(String, (String, i32, i64))> {
    let v: serde_json::Value = serde_json::from_slice(msg.payload()?).ok()?;
    let src = v.get("source")?;
    Some((
        v.get("device_id")?.as_str()?.to_owned(),
        (
            src.get("topic")?.as_str()?.to_owned(),
            src.get("partition")?.as_i64()? as i32,
            src.get("offset")?.as_i64()?,
        ),
    ))
}

/// A command that fell out of the offline index gets its receipt from one
/// replica only: the one the device last connected to. (A device that has
/// never connected has no such replica; its commands fall out unreported
/// but counted.)
pub fn report_gone(cmd: &Command, table: &SessionTable, journal: &Journal) {
    if !table.owns(&cmd.device_id) {
        metrics::counter!(m::COMMANDS, "status" => "fell_out_unowned").increment(1);
        return;
    }
    if cmd.expires_at_ms.is_some_and(|at| at <= now_ms()) {
        journal.receipt(cmd, Status::Expired, "expired while the device was offline");
    } else {
        journal.receipt(
            cmd,
            Status::Dropped,
            "fell out of the offline queue (per-device bound or age)",
        );
    }
}

/// A retained command: kept (or deleted), and handed to the device now if
/// it is connected here and subscribed.
fn on_retained<M: Message>(
    msg: &M,
    cfg: &CommandsConfig,
    table: &SessionTable,
    retained: &RetainedStore,
    journal: &Journal,
) {
    let mut cmd = match parse_command(msg, cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(offset = msg.offset(), error = %e, "retained command ignored");
            return;
        }
    };
    cmd.retain = true;
    retained.set(&cmd);
    if cmd.payload.is_empty() {
        return;
    }
    // Live delivery is an ordinary forward: retain flag 0 [MQTT-3.3.1-9].
    cmd.retain = false;
    match table.offer(Box::new(cmd)) {
        // Not here or not subscribed: it stays retained for the next SUBSCRIBE.
        Offer::Queued | Offer::NotHere(_) | Offer::NotSubscribed(_) => {}
        Offer::QueueFull(cmd) => {
            journal.receipt(&cmd, Status::Dropped, "device command queue full")
        }
    }
}

/// Reads where every partition of `topics` ends now, rebuilds the offline
/// index and retained store up to there, and assigns the consumer from
/// there: nothing written after this returns can be missed.
fn assign_from_now(
    consumer: &BaseConsumer<ConsumerStats>,
    cfg: &CommandsConfig,
    lifecycle: &LifecycleConfig,
    topics: &[String],
    state: Rebuild<'_>,
) -> Result<(), KafkaError> {
    let mut ends: Vec<(String, i32, i64)> = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(KafkaError::Client)?;
        let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
        for p in 0..partitions as i32 {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(KafkaError::Client)?;
            ends.push((topic.clone(), p, high));
        }
    }
    if cfg.enabled {
        rebuild(consumer, cfg, &lifecycle.sessions_topic, &ends, state)?;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, p, high) in &ends {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*high))
            .map_err(KafkaError::Client)?;
    }
    consumer.assign(&tpl).map_err(KafkaError::Client)
}

/// What the start-up rebuild fills in.
struct Rebuild<'a> {
    offline: &'a OfflineIndex,
    retained: &'a RetainedStore,
    table: &'a SessionTable,
    journal: &'a Journal,
}

/// Start-up: reads the commands and receipts of the last
/// `offline_max_age_ms` up to `ends` and holds every command nobody has
/// reported an outcome for, so a restarted replica can still deliver them;
/// and loads every retained command.
fn rebuild(
    consumer: &BaseConsumer<ConsumerStats>,
    cfg: &CommandsConfig,
    sessions_topic: &str,
    ends: &[(String, i32, i64)],
    state: Rebuild<'_>,
) -> Result<(), KafkaError> {
    let Rebuild {
        offline,
        retained,
        table,
        journal,
    } = state;
    let since = now_ms() - cfg.offline_max_age_ms as i64;
    let mut tpl = TopicPartitionList::new();
    let mut pending: std::collections::HashMap<(String, i32), i64> = Default::default();
    for (topic, p, high) in ends {
        if topic != &cfg.topic
            && topic != &cfg.receipts_topic
            && topic != &cfg.retained_topic
            && topic != sessions_topic
        {
            continue;
        }
        // Brokers without timestamp lookup: read what the topic still has.
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(KafkaError::Client)?;
        if *high > 0 {
            pending.insert((topic.clone(), *p), *high);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(KafkaError::Client)?;
    let mut commands = Vec::new();
    let mut settled = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let key = (msg.topic().to_owned(), msg.partition());
        let Some(&high) = pending.get(&key) else {
            continue;
        };
        if msg.offset() >= high {
            pending.remove(&key);
            continue;
        }
        if msg.offset() + 1 >= high {
            pending.remove(&key);
        }
        if msg.topic() == sessions_topic {
            // Who each device last connected to: the owner of its offline commands.
            if let (Some(Ok(id)), Some(v)) = (
                msg.key().map(std::str::from_utf8),
                msg.payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()),
            ) {
                if let Some(r) = v.get("replica").and_then(|r| r.as_str()) {
                    let at_ms = v.get("at_ms").and_then(|a| a.as_i64()).unwrap_or(0);
                    table.note_owner(id, r, at_ms);
                }
            }
            continue;
        }
        if msg.topic() == cfg.retained_topic {
            // Compacted desired state: every record counts, whatever its age.
            if let Ok(mut c) = parse_command(&msg, cfg) {
                c.retain = true;
                retained.set(&c);
            }
            continue;
        }
        if msg.timestamp().to_millis().unwrap_or(0) < since {
            continue;
        }
        if msg.topic() == cfg.receipts_topic {
            if let Some((_, source)) = parse_receipt(&msg) {
                settled.insert(source);
            }
        } else if let Ok(c) = parse_command(&msg, cfg) {
            commands.push(Box::new(c));
        }
    }
    if !pending.is_empty() {
        tracing::warn!(
            partitions = pending.len(),
            "offline index rebuild did not reach the end of every partition in 60 s"
        );
    }
    let now = now_ms();
    let mut held = 0;
    for c in commands {
        if !settled.contains(&c.source) {
            for gone in offline.hold(c, now) {
                report_gone(&gone, table, journal);
            }
            held += 1;
        }
    }
    tracing::info!(
        held,
        receipts = settled.len(),
        "offline command index rebuilt from Kafka"
    );
    Ok(())
}
