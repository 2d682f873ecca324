//! Method frame decoding: the hot methods by hand (no allocation), the rest through amq-protocol.

use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::Bytes;

use super::erlang::{Binary, Print};
use super::error::ConnectionError;
use super::frame::{be_u16, be_u32, be_u64, short_str};
use super::table::{self, TooDeep};

/// Class id of `basic`.
pub const CLASS_BASIC: u16 = 60;
/// Method id of `basic.publish`.
pub const BASIC_PUBLISH: u16 = 40;
/// Method id of `basic.ack`.
pub const BASIC_ACK: u16 = 80;
/// Method id of `basic.qos`.
pub const BASIC_QOS: u16 = 10;

/// A decoded method.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `basic.publish`, with names sliced from the frame.
    Publish {
        /// Exchange name bytes.
        exchange: Bytes,
        /// Routing key bytes (any octets, as RabbitMQ allows).
        routing_key: Bytes,
        /// Return the message if it cannot be routed.
        mandatory: bool,
        /// Refused by RabbitMQ with 540.
        immediate: bool,
    },
    /// `basic.ack` from a consumer.
    Ack {
        /// Delivery tag.
        delivery_tag: u64,
        /// Everything up to and including the tag.
        multiple: bool,
    },
    /// `basic.qos`, decoded by hand because amq-protocol drops prefetch-size.
    Qos {
        /// Refused by RabbitMQ with 540 unless 0.
        prefetch_size: u32,
        /// Unacked deliveries allowed.
        prefetch_count: u16,
        /// Per channel rather than per consumer.
        global: bool,
    },
    /// Any other method.
    Other(AMQPClass),
}

/// A decoded method with the ids it came with.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Class id.
    pub class_id: u16,
    /// Method id.
    pub method_id: u16,
    /// The method.
    pub method: Method,
}

/// 501 as RabbitMQ words it: the method's argument octets, after the class and method ids.
fn syntax(class_id: u16, method_id: u16, payload: &[u8]) -> ConnectionError {
    // The reply text keeps 252 octets, which no more than 64 printed octets can fill.
    let args = payload.get(4..).unwrap_or_default();
    let shown = &args[..args.len().min(64)];
    ConnectionError::new(
        super::error::code::FRAME_ERROR,
        format_args!("cannot decode {}", Binary(shown, Print::Raw)),
    )
    .on(class_id, method_id)
}

/// 501 for a method whose field table nests too deep to decode safely.
fn too_deep(class_id: u16, method_id: u16, e: TooDeep) -> ConnectionError {
    ConnectionError::frame_error(format_args!("cannot decode arguments: {e}"))
        .on(class_id, method_id)
        .limit(super::Limit::TableDepth)
}

/// A field ahead of a method's field table.
#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortStr,
}

/// Where the field table of a method that carries one starts in its payload; `None` for other
/// methods, or when the fields before it are truncated (the parser refuses those anyway).
fn table_at(class_id: u16, method_id: u16, payload: &[u8]) -> Option<usize> {
    use Field::{Octet, Short, ShortStr};
    let before: &[Field] = match (class_id, method_id) {
        // connection.start: version-major, version-minor, then server-properties.
        (10, 10) => &[Octet, Octet],
        // connection.start-ok: client-properties come first.
        (10, 11) => &[],
        // exchange.declare: reserved, exchange, type, bits.
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],
        // exchange.bind and unbind: reserved, destination, source, routing-key, no-wait.
        (40, 30 | 40) => &[Short, ShortStr, ShortStr, ShortStr, Octet],
        // queue.declare: reserved, queue, bits.
        (50, 10) => &[Short, ShortStr, Octet],
        // queue.bind: reserved, queue, exchange, routing-key, no-wait.
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],
        // queue.unbind: reserved, queue, exchange, routing-key (no bits).
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],
        // basic.consume: reserved, queue, consumer-tag, bits.
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],
        _ => return None,
    };
    before.iter().try_fold(4, |pos, f| match f {
        Field::Octet => Some(pos + 1),
        Field::Short => Some(pos + 2),
        Field::ShortStr => short_str(payload, pos).map(|(_, next)| next),
    })
}

/// Decodes one method frame's payload.
pub fn decode(payload: &Bytes) -> Result<Decoded, ConnectionError> {
    let (Some(class_id), Some(method_id)) = (be_u16(payload, 0), be_u16(payload, 2)) else {
        return Err(syntax(0, 0, payload));
    };
    let bad = || syntax(class_id, method_id, payload);
    let method = match (class_id, method_id) {
        (CLASS_BASIC, BASIC_PUBLISH) => {
            // reserved-1 (u16), exchange, routing-key, bits
            let (ex, pos) = short_str(payload, 6).ok_or_else(bad)?;
            let ex_range = pos - ex.len()..pos;
            let (rk, pos) = short_str(payload, pos).ok_or_else(bad)?;
            let rk_range = pos - rk.len()..pos;
            let bits = *payload.get(pos).ok_or_else(bad)?;
            Method::Publish {
                exchange: payload.slice(ex_range),
                routing_key: payload.slice(rk_range),
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            }
        }
        (CLASS_BASIC, BASIC_ACK) => {
            let delivery_tag = be_u64(payload, 4).ok_or_else(bad)?;
            let bits = *payload.get(12).ok_or_else(bad)?;
            Method::Ack {
                delivery_tag,
                multiple: bits & 1 != 0,
            }
        }
        (CLASS_BASIC, BASIC_QOS) => Method::Qos {
            prefetch_size: be_u32(payload, 4).ok_or_else(bad)?,
            prefetch_count: be_u16(payload, 8).ok_or_else(bad)?,
            global: payload.get(10).ok_or_else(bad)? & 1 != 0,
        },
        _ => {
            // amq-protocol's parser recurses once per level of nesting: refuse before it runs.
            if let Some(at) = table_at(class_id, method_id, payload) {
                table::check_depth(payload.get(at..).unwrap_or_default())
                    .map_err(|e| too_deep(class_id, method_id, e))?;
            }
            match parse_class(&payload[..]) {
                Ok((_, class)) => Method::Other(class),
                Err(_) => {
                    return Err(if known_method(class_id, method_id) {
                        bad()
                    } else {
                        ConnectionError::new(
                            super::error::code::COMMAND_INVALID,
                            format_args!("unknown method {class_id}.{method_id}"),
                        )
                        .on(class_id, method_id)
                    });
                }
            }
        }
    };
    Ok(Decoded {
        class_id,
        method_id,
        method,
    })
}

