//! Pure arithmetic shared by the benchmarks (`ingest-bench`,
//! `command-bench`): percentiles of latency samples, the median and spread of
//! a figure across rounds, and the schedule of a fixed-rate sender. No I/O
//! here except [`loadavg`], so the numbers the README quotes rest on code
//! with unit tests.

use std::time::Duration;

/// The `q`-quantile (0 < q ≤ 1) of ascending `sorted` samples by the
/// nearest-rank method: the smallest sample with at least `q` of all samples
/// at or below it. `None` for no samples.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latency percentiles of one phase, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Samples behind the percentiles.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
}

impl Latency {
    /// Percentiles of microsecond samples (sorted in place); `None` for none.
    pub fn of_us<T: Copy + Ord + Into<u64>>(samples: &mut [T]) -> Option<Latency> {
        samples.sort_unstable();
        let ms = |q: f64| quantile(samples, q).map(|v| v.into() as f64 / 1000.0);
        Some(Latency {
            count: samples.len(),
            p50_ms: ms(0.5)?,
            p99_ms: ms(0.99)?,
            p999_ms: ms(0.999)?,
        })
    }
}

/// One figure across rounds: median, min and max.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` for none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median [min–max]` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// The schedule of a sender that emits `total` messages at `rate_per_s`,
/// message `k` due `k / rate` after the start (message 0 at once). Senders
/// wake on ticks and send everything due, so a late wake-up catches up
/// instead of lowering the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Messages per second.
    pub rate_per_s: f64,
    /// Messages in all.
    pub total: u64,
}

impl Pace {
    /// `rate_per_s` for `duration`: `round(rate × duration)` messages.
    pub fn for_duration(rate_per_s: f64, duration: Duration) -> Pace {
        Pace {
            rate_per_s,
            total: (rate_per_s * duration.as_secs_f64()).round() as u64,
        }
    }

    /// How many messages are due `elapsed` after the start.
    pub fn due(&self, elapsed: Duration) -> u64 {
        if self.rate_per_s <= 0.0 {
            return 0;
        }
        let due = (elapsed.as_secs_f64() * self.rate_per_s).floor() as u64 + 1;
        due.min(self.total)
    }

    /// When message `k` is due, after the start.
    pub fn due_at(&self, k: u64) -> Duration {
        if self.rate_per_s <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64(k as f64 / self.rate_per_s)
    }

    /// How long to sleep before the next send when `sent` are out and it
    /// is `elapsed` since the start: until the next message is due, but at
    /// least `min_tick`, so a fast sender wakes once per tick and sends
    /// several, not once per message. `None` when every message is out.
    pub fn wait(&self, sent: u64, elapsed: Duration, min_tick: Duration) -> Option<Duration> {
        if sent >= self.total {
            return None;
        }
        Some(self.due_at(sent).saturating_sub(elapsed).max(min_tick))
    }
}

/// The machine's load average (`/proc/loadavg`: 1, 5, 15 min), for the
/// record of what else ran during a benchmark.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// User + system CPU seconds of a process, from the text of its
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of `ticks_per_s`).
/// The command name may hold spaces and parentheses, so fields are counted
/// after its last `)`.
pub fn cpu_seconds_of_stat(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut f = rest.split_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / ticks_per_s)
}

/// CPU seconds used so far by `pids` together (0 for a pid that is gone).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| cpu_seconds_of_stat(&s, ticks))
        .sum()
}

/// CPU cores used by some processes over a phase: [`CpuMeter::start`]
/// before, [`CpuMeter::cores`] after.
pub struct CpuMeter {
    pids: Vec<u32>,
    cpu_s: f64,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring `pids`.
    pub fn start(pids: Vec<u32>) -> CpuMeter {
        CpuMeter {
            cpu_s: cpu_seconds(&pids),
            pids,
            at: std::time::Instant::now(),
        }
    }

    /// Average cores used since the start.
    pub fn cores(&self) -> f64 {
        (cpu_seconds(&self.pids) - self.cpu_s) / self.at.elapsed().as_secs_f64().max(1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 0.999), Some(100));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1), "q = 0 is the minimum");
        assert_eq!(quantile(&[7u32], 0.99), Some(7));
        assert_eq!(quantile::<u32>(&[], 0.5), None);
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<u32> = (1..=10).collect();
        assert_eq!(quantile(&ten, 0.5), Some(5));
        assert_eq!(quantile(&ten, 0.99), Some(10));
    }

    #[test]
    fn latency_sorts_and_converts_microseconds_to_ms() {
        let mut v: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let l = Latency::of_us(&mut v).unwrap();
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(Latency::of_us::<u32>(&mut []), None);
        let mut wide: Vec<u64> = vec![1500, 2500];
        assert_eq!(Latency::of_us(&mut wide).unwrap().p50_ms, 1.5);
    }

    #[test]
    fn spread_takes_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[-0.25]).unwrap().show(2), "-0.25 [-0.25–-0.25]");
        assert_eq!(s.show(0), "2 [1–3]");
    }

    #[test]
    fn cpu_seconds_come_from_fields_14_and_15() {
        let stat = "4242 (load (tests) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_seconds_of_stat(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds_of_stat("garbage", 100.0), None);
        assert!(cpu_seconds(&[std::process::id()]) >= 0.0);
        assert_eq!(
            cpu_seconds(&[u32::MAX]),
            0.0,
            "a missing pid counts nothing"
        );
    }

    #[test]
    fn pace_sends_the_first_at_once_and_the_rest_on_schedule() {
        let p = Pace::for_duration(100.0, Duration::from_secs(2));
        assert_eq!(p.total, 200);
        assert_eq!(p.due(Duration::ZERO), 1);
        assert_eq!(p.due(Duration::from_millis(9)), 1);
        assert_eq!(p.due(Duration::from_millis(10)), 2);
        assert_eq!(p.due(Duration::from_millis(1_000)), 101);
        assert_eq!(p.due(Duration::from_secs(60)), 200, "never more than total");
        assert_eq!(p.due_at(0), Duration::ZERO);
        assert_eq!(p.due_at(150), Duration::from_millis(1_500));
        let stopped = Pace {
            rate_per_s: 0.0,
            total: 10,
        };
        assert_eq!(stopped.due(Duration::from_secs(5)), 0);
    }

    #[test]
    fn pace_waits_for_the_next_message_but_at_least_a_tick() {
        // 100/s: one message every 10 ms.
        let slow = Pace {
            rate_per_s: 100.0,
            total: 10,
        };
        let tick = Duration::from_millis(1);
        assert_eq!(
            slow.wait(3, Duration::from_millis(25), tick),
            Some(Duration::from_millis(5))
        );
        // Behind schedule: wake after one tick and catch up.
        assert_eq!(slow.wait(3, Duration::from_millis(90), tick), Some(tick));
        assert_eq!(slow.wait(10, Duration::from_millis(90), tick), None);
        // 20,000/s: a message every 50 µs, so wake once a millisecond.
        let fast = Pace {
            rate_per_s: 20_000.0,
            total: 1_000_000,
        };
        assert_eq!(fast.wait(5, Duration::from_micros(200), tick), Some(tick));
        // A tick longer than the period wins: several messages per wake-up.
        assert_eq!(
            slow.wait(1, Duration::from_millis(2), Duration::from_millis(30)),
            Some(Duration::from_millis(30))
        );
    }
}
