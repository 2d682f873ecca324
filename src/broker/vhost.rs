//! A virtual host: its topology (exchanges, queues, bindings) behind one lock, declaring and
//! deleting them, and routing a message through its exchanges to the queues it reaches.

mod durable;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::RwLock;

use super::exchange::{Binding, Destination, Exchange, ExchangeKind};
use super::policy::{self, PolicySet, Target};
use super::{ExchangeDeclare, QueueDeclare, QueueDeclared, delayed, equivalence, headers};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Message, code};
use crate::queue::args::{Declared, QueueArgs};
use crate::queue::log::SharedRecord;
use crate::queue::paging::Pager;
use crate::queue::{Queue, QueueOptions};
use crate::stats::{Counters, History, SizeHistogram, Tally, Totals, Tracked};
use crate::store::Store;

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
    /// The default exchange's counters (it has no [`Exchange`]).
    default_stats: Arc<Tracked>,
    /// Queues declared, created and deleted, RabbitMQ's queue churn.
    churn: [AtomicU64; 3],
    /// What deleted queues counted, classic, quorum, then streams.
    retired_queues: [Counters; 3],
}

/// An exchange as listings show it.
#[derive(Debug, Clone)]
pub struct ExchangeView {
    /// Name.
    pub name: Arc<str>,
    /// Type name, as declared.
    pub kind: &'static str,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
    /// Its counters and samples.
    pub stats: Arc<Tracked>,
}

