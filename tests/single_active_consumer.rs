//! `x-single-active-consumer`: only the first consumer receives; when it goes (cancelled, or its
//! channel closed), the next in registration order takes over, with whatever the old one left
//! unacked requeued to it.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use common::{Env, basic_consume, body, drain, next_delivery, no_ack, publish, table, unique};
use lapin::Channel;
use lapin::options::*;
use lapin::types::AMQPValue;

async fn sac_queue(ch: &Channel) -> String {
    let name = unique("sac");
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await
    .expect("queue.declare");
    name
}

#[tokio::test]
async fn only_the_first_consumer_receives_until_it_is_cancelled() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = sac_queue(&ch).await;
    let mut first = basic_consume(&ch, &q, "first", no_ack())
        .await
        .expect("consume");
    let mut second = basic_consume(&ch, &q, "second", no_ack())
        .await
        .expect("consume");
    let _third = basic_consume(&ch, &q, "third", no_ack())
        .await
        .expect("consume");
    for m in ["m1", "m2", "m3"] {
        publish(&ch, "", &q, m).await;
    }
    for m in ["m1", "m2", "m3"] {
        assert_eq!(body(&next_delivery(&mut first).await), m);
    }
    ch.basic_cancel("first".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(&ch, "", &q, "m4").await;
    assert_eq!(body(&next_delivery(&mut second).await), "m4");
}

#[tokio::test]
async fn the_next_consumer_gets_what_a_closed_channel_left_unacked() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let ch = common::confirm_channel(&conn).await;
    let q = sac_queue(&ch).await;
    let ch1 = conn.create_channel().await.expect("channel");
    let mut active = basic_consume(&ch1, &q, "active", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let mut next = basic_consume(&ch, &q, "next", BasicConsumeOptions::default())
        .await
        .expect("consume");
    for m in ["m1", "m2"] {
        publish(&ch, "", &q, m).await;
    }
    for m in ["m1", "m2"] {
        let d = next_delivery(&mut active).await;
        assert_eq!((body(&d), d.redelivered), (m.to_string(), false));
    }
    ch1.close(200, "bye".into()).await.expect("close");
    for m in ["m1", "m2"] {
        let d = next_delivery(&mut next).await;
        assert_eq!((body(&d), d.redelivered), (m.to_string(), true));
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert!(drain(&ch, &q).await.is_empty());
}
