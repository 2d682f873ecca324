//! Publish assembly: the content header and body frames that follow a `basic.publish`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Channel, Ctx, TxOp, route};
use crate::protocol::content::{BadHeader, ContentHeader};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Limit, Message, PropertiesInfo};
use crate::queue::log::SharedRecord;

/// Publish assembly: method, then header, then body frames.
#[derive(Debug, Default)]
pub(super) enum Assembly {
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

impl Assembly {
    /// The 505 for a frame this state does not await, worded (and blamed on `basic.publish` once
    /// one is under way) as RabbitMQ 3.10 does: by the frame expected, not the one received.
    pub(super) fn out_of_order(&self) -> ConnectionError {
        match self {
            Self::Idle => ConnectionError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ),
            Self::Header { .. } => ConnectionError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40),
            Self::Body { .. } => ConnectionError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40),
        }
    }
}

impl Channel {
    /// Handles a content header frame.
    pub fn handle_header(&mut self, ctx: &mut Ctx, payload: Bytes) -> Result<(), AmqpError> {
        let (exchange, routing_key, mandatory) = match std::mem::take(&mut self.assembly) {
            Assembly::Header {
                exchange,
                routing_key,
                mandatory,
            } => (exchange, routing_key, mandatory),
            other => return Err(other.out_of_order().into()),
        };
        let ContentHeader {
            body_size: size,
            properties,
            info,
        } = ContentHeader::parse(&payload).map_err(|e| ConnectionError::from(e).on(60, 40))?;
        if size > ctx.broker.config.max_message_size {
            return Err(ChannelError::precondition(format_args!(
                "message size {size} is larger than configured max size {}",
                ctx.broker.config.max_message_size
            ))
            .on(60, 40)
            .limit(Limit::MessageSize)
            .into());
        }
        let size = usize::try_from(size)
            .map_err(|_| ConnectionError::from(BadHeader::Malformed).on(60, 40))?;
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
            return Err(self.assembly.out_of_order().into());
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
            let shared = SharedRecord::default();
            route(ctx, &msg, &shared, &mut queues, &mut self.tally).map_err(|e| e.on(60, 40))?;
            if let Some(ops) = &mut self.tx {
                self.stats
                    .uncommitted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ops.push(TxOp::Publish {
                    msg,
                    shared,
                    mandatory,
                    queues,
                });
            }
            return Ok(());
        }
        self.deliver_published(ctx, msg, mandatory)
            .map_err(|e| e.on(60, 40))
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
