//! The connection task. Lifecycle: (TLS handshake and) CONNECT under one
//! deadline → CONNACK → one `select!` loop over the socket, Kafka delivery
//! outcomes, producer-queue space, keep-alive and cancellation → one cleanup
//! that logs why the connection closed.
//!
//! Flow control is the point of this file. A QoS 1/2 PUBLISH becomes an
//! entry of the in-flight [`Window`](super::inflight) whose acknowledgement
//! is written only when Kafka has the record; entries are acknowledged in
//! the order the PUBLISH packets arrived [MQTT-4.6.0-2]. Under
//! `mqtt.ordering = "strict"` the window hands Kafka one record at a time
//! and a failed delivery closes the connection. The socket is not read
//! while the producer queue is full or (3.1.1) while `receive_maximum`
//! records are in the window, so a slow Kafka becomes TCP backpressure on
//! the device instead of memory in the proxy.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::OptionFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::framed::{Framed, WriteError};
use super::inflight::{Held, Outcome, State, Window};
use crate::auth::acl::{Access, Subject};
use crate::auth::hook::{HookAction, HookRequest, HookVerdict};
use crate::auth::{Authenticator, ConnectInfo};
use crate::config::{CommandsConfig, LimitsConfig, MqttConfig, OnError, Permission};
use crate::kafka::commands::{self, Journal, Status};
use crate::kafka::producer::{Delivery, Producer, Record, SendError};
use crate::kafka::record;
use crate::limits::TokenBucket;
use crate::metrics as m;
use crate::mqtt::codec::Limits;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::*;
use crate::mqtt::topic;
use crate::router::Router;
use crate::session::offline::OfflineIndex;
use crate::session::retained::RetainedStore;
use crate::session::table::{Command, SessionTable};
use tokio::sync::{mpsc, Notify};

/// State every connection of a replica shares.
pub struct Shared {
    /// MQTT limits and timeouts.
    pub mqtt: MqttConfig,
    /// Decoder limits derived from `mqtt`.
    pub limits: Limits,
    /// Topic → Kafka routing.
    pub router: Router,
    /// The replica's producer.
    pub producer: Producer,
    /// Commands: subscribe rules and queue sizes.
    pub commands: CommandsConfig,
    /// Who is connected here.
    pub table: Arc<SessionTable>,
    /// Commands waiting for devices with persistent sessions.
    pub offline: Arc<OfflineIndex>,
    /// Retained commands, sent on SUBSCRIBE.
    pub retained: Arc<RetainedStore>,
    /// Receipts, lifecycle records, session announcements.
    pub journal: Arc<Journal>,
    /// Authentication methods and topic rules.
    pub auth: Arc<Authenticator>,
    /// Per-connection rate limits.
    pub rate_limits: LimitsConfig,
    /// Spread of the shutdown DISCONNECTs over this window.
    pub disconnect_spread: Duration,
    /// 5.0 Server Reference sent with DISCONNECT 0x9C at shutdown, if set.
    pub server_reference: Option<String>,
    /// New connections per source address, when limited.
    pub sources: Option<Arc<crate::limits::SourceLimiter>>,
}

/// The decoder limits a configuration asks for.
pub fn limits(mqtt: &MqttConfig) -> Limits {
    Limits {
        max_packet_size: mqtt.max_packet_size_bytes,
        max_user_properties: mqtt.max_user_properties,
    }
}

/// Why a connection ended; every exit path produces exactly one.
#[derive(Debug)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnected,
    /// The client closed the socket without DISCONNECT.
    ConnectionLost,
    /// Socket error.
    Io(std::io::Error),
    /// No complete CONNECT (including the TLS handshake) before the deadline.
    ConnectTimeout,
    /// The TLS handshake failed.
    TlsHandshake(std::io::Error),
    /// CONNECT was answered with a refusing CONNACK.
    ConnectRefused(u8, &'static str),
    /// Authentication refused the CONNECT (CONNACK code, why).
    AuthRefused(u8, String),
    /// The credentials (JWT `exp`) expired while connected.
    CredentialsExpired,
    /// A PUBLISH or SUBSCRIBE was not authorized and 3.1.1 has no other way to say so.
    NotAuthorized(String),
    /// A configured limit was exceeded (5.0 DISCONNECT code, what).
    LimitExceeded(u8, String),
    /// Part of a packet arrived and the rest did not within `mqtt.partial_packet_timeout_ms`.
    PartialPacketTimeout,
    /// No packet within 1.5 × keep-alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// The client broke the protocol.
    Protocol(ProtocolError),
    /// A PUBLISH was refused and the protocol gives no other way to say so.
    PublishRefused(u8, String),
    /// Kafka did not take a QoS 1/2 record (3.1.1: closing makes the client resend).
    DeliveryFailed(String),
    /// The client did not read what the proxy wrote.
    Write(WriteError),
    /// The replica is shutting down.
    Shutdown,
    /// The same client id connected again, here or on another replica [MQTT-3.1.4-2].
    TakenOver,
}

impl CloseReason {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientDisconnected => "client_disconnected",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::Io(_) => "io_error",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::TlsHandshake(_) => "tls_handshake",
            CloseReason::ConnectRefused(..) => "connect_refused",
            CloseReason::AuthRefused(..) => "auth_refused",
            CloseReason::CredentialsExpired => "credentials_expired",
            CloseReason::NotAuthorized(_) => "not_authorized",
            CloseReason::LimitExceeded(..) => "limit_exceeded",
            CloseReason::PartialPacketTimeout => "partial_packet_timeout",
            CloseReason::KeepAliveTimeout => "keep_alive_timeout",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::PublishRefused(..) => "publish_refused",
            CloseReason::DeliveryFailed(_) => "kafka_delivery_failed",
            CloseReason::Write(_) => "write_failed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TakenOver => "taken_over",
        }
    }

    /// The MQTT 5 DISCONNECT reason code to send before closing, if any.
    fn disconnect_code(&self) -> Option<u8> {
        match self {
            CloseReason::KeepAliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            CloseReason::Protocol(e) => Some(e.reason_code()),
            CloseReason::PublishRefused(code, _) => Some(*code),
            CloseReason::DeliveryFailed(_) => Some(reason::UNSPECIFIED_ERROR),
            CloseReason::Shutdown => Some(reason::SERVER_SHUTTING_DOWN), // 0x9C with a server reference: see `run`
            CloseReason::TakenOver => Some(reason::SESSION_TAKEN_OVER),
            CloseReason::CredentialsExpired => Some(reason::MAXIMUM_CONNECT_TIME),
            CloseReason::NotAuthorized(_) => Some(reason::NOT_AUTHORIZED),
            CloseReason::LimitExceeded(code, _) => Some(*code),
            CloseReason::PartialPacketTimeout => Some(reason::MALFORMED_PACKET),
            _ => None,
        }
    }

    fn is_problem(&self) -> bool {
        matches!(
            self,
            CloseReason::Protocol(_)
                | CloseReason::PublishRefused(..)
                | CloseReason::DeliveryFailed(_)
                | CloseReason::Write(_)
                | CloseReason::TlsHandshake(_)
                | CloseReason::ConnectRefused(..)
                | CloseReason::AuthRefused(..)
                | CloseReason::NotAuthorized(_)
                | CloseReason::LimitExceeded(..)
                | CloseReason::PartialPacketTimeout
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientDisconnected => write!(f, "client sent DISCONNECT"),
            CloseReason::ConnectionLost => {
                write!(f, "client closed the connection without DISCONNECT")
            }
            CloseReason::Io(e) => write!(f, "socket error: {e}"),
            CloseReason::ConnectTimeout => write!(f, "no CONNECT before the connect deadline"),
            CloseReason::TlsHandshake(e) => write!(f, "TLS handshake failed: {e}"),
            CloseReason::ConnectRefused(code, why) => {
                write!(f, "CONNECT refused with code {code:#04x}: {why}")
            }
            CloseReason::KeepAliveTimeout => {
                write!(f, "no packet within 1.5 x keep-alive [MQTT-3.1.2-24]")
            }
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::PublishRefused(code, why) => {
                write!(f, "PUBLISH refused ({code:#04x}): {why}")
            }
            CloseReason::DeliveryFailed(e) => write!(f, "kafka did not take a record: {e}"),
            CloseReason::Write(e) => write!(f, "{e}"),
            CloseReason::Shutdown => write!(f, "replica shutting down"),
            CloseReason::TakenOver => write!(f, "client id connected again (session taken over)"),
            CloseReason::AuthRefused(code, why) => {
                write!(f, "authentication refused ({code:#04x}): {why}")
            }
            CloseReason::CredentialsExpired => write!(f, "credentials expired (JWT exp)"),
            CloseReason::NotAuthorized(why) => write!(f, "not authorized: {why}"),
            CloseReason::LimitExceeded(code, why) => {
                write!(f, "limit exceeded ({code:#04x}): {why}")
            }
            CloseReason::PartialPacketTimeout => write!(
                f,
                "the rest of a started packet did not arrive within mqtt.partial_packet_timeout_ms"
            ),
        }
    }
}

