//! The connection task. Lifecycle: (TLS handshake and) CONNECT under one
//! deadline ([`connect`](super::connect)) → CONNACK → one `select!` loop
//! over the socket, Kafka delivery outcomes, producer-queue space, queued
//! commands, keep-alive and cancellation → one cleanup that logs why the
//! connection closed ([`CloseReason`]).
//!
//! This file keeps the socket and the loop and dispatches packets; the two
//! data paths live in their own modules: a PUBLISH goes to
//! [`crate::ingest`] (checks, route, record, producer, acknowledgements in
//! arrival order [MQTT-4.6.0-2]); SUBSCRIBE, UNSUBSCRIBE and command PUBACKs
//! go to [`crate::commands`]. Topic authorization (ACL, HTTP hook) is in
//! [`authorize`](super::authorize), wills in [`will`](super::will).
//!
//! Flow control: the socket is not read while a record waits for producer
//! queue space, a 3.1.1 connection is throttled or has `receive_maximum`
//! records unacknowledged, or a packet waits for the hook's answer; so a
//! slow Kafka becomes TCP backpressure on the device instead of memory in
//! the proxy.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::authorize::{Authorization, Authz};
use super::close::{log_close_before_connect, CloseReason};
use super::commands::next_command;
use super::config::MqttConfig;
use super::connect::{read_connect, PeerCert};
use super::framed::{Framed, WriteError};
use super::will::publish_will;
use crate::auth::acl::Access;
use crate::auth::Authenticator;
use crate::commands::offline::OfflineIndex;
use crate::commands::outbound::Outbound;
use crate::commands::retained::RetainedStore;
use crate::commands::{CommandsConfig, Journal, SessionTable};
use crate::ingest::publish::{Admit, Event, Flow, Publisher};
use crate::ingest::{Ingest, Pipeline};
use crate::metrics as m;
use crate::mqtt::codec::Limits;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::*;

/// State every connection of a replica shares.
pub struct Shared {
    /// MQTT limits and timeouts.
    pub mqtt: MqttConfig,
    /// Decoder limits derived from `mqtt`.
    pub limits: Limits,
    /// The device → Kafka path: routes, producer, publish limits.
    pub pipeline: Pipeline,
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
    /// Spread of the shutdown DISCONNECTs over this window.
    pub disconnect_spread: Duration,
    /// 5.0 Server Reference sent with DISCONNECT 0x9C at shutdown, if set.
    pub server_reference: Option<String>,
    /// New connections per source address, when limited.
    pub sources: Option<Arc<crate::limits::SourceLimiter>>,
    /// The replica's connection tasks (and delayed wills): shutdown waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when the replica starts to drain.
    pub shutdown: CancellationToken,
}

/// The decoder limits a configuration asks for.
pub fn limits(mqtt: &MqttConfig) -> Limits {
    Limits {
        max_packet_size: mqtt.max_packet_size_bytes,
        max_user_properties: mqtt.max_user_properties,
    }
}

/// One connection after its CONNACK.
pub(super) struct Session {
    pub(super) version: Version,
    /// Who the device is: the client id with authentication off, the
    /// authenticated identity with it on. Kafka key, session-table key.
    pub(super) device_id: String,
    /// The MQTT client id, kept only when it differs from `device_id`.
    pub(super) client_id: Option<Box<str>>,
    /// CONNECT user name, kept for ACL templates and hook questions when
    /// authentication is on.
    pub(super) username: Option<Box<str>>,
    /// Ends the connection when the credentials expire (JWT `exp`).
    pub(super) expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// ACL / hook decisions, and a packet waiting for the hook.
    pub(super) authz: Authorization,
    /// Set while the buffer holds part of a packet: the rest must arrive by then.
    pub(super) partial_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// 1.5 × the keep-alive the client asked for; zero disables the check.
    pub(super) keep_alive: Duration,
    /// 5.0 Request Problem Information: may reason strings be sent.
    pub(super) problem_info: bool,
    /// The device → Kafka path of this connection.
    pub(super) ingest: Ingest,
    /// This session's entry in the session table.
    pub(super) generation: u64,
    /// Notified when a newer connect of the same client id takes over.
    pub(super) kick: Option<Arc<Notify>>,
    /// The client's Receive Maximum: unacknowledged QoS 1 commands at once.
    pub(super) client_receive_max: u16,
    /// Subscriptions and commands, allocated on the first granted SUBSCRIBE.
    pub(super) outbound: Option<Box<Outbound>>,
    /// The last will, until a normal DISCONNECT discards it.
    pub(super) will: Option<Box<Will>>,
    /// 5.0 will delay, capped by the session expiry interval [MQTT-3.1.3-9].
    pub(super) will_delay: Duration,
}

