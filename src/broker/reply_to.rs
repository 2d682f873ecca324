//! Direct reply-to: the `amq.rabbitmq.reply-to` pseudo-queue, and the registry of reply names
//! that reach a channel's reply consumer.

use std::sync::Arc;

use super::Broker;
use crate::protocol::Message;

/// The pseudo-queue RabbitMQ's direct reply-to consumers consume from.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

impl Broker {
    /// Registers a channel's reply consumer under a fresh reply-to name, which it returns.
    pub fn register_reply(&self, tx: crate::queue::EventSender, channel: u16) -> String {
        use base64::Engine;
        let token: [u8; 18] = rand::random();
        let name = format!(
            "{REPLY_TO}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        );
        self.replies.lock().insert(name.clone(), (tx, channel));
        name
    }

    /// Whether a reply-to name has a live consumer.
    pub fn reply_exists(&self, name: &str) -> bool {
        name == REPLY_TO || self.replies.lock().contains_key(name)
    }

    /// Forgets a reply-to name.
    pub fn unregister_reply(&self, name: &str) {
        self.replies.lock().remove(name);
    }

    /// Hands a reply to the channel behind a reply-to name; false if there is none.
    pub fn send_reply(&self, name: &str, msg: &Arc<Message>) -> bool {
        let target = self.replies.lock().get(name).cloned();
        match target {
            Some((tx, channel)) => tx
                .send(crate::queue::QueueEvent::Reply {
                    channel,
                    msg: msg.clone(),
                })
                .is_ok(),
            None => false,
        }
    }
}