/// Runs one connection to completion: `handshake` turns the accepted TCP
/// stream into the byte stream (identity for plain TCP, TLS accept for TLS)
/// and counts against the connect deadline.
pub async fn run<T, S, H>(
    tcp: T,
    peer: SocketAddr,
    proxied_cn: Option<String>,
    handshake: H,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) where
    H: FnOnce(T) -> Pin<Box<dyn Future<Output = std::io::Result<(S, PeerCert)>> + Send>>,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let span = tracing::info_span!(
        "conn",
        %peer,
        client_id = tracing::field::Empty,
        device_id = tracing::field::Empty
    );
    async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(shared.mqtt.connect_timeout_ms);
        let (stream, peer_cert) = match tokio::time::timeout_at(deadline, handshake(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return log_close_before_connect(&CloseReason::TlsHandshake(e)),
            Err(_) => return log_close_before_connect(&CloseReason::ConnectTimeout),
        };
        let mut framed = Framed::new(stream);
        // The CONNECT phase is boxed: its futures hold the decoded CONNECT and
        // CONNACK (over 1 KiB), and unboxed they would size every
        // connection's task for its whole life, idle or not.
        let connect = match Box::pin(read_connect(&mut framed, deadline, &shared.limits)).await {
            Ok(c) => c,
            Err(reason) => return log_close_before_connect(&reason),
        };
        let mut session = match Box::pin(Session::accept(&mut framed, *connect, &shared, peer, peer_cert, proxied_cn)).await {
            Ok(s) => s,
            Err(reason) => return log_close_before_connect(&reason),
        };
        tracing::Span::current().record("client_id", session.client_id());
        if session.client_id.is_some() {
            tracing::Span::current().record("device_id", session.device_id.as_str());
        }
        tracing::info!(
            protocol = if session.version == Version::V5 { "5.0" } else { "3.1.1" },
            keep_alive_s = session.keep_alive.as_secs_f32() / 1.5,
            "connection opened"
        );
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        let started = Instant::now();
        let reason = session.serve(&mut framed, &shared, &cancel).await;
        if let (Version::V5, Some(code)) = (session.version, reason.disconnect_code()) {
            // Boxed like the CONNECT phase: the packet and its write would
            // otherwise enlarge every connection's task.
            let goodbye = async {
                // At shutdown, a configured server reference turns 0x8B into
                // 0x9C "use another server" [MQTT-4.11].
                let reference = match reason {
                    CloseReason::Shutdown => shared.server_reference.clone(),
                    _ => None,
                };
                let d = Disconnect {
                    reason: if reference.is_some() { reason::USE_ANOTHER_SERVER } else { code },
                    properties: Properties {
                        reason_string: session.problem_info.then(|| reason.to_string()),
                        server_reference: reference,
                        ..Properties::default()
                    },
                };
                let timeout = Duration::from_millis(shared.mqtt.write_timeout_ms.min(1000));
                framed.send_now(&Packet::Disconnect(d), Version::V5, timeout).await;
            };
            Box::pin(goodbye).await;
        }
        shared.table.deregister(&session.device_id, session.generation);
        session.drop_commands(&shared.journal);
        // A drain is not a device failure: devices reconnect elsewhere, so no wills.
        if let (Some(will), false) = (session.will.take(), matches!(reason, CloseReason::Shutdown)) {
            publish_will(&shared, &session.device_id, session.client_id(), session.version, *will, session.will_delay);
        }
        shared.journal.lifecycle(&session.device_id, "disconnected", &peer.to_string(), Some(reason.label()));
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
        let secs = started.elapsed().as_secs();
        let (published, refused, dead_lettered, not_authorized) =
            (session.published, session.refused, session.dead_lettered, session.denied);
        if reason.is_problem() {
            tracing::warn!(%reason, connected_s = secs, published, refused, dead_lettered, not_authorized, "connection closed");
        } else {
            tracing::info!(%reason, connected_s = secs, published, refused, dead_lettered, not_authorized, "connection closed");
        }
    }
    .instrument(span)
    .await
}

fn log_close_before_connect(reason: &CloseReason) {
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
    if let CloseReason::Protocol(_) = reason {
        metrics::counter!(m::PROTOCOL_ERRORS).increment(1);
    }
    if reason.is_problem() {
        tracing::warn!(%reason, "connection closed before CONNECT completed");
    } else {
        tracing::info!(%reason, "connection closed before CONNECT completed");
    }
}

async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    deadline: tokio::time::Instant,
    limits: &Limits,
) -> Result<Box<Connect>, CloseReason> {
    loop {
        match framed.decode(None, limits) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                // The decoder returns nothing but CONNECT before a version is set.
                return Err(CloseReason::Protocol(ProtocolError::FirstPacketNotConnect(
                    other.name(),
                )));
            }
            Ok(None) => {}
            Err(ProtocolError::UnsupportedProtocolLevel(level)) => {
                // Answer in 3.1.1 form, which every client version can read [MQTT-3.1.2-2].
                let ack = ConnAck {
                    session_present: false,
                    code: return_code::UNACCEPTABLE_PROTOCOL_VERSION,
                    properties: Properties::default(),
                };
                framed
                    .send_now(&Packet::ConnAck(ack), Version::V311, Duration::from_secs(1))
                    .await;
                return Err(CloseReason::Protocol(
                    ProtocolError::UnsupportedProtocolLevel(level),
                ));
            }
            Err(e) => return Err(CloseReason::Protocol(e)),
        }
        match tokio::time::timeout_at(deadline, framed.read_more()).await {
            Err(_) => return Err(CloseReason::ConnectTimeout),
            Ok(Ok(0)) => return Err(CloseReason::ConnectionLost),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(CloseReason::Io(e)),
        }
    }
}

/// The leaf certificate a TLS client presented (verified by rustls), kept
/// only until CONNECT has been authenticated.
pub type PeerCert = Option<rustls::pki_types::CertificateDer<'static>>;

/// A record that found the producer queue full, kept until there is room.
/// While one exists the socket is not read.
struct Pending {
    record: Held,
    delivery: Box<Delivery>,
    /// When the queue was found full, for the backpressure histogram.
    since: tokio::time::Instant,
}

struct Session {
    version: Version,
    /// Who the device is: the client id with authentication off, the
    /// authenticated identity with it on. Kafka key, session-table key.
    device_id: String,
    /// The MQTT client id, kept only when it differs from `device_id`.
    client_id: Option<Box<str>>,
    /// CONNECT user name, kept for ACL templates and hook questions when
    /// authentication is on.
    username: Option<Box<str>>,
    /// Ends the connection when the credentials expire (JWT `exp`).
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Publish rate limits, when configured.
    limiter: Option<Box<Limiter>>,
    /// 3.1.1 over a rate limit: not read again until this fires.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A PUBLISH / SUBSCRIBE waiting for the HTTP hook's answer; the socket
    /// is not read meanwhile, so order is kept.
    authorizing: Option<Box<Authorizing>>,
    /// The hook's answers for the packet being re-run after `authorizing`
    /// (a SUBSCRIBE may need several); cleared when that packet is done.
    preauthorized: Vec<(Access, String, Permission)>,
    /// Set while the buffer holds part of a packet: the rest must arrive by then.
    partial_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// ACL / hook refusals on this connection (the first is logged at warn).
    denied: u64,
    /// 1.5 × the keep-alive the client asked for; zero disables the check.
    keep_alive: Duration,
    /// 5.0 Request Problem Information: may reason strings be sent.
    problem_info: bool,
    /// QoS 1/2 PUBLISH packets owed an acknowledgement, in arrival order;
    /// under `mqtt.ordering = "strict"` also the records held behind the
    /// one Kafka has.
    inflight: Window,
    /// QoS 2 packet ids PUBREC'd and waiting for PUBREL.
    awaiting_rel: HashSet<u16>,
    /// Inbound 5.0 topic aliases, allocated on first use.
    aliases: Vec<Option<String>>,
    pending: Option<Box<Pending>>,
    /// Records handed to the producer.
    published: u64,
    /// PUBLISH packets refused (5.0 acks with an error code, records Kafka refused).
    refused: u64,
    /// Records sent to the dead-letter topic.
    dead_lettered: u64,
    /// This session's entry in the session table.
    generation: u64,
    /// Notified when a newer connect of the same client id takes over.
    kick: Option<Arc<Notify>>,
    /// The client's Receive Maximum: unacknowledged QoS 1 commands at once.
    client_receive_max: u16,
    /// Subscriptions and commands, allocated on the first granted SUBSCRIBE.
    outbound: Option<Box<Outbound>>,
    /// The last will, until a normal DISCONNECT discards it.
    will: Option<Box<Will>>,
    /// 5.0 will delay, capped by the session expiry interval [MQTT-3.1.3-9].
    will_delay: Duration,
}

