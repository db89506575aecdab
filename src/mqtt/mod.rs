//! The MQTT domain with no I/O: packet types ([`packet`]), the strict decoder
//! ([`codec`], tests in `codec_tests.rs`), the encoder ([`encode`]),
//! protocol errors that cite the spec ([`error`]) and topic names and
//! filters ([`topic`]).

pub mod codec;
pub mod encode;
pub mod error;
pub mod packet;
pub mod topic;
