//! One task per device connection: TLS handshake and CONNECT under a
//! deadline, then the `select!` loop that turns PUBLISH packets into Kafka
//! records and Kafka acknowledgements into PUBACK / PUBREC ([`connection`]),
//! over a framed socket ([`framed`]).

pub mod connection;
pub mod framed;
mod inflight;
pub mod offline;
pub mod retained;
pub mod table;

pub use connection::{CloseReason, Shared};
