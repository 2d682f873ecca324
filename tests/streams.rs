//! Stream queues (`x-queue-type: stream`) over AMQP 0-9-1: an append-only log each consumer reads
//! from an offset of its choosing (`x-stream-offset`), with acks that only grant credit, and what
//! RabbitMQ 3.10 refuses of them (declare properties and arguments, basic.get, purge, reject).
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren, except the tests named
//! `warren_only_…`, which always run on Warren (`-- --skip warren_only` leaves them out): retention,
//! restarts, and inputs RabbitMQ 3.10 crashes on (541) where Warren refuses cleanly.

mod common;

use std::time::Duration;

use common::process::{free_port, start};
use common::{
    Env, TestBroker, bind, counts, eventually_within, failure, next_delivery, next_error, publish,
    refusal, table, unique,
};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};

/// How long a consumer must stay quiet to show that nothing more is coming: RabbitMQ reads a
/// stream in its own process, so its first deliveries can take a few hundred milliseconds.
const QUIET: Duration = Duration::from_millis(800);

/// How long RabbitMQ may take to show a stream's messages in a passive declare: it reports
/// the count its statistics last collected (every 5 s), not the log's end.
const STATS: Duration = Duration::from_secs(10);

/// How long Warren may take to apply retention after the publishes that exceed it.
const RETENTION: Duration = Duration::from_secs(10);

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn stream_args(args: &[(&str, AMQPValue)]) -> FieldTable {
    let mut all = vec![("x-queue-type", common::s("stream"))];
    all.extend_from_slice(args);
    table(&all)
}

/// Declares a stream with a [`unique`] name made from `base`, and returns the name.
async fn declare_stream(ch: &Channel, base: &str, args: &[(&str, AMQPValue)]) -> String {
    let name = unique(base);
    ch.queue_declare(name.as_str().into(), durable(), stream_args(args))
        .await
        .expect("queue.declare of a stream");
    name
}

async fn delete(env: &Env, queue: &str) {
    let (conn, ch) = env.channel().await;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let _ = conn.close(200, "bye".into()).await;
}

/// The refusal of declaring stream `queue` with `options` and `args`, on a connection of its own.
async fn refused(
    env: &Env,
    queue: &str,
    options: QueueDeclareOptions,
    args: &[(&str, AMQPValue)],
) -> (u16, String) {
    let (_c, ch) = env.channel().await;
    failure(
        ch.queue_declare(queue.into(), options, stream_args(args))
            .await,
    )
}

/// The text of RabbitMQ's refusal of argument `arg` of stream `queue` for `reason`.
fn invalid_arg(arg: &str, queue: &str, reason: &str) -> (u16, String) {
    (
        406,
        format!(
            "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost '/': {reason}"
        ),
    )
}

/// Publishes `bodies` one by one, each confirmed before the next: so each is its own chunk in
/// RabbitMQ, which is what `last` and timestamps resolve to.
async fn publish_each(ch: &Channel, queue: &str, bodies: impl IntoIterator<Item = String>) {
    for b in bodies {
        publish(ch, "", queue, b).await;
    }
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// The first `n` bodies [`common::publish_numbered`] publishes, as text.
fn numbered_bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| String::from_utf8_lossy(&common::numbered_body(i)).into_owned())
        .collect()
}

/// Consumes `queue` on `ch` with a per-consumer prefetch of `prefetch`, from `offset` if given.
async fn consume_from(
    ch: &Channel,
    queue: &str,
    prefetch: u16,
    offset: Option<AMQPValue>,
) -> lapin::Result<Consumer> {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let args = match offset {
        Some(o) => table(&[("x-stream-offset", o)]),
        None => FieldTable::default(),
    };
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
}

/// A new channel on `conn` consuming `queue` from `offset`, with room for 100 unacked deliveries.
async fn reader(conn: &Connection, queue: &str, offset: AMQPValue) -> Consumer {
    let ch = conn.create_channel().await.expect("channel");
    consume_from(&ch, queue, 100, Some(offset))
        .await
        .expect("consume")
}

