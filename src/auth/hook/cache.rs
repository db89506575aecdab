//! The hook's answer cache: allow and deny answers from the auth service,
//! kept for their TTL in a [`moka`] cache so that a reconnecting fleet or a
//! busy publisher asks the service once per question and TTL.
//! [`super::HttpHook`] looks here before every question and stores what the
//! service answered; unavailable answers never get here.
//!
//! The key is a 64-bit keyed digest of every field of the question but
//! `peer`; each entry also keeps the question itself, so a digest collision
//! is a miss, never another question's answer. The password is kept only as
//! a 128-bit keyed digest, never in clear.
//!
//! Time: each entry carries its deadline (`now` at store + TTL). moka
//! evicts it then by itself (per-entry expiry), and a read at or past it is
//! a miss that removes it. The `now` passed in is the cache's clock, so
//! tests can move it.
//!
//! Bound: at most `cache_max_entries` answers. A new question that finds the
//! cache full has expired answers swept out first; if it is still full of
//! fresh ones the new answer is simply not cached (counted, and logged at
//! most once a second). Concurrent misses can pass that check together;
//! moka's own capacity bound then evicts the overshoot.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::{HookAction, HookRequest, HookVerdict};
use crate::limits::LogThrottle;
use crate::metrics as m;

/// Longest TTL honoured, so `Instant + ttl` cannot overflow.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// At most one "cache full" warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Allow and deny answers by question; `Send + Sync`.
pub(super) struct AnswerCache {
    /// Question digest → answer. `Arc` so a hit clones a pointer, not the
    /// question's strings.
    answers: Cache<u64, Arc<Entry>>,
    /// How long an allow is reused; zero: not cached.
    allow_ttl: Duration,
    /// How long a deny is reused; zero: not cached.
    deny_ttl: Duration,
    /// Most cached answers.
    max_entries: usize,
    /// Keys the question digest (per process).
    key_hasher: RandomState,
    /// Key the two halves of the password digest (per process).
    password_hashers: [RandomState; 2],
    /// Origin of `earliest_expiry_ms`.
    epoch: Instant,
    /// No cached entry expires before this (ms since `epoch`; `u64::MAX`:
    /// none cached), so a full cache of fresh answers is not scanned on
    /// every miss.
    earliest_expiry_ms: AtomicU64,
    /// Answers not cached because the cache was full of fresh ones.
    full_skips: AtomicU64,
    /// Rate limit for the "cache full" warning.
    full_warn: LogThrottle,
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerCache")
            .field("entries", &self.answers.entry_count())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// One cached answer, with the question it answers.
struct Entry {
    action: HookAction,
    client_id: Box<str>,
    username: Option<Box<str>>,
    device_id: Option<Box<str>>,
    topic: Option<Box<str>>,
    /// Keyed digest of the password; the password itself is never kept.
    password: Option<u128>,
    verdict: HookVerdict,
    expires_at: Instant,
}

impl Entry {
    fn answers(&self, req: &HookRequest<'_>, password: Option<u128>) -> bool {
        self.action == req.action
            && *self.client_id == *req.client_id
            && self.username.as_deref() == req.username
            && self.device_id.as_deref() == req.device_id
            && self.topic.as_deref() == req.topic
            && self.password == password
    }
}

/// Tells moka to drop each entry at its own deadline.
struct Deadline;

impl Expiry<u64, Arc<Entry>> for Deadline {
    fn expire_after_create(
        &self,
        _key: &u64,
        entry: &Arc<Entry>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &u64,
        entry: &Arc<Entry>,
        updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(updated_at))
    }
}

impl AnswerCache {
    /// An empty cache; a zero TTL turns caching of that answer off, and
    /// `max_entries == 0` all caching.
    pub(super) fn new(allow_ttl: Duration, deny_ttl: Duration, max_entries: usize) -> Self {
        AnswerCache {
            answers: Cache::builder()
                .max_capacity(u64::try_from(max_entries).unwrap_or(u64::MAX))
                .expire_after(Deadline)
                .build(),
            allow_ttl: allow_ttl.min(MAX_TTL),
            deny_ttl: deny_ttl.min(MAX_TTL),
            max_entries,
            key_hasher: RandomState::new(),
            password_hashers: [RandomState::new(), RandomState::new()],
            epoch: Instant::now(),
            earliest_expiry_ms: AtomicU64::new(u64::MAX),
            full_skips: AtomicU64::new(0),
            full_warn: LogThrottle::new(WARN_INTERVAL),
        }
    }

    /// Entries cached, after moka has applied its pending inserts,
    /// removals and expiries (it counts them in batches).
    pub(super) fn len(&self) -> usize {
        self.answers.run_pending_tasks();
        usize::try_from(self.answers.entry_count()).unwrap_or(usize::MAX)
    }

