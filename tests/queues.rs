//! Queues: declare (passive, durable, exclusive, auto-delete, server-named, counts), bind and
//! unbind with arguments, purge, delete with its conditions, and the "last declared queue"
//! shortcut.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestBroker, next_delivery, reply_code, reply_text};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The broker under test: Warren in-process, or the reference named by `WARREN_REFERENCE_URI`.
struct Env {
    _broker: Option<TestBroker>,
    uri: String,
}

impl Env {
    async fn start() -> Self {
        match std::env::var("WARREN_REFERENCE_URI") {
            Ok(uri) => Self { _broker: None, uri },
            Err(_) => {
                let broker = TestBroker::start().await;
                let uri = broker.uri();
                Self {
                    _broker: Some(broker),
                    uri,
                }
            }
        }
    }

    async fn connect(&self) -> Connection {
        Connection::connect(&self.uri, ConnectionProperties::default())
            .await
            .expect("connect")
    }

    /// A connection and a channel in confirm mode, so a publish's confirm means it was routed.
    async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = confirmed(&conn).await;
        (conn, ch)
    }
}

async fn confirmed(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

/// A name no other test (or earlier run against a shared reference broker) uses.
fn unique(base: &str) -> String {
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

fn no_args() -> FieldTable {
    FieldTable::default()
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// The reply code and text a failed call carried.
fn failure<T: std::fmt::Debug>(r: Result<T, lapin::Error>) -> (u16, String) {
    let e = r.expect_err("the broker refuses");
    (
        reply_code(&e).unwrap_or_else(|| panic!("no reply code in {e:?}")),
        reply_text(&e).unwrap_or_default(),
    )
}

fn auto_delete() -> QueueDeclareOptions {
    QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Publishes and waits for the confirm: by then the broker has routed the message.
async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await;
}

async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    properties: BasicProperties,
) {
    let c = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
        .expect("basic.publish")
        .await
        .expect("confirm");
    assert!(c.is_ack(), "{c:?}");
}

/// Every ready message body of a queue, in order, taken with `basic.get`.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// The passive declare's answer: (messages, consumers), or the reply code if refused.
async fn counts(env: &Env, queue: &str) -> Result<(u32, u32), u16> {
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
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let env = Env::start().await;
    let (conn, ch) = env.channel().await;
    let q = unique("missing");
    let r = ch
        .queue_declare(q.as_str().into(), passive(), no_args())
        .await;
    assert_eq!(
        failure(r),
        (404, format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
    );
    // A soft error: the connection carries on.
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(
        failure(r),
        (404, format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
    );
}

#[tokio::test]
async fn declare_ok_reports_ready_messages_and_consumers() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("counts");
    let declared = ch
        .queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    assert_eq!(declared.name().as_str(), q);
    assert_eq!(
        (declared.message_count(), declared.consumer_count()),
        (0, 0)
    );
    for i in 0..3 {
        publish(&ch, "", &q, &i.to_string()).await;
    }
    let (_c2, consumer_ch) = env.channel().await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consumer_ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"0");
    // The unacked delivery is not counted as ready.
    let again = ch
        .queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("redeclare");
    assert_eq!((again.message_count(), again.consumer_count()), (2, 1));
    assert_eq!(counts(&env, &q).await, Ok((2, 1)));
}

#[tokio::test]
async fn server_named_queues_get_amq_gen_names() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let mut names = Vec::new();
    for _ in 0..2 {
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .expect("declare");
        let name = q.name().to_string();
        assert!(name.starts_with("amq.gen-"), "{name}");
        assert!(name.len() > "amq.gen-".len() + 8, "{name}");
        ch.queue_declare(name.as_str().into(), passive(), no_args())
            .await
            .expect("the generated name is usable");
        names.push(name);
    }
    assert_ne!(names[0], names[1]);

    let r = ch
        .queue_declare(unique("amq.mine").as_str().into(), auto_delete(), no_args())
        .await;
    let (code, text) = failure(r);
    assert_eq!(code, 403);
    assert!(
        text.starts_with("ACCESS_REFUSED - queue name 'amq.mine-"),
        "{text}"
    );
    assert!(
        text.ends_with("' contains reserved prefix 'amq.*'"),
        "{text}"
    );
}

#[tokio::test]
async fn redeclare_must_be_equivalent() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let q = unique("equiv");
    let args = table(&[("x-message-ttl", AMQPValue::LongInt(60_000))]);
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let ch = confirmed(&conn).await;
    ch.queue_declare(q.as_str().into(), options, args.clone())
        .await
        .expect("declare");
    // Same value in another integer width, plus arguments RabbitMQ does not compare: fine.
    ch.queue_declare(
        q.as_str().into(),
        options,
        table(&[
            ("x-message-ttl", AMQPValue::LongLongInt(60_000)),
            ("x-custom", s("ignored")),
        ]),
    )
    .await
    .expect("equivalent redeclare");

    let text = |arg: &str, received: &str, current: &str| {
        format!(
            "PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': received {received} but current is {current}"
        )
    };
    let cases = [
        (
            QueueDeclareOptions::default(),
            args.clone(),
            text("durable", "'false'", "'true'"),
        ),
        (
            QueueDeclareOptions {
                auto_delete: true,
                ..options
            },
            args.clone(),
            text("auto_delete", "'true'", "'false'"),
        ),
        (
            options,
            table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
            text("x-message-ttl", "'1000'", "'60000'"),
        ),
        (
            options,
            no_args(),
            text(
                "x-message-ttl",
                "none",
                "the value '60000' of type 'signedint'",
            ),
        ),
        (
            options,
            table(&[
                ("x-message-ttl", AMQPValue::LongInt(60_000)),
                ("x-max-length", AMQPValue::LongLongInt(10)),
            ]),
            text("x-max-length", "the value '10' of type 'long'", "none"),
        ),
    ];
    for (opts, args, want) in cases {
        let ch = confirmed(&conn).await;
        let r = ch.queue_declare(q.as_str().into(), opts, args).await;
        assert_eq!(failure(r), (406, want));
    }
    let ch = confirmed(&conn).await;
    let r = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..options
            },
            args.clone(),
        )
        .await;
    assert_eq!(failure(r).0, 405, "exclusive is checked as ownership");
    // Ownership is checked before durable.
    let ch = confirmed(&conn).await;
    let r = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args.clone(),
        )
        .await;
    assert_eq!(failure(r).0, 405);
    let ch = confirmed(&conn).await;
    assert_eq!(
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete"),
        0
    );
}

