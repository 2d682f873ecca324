//! The per-channel state machine: consumers and unacked deliveries. Every method lands in one
//! exhaustive match here, and each room below owns one class or concern:
//! - `basic`: the `basic` class: publish, consume, get, acks, qos and recover.
//! - `confirm`: publisher confirms, acked or nacked behind the store's flushes.
//! - `content`: publish assembly from the content header and body frames.
//! - `exchange`: the `exchange` class.
//! - `queue`: the `queue` class.
//! - `tx`: the `tx` class and the publishes and settlements a transaction holds back.

mod basic;
mod confirm;
mod content;
mod exchange;
mod queue;
#[cfg(test)]
mod tests;
mod tx;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, channel, confirm as confirm_class};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;

use crate::broker::access::{Perm, Permissions, Resource};
use crate::broker::connections::{ChannelStats, Mode};
use crate::broker::{Broker, VHost};
use crate::protocol::method::{Decoded, Method};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Message, code, encode};
use crate::queue::log::SharedRecord;
use crate::queue::memory::MemoryGauge;
use crate::queue::{Credit, Entry, EventSender, Queue};
use crate::stats::Tally;
use std::sync::atomic::Ordering;

use content::Assembly;
use tx::TxOp;

/// What a channel needs from its connection while it handles a frame.
#[derive(Debug)]
pub struct Ctx {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The connection's vhost.
    pub vhost: Arc<VHost>,
    /// The connection's id (owner of exclusive queues and consumers).
    pub conn_id: u64,
    /// The authenticated user.
    pub user: String,
    /// What the user may do in the vhost, as of `permissions_epoch`.
    pub permissions: Arc<Permissions>,
    /// The broker's permissions epoch `permissions` was read at.
    pub permissions_epoch: u64,
    /// Outbound frames, written to the socket once per batch.
    pub out: BytesMut,
    /// Negotiated frame-max.
    pub frame_max: u32,
    /// The connection's inbox, handed to consumers.
    pub tx: EventSender,
    /// Whether the client understands broker-sent `basic.cancel`.
    pub cancel_notify: bool,
    /// A queue this batch published to whose consumers lag: the connection reads no more
    /// until they catch up.
    pub throttle: Option<Arc<Queue>>,
    /// Whether the connection has published: the memory alarm blocks publishers only.
    pub published: bool,
    /// The store's counters before the first queue or exchange method of this batch: the
    /// connection holds the batch's replies back until what they wrote is durable.
    pub topology: Option<StoreMark>,
    /// The time, read once per batch: deliveries are stamped with it for `consumer_timeout`.
    pub now: std::time::Instant,
}

/// The store's counters at one moment, to tell later whether anything was written since.
#[derive(Debug, Clone, Copy)]
pub struct StoreMark {
    failures: u64,
    topology_writes: u64,
}

/// How many allowed resources a channel remembers (RabbitMQ keeps 12).
const PERMISSION_CACHE: usize = 12;

/// A string argument's value (`x-dead-letter-exchange`, `alternate-exchange`), if it is one.
pub(super) fn string_argument(args: &FieldTable, key: &str) -> Option<String> {
    match args.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

impl Ctx {
    /// Takes up permission changes made since the connection last looked: one atomic load
    /// when there are none. Cleared permissions leave a live connection allowed nothing.
    pub fn refresh_permissions(&mut self) {
        let now = self.broker.permissions_epoch();
        if now != self.permissions_epoch {
            self.permissions_epoch = now;
            self.permissions = self
                .broker
                .permissions(&self.user, &self.vhost.name)
                .unwrap_or_else(|| Arc::new(Permissions::none()));
        }
    }

    /// Checks that the user has `perm` on a resource of the vhost (a 403 channel error if not).
    pub fn permit(&self, perm: Perm, resource: Resource, name: &str) -> Result<(), ChannelError> {
        self.permissions
            .check(perm, resource, name, &self.vhost.name, &self.user)
    }

    /// Checks a topic permission on a key published to or bound from `exchange`, if the user
    /// has topic permissions and `exchange` is a topic exchange.
    pub fn permit_topic(&self, perm: Perm, exchange: &str, key: &str) -> Result<(), ChannelError> {
        if !self.permissions.has_topics() || !self.vhost.is_topic(exchange) {
            return Ok(());
        }
        self.permissions
            .check_topic(perm, exchange, key, &self.vhost.name, &self.user)
    }

    /// Appends a method frame.
    pub fn send(&mut self, channel: u16, class: AMQPClass) {
        encode::method(&mut self.out, channel, class);
    }
}

/// A delivery awaiting its ack.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    message: Entry,
    /// The consumer's credit (None for `basic.get`).
    credit: Option<Arc<Credit>>,
    /// When it was delivered (to within a batch).
    delivered_at: std::time::Instant,
}

