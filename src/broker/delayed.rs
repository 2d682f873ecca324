//! The `x-delayed-message` exchange type, as RabbitMQ's delayed-message-exchange plugin defines it:
//! a message published with an `x-delay` header (milliseconds) is held, then routed by the
//! exchange's `x-delayed-type` over the bindings the exchange has once the delay has passed.
//!
//! One scheduler serves the broker: held messages sit in a map ordered by due time, and one task
//! sleeps until the earliest, so a million held messages cost one timer, not a million tasks.
//! Persistent messages that durable delayed exchanges hold are also written to the store with their
//! wall-clock due time, and are scheduled again from it at start.
//!
//! Delays run from 1 ms to [`MAX_DELAY_MS`] (2^32-1 ms, about 49.7 days: the range the plugin
//! documents). A longer delay closes the publishing channel with 406 PRECONDITION_FAILED: the
//! plugin's older releases wrapped such delays around at 32 bits, and its newer ones route them at
//! once; either way the publisher asked for something the broker will not do, and `basic.publish`
//! has no reply to refuse it with.

use std::collections::BTreeMap;
use std::fmt;
use std::num::IntErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::debug;

use super::Broker;
use super::exchange::{DELAYED_TYPE, ExchangeKind};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Message, PropertiesInfo};
use crate::queue::log::{self, QueueLog, SharedRecord};
use crate::queue::{Queue, QueueOptions};
use crate::store::{DELAY_SINK_QUEUE, DelayRecord, RecoveredDelay, Store};

/// The exchange type name.
pub const EXCHANGE_TYPE: &str = DELAYED_TYPE;
/// The declare argument naming the type whose rules route held messages.
pub const TYPE_ARGUMENT: &str = "x-delayed-type";
/// The message header carrying the delay, in milliseconds.
pub const DELAY_HEADER: &str = "x-delay";
/// The longest delay accepted: 2^32-1 ms (about 49.7 days), Erlang's timer limit, which bounds the
/// plugin's delays too.
pub const MAX_DELAY_MS: u64 = 4_294_967_295;

/// How long the scheduler sleeps with nothing to do but purge the sink.
const SINK_SWEEP: Duration = Duration::from_secs(1);
/// How long it sleeps with nothing to do at all (a new hold wakes it sooner).
const IDLE: Duration = Duration::from_secs(3600);

/// The routing type that a delayed exchange's `x-delayed-type` argument names, checked as the plugin
/// checks it when the exchange is created.
pub fn routing_kind(arguments: &FieldTable) -> Result<ExchangeKind, AmqpError> {
    let name = match arguments.inner().get(TYPE_ARGUMENT) {
        Some(AMQPValue::LongString(s)) => s.as_bytes(),
        Some(AMQPValue::ShortString(s)) => s.as_str().as_bytes(),
        Some(AMQPValue::ByteArray(b)) => b.as_slice(),
        _ => {
            return Err(ChannelError::precondition(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            )
            .into());
        }
    };
    let name = String::from_utf8_lossy(name);
    if name == EXCHANGE_TYPE {
        return Err(ChannelError::precondition(
            "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        )
        .into());
    }
    ExchangeKind::parse(&name).ok_or_else(|| {
        ConnectionError::command_invalid(format_args!("unknown exchange type '{name}'")).into()
    })
}

fn too_long(delay: impl fmt::Display) -> ChannelError {
    ChannelError::precondition(format_args!(
        "Invalid header 'x-delay': {delay} ms is longer than the maximum delay of {MAX_DELAY_MS} ms (about 49.7 days)"
    ))
}

/// A message's delay from its `x-delay` header, read as the plugin reads it: integers of any width,
/// floats truncated, strings parsed as integers. `None` means no delay (no header, zero, negative,
/// or another type); a delay past [`MAX_DELAY_MS`] or a string that is no integer is refused.
pub fn delay_of(headers: Option<&FieldTable>) -> Result<Option<u64>, ChannelError> {
    let Some(value) = headers.and_then(|h| h.inner().get(DELAY_HEADER)) else {
        return Ok(None);
    };
    let ms: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => return float_delay((*f).into()),
        AMQPValue::Double(f) => return float_delay(*f),
        AMQPValue::LongString(s) => integer_text(&String::from_utf8_lossy(s.as_bytes()))?,
        AMQPValue::ShortString(s) => integer_text(s.as_str())?,
        _ => return Ok(None),
    };
    if ms <= 0 {
        return Ok(None);
    }
    match u64::try_from(ms) {
        Ok(ms) if ms <= MAX_DELAY_MS => Ok(Some(ms)),
        _ => Err(too_long(ms)),
    }
}

