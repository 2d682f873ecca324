//! The steps a client script takes: names, arguments, declares, publishes, gets, and polls for
//! what the broker finishes after it has answered.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::{Env, WAIT, connect, reply_code};

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

pub fn no_args() -> FieldTable {
    FieldTable::default()
}

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

/// `queue.declare` of a queue that goes with its last consumer.
pub fn auto_delete() -> QueueDeclareOptions {
    QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    }
}

/// `queue.declare` of a queue only this connection may use, and that goes with it.
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// `queue.declare` that only asks whether the queue is there.
pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
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

/// A well-behaved client is still served at `uri`: it declares a queue, publishes to it and gets
/// its message back. Returns its connection, still open.
pub async fn assert_served(uri: &str) -> Connection {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare("".into(), exclusive(), no_args())
        .await
        .expect("declare");
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"still served",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let got = get_soon(&ch, q.name().as_str(), BasicGetOptions { no_ack: true }).await;
    assert_eq!(got.map(|m| m.delivery.data), Some(b"still served".to_vec()));
    conn
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

/// Polls until `check` holds: for effects the broker completes after answering the client
/// (RabbitMQ finishes some of them before `close-ok`; Warren may finish just after).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
