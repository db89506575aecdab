//! The run report: one JSON document, a human-readable table, and a
//! self-contained HTML page with SVG plots of rate, latency, connections,
//! memory and CPU over time ([`plot`]), the fault windows shaded.

mod plot;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::verify::Verdict;

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the workers started.
    pub t: f64,
    /// Devices connected.
    pub connected: u64,
    /// PUBACKs in this second.
    pub acked_per_s: f64,
    /// Worst worker PUBACK p99 in this second, ms.
    pub puback_p99_ms: f64,
    /// Sum of replica RSS, MiB.
    pub proxy_rss_mib: f64,
    /// Sum of the broker processes' RSS (every cluster node), MiB.
    pub broker_rss_mib: f64,
    /// CPU cores used by the replicas in this second.
    pub proxy_cores: f64,
    /// CPU cores used by the broker (all cluster nodes together) in this second.
    pub broker_cores: f64,
    /// CPU cores used by the simulator workers in this second.
    pub workers_cores: f64,
    /// Reconnects so far (devices whose connection dropped), cumulative.
    pub reconnects: u64,
    /// Negative PUBACKs (5.0) so far, cumulative.
    pub nacked: u64,
    /// DISCONNECTs from the proxy (5.0) so far, cumulative.
    pub told_to_go: u64,
}

/// One row of the fault matrix (`load-tests faults`): a fault, its window,
/// and what the fleet and the verifier saw from its start until the next
/// fault's (or the end of the traffic).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultRow {
    /// The fault's name (`leader-kill`, `hang`, …).
    pub fault: String,
    /// What was done, concretely (which broker, how long).
    pub detail: String,
    /// Seconds since the workers started: the fault began…
    pub start_s: f64,
    /// …and was lifted (brokers resumed or restarted, link restored,
    /// replica replaced).
    pub end_s: f64,
    /// The next fault began (or the traffic ended): this row's part ends.
    pub part_end_s: f64,
    /// QoS 1 messages acknowledged in this part.
    pub acked: u64,
    /// Of those, not found in Kafka (goal 0).
    pub lost: u64,
    /// Records found more than once.
    pub duplicated: u64,
    /// Records found out of per-device order.
    pub order_violations: u64,
    /// Acknowledged per second in the 20 s before the fault (median).
    pub rate_before: f64,
    /// Highest proxy RSS (all replicas) from the fault's start to the part's end, MiB.
    pub peak_proxy_rss_mib: f64,
    /// Proxy RSS just before the fault, MiB.
    pub proxy_rss_before_mib: f64,
    /// Highest PUBACK p99 (worst worker) in the part, ms.
    pub peak_puback_p99_ms: f64,
    /// Device connections dropped in the part (each reconnects).
    pub disconnects: u64,
    /// Negative PUBACKs (5.0, reason ≥ 0x80) in the part.
    pub nacked: u64,
    /// DISCONNECT packets from the proxy (5.0) in the part.
    pub told_to_go: u64,
    /// Fewest devices connected in the part.
    pub min_connected: u64,
    /// Seconds from the fault's end until the acknowledged rate (3 s mean)
    /// was back to 90% of the rate before; `None` if not within the part.
    pub recovery_s: Option<f64>,
}

/// Idle memory of a reference MQTT broker measured by the same code.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reference {
    /// Which broker.
    pub name: String,
    /// Idle connections held.
    pub connections: u64,
    /// Bytes per idle plain connection.
    pub plain_bytes_per_conn: f64,
    /// Bytes per idle TLS connection.
    pub tls_bytes_per_conn: f64,
}

