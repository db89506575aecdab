//! One connection's side of the Kafka → device path: the filters it
//! subscribed to, the queue the consumer fills for it (through the session
//! table), and the QoS 1 commands written and not yet acknowledged. The
//! connection task owns it, allocated on the first granted SUBSCRIBE (or at
//! CONNECT for a persistent session), and writes what [`Outbound::deliver`]
//! returns; every command ends with exactly one receipt.

use std::collections::VecDeque;

use super::journal::{Journal, Status};
use super::queue::{self, Receiver, Sender};
use super::table::{Command, SessionTable};
use super::CommandsConfig;
use crate::auth::acl::{self, Subject};
use crate::kafka::now_ms;
use crate::metrics as m;
use crate::mqtt::packet::*;
use crate::mqtt::topic;

/// Commands state of a session with at least one subscription.
pub struct Outbound {
    /// Granted filters with their maximum QoS.
    subscriptions: Vec<(String, QoS)>,
    /// Commands the consumer queued for this connection.
    rx: Receiver,
    /// QoS 1 commands sent and not yet acknowledged, by packet id.
    unacked: VecDeque<(u16, Box<Command>)>,
    next_id: u16,
}

/// The command filters `commands.subscribe_filters` allows this device,
/// rendered like ACL templates: a device id that is empty or holds `/`,
/// `+` or `#` gets none (it would otherwise widen the filter to other
/// devices' topics).
pub fn allowed_filters<'a>(
    cfg: &'a CommandsConfig,
    who: &'a Subject<'a>,
) -> impl Iterator<Item = String> + 'a {
    cfg.subscribe_filters
        .iter()
        .filter_map(|t| acl::render(t, who))
}

impl Outbound {
    /// An empty outbound state with a queue of `commands.max_queued_per_device`.
    pub fn new(cfg: &CommandsConfig) -> (Sender, Box<Outbound>) {
        let (tx, rx) = queue::channel(cfg.max_queued_per_device);
        let out = Box::new(Outbound {
            subscriptions: Vec::new(),
            rx,
            unacked: VecDeque::new(),
            next_id: 1,
        });
        (tx, out)
    }

    /// A persistent session (3.1.1 clean session 0, 5.0 session expiry > 0)
    /// is subscribed to the device's allowed command filters from the
    /// start: the proxy keeps no subscriptions between connections, and
    /// such a device does not resubscribe.
    pub fn persistent(cfg: &CommandsConfig, who: &Subject<'_>) -> (Sender, Box<Outbound>) {
        let (tx, mut out) = Outbound::new(cfg);
        out.subscriptions = allowed_filters(cfg, who)
            .map(|f| (f, QoS::AtLeastOnce))
            .collect();
        (tx, out)
    }

    /// Whether another command may be written now (the client's Receive Maximum).
    pub fn can_send(&self, receive_max: u16) -> bool {
        self.unacked.len() < receive_max as usize
    }

    /// The next queued command.
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Box<Command>> {
        self.rx.poll_recv(cx)
    }

    /// Grants `filter` at `qos` (at most 1). Returns whether it is new.
    pub fn grant(&mut self, filter: &str, qos: QoS) -> bool {
        let existed = self.has(filter);
        self.subscriptions.retain(|(g, _)| g != filter);
        self.subscriptions
            .push((filter.to_owned(), qos.min(QoS::AtLeastOnce)));
        !existed
    }

    /// Whether `filter` is one of the granted subscriptions.
    pub fn has(&self, filter: &str) -> bool {
        self.subscriptions.iter().any(|(g, _)| g == filter)
    }

    /// Removes `filter`; false when there was no such subscription.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|(g, _)| g != filter);
        self.subscriptions.len() != before
    }

    /// The PUBLISH for one command, or `None` with the receipt written
    /// (expired, not subscribed, too large for the device: `fits` says
    /// whether a packet is within the client's Maximum Packet Size).
    pub fn deliver(
        &mut self,
        cmd: Box<Command>,
        version: Version,
        journal: &Journal,
        fits: impl FnOnce(&Packet) -> bool,
    ) -> Option<Packet> {
        let now = now_ms();
        if cmd.expires_at_ms.is_some_and(|at| at <= now) {
            journal.receipt(&cmd, Status::Expired, "expired before delivery");
            return None;
        }
        let Some(granted) = self
            .subscriptions
            .iter()
            .filter(|(f, _)| topic::matches(f, &cmd.mqtt_topic))
            .map(|(_, q)| *q)
            .max()
        else {
            journal.receipt(
                &cmd,
                Status::NotSubscribed,
                "no subscription matches the command topic",
            );
            return None;
        };
        let qos = cmd.qos.min(granted);
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            // Next id not in use by an unacknowledged command.
            let mut id = self.next_id;
            while self.unacked.iter().any(|(u, _)| *u == id) {
                id = id.checked_add(1).unwrap_or(1);
            }
            self.next_id = id.checked_add(1).unwrap_or(1);
            id
        };
        let properties = Properties {
            // 5.0: the remaining lifetime travels with the message [MQTT-3.3.2-6].
            message_expiry_interval: cmd
                .expires_at_ms
                .filter(|_| version == Version::V5)
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
        if !fits(&publish) {
            journal.receipt(
                &cmd,
                Status::Dropped,
                "larger than the device's maximum packet size",
            );
            return None;
        }
        if qos == QoS::AtMostOnce {
            journal.receipt(&cmd, Status::Delivered, "written at QoS 0");
        } else {
            self.unacked.push_back((packet_id, cmd));
        }
        Some(publish)
    }

    /// A PUBACK for a command: the device has it.
    pub fn acked(&mut self, packet_id: u16, journal: &Journal) {
        if let Some(pos) = self.unacked.iter().position(|(id, _)| *id == packet_id) {
            if let Some((_, cmd)) = self.unacked.remove(pos) {
                journal.receipt(&cmd, Status::Delivered, "acknowledged by the device");
            }
        }
    }

    /// At disconnect: every command still owed to the device gets a receipt.
    pub fn drop_all(&mut self, journal: &Journal) {
        for (_, cmd) in self.unacked.drain(..) {
            journal.receipt(
                &cmd,
                Status::Dropped,
                "device disconnected before acknowledging",
            );
        }
        self.rx.close();
        while let Some(cmd) = self.rx.try_recv() {
            journal.receipt(&cmd, Status::Dropped, "device disconnected before delivery");
        }
    }
}