/// The `x-stream-offset` header of a delivery, which must be a signed 64-bit integer.
fn offset_of(d: &Delivery) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset"))
    {
        Some(AMQPValue::LongLongInt(o)) => *o,
        other => panic!("x-stream-offset must be a signed 64-bit integer, got {other:?}"),
    }
}

/// The next `n` deliveries as (body, offset), each acked so credit keeps coming.
async fn read(consumer: &mut Consumer, n: usize) -> Vec<(String, i64)> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next_delivery(consumer).await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
        got.push((common::body(&d), offset_of(&d)));
    }
    got
}

/// `bodies` paired with the offsets from `first` on.
fn at_offsets(bodies: &[String], first: i64) -> Vec<(String, i64)> {
    bodies.iter().cloned().zip(first..).collect()
}

/// Nothing (more) is delivered to `consumer` for a while.
async fn quiet(consumer: &mut Consumer, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("{what}: {d:?}");
    }
}

/// A stream must be durable, and neither exclusive nor auto-delete: each is refused by name.
#[tokio::test]
async fn a_stream_must_be_durable_and_neither_exclusive_nor_auto_delete() {
    let env = Env::start().await;
    let q = unique("stream-props");
    let property = |p: &str| {
        (
            406,
            format!("PRECONDITION_FAILED - invalid property '{p}' for queue '{q}' in vhost '/'"),
        )
    };
    assert_eq!(
        refused(&env, &q, QueueDeclareOptions::default(), &[]).await,
        property("non-durable")
    );
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..durable()
    };
    assert_eq!(
        refused(&env, &q, exclusive, &[]).await,
        property("exclusive-owner")
    );
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..durable()
    };
    assert_eq!(
        refused(&env, &q, auto_delete, &[]).await,
        property("auto-delete")
    );
    assert_eq!(counts(&env, &q).await, Err(404), "nothing was declared");
}

/// `x-max-age` is a positive whole number and one of the units Y M D h m s, as a string.
#[tokio::test]
async fn x_max_age_is_a_positive_count_of_a_unit() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    for age in ["1Y", "1M", "1D", "1h", "1m", "1s"] {
        let q = declare_stream(&ch, "stream-age", &[("x-max-age", common::s(age))]).await;
        delete(&env, &q).await;
    }
    let q = unique("stream-bad-age");
    for age in ["1d", "10", "0D", "1.5D"] {
        assert_eq!(
            refused(&env, &q, durable(), &[("x-max-age", common::s(age))]).await,
            invalid_arg("x-max-age", &q, "invalid_max_age"),
            "x-max-age {age}"
        );
    }
    assert_eq!(
        refused(
            &env,
            &q,
            durable(),
            &[("x-max-age", AMQPValue::LongInt(10))]
        )
        .await,
        invalid_arg("x-max-age", &q, "{unacceptable_type,signedint}")
    );
}

/// Arguments of classic and quorum queues that a log cannot honour are refused, naming the type.
#[tokio::test]
async fn arguments_streams_do_not_support_are_refused_naming_the_queue_type() {
    let env = Env::start().await;
    let q = unique("stream-unsupported");
    for (arg, value) in [
        ("x-message-ttl", AMQPValue::LongInt(1000)),
        ("x-expires", AMQPValue::LongInt(1000)),
        ("x-dead-letter-exchange", common::s("dlx")),
        ("x-max-priority", AMQPValue::LongInt(5)),
        ("x-max-length", AMQPValue::LongInt(10)),
        ("x-overflow", common::s("reject-publish")),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ("x-queue-mode", common::s("lazy")),
    ] {
        assert_eq!(
            refused(&env, &q, durable(), &[(arg, value)]).await,
            (
                406,
                format!(
                    "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"
                )
            )
        );
    }
}

