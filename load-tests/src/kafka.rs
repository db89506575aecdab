//! `load-tests kafka up`: a real Apache Kafka cluster (1 or 3 KRaft nodes,
//! JVM processes on loopback) for people, started by the same code the tests
//! and the rig use (the `kafka-cluster` crate). Runs until Ctrl-C or SIGTERM,
//! then stops every node cleanly.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kafka_cluster::{Cluster, ClusterConfig};

/// `load-tests kafka …`
#[derive(clap::Subcommand)]
pub enum KafkaCmd {
    /// Start a cluster and keep it up until Ctrl-C / SIGTERM.
    Up(UpArgs),
    /// Fetch the pinned Kafka release's jars with Maven (done on demand too).
    Fetch,
}

/// `load-tests kafka up` options.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Combined broker+controller nodes (1 or 3).
    #[arg(long, default_value_t = 1)]
    brokers: u32,
    /// Maximum JVM heap per node, MiB.
    #[arg(long, default_value_t = 384)]
    heap_mb: u32,
    /// Keep the data here (default: a temporary directory removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the addresses as shell variables to this file.
    #[arg(long)]
    env_file: Option<PathBuf>,
}

pub async fn run(cmd: KafkaCmd) -> Result<()> {
    match cmd {
        KafkaCmd::Fetch => {
            let dir = tokio::task::spawn_blocking(kafka_cluster::jars).await??;
            println!("kafka jars: {}", dir.display());
            Ok(())
        }
        KafkaCmd::Up(a) => up(a).await,
    }
}

async fn up(a: UpArgs) -> Result<()> {
    let config = ClusterConfig {
        brokers: a.brokers,
        heap_mb: a.heap_mb,
        data_dir: a.dir,
        ..Default::default()
    };
    eprintln!(
        "starting Apache Kafka {} with {} node(s)…",
        kafka_cluster::KAFKA_VERSION,
        a.brokers
    );
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(config))
        .await?
        .context("start the Kafka cluster")?;
    let vars = [
        ("KAFKA_BOOTSTRAP", cluster.bootstrap()),
        ("KAFKA_SASL_BOOTSTRAP", cluster.sasl_bootstrap()),
        ("KAFKA_TLS_BOOTSTRAP", cluster.tls_bootstrap()),
        ("KAFKA_CA", cluster.ca_path().display().to_string()),
        ("KAFKA_SCRAM_USER", kafka_cluster::SCRAM_USER.to_string()),
        (
            "KAFKA_SCRAM_PASSWORD",
            kafka_cluster::SCRAM_PASSWORD.to_string(),
        ),
        ("KAFKA_DIR", cluster.dir().display().to_string()),
    ];
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if let Some(f) = &a.env_file {
        std::fs::write(f, &text).with_context(|| format!("write {}", f.display()))?;
    }
    print!("{text}");
    println!(
        "kafka up: PLAINTEXT {}, SASL_PLAINTEXT (SCRAM-SHA-512) {}, SSL {}; Ctrl-C stops it",
        cluster.bootstrap(),
        cluster.sasl_bootstrap(),
        cluster.tls_bootstrap()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping Kafka…");
    tokio::task::spawn_blocking(move || cluster.stop()).await?;
    eprintln!("Kafka stopped");
    Ok(())
}