/// Token buckets of one connection.
struct Limiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

/// A packet held until the HTTP hook answers about its topic or filter.
struct Authorizing {
    packet: Packet,
    access: Access,
    topic: String,
    answer: Pin<Box<dyn Future<Output = HookVerdict> + Send>>,
}

/// Commands state of a session with at least one subscription.
struct Outbound {
    /// Granted filters with their maximum QoS.
    subscriptions: Vec<(String, QoS)>,
    /// Commands the consumer queued for this connection.
    rx: mpsc::Receiver<Box<Command>>,
    /// QoS 1 commands sent and not yet acknowledged, by packet id.
    unacked: VecDeque<(u16, Box<Command>)>,
    next_id: u16,
}

enum Step {
    Continue,
    /// Stop decoding buffered packets for now (backpressure).
    Pause,
}

impl Limiter {
    fn new(cfg: &LimitsConfig) -> Option<Box<Limiter>> {
        let messages = (cfg.publish_per_second > 0)
            .then(|| TokenBucket::new(cfg.publish_per_second as f64, cfg.publish_burst as f64));
        let bytes = (cfg.publish_bytes_per_second > 0).then(|| {
            TokenBucket::new(
                cfg.publish_bytes_per_second as f64,
                cfg.publish_burst_bytes as f64,
            )
        });
        (messages.is_some() || bytes.is_some()).then(|| Box::new(Limiter { messages, bytes }))
    }
}

