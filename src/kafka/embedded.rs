//! The embedded Kafka-protocol broker: librdkafka's mock cluster, started
//! in-process when `bootstrap_servers = "embedded"` so the proxy runs on a
//! fresh machine with nothing else installed. It is not durable.
//!
//! The mock cluster binds its brokers to ephemeral loopback ports and cannot
//! be told to bind a fixed one, so a small TCP forwarder listens on the
//! configured public address (`127.0.0.1:9092` by default) and relays
//! bootstrap connections to the first broker. A client such as kcat
//! bootstraps there, learns the brokers' real addresses from metadata, and
//! talks to them directly.
//!
//! `MockCluster` is not `Send`, so one dedicated thread owns it; the rest of
//! the proxy drives it through [`EmbeddedKafka`]'s command channel.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::KafkaError;

enum Command {
    BrokerDown(i32, mpsc::Sender<Result<(), String>>),
    BrokerUp(i32, mpsc::Sender<Result<(), String>>),
    CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
    Stop,
}

/// A running embedded broker. Dropping it stops the broker.
pub struct EmbeddedKafka {
    bootstrap_servers: String,
    public_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    forwarder: CancellationToken,
}

impl EmbeddedKafka {
    /// Starts `brokers` mock brokers, creates `topics` with `partitions`
    /// partitions each, and opens the public bootstrap address `listen`.
    pub async fn start(
        brokers: u32,
        partitions: u32,
        topics: &[String],
        listen: SocketAddr,
    ) -> Result<EmbeddedKafka, KafkaError> {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers as i32) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions as i32, 1) {
                        let _ = ready_tx.send(Err(format!("create topic {t}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                serve_commands(&cluster, cmd_rx);
            })
            .map_err(|e| KafkaError::Embedded(format!("spawn thread: {e}")))?;
        let bootstrap_servers = ready_rx
            .await
            .map_err(|_| KafkaError::Embedded("broker thread exited".into()))?
            .map_err(KafkaError::Embedded)?;
        let first_broker: SocketAddr = bootstrap_servers
            .split(',')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| KafkaError::Embedded(format!("bad bootstrap {bootstrap_servers}")))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| KafkaError::Listen {
                addr: listen,
                source,
            })?;
        let public_addr = listener.local_addr().map_err(|source| KafkaError::Listen {
            addr: listen,
            source,
        })?;
        let forwarder = CancellationToken::new();
        tokio::spawn(forward(listener, first_broker, forwarder.clone()));
        Ok(EmbeddedKafka {
            bootstrap_servers,
            public_addr,
            commands: cmd_tx,
            thread: Some(thread),
            forwarder,
        })
    }

    /// The brokers' own addresses, for clients in this process.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The public bootstrap address (the forwarder), for other processes.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// A handle that drives the broker (take brokers down, create topics)
    /// from any thread, for failure tests.
    pub fn control(&self) -> KafkaControl {
        KafkaControl {
            commands: self.commands.clone(),
        }
    }

    /// Takes broker `id` (1-based) down: its connections close and it refuses new ones.
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaError> {
        self.control().broker_down(id)
    }

    /// Brings broker `id` back up.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaError> {
        self.control().broker_up(id)
    }
}

/// A cloneable, `Send` handle on the embedded broker's thread.
#[derive(Clone)]
pub struct KafkaControl {
    commands: mpsc::Sender<Command>,
}

impl KafkaControl {
    /// Takes broker `id` (1-based) down: its connections close and it refuses new ones.
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaError> {
        self.call(|tx| Command::BrokerDown(id, tx))
    }

    /// Brings broker `id` back up.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaError> {
        self.call(|tx| Command::BrokerUp(id, tx))
    }

    /// Creates a topic (the mock cluster has no CreateTopics API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.call(|tx| Command::CreateTopic(name.to_owned(), partitions, tx))
    }

    fn call(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), KafkaError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| KafkaError::Embedded("broker thread gone".into()))?;
        rx.recv()
            .map_err(|_| KafkaError::Embedded("broker thread gone".into()))?
            .map_err(KafkaError::Embedded)
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.forwarder.cancel();
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_commands(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    rx: mpsc::Receiver<Command>,
) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::BrokerDown(id, reply) => {
                let _ = reply.send(cluster.broker_down(id).map_err(|e| e.to_string()));
            }
            Command::BrokerUp(id, reply) => {
                let _ = reply.send(cluster.broker_up(id).map_err(|e| e.to_string()));
            }
            Command::CreateTopic(name, partitions, reply) => {
                let r = cluster.create_topic(&name, partitions, 1);
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Command::Stop => break,
        }
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

/// Runs the embedded broker on its own until `shutdown` completes: the
/// `mqtt-kafka-proxy dev-kafka` subcommand, which several proxy replicas,
/// load-test workers and verifiers on one host share.
pub async fn run_standalone(
    listen: SocketAddr,
    brokers: u32,
    partitions: u32,
    topics: Vec<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KafkaError> {
    let kafka = EmbeddedKafka::start(brokers, partitions, &topics, listen).await?;
    tracing::info!(
        bootstrap = %kafka.public_addr(),
        brokers,
        partitions,
        ?topics,
        "dev-kafka: embedded Kafka broker running (in-memory, not durable)"
    );
    // A machine-readable line for scripts that start this process.
    println!("dev-kafka bootstrap={}", kafka.public_addr());
    shutdown.await;
    drop(kafka);
    Ok(())
}
