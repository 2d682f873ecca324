//! The `basic` class: publish, consume, get, acks, qos and recover.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic};
use bytes::Bytes;

use super::{Assembly, Channel, ChannelConsumer, Ctx, TxOp, Unacked, requeue_all, route};
use crate::broker::REPLY_TO;
use crate::broker::access::{Perm, Resource};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Limit, Message, code, encode};
use crate::queue::Entry;
use crate::queue::log::SharedRecord;
use crate::queue::memory::footprint;
use crate::queue::{Consumer, Credit, InFlight, NO_ACK_WINDOW, Published, Queue, args, stream};
use crate::stats::Stat;
use std::sync::atomic::Ordering;

/// What handing a message to its queues came to.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Handed {
    /// The store keeps it somewhere: its confirm (or commit) waits for the flush.
    pub persisted: bool,
    /// A full queue refused it: its confirm is a nack (its commit fails).
    pub rejected: bool,
}

fn random_tag(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Channel {
    pub(super) fn publish(
        &mut self,
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
        immediate: bool,
    ) -> Result<(), AmqpError> {
        if immediate {
            return Err(ConnectionError::not_implemented("immediate=true").into());
        }
        self.assembly = Assembly::Header {
            exchange,
            routing_key,
            mandatory,
        };
        Ok(())
    }

    /// Routes a complete message, returns it if unroutable and mandatory, and counts its confirm.
    pub(super) fn deliver_published(
        &mut self,
        ctx: &mut Ctx,
        msg: Arc<Message>,
        mandatory: bool,
    ) -> Result<(), AmqpError> {
        if msg.exchange.is_empty() && msg.routing_key.starts_with(b"amq.rabbitmq.reply-to.") {
            // Direct reply-to: straight to the requester's channel, never through a queue.
            let sent = ctx.broker.send_reply(msg.routing_key_str(), &msg);
            let mut none = Vec::new();
            if !sent {
                self.hand_over(ctx, &msg, &SharedRecord::default(), mandatory, &mut none);
            } else if self.confirm {
                self.publish_seq += 1;
            }
            return Ok(());
        }
        let mut queues = std::mem::take(&mut self.route_buf);
        let shared = SharedRecord::default();
        let routed = route(ctx, &msg, &shared, &mut queues, &mut self.tally);
        if routed.is_ok() {
            self.hand_over(ctx, &msg, &shared, mandatory, &mut queues);
        }
        self.route_buf = queues;
        routed
    }

    /// Hands a routed message (whose stored record is `shared`) to its queues (or back to its
    /// publisher) and counts its confirm: a nack if a full queue refused it, else an ack once the
    /// store has what it keeps.
    pub(super) fn hand_over(
        &mut self,
        ctx: &mut Ctx,
        msg: &Arc<Message>,
        shared: &SharedRecord,
        mandatory: bool,
        queues: &mut Vec<Arc<Queue>>,
    ) -> Handed {
        self.stats.counters.add(Stat::Publish, 1);
        self.stats.sizes.observe(msg.body.len() as u64);
        if self.confirm {
            self.stats.counters.add(Stat::ReceivedConfirm, 1);
        }
        if queues.is_empty() {
            let unroutable = if mandatory {
                Stat::ReturnUnroutable
            } else {
                Stat::DropUnroutable
            };
            self.stats.counters.add(unroutable, 1);
        }
        if queues.is_empty() && mandatory {
            encode::basic_return(
                &mut ctx.out,
                self.id,
                code::NO_ROUTE,
                "NO_ROUTE",
                msg,
                ctx.frame_max,
            );
        }
        let mut handed = Handed::default();
        for q in queues.drain(..) {
            match q.publish(msg.clone(), shared) {
                Published::Accepted { persisted } => handed.persisted |= persisted,
                Published::Rejected => handed.rejected = true,
            }
            if q.backlogged() {
                ctx.throttle = Some(q);
            }
        }
        if self.confirm {
            self.publish_seq += 1;
            if handed.rejected {
                self.rejected.push_back(self.publish_seq);
            } else if handed.persisted {
                self.needs_flush.push_back(self.publish_seq);
            }
        }
        handed
    }

    pub(super) fn qos(
        &mut self,
        ctx: &mut Ctx,
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    ) -> Result<(), AmqpError> {
        if prefetch_size != 0 {
            return Err(ConnectionError::not_implemented(format_args!(
                "prefetch_size!=0 ({prefetch_size})"
            ))
            .into());
        }
        if global {
            self.channel_credit.prefetch.store(
                u32::from(prefetch_count),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.stats
                .global_prefetch
                .store(u32::from(prefetch_count), Ordering::Relaxed);
            self.kick_consumers();
        } else {
            self.prefetch_count = prefetch_count;
            self.stats
                .prefetch
                .store(u32::from(prefetch_count), Ordering::Relaxed);
        }
        ctx.send(
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    fn kick_consumers(&self) {
        for c in self.consumers.values() {
            c.queue.drain();
        }
    }

    pub(super) fn queue_name(&self, name: &str) -> Result<Arc<str>, ChannelError> {
        if !name.is_empty() {
            return Ok(name.into());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| ChannelError::new(code::NOT_FOUND, "no previously declared queue"))
    }

    pub(super) fn basic(&mut self, ctx: &mut Ctx, m: basic::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            basic::AMQPMethod::Consume(c) => self.consume(ctx, c),
            basic::AMQPMethod::Cancel(c) => {
                let tag: &str = c.consumer_tag.as_str();
                if self.reply.as_ref().is_some_and(|(_, t)| &**t == tag)
                    && let Some((name, _)) = self.reply.take()
                {
                    ctx.broker.unregister_reply(&name);
                }
                if let Some(cc) = self.consumers.remove(tag)
                    && cc.queue.remove_consumer(ctx.conn_id, self.id, tag)
                {
                    ctx.vhost.drop_queue(&cc.queue);
                }
                if !c.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => {
                let name = self.queue_name(g.queue.as_str())?;
                self.permit(ctx, Perm::Read, Resource::Queue, &name)?;
                let q = ctx.vhost.queue(&name, ctx.conn_id)?;
                if q.is_stream() {
                    return Err(stream::unsupported(&q, "basic.get").into());
                }
                match q.get() {
                    None => {
                        self.stats.counters.add(Stat::GetEmpty, 1);
                        q.counters.add(Stat::GetEmpty, 1);
                        ctx.send(
                            self.id,
                            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                        );
                    }
                    Some((message, left)) => {
                        let tag = self.next_delivery_tag;
                        self.next_delivery_tag += 1;
                        let counted = message.counted_message(true);
                        encode::get_ok(
                            &mut ctx.out,
                            self.id,
                            tag,
                            message.redelivered,
                            left,
                            counted.as_ref().unwrap_or(&message.msg),
                            ctx.frame_max,
                        );
                        let got = if g.no_ack { Stat::GetNoAck } else { Stat::Get };
                        self.stats.counters.add(got, 1);
                        q.counters.add(got, 1);
                        if message.redelivered {
                            self.stats.counters.add(Stat::Redeliver, 1);
                            q.counters.add(Stat::Redeliver, 1);
                        }
                        if g.no_ack {
                            q.settle(&message.message);
                        } else {
                            q.hold(message.body_len());
                            self.channel_credit
                                .holding
                                .add(&self.memory, footprint(&message.msg));
                            self.unacked.push_back(Unacked {
                                delivered_at: ctx.now,
                                tag,
                                queue: q,
                                message,
                                credit: None,
                            });
                        }
                    }
                }
                Ok(())
            }
            basic::AMQPMethod::Reject(r) => self.settle(r.delivery_tag, false, false, r.requeue),
            basic::AMQPMethod::Nack(n) => self.settle(n.delivery_tag, n.multiple, false, n.requeue),
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue)?;
                ctx.send(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue),
            basic::AMQPMethod::Qos(q) => self.qos(ctx, 0, q.prefetch_count, q.global),
            basic::AMQPMethod::Ack(a) => self.settle(a.delivery_tag, a.multiple, true, false),
            _ => Err(ConnectionError::command_invalid("unexpected basic method").into()),
        }
    }

    fn recover(&mut self, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(ConnectionError::not_implemented("requeue=false").into());
        }
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        let starved = self.shared_credit_binds();
        self.release_credit(&all);
        requeue_all(all);
        if starved {
            self.kick_consumers();
        }
        Ok(())
    }

    fn consume(&mut self, ctx: &mut Ctx, c: basic::Consume) -> Result<(), AmqpError> {
        if c.queue.as_str() == REPLY_TO {
            return self.consume_replies(ctx, c);
        }
        let name = self.queue_name(c.queue.as_str())?;
        self.permit(ctx, Perm::Read, Resource::Queue, &name)?;
        let tag = self.consumer_tag(c.consumer_tag.as_str())?;
        let max = ctx.broker.config.consumer_max_per_channel;
        if max != 0 && self.consumers.len() >= max as usize {
            return Err(ConnectionError::new(
                code::NOT_ALLOWED,
                format_args!("reached maximum ({max}) of consumers per channel"),
            )
            .limit(Limit::ConsumersPerChannel)
            .into());
        }
        let q = ctx.vhost.queue(&name, ctx.conn_id)?;
        if q.is_stream() {
            stream::check_consumer(&q, c.no_ack, self.prefetch_count)?;
        }
        let priority = consumer_priority(&c.arguments, &q)?;
        // A consumer with no prefetch limit still has one: with no-ack, what may wait in the
        // inbox; otherwise the channel's cap on what all such consumers hold unacked together.
        // Past it, deliveries wait in the queue.
        let credit = if c.no_ack {
            Credit::with_limit(NO_ACK_WINDOW)
        } else if self.prefetch_count == 0 {
            self.unbounded_credit
                .get_or_insert_with(|| Credit::with_limit(ctx.broker.config.consumer_max_unacked))
                .clone()
        } else {
            Credit::with_limit(u32::from(self.prefetch_count))
        };
        let before = ctx.out.len();
        if !c.nowait {
            // consume-ok must precede the first delivery, which adding the consumer may trigger.
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.to_string().into(),
                })),
            );
        }
        let consumer = Consumer {
            tag: tag.clone(),
            channel: self.id,
            conn_id: ctx.conn_id,
            tx: ctx.tx.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            credit: credit.clone(),
            channel_credit: self.channel_credit.clone(),
            priority,
            memory: self.memory.clone(),
            arguments: c.arguments.clone(),
        };
        if let Err(e) = q.add_consumer(consumer) {
            ctx.out.truncate(before);
            return Err(e.into());
        }
        self.consumers.insert(
            tag,
            ChannelConsumer {
                queue: q,
                no_ack: c.no_ack,
                credit,
            },
        );
        Ok(())
    }

    /// The tag for a new consumer: the one asked for, or a fresh `amq.ctag-...`; reusing a tag on
    /// the channel is a connection error in RabbitMQ.
    fn consumer_tag(&self, requested: &str) -> Result<Arc<str>, AmqpError> {
        let tag: Arc<str> = if requested.is_empty() {
            random_tag("amq.ctag-").into()
        } else {
            requested.into()
        };
        let reply_tag = self.reply.as_ref().is_some_and(|(_, t)| *t == tag);
        if self.consumers.contains_key(&tag) || reply_tag {
            return Err(ConnectionError::new(
                code::NOT_ALLOWED,
                format_args!("attempt to reuse consumer tag '{tag}'"),
            )
            .into());
        }
        Ok(tag)
    }

    /// Makes this channel's direct reply-to consumer (no-ack, one per channel, as in RabbitMQ).
    fn consume_replies(&mut self, ctx: &mut Ctx, c: basic::Consume) -> Result<(), AmqpError> {
        let tag = self.consumer_tag(c.consumer_tag.as_str())?;
        if !c.no_ack {
            return Err(ChannelError::precondition("reply consumer cannot acknowledge").into());
        }
        if self.reply.is_some() {
            return Err(ChannelError::precondition("reply consumer already set").into());
        }
        let name = ctx.broker.register_reply(ctx.tx.clone(), self.id);
        self.reply = Some((name, tag.clone()));
        if !c.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.to_string().into(),
                })),
            );
        }
        Ok(())
    }

    /// Gives a published message this channel's reply-to name in place of the pseudo-queue's.
    pub(super) fn override_reply_to(&self, msg: Arc<Message>) -> Result<Arc<Message>, AmqpError> {
        if msg.reply_to() != Some(REPLY_TO.as_bytes()) {
            return Ok(msg);
        }
        let Some((name, _)) = &self.reply else {
            return Err(
                ChannelError::precondition("fast reply consumer does not exist")
                    .on(60, 40)
                    .into(),
            );
        };
        Ok(msg.with_reply_to(name).map(Arc::new).unwrap_or(msg))
    }

    /// Writes a direct reply to this channel's reply consumer (dropped if it has gone).
    pub fn deliver_reply(&mut self, ctx: &mut Ctx, msg: &Message) {
        if let Some((_, tag)) = &self.reply {
            let delivery_tag = self.next_delivery_tag;
            self.next_delivery_tag += 1;
            encode::deliver(
                &mut ctx.out,
                self.id,
                tag,
                delivery_tag,
                false,
                msg,
                ctx.frame_max,
            );
        }
    }

    /// Writes a delivery a queue sent; gives it back if the consumer is gone (the caller requeues).
    pub fn deliver(
        &mut self,
        ctx: &mut Ctx,
        consumer_tag: &Arc<str>,
        queue: Arc<Queue>,
        message: InFlight,
    ) -> Result<(), (Arc<Queue>, InFlight)> {
        let Some(c) = self.consumers.get(consumer_tag) else {
            self.channel_credit
                .holding
                .sub(&self.memory, message.footprint());
            return Err((queue, message));
        };
        let Some(message) = message.take() else {
            return Ok(());
        };
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        let counted = message.counted_message(false);
        encode::deliver(
            &mut ctx.out,
            self.id,
            consumer_tag,
            tag,
            message.redelivered,
            counted.as_ref().unwrap_or(&message.msg),
            ctx.frame_max,
        );
        if message.redelivered {
            self.stats.counters.add(Stat::Redeliver, 1);
        }
        if c.no_ack {
            self.stats.counters.add(Stat::DeliverNoAck, 1);
            // Written, it is the socket's: the window opens again as the inbox drains.
            self.channel_credit
                .holding
                .sub(&self.memory, footprint(&message.msg));
            if c.credit.release_one() {
                queue.drain();
            }
        } else {
            self.stats.counters.add(Stat::Deliver, 1);
            queue.hold(message.body_len());
            self.unacked.push_back(Unacked {
                delivered_at: ctx.now,
                tag,
                queue,
                message,
                credit: Some(c.credit.clone()),
            });
            self.stats
                .unacked
                .store(self.unacked.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The broker cancelled a consumer (its queue was deleted).
    pub fn consumer_cancelled(&mut self, ctx: &mut Ctx, consumer_tag: &str) {
        if self.consumers.remove(consumer_tag).is_some() && ctx.cancel_notify {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer_tag.into(),
                    nowait: true,
                })),
            );
        }
    }

    /// Gives back the channel-wide credit of a delivery its consumer never saw.
    pub fn release_undelivered(&self) {
        self.channel_credit.release(1);
    }

    /// Gives back the credit and the memory of deliveries that leave the unacked list.
    fn release_credit(&self, settled: &[Unacked]) {
        let mut bytes = 0;
        for u in settled {
            bytes += footprint(&u.message.msg);
            if let Some(c) = &u.credit {
                c.release(1);
                self.channel_credit.release(1);
            }
        }
        self.channel_credit.holding.sub(&self.memory, bytes);
    }

    /// Acks, rejects or nacks: takes the named deliveries out of the unacked list now (an unknown
    /// tag fails here, even in a transaction) and settles them now or on commit.
    pub(super) fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        ack: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        if !ack && let Some(q) = self.stream_among(tag, multiple) {
            return Err(stream::unsupported(&q, "basic.nack and basic.reject").into());
        }
        let settled = self.collect(tag, multiple)?;
        if let Some(ops) = &mut self.tx {
            self.stats
                .acks_uncommitted
                .fetch_add(settled.len() as u64, Ordering::Relaxed);
            ops.push(TxOp::Settle {
                settled,
                ack,
                requeue,
            });
            return Ok(());
        }
        self.apply_settled(settled, ack, requeue);
        Ok(())
    }

    /// A stream among the queues of the deliveries `tag` and `multiple` name, if any: streams
    /// refuse rejects, and the deliveries must stay unacked for the connection's close to settle.
    fn stream_among(&self, tag: u64, multiple: bool) -> Option<Arc<Queue>> {
        let upto = if multiple && tag == 0 { u64::MAX } else { tag };
        self.unacked
            .iter()
            .take_while(|u| u.tag <= upto)
            .filter(|u| multiple || u.tag == tag)
            .find(|u| u.queue.is_stream())
            .map(|u| u.queue.clone())
    }

    /// RabbitMQ's `collect_acks`: `multiple` with tag 0 means every delivery; otherwise the tag
    /// itself must be outstanding, and `multiple` adds every earlier one.
    fn collect(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, ChannelError> {
        if multiple && tag == 0 {
            return Ok(self.unacked.drain(..).collect());
        }
        let Ok(i) = self.unacked.binary_search_by_key(&tag, |u| u.tag) else {
            return Err(unknown_tag(tag));
        };
        if multiple {
            Ok(self.unacked.drain(..=i).collect())
        } else {
            Ok(self.unacked.remove(i).into_iter().collect())
        }
    }

    /// Whether the channel's consumers share a credit that may be holding them back (a global
    /// prefetch, or the no-prefetch cap used up): one that waits may sit on any of their queues,
    /// so freeing some must wake them all.
    fn shared_credit_binds(&self) -> bool {
        self.channel_credit.prefetch.load(Ordering::Relaxed) != 0
            || self.unbounded_credit.as_ref().is_some_and(|c| c.is_full())
    }

    pub(super) fn apply_settled(&mut self, settled: Vec<Unacked>, ack: bool, requeue: bool) {
        let starved = self.shared_credit_binds();
        self.release_credit(&settled);
        if !ack && requeue {
            requeue_all(settled);
        } else if !ack {
            // Each run of one queue's deliveries is dead-lettered (or dropped) together, in order.
            let mut settled = settled.into_iter().peekable();
            while let Some(first) = settled.next() {
                let queue = first.queue;
                let mut run = vec![first.message];
                while let Some(u) = settled.next_if(|u| Arc::ptr_eq(&u.queue, &queue)) {
                    run.push(u.message);
                }
                queue.release(run.len() as u64, run.iter().map(Entry::body_len).sum());
                queue.reject(run);
                queue.drain();
            }
        } else {
            self.stats.counters.add(Stat::Ack, settled.len() as u64);
            // Counted per run of one queue's deliveries, not per message.
            let mut run: Option<(Arc<Queue>, u64, u64)> = None;
            for u in settled {
                u.queue.settle(&u.message);
                let bytes = u.message.body_len();
                match &mut run {
                    Some((q, n, b)) if Arc::ptr_eq(q, &u.queue) => {
                        *n += 1;
                        *b += bytes;
                    }
                    _ => {
                        if let Some((q, n, b)) = run.replace((u.queue, 1, bytes)) {
                            q.acked(n, b);
                        }
                    }
                }
            }
            if let Some((q, n, b)) = run {
                q.acked(n, b);
            }
        }
        if starved {
            self.kick_consumers();
        }
    }
}

/// A consumer's `x-priority`, checked as RabbitMQ's `check_consume_arguments` checks it (0 when
/// absent).
fn consumer_priority(
    args: &amq_protocol::types::FieldTable,
    q: &Queue,
) -> Result<i64, ChannelError> {
    let Some(v) = args.inner().get("x-priority") else {
        return Ok(0);
    };
    let Some(n) = args::int_value(v) else {
        return Err(ChannelError::precondition(format_args!(
            "invalid arg 'x-priority' for queue '{}' in vhost '{}': \"expected integer, got {}\"",
            q.name,
            q.vhost,
            args::type_name(v)
        )));
    };
    Ok(n)
}

fn unknown_tag(tag: u64) -> ChannelError {
    ChannelError::precondition(format_args!("unknown delivery tag {tag}"))
}
