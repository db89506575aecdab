//! Start-up and shutdown of one replica. [`Proxy::start`] validates the
//! config, starts the embedded broker if asked, creates the producer, binds
//! the listeners and spawns their accept loops. [`Proxy::shutdown`] drains in
//! order: stop accepting, let connections finish their in-flight
//! acknowledgements, flush the producer — all within
//! `shutdown.drain_timeout_ms`. [`run`] ties the two to a shutdown future
//! (SIGINT/SIGTERM in `main`, a channel in tests).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator};
use crate::commands::consumer::CommandConsumer;
use crate::commands::offline::OfflineIndex;
use crate::commands::retained::RetainedStore;
use crate::commands::{Doorbell, Journal, SessionTable};
use crate::config::{Config, ConfigError};
use crate::ingest::Pipeline;
use crate::kafka::embedded::EmbeddedKafka;
use crate::kafka::producer::Producer;
use crate::kafka::topics::{self, TopicCheck, TopicsError};
use crate::kafka::KafkaError;
use crate::limits::SourceLimiter;
use crate::ops::{self, Health};
use crate::server::listener::{self, Transport};
use crate::server::tls::{TlsError, TlsReloader};
use crate::session::{connection, Shared};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka (or the embedded broker) could not be set up.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The Kafka topics the proxy needs are missing and were not created.
    #[error(transparent)]
    Topics(#[from] TopicsError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A credential file or the auth hook could not be set up.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the drain left undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open when the drain deadline passed.
    pub connections_left: usize,
    /// Records Kafka had not acknowledged when the flush gave up.
    pub records_unflushed: i64,
}

/// A running replica.
pub struct Proxy {
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    kafka_bootstrap: String,
    embedded: Option<EmbeddedKafka>,
    producer: Producer,
    cancel: CancellationToken,
    /// Rung at shutdown: connections waiting between packets hear the
    /// drain through their doorbells, not the cancellation token.
    table: Arc<SessionTable>,
    tracker: TaskTracker,
    accept_loops: Vec<JoinHandle<()>>,
    consumer: Option<CommandConsumer>,
    drain_timeout: Duration,
    readiness_grace: Duration,
    health: Arc<Health>,
    ops_cancel: CancellationToken,
    /// The Kafka reachability check and its stop: it holds a producer
    /// handle, which must be gone before the embedded broker is.
    kafka_watch: (JoinHandle<()>, CancellationToken),
    ops_addr: Option<SocketAddr>,
    /// The topic check on a real cluster; held so that its background
    /// retry (when Kafka did not answer at start-up) stops with the replica.
    _topic_check: Option<TopicCheck>,
}

