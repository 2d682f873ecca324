//! The `x-delayed-message` exchange type (RabbitMQ's delayed-message-exchange plugin): held
//! messages are routed by their exchange's `x-delayed-type` once their `x-delay` has passed, never
//! before, in due order, across a `kill -9`; declares without a routing type and delays past the
//! supported bound are refused with 406.
//!
//! The reference broker does not ship the plugin, so these run against Warren only.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::{free_port, start};
use common::{TestBroker, WAIT, next_delivery, refusal};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

const DELAYED: &str = "x-delayed-message";

fn delayed_kind() -> ExchangeKind {
    ExchangeKind::Custom(DELAYED.into())
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// `x-delayed-type` naming `kind`.
fn routing_type(kind: &str) -> FieldTable {
    args(&[(
        "x-delayed-type",
        AMQPValue::LongString(LongString::from(kind)),
    )])
}

/// Properties with an `x-delay` header, as the plugin's README sends it.
fn delay(ms: i64) -> BasicProperties {
    let value = match i32::try_from(ms) {
        Ok(n) => AMQPValue::LongInt(n),
        Err(_) => AMQPValue::LongLongInt(ms),
    };
    BasicProperties::default().with_headers(args(&[("x-delay", value)]))
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

async fn declare_delayed(ch: &Channel, name: &str, kind: &str, durable: bool) {
    ch.exchange_declare(
        name.into(),
        delayed_kind(),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        routing_type(kind),
    )
    .await
    .expect("exchange.declare of a delayed exchange");
}

async fn queue(ch: &Channel, name: &str, durable: bool) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

async fn consume(ch: &Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

/// Publishes on a confirm channel and waits for the ack; returns when the publish started, which
/// the delay is measured from.
async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> Instant {
    let started = Instant::now();
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .expect("basic.publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{confirm:?}");
    assert!(confirm.take_message().is_none(), "nothing is returned");
    started
}

async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

fn assert_not_early(published: Instant, delay_ms: u64, what: &str) {
    let waited = published.elapsed();
    assert!(
        waited >= Duration::from_millis(delay_ms),
        "{what} arrived after {waited:?}, before its delay of {delay_ms} ms"
    );
}

#[tokio::test]
async fn a_direct_delayed_exchange_routes_by_key_once_the_delay_has_passed() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later", "direct", false).await;
    for (q, key) in [("hit", "k"), ("miss", "other")] {
        queue(&ch, q, false).await;
        bind(&ch, q, "later", key).await;
    }
    let mut hits = consume(&ch, "hit").await;
    let published = publish(&ch, "later", "k", "delayed", delay(200)).await;
    let d = next_delivery(&mut hits).await;
    assert_not_early(published, 200, "the delayed message");
    assert_eq!(d.data, b"delayed");
    assert_eq!(d.exchange.as_str(), "later");
    assert_eq!(d.routing_key.as_str(), "k");
    // As the plugin does: the delay comes back negated, so nothing delays the message again.
    let headers = d.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        headers.inner().get("x-delay"),
        Some(&AMQPValue::LongLongInt(-200))
    );
    assert_eq!(ready(&ch, "miss").await, 0, "the direct rules still apply");
    // Without x-delay (or with 0) it routes at once, as a direct exchange would.
    publish(&ch, "later", "k", "now", BasicProperties::default()).await;
    assert_eq!(next_delivery(&mut hits).await.data, b"now");
    publish(&ch, "later", "k", "zero", delay(0)).await;
    assert_eq!(next_delivery(&mut hits).await.data, b"zero");
    assert_eq!(ready(&ch, "miss").await, 0);
}

#[tokio::test]
async fn a_topic_delayed_exchange_routes_by_pattern_over_the_bindings_it_has_when_due() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later-topic", "topic", false).await;
    queue(&ch, "stars", false).await;
    queue(&ch, "zeds", false).await;
    bind(&ch, "stars", "later-topic", "a.*").await;
    let mut stars = consume(&ch, "stars").await;
    let mut zeds = consume(&ch, "zeds").await;
    let p1 = publish(&ch, "later-topic", "a.b", "ab", delay(150)).await;
    // Bound after the publish, before the delay has passed: routing happens when due.
    let p2 = publish(&ch, "later-topic", "x.y.z", "xyz", delay(300)).await;
    bind(&ch, "zeds", "later-topic", "#.z").await;
    assert_eq!(next_delivery(&mut stars).await.data, b"ab");
    assert_not_early(p1, 150, "a.b");
    assert_eq!(next_delivery(&mut zeds).await.data, b"xyz");
    assert_not_early(p2, 300, "x.y.z");
    assert_eq!(ready(&ch, "stars").await, 0);
}

#[tokio::test]
async fn no_delayed_message_arrives_before_its_delay() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later-fanout", "fanout", false).await;
    queue(&ch, "all", false).await;
    bind(&ch, "all", "later-fanout", "").await;
    let mut all = consume(&ch, "all").await;
    let delays = [1u64, 7, 30, 64, 120, 250, 333];
    let mut published = HashMap::new();
    for ms in delays {
        let body = ms.to_string();
        let at = publish(
            &ch,
            "later-fanout",
            "",
            &body,
            delay(i64::try_from(ms).unwrap_or(0)),
        )
        .await;
        published.insert(body, (at, ms));
    }
    for _ in delays {
        let d = next_delivery(&mut all).await;
        let body = String::from_utf8_lossy(&d.data).into_owned();
        let (at, ms) = published[&body];
        assert_not_early(at, ms, &format!("the message delayed {ms} ms"));
    }
}

