//! The Prometheus endpoint: `/metrics` sums, `/metrics/per-object` a series per queue, channel
//! and connection, with RabbitMQ's names, types and labels and values that follow what clients
//! did (lapin on the AMQP side).

mod common;

use std::collections::HashMap;

use common::http::scrape;
use common::{TestBroker, confirm_channel, next_delivery};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

/// A parsed scrape: each family's type, and each series (name with its labels as written)
/// with its value.
struct Scrape {
    types: HashMap<String, String>,
    series: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut types = HashMap::new();
        let mut series = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (key, value) = line.rsplit_once(' ').expect("series value");
                let value: f64 = value.parse().expect("a number");
                assert!(
                    series.insert(key.to_owned(), value).is_none(),
                    "{key} twice"
                );
            }
        }
        Self { types, series }
    }

    fn value(&self, key: &str) -> f64 {
        *self
            .series
            .get(key)
            .unwrap_or_else(|| panic!("no series {key}"))
    }
}

async fn scraped(b: &TestBroker, path: &str) -> Scrape {
    let (status, body) = scrape(b, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    Scrape::parse(&body)
}

#[tokio::test]
async fn metrics_follow_what_clients_did() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let publisher = confirm_channel(&conn).await;
    publisher
        .queue_declare(
            "m.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    for _ in 0..7 {
        publisher
            .basic_publish(
                "".into(),
                "m.q".into(),
                BasicPublishOptions::default(),
                b"12345",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let consumer_ch = conn.create_channel().await.expect("channel");
    let got = consumer_ch
        .basic_get("m.q".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.expect("ack");
    let mut consumer = consumer_ch
        .basic_consume(
            "m.q".into(),
            "m-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..6 {
        next_delivery(&mut consumer).await;
    }
    // One persistent message in a durable queue: a group commit of the store.
    publisher
        .queue_declare(
            "m.durable".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare durable");
    publisher
        .basic_publish(
            "".into(),
            "m.durable".into(),
            BasicPublishOptions::default(),
            b"kept",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let all = scraped(&b, "/metrics").await;
    assert_eq!(all.types["rabbitmq_queue_messages_ready"], "gauge");
    assert_eq!(
        all.types["rabbitmq_global_messages_received_total"],
        "counter"
    );
    assert_eq!(all.types["rabbitmq_build_info"], "untyped");
    assert_eq!(all.value("rabbitmq_queue_messages_ready"), 1.0);
    assert_eq!(all.value("rabbitmq_queue_messages_unacked"), 6.0);
    assert_eq!(all.value("rabbitmq_queue_messages"), 7.0);
    assert_eq!(all.value("rabbitmq_queue_messages_unacked_bytes"), 30.0);
    assert_eq!(all.value("rabbitmq_queues"), 2.0);
    assert_eq!(all.value("rabbitmq_connections"), 1.0);
    assert_eq!(all.value("rabbitmq_channels"), 2.0);
    assert_eq!(all.value("rabbitmq_consumers"), 1.0);
    assert_eq!(all.value("rabbitmq_connections_opened_total"), 1.0);
    assert_eq!(all.value("rabbitmq_queues_created_total"), 2.0);
    let amqp = "{protocol=\"amqp091\"}";
    assert_eq!(
        all.value(&format!("rabbitmq_global_messages_received_total{amqp}")),
        8.0
    );
    assert_eq!(
        all.value(&format!(
            "rabbitmq_global_messages_received_confirm_total{amqp}"
        )),
        8.0
    );
    assert_eq!(
        all.value(&format!("rabbitmq_global_messages_confirmed_total{amqp}")),
        8.0
    );
    assert_eq!(
        all.value(&format!("rabbitmq_global_messages_routed_total{amqp}")),
        8.0
    );
    assert_eq!(all.value(&format!("rabbitmq_global_consumers{amqp}")), 1.0);
    let classic = "{protocol=\"amqp091\",queue_type=\"rabbit_classic_queue\"}";
    assert_eq!(
        all.value(&format!(
            "rabbitmq_global_messages_acknowledged_total{classic}"
        )),
        1.0
    );
    assert_eq!(
        all.value(&format!(
            "rabbitmq_global_messages_delivered_consume_manual_ack_total{classic}"
        )),
        6.0
    );
    assert_eq!(
        all.value(&format!(
            "rabbitmq_global_messages_delivered_get_manual_ack_total{classic}"
        )),
        1.0
    );
    assert_eq!(
        all.value(&format!(
            "rabbitmq_global_messages_delivered_total{classic}"
        )),
        7.0
    );
    assert_eq!(all.value("rabbitmq_channel_messages_published_total"), 8.0);
    assert_eq!(all.value("rabbitmq_channel_messages_unacked"), 6.0);
    assert!(all.value("rabbitmq_connection_incoming_bytes_total") > 0.0);
    assert!(all.value("rabbitmq_process_resident_memory_bytes") > 0.0);
    assert!(all.value("rabbitmq_process_open_fds") > 0.0);
    assert_eq!(all.value("rabbitmq_alarms_memory_used_watermark"), 0.0);
    assert_eq!(
        all.value(&format!("rabbitmq_auth_attempts_succeeded_total{amqp}")),
        1.0
    );
    assert!(all.value("warren_store_batches_total") >= 1.0);
    assert!(all.value("warren_store_messages_written_total") >= 1.0);
    assert!(all.value("warren_store_write_seconds_total") > 0.0);
    // Seven 5-byte bodies and one of 4: all in the first bucket (up to 64 bytes).
    let size = "rabbitmq_message_size_bytes";
    assert_eq!(all.types[size], "histogram");
    assert_eq!(
        all.value(&format!("{size}_bucket{{protocol=\"amqp091\",le=\"64\"}}")),
        8.0
    );
    assert_eq!(
        all.value(&format!(
            "{size}_bucket{{protocol=\"amqp091\",le=\"+Inf\"}}"
        )),
        8.0
    );
    assert_eq!(
        all.value(&format!("{size}_sum{{protocol=\"amqp091\"}}")),
        39.0
    );
    assert_eq!(
        all.value(&format!("{size}_count{{protocol=\"amqp091\"}}")),
        8.0
    );

    let per = scraped(&b, "/metrics/per-object").await;
    let q = "{vhost=\"/\",queue=\"m.q\"}";
    assert_eq!(
        per.value(&format!("rabbitmq_queue_messages_unacked{q}")),
        6.0
    );
    assert_eq!(
        per.value(&format!("rabbitmq_queue_messages_published_total{q}")),
        7.0
    );
    assert_eq!(per.value(&format!("rabbitmq_queue_consumers{q}")), 1.0);
    let consumer_channel = per
        .series
        .keys()
        .find(|k| k.starts_with("rabbitmq_channel_consumers{") && per.series[*k] == 1.0)
        .expect("the consuming channel's series")
        .clone();
    assert!(
        consumer_channel.contains(" -> ") && consumer_channel.ends_with("(2)\"}"),
        "labelled with the channel's name: {consumer_channel}"
    );
    assert!(
        !per.series.contains_key("rabbitmq_queue_messages_unacked"),
        "per object, no unlabelled sums"
    );
    b.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let b = TestBroker::start().await;
    let (status, _) = scrape(&b, "/nothing").await;
    assert_eq!(status, 404);
    b.stop().await;
}
