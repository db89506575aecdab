//! The embedded Kafka-protocol broker: librdkafka's mock cluster, started
//! in-process when `bootstrap_servers = "embedded"` so the proxy runs on a
//! fresh machine with nothing else installed. It is not durable.
//!
//! The mock binds its brokers to ephemeral loopback ports and cannot be told
//! to bind a fixed one, and it answers ApiVersions v3/v4 (what kafka-python
//! and Java open with) in a layout they cannot read. So a TCP forwarder
//! ([`forwarder`]) sits in front of every broker: broker 1's listens on the
//! configured public address (`127.0.0.1:9092` by default), the others on
//! ephemeral ports of the same interface, and the mock advertises the
//! forwarders in metadata (`rd_kafka_mock_broker_set_host_port`, which
//! changes the advertised host and port only, not the bound socket). Every
//! Kafka connection, the proxy's own included, passes through a forwarder,
//! which serves ApiVersions v3/v4 ([`api_versions`]) and otherwise copies
//! bytes. JoinGroup, SyncGroup and LeaveGroup are capped at the versions the
//! mock decodes correctly ([`VERSION_CAPS`]).
//!
//! The mock keeps only the last 5 MiB or 100,000 produce batches of each
//! partition and cannot be told otherwise; [`retention`] warns when it drops
//! records.
//!
//! ```text
//! client ──► forwarder (public addr) ──► mock broker 1 ─┐
//! client ──► forwarder (ephemeral)   ──► mock broker 2  ├─ one librdkafka thread
//!            └ one relay thread; ApiVersions v3/v4 here ┘
//! ```
//!
//! `MockCluster` is not `Send`, so one dedicated thread owns it; the rest of
//! the proxy drives it through [`EmbeddedKafka`]'s command channel.

mod api_versions;
mod forwarder;
mod retention;

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rdkafka::bindings::rd_kafka_mock_cluster_t;
use rdkafka::bindings::{rd_kafka_handle_mock_cluster, rd_kafka_mock_broker_set_host_port};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaType};
use rdkafka::ClientConfig;
use tokio::sync::{oneshot, watch};

use super::KafkaError;
use retention::{CheckHandle, RetentionWatch};

/// Versions the mock advertises but decodes wrongly, capped to the newest
/// it handles (the ones librdkafka's own client uses): its handlers read an
/// array count as a plain i32 in the flexible JoinGroup v6 and SyncGroup v4,
/// and only the v0–v2 single member id of LeaveGroup, whose v3+ batches
/// members (kafkajs logged the undecodable answer; Java's JoinGroup v6 was
/// disconnected).
const VERSION_CAPS: [(RDKafkaApiKey, i16); 3] = [
    (RDKafkaApiKey::JoinGroup, 5),
    (RDKafkaApiKey::SyncGroup, 3),
    (RDKafkaApiKey::LeaveGroup, 2),
];

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic(String, i32, Reply),
    /// Advertise these addresses for these broker ids.
    Advertise(Vec<(i32, SocketAddr)>, oneshot::Sender<()>),
    Stop,
}

/// A running embedded broker. Dropping it stops the broker.
pub struct EmbeddedKafka {
    /// The forwarders' addresses, public one first.
    bootstrap_servers: String,
    public_addr: SocketAddr,
    control: KafkaControl,
    thread: Option<JoinHandle<()>>,
    /// The forwarders' thread; stopping it ends every connection through them.
    relays: Option<forwarder::Relays>,
    /// Stopped before the broker, so its client does not see it vanish.
    retention: Option<RetentionWatch>,
}

impl EmbeddedKafka {
    /// Starts `brokers` mock brokers, creates `topics` with `partitions`
    /// partitions each, and puts a forwarder in front of each broker, broker
    /// 1's on the public bootstrap address `listen`.
    pub async fn start(
        brokers: u32,
        partitions: u32,
        topics: &[String],
        listen: SocketAddr,
    ) -> Result<EmbeddedKafka, KafkaError> {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<String, String>>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || run_cluster(brokers, partitions, &topics, ready_tx, cmd_rx))
            .map_err(|e| KafkaError::Embedded(format!("spawn thread: {e}")))?;
        let mut kafka = EmbeddedKafka {
            bootstrap_servers: String::new(),
            public_addr: listen,
            control: KafkaControl {
                commands: cmd_tx,
                links: Arc::new(Vec::new()),
                retention: None,
            },
            thread: Some(thread),
            relays: None,
            retention: None,
        };
        // From here on an error drops `kafka`, which stops the thread.
        let mock_bootstrap = ready_rx
            .await
            .map_err(|_| KafkaError::Embedded("broker thread exited".into()))?
            .map_err(KafkaError::Embedded)?;
        let mock_addrs = mock_bootstrap
            .split(',')
            .map(|a| a.parse::<SocketAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| KafkaError::Embedded(format!("bad mock bootstrap {mock_bootstrap}")))?;
        if mock_addrs.len() != brokers as usize {
            return Err(KafkaError::Embedded(format!(
                "asked for {brokers} brokers, mock bootstrap is {mock_bootstrap}"
            )));
        }

