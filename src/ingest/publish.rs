//! One connection's device → Kafka path. The connection task decodes a
//! PUBLISH and calls [`Ingest::admit`] (protocol and limit checks that come
//! before authorization), authorizes the topic itself (ACL and hook are
//! shared with SUBSCRIBE), then calls [`Ingest::produce`]: rate limits,
//! route, record, hand-off to the producer. Kafka's delivery reports come
//! back through the in-flight window and [`Ingest::acknowledge`] turns
//! each into the PUBACK / PUBREC the device is owed, in arrival order.
//!
//! Flow control: a record that finds the producer queue full becomes the
//! one pending record and the connection stops reading until there is room
//! ([`Ingest::is_paused`]); so does a 3.1.1 connection over its rate limit
//! (until its throttle fires). A slow Kafka becomes TCP backpressure on the
//! device instead of memory in the proxy.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use futures::future::OptionFuture;
use tokio::sync::oneshot;

use super::inflight::{Held, Outcome, State, Window};
use super::limiter::Limiter;
use super::record;
use super::router::Router;
use super::PublishOrdering;
use crate::kafka::now_ms;
use crate::kafka::producer::{Delivery, Producer, Record, SendError};
use crate::limits::LimitsConfig;
use crate::metrics as m;
use crate::mqtt::error::ProtocolError;
use crate::mqtt::packet::*;

/// How long a connection whose record found the producer queue full waits
/// for a wake-up before trying again anyway. Wake-ups come one per
/// delivered record; this only bounds the wait if one is missed. Short
/// rechecks cost CPU exactly when Kafka is down and nothing is delivered:
/// with a recheck every 50 ms, 8 replicas holding 100,000 devices used
/// 1.3–1.5 cores while every broker was SIGSTOPped (fault matrix,
/// `kafka.queue_max_messages = 10000`).
const SPACE_RECHECK: Duration = Duration::from_secs(1);

/// What every connection of a replica shares on this path.
pub struct Pipeline {
    /// Topic → Kafka routing.
    pub router: Router,
    /// The replica's producer.
    pub producer: Producer,
    /// Per-connection publish rate limits.
    pub rate_limits: LimitsConfig,
    /// Inbound topic aliases per 5.0 connection (`mqtt.topic_alias_maximum`).
    pub topic_alias_maximum: u16,
    /// `mqtt.receive_maximum`.
    pub receive_maximum: u16,
    /// `mqtt.max_topic_bytes`.
    pub max_topic_bytes: usize,
    /// `mqtt.max_awaiting_rel`.
    pub max_awaiting_rel: usize,
    /// `mqtt.ordering`.
    pub ordering: PublishOrdering,
    /// With authentication on, the key is the authenticated device id,
    /// whatever the route's template says: no device writes under
    /// another's key.
    pub key_is_identity: bool,
}

impl Pipeline {
    /// The record key: the route's, or with authentication on the
    /// authenticated device id (`key_is_identity`).
    pub fn key<'a>(&self, route_key: Cow<'a, str>, device_id: &'a str) -> Cow<'a, str> {
        if self.key_is_identity {
            Cow::Borrowed(device_id)
        } else {
            route_key
        }
    }
}

/// Who is publishing, for the record's key and headers.
pub struct Publisher<'a> {
    /// The device id (Kafka key).
    pub device_id: &'a str,
    /// The MQTT client id (header `mqtt.client_id`).
    pub client_id: &'a str,
}

/// Why this path ends the connection.
#[derive(Debug)]
pub enum Failure {
    /// The client broke the protocol.
    Protocol(ProtocolError),
    /// A configured limit was exceeded (5.0 DISCONNECT code, what).
    Limit(u8, String),
    /// A PUBLISH was refused and the protocol gives no other way to say so.
    Refused(u8, String),
    /// Kafka did not take a QoS 1/2 record (3.1.1: closing makes the client resend).
    DeliveryFailed(String),
}

/// What [`Ingest::admit`] decided.
pub enum Admit {
    /// Authorize the topic, then [`Ingest::produce`].
    Go(Publish),
    /// Handled here (a QoS 2 resend, a 5.0 refusal acknowledged in order);
    /// write the packet if there is one.
    Done(Option<Packet>),
}

