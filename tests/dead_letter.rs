//! Dead-lettering (`x-dead-letter-exchange`, `x-dead-letter-routing-key`): rejected, expired and
//! pushed-out messages republished with the `x-death` history RabbitMQ 3.10 writes, cycles
//! dropped as RabbitMQ drops them, and persistent messages moved between durable queues.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    Env, TestBroker, eventually, exclusive, get_soon, next_delivery, no_args, publish,
    publish_props, s, table, unique,
};
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Declares an exclusive queue named from `base` with `args`, and returns its name.
async fn queue(ch: &Channel, base: &str, args: &[(&str, AMQPValue)]) -> String {
    let name = unique(base);
    ch.queue_declare(name.as_str().into(), exclusive(), table(args))
        .await
        .expect("queue.declare");
    name
}

/// Declares an auto-delete fanout exchange bound to `queues`, and returns its name.
async fn fanout_to(ch: &Channel, base: &str, queues: &[&str]) -> String {
    let name = unique(base);
    ch.exchange_declare(
        name.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("exchange.declare");
    for q in queues {
        ch.queue_bind(
            (*q).into(),
            name.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .expect("queue.bind");
    }
    name
}

/// The next message of `queue`, waited for (dead-lettering finishes after the client's call).
async fn next(ch: &Channel, queue: &str) -> Delivery {
    get_soon(ch, queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|| panic!("a message in {queue}"))
        .delivery
}

fn headers(d: &Delivery) -> FieldTable {
    d.properties.headers().clone().unwrap_or_default()
}

fn x_death(d: &Delivery) -> Vec<FieldTable> {
    match headers(d).inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("x-death is {other:?}"),
    }
}

fn strs(items: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        items.iter().map(|i| s(i)).collect::<Vec<_>>(),
    ))
}

/// Checks an `x-death` entry against `fields`, its `time` (given there as 0) against the
/// window from `since` to now.
fn death(entry: &FieldTable, since: u64, fields: &[(&str, AMQPValue)]) {
    let mut entry = entry.clone();
    match entry.inner().get("time") {
        Some(AMQPValue::Timestamp(t)) => {
            assert!(
                (since..=now_secs()).contains(t),
                "time {t} not within {since}..now"
            )
        }
        other => panic!("time is {other:?}"),
    }
    entry.insert("time".into(), AMQPValue::Timestamp(0));
    assert_eq!(entry, table(fields));
}

/// Takes the next message of `queue` with an ack pending, waited for.
async fn take(ch: &Channel, queue: &str) -> Delivery {
    get_soon(ch, queue, BasicGetOptions { no_ack: false })
        .await
        .unwrap_or_else(|| panic!("a message in {queue}"))
        .delivery
}

async fn reject(d: &Delivery) {
    d.reject(BasicRejectOptions { requeue: false })
        .await
        .expect("basic.reject");
}

/// Ready messages in `queue`, asked on `ch` (exclusive queues answer only their connection).
async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_rabbitmq_headers() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let dlx = fanout_to(&ch, "dlx", &[&dlq]).await;
    let src = queue(&ch, "src", &[("x-dead-letter-exchange", s(&dlx))]).await;
    let since = now_secs();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_expiration("100000".into())
        .with_message_id("m-1".into())
        .with_app_id("app".into())
        .with_headers(table(&[("CC", strs(&["cc1"])), ("zz", s("kept"))]));
    publish_props(&ch, "", &src, "body", props).await;
    reject(&take(&ch, &src).await).await;

    let d = next(&ch, &dlq).await;
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), src);
    assert!(!d.redelivered);
    assert_eq!(d.data, b"body");
    assert_eq!(*d.properties.expiration(), None);
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(
        d.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("m-1")
    );
    assert_eq!(
        d.properties.app_id().as_ref().map(|m| m.as_str()),
        Some("app")
    );
    let entries = x_death(&d);
    assert_eq!(entries.len(), 1);
    death(
        &entries[0],
        since,
        &[
            ("count", AMQPValue::LongLongInt(1)),
            ("reason", s("rejected")),
            ("queue", s(&src)),
            ("time", AMQPValue::Timestamp(0)),
            ("exchange", s("")),
            ("routing-keys", strs(&[&src, "cc1"])),
            ("original-expiration", s("100000")),
        ],
    );
    let rest: FieldTable = headers(&d)
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-death")
        .fold(FieldTable::default(), |mut t, (k, v)| {
            t.insert(k.clone(), v.clone());
            t
        });
    assert_eq!(
        rest,
        table(&[
            ("CC", strs(&["cc1"])),
            ("zz", s("kept")),
            ("x-first-death-exchange", s("")),
            ("x-first-death-queue", s(&src)),
            ("x-first-death-reason", s("rejected")),
        ])
    );
}

