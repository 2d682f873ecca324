//! Time limits: `x-message-ttl`, the per-message `expiration` property (checked at publish with
//! RabbitMQ's texts), and `x-expires` for unused queues. An expired message is never delivered.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use std::time::Duration;

use common::{
    Env, eventually, exclusive, failure, next_delivery, no_args, publish, publish_props, s, table,
    unique,
};
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};

/// Longer than any TTL these tests set, so what should have expired has.
const PAST_TTL: Duration = Duration::from_millis(300);

async fn queue(ch: &Channel, base: &str, args: &[(&str, AMQPValue)]) -> String {
    let name = unique(base);
    ch.queue_declare(name.as_str().into(), exclusive(), table(args))
        .await
        .expect("queue.declare");
    name
}

/// Ready messages in `queue`, or the reply code of a refused passive declare (on a channel of
/// its own, so a refusal closes nothing the test uses).
async fn ready(conn: &lapin::Connection, queue: &str) -> Result<u32, u16> {
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    match r {
        Ok(q) => {
            let _ = ch.close(200, "OK".into()).await;
            Ok(q.message_count())
        }
        Err(e) => Err(common::reply_code(&e).unwrap_or(0)),
    }
}

/// Whether `queue` exists, asked without using it (a declare, even passive, counts as use for
/// `x-expires`, in RabbitMQ as in Warren): a mandatory publish comes back if it does not.
async fn exists(ch: &Channel, queue: &str) -> bool {
    let c = common::publish_with(ch, "", queue, "probe", true, BasicProperties::default()).await;
    matches!(c, lapin::Confirmation::Ack(None))
}

async fn get(ch: &Channel, queue: &str) -> Option<(String, u32)> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .map(|m| {
            (
                String::from_utf8_lossy(&m.delivery.data).into_owned(),
                m.message_count,
            )
        })
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

#[tokio::test]
async fn queue_ttl_expires_messages_nobody_takes() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = queue(&ch, "ttl", &[("x-message-ttl", AMQPValue::LongInt(50))]).await;
    for i in 0..3 {
        publish(&ch, "", &q, i.to_string()).await;
    }
    eventually("the messages expire", || async {
        ready(&conn, &q).await == Ok(0)
    })
    .await;
    assert_eq!(get(&ch, &q).await, None);
}

#[tokio::test]
async fn a_message_expiration_expires_it_at_the_head() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = queue(&ch, "expiration", &[]).await;
    publish_props(&ch, "", &q, "short", expiring("50")).await;
    publish(&ch, "", &q, "kept").await;
    eventually("the head expires", || async {
        ready(&conn, &q).await == Ok(1)
    })
    .await;
    assert_eq!(get(&ch, &q).await, Some(("kept".into(), 0)));
}

#[tokio::test]
async fn an_expired_message_behind_the_head_is_never_delivered() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = queue(&ch, "behind", &[]).await;
    publish(&ch, "", &q, "head").await;
    publish_props(&ch, "", &q, "short", expiring("50")).await;
    publish(&ch, "", &q, "tail").await;
    tokio::time::sleep(PAST_TTL).await;
    // As in RabbitMQ, messages expire at the head: the expired one still counts...
    assert_eq!(ready(&conn, &q).await, Ok(3));
    // ...until the head goes, and then it goes too, before anyone can have it.
    assert_eq!(get(&ch, &q).await, Some(("head".into(), 1)));
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
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"tail");
}

#[tokio::test]
async fn a_ttl_of_zero_reaches_a_waiting_consumer_and_nobody_else() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = queue(&ch, "zero", &[("x-message-ttl", AMQPValue::LongInt(0))]).await;
    publish(&ch, "", &q, "lost").await;
    assert_eq!(ready(&conn, &q).await, Ok(0));
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
    publish_props(&ch, "", &q, "also", expiring("0")).await;
    assert_eq!(next_delivery(&mut consumer).await.data, b"delivered");
    assert_eq!(next_delivery(&mut consumer).await.data, b"also");
}

