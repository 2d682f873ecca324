//! Publisher confirms: which publishes are acked or nacked, and when, behind the store's flushes.

use std::collections::VecDeque;

use super::{Channel, Ctx, StoreMark};
use crate::protocol::{ChannelError, encode};
use crate::queue::QueueEvent;

impl Ctx {
    /// Notes the store's counters before the batch's first queue or exchange method.
    pub(super) fn mark_topology(&mut self) {
        if self.topology.is_none()
            && let Some(store) = self.vhost.store()
        {
            self.topology = Some(StoreMark {
                failures: store.failures(),
                topology_writes: store.topology_writes(),
            });
        }
    }

    /// Waits until the topology written in this batch (durable declares, deletes, bindings) is
    /// on disk, so that no reply promises what a power cut could undo; false if a write failed.
    pub async fn topology_durable(&mut self) -> bool {
        let (Some(mark), Some(store)) = (self.topology.take(), self.vhost.store()) else {
            return true;
        };
        if store.topology_writes() == mark.topology_writes {
            return true;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.after_flush(
            mark.failures,
            Box::new(move |written| {
                let _ = tx.send(written);
            }),
        );
        rx.await.unwrap_or(false)
    }
}

impl Channel {
    /// Ends a batch: adds its publishes to their exchanges' counts, and sends the confirms
    /// earned since the last batch, as one `multiple` ack where it can.
    pub fn flush_confirms(&mut self, ctx: &mut Ctx) {
        self.tally.flush();
        if !self.confirm {
            return;
        }
        let before = self.confirmed_to;
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
        if self.confirmed_to > before {
            self.stats
                .counters
                .add(crate::stats::Stat::Confirm, self.confirmed_to - before);
            self.stats.unconfirmed.store(
                self.publish_seq - self.confirmed_to,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Notes the store's failure count before any write a barrier of this channel will cover.
    pub(super) fn note_store_failures(&mut self, ctx: &Ctx) {
        if let Some(store) = ctx.vhost.store() {
            self.store_failures = store.failures();
        }
    }

    /// Asks the store to report back once what is queued for it so far is on disk (or failed).
    pub(super) fn after_flush(&mut self, ctx: &Ctx, upto: u64, commit: bool) -> bool {
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
}
