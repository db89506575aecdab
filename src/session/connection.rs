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
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::authorize::{Authorization, Authz};
use super::close::{log_close_before_connect, CloseReason};
use super::config::MqttConfig;
use super::connect::{read_connect, Names, PeerCert};
use super::framed::{Framed, WriteError};
use super::wake::{Loop, Served, Waits, Wake};
use super::will::HeldWill;
use crate::auth::acl::Access;
use crate::auth::Authenticator;
use crate::commands::offline::OfflineIndex;
use crate::commands::outbound::Outbound;
use crate::commands::retained::RetainedStore;
use crate::commands::{CommandsConfig, Doorbell, Journal, SessionTable};
use crate::ingest::publish::{Admit, Flow, Publisher};
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
    /// authenticated identity with it on. Kafka key, session-table key (the
    /// table's own copy, shared).
    pub(super) device_id: Arc<str>,
    /// The MQTT client id when it differs from `device_id`, and the CONNECT
    /// user name (kept for ACL templates and hook questions when
    /// authentication is on); absent on most connections.
    pub(super) names: Option<Box<Names>>,
    /// Ends the connection when the credentials expire (JWT `exp`).
    pub(super) expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// ACL / hook decisions, and a packet waiting for the hook.
    pub(super) authz: Authorization,
    /// Set while the buffer holds part of a packet: the rest must arrive by then.
    pub(super) partial_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// 1.5 × the keep-alive the client asked for, in ms; zero disables the check.
    pub(super) keep_alive_ms: u32,
    /// 5.0 Request Problem Information: may reason strings be sent.
    pub(super) problem_info: bool,
    /// The device → Kafka path of this connection.
    pub(super) ingest: Ingest,
    /// This session's entry in the session table.
    pub(super) generation: u64,
    /// Rung when a newer connect of the same client id takes over, or the replica drains.
    pub(super) bell: Arc<Doorbell>,
    /// The client's Receive Maximum: unacknowledged QoS 1 commands at once.
    pub(super) client_receive_max: u16,
    /// Subscriptions and commands, allocated on the first granted SUBSCRIBE.
    pub(super) outbound: Option<Box<Outbound>>,
    /// The last will and its delay, until a normal DISCONNECT discards it.
    pub(super) will: Option<Box<HeldWill>>,
    /// The client's address (behind a PROXY-protocol balancer, the real source).
    pub(super) peer: SocketAddr,
    /// When the CONNACK was sent.
    pub(super) started: Instant,
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

/// A connection answered with CONNACK, ready for [`run`].
pub struct Opened<S> {
    framed: Framed<S>,
    session: Session,
    /// The replica's connection permit, held until the connection ends.
    permit: OwnedSemaphorePermit,
}

/// Runs one connection to completion, from `opening` (the PROXY header,
/// the handshake and the CONNECT phase: see [`open`]) to its close.
///
/// The task is sized for an idle connection. Everything that is needed
/// only for a while is a boxed future that exists while it runs: the
/// opening, each busy spell ([`Session::serve`], in the connection's log
/// span) and the close. Between packets the task holds the socket, the
/// session, the keep-alive timer and the [`Waits`] future, and no span.
/// Not an `async fn`, and the loop is not in a function of its own: an
/// async function stores its arguments twice, and a moved-out local keeps
/// its slot in the task.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn run<S>(
    opening: Pin<Box<dyn Future<Output = Option<Opened<S>>> + Send>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        let Some(Opened {
            mut framed,
            mut session,
            permit: _permit,
        }) = opening.await
        else {
            return;
        };
        let keep_alive = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(keep_alive);
        let mut state = Loop {
            was_reading: false,
            draining: false,
            drain_at: None,
            input_ready: framed.has_buffered_input(),
        };
        let mut wake = None;
        let reason = loop {
            let busy = {
                let span = session.span();
                Box::pin(
                    session
                        .serve(
                            &mut framed,
                            &shared,
                            &cancel,
                            keep_alive.as_mut(),
                            &mut state,
                            wake,
                        )
                        .instrument(span),
                )
            };
            if let Served::Closed(reason) = busy.await {
                break reason;
            }
            // `serve` says Idle only while reading and not draining; the wait
            // below still takes those from the loop's state, not from that.
            let commands = !state.draining && session.can_send_command();
            wake = Some(
                Waits {
                    framed: &mut framed,
                    reading: state.was_reading,
                    keep_alive: (session.keep_alive_ms > 0).then_some(keep_alive.as_mut()),
                    bell: &session.bell,
                    drain: !state.draining && state.drain_at.is_none(),
                    drain_at: state.drain_at.as_mut(),
                    commands: session.outbound.as_deref_mut().filter(|_| commands),
                    expiry: session.expiry.as_mut(),
                    partial: session.partial_deadline.as_mut(),
                }
                .await,
            );
        };
        let close = {
            let span = session.span();
            Box::pin(session.close(framed, reason, &shared).instrument(span))
        };
        close.await;
    }
}