/// The retention, segment and placement arguments are accepted, and their values checked.
#[tokio::test]
async fn retention_segment_and_placement_arguments_are_accepted_and_checked() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    for (arg, value) in [
        ("x-max-length-bytes", AMQPValue::LongInt(1_000_000)),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongInt(100_000),
        ),
        ("x-initial-cluster-size", AMQPValue::LongInt(1)),
        ("x-queue-leader-locator", common::s("client-local")),
    ] {
        let q = declare_stream(&ch, "stream-arg", &[(arg, value)]).await;
        delete(&env, &q).await;
    }
    let q = unique("stream-bad-arg");
    assert_eq!(
        refused(
            &env,
            &q,
            durable(),
            &[("x-max-length-bytes", common::s("abc"))]
        )
        .await,
        invalid_arg(
            "x-max-length-bytes",
            &q,
            "\"expected integer, got longstr\""
        )
    );
    assert_eq!(
        refused(
            &env,
            &q,
            durable(),
            &[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(-1))]
        )
        .await,
        invalid_arg("x-stream-max-segment-size-bytes", &q, "{value_negative,-1}")
    );
}

/// From `first`, a consumer gets every message in order, each with its offset as a 64-bit header.
#[tokio::test]
async fn from_first_a_consumer_gets_every_message_with_its_offset() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-first", &[]).await;
    let bodies = numbered("m", 0..5);
    publish_each(&ch, &q, bodies.clone()).await;
    let mut c = reader(&conn, &q, common::s("first")).await;
    let d = next_delivery(&mut c).await;
    assert_eq!(
        d.properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset")),
        Some(&AMQPValue::LongLongInt(0))
    );
    assert!(!d.redelivered);
    d.ack(BasicAckOptions::default()).await.expect("ack");
    assert_eq!(read(&mut c, 4).await, at_offsets(&bodies[1..], 1));
    quiet(&mut c, "only the five published").await;
    delete(&env, &q).await;
}

/// From `last`, a consumer starts at the last chunk: the last message, each confirmed alone.
#[tokio::test]
async fn from_last_a_consumer_starts_at_the_last_message() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-last", &[]).await;
    publish_each(&ch, &q, numbered("m", 0..5)).await;
    let mut c = reader(&conn, &q, common::s("last")).await;
    assert_eq!(read(&mut c, 1).await, vec![("m4".to_string(), 4)]);
    quiet(&mut c, "only the last").await;
    delete(&env, &q).await;
}

/// From `next`, given or by default, a consumer sees only what is published after it attached.
#[tokio::test]
async fn from_next_a_consumer_sees_only_later_messages() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-next", &[]).await;
    publish_each(&ch, &q, numbered("old", 0..3)).await;
    let mut explicit = reader(&conn, &q, common::s("next")).await;
    let ch2 = conn.create_channel().await.expect("channel");
    let mut default = consume_from(&ch2, &q, 10, None).await.expect("consume");
    quiet(&mut explicit, "nothing published before next").await;
    quiet(&mut default, "nothing published before the default").await;
    publish(&ch, "", &q, "new").await;
    assert_eq!(read(&mut explicit, 1).await, vec![("new".to_string(), 3)]);
    assert_eq!(read(&mut default, 1).await, vec![("new".to_string(), 3)]);
    delete(&env, &q).await;
}

/// A numeric offset starts there; -1 starts at the first; one beyond the end gives nothing old.
#[tokio::test]
async fn a_numeric_offset_starts_there() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-numeric", &[]).await;
    let bodies = numbered("m", 0..5);
    publish_each(&ch, &q, bodies.clone()).await;
    // Clients send small integers in whatever width fits: both widths mean the same offset.
    for offset in [AMQPValue::LongLongInt(2), AMQPValue::LongInt(2)] {
        let mut c = reader(&conn, &q, offset).await;
        assert_eq!(read(&mut c, 3).await, at_offsets(&bodies[2..], 2));
        quiet(&mut c, "nothing after the last").await;
    }
    let mut c = reader(&conn, &q, AMQPValue::LongLongInt(-1)).await;
    assert_eq!(read(&mut c, 5).await, at_offsets(&bodies, 0));
    let mut c = reader(&conn, &q, AMQPValue::LongLongInt(100)).await;
    quiet(&mut c, "nothing from beyond the end").await;
    delete(&env, &q).await;
}

/// On an empty stream, `first`, `last` and `next` all start with the first message published.
#[tokio::test]
async fn on_an_empty_stream_first_last_and_next_start_at_the_first_message() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-empty", &[]).await;
    let mut consumers = Vec::new();
    for spec in ["first", "last", "next"] {
        consumers.push(reader(&conn, &q, common::s(spec)).await);
    }
    let bodies = numbered("m", 0..3);
    publish_each(&ch, &q, bodies.clone()).await;
    for c in &mut consumers {
        assert_eq!(read(c, 3).await, at_offsets(&bodies, 0));
    }
    delete(&env, &q).await;
}