#[tokio::test]
async fn a_nack_dead_letters_every_message_in_order_under_the_dead_letter_routing_key() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let src = queue(
        &ch,
        "src",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ],
    )
    .await;
    for i in 0..3 {
        publish(&ch, "", &src, format!("n{i}")).await;
    }
    let mut tag = 0;
    for _ in 0..3 {
        tag = take(&ch, &src).await.delivery_tag;
    }
    ch.basic_nack(
        tag,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    )
    .await
    .expect("nack");
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = next(&ch, &dlq).await;
        assert_eq!(d.exchange.as_str(), "");
        assert_eq!(d.routing_key.as_str(), dlq);
        assert_eq!(
            x_death(&d)[0].inner().get("routing-keys"),
            Some(&strs(&[&src]))
        );
        bodies.push(String::from_utf8_lossy(&d.data).into_owned());
    }
    assert_eq!(bodies, ["n0", "n1", "n2"]);
    assert_eq!(ready(&ch, &src).await, 0);
}

#[tokio::test]
async fn the_dead_letter_routing_key_drops_cc_but_x_death_records_it() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let src = queue(
        &ch,
        "src",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ],
    )
    .await;
    let props = BasicProperties::default()
        .with_headers(table(&[("CC", strs(&["cc1", "cc2"])), ("other", s("x"))]));
    publish_props(&ch, "", &src, "m", props).await;
    reject(&take(&ch, &src).await).await;
    let d = next(&ch, &dlq).await;
    let h = headers(&d);
    assert_eq!(h.inner().get("CC"), None);
    assert_eq!(h.inner().get("other"), Some(&s("x")));
    assert_eq!(
        x_death(&d)[0].inner().get("routing-keys"),
        Some(&strs(&[&src, "cc1", "cc2"]))
    );
}

#[tokio::test]
async fn a_repeated_death_is_counted_and_moved_to_the_front() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let (a, b) = (unique("ping"), unique("pong"));
    for (q, to) in [(&a, &b), (&b, &a)] {
        ch.queue_declare(
            q.as_str().into(),
            exclusive(),
            table(&[
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s(to)),
            ]),
        )
        .await
        .expect("declare");
    }
    let since = now_secs();
    publish(&ch, "", &a, "m").await;
    reject(&take(&ch, &a).await).await;
    let in_b = take(&ch, &b).await;
    let first_time = x_death(&in_b)[0].inner().get("time").cloned();
    reject(&in_b).await;
    reject(&take(&ch, &a).await).await;
    // Rejected in a, b, then a again: a's entry counts 2 and comes first, still with the time,
    // exchange and routing keys of its first death.
    let d = next(&ch, &b).await;
    let entries = x_death(&d);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].inner().get("queue"), Some(&s(&a)));
    assert_eq!(
        entries[0].inner().get("count"),
        Some(&AMQPValue::LongLongInt(2))
    );
    assert_eq!(entries[0].inner().get("routing-keys"), Some(&strs(&[&a])));
    assert_eq!(entries[0].inner().get("time"), first_time.as_ref());
    death(
        &entries[1],
        since,
        &[
            ("count", AMQPValue::LongLongInt(1)),
            ("reason", s("rejected")),
            ("queue", s(&b)),
            ("time", AMQPValue::Timestamp(0)),
            ("exchange", s("")),
            ("routing-keys", strs(&[&b])),
        ],
    );
    let h = headers(&d);
    assert_eq!(h.inner().get("x-first-death-queue"), Some(&s(&a)));
    assert_eq!(h.inner().get("x-first-death-reason"), Some(&s("rejected")));
}

#[tokio::test]
async fn a_rejection_loop_is_not_a_cycle() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = unique("self");
    ch.queue_declare(
        q.as_str().into(),
        exclusive(),
        table(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&q)),
        ]),
    )
    .await
    .expect("declare");
    publish(&ch, "", &q, "m").await;
    for count in 1..=3 {
        let got = get_soon(&ch, &q, BasicGetOptions { no_ack: false })
            .await
            .expect("the message, back again");
        if count > 1 {
            let entries = x_death(&got.delivery);
            assert_eq!(entries.len(), 1);
            assert_eq!(
                entries[0].inner().get("count"),
                Some(&AMQPValue::LongLongInt(count - 1))
            );
        }
        got.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
    }
}

