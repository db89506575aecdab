//! The topics the proxy needs, on a real Kafka cluster. At start-up
//! [`TopicCheck::start`] looks every one of them up with librdkafka's admin
//! client, creates the missing ones (`kafka.topics`: partitions, replication
//! factor, extra topic configs; the sessions and retained-commands topics
//! compacted) and logs an error for an existing topic that should be
//! compacted and is not. It runs before the command consumer reads those
//! topics; the embedded broker creates its own and skips this.
//!
//! Outcomes, decided in [`Admin::ensure`]:
//! - every topic present, or created (a topic another replica created
//!   meanwhile counts as created): start-up goes on;
//! - a definite answer — `kafka.topics.create = false`, not authorized,
//!   replication factor above the broker count, a refused topic config — is a
//!   start-up error ([`TopicsError::Missing`]) naming every missing topic and
//!   why;
//! - no answer within `kafka.topics.timeout_ms` (cluster down, network): not
//!   an error. The proxy starts (`/readyz` follows Kafka reachability), and
//!   the check runs again in the background until it succeeds.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode as Code};
use rdkafka::metadata::Metadata;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::config::TopicsConfig;
use super::ClientSettings;

/// The topic config that keeps the latest record per key.
const CLEANUP_POLICY: &str = "cleanup.policy";

/// First and longest pause between background attempts.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A topic the proxy reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredTopic {
    /// Topic name.
    pub name: String,
    /// The topic holds state (latest record per key: sessions, retained
    /// commands) rather than a stream, so it must be compacted: with
    /// `cleanup.policy=delete` the state would vanish with age.
    pub compacted: bool,
}

/// The topics of `all` (every topic the proxy uses, see
/// `config::Checked::kafka_topics`), those in `compacted` (the sessions and
/// retained-commands topics) marked compacted.
pub fn required(all: &[String], compacted: &[&str]) -> Vec<RequiredTopic> {
    all.iter()
        .map(|name| RequiredTopic {
            name: name.clone(),
            compacted: compacted.contains(&name.as_str()),
        })
        .collect()
}

/// Whether a `cleanup.policy` value (`compact`, `delete`, `compact,delete`)
/// compacts.
pub fn is_compacted(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

/// How one missing topic is to be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partitions; -1: the broker's default.
    pub partitions: i32,
    /// Replication factor; -1: the broker's default.
    pub replication_factor: i32,
    /// Topic configs, in the order they are sent.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// The admin API's request for this topic.
    pub fn new_topic(&self) -> NewTopic<'_> {
        let mut t = NewTopic::new(
            &self.name,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        );
        for (k, v) in &self.configs {
            t = t.set(k, v);
        }
        t
    }
}

/// The creation requests for `missing`: `kafka.topics.config` for every
/// topic, and `cleanup.policy=compact` for the ones that hold state unless
/// the extra configs already compact them (`compact,delete`).
pub fn plan(missing: &[&RequiredTopic], cfg: &TopicsConfig) -> Vec<TopicSpec> {
    missing
        .iter()
        .map(|t| {
            let mut configs: BTreeMap<String, String> = cfg.config.clone();
            if t.compacted && !configs.get(CLEANUP_POLICY).is_some_and(|p| is_compacted(p)) {
                configs.insert(CLEANUP_POLICY.into(), "compact".into());
            }
            TopicSpec {
                name: t.name.clone(),
                partitions: cfg.partitions,
                replication_factor: cfg.replication_factor,
                configs: configs.into_iter().collect(),
            }
        })
        .collect()
}

/// A topic the proxy needs that is not there, and why it was not created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTopic {
    /// Topic name.
    pub name: String,
    /// Why it is missing, with what to do about it.
    pub reason: String,
}

/// Why the topics are not in place.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// librdkafka refused the admin client's configuration.
    #[error("kafka admin client config: {0}")]
    Client(#[source] RdError),
    /// Kafka did not answer in time; nothing is known about the topics.
    #[error("kafka did not answer within {timeout_ms} ms: {reason}")]
    Unreachable {
        /// `kafka.topics.timeout_ms`.
        timeout_ms: u64,
        /// What librdkafka said.
        reason: String,
    },
    /// Topics are missing and were not created: a start-up error.
    #[error("{}", missing_message(.missing, *.create))]
    Missing {
        /// Every missing topic, with its reason.
        missing: Vec<MissingTopic>,
        /// `kafka.topics.create`.
        create: bool,
    },
}

