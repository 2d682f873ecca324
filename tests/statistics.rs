//! Statistics in the management API: per queue, exchange, channel, connection, vhost and
//! broker counters, unacknowledged counts, the channel and consumer listings (read with the real
//! `rabbitmq_http_client` crate), rates and samples from the ticker, and the aliveness test.

mod common;

use std::time::Duration;

use common::http::get_json;
use common::{TestBroker, WAIT, confirm_channel, next_delivery};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use rabbitmq_http_client::api::Client;
use serde_json::Value;

/// The sampling interval the tests run with: short, so rates appear within a test.
const TICK_MS: u64 = 100;

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| c.management.collect_statistics_interval = TICK_MS).await
}

/// Waits until `check` holds for the JSON at `path`, or fails with the last answer.
async fn until(b: &TestBroker, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = get_json(b, path).await;
        if check(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never matched: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn counters_follow_publishes_deliveries_and_acks_on_every_object() {
    let b = broker().await;
    let (_pconn, publisher) = {
        let conn = b.connect().await;
        let ch = confirm_channel(&conn).await;
        (conn, ch)
    };
    publisher
        .exchange_declare(
            "stats.x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    publisher
        .queue_declare(
            "stats.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    publisher
        .queue_bind(
            "stats.q".into(),
            "stats.x".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    for i in 0..13 {
        let exchange = if i < 10 { "stats.x" } else { "" };
        publisher
            .basic_publish(
                exchange.into(),
                "stats.q".into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    // Mandatory and unroutable: returned.
    publisher
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let (_cconn, consumer_ch) = b.channel().await;
    consumer_ch
        .basic_qos(5, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consumer_ch
        .basic_consume(
            "stats.q".into(),
            "stats-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(next_delivery(&mut consumer).await.delivery_tag);
    }
    let q = until(&b, "/api/queues/%2f/stats.q", |q| {
        q["messages_unacknowledged"] == 5
    })
    .await;
    assert_eq!(q["messages_ready"], 8, "{q:#}");
    assert_eq!(q["messages"], 13);
    assert_eq!(q["message_stats"]["publish"], 13);
    assert_eq!(q["message_stats"]["deliver"], 5);
    assert_eq!(q["message_stats"]["deliver_get"], 5);
    assert_eq!(
        q["message_stats"]["get_empty"], 0,
        "shown with the deliveries"
    );
    assert!(q["message_stats"].get("ack").is_none(), "nothing acked yet");
    assert_eq!(q["message_bytes_unacknowledged"], 5);
    assert_eq!(q["message_bytes"], 13);
    assert_eq!(q["consumer_details"][0]["consumer_tag"], "stats-consumer");
    assert_eq!(q["consumer_details"][0]["prefetch_count"], 5);
    assert_eq!(q["consumer_details"][0]["ack_required"], true);

    consumer_ch
        .basic_ack(tags[1], BasicAckOptions { multiple: true })
        .await
        .expect("ack two");
    let q = until(&b, "/api/queues/%2f/stats.q", |q| {
        q["message_stats"]["ack"] == 2
    })
    .await;
    assert_eq!(
        q["message_stats"]["deliver"], 7,
        "credit for two more: {q:#}"
    );

    let x = get_json(&b, "/api/exchanges/%2f/stats.x").await;
    assert_eq!(x["message_stats"]["publish_in"], 10, "{x:#}");
    assert_eq!(x["message_stats"]["publish_out"], 10);
    let default = get_json(&b, "/api/exchanges/%2f/amq.default").await;
    assert_eq!(default["message_stats"]["publish_in"], 4, "{default:#}");
    assert_eq!(default["message_stats"]["publish_out"], 3);

    // The channels, through the client crate's own types.
    let api = Client::new(format!("http://{}/api", b.http), "guest", "guest");
    let channels = api.list_channels().await.expect("list channels");
    assert_eq!(channels.len(), 2, "{channels:?}");
    let pub_ch = channels
        .iter()
        .find(|c| c.has_publisher_confirms_enabled)
        .expect("the confirming channel");
    assert_eq!(pub_ch.messages_unconfirmed, 0);
    let cons_ch = channels
        .iter()
        .find(|c| c.consumer_count == 1)
        .expect("the consuming channel");
    assert_eq!(cons_ch.prefetch_count, 5);
    assert_eq!(cons_ch.messages_unacknowledged, 5);
    let consumers = api.list_consumers().await.expect("list consumers");
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].consumer_tag, "stats-consumer");
    assert!(consumers[0].manual_ack);
    let details = consumers[0].channel_details.as_ref().expect("its channel");
    assert_eq!(details.name, cons_ch.name);

    let all = get_json(&b, "/api/channels").await;
    let publisher_json = all
        .as_array()
        .and_then(|a| a.iter().find(|c| c["confirm"] == true))
        .expect("publisher channel")
        .clone();
    let stats = &publisher_json["message_stats"];
    assert_eq!(stats["publish"], 14, "{publisher_json:#}");
    assert_eq!(stats["confirm"], 14);
    assert_eq!(stats["return_unroutable"], 1);
    let conn_name = publisher_json["connection_details"]["name"]
        .as_str()
        .expect("connection name")
        .to_owned();
    let path = format!(
        "/api/connections/{}/channels",
        conn_name.replace(' ', "%20").replace('>', "%3E")
    );
    assert_eq!(get_json(&b, &path).await.as_array().map(Vec::len), Some(1));
    let conns = get_json(&b, "/api/connections").await;
    for c in conns.as_array().expect("connections") {
        assert!(c["recv_oct"].as_u64() > Some(0), "{c:#}");
        assert!(c["send_oct"].as_u64() > Some(0), "{c:#}");
    }

    // The vhost and the overview sum what was sampled: a sample may fall between the publishes
    // and the acks, so wait for one after both.
    let vhost = until(&b, "/api/vhosts/%2f", |v| {
        v["message_stats"]["publish"] == 14
            && v["message_stats"]["ack"] == 2
            && v["messages_unacknowledged"] == 5
    })
    .await;
    assert!(vhost["recv_oct"].as_u64() > Some(0));
    let overview = until(&b, "/api/overview", |o| o["message_stats"]["publish"] == 14).await;
    assert_eq!(overview["queue_totals"]["messages_unacknowledged"], 5);
    assert_eq!(overview["queue_totals"]["messages"], 11);
    assert_eq!(overview["object_totals"]["channels"], 2);
    let churn = &overview["churn_rates"];
    assert_eq!(churn["connection_created"], 2, "{churn:#}");
    assert_eq!(churn["channel_created"], 2);
    assert_eq!(churn["queue_created"], 1);
    assert_eq!(churn["queue_declared"], 1);

    // A closed channel's counts stay with its vhost; its deliveries go back to the queue.
    drop(consumer);
    consumer_ch.close(200, "bye".into()).await.expect("close");
    let q = until(&b, "/api/queues/%2f/stats.q", |q| {
        q["messages_unacknowledged"] == 0
    })
    .await;
    assert_eq!(q["messages_ready"], 11, "{q:#}");
    assert_eq!(q["message_stats"]["redeliver"], 0);
    let vhost = until(&b, "/api/vhosts/%2f", |v| v["messages_unacknowledged"] == 0).await;
    assert_eq!(vhost["message_stats"]["deliver"], 7, "{vhost:#}");
    assert_eq!(vhost["message_stats"]["ack"], 2);
    assert!(api.list_consumers().await.expect("consumers").is_empty());
    let overview = get_json(&b, "/api/overview").await;
    assert_eq!(overview["churn_rates"]["channel_closed"], 1, "{overview:#}");
    b.stop().await;
}

#[tokio::test]
async fn rates_and_samples_come_from_the_ticker() {
    let b = broker().await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "rates.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    // Sampled idle first, so the publishes below fall between two samples.
    tokio::time::sleep(Duration::from_millis(3 * TICK_MS)).await;
    for _ in 0..50 {
        ch.basic_publish(
            "".into(),
            "rates.q".into(),
            BasicPublishOptions::default(),
            b"r",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let q = until(
        &b,
        "/api/queues/%2f/rates.q?msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5",
        |q| q["messages_details"]["samples"][0]["sample"] == 50,
    )
    .await;
    let publish = &q["message_stats"]["publish_details"];
    let samples = publish["samples"].as_array().expect("samples");
    assert_eq!(samples[0]["sample"], 50, "newest first: {publish:#}");
    assert_eq!(
        samples.last().map(|s| &s["sample"]),
        Some(&Value::from(0)),
        "the idle sample before: {publish:#}"
    );
    assert!(publish["avg_rate"].as_f64() > Some(0.0), "{publish:#}");
    assert!(
        q["messages_details"]["avg_rate"].as_f64() > Some(0.0),
        "{q:#}"
    );
    // Without an age, only the rate, which falls back to 0 once publishing stopped.
    let q = until(&b, "/api/queues/%2f/rates.q", |q| {
        q["message_stats"]["publish_details"]["rate"] == 0.0
    })
    .await;
    assert!(
        q["message_stats"]["publish_details"]
            .get("samples")
            .is_none()
    );
    b.stop().await;
}

#[tokio::test]
async fn the_aliveness_test_sends_a_message_through_a_queue_of_the_vhost() {
    let b = broker().await;
    let ok = get_json(&b, "/api/aliveness-test/%2f").await;
    assert_eq!(ok, serde_json::json!({"status": "ok"}));
    // As in RabbitMQ, the queue it went through stays, empty.
    let q = get_json(&b, "/api/queues/%2f/aliveness-test").await;
    assert_eq!(q["messages"], 0, "{q:#}");
    assert_eq!(q["message_stats"]["publish"], 1, "{q:#}");
    let (status, _) = common::http::request(&b, "GET", "/api/aliveness-test/nowhere", "").await;
    assert_eq!(status, 404);
    b.stop().await;
}

#[tokio::test]
async fn a_transaction_shows_what_it_holds_until_it_ends() {
    let b = broker().await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "tx.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.tx_select().await.expect("tx.select");
    for _ in 0..2 {
        ch.basic_publish(
            "".into(),
            "tx.q".into(),
            BasicPublishOptions::default(),
            b"t",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let channel = until(&b, "/api/channels", |c| c[0]["messages_uncommitted"] == 2).await;
    assert_eq!(channel[0]["transactional"], true, "{channel:#}");
    ch.tx_commit().await.expect("commit");
    let channel = get_json(&b, "/api/channels").await;
    assert_eq!(channel[0]["messages_uncommitted"], 0, "{channel:#}");
    let q = get_json(&b, "/api/queues/%2f/tx.q").await;
    assert_eq!(q["messages"], 2);
    b.stop().await;
}
