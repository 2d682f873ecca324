//! Field tables: how deep they may nest, and their values as RabbitMQ names them in error texts.

use std::fmt;

use amq_protocol::types::AMQPValue;

/// The deepest nesting of tables and arrays the broker accepts, the outermost table counting as 1.
///
/// Everything that reads a table after the wire (amq-protocol's parser, `Clone`, `Drop`, `Debug`,
/// equality, the encoder) recurses once per level; RabbitMQ's Erlang processes grow their stacks
/// and take any depth, but a tokio worker has 2 MiB. The unit tests run every one of those
/// consumers at this depth on half of that stack.
pub const MAX_DEPTH: usize = 64;

/// A field table that nests deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

impl fmt::Display for TooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field table nested deeper than {MAX_DEPTH} levels")
    }
}

/// Checks, without recursing, that the field table at the start of `raw` (length prefix first)
/// nests no deeper than [`MAX_DEPTH`].
///
/// Values are sized as amq-protocol reads them ('s' is a 16-bit integer, as in RabbitMQ). The walk
/// stops with `Ok` at the first octet no parser can read past (an unknown type, a length running
/// out of its container): every parser fails there, before reaching anything nested after it.
pub fn check_depth(raw: &[u8]) -> Result<(), TooDeep> {
    // The end offset of each open container, and whether it is a table (its entries have keys).
    let mut open = [(0usize, false); MAX_DEPTH];
    let Some(end) = container_end(raw, 0, raw.len()) else {
        return Ok(());
    };
    open[0] = (end, true);
    let mut depth = 1;
    let mut pos = 4;
    while depth > 0 {
        let (end, is_table) = open[depth - 1];
        if pos == end {
            depth -= 1;
            continue;
        }
        if is_table {
            match raw.get(pos) {
                Some(&len) if pos + 1 + usize::from(len) < end => pos += 1 + usize::from(len),
                _ => return Ok(()),
            }
        }
        let kind = raw[pos];
        pos += 1;
        let size = match kind {
            b'A' | b'F' => {
                let Some(inner_end) = container_end(raw, pos, end) else {
                    return Ok(());
                };
                if depth == MAX_DEPTH {
                    return Err(TooDeep);
                }
                open[depth] = (inner_end, kind == b'F');
                depth += 1;
                4
            }
            b'S' | b'x' => match container_end(raw, pos, end) {
                Some(value_end) => value_end - pos,
                None => return Ok(()),
            },
            b't' | b'b' | b'B' => 1,
            b's' | b'u' | b'U' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            _ => return Ok(()),
        };
        if pos + size > end {
            return Ok(());
        }
        pos += size;
    }
    Ok(())
}

/// Where a long-length-prefixed value starting at `pos` ends, if it ends by `limit`.
fn container_end(raw: &[u8], pos: usize, limit: usize) -> Option<usize> {
    let len = usize::try_from(super::frame::be_u32(raw, pos)?).ok()?;
    let end = pos.checked_add(4)?.checked_add(len)?;
    (end <= limit).then_some(end)
}

