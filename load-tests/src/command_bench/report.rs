//! What `command-bench` reports: per phase of every round, the rate and
//! latency of both paths, written as `command-bench.json` and, as Markdown
//! tables (every phase, then medians over the rounds), printed and written
//! as `command-bench.md`.

use super::CommandBenchArgs;
use crate::measure::{Latency, Spread};
use crate::table::Table;

/// What one phase of one round measured, per path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseResult {
    /// 1-based round.
    pub round: u32,
    /// `light` or `burst`.
    pub phase: &'static str,
    /// Commands produced.
    pub commands: u64,
    /// Through the proxy: commands per second (first produced → last read).
    pub proxy_per_s: f64,
    /// Through the proxy: Kafka-to-device latency.
    pub proxy_latency: Latency,
    /// Direct consumer: commands per second (same clock).
    pub direct_per_s: f64,
    /// Direct consumer: Kafka-to-consumer latency.
    pub direct_latency: Latency,
}

/// What the command benchmark measured.
#[derive(Debug, serde::Serialize)]
pub struct CommandReport {
    /// Which Kafka.
    pub kafka: String,
    /// Subscribed devices (half on each replica).
    pub devices: u64,
    /// Replicas holding the devices.
    pub replicas: u32,
    /// `/proc/loadavg` before and after the run.
    pub loadavg: (String, String),
    /// Every phase of every round.
    pub phases: Vec<PhaseResult>,
}

/// The report as Markdown: every phase, then medians [min–max] over rounds.
pub(super) fn table(a: &CommandBenchArgs, r: &CommandReport) -> String {
    let mut phases = Table::new(&[
        "round",
        "phase",
        "proxy commands/s",
        "proxy p50 / p99 ms",
        "direct commands/s",
        "direct p50 / p99 ms",
    ]);
    for p in &r.phases {
        phases.row(&[
            p.round.to_string(),
            p.phase.to_string(),
            format!("{:.0}", p.proxy_per_s),
            format!(
                "{:.1} / {:.1}",
                p.proxy_latency.p50_ms, p.proxy_latency.p99_ms
            ),
            format!("{:.0}", p.direct_per_s),
            format!(
                "{:.1} / {:.1}",
                p.direct_latency.p50_ms, p.direct_latency.p99_ms
            ),
        ]);
    }
    let spread = |phase: &str, f: &dyn Fn(&PhaseResult) -> f64, digits: usize| {
        let v: Vec<f64> = r
            .phases
            .iter()
            .filter(|p| p.phase == phase)
            .map(f)
            .collect();
        Spread::of(&v).map_or("-".into(), |s| s.show(digits))
    };
    let mut medians = Table::new(&[
        "path",
        "light: p50 ms",
        "light: p99 ms",
        "burst: commands/s",
        "burst: p50 ms",
        "burst: p99 ms",
    ]);
    type Path = (
        &'static str,
        fn(&PhaseResult) -> f64,
        fn(&PhaseResult) -> &Latency,
    );
    let paths: [Path; 2] = [
        (
            "Kafka → proxy → device (PUBLISH read)",
            |p| p.proxy_per_s,
            |p| &p.proxy_latency,
        ),
        (
            "Kafka → direct rdkafka consumer",
            |p| p.direct_per_s,
            |p| &p.direct_latency,
        ),
    ];
    for (path, per_s, latency) in paths {
        medians.row(&[
            path.to_string(),
            spread("light", &|p| latency(p).p50_ms, 1),
            spread("light", &|p| latency(p).p99_ms, 1),
            spread("burst", &per_s, 0),
            spread("burst", &|p| latency(p).p50_ms, 0),
            spread("burst", &|p| latency(p).p99_ms, 0),
        ]);
    }
    medians.row(&[
        "ratio proxy / direct, burst commands/s (per round)".to_string(),
        String::new(),
        String::new(),
        spread("burst", &|p| p.proxy_per_s / p.direct_per_s, 2),
        String::new(),
        String::new(),
    ]);
    format!(
        "command-bench on {}: {} devices over 2 replicas, {} rounds of: light ({} commands/s for {} s, paced), then a burst of {} QoS 1 commands as fast as the producer takes them; load average before {}, after {}\n\n\
         {phases}\nmedian [min–max] over {} rounds:\n\n{medians}",
        r.kafka, r.devices, a.rounds, a.light_rate, a.light_s, a.commands, r.loadavg.0, r.loadavg.1, a.rounds
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_kafka::KafkaBackend;

    #[test]
    fn the_table_lists_every_phase_then_the_medians() {
        let a = CommandBenchArgs {
            devices: 2,
            commands: 10,
            light_rate: 1.0,
            light_s: 1.0,
            rounds: 1,
            partitions: 1,
            kafka: KafkaBackend::Embedded,
            brokers: 1,
            out: "unused".into(),
        };
        let latency = |ms: f64| Latency {
            count: 1,
            p50_ms: ms,
            p99_ms: 2.0 * ms,
            p999_ms: 3.0 * ms,
        };
        let phase = |phase, per_s: f64| PhaseResult {
            round: 1,
            phase,
            commands: 10,
            proxy_per_s: per_s,
            proxy_latency: latency(1.0),
            direct_per_s: 2.0 * per_s,
            direct_latency: latency(0.5),
        };
        let r = CommandReport {
            kafka: "k".into(),
            devices: 2,
            replicas: 2,
            loadavg: ("0.1".into(), "0.2".into()),
            phases: vec![phase("light", 1.0), phase("burst", 500.0)],
        };
        let t = table(&a, &r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("command-bench on k: 2 devices"), "{t}");
        assert_eq!(lines[2], "| round | phase | proxy commands/s | proxy p50 / p99 ms | direct commands/s | direct p50 / p99 ms |");
        assert_eq!(
            lines[5],
            "| 1 | burst | 500 | 1.0 / 2.0 | 1000 | 0.5 / 1.0 |"
        );
        assert_eq!(lines[7], "median [min–max] over 1 rounds:");
        assert_eq!(
            lines[11],
            "| Kafka → proxy → device (PUBLISH read) | 1.0 [1.0–1.0] | 2.0 [2.0–2.0] | 500 [500–500] | 1 [1–1] | 2 [2–2] |"
        );
        assert_eq!(
            lines[13],
            "| ratio proxy / direct, burst commands/s (per round) | | | 0.50 [0.50–0.50] | | |"
        );
    }
}
