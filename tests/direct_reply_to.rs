//! RabbitMQ's direct reply-to: `amq.rabbitmq.reply-to`, as RPC clients use it.

mod common;

use common::{TestBroker, next_delivery, reply_code};
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_rpc_round_trip_through_direct_reply_to() {
    let broker = TestBroker::start().await;
    let (_sc, server) = broker.channel().await;
    server
        .queue_declare("rpc".into(), Default::default(), FieldTable::default())
        .await
        .expect("declare");
    let mut requests = server
        .basic_consume("rpc".into(), "".into(), no_ack(), FieldTable::default())
        .await
        .expect("consume requests");
    let (_cc, client) = broker.channel().await;
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            no_ack(),
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    client
        .basic_publish(
            "".into(),
            "rpc".into(),
            Default::default(),
            b"ping",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .expect("request");
    let req = next_delivery(&mut requests).await;
    let reply_to = req.properties.reply_to().clone().expect("reply_to");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "the server sees a per-channel name, not the pseudo-queue: {reply_to}"
    );
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = server
        .queue_declare(reply_to.clone(), passive, FieldTable::default())
        .await
        .expect("a live reply-to name can be declared passively");
    assert_eq!(q.consumer_count(), 1);
    server
        .basic_publish(
            "".into(),
            reply_to,
            Default::default(),
            b"pong",
            BasicProperties::default(),
        )
        .await
        .expect("reply");
    let reply = next_delivery(&mut replies).await;
    assert_eq!(reply.data, b"pong");
}

#[tokio::test]
async fn reply_consumers_must_be_no_ack_and_requesters_must_have_one() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let e = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .err();
    assert_eq!(e.as_ref().and_then(reply_code), Some(406), "{e:?}");
    let ch = broker
        .connect()
        .await
        .create_channel()
        .await
        .expect("channel");
    // Under confirms the publish's outcome is the channel's close, whatever the timing.
    ch.confirm_select(Default::default())
        .await
        .expect("confirm mode");
    let confirm = ch
        .basic_publish(
            "".into(),
            "anything".into(),
            Default::default(),
            b"x",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .expect("publish is sent");
    let e = tokio::time::timeout(std::time::Duration::from_secs(5), confirm)
        .await
        .expect("an answer")
        .err();
    assert_eq!(
        e.as_ref().and_then(common::reply_text).as_deref(),
        Some("PRECONDITION_FAILED - fast reply consumer does not exist")
    );
}
