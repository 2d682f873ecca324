//! Queue arguments read as RabbitMQ reads them: known ones typed and checked (406 with RabbitMQ's
//! text on a wrong type or value), unknown ones accepted and ignored.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::protocol::ChannelError;

/// What happens when a length limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (nack it under confirms).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// The queue implementation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// RabbitMQ's classic queue.
    #[default]
    Classic,
    /// A quorum queue, on one node: durable, fsync before confirm, delivery limits.
    Quorum,
    /// A stream: an append-only log that every consumer reads at its own offset.
    Stream,
}

/// The arguments of a queue that change its behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueArgs {
    /// `x-message-ttl` in milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires` in milliseconds.
    pub expires: Option<u64>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-delivery-limit` (quorum queues).
    pub delivery_limit: Option<u64>,
    /// `x-max-age` in milliseconds (streams).
    pub max_age_ms: Option<u64>,
    /// `x-stream-max-segment-size-bytes` (streams).
    pub segment_bytes: Option<u64>,
}

/// Reads an `x-max-age` as RabbitMQ does: a positive integer and one of its case-sensitive units
/// (`Y`, `M`, `D`, `h`, `m`, `s`), in milliseconds.
pub fn max_age_ms(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let seconds: u64 = match unit {
        'Y' => 365 * 86_400,
        'M' => 30 * 86_400,
        'D' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (n > 0).then(|| n.saturating_mul(seconds).saturating_mul(1000))
}

pub use crate::protocol::table::type_name;

/// The integer in a value of one of the integer types RabbitMQ accepts for numeric arguments.
pub fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// The text in a string value (long or short).
pub fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The longest TTL or expiry RabbitMQ accepts: ten years, in milliseconds.
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// RabbitMQ's largest supported `x-max-priority`.
pub const MAX_SUPPORTED_PRIORITY: i64 = 255;

/// The arguments RabbitMQ 3.10's classic queues take (`rabbit_classic_queue:capabilities`).
const CLASSIC_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// The arguments RabbitMQ 3.10's quorum queues take.
const QUORUM_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// The arguments RabbitMQ 3.10's streams take.
const STREAM_ARGS: &[&str] = &[
    "x-max-length-bytes",
    "x-queue-type",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// What a queue was declared with, beyond its arguments.
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    /// Queue name.
    pub name: &'a str,
    /// Vhost name.
    pub vhost: &'a str,
    /// Durable flag.
    pub durable: bool,
    /// Exclusive flag.
    pub exclusive: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
}

impl QueueArgs {
    /// Reads and checks a declaration's arguments.
    pub fn parse(args: &FieldTable, d: Declared<'_>) -> Result<Self, ChannelError> {
        let invalid = |key: &str, why: &dyn std::fmt::Display| {
            ChannelError::precondition(format_args!(
                "invalid arg '{key}' for queue '{}' in vhost '{}': {why}",
                d.name, d.vhost
            ))
        };
        let get = |key: &str| args.inner().get(key);
        let int = |key: &str| -> Result<Option<i64>, ChannelError> {
            match get(key) {
                None => Ok(None),
                Some(v) => match int_value(v) {
                    Some(n) => Ok(Some(n)),
                    None => Err(invalid(
                        key,
                        &format_args!("\"expected integer, got {}\"", type_name(v)),
                    )),
                },
            }
        };
        let non_neg = |key: &str| -> Result<Option<u64>, ChannelError> {
            match int(key)? {
                None => Ok(None),
                Some(n) => u64::try_from(n)
                    .map(Some)
                    .map_err(|_| invalid(key, &format_args!("{{value_negative,{n}}}"))),
            }
        };
        let mut out = Self::default();
        if let Some(v) = get("x-queue-type") {
            out.queue_type = match str_value(v).as_deref() {
                Some("classic") => QueueType::Classic,
                Some("quorum") => QueueType::Quorum,
                Some("stream") => QueueType::Stream,
                Some(other) => {
                    return Err(invalid(
                        "x-queue-type",
                        &format_args!("\"unsupported queue type '{other}'\""),
                    ));
                }
                None => {
                    return Err(invalid(
                        "x-queue-type",
                        &format_args!("{{unacceptable_type,{}}}", type_name(v)),
                    ));
                }
            };
        }
        if out.queue_type != QueueType::Classic {
            let property = if !d.durable {
                Some("non-durable")
            } else if d.exclusive {
                Some("exclusive-owner")
            } else if d.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(p) = property {
                return Err(ChannelError::precondition(format_args!(
                    "invalid property '{p}' for queue '{}' in vhost '{}'",
                    d.name, d.vhost
                )));
            }
        }
        // RabbitMQ 3.10 refuses an argument another queue type knows but this one does not;
        // arguments no type knows are ignored.
        let (supported, type_name_) = match out.queue_type {
            QueueType::Classic => (CLASSIC_ARGS, "rabbit_classic_queue"),
            QueueType::Quorum => (QUORUM_ARGS, "rabbit_quorum_queue"),
            QueueType::Stream => (STREAM_ARGS, "rabbit_stream_queue"),
        };
        if let Some(key) = args.inner().keys().map(|k| k.as_str()).find(|k| {
            !supported.contains(k)
                && [CLASSIC_ARGS, QUORUM_ARGS, STREAM_ARGS]
                    .iter()
                    .any(|known| known.contains(k))
        }) {
            return Err(ChannelError::precondition(format_args!(
                "invalid arg '{key}' for queue '{}' in vhost '{}' of queue type {type_name_}",
                d.name, d.vhost
            )));
        }
        if out.queue_type == QueueType::Quorum {
            // RabbitMQ 3.10 does not check it: a count never exceeds a non-integer, and always
            // exceeds a negative limit once the message has come back.
            out.delivery_limit = get("x-delivery-limit")
                .and_then(int_value)
                .map(|n| u64::try_from(n).unwrap_or(0));
            // Both strategies are accepted; at-least-once is kept as at-most-once, as RabbitMQ
            // itself does unless the queue also rejects publishes past its length limit.
            if let Some(v) = get("x-dead-letter-strategy") {
                match str_value(v).as_deref() {
                    Some("at-most-once" | "at-least-once") => {}
                    Some(_) => {
                        return Err(invalid("x-dead-letter-strategy", &"invalid_dlx_strategy"));
                    }
                    None => {
                        return Err(invalid(
                            "x-dead-letter-strategy",
                            &format_args!("{{unacceptable_type,{}}}", type_name(v)),
                        ));
                    }
                }
            }
        }
        // RabbitMQ's `check_expiry`: a timer longer than ten years is refused.
        let expiry = |key: &str, n: u64| {
            if n > MAX_EXPIRY_MS {
                Err(invalid(key, &format_args!("{{value_too_large,{n}}}")))
            } else {
                Ok(n)
            }
        };
        if let Some(n) = int("x-expires")? {
            if n == 0 {
                return Err(invalid("x-expires", &format_args!("{{value_zero,0}}")));
            }
            let n = u64::try_from(n)
                .map_err(|_| invalid("x-expires", &format_args!("{{value_negative,{n}}}")))?;
            out.expires = Some(expiry("x-expires", n)?);
        }
        out.message_ttl = match non_neg("x-message-ttl")? {
            Some(n) => Some(expiry("x-message-ttl", n)?),
            None => None,
        };
        if let Some(v) = get("x-max-age") {
            out.max_age_ms = match str_value(v) {
                Some(text) => Some(
                    max_age_ms(&text).ok_or_else(|| invalid("x-max-age", &"invalid_max_age"))?,
                ),
                None => {
                    return Err(invalid(
                        "x-max-age",
                        &format_args!("{{unacceptable_type,{}}}", type_name(v)),
                    ));
                }
            };
        }
        out.segment_bytes = non_neg("x-stream-max-segment-size-bytes")?;
        out.max_length = non_neg("x-max-length")?;
        out.max_length_bytes = non_neg("x-max-length-bytes")?;
        if let Some(p) = non_neg("x-max-priority")? {
            if p > 255 {
                return Err(invalid(
                    "x-max-priority",
                    &format_args!("{{max_value_exceeded,{p}}}"),
                ));
            }
            out.max_priority = u8::try_from(p).ok();
        }
        if let Some(v) = get("x-single-active-consumer") {
            match v {
                AMQPValue::Boolean(b) => out.single_active_consumer = *b,
                other => {
                    return Err(invalid(
                        "x-single-active-consumer",
                        &format_args!("{{unacceptable_type,{}}}", type_name(other)),
                    ));
                }
            }
        }
        if let Some(v) = get("x-overflow") {
            out.overflow = match str_value(v).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => return Err(invalid("x-overflow", &"invalid_overflow")),
            };
        }
        if let Some(v) = get("x-dead-letter-exchange") {
            match v {
                AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
                    out.dead_letter_exchange = str_value(v);
                }
                other => {
                    return Err(ChannelError::precondition(format_args!(
                        "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{}' in vhost '{}'",
                        type_name(other),
                        d.name,
                        d.vhost
                    )));
                }
            }
        }
        if let Some(v) = get("x-dead-letter-routing-key") {
            if out.dead_letter_exchange.is_none() {
                return Err(invalid(
                    "x-dead-letter-routing-key",
                    &"routing_key_but_no_dlx_defined",
                ));
            }
            match str_value(v) {
                Some(s) => out.dead_letter_routing_key = Some(s),
                None => {
                    return Err(invalid(
                        "x-dead-letter-routing-key",
                        &format_args!("{{unacceptable_type,{}}}", type_name(v)),
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Declared<'static> {
        Declared {
            name: "q",
            vhost: "/",
            durable: true,
            exclusive: false,
            auto_delete: false,
        }
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn err(pairs: &[(&str, AMQPValue)], d: Declared<'_>) -> String {
        QueueArgs::parse(&table(pairs), d)
            .err()
            .map(|e| e.0.reply_text)
            .unwrap_or_default()
    }

    #[test]
    fn wrong_values_get_rabbitmq_texts() {
        let prefix = "PRECONDITION_FAILED - invalid arg";
        assert_eq!(
            err(&[("x-max-length", AMQPValue::LongInt(-1))], declared()),
            format!("{prefix} 'x-max-length' for queue 'q' in vhost '/': {{value_negative,-1}}")
        );
        assert_eq!(
            err(
                &[("x-max-length", AMQPValue::LongString("x".into()))],
                declared()
            ),
            format!(
                "{prefix} 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\""
            )
        );
        assert_eq!(
            err(&[("x-expires", AMQPValue::LongInt(0))], declared()),
            format!("{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}")
        );
        assert_eq!(
            err(
                &[("x-message-ttl", AMQPValue::LongLongInt(315_360_000_001))],
                declared()
            ),
            format!(
                "{prefix} 'x-message-ttl' for queue 'q' in vhost '/': {{value_too_large,315360000001}}"
            )
        );
        assert_eq!(
            err(
                &[("x-expires", AMQPValue::LongLongInt(315_360_000_001))],
                declared()
            ),
            format!(
                "{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_too_large,315360000001}}"
            )
        );
        assert_eq!(
            err(&[("x-max-priority", AMQPValue::LongInt(300))], declared()),
            format!(
                "{prefix} 'x-max-priority' for queue 'q' in vhost '/': {{max_value_exceeded,300}}"
            )
        );
        assert_eq!(
            err(
                &[("x-single-active-consumer", AMQPValue::LongInt(1))],
                declared()
            ),
            format!(
                "{prefix} 'x-single-active-consumer' for queue 'q' in vhost '/': {{unacceptable_type,signedint}}"
            )
        );
        assert_eq!(
            err(
                &[("x-overflow", AMQPValue::LongString("bogus".into()))],
                declared()
            ),
            format!("{prefix} 'x-overflow' for queue 'q' in vhost '/': invalid_overflow")
        );
        assert_eq!(
            err(
                &[(
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString("k".into())
                )],
                declared()
            ),
            format!(
                "{prefix} 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"
            )
        );
    }

    #[test]
    fn quorum_queues_refuse_what_rabbitmq_refuses() {
        let quorum = [("x-queue-type", AMQPValue::LongString("quorum".into()))];
        let mut d = declared();
        d.durable = false;
        assert_eq!(
            err(&quorum, d),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q' in vhost '/'"
        );
        let mut d = declared();
        d.exclusive = true;
        assert!(err(&quorum, d).contains("'exclusive-owner'"));
        let ok = QueueArgs::parse(
            &table(&[
                ("x-queue-type", AMQPValue::LongString("quorum".into())),
                ("x-delivery-limit", AMQPValue::LongInt(3)),
            ]),
            declared(),
        );
        assert_eq!(ok.map(|a| a.delivery_limit), Ok(Some(3)));
        assert!(
            err(&[("x-delivery-limit", AMQPValue::LongInt(3))], declared())
                .contains("of queue type rabbit_classic_queue")
        );
        assert_eq!(
            err(
                &[
                    ("x-queue-type", AMQPValue::LongString("quorum".into())),
                    ("x-max-priority", AMQPValue::LongInt(5)),
                ],
                declared()
            ),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        );
        assert_eq!(
            err(
                &[
                    ("x-queue-type", AMQPValue::LongString("quorum".into())),
                    (
                        "x-dead-letter-strategy",
                        AMQPValue::LongString("bogus".into())
                    ),
                ],
                declared()
            ),
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue 'q' in vhost '/': invalid_dlx_strategy"
        );
        let lenient = QueueArgs::parse(
            &table(&[
                ("x-queue-type", AMQPValue::LongString("quorum".into())),
                ("x-delivery-limit", AMQPValue::LongInt(-1)),
                (
                    "x-dead-letter-strategy",
                    AMQPValue::LongString("at-least-once".into()),
                ),
                ("x-ha-policy", AMQPValue::LongString("all".into())),
            ]),
            declared(),
        );
        assert_eq!(lenient.map(|a| a.delivery_limit), Ok(Some(0)));
    }

    #[test]
    fn unknown_arguments_are_ignored_and_known_ones_read() {
        let a = QueueArgs::parse(
            &table(&[
                ("x-queue-mode", AMQPValue::LongString("lazy".into())),
                ("x-message-ttl", AMQPValue::LongLongInt(1500)),
                ("x-overflow", AMQPValue::LongString("reject-publish".into())),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString("dlx".into()),
                ),
            ]),
            declared(),
        )
        .expect("valid");
        assert_eq!(a.message_ttl, Some(1500));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
    }
}