#[tokio::test]
async fn durable_and_auto_delete_flags_are_kept() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("flags");
    let flags = QueueDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(q.as_str().into(), flags, no_args())
        .await
        .expect("declare");
    // Passive declare ignores the flags it is sent.
    ch.queue_declare(q.as_str().into(), passive(), no_args())
        .await
        .expect("passive");
    ch.queue_declare(q.as_str().into(), flags, no_args())
        .await
        .expect("same flags");
    let r = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: false,
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert_eq!(failure(r).0, 406);
    let (_c, ch) = env.channel().await;
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_dies_with_it() {
    let env = Env::start().await;
    let (owner, ch) = env.channel().await;
    let q = unique("exclusive");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(q.as_str().into(), exclusive, no_args())
        .await
        .expect("declare");
    publish(&ch, "", &q, "mine").await;
    // Another channel of the owning connection may use it.
    let ch2 = confirmed(&owner).await;
    ch2.queue_declare(q.as_str().into(), exclusive, no_args())
        .await
        .expect("the owner redeclares");
    ch2.queue_declare(q.as_str().into(), passive(), no_args())
        .await
        .expect("the owner declares passively");

    let locked = format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    );
    let other = env.connect().await;
    let ch = confirmed(&other).await;
    let r = ch
        .queue_declare(q.as_str().into(), passive(), no_args())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirmed(&other).await;
    let r = ch
        .queue_declare(q.as_str().into(), exclusive, no_args())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirmed(&other).await;
    let r = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirmed(&other).await;
    let r = ch
        .basic_get(q.as_str().into(), BasicGetOptions::default())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirmed(&other).await;
    let r = ch
        .queue_bind(
            q.as_str().into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirmed(&other).await;
    let r = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirmed(&other).await;
    let r = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert_eq!(failure(r), (405, locked));
    // Publishing to it through the default exchange is allowed.
    let ch = confirmed(&other).await;
    publish(&ch, "", &q, "from another connection").await;
    assert_eq!(drain(&ch2, &q).await, ["mine", "from another connection"]);

    owner.close(200, "OK".into()).await.expect("close");
    eventually("the exclusive queue goes with its connection", || async {
        counts(&env, &q).await == Err(404)
    })
    .await;
    // And the name is free for anyone now.
    let ch = confirmed(&other).await;
    ch.queue_declare(q.as_str().into(), exclusive, no_args())
        .await
        .expect("declare again");
}

