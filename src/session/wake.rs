//! What a connection between packets waits for and what wakes it. An idle
//! connection's task holds only the session, the socket and [`Waits`] (a
//! future of references, polled by hand); the busy spells that act on a
//! [`Wake`] are boxed futures in [`connection`](super::connection), and
//! [`Session::on_wake`] is how each wake is acted on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::close::CloseReason;
use super::connection::{Session, Shared};
use super::framed::Framed;
use crate::commands::outbound::Outbound;
use crate::commands::Doorbell;
use crate::ingest::publish::Event;

/// The `select!` loop's own state, kept across busy spells.
pub(super) struct Loop {
    /// Whether the socket was being read on the last turn (the keep-alive
    /// clock restarts when reading resumes).
    pub(super) was_reading: bool,
    /// Shutdown: reading has stopped; the connection ends once every
    /// acknowledgement is written.
    pub(super) draining: bool,
    /// Shutdown with a spread: this connection's moment to start draining.
    pub(super) drain_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes are buffered that may hold complete packets not yet handled
    /// (a client may send PUBLISH right behind CONNECT, in one segment).
    pub(super) input_ready: bool,
}

/// How a busy spell ended.
pub(super) enum Served {
    /// Nothing is owed or waited for but the device, Kafka's commands and
    /// the clock: the connection may wait in its small idle state.
    Idle,
    /// The connection ends.
    Closed(CloseReason),
}

/// What woke the connection.
pub(super) enum Wake {
    /// The replica started to drain.
    Cancelled,
    /// This connection's moment in the shutdown spread came.
    DrainNow,
    /// The ingest path needs the task (an outcome, queue space, throttle end).
    Ingest(Event),
    /// The socket was read (`Ok(0)`: EOF).
    Read(std::io::Result<usize>),
    /// A newer connect of the same client id took over.
    TakenOver,
    /// A command to write.
    Command(Box<crate::commands::Command>),
    /// No packet within 1.5 × keep-alive.
    KeepAlive,
    /// The HTTP hook answered about the packet that waits.
    Verdict(crate::auth::hook::HookVerdict),
    /// The credentials expired.
    Expired,
    /// The rest of a partial packet did not come in time.
    PartialTimeout,
}

/// What the connection waits for when nothing is owed to Kafka or the hook:
/// the socket, its doorbell (takeover, drain), commands and its deadlines.
/// A future polled by hand, because it is what an idle connection holds:
/// references only, no waiter registration of its own (the doorbell's
/// waker is in the doorbell). Cancellation-safe: `poll_read_more` loses no
/// bytes, a command is taken only when it is returned, and the doorbell and
/// deadlines hold no data.
pub(super) struct Waits<'a, S> {
    /// The socket, read without a buffer of the connection's own.
    pub(super) framed: &'a mut Framed<S>,
    /// The socket may be read (also arms the keep-alive and partial-packet deadlines).
    pub(super) reading: bool,
    /// 1.5 × keep-alive since the last packet, when the client asked for one.
    pub(super) keep_alive: Option<Pin<&'a mut tokio::time::Sleep>>,
    /// Takeover and drain.
    pub(super) bell: &'a Doorbell,
    /// Whether a drain is news (not begun or scheduled yet).
    pub(super) drain: bool,
    /// This connection's moment in the shutdown spread, once scheduled.
    pub(super) drain_at: Option<&'a mut Pin<Box<tokio::time::Sleep>>>,
    /// Present while a command may be written.
    pub(super) commands: Option<&'a mut Outbound>,
    /// When the credentials expire (JWT `exp`).
    pub(super) expiry: Option<&'a mut Pin<Box<tokio::time::Sleep>>>,
    /// When the rest of a partial packet is due.
    pub(super) partial: Option<&'a mut Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Waits<'_, S> {
    type Output = Wake;

    /// The first of the waits that is ready, in the order of the fields.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        let w = self.get_mut();
        let mask = Doorbell::TAKEN_OVER | if w.drain { Doorbell::DRAIN } else { 0 };
        if let Poll::Ready(rung) = w.bell.poll(cx, mask) {
            // A takeover outranks a drain: the device is already elsewhere.
            return Poll::Ready(if rung & Doorbell::TAKEN_OVER != 0 {
                Wake::TakenOver
            } else {
                Wake::Cancelled
            });
        }
        if let Some(d) = w.drain_at.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::DrainNow);
            }
        }
        if w.reading {
            if let Poll::Ready(read) = w.framed.poll_read_more(cx) {
                return Poll::Ready(Wake::Read(read));
            }
        }
        if let Some(out) = w.commands.as_mut() {
            if let Poll::Ready(cmd) = out.poll_next(cx) {
                return Poll::Ready(Wake::Command(cmd));
            }
        }
        if let (Some(k), true) = (w.keep_alive.as_mut(), w.reading) {
            if k.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::KeepAlive);
            }
        }
        if let Some(e) = w.expiry.as_mut() {
            if e.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Expired);
            }
        }
        if let (Some(p), true) = (w.partial.as_mut(), w.reading) {
            if p.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::PartialTimeout);
            }
        }
        Poll::Pending
    }
}

