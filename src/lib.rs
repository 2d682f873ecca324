//! Warren, an AMQP 0-9-1 message broker for RabbitMQ clients.
//!
//! The path of a message, top to bottom:
//! - [`server`]: one broker behind its listeners: the AMQP accept loop and graceful shutdown.
//! - [`connection`]: one task per socket: handshake, heartbeats, channel table, batched writes.
//! - [`channel`]: the per-channel state machine: publish assembly, confirms, tx, consumers, acks.
//! - [`broker`]: vhosts, users, exchanges, bindings and the router.
//! - [`queue`]: one queue's messages and consumers.
//! - [`store`]: durable storage.
//! - [`protocol`]: frames, methods, content and reply codes (pure, no I/O).
//! - [`management`]: the RabbitMQ-compatible management HTTP API.
//! - [`config`]: settings from the TOML file and the command line.
//! - [`ctl`]: `warren ctl`, rabbitmqctl's commands for operators, through the management API.
//! - [`log`]: log output that client-supplied text cannot forge.
//! - [`stats`]: counters kept where the work happens, and the samples taken of them.

#![forbid(unsafe_code)]

pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod log;
pub mod management;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod stats;
pub mod store;
pub mod tls;

pub use config::Config;
pub use server::{Server, run, serve_amqp};