impl Proxy {
    /// Starts a replica from a configuration (validated here).
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        // The same validation as `--check-config`; it builds the router.
        let checked = config.validate()?;
        let kafka_topics = checked.kafka_topics;
        // Credentials first: a broken password file should fail before Kafka starts.
        let auth = Arc::new(Authenticator::new(&config.auth)?);
        if auth.enabled() {
            tracing::info!(methods = ?config.auth.methods, acl_rules = config.auth.acl.len(), "authentication on: the device id (Kafka key) is the authenticated identity");
            if config.auth.acl.is_empty() {
                tracing::warn!("authentication is on and auth.acl has no rules: every PUBLISH and SUBSCRIBE will be refused (add [[auth.acl]] rules, e.g. allow publish \"devices/{{device_id}}/#\")");
            }
            for r in config.routes.iter().filter(|r| r.key != "{client_id}") {
                tracing::warn!(filter = %r.filter, key = %r.key, "route key template ignored: with authentication on every record is keyed by the authenticated device id");
            }
        }
        // The ops endpoint comes first, so probes get answers while Kafka is
        // slow to answer at start-up ("starting"), and it outlives the
        // listeners: it reports "draining" until the very end of shutdown.
        // If start-up fails below, the guard stops it.
        let health = Health::new();
        let ops_cancel = CancellationToken::new();
        let mut ops_addr = None;
        if config.ops.enabled {
            let addr = config.ops.bind;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            ops_addr = listener.local_addr().ok();
            tracing::info!(addr = ?ops_addr, "ops endpoint: /metrics /healthz /readyz");
            tokio::spawn(ops::serve(
                listener,
                ops::prometheus(),
                health.clone(),
                ops_cancel.clone(),
            ));
        }
        let ops_guard = ops_cancel.clone().drop_guard();
        let embedded = if config.embedded_kafka() {
            let e = &config.kafka.embedded;
            let kafka =
                EmbeddedKafka::start(e.brokers, e.partitions, &kafka_topics, e.listen).await?;
            tracing::info!(
                bootstrap = %kafka.public_addr(),
                brokers = e.brokers,
                partitions = e.partitions,
                topics = ?kafka_topics,
                "embedded Kafka broker started (in-memory, not durable); point Kafka clients at the bootstrap address"
            );
            Some(kafka)
        } else {
            None
        };
        let kafka_bootstrap = match &embedded {
            Some(k) => k.bootstrap_servers().to_owned(),
            None => config.kafka.bootstrap_servers.clone(),
        };
        let producer = Producer::new(
            &config.kafka,
            &kafka_bootstrap,
            config.mqtt.max_packet_size_bytes,
            config.ops.kafka_statistics_interval_ms,
        )?;
        // Watched from the start, so /readyz says why while the steps below
        // wait for a Kafka that does not answer or refuses the proxy.
        let kafka_watch_cancel = ops_cancel.child_token();
        let kafka_watch = tokio::spawn(ops::watch_kafka(
            producer.clone(),
            health.clone(),
            ops::KafkaWatch {
                check_every: Duration::from_millis(config.ops.kafka_check_interval_ms.max(1)),
                delivery_timeout: Duration::from_millis(config.kafka.delivery_timeout_ms),
                ordering: config.mqtt.ordering,
            },
            kafka_watch_cancel.clone(),
        ));
        // A real cluster must hold the topics (compacted where they keep
        // state) before the command consumer reads them.
        let topic_check = match &embedded {
            Some(_) => None,
            None => Some(
                TopicCheck::start(
                    &kafka_bootstrap,
                    &crate::kafka::ClientSettings {
                        statistics_interval_ms: 0,
                        options: config.kafka.client.clone(),
                        outage_reported: producer.outage_flag(),
                    },
                    &config.kafka.topics,
                    topics::required(
                        &kafka_topics,
                        &[
                            &config.lifecycle.sessions_topic,
                            &config.commands.retained_topic,
                        ],
                    ),
                )
                .await?,
            ),
        };
        let replica = if config.commands.replica_id.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "replica".into());
            format!("{host}-{}", std::process::id())
        } else {
            config.commands.replica_id.clone()
        };
        let table = Arc::new(SessionTable::new(&replica));
        let retained = Arc::new(RetainedStore::default());
        let offline = Arc::new(OfflineIndex::new(
            config.commands.max_queued_per_device,
            config.commands.offline_max_age_ms as i64,
        ));
        let journal = Arc::new(Journal::new(
            producer.clone(),
            &config.commands,
            &config.lifecycle,
            replica.clone(),
        ));
        // Started before the listeners: no command written after start-up is missed.
        let consumer = CommandConsumer::start(
            &kafka_bootstrap,
            &config.commands,
            &config.lifecycle,
            table.clone(),
            offline.clone(),
            retained.clone(),
            journal.clone(),
            &crate::kafka::ClientSettings {
                statistics_interval_ms: config.ops.kafka_statistics_interval_ms,
                options: config.kafka.client.clone(),
                outage_reported: producer.outage_flag(),
            },
        )?;
        tracing::info!(replica, commands = config.commands.enabled, topic = %config.commands.topic, "command consumer started");
        let sources = SourceLimiter::new(
            config.limits.connects_per_second_per_source,
            config.limits.connect_burst_per_source,
        )
        .map(Arc::new);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            limits: connection::limits(&config.mqtt),
            mqtt: config.mqtt.clone(),
            pipeline: Pipeline {
                router: checked.router,
                producer: producer.clone(),
                rate_limits: config.limits.clone(),
                topic_alias_maximum: config.mqtt.topic_alias_maximum,
                receive_maximum: config.mqtt.receive_maximum,
                max_topic_bytes: config.mqtt.max_topic_bytes,
                max_awaiting_rel: config.mqtt.max_awaiting_rel,
                ordering: config.mqtt.ordering,
                key_is_identity: auth.enabled(),
            },
            commands: config.commands.clone(),
            table: table.clone(),
            offline,
            retained,
            journal,
            auth: auth.clone(),
            disconnect_spread: Duration::from_millis(config.shutdown.disconnect_spread_ms),
            server_reference: Some(config.shutdown.server_reference.clone())
                .filter(|r| !r.is_empty()),
            sources: sources.clone(),
            tasks: tracker.clone(),
            shutdown: cancel.clone(),
        });

        let permits = Arc::new(Semaphore::new(config.listeners.max_connections));
        let mut accept_loops = Vec::new();
        let l = &config.listeners;
        let bind = |addr: SocketAddr| {
            listener::bind(addr, l.reuse_port).map_err(|source| StartError::Bind { addr, source })
        };
        let mut spawn =
            |tcp: tokio::net::TcpListener, transport: Transport, proxy_protocol: bool| {
                accept_loops.push(tokio::spawn(listener::accept_loop(
                    tcp,
                    transport,
                    shared.clone(),
                    permits.clone(),
                    proxy_protocol,
                    tracker.clone(),
                    cancel.clone(),
                )));
            };
        let mut tcp_addr = None;
        if l.tcp.enabled {
            let tcp = bind(l.tcp.bind)?;
            tcp_addr = tcp.local_addr().ok();
            tracing::info!(addr = ?tcp_addr, "MQTT over TCP listening");
            spawn(tcp, Transport::Tcp, l.tcp.proxy_protocol);
        }
        let mut tls_addr = None;
        let tls_reloader = if l.tls.enabled || l.wss.enabled {
            Some(Arc::new(TlsReloader::new(&l.tls)?))
        } else {
            None
        };
        if let (true, Some(reloader)) = (l.tls.enabled, &tls_reloader) {
            let tcp = bind(l.tls.bind)?;
            tls_addr = tcp.local_addr().ok();
            tracing::info!(addr = ?tls_addr, cert = %l.tls.cert_path.display(), client_auth = ?l.tls.client_auth, "MQTT over TLS listening");
            spawn(tcp, Transport::Tls(reloader.clone()), l.tls.proxy_protocol);
        }
        let mut ws_addr = None;
        if l.ws.enabled {
            let tcp = bind(l.ws.bind)?;
            ws_addr = tcp.local_addr().ok();
            tracing::info!(addr = ?ws_addr, path = %l.ws.path, "MQTT over WebSocket listening");
            spawn(tcp, Transport::Ws(l.ws.path.clone()), l.ws.proxy_protocol);
        }
        let mut wss_addr = None;
        if let (true, Some(reloader)) = (l.wss.enabled, &tls_reloader) {
            let tcp = bind(l.wss.bind)?;
            wss_addr = tcp.local_addr().ok();
            tracing::info!(addr = ?wss_addr, path = %l.wss.path, "MQTT over WebSocket/TLS listening");
            spawn(
                tcp,
                Transport::Wss(reloader.clone(), l.wss.path.clone()),
                l.wss.proxy_protocol,
            );
        }
        accept_loops.push(tokio::spawn(maintain(
            auth,
            tls_reloader,
            sources,
            Duration::from_millis(config.auth.reload_interval_ms),
            Duration::from_millis(l.tls.reload_interval_ms),
            cancel.clone(),
        )));
        ops_guard.disarm();
        health.mark_started();
        Ok(Proxy {
            tcp_addr,
            tls_addr,
            ws_addr,
            wss_addr,
            kafka_bootstrap,
            embedded,
            producer,
            cancel,
            table,
            tracker,
            accept_loops,
            consumer: Some(consumer),
            drain_timeout: Duration::from_millis(config.shutdown.drain_timeout_ms),
            readiness_grace: Duration::from_millis(config.shutdown.readiness_grace_ms),
            health,
            ops_cancel,
            kafka_watch: (kafka_watch, kafka_watch_cancel),
            ops_addr,
            _topic_check: topic_check,
        })
    }

    /// Bound address of the TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Bound address of the ops endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Readiness as `/readyz` reports it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Bound address of the WebSocket listener.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// Bound address of the WebSocket/TLS listener.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// Bound address of the TLS listener.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The bootstrap list the producer uses (the embedded brokers' own
    /// addresses when embedded).
    pub fn kafka_bootstrap(&self) -> &str {
        &self.kafka_bootstrap
    }

    /// The embedded broker, when `bootstrap_servers = "embedded"`.
    pub fn embedded_kafka(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
    }

    /// Records handed to the producer that Kafka has not acknowledged yet.
    pub fn producer_in_flight(&self) -> i64 {
        self.producer.in_flight()
    }

    /// Drains and stops the replica: stop accepting, let connections finish
    /// their in-flight acknowledgements, flush the producer.
    pub async fn shutdown(self) -> ShutdownReport {
        let started = Instant::now();
        // Readiness first, so load balancers stop sending before we stop accepting.
        self.health.start_draining();
        if !self.readiness_grace.is_zero() {
            tracing::info!(
                grace_ms = self.readiness_grace.as_millis() as u64,
                "shutting down: /readyz reports draining; listeners close after the grace period"
            );
            tokio::time::sleep(self.readiness_grace).await;
        }
        tracing::info!("shutting down: no new connections; draining in-flight acknowledgements");
        self.cancel.cancel();
        self.table.ring_all(Doorbell::DRAIN);
        for l in self.accept_loops {
            let _ = l.await;
        }
        self.tracker.close();
        let connections_left =
            match tokio::time::timeout(self.drain_timeout, self.tracker.wait()).await {
                Ok(()) => 0,
                Err(_) => self.tracker.len(),
            };
        if let Some(c) = self.consumer {
            let _ = tokio::task::spawn_blocking(move || c.stop()).await;
        }
        let left = self.drain_timeout.saturating_sub(started.elapsed());
        let records_unflushed = self
            .producer
            .flush(left.max(Duration::from_millis(100)))
            .await;
        let report = ShutdownReport {
            connections_left,
            records_unflushed,
        };
        if connections_left == 0 && records_unflushed == 0 {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "shutdown complete"
            );
        } else {
            tracing::warn!(?report, "drain deadline passed with work left");
        }
        // The producer goes before the broker it talks to, so an embedded
        // broker's shutdown is not logged as "all brokers down"; the
        // reachability check holds a handle to it, so it stops first.
        let (watch, watch_cancel) = self.kafka_watch;
        watch_cancel.cancel();
        let _ = watch.await;
        drop(self.producer);
        drop(self.embedded);
        self.ops_cancel.cancel();
        report
    }
}

