//! Vhosts, users, exchanges, bindings, the router and the queue registry.

pub mod auth;
pub mod connections;
pub mod delayed;
pub mod disk;
mod durable;
pub mod exchange;
pub mod headers;
mod targets;
pub mod topic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;
use tracing::{info, warn};

use crate::config::{Config, User};
use crate::protocol::erlang::{self, Print};
use crate::protocol::table::type_name;
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Message, code};
use crate::queue::args::{Declared, QueueArgs};
use crate::queue::log::{Pages, SharedRecord};
use crate::queue::memory::MemoryGauge;
use crate::queue::paging::Pager;
use crate::queue::{Queue, QueueOptions};
use crate::store::{Store, StoreError};
use exchange::{Binding, Destination, Exchange, ExchangeKind};

/// The whole broker: settings and vhosts.
#[derive(Debug)]
pub struct Broker {
    /// Its settings.
    pub config: Config,
    vhosts: HashMap<String, Arc<VHost>>,
    next_connection: AtomicU64,
    /// Direct reply-to names and the channels whose reply consumers they reach.
    replies: parking_lot::Mutex<HashMap<String, (crate::queue::EventSender, u16)>>,
    /// Messages that delayed exchanges hold, in every vhost.
    delayed: Arc<delayed::Delayed>,
    /// The memory budget of queued messages (none for a broker kept in memory).
    pager: Option<Arc<Pager>>,
    /// Every message byte held in memory, and the alarm past the budget.
    pub memory: Arc<MemoryGauge>,
    /// The memory and disk alarms, which block publishing connections.
    pub alarms: Arc<crate::queue::alarms::Alarms>,
    /// The live client connections.
    pub connections: connections::Connections,
    /// The store it was opened on, closed by [`Broker::close`].
    store: Option<Arc<Store>>,
}

/// The pseudo-queue RabbitMQ's direct reply-to consumers consume from.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Why a login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password.
    Refused,
    /// A loopback-only user connecting from elsewhere.
    NotLoopback,
}

impl Broker {
    /// A broker kept in memory, with the vhosts and users the settings name.
    pub fn new(config: Config) -> Arc<Self> {
        Self::build(config, None)
    }

    fn build(config: Config, store: Option<&Arc<Store>>) -> Arc<Self> {
        let delayed = delayed::Delayed::new(store.cloned());
        let alarms = Arc::new(crate::queue::alarms::Alarms::new(
            config.disk_free_limit_bytes(),
        ));
        let memory = Arc::new(MemoryGauge::with_alarms(
            config.queue_memory_bytes(),
            alarms.clone(),
        ));
        let pager = store.map(|s| Pager::new(Pages::new(s.clone()), memory.clone()));
        let vhosts = config
            .vhosts
            .iter()
            .map(|v| {
                let vhost = VHost::new(v, store.cloned(), delayed.clone());
                vhost.topology.write().pager = pager.clone();
                (v.clone(), vhost)
            })
            .collect();
        Arc::new(Self {
            config,
            vhosts,
            next_connection: AtomicU64::new(1),
            replies: parking_lot::Mutex::new(HashMap::new()),
            delayed,
            pager,
            memory,
            alarms,
            connections: connections::Connections::default(),
            store: store.cloned(),
        })
    }

