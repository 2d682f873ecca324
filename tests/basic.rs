//! The `basic` class, publisher confirms and transactions: returns, consumers (no-ack, exclusive,
//! tags, cancel, broker-sent cancel), get, ack/nack/reject/recover, qos, round robin, requeue on
//! close, properties and bodies passed through exactly, confirms and tx.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    Env, WAIT, basic_consume, basic_publish, bind, body, confirm_channel, counts, declare_queue,
    declare_queue_with, drain, eventually, failure, get_all, get_unacked, next_delivery,
    next_error, no_ack, no_args, passive, publish_with, refusal, unique,
};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};

/// A queue that outlives its consumers; the test deletes it.
async fn declare_kept_queue(ch: &Channel, base: &str) -> String {
    declare_queue_with(ch, base, QueueDeclareOptions::default()).await
}

async fn delete_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

/// Publishes to a queue through the default exchange and waits for the confirm.
async fn publish_to_queue(ch: &Channel, queue: &str, body: &str) {
    let c = publish_with(ch, "", queue, body, false, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
}

async fn publish_all(ch: &Channel, queue: &str, bodies: impl IntoIterator<Item = String>) {
    for b in bodies {
        publish_to_queue(ch, queue, &b).await;
    }
}

fn numbered(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| i.to_string())
}

async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    let options = BasicConsumeOptions {
        no_ack,
        ..Default::default()
    };
    basic_consume(ch, queue, "", options)
        .await
        .expect("basic.consume")
}

/// Takes `n` deliveries from a consumer.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_delivery(consumer).await);
    }
    out
}

/// Every ready message of a queue, in order, with its redelivered flag, taken with `basic.get`.
async fn drain_with_redelivered(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let got = get_all(ch, queue).await;
    got.iter().map(|d| (body(d), d.redelivered)).collect()
}

/// A consumer's stream ended (the broker cancelled it).
async fn ended(consumer: &mut Consumer) -> bool {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(None) => true,
        Ok(Some(Ok(d))) => panic!("unexpected delivery {:?}", body(&d)),
        Ok(Some(Err(e))) => panic!("consumer error {e:?}"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_with_no_route() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let key = unique("nobody-home");
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("m-1".into());
    let c = publish_with(&ch, "amq.direct", &key, b"come back", true, props.clone()).await;
    assert!(c.is_ack(), "an unroutable message is still confirmed");
    let returned = c.take_message().expect("a basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"come back");
    assert_eq!(returned.delivery.properties, props);

    // Through the default exchange, to a queue that does not exist.
    let c = publish_with(&ch, "", &key, b"", true, BasicProperties::default()).await;
    let returned = c.take_message().expect("a basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.exchange.as_str(), "");

    // Without mandatory the message is dropped silently.
    let c = publish_with(
        &ch,
        "amq.direct",
        &key,
        b"dropped",
        false,
        BasicProperties::default(),
    )
    .await;
    assert_eq!(c, Confirmation::Ack(None));
    // And a routable mandatory message is not returned.
    let q = declare_queue(&ch, "mandatory").await;
    let c = publish_with(&ch, "", &q, b"kept", true, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
}

#[tokio::test]
async fn immediate_publish_is_not_implemented() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "immediate").await;
    let r = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        )
        .await
        .expect("publish is asynchronous")
        .await;
    assert_eq!(
        failure(r),
        (540, "NOT_IMPLEMENTED - immediate=true".to_string())
    );
    assert!(conn.create_channel().await.is_err(), "connection closed");
}

#[tokio::test]
async fn no_ack_consumer_gets_messages_with_fresh_tags_and_nothing_to_requeue() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "no-ack").await;
    let (c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = basic_consume(&consumer_ch, &q, "my-tag", no_ack())
        .await
        .expect("consume");
    assert_eq!(consumer.tag().as_str(), "my-tag");
    publish_all(&ch, &q, numbered(3)).await;
    let got = take(&mut consumer, 3).await;
    let seen: Vec<(u64, String, bool, String, String)> = got
        .iter()
        .map(|d| {
            (
                d.delivery_tag,
                body(d),
                d.redelivered,
                d.exchange.to_string(),
                d.routing_key.to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String, bool, String, String)> = (0..3u64)
        .map(|i| (i + 1, i.to_string(), false, String::new(), q.clone()))
        .collect();
    assert_eq!(seen, want);
    c2.close(200, "OK".into()).await.expect("close");
    // Nothing was waiting for an ack, so nothing comes back.
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        Vec::<(String, bool)>::new()
    );
    delete_queue(&conn, &q).await;
}

#[tokio::test]
async fn server_generates_consumer_tags_and_refuses_a_reused_tag() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "tags").await;
    let a = consume(&ch, &q, false).await;
    let b = consume(&ch, &q, false).await;
    for tag in [a.tag(), b.tag()] {
        assert!(tag.as_str().starts_with("amq.ctag-"), "{tag}");
        assert!(tag.as_str().len() > "amq.ctag-".len() + 8, "{tag}");
    }
    assert_ne!(a.tag(), b.tag());
    let r = basic_consume(&ch, &q, a.tag().as_str(), BasicConsumeOptions::default()).await;
    assert_eq!(
        failure(r),
        (
            530,
            format!("NOT_ALLOWED - attempt to reuse consumer tag '{}'", a.tag())
        )
    );
    assert!(conn.create_channel().await.is_err(), "connection closed");
}

