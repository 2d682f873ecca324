//! The `queue` class: declare, bind, unbind, purge and delete.

use amq_protocol::protocol::{AMQPClass, queue};

use super::{Channel, Ctx, string_argument};
use crate::broker::REPLY_TO;
use crate::broker::access::{Perm, Resource};
use crate::broker::exchange::{Binding, Destination};
use crate::broker::{QueueDeclare, generated_name};
use crate::protocol::ChannelError;
use crate::protocol::{AmqpError, ConnectionError, code};
use crate::queue::stream;

impl Channel {
    pub(super) fn queue(&mut self, ctx: &mut Ctx, m: queue::AMQPMethod) -> Result<(), AmqpError> {
        let id = self.id;
        let reply = |ctx: &mut Ctx, nowait: bool, ok: queue::AMQPMethod| {
            if !nowait {
                ctx.send(id, AMQPClass::Queue(ok));
            }
        };
        match m {
            queue::AMQPMethod::Declare(d) => {
                // No "last declared queue" shortcut here, not even for passive declares:
                // RabbitMQ answers 404 for the queue named ''.
                let name = d.queue.to_string();
                if name.starts_with(REPLY_TO) {
                    // A direct reply-to name: it exists while its consumer does.
                    if !ctx.broker.reply_exists(&name) {
                        return Err(ChannelError::no_queue(&name, &ctx.vhost.name).into());
                    }
                    reply(
                        ctx,
                        d.nowait,
                        queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: d.queue,
                            message_count: 0,
                            consumer_count: 1,
                        }),
                    );
                    return Ok(());
                }
                // The server names the queue here, so that the name is checked as RabbitMQ
                // checks it (`amq.gen-...`).
                let server_named = name.is_empty() && !d.passive;
                let name = if server_named { generated_name() } else { name };
                // A reserved name is refused for that first, as RabbitMQ does.
                let reserved = name.starts_with("amq.") && !server_named;
                if !d.passive && !reserved {
                    self.permit(ctx, Perm::Configure, Resource::Queue, &name)?;
                    if let Some(dlx) = string_argument(&d.arguments, "x-dead-letter-exchange") {
                        self.permit(ctx, Perm::Write, Resource::Exchange, &dlx)?;
                        self.permit(ctx, Perm::Read, Resource::Queue, &name)?;
                    }
                }
                let declared = ctx.vhost.declare_queue(
                    &QueueDeclare {
                        name,
                        server_named,
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                    },
                    ctx.conn_id,
                )?;
                self.last_queue = Some(declared.name.clone());
                reply(
                    ctx,
                    d.nowait,
                    queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: declared.name.to_string().into(),
                        message_count: declared.message_count,
                        consumer_count: declared.consumer_count,
                    }),
                );
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                self.permit(ctx, Perm::Write, Resource::Queue, &name)?;
                self.permit(ctx, Perm::Read, Resource::Exchange, b.exchange.as_str())?;
                // The key as the client sent it, as RabbitMQ checks it.
                ctx.permit_topic(Perm::Read, b.exchange.as_str(), b.routing_key.as_str())?;
                let binding = Binding {
                    destination: Destination::Queue(ctx.vhost.queue(&name, ctx.conn_id)?),
                    routing_key: self
                        .routing_key_or_queue(b.routing_key.as_str(), b.queue.as_str()),
                    arguments: b.arguments,
                };
                ctx.vhost.bind(b.exchange.as_str(), binding)?;
                reply(ctx, b.nowait, queue::AMQPMethod::BindOk(queue::BindOk {}));
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                self.permit(ctx, Perm::Write, Resource::Queue, &name)?;
                self.permit(ctx, Perm::Read, Resource::Exchange, b.exchange.as_str())?;
                ctx.permit_topic(Perm::Read, b.exchange.as_str(), b.routing_key.as_str())?;
                // Unbinding an absent queue is already done, as RabbitMQ sees it.
                match ctx.vhost.queue(&name, ctx.conn_id) {
                    Ok(q) => {
                        let binding = Binding {
                            destination: Destination::Queue(q),
                            routing_key: self
                                .routing_key_or_queue(b.routing_key.as_str(), b.queue.as_str()),
                            arguments: b.arguments,
                        };
                        ctx.vhost.unbind(b.exchange.as_str(), &binding)?;
                    }
                    Err(e) if e.code() == code::NOT_FOUND => {}
                    Err(e) => return Err(e.into()),
                }
                reply(ctx, false, queue::AMQPMethod::UnbindOk(queue::UnbindOk {}));
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                self.permit(ctx, Perm::Read, Resource::Queue, &name)?;
                let q = ctx.vhost.queue(&name, ctx.conn_id)?;
                if q.is_stream() {
                    return Err(stream::unsupported(&q, "queue.purge").into());
                }
                let message_count = q.purge();
                reply(
                    ctx,
                    p.nowait,
                    queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count }),
                );
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str())?;
                self.permit(ctx, Perm::Configure, Resource::Queue, &name)?;
                let message_count =
                    ctx.vhost
                        .delete_queue(&name, ctx.conn_id, d.if_unused, d.if_empty)?;
                reply(
                    ctx,
                    d.nowait,
                    queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count }),
                );
            }
            _ => return Err(ConnectionError::command_invalid("unexpected queue method").into()),
        }
        Ok(())
    }

    fn queue_name_or_empty(&self) -> String {
        self.last_queue.as_deref().unwrap_or_default().to_string()
    }

    /// RabbitMQ binds with the last declared queue's name when both queue and key are empty.
    fn routing_key_or_queue(&self, routing_key: &str, queue: &str) -> String {
        if routing_key.is_empty() && queue.is_empty() {
            return self.queue_name_or_empty();
        }
        routing_key.to_string()
    }
}
