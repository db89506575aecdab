//! Why a connection ended: every exit path of the connection task produces
//! exactly one [`CloseReason`], which decides the 5.0 DISCONNECT code sent
//! before closing, the `reason` label of the closed-connections metric and
//! the level of the close log line.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Session, Shared};
use super::framed::{Framed, WriteError};
use super::will::publish_will;
use crate::ingest::publish::Failure;
use crate::metrics as m;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::{reason, Disconnect, Packet, Properties, Version};

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
    pub(super) fn disconnect_code(&self) -> Option<u8> {
        match self {
            CloseReason::KeepAliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            CloseReason::Protocol(e) => Some(e.reason_code()),
            CloseReason::PublishRefused(code, _) => Some(*code),
            CloseReason::DeliveryFailed(_) => Some(reason::UNSPECIFIED_ERROR),
            CloseReason::Shutdown => Some(reason::SERVER_SHUTTING_DOWN), // 0x9C with a server reference: see `Session::close`
            CloseReason::TakenOver => Some(reason::SESSION_TAKEN_OVER),
            CloseReason::CredentialsExpired => Some(reason::MAXIMUM_CONNECT_TIME),
            CloseReason::NotAuthorized(_) => Some(reason::NOT_AUTHORIZED),
            CloseReason::LimitExceeded(code, _) => Some(*code),
            CloseReason::PartialPacketTimeout => Some(reason::MALFORMED_PACKET),
            _ => None,
        }
    }

    pub(super) fn is_problem(&self) -> bool {
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

impl From<Failure> for CloseReason {
    fn from(f: Failure) -> CloseReason {
        match f {
            Failure::Protocol(e) => CloseReason::Protocol(e),
            Failure::Limit(code, why) => CloseReason::LimitExceeded(code, why),
            Failure::Refused(code, why) => CloseReason::PublishRefused(code, why),
            Failure::DeliveryFailed(why) => CloseReason::DeliveryFailed(why),
        }
    }
}

/// Counts and logs a connection that ended before its CONNECT completed.
pub(super) fn log_close_before_connect(reason: &CloseReason) {
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

impl Session {
    /// Everything after the loop: the 5.0 DISCONNECT, leaving the session
    /// table, commands not delivered, the will, the lifecycle record, the
    /// close log line.
    pub(super) async fn close<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut framed: Framed<S>,
        reason: CloseReason,
        shared: &Arc<Shared>,
    ) {
        if let (Version::V5, Some(code)) = (self.version, reason.disconnect_code()) {
            // At shutdown, a configured server reference turns 0x8B into
            // 0x9C "use another server" [MQTT-4.11].
            let reference = match reason {
                CloseReason::Shutdown => shared.server_reference.clone(),
                _ => None,
            };
            let d = Disconnect {
                reason: if reference.is_some() {
                    reason::USE_ANOTHER_SERVER
                } else {
                    code
                },
                properties: Properties {
                    reason_string: self.problem_info.then(|| reason.to_string()),
                    server_reference: reference,
                    ..Properties::default()
                },
            };
            let timeout = Duration::from_millis(shared.mqtt.write_timeout_ms.min(1000));
            framed
                .send_now(&Packet::Disconnect(d), Version::V5, timeout)
                .await;
        }
        shared.table.deregister(&self.device_id, self.generation);
        // The age of this replica's ownership counts from the disconnect.
        shared
            .table
            .touch_owner(&self.device_id, crate::kafka::now_ms());
        if let Some(out) = self.outbound.as_mut() {
            out.drop_all(&shared.journal);
        }
        // A drain is not a device failure: devices reconnect elsewhere, so no wills.
        if let (Some(held), false) = (self.will.take(), matches!(reason, CloseReason::Shutdown)) {
            publish_will(
                shared,
                &self.device_id,
                self.client_id(),
                self.version,
                held.will,
                held.delay,
            );
        }
        shared.journal.lifecycle(
            &self.device_id,
            "disconnected",
            &self.peer.to_string(),
            Some(reason.label()),
        );
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
        let secs = self.started.elapsed().as_secs();
        let i = &self.ingest;
        let (published, refused, dead_lettered, not_authorized) =
            (i.published, i.refused, i.dead_lettered, self.authz.denied);
        if reason.is_problem() {
            tracing::warn!(%reason, connected_s = secs, published, refused, dead_lettered, not_authorized, "connection closed");
        } else {
            tracing::info!(%reason, connected_s = secs, published, refused, dead_lettered, not_authorized, "connection closed");
        }
    }
}