/// A consumer as its channel knows it.
#[derive(Debug)]
struct ChannelConsumer {
    queue: Arc<Queue>,
    no_ack: bool,
    credit: Arc<Credit>,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub id: u16,
    /// Resources this channel was allowed, most recent last: they stay allowed whatever the
    /// permissions become, as RabbitMQ's channels keep what they checked.
    checked: Vec<(Perm, Resource, Box<str>)>,
    assembly: Assembly,
    next_delivery_tag: u64,
    unacked: VecDeque<Unacked>,
    consumers: HashMap<Arc<str>, ChannelConsumer>,
    prefetch_count: u16,
    channel_credit: Arc<Credit>,
    /// The credit that consumers consuming with no prefetch limit share (`consumer_max_unacked`),
    /// made with the first of them.
    unbounded_credit: Option<Arc<Credit>>,
    confirm: bool,
    publish_seq: u64,
    confirmed_to: u64,
    /// Confirm numbers of persistent publishes whose flush is still to come, in order.
    needs_flush: VecDeque<u64>,
    /// Confirm numbers of publishes a full queue refused, to be nacked in their turn.
    rejected: VecDeque<u64>,
    /// The highest confirm number a store barrier was already requested for.
    flush_requested: u64,
    /// The store's failure count before the writes the next barrier covers: if it moved by the
    /// barrier's turn, some of those writes may not be on disk.
    store_failures: u64,
    tx: Option<Vec<TxOp>>,
    last_queue: Option<Arc<str>>,
    route_buf: Vec<Arc<Queue>>,
    /// The direct reply-to consumer: its reply-to name and consumer tag.
    reply: Option<(String, Arc<str>)>,
    /// Where the memory the channel holds (its credit's holding) is counted.
    memory: Arc<MemoryGauge>,
    /// What it counts and the levels listings show.
    stats: Arc<ChannelStats>,
    /// Publishes counted for their exchange, added to it once per batch.
    tally: Tally,
}

impl Channel {
    /// A newly opened channel, counting what it holds against `memory` and what it does in
    /// `stats`.
    pub fn new(id: u16, memory: Arc<MemoryGauge>, stats: Arc<ChannelStats>) -> Self {
        Self {
            id,
            checked: Vec::new(),
            assembly: Assembly::Idle,
            next_delivery_tag: 1,
            unacked: VecDeque::new(),
            consumers: HashMap::new(),
            prefetch_count: 0,
            channel_credit: Credit::new(0),
            unbounded_credit: None,
            confirm: false,
            publish_seq: 0,
            confirmed_to: 0,
            needs_flush: VecDeque::new(),
            rejected: VecDeque::new(),
            flush_requested: 0,
            store_failures: 0,
            tx: None,
            last_queue: None,
            route_buf: Vec::new(),
            reply: None,
            memory,
            stats,
            tally: Tally::default(),
        }
    }

    /// Handles a method frame.
    pub fn handle_method(&mut self, ctx: &mut Ctx, decoded: Decoded) -> Result<(), AmqpError> {
        let (class_id, method_id) = (decoded.class_id, decoded.method_id);
        if !matches!(self.assembly, Assembly::Idle) {
            return Err(self.assembly.out_of_order().into());
        }
        let r = self
            .dispatch(ctx, decoded.method)
            .map_err(|e| e.on(class_id, method_id));
        self.report();
        r
    }

