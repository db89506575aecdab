//! The session table: which device is connected to this replica, sharded
//! (`DashMap`) by client id. The command consumer looks devices up here to
//! hand them commands; a new connection with a client id that is already
//! present kicks the old one out [MQTT-3.1.4-2], and so does a newer connect
//! announced by another replica on the sessions topic.
//!
//! Lock scope: no `DashMap` guard is ever held across an `.await` — handles
//! are cloned out first. Entries carry a generation, so a closing task can
//! only remove its own entry, never its successor's.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::mpsc;

use crate::mqtt::packet::QoS;

/// A command on its way to a device, decoded from a commands-topic record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The device (record key).
    pub device_id: String,
    /// MQTT topic to publish on.
    pub mqtt_topic: String,
    /// Payload, unchanged from the record value.
    pub payload: Bytes,
    /// Requested QoS (0 or 1).
    pub qos: QoS,
    /// When the command expires, ms since the epoch (record time + expiry).
    pub expires_at_ms: Option<i64>,
    /// The `command.id` header, echoed in the receipt.
    pub command_id: Option<String>,
    /// Where the record came from: topic, partition, offset.
    pub source: (String, i32, i64),
    /// The record's timestamp, ms since the epoch.
    pub created_ms: i64,
    /// A retained command (desired state), sent again on every SUBSCRIBE.
    pub retain: bool,
}

/// A connection's doorbell: the table rings it when a newer connect of
/// the client id takes over, or when the replica starts to drain. One
/// atomic and one waker for both causes, so a connection waiting between
/// packets holds no waiter registration of its own.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicU8,
    waker: AtomicWaker,
}

impl Doorbell {
    /// A newer connect of the same client id took over; stays rung.
    pub const TAKEN_OVER: u8 = 1;
    /// The replica drains; cleared when reported.
    pub const DRAIN: u8 = 2;

    /// Rings for `why` and wakes the connection.
    pub fn ring(&self, why: u8) {
        self.rung.fetch_or(why, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready with the causes in `mask` that have rung.
    pub fn poll(&self, cx: &mut Context<'_>, mask: u8) -> Poll<u8> {
        // Register before looking, so a ring between the two is not missed.
        self.waker.register(cx.waker());
        let rung = self.rung.load(Ordering::Acquire) & mask;
        if rung == 0 {
            return Poll::Pending;
        }
        if rung & Self::DRAIN != 0 {
            self.rung.fetch_and(!Self::DRAIN, Ordering::AcqRel);
        }
        Poll::Ready(rung)
    }
}

/// One connected session's handles.
struct Entry {
    generation: u64,
    connected_at_ms: i64,
    bell: Arc<Doorbell>,
    /// Present once the device has a granted subscription.
    commands: Option<mpsc::Sender<Box<Command>>>,
}

/// What a newly registered session holds.
pub struct Registration {
    /// Identifies this session's entry.
    pub generation: u64,
    /// Rung when the session is taken over or the replica drains.
    pub bell: Arc<Doorbell>,
    /// The client id as the table holds it, for the session to share.
    pub client_id: Arc<str>,
}

/// Result of offering a command to the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the connection.
    Queued,
    /// The device is connected here but has no subscription.
    NotSubscribed(Box<Command>),
    /// The connection's command queue is full.
    QueueFull(Box<Command>),
    /// The device is not connected to this replica.
    NotHere(Box<Command>),
}

/// Connected sessions of this replica.
#[derive(Default)]
pub struct SessionTable {
    /// Keyed by the same `Arc<str>` the connection and the owners map hold:
    /// one allocation per device id.
    map: DashMap<Arc<str>, Entry>,
    next_generation: AtomicU64,
    /// Delayed wills (5.0 Will Delay Interval): client id → when it disconnected.
    /// A connect of the client id, here or announced by another replica,
    /// cancels its will.
    pending_wills: DashMap<String, i64>,
    /// Client id → the replica it last connected to (from the sessions
    /// topic) and when it last connected or (here) disconnected: that
    /// replica reports what happens to its offline commands. Pruned by age
    /// ([`SessionTable::prune_owners`]).
    owners: DashMap<Arc<str>, Owner>,
    /// Replica names, interned: every owner names one of a few replicas.
    replicas: std::sync::RwLock<Vec<Arc<str>>>,
}

/// The replica a client id last connected to.
struct Owner {
    replica: Arc<str>,
    /// When it connected there, or disconnected from this replica.
    at_ms: i64,
}

impl SessionTable {
    /// Registers a session; an existing one with the same client id is kicked.
    pub fn register(
        &self,
        client_id: &str,
        connected_at_ms: i64,
        commands: Option<mpsc::Sender<Box<Command>>>,
    ) -> Registration {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let bell = Arc::new(Doorbell::default());
        let key: Arc<str> = Arc::from(client_id);
        let old = self.map.insert(
            key.clone(),
            Entry {
                generation,
                connected_at_ms,
                bell: bell.clone(),
                commands,
            },
        );
        if let Some(old) = old {
            old.bell.ring(Doorbell::TAKEN_OVER);
        }
        self.pending_wills.remove(client_id);
        Registration {
            generation,
            bell,
            client_id: key,
        }
    }