#[tokio::test]
async fn exclusive_queue_goes_when_its_connection_drops_without_closing() {
    let env = Env::start().await;
    let q = unique("exclusive-drop");
    {
        let (owner, ch) = env.channel().await;
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("declare");
        assert_eq!(counts(&env, &q).await, Err(405));
        drop(ch);
        drop(owner);
    }
    eventually("the exclusive queue goes with its socket", || async {
        counts(&env, &q).await == Err(404)
    })
    .await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer_only() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("auto");
    ch.queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    publish(&ch, "", &q, "waiting").await;
    // No consumer yet: the queue stays, even across channels closing.
    let (c2, ch2) = env.channel().await;
    ch2.close(200, "OK".into()).await.expect("close");
    drop(c2);
    assert_eq!(counts(&env, &q).await, Ok((1, 0)));

    let a = ch
        .basic_consume(
            q.as_str().into(),
            "a".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume a");
    let b = ch
        .basic_consume(
            q.as_str().into(),
            "b".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume b");
    ch.basic_cancel(a.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel a");
    assert_eq!(counts(&env, &q).await.map(|c| c.1), Ok(1));
    ch.basic_cancel(b.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel b");
    assert_eq!(counts(&env, &q).await, Err(404));
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_consumers_channel_closes() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("auto-close");
    ch.queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    let (_c2, ch2) = env.channel().await;
    ch2.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        no_args(),
    )
    .await
    .expect("consume");
    ch2.close(200, "OK".into()).await.expect("close");
    assert_eq!(counts(&env, &q).await, Err(404));
}

#[tokio::test]
async fn bind_and_unbind_match_on_arguments() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let x = unique("bind-args");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Headers,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("exchange");
    let q = unique("bind-args");
    ch.queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    let red = table(&[("colour", s("red"))]);
    let blue = table(&[("colour", s("blue"))]);
    for args in [&red, &blue] {
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            args.clone(),
        )
        .await
        .expect("bind");
    }
    let send = |colour: &'static str| {
        let ch = ch.clone();
        let x = x.clone();
        async move {
            let props = BasicProperties::default().with_headers(table(&[("colour", s(colour))]));
            publish_props(&ch, &x, "", colour, props).await;
        }
    };
    send("red").await;
    send("blue").await;
    assert_eq!(drain(&ch, &q).await, ["red", "blue"]);

    // Unbinding needs the same arguments: other arguments remove nothing.
    ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        table(&[("colour", s("green"))]),
    )
    .await
    .expect("unbind of nothing");
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "".into(), red)
        .await
        .expect("unbind red");
    send("red").await;
    send("blue").await;
    assert_eq!(drain(&ch, &q).await, ["blue"]);
}

#[tokio::test]
async fn bind_with_different_keys_and_unbind_one() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("keys");
    ch.queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    for key in ["a", "b"] {
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            format!("{q}.{key}").as_str().into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .expect("bind");
    }
    ch.queue_unbind(
        q.as_str().into(),
        "amq.direct".into(),
        format!("{q}.a").as_str().into(),
        no_args(),
    )
    .await
    .expect("unbind");
    publish(&ch, "amq.direct", &format!("{q}.a"), "a").await;
    publish(&ch, "amq.direct", &format!("{q}.b"), "b").await;
    assert_eq!(drain(&ch, &q).await, ["b"]);

    let missing = unique("missing");
    let r = ch
        .queue_bind(
            missing.as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(
        failure(r),
        (
            404,
            format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
        )
    );
}

