//! Rate limits: a token bucket, and the per-source-address connect limiter
//! the accept loops consult. Per-connection publish limits use
//! [`TokenBucket`] inside the connection task (no shared state).

use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: f64) -> bool {
        self.refill(Instant::now());
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if needed, and says how long until
    /// the debt is paid: the caller waits that long before reading more
    /// (throttling instead of refusing).
    pub fn take_or_wait(&mut self, n: f64) -> Option<Duration> {
        self.refill(Instant::now());
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// True when the bucket has refilled completely (nothing to remember).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// New connections per source address.
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<IpAddr, TokenBucket>,
}

impl SourceLimiter {
    /// `None` when the limit is off (rate 0).
    pub fn new(per_second: u32, burst: u32) -> Option<SourceLimiter> {
        (per_second > 0).then(|| SourceLimiter {
            rate: per_second as f64,
            burst: burst.max(1) as f64,
            buckets: DashMap::new(),
        })
    }

    /// Whether one more connection from `ip` may be served now.
    pub fn admit(&self, ip: IpAddr) -> bool {
        let mut bucket = self
            .buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst));
        bucket.try_take(1.0)
    }

    /// Forgets addresses whose bucket has refilled, so the map holds only
    /// recently busy sources. Called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// At most one log line per interval for an event that may repeat at line
/// rate (a connection flood, an auth service that stopped answering), with
/// the count of the lines held back.
pub struct LogThrottle {
    interval_ms: u64,
    /// Milliseconds since `origin` when the last line was allowed.
    last_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    origin: std::time::Instant,
}

impl LogThrottle {
    /// One line per `interval`.
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval_ms: interval.as_millis() as u64,
            last_ms: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            origin: std::time::Instant::now(),
        }
    }

    /// `Some(suppressed)` when a line may be written now, with how many were
    /// held back since the last one.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    /// [`allow`](Self::allow) as of `now`, for a caller that already read the
    /// clock (or a test that moves it).
    pub fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let since_origin = now.saturating_duration_since(self.origin).as_millis();
        // +interval so the very first event is logged.
        let now = u64::try_from(since_origin)
            .unwrap_or(u64::MAX)
            .saturating_add(self.interval_ms);
        let last = self.last_ms.load(Relaxed);
        if now.saturating_sub(last) >= self.interval_ms
            && self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// Rate limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// New connections accepted per second from one source address (token
    /// bucket); more are closed at once. 0 disables. Default 100.
    pub connects_per_second_per_source: u32,
    /// Burst of new connections from one source address. Default 500.
    pub connect_burst_per_source: u32,
    /// PUBLISH packets per second per connection; 0 disables. Over it, 5.0:
    /// DISCONNECT 0x96; 3.1.1: the socket is read slower. Default 0.
    pub publish_per_second: u32,
    /// Burst of PUBLISH packets. Default 100.
    pub publish_burst: u32,
    /// PUBLISH payload bytes per second per connection; 0 disables. Over it,
    /// 5.0: the PUBLISH is refused with 0x97 quota exceeded; 3.1.1: the
    /// socket is read slower. Default 0.
    pub publish_bytes_per_second: u64,
    /// Burst of payload bytes. Default 1048576.
    pub publish_burst_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connects_per_second_per_source: 100,
            connect_burst_per_source: 500,
            publish_per_second: 0,
            publish_burst: 100,
            publish_bytes_per_second: 0,
            publish_burst_bytes: 1_048_576,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_the_burst_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 5.0);
        for _ in 0..5 {
            assert!(b.try_take(1.0));
        }
        assert!(!b.try_take(1.0));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.try_take(1.0));
        assert!(!b.try_take(1.0));
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(b.try_take(1.0));
        }
        assert!(!b.try_take(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn debt_says_how_long_to_wait() {
        let mut b = TokenBucket::new(1000.0, 1000.0);
        assert_eq!(b.take_or_wait(1000.0), None);
        let wait = b.take_or_wait(500.0).unwrap();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(wait).await;
        assert_eq!(b.take_or_wait(0.0), None);
    }

    #[test]
    fn log_throttle_lets_the_first_line_through_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        let every = LogThrottle::new(Duration::ZERO);
        assert_eq!(every.allow(), Some(0));
        assert_eq!(every.allow(), Some(0));
    }

    #[test]
    fn log_throttle_lets_one_line_through_per_interval_with_a_count() {
        let limiter = LogThrottle::new(Duration::from_secs(1));
        let t0 = std::time::Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limiter.allow_at(at(0)), Some(0));
        assert_eq!(limiter.allow_at(at(10)), None);
        assert_eq!(limiter.allow_at(at(999)), None);
        assert_eq!(limiter.allow_at(at(1_000)), Some(2));
        assert_eq!(limiter.allow_at(at(1_500)), None);
        assert_eq!(limiter.allow_at(at(2_000)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn sources_are_limited_separately_and_forgotten_when_idle() {
        let l = SourceLimiter::new(1, 2).unwrap();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(l.admit(a) && l.admit(a));
        assert!(!l.admit(a));
        assert!(l.admit(b));
        assert_eq!(l.len(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        l.sweep();
        assert!(l.is_empty());
        assert!(SourceLimiter::new(0, 10).is_none());
    }
}
