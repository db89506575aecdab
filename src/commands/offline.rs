//! The offline index: commands for devices with persistent sessions that are
//! not connected to this replica, kept until the device connects (here),
//! some replica reports an outcome for them (a receipt), or they age out.
//!
//! Every replica reads every command, so every replica holds every
//! undelivered command: a device may reconnect to any of them. The index is
//! bounded per device (oldest dropped first) and by age, and is rebuilt from
//! the commands and receipts topics at start-up, so a restarted replica
//! loses nothing that is still deliverable.

use std::collections::VecDeque;

use dashmap::DashMap;

use super::table::Command;

/// Undelivered commands of devices not connected here.
pub struct OfflineIndex {
    map: DashMap<String, VecDeque<Box<Command>>>,
    max_per_device: usize,
    max_age_ms: i64,
}

impl OfflineIndex {
    /// An empty index with its bounds.
    pub fn new(max_per_device: usize, max_age_ms: i64) -> OfflineIndex {
        OfflineIndex {
            map: DashMap::new(),
            max_per_device,
            max_age_ms,
        }
    }

    fn stale(&self, c: &Command, now_ms: i64) -> bool {
        c.expires_at_ms.is_some_and(|at| at <= now_ms) || c.created_ms + self.max_age_ms <= now_ms
    }

    /// Holds a command; returns the ones that fell out for this device
    /// (over the per-device bound, or too old), oldest first.
    pub fn hold(&self, cmd: Box<Command>, now_ms: i64) -> Vec<Box<Command>> {
        let mut q = self.map.entry(cmd.device_id.clone()).or_default();
        q.push_back(cmd);
        let mut dropped = Vec::new();
        while q.len() > self.max_per_device || q.front().is_some_and(|c| self.stale(c, now_ms)) {
            dropped.extend(q.pop_front());
        }
        dropped
    }

    /// Removes every command that expired or aged out, all devices.
    pub fn sweep(&self, now_ms: i64) -> Vec<Box<Command>> {
        let mut gone = Vec::new();
        self.map.retain(|_, q| {
            let (stale, keep): (Vec<_>, Vec<_>) = q.drain(..).partition(|c| self.stale(c, now_ms));
            gone.extend(stale);
            q.extend(keep);
            !q.is_empty()
        });
        gone
    }

    /// Forgets a command some replica has reported an outcome for.
    pub fn settle(&self, device_id: &str, source: &(String, i32, i64)) {
        let empty = match self.map.get_mut(device_id) {
            Some(mut q) => {
                q.retain(|c| &c.source != source);
                q.is_empty()
            }
            None => return,
        };
        if empty {
            self.map.remove_if(device_id, |_, q| q.is_empty());
        }
    }

    /// Takes a device's commands: (still deliverable, expired or aged out),
    /// oldest first.
    pub fn take(&self, device_id: &str, now_ms: i64) -> (Vec<Box<Command>>, Vec<Box<Command>>) {
        match self.map.remove(device_id) {
            Some((_, q)) => q.into_iter().partition(|c| !self.stale(c, now_ms)),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Whether commands are held for `device_id`.
    pub fn holds(&self, device_id: &str) -> bool {
        self.map.contains_key(device_id)
    }

    /// Commands held, all devices.
    pub fn len(&self) -> usize {
        self.map.iter().map(|q| q.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(device: &str, offset: i64, created_ms: i64, expires_at_ms: Option<i64>) -> Box<Command> {
        Box::new(Command {
            device_id: device.into(),
            mqtt_topic: format!("devices/{device}/commands/x"),
            payload: bytes::Bytes::from_static(b"x"),
            qos: crate::mqtt::packet::QoS::AtLeastOnce,
            expires_at_ms,
            command_id: None,
            source: ("iot.commands".into(), 0, offset),
            created_ms,
            retain: false,
        })
    }

    #[test]
    fn bounded_per_device_oldest_first() {
        let idx = OfflineIndex::new(2, 1_000_000);
        assert!(idx.hold(cmd("d", 1, 0, None), 0).is_empty());
        assert!(idx.hold(cmd("d", 2, 0, None), 0).is_empty());
        let fell: Vec<i64> = idx
            .hold(cmd("d", 3, 0, None), 0)
            .iter()
            .map(|c| c.source.2)
            .collect();
        assert_eq!(fell, [1]);
        let offsets: Vec<i64> = idx.take("d", 0).0.iter().map(|c| c.source.2).collect();
        assert_eq!(offsets, [2, 3]);
        assert!(idx.is_empty());
    }

    #[test]
    fn settled_expired_and_aged_commands_are_not_handed_out() {
        let idx = OfflineIndex::new(10, 100);
        idx.hold(cmd("d", 1, 0, None), 0);
        idx.hold(cmd("d", 2, 0, Some(50)), 0);
        idx.hold(cmd("d", 3, 60, None), 60);
        idx.hold(cmd("d", 4, 60, None), 60);
        idx.settle("d", &("iot.commands".into(), 0, 4));
        // At 120: 1 is older than 100 ms, 2 expired at 50, 4 was settled.
        let (ok, stale) = idx.take("d", 120);
        let offsets = |v: &[Box<Command>]| v.iter().map(|c| c.source.2).collect::<Vec<_>>();
        assert_eq!(offsets(&ok), [3]);
        assert_eq!(offsets(&stale), [1, 2]);
    }

    #[test]
    fn a_sweep_removes_what_aged_out_everywhere() {
        let idx = OfflineIndex::new(10, 100);
        idx.hold(cmd("a", 1, 0, None), 0);
        idx.hold(cmd("b", 2, 0, Some(500)), 0);
        idx.hold(cmd("b", 3, 90, None), 90);
        let mut gone: Vec<i64> = idx.sweep(150).iter().map(|c| c.source.2).collect();
        gone.sort_unstable();
        assert_eq!(gone, [1, 2], "older than 100 ms, whatever their own expiry");
        assert_eq!(idx.len(), 1, "b's command from t=90 is still young");
    }
}