fn float_delay(f: f64) -> Result<Option<u64>, ChannelError> {
    let t = f.trunc();
    if t.is_nan() || t < 1.0 {
        return Ok(None);
    }
    // Compared as floats: every u64 up to MAX_DELAY_MS is exact in an f64.
    let max = f64::from(u32::MAX);
    if t > max {
        return Err(too_long(f));
    }
    // Whole and within [1, 2^32-1]: the conversion is exact (no float converts without `as`).
    Ok(Some(t as u64))
}

fn integer_text(s: &str) -> Result<i128, ChannelError> {
    match s.parse::<i128>() {
        Ok(n) => Ok(n),
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => Err(too_long(s)),
        Err(e) if *e.kind() == IntErrorKind::NegOverflow => Ok(0),
        // The plugin's channel crashes on these; a clear 406 serves the publisher better.
        Err(_) => Err(ChannelError::precondition(format_args!(
            "Invalid header 'x-delay': '{s}' is not an integer number of milliseconds"
        ))),
    }
}

/// The message as the plugin delivers it once due: `x-delay` negated, so that consumers can tell
/// it was delayed (and by how much) and that no delayed exchange further on holds it again.
fn undelayed(msg: &Message) -> Option<Message> {
    let range = msg.info.headers.clone()?;
    let (start, end) = (
        usize::try_from(range.start).ok()?,
        usize::try_from(range.end).ok()?,
    );
    let mut table = msg.headers()?;
    let delay = i64::try_from(delay_of(Some(&table)).ok()??).ok()?;
    table.insert(DELAY_HEADER.into(), AMQPValue::LongLongInt(-delay));
    let (encoded, _) = cookie_factory::r#gen(gen_field_table(&table), Vec::new()).ok()?;
    let mut props = Vec::with_capacity(msg.properties.len() + 8);
    props.extend_from_slice(msg.properties.get(..start)?);
    props.extend_from_slice(&encoded);
    props.extend_from_slice(msg.properties.get(end..)?);
    let info = PropertiesInfo::scan(&props).ok()?;
    Some(Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        Bytes::from(props),
        info,
        msg.body.clone(),
    ))
}

/// Milliseconds since the Unix epoch, rounded up so that a due time computed from it is never
/// earlier than the publish plus its delay.
fn wall_ms_ceil() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A delayed exchange's claim on a message being routed.
#[derive(Debug)]
pub(super) struct Hold {
    /// The delayed exchange.
    pub exchange: Arc<str>,
    /// Its delay.
    pub delay_ms: u64,
    /// Whether the exchange is durable (persistent messages it holds survive a restart).
    pub durable: bool,
}

/// A held message waiting for its due time.
#[derive(Debug)]
struct Held {
    vhost: Arc<str>,
    exchange: Arc<str>,
    msg: Arc<Message>,
    /// Its store entry (hold id, message id), for a message that survives a restart.
    record: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Schedule {
    /// Keyed by due time, then by arrival, so equal due times keep publish order.
    due: BTreeMap<(Instant, u64), Held>,
    next: u64,
}

impl Schedule {
    fn insert(&mut self, due: Instant, held: Held) -> bool {
        let earliest = self.due.first_key_value().is_none_or(|(k, _)| due < k.0);
        self.due.insert((due, self.next), held);
        self.next += 1;
        earliest
    }
}

/// The broker's held messages, and the sinks that publishes to delayed exchanges are handed to.
///
/// The channel hands a routed message to its queues: it returns a mandatory message that reached
/// none, and confirms a persistent one after the flush when a queue stored it. A held message is
/// handed to a sink instead, so that a mandatory publish is not returned (its route is not known
/// yet, as the plugin says) and a persistent one held by a durable exchange is confirmed only once
/// its hold is on disk. The sinks are hidden queues that nobody consumes from.
#[derive(Debug)]
pub struct Delayed {
    schedule: Mutex<Schedule>,
    /// Wakes the scheduler when a hold comes due sooner than the one it sleeps for.
    wake: Notify,
    store: Option<Arc<Store>>,
    /// Takes persistent messages held by durable exchanges: storing them there makes their
    /// confirm wait for the flush that also writes the hold. The scheduler purges it.
    durable_sink: Option<Arc<Queue>>,
    /// Takes every other held message, and keeps nothing: a deleted queue drops what it gets.
    transient_sink: Arc<Queue>,
}

impl Delayed {
    /// An empty schedule writing durable holds to `store`.
    pub fn new(store: Option<Arc<Store>>) -> Arc<Self> {
        let sink = |log: Option<QueueLog>| {
            Queue::new(
                "amq.delayed-message.sink".into(),
                "".into(),
                QueueOptions {
                    durable: log.is_some(),
                    log,
                    ..QueueOptions::default()
                },
            )
        };
        let transient_sink = sink(None);
        transient_sink.delete();
        let durable_sink = store
            .as_ref()
            .map(|s| sink(Some(QueueLog::new(s.clone(), DELAY_SINK_QUEUE))));
        Arc::new(Self {
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
            store,
            durable_sink,
            transient_sink,
        })
    }