/// A consumer attached at an offset not yet written receives from there once it is published.
#[tokio::test]
async fn a_consumer_beyond_the_end_waits_for_its_offset() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-ahead", &[]).await;
    publish_each(&ch, &q, numbered("m", 0..5)).await;
    let mut c = reader(&conn, &q, AMQPValue::LongLongInt(7)).await;
    quiet(&mut c, "nothing before offset 7 is written").await;
    let later = numbered("m", 5..10);
    publish_each(&ch, &q, later.clone()).await;
    assert_eq!(read(&mut c, 3).await, at_offsets(&later[2..], 7));
    delete(&env, &q).await;
}

/// An interval string ("2s", "1h") starts at the messages published within that interval.
#[tokio::test]
async fn an_interval_starts_that_long_ago() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-interval", &[]).await;
    let old = numbered("old", 0..3);
    publish_each(&ch, &q, old.clone()).await;
    // Well past the 2 s asked for below, so a slow machine cannot blur old and new.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let new = numbered("new", 0..2);
    publish_each(&ch, &q, new.clone()).await;
    let mut recent = reader(&conn, &q, common::s("2s")).await;
    assert_eq!(read(&mut recent, 2).await, at_offsets(&new, 3));
    quiet(&mut recent, "nothing older than 2 s").await;
    let mut hour = reader(&conn, &q, common::s("1h")).await;
    let all: Vec<String> = old.into_iter().chain(new).collect();
    assert_eq!(read(&mut hour, 5).await, at_offsets(&all, 0));
    delete(&env, &q).await;
}

/// A timestamp value (seconds since the epoch) starts at the messages published from then on.
#[tokio::test]
async fn a_timestamp_starts_at_that_time() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-timestamp", &[]).await;
    publish_each(&ch, &q, numbered("old", 0..3)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    // The next whole second is after every old message and, once passed, before every new one.
    let from = now.as_secs() + 1;
    tokio::time::sleep(Duration::from_secs(from) - now + Duration::from_millis(500)).await;
    let new = numbered("new", 0..2);
    publish_each(&ch, &q, new.clone()).await;
    let mut c = reader(&conn, &q, AMQPValue::Timestamp(from)).await;
    assert_eq!(read(&mut c, 2).await, at_offsets(&new, 3));
    quiet(&mut c, "nothing from before the timestamp").await;
    delete(&env, &q).await;
}

/// Consuming needs a per-consumer prefetch: none, or only a global one, is refused on the channel.
#[tokio::test]
async fn consuming_needs_a_per_consumer_prefetch() {
    let env = Env::start().await;
    let (conn, ch) = env.channel().await;
    let q = declare_stream(&ch, "stream-prefetch", &[]).await;
    let expected = (
        406,
        format!(
            "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{q}' in vhost '/''"
        ),
    );
    let plain = conn.create_channel().await.expect("channel");
    assert_eq!(
        failure(
            plain
                .basic_consume(
                    q.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default()
                )
                .await
        ),
        expected
    );
    let global = conn.create_channel().await.expect("channel");
    global
        .basic_qos(10, BasicQosOptions { global: true })
        .await
        .expect("qos");
    assert_eq!(
        failure(
            global
                .basic_consume(
                    q.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default()
                )
                .await
        ),
        expected
    );
    assert!(conn.status().connected(), "only the channels were closed");
    delete(&env, &q).await;
}

/// A stream with one confirmed message, to misuse.
async fn stream_of_one(env: &Env, base: &str) -> String {
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, base, &[]).await;
    publish(&ch, "", &q, "m").await;
    q
}

/// RabbitMQ's text for an operation streams do not implement, which closes the connection.
fn not_implemented(what: &str, queue: &str) -> (u16, String) {
    (
        540,
        format!(
            "NOT_IMPLEMENTED - {what} not supported by stream queues queue '{queue}' in vhost '/'"
        ),
    )
}

