//! The network edge: listeners with their accept loops and transports
//! ([`listener`]), TLS with certificate reloading ([`tls`]), the TLS stream
//! that holds no buffer while idle ([`tls_stream`]), MQTT over WebSocket
//! ([`websocket`]), PROXY protocol v2 from load balancers
//! ([`proxy_protocol`]) and the `[listeners]` section ([`config`]). Each
//! accepted connection becomes a [`crate::session`] task.

pub mod config;
pub mod listener;
pub mod proxy_protocol;
pub mod tls;
pub mod tls_stream;
pub mod websocket;