/// Everything the run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Which Kafka ran: the embedded mock broker, or the real cluster with
    /// its broker count, replication factor and `min.insync.replicas`.
    pub kafka: String,
    /// Scenario name.
    pub scenario: String,
    /// Devices simulated.
    pub devices: u64,
    /// Proxy replicas.
    pub replicas: usize,
    /// Worker processes.
    pub workers: usize,
    /// TLS on.
    pub tls: bool,
    /// Time compression (fleet).
    pub speed: f64,
    /// Seconds of traffic.
    pub duration_s: f64,
    /// Partitions per topic on the broker.
    pub partitions: u32,
    /// The replicas' producer linger, ms.
    pub linger_ms: u64,
    /// Seconds until every device had connected once.
    pub connect_time_s: f64,
    /// Devices connected per second during the connect phase.
    pub connect_rate_per_s: f64,
    /// Most devices connected at once.
    pub peak_connected: u64,
    /// Reconnects during the run.
    pub reconnects: u64,
    /// PUBLISH packets written (QoS 0 and resends included).
    pub sent: u64,
    /// QoS 0 PUBLISH packets written.
    pub sent_qos0: u64,
    /// PUBACKs received.
    pub acked: u64,
    /// Verifier result.
    pub verdict: Verdict,
    /// Acknowledged messages per second over the traffic window.
    pub throughput_msg_s: f64,
    /// The same records produced straight into the broker, per second.
    pub direct_msg_s: f64,
    /// throughput / direct (meaningful in the burst scenario; the fleet is load-bound).
    pub ratio_proxy_direct: f64,
    /// PUBACK latency p50, ms.
    pub puback_p50_ms: f64,
    /// PUBACK latency p99, ms.
    pub puback_p99_ms: f64,
    /// PUBACK latency p99.9, ms.
    pub puback_p999_ms: f64,
    /// Proxy RSS (all replicas) before any device connected, MiB.
    pub proxy_rss_baseline_mib: f64,
    /// Bytes of proxy RSS per connection while idle (all connected, no traffic).
    pub proxy_bytes_per_conn_idle: f64,
    /// Bytes of proxy RSS per connection at the peak while the traffic
    /// flowed (0: no traffic).
    pub proxy_bytes_per_conn_load: f64,
    /// Bytes of proxy RSS per connection at the peak while the fleet
    /// connected (handshakes in flight), over the final count.
    pub proxy_bytes_per_conn_connecting: f64,
    /// Proxy CPU seconds (all replicas) per 1,000 messages.
    pub proxy_cpu_s_per_1k_msgs: f64,
    /// Broker CPU seconds (all cluster nodes) per 1,000 messages.
    pub broker_cpu_s_per_1k_msgs: f64,
    /// Peak RSS of the broker processes together (all cluster nodes), MiB.
    pub broker_rss_peak_mib: f64,
    /// Average CPU cores in use while traffic flowed: proxy replicas, broker, simulator workers.
    pub cores_during_traffic: (f64, f64, f64),
    /// Reference broker memory, if measured.
    pub reference: Option<Reference>,
    /// Per-second samples.
    pub timeline: Vec<Sample>,
    /// The fault matrix, when `load-tests faults` ran one (row 0 is the
    /// baseline before the first fault).
    pub faults: Vec<FaultRow>,
}