    /// Whether its oldest unacked delivery has waited `timeout` or more by `now`.
    pub fn ack_overdue(&self, now: std::time::Instant, timeout: std::time::Duration) -> bool {
        // Tags are handed out in time order, so the front is the oldest.
        self.unacked
            .front()
            .is_some_and(|u| now.saturating_duration_since(u.delivered_at) >= timeout)
    }

    /// Brings the levels listings show up to date: a few relaxed stores to a line only this
    /// channel writes.
    fn report(&self) {
        let s = &self.stats;
        s.unacked
            .store(self.unacked.len() as u64, Ordering::Relaxed);
        s.consumers.store(
            u32::try_from(self.consumers.len()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        s.unconfirmed
            .store(self.publish_seq - self.confirmed_to, Ordering::Relaxed);
    }

    /// Checks a permission as RabbitMQ's channels do: a resource this channel was allowed
    /// stays allowed; anything else is checked against the permissions in force now.
    pub(super) fn permit(
        &mut self,
        ctx: &mut Ctx,
        perm: Perm,
        resource: Resource,
        name: &str,
    ) -> Result<(), ChannelError> {
        let seen =
            |(p, r, n): &(Perm, Resource, Box<str>)| *p == perm && *r == resource && **n == *name;
        if self.checked.iter().any(seen) {
            return Ok(());
        }
        ctx.refresh_permissions();
        ctx.permit(perm, resource, name)?;
        self.remember(perm, resource, name);
        Ok(())
    }

    /// Remembers that this channel was allowed to publish to `exchange`.
    fn remember_write(&mut self, exchange: &[u8]) {
        let seen = |(p, r, n): &(Perm, Resource, Box<str>)| {
            *p == Perm::Write && *r == Resource::Exchange && n.as_bytes() == exchange
        };
        if self.checked.last().is_some_and(seen) || self.checked.iter().any(seen) {
            return;
        }
        self.remember(
            Perm::Write,
            Resource::Exchange,
            &String::from_utf8_lossy(exchange),
        );
    }

    /// Adds an allowed resource, forgetting the oldest past [`PERMISSION_CACHE`].
    fn remember(&mut self, perm: Perm, resource: Resource, name: &str) {
        if self.checked.len() == PERMISSION_CACHE {
            self.checked.remove(0);
        }
        self.checked.push((perm, resource, name.into()));
    }

    fn dispatch(&mut self, ctx: &mut Ctx, method: Method) -> Result<(), AmqpError> {
        match method {
            Method::Publish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => {
                ctx.published = true;
                ctx.refresh_permissions();
                // The hot path: most users may write anywhere, and then only the exchange is
                // remembered (a compare with the last one), to stay allowed if that changes.
                if ctx.permissions.grants_all(Perm::Write) {
                    self.remember_write(&exchange);
                } else {
                    self.permit(
                        ctx,
                        Perm::Write,
                        Resource::Exchange,
                        &String::from_utf8_lossy(&exchange),
                    )?;
                }
                self.publish(exchange, routing_key, mandatory, immediate)
            }
            Method::Ack {
                delivery_tag,
                multiple,
            } => self.settle(delivery_tag, multiple, true, false),
            Method::Qos {
                prefetch_size,
                prefetch_count,
                global,
            } => self.qos(ctx, prefetch_size, prefetch_count, global),
            Method::Other(AMQPClass::Basic(m)) => self.basic(ctx, m),
            Method::Other(AMQPClass::Queue(m)) => {
                ctx.mark_topology();
                self.queue(ctx, m)
            }
            Method::Other(AMQPClass::Exchange(m)) => {
                ctx.mark_topology();
                self.exchange(ctx, m)
            }
            Method::Other(AMQPClass::Channel(m)) => self.channel(ctx, m),
            Method::Other(AMQPClass::Confirm(confirm_class::AMQPMethod::Select(s))) => {
                if self.tx.is_some() {
                    return Err(ChannelError::precondition(
                        "cannot switch from tx to confirm mode",
                    )
                    .into());
                }
                self.confirm = true;
                self.stats.set_mode(Mode::Confirm);
                self.note_store_failures(ctx);
                if !s.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Confirm(confirm_class::AMQPMethod::SelectOk(
                            confirm_class::SelectOk {},
                        )),
                    );
                }
                Ok(())
            }
            Method::Other(AMQPClass::Tx(m)) => self.tx(ctx, m),
            Method::Other(AMQPClass::Connection(_)) => Err(ConnectionError::new(
                code::COMMAND_INVALID,
                "connection methods belong on channel 0",
            )
            .into()),
            Method::Other(_) => {
                Err(ConnectionError::command_invalid("method not valid here").into())
            }
        }
    }