impl Session {
    /// The MQTT client id (the device id unless authentication set another).
    fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.device_id)
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            device_id: &self.device_id,
            username: self.username.as_deref(),
            client_id: self.client_id(),
        }
    }

    /// Validates CONNECT and answers it.
    async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        framed: &mut Framed<S>,
        connect: Connect,
        shared: &Shared,
        peer: SocketAddr,
        peer_cert: PeerCert,
        proxied_cn: Option<String>,
    ) -> Result<Session, CloseReason> {
        let cfg = &shared.mqtt;
        let v5 = connect.version == Version::V5;
        let refuse = |v311: u8, v5code: u8| if v5 { v5code } else { v311 };
        let mut client_id = connect.client_id;
        let mut device_id = String::new();
        let mut expires_at = None;
        let mut assigned = None;
        let mut refusal: Option<(u8, &'static str)> = None;
        if client_id.is_empty() {
            if !v5 && !connect.clean_start {
                // [MQTT-3.1.3-8]
                refusal = Some((
                    return_code::IDENTIFIER_REJECTED,
                    "empty client id without clean session",
                ));
            } else if !cfg.assign_client_ids {
                refusal = Some((
                    refuse(
                        return_code::IDENTIFIER_REJECTED,
                        reason::CLIENT_IDENTIFIER_NOT_VALID,
                    ),
                    "empty client id and mqtt.assign_client_ids = false",
                ));
            } else {
                client_id = generate_client_id();
                assigned = Some(client_id.clone());
            }
        } else if client_id.len() > cfg.max_client_id_bytes {
            refusal = Some((
                refuse(
                    return_code::IDENTIFIER_REJECTED,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                ),
                "client id longer than mqtt.max_client_id_bytes",
            ));
        }
        if v5 && connect.properties.authentication_method.is_some() {
            refusal = Some((
                reason::BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported",
            ));
        }
        let write_timeout = Duration::from_millis(cfg.write_timeout_ms);
        let refuse_with = |code: u8| ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        };
        if refusal.is_none() {
            let info = ConnectInfo {
                client_id: &client_id,
                username: connect.username.as_deref(),
                password: connect.password.as_deref(),
                peer,
                peer_cert: peer_cert.as_deref(),
                proxied_cn: proxied_cn.as_deref(),
            };
            let outcome = shared.auth.authenticate(&info).await;
            drop(peer_cert);
            let denied = match outcome {
                Err(r) => Some((r.connack_code(connect.version), r.why().to_owned())),
                Ok(identity) => {
                    device_id = identity.device_id;
                    expires_at = identity.expires_at;
                    // The will is published as the device: the ACL must allow its topic.
                    let who = Subject {
                        device_id: &device_id,
                        username: connect.username.as_deref(),
                        client_id: &client_id,
                    };
                    connect
                        .will
                        .as_ref()
                        .filter(|w| {
                            shared.auth.acl.check(Access::Publish, &w.topic, &who)
                                == Permission::Deny
                        })
                        .map(|w| {
                            metrics::counter!(m::ACL_DENIED, "action" => "will").increment(1);
                            (
                                refuse(return_code::NOT_AUTHORIZED, reason::NOT_AUTHORIZED),
                                format!("will topic {:?} not allowed by auth.acl", w.topic),
                            )
                        })
                }
            };
            if let Some((code, why)) = denied {
                framed
                    .send_now(
                        &Packet::ConnAck(refuse_with(code)),
                        connect.version,
                        write_timeout,
                    )
                    .await;
                return Err(CloseReason::AuthRefused(code, why));
            }
        }
        if let Some((code, why)) = refusal {
            let ack = ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            };
            framed
                .send_now(&Packet::ConnAck(ack), connect.version, write_timeout)
                .await;
            return Err(CloseReason::ConnectRefused(code, why));
        }
        let properties = if v5 {
            Properties {
                receive_maximum: Some(cfg.receive_maximum),
                maximum_packet_size: Some(cfg.max_packet_size_bytes as u32),
                topic_alias_maximum: (cfg.topic_alias_maximum > 0)
                    .then_some(cfg.topic_alias_maximum),
                assigned_client_identifier: assigned,
                subscription_identifier_available: Some(0),
                shared_subscription_available: Some(0),
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let ack = ConnAck {
            // The proxy keeps no session state between connections.
            session_present: false,
            code: 0,
            properties,
        };
        // Take over an older session of this client id (here now, elsewhere
        // through the announcement) before the client hears it is connected.
        let connected_at = now_ms();
        // A persistent session (3.1.1 clean session 0, 5.0 session expiry > 0)
        // is subscribed to the device's allowed command filters from the
        // start: the proxy keeps no subscriptions between connections, and
        // such a device does not resubscribe.
        let persistent = shared.commands.enabled
            && match connect.version {
                Version::V311 => !connect.clean_start,
                Version::V5 => connect.properties.session_expiry_interval.unwrap_or(0) > 0,
            };
        let outbound = persistent.then(|| {
            let (tx, rx) = mpsc::channel(shared.commands.max_queued_per_device);
            let subscriptions = shared
                .commands
                .subscribe_filters
                .iter()
                .map(|f| (f.replace("{device_id}", &device_id), QoS::AtLeastOnce))
                .collect();
            (
                tx,
                Box::new(Outbound {
                    subscriptions,
                    rx,
                    unacked: VecDeque::new(),
                    next_id: 1,
                }),
            )
        });
        let registration = shared.table.register(
            &device_id,
            connected_at,
            outbound.as_ref().map(|(tx, _)| tx.clone()),
        );
        // This replica owns the device now: it reports what happens to the
        // commands that waited for it.
        shared.table.note_owner(&device_id, &shared.journal.replica);
        // Delivered if its session persists, reported as dropped if it
        // started clean; what aged out meanwhile is reported as such.
        let (waiting, stale) = shared.offline.take(&device_id, connected_at);
        for cmd in stale {
            commands::report_gone(&cmd, &shared.table, &shared.journal);
        }
        for cmd in waiting {
            match &outbound {
                Some((tx, _)) => {
                    if let Err(e) = tx.try_send(cmd) {
                        let cmd = match e {
                            mpsc::error::TrySendError::Full(c)
                            | mpsc::error::TrySendError::Closed(c) => c,
                        };
                        shared
                            .journal
                            .receipt(&cmd, Status::Dropped, "device command queue full");
                    }
                }
                None => shared.journal.receipt(
                    &cmd,
                    Status::Dropped,
                    "device reconnected with a clean session",
                ),
            }
        }
        let outbound = outbound.map(|(_, o)| o);
        shared.journal.announce(&device_id, connected_at);
        shared
            .journal
            .lifecycle(&device_id, "connected", &peer.to_string(), None);
        // [MQTT-3.1.2-24]: never send a 5.0 client more than it said it accepts.
        framed.set_max_outbound(connect.properties.maximum_packet_size.map(|m| m as usize));
        framed.queue(&Packet::ConnAck(ack), connect.version);
        if let Err(e) = framed.flush(write_timeout).await {
            shared.table.deregister(&device_id, registration.generation);
            shared.journal.lifecycle(
                &device_id,
                "disconnected",
                &peer.to_string(),
                Some("write_failed"),
            );
            return Err(CloseReason::Write(e));
        }
        Ok(Session {
            version: connect.version,
            client_id: (client_id != device_id).then(|| client_id.into_boxed_str()),
            device_id,
            username: if shared.auth.enabled() {
                connect.username.map(String::into_boxed_str)
            } else {
                None
            },
            expiry: expires_at.map(|exp| {
                let left = Duration::from_secs(exp).saturating_sub(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default(),
                );
                Box::pin(tokio::time::sleep(left))
            }),
            limiter: Limiter::new(&shared.rate_limits),
            throttle: None,
            authorizing: None,
            preauthorized: Vec::new(),
            partial_deadline: None,
            denied: 0,
            keep_alive: Duration::from_millis(connect.keep_alive as u64 * 1500),
            problem_info: connect.properties.request_problem_information != Some(0),
            inflight: Window::new(cfg.ordering),
            awaiting_rel: HashSet::new(),
            aliases: Vec::new(),
            pending: None,
            published: 0,
            refused: 0,
            dead_lettered: 0,
            generation: registration.generation,
            kick: Some(registration.kick),
            client_receive_max: connect
                .properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(shared.commands.max_unacked_per_device),
            outbound,
            will_delay: Duration::from_secs(
                connect
                    .will
                    .as_ref()
                    .and_then(|w| w.properties.will_delay_interval)
                    .unwrap_or(0)
                    .min(connect.properties.session_expiry_interval.unwrap_or(0))
                    .into(),
            ),
            will: connect.will.map(Box::new),
        })
    }

    /// The main loop; returns why the connection ends.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        shared: &Shared,
        cancel: &CancellationToken,
    ) -> CloseReason {
        let write_timeout = Duration::from_millis(shared.mqtt.write_timeout_ms);
        let receive_max = shared.mqtt.receive_maximum as usize;
        let keep_alive = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(keep_alive);
        let mut was_reading = false;
        let mut draining = false;
        // Shutdown with a spread: each connection goes at its own moment.
        let mut drain_at: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Bytes are buffered that may hold complete packets not yet handled
        // (a client may send PUBLISH right behind CONNECT, in one segment).
        let mut input_ready = framed.has_buffered_input();
        loop {
            let reading = !draining
                && self.pending.is_none()
                && self.authorizing.is_none()
                && self.throttle.is_none()
                && (self.version == Version::V5 || self.inflight.len() < receive_max);
            // The keep-alive clock only runs while we read: a paused socket is our doing.
            if reading && !was_reading && !self.keep_alive.is_zero() {
                keep_alive
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.keep_alive);
            }
            was_reading = reading;
            if reading && input_ready {
                let (handled, drained) = match self.process_input(framed, shared) {
                    Ok(r) => r,
                    Err(reason) => return reason,
                };
                if handled > 0 && !self.keep_alive.is_zero() {
                    keep_alive
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.keep_alive);
                }
                input_ready = !drained;
                if drained {
                    // Bytes left over after the last complete packet are the
                    // start of one whose rest must come within the deadline,
                    // counted from when the previous packet completed.
                    if !framed.has_buffered_input() {
                        self.partial_deadline = None;
                    } else {
                        let timeout = Duration::from_millis(shared.mqtt.partial_packet_timeout_ms);
                        let at = tokio::time::Instant::now() + timeout;
                        match self.partial_deadline.as_mut() {
                            Some(d) if handled > 0 => d.as_mut().reset(at),
                            Some(_) => {}
                            None => {
                                self.partial_deadline = Some(Box::pin(tokio::time::sleep_until(at)))
                            }
                        }
                    }
                }
                if let Err(e) = flush(framed, write_timeout).await {
                    return CloseReason::Write(e);
                }
                continue;
            }
            if draining && self.inflight.is_empty() && self.pending.is_none() {
                return CloseReason::Shutdown;
            }
            // Every branch is cancellation-safe: `read_more` loses no bytes,
            // `NextOutcome` consumes an outcome only when it is ready, and
            // waiting for queue space or a deadline holds no data.
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !draining && drain_at.is_none() => {
                    if shared.disconnect_spread.is_zero() {
                        // Stop reading; finish what Kafka already has, then say goodbye.
                        draining = true;
                    } else {
                        // Keep serving until this connection's moment in the window.
                        let at = spread_delay(&self.device_id, shared.disconnect_spread);
                        drain_at = Some(Box::pin(tokio::time::sleep(at)));
                    }
                }
                _ = OptionFuture::from(drain_at.as_mut()), if drain_at.is_some() && !draining => {
                    draining = true;
                }
                outcome = self.inflight.next_outcome(), if !self.inflight.is_empty() => {
                    if let Err(reason) = self.acknowledge(framed, outcome) {
                        return reason;
                    }
                    // Delivery reports come in batches: acknowledge every one
                    // that is ready, then write them with one syscall.
                    while let Some(outcome) = self.inflight.ready_outcome() {
                        if let Err(reason) = self.acknowledge(framed, outcome) {
                            return reason;
                        }
                    }
                    // `strict`: the record held behind the acknowledged ones goes to Kafka now.
                    self.release_held(shared);
                }
                // Boxed, and only built while a record waits: idle tasks stay small.
                _ = OptionFuture::from(self.pending.is_some().then(|| Box::pin(shared.producer.wait_for_space(SPACE_RECHECK)))), if self.pending.is_some() => {
                    if let Some(p) = self.pending.take() {
                        self.retry(*p, shared);
                    }
                    // `strict`: a held record waits behind a pending one
                    // (QoS 0, or its own queue-full retry) as well.
                    self.release_held(shared);
                }
                read = framed.read_more(), if reading => match read {
                    Ok(0) => return CloseReason::ConnectionLost,
                    Ok(_) => input_ready = true,
                    Err(e) => return CloseReason::Io(e),
                },
                _ = notified(&self.kick) => return CloseReason::TakenOver,
                cmd = next_command(&mut self.outbound), if !draining && self.can_send_command() => {
                    if let Some(cmd) = cmd {
                        self.deliver(framed, cmd, &shared.journal);
                    }
                }
                _ = &mut keep_alive, if reading && !self.keep_alive.is_zero() => {
                    return CloseReason::KeepAliveTimeout;
                }
                // The remaining branches exist only on connections that need
                // them; each polls a boxed future owned by the session, so
                // dropping the select loses nothing.
                verdict = OptionFuture::from(self.authorizing.as_mut().map(|a| a.answer.as_mut())), if self.authorizing.is_some() => {
                    if let Some(verdict) = verdict {
                        match self.authorized(framed, verdict, shared) {
                            Ok(_) => input_ready = true,
                            Err(reason) => return reason,
                        }
                    }
                }
                _ = OptionFuture::from(self.throttle.as_mut()), if self.throttle.is_some() => {
                    self.throttle = None;
                    input_ready = true;
                }
                _ = OptionFuture::from(self.expiry.as_mut()), if self.expiry.is_some() => {
                    return CloseReason::CredentialsExpired;
                }
                _ = OptionFuture::from(self.partial_deadline.as_mut()), if reading && self.partial_deadline.is_some() => {
                    return CloseReason::PartialPacketTimeout;
                }
            }
            if let Err(e) = flush(framed, write_timeout).await {
                return CloseReason::Write(e);
            }
        }
    }
}