    /// Attaches the command queue of a session that now has a subscription.
    pub fn set_commands(&self, client_id: &str, generation: u64, tx: mpsc::Sender<Box<Command>>) {
        if let Some(mut e) = self.map.get_mut(client_id) {
            if e.generation == generation {
                e.commands = Some(tx);
            }
        }
    }

    /// Removes a session's entry, unless a newer session replaced it.
    pub fn deregister(&self, client_id: &str, generation: u64) {
        self.map
            .remove_if(client_id, |_, e| e.generation == generation);
    }

    /// Hands a command to the device's connection, if it is here.
    pub fn offer(&self, cmd: Box<Command>) -> Offer {
        // Clone the sender out: the shard lock is released before sending.
        let tx = match self.map.get(cmd.device_id.as_str()) {
            None => return Offer::NotHere(cmd),
            Some(e) => e.commands.clone(),
        };
        match tx {
            None => Offer::NotSubscribed(cmd),
            Some(tx) => match tx.try_send(cmd) {
                Ok(()) => Offer::Queued,
                Err(mpsc::error::TrySendError::Full(cmd)) => Offer::QueueFull(cmd),
                // The connection just ended; it is gone from here in a moment.
                Err(mpsc::error::TrySendError::Closed(cmd)) => Offer::NotHere(cmd),
            },
        }
    }

    /// Holds the will of `client_id`, which disconnected at `at_ms`, until
    /// its delay passes.
    pub fn hold_will(&self, client_id: &str, at_ms: i64) {
        self.pending_wills.insert(client_id.to_owned(), at_ms);
    }

    /// After the delay: whether the held will is still due (no connect of
    /// the client id since), releasing it.
    pub fn release_will(&self, client_id: &str, at_ms: i64) -> bool {
        self.pending_wills
            .remove_if(client_id, |_, held| *held == at_ms)
            .is_some()
    }

    /// Kicks the local session of `client_id` if it connected before
    /// `remote_at_ms` (another replica announced a newer connect), and
    /// cancels a will held for it.
    pub fn kick_if_older(&self, client_id: &str, remote_at_ms: i64) -> bool {
        self.pending_wills
            .remove_if(client_id, |_, held| *held <= remote_at_ms);
        let bell = match self.map.get(client_id) {
            Some(e) if e.connected_at_ms <= remote_at_ms => e.bell.clone(),
            _ => return false,
        };
        bell.ring(Doorbell::TAKEN_OVER);
        true
    }

    /// Rings every connected session's doorbell: at shutdown, after the
    /// replica's cancellation token fired (a session registered after this
    /// pass sees that token instead).
    pub fn ring_all(&self, why: u8) {
        for e in self.map.iter() {
            e.bell.ring(why);
        }
    }

    /// Records that `client_id` connected to `replica` at `at_ms`.
    pub fn note_owner(&self, client_id: &str, replica: &str, at_ms: i64) {
        if let Some(mut o) = self.owners.get_mut(client_id) {
            if &*o.replica != replica {
                o.replica = self.intern(replica);
            }
            o.at_ms = at_ms;
            return;
        }
        let owner = Owner {
            replica: self.intern(replica),
            at_ms,
        };
        // A device connected here shares the table's key.
        let key = match self.map.get(client_id) {
            Some(e) => e.key().clone(),
            None => Arc::from(client_id),
        };
        self.owners.insert(key, owner);
    }

    /// The shared copy of a replica name.
    fn intern(&self, replica: &str) -> Arc<str> {
        let known = |names: &[Arc<str>]| names.iter().find(|n| &***n == replica).cloned();
        // A poisoned lock still holds a valid list: pushes cannot be half done.
        if let Some(name) = known(&self.replicas.read().unwrap_or_else(|e| e.into_inner())) {
            return name;
        }
        let mut names = self.replicas.write().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = known(&names) {
            return name;
        }
        let name: Arc<str> = Arc::from(replica);
        names.push(name.clone());
        name
    }

    /// `client_id` disconnected from `replica` at `at_ms`: if that replica
    /// is still its owner, its age counts from now.
    pub fn touch_owner(&self, client_id: &str, replica: &str, at_ms: i64) {
        if let Some(mut o) = self.owners.get_mut(client_id) {
            if &*o.replica == replica {
                o.at_ms = o.at_ms.max(at_ms);
            }
        }
    }

    /// Whether `replica` is the one `client_id` last connected to.
    pub fn owned_by(&self, client_id: &str, replica: &str) -> bool {
        self.owners
            .get(client_id)
            .is_some_and(|o| &*o.replica == replica)
    }

