//! AMQP errors typed by scope: a `ChannelError` closes one channel, a `ConnectionError` the connection.

use std::fmt;

/// AMQP reply codes, as the 0-9-1 spec and RabbitMQ number them.
pub mod code {
    /// 200 reply-success.
    pub const REPLY_SUCCESS: u16 = 200;
    /// 311 content-too-large.
    pub const CONTENT_TOO_LARGE: u16 = 311;
    /// 312 no-route (basic.return).
    pub const NO_ROUTE: u16 = 312;
    /// 313 no-consumers.
    pub const NO_CONSUMERS: u16 = 313;
    /// 320 connection-forced.
    pub const CONNECTION_FORCED: u16 = 320;
    /// 402 invalid-path.
    pub const INVALID_PATH: u16 = 402;
    /// 403 access-refused.
    pub const ACCESS_REFUSED: u16 = 403;
    /// 404 not-found.
    pub const NOT_FOUND: u16 = 404;
    /// 405 resource-locked.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// 406 precondition-failed.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// 501 frame-error.
    pub const FRAME_ERROR: u16 = 501;
    /// 502 syntax-error.
    pub const SYNTAX_ERROR: u16 = 502;
    /// 503 command-invalid.
    pub const COMMAND_INVALID: u16 = 503;
    /// 504 channel-error.
    pub const CHANNEL_ERROR: u16 = 504;
    /// 505 unexpected-frame.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// 506 resource-error.
    pub const RESOURCE_ERROR: u16 = 506;
    /// 530 not-allowed.
    pub const NOT_ALLOWED: u16 = 530;
    /// 540 not-implemented.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// 541 internal-error.
    pub const INTERNAL_ERROR: u16 = 541;
}

/// RabbitMQ's upper-case name for a reply code, which prefixes every reply text.
pub fn code_name(reply_code: u16) -> &'static str {
    match reply_code {
        code::REPLY_SUCCESS => "OK",
        code::CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        code::NO_ROUTE => "NO_ROUTE",
        code::NO_CONSUMERS => "NO_CONSUMERS",
        code::CONNECTION_FORCED => "CONNECTION_FORCED",
        code::INVALID_PATH => "INVALID_PATH",
        code::ACCESS_REFUSED => "ACCESS_REFUSED",
        code::NOT_FOUND => "NOT_FOUND",
        code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        code::FRAME_ERROR => "FRAME_ERROR",
        code::SYNTAX_ERROR => "SYNTAX_ERROR",
        code::COMMAND_INVALID => "COMMAND_INVALID",
        code::CHANNEL_ERROR => "CHANNEL_ERROR",
        code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        code::RESOURCE_ERROR => "RESOURCE_ERROR",
        code::NOT_ALLOWED => "NOT_ALLOWED",
        code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// A limit that keeps one client from hurting the others: each refusal is logged and counted
/// under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The node's `connection_max`.
    NodeConnections,
    /// A vhost's `max-connections`.
    VhostConnections,
    /// A user's `max-connections`.
    UserConnections,
    /// The negotiated `channel_max`.
    ChannelMax,
    /// A user's `max-channels`.
    UserChannels,
    /// A vhost's `max-queues`.
    VhostQueues,
    /// `consumer_max_per_channel`.
    ConsumersPerChannel,
    /// `max_message_size`.
    MessageSize,
    /// `frame_max`.
    FrameSize,
    /// Field tables nested deeper than Warren reads.
    TableDepth,
    /// `consumer_timeout`.
    ConsumerTimeout,
}

impl Limit {
    /// Every limit, in the order metrics list them.
    pub const ALL: [Limit; 11] = [
        Limit::NodeConnections,
        Limit::VhostConnections,
        Limit::UserConnections,
        Limit::ChannelMax,
        Limit::UserChannels,
        Limit::VhostQueues,
        Limit::ConsumersPerChannel,
        Limit::MessageSize,
        Limit::FrameSize,
        Limit::TableDepth,
        Limit::ConsumerTimeout,
    ];

