//! What a queue sends a consumer's connection: the [`QueueEvent`]s of its inbox, and the
//! [`InFlight`] guard that returns an untaken delivery to its queue.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::memory::footprint;
use super::{Entry, Queue};
use crate::protocol::Message;

/// A message on its way from its queue to a consumer's channel. Dropped before the channel takes
/// it (a connection that goes away with deliveries still in its inbox), it returns to its queue:
/// no path can lose it.
#[derive(Debug)]
pub struct InFlight {
    queue: Arc<Queue>,
    message: Option<Entry>,
}

impl InFlight {
    pub(super) fn new(queue: Arc<Queue>, message: Entry) -> Self {
        Self {
            queue,
            message: Some(message),
        }
    }

    /// The message, which is now the taker's responsibility.
    pub fn take(mut self) -> Option<Entry> {
        self.message.take()
    }

    /// The memory its message is counted as holding.
    pub fn footprint(&self) -> u64 {
        self.message.as_ref().map_or(0, |e| footprint(&e.msg))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Never dropped armed under the queue's lock: `drain_locked` disarms what it takes back.
        if let Some(message) = self.message.take() {
            self.queue.put_back(message);
        }
    }
}

/// What a queue tells a consumer's connection.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message for a consumer.
    Deliver {
        /// Channel of the consumer.
        channel: u16,
        /// Consumer tag.
        consumer_tag: Arc<str>,
        /// The queue it came from, for acks and requeues.
        queue: Arc<Queue>,
        /// The message, returned to the queue if nobody takes it.
        message: InFlight,
    },
    /// A direct reply-to message for a channel's reply consumer.
    Reply {
        /// The channel.
        channel: u16,
        /// The message.
        msg: Arc<Message>,
    },
    /// The store flushed what a channel was waiting for.
    Flushed {
        /// The channel.
        channel: u16,
        /// Publishes up to this confirm sequence number are on disk.
        upto: u64,
        /// A `tx.commit` waits for this flush.
        commit: bool,
        /// Whether the store wrote it; if not, those publishes are nacked (the commit fails).
        written: bool,
    },
    /// The queue went away: the broker cancels the consumer.
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// Consumer tag.
        consumer_tag: Arc<str>,
    },
}

/// Where a connection receives queue events.
pub type EventSender = UnboundedSender<QueueEvent>;
