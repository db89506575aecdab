//! Who a device is and what it may touch. [`Authenticator`] runs the
//! configured methods in order at CONNECT — client certificate
//! ([`identity`]), password file ([`passwd`]), JWT ([`jwt`]), HTTP hook
//! ([`hook`]) — and yields the [`Identity`] whose device id becomes the
//! Kafka key and the session-table key. [`acl`] then decides each PUBLISH
//! topic and SUBSCRIBE filter. Credential files reload when they change
//! ([`watch`]).

pub mod hook;
pub mod jwt;
pub mod passwd;
pub mod watch;