/// Whether to go on decoding buffered packets.
pub(super) enum Step {
    Continue,
    /// Stop decoding buffered packets for now (backpressure).
    Pause,
}

impl From<Flow> for Step {
    fn from(f: Flow) -> Step {
        match f {
            Flow::Continue => Step::Continue,
            Flow::Pause => Step::Pause,
        }
    }
}

/// Runs one connection to completion: `handshake` turns the accepted TCP
/// stream into the byte stream (identity for plain TCP, TLS accept for TLS)
/// and counts against the connect deadline. Not an `async fn`: its
/// arguments would be stored in the task for its whole life next to the
/// copies the instrumented block below holds.
pub fn run<T, S, H>(
    tcp: T,
    peer: SocketAddr,
    proxied_cn: Option<String>,
    handshake: H,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> impl Future<Output = ()>
where
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
        let mut session = match Box::pin(Session::accept(&mut framed, connect, &shared, peer, peer_cert, proxied_cn)).await {
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
        // The age of this replica's ownership counts from the disconnect.
        shared.table.touch_owner(&session.device_id, &shared.journal.replica, crate::kafka::now_ms());
        if let Some(out) = session.outbound.as_mut() {
            out.drop_all(&shared.journal);
        }
        // A drain is not a device failure: devices reconnect elsewhere, so no wills.
        if let (Some(will), false) = (session.will.take(), matches!(reason, CloseReason::Shutdown)) {
            publish_will(&shared, &session.device_id, session.client_id(), session.version, *will, session.will_delay);
        }
        shared.journal.lifecycle(&session.device_id, "disconnected", &peer.to_string(), Some(reason.label()));
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
        let secs = started.elapsed().as_secs();
        let i = &session.ingest;
        let (published, refused, dead_lettered, not_authorized) =
            (i.published, i.refused, i.dead_lettered, session.authz.denied);
        if reason.is_problem() {
            tracing::warn!(%reason, connected_s = secs, published, refused, dead_lettered, not_authorized, "connection closed");
        } else {
            tracing::info!(%reason, connected_s = secs, published, refused, dead_lettered, not_authorized, "connection closed");
        }
    }
    .instrument(span)
}