    /// Messages held now.
    pub fn held_count(&self) -> usize {
        self.schedule.lock().due.len()
    }

    /// Holds `msg` for each delayed exchange that claimed it, and adds the sink the channel hands
    /// it to. Durable holds are written to the store before the channel hands the message over, so
    /// the flush its confirm waits for includes them.
    pub(super) fn hold(
        &self,
        vhost: &Arc<str>,
        msg: &Message,
        shared: &SharedRecord,
        holds: Vec<Hold>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        let now = Instant::now();
        let wall = wall_ms_ceil();
        let store = self
            .store
            .as_ref()
            .filter(|_| msg.persistent() && holds.iter().any(|h| h.durable));
        // The held copy, the sink and any durable queue the message also reaches share one
        // stored body.
        let stored = store.map(|s| shared.stored_form(s, msg).clone());
        let copy = Arc::new(msg.clone());
        let mut records = Vec::with_capacity(holds.len());
        for h in &holds {
            let record = match (&stored, store) {
                (Some(m), Some(s)) if h.durable => {
                    let id = s.next_message_id();
                    let record = DelayRecord {
                        message_id: m.id,
                        vhost: vhost.to_string(),
                        exchange: h.exchange.to_string(),
                        due_ms: wall.saturating_add(h.delay_ms),
                    };
                    s.delay(id, &record, m.clone());
                    Some((id, m.id))
                }
                _ => None,
            };
            records.push(record);
        }
        let mut earliest = false;
        {
            let mut schedule = self.schedule.lock();
            for (h, record) in holds.into_iter().zip(records) {
                earliest |= schedule.insert(
                    now + Duration::from_millis(h.delay_ms),
                    Held {
                        vhost: vhost.clone(),
                        exchange: h.exchange,
                        msg: copy.clone(),
                        record,
                    },
                );
            }
        }
        if earliest {
            self.wake.notify_one();
        }
        match (&stored, &self.durable_sink) {
            (Some(_), Some(sink)) => out.push(sink.clone()),
            _ => out.push(self.transient_sink.clone()),
        }
    }

    /// Schedules the holds read back at start from their wall-clock due times (those already past
    /// are due at once), and drops what the sink still held when the broker stopped.
    pub(super) fn restore(&self, recovered: Vec<RecoveredDelay>) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        {
            let mut schedule = self.schedule.lock();
            for r in recovered {
                let remaining = UNIX_EPOCH
                    .checked_add(Duration::from_millis(r.record.due_ms))
                    .map_or(Duration::ZERO, |due| {
                        due.duration_since(wall).unwrap_or(Duration::ZERO)
                    });
                schedule.insert(
                    now + remaining,
                    Held {
                        vhost: r.record.vhost.as_str().into(),
                        exchange: r.record.exchange.as_str().into(),
                        record: Some((r.id, r.record.message_id)),
                        msg: Arc::new(log::message_of(&r.message)),
                    },
                );
            }
        }
        if let Some(store) = &self.store {
            store.drop_queue(DELAY_SINK_QUEUE);
        }
    }