    /// Answers not cached because the cache was full of fresh ones.
    #[cfg(test)]
    pub(super) fn full_skips(&self) -> u64 {
        self.full_skips.load(Ordering::Relaxed)
    }

    /// 128 bits from two independently keyed hashers. std's `RandomState`
    /// keys made on one thread differ only by an increment, so each half
    /// also hashes its own tag: two PRF outputs on distinct inputs. The
    /// digest only has to tell passwords for the same question apart; a
    /// collision (~2^-128 per guess, keys secret and per-process) would
    /// reuse another password's cached answer.
    pub(super) fn password_digest(&self, password: Option<&[u8]>) -> Option<u128> {
        let password = password?;
        let half = |hasher: &RandomState, tag: u8| {
            let mut h = hasher.build_hasher();
            h.write_u8(tag);
            password.hash(&mut h);
            h.finish()
        };
        let high = half(&self.password_hashers[0], 1);
        let low = half(&self.password_hashers[1], 2);
        Some(u128::from(high) << 64 | u128::from(low))
    }

    /// The cache key. 64 bits is enough: entries carry their full question.
    fn key_digest(&self, req: &HookRequest<'_>, password: Option<u128>) -> u64 {
        self.key_hasher.hash_one((
            req.action,
            req.client_id,
            req.username,
            req.device_id,
            req.topic,
            password,
        ))
    }

    fn ms_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A fresh cached answer as of `now`; an expired one is removed.
    pub(super) fn lookup(
        &self,
        req: &HookRequest<'_>,
        password: Option<u128>,
        now: Instant,
    ) -> Option<HookVerdict> {
        let key = self.key_digest(req, password);
        let entry = self.answers.get(&key)?;
        if !entry.answers(req, password) {
            return None;
        }
        if now < entry.expires_at {
            metrics::counter!(m::AUTH_HTTP_CACHE_HITS).increment(1);
            return Some(entry.verdict.clone());
        }
        self.remove_expired(key, now);
        None
    }

    /// Removes `key` if its answer has expired as of `now`. Decided under
    /// moka's per-key lock: a concurrent miss may have stored a fresh
    /// answer since it was read.
    fn remove_expired(&self, key: u64, now: Instant) {
        self.answers
            .entry(key)
            .and_compute_with(|current| match current {
                Some(entry) if now >= entry.value().expires_at => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Caches an allow or deny answered at `now`.
    pub(super) fn store(
        &self,
        req: &HookRequest<'_>,
        password: Option<u128>,
        verdict: &HookVerdict,
        now: Instant,
    ) {
        let ttl = match verdict {
            HookVerdict::Allow { .. } => self.allow_ttl,
            HookVerdict::Deny { .. } => self.deny_ttl,
            HookVerdict::Unavailable(_) => return,
        };
        if ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let Some(expires_at) = now.checked_add(ttl) else {
            return;
        };
        let key = self.key_digest(req, password);
        // Stores follow a round trip to the service, so settling moka's
        // count here (`len`) costs little next to it.
        if !self.answers.contains_key(&key) && self.len() >= self.max_entries {
            self.sweep(now);
            if self.len() >= self.max_entries {
                let skipped = self.full_skips.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.full_warn.allow_at(now) {
                    tracing::warn!(
                        max_entries = self.max_entries,
                        skipped_total = skipped,
                        suppressed,
                        "auth hook cache full of fresh answers; answer not cached"
                    );
                }
                return;
            }
        }
        self.answers.insert(
            key,
            Arc::new(Entry {
                action: req.action,
                client_id: req.client_id.into(),
                username: req.username.map(Into::into),
                device_id: req.device_id.map(Into::into),
                topic: req.topic.map(Into::into),
                password,
                verdict: verdict.clone(),
                expires_at,
            }),
        );
        // After the insert, so a concurrent sweep either sees the entry or
        // its expiry lands here after the sweep reset the mark.
        self.earliest_expiry_ms
            .fetch_min(self.ms_since_epoch(expires_at), Ordering::Relaxed);
    }

    /// Removes the answers expired as of `now`, unless none can have
    /// expired yet. moka drops entries at their deadline by its own clock;
    /// this catches up when `now` is ahead of the last time it did.
    fn sweep(&self, now: Instant) {
        if self.ms_since_epoch(now) < self.earliest_expiry_ms.load(Ordering::Relaxed) {
            return;
        }
        // Reset first: concurrent misses see no reason to scan too, and a
        // store racing the scan lowers the mark again itself.
        self.earliest_expiry_ms.store(u64::MAX, Ordering::Relaxed);
        let mut earliest = u64::MAX;
        for (key, entry) in &self.answers {
            if now >= entry.expires_at {
                self.remove_expired(*key, now);
            } else {
                earliest = earliest.min(self.ms_since_epoch(entry.expires_at));
            }
        }
        self.earliest_expiry_ms
            .fetch_min(earliest, Ordering::Relaxed);
    }
}
