//! Kafka hung, not down, on the embedded broker: `mqtt-kafka-proxy
//! dev-kafka` runs in a process of its own so that it can be stopped with
//! SIGSTOP, and the real proxy binary runs against it. What is checked is
//! in [`crate::common::hang`]; tests/cluster.rs runs the same against a real
//! 3-broker cluster.

use crate::common::hang::a_hang_is_reported_and_the_gauges_stay_live;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_is_reported_in_one_clear_line_and_the_gauges_stay_live() {
    let dir = tempfile::tempdir().unwrap();
    // The broker, in its own process, with every topic of the default config.
    let broker_config = write_loopback_config(dir.path());
    let (broker, mut broker_out) =
        spawn_binary(&broker_config, &["dev-kafka", "--listen", "127.0.0.1:0"]);
    let bootstrap = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = broker_out.next_line().await.unwrap() {
            if let Some(b) = line.strip_prefix("dev-kafka bootstrap=") {
                return b.to_owned();
            }
        }
        panic!("dev-kafka exited before it printed its address");
    })
    .await
    .expect("dev-kafka starts");
    tokio::spawn(async move { while let Ok(Some(_)) = broker_out.next_line().await {} });
    a_hang_is_reported_and_the_gauges_stay_live(&bootstrap, vec![broker.id().unwrap()]).await;
}