    /// Takes every hold due by `now`, and tells when the next one is.
    fn take_due(&self, now: Instant) -> (Vec<Held>, Option<Instant>) {
        let mut schedule = self.schedule.lock();
        let mut due = Vec::new();
        while let Some(entry) = schedule.due.first_entry() {
            if entry.key().0 > now {
                return (due, Some(entry.key().0));
            }
            due.push(entry.remove());
        }
        (due, None)
    }

    /// Empties the durable sink (its store entries go with it); true if it held anything.
    fn purge_sink(&self) -> bool {
        self.durable_sink.as_ref().is_some_and(|s| s.purge() > 0)
    }

    /// Routes a held message whose time has come, then forgets its hold. A message whose vhost or
    /// exchange has gone is dropped, as the plugin drops what routes nowhere.
    fn deliver(&self, broker: &Broker, held: Held) {
        let msg = Arc::new(undelayed(&held.msg).unwrap_or_else(|| {
            Message::new(
                held.msg.exchange.clone(),
                held.msg.routing_key.clone(),
                held.msg.properties.clone(),
                held.msg.info.clone(),
                held.msg.body.clone(),
            )
        }));
        let mut queues = Vec::new();
        let routed = broker
            .vhost(&held.vhost)
            .map(|v| v.route_held(&held.exchange, &msg, &mut queues));
        match routed {
            Some(Ok(())) => {
                let shared = SharedRecord::default();
                for q in queues {
                    q.publish(msg.clone(), &shared);
                }
            }
            Some(Err(e)) => {
                debug!(exchange = %held.exchange, cause = %e, "dropping a delayed message")
            }
            None => debug!(vhost = %held.vhost, "dropping a delayed message of a vanished vhost"),
        }
        // After the queues' writes, so a crash between them delivers twice rather than never.
        if let (Some(store), Some((id, message_id))) = (&self.store, held.record) {
            store.undelay(id, message_id);
        }
    }
}