        let listeners = bind_forwarders(listen, mock_addrs.len())?;
        kafka.public_addr = listeners[0].1;
        let advertised: Vec<(i32, SocketAddr)> = listeners
            .iter()
            .enumerate()
            .map(|(i, (_, bound))| (i as i32 + 1, advertisable(*bound)))
            .collect();
        let (done_tx, done_rx) = oneshot::channel();
        kafka
            .control
            .commands
            .send(Command::Advertise(advertised.clone(), done_tx))
            .map_err(|_| KafkaError::Embedded("broker thread gone".into()))?;
        done_rx
            .await
            .map_err(|_| KafkaError::Embedded("broker thread gone".into()))?;

        let relays = forwarder::Relays::start()
            .map_err(|e| KafkaError::Embedded(format!("start the forwarders' thread: {e}")))?;
        let mut links = Vec::with_capacity(listeners.len());
        for ((listener, bound), target) in listeners.into_iter().zip(mock_addrs) {
            let (up_tx, up_rx) = watch::channel(true);
            relays.spawn(listener, bound, target, up_rx);
            links.push(up_tx);
        }
        kafka.relays = Some(relays);
        kafka.control.links = Arc::new(links);
        kafka.bootstrap_servers = advertised
            .iter()
            .map(|(_, a)| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let watch = RetentionWatch::start(&kafka.bootstrap_servers, retention::CHECK_EVERY)?;
        kafka.control.retention = Some(watch.handle());
        kafka.retention = Some(watch);
        tracing::info!(
            bootstrap = %kafka.bootstrap_servers,
            "embedded Kafka broker limits: {} (older records are dropped and the low watermark advances; counted in {}); in memory only; all brokers on one thread; plaintext only; no admin APIs (topics are created at start-up or on first use) — use a real Kafka cluster for long runs, durability or load figures",
            retention::LIMITS,
            crate::metrics::EMBEDDED_KAFKA_RECORDS_DROPPED,
        );
        Ok(kafka)
    }

    /// The forwarders' addresses, public one first: a bootstrap list for
    /// any Kafka client, in this process or another.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The public bootstrap address (broker 1's forwarder), for other processes.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// A handle that drives the broker (take brokers down, create topics)
    /// from any thread, for failure tests.
    pub fn control(&self) -> KafkaControl {
        self.control.clone()
    }

    /// Takes broker `id` (1-based) down: its connections close and it refuses new ones.
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaError> {
        self.control.broker_down(id)
    }

    /// Brings broker `id` back up.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaError> {
        self.control.broker_up(id)
    }
}

/// Binds `n` forwarder listeners: broker 1's on `listen`, the others on
/// ephemeral ports of the same interface. Returns each with its address.
fn bind_forwarders(
    listen: SocketAddr,
    n: usize,
) -> Result<Vec<(std::net::TcpListener, SocketAddr)>, KafkaError> {
    let mut listeners = Vec::with_capacity(n);
    for i in 0..n {
        let addr = if i == 0 {
            listen
        } else {
            SocketAddr::new(listen.ip(), 0)
        };
        let listen_err = |source| KafkaError::Listen { addr, source };
        // Bound here, served on the forwarders' own runtime.
        let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let bound = listener.local_addr().map_err(listen_err)?;
        listeners.push((listener, bound));
    }
    Ok(listeners)
}

/// The address to advertise for a forwarder bound at `bound`: a wildcard
/// bind is advertised as loopback, the only address known to reach it.
fn advertisable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// A cloneable, `Send` handle on the embedded broker's thread.
#[derive(Clone)]
pub struct KafkaControl {
    commands: mpsc::Sender<Command>,
    /// Per broker (index = id - 1): whether its forwarder listens.
    links: Arc<Vec<watch::Sender<bool>>>,
    retention: Option<CheckHandle>,
}

impl KafkaControl {
    /// Takes broker `id` (1-based) down: its connections close and new ones
    /// are closed at once (by its forwarder; see `forwarder`).
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaError> {
        self.set_link(id, false)
    }

