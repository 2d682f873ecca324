//! The live client connections: who they are, and a control path to each one.
//!
//! A connection registers after its handshake and leaves when its task ends. The management API
//! and alarms reach a connection through its control sender, which the connection polls before
//! anything else, so a control message gets through even when its deliveries are backed up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Control messages a connection can have waiting: they are rare (operator actions and alarm
/// transitions), so a few slots bound their memory; a sender finding them full is told so.
const CONTROL_SLOTS: usize = 8;

/// What the broker can tell a connection to do, ahead of its queue events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close the connection with this reply code and full reply text.
    Close {
        /// The reply code.
        code: u16,
        /// The reply text as the client sees it, e.g. `CONNECTION_FORCED - ...`.
        text: String,
    },
    /// Stop reading a publishing connection, telling clients that asked with `connection.blocked`.
    Block {
        /// The reason given in `connection.blocked`.
        reason: String,
    },
    /// Lift a [`Control::Block`].
    Unblock,
}

/// Where a connection receives its control messages.
pub type ControlReceiver = mpsc::Receiver<Control>;

/// What a client told the broker about itself when it connected.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client's address.
    pub peer: SocketAddr,
    /// The broker's address it connected to, where the transport has one.
    pub local: Option<SocketAddr>,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: Arc<str>,
    /// The client properties from `connection.start-ok`.
    pub client_properties: FieldTable,
}

/// A registered connection as the broker sees it; the connection holds one too, to count channels.
#[derive(Debug)]
pub struct Registered {
    /// The connection id.
    pub id: u64,
    /// Who connected.
    pub identity: Identity,
    /// When the handshake finished.
    pub connected_at: SystemTime,
    /// Channels open (or closing) on it, updated when one opens or closes, never per message.
    channels: AtomicU32,
    control: mpsc::Sender<Control>,
}

impl Registered {
    /// Channels open on the connection now.
    pub fn channels(&self) -> u32 {
        self.channels.load(Ordering::Relaxed)
    }

    /// Records how many channels the connection has.
    pub fn set_channels(&self, n: usize) {
        self.channels
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// The name the client gave its connection (`connection_name` in its properties), if any.
    pub fn name(&self) -> Option<String> {
        match self
            .identity
            .client_properties
            .inner()
            .get("connection_name")
        {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }

    /// The name RabbitMQ gives a connection: "peer -> local".
    pub fn display_name(&self) -> String {
        match self.identity.local {
            Some(local) => format!("{} -> {}", self.identity.peer, local),
            None => self.identity.peer.to_string(),
        }
    }

    /// Queues a control message; false if the connection is gone or has too many waiting.
    pub fn control(&self, msg: Control) -> bool {
        self.control.try_send(msg).is_ok()
    }
}

/// The registry of live connections, by id.
#[derive(Debug, Default)]
pub struct Connections {
    live: Mutex<HashMap<u64, Arc<Registered>>>,
}

impl Connections {
    /// Registers a connection that finished its handshake, with its control path.
    pub fn register(&self, id: u64, identity: Identity) -> (Arc<Registered>, ControlReceiver) {
        let (tx, rx) = mpsc::channel(CONTROL_SLOTS);
        let entry = Arc::new(Registered {
            id,
            identity,
            connected_at: SystemTime::now(),
            channels: AtomicU32::new(0),
            control: tx,
        });
        self.live.lock().insert(id, Arc::clone(&entry));
        (entry, rx)
    }

    /// Forgets a connection that ended.
    pub fn remove(&self, id: u64) {
        self.live.lock().remove(&id);
    }

    /// Every live connection, in id order.
    pub fn list(&self) -> Vec<Arc<Registered>> {
        let mut all: Vec<_> = self.live.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// One live connection.
    pub fn get(&self, id: u64) -> Option<Arc<Registered>> {
        self.live.lock().get(&id).cloned()
    }

    /// How many live connections `which` picks.
    pub fn count(&self, which: impl Fn(&Registered) -> bool) -> usize {
        self.live.lock().values().filter(|c| which(c)).count()
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