impl Session {
    /// Bytes left over after the last complete packet are the start of one
    /// whose rest must come within the deadline, counted from when the
    /// previous packet completed.
    pub(super) fn arm_partial_deadline<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &Framed<S>,
        shared: &Shared,
        handled: usize,
    ) {
        if !framed.has_buffered_input() {
            self.partial_deadline = None;
            return;
        }
        let timeout = Duration::from_millis(shared.mqtt.partial_packet_timeout_ms);
        let at = tokio::time::Instant::now() + timeout;
        match self.partial_deadline.as_mut() {
            Some(d) if handled > 0 => d.as_mut().reset(at),
            Some(_) => {}
            None => self.partial_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
    /// Acts on what woke the connection; `Err` ends it.
    pub(super) fn on_wake<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wake: Wake,
        framed: &mut Framed<S>,
        shared: &Shared,
        st: &mut Loop,
    ) -> Result<(), CloseReason> {
        match wake {
            Wake::Cancelled if shared.disconnect_spread.is_zero() => {
                // Stop reading; finish what Kafka already has, then say goodbye.
                st.draining = true;
            }
            Wake::Cancelled => {
                // Keep serving until this connection's moment in the window.
                let at = spread_delay(&self.device_id, shared.disconnect_spread);
                st.drain_at = Some(Box::pin(tokio::time::sleep(at)));
            }
            Wake::DrainNow => st.draining = true,
            Wake::Ingest(Event::Outcome(outcome)) => {
                let mut next = Some(outcome);
                // Delivery reports come in batches: acknowledge every one
                // that is ready, then write them with one syscall.
                while let Some(outcome) = next {
                    let (ack, close) = self.ingest.acknowledge(outcome, self.problem_info);
                    if let Some(ack) = ack {
                        framed.queue(&ack, self.version);
                    }
                    if let Some(close) = close {
                        // The negative ack is queued; the DISCONNECT that
                        // follows it is written behind it in one flush.
                        return Err(close.into());
                    }
                    next = self.ingest.ready_outcome();
                }
                // `strict`: the record held behind the acknowledged ones goes to Kafka now.
                self.ingest.release_held(&shared.pipeline);
            }
            // `strict`: a held record waits behind a pending one (QoS 0, or
            // its own queue-full retry) as well.
            Wake::Ingest(Event::Space) => self.ingest.retry_pending(&shared.pipeline),
            // A 3.1.1 connection over its rate limit may be read again.
            Wake::Ingest(Event::Unthrottled) => st.input_ready = true,
            Wake::Read(Ok(0)) => return Err(CloseReason::ConnectionLost),
            Wake::Read(Ok(_)) => st.input_ready = true,
            Wake::Read(Err(e)) => return Err(CloseReason::Io(e)),
            Wake::TakenOver => return Err(CloseReason::TakenOver),
            Wake::Command(cmd) => self.deliver(framed, cmd, &shared.journal),
            Wake::KeepAlive => return Err(CloseReason::KeepAliveTimeout),
            Wake::Verdict(verdict) => {
                self.authorized(framed, verdict, shared)?;
                st.input_ready = true;
            }
            Wake::Expired => return Err(CloseReason::CredentialsExpired),
            Wake::PartialTimeout => return Err(CloseReason::PartialPacketTimeout),
        }
        Ok(())
    }
}

/// A pseudo-random moment in `[0, window)` for this connection to be told
/// to go at shutdown.
fn spread_delay(device_id: &str, window: Duration) -> Duration {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write(device_id.as_bytes());
    let ms = window.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}
