//! The steps a client script takes: names, arguments, declares, publishes, gets, and polls for
//! what the broker finishes after it has answered.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind, PublisherConfirm};

use super::{Env, WAIT, connect, reply_code};

// Names and arguments.

/// A name no other test (or earlier run against a shared reference broker) uses.
pub fn unique(base: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{base}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// No arguments.
pub fn no_args() -> FieldTable {
    FieldTable::default()
}

/// A field table of `entries`, for arguments or headers.
pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// A string argument or header value.
pub fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

// Exchanges.

/// `exchange.declare` of an exchange that goes with its last binding.
pub fn auto_delete_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    }
}

/// Declares an exchange with a [`unique`] name made from `base`, and returns the name.
pub async fn declare_exchange(
    ch: &Channel,
    base: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    args: FieldTable,
) -> String {
    let name = unique(base);
    ch.exchange_declare(name.as_str().into(), kind, options, args)
        .await
        .expect("exchange.declare");
    name
}

// Queues.

/// `queue.declare` of a queue only this connection may use, and that goes with it.
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// `queue.declare` of an exclusive queue the broker names (`amq.gen-…`).
pub async fn declare_exclusive(ch: &Channel) -> lapin::Result<lapin::Queue> {
    ch.queue_declare("".into(), exclusive(), no_args()).await
}

/// `queue.declare` of a queue that goes with its last consumer.
pub fn auto_delete() -> QueueDeclareOptions {
    QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    }
}

/// Declares an auto-delete queue with a [`unique`] name made from `base`, and returns the name.
pub async fn declare_queue(ch: &Channel, base: &str) -> String {
    declare_queue_with(ch, base, auto_delete()).await
}

/// Declares a queue with a [`unique`] name made from `base`, and returns the name.
pub async fn declare_queue_with(ch: &Channel, base: &str, options: QueueDeclareOptions) -> String {
    let name = unique(base);
    ch.queue_declare(name.as_str().into(), options, no_args())
        .await
        .expect("queue.declare");
    name
}

/// Binds `queue` to `exchange` with `key` and `args`.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .expect("queue.bind");
}

/// `queue.declare` that only asks whether the queue is there.
pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// The passive declare's answer: (ready messages, consumers), or the reply code if refused.
/// Asked on a connection of its own, so a refusal closes nothing the test uses.
pub async fn counts(env: &Env, queue: &str) -> Result<(u32, u32), u16> {
    let conn = env.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let r = ch.queue_declare(queue.into(), passive(), no_args()).await;
    let _ = conn.close(200, "OK".into()).await;
    match r {
        Ok(q) => Ok((q.message_count(), q.consumer_count())),
        Err(e) => Err(reply_code(&e).unwrap_or(0)),
    }
}

// Publishing.

/// `basic.publish` with default options and properties, without waiting for the broker: the
/// confirm it returns is only answered on a confirm channel.
pub async fn basic_publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: impl AsRef<[u8]>,
) -> PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_ref(),
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish")
}

/// Publishes on a confirm channel and returns the broker's confirmation: by then the broker has
/// routed the message.
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: impl AsRef<[u8]>,
    mandatory: bool,
    properties: BasicProperties,
) -> Confirmation {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory,
            ..Default::default()
        },
        body.as_ref(),
        properties,
    )
    .await
    .expect("basic.publish")
    .await
    .expect("confirm")
}

/// Publishes on a confirm channel and waits for the broker's ack.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: impl AsRef<[u8]>) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await;
}

/// Publishes with `properties` on a confirm channel and waits for the broker's ack.
pub async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: impl AsRef<[u8]>,
    properties: BasicProperties,
) {
    let c = publish_with(ch, exchange, key, body, false, properties).await;
    assert!(c.is_ack(), "{c:?}");
}

// Consuming and getting.

/// `basic.consume` whose deliveries need no ack.
pub fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

/// `basic.consume` of `queue` as `tag` ("" lets the broker name the consumer).
pub async fn basic_consume(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> lapin::Result<Consumer> {
    ch.basic_consume(queue.into(), tag.into(), options, no_args())
        .await
}

/// Sets `prefetch` on `ch` and consumes `queue` as `tag`, with acks.
pub async fn consume_prefetched(ch: &Channel, queue: &str, tag: &str, prefetch: u16) -> Consumer {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    basic_consume(ch, queue, tag, BasicConsumeOptions::default())
        .await
        .expect("consume")
}

/// A delivery's body as text.
pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// Every ready message of a queue, in order, taken with `basic.get` (no-ack).
pub async fn get_all(ch: &Channel, queue: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m.delivery);
    }
    out
}

/// Every ready message body of a queue, in order, taken with `basic.get`.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    get_all(ch, queue).await.iter().map(body).collect()
}

/// Takes the next ready message with `basic.get`, for the client to settle later.
pub async fn get_unacked(ch: &Channel, queue: &str) -> Delivery {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("a message")
        .delivery
}

/// `basic.get` until a message comes, for up to 5 s: a publish without confirms may still be on
/// its way to the queue.
pub async fn get_soon(
    ch: &Channel,
    queue: &str,
    options: BasicGetOptions,
) -> Option<BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = ch
            .basic_get(queue.into(), options)
            .await
            .expect("basic.get");
        if got.is_some() || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Waiting for the broker.

/// The next error the connection reports (a channel or connection close), within 5 s.
pub async fn next_error(
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> lapin::Error {
    use futures::StreamExt;
    tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return e;
            }
        }
        panic!("the connection's events ended without an error");
    })
    .await
    .expect("an error within 5 s")
}

/// Polls until `check` holds: for effects the broker completes after answering the client
/// (RabbitMQ finishes some of them before `close-ok`; Warren may finish just after).
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, WAIT, check).await;
}

/// Polls until `check` holds, for at most `limit`: for effects that take a slow build longer.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A well-behaved client is still served at `uri`: it declares a queue, publishes to it and gets
/// its message back. Returns how closing its connection went.
pub async fn assert_served(uri: &str) -> lapin::Result<()> {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.expect("channel");
    assert_channel_served(&ch).await;
    conn.close(200, "bye".into()).await
}

/// A channel already open is still served: it declares a queue, publishes to it and gets its
/// message back.
pub async fn assert_channel_served(ch: &Channel) {
    let q = declare_exclusive(ch).await.expect("declare");
    basic_publish(ch, "", q.name().as_str(), b"still served").await;
    let got = get_soon(ch, q.name().as_str(), BasicGetOptions { no_ack: true }).await;
    assert_eq!(got.map(|m| m.delivery.data), Some(b"still served".to_vec()));
}

/// The size of [`numbered_body`]'s bodies.
pub const NUMBERED_BODY: usize = 1024;

/// Body number `i` of a numbered backlog: its number, padded to [`NUMBERED_BODY`] bytes.
pub fn numbered_body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(NUMBERED_BODY, b'.');
    b
}

/// Publishes `n` numbered bodies to `queue` on a confirm channel, waiting for the confirms
/// `in_flight` publishes at a time; each must be acked.
pub async fn publish_numbered(
    ch: &Channel,
    queue: &str,
    n: usize,
    persistent: bool,
    in_flight: usize,
) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    for start in (0..n).step_by(in_flight) {
        let mut confirms = Vec::new();
        for i in start..(start + in_flight).min(n) {
            let c = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &numbered_body(i),
                    props.clone(),
                )
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack(), "publish nacked");
        }
    }
}