#[tokio::test]
async fn the_shorter_of_queue_ttl_and_expiration_applies() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = queue(&ch, "shorter", &[("x-message-ttl", AMQPValue::LongInt(50))]).await;
    publish_props(&ch, "", &q, "long", expiring("600000")).await;
    eventually("the queue's TTL wins", || async {
        ready(&conn, &q).await == Ok(0)
    })
    .await;
    let q = queue(
        &ch,
        "shorter",
        &[("x-message-ttl", AMQPValue::LongInt(600_000))],
    )
    .await;
    publish_props(&ch, "", &q, "short", expiring("50")).await;
    eventually("the message's expiration wins", || async {
        ready(&conn, &q).await == Ok(0)
    })
    .await;
}

#[tokio::test]
async fn a_requeued_message_keeps_its_original_expiry() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = queue(
        &ch,
        "requeue",
        &[("x-message-ttl", AMQPValue::LongInt(100))],
    )
    .await;
    publish(&ch, "", &q, "m").await;
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("message");
    tokio::time::sleep(PAST_TTL).await;
    got.delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack");
    eventually("the requeued message expires", || async {
        ready(&conn, &q).await == Ok(0)
    })
    .await;
    assert_eq!(get(&ch, &q).await, None);
}

#[tokio::test]
async fn invalid_expirations_close_the_channel_with_rabbitmq_texts() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let q = unique("nowhere");
    let p = "PRECONDITION_FAILED - invalid expiration";
    let long = "9".repeat(19);
    let cases = [
        ("abc".to_string(), format!("{p} 'abc': no_integer")),
        ("".to_string(), format!("{p} '': no_integer")),
        (" 5".to_string(), format!("{p} ' 5': no_integer")),
        ("-1".to_string(), format!("{p} '-1': {{value_negative,-1}}")),
        (
            "12x".to_string(),
            format!("{p} '12x': {{leftover_string,\"x\"}}"),
        ),
        (
            "1.5".to_string(),
            format!("{p} '1.5': {{leftover_string,\".5\"}}"),
        ),
        (
            "315360000001".to_string(),
            format!("{p} '315360000001': {{value_too_large,315360000001}}"),
        ),
        (
            long.clone(),
            format!(
                "{p} '{long}': {{value_too_large,\n{}{long}}}",
                " ".repeat(43)
            ),
        ),
    ];
    for (expiration, text) in cases {
        let ch = common::confirm_channel(&conn).await;
        let r = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"m",
                expiring(&expiration),
            )
            .await;
        let r = match r {
            Ok(confirm) => confirm.await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert_eq!(failure(r), (406, text), "expiration {expiration:?}");
    }
    // Valid ones are accepted, the connection still open.
    let ch = common::confirm_channel(&conn).await;
    for ok in ["0", "+5", "-0", "00012", "315360000000"] {
        publish_props(&ch, "", &q, "m", expiring(ok)).await;
    }
}

#[tokio::test]
async fn ttl_arguments_are_checked_with_rabbitmq_texts() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let prefix = "PRECONDITION_FAILED - invalid arg";
    let cases: [(&str, AMQPValue, &str); 5] = [
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-message-ttl",
            AMQPValue::LongLongInt(315_360_000_001),
            "{value_too_large,315360000001}",
        ),
        (
            "x-message-ttl",
            s("1000"),
            "\"expected integer, got longstr\"",
        ),
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
        (
            "x-expires",
            AMQPValue::LongLongInt(315_360_000_001),
            "{value_too_large,315360000001}",
        ),
    ];
    for (key, value, why) in cases {
        let ch = conn.create_channel().await.expect("channel");
        let q = unique("bad-ttl");
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

#[tokio::test]
async fn an_unused_queue_expires() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = unique("expires");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        table(&[("x-expires", AMQPValue::LongInt(100))]),
    )
    .await
    .expect("declare");
    publish(&ch, "", &q, "messages do not keep it").await;
    eventually("the queue expires", || async { !exists(&ch, &q).await }).await;
    assert_eq!(ready(&conn, &q).await, Err(404));
}

#[tokio::test]
async fn a_queue_with_a_consumer_does_not_expire() {
    let env = Env::start().await;
    let (_conn, ch) = env.confirm_channel().await;
    let q = unique("in-use");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        table(&[("x-expires", AMQPValue::LongInt(100))]),
    )
    .await
    .expect("declare");
    let consumer = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume");
    tokio::time::sleep(PAST_TTL).await;
    assert!(exists(&ch, &q).await);
    drop(consumer);
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    eventually("the queue expires once its consumer has gone", || async {
        !exists(&ch, &q).await
    })
    .await;
}
