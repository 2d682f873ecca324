//! Redeclare equivalence: which properties and arguments RabbitMQ compares when an exchange or
//! queue is declared again, and its `406 PRECONDITION_FAILED` texts when they differ.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::exchange::Exchange;
use super::{ExchangeDeclare, QueueDeclare};
use crate::protocol::ChannelError;
use crate::protocol::erlang::{self, Print};
use crate::protocol::table::type_name;
use crate::queue::Queue;

/// Checks a redeclared exchange's type, flags and arguments against `x`, the one declared.
pub(super) fn check_exchange(
    x: &Exchange,
    d: &ExchangeDeclare,
    vhost: &str,
) -> Result<(), ChannelError> {
    let ex = |arg: &str, r: &str, c: &str| {
        ChannelError::inequivalent(arg, "exchange", &d.name, vhost, r, c)
    };
    if x.type_name() != d.kind {
        return Err(ex(
            "type",
            &format!("'{}'", d.kind),
            &format!("'{}'", x.type_name()),
        ));
    }
    if x.durable != d.durable {
        return Err(ex("durable", bool_text(d.durable), bool_text(x.durable)));
    }
    if x.auto_delete != d.auto_delete {
        return Err(ex(
            "auto_delete",
            bool_text(d.auto_delete),
            bool_text(x.auto_delete),
        ));
    }
    if x.internal != d.internal {
        return Err(ex("internal", bool_text(d.internal), bool_text(x.internal)));
    }
    check_arguments(
        &EXCHANGE_EQUIVALENCE_ARGS,
        "exchange",
        &d.name,
        vhost,
        &x.arguments,
        &d.arguments,
    )
}

/// Checks a redeclared queue's flags and arguments against `q`, the one declared (exclusivity,
/// which RabbitMQ checks first, is the caller's).
pub(super) fn check_queue(q: &Queue, d: &QueueDeclare, vhost: &str) -> Result<(), ChannelError> {
    let ex = |arg: &str, r: bool, c: bool| {
        ChannelError::inequivalent(arg, "queue", &d.name, vhost, bool_text(r), bool_text(c))
    };
    if q.options.durable != d.durable {
        return Err(ex("durable", d.durable, q.options.durable));
    }
    if q.options.auto_delete != d.auto_delete {
        return Err(ex("auto_delete", d.auto_delete, q.options.auto_delete));
    }
    check_arguments(
        &QUEUE_EQUIVALENCE_ARGS,
        "queue",
        &d.name,
        vhost,
        &q.options.arguments,
        &d.arguments,
    )
}

fn bool_text(b: bool) -> &'static str {
    if b { "'true'" } else { "'false'" }
}

/// The arguments RabbitMQ compares when a classic queue is redeclared; others may differ.
const QUEUE_EQUIVALENCE_ARGS: [&str; 14] = [
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
    "x-queue-leader-locator",
];

/// The only argument RabbitMQ compares when an exchange is redeclared.
const EXCHANGE_EQUIVALENCE_ARGS: [&str; 1] = ["alternate-exchange"];

/// RabbitMQ's `type_class`: integers of any width compare by value, as do both float widths.
fn comparable(v: &AMQPValue) -> (&'static str, Option<i128>, Option<f64>) {
    match v {
        AMQPValue::ShortShortInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::ShortShortUInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::ShortInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::ShortUInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::LongInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::LongUInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::LongLongInt(n) => ("int", Some((*n).into()), None),
        AMQPValue::Float(f) => ("float", None, Some((*f).into())),
        AMQPValue::Double(f) => ("float", None, Some(*f)),
        other => (type_name(other), None, None),
    }
}

fn equivalent(current: &AMQPValue, received: &AMQPValue) -> bool {
    match (comparable(current), comparable(received)) {
        ((c, Some(a), _), (r, Some(b), _)) => c == r && a == b,
        ((c, _, Some(a)), (r, _, Some(b))) => c == r && a == b,
        _ => {
            let bytes = |v: &AMQPValue| match v {
                AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
                AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
                _ => None,
            };
            match (bytes(current), bytes(received)) {
                (Some(a), Some(b)) => a == b,
                _ => current == received,
            }
        }
    }
}

/// Compares the arguments RabbitMQ compares (`keys`), with its texts: raw values when both
/// sides have one, typed values against `none` when one side lacks it.
fn check_arguments(
    keys: &[&str],
    kind: &str,
    name: &str,
    vhost: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), ChannelError> {
    for &key in keys {
        let (c, r) = (current.inner().get(key), received.inner().get(key));
        let (received_text, current_text) = match (c, r) {
            (None, None) => continue,
            (Some(c), Some(r)) if equivalent(c, r) => continue,
            (Some(c), Some(r)) => (
                format!("'{}'", erlang::value(r, Print::Text)),
                format!("'{}'", erlang::value(c, Print::Text)),
            ),
            // A classic queue declared without x-queue-type is one declared with 'classic'.
            (None, Some(AMQPValue::LongString(s))) | (Some(AMQPValue::LongString(s)), None)
                if key == "x-queue-type" && s.as_bytes() == b"classic" =>
            {
                continue;
            }
            (c, r) => (typed(r), typed(c)),
        };
        return Err(ChannelError::inequivalent(
            key,
            kind,
            name,
            vhost,
            received_text,
            current_text,
        ));
    }
    Ok(())
}

fn typed(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            erlang::value(v, Print::Text),
            type_name(v)
        ),
    }
}
