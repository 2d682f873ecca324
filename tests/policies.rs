//! Policies and operator policies applied live, through the management API (the real
//! `rabbitmq_http_client` crate) and seen by AMQP clients (lapin): each key put in force on
//! existing and new queues and exchanges, combined with arguments as RabbitMQ combines them, and
//! taken away again.

mod common;

use std::time::Duration;

use common::{TestBroker, WAIT};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::PolicyTarget;
use rabbitmq_http_client::requests::PolicyParams;
use serde_json::{Value, json};

type Api = Client<String, &'static str, &'static str>;

fn api(b: &TestBroker) -> Api {
    Client::new(format!("http://{}/api", b.http), "guest", "guest")
}

/// Sets a policy (or an operator policy) on vhost "/".
async fn set_policy(
    api: &Api,
    name: &str,
    pattern: &str,
    target: PolicyTarget,
    priority: i32,
    definition: Value,
    operator: bool,
) {
    let Value::Object(definition) = definition else {
        panic!("a definition is an object");
    };
    let mut params = PolicyParams::new("/", name, pattern, definition);
    params.apply_to = target;
    params.priority = priority;
    if operator {
        api.declare_operator_policy(&params).await
    } else {
        api.declare_policy(&params).await
    }
    .expect("set policy");
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("declare");
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

async fn count(ch: &Channel, name: &str) -> u32 {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// Waits until `name` holds `n` messages.
async fn eventually_count(ch: &Channel, name: &str, n: u32) {
    tokio::time::timeout(WAIT, async {
        while count(ch, name).await != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never held {n} messages"));
}

async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, ch)
}

#[tokio::test]
async fn a_max_length_policy_trims_existing_queues_at_once_and_goes_when_cleared() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    declare(&ch, "pq", FieldTable::default()).await;
    for i in 0..5u8 {
        publish(&ch, "", "pq", &[i]).await;
    }
    set_policy(
        &api,
        "cap",
        "^pq$",
        PolicyTarget::Queues,
        0,
        json!({"max-length": 2}),
        false,
    )
    .await;
    eventually_count(&ch, "pq", 2).await;
    let head = ch
        .basic_get("pq".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(
        head.data,
        vec![3],
        "the head was dropped, as drop-head drops it"
    );
    let info = api.get_queue_info("/", "pq").await.expect("queue");
    assert_eq!(info.policy.as_deref(), Some("cap"));
    api.delete_policy("/", "cap", false).await.expect("clear");
    for i in 0..5u8 {
        publish(&ch, "", "pq", &[i]).await;
    }
    assert_eq!(
        count(&ch, "pq").await,
        6,
        "no limit once the policy is gone"
    );
}

#[tokio::test]
async fn the_lower_of_argument_and_policy_wins_and_an_operator_policy_caps_both() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(3));
    declare(&ch, "lq", args).await;
    set_policy(
        &api,
        "loose",
        "^lq",
        PolicyTarget::Queues,
        0,
        json!({"max-length": 10}),
        false,
    )
    .await;
    for i in 0..6u8 {
        publish(&ch, "", "lq", &[i]).await;
    }
    assert_eq!(count(&ch, "lq").await, 3, "the argument is lower");
    set_policy(
        &api,
        "cap",
        ".*",
        PolicyTarget::Queues,
        0,
        json!({"max-length": 1}),
        true,
    )
    .await;
    eventually_count(&ch, "lq", 1).await;
    let listed = common::http::get_json(&b, "/api/queues/%2F/lq").await;
    assert_eq!(listed["operator_policy"], json!("cap"));
    assert_eq!(listed["policy"], json!("loose"));
    assert_eq!(
        listed["effective_policy_definition"],
        json!({"max-length": 1})
    );
    // New queues get the policies in force as they are declared.
    declare(&ch, "lq2", FieldTable::default()).await;
    publish(&ch, "", "lq2", b"a").await;
    publish(&ch, "", "lq2", b"b").await;
    assert_eq!(count(&ch, "lq2").await, 1);
}

#[tokio::test]
async fn message_ttl_and_dead_lettering_come_from_a_policy() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlx");
    declare(&ch, "dead", FieldTable::default()).await;
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    declare(&ch, "work", FieldTable::default()).await;
    set_policy(
        &api,
        "dl",
        "^work$",
        PolicyTarget::Queues,
        0,
        json!({"dead-letter-exchange": "dlx", "message-ttl": 50}),
        false,
    )
    .await;
    publish(&ch, "", "work", b"expires").await;
    eventually_count(&ch, "dead", 1).await;
    assert_eq!(count(&ch, "work").await, 0);
    api.delete_policy("/", "dl", false).await.expect("clear");
    publish(&ch, "", "work", b"stays").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(count(&ch, "work").await, 1, "no TTL without the policy");
    let got = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("message");
    got.reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count(&ch, "dead").await,
        1,
        "no dead-lettering without the policy"
    );
}

