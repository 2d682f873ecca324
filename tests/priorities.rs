//! Priority queues (`x-max-priority`) and consumer priorities (`x-priority`): higher priority
//! first, FIFO within one, a message's priority capped at the queue's maximum; deliveries to the
//! highest-priority consumers with credit, round robin among equals.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use common::{
    Env, body, drain, exclusive, next_delivery, no_args, publish_props, refusal, table, unique,
};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

async fn priority_queue(ch: &Channel, max: i32) -> String {
    let name = unique("prio");
    ch.queue_declare(
        name.as_str().into(),
        exclusive(),
        table(&[("x-max-priority", AMQPValue::LongInt(max))]),
    )
    .await
    .expect("queue.declare");
    name
}

async fn publish_at(ch: &Channel, queue: &str, body: &str, priority: Option<u8>) {
    let mut props = BasicProperties::default();
    if let Some(p) = priority {
        props = props.with_priority(p);
    }
    publish_props(ch, "", queue, body, props).await;
}

#[tokio::test]
async fn higher_priority_first_fifo_within_and_capped_at_the_max() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = priority_queue(&ch, 5).await;
    for (b, p) in [
        ("p1", Some(1)),
        ("p5", Some(5)),
        ("none", None),
        ("p9", Some(9)),
        ("p3", Some(3)),
    ] {
        publish_at(&ch, &q, b, p).await;
    }
    assert_eq!(drain(&ch, &q).await, ["p5", "p9", "p3", "p1", "none"]);
}

#[tokio::test]
async fn a_requeued_message_keeps_its_place_within_its_priority() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = priority_queue(&ch, 10).await;
    for (b, p) in [("a2", 2), ("b2", 2), ("c1", 1), ("d7", 7)] {
        publish_at(&ch, &q, b, Some(p)).await;
    }
    let first = common::get_unacked(&ch, &q).await;
    let second = common::get_unacked(&ch, &q).await;
    assert_eq!((body(&first), body(&second)), ("d7".into(), "a2".into()));
    ch.basic_nack(
        second.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .expect("nack");
    ch.basic_nack(
        first.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .expect("nack");
    assert_eq!(drain(&ch, &q).await, ["d7", "a2", "b2", "c1"]);
}

#[tokio::test]
async fn a_consumer_receives_in_priority_order() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = priority_queue(&ch, 10).await;
    for (b, p) in [("low", 1), ("high", 8), ("mid", 4)] {
        publish_at(&ch, &q, b, Some(p)).await;
    }
    let mut c = common::basic_consume(&ch, &q, "", common::no_ack())
        .await
        .expect("consume");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(body(&next_delivery(&mut c).await));
    }
    assert_eq!(got, ["high", "mid", "low"]);
}

fn priority(p: AMQPValue) -> FieldTable {
    table(&[("x-priority", p)])
}

#[tokio::test]
async fn deliveries_go_to_the_highest_priority_consumer_with_credit() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = unique("cprio");
    ch.queue_declare(q.as_str().into(), exclusive(), no_args())
        .await
        .expect("queue.declare");
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let opts = BasicConsumeOptions::default();
    let mut low = ch
        .basic_consume(
            q.as_str().into(),
            "low".into(),
            opts,
            priority(AMQPValue::LongInt(-1)),
        )
        .await
        .expect("consume");
    let mut high = ch
        .basic_consume(
            q.as_str().into(),
            "high".into(),
            opts,
            priority(AMQPValue::LongInt(10)),
        )
        .await
        .expect("consume");
    publish_props(&ch, "", &q, "m1", BasicProperties::default()).await;
    let m1 = next_delivery(&mut high).await;
    assert_eq!(body(&m1), "m1");
    // The high one is blocked by its prefetch: the low one gets the next.
    publish_props(&ch, "", &q, "m2", BasicProperties::default()).await;
    let m2 = next_delivery(&mut low).await;
    assert_eq!(body(&m2), "m2");
    ch.basic_ack(m1.delivery_tag, BasicAckOptions::default())
        .await
        .expect("ack");
    publish_props(&ch, "", &q, "m3", BasicProperties::default()).await;
    assert_eq!(body(&next_delivery(&mut high).await), "m3");
}

#[tokio::test]
async fn equal_priorities_share_round_robin_and_lower_ones_wait() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = unique("cprio-rr");
    ch.queue_declare(q.as_str().into(), exclusive(), no_args())
        .await
        .expect("queue.declare");
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut a = ch
        .basic_consume(
            q.as_str().into(),
            "a".into(),
            opts,
            priority(AMQPValue::LongInt(5)),
        )
        .await
        .expect("consume");
    let _low = ch
        .basic_consume(
            q.as_str().into(),
            "low".into(),
            opts,
            priority(AMQPValue::ShortShortInt(1)),
        )
        .await
        .expect("consume");
    let mut b = ch
        .basic_consume(
            q.as_str().into(),
            "b".into(),
            opts,
            priority(AMQPValue::LongLongInt(5)),
        )
        .await
        .expect("consume");
    for m in ["m1", "m2", "m3", "m4"] {
        publish_props(&ch, "", &q, m, BasicProperties::default()).await;
    }
    // All four reach a and b, so none went to the lower consumer.
    let from_a = [
        body(&next_delivery(&mut a).await),
        body(&next_delivery(&mut a).await),
    ];
    let from_b = [
        body(&next_delivery(&mut b).await),
        body(&next_delivery(&mut b).await),
    ];
    assert_eq!(from_a, ["m1", "m3"]);
    assert_eq!(from_b, ["m2", "m4"]);
}

#[tokio::test]
async fn a_non_integer_consumer_priority_is_refused() {
    let env = Env::start().await;
    let (_c, ch) = env.channel().await;
    let q = unique("cprio-bad");
    ch.queue_declare(q.as_str().into(), exclusive(), no_args())
        .await
        .expect("queue.declare");
    let e = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            priority(common::s("high")),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        refusal(&e),
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': \"expected integer, got longstr\""
            )
        )
    );
}
