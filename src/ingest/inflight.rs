//! The in-flight window of one connection: the QoS 1/2 PUBLISH packets the
//! device is owed an acknowledgement for, in the order they arrived (acks
//! go out in that order [MQTT-4.6.0-2]), and the `mqtt.ordering` rule for
//! how many of their records Kafka holds at once.
//!
//! `pipelined`: every record goes to the producer as soon as it is read.
//! `strict`: one record of the connection is in the producer's hands; the
//! ones behind it wait here ([`State::Held`]) and the connection releases
//! the next ([`Window::release_head`]) only once Kafka acknowledged the one
//! before. The window's length still counts every entry, so
//! `mqtt.receive_maximum` bounds held records exactly as it bounds
//! produced ones.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use rdkafka::message::OwnedHeaders;
use tokio::sync::oneshot;

use super::PublishOrdering;
use crate::kafka::producer::DeliveryOutcome;
use crate::mqtt::packet::{reason, QoS};

/// A record built from a PUBLISH and not yet handed to the producer (held
/// behind an earlier record, or waiting for room in the producer queue).
pub(super) struct Held {
    /// Kafka topic (from the route).
    pub kafka_topic: Arc<str>,
    /// Record key.
    pub key: String,
    /// Record value.
    pub payload: Bytes,
    /// MQTT metadata headers.
    pub headers: OwnedHeaders,
    /// When the proxy received the PUBLISH.
    pub timestamp_ms: i64,
}

/// One QoS 1/2 PUBLISH awaiting its acknowledgement.
pub(super) struct InFlight {
    pub packet_id: u16,
    pub qos: QoS,
    pub state: State,
}

/// Where an in-flight PUBLISH stands.
pub(super) enum State {
    /// Handed to the producer: waiting for Kafka's delivery report.
    Producing(oneshot::Receiver<DeliveryOutcome>),
    /// `strict` only: waiting for the records ahead of it to be acknowledged
    /// before it goes to the producer.
    Held(Box<Held>),
    /// Refused by the proxy (5.0): acknowledge with this reason code, in order.
    Refused(u8, String),
}

/// How the acknowledgement at the head of the window turned out.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka has the record.
    Delivered,
    /// The proxy refused the PUBLISH; nothing went to Kafka.
    Refused(u8, String),
    /// Kafka did not take the record (delivery timeout, producer refusal).
    Failed(String),
}

impl Outcome {
    fn from_report(report: Result<DeliveryOutcome, oneshot::error::RecvError>) -> Outcome {
        match report {
            Ok(Ok(())) => Outcome::Delivered,
            Ok(Err(e)) => Outcome::Failed(e),
            // The producer dropped the delivery: it refused the record.
            Err(_) => Outcome::Failed("record refused by the producer".into()),
        }
    }

    /// The MQTT reason code of the acknowledgement.
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Delivered => reason::SUCCESS,
            Outcome::Refused(code, _) => *code,
            Outcome::Failed(_) => reason::UNSPECIFIED_ERROR,
        }
    }
}

/// The in-flight window of one connection.
pub(super) struct Window {
    entries: VecDeque<InFlight>,
    strict: bool,
}

impl Window {
    pub fn new(ordering: PublishOrdering) -> Window {
        Window {
            entries: VecDeque::new(),
            strict: ordering == PublishOrdering::Strict,
        }
    }

    /// Whether this window follows `mqtt.ordering = "strict"`.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Entries owed an acknowledgement, held ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a QoS 2 PUBLISH with this packet id is already in the window.
    pub fn has_qos2(&self, packet_id: u16) -> bool {
        self.entries
            .iter()
            .any(|f| f.packet_id == packet_id && f.qos == QoS::ExactlyOnce)
    }

    /// Whether a new record must wait in the window (`strict`, and a record
    /// of this connection is with Kafka or waiting already).
    pub fn must_hold(&self) -> bool {
        self.strict
            && self
                .entries
                .iter()
                .any(|f| !matches!(f.state, State::Refused(..)))
    }

    pub fn push(&mut self, packet_id: u16, qos: QoS, state: State) {
        self.entries.push_back(InFlight {
            packet_id,
            qos,
            state,
        });
    }