impl Session {
    /// The MQTT client id (the device id unless authentication set another).
    pub(super) fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.device_id)
    }

    /// Whether the socket may be read: nothing waits for queue space, the
    /// hook or a throttle, and (3.1.1) the in-flight window has room.
    fn may_read(&self, shared: &Shared) -> bool {
        self.authz.waiting.is_none()
            && !self.ingest.is_paused()
            && self.ingest.has_room(&shared.pipeline)
    }

    /// The main loop; returns why the connection ends.
    pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        shared: &Shared,
        cancel: &CancellationToken,
    ) -> CloseReason {
        let write_timeout = Duration::from_millis(shared.mqtt.write_timeout_ms);
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
            let reading = !draining && self.may_read(shared);
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
            if draining && self.ingest.is_idle() {
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
                event = self.ingest.next_event(&shared.pipeline), if self.ingest.has_events() => match event {
                Event::Outcome(outcome) => {
                    let mut next = Some(outcome);
                    // Delivery reports come in batches: acknowledge every one
                    // that is ready, then write them with one syscall.
                    while let Some(outcome) = next {
                        let (ack, close) = self.ingest.acknowledge(outcome, self.problem_info);
                        if let Some(ack) = ack {
                            framed.queue(&ack, self.version);
                        }
                        if let Some(close) = close {
                            // The negative ack is queued; the DISCONNECT that
                            // follows it is written behind it in one flush.
                            return close.into();
                        }
                        next = self.ingest.ready_outcome();
                    }
                    // `strict`: the record held behind the acknowledged ones goes to Kafka now.
                    self.ingest.release_held(&shared.pipeline);
                }
                Event::Space => {
                    // `strict`: a held record waits behind a pending one
                    // (QoS 0, or its own queue-full retry) as well.
                    self.ingest.retry_pending(&shared.pipeline);
                }
                // A 3.1.1 connection over its rate limit may be read again.
                Event::Unthrottled => input_ready = true,
                },
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
                verdict = OptionFuture::from(self.authz.waiting.as_mut().map(|a| a.answer.as_mut())), if self.authz.waiting.is_some() => {
                    if let Some(verdict) = verdict {
                        match self.authorized(framed, verdict, shared) {
                            Ok(_) => input_ready = true,
                            Err(reason) => return reason,
                        }
                    }
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

    /// Handles buffered packets until the buffer holds no complete packet
    /// (`drained = true`) or flow control says stop. Returns how many packets
    /// were handled.
    fn process_input<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        shared: &Shared,
    ) -> Result<(usize, bool), CloseReason> {
        let mut handled = 0;
        loop {
            if !self.may_read(shared) {
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
            if self.authz.waiting.is_none() {
                self.authz.answers.clear();
            }
            if let Step::Pause = step {
                return Ok((handled, false));
            }
        }
    }

    pub(super) fn on_packet<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        packet: Packet,
        shared: &Shared,
    ) -> Result<Step, CloseReason> {
        let v = self.version;
        match packet {
            Packet::Publish(p) => return self.on_publish(framed, p, shared),
            Packet::PubRel(ack) => framed.queue(&self.ingest.on_pubrel(ack.packet_id), v),
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
                let (ack, send_retained) = self.subscribe(&sub, denied, shared);
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
                    .map(|f| {
                        let gone = self.outbound.as_mut().is_some_and(|o| o.unsubscribe(f));
                        if gone {
                            reason::SUCCESS
                        } else {
                            reason::NO_SUBSCRIPTION_EXISTED
                        }
                    })
                    .collect();
                let ack = SubAck {
                    packet_id: u.packet_id,
                    properties: Properties::default(),
                    codes,
                };
                framed.queue(&Packet::UnsubAck(ack), v);
            }
            Packet::PubAck(ack) => {
                if let Some(out) = self.outbound.as_mut() {
                    out.acked(ack.packet_id, &shared.journal);
                }
            }
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

    /// A PUBLISH: the ingest path's checks, this connection's authorization,
    /// then the ingest path again.
    fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        p: Publish,
        shared: &Shared,
    ) -> Result<Step, CloseReason> {
        let p = match self.ingest.admit(p, &shared.pipeline)? {
            Admit::Go(p) => p,
            Admit::Done(answer) => {
                if let Some(packet) = answer {
                    framed.queue(&packet, self.version);
                }
                return Ok(Step::Continue);
            }
        };
        match self.authorize(Access::Publish, &p.topic, shared) {
            Authz::Allow => {}
            Authz::Deny(why) => {
                metrics::counter!(m::ACL_DENIED, "action" => "publish").increment(1);
                if self.version == Version::V311 {
                    self.note_denied(&why);
                    return Err(CloseReason::NotAuthorized(why));
                }
                self.ingest
                    .refuse(&p, reason::NOT_AUTHORIZED, "not_authorized", why)?;
                return Ok(Step::Continue);
            }
            Authz::Ask => {
                let topic = p.topic.clone();
                self.ask_hook(Packet::Publish(p), Access::Publish, topic, shared);
                return Ok(Step::Pause);
            }
        }
        let who = Publisher {
            device_id: &self.device_id,
            client_id: self.client_id.as_deref().unwrap_or(&self.device_id),
        };
        Ok(self.ingest.produce(p, &who, &shared.pipeline)?.into())
    }
}

/// Resolves when the session is taken over (never, before it is registered).
async fn notified(kick: &Option<Arc<Notify>>) {
    match kick {
        Some(k) => k.notified().await,
        None => std::future::pending().await,
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
