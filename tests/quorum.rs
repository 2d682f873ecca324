//! Quorum queues on one node: every message kept (and confirmed) as if persistent, and
//! `x-delivery-limit` with the `x-delivery-count` header RabbitMQ 3.10 adds.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren (except the restart).

mod common;

use common::{
    Env, TestBroker, basic_consume, body, exclusive, next_delivery, no_args, publish, table, unique,
};
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};

async fn quorum_queue(ch: &Channel, base: &str, args: &[(&str, AMQPValue)]) -> String {
    let name = unique(base);
    let mut all = vec![("x-queue-type", common::s("quorum"))];
    all.extend_from_slice(args);
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&all),
    )
    .await
    .expect("queue.declare");
    name
}

async fn delete(ch: &Channel, queue: &str) {
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

async fn get(ch: &Channel, queue: &str) -> Option<Delivery> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .map(|m| m.delivery)
}

fn delivery_count(d: &Delivery) -> Option<AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
}

async fn requeue(ch: &Channel, d: &Delivery) {
    ch.basic_nack(
        d.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .expect("basic.nack");
}

#[tokio::test]
async fn each_requeue_counts_and_a_message_past_the_limit_is_dropped() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = quorum_queue(
        &ch,
        "qq-limit",
        &[("x-delivery-limit", AMQPValue::LongInt(2))],
    )
    .await;
    publish(&ch, "", &q, "m").await;
    for n in 0..=2 {
        let d = get(&ch, &q).await.expect("a message");
        // basic.get always carries the count, 0 the first time.
        assert_eq!(
            (d.redelivered, delivery_count(&d)),
            (n > 0, Some(AMQPValue::LongLongInt(n)))
        );
        requeue(&ch, &d).await;
    }
    assert!(get(&ch, &q).await.is_none());
    delete(&ch, &q).await;
}

#[tokio::test]
async fn a_consumer_sees_the_count_only_on_redeliveries() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let ch = common::confirm_channel(&conn).await;
    let q = quorum_queue(&ch, "qq-count", &[]).await;
    publish(&ch, "", &q, "m").await;
    let ch2 = conn.create_channel().await.expect("channel");
    let mut c = basic_consume(&ch2, &q, "", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let first = next_delivery(&mut c).await;
    assert_eq!((first.redelivered, delivery_count(&first)), (false, None));
    // The channel's close returns the message: that counts as a delivery.
    ch2.close(200, "bye".into()).await.expect("close");
    let d = common::get_soon(&ch, &q, BasicGetOptions { no_ack: false })
        .await
        .expect("requeued")
        .delivery;
    assert_eq!(
        (d.redelivered, delivery_count(&d)),
        (true, Some(AMQPValue::LongLongInt(1)))
    );
    ch.basic_reject(d.delivery_tag, BasicRejectOptions { requeue: true })
        .await
        .expect("reject");
    let mut c = basic_consume(&ch, &q, "", common::no_ack())
        .await
        .expect("consume");
    let d = next_delivery(&mut c).await;
    assert_eq!(
        (body(&d), d.redelivered, delivery_count(&d)),
        ("m".into(), true, Some(AMQPValue::LongLongInt(2)))
    );
    delete(&ch, &q).await;
}

#[tokio::test]
async fn past_the_limit_a_message_is_dead_lettered_as_delivery_limit() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let target = unique("qq-dlq");
    ch.queue_declare(target.as_str().into(), exclusive(), no_args())
        .await
        .expect("queue.declare");
    let q = quorum_queue(
        &ch,
        "qq-dlx",
        &[
            ("x-delivery-limit", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", common::s("")),
            ("x-dead-letter-routing-key", common::s(&target)),
            ("x-dead-letter-strategy", common::s("at-least-once")),
        ],
    )
    .await;
    publish(&ch, "", &q, "m").await;
    let d = get(&ch, &q).await.expect("a message");
    requeue(&ch, &d).await;
    let dead = common::get_soon(&ch, &target, BasicGetOptions { no_ack: true })
        .await
        .expect("dead-lettered")
        .delivery;
    let headers = dead.properties.headers().clone().unwrap_or_default();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death in {headers:?}");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&common::s("delivery_limit"))
    );
    assert_eq!(death.inner().get("queue"), Some(&common::s(&q)));
    assert!(get(&ch, &q).await.is_none());
    delete(&ch, &q).await;
}

#[tokio::test]
async fn transient_messages_in_a_quorum_queue_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let broker = TestBroker::start_with(|c| c.data_dir = path.clone()).await;
    let q = {
        let conn = broker.connect().await;
        let ch = common::confirm_channel(&conn).await;
        let q = quorum_queue(&ch, "qq-keep", &[]).await;
        let props = BasicProperties::default().with_delivery_mode(1);
        common::publish_props(&ch, "", &q, "kept", props).await;
        let _ = conn.close(200, "bye".into()).await;
        q
    };
    broker.stop().await;
    let broker = TestBroker::start_with(|c| c.data_dir = path.clone()).await;
    let (_c, ch) = broker.channel().await;
    let got = get(&ch, &q).await.expect("kept");
    assert_eq!(body(&got), "kept");
    broker.stop().await;
}

/// The refusal of declaring `queue` with `args` (durable, so a quorum queue may be declared).
async fn refused(env: &Env, queue: &str, args: &[(&str, AMQPValue)]) -> (u16, String) {
    let (_c, ch) = env.channel().await;
    let e = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(args),
        )
        .await
        .expect_err("refused");
    common::refusal(&e)
}

#[tokio::test]
async fn arguments_of_another_queue_type_are_refused_with_rabbitmq_texts() {
    let env = Env::start().await;
    let quorum = ("x-queue-type", common::s("quorum"));
    let q = unique("qq-args");
    assert_eq!(
        refused(
            &env,
            &q,
            &[quorum.clone(), ("x-max-priority", AMQPValue::LongInt(5))]
        )
        .await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"
            )
        )
    );
    assert_eq!(
        refused(
            &env,
            &q,
            &[
                quorum.clone(),
                ("x-dead-letter-strategy", common::s("bogus"))
            ]
        )
        .await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy"
            )
        )
    );
    assert_eq!(
        refused(
            &env,
            &q,
            &[("x-dead-letter-strategy", common::s("at-least-once"))]
        )
        .await,
        (
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/' of queue type rabbit_classic_queue"
            )
        )
    );
}

#[tokio::test]
async fn the_delivery_count_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let broker = TestBroker::start_with(|c| c.data_dir = path.clone()).await;
    let q = {
        let conn = broker.connect().await;
        let ch = common::confirm_channel(&conn).await;
        let q = quorum_queue(
            &ch,
            "qq-count",
            &[("x-delivery-limit", AMQPValue::LongInt(5))],
        )
        .await;
        publish(&ch, "", &q, "poison").await;
        for _ in 0..2 {
            let d = get(&ch, &q).await.expect("a message");
            requeue(&ch, &d).await;
        }
        // A confirmed publish after the requeues flushes their counts with it.
        publish(&ch, "", &q, "marker").await;
        let _ = conn.close(200, "bye".into()).await;
        q
    };
    broker.stop().await;
    let broker = TestBroker::start_with(|c| c.data_dir = path.clone()).await;
    let (_c, ch) = broker.channel().await;
    let d = get(&ch, &q).await.expect("the message is back");
    assert_eq!(body(&d), "poison");
    assert_eq!(delivery_count(&d), Some(AMQPValue::LongLongInt(2)));
    broker.stop().await;
}
