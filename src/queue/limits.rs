//! Length limits: `x-max-length` and `x-max-length-bytes`, as RabbitMQ counts them for its
//! `x-overflow` modes (the queue's publish and trim paths act on the answers).

use super::{Queue, State};
use crate::protocol::Message;

impl Queue {
    /// Whether one more message would pass a length limit (RabbitMQ's `will_overflow`).
    pub(super) fn would_overflow(&self, st: &State, msg: &Message) -> bool {
        let len = u64::try_from(st.ready.len()).unwrap_or(u64::MAX);
        let bytes = u64::try_from(msg.body.len()).unwrap_or(u64::MAX);
        st.args.max_length.is_some_and(|m| len + 1 > m)
            || st
                .args
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes.saturating_add(bytes) > m)
    }

    /// Whether the ready messages are past a length limit (RabbitMQ's `over_max_length`).
    pub(super) fn over_limit(&self, st: &State) -> bool {
        let len = u64::try_from(st.ready.len()).unwrap_or(u64::MAX);
        st.args.max_length.is_some_and(|m| len > m)
            || st.args.max_length_bytes.is_some_and(|m| st.ready_bytes > m)
    }
}
