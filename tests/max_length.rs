//! Length limits: `x-max-length`, `x-max-length-bytes` (body bytes of ready messages) and
//! `x-overflow`: drop-head (the oldest go, dead-lettered if the queue has a DLX),
//! reject-publish (the new one is refused, nacked under confirms) and reject-publish-dlx (refused
//! and dead-lettered).
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use common::{Env, exclusive, failure, get_soon, no_args, publish, publish_with, s, table, unique};
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation};

async fn queue(ch: &Channel, base: &str, args: &[(&str, AMQPValue)]) -> String {
    let name = unique(base);
    ch.queue_declare(name.as_str().into(), exclusive(), table(args))
        .await
        .expect("queue.declare");
    name
}

/// Every ready message body of `queue`, taken in order.
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

async fn confirm(ch: &Channel, queue: &str, body: &str) -> Confirmation {
    publish_with(ch, "", queue, body, false, BasicProperties::default()).await
}

/// The `x-death` reason and queue of a dead-lettered message.
fn death(d: &lapin::message::Delivery) -> (AMQPValue, AMQPValue) {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let Some(AMQPValue::FieldArray(a)) = headers.inner().get("x-death") else {
        panic!("no x-death in {headers:?}");
    };
    let Some(AMQPValue::FieldTable(e)) = a.as_slice().first() else {
        panic!("empty x-death");
    };
    (
        e.inner().get("reason").cloned().unwrap_or(AMQPValue::Void),
        e.inner().get("queue").cloned().unwrap_or(AMQPValue::Void),
    )
}

#[tokio::test]
async fn drop_head_keeps_the_newest_messages() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = queue(&ch, "drop-head", &[("x-max-length", AMQPValue::LongInt(2))]).await;
    for i in 0..5 {
        publish(&ch, "", &q, i.to_string()).await;
    }
    assert_eq!(drain(&ch, &q).await, ["3", "4"]);
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = queue(
        &ch,
        "bytes",
        &[("x-max-length-bytes", AMQPValue::LongInt(10))],
    )
    .await;
    for body in ["aaaaa", "bbbbb", "ccccc", "d"] {
        publish(&ch, "", &q, body).await;
    }
    assert_eq!(drain(&ch, &q).await, ["ccccc", "d"]);
    // A message larger than the limit on its own does not stay.
    publish(&ch, "", &q, "x".repeat(11)).await;
    assert_eq!(drain(&ch, &q).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_zero_limit_still_feeds_a_waiting_consumer() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = queue(&ch, "zero", &[("x-max-length", AMQPValue::LongInt(0))]).await;
    publish(&ch, "", &q, "dropped").await;
    assert_eq!(drain(&ch, &q).await, Vec::<String>::new());
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("consume");
    publish(&ch, "", &q, "delivered").await;
    assert_eq!(
        common::next_delivery(&mut consumer).await.data,
        b"delivered"
    );
}

#[tokio::test]
async fn unacked_messages_do_not_count_toward_the_limit() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = queue(
        &ch,
        "unacked",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    assert!(confirm(&ch, &q, "a").await.is_ack());
    let a = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a");
    assert!(confirm(&ch, &q, "b").await.is_ack());
    assert!(confirm(&ch, &q, "c").await.is_nack());
    a.delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("requeue");
    // A requeue is not refused: the limit only turns publishes away.
    assert_eq!(drain(&ch, &q).await, ["a", "b"]);
}

#[tokio::test]
async fn drop_head_dead_letters_the_oldest_with_reason_maxlen() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let q = queue(
        &ch,
        "src",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ],
    )
    .await;
    for body in ["old", "new"] {
        publish(&ch, "", &q, body).await;
    }
    let d = get_soon(&ch, &dlq, BasicGetOptions { no_ack: true })
        .await
        .expect("the dead letter")
        .delivery;
    assert_eq!(d.data, b"old");
    assert_eq!(death(&d), (s("maxlen"), s(&q)));
    assert_eq!(drain(&ch, &q).await, ["new"]);
}

#[tokio::test]
async fn reject_publish_nacks_what_a_full_queue_refuses() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = queue(
        &ch,
        "reject",
        &[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    let mut acks = Vec::new();
    for i in 0..4 {
        acks.push(confirm(&ch, &q, &i.to_string()).await.is_ack());
    }
    assert_eq!(acks, [true, true, false, false]);
    assert_eq!(drain(&ch, &q).await, ["0", "1"]);
    // Room again: publishes are accepted.
    assert!(confirm(&ch, &q, "4").await.is_ack());
}

#[tokio::test]
async fn a_nack_for_one_queue_is_the_publish_s_answer_even_if_another_took_it() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let full = queue(
        &ch,
        "full",
        &[
            ("x-max-length", AMQPValue::LongInt(0)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    let open = queue(&ch, "open", &[]).await;
    let x = unique("both");
    ch.exchange_declare(
        x.as_str().into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("exchange");
    for q in [&full, &open] {
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .expect("bind");
    }
    let c = publish_with(&ch, &x, "", "m", false, BasicProperties::default()).await;
    assert!(c.is_nack(), "{c:?}");
    assert_eq!(drain(&ch, &open).await, ["m"]);
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_silently() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let q = queue(
        &ch,
        "silent",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    for body in ["a", "b", "c"] {
        common::basic_publish(&ch, "", &q, body).await;
    }
    let first = get_soon(&ch, &q, BasicGetOptions { no_ack: true })
        .await
        .expect("a")
        .delivery;
    assert_eq!(first.data, b"a");
    assert_eq!(drain(&ch, &q).await, Vec::<String>::new());
}

#[tokio::test]
async fn reject_publish_dlx_dead_letters_and_nacks_the_refused_message() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let dlq = queue(&ch, "dlq", &[]).await;
    let q = queue(
        &ch,
        "src",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ],
    )
    .await;
    assert!(confirm(&ch, &q, "kept").await.is_ack());
    assert!(confirm(&ch, &q, "refused").await.is_nack());
    let d = get_soon(&ch, &dlq, BasicGetOptions { no_ack: true })
        .await
        .expect("the dead letter")
        .delivery;
    assert_eq!(d.data, b"refused");
    assert_eq!(death(&d), (s("maxlen"), s(&q)));
    assert_eq!(drain(&ch, &q).await, ["kept"]);
}

#[tokio::test]
async fn a_refused_publish_fails_its_transaction() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let q = queue(
        &ch,
        "tx",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    ch.tx_select().await.expect("tx.select");
    for i in 0..3 {
        common::basic_publish(&ch, "", &q, i.to_string()).await;
    }
    assert_eq!(
        failure(ch.tx_commit().await),
        (406, "PRECONDITION_FAILED - partial tx completion".into())
    );
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(drain(&ch, &q).await, ["0"]);
}

#[tokio::test]
async fn length_arguments_are_checked_with_rabbitmq_texts() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let prefix = "PRECONDITION_FAILED - invalid arg";
    let cases: [(&str, AMQPValue, &str); 3] = [
        (
            "x-max-length",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-max-length-bytes",
            s("10"),
            "\"expected integer, got longstr\"",
        ),
        ("x-overflow", s("drop-tail"), "invalid_overflow"),
    ];
    for (key, value, why) in cases {
        let ch = conn.create_channel().await.expect("channel");
        let q = unique("bad-length");
        let r = ch
            .queue_declare(q.as_str().into(), exclusive(), table(&[(key, value)]))
            .await;
        assert_eq!(
            failure(r),
            (
                406,
                format!("{prefix} '{key}' for queue '{q}' in vhost '/': {why}")
            )
        );
    }
}
