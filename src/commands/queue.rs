//! One connection's command queue: bounded, filled by the consumer through
//! the session table ([`Sender::try_send`]), emptied by the connection task
//! ([`Receiver::poll_recv`]). It holds what a tokio mpsc channel held for
//! this one-producer-at-a-time, one-consumer use, in ~100 B instead of
//! ~800 B (the channel's state and its first block of 32 slots): every
//! device subscribed to its commands has one for as long as it is
//! connected, idle or not.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::table::Command;

/// The queue both ends share.
struct Shared {
    state: Mutex<State>,
    /// The connection task, woken when a command arrives.
    waker: AtomicWaker,
    /// `commands.max_queued_per_device`.
    capacity: usize,
}

struct State {
    commands: VecDeque<Box<Command>>,
    /// The connection is ending: nothing more is accepted.
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock still holds a valid queue: a push or pop is one
        // call that cannot be left half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The consumer's end, held by the session table.
#[derive(Clone)]
pub struct Sender(Arc<Shared>);

/// The connection's end.
pub struct Receiver(Arc<Shared>);

/// Why a command was not queued; it comes back.
#[derive(Debug)]
pub enum TrySendError {
    /// `capacity` commands wait already.
    Full(Box<Command>),
    /// The connection is ending.
    Closed(Box<Command>),
}

/// A queue of at most `capacity` commands.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            commands: VecDeque::new(),
            closed: false,
        }),
        waker: AtomicWaker::new(),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `cmd` and wakes the connection, or gives it back.
    pub fn try_send(&self, cmd: Box<Command>) -> Result<(), TrySendError> {
        {
            let mut state = self.0.state();
            if state.closed {
                return Err(TrySendError::Closed(cmd));
            }
            if state.commands.len() >= self.0.capacity {
                return Err(TrySendError::Full(cmd));
            }
            state.commands.push_back(cmd);
        }
        self.0.waker.wake();
        Ok(())
    }
}

impl Receiver {
    /// The next command; pending while none waits.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Box<Command>> {
        // Register before looking, so a push between the two is not missed.
        self.0.waker.register(cx.waker());
        match self.try_recv() {
            Some(cmd) => Poll::Ready(cmd),
            None => Poll::Pending,
        }
    }

    /// The next command, if one waits. An emptied queue gives its memory
    /// back, so an idle connection does not keep its largest burst.
    pub fn try_recv(&mut self) -> Option<Box<Command>> {
        let mut state = self.0.state();
        let cmd = state.commands.pop_front();
        if state.commands.is_empty() && state.commands.capacity() > 0 {
            state.commands = VecDeque::new();
        }
        cmd
    }

    /// Refuses further commands; those already queued can still be taken.
    pub fn close(&mut self) {
        self.0.state().closed = true;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::packet::QoS;
    use bytes::Bytes;

    fn cmd(n: i64) -> Box<Command> {
        Box::new(Command {
            device_id: "d".into(),
            mqtt_topic: "devices/d/commands/x".into(),
            payload: Bytes::from_static(b"go"),
            qos: QoS::AtLeastOnce,
            expires_at_ms: None,
            command_id: None,
            source: ("iot.commands".into(), 0, n),
            created_ms: 0,
            retain: false,
        })
    }

    #[test]
    fn bounded_in_order_and_closed_when_the_connection_ends() {
        let (tx, mut rx) = channel(2);
        tx.try_send(cmd(1)).unwrap();
        tx.try_send(cmd(2)).unwrap();
        assert!(matches!(tx.try_send(cmd(3)), Err(TrySendError::Full(c)) if c.source.2 == 3));
        assert_eq!(rx.try_recv().unwrap().source.2, 1);
        tx.try_send(cmd(4)).unwrap();
        rx.close();
        assert!(matches!(tx.try_send(cmd(5)), Err(TrySendError::Closed(_))));
        // What was queued before the close is still there to be reported.
        assert_eq!(rx.try_recv().unwrap().source.2, 2);
        assert_eq!(rx.try_recv().unwrap().source.2, 4);
        assert!(rx.try_recv().is_none());
        drop(rx);
        assert!(matches!(tx.try_send(cmd(6)), Err(TrySendError::Closed(_))));
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_a_command_from_another_thread() {
        let (tx, mut rx) = channel(4);
        let sender = std::thread::spawn(move || tx.try_send(cmd(7)).unwrap());
        let got = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
        assert_eq!(got.source.2, 7);
        sender.join().unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(rx.poll_recv(&mut cx).is_pending(), "nothing else was sent");
    }
}