#[tokio::test]
async fn an_expiry_cycle_is_dropped_for_the_queue_it_would_return_to() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let witness = queue(&ch, "witness", &[]).await;
    let q = unique("cycle");
    let dlx = unique("cycle-dlx");
    ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("exchange.declare");
    ch.queue_declare(
        q.as_str().into(),
        exclusive(),
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await
    .expect("declare");
    for target in [&q, &witness] {
        ch.queue_bind(
            target.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .expect("bind");
    }
    publish(&ch, "", &q, "m").await;
    // The witness gets the expired message; the queue it expired from, a fully automatic
    // cycle, does not.
    let d = next(&ch, &witness).await;
    let entries = x_death(&d);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].inner().get("queue"), Some(&s(&q)));
    assert_eq!(entries[0].inner().get("reason"), Some(&s("expired")));
    assert_eq!(ready(&ch, &q).await, 0);
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_with_their_original_expiration() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let src = queue(
        &ch,
        "src",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ],
    )
    .await;
    let props = BasicProperties::default().with_expiration("50".into());
    publish_props(&ch, "", &src, "short-lived", props).await;
    let mut consumer = ch
        .basic_consume(
            dlq.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"short-lived");
    assert_eq!(*d.properties.expiration(), None);
    let e = &x_death(&d)[0];
    assert_eq!(e.inner().get("reason"), Some(&s("expired")));
    assert_eq!(e.inner().get("original-expiration"), Some(&s("50")));
    assert_eq!(
        headers(&d).inner().get("x-first-death-reason"),
        Some(&s("expired"))
    );
}

#[tokio::test]
async fn queue_ttl_expiry_carries_no_original_expiration() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let dlx = fanout_to(&ch, "dlx", &[&dlq]).await;
    let src = queue(
        &ch,
        "src",
        &[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", s(&dlx)),
        ],
    )
    .await;
    for i in 0..3 {
        publish(&ch, "", &src, i.to_string()).await;
    }
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = next(&ch, &dlq).await;
        let e = &x_death(&d)[0];
        assert_eq!(e.inner().get("reason"), Some(&s("expired")));
        assert_eq!(e.inner().get("original-expiration"), None);
        assert_eq!(d.exchange.as_str(), dlx);
        bodies.push(String::from_utf8_lossy(&d.data).into_owned());
    }
    assert_eq!(bodies, ["0", "1", "2"]);
}

#[tokio::test]
async fn a_missing_dead_letter_exchange_drops_the_message() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let src = queue(
        &ch,
        "src",
        &[("x-dead-letter-exchange", s(&unique("absent")))],
    )
    .await;
    publish(&ch, "", &src, "m").await;
    reject(&take(&ch, &src).await).await;
    eventually("the rejected message is gone", || async {
        ready(&ch, &src).await == 0
    })
    .await;
}

#[tokio::test]
async fn requeue_true_does_not_dead_letter() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let src = queue(
        &ch,
        "src",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ],
    )
    .await;
    publish(&ch, "", &src, "m").await;
    let got = ch
        .basic_get(src.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("message");
    got.delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack");
    let again = next(&ch, &src).await;
    assert!(again.redelivered);
    assert_eq!(headers(&again).inner().get("x-death"), None);
    assert_eq!(ready(&ch, &dlq).await, 0);
}

/// Warren only: a persistent message moved between durable queues is in its new queue after a
/// restart, with its x-death, and no longer in its source.
#[tokio::test]
async fn a_dead_lettered_persistent_message_survives_a_restart_in_its_new_queue() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_path_buf();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    {
        let broker = TestBroker::start_with(|c| c.data_dir = data.clone()).await;
        let (conn, ch) = broker.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm");
        ch.queue_declare("dlq".into(), durable, no_args())
            .await
            .expect("dlq");
        ch.queue_declare(
            "src".into(),
            durable,
            table(&[
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s("dlq")),
            ]),
        )
        .await
        .expect("src");
        for body in ["moved", "stays"] {
            let props = BasicProperties::default().with_delivery_mode(2);
            publish_props(&ch, "", "src", body, props).await;
        }
        reject(&take(&ch, "src").await).await;
        eventually("the message reaches dlq", || async {
            ready(&ch, "dlq").await == 1
        })
        .await;
        let _ = conn.close(200, "bye".into()).await;
        broker.stop().await;
    }
    let broker = TestBroker::start_with(|c| c.data_dir = data.clone()).await;
    let (_conn, ch) = broker.channel().await;
    let src: Vec<Vec<u8>> = get_all(&ch, "src").await;
    assert_eq!(src, [b"stays".to_vec()]);
    let d = next(&ch, "dlq").await;
    assert_eq!(d.data, b"moved");
    assert_eq!(x_death(&d)[0].inner().get("queue"), Some(&s("src")));
    assert_eq!(ready(&ch, "dlq").await, 0);
    broker.stop().await;
}

async fn get_all(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        out.push(m.delivery.data);
    }
    out
}