/// The one start-up error line for missing topics.
fn missing_message(missing: &[MissingTopic], create: bool) -> String {
    let list = missing
        .iter()
        .map(|m| format!("{} ({})", m.name, m.reason))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = if create {
        "fix the cause, or create them beforehand"
    } else {
        "kafka.topics.create = false: create them, or set it to true"
    };
    format!("kafka topics missing: {list}; {hint}")
}

/// Why a topic that `create = false` keeps the proxy from creating is missing.
fn not_created(topic: &RequiredTopic) -> MissingTopic {
    let reason = if topic.compacted {
        "does not exist; it needs cleanup.policy=compact"
    } else {
        "does not exist"
    };
    MissingTopic {
        name: topic.name.clone(),
        reason: reason.into(),
    }
}

/// Why creating `spec` failed with `code`, and what to do. `brokers`: how
/// many brokers the cluster's metadata listed.
fn explain(code: Code, spec: &TopicSpec, brokers: usize) -> String {
    match code {
        Code::TopicAuthorizationFailed => "not authorized to create it (TOPIC_AUTHORIZATION_FAILED): grant the proxy's principal CREATE on the topic".into(),
        Code::ClusterAuthorizationFailed => "not authorized to create topics (CLUSTER_AUTHORIZATION_FAILED): grant the proxy's principal CREATE on the cluster".into(),
        Code::InvalidReplicationFactor if spec.replication_factor == -1 => format!(
            "the broker's default.replication.factor is more than the {brokers} broker(s) the cluster has (INVALID_REPLICATION_FACTOR): set kafka.topics.replication_factor"
        ),
        Code::InvalidReplicationFactor => format!(
            "replication factor {} is more than the {brokers} broker(s) the cluster has (INVALID_REPLICATION_FACTOR): lower kafka.topics.replication_factor",
            spec.replication_factor
        ),
        Code::InvalidPartitions => format!(
            "{} partitions refused (INVALID_PARTITIONS): change kafka.topics.partitions",
            spec.partitions
        ),
        Code::InvalidConfig => "a topic config was refused (INVALID_CONFIG): check kafka.topics.config".into(),
        Code::PolicyViolation => "refused by the cluster's topic creation policy (POLICY_VIOLATION)".into(),
        other => format!("creating it failed: {other}"),
    }
}

/// No answer within `kafka.topics.timeout_ms`.
fn unreachable(cfg: &TopicsConfig, reason: String) -> TopicsError {
    TopicsError::Unreachable {
        timeout_ms: cfg.timeout_ms,
        reason,
    }
}

/// Whether an error code means "no answer yet" rather than "no".
fn retriable(code: Code) -> bool {
    matches!(
        code,
        Code::RequestTimedOut
            | Code::OperationTimedOut
            | Code::TimedOutQueue
            | Code::NotController
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NetworkException
            | Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::Resolve
    )
}

/// Bound on reading the state topics' `cleanup.policy` at start-up.
const COMPACTION_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin client the check runs on.
pub struct Admin {
    client: Arc<Client>,
}

/// An admin client destroyed on a blocking thread: librdkafka joins its
/// threads on destroy, which must not stall an async worker.
struct Client(Option<AdminClient<DefaultClientContext>>);

impl std::ops::Deref for Client {
    type Target = AdminClient<DefaultClientContext>;

    fn deref(&self) -> &Self::Target {
        // Only `drop` empties it, and nothing can deref after that.
        self.0.as_ref().expect("admin client present until dropped")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let (Some(client), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || drop(client));
        }
    }
}

