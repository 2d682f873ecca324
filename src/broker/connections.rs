//! The live client connections: who they are, and a control path to each one.
//!
//! A connection registers after its handshake and leaves when its task ends. The management API
//! and alarms reach a connection through its control sender, which the connection polls before
//! anything else, so a control message gets through even when its deliveries are backed up.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::SystemTime;

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::stats::{Counters, History, Sample, SizeHistogram, Totals};

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
    /// The SASL mechanism it logged in with.
    pub auth_mechanism: &'static str,
    /// The TLS session it came over, if it did.
    pub tls: Option<TlsSession>,
}

/// What a TLS connection negotiated, as the management API shows it.
#[derive(Debug, Clone, Default)]
pub struct TlsSession {
    /// `tlsv1.2` or `tlsv1.3`.
    pub protocol: &'static str,
    /// The cipher suite's name.
    pub cipher: String,
    /// The client certificate's subject (RFC 4514), if it showed one.
    pub peer_subject: Option<String>,
    /// The client certificate's issuer (RFC 4514), if it showed one.
    pub peer_issuer: Option<String>,
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
    /// The open channels' statistics, by number.
    channel_stats: Mutex<BTreeMap<u16, Arc<ChannelStats>>>,
    /// Channels opened and closed on it.
    opened: AtomicU64,
    closed: AtomicU64,
    /// Bytes and reads and writes on its socket.
    pub counters: Counters,
    /// Its recent samples.
    pub history: History,
    control: mpsc::Sender<Control>,
}

/// How a channel publishes, as listings show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Neither confirms nor transactions.
    Plain = 0,
    /// Publisher confirms.
    Confirm = 1,
    /// Transactions.
    Transactional = 2,
}

/// One channel's statistics: counters and levels its connection's task writes, as the work
/// happens, and the API and ticker read.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// The channel number.
    pub number: u16,
    /// What it did: publishes, confirms, deliveries, gets, acks, returns.
    pub counters: Counters,
    /// The sizes of the messages published on it.
    pub sizes: SizeHistogram,
    /// Its recent samples.
    pub history: History,
    /// Consumers on it.
    pub consumers: AtomicU32,
    /// Deliveries it holds unacknowledged.
    pub unacked: AtomicU64,
    /// Publishes not yet confirmed.
    pub unconfirmed: AtomicU64,
    /// Publishes held by an open transaction.
    pub uncommitted: AtomicU64,
    /// Acks, rejects and nacks held by an open transaction.
    pub acks_uncommitted: AtomicU64,
    /// Per-consumer prefetch (`basic.qos` with `global=false`).
    pub prefetch: AtomicU32,
    /// Channel-wide prefetch (`basic.qos` with `global=true`).
    pub global_prefetch: AtomicU32,
    /// A [`Mode`].
    mode: AtomicU8,
    /// Closed: its counts moved to its vhost's.
    closed: AtomicBool,
}

impl ChannelStats {
    /// Sets how it publishes.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// How it publishes.
    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Confirm,
            2 => Mode::Transactional,
            _ => Mode::Plain,
        }
    }

    /// Notes that a transaction was committed or rolled back: nothing is held any more.
    pub fn tx_ended(&self) {
        self.uncommitted.store(0, Ordering::Relaxed);
        self.acks_uncommitted.store(0, Ordering::Relaxed);
    }

    /// Marks it closed and gives what it counted, for its vhost to keep.
    pub fn retire(&self) -> Totals {
        self.closed.store(true, Ordering::Relaxed);
        self.counters.totals()
    }

    /// Whether it closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Takes a sample of its counters.
    pub fn sample(&self, at_ms: u64) -> Sample {
        let mut gauges = [0; crate::stats::GAUGES];
        gauges[crate::stats::Gauge::Unacked as usize] = self.unacked.load(Ordering::Relaxed);
        self.history.record(at_ms, self.counters.totals(), gauges)
    }
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

    /// Registers a channel that opened, returning the statistics it keeps.
    pub fn open_channel(&self, number: u16) -> Arc<ChannelStats> {
        let stats = Arc::new(ChannelStats {
            number,
            ..ChannelStats::default()
        });
        self.channel_stats.lock().insert(number, Arc::clone(&stats));
        self.opened.fetch_add(1, Ordering::Relaxed);
        stats
    }

    /// Forgets a channel that is gone.
    pub fn close_channel(&self, number: u16) {
        if self.channel_stats.lock().remove(&number).is_some() {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets every channel.
    pub fn close_channels(&self) {
        let mut open = self.channel_stats.lock();
        self.closed.fetch_add(open.len() as u64, Ordering::Relaxed);
        open.clear();
    }

    /// Its channels' statistics, by number.
    pub fn channel_stats(&self) -> Vec<Arc<ChannelStats>> {
        self.channel_stats.lock().values().cloned().collect()
    }

    /// Takes a sample of its socket counters.
    pub fn sample(&self, at_ms: u64) -> Sample {
        self.history
            .record(at_ms, self.counters.totals(), [0; crate::stats::GAUGES])
    }

    /// The name the client gave its connection (`connection_name` in its properties), if any.
    pub fn name(&self) -> Option<String> {
        self.client_property("connection_name")
    }

    /// A string the client told about itself in its properties (`product`, `version`...).
    pub fn client_property(&self, key: &str) -> Option<String> {
        match self.identity.client_properties.inner().get(key) {
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
    /// Connections and channels opened and closed since the broker started.
    pub churn: Churn,
}

/// How many connections and channels came and went, RabbitMQ's `churn_rates`.
#[derive(Debug, Default)]
pub struct Churn {
    /// Connections opened.
    pub connections_created: AtomicU64,
    /// Connections closed.
    pub connections_closed: AtomicU64,
    /// Channels opened.
    pub channels_created: AtomicU64,
    /// Channels closed.
    pub channels_closed: AtomicU64,
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
            channel_stats: Mutex::default(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            counters: Counters::default(),
            history: History::default(),
            control: tx,
        });
        self.live.lock().insert(id, Arc::clone(&entry));
        self.churn
            .connections_created
            .fetch_add(1, Ordering::Relaxed);
        (entry, rx)
    }

    /// Forgets a connection that ended, returning it.
    pub fn remove(&self, id: u64) -> Option<Arc<Registered>> {
        let gone = self.live.lock().remove(&id)?;
        let churn = &self.churn;
        churn.connections_closed.fetch_add(1, Ordering::Relaxed);
        churn
            .channels_created
            .fetch_add(gone.opened.load(Ordering::Relaxed), Ordering::Relaxed);
        churn
            .channels_closed
            .fetch_add(gone.closed.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(gone)
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

    /// Connections created and closed, then channels created and closed, since the start.
    pub fn churn_totals(&self) -> [u64; 4] {
        let c = &self.churn;
        let mut t = [
            c.connections_created.load(Ordering::Relaxed),
            c.connections_closed.load(Ordering::Relaxed),
            c.channels_created.load(Ordering::Relaxed),
            c.channels_closed.load(Ordering::Relaxed),
        ];
        for live in self.live.lock().values() {
            t[2] += live.opened.load(Ordering::Relaxed);
            t[3] += live.closed.load(Ordering::Relaxed);
        }
        t
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