/// Periodic upkeep until shutdown: reload changed credential and TLS files,
/// forget idle source addresses.
async fn maintain(
    auth: Arc<Authenticator>,
    tls: Option<Arc<TlsReloader>>,
    sources: Option<Arc<SourceLimiter>>,
    auth_every: Duration,
    tls_every: Duration,
    cancel: CancellationToken,
) {
    let mut auth_tick = tokio::time::interval(auth_every);
    let mut tls_tick = tokio::time::interval(tls_every);
    let mut sweep_tick = tokio::time::interval(Duration::from_secs(10));
    for t in [&mut auth_tick, &mut tls_tick, &mut sweep_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = auth_tick.tick() => {
                let auth = auth.clone();
                // File reads and parsing stay off the async workers.
                let _ = tokio::task::spawn_blocking(move || auth.reload_files()).await;
            }
            _ = tls_tick.tick() => {
                if let Some(tls) = tls.clone() {
                    let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
                }
            }
            _ = sweep_tick.tick() => {
                if let Some(s) = &sources {
                    s.sweep();
                }
            }
        }
    }
}

/// Runs a replica until `shutdown` completes, then drains it.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<ShutdownReport, StartError> {
    // Polled from the start, so a signal during a slow start-up (Kafka not
    // answering) stops the replica cleanly instead of killing it.
    let mut shutdown = std::pin::pin!(shutdown);
    let proxy = tokio::select! {
        started = Proxy::start(config) => started?,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested during start-up: nothing was accepted yet, exiting");
            return Ok(ShutdownReport { connections_left: 0, records_unflushed: 0 });
        }
    };
    shutdown.await;
    Ok(proxy.shutdown().await)
}