#[tokio::test]
async fn exclusive_consumer_keeps_others_out() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "exclusive-consumer").await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let first = basic_consume(&ch, &q, "", exclusive)
        .await
        .expect("exclusive consume");
    let in_use = format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use");
    for options in [BasicConsumeOptions::default(), exclusive] {
        let other = confirm_channel(&conn).await;
        let r = basic_consume(&other, &q, "", options).await;
        assert_eq!(failure(r), (403, in_use.clone()));
    }
    ch.basic_cancel(first.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");

    // An exclusive consumer cannot join a queue that has consumers either.
    let _shared = consume(&ch, &q, false).await;
    let other = confirm_channel(&conn).await;
    let r = basic_consume(&other, &q, "", exclusive).await;
    assert_eq!(failure(r), (403, in_use));
    delete_queue(&conn, &q).await;
}

#[tokio::test]
async fn cancel_stops_deliveries_and_ends_the_stream() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "cancel").await;
    // Keep the queue alive across the cancel (it is auto-delete).
    let _keeper = consume(&ch, &q, false).await;
    let (_c2, consumer_ch) = env.confirm_channel().await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&consumer_ch, &q, false).await;
    consumer_ch
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    assert!(
        ended(&mut consumer).await,
        "the stream ends after cancel-ok"
    );
    assert_eq!(counts(&env, &q).await, Ok((0, 1)));
    // Cancelling an unknown tag is fine.
    consumer_ch
        .basic_cancel("no-such-tag".into(), BasicCancelOptions::default())
        .await
        .expect("cancel unknown");
}

#[tokio::test]
async fn deleting_a_consumed_queue_cancels_its_consumers() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "deleted-under-consumer").await;
    let (_c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, false).await;
    publish_to_queue(&ch, &q, "before").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "before");
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    assert!(ended(&mut consumer).await, "broker-sent basic.cancel");
    // The channel itself stays open.
    consumer_ch
        .basic_qos(5, BasicQosOptions::default())
        .await
        .expect("channel still usable");
}

