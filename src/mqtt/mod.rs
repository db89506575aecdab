//! The MQTT domain with no I/O: packet types ([`packet`]), the strict decoder
//! ([`codec`]), the encoder ([`encode`]) and protocol errors that cite the
//! spec ([`error`]).

pub mod codec;
pub mod encode;
pub mod error;
pub mod packet;
pub mod topic;
