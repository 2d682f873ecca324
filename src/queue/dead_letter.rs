//! Dead-lettering: the message RabbitMQ 3.10 republishes to a queue's dead-letter exchange
//! (`rabbit_dead_letter:make_msg`), its `x-death` history, cycle detection, and the move.
//!
//! Headers are edited as raw field tables kept in wire order: RabbitMQ writes the first death's
//! entry unsorted and keeps other entries and user headers as they were, which amq-protocol's
//! sorted `FieldTable` cannot reproduce. Every other property keeps its bytes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tracing::debug;

use super::log::{DeadLetterMove, SharedRecord};
use super::{Enqueue, Queue, QueuedMessage};
use crate::protocol::table::{self, Entries, RawValue, ShortS};
use crate::protocol::{Message, PropertiesInfo};

/// Why a message was dead-lettered, as `x-death` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `basic.reject` or `basic.nack` with requeue=false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// A length limit pushed it out (or kept it out).
    Maxlen,
    /// A quorum queue's `x-delivery-limit` was exceeded.
    DeliveryLimit,
}

impl Reason {
    /// Every reason, in the order [`DeadLettered::counts`] gives them.
    pub const ALL: [Reason; 4] = [
        Reason::Rejected,
        Reason::Expired,
        Reason::Maxlen,
        Reason::DeliveryLimit,
    ];

