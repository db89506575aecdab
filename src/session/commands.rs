//! The connection's calls into the Kafka → device path
//! ([`crate::commands`]): SUBSCRIBE decisions, writing a queued command,
//! and the Receive Maximum that bounds unacknowledged commands.

use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::Names;
use super::connection::{Session, Shared};
use super::framed::Framed;
use crate::auth::acl::Subject;
use crate::commands::outbound::{self, SubscribeRequest};
use crate::commands::{Command, Journal, Status};
use crate::mqtt::packet::{Properties, SubAck, Subscribe};

impl Session {
    /// Whether another command may be written now (the client's Receive Maximum).
    pub(super) fn can_send_command(&self) -> bool {
        self.outbound
            .as_ref()
            .is_some_and(|o| o.can_send(self.client_receive_max))
    }

    /// Decides a SUBSCRIBE with the commands path; returns the SUBACK and
    /// the filters whose retained commands follow it.
    pub(super) fn subscribe(
        &mut self,
        sub: &Subscribe,
        denied: Vec<Option<String>>,
        shared: &Shared,
    ) -> (SubAck, Vec<String>) {
        let req = SubscribeRequest {
            sub,
            denied,
            version: self.version,
            max_topic_bytes: shared.mqtt.max_topic_bytes,
            max_subscriptions: shared.mqtt.max_subscriptions,
        };
        let who = Subject {
            device_id: &self.device_id,
            username: Names::username(&self.names),
            client_id: Names::client_id(&self.names, &self.device_id),
        };
        let granted = outbound::subscribe(
            req,
            &mut self.outbound,
            &shared.commands,
            &who,
            (&shared.table, self.generation),
        );
        for denial in &granted.denials {
            self.note_denied(denial);
        }
        if let Some(why) = granted.why {
            tracing::info!(why, "SUBSCRIBE partly refused");
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            properties: granted
                .why
                .map(|w| Properties::reason(self.version, self.problem_info, w))
                .unwrap_or_default(),
            codes: granted.codes,
        };
        (ack, granted.send_retained)
    }

    /// Writes one command to the device, or records why not.
    pub(super) fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        cmd: Box<Command>,
        journal: &Journal,
    ) {
        let Some(out) = self.outbound.as_mut() else {
            return journal.receipt(&cmd, Status::NotSubscribed, "device has no subscription");
        };
        let version = self.version;
        if let Some(publish) = out.deliver(cmd, version, journal, |p| framed.fits(p, version)) {
            framed.queue(&publish, version);
        }
    }
}