    /// Its name in logs and metrics: the setting that sets it.
    pub fn name(self) -> &'static str {
        match self {
            Limit::NodeConnections => "connection_max",
            Limit::VhostConnections => "vhost_max_connections",
            Limit::UserConnections => "user_max_connections",
            Limit::ChannelMax => "channel_max",
            Limit::UserChannels => "user_max_channels",
            Limit::VhostQueues => "vhost_max_queues",
            Limit::ConsumersPerChannel => "consumer_max_per_channel",
            Limit::MessageSize => "max_message_size",
            Limit::FrameSize => "frame_max",
            Limit::TableDepth => "table_depth",
            Limit::ConsumerTimeout => "consumer_timeout",
        }
    }
}

/// What both error scopes carry: code, RabbitMQ-style text and the failing method.
#[derive(Debug, Clone, Eq)]
pub struct Reply {
    /// AMQP reply code.
    pub reply_code: u16,
    /// Full reply text, `NAME - detail`, as RabbitMQ formats it.
    pub reply_text: String,
    /// Class id of the method that failed (0 when none).
    pub class_id: u16,
    /// Method id of the method that failed (0 when none).
    pub method_id: u16,
    /// The limit the refusal enforces, if it is one.
    pub limit: Option<Limit>,
}

/// Replies are equal when the client would see the same: the limit is the broker's bookkeeping.
impl PartialEq for Reply {
    fn eq(&self, other: &Self) -> bool {
        (
            self.reply_code,
            &self.reply_text,
            self.class_id,
            self.method_id,
        ) == (
            other.reply_code,
            &other.reply_text,
            other.class_id,
            other.method_id,
        )
    }
}

impl Reply {
    /// The failed method's name as RabbitMQ's logs give it (`queue.declare`), or `none`.
    pub fn method_name(&self) -> &'static str {
        method_name(self.class_id, self.method_id)
    }

    fn new(reply_code: u16, detail: impl fmt::Display) -> Self {
        let mut reply_text = format!("{} - {}", code_name(reply_code), detail);
        // A reply text is a short string on the wire; RabbitMQ keeps 252 octets and marks the cut.
        if reply_text.len() > 255 {
            let mut cut = 252;
            while !reply_text.is_char_boundary(cut) {
                cut -= 1;
            }
            reply_text.truncate(cut);
            reply_text.push_str("...");
        }
        Self {
            reply_code,
            reply_text,
            class_id: 0,
            method_id: 0,
            limit: None,
        }
    }
}

macro_rules! scoped_error {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub Reply);

        impl $name {
            /// An error with this reply code and detail text (the code name is prefixed).
            pub fn new(reply_code: u16, detail: impl fmt::Display) -> Self {
                Self(Reply::new(reply_code, detail))
            }

            /// Records the class and method that failed.
            #[must_use]
            pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
                if self.0.class_id == 0 {
                    self.0.class_id = class_id;
                    self.0.method_id = method_id;
                }
                self
            }

            /// Marks the refusal as enforcing `limit`, to be logged and counted as such.
            #[must_use]
            pub fn limit(mut self, limit: Limit) -> Self {
                self.0.limit = Some(limit);
                self
            }

            /// The reply code.
            pub fn code(&self) -> u16 {
                self.0.reply_code
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{} ({}.{})",
                    self.0.reply_text, self.0.class_id, self.0.method_id
                )
            }
        }

        impl std::error::Error for $name {}
    };
}

scoped_error!(
    ChannelError,
    "A soft error: RabbitMQ closes only the channel with `channel.close`."
);
scoped_error!(
    ConnectionError,
    "A hard error: RabbitMQ closes the whole connection with `connection.close`."
);

impl ChannelError {
    /// 404 for a queue that does not exist.
    pub fn no_queue(name: &str, vhost: &str) -> Self {
        Self::new(
            code::NOT_FOUND,
            format_args!("no queue '{name}' in vhost '{vhost}'"),
        )
    }

    /// 404 for an exchange that does not exist.
    pub fn no_exchange(name: &str, vhost: &str) -> Self {
        Self::new(
            code::NOT_FOUND,
            format_args!("no exchange '{name}' in vhost '{vhost}'"),
        )
    }

    /// 406 with the given detail.
    pub fn precondition(detail: impl fmt::Display) -> Self {
        Self::new(code::PRECONDITION_FAILED, detail)
    }