#[tokio::test]
async fn messages_arrive_in_due_order_not_publish_order() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later-order", "direct", false).await;
    queue(&ch, "ordered", false).await;
    bind(&ch, "ordered", "later-order", "k").await;
    let mut ordered = consume(&ch, "ordered").await;
    let slow = publish(&ch, "later-order", "k", "more delayed payload", delay(400)).await;
    let fast = publish(&ch, "later-order", "k", "delayed payload", delay(100)).await;
    assert_eq!(next_delivery(&mut ordered).await.data, b"delayed payload");
    assert_not_early(fast, 100, "the shorter delay");
    assert_eq!(
        next_delivery(&mut ordered).await.data,
        b"more delayed payload"
    );
    assert_not_early(slow, 400, "the longer delay");
}

#[tokio::test]
async fn a_mandatory_delayed_publish_is_not_returned() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later-nowhere", "direct", false).await;
    for props in [delay(50), delay(50).with_delivery_mode(2)] {
        let confirm = ch
            .basic_publish(
                "later-nowhere".into(),
                "k".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"held",
                props,
            )
            .await
            .expect("basic.publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        assert!(
            confirm.take_message().is_none(),
            "its route is not known when it is published"
        );
    }
    // Without a delay the direct rules apply at once, mandatory included.
    let confirm = ch
        .basic_publish(
            "later-nowhere".into(),
            "k".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish")
        .await
        .expect("confirm");
    assert!(confirm.take_message().is_some(), "unroutable now: returned");
}

#[tokio::test]
async fn declaring_without_x_delayed_type_is_406() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let cases = [
        (
            FieldTable::default(),
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ),
        (
            args(&[("x-delayed-type", AMQPValue::LongInt(1))]),
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ),
        (
            routing_type(DELAYED),
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        ),
    ];
    for (arguments, text) in cases {
        let ch = conn.create_channel().await.expect("channel");
        let r = ch
            .exchange_declare(
                "untyped".into(),
                delayed_kind(),
                ExchangeDeclareOptions::default(),
                arguments,
            )
            .await;
        assert_eq!(refusal(&r.expect_err("refused")), (406, text.to_string()));
    }
    assert!(
        conn.status().connected(),
        "a channel error, not a connection error"
    );
    let ch = conn.create_channel().await.expect("channel");
    let gone = ch
        .exchange_declare(
            "untyped".into(),
            delayed_kind(),
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(refusal(&gone.expect_err("not declared")).0, 404);
    // Declared properly, it compares as its own type on a redeclare.
    let ch = conn.create_channel().await.expect("channel");
    declare_delayed(&ch, "typed", "headers", false).await;
    declare_delayed(&ch, "typed", "headers", false).await;
    let r = ch
        .exchange_declare(
            "typed".into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        refusal(&r.expect_err("inequivalent")),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'typed' in vhost '/': received 'headers' but current is 'x-delayed-message'".to_string()
        )
    );
}

#[tokio::test]
async fn a_delay_past_the_supported_bound_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later-far", "direct", false).await;
    queue(&ch, "far", false).await;
    bind(&ch, "far", "later-far", "k").await;
    // The longest supported delay (2^32-1 ms) is held...
    publish(&ch, "later-far", "k", "max", delay(4_294_967_295)).await;
    assert_eq!(
        ready(&ch, "far").await,
        0,
        "held, not wrapped to a short delay"
    );
    // ...one more millisecond is refused rather than wrapped around at 32 bits.
    let r = ch
        .basic_publish(
            "later-far".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"too far",
            delay(4_294_967_296),
        )
        .await
        .expect("basic.publish");
    let r = tokio::time::timeout(WAIT, r).await.expect("answered");
    assert_eq!(
        refusal(&r.expect_err("refused")),
        (
            406,
            "PRECONDITION_FAILED - Invalid header 'x-delay': 4294967296 ms is longer than the maximum delay of 4294967295 ms (about 49.7 days)".to_string()
        )
    );
    assert!(conn.status().connected(), "only the channel closes");
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(
        ready(&ch, "far").await,
        0,
        "the refused message went nowhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_delayed_message_survives_kill_9_and_arrives_when_due() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "durable-later", "direct", true).await;
    queue(&ch, "durable-due", true).await;
    bind(&ch, "durable-due", "durable-later", "k").await;
    let persistent = |ms| delay(ms).with_delivery_mode(2);
    // The confirm comes once the hold is on disk.
    let second = publish(&ch, "durable-later", "k", "second", persistent(2_500)).await;
    let first = publish(&ch, "durable-later", "k", "first", persistent(1_500)).await;
    assert_eq!(ready(&ch, "durable-due").await, 0, "both held");
    broker.kill9();

    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    // The exchange came back as a delayed one.
    declare_delayed(&ch, "durable-later", "direct", true).await;
    // Acked, so the queue's stored copies go too.
    let mut due = ch
        .basic_consume(
            "durable-due".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let d = next_delivery(&mut due).await;
    assert_eq!(d.data, b"first");
    assert_not_early(first, 1_500, "the first held message");
    assert_eq!(d.properties.delivery_mode(), &Some(2));
    assert!(!d.redelivered);
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let d = next_delivery(&mut due).await;
    assert_eq!(d.data, b"second");
    assert_not_early(second, 2_500, "the second held message");
    d.ack(BasicAckOptions::default()).await.expect("ack");
    // A persistent publish's confirm comes after a flush, which covers every store write before
    // it: the holds' removal among them.
    queue(&ch, "flush-marker", true).await;
    publish(&ch, "", "flush-marker", "m", persistent(0)).await;
    broker.kill9();

    // Routed and forgotten: had a hold come back, it would be due at start, before this one.
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let mut due = consume(&ch, "durable-due").await;
    publish(&ch, "durable-later", "k", "after", persistent(1)).await;
    assert_eq!(next_delivery(&mut due).await.data, b"after");
    broker.kill9();
}
