//! The `mqtt-kafka-proxy` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mqtt_kafka_proxy::config::{Config, DEFAULT_CONFIG_TOML};

/// jemalloc, for memory per idle connection: its size classes keep the
/// long-lived blocks of idle connections (tasks, sockets, TLS keys) on
/// pages of their own, away from what handshakes and busy spells allocate
/// and free, and it has no per-block header. Measured with the rig's
/// connect scenario at 10,000 connections: plain 1,425-1,456 B against
/// 1,613-1,629 B with glibc malloc (docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start-up: a background thread hands freed
/// pages back to the system after a second. Without it jemalloc purges
/// only when it allocates, and a quiet fleet of idle connections allocates
/// almost nothing, so the pages a connect storm freed would stay in RSS.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// A Kafka-native MQTT proxy: every PUBLISH becomes a Kafka record keyed by the device id.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, default_value = "config.toml")]
    config: PathBuf,
    /// Print the default configuration (every key, documented) and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Validate the configuration file and exit: 0 if valid, 1 with the reason if not.
    #[arg(long)]
    check_config: bool,
    /// Log format, overriding `log.format`: `text` or `json`.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run only the embedded Kafka-protocol broker, as its own process, for
    /// several proxy replicas and other Kafka clients to share (not durable).
    DevKafka {
        /// Public bootstrap address.
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: std::net::SocketAddr,
        /// Number of brokers.
        #[arg(long, default_value_t = 1)]
        brokers: u32,
        /// Partitions of each topic.
        #[arg(long, default_value_t = 6)]
        partitions: u32,
        /// More topics to create, comma-separated, besides every topic the
        /// config names (a proxy checks at start-up that all of its exist).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
    },
    /// Add or replace USER in the password file FILE (argon2id hash). The
    /// password is asked for on a terminal, or read as the first line of
    /// standard input (`echo "$PW" | mqtt-kafka-proxy passwd FILE USER`).
    Passwd {
        /// The password file (`auth.password.file`); created with mode 0600 if missing.
        file: PathBuf,
        /// The user name, which becomes the device id.
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no config file: it only edits the password file.
    if let Some(Command::Passwd { file, user }) = &cli.command {
        return passwd(file, user);
    }
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    // Environment variables override the file (MQTT_KAFKA_PROXY__SECTION__KEY);
    // with no file at all, defaults plus environment.
    let default_path = cli.config == std::path::Path::new("config.toml");
    let config = match Config::load_with_env(&cli.config, std::env::vars(), default_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Start-up validates the same way (`Proxy::start`), so a file this
    // accepts starts, and one it refuses does not.
    let checked = match config.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let json = match cli.log_format.as_deref() {
        Some(f) => f == "json",
        None => config.log.format == mqtt_kafka_proxy::config::LogFormat::Json,
    };
    init_logging(&config.log.level, json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::DevKafka {
        listen,
        brokers,
        partitions,
        topics: extra,
    }) = cli.command
    {
        let mut topics = checked.kafka_topics;
        topics.extend(extra);
        topics.sort();
        topics.dedup();
        let run = mqtt_kafka_proxy::kafka::embedded::run_standalone(
            listen,
            brokers,
            partitions,
            topics,
            shutdown_signal(),
        );
        return match runtime.block_on(run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(mqtt_kafka_proxy::run(config, shutdown_signal())) {
        Ok(report) if report.connections_left == 0 && report.records_unflushed == 0 => {
            ExitCode::SUCCESS
        }
        Ok(report) => {
            tracing::error!(?report, "exited with undrained work");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(file: &std::path::Path, user: &str) -> ExitCode {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {user}: "));
        let again = rpassword::prompt_password("again: ");
        match (first, again) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("error: the passwords differ");
                return ExitCode::FAILURE;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("error: cannot read the password from standard input: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        eprintln!("error: empty password");
        return ExitCode::FAILURE;
    }
    match mqtt_kafka_proxy::auth::passwd::set_entry(file, user, password.as_bytes()) {
        Ok(()) => {
            println!("{}: set password for {user}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    if json {
        // One object per line: timestamp, level, target, fields, and the
        // connection span (peer, client id, device id).
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}