    /// 406 for a redeclare whose property differs from the existing entity.
    pub fn inequivalent(
        arg: &str,
        kind: &str,
        name: &str,
        vhost: &str,
        received: impl fmt::Display,
        current: impl fmt::Display,
    ) -> Self {
        Self::precondition(format_args!(
            "inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': received {received} but current is {current}"
        ))
    }
}

impl ConnectionError {
    /// 505 for a frame that the state machine did not expect.
    pub fn unexpected_frame(detail: impl fmt::Display) -> Self {
        Self::new(code::UNEXPECTED_FRAME, detail)
    }

    /// 503 for a method that makes no sense in context.
    pub fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::new(code::COMMAND_INVALID, detail)
    }

    /// 540 for a feature RabbitMQ refuses.
    pub fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::new(code::NOT_IMPLEMENTED, detail)
    }

    /// 501 for a malformed frame.
    pub fn frame_error(detail: impl fmt::Display) -> Self {
        Self::new(code::FRAME_ERROR, detail)
    }
}

/// Either scope, for handlers that can fail both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmqpError {
    /// Closes the channel.
    Channel(ChannelError),
    /// Closes the connection.
    Connection(ConnectionError),
}

impl From<ChannelError> for AmqpError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<ConnectionError> for AmqpError {
    fn from(e: ConnectionError) -> Self {
        Self::Connection(e)
    }
}

impl AmqpError {
    /// Records the class and method that failed, whatever the scope.
    #[must_use]
    pub fn on(self, class_id: u16, method_id: u16) -> Self {
        match self {
            Self::Channel(e) => Self::Channel(e.on(class_id, method_id)),
            Self::Connection(e) => Self::Connection(e.on(class_id, method_id)),
        }
    }
}

/// A method's name from its class and method ids, for logs (`none` for 0 or an unknown pair).
pub fn method_name(class_id: u16, method_id: u16) -> &'static str {
    match (class_id, method_id) {
        (10, 10) => "connection.start",
        (10, 11) => "connection.start_ok",
        (10, 20) => "connection.secure",
        (10, 21) => "connection.secure_ok",
        (10, 30) => "connection.tune",
        (10, 31) => "connection.tune_ok",
        (10, 40) => "connection.open",
        (10, 41) => "connection.open_ok",
        (10, 50) => "connection.close",
        (10, 51) => "connection.close_ok",
        (10, 60) => "connection.blocked",
        (10, 61) => "connection.unblocked",
        (20, 10) => "channel.open",
        (20, 11) => "channel.open_ok",
        (20, 20) => "channel.flow",
        (20, 21) => "channel.flow_ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close_ok",
        (40, 10) => "exchange.declare",
        (40, 20) => "exchange.delete",
        (40, 30) => "exchange.bind",
        (40, 40) => "exchange.unbind",
        (50, 10) => "queue.declare",
        (50, 20) => "queue.bind",
        (50, 30) => "queue.purge",
        (50, 40) => "queue.delete",
        (50, 50) => "queue.unbind",
        (60, 10) => "basic.qos",
        (60, 20) => "basic.consume",
        (60, 30) => "basic.cancel",
        (60, 40) => "basic.publish",
        (60, 70) => "basic.get",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 100) => "basic.recover_async",
        (60, 110) => "basic.recover",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (90, 10) => "tx.select",
        (90, 20) => "tx.commit",
        (90, 30) => "tx.rollback",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_carry_the_code_name() {
        let e = ChannelError::no_queue("q", "/").on(50, 10);
        assert_eq!(e.0.reply_text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!((e.0.class_id, e.0.method_id), (50, 10));
    }

    #[test]
    fn long_texts_are_cut_to_a_short_string() {
        let e = ConnectionError::frame_error("é".repeat(300));
        assert!(e.0.reply_text.len() <= 255);
        assert!(e.0.reply_text.ends_with("..."));
        let e = ConnectionError::frame_error("x".repeat(300));
        assert_eq!(e.0.reply_text.len(), 255);
        assert_eq!(&e.0.reply_text[245..], "xxxxxxx...");
        let e = ConnectionError::frame_error("x".repeat(255 - "FRAME_ERROR - ".len()));
        assert!(
            !e.0.reply_text.ends_with("..."),
            "a text that fits is kept whole"
        );
    }
}