/// What a SUBSCRIBE asks, with the authorization the connection decided.
pub struct SubscribeRequest<'a> {
    /// The packet.
    pub sub: &'a Subscribe,
    /// Per filter: why the ACL or hook refused it, if it did.
    pub denied: Vec<Option<String>>,
    /// The client's protocol version.
    pub version: Version,
    /// `mqtt.max_topic_bytes`.
    pub max_topic_bytes: usize,
    /// `mqtt.max_subscriptions`.
    pub max_subscriptions: usize,
}

/// What a SUBSCRIBE decided.
pub struct Granted {
    /// Per filter: the SUBACK code.
    pub codes: Vec<u8>,
    /// Why a filter was refused (the last reason), for the reason string.
    pub why: Option<&'static str>,
    /// Granted filters whose retained commands are to be sent (5.0 retain
    /// handling 0 always, 1 for a new subscription).
    pub send_retained: Vec<String>,
    /// ACL / hook refusals among the filters (the caller counts and logs them).
    pub denials: Vec<String>,
}

/// Grants the filters the configuration allows this device, refuses the
/// rest. `outbound` is allocated (and registered in the table) on the
/// first grant.
pub fn subscribe(
    req: SubscribeRequest<'_>,
    outbound: &mut Option<Box<Outbound>>,
    cfg: &CommandsConfig,
    who: &Subject<'_>,
    registration: (&SessionTable, u64),
) -> Granted {
    let v5 = req.version == Version::V5;
    let refused = if v5 {
        reason::NOT_AUTHORIZED
    } else {
        return_code::SUBACK_FAILURE
    };
    let invalid = if v5 {
        reason::TOPIC_FILTER_INVALID
    } else {
        return_code::SUBACK_FAILURE
    };
    let mut out = Granted {
        codes: Vec::with_capacity(req.sub.filters.len()),
        why: None,
        send_retained: Vec::new(),
        denials: Vec::new(),
    };
    for (f, denied) in req.sub.filters.iter().zip(req.denied) {
        let code = if !cfg.enabled {
            out.why = Some("commands are disabled on this proxy");
            refused
        } else if !topic::valid_filter(&f.filter) {
            out.why = Some("malformed topic filter");
            invalid
        } else if f.filter.starts_with("$share/") {
            out.why = Some("shared subscriptions are not supported");
            if v5 {
                reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else {
                return_code::SUBACK_FAILURE
            }
        } else if v5 && req.sub.properties.subscription_identifier.is_some() {
            out.why = Some("subscription identifiers are not supported");
            reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
        } else if f.filter.len() > req.max_topic_bytes {
            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "topic_length").increment(1);
            out.why = Some("topic filter longer than mqtt.max_topic_bytes");
            invalid
        } else if let Some(denial) = denied {
            metrics::counter!(m::ACL_DENIED, "action" => "subscribe").increment(1);
            out.denials.push(denial);
            out.why = Some("filter not authorized");
            refused
        } else if !allowed_filters(cfg, who).any(|a| topic::covers(&a, &f.filter)) {
            out.why = Some("filter not allowed for this device (commands.subscribe_filters)");
            refused
        } else if outbound
            .as_ref()
            .is_some_and(|o| o.subscriptions.len() >= req.max_subscriptions && !o.has(&f.filter))
        {
            metrics::counter!(m::LIMITS_EXCEEDED, "limit" => "subscriptions").increment(1);
            out.why = Some("more subscriptions than mqtt.max_subscriptions");
            if v5 {
                reason::QUOTA_EXCEEDED
            } else {
                return_code::SUBACK_FAILURE
            }
        } else {
            let qos = f.qos.min(QoS::AtLeastOnce);
            let o = outbound.get_or_insert_with(|| {
                let (tx, o) = Outbound::new(cfg);
                let (table, generation) = registration;
                table.set_commands(who.device_id, generation, tx);
                o
            });
            let new = o.grant(&f.filter, qos);
            if f.retain_handling == 0 || (f.retain_handling == 1 && new) {
                out.send_retained.push(f.filter.clone());
            }
            qos as u8
        };
        out.codes.push(code);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_id_with_wildcards_gets_no_command_filter() {
        let cfg = CommandsConfig::default();
        let who = |id| Subject {
            device_id: id,
            username: None,
            client_id: id,
        };
        let plain: Vec<String> = allowed_filters(&cfg, &who("d1")).collect();
        assert!(!plain.is_empty());
        assert!(plain.iter().all(|f| f.contains("d1")), "{plain:?}");
        for hostile in ["+", "#", "a/b", ""] {
            let got: Vec<String> = allowed_filters(&cfg, &who(hostile)).collect();
            assert!(
                got.iter().all(|f| !f.contains("{device_id}")) && got.len() < plain.len(),
                "{hostile:?} got {got:?}"
            );
        }
    }
}
