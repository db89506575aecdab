//! Topic authorization of a connection's PUBLISH and SUBSCRIBE packets:
//! the ACL first, then the HTTP hook when configured for that action
//! (from its cache, or by holding the packet until the hook answers — the
//! socket is not read meanwhile, so order is kept).

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use super::close::CloseReason;
use super::connection::{Session, Shared, Step};
use super::framed::Framed;
use crate::auth::acl::{Access, Subject};
use crate::auth::config::{OnError, Permission};
use crate::auth::hook::{HookAction, HookRequest, HookVerdict};
use crate::mqtt::packet::Packet;

/// A connection's authorization state.
#[derive(Default)]
pub(super) struct Authorization {
    /// A PUBLISH / SUBSCRIBE waiting for the HTTP hook's answer.
    pub waiting: Option<Box<Authorizing>>,
    /// The hook's answers for the packet being re-run after `waiting`
    /// (a SUBSCRIBE may need several); cleared when that packet is done.
    pub answers: Vec<(Access, String, Permission)>,
    /// ACL / hook refusals on this connection (the first is logged at warn).
    pub denied: u64,
}

/// A packet held until the HTTP hook answers about its topic or filter.
pub(super) struct Authorizing {
    packet: Packet,
    access: Access,
    topic: String,
    /// The hook's answer.
    pub answer: Pin<Box<dyn Future<Output = HookVerdict> + Send>>,
}

/// The outcome of [`Session::authorize`].
pub(super) enum Authz {
    Allow,
    Deny(String),
    /// The hook must be asked first.
    Ask,
}

impl Session {
    /// Who the ACL templates and the hook see.
    pub(super) fn subject(&self) -> Subject<'_> {
        Subject {
            device_id: &self.device_id,
            username: self.username(),
            client_id: self.client_id(),
        }
    }

    /// Decides a topic (PUBLISH) or filter (SUBSCRIBE): ACL first, then the
    /// HTTP hook when configured for it (from its cache, or `Ask`).
    pub(super) fn authorize(&mut self, access: Access, topic: &str, shared: &Shared) -> Authz {
        if let Some((_, _, perm)) = self
            .authz
            .answers
            .iter()
            .find(|(a, t, _)| *a == access && t == topic)
        {
            return match perm {
                Permission::Allow => Authz::Allow,
                Permission::Deny => Authz::Deny(format!(
                    "{} {topic:?} denied by the auth service",
                    access.label()
                )),
            };
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
            username: self.username(),
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
    pub(super) fn ask_hook(
        &mut self,
        packet: Packet,
        access: Access,
        topic: String,
        shared: &Shared,
    ) {
        let Some(hook) = shared.auth.hook.clone() else {
            // authorize() only answers Ask when a hook exists.
            return;
        };
        let client_id = self.client_id().to_owned();
        let username = self.username().map(Box::<str>::from);
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
        self.authz.waiting = Some(Box::new(Authorizing {
            packet,
            access,
            topic,
            answer,
        }));
    }

    /// The hook answered: decide and handle the held packet.
    pub(super) fn authorized<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        verdict: HookVerdict,
        shared: &Shared,
    ) -> Result<Step, CloseReason> {
        let Some(held) = self.authz.waiting.take() else {
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
        self.authz.answers.push((access, topic, perm));
        let step = self.on_packet(framed, packet, shared);
        if self.authz.waiting.is_none() {
            self.authz.answers.clear();
        }
        step
    }

    /// Counts an authorization refusal; logs the first of the connection at
    /// warn, the rest at debug.
    pub(super) fn note_denied(&mut self, why: &str) {
        self.authz.denied += 1;
        if self.authz.denied == 1 {
            tracing::warn!(why, "not authorized (further refusals on this connection are logged at debug and counted in the close line)");
        } else {
            tracing::debug!(why, "not authorized");
        }
    }
}

fn hook_action(access: Access) -> HookAction {
    match access {
        Access::Publish => HookAction::Publish,
        Access::Subscribe => HookAction::Subscribe,
    }
}
