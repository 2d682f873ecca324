//! RabbitMQ's tutorials 1-6, run with lapin against Warren.

mod common;

use common::{TestBroker, bind, declare_exclusive, drain, next_delivery, no_ack, no_args};
use lapin::options::*;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn tutorial_1_hello_world() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare("hello".into(), QueueDeclareOptions::default(), no_args())
        .await
        .expect("declare");
    ch.basic_publish(
        "".into(),
        "hello".into(),
        BasicPublishOptions::default(),
        b"Hello World!",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let mut consumer = ch
        .basic_consume("hello".into(), "".into(), no_ack(), no_args())
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"Hello World!");
    assert_eq!(d.routing_key.as_str(), "hello");
    assert!(!d.redelivered);
}

#[tokio::test]
async fn tutorial_2_work_queues_round_robin_with_prefetch_and_acks() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "task_queue".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("declare");
    let (_c1, w1) = broker.channel().await;
    let (_c2, w2) = broker.channel().await;
    let mut consumers = Vec::new();
    for w in [&w1, &w2] {
        w.basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        consumers.push(
            w.basic_consume(
                "task_queue".into(),
                "".into(),
                BasicConsumeOptions::default(),
                no_args(),
            )
            .await
            .expect("consume"),
        );
    }
    for i in 0..4 {
        ch.basic_publish(
            "".into(),
            "task_queue".into(),
            BasicPublishOptions::default(),
            format!("task {i}").as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        for c in consumers.iter_mut() {
            let d = next_delivery(c).await;
            seen.push(String::from_utf8_lossy(&d.data).to_string());
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }
    seen.sort();
    assert_eq!(seen, ["task 0", "task 1", "task 2", "task 3"]);
}

#[tokio::test]
async fn tutorial_3_publish_subscribe_fanout() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(
        "logs".into(),
        ExchangeKind::Fanout,
        Default::default(),
        no_args(),
    )
    .await
    .expect("exchange");
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let q = declare_exclusive(&ch).await.expect("queue");
        assert!(q.name().as_str().starts_with("amq.gen-"));
        bind(&ch, q.name().as_str(), "logs", "", no_args()).await;
        consumers.push(
            ch.basic_consume(q.name().clone(), "".into(), no_ack(), no_args())
                .await
                .expect("consume"),
        );
    }
    ch.basic_publish(
        "logs".into(),
        "".into(),
        Default::default(),
        b"info: hi",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    for c in consumers.iter_mut() {
        assert_eq!(next_delivery(c).await.data, b"info: hi");
    }
}

async fn routed(
    broker: &TestBroker,
    exchange: &str,
    kind: ExchangeKind,
    bindings: &[&str],
    publishes: &[&str],
) -> Vec<String> {
    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(exchange.into(), kind, Default::default(), no_args())
        .await
        .expect("exchange");
    let q = declare_exclusive(&ch).await.expect("queue");
    for b in bindings {
        bind(&ch, q.name().as_str(), exchange, b, no_args()).await;
    }
    for rk in publishes {
        ch.basic_publish(
            exchange.into(),
            (*rk).into(),
            Default::default(),
            rk.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    drain(&ch, q.name().as_str()).await
}

#[tokio::test]
async fn tutorial_4_routing_direct() {
    let broker = TestBroker::start().await;
    let got = routed(
        &broker,
        "direct_logs",
        ExchangeKind::Direct,
        &["error", "warning"],
        &["info", "error", "warning", "debug"],
    )
    .await;
    assert_eq!(got, ["error", "warning"]);
}

#[tokio::test]
async fn tutorial_5_topics() {
    let broker = TestBroker::start().await;
    let got = routed(
        &broker,
        "topic_logs",
        ExchangeKind::Topic,
        &["*.orange.*", "*.*.rabbit", "lazy.#"],
        &[
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox",
            "lazy.brown.fox",
            "quick.brown.fox",
            "orange",
            "quick.orange.new.rabbit",
            "lazy.orange.new.rabbit",
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox",
            "lazy.brown.fox",
            "lazy.orange.new.rabbit"
        ]
    );
}

#[tokio::test]
async fn tutorial_6_rpc() {
    let broker = TestBroker::start().await;
    let (_sc, server) = broker.channel().await;
    server
        .queue_declare("rpc_queue".into(), Default::default(), no_args())
        .await
        .expect("declare");
    let mut requests = server
        .basic_consume("rpc_queue".into(), "".into(), Default::default(), no_args())
        .await
        .expect("consume");
    let (_cc, client) = broker.channel().await;
    let callback = declare_exclusive(&client).await.expect("callback queue");
    let mut replies = client
        .basic_consume(callback.name().clone(), "".into(), no_ack(), no_args())
        .await
        .expect("consume replies");
    client
        .basic_publish(
            "".into(),
            "rpc_queue".into(),
            Default::default(),
            b"30",
            BasicProperties::default()
                .with_reply_to(callback.name().clone())
                .with_correlation_id("abc".into()),
        )
        .await
        .expect("request");
    let req = next_delivery(&mut requests).await;
    let n: u64 = String::from_utf8_lossy(&req.data).parse().expect("number");
    let fib = (0..n).fold((0u64, 1u64), |(a, b), _| (b, a + b)).0;
    let reply_to = req.properties.reply_to().clone().expect("reply_to");
    server
        .basic_publish(
            "".into(),
            reply_to,
            Default::default(),
            fib.to_string().as_bytes(),
            BasicProperties::default()
                .with_correlation_id(req.properties.correlation_id().clone().expect("cid")),
        )
        .await
        .expect("reply");
    req.ack(Default::default()).await.expect("ack");
    let reply = next_delivery(&mut replies).await;
    assert_eq!(reply.data, b"832040");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("abc")
    );
}