#[tokio::test]
async fn get_reports_the_messages_left_and_get_empty() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "get").await;
    publish_all(&ch, &q, numbered(3)).await;
    let mut seen = Vec::new();
    while let Some(m) = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
    {
        seen.push((
            body(&m.delivery),
            m.message_count,
            m.delivery.delivery_tag,
            m.delivery.redelivered,
            m.delivery.routing_key.to_string(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("0".to_string(), 2, 1, false, q.clone()),
            ("1".to_string(), 1, 2, false, q.clone()),
            ("2".to_string(), 0, 3, false, q.clone()),
        ]
    );
    ch.basic_ack(3, BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    assert_eq!(counts(&env, &q).await, Ok((0, 0)));
}

#[tokio::test]
async fn ack_single_and_multiple_settle_exactly_those_tags() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "ack").await;
    // A second consumer keeps the auto-delete queue after the first channel closes.
    let (_keep_c, keep) = env.confirm_channel().await;
    keep.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut keeper = consume(&keep, &q, false).await;
    publish_to_queue(&ch, &q, "for the keeper").await;
    let _held = next_delivery(&mut keeper).await;

    let (c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, false).await;
    publish_all(&ch, &q, numbered(6)).await;
    let got = take(&mut consumer, 6).await;
    assert_eq!(
        got.iter().map(body).collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4", "5"]
    );
    got[2]
        .ack(BasicAckOptions { multiple: true })
        .await
        .expect("ack up to 2");
    got[4].ack(BasicAckOptions::default()).await.expect("ack 4");
    c2.close(200, "OK".into()).await.expect("close");
    eventually("3 and 5 are requeued", || async {
        counts(&env, &q).await == Ok((2, 1))
    })
    .await;
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [("3".to_string(), true), ("5".to_string(), true)]
    );
}

#[tokio::test]
async fn reject_and_nack_requeue_to_the_original_position_or_drop() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "requeue").await;
    publish_all(&ch, &q, numbered(6)).await;
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(get_unacked(&ch, &q).await.delivery_tag);
    }
    // Tags 1..=5 hold messages 0..=4; 5 is still ready.
    ch.basic_reject(tags[3], BasicRejectOptions { requeue: true })
        .await
        .expect("reject 3");
    ch.basic_nack(
        tags[1],
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .expect("nack 0 and 1");
    ch.basic_reject(tags[2], BasicRejectOptions { requeue: false })
        .await
        .expect("reject 2, dropped");
    ch.basic_nack(
        tags[4],
        BasicNackOptions {
            multiple: false,
            requeue: false,
        },
    )
    .await
    .expect("nack 4, dropped");
    let left: Vec<(String, bool)> = drain_with_redelivered(&ch, &q).await;
    assert_eq!(
        left,
        [
            ("0".to_string(), true),
            ("1".to_string(), true),
            ("3".to_string(), true),
            ("5".to_string(), false),
        ]
    );
}

#[tokio::test]
async fn requeued_messages_go_back_to_consumers_marked_redelivered() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "redeliver").await;
    let (_c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, false).await;
    publish_all(&ch, &q, numbered(2)).await;
    let first = take(&mut consumer, 2).await;
    assert!(first.iter().all(|d| !d.redelivered));
    first[1]
        .nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        })
        .await
        .expect("nack both");
    let again = take(&mut consumer, 2).await;
    assert_eq!(
        again
            .iter()
            .map(|d| (body(d), d.redelivered))
            .collect::<Vec<_>>(),
        [("0".to_string(), true), ("1".to_string(), true)]
    );
    assert!(again[0].delivery_tag > first[1].delivery_tag);
    again[1]
        .ack(BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    assert_eq!(counts(&env, &q).await, Ok((0, 1)));
}

#[tokio::test]
async fn unknown_delivery_tag_closes_the_channel_with_406() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let mut events = Box::pin(conn.events_listener());
    let q = declare_queue(&ch, "unknown-tag").await;
    publish_to_queue(&ch, &q, "m").await;
    let tag = get_unacked(&ch, &q).await.delivery_tag;
    ch.basic_ack(tag, BasicAckOptions::default())
        .await
        .expect("ack");
    // A second ack of the same tag is an unknown tag.
    ch.basic_ack(tag, BasicAckOptions::default())
        .await
        .expect("sent");
    assert_eq!(
        refusal(&next_error(&mut events).await),
        (
            406,
            format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
        )
    );
    let ch = confirm_channel(&conn).await;
    ch.basic_reject(99, BasicRejectOptions { requeue: true })
        .await
        .expect("sent");
    assert_eq!(
        refusal(&next_error(&mut events).await),
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 99".to_string()
        )
    );
    // Both were channel errors: the connection is still open.
    let ch = confirm_channel(&conn).await;
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
}