    /// The reason's name in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Maxlen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Messages a queue dead-lettered (through its dead-letter exchange) or would have, had it had
/// one (dropped instead), by reason: RabbitMQ's `at_most_once` and `disabled` strategies.
#[derive(Debug, Default)]
pub struct DeadLettered {
    sent: [AtomicU64; 4],
    dropped: [AtomicU64; 4],
}

impl DeadLettered {
    /// Counts one message sent to the dead-letter exchange (`sent`) or dropped for want of one.
    pub(super) fn count(&self, reason: Reason, sent: bool) {
        let by = if sent { &self.sent } else { &self.dropped };
        by[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many were sent, then how many dropped, by reason in [`Reason::ALL`] order.
    pub fn counts(&self) -> ([u64; 4], [u64; 4]) {
        let read = |a: &[AtomicU64; 4]| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
        (read(&self.sent), read(&self.dropped))
    }
}

/// A message on its way out of `queue` to its dead-letter exchange.
#[derive(Debug)]
pub(super) struct DeadLetter {
    pub queue: Arc<Queue>,
    pub message: QueuedMessage,
    pub reason: Reason,
}

/// Dead-letters `work` and whatever that dead-letters in turn (a full target queue can push
/// out its own head), in order and without recursion.
pub(super) fn process(work: Vec<DeadLetter>) {
    if work.is_empty() {
        return;
    }
    let mut work = VecDeque::from(work);
    let mut targets = Vec::new();
    let mut more = Vec::new();
    while let Some(d) = work.pop_front() {
        d.queue
            .dead_letter_one(d.message, d.reason, &mut targets, &mut more);
        work.extend(more.drain(..));
    }
}

impl Queue {
    /// Republishes one dead letter of this queue through its dead-letter exchange, or drops it
    /// when there is none (or no such exchange). A stored message leaves this queue and joins
    /// the durable queues it reaches in one store batch; sequence numbers are reserved before
    /// that batch is sent and the message is queued after, so no ack can overtake it.
    pub(super) fn dead_letter_one(
        self: &Arc<Self>,
        m: QueuedMessage,
        reason: Reason,
        targets: &mut Vec<Arc<Queue>>,
        dead: &mut Vec<DeadLetter>,
    ) {
        // A policy may change them at any time: read them once, as they are now.
        let (dlx, dlrk) = {
            let st = self.state.lock();
            (
                st.args.dead_letter_exchange.clone(),
                st.args.dead_letter_routing_key.clone(),
            )
        };
        let (Some(dlx), Some(router)) = (dlx.as_deref(), self.router()) else {
            self.dead_lettered.count(reason, false);
            self.settle(&m);
            return;
        };
        self.dead_lettered.count(reason, true);
        let cause = Cause {
            reason,
            queue: &self.name,
            dlx,
            routing_key: dlrk.as_deref(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let Some((msg, deaths)) = make_message(&m.msg, cause) else {
            self.settle(&m);
            return;
        };
        targets.clear();
        let shared = SharedRecord::default();
        if !router.route(dlx, &msg, &shared, targets) {
            self.settle(&m);
            return;
        }
        // RabbitMQ drops a message that would go round a loop no client took part in.
        if reason != Reason::Rejected {
            targets.retain(|q| {
                let cycle = is_cycle(&q.name, &deaths);
                if cycle {
                    debug!(queue = %q.name, "dead-letter cycle: message dropped");
                }
                !cycle
            });
        }
        let msg = Arc::new(msg);
        let mut moved = DeadLetterMove::default();
        let mut reserved = Vec::with_capacity(targets.len());
        let mut streams = Vec::new();
        for q in targets.drain(..) {
            // A stream appends it like any publish, not as part of the move.
            if let Some(s) = &q.stream {
                streams.push((s.files().clone(), q.clone()));
                continue;
            }
            let Some(seq) = q.reserve() else { continue };
            let record = match &q.options.log {
                Some(log) if q.keeps(&msg) => moved.add(log, seq, &msg, &shared),
                _ => None,
            };
            reserved.push((q, seq, record));
        }
        // Appended before the move leaves its queue: a crash between the two keeps it twice,
        // never loses it.
        for (files, q) in streams {
            files.append(&msg, &shared);
            q.counters.add(crate::stats::Stat::Publish, 1);
        }
        moved.commit(self.logged(&m));
        for (q, seq, record) in reserved {
            q.enqueue(msg.clone(), Enqueue::Reserved { seq, record }, dead);
        }
    }
}

/// A field table's entries as (key, type tag + value bytes), in wire order.
type Table = Vec<(Vec<u8>, Vec<u8>)>;

/// The value at the front of `b`, 's' read as RabbitMQ reads it.
fn value(b: &[u8]) -> Option<RawValue<'_>> {
    table::value(b, ShortS::Int16).ok()
}

/// Reads a field table's entries (`b` without its length prefix).
fn parse_entries(b: &[u8]) -> Option<Table> {
    owned(table::entries(b, ShortS::Int16))
}

/// The entries of a table value (`v` with its tag).
fn table_entries(v: &[u8]) -> Option<Table> {
    owned(value(v)?.entries()?)
}

/// Copies entries out for editing; `None` if any is malformed.
fn owned(entries: Entries<'_>) -> Option<Table> {
    entries
        .map(|e| e.map(|(k, v)| (k.to_vec(), v.tagged().to_vec())))
        .collect::<Result<_, _>>()
        .ok()
}

/// The items of an array value (`v` with its tag), each with its tag.
fn array_items(v: &[u8]) -> Option<Vec<&[u8]>> {
    value(v)?
        .items()?
        .map(|i| i.map(|i| i.tagged()))
        .collect::<Result<_, _>>()
        .ok()
}

fn put_table(out: &mut Vec<u8>, t: &Table) {
    table::put_table(out, t.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
}

fn tagged(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    table::put_long(&mut v, tag, payload);
    v
}

fn longstr(s: &[u8]) -> Vec<u8> {
    tagged(b'S', s)
}

fn table_value(t: &Table) -> Vec<u8> {
    let mut v = vec![b'F'];
    put_table(&mut v, t);
    v
}

fn get<'t>(t: &'t Table, key: &str) -> Option<&'t [u8]> {
    t.iter()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// A long string's contents.
fn longstr_value(v: &[u8]) -> Option<&[u8]> {
    value(v)?.string()
}

fn set(t: &mut Table, key: &str, value: Vec<u8>) {
    match t.iter_mut().find(|(k, _)| k == key.as_bytes()) {
        Some((_, v)) => *v = value,
        None => t.push((key.as_bytes().to_vec(), value)),
    }
}

/// RabbitMQ's `sort_field_table`: a stable sort by key.
fn sorted(mut t: Table) -> Table {
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// One `x-death` entry as cycle detection sees it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Death {
    /// Its queue, when the entry is a table naming one as a long string.
    queue: Option<Vec<u8>>,
    /// Not a rejection, nor anything a client wrote (RabbitMQ's "fully automatic").
    automatic: bool,
}

/// RabbitMQ's `is_cycle`: the message died in `queue` before, and every death since then,
/// that one included, happened without a client rejecting it.
pub(super) fn is_cycle(queue: &str, deaths: &[Death]) -> bool {
    match deaths
        .iter()
        .position(|d| d.queue.as_deref() == Some(queue.as_bytes()))
    {
        Some(i) => deaths[..=i].iter().all(|d| d.automatic),
        None => false,
    }
}

/// Where and why a message died.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cause<'a> {
    pub reason: Reason,
    pub queue: &'a str,
    pub dlx: &'a str,
    pub routing_key: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// Where the headers table goes in a property list: after content-type and content-encoding.
fn headers_at(props: &[u8], flags: u16) -> Option<usize> {
    let mut pos = 2;
    for bit in [1u16 << 15, 1 << 14] {
        if flags & bit != 0 {
            pos += 1 + usize::from(*props.get(pos)?);
        }
    }
    (pos <= props.len()).then_some(pos)
}

const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_EXPIRATION: u16 = 1 << 8;

/// Appends `props` to `out` with one more header entry, `key` of field type `kind` with the bytes
/// `value`, after any headers it has; every other property keeps its bytes. A property list that
/// does not scan is appended as it is.
pub(super) fn put_with_header(out: &mut Vec<u8>, props: &[u8], key: &str, kind: u8, value: &[u8]) {
    let with = || -> Option<(u16, usize, usize, u32)> {
        let flags = u16::from_be_bytes(props.get(0..2)?.try_into().ok()?);
        let info = PropertiesInfo::scan(props).ok()?;
        Some(match info.headers {
            Some(r) => {
                let (start, end) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
                let len = u32::from_be_bytes(props.get(start..start + 4)?.try_into().ok()?);
                (flags, start, end, len)
            }
            None => {
                let at = headers_at(props, flags)?;
                (flags, at, at, 0)
            }
        })
    };
    let Some((flags, start, end, len)) = with() else {
        out.extend_from_slice(props);
        return;
    };
    let entry = 1 + key.len() + 1 + value.len();
    out.extend_from_slice(&(flags | FLAG_HEADERS).to_be_bytes());
    out.extend_from_slice(&props[2..start]);
    out.extend_from_slice(&(len + entry as u32).to_be_bytes());
    if end > start {
        out.extend_from_slice(&props[start + 4..end]);
    }
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
    out.push(kind);
    out.extend_from_slice(value);
    out.extend_from_slice(&props[end..]);
}

/// The message RabbitMQ's `make_msg` publishes to the dead-letter exchange: `x-death` updated,
/// `x-first-death-*` on the first death, `CC` gone when a dead-letter routing key replaces the
/// message's keys, the expiration moved into `original-expiration`; and the deaths it carries.
pub(super) fn make_message(msg: &Message, d: Cause<'_>) -> Option<(Message, Vec<Death>)> {
    let props = &msg.properties;
    let flags = u16::from_be_bytes(props.get(0..2)?.try_into().ok()?);
    let mut headers = match &msg.info.headers {
        Some(r) => {
            let (start, end) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
            // Headers RabbitMQ could not have parsed are dropped rather than the message.
            parse_entries(props.get(start + 4..end)?).unwrap_or_default()
        }
        None => Vec::new(),
    };
    let mut routing_keys = vec![longstr(&msg.routing_key)];
    for key in ["CC", "BCC"] {
        if let Some(items) = get(&headers, key).and_then(array_items) {
            routing_keys.extend(
                items
                    .into_iter()
                    .filter(|i| i.first() == Some(&b'S'))
                    .map(<[u8]>::to_vec),
            );
        }
    }
    let mut info: Table = vec![
        (b"reason".to_vec(), longstr(d.reason.as_str().as_bytes())),
        (b"queue".to_vec(), longstr(d.queue.as_bytes())),
        (
            b"time".to_vec(),
            [&[b'T'][..], &d.time.to_be_bytes()].concat(),
        ),
        (b"exchange".to_vec(), longstr(&msg.exchange)),
        (
            b"routing-keys".to_vec(),
            tagged(b'A', &routing_keys.concat()),
        ),
    ];
    if let Some(e) = msg.expiration() {
        info.push((b"original-expiration".to_vec(), longstr(e)));
    }
    let first = |info: Table| -> Table {
        let mut t = vec![(
            b"count".to_vec(),
            [&[b'l'][..], &1i64.to_be_bytes()].concat(),
        )];
        t.extend(info);
        t
    };
    let deaths: Vec<Vec<u8>> = match get(&headers, "x-death").map(|v| (v, array_items(v))) {
        None => {
            let q = longstr(d.queue.as_bytes());
            let x = longstr(&msg.exchange);
            let r = longstr(d.reason.as_str().as_bytes());
            set(&mut headers, "x-first-death-exchange", x);
            set(&mut headers, "x-first-death-queue", q);
            set(&mut headers, "x-first-death-reason", r);
            vec![table_value(&first(info))]
        }
        Some((_, Some(items))) => {
            let same = |t: &Table| {
                get(t, "queue").and_then(longstr_value) == Some(d.queue.as_bytes())
                    && get(t, "reason").and_then(longstr_value)
                        == Some(d.reason.as_str().as_bytes())
            };
            let mut matched = None;
            let mut others = Vec::new();
            for item in items {
                match table_entries(item) {
                    Some(t) if matched.is_none() && same(&t) => matched = Some(t),
                    _ => others.push(item.to_vec()),
                }
            }
            let entry = match matched {
                Some(mut t) => {
                    let count = match get(&t, "count") {
                        Some([b'I', n @ ..]) => <[u8; 4]>::try_from(n).ok().map(|n| {
                            [
                                &[b'I'][..],
                                &(i32::from_be_bytes(n).wrapping_add(1)).to_be_bytes(),
                            ]
                            .concat()
                        }),
                        Some([b'l', n @ ..]) => <[u8; 8]>::try_from(n).ok().map(|n| {
                            [
                                &[b'l'][..],
                                &(i64::from_be_bytes(n).wrapping_add(1)).to_be_bytes(),
                            ]
                            .concat()
                        }),
                        _ => None,
                    };
                    set(
                        &mut t,
                        "count",
                        count.unwrap_or_else(|| [&[b'l'][..], &1i64.to_be_bytes()].concat()),
                    );
                    sorted(t)
                }
                None => sorted(first(info)),
            };
            let mut all = vec![table_value(&entry)];
            all.extend(others);
            all
        }
        // Not an array (a client re-published it as something else): RabbitMQ starts over.
        Some((_, None)) => vec![table_value(&first(info))],
    };
    let marks = deaths
        .iter()
        .map(|item| match table_entries(item) {
            Some(t) => Death {
                queue: get(&t, "queue").and_then(longstr_value).map(<[u8]>::to_vec),
                automatic: get(&t, "reason").and_then(longstr_value) != Some(b"rejected"),
            },
            None => Death {
                queue: None,
                automatic: false,
            },
        })
        .collect();
    set(&mut headers, "x-death", tagged(b'A', &deaths.concat()));
    let mut headers = sorted(headers);
    if d.routing_key.is_some() {
        headers.retain(|(k, _)| k != b"CC");
    }
    let properties = rewrite_properties(props, flags, &msg.info, &headers, true)?;
    let info = PropertiesInfo::scan(&properties).ok()?;
    let routing_key = match d.routing_key {
        Some(rk) => Bytes::copy_from_slice(rk.as_bytes()),
        None => msg.routing_key.clone(),
    };
    let out = Message::new(
        Bytes::copy_from_slice(d.dlx.as_bytes()),
        routing_key,
        properties,
        info,
        msg.body.clone(),
    );
    Some((out, marks))
}

/// The message a quorum queue delivers: its headers with `x-delivery-count` set (a long, in a
/// table sorted as RabbitMQ's `set_table_value` leaves it); every other property keeps its bytes.
pub(super) fn with_delivery_count(msg: &Message, count: u32) -> Option<Message> {
    let props = &msg.properties;
    let flags = u16::from_be_bytes(props.get(0..2)?.try_into().ok()?);
    let mut headers = match &msg.info.headers {
        Some(r) => {
            let (start, end) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
            parse_entries(props.get(start + 4..end)?)?
        }
        None => Vec::new(),
    };
    set(
        &mut headers,
        "x-delivery-count",
        [&[b'l'][..], &i64::from(count).to_be_bytes()].concat(),
    );
    let properties = rewrite_properties(props, flags, &msg.info, &sorted(headers), false)?;
    let info = PropertiesInfo::scan(&properties).ok()?;
    Some(Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        properties,
        info,
        msg.body.clone(),
    ))
}

/// The property list with `headers` in place of the old table, and without its expiration if
/// `drop_expiration`; every other property keeps its bytes.
fn rewrite_properties(
    props: &[u8],
    flags: u16,
    info: &PropertiesInfo,
    headers: &Table,
    drop_expiration: bool,
) -> Option<Bytes> {
    let range = |r: &std::ops::Range<u32>| -> Option<(usize, usize)> {
        Some((usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?))
    };
    // (start, end) of the old headers table, or an empty range where it goes.
    let (h_start, h_end) = match &info.headers {
        Some(r) => range(r)?,
        None => {
            let at = headers_at(props, flags)?;
            (at, at)
        }
    };
    // The expiration short string, with its length byte.
    let expiration = match &info.expiration {
        Some(r) if drop_expiration => {
            let (s, e) = range(r)?;
            Some((s.checked_sub(1)?, e))
        }
        _ => None,
    };
    let flags = if drop_expiration {
        flags & !FLAG_EXPIRATION
    } else {
        flags
    };
    let mut out = Vec::with_capacity(props.len() + 256);
    out.extend_from_slice(&(flags | FLAG_HEADERS).to_be_bytes());
    out.extend_from_slice(props.get(2..h_start)?);
    put_table(&mut out, headers);
    match expiration {
        Some((s, e)) => {
            out.extend_from_slice(props.get(h_end..s)?);
            out.extend_from_slice(props.get(e..)?);
        }
        None => out.extend_from_slice(props.get(h_end..)?),
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn message(props: Vec<u8>) -> Message {
        let info = PropertiesInfo::scan(&props).expect("valid properties");
        Message::new(
            Bytes::from_static(b"ex"),
            Bytes::from_static(b"rk"),
            Bytes::from(props),
            info,
            Bytes::from_static(b"body"),
        )
    }

    fn death<'a>(reason: Reason, queue: &'a str) -> Cause<'a> {
        Cause {
            reason,
            queue,
            dlx: "dlx",
            routing_key: None,
            time: 1_700_000_000,
        }
    }

    fn headers(m: &Message) -> FieldTable {
        m.headers().expect("headers")
    }

    fn x_death(m: &Message) -> Vec<FieldTable> {
        match headers(m).inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::FieldTable(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            other => panic!("x-death is {other:?}"),
        }
    }

    #[test]
    fn first_death_writes_rabbitmq_entry_and_moves_the_expiration() {
        // delivery-mode 2, expiration "5000", app-id "app"
        let mut props = ((1u16 << 12) | (1 << 8) | (1 << 3)).to_be_bytes().to_vec();
        props.extend_from_slice(&[2, 4]);
        props.extend_from_slice(b"5000");
        props.extend_from_slice(&[3]);
        props.extend_from_slice(b"app");
        let m = message(props);
        let (out, deaths) = make_message(&m, death(Reason::Expired, "q1")).expect("made");
        assert_eq!(&out.exchange[..], b"dlx");
        assert_eq!(&out.routing_key[..], b"rk");
        assert_eq!(out.expiration(), None);
        assert_eq!(out.info.delivery_mode, 2);
        assert!(out.properties.ends_with(b"\x03app"));
        let entries = x_death(&out);
        assert_eq!(entries.len(), 1);
        let e = entries[0].inner();
        assert_eq!(e.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(
            e.get("reason"),
            Some(&AMQPValue::LongString("expired".into()))
        );
        assert_eq!(e.get("queue"), Some(&AMQPValue::LongString("q1".into())));
        assert_eq!(e.get("exchange"), Some(&AMQPValue::LongString("ex".into())));
        assert_eq!(e.get("time"), Some(&AMQPValue::Timestamp(1_700_000_000)));
        assert_eq!(
            e.get("original-expiration"),
            Some(&AMQPValue::LongString("5000".into()))
        );
        let h = headers(&out);
        assert_eq!(
            h.inner().get("x-first-death-queue"),
            Some(&AMQPValue::LongString("q1".into()))
        );
        // RabbitMQ writes the first entry in this order, unsorted.
        let raw = &out.properties[..];
        let at = |k: &[u8]| raw.windows(k.len()).position(|w| w == k).expect("key");
        assert!(at(b"count") < at(b"reason") && at(b"reason") < at(b"queue"));
        assert!(at(b"queue") < at(b"time") && at(b"time") < at(b"exchange"));
        assert!(is_cycle("q1", &deaths));
        assert!(!is_cycle("q2", &deaths));
    }

    #[test]
    fn a_repeated_death_is_counted_and_moved_to_the_front() {
        let m = message(vec![0, 0]);
        let (m, _) = make_message(&m, death(Reason::Rejected, "a")).expect("a");
        let (m, _) = make_message(&m, death(Reason::Expired, "b")).expect("b");
        let (m, deaths) = make_message(&m, death(Reason::Rejected, "a")).expect("a again");
        let entries = x_death(&m);
        let queues: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.inner().get("queue").cloned(),
                    e.inner().get("count").cloned(),
                )
            })
            .collect();
        assert_eq!(
            queues,
            vec![
                (
                    Some(AMQPValue::LongString("a".into())),
                    Some(AMQPValue::LongLongInt(2))
                ),
                (
                    Some(AMQPValue::LongString("b".into())),
                    Some(AMQPValue::LongLongInt(1))
                ),
            ]
        );
        // A rejection in the loop means a client took part: not a cycle.
        assert!(!is_cycle("a", &deaths));
        assert_eq!(
            headers(&m).inner().get("x-first-death-reason"),
            Some(&AMQPValue::LongString("rejected".into()))
        );
    }

    #[test]
    fn a_dead_letter_routing_key_drops_cc_but_records_it() {
        let mut t = FieldTable::default();
        t.insert(
            "CC".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("cc1".into())].into()),
        );
        let (table, _) = cookie_factory::r#gen(
            amq_protocol::types::generation::gen_field_table(&t),
            Vec::new(),
        )
        .expect("encode");
        let mut props = (1u16 << 13).to_be_bytes().to_vec();
        props.extend_from_slice(&table);
        let m = message(props);
        let mut d = death(Reason::Rejected, "q");
        d.routing_key = Some("new");
        let (out, _) = make_message(&m, d).expect("made");
        assert_eq!(&out.routing_key[..], b"new");
        assert!(headers(&out).inner().get("CC").is_none());
        assert_eq!(
            x_death(&out)[0].inner().get("routing-keys"),
            Some(&AMQPValue::FieldArray(
                vec![
                    AMQPValue::LongString("rk".into()),
                    AMQPValue::LongString("cc1".into())
                ]
                .into()
            ))
        );
    }
}