/// A binding as listings show it.
#[derive(Debug, Clone)]
pub struct BindingView {
    /// The exchange it is from.
    pub source: Arc<str>,
    /// The queue or exchange it leads to.
    pub destination: Arc<str>,
    /// Whether it leads to a queue.
    pub to_queue: bool,
    /// Routing key.
    pub routing_key: String,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A virtual host: its own exchanges, queues and bindings.
#[derive(Debug)]
pub struct VHost {
    /// Its name.
    pub name: Arc<str>,
    topology: RwLock<Topology>,
    /// Where its delayed exchanges hold messages (shared by the broker's vhosts).
    delayed: Arc<delayed::Delayed>,
    /// Its `max-queues` limit (negative: none).
    max_queues: AtomicI64,
    /// Its policies and operator policies.
    policies: RwLock<Arc<PolicySet>>,
    /// What its closed channels and connections counted.
    pub retired: Counters,
    /// The sizes of the messages its closed channels published.
    pub retired_sizes: SizeHistogram,
    /// Its recent samples: what its channels did, and its queues' levels.
    pub history: History,
}

impl VHost {
    /// A vhost with the predeclared `amq.*` exchanges, its queues paging to `pager` if given.
    pub fn new(
        name: &str,
        store: Option<Arc<Store>>,
        pager: Option<Arc<Pager>>,
        delayed: Arc<delayed::Delayed>,
    ) -> Arc<Self> {
        let mut topology = Topology {
            vhost: name.into(),
            store,
            pager,
            ..Topology::default()
        };
        for (n, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
            ("amq.rabbitmq.trace", ExchangeKind::Topic),
        ] {
            // RabbitMQ's firehose exchange is there for tools that list it; nothing publishes
            // to it, and clients may not.
            let internal = n == "amq.rabbitmq.trace";
            topology.exchanges.insert(
                n.into(),
                Exchange::new(n, kind, true, false, internal, FieldTable::default()),
            );
        }
        Arc::new(Self {
            name: name.into(),
            topology: RwLock::new(topology),
            delayed,
            max_queues: AtomicI64::new(-1),
            policies: RwLock::new(Arc::default()),
            retired: Counters::default(),
            retired_sizes: SizeHistogram::default(),
            history: History::long(),
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
            equivalence::check_exchange(x, d, &self.name)?;
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
        let mut x = if delayed { x.into_delayed() } else { x };
        x.policy_alternate =
            policy::alternate_exchange(&self.policies.read().applied(&d.name, Target::Exchange));
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
    pub(super) fn attach_queues(self: &Arc<Self>) {
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
                // RabbitMQ checks exclusivity before the other properties.
                let exclusive = q.options.exclusive_owner.is_some();
                if exclusive != d.exclusive {
                    return Err(Self::locked(q));
                }
                equivalence::check_queue(q, d, &self.name)?;
            }
            t.churn[0].fetch_add(1, Ordering::Relaxed);
            return Ok(QueueDeclared {
                name: q.name.clone(),
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
            });
        }
        if d.passive {
            return Err(ChannelError::no_queue(&d.name, &self.name));
        }
        if d.name.starts_with("amq.") && !d.server_named {
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
        let max = self.max_queues.load(Ordering::Relaxed);
        if usize::try_from(max).is_ok_and(|max| t.queues.len() >= max) {
            return Err(ChannelError::precondition(format_args!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                self.name
            ))
            .limit(crate::protocol::Limit::VhostQueues));
        }
        // Exclusive queues die with their connection, so never outlive a restart.
        let log = t.queue_log(d.durable && !d.exclusive);
        let stream = durable::stream_files(log.as_ref(), &args).map_err(|e| {
            ChannelError::new(
                code::INTERNAL_ERROR,
                format_args!("cannot create the files of stream '{name}': {e}"),
            )
        })?;
        let q = Queue::with_args(
            name.clone(),
            self.name.clone(),
            QueueOptions {
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(conn_id),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
                log,
                pager: t.pager.clone(),
                stream,
            },
            args,
        );
        q.attach(self.router());
        let policies = self.policies.read().clone();
        if !policies.is_empty() {
            Self::apply_to_queue(&policies, &q);
        }
        t.persist_queue(&q);
        t.queues.insert(name.to_string(), q);
        t.churn[0].fetch_add(1, Ordering::Relaxed);
        t.churn[1].fetch_add(1, Ordering::Relaxed);
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
            t.churn[2].fetch_add(1, Ordering::Relaxed);
            t.retired_queues[q.args.queue_type as usize].absorb(&q.counters.totals());
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

    /// Whether `name` is a topic exchange (topic permissions apply to it).
    pub fn is_topic(&self, name: &str) -> bool {
        self.topology
            .read()
            .exchanges
            .get(name)
            .is_some_and(|x| x.kind == ExchangeKind::Topic)
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
        tally: &mut Tally,
    ) -> Result<(), ChannelError> {
        self.route_with(exchange, msg, Some(shared), out, Some(tally))
    }

    /// Every exchange's counters and samples, the default exchange's first.
    pub fn exchange_stats(&self) -> Vec<Arc<Tracked>> {
        let t = self.topology.read();
        std::iter::once(t.default_stats.clone())
            .chain(t.exchanges.values().map(|x| x.stats.clone()))
            .collect()
    }

    /// What its deleted queues counted, classic, quorum, then streams.
    pub fn retired_queue_totals(&self) -> [Totals; 3] {
        let t = self.topology.read();
        std::array::from_fn(|i| t.retired_queues[i].totals())
    }

    /// Queues declared, created and deleted since the start.
    pub fn queue_churn(&self) -> [u64; 3] {
        let t = self.topology.read();
        std::array::from_fn(|i| t.churn[i].load(Ordering::Relaxed))
    }

    /// The default exchange's counters and samples.
    pub fn default_exchange_stats(&self) -> Arc<Tracked> {
        self.topology.read().default_stats.clone()
    }

    /// Routes a held message whose delay has passed: no delayed exchange holds it again.
    pub(super) fn route_held(
        &self,
        exchange: &str,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<(), ChannelError> {
        self.route_with(exchange, msg, None, out, None)
    }

    /// Routes `msg`; a delayed exchange on the way holds it only when `delay` gives the record
    /// its hold shares.
    fn route_with(
        &self,
        exchange: &str,
        msg: &Message,
        delay: Option<&SharedRecord>,
        out: &mut Vec<Arc<Queue>>,
        tally: Option<&mut Tally>,
    ) -> Result<(), ChannelError> {
        let t = self.topology.read();
        let rk = msg.routing_key_str();
        if exchange.is_empty() {
            let q = t.queues.get(rk);
            if let Some(q) = q {
                out.push(q.clone());
            }
            if let Some(tally) = tally {
                tally.count(&t.default_stats, q.is_some());
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
        if let Some(tally) = tally {
            tally.count(&x.stats, out.len() > start || !holds.is_empty());
        }
        if let Some(shared) = delay
            && !holds.is_empty()
        {
            self.delayed.hold(&self.name, msg, shared, holds, out);
        }
        Ok(())
    }

    /// Deletes everything in the vhost, from the store too: its queues with their messages,
    /// and its exchanges with their bindings.
    pub fn delete_all(&self) {
        let mut t = self.topology.write();
        let queues: Vec<Arc<Queue>> = t.queues.values().cloned().collect();
        for q in queues {
            Self::remove_queue(&mut t, &q);
        }
        let exchanges: Vec<String> = t.exchanges.keys().cloned().collect();
        for name in exchanges {
            t.remove_exchange(&name);
        }
    }

    /// Its queues, in name order.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<_> = self.topology.read().queues.values().cloned().collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Its exchanges, in name order.
    pub fn exchanges(&self) -> Vec<ExchangeView> {
        let mut all: Vec<_> = self
            .topology
            .read()
            .exchanges
            .values()
            .map(|x| ExchangeView {
                name: x.name.clone(),
                kind: x.type_name(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
                stats: x.stats.clone(),
            })
            .collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Its bindings between exchanges and destinations (not the default exchange's).
    pub fn bindings(&self) -> Vec<BindingView> {
        let t = self.topology.read();
        let mut all = Vec::new();
        for x in t.exchanges.values() {
            for b in x.bindings() {
                let (destination, to_queue) = match &b.destination {
                    Destination::Queue(q) => (q.name.clone(), true),
                    Destination::Exchange(e) => (e.clone(), false),
                };
                all.push(BindingView {
                    source: x.name.clone(),
                    destination,
                    to_queue,
                    routing_key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                });
            }
        }
        all
    }

    /// Puts a new set of policies in force on every queue and exchange.
    pub fn set_policies(&self, set: Arc<PolicySet>) {
        *self.policies.write() = set.clone();
        let mut t = self.topology.write();
        for x in t.exchanges.values_mut() {
            x.policy_alternate =
                policy::alternate_exchange(&set.applied(&x.name, Target::Exchange));
        }
        let queues: Vec<Arc<Queue>> = t.queues.values().cloned().collect();
        drop(t);
        for q in &queues {
            Self::apply_to_queue(&set, q);
        }
    }

    fn apply_to_queue(set: &PolicySet, q: &Arc<Queue>) {
        let applied = set.applied(&q.name, Target::Queue(q.args.queue_type));
        let args = policy::effective(&q.args, &q.options.arguments, &applied);
        q.apply_policy(args, applied);
    }

    /// Sets its `max-queues` limit (negative: none).
    pub fn set_max_queues(&self, max: i64) {
        self.max_queues.store(max, Ordering::Relaxed);
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
        self.route_with(exchange, msg, Some(shared), out, None)
            .is_ok()
    }

    fn expire(&self, queue: &Arc<Queue>) {
        self.drop_queue(queue);
    }
}

/// A fresh server-generated queue name, `amq.gen-` and 22 random characters.
pub fn generated_name() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!(
        "amq.gen-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
