//! A TCP forwarder in front of the nodes' `LINK` listeners: the network
//! path between clients and the cluster, with a switch that makes it go
//! silent. Silent means what a dead switch or a black-holing firewall does:
//! connections stay open, no reset, no FIN, and no byte moves in either
//! direction (bytes already read are held, new connections are accepted but
//! not carried on), until [`Link::restore`]. Killing or pausing a broker
//! cannot show this: a killed process resets its sockets, and a paused one
//! still has a kernel that accepts and acknowledges.
//!
//! Clients that bootstrap with [`crate::Cluster::link_bootstrap`] reach
//! every broker through the link (the brokers advertise the link's ports on
//! `LINK`); the cluster's own traffic and the other listeners do not pass
//! through it.
//!
//! Plain threads, one per listener and two per connection: a Kafka client
//! opens a handful of connections per broker.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a waiting thread looks at the switches.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Switches {
    silent: AtomicBool,
    stop: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Bytes carried so far, both directions.
    carried: AtomicU64,
}

impl Switches {
    /// Blocks while the link is silent; false once it is stopping.
    fn wait_for_voice(&self) -> bool {
        while self.silent.load(Ordering::SeqCst) {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(POLL);
        }
        !self.stop.load(Ordering::SeqCst)
    }
}

/// A running forwarder; dropping it closes every listener and connection.
pub struct Link {
    switches: Arc<Switches>,
    acceptors: Vec<JoinHandle<()>>,
}

impl Link {
    /// Listens on every `front` port and carries each connection to
    /// `127.0.0.1:back` (pairs as [`crate::Cluster::link_ports`] gives them).
    pub fn start(pairs: &[(u16, u16)]) -> std::io::Result<Link> {
        let switches = Arc::new(Switches::default());
        let mut acceptors = Vec::new();
        for &(front, back) in pairs {
            let listener = TcpListener::bind(("127.0.0.1", front))?;
            listener.set_nonblocking(true)?;
            let s = switches.clone();
            acceptors.push(
                std::thread::Builder::new()
                    .name(format!("link-{front}"))
                    .spawn(move || accept_loop(listener, back, s))?,
            );
        }
        Ok(Link {
            switches,
            acceptors,
        })
    }

    /// The path goes silent: nothing more moves, nothing is closed.
    pub fn silence(&self) {
        self.switches.silent.store(true, Ordering::SeqCst);
    }

    /// The path carries bytes again, held ones first.
    pub fn restore(&self) {
        self.switches.silent.store(false, Ordering::SeqCst);
    }

    /// True while silent.
    pub fn is_silent(&self) -> bool {
        self.switches.silent.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.switches.accepted.load(Ordering::Relaxed)
    }

    /// Bytes carried so far, both directions together.
    pub fn carried(&self) -> u64 {
        self.switches.carried.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.switches.stop.store(true, Ordering::SeqCst);
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }
}

fn accept_loop(listener: TcpListener, back: u16, s: Arc<Switches>) {
    while !s.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                let s = s.clone();
                let _ = std::thread::Builder::new()
                    .name("link-conn".into())
                    .spawn(move || carry(client, back, s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// One connection: connect upstream once the link has a voice, then copy
/// both ways until either side ends or the link stops.
fn carry(client: TcpStream, back: u16, s: Arc<Switches>) {
    let _ = client.set_nonblocking(false);
    if !s.wait_for_voice() {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", back)) else {
        // The node is down: the client sees its connection close, as it
        // would connecting to the node itself.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let s2 = s.clone();
    let up = std::thread::Builder::new()
        .name("link-up".into())
        .spawn(move || copy(client2, server2, s2));
    copy(server, client, s);
    if let Ok(up) = up {
        let _ = up.join();
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, s: Arc<Switches>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !s.wait_for_voice() {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // Bytes read just as the link went silent are held, not carried.
        if !s.wait_for_voice() {
            break;
        }
        // Counted before the write: once the far end has the bytes, the
        // count has them too (a test reads it right after an echo).
        s.carried.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; returns the port.
    fn echo_server() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming().map_while(Result::ok) {
                std::thread::spawn(move || {
                    let mut w = c.try_clone().unwrap();
                    let mut r = c;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        port
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn read_n(c: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
        let mut got = vec![0u8; n];
        c.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn carries_bytes_holds_them_while_silent_and_delivers_them_after() {
        let back = echo_server();
        let front = free_port();
        let link = Link::start(&[(front, back)]).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", front)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"hello").unwrap();
        assert_eq!(read_n(&mut c, 5).unwrap(), b"hello");

        link.silence();
        assert!(link.is_silent());
        let carried = link.carried();
        c.write_all(b"held!").unwrap();
        // Nothing comes back while silent, and the connection is not reset.
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut one = [0u8; 1];
        let r = c.read(&mut one);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "silent link answered: {r:?}"
        );
        assert_eq!(link.carried(), carried, "bytes moved while silent");

        link.restore();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_n(&mut c, 5).unwrap(), b"held!");
        assert_eq!(link.accepted(), 1);
    }

    #[test]
    fn a_connection_made_while_silent_is_carried_once_restored() {
        let back = echo_server();
        let front = free_port();
        let link = Link::start(&[(front, back)]).unwrap();
        link.silence();
        let mut c = TcpStream::connect(("127.0.0.1", front)).unwrap();
        c.write_all(b"late").unwrap();
        link.restore();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_n(&mut c, 4).unwrap(), b"late");
    }

    #[test]
    fn a_dead_node_behind_the_link_closes_the_client() {
        let front = free_port();
        let dead = free_port();
        let _link = Link::start(&[(front, dead)]).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", front)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut one = [0u8; 1];
        assert!(matches!(c.read(&mut one), Ok(0) | Err(_)));
    }
}
