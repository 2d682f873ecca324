//! Field tables: how deep they may nest, their values as RabbitMQ names them in error texts, and
//! the raw codec that reads and writes them in wire order, without amq-protocol's sorted map.

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
        let size = match layout(kind, ShortS::Int16) {
            Some(Layout::Long) => {
                let Some(value_end) = container_end(raw, pos, end) else {
                    return Ok(());
                };
                if matches!(kind, b'A' | b'F') {
                    if depth == MAX_DEPTH {
                        return Err(TooDeep);
                    }
                    open[depth] = (value_end, kind == b'F');
                    depth += 1;
                    4
                } else {
                    value_end - pos
                }
            }
            Some(Layout::Fixed(size)) => size,
            Some(Layout::Short) => match raw.get(pos) {
                Some(&len) => 1 + usize::from(len),
                None => return Ok(()),
            },
            None => return Ok(()),
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

/// What the type tag `'s'` means: peers disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortS {
    /// A signed 16-bit integer, as RabbitMQ and amq-protocol read it.
    Int16,
    /// A short string (length octet, then bytes), as the 0-9-1 spec and some clients write it.
    ShortString,
}

/// How a value's bytes follow its type tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// This many octets.
    Fixed(usize),
    /// A 32-bit length, then that many octets (long strings, byte arrays, arrays, tables).
    Long,
    /// An 8-bit length, then that many octets.
    Short,
}

/// The layout of a value tagged `tag`; `None` for a tag no parser knows (its size is unknown).
fn layout(tag: u8, s: ShortS) -> Option<Layout> {
    Some(match tag {
        b's' if s == ShortS::ShortString => Layout::Short,
        b'V' => Layout::Fixed(0),
        b't' | b'b' | b'B' => Layout::Fixed(1),
        b's' | b'u' | b'U' => Layout::Fixed(2),
        b'I' | b'i' | b'f' => Layout::Fixed(4),
        b'D' => Layout::Fixed(5),
        b'l' | b'L' | b'd' | b'T' => Layout::Fixed(8),
        b'S' | b'x' | b'A' | b'F' => Layout::Long,
        _ => return None,
    })
}

/// Bytes that do not hold a whole field table or value: truncated, or a type no parser knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// One field value as it lies on the wire, borrowed from the table that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawValue<'a> {
    /// The type tag, the length prefix if any, and the contents.
    tagged: &'a [u8],
    /// Where the contents start in `tagged`.
    at: usize,
    s: ShortS,
}

impl<'a> RawValue<'a> {
    /// Splits the value at the front of `b` (its tag first) off the rest.
    fn split(b: &'a [u8], s: ShortS) -> Result<(Self, &'a [u8]), Malformed> {
        let (&tag, rest) = b.split_first().ok_or(Malformed)?;
        let (at, len): (usize, usize) = match layout(tag, s).ok_or(Malformed)? {
            Layout::Fixed(n) => (1, n),
            Layout::Short => (2, usize::from(*rest.first().ok_or(Malformed)?)),
            Layout::Long => {
                let (len, _) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
                let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| Malformed)?;
                (5, len)
            }
        };
        let end = at.checked_add(len).ok_or(Malformed)?;
        let (tagged, rest) = b.split_at_checked(end).ok_or(Malformed)?;
        Ok((Self { tagged, at, s }, rest))
    }

    /// The type tag.
    pub fn tag(&self) -> u8 {
        self.tagged[0]
    }

    /// The value as written in a table or array: tag, length prefix and contents.
    pub fn tagged(&self) -> &'a [u8] {
        self.tagged
    }

    /// The contents, after the tag and any length prefix.
    pub fn contents(&self) -> &'a [u8] {
        &self.tagged[self.at..]
    }

    /// The contents of a long string, or of a short string where `'s'` means one.
    pub fn string(&self) -> Option<&'a [u8]> {
        let short = self.tag() == b's' && self.s == ShortS::ShortString;
        (self.tag() == b'S' || short).then(|| self.contents())
    }

    /// The entries of a table value.
    pub fn entries(&self) -> Option<Entries<'a>> {
        (self.tag() == b'F').then(|| entries(self.contents(), self.s))
    }

    /// The items of an array value.
    pub fn items(&self) -> Option<Items<'a>> {
        (self.tag() == b'A').then(|| Items {
            rest: self.contents(),
            s: self.s,
        })
    }
}

/// The value at the front of `b` (its tag first); what follows it is ignored.
pub fn value(b: &[u8], s: ShortS) -> Result<RawValue<'_>, Malformed> {
    RawValue::split(b, s).map(|(value, _)| value)
}

/// The entries of a field table (its bytes without the length prefix), in wire order.
pub fn entries(body: &[u8], s: ShortS) -> Entries<'_> {
    Entries { rest: body, s }
}

/// The entries of a field table as (key, value) in wire order; after a malformed entry, nothing.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
    s: ShortS,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a [u8], RawValue<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&key_len, after) = self.rest.split_first()?;
        let entry = after
            .split_at_checked(usize::from(key_len))
            .ok_or(Malformed)
            .and_then(|(key, value)| {
                RawValue::split(value, self.s).map(|(value, rest)| (key, value, rest))
            });
        Some(match entry {
            Ok((key, value, rest)) => {
                self.rest = rest;
                Ok((key, value))
            }
            Err(e) => {
                self.rest = &[];
                Err(e)
            }
        })
    }
}