    /// Forgets the owners last seen before `before_ms`, except of client ids
    /// connected here and those `keep` names (commands still held for
    /// them). Returns how many owners are left.
    pub fn prune_owners(&self, before_ms: i64, keep: impl Fn(&str) -> bool) -> usize {
        self.owners
            .retain(|id, o| o.at_ms >= before_ms || self.map.contains_key(id) || keep(id));
        self.owners.len()
    }

    /// Whether `client_id` is connected here.
    pub fn contains(&self, client_id: &str) -> bool {
        self.map.contains_key(client_id)
    }

    /// Sessions connected here.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is connected here.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(device: &str) -> Box<Command> {
        Box::new(Command {
            device_id: device.into(),
            mqtt_topic: format!("devices/{device}/commands/x"),
            payload: Bytes::from_static(b"go"),
            qos: QoS::AtLeastOnce,
            expires_at_ms: None,
            command_id: None,
            source: ("iot.commands".into(), 0, 0),
            created_ms: 0,
            retain: false,
        })
    }

    #[tokio::test]
    async fn a_second_registration_kicks_the_first_and_a_stale_deregister_is_ignored() {
        let t = SessionTable::default();
        let first = t.register("d", 1, None);
        let second = t.register("d", 2, None);
        // The ring stays until polled, so the kick is not lost if nobody waits yet.
        let rung = std::future::poll_fn(|cx| first.bell.poll(cx, Doorbell::TAKEN_OVER)).await;
        assert_eq!(rung, Doorbell::TAKEN_OVER);
        assert!(second
            .bell
            .poll(
                &mut Context::from_waker(std::task::Waker::noop()),
                Doorbell::TAKEN_OVER
            )
            .is_pending());
        t.deregister("d", first.generation);
        assert_eq!(t.len(), 1, "the old task must not remove its successor");
        t.deregister("d", second.generation);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn commands_reach_subscribed_sessions_only() {
        let t = SessionTable::default();
        assert!(matches!(t.offer(cmd("d")), Offer::NotHere(_)));
        let r = t.register("d", 1, None);
        assert!(matches!(t.offer(cmd("d")), Offer::NotSubscribed(_)));
        let (tx, mut rx) = mpsc::channel(1);
        t.set_commands("d", r.generation, tx);
        assert_eq!(t.offer(cmd("d")), Offer::Queued);
        assert!(matches!(t.offer(cmd("d")), Offer::QueueFull(_)));
        assert_eq!(rx.recv().await.unwrap().device_id, "d");
    }

    #[test]
    fn a_reconnect_here_or_elsewhere_cancels_a_held_will() {
        let t = SessionTable::default();
        t.hold_will("d", 10);
        assert!(t.release_will("d", 10), "nobody came back: the will is due");
        t.hold_will("d", 20);
        t.register("d", 25, None);
        assert!(!t.release_will("d", 20), "reconnected here");
        t.hold_will("e", 30);
        t.kick_if_older("e", 31);
        assert!(!t.release_will("e", 30), "reconnected on another replica");
    }

    #[test]
    fn only_older_local_sessions_are_kicked_by_remote_connects() {
        let t = SessionTable::default();
        t.register("d", 100, None);
        assert!(!t.kick_if_older("d", 99));
        assert!(t.kick_if_older("d", 100));
        assert!(!t.kick_if_older("other", 1000));
    }

    #[test]
    fn owners_are_pruned_by_age_unless_connected_here_or_commands_wait() {
        let t = SessionTable::default();
        t.note_owner("old", "r1", 100);
        t.note_owner("waiting", "r1", 100);
        t.note_owner("here", "r1", 100);
        t.note_owner("recent", "r2", 900);
        let _here = t.register("here", 100, None);
        let left = t.prune_owners(500, |id| id == "waiting");
        assert_eq!(left, 3);
        assert!(
            !t.owned_by("old", "r1"),
            "silent longer than the age: forgotten"
        );
        assert!(t.owned_by("waiting", "r1"), "commands held for it");
        assert!(t.owned_by("here", "r1"), "connected here");
        assert!(t.owned_by("recent", "r2"));
        // Without anything held, it goes at the next prune.
        assert_eq!(t.prune_owners(500, |_| false), 2);
        assert!(!t.owned_by("waiting", "r1"));
    }

    #[test]
    fn a_disconnect_here_restarts_the_age_only_for_the_owner() {
        let t = SessionTable::default();
        t.note_owner("mine", "r1", 100);
        t.note_owner("moved", "r2", 100);
        t.touch_owner("mine", "r1", 1_000);
        // r1 is not the owner of `moved` any more: its disconnect changes nothing.
        t.touch_owner("moved", "r1", 1_000);
        assert_eq!(t.prune_owners(500, |_| false), 1);
        assert!(t.owned_by("mine", "r1"));
        assert!(!t.owned_by("moved", "r2"));
        // A newer connect elsewhere moves ownership.
        t.note_owner("mine", "r3", 2_000);
        assert!(!t.owned_by("mine", "r1") && t.owned_by("mine", "r3"));
    }
}