/// What [`Ingest::next_event`] reports.
pub enum Event {
    /// Kafka's outcome for the record at the head of the window.
    Outcome(Outcome),
    /// The producer queue may have room for the pending record.
    Space,
    /// A 3.1.1 throttle ended.
    Unthrottled,
}

/// Whether the connection may go on reading buffered packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop decoding for now (queue full, throttled).
    Pause,
}

/// A record that found the producer queue full, kept until there is room.
/// While one exists the socket is not read.
struct Pending {
    record: Held,
    delivery: Box<Delivery>,
    /// When the queue was found full, for the backpressure histogram.
    since: tokio::time::Instant,
}

/// One connection's state on the device → Kafka path.
pub struct Ingest {
    version: Version,
    /// QoS 1/2 PUBLISH packets owed an acknowledgement, in arrival order;
    /// under `mqtt.ordering = "strict"` also the records held behind the
    /// one Kafka has.
    inflight: Window,
    /// QoS 2 packet ids PUBREC'd and waiting for PUBREL.
    awaiting_rel: BTreeSet<u16>,
    /// Inbound 5.0 topic aliases, allocated on first use.
    aliases: Vec<Option<String>>,
    pending: Option<Box<Pending>>,
    /// Publish rate limits, when configured.
    limiter: Option<Box<Limiter>>,
    /// 3.1.1 over a rate limit: not read again until this fires.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Records handed to the producer.
    pub published: u64,
    /// PUBLISH packets refused (5.0 acks with an error code, records Kafka refused).
    pub refused: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
}

impl Ingest {
    /// The path of a connection that just got its CONNACK.
    pub fn new(version: Version, pipe: &Pipeline) -> Ingest {
        Ingest {
            version,
            inflight: Window::new(pipe.ordering),
            awaiting_rel: BTreeSet::new(),
            aliases: Vec::new(),
            pending: None,
            limiter: Limiter::new(&pipe.rate_limits),
            throttle: None,
            published: 0,
            refused: 0,
            dead_lettered: 0,
        }
    }

    /// True while a record waits for queue space or a 3.1.1 connection is
    /// throttled: the socket is not read.
    pub fn is_paused(&self) -> bool {
        self.pending.is_some() || self.throttle.is_some()
    }

    /// Whether the connection may read more packets now: 3.1.1 has no
    /// Receive Maximum, so the proxy stops reading at that many unacknowledged.
    pub fn has_room(&self, pipe: &Pipeline) -> bool {
        self.version == Version::V5 || self.inflight.len() < pipe.receive_maximum as usize
    }