/// A consumer without acks is refused, closing the connection with 540.
#[tokio::test]
async fn an_auto_ack_consumer_closes_the_connection_with_540() {
    let env = Env::start().await;
    let q = stream_of_one(&env, "stream-auto-ack").await;
    let (conn, ch) = env.channel().await;
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let r = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            common::no_ack(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r), not_implemented("automatic acknowledgement", &q));
    assert!(conn.create_channel().await.is_err(), "connection closed");
    delete(&env, &q).await;
}

/// basic.get of a stream closes the connection with 540.
#[tokio::test]
async fn basic_get_closes_the_connection_with_540() {
    let env = Env::start().await;
    let q = stream_of_one(&env, "stream-get").await;
    for no_ack in [false, true] {
        let (conn, ch) = env.channel().await;
        let r = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack })
            .await;
        assert_eq!(
            failure(r),
            not_implemented("basic.get", &q),
            "no-ack {no_ack}"
        );
        assert!(conn.create_channel().await.is_err(), "connection closed");
    }
    delete(&env, &q).await;
}

/// queue.purge of a stream closes the connection with 540, and removes nothing.
#[tokio::test]
async fn purge_closes_the_connection_with_540() {
    let env = Env::start().await;
    let q = stream_of_one(&env, "stream-purge").await;
    let (conn, ch) = env.channel().await;
    let r = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(failure(r), not_implemented("queue.purge", &q));
    assert!(conn.create_channel().await.is_err(), "connection closed");
    let conn = env.connect().await;
    let mut c = reader(&conn, &q, common::s("first")).await;
    assert_eq!(read(&mut c, 1).await, vec![("m".to_string(), 0)]);
    delete(&env, &q).await;
}

/// basic.reject and basic.nack of a stream delivery, requeued or not, close the connection (540).
#[tokio::test]
async fn reject_and_nack_close_the_connection_with_540() {
    let env = Env::start().await;
    let q = stream_of_one(&env, "stream-reject").await;
    for (nack, requeue) in [(false, true), (false, false), (true, true), (true, false)] {
        let conn = env.connect().await;
        let mut events = Box::pin(conn.events_listener());
        let mut c = reader(&conn, &q, common::s("first")).await;
        let d = next_delivery(&mut c).await;
        if nack {
            d.nack(BasicNackOptions {
                multiple: false,
                requeue,
            })
            .await
            .expect("sent");
        } else {
            d.reject(BasicRejectOptions { requeue })
                .await
                .expect("sent");
        }
        assert_eq!(
            refusal(&next_error(&mut events).await),
            not_implemented("basic.nack and basic.reject", &q),
            "nack {nack}, requeue {requeue}"
        );
    }
    delete(&env, &q).await;
}

/// Acks grant credit and remove nothing: without them a consumer stops at its prefetch.
#[tokio::test]
async fn acks_grant_credit_and_remove_nothing() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-credit", &[]).await;
    // One chunk each: RabbitMQ hands out a whole chunk whenever any credit is left, so only
    // single-message chunks make the prefetch an exact count.
    let bodies = numbered("m", 0..100);
    publish_each(&ch, &q, bodies.clone()).await;
    let acking_ch = conn.create_channel().await.expect("channel");
    let mut acking = consume_from(&acking_ch, &q, 10, Some(common::s("first")))
        .await
        .expect("consume");
    assert_eq!(read(&mut acking, 100).await, at_offsets(&bodies, 0));
    let holding_ch = conn.create_channel().await.expect("channel");
    let mut holding = consume_from(&holding_ch, &q, 10, Some(common::s("first")))
        .await
        .expect("consume");
    for i in 0..10 {
        assert_eq!(offset_of(&next_delivery(&mut holding).await), i);
    }
    quiet(&mut holding, "more than the prefetch without acks").await;
    // The acks above took nothing away: a new reader still finds all 100.
    let mut again = reader(&conn, &q, common::s("first")).await;
    assert_eq!(read(&mut again, 100).await, at_offsets(&bodies, 0));
    delete(&env, &q).await;
}