#[tokio::test]
async fn recover_requeues_every_unacked_message() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "recover").await;
    publish_all(&ch, &q, numbered(3)).await;
    for _ in 0..2 {
        get_unacked(&ch, &q).await;
    }
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [
            ("0".to_string(), true),
            ("1".to_string(), true),
            ("2".to_string(), false)
        ]
    );

    // With a consumer, recovered messages are delivered again.
    let (_c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, false).await;
    publish_to_queue(&ch, &q, "x").await;
    let d = next_delivery(&mut consumer).await;
    assert!(!d.redelivered);
    consumer_ch
        .basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");
    let d = next_delivery(&mut consumer).await;
    assert_eq!((body(&d), d.redelivered), ("x".to_string(), true));
}

#[tokio::test]
async fn qos_prefetch_limits_each_consumer_created_after_it() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let qa = declare_queue(&ch, "prefetch-a").await;
    let qb = declare_queue(&ch, "prefetch-b").await;
    publish_all(&ch, &qa, numbered(5)).await;
    publish_all(&ch, &qb, numbered(5)).await;
    let (_c2, consumer_ch) = env.confirm_channel().await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos 1");
    let mut a = consume(&consumer_ch, &qa, false).await;
    consumer_ch
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos 3");
    let mut b = consume(&consumer_ch, &qb, false).await;
    let got_a = take(&mut a, 1).await;
    let got_b = take(&mut b, 3).await;
    // The second qos did not change the first consumer's limit.
    assert_eq!(counts(&env, &qa).await, Ok((4, 1)));
    assert_eq!(counts(&env, &qb).await, Ok((2, 1)));
    got_a[0].ack(BasicAckOptions::default()).await.expect("ack");
    let next = next_delivery(&mut a).await;
    assert_eq!(body(&next), "1");
    assert_eq!(counts(&env, &qa).await, Ok((3, 1)));
    got_b[2]
        .ack(BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    let more = take(&mut b, 2).await;
    assert_eq!(more.iter().map(body).collect::<Vec<_>>(), ["3", "4"]);
    assert_eq!(counts(&env, &qb).await, Ok((0, 1)));
}

#[tokio::test]
async fn global_qos_limits_the_channels_consumers_together() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let qa = declare_queue(&ch, "global-a").await;
    let qb = declare_queue(&ch, "global-b").await;
    publish_all(&ch, &qa, numbered(3)).await;
    publish_all(&ch, &qb, numbered(3)).await;
    let (_c2, consumer_ch) = env.confirm_channel().await;
    consumer_ch
        .basic_qos(2, BasicQosOptions { global: true })
        .await
        .expect("qos global");
    let a = consume(&consumer_ch, &qa, false).await;
    let b = consume(&consumer_ch, &qb, false).await;
    let mut both = futures::stream::select(a, b);
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), both.next())
            .await
            .expect("a delivery within 5 s")
            .expect("open")
            .expect("delivery");
        got.push(d);
    }
    let ready = |c: Result<(u32, u32), u16>| c.map(|(m, _)| m).unwrap_or(99);
    assert_eq!(
        ready(counts(&env, &qa).await) + ready(counts(&env, &qb).await),
        4,
        "two deliveries for the whole channel"
    );
    got[0].ack(BasicAckOptions::default()).await.expect("ack");
    let _third = tokio::time::timeout(Duration::from_secs(5), both.next())
        .await
        .expect("a delivery within 5 s");
    assert_eq!(
        ready(counts(&env, &qa).await) + ready(counts(&env, &qb).await),
        3
    );
}