/// The handshake and the CONNECT phase under one deadline, up to the
/// CONNACK; `None` when the connection ended there (logged). `handshake`
/// turns the accepted TCP stream into the byte stream (identity for plain
/// TCP, TLS accept for TLS) and counts against the connect deadline.
pub async fn open<T, S, H>(
    tcp: T,
    peer: SocketAddr,
    proxied_cn: Option<String>,
    handshake: H,
    shared: &Shared,
    permit: OwnedSemaphorePermit,
) -> Option<Opened<S>>
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
    let opened = async move {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(shared.mqtt.connect_timeout_ms);
        let (stream, peer_cert) = match tokio::time::timeout_at(deadline, handshake(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CloseReason::TlsHandshake(e)),
            Err(_) => return Err(CloseReason::ConnectTimeout),
        };
        let mut framed = Framed::new(stream);
        let connect = read_connect(&mut framed, deadline, &shared.limits).await?;
        let session =
            Session::accept(&mut framed, connect, shared, peer, peer_cert, proxied_cn).await?;
        tracing::Span::current().record("client_id", session.client_id());
        if session
            .names
            .as_ref()
            .is_some_and(|n| n.client_id.is_some())
        {
            tracing::Span::current().record("device_id", &*session.device_id);
        }
        tracing::info!(
            protocol = if session.version == Version::V5 {
                "5.0"
            } else {
                "3.1.1"
            },
            keep_alive_s = session.keep_alive().as_secs_f32() / 1.5,
            "connection opened"
        );
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Ok(Opened {
            framed,
            session,
            permit,
        })
    };
    async move {
        opened
            .await
            .map_err(|reason| log_close_before_connect(&reason))
            .ok()
    }
    .instrument(span)
    .await
}

impl Session {
    /// The connection's log span: peer and client id (and the device id
    /// when it differs), built for each busy spell so that an idle
    /// connection holds none.
    fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "conn",
            peer = %self.peer,
            client_id = self.client_id(),
            device_id = tracing::field::Empty
        );
        if self.names.as_ref().is_some_and(|n| n.client_id.is_some()) {
            span.record("device_id", &*self.device_id);
        }
        span
    }

    /// The MQTT client id (the device id unless authentication set another).
    pub(super) fn client_id(&self) -> &str {
        Names::client_id(&self.names, &self.device_id)
    }

    /// The CONNECT user name, kept with authentication on.
    pub(super) fn username(&self) -> Option<&str> {
        Names::username(&self.names)
    }

    /// 1.5 × the keep-alive the client asked for; zero: no check.
    pub(super) fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms.into())
    }

    /// Whether the socket may be read: nothing waits for queue space, the
    /// hook or a throttle, and (3.1.1) the in-flight window has room.
    fn may_read(&self, shared: &Shared) -> bool {
        self.authz.waiting.is_none()
            && !self.ingest.is_paused()
            && self.ingest.has_room(&shared.pipeline)
    }

    /// One busy spell of the main loop: handles `wake` and whatever follows
    /// from it until the connection is idle again or ends.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        shared: &Shared,
        cancel: &CancellationToken,
        mut keep_alive: Pin<&mut tokio::time::Sleep>,
        st: &mut Loop,
        mut wake: Option<Wake>,
    ) -> Served {
        let write_timeout = Duration::from_millis(shared.mqtt.write_timeout_ms);
        loop {
            // A replica that started to drain before this session registered
            // rang no doorbell for it: the token says so instead.
            if wake.is_none() && !st.draining && st.drain_at.is_none() && cancel.is_cancelled() {
                wake = Some(Wake::Cancelled);
            }
            if let Some(w) = wake.take() {
                if let Err(reason) = self.on_wake(w, framed, shared, st) {
                    return Served::Closed(reason);
                }
                if let Err(e) = flush(framed, write_timeout).await {
                    return Served::Closed(CloseReason::Write(e));
                }
            }
            let reading = !st.draining && self.may_read(shared);
            // The keep-alive clock only runs while we read: a paused socket is our doing.
            if reading && !st.was_reading && self.keep_alive_ms > 0 {
                keep_alive
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.keep_alive());
            }
            st.was_reading = reading;
            if reading && st.input_ready {
                let (handled, drained) = match self.process_input(framed, shared) {
                    Ok(r) => r,
                    Err(reason) => return Served::Closed(reason),
                };
                if handled > 0 && self.keep_alive_ms > 0 {
                    keep_alive
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.keep_alive());
                }
                st.input_ready = !drained;
                if drained {
                    self.arm_partial_deadline(framed, shared, handled);
                }
                if let Err(e) = flush(framed, write_timeout).await {
                    return Served::Closed(CloseReason::Write(e));
                }
                continue;
            }
            if st.draining && self.ingest.is_idle() {
                return Served::Closed(CloseReason::Shutdown);
            }
            if !st.draining && !self.ingest.has_events() && self.authz.waiting.is_none() {
                return Served::Idle;
            }
            let commands = !st.draining && self.can_send_command();
            let waits = Waits {
                framed: &mut *framed,
                reading,
                keep_alive: (self.keep_alive_ms > 0).then_some(keep_alive.as_mut()),
                bell: &self.bell,
                drain: !st.draining && st.drain_at.is_none(),
                drain_at: st.drain_at.as_mut().filter(|_| !st.draining),
                commands: self.outbound.as_deref_mut().filter(|_| commands),
                expiry: self.expiry.as_mut(),
                partial: self.partial_deadline.as_mut(),
            };
            let has_events = self.ingest.has_events();
            let verdict = self.authz.waiting.as_mut().map(|a| a.answer.as_mut());
            // Outcomes and the hook's verdict first; then what an idle
            // connection waits for. The nested futures are cancellation-safe
            // (see `next_event` and `Waits`; the verdict is a boxed future
            // owned by the session).
            wake = Some(tokio::select! {
                biased;
                event = self.ingest.next_event(&shared.pipeline), if has_events => Wake::Ingest(event),
                Some(verdict) = OptionFuture::from(verdict) => Wake::Verdict(verdict),
                w = waits => w,
            });
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
            client_id: Names::client_id(&self.names, &self.device_id),
        };
        Ok(self.ingest.produce(p, &who, &shared.pipeline)?.into())
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