impl Admin {
    /// An admin client for `bootstrap` with the `kafka.client` pass-through
    /// options every Kafka client of the proxy gets.
    pub fn new(bootstrap: &str, settings: &ClientSettings) -> Result<Admin, TopicsError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", bootstrap)
            .set("client.id", "mqtt-kafka-proxy-admin");
        for (k, v) in &settings.options {
            cc.set(k, v);
        }
        let client = cc.create().map_err(TopicsError::Client)?;
        Ok(Admin {
            client: Arc::new(Client(Some(client))),
        })
    }

    /// Makes sure every topic of `required` exists, within
    /// `cfg.timeout_ms`: looks them up, creates the missing ones when
    /// `cfg.create`, waits until the created ones are served, and
    /// logs an error for each existing topic that should be compacted and is not.
    pub async fn ensure(
        &self,
        cfg: &TopicsConfig,
        required: &[RequiredTopic],
    ) -> Result<(), TopicsError> {
        let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms);
        let md = self.metadata(cfg, deadline).await?;
        let existing: HashSet<&str> = md
            .topics()
            .iter()
            .filter(|t| t.error().map(Code::from) != Some(Code::UnknownTopicOrPartition))
            .map(|t| t.name())
            .collect();
        let (present, missing): (Vec<&RequiredTopic>, Vec<&RequiredTopic>) = required
            .iter()
            .partition(|t| existing.contains(t.name.as_str()));
        self.check_compaction(&present, deadline).await;
        if missing.is_empty() {
            tracing::info!(topics = required.len(), "kafka topics present");
            return Ok(());
        }
        if !cfg.create {
            return Err(TopicsError::Missing {
                missing: missing.into_iter().map(not_created).collect(),
                create: false,
            });
        }
        let specs = plan(&missing, cfg);
        let created = self
            .create(cfg, &specs, md.brokers().len(), deadline)
            .await?;
        self.wait_served(cfg, &created, deadline).await;
        Ok(())
    }

    /// The cluster's metadata (every topic: asking for one by name could
    /// auto-create it with the broker's settings), or `Unreachable`.
    async fn metadata(
        &self,
        cfg: &TopicsConfig,
        deadline: Instant,
    ) -> Result<Metadata, TopicsError> {
        let client = self.client.clone();
        let timeout = deadline.saturating_duration_since(Instant::now());
        // fetch_metadata blocks for up to `timeout`.
        let fetched =
            tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout)).await;
        match fetched {
            Ok(Ok(md)) => Ok(md),
            Ok(Err(e)) => Err(unreachable(cfg, e.to_string())),
            Err(e) => Err(unreachable(cfg, format!("metadata task: {e}"))),
        }
    }

    /// Creates `specs`; returns the names created (or created by another
    /// replica meanwhile). Any definite refusal fails the whole step.
    async fn create(
        &self,
        cfg: &TopicsConfig,
        specs: &[TopicSpec],
        brokers: usize,
        deadline: Instant,
    ) -> Result<Vec<String>, TopicsError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let opts = AdminOptions::new()
            .request_timeout(Some(remaining))
            .operation_timeout(Some(remaining / 2));
        let requests: Vec<NewTopic<'_>> = specs.iter().map(TopicSpec::new_topic).collect();
        let results = match self.client.create_topics(&requests, &opts).await {
            Ok(r) => r,
            Err(e) if e.rdkafka_error_code().is_some_and(retriable) => {
                return Err(unreachable(cfg, e.to_string()));
            }
            Err(e) => {
                let reason = format!("creating it failed: {e}");
                return Err(TopicsError::Missing {
                    missing: specs
                        .iter()
                        .map(|s| MissingTopic {
                            name: s.name.clone(),
                            reason: reason.clone(),
                        })
                        .collect(),
                    create: true,
                });
            }
        };
        let mut created = Vec::new();
        let mut refused = Vec::new();
        let mut unanswered = None;
        for result in results {
            let (name, code) = match result {
                Ok(name) => (name, None),
                Err((name, code)) => (name, Some(code)),
            };
            let Some(spec) = specs.iter().find(|s| s.name == name) else {
                continue;
            };
            match code {
                None => {
                    tracing::info!(
                        topic = %spec.name,
                        partitions = spec.partitions,
                        replication_factor = spec.replication_factor,
                        configs = ?spec.configs,
                        "kafka topic created"
                    );
                    created.push(name);
                }
                Some(Code::TopicAlreadyExists) => {
                    tracing::debug!(topic = %name, "kafka topic created meanwhile by someone else");
                    created.push(name);
                }
                Some(code) if retriable(code) => unanswered = Some(format!("{name}: {code}")),
                Some(code) => refused.push(MissingTopic {
                    name,
                    reason: explain(code, spec, brokers),
                }),
            }
        }
        if !refused.is_empty() {
            return Err(TopicsError::Missing {
                missing: refused,
                create: true,
            });
        }
        if let Some(reason) = unanswered {
            return Err(unreachable(cfg, reason));
        }
        Ok(created)
    }

    /// Logs an error for each topic of `present` that must be compacted and
    /// is not. The proxy does not change an existing topic's configuration.
    async fn check_compaction(&self, present: &[&RequiredTopic], deadline: Instant) {
        let names: Vec<&str> = present
            .iter()
            .filter(|t| t.compacted)
            .map(|t| t.name.as_str())
            .collect();
        if names.is_empty() {
            return;
        }
        let specifiers: Vec<ResourceSpecifier<'_>> =
            names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
        // Advisory (it only logs), so bounded tighter than the check: a broker
        // without DescribeConfigs (the embedded mock, which a standalone
        // `dev-kafka` serves) never answers it.
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .min(COMPACTION_CHECK_TIMEOUT);
        let opts = AdminOptions::new().request_timeout(Some(remaining));
        let results = match self.client.describe_configs(&specifiers, &opts).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topics = ?names, error = %e, "cannot read the topics' cleanup.policy; compaction not checked");
                return;
            }
        };
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(resource) => {
                    let policy = resource
                        .get(CLEANUP_POLICY)
                        .and_then(|e| e.value.clone())
                        .unwrap_or_default();
                    if !is_compacted(&policy) {
                        tracing::error!(
                            topic = %name,
                            cleanup_policy = %policy,
                            "kafka topic must be compacted and is not: it keeps the latest record per key (sessions, retained commands) and with this policy old keys are deleted by age; set cleanup.policy=compact on it"
                        );
                    }
                }
                Err(code) => {
                    tracing::warn!(topic = %name, error = %code, "cannot read the topic's cleanup.policy; compaction not checked");
                }
            }
        }
    }

    /// Waits until every partition of the topics of `created` answers an
    /// offsets query, so the command consumer that starts next finds its
    /// partitions served (a new partition's leader shows in the metadata a
    /// moment before it serves: NOT_LEADER_FOR_PARTITION); gives up with a
    /// warning at the deadline.
    async fn wait_served(&self, cfg: &TopicsConfig, created: &[String], deadline: Instant) {
        loop {
            if let Ok(md) = self.metadata(cfg, deadline).await {
                let mut partitions = Vec::new();
                let mut listed = 0;
                for t in md
                    .topics()
                    .iter()
                    .filter(|t| created.iter().any(|c| c == t.name()))
                {
                    if t.error().is_none() && !t.partitions().is_empty() {
                        listed += 1;
                        partitions
                            .extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())));
                    }
                }
                if listed == created.len() && self.served(partitions, deadline).await {
                    return;
                }
            }
            if Instant::now() + Duration::from_millis(100) >= deadline {
                tracing::warn!(topics = ?created, "kafka topics created but not yet served by their leaders");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every partition answers an offsets query (on a blocking
    /// thread: the query blocks).
    async fn served(&self, partitions: Vec<(String, i32)>, deadline: Instant) -> bool {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            partitions.iter().all(|(topic, p)| {
                let timeout = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(2));
                client.inner().fetch_watermarks(topic, *p, timeout).is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }
}

/// The start-up topic check. When Kafka did not answer in time it keeps
/// trying in the background until it succeeds or this is dropped.
pub struct TopicCheck {
    verified: Arc<AtomicBool>,
    _retry: Option<DropGuard>,
}

impl TopicCheck {
    /// Runs the check once. A definite failure is an error; no answer
    /// within `cfg.timeout_ms` logs a warning and starts the background retry.
    pub async fn start(
        bootstrap: &str,
        settings: &ClientSettings,
        cfg: &TopicsConfig,
        required: Vec<RequiredTopic>,
    ) -> Result<TopicCheck, TopicsError> {
        let admin = Admin::new(bootstrap, settings)?;
        let verified = Arc::new(AtomicBool::new(false));
        match admin.ensure(cfg, &required).await {
            Ok(()) => {
                verified.store(true, Ordering::Release);
                Ok(TopicCheck {
                    verified,
                    _retry: None,
                })
            }
            Err(TopicsError::Unreachable { timeout_ms, reason }) => {
                tracing::warn!(
                    timeout_ms,
                    %reason,
                    "kafka did not answer: topic check skipped, retrying in the background"
                );
                let cancel = CancellationToken::new();
                tokio::spawn(retry(
                    admin,
                    cfg.clone(),
                    required,
                    verified.clone(),
                    cancel.clone(),
                ));
                Ok(TopicCheck {
                    verified,
                    _retry: Some(cancel.drop_guard()),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// True once every topic is known to exist.
    pub fn verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }
}

/// The background check: again and again, with growing pauses, until the
/// topics are in place or `cancel`. A definite failure is logged as an
/// error each time (an operator may fix permissions while it runs).
async fn retry(
    admin: Admin,
    cfg: TopicsConfig,
    required: Vec<RequiredTopic>,
    verified: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut pause = RETRY_FIRST;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = admin.ensure(&cfg, &required) => o,
        };
        match outcome {
            Ok(()) => {
                verified.store(true, Ordering::Release);
                tracing::info!("kafka topic check done after retrying");
                return;
            }
            Err(TopicsError::Unreachable { reason, .. }) => {
                tracing::debug!(%reason, "kafka topic check: still no answer");
            }
            Err(e) => tracing::error!(error = %e, "kafka topic check failed; retrying"),
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn sessions_and_retained_commands_are_compacted() {
        let all = topics(&[
            "iot.command-receipts",
            "iot.commands",
            "iot.events",
            "iot.lifecycle",
            "iot.retained-commands",
            "iot.sessions",
        ]);
        let compacted: Vec<String> = required(&all, &["iot.sessions", "iot.retained-commands"])
            .into_iter()
            .filter(|t| t.compacted)
            .map(|t| t.name)
            .collect();
        assert_eq!(compacted, ["iot.retained-commands", "iot.sessions"]);
    }

    #[test]
    fn a_topic_not_in_use_is_not_required() {
        // Commands off: the retained-commands topic is not in the list.
        let all = topics(&["iot.events", "iot.sessions"]);
        let r = required(&all, &["iot.sessions", "iot.retained-commands"]);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|t| t.name != "iot.retained-commands"));
    }

    #[test]
    fn cleanup_policies() {
        for (policy, compacted) in [
            ("compact", true),
            ("compact,delete", true),
            ("delete, compact", true),
            ("delete", false),
            ("", false),
            ("compaction", false),
        ] {
            assert_eq!(is_compacted(policy), compacted, "{policy:?}");
        }
    }

    #[test]
    fn created_topics_get_the_settings_and_compaction_where_needed() {
        let mut cfg = TopicsConfig {
            partitions: 12,
            replication_factor: 3,
            ..TopicsConfig::default()
        };
        cfg.config.insert("min.insync.replicas".into(), "2".into());
        let events = RequiredTopic {
            name: "iot.events".into(),
            compacted: false,
        };
        let sessions = RequiredTopic {
            name: "iot.sessions".into(),
            compacted: true,
        };
        let specs = plan(&[&events, &sessions], &cfg);
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            specs,
            [
                TopicSpec {
                    name: "iot.events".into(),
                    partitions: 12,
                    replication_factor: 3,
                    configs: vec![pair("min.insync.replicas", "2")],
                },
                TopicSpec {
                    name: "iot.sessions".into(),
                    partitions: 12,
                    replication_factor: 3,
                    configs: vec![
                        pair("cleanup.policy", "compact"),
                        pair("min.insync.replicas", "2")
                    ],
                },
            ]
        );
        let request = specs[1].new_topic();
        assert_eq!(request.name, "iot.sessions");
        assert_eq!(request.num_partitions, 12);
        assert!(matches!(request.replication, TopicReplication::Fixed(3)));
        assert_eq!(
            request.config,
            [("cleanup.policy", "compact"), ("min.insync.replicas", "2")]
        );
    }

    #[test]
    fn a_compacting_policy_from_the_config_is_kept_and_compaction_is_not_lost() {
        let sessions = RequiredTopic {
            name: "s".into(),
            compacted: true,
        };
        let events = RequiredTopic {
            name: "e".into(),
            compacted: false,
        };
        let policy = |cfg: &TopicsConfig, t: &RequiredTopic| {
            plan(&[t], cfg)[0]
                .configs
                .iter()
                .find(|(k, _)| k == CLEANUP_POLICY)
                .map(|(_, v)| v.clone())
        };
        let mut cfg = TopicsConfig::default();
        assert_eq!(policy(&cfg, &events), None);
        cfg.config
            .insert(CLEANUP_POLICY.into(), "compact,delete".into());
        assert_eq!(policy(&cfg, &sessions).as_deref(), Some("compact,delete"));
        cfg.config.insert(CLEANUP_POLICY.into(), "delete".into());
        assert_eq!(policy(&cfg, &sessions).as_deref(), Some("compact"));
        assert_eq!(policy(&cfg, &events).as_deref(), Some("delete"));
    }

    #[test]
    fn the_error_names_every_missing_topic_and_why() {
        let sessions = RequiredTopic {
            name: "iot.sessions".into(),
            compacted: true,
        };
        let events = RequiredTopic {
            name: "iot.events".into(),
            compacted: false,
        };
        let e = TopicsError::Missing {
            missing: vec![not_created(&events), not_created(&sessions)],
            create: false,
        };
        assert_eq!(
            e.to_string(),
            "kafka topics missing: iot.events (does not exist), iot.sessions (does not exist; \
             it needs cleanup.policy=compact); kafka.topics.create = false: create them, or set it to true"
        );
        let spec = |rf| TopicSpec {
            name: "iot.events".into(),
            partitions: 6,
            replication_factor: rf,
            configs: Vec::new(),
        };
        let e = TopicsError::Missing {
            missing: vec![
                MissingTopic {
                    name: "iot.events".into(),
                    reason: explain(Code::InvalidReplicationFactor, &spec(3), 1),
                },
                MissingTopic {
                    name: "iot.sessions".into(),
                    reason: explain(Code::TopicAuthorizationFailed, &spec(3), 1),
                },
            ],
            create: true,
        };
        let text = e.to_string();
        assert!(text.starts_with("kafka topics missing: iot.events (replication factor 3 is more than the 1 broker(s)"), "{text}");
        assert!(
            text.contains("iot.sessions (not authorized to create it (TOPIC_AUTHORIZATION_FAILED)"),
            "{text}"
        );
        assert!(
            text.ends_with("fix the cause, or create them beforehand"),
            "{text}"
        );
        assert!(explain(Code::InvalidReplicationFactor, &spec(-1), 1)
            .contains("default.replication.factor"));
        assert!(explain(Code::ClusterAuthorizationFailed, &spec(1), 1)
            .contains("CLUSTER_AUTHORIZATION_FAILED"));
    }

    #[test]
    fn timeouts_are_no_answer_and_refusals_are_answers() {
        for code in [
            Code::RequestTimedOut,
            Code::OperationTimedOut,
            Code::AllBrokersDown,
            Code::NotController,
        ] {
            assert!(retriable(code), "{code:?}");
        }
        for code in [
            Code::TopicAuthorizationFailed,
            Code::ClusterAuthorizationFailed,
            Code::InvalidReplicationFactor,
            Code::InvalidConfig,
            Code::PolicyViolation,
        ] {
            assert!(!retriable(code), "{code:?}");
        }
    }
}