#[tokio::test]
async fn consumers_of_a_queue_take_turns() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "round-robin").await;
    let (_c1, ch1) = env.confirm_channel().await;
    let (_c2, ch2) = env.confirm_channel().await;
    let mut c1 = consume(&ch1, &q, true).await;
    let mut c2 = consume(&ch2, &q, true).await;
    assert_eq!(counts(&env, &q).await, Ok((0, 2)));
    publish_all(&ch, &q, numbered(6)).await;
    let a: BTreeSet<String> = take(&mut c1, 3).await.iter().map(body).collect();
    let b: BTreeSet<String> = take(&mut c2, 3).await.iter().map(body).collect();
    let evens: BTreeSet<String> = ["0", "2", "4"].map(String::from).into();
    let odds: BTreeSet<String> = ["1", "3", "5"].map(String::from).into();
    assert!(
        (a == evens && b == odds) || (a == odds && b == evens),
        "{a:?} {b:?}"
    );
    assert_eq!(counts(&env, &q).await, Ok((0, 2)));
}

#[tokio::test]
async fn unacked_messages_return_when_their_channel_closes() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "requeue-on-close").await;
    publish_all(&ch, &q, numbered(4)).await;
    let consumer_ch = confirm_channel(&conn).await;
    let mut consumer = consume(&consumer_ch, &q, false).await;
    let got = take(&mut consumer, 4).await;
    got[1].ack(BasicAckOptions::default()).await.expect("ack 1");
    assert_eq!(counts(&env, &q).await, Ok((0, 1)));
    consumer_ch.close(200, "OK".into()).await.expect("close");
    eventually("the unacked messages are requeued", || async {
        counts(&env, &q).await == Ok((3, 0))
    })
    .await;
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [
            ("0".to_string(), true),
            ("2".to_string(), true),
            ("3".to_string(), true)
        ]
    );
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn unacked_messages_return_when_their_connection_closes() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "requeue-on-disconnect").await;
    publish_all(&ch, &q, numbered(3)).await;
    let (consumer_conn, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, false).await;
    let got = take(&mut consumer, 3).await;
    got[0].ack(BasicAckOptions::default()).await.expect("ack 0");
    assert_eq!(counts(&env, &q).await, Ok((0, 1)));
    consumer_conn.close(200, "OK".into()).await.expect("close");
    eventually("the unacked messages are requeued", || async {
        counts(&env, &q).await == Ok((2, 0))
    })
    .await;
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [("1".to_string(), true), ("2".to_string(), true)]
    );
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}

fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    nested.insert("n".into(), AMQPValue::LongInt(-1));
    let array = FieldArray::from(vec![
        AMQPValue::LongString("one".into()),
        AMQPValue::LongInt(2),
        AMQPValue::Boolean(true),
        AMQPValue::Void,
        AMQPValue::FieldTable(nested.clone()),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Double(0.5)])),
    ]);
    let mut t = FieldTable::default();
    let entries: Vec<(&str, AMQPValue)> = vec![
        ("bool-true", AMQPValue::Boolean(true)),
        ("bool-false", AMQPValue::Boolean(false)),
        ("i8", AMQPValue::ShortShortInt(-100)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-30_000)),
        ("u16", AMQPValue::ShortUInt(60_000)),
        ("i32", AMQPValue::LongInt(-2_000_000_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-9_000_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25e100)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 3,
                value: 123_456,
            }),
        ),
        ("longstr", AMQPValue::LongString("héllo \u{1F407}".into())),
        ("empty", AMQPValue::LongString("".into())),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("void", AMQPValue::Void),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 254, 255])),
        ),
        ("array", AMQPValue::FieldArray(array)),
        ("table", AMQPValue::FieldTable(nested)),
        ("x-death-like", AMQPValue::LongString(LongString::from("x"))),
    ];
    for (k, v) in entries {
        t.insert(ShortString::from(k), v);
    }
    t
}