    fn channel(&mut self, ctx: &mut Ctx, m: channel::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            channel::AMQPMethod::Open(_) => {
                Err(ConnectionError::new(code::CHANNEL_ERROR, "second 'channel.open' seen").into())
            }
            channel::AMQPMethod::Flow(f) => {
                if !f.active {
                    return Err(ConnectionError::not_implemented("active=false").into());
                }
                ctx.send(
                    self.id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
                Ok(())
            }
            // channel.close and close-ok are the connection's business: it owns the channel table.
            _ => Err(ConnectionError::command_invalid("unexpected channel method").into()),
        }
    }

    /// Releases everything the channel holds: unacked deliveries go back to their queues and
    /// consumers are cancelled (auto-delete queues may go with them).
    pub fn close(&mut self, ctx: &mut Ctx) {
        self.assembly = Assembly::Idle;
        if let Some((name, _)) = self.reply.take() {
            ctx.broker.unregister_reply(&name);
        }
        // Consumers go first, so the requeued messages are not offered straight back to them.
        let consumers: Vec<(Arc<str>, ChannelConsumer)> = self.consumers.drain().collect();
        for (tag, c) in consumers {
            if c.queue.remove_consumer(ctx.conn_id, self.id, &tag) {
                ctx.vhost.drop_queue(&c.queue);
            }
        }
        // Settlements of an open transaction never happened: those deliveries come back too.
        if let Some(ops) = self.tx.take() {
            self.unsettle(ops);
        }
        let unacked: Vec<Unacked> = self.unacked.drain(..).collect();
        requeue_all(unacked);
        self.tally.flush();
        ctx.vhost.retired.absorb(&self.stats.retire());
        ctx.vhost.retired_sizes.absorb(&self.stats.sizes);
        // Everything counted for this channel is let go, deliveries still in the connection's
        // inbox included: they go back to their queues, which count them again.
        self.channel_credit.holding.clear(&self.memory);
    }
}

/// Checks that the message's exchange can take it and collects the queues it routes to.
fn route(
    ctx: &Ctx,
    msg: &Message,
    shared: &SharedRecord,
    queues: &mut Vec<Arc<Queue>>,
    tally: &mut Tally,
) -> Result<(), AmqpError> {
    let exchange = std::str::from_utf8(&msg.exchange).unwrap_or("\u{fffd}");
    ctx.vhost.check_publish(exchange)?;
    ctx.permit_topic(
        Perm::Write,
        exchange,
        &String::from_utf8_lossy(&msg.routing_key),
    )?;
    queues.clear();
    ctx.vhost.route(exchange, msg, shared, queues, tally)?;
    Ok(())
}

/// Deliveries requeued under one hold of a queue's lock. Past it, the rest go back in slices of
/// this size with a yield between each, so a connection that closes with millions unacked does
/// not stall every other client while they return.
const REQUEUE_SLICE: usize = 4096;

/// Requeues deliveries, grouped by queue. Credit is the caller's business: a closing channel has
/// none to give back.
fn requeue_all(unacked: Vec<Unacked>) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<Entry>)> = Vec::new();
    // Newest first: each then belongs in front of the one before, the cheap end of a ready list.
    for u in unacked.into_iter().rev() {
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, entries)) => entries.push(u.message),
            None => by_queue.push((u.queue, vec![u.message])),
        }
    }
    for (q, entries) in by_queue {
        q.release(
            entries.len() as u64,
            entries.iter().map(Entry::body_len).sum(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if entries.len() > REQUEUE_SLICE => {
                runtime.spawn(async move {
                    let mut entries = entries.into_iter();
                    while entries.len() > 0 {
                        q.requeue(entries.by_ref().take(REQUEUE_SLICE));
                        tokio::task::yield_now().await;
                    }
                });
            }
            _ => q.requeue(entries),
        }
    }
}
