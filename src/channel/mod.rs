//! The per-channel state machine: publish assembly, confirms, transactions, consumers and unacked
//! deliveries. Every method lands in one exhaustive match, one file per class.

mod basic;
mod exchange;
mod queue;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, channel, confirm, tx};
use bytes::{Bytes, BytesMut};

use crate::broker::{Broker, VHost};
use crate::protocol::method::{Decoded, Method};
use crate::protocol::{
    AmqpError, ChannelError, ConnectionError, Message, PropertiesInfo, code, encode,
};
use crate::queue::memory::MemoryGauge;
use crate::queue::{Credit, Entry, EventSender, Queue, QueueEvent};

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
}

impl Ctx {
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
}

/// A consumer as its channel knows it.
#[derive(Debug)]
struct ChannelConsumer {
    queue: Arc<Queue>,
    no_ack: bool,
    credit: Arc<Credit>,
}

/// Publish assembly: method, then header, then body frames.
#[derive(Debug, Default)]
enum Assembly {
    #[default]
    Idle,
    Header {
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
    },
    Body {
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
        properties: Bytes,
        info: PropertiesInfo,
        size: usize,
        body: BytesMut,
    },
}

/// A publish or settlement held back until `tx.commit`. As in RabbitMQ, a publish is checked and
/// routed when it arrives and handed to its queues on commit; a settlement takes its deliveries
/// out of the unacked list at once (a second ack of one is an unknown tag) and a rollback puts
/// them back.
#[derive(Debug)]
enum TxOp {
    Publish {
        msg: Arc<Message>,
        mandatory: bool,
        queues: Vec<Arc<Queue>>,
    },
    Settle {
        settled: Vec<Unacked>,
        ack: bool,
        requeue: bool,
    },
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub id: u16,
    assembly: Assembly,
    next_delivery_tag: u64,
    unacked: VecDeque<Unacked>,
    consumers: HashMap<Arc<str>, ChannelConsumer>,
    prefetch_count: u16,
    channel_credit: Arc<Credit>,
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
}

impl Channel {
    /// A newly opened channel, counting what it holds against `memory`.
    pub fn new(id: u16, memory: Arc<MemoryGauge>) -> Self {
        Self {
            id,
            assembly: Assembly::Idle,
            next_delivery_tag: 1,
            unacked: VecDeque::new(),
            consumers: HashMap::new(),
            prefetch_count: 0,
            channel_credit: Credit::new(0),
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
        }
    }

    /// Handles a method frame.
    pub fn handle_method(&mut self, ctx: &mut Ctx, decoded: Decoded) -> Result<(), AmqpError> {
        let (class_id, method_id) = (decoded.class_id, decoded.method_id);
        if !matches!(self.assembly, Assembly::Idle) {
            return Err(ConnectionError::unexpected_frame(format_args!(
                "expected content header for class 60, got non content header frame instead"
            ))
            .on(60, 40)
            .into());
        }
        self.dispatch(ctx, decoded.method)
            .map_err(|e| e.on(class_id, method_id))
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
            Method::Other(AMQPClass::Queue(m)) => self.queue(ctx, m),
            Method::Other(AMQPClass::Exchange(m)) => self.exchange(ctx, m),
            Method::Other(AMQPClass::Channel(m)) => self.channel(ctx, m),
            Method::Other(AMQPClass::Confirm(confirm::AMQPMethod::Select(s))) => {
                if self.tx.is_some() {
                    return Err(ChannelError::precondition(
                        "cannot switch from tx to confirm mode",
                    )
                    .into());
                }
                self.confirm = true;
                self.note_store_failures(ctx);
                if !s.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
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

    fn tx(&mut self, ctx: &mut Ctx, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirm {
                    return Err(ChannelError::precondition(
                        "cannot switch from confirm to tx mode",
                    )
                    .into());
                }
                self.tx.get_or_insert_with(Vec::new);
                self.note_store_failures(ctx);
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(ops) = self.tx.replace(Vec::new()) else {
                    return Err(ChannelError::precondition("channel is not transactional").into());
                };
                let mut persisted = false;
                let mut rejected = false;
                for op in ops {
                    match op {
                        TxOp::Publish {
                            msg,
                            mandatory,
                            mut queues,
                        } => {
                            let handed = self.hand_over(ctx, &msg, mandatory, &mut queues);
                            persisted |= handed.persisted;
                            rejected |= handed.rejected;
                        }
                        TxOp::Settle {
                            settled,
                            ack,
                            requeue,
                        } => self.apply_settled(settled, ack, requeue),
                    }
                }
                // What the full queues did not refuse stays committed, as in RabbitMQ.
                if rejected {
                    return Err(ChannelError::precondition("partial tx completion").into());
                }
                // commit-ok promises what was committed is on disk.
                if !(persisted && self.after_flush(ctx, 0, true)) {
                    Self::commit_ok(ctx, self.id);
                }
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(ops) = self.tx.replace(Vec::new()) else {
                    return Err(ChannelError::precondition("channel is not transactional").into());
                };
                self.unsettle(ops);
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(ConnectionError::command_invalid("unexpected tx method").into()),
        }
    }

    /// Handles a content header frame.
    pub fn handle_header(&mut self, ctx: &mut Ctx, payload: Bytes) -> Result<(), AmqpError> {
        let Assembly::Header {
            exchange,
            routing_key,
            mandatory,
        } = std::mem::take(&mut self.assembly)
        else {
            return Err(ConnectionError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )
            .into());
        };
        let malformed = || ConnectionError::frame_error("malformed content header").on(60, 40);
        let class = crate::protocol::frame::be_u16(&payload, 0).ok_or_else(malformed)?;
        if class != 60 {
            return Err(ConnectionError::unexpected_frame(format_args!(
                "expected content header for class 60, got one for class {class} instead"
            ))
            .on(60, 40)
            .into());
        }
        let size = crate::protocol::frame::be_u64(&payload, 4).ok_or_else(malformed)?;
        let properties = payload.slice(12..);
        let info = PropertiesInfo::scan(&properties)
            .map_err(|e| ConnectionError::frame_error(e).on(60, 40))?;
        if size > ctx.broker.config.max_message_size {
            return Err(ChannelError::precondition(format_args!(
                "message size {size} is larger than configured max size {}",
                ctx.broker.config.max_message_size
            ))
            .on(60, 40)
            .into());
        }
        let size = usize::try_from(size).map_err(|_| malformed())?;
        self.assembly = Assembly::Body {
            exchange,
            routing_key,
            mandatory,
            properties,
            info,
            size,
            body: BytesMut::new(),
        };
        if size == 0 {
            self.complete(ctx, Bytes::new())?;
        }
        Ok(())
    }