/// Five consumers of one stream each read all of it, in order, independently.
#[tokio::test]
async fn several_consumers_each_read_the_whole_stream() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-fan", &[]).await;
    let bodies = numbered("m", 0..30);
    publish_each(&ch, &q, bodies.clone()).await;
    let mut consumers = Vec::new();
    for _ in 0..5 {
        consumers.push(reader(&conn, &q, common::s("first")).await);
    }
    for c in &mut consumers {
        assert_eq!(read(c, 30).await, at_offsets(&bodies, 0));
    }
    delete(&env, &q).await;
}

/// A consumer at the tail receives each new message as it is published.
#[tokio::test]
async fn a_consumer_at_the_tail_follows_new_messages() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-tail", &[]).await;
    publish(&ch, "", &q, "before").await;
    let mut c = reader(&conn, &q, common::s("next")).await;
    for i in 1..=5 {
        let body = format!("live{i}");
        publish(&ch, "", &q, &body).await;
        assert_eq!(read(&mut c, 1).await, vec![(body, i)]);
    }
    delete(&env, &q).await;
}

/// A passive declare counts the confirmed messages and the consumers: Warren's counts are exact
/// at once; RabbitMQ 3.10's message count lags and it reports no consumers for a stream.
#[tokio::test]
async fn passive_declare_counts_messages_and_consumers() {
    let env = Env::start().await;
    let reference = std::env::var("WARREN_REFERENCE_URI").is_ok_and(|u| !u.is_empty());
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-counts", &[]).await;
    publish_each(&ch, &q, numbered("m", 0..5)).await;
    let mut c = reader(&conn, &q, common::s("first")).await;
    read(&mut c, 5).await;
    if reference {
        eventually_within("the passive declare counts 5 messages", STATS, || {
            let (env, q) = (&env, &q);
            async move { counts(env, q).await == Ok((5, 0)) }
        })
        .await;
    } else {
        assert_eq!(counts(&env, &q).await, Ok((5, 1)));
    }
    delete(&env, &q).await;
}

/// Messages routed through fanout and direct exchanges are appended to a bound stream.
#[tokio::test]
async fn publishes_through_exchanges_are_appended() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-routed", &[]).await;
    let fanout = common::declare_exchange(
        &ch,
        "stream-fanout",
        ExchangeKind::Fanout,
        common::auto_delete_exchange(),
        FieldTable::default(),
    )
    .await;
    let direct = common::declare_exchange(
        &ch,
        "stream-direct",
        ExchangeKind::Direct,
        common::auto_delete_exchange(),
        FieldTable::default(),
    )
    .await;
    bind(&ch, &q, &fanout, "", FieldTable::default()).await;
    bind(&ch, &q, &direct, "k", FieldTable::default()).await;
    publish(&ch, &fanout, "any", "via fanout").await;
    publish(&ch, &direct, "other", "not routed").await;
    let props = BasicProperties::default()
        .with_message_id("id-1".into())
        .with_headers(table(&[("app", common::s("h"))]));
    common::publish_props(&ch, &direct, "k", "via direct", props).await;
    let mut c = reader(&conn, &q, common::s("first")).await;
    let first = next_delivery(&mut c).await;
    assert_eq!(
        (
            common::body(&first),
            offset_of(&first),
            first.exchange.as_str()
        ),
        ("via fanout".to_string(), 0, fanout.as_str())
    );
    first.ack(BasicAckOptions::default()).await.expect("ack");
    let second = next_delivery(&mut c).await;
    assert_eq!(
        (
            common::body(&second),
            offset_of(&second),
            second.exchange.as_str(),
            second.routing_key.as_str(),
            second.properties.message_id().as_ref().map(|m| m.as_str())
        ),
        (
            "via direct".to_string(),
            1,
            direct.as_str(),
            "k",
            Some("id-1")
        )
    );
    // The offset joins the publisher's headers rather than replacing them.
    assert_eq!(
        second.properties.headers(),
        &Some(table(&[
            ("app", common::s("h")),
            ("x-stream-offset", AMQPValue::LongLongInt(1))
        ]))
    );
    second.ack(BasicAckOptions::default()).await.expect("ack");
    quiet(&mut c, "only the routed messages").await;
    delete(&env, &q).await;
}

