//! The `exchange` class: declare, delete, and exchange-to-exchange bind/unbind.

use amq_protocol::protocol::{AMQPClass, exchange};

use super::{Channel, Ctx, string_argument};
use crate::broker::ExchangeDeclare;
use crate::broker::access::{Perm, Resource};
use crate::broker::exchange::{Binding, Destination};
use crate::protocol::{AmqpError, ConnectionError};

impl Channel {
    pub(super) fn exchange(
        &mut self,
        ctx: &mut Ctx,
        m: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        let id = self.id;
        let reply = |ctx: &mut Ctx, nowait: bool, ok: exchange::AMQPMethod| {
            if !nowait {
                ctx.send(id, AMQPClass::Exchange(ok));
            }
        };
        match m {
            exchange::AMQPMethod::Declare(d) => {
                // The default exchange is refused for that first, as RabbitMQ does.
                if !d.passive && !d.exchange.as_str().is_empty() {
                    let name = d.exchange.as_str();
                    self.permit(ctx, Perm::Configure, Resource::Exchange, name)?;
                    if let Some(ae) = string_argument(&d.arguments, "alternate-exchange") {
                        self.permit(ctx, Perm::Write, Resource::Exchange, &ae)?;
                        self.permit(ctx, Perm::Read, Resource::Exchange, name)?;
                    }
                }
                ctx.vhost.declare_exchange(&ExchangeDeclare {
                    name: d.exchange.to_string(),
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                })?;
                reply(
                    ctx,
                    d.nowait,
                    exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                );
            }
            exchange::AMQPMethod::Delete(d) => {
                // System exchanges are refused for that first, as RabbitMQ does.
                let name = d.exchange.as_str();
                if !name.is_empty() && !name.starts_with("amq.") {
                    self.permit(ctx, Perm::Configure, Resource::Exchange, name)?;
                }
                ctx.vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
                reply(
                    ctx,
                    d.nowait,
                    exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
                );
            }
            exchange::AMQPMethod::Bind(b) => {
                self.permit(ctx, Perm::Write, Resource::Exchange, b.destination.as_str())?;
                self.permit(ctx, Perm::Read, Resource::Exchange, b.source.as_str())?;
                ctx.permit_topic(Perm::Read, b.source.as_str(), b.routing_key.as_str())?;
                let binding = Binding {
                    destination: Destination::Exchange(b.destination.as_str().into()),
                    routing_key: b.routing_key.to_string(),
                    arguments: b.arguments,
                };
                ctx.vhost.bind(b.source.as_str(), binding)?;
                reply(
                    ctx,
                    b.nowait,
                    exchange::AMQPMethod::BindOk(exchange::BindOk {}),
                );
            }
            exchange::AMQPMethod::Unbind(b) => {
                self.permit(ctx, Perm::Write, Resource::Exchange, b.destination.as_str())?;
                self.permit(ctx, Perm::Read, Resource::Exchange, b.source.as_str())?;
                ctx.permit_topic(Perm::Read, b.source.as_str(), b.routing_key.as_str())?;
                let binding = Binding {
                    destination: Destination::Exchange(b.destination.as_str().into()),
                    routing_key: b.routing_key.to_string(),
                    arguments: b.arguments,
                };
                ctx.vhost.unbind(b.source.as_str(), &binding)?;
                reply(
                    ctx,
                    b.nowait,
                    exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
                );
            }
            _ => return Err(ConnectionError::command_invalid("unexpected exchange method").into()),
        }
        Ok(())
    }
}
