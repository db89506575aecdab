//! Kafka → device: commands that back-end services write to Kafka, and
//! what the proxy reports about them. The [`consumer`] reads every
//! partition of the commands, retained-commands and sessions topics on
//! every replica and hands each command to the [`table`] (who is connected
//! here); commands for devices with persistent sessions that are not
//! connected wait in the [`offline`] index; retained commands live in the
//! [`retained`] store until a device subscribes. One connection's side —
//! its subscriptions, the commands queued for it and those it has not yet
//! acknowledged — is [`outbound::Outbound`], its queue a [`queue`]. Every outcome is written to
//! Kafka by the [`journal`] (receipts, lifecycle, session announcements).
//!
//! Files: `consumer.rs`, `table.rs`, `offline.rs`, `retained.rs`,
//! `outbound.rs`, `queue.rs`, `journal.rs`, `config.rs` (`[commands]`, `[lifecycle]`).

pub mod config;
pub mod consumer;
pub mod journal;
pub mod offline;
pub mod outbound;
pub mod queue;
pub mod retained;
pub mod table;

pub use self::config::{CommandsConfig, LifecycleConfig};
pub use self::journal::{Journal, Status};
pub use self::table::{Command, Doorbell, SessionTable};