/// Deleting a stream cancels its consumers (basic.cancel), and their channels stay open.
#[tokio::test]
async fn deleting_a_stream_cancels_its_consumers() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-deleted", &[]).await;
    publish(&ch, "", &q, "m").await;
    let consumer_ch = conn.create_channel().await.expect("channel");
    let mut c = consume_from(&consumer_ch, &q, 10, Some(common::s("first")))
        .await
        .expect("consume");
    read(&mut c, 1).await;
    delete(&env, &q).await;
    match tokio::time::timeout(common::WAIT, c.next()).await {
        Ok(None) => {}
        other => panic!("expected the consumer to be cancelled, got {other:?}"),
    }
    consumer_ch
        .basic_qos(5, BasicQosOptions::default())
        .await
        .expect("the channel is still usable");
}

// Warren only from here on.

/// Warren only: an offset spec RabbitMQ 3.10 crashes on (541) is refused on the channel with 406.
#[tokio::test]
async fn warren_only_an_unknown_offset_spec_is_refused_with_406() {
    let env = Env::warren(TestBroker::start().await);
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_stream(&ch, "stream-bogus-offset", &[]).await;
    for spec in ["bogus", "First"] {
        let ch = conn.create_channel().await.expect("channel");
        let (code, text) = failure(consume_from(&ch, &q, 10, Some(common::s(spec))).await);
        assert_eq!(code, 406, "{spec:?}: {text}");
        assert!(
            text.starts_with("PRECONDITION_FAILED - ") && text.contains("x-stream-offset"),
            "{spec:?}: {text}"
        );
    }
    assert!(conn.status().connected(), "only the channels were closed");
}

/// Warren only: an `x-max-age` RabbitMQ 3.10 crashes on (541) is refused with 406.
#[tokio::test]
async fn warren_only_a_negative_or_countless_max_age_is_refused_with_406() {
    let env = Env::warren(TestBroker::start().await);
    let q = unique("stream-bad-age");
    for age in ["-1D", "D"] {
        let (code, text) = refused(&env, &q, durable(), &[("x-max-age", common::s(age))]).await;
        assert_eq!(code, 406, "{age}: {text}");
        assert!(
            text.starts_with(&format!(
                "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{q}'"
            )),
            "{age}: {text}"
        );
    }
}

/// What a consumer from `first` reads of `queue` up to (and with) the message at `last`: its
/// offsets, which must run on by one, and the body of `last`.
async fn read_to(env: &Env, queue: &str, last: i64) -> (Vec<i64>, String) {
    let conn = env.connect().await;
    let mut c = reader(&conn, queue, common::s("first")).await;
    let mut offsets = Vec::new();
    loop {
        let d = next_delivery(&mut c).await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let o = offset_of(&d);
        if let Some(prev) = offsets.last() {
            assert_eq!(o, prev + 1, "offsets run on by one");
        }
        offsets.push(o);
        if o == last {
            let _ = conn.close(200, "bye".into()).await;
            return (offsets, common::body(&d));
        }
    }
}

/// `n` bodies of 100 bytes, numbered from `from`.
fn hundred_byte_bodies(from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("{i:0>100}")).collect()
}

/// Waits until a reader from `first` no longer starts at offset 0, and still reads `last` at
/// offset `last_offset`: retention removed the oldest segments and kept the newest message.
async fn oldest_segments_go(env: &Env, q: &str, last_offset: i64, last: &str) {
    eventually_within(
        "the oldest segments are dropped",
        RETENTION,
        || async move {
            let (offsets, body) = read_to(env, q, last_offset).await;
            assert_eq!(body, last, "the last message is kept");
            offsets[0] > 0
        },
    )
    .await;
}

/// Warren only: past `x-max-length-bytes`, whole old segments go and offsets keep their numbers.
#[tokio::test]
async fn warren_only_retention_by_size_drops_the_oldest_segments() {
    let env = Env::warren(TestBroker::start().await);
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_stream(
        &ch,
        "stream-size",
        &[
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(4096)),
            ("x-max-length-bytes", AMQPValue::LongInt(20_000)),
        ],
    )
    .await;
    // 50 kB in 4 kB segments: more than twice the 20 kB kept.
    let bodies = hundred_byte_bodies(0, 500);
    let last = bodies.last().cloned().expect("bodies");
    publish_each(&ch, &q, bodies).await;
    oldest_segments_go(&env, &q, 499, &last).await;
    eventually_within("the passive declare counts fewer", RETENTION, || {
        let (env, q) = (&env, &q);
        async move { matches!(counts(env, q).await, Ok((n, 0)) if n < 500) }
    })
    .await;
}