/// Flushes queued packets. The write future (with its timeout) is boxed and
/// only built when there is something to write, so it does not count toward
/// the size of every idle connection's task.
async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    timeout: Duration,
) -> Result<(), WriteError> {
    if !framed.has_pending_writes() {
        return Ok(());
    }
    Box::pin(framed.flush(timeout)).await
}

impl Session {
    /// Handles buffered packets until the buffer holds no complete packet
    /// (`drained = true`) or flow control says stop. Returns how many packets
    /// were handled.
    fn process_input<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        shared: &Shared,
    ) -> Result<(usize, bool), CloseReason> {
        let receive_max = shared.mqtt.receive_maximum as usize;
        let mut handled = 0;
        loop {
            if self.pending.is_some()
                || self.authorizing.is_some()
                || self.throttle.is_some()
                || (self.version == Version::V311 && self.inflight.len() >= receive_max)
            {
                return Ok((handled, false));
            }
            let packet = match framed.decode(Some(self.version), &shared.limits) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok((handled, true)),
                Err(e) => {
                    metrics::counter!(m::PROTOCOL_ERRORS).increment(1);
                    return Err(CloseReason::Protocol(e));
                }
            };
            handled += 1;
            let step = self.on_packet(framed, packet, shared)?;
            if self.authorizing.is_none() {
                self.preauthorized.clear();
            }
            if let Step::Pause = step {
                return Ok((handled, false));
            }
        }
    }

    fn on_packet<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        packet: Packet,
        shared: &Shared,
    ) -> Result<Step, CloseReason> {
        let v = self.version;
        match packet {
            Packet::Publish(p) => return self.on_publish(framed, p, shared),
            Packet::PubRel(ack) => {
                let code = if self.awaiting_rel.remove(&ack.packet_id) || v == Version::V311 {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                framed.queue(&Packet::PubComp(Ack::new(ack.packet_id, code)), v);
            }
            Packet::PingReq => framed.queue(&Packet::PingResp, v),
            Packet::Disconnect(d) => {
                // Only 5.0's "disconnect with will message" (0x04) keeps the will.
                if d.reason != 0x04 {
                    self.will = None;
                }
                return Err(CloseReason::ClientDisconnected);
            }
            Packet::Subscribe(sub) => {
                let mut denied = Vec::with_capacity(sub.filters.len());
                for i in 0..sub.filters.len() {
                    match self.authorize(Access::Subscribe, &sub.filters[i].filter, shared) {
                        Authz::Allow => denied.push(None),
                        Authz::Deny(why) => denied.push(Some(why)),
                        Authz::Ask => {
                            let filter = sub.filters[i].filter.clone();
                            self.ask_hook(
                                Packet::Subscribe(sub),
                                Access::Subscribe,
                                filter,
                                shared,
                            );
                            return Ok(Step::Pause);
                        }
                    }
                }
                let (ack, send_retained) = self.subscribe(sub, denied, shared);
                framed.queue(&Packet::SubAck(ack), v);
                // Retained commands follow the SUBACK, with the retain flag set.
                for filter in send_retained {
                    for mut cmd in shared.retained.matching(&self.device_id, &filter) {
                        cmd.retain = true;
                        self.deliver(framed, cmd, &shared.journal);
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                let codes = u
                    .filters
                    .iter()
                    .map(|f| match self.outbound.as_mut() {
                        Some(o) if o.subscriptions.iter().any(|(g, _)| g == f) => {
                            o.subscriptions.retain(|(g, _)| g != f);
                            reason::SUCCESS
                        }
                        _ => reason::NO_SUBSCRIPTION_EXISTED,
                    })
                    .collect();
                let ack = SubAck {
                    packet_id: u.packet_id,
                    properties: Properties::default(),
                    codes,
                };
                framed.queue(&Packet::UnsubAck(ack), v);
            }
            Packet::PubAck(ack) => self.command_acked(ack.packet_id, &shared.journal),
            // The proxy sends commands at QoS 0 or 1 only: nothing to do for these.
            Packet::PubRec(_) | Packet::PubComp(_) => {
                tracing::debug!("ignoring QoS 2 acknowledgement for a packet the proxy never sent");
            }
            Packet::Auth(_) => return Err(CloseReason::Protocol(ProtocolError::UnexpectedAuth)),
            // The decoder refuses CONNECT after the first and every server-only packet.
            other => {
                return Err(CloseReason::Protocol(ProtocolError::ServerOnlyPacket(
                    other.name(),
                )));
            }
        }
        Ok(Step::Continue)
    }

    fn reason_string(&self, why: &str) -> Properties {
        Properties {
            reason_string: (self.version == Version::V5 && self.problem_info)
                .then(|| why.to_owned()),
            ..Properties::default()
        }
    }

    fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        mut p: Publish,
        shared: &Shared,
    ) -> Result<Step, CloseReason> {
        let received_ms = now_ms();
        metrics::counter!(m::PUBLISH_RECEIVED, "qos" => qos_label(p.qos)).increment(1);
        if let Some(alias) = p.properties.topic_alias {
            self.resolve_alias(&mut p.topic, alias, shared.mqtt.topic_alias_maximum)?;
        }
        if p.qos == QoS::ExactlyOnce {
            if self.awaiting_rel.contains(&p.packet_id) {
                // A resend before PUBREL: the record is already in Kafka [MQTT-4.3.3-9].
                framed.queue(&Packet::PubRec(Ack::new(p.packet_id, 0)), self.version);
                return Ok(Step::Continue);
            }
            if self.inflight.has_qos2(p.packet_id) {
                // Already being produced; its PUBREC follows when Kafka has it.
                return Ok(Step::Continue);
            }
            if self.awaiting_rel.len() >= shared.mqtt.max_awaiting_rel {
                metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "awaiting_rel").increment(1);
                return Err(CloseReason::LimitExceeded(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    format!(
                        "{} QoS 2 messages PUBREC'd and never released (mqtt.max_awaiting_rel)",
                        self.awaiting_rel.len()
                    ),
                ));
            }
        }
        // 5.0 only: a 3.1.1 client has no Receive Maximum, and the proxy's flow
        // control for it is to stop reading (its PUBRELs necessarily arrive
        // after PUBLISH packets it already pipelined).
        if p.qos != QoS::AtMostOnce && self.version == Version::V5 {
            let max = shared.mqtt.receive_maximum;
            let unacked = self.inflight.len() + self.awaiting_rel.len();
            if unacked >= max as usize {
                return Err(CloseReason::Protocol(
                    ProtocolError::ReceiveMaximumExceeded(max),
                ));
            }
        }
        if self.version == Version::V5 {
            if let Some(name) = record::reserved_user_property(&p) {
                let why = format!("user property {name:?} uses the reserved prefix \"mqtt.\"");
                return self.refuse(
                    &p,
                    reason::IMPLEMENTATION_SPECIFIC_ERROR,
                    "reserved_header",
                    why,
                );
            }
        }
        if p.topic.len() > shared.mqtt.max_topic_bytes {
            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "topic_length").increment(1);
            let why = format!(
                "topic of {} bytes is longer than mqtt.max_topic_bytes ({})",
                p.topic.len(),
                shared.mqtt.max_topic_bytes
            );
            return self.refuse(&p, reason::TOPIC_NAME_INVALID, "topic_too_long", why);
        }
        match self.authorize(Access::Publish, &p.topic, shared) {
            Authz::Allow => {}
            Authz::Deny(why) => {
                metrics::counter!(m::ACL_DENIED, "action" => "publish").increment(1);
                if self.version == Version::V311 {
                    self.note_denied(&why);
                    return Err(CloseReason::NotAuthorized(why));
                }
                return self.refuse(&p, reason::NOT_AUTHORIZED, "not_authorized", why);
            }
            Authz::Ask => {
                let topic = p.topic.clone();
                self.ask_hook(Packet::Publish(p), Access::Publish, topic, shared);
                return Ok(Step::Pause);
            }
        }
        let mut throttled = false;
        if let Some(limiter) = self.limiter.as_mut() {
            let size = p.payload.len() as f64;
            match self.version {
                Version::V5 => {
                    if let Some(b) = limiter.messages.as_mut() {
                        if !b.try_take(1.0) {
                            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "publish_rate")
                                .increment(1);
                            return Err(CloseReason::LimitExceeded(
                                reason::MESSAGE_RATE_TOO_HIGH,
                                format!(
                                    "more than {} PUBLISH per second (limits.publish_per_second)",
                                    shared.rate_limits.publish_per_second
                                ),
                            ));
                        }
                    }
                    if let Some(b) = limiter.bytes.as_mut() {
                        if !b.try_take(size) {
                            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "publish_bytes")
                                .increment(1);
                            let why = format!(
                                "more than {} payload bytes per second (limits.publish_bytes_per_second)",
                                shared.rate_limits.publish_bytes_per_second
                            );
                            return self.refuse(&p, reason::QUOTA_EXCEEDED, "quota_exceeded", why);
                        }
                    }
                }
                Version::V311 => {
                    // No way to tell a 3.1.1 client: take the message, then
                    // read nothing more until the bucket has paid its debt.
                    let wait = [
                        limiter.messages.as_mut().and_then(|b| b.take_or_wait(1.0)),
                        limiter.bytes.as_mut().and_then(|b| b.take_or_wait(size)),
                    ]
                    .into_iter()
                    .flatten()
                    .max();
                    if let Some(wait) = wait {
                        metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "publish_throttled")
                            .increment(1);
                        self.throttle = Some(Box::pin(tokio::time::sleep(wait)));
                        throttled = true;
                    }
                }
            }
        }
        let Some(dest) = shared.router.route(&p.topic, &self.device_id) else {
            let why = format!("no route for topic {:?}", p.topic);
            return self.refuse(&p, reason::TOPIC_NAME_INVALID, "no_route", why);
        };
        // With authentication on the key is the authenticated identity,
        // whatever the route's template says: no device writes under
        // another's key.
        let key = if shared.auth.enabled() {
            std::borrow::Cow::Borrowed(self.device_id.as_str())
        } else {
            dest.key
        };
        if dest.dead_letter {
            metrics::counter!(m::PUBLISH_DEAD_LETTERED).increment(1);
            self.dead_lettered += 1;
            if self.dead_lettered == 1 {
                tracing::warn!(topic = %p.topic, kafka_topic = %dest.kafka_topic, "no route; record sent to the dead-letter topic (counted in the close line from now on)");
            }
        }
        let headers = record::headers(&p, &p.topic, self.client_id(), self.version);
        let next = if throttled {
            Step::Pause
        } else {
            Step::Continue
        };
        if p.qos != QoS::AtMostOnce && self.inflight.must_hold() {
            // `strict`: Kafka has a record of this connection already; this
            // one waits in the window for that one's acknowledgement.
            let held = Held {
                kafka_topic: dest.kafka_topic.clone(),
                key: key.into_owned(),
                payload: p.payload,
                headers,
                timestamp_ms: received_ms,
            };
            self.inflight
                .push(p.packet_id, p.qos, State::Held(Box::new(held)));
            return Ok(next);
        }
        self.published += 1;
        metrics::counter!(m::PUBLISH_ROUTED, "kafka_topic" => dest.kafka_topic.clone())
            .increment(1);
        let (delivery, waiter) = if p.qos == QoS::AtMostOnce {
            (Box::new(Delivery::Fire), None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Box::new(Delivery::Ack(tx)), Some(rx))
        };
        if let Some(rx) = waiter {
            self.inflight.push(p.packet_id, p.qos, State::Producing(rx));
        }
        let rec = Record {
            topic: dest.kafka_topic,
            key: key.as_bytes(),
            payload: &p.payload,
            headers,
            timestamp_ms: received_ms,
        };
        match shared.producer.send(rec, delivery) {
            Ok(()) => Ok(next),
            Err(SendError::QueueFull(headers, delivery)) => {
                self.pending = Some(Box::new(Pending {
                    record: Held {
                        kafka_topic: dest.kafka_topic.clone(),
                        key: key.into_owned(),
                        payload: p.payload,
                        headers,
                        timestamp_ms: received_ms,
                    },
                    delivery,
                    since: tokio::time::Instant::now(),
                }));
                Ok(Step::Pause)
            }
            // The delivery was dropped: a QoS 1/2 waiter sees its channel close.
            Err(SendError::Refused(e)) => {
                self.note_refusal(&format!("kafka refused the record: {e}"));
                if p.qos == QoS::AtMostOnce {
                    metrics::counter!(m::QOS0_DROPPED).increment(1);
                }
                Ok(next)
            }
        }
    }

    /// `strict`: hands the record at the head of the window to the producer
    /// once every record ahead of it is acknowledged. A full producer queue
    /// makes it the pending record (the socket is not read meanwhile).
    fn release_held(&mut self, shared: &Shared) {
        // One record at a time waits for queue space; the pending branch
        // calls this again once it is sent.
        if self.pending.is_some() {
            return;
        }
        let Some((held, tx)) = self.inflight.release_head() else {
            return;
        };
        self.published += 1;
        metrics::counter!(m::PUBLISH_ROUTED, "kafka_topic" => held.kafka_topic.clone())
            .increment(1);
        self.send_held(*held, Box::new(Delivery::Ack(tx)), None, shared);
    }

    fn resolve_alias(
        &mut self,
        topic: &mut String,
        alias: u16,
        max: u16,
    ) -> Result<(), CloseReason> {
        if alias == 0 || alias > max {
            return Err(CloseReason::Protocol(ProtocolError::TopicAliasInvalid {
                alias,
                max,
            }));
        }
        if self.aliases.is_empty() {
            self.aliases = vec![None; max as usize];
        }
        let slot = &mut self.aliases[alias as usize - 1];
        if topic.is_empty() {
            match slot {
                Some(t) => topic.clone_from(t),
                None => {
                    return Err(CloseReason::Protocol(ProtocolError::TopicAliasUnknown(
                        alias,
                    )))
                }
            }
        } else {
            *slot = Some(topic.clone());
        }
        Ok(())
    }

    /// Refuses one PUBLISH. 3.1.1 has no negative acknowledgement, so the
    /// connection closes; 5.0 QoS 1/2 get the reason code in their ack (in
    /// order with the others); 5.0 QoS 0 gets a DISCONNECT with it.
    fn refuse(
        &mut self,
        p: &Publish,
        code: u8,
        label: &'static str,
        why: String,
    ) -> Result<Step, CloseReason> {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => label).increment(1);
        match (self.version, p.qos) {
            (Version::V311, _) | (Version::V5, QoS::AtMostOnce) => {
                Err(CloseReason::PublishRefused(code, why))
            }
            (Version::V5, qos) => {
                self.note_refusal(&why);
                self.inflight
                    .push(p.packet_id, qos, State::Refused(code, why));
                Ok(Step::Continue)
            }
        }
    }

    /// Decides a topic (PUBLISH) or filter (SUBSCRIBE): ACL first, then the
    /// HTTP hook when configured for it (from its cache, or `Ask`).
    fn authorize(&mut self, access: Access, topic: &str, shared: &Shared) -> Authz {
        if let Some((_, _, perm)) = self
            .preauthorized
            .iter()
            .find(|(a, t, _)| *a == access && t == topic)
        {
            {
                return match perm {
                    Permission::Allow => Authz::Allow,
                    Permission::Deny => Authz::Deny(format!(
                        "{} {topic:?} denied by the auth service",
                        access.label()
                    )),
                };
            }
        }
        let auth = &shared.auth;
        if !auth.acl.allows_everything()
            && auth.acl.check(access, topic, &self.subject()) == Permission::Deny
        {
            return Authz::Deny(format!(
                "{} {topic:?} not allowed by auth.acl",
                access.label()
            ));
        }
        let ask = match access {
            Access::Publish => auth.hook_publish,
            Access::Subscribe => auth.hook_subscribe,
        };
        let Some(hook) = auth.hook.as_ref().filter(|_| ask) else {
            return Authz::Allow;
        };
        let req = HookRequest {
            action: hook_action(access),
            client_id: self.client_id(),
            username: self.username.as_deref(),
            password: None,
            device_id: Some(&self.device_id),
            peer: "",
            topic: Some(topic),
        };
        match hook.cached(&req) {
            Some(HookVerdict::Allow { .. }) => Authz::Allow,
            Some(HookVerdict::Deny { reason }) => Authz::Deny(format!(
                "{} {topic:?} denied by the auth service: {}",
                access.label(),
                reason.as_deref().unwrap_or("no reason given")
            )),
            Some(HookVerdict::Unavailable(_)) | None => Authz::Ask,
        }
    }

    /// Holds `packet` until the hook answers; the socket is not read meanwhile.
    fn ask_hook(&mut self, packet: Packet, access: Access, topic: String, shared: &Shared) {
        let Some(hook) = shared.auth.hook.clone() else {
            // authorize() only answers Ask when a hook exists.
            return;
        };
        let client_id = self.client_id().to_owned();
        let username = self.username.clone();
        let device_id = self.device_id.clone();
        let asked = topic.clone();
        let answer = Box::pin(async move {
            let req = HookRequest {
                action: hook_action(access),
                client_id: &client_id,
                username: username.as_deref(),
                password: None,
                device_id: Some(&device_id),
                peer: "",
                topic: Some(&asked),
            };
            hook.check(&req).await
        });
        self.authorizing = Some(Box::new(Authorizing {
            packet,
            access,
            topic,
            answer,
        }));
    }

    /// The hook answered: decide and handle the held packet.
    fn authorized<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        verdict: HookVerdict,
        shared: &Shared,
    ) -> Result<Step, CloseReason> {
        let Some(held) = self.authorizing.take() else {
            return Ok(Step::Continue);
        };
        let perm = match verdict {
            HookVerdict::Allow { .. } => Permission::Allow,
            HookVerdict::Deny { .. } => Permission::Deny,
            HookVerdict::Unavailable(why) => match shared.auth.on_hook_error() {
                OnError::Deny => {
                    self.note_denied(&format!(
                        "auth service unavailable ({why}); auth.http.on_error = \"deny\""
                    ));
                    Permission::Deny
                }
                OnError::Allow => Permission::Allow,
            },
        };
        let Authorizing {
            packet,
            access,
            topic,
            ..
        } = *held;
        self.preauthorized.push((access, topic, perm));
        let step = self.on_packet(framed, packet, shared);
        if self.authorizing.is_none() {
            self.preauthorized.clear();
        }
        step
    }

    /// Counts an authorization refusal; logs the first of the connection at
    /// warn, the rest at debug.
    fn note_denied(&mut self, why: &str) {
        self.denied += 1;
        if self.denied == 1 {
            tracing::warn!(why, "not authorized (further refusals on this connection are logged at debug and counted in the close line)");
        } else {
            tracing::debug!(why, "not authorized");
        }
    }

    /// Logs the first refusal of a connection at warn, the rest at debug, so a
    /// misconfigured device cannot flood the log.
    fn note_refusal(&mut self, why: &str) {
        self.refused += 1;
        if self.refused == 1 {
            tracing::warn!(
                why,
                "PUBLISH refused (further refusals on this connection are logged at debug)"
            );
        } else {
            tracing::debug!(why, "PUBLISH refused");
        }
    }

    fn retry(&mut self, p: Pending, shared: &Shared) {
        self.send_held(p.record, p.delivery, Some(p.since), shared);
    }

    /// Hands a built record to the producer; a full queue makes it the
    /// pending record. `since`: when it first found the queue full.
    fn send_held(
        &mut self,
        held: Held,
        delivery: Box<Delivery>,
        since: Option<tokio::time::Instant>,
        shared: &Shared,
    ) {
        let rec = Record {
            topic: &held.kafka_topic,
            key: held.key.as_bytes(),
            payload: &held.payload,
            headers: held.headers,
            timestamp_ms: held.timestamp_ms,
        };
        match shared.producer.send(rec, delivery) {
            Ok(()) => {
                if let Some(since) = since {
                    metrics::histogram!(m::KAFKA_BACKPRESSURE_SECONDS)
                        .record(since.elapsed().as_secs_f64());
                }
            }
            Err(SendError::QueueFull(headers, delivery)) => {
                self.pending = Some(Box::new(Pending {
                    record: Held { headers, ..held },
                    delivery,
                    since: since.unwrap_or_else(tokio::time::Instant::now),
                }));
            }
            Err(SendError::Refused(e)) => {
                self.note_refusal(&format!("kafka refused the record: {e}"))
            }
        }
    }

    /// Writes the acknowledgement at the head of the in-flight window. A
    /// failed delivery closes the connection on 3.1.1 (no negative ack) and
    /// under `mqtt.ordering = "strict"` (after the 5.0 negative ack), so the
    /// device resends; the records held behind it are never produced.
    fn acknowledge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        outcome: Outcome,
    ) -> Result<(), CloseReason> {
        let Some((packet_id, qos)) = self.inflight.pop_front() else {
            return Ok(());
        };
        let code = outcome.code();
        let mut close = None;
        let properties = match outcome {
            Outcome::Delivered => Properties::default(),
            Outcome::Failed(why) if self.version == Version::V311 => {
                // No negative ack in 3.1.1: closing makes the client resend.
                return Err(CloseReason::DeliveryFailed(why));
            }
            Outcome::Failed(why) if self.inflight.is_strict() => {
                let properties = self.reason_string(&why);
                close = Some(CloseReason::DeliveryFailed(format!(
                    "{why}; mqtt.ordering = \"strict\" closes the connection: {} record(s) held behind it were not produced, resend from this one",
                    self.inflight.held()
                )));
                properties
            }
            Outcome::Failed(why) | Outcome::Refused(_, why) => self.reason_string(&why),
        };
        let ack = Ack {
            packet_id,
            reason: code,
            properties,
        };
        match qos {
            QoS::AtLeastOnce => framed.queue(&Packet::PubAck(ack), self.version),
            _ => {
                if code == reason::SUCCESS {
                    self.awaiting_rel.insert(packet_id);
                }
                framed.queue(&Packet::PubRec(ack), self.version)
            }
        }
        // The negative ack is queued; the DISCONNECT that follows it is
        // written behind it in one flush (see `run`).
        close.map_or(Ok(()), Err)
    }
}

