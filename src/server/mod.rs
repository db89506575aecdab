//! The network edge: listeners with their accept loops ([`listener`]) and the
//! TLS configuration ([`tls`]).

pub mod config;
pub mod listener;
pub mod proxy_protocol;
pub mod tls;
pub mod websocket;