    /// Handles a content body frame.
    pub fn handle_body(&mut self, ctx: &mut Ctx, payload: Bytes) -> Result<(), AmqpError> {
        let Assembly::Body { size, body, .. } = &mut self.assembly else {
            return Err(ConnectionError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )
            .into());
        };
        let have = body.len() + payload.len();
        if have > *size {
            return Err(ConnectionError::frame_error(
                "content body frame exceeds remaining content size",
            )
            .on(60, 40)
            .into());
        }
        if have == *size {
            // The common case, a body in one frame, keeps the read buffer's slice: no copy.
            let whole = if body.is_empty() {
                payload
            } else {
                let held = body.capacity();
                body.extend_from_slice(&payload);
                let whole = std::mem::take(body).freeze();
                self.let_go(held);
                whole
            };
            return self.complete(ctx, whole);
        }
        // The declared size is only a claim: nothing is reserved for it, the buffer grows as body
        // frames really arrive, and what it takes counts against the memory alarm.
        let before = body.capacity();
        body.extend_from_slice(&payload);
        let grown = body.capacity() - before;
        self.hold(grown);
        Ok(())
    }

    fn complete(&mut self, ctx: &mut Ctx, body: Bytes) -> Result<(), AmqpError> {
        let Assembly::Body {
            exchange,
            routing_key,
            mandatory,
            properties,
            info,
            ..
        } = std::mem::take(&mut self.assembly)
        else {
            return Ok(());
        };
        let msg = Arc::new(Message::new(exchange, routing_key, properties, info, body));
        if let Some(user_id) = msg.user_id()
            && user_id != ctx.user.as_bytes()
        {
            return Err(ChannelError::precondition(format_args!(
                "user_id property set to '{}' but authenticated user was '{}'",
                String::from_utf8_lossy(user_id),
                ctx.user
            ))
            .on(60, 40)
            .into());
        }
        let msg = self.override_reply_to(msg)?;
        if let Some(raw) = msg.expiration() {
            // RabbitMQ looks the exchange up before it reads the expiration.
            let exchange = std::str::from_utf8(&msg.exchange).unwrap_or("\u{fffd}");
            ctx.vhost
                .check_publish(exchange)
                .and_then(|()| crate::queue::expiry::check_expiration(raw))
                .map_err(|e| e.on(60, 40))?;
        }
        if self.tx.is_some() {
            let mut queues = Vec::new();
            route(ctx, &msg, &mut queues).map_err(|e| e.on(60, 40))?;
            if let Some(ops) = &mut self.tx {
                ops.push(TxOp::Publish {
                    msg,
                    mandatory,
                    queues,
                });
            }
            return Ok(());
        }
        self.deliver_published(ctx, msg, mandatory)
            .map_err(|e| e.on(60, 40))
    }

    /// Puts the deliveries that uncommitted settlements took back among the unacked, in order.
    fn unsettle(&mut self, ops: Vec<TxOp>) {
        let before = self.unacked.len();
        for op in ops {
            if let TxOp::Settle { settled, .. } = op {
                self.unacked.extend(settled);
            }
        }
        if self.unacked.len() > before {
            self.unacked
                .make_contiguous()
                .sort_unstable_by_key(|u| u.tag);
        }
    }

    /// Sends the confirms earned since the last batch, as one `multiple` ack where it can.
    pub fn flush_confirms(&mut self, ctx: &mut Ctx) {
        if !self.confirm {
            return;
        }
        if let Some(&last) = self.needs_flush.back()
            && last > self.flush_requested
            && self.after_flush(ctx, last, false)
        {
            self.flush_requested = last;
        }
        // Acks go out in publish order: none passes a publish still waiting for its flush.
        let confirmable = self
            .needs_flush
            .front()
            .map_or(self.publish_seq, |first| first - 1);
        while let Some(&nack) = self.rejected.front()
            && nack <= confirmable
        {
            self.rejected.pop_front();
            if nack - 1 > self.confirmed_to {
                let multiple = nack - 1 - self.confirmed_to > 1;
                encode::confirm(&mut ctx.out, self.id, nack - 1, multiple, false);
            }
            encode::confirm(&mut ctx.out, self.id, nack, false, true);
            self.confirmed_to = nack;
        }
        if confirmable > self.confirmed_to {
            let multiple = confirmable - self.confirmed_to > 1;
            encode::confirm(&mut ctx.out, self.id, confirmable, multiple, false);
            self.confirmed_to = confirmable;
        }
    }

    /// Notes the store's failure count before any write a barrier of this channel will cover.
    fn note_store_failures(&mut self, ctx: &Ctx) {
        if let Some(store) = ctx.vhost.store() {
            self.store_failures = store.failures();
        }
    }

    /// Asks the store to report back once what is queued for it so far is on disk (or failed).
    fn after_flush(&mut self, ctx: &Ctx, upto: u64, commit: bool) -> bool {
        let Some(store) = ctx.vhost.store() else {
            return false;
        };
        // Writes sent from now on belong to the next barrier.
        let since = std::mem::replace(&mut self.store_failures, store.failures());
        let tx = ctx.tx.clone();
        let channel = self.id;
        store.after_flush(
            since,
            Box::new(move |written| {
                let _ = tx.send(QueueEvent::Flushed {
                    channel,
                    upto,
                    commit,
                    written,
                });
            }),
        );
        true
    }

    /// The store wrote up to `upto` (and the pending commit, if `commit`), or failed to: then
    /// those publishes are nacked and the commit fails, as RabbitMQ fails a commit a queue nacked.
    pub fn flushed(
        &mut self,
        ctx: &mut Ctx,
        upto: u64,
        commit: bool,
        written: bool,
    ) -> Result<(), ChannelError> {
        if written {
            while self.needs_flush.front().is_some_and(|&s| s <= upto) {
                self.needs_flush.pop_front();
            }
        } else {
            self.fail_flushed(upto);
        }
        self.flush_confirms(ctx);
        match (commit, written) {
            (false, _) => Ok(()),
            (true, true) => {
                Self::commit_ok(ctx, self.id);
                Ok(())
            }
            (true, false) => Err(ChannelError::precondition("partial tx completion").on(90, 20)),
        }
    }

    /// Turns the publishes waiting for a failed write into nacks, in confirm order.
    fn fail_flushed(&mut self, upto: u64) {
        let split = self.needs_flush.partition_point(|&s| s <= upto);
        if split == 0 {
            return;
        }
        let failed = self.needs_flush.drain(..split);
        let mut merged = VecDeque::with_capacity(self.rejected.len() + failed.len());
        let mut rejected = std::mem::take(&mut self.rejected).into_iter().peekable();
        for s in failed {
            while let Some(r) = rejected.next_if(|&r| r < s) {
                merged.push_back(r);
            }
            merged.push_back(s);
        }
        merged.extend(rejected);
        self.rejected = merged;
    }

    fn commit_ok(ctx: &mut Ctx, channel: u16) {
        ctx.send(
            channel,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
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
        // Everything counted for this channel is let go, deliveries still in the connection's
        // inbox included: they go back to their queues, which count them again.
        self.channel_credit.holding.clear(&self.memory);
    }

    /// Counts bytes of a body being assembled against the memory alarm.
    fn hold(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.channel_credit.holding.add(&self.memory, n);
    }

    /// Lets go of bytes counted by [`Self::hold`].
    fn let_go(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.channel_credit.holding.sub(&self.memory, n);
    }
}

/// Checks that the message's exchange can take it and collects the queues it routes to.
fn route(ctx: &Ctx, msg: &Message, queues: &mut Vec<Arc<Queue>>) -> Result<(), AmqpError> {
    let exchange = std::str::from_utf8(&msg.exchange).unwrap_or("\u{fffd}");
    ctx.vhost.check_publish(exchange)?;
    queues.clear();
    ctx.vhost.route(exchange, msg, queues)?;
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