#[tokio::test]
async fn properties_and_headers_reach_consumers_exactly_as_published() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "properties").await;
    let full = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_field_type())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-42".into())
        .with_reply_to("amq.rabbitmq.reply-to-ish".into())
        .with_expiration("3600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("warren-tests".into())
        .with_cluster_id("cluster-a".into());
    let sparse = BasicProperties::default()
        .with_priority(0)
        .with_headers(FieldTable::default());
    let cases = [
        full.clone(),
        sparse.clone(),
        BasicProperties::default(),
        BasicProperties::default().with_timestamp(0),
    ];
    for (i, props) in cases.iter().enumerate() {
        let c = publish_with(&ch, "", &q, i.to_string().as_bytes(), false, props.clone()).await;
        assert_eq!(c, Confirmation::Ack(None));
    }
    // basic.get hands back the same properties.
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(m.delivery.properties, full);
    let (_c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, true).await;
    for (i, props) in cases.iter().enumerate().skip(1) {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), i.to_string());
        assert_eq!(&d.properties, props, "case {i}");
    }
}

#[tokio::test]
async fn bodies_of_every_size_arrive_intact() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let frame_max = usize::try_from(conn.configuration().frame_max()).expect("frame_max");
    assert!(frame_max >= 4096, "negotiated frame_max {frame_max}");
    let q = declare_queue(&ch, "bodies").await;
    let sizes = [
        3 * (frame_max - 8) + 1,
        0,
        1,
        frame_max - 8,
        frame_max - 7,
        3 * (frame_max - 8),
        16 * 1024 * 1024,
    ];
    let make = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| u8::try_from((i * 31 + n) % 251).unwrap_or(0))
            .collect()
    };
    for &n in &sizes {
        let c = publish_with(&ch, "", &q, &make(n), false, BasicProperties::default()).await;
        assert_eq!(c, Confirmation::Ack(None), "size {n}");
    }
    // basic.get carries a body over several frames too.
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert!(m.delivery.data == make(sizes[0]), "body through basic.get");
    let (_c2, consumer_ch) = env.confirm_channel().await;
    let mut consumer = consume(&consumer_ch, &q, true).await;
    for &n in sizes.iter().skip(1) {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data.len(), n);
        assert!(d.data == make(n), "body of {n} bytes differs");
    }
}

#[tokio::test]
async fn publisher_confirms_ack_every_publish() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "confirms").await;
    let mut pending = Vec::new();
    for i in 0..500 {
        pending.push(basic_publish(&ch, "", &q, i.to_string()).await);
    }
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.await.expect("confirm"), Confirmation::Ack(None), "#{i}");
    }
    for i in 500..510 {
        basic_publish(&ch, "", &q, i.to_string()).await;
    }
    assert!(ch.wait_for_confirms().await.expect("wait").is_empty());
    let got: Vec<String> = drain(&ch, &q).await;
    assert_eq!(got, numbered(510).collect::<Vec<_>>());
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let r = ch.tx_select().await;
    assert_eq!(
        failure(r),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode".to_string()
        )
    );
    let ch = conn.create_channel().await.expect("channel");
    ch.tx_select().await.expect("tx.select");
    let r = ch.confirm_select(ConfirmSelectOptions::default()).await;
    assert_eq!(
        failure(r),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode".to_string()
        )
    );
    let ch = conn.create_channel().await.expect("channel");
    let r = ch.tx_commit().await;
    assert_eq!(
        failure(r),
        (
            406,
            "PRECONDITION_FAILED - channel is not transactional".to_string()
        )
    );
}

