//! Load tests and benchmarks for mqtt-kafka-proxy: the command line, which
//! dispatches to one module per subcommand (`ingest_bench`, `command_bench`,
//! `rig`, `kafka`, `worker`).

mod bench_kafka;
mod command_bench;
mod device;
mod direct;
mod ingest_bench;
mod kafka;
mod lean;
mod measure;
mod report;
mod rig;
mod table;
mod verify;
mod worker;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mqtt-kafka-proxy load tests and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Proxy QoS 1 ingest rate vs a direct rdkafka producer, same broker, same run.
    IngestBench(ingest_bench::IngestArgs),
    /// Start a broker, K replicas and the simulated fleet; verify; write the report.
    Rig(rig::RigArgs),
    /// The fault matrix: the fleet on a real 3-broker cluster while brokers,
    /// the network path and replicas fail; writes the matrix and plots.
    Faults(rig::faults::FaultsArgs),
    /// Commands from Kafka to devices on two replicas, beside a direct consumer.
    CommandBench(command_bench::CommandBenchArgs),
    /// A real Apache Kafka cluster (KRaft, 1 or 3 nodes) on loopback.
    #[command(subcommand)]
    Kafka(kafka::KafkaCmd),
    /// (Internal) one worker process of the rig; the argument is its JSON spec.
    Worker {
        /// The worker's spec as JSON.
        spec: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    raise_open_file_limit();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::IngestBench(a) => rt.block_on(ingest_bench::run(a)),
        Cmd::CommandBench(a) => rt.block_on(command_bench::run(a)),
        Cmd::Kafka(k) => rt.block_on(kafka::run(k)),
        Cmd::Worker { spec } => rt.block_on(worker::run(serde_json::from_str(&spec)?)),
        Cmd::Faults(f) => {
            let (rig_args, plan) = f.split();
            let report = rt.block_on(rig::run_with(rig_args, Some(plan)))?;
            println!("{}", report.fault_table());
            println!("report: {}/report.{{json,md,html}}", f.out.display());
            let lost: u64 = report.faults.iter().map(|r| r.lost).sum();
            anyhow::ensure!(
                lost == 0 && report.verdict.lost == 0,
                "{} acknowledged messages missing from Kafka",
                report.verdict.lost.max(lost)
            );
            Ok(())
        }
        Cmd::Rig(a) => {
            let report = rt.block_on(rig::run(a.clone()))?;
            println!("{}", report.table());
            println!("report: {}/report.{{json,md,html}}", a.out.display());
            let v = &report.verdict;
            anyhow::ensure!(
                v.lost == 0 && v.order_violations == 0,
                "{} acknowledged messages lost, {} order violations",
                v.lost,
                v.order_violations
            );
            Ok(())
        }
    }
}

/// Lifts the soft open-file limit to the hard one: each worker holds
/// thousands of sockets.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid resource and a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