/// The items of a field array in wire order; after a malformed item, nothing.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    rest: &'a [u8],
    s: ShortS,
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<RawValue<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        Some(match RawValue::split(self.rest, self.s) {
            Ok((value, rest)) => {
                self.rest = rest;
                Ok(value)
            }
            Err(e) => {
                self.rest = &[];
                Err(e)
            }
        })
    }
}

/// Appends a value with a 32-bit length prefix: `tag`, the length of `contents`, `contents`.
pub fn put_long(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    let len = u32::try_from(contents.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(contents);
}

/// Appends a field table, length prefix first, from (key, tagged value) entries in their order.
pub fn put_table<'e>(out: &mut Vec<u8>, entries: impl IntoIterator<Item = (&'e [u8], &'e [u8])>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, tagged) in entries {
        // Keys are short strings; one read from the wire always fits, and longer ones are cut.
        let key = &key[..key.len().min(255)];
        out.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(key);
        out.extend_from_slice(tagged);
    }
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The name of a value's type as RabbitMQ's error texts print it.
///
/// Short strings read as `longstr` because RabbitMQ decodes both string types the same.
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

    /// Every fixed-size type and its size, 's' as RabbitMQ's 16-bit integer.
    const SCALARS: &[(u8, usize)] = &[
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

    #[test]
    fn every_value_type_is_sized_as_amq_protocol_reads_it() {
        // One of each type, 's' as RabbitMQ's 16-bit integer, then a nesting past the limit:
        // a wrong size anywhere would end the walk early and miss it.
        let scalars = SCALARS;
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

    #[test]
    fn the_codec_sizes_every_type_and_keeps_wire_order() {
        // One of each type, each under a key naming it; 's' here is a 16-bit integer.
        let scalars = SCALARS;
        let mut body = Vec::new();
        for &(kind, size) in scalars {
            body.extend_from_slice(&[1, kind, kind]);
            body.extend(std::iter::repeat_n(7, size));
        }
        let inner = long(b"", &[1, b'k', b'S', 0, 0, 0, 1, b'v']);
        body.extend([&[1, b'F'][..], &long(b"F", &inner[4..])].concat());
        body.extend([&[1, b'A'][..], &long(b"A", &long(b"S", b"item"))].concat());
        body.extend([&[1, b'x'][..], &long(b"x", &[0, 1])].concat());
        let read: Vec<_> = entries(&body, ShortS::Int16)
            .collect::<Result<_, _>>()
            .expect("a well-formed table");
        assert_eq!(read.len(), scalars.len() + 3);
        for ((key, value), &(kind, size)) in read.iter().zip(scalars) {
            assert_eq!((*key, value.tag()), (&[kind][..], kind));
            assert_eq!(value.contents().len(), size);
        }
        let (_, table) = read[read.len() - 3];
        let nested: Vec<_> = table.entries().expect("a table").collect();
        assert_eq!(nested.len(), 1);
        assert_eq!(
            nested[0].map(|(k, v)| (k, v.string())),
            Ok((&b"k"[..], Some(&b"v"[..])))
        );
        let (_, array) = read[read.len() - 2];
        let items: Vec<_> = array.items().expect("an array").collect();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].map(|i| i.string()), Ok(Some(&b"item"[..])));
        assert_eq!(
            read[read.len() - 1].1.string(),
            None,
            "a byte array is no string"
        );
        // Written back entry by entry, the table is the same bytes, which amq-protocol reads.
        let mut out = Vec::new();
        put_table(&mut out, read.iter().map(|(k, v)| (*k, v.tagged())));
        assert_eq!(out, long(b"", &body));
        assert!(amq_protocol::types::parsing::parse_field_table(&out[..]).is_ok());
    }

    #[test]
    fn the_meaning_of_short_s_is_the_callers() {
        let body = [1, b'a', b's', 2, b'h', b'i'];
        let as_string: Vec<_> = entries(&body, ShortS::ShortString).collect();
        assert_eq!(as_string[0].map(|(_, v)| v.string()), Ok(Some(&b"hi"[..])));
        assert_eq!(as_string.len(), 1);
        // As a 16-bit integer it takes two octets, and the third starts an entry that cannot be.
        let as_int: Vec<_> = entries(&body, ShortS::Int16).collect();
        assert_eq!(
            as_int[0].map(|(_, v)| (v.string(), v.contents())),
            Ok((None, &[2, b'h'][..]))
        );
        assert_eq!(as_int[1], Err(Malformed));
        assert_eq!(as_int.len(), 2, "nothing after a malformed entry");
    }

    #[test]
    fn the_codec_never_reads_past_its_bytes() {
        let mut body = vec![1, b'a', b'S', 0, 0, 0, 3, b'a', b'b', b'c'];
        body.extend_from_slice(&[1, b'b', b'A', 0, 0, 0, 5, b'S', 0, 0, 0, 0]);
        for cut in 0..body.len() {
            let last = entries(&body[..cut], ShortS::Int16).last();
            let between_entries = cut == 0 || cut == 10;
            assert_eq!(
                matches!(last, Some(Err(Malformed))),
                !between_entries,
                "cut at {cut}"
            );
        }
        assert_eq!(value(b"?", ShortS::Int16), Err(Malformed));
        assert_eq!(
            value(&[b'S', 0xff, 0xff, 0xff, 0xff], ShortS::Int16),
            Err(Malformed)
        );
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