/// How long a connection whose record found the producer queue full waits
/// for a wake-up before trying again anyway. Wake-ups come one per
/// delivered record; this only bounds the wait if one is missed. Short
/// rechecks cost CPU exactly when Kafka is down and nothing is delivered:
/// with a recheck every 50 ms, 8 replicas holding 100,000 devices used
/// 1.3–1.5 cores while every broker was SIGSTOPped (fault matrix,
/// `kafka.queue_max_messages = 10000`).
const SPACE_RECHECK: Duration = Duration::from_secs(1);

/// A pseudo-random moment in `[0, window)` for this connection to be told
/// to go at shutdown.
fn spread_delay(device_id: &str, window: Duration) -> Duration {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write(device_id.as_bytes());
    let ms = window.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

/// The outcome of [`Session::authorize`].
enum Authz {
    Allow,
    Deny(String),
    /// The hook must be asked first.
    Ask,
}

fn hook_action(access: Access) -> HookAction {
    match access {
        Access::Publish => HookAction::Publish,
        Access::Subscribe => HookAction::Subscribe,
    }
}

fn qos_label(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A client id for a client that sent none: unique enough across replicas
/// (random per process, time and a counter), and marked as assigned.
fn generate_client_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_i64(now_ms());
    format!("auto-{:016x}", h.finish())
}

/// Resolves when the session is taken over (never, before it is registered).
async fn notified(kick: &Option<Arc<Notify>>) {
    match kick {
        Some(k) => k.notified().await,
        None => std::future::pending().await,
    }
}

/// The next queued command, once the session has subscribed.
async fn next_command(outbound: &mut Option<Box<Outbound>>) -> Option<Box<Command>> {
    match outbound {
        Some(o) => o.rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Whether another command may be written now (the client's Receive Maximum).
    fn can_send_command(&self) -> bool {
        self.outbound
            .as_ref()
            .is_some_and(|o| o.unacked.len() < self.client_receive_max as usize)
    }

    /// Grants the filters the configuration allows this device, refuses the rest.
    /// Returns the SUBACK and the granted filters whose retained commands
    /// are to be sent (5.0 retain handling 0 always, 1 for a new subscription).
    fn subscribe(
        &mut self,
        sub: Subscribe,
        denied: Vec<Option<String>>,
        shared: &Shared,
    ) -> (SubAck, Vec<String>) {
        let v5 = self.version == Version::V5;
        let refused = if v5 {
            reason::NOT_AUTHORIZED
        } else {
            return_code::SUBACK_FAILURE
        };
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut why = None;
        let mut send_retained = Vec::new();
        for (f, denied) in sub.filters.iter().zip(denied) {
            let allowed = shared
                .commands
                .subscribe_filters
                .iter()
                .map(|t| t.replace("{device_id}", &self.device_id))
                .any(|a| topic::covers(&a, &f.filter));
            let code = if !shared.commands.enabled {
                why = Some("commands are disabled on this proxy");
                refused
            } else if !topic::valid_filter(&f.filter) {
                why = Some("malformed topic filter");
                if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    return_code::SUBACK_FAILURE
                }
            } else if f.filter.starts_with("$share/") {
                why = Some("shared subscriptions are not supported");
                if v5 {
                    0x9E
                } else {
                    return_code::SUBACK_FAILURE
                }
            } else if v5 && sub.properties.subscription_identifier.is_some() {
                why = Some("subscription identifiers are not supported");
                reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
            } else if f.filter.len() > shared.mqtt.max_topic_bytes {
                metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "topic_length").increment(1);
                why = Some("topic filter longer than mqtt.max_topic_bytes");
                if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    return_code::SUBACK_FAILURE
                }
            } else if let Some(denial) = denied {
                metrics::counter!(m::ACL_DENIED, "action" => "subscribe").increment(1);
                self.note_denied(&denial);
                why = Some("filter not authorized");
                refused
            } else if !allowed {
                why = Some("filter not allowed for this device (commands.subscribe_filters)");
                refused
            } else {
                let qos = f.qos.min(QoS::AtLeastOnce);
                let out = self.outbound.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(shared.commands.max_queued_per_device);
                    shared
                        .table
                        .set_commands(&self.device_id, self.generation, tx);
                    Box::new(Outbound {
                        subscriptions: Vec::new(),
                        rx,
                        unacked: VecDeque::new(),
                        next_id: 1,
                    })
                });
                let existed = out.subscriptions.iter().any(|(g, _)| g == &f.filter);
                out.subscriptions.retain(|(g, _)| g != &f.filter);
                out.subscriptions.push((f.filter.clone(), qos));
                if f.retain_handling == 0 || (f.retain_handling == 1 && !existed) {
                    send_retained.push(f.filter.clone());
                }
                qos as u8
            };
            codes.push(code);
        }
        if let Some(why) = why {
            tracing::info!(why, "SUBSCRIBE partly refused");
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            properties: why.map(|w| self.reason_string(w)).unwrap_or_default(),
            codes,
        };
        (ack, send_retained)
    }

    /// Writes one command to the device, or records why not.
    fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        cmd: Box<Command>,
        journal: &Journal,
    ) {
        let now = now_ms();
        if cmd.expires_at_ms.is_some_and(|at| at <= now) {
            return journal.receipt(&cmd, Status::Expired, "expired before delivery");
        }
        let Some(out) = self.outbound.as_mut() else {
            return journal.receipt(&cmd, Status::NotSubscribed, "device has no subscription");
        };
        let Some(granted) = out
            .subscriptions
            .iter()
            .filter(|(f, _)| topic::matches(f, &cmd.mqtt_topic))
            .map(|(_, q)| *q)
            .max()
        else {
            return journal.receipt(
                &cmd,
                Status::NotSubscribed,
                "no subscription matches the command topic",
            );
        };
        let qos = cmd.qos.min(granted);
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            // Next id not in use by an unacknowledged command.
            let mut id = out.next_id;
            while out.unacked.iter().any(|(u, _)| *u == id) {
                id = id.checked_add(1).unwrap_or(1);
            }
            out.next_id = id.checked_add(1).unwrap_or(1);
            id
        };
        let properties = Properties {
            // 5.0: the remaining lifetime travels with the message [MQTT-3.3.2-6].
            message_expiry_interval: cmd
                .expires_at_ms
                .filter(|_| self.version == Version::V5)
                .map(|at| ((at - now) / 1000).max(1) as u32),
            ..Properties::default()
        };
        let publish = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: cmd.retain,
            topic: cmd.mqtt_topic.clone(),
            packet_id,
            properties,
            payload: cmd.payload.clone(),
        });
        if !framed.fits(&publish, self.version) {
            return journal.receipt(
                &cmd,
                Status::Dropped,
                "larger than the device's maximum packet size",
            );
        }
        framed.queue(&publish, self.version);
        if qos == QoS::AtMostOnce {
            journal.receipt(&cmd, Status::Delivered, "written at QoS 0");
        } else {
            out.unacked.push_back((packet_id, cmd));
        }
    }

    /// A PUBACK for a command: the device has it.
    fn command_acked(&mut self, packet_id: u16, journal: &Journal) {
        let Some(out) = self.outbound.as_mut() else {
            return;
        };
        if let Some(pos) = out.unacked.iter().position(|(id, _)| *id == packet_id) {
            if let Some((_, cmd)) = out.unacked.remove(pos) {
                journal.receipt(&cmd, Status::Delivered, "acknowledged by the device");
            }
        }
    }

    /// At disconnect: every command still owed to the device gets a receipt.
    fn drop_commands(&mut self, journal: &Journal) {
        let Some(out) = self.outbound.as_mut() else {
            return;
        };
        for (_, cmd) in out.unacked.drain(..) {
            journal.receipt(
                &cmd,
                Status::Dropped,
                "device disconnected before acknowledging",
            );
        }
        out.rx.close();
        while let Ok(cmd) = out.rx.try_recv() {
            journal.receipt(&cmd, Status::Dropped, "device disconnected before delivery");
        }
    }
}

