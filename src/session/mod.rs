//! One task per device connection. It owns the socket and calls into the
//! two data paths ([`crate::ingest`], [`crate::commands`]).
//!
//! Files: `connection.rs` (the shared state, the task and its `select!`
//! loop, packet dispatch), `wake.rs` (what an idle connection waits for
//! and what wakes it), `connect.rs` (the CONNECT phase: validation,
//! authentication, takeover, CONNACK), `authorize.rs` (ACL and HTTP hook
//! decisions per PUBLISH topic and SUBSCRIBE filter), `will.rs` (last
//! wills and their delay), `close.rs` (why a connection ended, and the
//! cleanup after it),
//! `framed.rs` (the socket with its buffers and write deadline),
//! `config.rs` (`[mqtt]`, `[shutdown]`).

mod authorize;
mod close;
mod commands;
pub mod config;
mod connect;
pub mod connection;
pub mod framed;
mod wake;
mod will;

pub use close::CloseReason;
pub use connect::PeerCert;
pub use connection::Shared;
