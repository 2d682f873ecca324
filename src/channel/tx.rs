//! The `tx` class: select, commit, rollback, and the publishes and settlements a tx holds back.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, tx};

use super::{Channel, Ctx, Unacked};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Message};
use crate::queue::Queue;
use crate::queue::log::SharedRecord;

/// A publish or settlement held back until `tx.commit`. As in RabbitMQ, a publish is checked and
/// routed when it arrives and handed to its queues on commit; a settlement takes its deliveries
/// out of the unacked list at once (a second ack of one is an unknown tag) and a rollback puts
/// them back.
#[derive(Debug)]
pub(super) enum TxOp {
    Publish {
        msg: Arc<Message>,
        /// Its stored record, which a durable delayed exchange may have written when it was routed.
        shared: SharedRecord,
        mandatory: bool,
        queues: Vec<Arc<Queue>>,
    },
    Settle {
        settled: Vec<Unacked>,
        ack: bool,
        requeue: bool,
    },
}

impl Channel {
    pub(super) fn tx(&mut self, ctx: &mut Ctx, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirm {
                    return Err(ChannelError::precondition(
                        "cannot switch from confirm to tx mode",
                    )
                    .into());
                }
                self.tx.get_or_insert_with(Vec::new);
                self.stats
                    .set_mode(crate::broker::connections::Mode::Transactional);
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
                self.stats.tx_ended();
                let mut persisted = false;
                let mut rejected = false;
                for op in ops {
                    match op {
                        TxOp::Publish {
                            msg,
                            shared,
                            mandatory,
                            mut queues,
                        } => {
                            let handed = self.hand_over(ctx, &msg, &shared, mandatory, &mut queues);
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
                self.stats.tx_ended();
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

    /// Puts the deliveries that uncommitted settlements took back among the unacked, in order.
    pub(super) fn unsettle(&mut self, ops: Vec<TxOp>) {
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

    pub(super) fn commit_ok(ctx: &mut Ctx, channel: u16) {
        ctx.send(
            channel,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
    }
}