/// Warren only: with `x-max-age`, segments older than it go once newer ones follow.
#[tokio::test]
async fn warren_only_retention_by_age_drops_old_segments() {
    let env = Env::warren(TestBroker::start().await);
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_stream(
        &ch,
        "stream-age",
        &[
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(4096)),
            ("x-max-age", common::s("1s")),
        ],
    )
    .await;
    publish_each(&ch, &q, hundred_byte_bodies(0, 100)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // More than a segment of new messages, so that the old ones all sit in closed segments.
    let new = hundred_byte_bodies(100, 60);
    let last = new.last().cloned().expect("bodies");
    publish_each(&ch, &q, new).await;
    oldest_segments_go(&env, &q, 159, &last).await;
}

/// Warren only: a stream's confirmed messages survive kill -9, and its offsets carry on after them.
#[tokio::test]
async fn warren_only_a_stream_survives_kill_9_and_its_offsets_carry_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let broker = start(dir.path(), port).await;
    let q = unique("stream-kill");
    {
        let conn = broker.connect().await;
        let ch = common::confirm_channel(&conn).await;
        ch.queue_declare(q.as_str().into(), durable(), stream_args(&[]))
            .await
            .expect("queue.declare of a stream");
        // Transient and in flight 20 at a time: a stream keeps every message it confirmed, however
        // the writes were grouped.
        common::publish_numbered(&ch, &q, 200, false, 20).await;
    }
    broker.kill9();
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let mut c = reader(&conn, &q, common::s("first")).await;
    let bodies = numbered_bodies(200);
    assert_eq!(read(&mut c, 200).await, at_offsets(&bodies, 0));
    let ch = common::confirm_channel(&conn).await;
    let more = numbered("after", 0..10);
    publish_each(&ch, &q, more.clone()).await;
    assert_eq!(read(&mut c, 10).await, at_offsets(&more, 200));
}

/// Warren only: a policy's `max-length-bytes` and `stream-max-segment-size-bytes` bound a stream
/// declared without them, and the management API shows the stream's offsets, files and what
/// retention removed.
#[tokio::test]
async fn warren_only_a_policy_bounds_a_stream_and_the_api_shows_what_went() {
    let b = TestBroker::start().await;
    let policy = r#"{"pattern":"^stream-policy","apply-to":"queues",
        "definition":{"max-length-bytes":20000,"stream-max-segment-size-bytes":4096}}"#;
    let (status, body) =
        common::http::request(&b, "PUT", "/api/policies/%2f/stream-retention", policy).await;
    assert_eq!(status, 201, "{body}");
    let conn = b.connect().await;
    let ch = common::confirm_channel(&conn).await;
    let q = declare_stream(&ch, "stream-policy", &[]).await;
    publish_each(&ch, &q, hundred_byte_bodies(0, 500)).await;
    let path = format!("/api/queues/%2f/{q}");
    eventually_within(
        "the policy's retention removes old segments",
        RETENTION,
        || {
            let (b, path) = (&b, &path);
            async move {
                let json = common::http::get_json(b, path).await;
                json["first_offset"].as_u64().is_some_and(|f| f > 0)
            }
        },
    )
    .await;
    let json = common::http::get_json(&b, &path).await;
    let first = json["first_offset"].as_u64().expect("first_offset");
    assert_eq!(json["type"], "stream");
    assert_eq!(json["policy"], "stream-retention");
    assert_eq!(json["last_offset"], 499);
    assert_eq!(json["retention_removed_messages"], first);
    assert_eq!(json["messages"], 500 - first);
    assert!(
        json["stream_bytes"].as_u64().is_some_and(|n| n <= 20_000),
        "kept under the policy's size: {json}"
    );
    assert!(json["segments"].as_u64().is_some_and(|n| n > 1), "{json}");
}