fn known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_publish_without_copying_names() {
        let mut p = vec![0, 60, 0, 40, 0, 0, 3];
        p.extend_from_slice(b"amq");
        p.push(2);
        p.extend_from_slice(&[0xff, 0xfe]);
        p.push(1);
        let d = decode(&Bytes::from(p));
        let Ok(Decoded {
            method:
                Method::Publish {
                    exchange,
                    routing_key,
                    mandatory,
                    immediate,
                },
            ..
        }) = d
        else {
            panic!("not a publish: {d:?}");
        };
        assert_eq!(&exchange[..], b"amq");
        assert_eq!(&routing_key[..], &[0xff, 0xfe]);
        assert!(mandatory && !immediate);
    }

    #[test]
    fn truncated_methods_are_frame_errors() {
        let e = decode(&Bytes::from_static(&[0, 60, 0, 40, 0])).err();
        assert_eq!(e.map(|e| e.code()), Some(501));
        let e = decode(&Bytes::from_static(&[0, 50, 0, 10, 0])).err();
        assert_eq!(
            e.map(|e| (e.0.reply_text, e.0.class_id, e.0.method_id)),
            Some(("FRAME_ERROR - cannot decode <<0>>".to_string(), 50, 10))
        );
        let e = decode(&Bytes::from_static(&[0, 99, 0, 1])).err();
        assert_eq!(e.map(|e| e.code()), Some(503));
    }

    /// A table nested `depth` containers deep, itself included.
    fn nested(depth: usize) -> Vec<u8> {
        let mut t = vec![0, 0, 0, 0];
        for _ in 1..depth {
            let inner = [&[1, b'k', b'F'][..], &t].concat();
            let len = u32::try_from(inner.len()).unwrap_or(u32::MAX);
            t = [&len.to_be_bytes()[..], &inner].concat();
        }
        t
    }

    #[test]
    fn every_method_with_a_table_is_checked_before_it_is_parsed() {
        let s = |v: &str| [&[u8::try_from(v.len()).unwrap_or(0)][..], v.as_bytes()].concat();
        let before: [(u16, u16, Vec<u8>, Vec<u8>); 9] = [
            (
                10,
                10,
                vec![0, 9],
                [vec![0, 0, 0, 0], vec![0, 0, 0, 0]].concat(),
            ),
            (
                10,
                11,
                vec![],
                [s("PLAIN"), vec![0, 0, 0, 0], s("en_US")].concat(),
            ),
            (
                40,
                10,
                [vec![0, 0], s("x"), s("headers"), vec![0]].concat(),
                vec![],
            ),
            (
                40,
                30,
                [vec![0, 0], s("d"), s("s"), s("rk"), vec![0]].concat(),
                vec![],
            ),
            (
                40,
                40,
                [vec![0, 0], s("d"), s("s"), s("rk"), vec![0]].concat(),
                vec![],
            ),
            (50, 10, [vec![0, 0], s("q"), vec![0]].concat(), vec![]),
            (
                50,
                20,
                [vec![0, 0], s("q"), s("x"), s("rk"), vec![0]].concat(),
                vec![],
            ),
            (
                50,
                50,
                [vec![0, 0], s("q"), s("x"), s("rk")].concat(),
                vec![],
            ),
            (
                60,
                20,
                [vec![0, 0], s("q"), s("tag"), vec![0]].concat(),
                vec![],
            ),
        ];
        for (class_id, method_id, head, tail) in before {
            let payload = |depth| {
                let ids = [class_id.to_be_bytes(), method_id.to_be_bytes()].concat();
                Bytes::from([ids, head.clone(), nested(depth), tail.clone()].concat())
            };
            let at_limit = decode(&payload(table::MAX_DEPTH));
            assert!(
                matches!(
                    at_limit,
                    Ok(Decoded {
                        method: Method::Other(_),
                        ..
                    })
                ),
                "{class_id}.{method_id} at the limit: {at_limit:?}"
            );
            let e = decode(&payload(table::MAX_DEPTH + 1)).err();
            assert_eq!(
                e.map(|e| (e.0.reply_code, e.0.reply_text, e.0.class_id, e.0.method_id)),
                Some((
                    501,
                    "FRAME_ERROR - cannot decode arguments: field table nested deeper than 64 \
                     levels"
                        .to_string(),
                    class_id,
                    method_id
                )),
            );
        }
    }
}