    /// True when no acknowledgement is owed and no record waits.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.pending.is_none()
    }

    /// True when [`Ingest::next_event`] has something to wait for.
    pub fn has_events(&self) -> bool {
        !self.inflight.is_empty() || self.pending.is_some() || self.throttle.is_some()
    }

    /// The next thing this path needs the connection task for: a delivery
    /// outcome (write its acknowledgement), room in the producer queue (try
    /// the pending record again, [`Ingest::retry_pending`]), or the end of
    /// a 3.1.1 throttle (read again). Cancellation-safe: an outcome is taken
    /// only when it is ready, and the waits hold no data.
    pub async fn next_event(&mut self, pipe: &Pipeline) -> Event {
        let outcomes = !self.inflight.is_empty();
        // Boxed, and only built while a record waits: idle tasks stay small.
        let space = OptionFuture::from(
            self.pending
                .is_some()
                .then(|| Box::pin(pipe.producer.wait_for_space(SPACE_RECHECK))),
        );
        let throttled = self.throttle.is_some();
        tokio::select! {
            biased;
            outcome = self.inflight.next_outcome(), if outcomes => Event::Outcome(outcome),
            Some(()) = space => Event::Space,
            Some(()) = OptionFuture::from(self.throttle.as_mut()), if throttled => {
                self.throttle = None;
                Event::Unthrottled
            }
        }
    }

    /// An outcome that is ready now, if any.
    pub fn ready_outcome(&mut self) -> Option<Outcome> {
        self.inflight.ready_outcome()
    }

    /// PUBREL for a QoS 2 message: the PUBCOMP to write.
    pub fn on_pubrel(&mut self, packet_id: u16) -> Packet {
        let code = if self.awaiting_rel.remove(&packet_id) || self.version == Version::V311 {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        Packet::PubComp(Ack::new(packet_id, code))
    }

    /// The checks that come before authorization: topic alias, QoS 2
    /// resends, the QoS 2 and Receive Maximum bounds, reserved user
    /// properties, topic length.
    pub fn admit(&mut self, mut p: Publish, pipe: &Pipeline) -> Result<Admit, Failure> {
        metrics::counter!(m::PUBLISH_RECEIVED, "qos" => qos_label(p.qos)).increment(1);
        if let Some(alias) = p.properties.topic_alias {
            self.resolve_alias(&mut p.topic, alias, pipe.topic_alias_maximum)?;
        }
        if p.qos == QoS::ExactlyOnce {
            if self.awaiting_rel.contains(&p.packet_id) {
                // A resend before PUBREL: the record is already in Kafka [MQTT-4.3.3-9].
                return Ok(Admit::Done(Some(Packet::PubRec(Ack::new(p.packet_id, 0)))));
            }
            if self.inflight.has_qos2(p.packet_id) {
                // Already being produced; its PUBREC follows when Kafka has it.
                return Ok(Admit::Done(None));
            }
            if self.awaiting_rel.len() >= pipe.max_awaiting_rel {
                metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "awaiting_rel").increment(1);
                return Err(Failure::Limit(
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
            let max = pipe.receive_maximum;
            let unacked = self.inflight.len() + self.awaiting_rel.len();
            if unacked >= max as usize {
                return Err(Failure::Protocol(ProtocolError::ReceiveMaximumExceeded(
                    max,
                )));
            }
        }
        if self.version == Version::V5 {
            if let Some(name) = record::reserved_user_property(&p) {
                let why = format!("user property {name:?} uses the reserved prefix \"mqtt.\"");
                let code = reason::IMPLEMENTATION_SPECIFIC_ERROR;
                self.refuse(&p, code, "reserved_header", why)?;
                return Ok(Admit::Done(None));
            }
        }
        if p.topic.len() > pipe.max_topic_bytes {
            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "topic_length").increment(1);
            let why = format!(
                "topic of {} bytes is longer than mqtt.max_topic_bytes ({})",
                p.topic.len(),
                pipe.max_topic_bytes
            );
            self.refuse(&p, reason::TOPIC_NAME_INVALID, "topic_too_long", why)?;
            return Ok(Admit::Done(None));
        }
        Ok(Admit::Go(p))
    }

    /// An authorized PUBLISH: rate limits, route, record, producer.
    pub fn produce(
        &mut self,
        p: Publish,
        who: &Publisher<'_>,
        pipe: &Pipeline,
    ) -> Result<Flow, Failure> {
        let received_ms = now_ms();
        let mut next = Flow::Continue;
        if let Some(limiter) = self.limiter.as_mut() {
            let size = p.payload.len() as f64;
            let limits = &pipe.rate_limits;
            match self.version {
                Version::V5 => {
                    if let Some(b) = limiter.messages.as_mut() {
                        if !b.try_take(1.0) {
                            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "publish_rate")
                                .increment(1);
                            return Err(Failure::Limit(
                                reason::MESSAGE_RATE_TOO_HIGH,
                                format!(
                                    "more than {} PUBLISH per second (limits.publish_per_second)",
                                    limits.publish_per_second
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
                                limits.publish_bytes_per_second
                            );
                            self.refuse(&p, reason::QUOTA_EXCEEDED, "quota_exceeded", why)?;
                            return Ok(Flow::Continue);
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
                        next = Flow::Pause;
                    }
                }
            }
        }
        let Some(dest) = pipe.router.route(&p.topic, who.device_id) else {
            let why = format!("no route for topic {:?}", p.topic);
            self.refuse(&p, reason::TOPIC_NAME_INVALID, "no_route", why)?;
            return Ok(Flow::Continue);
        };
        let key = pipe.key(dest.key, who.device_id);
        if dest.dead_letter {
            metrics::counter!(m::PUBLISH_DEAD_LETTERED).increment(1);
            self.dead_lettered += 1;
            if self.dead_lettered == 1 {
                tracing::warn!(topic = %p.topic, kafka_topic = %dest.kafka_topic, "no route; record sent to the dead-letter topic (counted in the close line from now on)");
            }
        }
        let headers = record::headers(&p, &p.topic, who.client_id, self.version);
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
        match pipe.producer.send(rec, delivery) {
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
                Ok(Flow::Pause)
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

    /// Refuses one PUBLISH. 3.1.1 has no negative acknowledgement, so the
    /// connection closes; 5.0 QoS 1/2 get the reason code in their ack (in
    /// order with the others); 5.0 QoS 0 gets a DISCONNECT with it.
    pub fn refuse(
        &mut self,
        p: &Publish,
        code: u8,
        label: &'static str,
        why: String,
    ) -> Result<(), Failure> {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => label).increment(1);
        match (self.version, p.qos) {
            (Version::V311, _) | (Version::V5, QoS::AtMostOnce) => Err(Failure::Refused(code, why)),
            (Version::V5, qos) => {
                self.note_refusal(&why);
                self.inflight
                    .push(p.packet_id, qos, State::Refused(code, why));
                Ok(())
            }
        }
    }

    /// `strict`: hands the record at the head of the window to the producer
    /// once every record ahead of it is acknowledged. A full producer queue
    /// makes it the pending record (the socket is not read meanwhile).
    pub fn release_held(&mut self, pipe: &Pipeline) {
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
        self.send_held(*held, Box::new(Delivery::Ack(tx)), None, pipe);
    }

    /// The producer queue may have room: the pending record tries again,
    /// then (`strict`) the record held behind it.
    pub fn retry_pending(&mut self, pipe: &Pipeline) {
        if let Some(p) = self.pending.take() {
            self.send_held(p.record, p.delivery, Some(p.since), pipe);
        }
        self.release_held(pipe);
    }

    /// Hands a built record to the producer; a full queue makes it the
    /// pending record. `since`: when it first found the queue full.
    fn send_held(
        &mut self,
        held: Held,
        delivery: Box<Delivery>,
        since: Option<tokio::time::Instant>,
        pipe: &Pipeline,
    ) {
        let rec = Record {
            topic: &held.kafka_topic,
            key: held.key.as_bytes(),
            payload: &held.payload,
            headers: held.headers,
            timestamp_ms: held.timestamp_ms,
        };
        match pipe.producer.send(rec, delivery) {
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

    /// The acknowledgement at the head of the in-flight window. A failed
    /// delivery ends the connection on 3.1.1 (no negative ack, nothing to
    /// write) and under `mqtt.ordering = "strict"` (after the 5.0 negative
    /// ack, which is returned with the failure), so the device resends; the
    /// records held behind it are never produced. `problem_info`: whether
    /// the client may be sent reason strings.
    pub fn acknowledge(
        &mut self,
        outcome: Outcome,
        problem_info: bool,
    ) -> (Option<Packet>, Option<Failure>) {
        let Some((packet_id, qos)) = self.inflight.pop_front() else {
            return (None, None);
        };
        let code = outcome.code();
        let mut close = None;
        let properties = match outcome {
            Outcome::Delivered => Properties::default(),
            Outcome::Failed(why) if self.version == Version::V311 => {
                // No negative ack in 3.1.1: closing makes the client resend.
                return (None, Some(Failure::DeliveryFailed(why)));
            }
            Outcome::Failed(why) if self.inflight.is_strict() => {
                let properties = Properties::reason(self.version, problem_info, &why);
                close = Some(Failure::DeliveryFailed(format!(
                    "{why}; mqtt.ordering = \"strict\" closes the connection: {} record(s) held behind it were not produced, resend from this one",
                    self.inflight.held()
                )));
                properties
            }
            Outcome::Failed(why) | Outcome::Refused(_, why) => {
                Properties::reason(self.version, problem_info, &why)
            }
        };
        let ack = Ack {
            packet_id,
            reason: code,
            properties,
        };
        let packet = match qos {
            QoS::AtLeastOnce => Packet::PubAck(ack),
            _ => {
                if code == reason::SUCCESS {
                    self.awaiting_rel.insert(packet_id);
                }
                Packet::PubRec(ack)
            }
        };
        (Some(packet), close)
    }

    fn resolve_alias(&mut self, topic: &mut String, alias: u16, max: u16) -> Result<(), Failure> {
        if alias == 0 || alias > max {
            return Err(Failure::Protocol(ProtocolError::TopicAliasInvalid {
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
                None => return Err(Failure::Protocol(ProtocolError::TopicAliasUnknown(alias))),
            }
        } else {
            *slot = Some(topic.clone());
        }
        Ok(())
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
}

fn qos_label(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}