    /// Opens the store under the configured data directory and brings back its durable entities
    /// and messages.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = &Store::open(&config.data_dir, config.store_cache_bytes())?;
        let started = std::time::Instant::now();
        let broker = Self::build(config, Some(store));
        let mut recovered = store.recover()?;
        let queues = recovered.queues.len();
        let messages: usize = recovered.queues.iter().map(|(_, q)| q.messages.len()).sum();
        let damaged = recovered.damaged;
        for vhost in broker.vhosts.values() {
            vhost.restore(&mut recovered, store);
            vhost.attach_queues();
        }
        if recovered.damaged > damaged {
            warn!(
                missing = recovered.damaged - damaged,
                "skipped stored messages whose body is missing or damaged"
            );
        }
        broker
            .delayed
            .restore(std::mem::take(&mut recovered.delayed));
        info!(
            queues,
            messages = messages - (recovered.damaged - damaged),
            paged = broker.pager.as_ref().map_or(0, |p| p.paged_out()),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "recovered queues and messages"
        );
        Ok(broker)
    }

    /// Closes the store, flushing what is pending. Everything that writes to it (connections,
    /// the delayed-message scheduler) must have finished first.
    pub fn close(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }

    /// Closes a connection with a reply code and full reply text; false if there is no such
    /// connection or it has too many control messages waiting.
    pub fn close_connection(&self, id: u64, code: u16, text: &str) -> bool {
        self.connections.get(id).is_some_and(|c| {
            c.control(connections::Control::Close {
                code,
                text: text.to_owned(),
            })
        })
    }

    /// The memory budget of queued messages, if the broker has a store to page to.
    pub fn pager(&self) -> Option<&Arc<Pager>> {
        self.pager.as_ref()
    }

    /// Messages that delayed exchanges hold now, in every vhost.
    pub fn delayed_count(&self) -> usize {
        self.delayed.held_count()
    }

    /// Registers a channel's reply consumer under a fresh reply-to name, which it returns.
    pub fn register_reply(&self, tx: crate::queue::EventSender, channel: u16) -> String {
        use base64::Engine;
        let token: [u8; 18] = rand::random();
        let name = format!(
            "{REPLY_TO}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        );
        self.replies.lock().insert(name.clone(), (tx, channel));
        name
    }

    /// Whether a reply-to name has a live consumer.
    pub fn reply_exists(&self, name: &str) -> bool {
        name == REPLY_TO || self.replies.lock().contains_key(name)
    }

    /// Forgets a reply-to name.
    pub fn unregister_reply(&self, name: &str) {
        self.replies.lock().remove(name);
    }

    /// Hands a reply to the channel behind a reply-to name; false if there is none.
    pub fn send_reply(&self, name: &str, msg: &Arc<Message>) -> bool {
        let target = self.replies.lock().get(name).cloned();
        match target {
            Some((tx, channel)) => tx
                .send(crate::queue::QueueEvent::Reply {
                    channel,
                    msg: msg.clone(),
                })
                .is_ok(),
            None => false,
        }
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// All vhosts.
    pub fn vhosts(&self) -> impl Iterator<Item = &Arc<VHost>> {
        self.vhosts.values()
    }

    /// Checks a user's password and where they connect from.
    pub fn login(&self, name: &str, password: &str, peer: SocketAddr) -> Result<&User, LoginError> {
        let user = self
            .config
            .users
            .iter()
            .find(|u| u.name == name)
            .filter(|u| auth::verify_password(&u.password_hash, password))
            .ok_or(LoginError::Refused)?;
        if self.config.loopback_users.iter().any(|u| u == name) && !peer.ip().is_loopback() {
            return Err(LoginError::NotLoopback);
        }
        Ok(user)
    }
}

/// A declared queue's answer: its name and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (server-generated when asked).
    pub name: Arc<str>,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// What `queue.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    /// Requested name ("" for a server-named queue).
    pub name: String,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// What `exchange.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct Topology {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<Queue>>,
    /// The vhost's name, for store records.
    vhost: Arc<str>,
    /// Where durable entities are recorded (none for a broker kept in memory).
    store: Option<Arc<Store>>,
    /// The broker's memory budget for queued messages (none for a broker kept in memory).
    pager: Option<Arc<Pager>>,
}

/// A virtual host: its own exchanges, queues and bindings.
#[derive(Debug)]
pub struct VHost {
    /// Its name.
    pub name: Arc<str>,
    topology: RwLock<Topology>,
    /// Where its delayed exchanges hold messages (shared by the broker's vhosts).
    delayed: Arc<delayed::Delayed>,
}

fn bool_text(b: bool) -> &'static str {
    if b { "'true'" } else { "'false'" }
}

/// The arguments RabbitMQ compares when a classic queue is redeclared; others may differ.
const QUEUE_EQUIVALENCE_ARGS: [&str; 14] = [
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
    "x-queue-leader-locator",
];