#[tokio::test]
async fn tx_publishes_arrive_on_commit_and_never_after_rollback() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "tx-publish").await;
    let (_c2, tx) = env.channel().await;
    tx.tx_select().await.expect("tx.select");
    let send = |b: &'static str| {
        let tx = tx.clone();
        let q = q.clone();
        async move {
            basic_publish(&tx, "", &q, b).await;
        }
    };
    let ready_seen_by_tx = || async {
        tx.queue_declare(q.as_str().into(), passive(), no_args())
            .await
            .expect("passive declare")
            .message_count()
    };
    send("rolled back 1").await;
    send("rolled back 2").await;
    // A method after the publishes on the same channel sees that nothing was routed yet.
    assert_eq!(ready_seen_by_tx().await, 0);
    tx.tx_rollback().await.expect("rollback");
    assert_eq!(ready_seen_by_tx().await, 0);
    send("committed 1").await;
    send("committed 2").await;
    assert_eq!(ready_seen_by_tx().await, 0);
    tx.tx_commit().await.expect("commit");
    assert_eq!(ready_seen_by_tx().await, 2);
    // The channel stays transactional: a new transaction starts after each commit.
    send("after").await;
    tx.tx_rollback().await.expect("rollback");
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [
            ("committed 1".to_string(), false),
            ("committed 2".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn tx_acks_take_effect_on_commit_only() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "tx-ack").await;
    publish_all(&ch, &q, numbered(4)).await;
    let (tx_conn, tx) = env.channel().await;
    tx.tx_select().await.expect("tx.select");
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(get_unacked(&tx, &q).await.delivery_tag);
    }
    tx.basic_ack(tags[3], BasicAckOptions { multiple: true })
        .await
        .expect("ack all");
    tx.tx_rollback().await.expect("rollback");
    // Rolled back: all four are still unacked; ack 0 and reject 1 for real.
    tx.basic_ack(tags[0], BasicAckOptions::default())
        .await
        .expect("ack 0");
    tx.basic_reject(tags[1], BasicRejectOptions { requeue: false })
        .await
        .expect("reject 1");
    assert_eq!(counts(&env, &q).await, Ok((0, 0)), "nothing settled yet");
    tx.tx_commit().await.expect("commit");
    tx_conn.close(200, "OK".into()).await.expect("close");
    eventually("2 and 3 come back", || async {
        counts(&env, &q).await == Ok((2, 0))
    })
    .await;
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [("2".to_string(), true), ("3".to_string(), true)]
    );
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn ack_multiple_needs_the_exact_tag_to_be_outstanding() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "ack-multiple-exact").await;
    publish_all(&ch, &q, numbered(3)).await;
    let (getter_conn, getter) = env.channel().await;
    let mut events = Box::pin(getter_conn.events_listener());
    for _ in 0..3 {
        get_unacked(&getter, &q).await;
    }
    getter
        .basic_ack(2, BasicAckOptions::default())
        .await
        .expect("ack 2");
    // Tag 2 is settled already, so "up to 2" names an unknown tag, though tag 1 is outstanding.
    getter
        .basic_ack(2, BasicAckOptions { multiple: true })
        .await
        .expect("sent");
    assert_eq!(
        refusal(&next_error(&mut events).await),
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 2".to_string()
        )
    );
    // Nothing was acked by the refused ack: 1 and 3 come back.
    eventually("1 and 3 are requeued", || async {
        counts(&env, &q).await == Ok((2, 0))
    })
    .await;
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [("0".to_string(), true), ("2".to_string(), true)]
    );
    delete_queue(&conn, &q).await;
}

#[tokio::test]
async fn nack_with_requeue_keeps_the_prefetch_limit() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "nack-prefetch").await;
    publish_all(&ch, &q, numbered(4)).await;
    let (_c2, consumer_ch) = env.confirm_channel().await;
    consumer_ch
        .basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&consumer_ch, &q, false).await;
    let got = take(&mut consumer, 2).await;
    got[0]
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack 0");
    let again = next_delivery(&mut consumer).await;
    assert_eq!((body(&again), again.redelivered), ("0".to_string(), true));
    // Two unacked again (1 and the redelivered 0): the other two wait.
    assert_eq!(counts(&env, &q).await, Ok((2, 1)));
    consumer_ch
        .basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");
    let after = take(&mut consumer, 2).await;
    assert_eq!(
        after.iter().map(body).collect::<Vec<_>>(),
        ["0", "1"],
        "recovered in queue order"
    );
    assert_eq!(counts(&env, &q).await, Ok((2, 1)));
}