#[tokio::test]
async fn purge_drops_ready_messages_and_returns_the_count() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("purge");
    ch.queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    for i in 0..5 {
        publish(&ch, "", &q, &i.to_string()).await;
    }
    let (c2, holder) = env.channel().await;
    let held = holder
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(held.delivery.data, b"0");
    let purged = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, 4, "the unacked message is not purged");
    assert_eq!(
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge again"),
        0
    );
    publish(&ch, "", &q, "after").await;
    // The unacked one comes back when its channel closes.
    c2.close(200, "OK".into()).await.expect("close");
    eventually("the unacked message is requeued", || async {
        counts(&env, &q).await == Ok((2, 0))
    })
    .await;
    assert_eq!(drain(&ch, &q).await, ["0", "after"]);
}

#[tokio::test]
async fn delete_checks_if_unused_and_if_empty_and_returns_the_count() {
    let env = Env::start().await;
    let (conn, ch) = env.channel().await;
    let q = unique("delete");
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), no_args())
        .await
        .expect("declare");
    for i in 0..3 {
        publish(&ch, "", &q, &i.to_string()).await;
    }
    let r = ch
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        failure(r),
        (
            406,
            format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
        )
    );

    let consumer_ch = confirmed(&conn).await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consumer_ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume");
    let _unacked = next_delivery(&mut consumer).await;
    let ch = confirmed(&conn).await;
    let r = ch
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        failure(r),
        (
            406,
            format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
        )
    );
    let ch = confirmed(&conn).await;
    let count = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(count, 2, "ready messages only");
    assert_eq!(counts(&env, &q).await, Err(404));
    // Deleting what is not there succeeds with 0.
    assert_eq!(
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete again"),
        0
    );

    let empty = unique("delete-empty");
    ch.queue_declare(empty.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    let count = ch
        .queue_delete(
            empty.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect("delete an empty unused queue");
    assert_eq!(count, 0);
}

#[tokio::test]
async fn deleting_a_queue_removes_its_bindings() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("rebind");
    for round in 0..2 {
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), no_args())
            .await
            .expect("declare");
        if round == 0 {
            ch.queue_bind(
                q.as_str().into(),
                "amq.direct".into(),
                q.as_str().into(),
                QueueBindOptions::default(),
                no_args(),
            )
            .await
            .expect("bind");
            publish(&ch, "amq.direct", &q, "bound").await;
            assert_eq!(drain(&ch, &q).await, ["bound"]);
        } else {
            publish(&ch, "amq.direct", &q, "not bound any more").await;
            assert_eq!(drain(&ch, &q).await, Vec::<String>::new());
        }
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
    }
}

#[tokio::test]
async fn empty_queue_name_means_the_last_declared_queue() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("declare");
    let name = q.name().to_string();
    // Empty queue and key: bind the last queue with its own name as the key.
    ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        QueueBindOptions::default(),
        no_args(),
    )
    .await
    .expect("bind the last queue");
    publish(&ch, "amq.direct", &name, "via shortcut binding").await;
    let m = ch
        .basic_get("".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get from the last queue")
        .expect("a message");
    assert_eq!(m.delivery.data, b"via shortcut binding");
    assert_eq!(m.delivery.routing_key.as_str(), name);

    publish(&ch, "", &name, "for the consumer").await;
    let mut consumer = ch
        .basic_consume(
            "".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("consume from the last queue");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"for the consumer");
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");

    publish(&ch, "", &name, "to purge").await;
    assert_eq!(
        ch.queue_purge("".into(), QueuePurgeOptions::default())
            .await
            .expect("purge the last queue"),
        1
    );
    ch.queue_unbind("".into(), "amq.direct".into(), "".into(), no_args())
        .await
        .expect("unbind the last queue");
    publish(&ch, "amq.direct", &name, "unbound").await;
    assert_eq!(drain(&ch, &name).await, Vec::<String>::new());
    assert_eq!(
        ch.queue_delete("".into(), QueueDeleteOptions::default())
            .await
            .expect("delete the last queue"),
        0
    );
    assert_eq!(counts(&env, &name).await, Err(404));

    // queue.declare is not a shortcut user, even passive.
    let r = ch.queue_declare("".into(), passive(), no_args()).await;
    assert_eq!(
        failure(r),
        (404, "NOT_FOUND - no queue '' in vhost '/'".to_string())
    );
}

#[tokio::test]
async fn empty_queue_name_without_a_declared_queue_is_404() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let r = ch.basic_get("".into(), BasicGetOptions::default()).await;
    assert_eq!(
        failure(r),
        (404, "NOT_FOUND - no previously declared queue".to_string())
    );
}