/// The only argument RabbitMQ compares when an exchange is redeclared.
const EXCHANGE_EQUIVALENCE_ARGS: [&str; 1] = ["alternate-exchange"];

/// RabbitMQ's `type_class`: integers of any width compare by value, as do both float widths.
fn comparable(v: &AMQPValue) -> (&'static str, Option<i128>, Option<f64>) {
    match v {
        AMQPValue::ShortShortInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::ShortShortUInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::ShortInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::ShortUInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::LongInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::LongUInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::LongLongInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::Float(f) => ("float", None, Some((*f).into())),
        AMQPValue::Double(f) => ("float", None, Some(*f)),
        other => (type_name(other), None, None),
    }
}

fn equivalent(current: &AMQPValue, received: &AMQPValue) -> bool {
    match (comparable(current), comparable(received)) {
        ((c, Some(a), _), (r, Some(b), _)) => c == r && a == b,
        ((c, _, Some(a)), (r, _, Some(b))) => c == r && a == b,
        _ => {
            let bytes = |v: &AMQPValue| match v {
                AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
                AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
                _ => None,
            };
            match (bytes(current), bytes(received)) {
                (Some(a), Some(b)) => a == b,
                _ => current == received,
            }
        }
    }
}

/// Compares the arguments RabbitMQ compares (`keys`), with its texts: raw values when both
/// sides have one, typed values against `none` when one side lacks it.
fn check_arguments(
    keys: &[&str],
    kind: &str,
    name: &str,
    vhost: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), ChannelError> {
    for &key in keys {
        let (c, r) = (current.inner().get(key), received.inner().get(key));
        let (received_text, current_text) = match (c, r) {
            (None, None) => continue,
            (Some(c), Some(r)) if equivalent(c, r) => continue,
            (Some(c), Some(r)) => (
                format!("'{}'", erlang::value(r, Print::Text)),
                format!("'{}'", erlang::value(c, Print::Text)),
            ),
            // A classic queue declared without x-queue-type is one declared with 'classic'.
            (None, Some(AMQPValue::LongString(s))) | (Some(AMQPValue::LongString(s)), None)
                if key == "x-queue-type" && s.as_bytes() == b"classic" =>
            {
                continue;
            }
            (c, r) => (typed(r), typed(c)),
        };
        return Err(ChannelError::inequivalent(
            key,
            kind,
            name,
            vhost,
            received_text,
            current_text,
        ));
    }
    Ok(())
}

fn typed(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            erlang::value(v, Print::Text),
            type_name(v)
        ),
    }
}

impl VHost {
    /// A vhost with the predeclared `amq.*` exchanges.
    pub fn new(name: &str, store: Option<Arc<Store>>, delayed: Arc<delayed::Delayed>) -> Arc<Self> {
        let mut topology = Topology {
            vhost: name.into(),
            store,
            ..Topology::default()
        };
        for (n, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            topology.exchanges.insert(
                n.into(),
                Exchange::new(n, kind, true, false, false, FieldTable::default()),
            );
        }
        Arc::new(Self {
            name: name.into(),
            topology: RwLock::new(topology),
            delayed,
        })
    }