impl Report {
    /// The human-readable table (Markdown).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let v = &self.verdict;
        let rows: Vec<(&str, String)> = vec![
            ("Kafka", self.kafka.clone()),
            (
                "scenario",
                format!(
                    "{} (speed {}x, {:.0} s of traffic)",
                    self.scenario, self.speed, self.duration_s
                ),
            ),
            (
                "devices / replicas / workers",
                format!("{} / {} / {}", self.devices, self.replicas, self.workers),
            ),
            (
                "partitions per topic / producer linger",
                format!("{} / {} ms", self.partitions, self.linger_ms),
            ),
            ("TLS", if self.tls { "on".into() } else { "off".into() }),
            (
                "connect time / rate",
                format!(
                    "{:.1} s / {:.0} per s",
                    self.connect_time_s, self.connect_rate_per_s
                ),
            ),
            (
                "peak connected / reconnects",
                format!("{} / {}", self.peak_connected, self.reconnects),
            ),
            (
                "messages sent / acked (QoS 1)",
                format!("{} / {}", self.sent, self.acked),
            ),
            (
                "found in Kafka (QoS 1 / QoS 0)",
                format!("{} / {}", v.found_qos1, v.found_qos0),
            ),
            ("**lost (acked, not in Kafka)**", format!("**{}**", v.lost)),
            (
                "duplicated / order violations",
                format!("{} / {}", v.duplicated, v.order_violations),
            ),
            (
                "throughput (acked msg/s)",
                format!("{:.0}", self.throughput_msg_s),
            ),
            (
                "direct producer, same records (msg/s)",
                format!("{:.0}", self.direct_msg_s),
            ),
            (
                "ratio proxy / direct",
                format!("{:.2}", self.ratio_proxy_direct),
            ),
            (
                "PUBACK latency p50 / p99 / p99.9",
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    self.puback_p50_ms, self.puback_p99_ms, self.puback_p999_ms
                ),
            ),
            (
                "end-to-end latency p50 / p99",
                format!("{:.1} / {:.1} ms", v.e2e_p50_ms, v.e2e_p99_ms),
            ),
            (
                "proxy RSS per connection, idle",
                format!("{:.0} B", self.proxy_bytes_per_conn_idle),
            ),
            (
                "proxy RSS per connection, under load",
                format!("{:.0} B", self.proxy_bytes_per_conn_load),
            ),
            (
                "proxy RSS per connection, peak while connecting",
                format!("{:.0} B", self.proxy_bytes_per_conn_connecting),
            ),
            (
                "proxy baseline RSS (all replicas)",
                format!("{:.0} MiB", self.proxy_rss_baseline_mib),
            ),
            (
                "broker RSS peak (all nodes)",
                format!("{:.0} MiB", self.broker_rss_peak_mib),
            ),
            (
                "CPU s per 1,000 msgs: proxy / broker",
                format!(
                    "{:.3} / {:.3}",
                    self.proxy_cpu_s_per_1k_msgs, self.broker_cpu_s_per_1k_msgs
                ),
            ),
            (
                "CPU cores while traffic flowed: proxy / broker / simulator",
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    self.cores_during_traffic.0,
                    self.cores_during_traffic.1,
                    self.cores_during_traffic.2
                ),
            ),
        ];
        let _ = writeln!(s, "| metric | value |\n|---|---|");
        for (k, val) in rows {
            let _ = writeln!(s, "| {k} | {val} |");
        }
        if let Some(r) = &self.reference {
            let _ = writeln!(
                s,
                "| {} per idle connection ({} conns): plain / TLS | {:.0} B / {:.0} B |",
                r.name, r.connections, r.plain_bytes_per_conn, r.tls_bytes_per_conn
            );
        }
        if !self.faults.is_empty() {
            s.push('\n');
            s.push_str(&self.fault_table());
        }
        s
    }

    /// The fault matrix as a Markdown table (empty without one).
    pub fn fault_table(&self) -> String {
        let mut s = String::from(
            "| fault | what was done | window (s) | acknowledged | **acknowledged, missing** | duplicates | order violations | connections dropped | 5.0: PUBACK ≥0x80 / DISCONNECT | fewest connected | proxy RSS before → peak (MiB) | PUBACK p99 peak | recovery |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for f in &self.faults {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0}–{:.0} (to {:.0}) | {} | **{}** | {} | {} | {} | {} / {} | {} | {:.0} → {:.0} | {:.1} s | {} |",
                f.fault,
                f.detail,
                f.start_s,
                f.end_s,
                f.part_end_s,
                f.acked,
                f.lost,
                f.duplicated,
                f.order_violations,
                f.disconnects,
                f.nacked,
                f.told_to_go,
                f.min_connected,
                f.proxy_rss_before_mib,
                f.peak_proxy_rss_mib,
                f.peak_puback_p99_ms / 1000.0,
                match f.recovery_s {
                    Some(r) => format!("{r:.0} s"),
                    None if f.rate_before <= 0.0 => "–".into(),
                    None => "not within the part".into(),
                }
            );
        }
        s
    }

    /// Writes `report.json`, `report.md` and `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.table())?;
        std::fs::write(dir.join("report.html"), self.html()?)?;
        Ok(())
    }

    /// The HTML page: the tables, then one plot per series (see [`plot`]).
    fn html(&self) -> Result<String> {
        let t: Vec<f64> = self.timeline.iter().map(|s| s.t).collect();
        let series = |f: fn(&Sample) -> f64| -> Vec<f64> { self.timeline.iter().map(f).collect() };
        // (title, value axis with its unit, series)
        let charts = [
            (
                "Acknowledged messages per second",
                "acknowledged (messages/s)",
                series(|s| s.acked_per_s),
            ),
            (
                "PUBACK latency p99 (ms, worst worker)",
                "PUBACK p99 (ms)",
                series(|s| s.puback_p99_ms),
            ),
            (
                "Devices connected",
                "connected (devices)",
                series(|s| s.connected as f64),
            ),
            (
                "Proxy RSS, all replicas (MiB)",
                "proxy RSS (MiB)",
                series(|s| s.proxy_rss_mib),
            ),
            (
                "CPU cores: proxy replicas",
                "proxy CPU (cores)",
                series(|s| s.proxy_cores),
            ),
            (
                "CPU cores: broker",
                "broker CPU (cores)",
                series(|s| s.broker_cores),
            ),
            (
                "Broker RSS, all nodes (MiB)",
                "broker RSS (MiB)",
                series(|s| s.broker_rss_mib),
            ),
            (
                "CPU cores: simulator workers",
                "simulator CPU (cores)",
                series(|s| s.workers_cores),
            ),
        ];
        let mut h = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>mqtt-kafka-proxy load test</title>\
             <style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}\
             td,th{border:1px solid #ccc;padding:4px 8px}svg{margin:0.5em 0}</style></head><body>",
        );
        let _ = write!(
            h,
            "<h1>mqtt-kafka-proxy load test: {}</h1><p>Kafka: {}</p><table>",
            self.scenario,
            self.kafka.replace('<', "&lt;")
        );
        for line in self.table().lines().skip(2) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.len() == 2 {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    cells[0].replace("**", ""),
                    cells[1].replace("**", "")
                );
            }
        }
        h.push_str("</table>");
        if !self.faults.is_empty() {
            h.push_str("<h2>Fault matrix</h2><p>Shaded: each fault from its start until it was lifted.</p><table>");
            for (i, line) in self.fault_table().lines().enumerate() {
                if i == 1 {
                    continue;
                }
                let cell = if i == 0 { "th" } else { "td" };
                h.push_str("<tr>");
                for c in line.trim_matches('|').split('|') {
                    let _ = write!(h, "<{cell}>{}</{cell}>", c.trim().replace("**", ""));
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>");
        }
        let shades: Vec<plot::Shade<'_>> = self
            .faults
            .iter()
            .filter(|f| f.end_s > f.start_s)
            .map(|f| plot::Shade {
                from: f.start_s,
                to: f.end_s,
                name: &f.fault,
            })
            .collect();
        for (title, value_axis, ys) in charts {
            let _ = write!(
                h,
                "<h3>{title}</h3>{}",
                plot::svg(value_axis, &t, &ys, &shades)?
            );
        }
        h.push_str("</body></html>");
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::plot::tests::texts;
    use super::*;

    /// 60 s of traffic with a hang from t=20 to t=30.
    fn report() -> Report {
        Report {
            scenario: "fleet".into(),
            kafka: "Apache Kafka <test>".into(),
            timeline: (0..60)
                .map(|t| Sample {
                    t: t as f64,
                    connected: 3000,
                    acked_per_s: if (20..30).contains(&t) { 0.0 } else { 950.0 },
                    puback_p99_ms: 12.5,
                    proxy_rss_mib: 40.0,
                    proxy_cores: 0.4,
                    ..Sample::default()
                })
                .collect(),
            faults: vec![
                FaultRow {
                    fault: "baseline".into(),
                    start_s: 5.0,
                    end_s: 5.0,
                    part_end_s: 20.0,
                    ..FaultRow::default()
                },
                FaultRow {
                    fault: "hang".into(),
                    start_s: 20.0,
                    end_s: 30.0,
                    part_end_s: 60.0,
                    ..FaultRow::default()
                },
            ],
            ..Report::default()
        }
    }

    #[test]
    fn every_plot_has_labelled_axes_ticks_and_the_fault_window() {
        let html = report().html().unwrap();
        let svgs: Vec<&str> = html
            .split("<svg")
            .skip(1)
            .map(|s| &s[..s.find("</svg>").unwrap()])
            .collect();
        assert_eq!(svgs.len(), 8, "one plot per series");
        for (svg, unit) in svgs.iter().zip([
            "(messages/s)",
            "(ms)",
            "(devices)",
            "(MiB)",
            "(cores)",
            "(cores)",
            "(MiB)",
            "(cores)",
        ]) {
            let texts = texts(svg);
            assert!(texts.iter().any(|t| t == plot::TIME_AXIS), "{texts:?}");
            assert!(
                texts.iter().any(|t| t.ends_with(unit)),
                "value axis in {unit}: {texts:?}"
            );
            // Ticks: several numeric labels on each axis, the time axis
            // running past the hang's end.
            let numbers: Vec<f64> = texts.iter().filter_map(|t| t.parse().ok()).collect();
            assert!(numbers.len() >= 8, "ticks: {texts:?}");
            assert!(numbers.iter().any(|n| *n >= 50.0), "{texts:?}");
            // The hang is shaded and named; the baseline (no window) is not.
            assert!(texts.iter().any(|t| t == "hang"), "{texts:?}");
            assert!(!texts.iter().any(|t| t == "baseline"), "{texts:?}");
            assert!(svg.contains("opacity=\"0.15\""), "shaded window: {svg}");
        }
        // The acknowledged rate's axis reaches its peak of 950.
        let rate_ticks: Vec<f64> = texts(svgs[0])
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect();
        assert!(rate_ticks.iter().any(|n| *n >= 900.0), "{rate_ticks:?}");
        assert!(html.contains("Apache Kafka &lt;test>"));
    }

    #[test]
    fn write_puts_the_three_files_in_place() {
        let dir = std::env::temp_dir().join(format!("load-tests-report-{}", std::process::id()));
        report().write(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["faults"][1]["fault"], "hang");
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.starts_with("| metric | value |"), "{md}");
        assert!(md.contains("| hang |"), "{md}");
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert_eq!(html.matches("<svg").count(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