    /// The outcome at the head of the window, once it is known.
    pub fn next_outcome(&mut self) -> NextOutcome<'_> {
        NextOutcome(&mut self.entries)
    }

    /// The outcome at the head of the window if it is already known.
    pub fn ready_outcome(&mut self) -> Option<Outcome> {
        let front = self.entries.front_mut()?;
        match &mut front.state {
            State::Refused(code, why) => Some(Outcome::Refused(*code, std::mem::take(why))),
            State::Held(_) => None,
            State::Producing(rx) => match rx.try_recv() {
                Ok(report) => Some(Outcome::from_report(Ok(report))),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => {
                    Some(Outcome::Failed("record refused by the producer".into()))
                }
            },
        }
    }

    /// Removes the acknowledged head: its packet id and QoS.
    pub fn pop_front(&mut self) -> Option<(u16, QoS)> {
        self.entries.pop_front().map(|f| (f.packet_id, f.qos))
    }

    /// If the head is a held record, marks it as producing and hands it out
    /// with the sender its delivery report goes to.
    pub fn release_head(&mut self) -> Option<(Box<Held>, oneshot::Sender<DeliveryOutcome>)> {
        let front = self.entries.front_mut()?;
        if !matches!(front.state, State::Held(_)) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        match std::mem::replace(&mut front.state, State::Producing(rx)) {
            State::Held(record) => Some((record, tx)),
            // Checked just above.
            _ => None,
        }
    }

    /// Records held in the window, never handed to Kafka.
    pub fn held(&self) -> usize {
        self.entries
            .iter()
            .filter(|f| matches!(f.state, State::Held(_)))
            .count()
    }

    /// Records of this window in the producer's hands right now.
    #[cfg(test)]
    fn producing(&self) -> usize {
        self.entries
            .iter()
            .filter(|f| matches!(f.state, State::Producing(_)))
            .count()
    }
}

/// The outcome at the head of the window. Cancellation-safe: an outcome is
/// consumed only when it is ready.
pub(super) struct NextOutcome<'a>(&'a mut VecDeque<InFlight>);

impl Future for NextOutcome<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(front) = self.get_mut().0.front_mut() else {
            return Poll::Pending;
        };
        match &mut front.state {
            State::Refused(code, why) => Poll::Ready(Outcome::Refused(*code, std::mem::take(why))),
            // Released by the connection once the head before it is acked;
            // never the head while this future is polled.
            State::Held(_) => Poll::Pending,
            State::Producing(rx) => Pin::new(rx).poll(cx).map(Outcome::from_report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(n: u8) -> State {
        State::Held(Box::new(Held {
            kafka_topic: "t".into(),
            key: "k".into(),
            payload: Bytes::from(vec![n]),
            headers: OwnedHeaders::new(),
            timestamp_ms: 0,
        }))
    }

    /// Drives the window the way the connection does in `strict` mode:
    /// publish → produce or hold; ack → pop, release the next.
    #[test]
    fn strict_window_hands_kafka_one_record_at_a_time_in_order() {
        let mut w = Window::new(PublishOrdering::Strict);
        let mut kafka = Vec::new();
        // First record: nothing ahead of it, produced at once.
        assert!(!w.must_hold());
        let (tx1, rx1) = oneshot::channel();
        w.push(1, QoS::AtLeastOnce, State::Producing(rx1));
        kafka.push(tx1);
        // The next three wait.
        for id in 2..=4 {
            assert!(w.must_hold());
            w.push(id, QoS::AtLeastOnce, held(id as u8));
        }
        assert_eq!((w.len(), w.producing(), w.held()), (4, 1, 3));
        assert!(w.release_head().is_none(), "the head is producing");
        assert_eq!(w.ready_outcome(), None);
        for id in 1..=4u16 {
            kafka.remove(0).send(Ok(())).unwrap();
            assert_eq!(w.ready_outcome(), Some(Outcome::Delivered));
            assert_eq!(w.pop_front(), Some((id, QoS::AtLeastOnce)));
            if let Some((record, tx)) = w.release_head() {
                assert_eq!(record.payload[0] as u16, id + 1, "released in order");
                kafka.push(tx);
            }
            assert!(w.producing() <= 1, "Kafka holds at most one record");
        }
        assert!(w.is_empty() && kafka.is_empty());
    }

    #[test]
    fn refusals_do_not_count_as_records_with_kafka() {
        let mut w = Window::new(PublishOrdering::Strict);
        w.push(1, QoS::AtLeastOnce, State::Refused(0x90, "no route".into()));
        assert!(!w.must_hold(), "a refused PUBLISH is not with Kafka");
        let (_tx, rx) = oneshot::channel();
        w.push(2, QoS::AtLeastOnce, State::Producing(rx));
        assert!(w.must_hold());
        assert_eq!(
            w.ready_outcome(),
            Some(Outcome::Refused(0x90, "no route".into()))
        );
    }

    #[test]
    fn pipelined_never_holds_and_a_dropped_delivery_is_a_failure() {
        let mut w = Window::new(PublishOrdering::Pipelined);
        let (tx, rx) = oneshot::channel::<DeliveryOutcome>();
        w.push(1, QoS::ExactlyOnce, State::Producing(rx));
        assert!(!w.must_hold());
        assert!(w.has_qos2(1) && !w.has_qos2(2));
        drop(tx);
        assert_eq!(w.ready_outcome().map(|o| o.code()), Some(0x80));
    }
}
