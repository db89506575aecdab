//! The CONNECT phase of a connection: read the CONNECT under the connect
//! deadline, validate it, authenticate, take over an older session of the
//! same client id, hand the device the commands that waited for it, and
//! answer with the CONNACK. Everything here runs once per connection and is
//! boxed by the caller, so its futures do not size an idle connection's task.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};

use super::authorize::Authorization;
use super::close::CloseReason;
use super::connection::{Session, Shared};
use super::framed::Framed;
use super::will::HeldWill;
use crate::auth::acl::{Access, Subject};
use crate::auth::config::Permission;
use crate::auth::ConnectInfo;
use crate::commands::outbound::Outbound;
use crate::commands::queue::TrySendError;
use crate::commands::{consumer, Status};
use crate::ingest::Ingest;
use crate::kafka::now_ms;
use crate::metrics as m;
use crate::mqtt::codec::Limits;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::*;

/// The leaf certificate a TLS client presented (verified by rustls), kept
/// only until CONNECT has been authenticated.
pub type PeerCert = Option<rustls::pki_types::CertificateDer<'static>>;

pub(super) async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
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

/// The names a session keeps besides its device id.
#[derive(Default)]
pub(super) struct Names {
    /// The MQTT client id, when it differs from the device id.
    pub(super) client_id: Option<Box<str>>,
    /// The CONNECT user name, with authentication on.
    pub(super) username: Option<Box<str>>,
}

impl Names {
    /// The client id: the one kept, or else the device id. A function of
    /// the fields, so that callers can borrow other fields of the session.
    pub(super) fn client_id<'a>(names: &'a Option<Box<Names>>, device_id: &'a str) -> &'a str {
        names
            .as_ref()
            .and_then(|n| n.client_id.as_deref())
            .unwrap_or(device_id)
    }

    /// The user name, if kept.
    pub(super) fn username(names: &Option<Box<Names>>) -> Option<&str> {
        names.as_ref().and_then(|n| n.username.as_deref())
    }
}

impl Session {
    /// Validates CONNECT and answers it.
    pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        framed: &mut Framed<S>,
        connect: Box<Connect>,
        shared: &Shared,
        peer: SocketAddr,
        peer_cert: PeerCert,
        proxied_cn: Option<String>,
    ) -> Result<Session, CloseReason> {
        // Out of its box here, so the box is freed when this phase ends,
        // not when the connection does.
        let connect = *connect;
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
        // A persistent session starts subscribed (see `Outbound::persistent`).
        let persistent = shared.commands.enabled
            && match connect.version {
                Version::V311 => !connect.clean_start,
                Version::V5 => connect.properties.session_expiry_interval.unwrap_or(0) > 0,
            };
        let outbound = persistent.then(|| {
            let who = Subject {
                device_id: &device_id,
                username: connect.username.as_deref(),
                client_id: &client_id,
            };
            Outbound::persistent(&shared.commands, &who)
        });
        let registration = shared.table.register(
            &device_id,
            connected_at,
            outbound.as_ref().map(|(tx, _)| tx.clone()),
        );
        // This replica owns the device now: it reports what happens to the
        // commands that waited for it.
        shared
            .table
            .note_owner(&device_id, &shared.journal.replica, connected_at);
        // Delivered if its session persists, reported as dropped if it
        // started clean; what aged out meanwhile is reported as such.
        let (waiting, stale) = shared.offline.take(&device_id, connected_at);
        for cmd in stale {
            consumer::report_gone(&cmd, &shared.table, &shared.journal);
        }
        for cmd in waiting {
            match &outbound {
                Some((tx, _)) => {
                    if let Err(e) = tx.try_send(cmd) {
                        let cmd = match e {
                            TrySendError::Full(c) | TrySendError::Closed(c) => c,
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
        framed.set_max_outbound(connect.properties.maximum_packet_size);
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
            names: {
                let names = Names {
                    client_id: (client_id != device_id).then(|| client_id.into_boxed_str()),
                    username: connect
                        .username
                        .filter(|_| shared.auth.enabled())
                        .map(String::into_boxed_str),
                };
                (names.client_id.is_some() || names.username.is_some()).then(|| Box::new(names))
            },
            device_id: registration.client_id,
            expiry: expires_at.map(|exp| {
                let left = Duration::from_secs(exp).saturating_sub(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default(),
                );
                Box::pin(tokio::time::sleep(left))
            }),
            authz: Authorization::default(),
            partial_deadline: None,
            keep_alive_ms: u32::from(connect.keep_alive) * 1500,
            ingest: Ingest::new(connect.version, &shared.pipeline),
            problem_info: connect.properties.request_problem_information != Some(0),
            generation: registration.generation,
            bell: registration.bell,
            client_receive_max: connect
                .properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(shared.commands.max_unacked_per_device),
            outbound,
            will: connect.will.map(|will| {
                Box::new(HeldWill {
                    delay: Duration::from_secs(
                        will.properties
                            .will_delay_interval
                            .unwrap_or(0)
                            .min(connect.properties.session_expiry_interval.unwrap_or(0))
                            .into(),
                    ),
                    will,
                })
            }),
            peer,
            started: std::time::Instant::now(),
        })
    }
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