/// Produces a last will through the routes, like a PUBLISH from the device
/// (header `mqtt.will = 1`), after its delay unless the client id connects
/// again first (here, or announced by another replica).
fn publish_will(
    shared: &Arc<Shared>,
    device_id: &str,
    client_id: &str,
    version: Version,
    will: Will,
    delay: Duration,
) {
    let disconnected_at = now_ms();
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: 0,
        properties: will.properties,
        payload: will.payload,
    };
    let produce = {
        let shared = shared.clone();
        let client_id = client_id.to_owned();
        let device_id = device_id.to_owned();
        move || {
            let Some(dest) = shared.router.route(&publish.topic, &device_id) else {
                metrics::counter!(m::PUBLISH_REFUSED, "reason" => "no_route").increment(1);
                tracing::warn!(topic = %publish.topic, "last will matches no route; not produced");
                return;
            };
            let headers = record::headers(&publish, &publish.topic, &client_id, version).insert(
                rdkafka::message::Header {
                    key: record::H_WILL,
                    value: Some("1"),
                },
            );
            let rec = Record {
                topic: dest.kafka_topic,
                // As for a PUBLISH: with authentication on, the identity is the key.
                key: if shared.auth.enabled() {
                    device_id.as_bytes()
                } else {
                    dest.key.as_bytes()
                },
                payload: &publish.payload,
                headers,
                timestamp_ms: now_ms(),
            };
            match shared.producer.send(rec, Box::new(Delivery::Fire)) {
                Ok(()) => tracing::info!(topic = %publish.topic, "last will produced"),
                Err(_) => {
                    metrics::counter!(m::QOS0_DROPPED).increment(1);
                    tracing::warn!(topic = %publish.topic, "last will could not be produced");
                }
            }
        }
    };
    if delay.is_zero() {
        return produce();
    }
    shared.table.hold_will(device_id, disconnected_at);
    let shared = shared.clone();
    let device_id = device_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if shared.table.release_will(&device_id, disconnected_at) {
            produce();
        } else {
            tracing::info!(
                device_id,
                "last will cancelled: the client connected again within its delay"
            );
        }
    });
}