    /// The store behind this vhost's durable entities, if any.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.topology.read().store.clone()
    }

    /// Declares (or checks) an exchange.
    pub fn declare_exchange(&self, d: &ExchangeDeclare) -> Result<(), AmqpError> {
        if d.name.is_empty() {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            )
            .into());
        }
        let mut t = self.topology.write();
        if d.passive {
            return match t.exchanges.get(&d.name) {
                Some(_) => Ok(()),
                None => Err(ChannelError::no_exchange(&d.name, &self.name).into()),
            };
        }
        // A delayed exchange's routing type is checked only when it is created, as RabbitMQ
        // validates a new exchange but compares only the type name on a redeclare.
        let delayed = d.kind == delayed::EXCHANGE_TYPE;
        let kind = match ExchangeKind::parse(&d.kind) {
            Some(kind) => Some(kind),
            None if delayed => None,
            None => {
                return Err(ConnectionError::command_invalid(format_args!(
                    "unknown exchange type '{}'",
                    d.kind
                ))
                .into());
            }
        };
        if let Some(x) = t.exchanges.get(&d.name) {
            let ex = |arg: &str, r: &str, c: &str| {
                ChannelError::inequivalent(arg, "exchange", &d.name, &self.name, r, c)
            };
            if x.type_name() != d.kind {
                return Err(ex(
                    "type",
                    &format!("'{}'", d.kind),
                    &format!("'{}'", x.type_name()),
                )
                .into());
            }
            if x.durable != d.durable {
                return Err(ex("durable", bool_text(d.durable), bool_text(x.durable)).into());
            }
            if x.auto_delete != d.auto_delete {
                return Err(ex(
                    "auto_delete",
                    bool_text(d.auto_delete),
                    bool_text(x.auto_delete),
                )
                .into());
            }
            if x.internal != d.internal {
                return Err(ex("internal", bool_text(d.internal), bool_text(x.internal)).into());
            }
            check_arguments(
                &EXCHANGE_EQUIVALENCE_ARGS,
                "exchange",
                &d.name,
                &self.name,
                &x.arguments,
                &d.arguments,
            )?;
            return Ok(());
        }
        if d.name.starts_with("amq.") {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                format_args!(
                    "exchange name '{}' contains reserved prefix 'amq.*'",
                    d.name
                ),
            )
            .into());
        }
        let kind = match kind {
            Some(kind) => kind,
            None => delayed::routing_kind(&d.arguments)?,
        };
        let x = Exchange::new(
            &d.name,
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        );
        let x = if delayed { x.into_delayed() } else { x };
        t.persist_exchange(&x);
        t.exchanges.insert(d.name.clone(), x);
        Ok(())
    }

    /// Deletes an exchange.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                format_args!(
                    "deletion of system exchange '{name}' in vhost '{}' not allowed",
                    self.name
                ),
            ));
        }
        let mut t = self.topology.write();
        // Deleting an absent exchange succeeds in RabbitMQ (`ensure_deleted`).
        let Some(x) = t.exchanges.get(name) else {
            return Ok(());
        };
        // Only bindings from the exchange count as use; bindings to it do not (RabbitMQ).
        if if_unused && !x.bindings().is_empty() {
            return Err(ChannelError::precondition(format_args!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        let dest = Destination::Exchange(name.into());
        Self::remove_destination(&mut t, &dest);
        t.remove_exchange(name);
        Ok(())
    }

    /// Removes every binding to `dest`, then deletes auto-delete exchanges left without bindings.
    fn remove_destination(t: &mut Topology, dest: &Destination) {
        // Each exchange tells in one lookup whether it binds `dest`, and removes those
        // bindings in time linear in their number, without reading its other bindings.
        let sources: Vec<Arc<str>> = t
            .exchanges
            .values()
            .filter(|x| x.binds_to(dest))
            .map(|x| x.name.clone())
            .collect();
        let mut emptied = Vec::new();
        for source in sources {
            let Some(x) = t.exchanges.get_mut(&*source) else {
                continue;
            };
            let gone = x.remove_destination(dest);
            if x.auto_delete && x.bindings().is_empty() {
                emptied.push(source.clone());
            }
            if let Some(x) = t.exchanges.get(&*source) {
                for b in &gone {
                    t.forget_binding(x, b);
                }
            }
        }
        for name in emptied {
            Self::remove_destination(t, &Destination::Exchange(name.clone()));
            t.remove_exchange(&name);
        }
    }

    /// Connects every registered queue (those brought back from the store) to this vhost.
    fn attach_queues(self: &Arc<Self>) {
        let queues: Vec<Arc<Queue>> = self.topology.read().queues.values().cloned().collect();
        for q in queues {
            q.attach(self.router());
        }
    }

    /// What a queue uses to reach this vhost: its router, for dead letters, and its registry.
    fn router(self: &Arc<Self>) -> std::sync::Weak<dyn crate::queue::Router> {
        let weak: std::sync::Weak<Self> = Arc::downgrade(self);
        weak
    }

    /// Declares (or checks) a queue.
    pub fn declare_queue(
        self: &Arc<Self>,
        d: &QueueDeclare,
        conn_id: u64,
    ) -> Result<QueueDeclared, ChannelError> {
        let mut t = self.topology.write();
        if let Some(q) = t.queues.get(&d.name) {
            if !q.accessible_by(conn_id) {
                return Err(Self::locked(q));
            }
            // A declare, passive or not, counts as use for `x-expires`.
            q.touch();
            if !d.passive {
                let ex = |arg: &str, r: bool, c: bool| {
                    ChannelError::inequivalent(
                        arg,
                        "queue",
                        &d.name,
                        &self.name,
                        bool_text(r),
                        bool_text(c),
                    )
                };
                // RabbitMQ checks exclusivity before the other properties.
                let exclusive = q.options.exclusive_owner.is_some();
                if exclusive != d.exclusive {
                    return Err(Self::locked(q));
                }
                if q.options.durable != d.durable {
                    return Err(ex("durable", d.durable, q.options.durable));
                }
                if q.options.auto_delete != d.auto_delete {
                    return Err(ex("auto_delete", d.auto_delete, q.options.auto_delete));
                }
                check_arguments(
                    &QUEUE_EQUIVALENCE_ARGS,
                    "queue",
                    &d.name,
                    &self.name,
                    &q.options.arguments,
                    &d.arguments,
                )?;
            }
            return Ok(QueueDeclared {
                name: q.name.clone(),
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
            });
        }
        if d.passive {
            return Err(ChannelError::no_queue(&d.name, &self.name));
        }
        if d.name.starts_with("amq.") {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                format_args!("queue name '{}' contains reserved prefix 'amq.*'", d.name),
            ));
        }
        let name: Arc<str> = if d.name.is_empty() {
            generated_name().into()
        } else {
            d.name.as_str().into()
        };
        let args = QueueArgs::parse(
            &d.arguments,
            Declared {
                name: &name,
                vhost: &self.name,
                durable: d.durable,
                exclusive: d.exclusive,
                auto_delete: d.auto_delete,
            },
        )?;
        let q = Queue::with_args(
            name.clone(),
            self.name.clone(),
            QueueOptions {
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(conn_id),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
                // Exclusive queues die with their connection, so never outlive a restart.
                log: t.queue_log(d.durable && !d.exclusive),
                pager: t.pager.clone(),
            },
            args,
        );
        q.attach(self.router());
        t.persist_queue(&q);
        t.queues.insert(name.to_string(), q);
        Ok(QueueDeclared {
            name,
            message_count: 0,
            consumer_count: 0,
        })
    }

    fn locked(q: &Queue) -> ChannelError {
        ChannelError::new(
            code::RESOURCE_LOCKED,
            format_args!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                q.name, q.vhost
            ),
        )
    }

    /// Finds a queue that `conn_id` may use.
    pub fn queue(&self, name: &str, conn_id: u64) -> Result<Arc<Queue>, ChannelError> {
        let t = self.topology.read();
        let q = t
            .queues
            .get(name)
            .ok_or_else(|| ChannelError::no_queue(name, &self.name))?;
        if !q.accessible_by(conn_id) {
            return Err(Self::locked(q));
        }
        Ok(q.clone())
    }

    /// Deletes a queue, returning its ready message count.
    pub fn delete_queue(
        &self,
        name: &str,
        conn_id: u64,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, ChannelError> {
        let mut t = self.topology.write();
        // Deleting an absent queue succeeds with a count of 0, as in RabbitMQ.
        let Some(q) = t.queues.get(name).cloned() else {
            return Ok(0);
        };
        if !q.accessible_by(conn_id) {
            return Err(Self::locked(&q));
        }
        if if_unused && q.consumer_count() > 0 {
            return Err(ChannelError::precondition(format_args!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(ChannelError::precondition(format_args!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(Self::remove_queue(&mut t, &q))
    }

    fn remove_queue(t: &mut Topology, q: &Arc<Queue>) -> u32 {
        if t.queues.get(&*q.name).is_some_and(|o| Arc::ptr_eq(o, q)) {
            t.queues.remove(&*q.name);
        }
        Self::remove_destination(t, &Destination::Queue(q.clone()));
        t.forget_queue(q);
        q.delete()
    }

    /// Deletes a queue if it is still registered (exclusive and auto-delete clean-up).
    pub fn drop_queue(&self, q: &Arc<Queue>) {
        let mut t = self.topology.write();
        Self::remove_queue(&mut t, q);
    }

    /// Deletes every exclusive queue a closing connection owned.
    pub fn drop_exclusive_queues(&self, conn_id: u64) {
        let mut t = self.topology.write();
        let owned: Vec<Arc<Queue>> = t
            .queues
            .values()
            .filter(|q| q.options.exclusive_owner == Some(conn_id))
            .cloned()
            .collect();
        for q in owned {
            Self::remove_queue(&mut t, &q);
        }
    }

    fn check_bind_target(
        &self,
        t: &Topology,
        source: &str,
        destination: &Destination,
    ) -> Result<(), ChannelError> {
        if source.is_empty() {
            return Err(ChannelError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        if let Destination::Exchange(d) = destination {
            if d.is_empty() {
                return Err(ChannelError::new(
                    code::ACCESS_REFUSED,
                    "operation not permitted on the default exchange",
                ));
            }
            if !t.exchanges.contains_key(&**d) {
                return Err(ChannelError::no_exchange(d, &self.name));
            }
        }
        if !t.exchanges.contains_key(source) {
            return Err(ChannelError::no_exchange(source, &self.name));
        }
        Ok(())
    }

    /// Resolves a binding destination by name.
    pub fn destination(
        &self,
        queue: Option<&str>,
        exchange: Option<&str>,
        conn_id: u64,
    ) -> Result<Destination, ChannelError> {
        match (queue, exchange) {
            (Some(q), _) => Ok(Destination::Queue(self.queue(q, conn_id)?)),
            (None, Some(x)) => Ok(Destination::Exchange(x.into())),
            (None, None) => Err(ChannelError::precondition("no destination")),
        }
    }

    /// Adds a binding (idempotent).
    pub fn bind(&self, source: &str, binding: Binding) -> Result<(), ChannelError> {
        let mut t = self.topology.write();
        self.check_bind_target(&t, source, &binding.destination)?;
        if let Some(x) = t.exchanges.get(source)
            && x.kind == ExchangeKind::Headers
        {
            headers::x_match_is_valid(&binding.arguments).map_err(ChannelError::precondition)?;
        }
        let added = match t.exchanges.get_mut(source) {
            Some(x) => x.bind(binding.clone()),
            None => false,
        };
        if added {
            t.persist_binding(source, &binding);
        }
        Ok(())
    }

    /// Removes a binding (absent bindings are fine, as in RabbitMQ).
    pub fn unbind(&self, source: &str, binding: &Binding) -> Result<(), ChannelError> {
        let mut t = self.topology.write();
        match self.check_bind_target(&t, source, &binding.destination) {
            // Unbinding from or to an absent exchange is already done, as RabbitMQ sees it.
            Err(e) if e.code() == code::NOT_FOUND => return Ok(()),
            r => r?,
        }
        let mut emptied = false;
        if let Some(x) = t.exchanges.get_mut(source)
            && x.unbind(binding)
        {
            emptied = x.auto_delete && x.bindings().is_empty();
            if let Some(x) = t.exchanges.get(source) {
                t.forget_binding(x, binding);
            }
        }
        if emptied {
            Self::remove_destination(&mut t, &Destination::Exchange(source.into()));
            t.remove_exchange(source);
        }
        Ok(())
    }

    /// Checks that `name` can be published to: it exists and is not internal.
    pub fn check_publish(&self, name: &str) -> Result<(), ChannelError> {
        if name.is_empty() {
            return Ok(());
        }
        let t = self.topology.read();
        match t.exchanges.get(name) {
            None => Err(ChannelError::no_exchange(name, &self.name)),
            Some(x) if x.internal => Err(ChannelError::new(
                code::ACCESS_REFUSED,
                format_args!(
                    "cannot publish to internal exchange '{name}' in vhost '{}'",
                    self.name
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Routes a message: appends each distinct destination queue to `out`. A delayed exchange on
    /// the way holds a message whose `x-delay` asks for it, and a delay sink stands in for the
    /// queues it will reach (see [`delayed::Delayed`]). A durable hold writes the message's
    /// `shared` record, which the queues it reaches then share.
    pub fn route(
        &self,
        exchange: &str,
        msg: &Message,
        shared: &SharedRecord,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<(), ChannelError> {
        self.route_with(exchange, msg, Some(shared), out)
    }

    /// Routes a held message whose delay has passed: no delayed exchange holds it again.
    fn route_held(
        &self,
        exchange: &str,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<(), ChannelError> {
        self.route_with(exchange, msg, None, out)
    }

    /// Routes `msg`; a delayed exchange on the way holds it only when `delay` gives the record
    /// its hold shares.
    fn route_with(
        &self,
        exchange: &str,
        msg: &Message,
        delay: Option<&SharedRecord>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<(), ChannelError> {
        let t = self.topology.read();
        let rk = msg.routing_key_str();
        if exchange.is_empty() {
            if let Some(q) = t.queues.get(rk) {
                out.push(q.clone());
            }
            return Ok(());
        }
        let Some(x) = t.exchanges.get(exchange) else {
            return Err(ChannelError::no_exchange(exchange, &self.name));
        };
        let mut headers_cache: Option<Option<FieldTable>> = None;
        let mut headers = || headers_cache.get_or_insert_with(|| msg.headers()).clone();
        let start = out.len();
        // RabbitMQ's worklist: every exchange is routed through at most once, so cycles end
        // and diamonds cost nothing extra; an exchange's AE joins the worklist only when the
        // exchange's own bindings matched nothing at all (not even another exchange).
        let mut seen: Vec<Arc<str>> = vec![x.name.clone()];
        let mut work: Vec<&Exchange> = vec![x];
        let mut next: Vec<Arc<str>> = Vec::new();
        let mut holds = Vec::new();
        while let Some(x) = work.pop() {
            // A held message has a route to come, so the alternate exchange does not take it
            // (the plugin would hand it to the AE at once).
            if delay.is_some()
                && x.delayed
                && let Some(delay_ms) = delayed::delay_of(headers().as_ref())?
            {
                holds.push(delayed::Hold {
                    exchange: x.name.clone(),
                    delay_ms,
                    durable: x.durable,
                });
                continue;
            }
            let mut matched = false;
            x.route(rk, &mut headers, &mut |d| {
                matched = true;
                match d {
                    Destination::Queue(q) => out.push(q.clone()),
                    Destination::Exchange(e) => next.push(e.clone()),
                }
            });
            if !matched && let Some(ae) = x.alternate_exchange() {
                next.push(ae.into());
            }
            for name in next.drain(..) {
                if seen.contains(&name) {
                    continue;
                }
                if let Some(dx) = t.exchanges.get(&*name) {
                    work.push(dx);
                }
                seen.push(name);
            }
        }
        // A queue reached through several bindings gets the message once.
        if out.len() - start > 1 {
            out[start..].sort_unstable_by_key(|q| Arc::as_ptr(q).addr());
            let mut routed = out.split_off(start);
            routed.dedup_by(|a, b| Arc::ptr_eq(a, b));
            out.append(&mut routed);
        }
        if let Some(shared) = delay
            && !holds.is_empty()
        {
            self.delayed.hold(&self.name, msg, shared, holds, out);
        }
        Ok(())
    }

    /// Number of queues (for tests and logs).
    pub fn queue_count(&self) -> usize {
        self.topology.read().queues.len()
    }
}

/// Dead letters reach their exchange through the vhost's router; an expired queue leaves it.
impl crate::queue::Router for VHost {
    fn route(
        &self,
        exchange: &str,
        msg: &Message,
        shared: &SharedRecord,
        out: &mut Vec<Arc<Queue>>,
    ) -> bool {
        VHost::route(self, exchange, msg, shared, out).is_ok()
    }

    fn expire(&self, queue: &Arc<Queue>) {
        self.drop_queue(queue);
    }
}

fn generated_name() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!(
        "amq.gen-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