#[tokio::test]
async fn tx_acks_are_checked_when_sent() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let mut events = Box::pin(conn.events_listener());
    let q = declare_kept_queue(&ch, "tx-ack-check").await;
    publish_all(&ch, &q, numbered(2)).await;
    let tx = conn.create_channel().await.expect("channel");
    tx.tx_select().await.expect("tx.select");
    let tag = get_unacked(&tx, &q).await.delivery_tag;
    tx.basic_ack(tag, BasicAckOptions::default())
        .await
        .expect("ack");
    // Acked already in this transaction: the second ack is refused at once, not at commit.
    tx.basic_ack(tag, BasicAckOptions::default())
        .await
        .expect("sent");
    assert_eq!(
        refusal(&next_error(&mut events).await),
        (
            406,
            format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
        )
    );
    eventually("the unacked message is requeued", || async {
        counts(&env, &q).await == Ok((2, 0))
    })
    .await;
    delete_queue(&conn, &q).await;
}

#[tokio::test]
async fn tx_publish_to_a_missing_exchange_fails_at_once() {
    let env = Env::start().await;
    let (conn, tx) = env.channel().await;
    let mut events = Box::pin(conn.events_listener());
    tx.tx_select().await.expect("tx.select");
    let x = unique("nowhere");
    basic_publish(&tx, &x, "k", b"lost").await;
    // Refused before any commit.
    assert_eq!(
        refusal(&next_error(&mut events).await),
        (404, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
    );
}

#[tokio::test]
async fn deliveries_in_flight_to_a_closing_connection_are_not_lost() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "in-flight").await;
    let body = vec![7u8; 64 * 1024];
    let count = 300;
    for _ in 0..count {
        let c = publish_with(&ch, "", &q, &body, false, BasicProperties::default()).await;
        assert_eq!(c, Confirmation::Ack(None));
    }
    let (consumer_conn, consumer_ch) = env.channel().await;
    let _consumer = consume(&consumer_ch, &q, false).await;
    // Close at once: most deliveries are still on their way to the client.
    consumer_conn.close(200, "OK".into()).await.expect("close");
    eventually("every message is back in the queue", || async {
        counts(&env, &q).await == Ok((count, 0))
    })
    .await;
    delete_queue(&conn, &q).await;
}

#[tokio::test]
async fn consumer_and_channel_prefetch_apply_together() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let mut queues = Vec::new();
    for _ in 0..4 {
        let q = declare_queue(&ch, "both-limits").await;
        publish_all(&ch, &q, numbered(2)).await;
        queues.push(q);
    }
    let (_c2, consumer_ch) = env.confirm_channel().await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("per-consumer qos");
    consumer_ch
        .basic_qos(3, BasicQosOptions { global: true })
        .await
        .expect("channel qos");
    let mut all = futures::stream::SelectAll::new();
    for q in &queues {
        all.push(consume(&consumer_ch, q, false).await);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .expect("a delivery within 5 s")
            .expect("open")
            .expect("delivery");
        got.push(d);
    }
    let mut ready = Vec::new();
    for q in &queues {
        ready.push(counts(&env, q).await.map(|(m, _)| m).unwrap_or(99));
    }
    ready.sort_unstable();
    // Three consumers hold one each (their own limit); the channel's limit stops the fourth.
    assert_eq!(ready, [1, 1, 1, 2]);
}

#[tokio::test]
async fn tx_publishes_are_routed_when_published() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_kept_queue(&ch, "tx-route-time").await;
    bind(&ch, &q, "amq.direct", &q, no_args()).await;
    let (_c2, tx) = env.channel().await;
    tx.tx_select().await.expect("tx.select");
    basic_publish(&tx, "amq.direct", &q, b"routed at publish").await;
    // A synchronous method on the tx channel: the publish before it has been handled.
    tx.basic_qos(0, BasicQosOptions::default())
        .await
        .expect("qos");
    ch.queue_unbind(
        q.as_str().into(),
        "amq.direct".into(),
        q.as_str().into(),
        no_args(),
    )
    .await
    .expect("unbind");
    tx.tx_commit().await.expect("commit");
    assert_eq!(
        drain_with_redelivered(&ch, &q).await,
        [("routed at publish".to_string(), false)]
    );
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}