    /// Brings broker `id` back up.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaError> {
        self.set_link(id, true)
    }

    /// Creates a topic (the mock cluster has no CreateTopics API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.call(|tx| Command::CreateTopic(name.to_owned(), partitions, tx))
    }

    /// Checks every partition's low watermark now (as the periodic check
    /// does) and returns how many records the broker has dropped in all
    /// under its retention limits. Blocks for up to a few seconds.
    pub fn records_dropped(&self) -> Result<u64, KafkaError> {
        match &self.retention {
            Some(r) => r.check_now(),
            None => Err(KafkaError::Embedded("not started".into())),
        }
    }

    fn set_link(&self, id: i32, up: bool) -> Result<(), KafkaError> {
        let link = usize::try_from(id - 1)
            .ok()
            .and_then(|i| self.links.get(i))
            .ok_or_else(|| KafkaError::Embedded(format!("no broker {id}")))?;
        link.send_replace(up);
        Ok(())
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), KafkaError> {
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
        if let Some(mut r) = self.relays.take() {
            r.stop();
        }
        if let Some(mut r) = self.retention.take() {
            r.stop();
        }
        let _ = self.control.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The broker thread: creates the cluster, reports its brokers' own
/// addresses on `ready`, then serves commands until told to stop.
fn run_cluster(
    brokers: u32,
    partitions: u32,
    topics: &[String],
    ready: oneshot::Sender<Result<String, String>>,
    commands: mpsc::Receiver<Command>,
) {
    // A client that owns a mock cluster (`test.mock.num.brokers`) rather than
    // `MockCluster::new`, because only through the client's handle can we
    // reach the raw cluster for `rd_kafka_mock_broker_set_host_port`, which
    // rdkafka does not wrap. The client itself sends nothing.
    let mut config = ClientConfig::new();
    config.set("test.mock.num.brokers", brokers.to_string());
    let client = config.create_native_config().and_then(|native| {
        Client::new(
            &config,
            native,
            RDKafkaType::RD_KAFKA_PRODUCER,
            DefaultClientContext,
        )
    });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let Some(cluster) = client.mock_cluster() else {
        let _ = ready.send(Err("client has no mock cluster".into()));
        return;
    };
    // SAFETY: `client` is a live handle for the rest of this function; the
    // cluster it owns lives exactly as long (destroyed in rd_kafka_destroy).
    let raw = unsafe { rd_kafka_handle_mock_cluster(client.native_ptr()) };
    for (api, max) in VERSION_CAPS {
        if let Err(e) = cluster.apiversion(api, Some(0), Some(max)) {
            let _ = ready.send(Err(format!("cap {api:?} at v{max}: {e}")));
            return;
        }
    }
    for t in topics {
        if let Err(e) = cluster.create_topic(t, partitions as i32, 1) {
            let _ = ready.send(Err(format!("create topic {t}: {e}")));
            return;
        }
    }
    let _ = ready.send(Ok(cluster.bootstrap_servers()));
    serve_commands(&cluster, raw, commands);
}

fn serve_commands(
    cluster: &MockCluster<'_, DefaultClientContext>,
    raw: *mut rd_kafka_mock_cluster_t,
    rx: mpsc::Receiver<Command>,
) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::CreateTopic(name, partitions, reply) => {
                let r = cluster.create_topic(&name, partitions, 1);
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Command::Advertise(addrs, done) => {
                for (id, addr) in addrs {
                    // An IP address's text never holds a NUL byte.
                    let Ok(host) = CString::new(addr.ip().to_string()) else {
                        continue;
                    };
                    // SAFETY: `raw` is the live cluster (see run_cluster);
                    // librdkafka copies `host` under the cluster's lock.
                    unsafe {
                        rd_kafka_mock_broker_set_host_port(
                            raw,
                            id,
                            host.as_ptr(),
                            i32::from(addr.port()),
                        )
                    };
                }
                let _ = done.send(());
            }
            Command::Stop => break,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::time::Duration;

    #[test]
    fn wildcard_binds_are_advertised_as_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(advertisable(a("0.0.0.0:9092")), a("127.0.0.1:9092"));
        assert_eq!(advertisable(a("[::]:9092")), a("[::1]:9092"));
        assert_eq!(advertisable(a("127.0.0.2:5")), a("127.0.0.2:5"));
    }

    /// Metadata names the forwarders, not the mock's own ports.
    #[tokio::test]
    async fn metadata_advertises_the_forwarders() {
        let kafka = EmbeddedKafka::start(3, 2, &["t".into()], "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let public = kafka.public_addr();
        let servers = kafka.bootstrap_servers().to_owned();
        assert!(servers.starts_with(&public.to_string()), "{servers}");
        let brokers = tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", public.to_string())
                .create()
                .unwrap();
            let md = c
                .fetch_metadata(Some("t"), Duration::from_secs(10))
                .unwrap();
            md.brokers()
                .iter()
                .map(|b| format!("{}:{}", b.host(), b.port()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let mut want: Vec<_> = servers.split(',').map(str::to_owned).collect();
        let mut got = brokers;
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    /// Past 5 MiB in a partition the mock drops the oldest batches; the
    /// watcher counts them.
    #[tokio::test]
    async fn dropped_records_are_counted() {
        let kafka = EmbeddedKafka::start(1, 1, &["big".into()], "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let control = kafka.control();
        let c2 = control.clone();
        assert_eq!(
            tokio::task::spawn_blocking(move || c2.records_dropped())
                .await
                .unwrap()
                .unwrap(),
            0
        );
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let value = vec![b'x'; 256 * 1024];
        // 32 batches of 256 KiB: 8 MiB, so at least 3 MiB worth goes.
        for i in 0..32 {
            producer
                .send(
                    FutureRecord::to("big")
                        .key(&format!("k{i}"))
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        let dropped = tokio::task::spawn_blocking(move || control.records_dropped())
            .await
            .unwrap()
            .unwrap();
        assert!((8..32).contains(&dropped), "dropped {dropped}");
    }
}
