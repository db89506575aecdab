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
use std::task::{Context, Poll};

use bytes::Bytes;
use dashmap::DashMap;
use futures::task::AtomicWaker;

use super::queue::{Sender, TrySendError};
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
    commands: Option<Sender>,
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
pub struct SessionTable {
    /// Keyed by the same `Arc<str>` the connection and the owners map hold:
    /// one allocation per device id.
    map: DashMap<Arc<str>, Entry>,
    next_generation: AtomicU64,
    /// Delayed wills (5.0 Will Delay Interval): client id → when it disconnected.
    /// A connect of the client id, here or announced by another replica,
    /// cancels its will.
    pending_wills: DashMap<String, i64>,
    /// Client ids whose last connect (from the sessions topic) was to this
    /// replica, with when they connected or (here) disconnected: this
    /// replica reports what happens to their offline commands. Only this
    /// replica's devices: a connect announced by another replica removes
    /// the entry, so a replica holds its share of the fleet, not the whole
    /// fleet. Pruned by age ([`SessionTable::prune_owners`]).
    owned: DashMap<Arc<str>, i64>,
    /// This replica's name, as announced on the sessions topic.
    replica: Arc<str>,
}

impl SessionTable {
    /// The table of the replica called `replica`.
    pub fn new(replica: &str) -> SessionTable {
        SessionTable {
            map: DashMap::new(),
            next_generation: AtomicU64::new(0),
            pending_wills: DashMap::new(),
            owned: DashMap::new(),
            replica: Arc::from(replica),
        }
    }

    /// Registers a session; an existing one with the same client id is kicked.
    pub fn register(
        &self,
        client_id: &str,
        connected_at_ms: i64,
        commands: Option<Sender>,
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
    pub fn set_commands(&self, client_id: &str, generation: u64, tx: Sender) {
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
                Err(TrySendError::Full(cmd)) => Offer::QueueFull(cmd),
                // The connection just ended; it is gone from here in a moment.
                Err(TrySendError::Closed(cmd)) => Offer::NotHere(cmd),
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

    /// Records that `client_id` connected to `replica` at `at_ms`: this
    /// replica owns it now, or no longer does.
    pub fn note_owner(&self, client_id: &str, replica: &str, at_ms: i64) {
        if replica != &*self.replica {
            self.owned.remove(client_id);
            return;
        }
        if let Some(mut at) = self.owned.get_mut(client_id) {
            *at = at_ms;
            return;
        }
        // A device connected here shares the table's key.
        let key = match self.map.get(client_id) {
            Some(e) => e.key().clone(),
            None => Arc::from(client_id),
        };
        self.owned.insert(key, at_ms);
    }

    /// `client_id` disconnected from this replica at `at_ms`: if this
    /// replica still owns it, its age counts from now.
    pub fn touch_owner(&self, client_id: &str, at_ms: i64) {
        if let Some(mut at) = self.owned.get_mut(client_id) {
            *at = (*at).max(at_ms);
        }
    }

    /// Whether this replica is the one `client_id` last connected to.
    pub fn owns(&self, client_id: &str) -> bool {
        self.owned.contains_key(client_id)
    }

    /// Forgets the devices owned here last seen before `before_ms`, except
    /// those connected here and those `keep` names (commands still held for
    /// them). Returns how many are left.
    pub fn prune_owners(&self, before_ms: i64, keep: impl Fn(&str) -> bool) -> usize {
        self.owned
            .retain(|id, at| *at >= before_ms || self.map.contains_key(id) || keep(id));
        self.owned.len()
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
        let t = SessionTable::new("r1");
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

    #[test]
    fn commands_reach_subscribed_sessions_only() {
        let t = SessionTable::new("r1");
        assert!(matches!(t.offer(cmd("d")), Offer::NotHere(_)));
        let r = t.register("d", 1, None);
        assert!(matches!(t.offer(cmd("d")), Offer::NotSubscribed(_)));
        let (tx, mut rx) = crate::commands::queue::channel(1);
        t.set_commands("d", r.generation, tx);
        assert_eq!(t.offer(cmd("d")), Offer::Queued);
        assert!(matches!(t.offer(cmd("d")), Offer::QueueFull(_)));
        assert_eq!(rx.try_recv().unwrap().device_id, "d");
    }

    #[test]
    fn a_reconnect_here_or_elsewhere_cancels_a_held_will() {
        let t = SessionTable::new("r1");
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
        let t = SessionTable::new("r1");
        t.register("d", 100, None);
        assert!(!t.kick_if_older("d", 99));
        assert!(t.kick_if_older("d", 100));
        assert!(!t.kick_if_older("other", 1000));
    }

    #[test]
    fn owners_are_pruned_by_age_unless_connected_here_or_commands_wait() {
        let t = SessionTable::new("r1");
        t.note_owner("old", "r1", 100);
        t.note_owner("waiting", "r1", 100);
        t.note_owner("here", "r1", 100);
        t.note_owner("recent", "r1", 900);
        let _here = t.register("here", 100, None);
        let left = t.prune_owners(500, |id| id == "waiting");
        assert_eq!(left, 3);
        assert!(!t.owns("old"), "silent longer than the age: forgotten");
        assert!(t.owns("waiting"), "commands held for it");
        assert!(t.owns("here"), "connected here");
        assert!(t.owns("recent"));
        // Without anything held, it goes at the next prune.
        assert_eq!(t.prune_owners(500, |_| false), 2);
        assert!(!t.owns("waiting"));
    }

    #[test]
    fn a_replica_keeps_only_its_own_devices_and_a_disconnect_restarts_their_age() {
        let t = SessionTable::new("r1");
        t.note_owner("mine", "r1", 100);
        t.note_owner("theirs", "r2", 100);
        assert!(t.owns("mine") && !t.owns("theirs"));
        t.touch_owner("mine", 1_000);
        // Not owned here: a disconnect seen here changes nothing.
        t.touch_owner("theirs", 1_000);
        assert!(!t.owns("theirs"));
        assert_eq!(t.prune_owners(500, |_| false), 1, "the touch kept `mine`");
        // A newer connect elsewhere moves ownership away, and back.
        t.note_owner("mine", "r3", 2_000);
        assert!(!t.owns("mine"));
        assert_eq!(t.prune_owners(0, |_| false), 0, "nothing else is held");
        t.note_owner("mine", "r1", 3_000);
        assert!(t.owns("mine"));
    }
}