#[tokio::test]
async fn an_alternate_exchange_policy_catches_unroutable_messages() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    for (name, kind) in [("main", ExchangeKind::Direct), ("ae", ExchangeKind::Fanout)] {
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    }
    declare(&ch, "caught", FieldTable::default()).await;
    ch.queue_bind(
        "caught".into(),
        "ae".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    set_policy(
        &api,
        "ae",
        "^main$",
        PolicyTarget::Exchanges,
        0,
        json!({"alternate-exchange": "ae"}),
        false,
    )
    .await;
    publish(&ch, "main", "nowhere", b"x").await;
    eventually_count(&ch, "caught", 1).await;
    api.delete_policy("/", "ae", false).await.expect("clear");
    publish(&ch, "main", "nowhere", b"y").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&ch, "caught").await, 1);
}

#[tokio::test]
async fn an_overflow_policy_makes_a_full_queue_refuse_publishes() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    declare(&ch, "full", FieldTable::default()).await;
    set_policy(
        &api,
        "full",
        "^full$",
        PolicyTarget::All,
        0,
        json!({"max-length": 1, "overflow": "reject-publish"}),
        false,
    )
    .await;
    publish(&ch, "", "full", b"first").await;
    let confirm = ch
        .basic_publish(
            "".into(),
            "full".into(),
            BasicPublishOptions::default(),
            b"second",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_nack(), "a full queue under reject-publish nacks");
    assert_eq!(count(&ch, "full").await, 1);
}

#[tokio::test]
async fn an_expires_policy_deletes_an_unused_queue() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    declare(&ch, "idle", FieldTable::default()).await;
    set_policy(
        &api,
        "exp",
        "^idle$",
        PolicyTarget::Queues,
        0,
        json!({"expires": 100}),
        false,
    )
    .await;
    tokio::time::timeout(WAIT, async {
        while api.get_queue_info("/", "idle").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle queue expires");
}

#[tokio::test]
async fn a_delivery_limit_policy_applies_to_quorum_queues_only_where_asked() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let (_conn, ch) = confirm_channel(&b).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        "qq".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("quorum queue");
    set_policy(
        &api,
        "dl",
        "^qq$",
        PolicyTarget::QuorumQueues,
        0,
        json!({"delivery-limit": 1}),
        false,
    )
    .await;
    publish(&ch, "", "qq", b"poison").await;
    for _ in 0..2 {
        let got = ch
            .basic_get("qq".into(), BasicGetOptions::default())
            .await
            .expect("get")
            .expect("message");
        got.reject(BasicRejectOptions { requeue: true })
            .await
            .expect("requeue");
    }
    eventually_count(&ch, "qq", 0).await;
}

#[tokio::test]
async fn bad_policies_are_refused_and_change_nothing() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let Value::Object(definition) = json!({"max-priority": 5}) else {
        unreachable!("an object");
    };
    let params = PolicyParams::new("/", "prio", ".*", definition);
    assert!(
        api.declare_policy(&params).await.is_err(),
        "max-priority is not a policy key"
    );
    let Value::Object(definition) = json!({"dead-letter-exchange": "x"}) else {
        unreachable!("an object");
    };
    let params = PolicyParams::new("/", "op", ".*", definition);
    assert!(
        api.declare_operator_policy(&params).await.is_err(),
        "operator policies take only the operator keys"
    );
    assert!(api.list_policies().await.expect("list").is_empty());
    assert!(api.list_operator_policies().await.expect("list").is_empty());
}

#[tokio::test]
async fn policies_are_in_force_again_after_kill_9() {
    use common::process::{free_port, start_with_http};
    let dir = tempfile::tempdir().expect("dir");
    let (port, http) = (free_port(), free_port());
    let broker = start_with_http(dir.path(), port, http).await;
    let api: Api = Client::new(format!("http://127.0.0.1:{http}/api"), "guest", "guest");
    set_policy(
        &api,
        "cap",
        "^kq$",
        PolicyTarget::Queues,
        0,
        json!({"max-length": 1}),
        false,
    )
    .await;
    {
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "kq".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable queue");
    }
    broker.kill9();
    let broker = start_with_http(dir.path(), port, http).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..3u8 {
        publish(&ch, "", "kq", &[i]).await;
    }
    assert_eq!(
        count(&ch, "kq").await,
        1,
        "the stored policy applies after a restart"
    );
}