/// print it. Short strings read as `longstr` because RabbitMQ decodes both string types the same.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::{AMQPClass, parse_class};
    use amq_protocol::types::generation::gen_field_table;

    use super::*;
    use crate::broker::headers::{headers_match, x_match_is_valid};

    fn long(tag: &[u8], body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("a test table");
        [tag, &len.to_be_bytes(), body].concat()
    }

    /// A table `depth` containers deep (itself included): tables under key `k`, or one key
    /// holding arrays of arrays; `leaf` is the innermost container's contents.
    fn nested(depth: usize, tables: bool, leaf: &[u8]) -> Vec<u8> {
        if tables {
            let mut t = long(b"", leaf);
            for _ in 1..depth {
                t = long(b"", &[&[1, b'k', b'F'][..], &t].concat());
            }
            t
        } else {
            let mut a = long(b"A", leaf);
            for _ in 2..depth {
                a = long(b"A", &a);
            }
            long(b"", &[&[1, b'k'][..], &a].concat())
        }
    }

    #[test]
    fn the_limit_is_inclusive_for_tables_and_arrays() {
        for tables in [true, false] {
            assert_eq!(check_depth(&nested(MAX_DEPTH, tables, b"")), Ok(()));
            assert_eq!(
                check_depth(&nested(MAX_DEPTH + 1, tables, b"")),
                Err(TooDeep)
            );
            assert_eq!(check_depth(&nested(30_000, tables, b"")), Err(TooDeep));
        }
        assert_eq!(check_depth(&long(b"", b"")), Ok(()));
    }

    #[test]
    fn every_value_type_is_sized_as_amq_protocol_reads_it() {
        // One of each type, 's' as RabbitMQ's 16-bit integer, then a nesting past the limit:
        // a wrong size anywhere would end the walk early and miss it.
        let scalars: &[(u8, usize)] = &[
            (b't', 1),
            (b'b', 1),
            (b'B', 1),
            (b's', 2),
            (b'u', 2),
            (b'U', 2),
            (b'I', 4),
            (b'i', 4),
            (b'f', 4),
            (b'D', 5),
            (b'l', 8),
            (b'L', 8),
            (b'd', 8),
            (b'T', 8),
            (b'V', 0),
        ];
        let mut entries = Vec::new();
        for &(kind, size) in scalars {
            entries.extend_from_slice(&[1, kind, kind]);
            entries.extend(std::iter::repeat_n(b'F', size));
        }
        entries.extend([&[1, b'S'][..], &long(b"S", b"FFFF")].concat());
        entries.extend([&[1, b'x'][..], &long(b"x", b"AAAA")].concat());
        let deep = nested(MAX_DEPTH, true, b"");
        let raw = long(b"", &[&entries[..], &[1, b'z', b'F'], &deep].concat());
        assert_eq!(check_depth(&raw), Err(TooDeep));
        let shallow = long(b"", &[&entries[..], &[1, b'z', b'V']].concat());
        assert!(
            amq_protocol::types::parsing::parse_field_table(&shallow[..]).is_ok(),
            "the same sizes as amq-protocol"
        );
        assert_eq!(check_depth(&shallow), Ok(()));
    }

    #[test]
    fn the_walk_ends_where_every_parser_fails() {
        let deep = nested(MAX_DEPTH + 1, true, b"");
        // An unknown type before the deep part: nothing reads past it.
        let unknown = long(b"", &[&[1, b'a', b'?', 1, b'z', b'F'][..], &deep].concat());
        assert_eq!(check_depth(&unknown), Ok(()));
        // A deep part before the unknown type is still refused.
        let after = long(
            b"",
            &[&[1, b'z', b'F'][..], &deep, &[1, b'a', b'?']].concat(),
        );
        assert_eq!(check_depth(&after), Err(TooDeep));
        // Truncations and lengths past their container never panic, whatever they cut.
        let full = nested(MAX_DEPTH + 1, false, &[b'S', 0, 0, 0, 9]);
        for cut in 0..full.len() {
            let _ = check_depth(&full[..cut]);
        }
    }

    /// queue.declare with `args`, as a method payload.
    fn queue_declare(args: &[u8]) -> Vec<u8> {
        [&[0, 50, 0, 10, 0, 0, 1, b'q', 0][..], args].concat()
    }

    #[test]
    fn every_recursive_reader_takes_the_limit_on_half_a_worker_stack() {
        // tokio's workers have 2 MiB; amq-protocol's parser alone needs about 10 KiB a level in
        // debug builds. Everything that recurses over a table runs here at the limit on 1 MiB.
        let run = || {
            for tables in [true, false] {
                let raw = queue_declare(&nested(MAX_DEPTH, tables, b""));
                let Ok((_, AMQPClass::Queue(queue))) = parse_class(&raw[..]) else {
                    panic!("queue.declare at the limit parses");
                };
                let amq_protocol::protocol::queue::AMQPMethod::Declare(declare) = queue else {
                    panic!("a queue.declare");
                };
                let args = declare.arguments;
                let copy = args.clone();
                assert!(copy == args);
                assert!(!format!("{args:?}").is_empty());
                let encoded = cookie_factory::r#gen(gen_field_table(&args), Vec::new())
                    .map(|(v, _)| v)
                    .unwrap_or_default();
                assert_eq!(encoded, raw[9..]);
                let mut binding = args.clone();
                binding.insert("x-match".into(), AMQPValue::FieldTable(copy.clone()));
                assert!(x_match_is_valid(&binding).is_err());
                binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
                assert!(headers_match(&binding, Some(&copy)));
                drop((args, copy, binding));
            }
        };
        let ran = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(run)
            .map(|t| t.join());
        assert!(matches!(ran, Ok(Ok(()))));
    }
}