/// The scheduler: routes held messages as they come due, until `shutdown` turns true. Held
/// transient messages are lost with the broker, as transient messages in queues are.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let delayed = broker.delayed.clone();
    while !*shutdown.borrow() {
        let swept = delayed.purge_sink();
        let now = Instant::now();
        let (due, next) = delayed.take_due(now);
        for held in due {
            delayed.deliver(&broker, held);
        }
        // A publish handed to the sink after the purge above (a tx committed late) is swept soon.
        let mut wake_at = next.unwrap_or(now + IDLE);
        if swept {
            wake_at = wake_at.min(now + SINK_SWEEP);
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake_at.into()) => {}
            () = delayed.wake.notified() => {}
            changed = shutdown.changed() => if changed.is_err() {
                break;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{LongString, ShortString};

    fn headers(v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(ShortString::from(DELAY_HEADER), v);
        t
    }

    fn delay(v: AMQPValue) -> Result<Option<u64>, u16> {
        delay_of(Some(&headers(v))).map_err(|e| e.code())
    }

    #[test]
    fn delays_are_read_as_the_plugin_reads_them() {
        assert_eq!(delay_of(None), Ok(None));
        assert_eq!(delay(AMQPValue::LongInt(5000)), Ok(Some(5000)));
        assert_eq!(delay(AMQPValue::ShortShortUInt(7)), Ok(Some(7)));
        assert_eq!(delay(AMQPValue::LongLongInt(0)), Ok(None));
        assert_eq!(delay(AMQPValue::LongInt(-3)), Ok(None));
        assert_eq!(delay(AMQPValue::Double(12.9)), Ok(Some(12)));
        assert_eq!(delay(AMQPValue::Double(f64::NAN)), Ok(None));
        assert_eq!(
            delay(AMQPValue::LongString(LongString::from("250"))),
            Ok(Some(250))
        );
        assert_eq!(delay(AMQPValue::Boolean(true)), Ok(None));
        assert_eq!(
            delay(AMQPValue::LongString(LongString::from("soon"))),
            Err(406)
        );
    }

    #[test]
    fn delays_past_the_bound_are_refused_not_wrapped() {
        let max = i64::try_from(MAX_DELAY_MS).unwrap_or(i64::MAX);
        assert_eq!(delay(AMQPValue::LongLongInt(max)), Ok(Some(MAX_DELAY_MS)));
        assert_eq!(delay(AMQPValue::LongLongInt(max + 1)), Err(406));
        assert_eq!(delay(AMQPValue::LongUInt(u32::MAX)), Ok(Some(MAX_DELAY_MS)));
        assert_eq!(delay(AMQPValue::Double(1e300)), Err(406));
        assert_eq!(delay(AMQPValue::Double(f64::INFINITY)), Err(406));
        assert_eq!(
            delay(AMQPValue::LongString(LongString::from("9".repeat(60)))),
            Err(406)
        );
    }

    #[test]
    fn the_routing_type_is_required_and_must_exist() {
        let args = |v: Option<AMQPValue>| {
            let mut t = FieldTable::default();
            if let Some(v) = v {
                t.insert(ShortString::from(TYPE_ARGUMENT), v);
            }
            t
        };
        let code = |r: Result<ExchangeKind, AmqpError>| match r {
            Ok(k) => Ok(k),
            Err(AmqpError::Channel(e)) => Err(e.code()),
            Err(AmqpError::Connection(e)) => Err(e.code()),
        };
        let text = |v: &str| Some(AMQPValue::LongString(LongString::from(v)));
        assert_eq!(
            code(routing_kind(&args(text("topic")))),
            Ok(ExchangeKind::Topic)
        );
        assert_eq!(code(routing_kind(&args(None))), Err(406));
        assert_eq!(
            code(routing_kind(&args(Some(AMQPValue::LongInt(1))))),
            Err(406)
        );
        assert_eq!(code(routing_kind(&args(text(EXCHANGE_TYPE)))), Err(406));
        assert_eq!(code(routing_kind(&args(text("x-nonsense")))), Err(503));
    }

    #[test]
    fn a_due_message_carries_its_delay_negated() {
        let mut table = headers(AMQPValue::LongInt(1500));
        table.insert(
            ShortString::from("other"),
            AMQPValue::LongString("kept".into()),
        );
        let (encoded, _) = cookie_factory::r#gen(gen_field_table(&table), Vec::new())
            .unwrap_or_else(|e| panic!("encode: {e:?}"));
        // flags: headers, delivery-mode
        let mut props = (0x2000u16 | 0x1000).to_be_bytes().to_vec();
        props.extend_from_slice(&encoded);
        props.push(2);
        let info = PropertiesInfo::scan(&props).unwrap_or_else(|e| panic!("scan: {e}"));
        let msg = Message::new(
            Bytes::from_static(b"x"),
            Bytes::from_static(b"k"),
            Bytes::from(props),
            info,
            Bytes::from_static(b"body"),
        );
        let due = undelayed(&msg).unwrap_or_else(|| panic!("undelayed"));
        let h = due.headers().unwrap_or_default();
        assert_eq!(
            h.inner().get(DELAY_HEADER),
            Some(&AMQPValue::LongLongInt(-1500))
        );
        assert_eq!(
            h.inner().get("other"),
            Some(&AMQPValue::LongString("kept".into()))
        );
        assert!(due.persistent());
        assert_eq!(delay_of(Some(&h)), Ok(None));
        assert_eq!(due.body, msg.body);
    }

    #[test]
    fn equal_due_times_keep_arrival_order_and_sooner_ones_wake_the_scheduler() {
        let d = Delayed::new(None);
        let vhost: Arc<str> = "/".into();
        let msg = |body: &'static [u8]| {
            Message::new(
                Bytes::new(),
                Bytes::new(),
                Bytes::from_static(&[0, 0]),
                PropertiesInfo::default(),
                Bytes::from_static(body),
            )
        };
        let hold = |ms| Hold {
            exchange: "x".into(),
            delay_ms: ms,
            durable: false,
        };
        let mut out = Vec::new();
        d.hold(
            &vhost,
            &msg(b"late"),
            &SharedRecord::default(),
            vec![hold(60_000)],
            &mut out,
        );
        d.hold(
            &vhost,
            &msg(b"soon"),
            &SharedRecord::default(),
            vec![hold(1), hold(1)],
            &mut out,
        );
        assert_eq!(out.len(), 2, "each publish is handed to a sink");
        assert_eq!(d.held_count(), 3);
        let (due, next) = d.take_due(Instant::now() + Duration::from_millis(5));
        let bodies: Vec<&[u8]> = due.iter().map(|h| &h.msg.body[..]).collect();
        assert_eq!(bodies, [&b"soon"[..], b"soon"]);
        assert!(next.is_some());
        assert_eq!(d.held_count(), 1);
    }
}
