//! Access control as RabbitMQ enforces it: configure, write and read patterns per user and vhost,
//! each AMQP operation checking the permission RabbitMQ's access-control table names, refused
//! with 403 and RabbitMQ's text on the channel.

mod common;

use common::{TestBroker, confirm_channel, connect, next_error, publish, refusal};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};
use warren::config::{Permission, TopicPermission, User};

/// Starts Warren with user `app` (password `secret`) allowed to configure `^app\.`, write to
/// `^app\.|^amq\.default$` and read `^app\.|^amq\.direct$`, and user `nobody` with permissions
/// in another vhost only.
async fn broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.vhosts.push("other".into());
        for name in ["app", "nobody"] {
            c.users.push(User {
                name: name.into(),
                password_hash: warren::broker::auth::hash_password("secret"),
                vhosts: vec!["*".into()],
                tags: Vec::new(),
            });
        }
        c.permissions.push(Permission {
            user: "app".into(),
            vhost: "/".into(),
            configure: "^app\\.".into(),
            write: "^app\\.|^amq\\.default$".into(),
            read: "^app\\.|^amq\\.direct$".into(),
        });
        c.topic_permissions.push(TopicPermission {
            user: "app".into(),
            vhost: "/".into(),
            exchange: "app.topic".into(),
            write: "^app\\.".into(),
            read: "^{username}\\.".into(),
        });
        c.permissions.push(Permission {
            user: "nobody".into(),
            vhost: "other".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        });
    })
    .await
}

/// Publishes on `ch` and returns the refusal that closes it.
async fn publish_refusal(
    conn: &lapin::Connection,
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
) -> (u16, String) {
    let mut events = Box::pin(conn.events_listener());
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .expect("sent");
    refusal(&next_error(&mut events).await)
}

fn refused(kind: &str, name: &str) -> (u16, String) {
    (
        403,
        format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'app'"),
    )
}

fn args(key: &str, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    t
}

#[tokio::test]
async fn each_operation_checks_the_permission_rabbitmq_checks() {
    let broker = broker().await;
    let uri = format!("amqp://app:secret@{}/%2f", broker.addr);
    let conn = connect(&uri).await;
    let ch = confirm_channel(&conn).await;
    const DECLARE: QueueDeclareOptions = QueueDeclareOptions {
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
    };

    // Allowed: declare, bind (write on the queue, read on amq.direct), publish to the default
    // exchange, get, consume, purge, delete.
    ch.queue_declare("app.q".into(), DECLARE, FieldTable::default())
        .await
        .expect("configure ^app\\.");
    ch.queue_bind(
        "app.q".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    publish(&ch, "", "app.q", "m").await;
    let got = ch
        .basic_get("app.q".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(got.is_some());
    ch.queue_purge("app.q".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    ch.basic_consume(
        "app.q".into(),
        "c".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("consume");

    // Each refusal closes its channel with 403 and RabbitMQ's text.
    type Op = Box<
        dyn for<'a> Fn(
            &'a lapin::Channel,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = lapin::Result<()>> + Send + 'a>,
        >,
    >;
    let cases: Vec<(&str, Op, (u16, String))> = vec![
        (
            "a reserved name is refused for that first",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_declare("amq.x".into(), DECLARE, FieldTable::default())
                        .await
                        .map(drop)
                })
            }),
            (
                403,
                "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix 'amq.*'".into(),
            ),
        ),
        (
            "a system exchange's deletion is refused for that first",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.exchange_delete("amq.direct".into(), Default::default())
                        .await
                })
            }),
            (
                403,
                "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
                    .into(),
            ),
        ),
        (
            "declare outside configure",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_declare("other".into(), DECLARE, FieldTable::default())
                        .await
                        .map(drop)
                })
            }),
            refused("queue", "other"),
        ),
        (
            "a server-named queue is checked as amq.gen-...",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_declare("".into(), DECLARE, FieldTable::default())
                        .await
                        .map(drop)
                })
            }),
            (403, String::new()),
        ),
        (
            "a dead-letter exchange needs write on it",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_declare(
                        "app.dl".into(),
                        DECLARE,
                        args("x-dead-letter-exchange", "amq.fanout"),
                    )
                    .await
                    .map(drop)
                })
            }),
            refused("exchange", "amq.fanout"),
        ),
        (
            "an alternate exchange needs write on it",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.exchange_declare(
                        "app.x".into(),
                        ExchangeKind::Fanout,
                        ExchangeDeclareOptions::default(),
                        args("alternate-exchange", "amq.topic"),
                    )
                    .await
                })
            }),
            refused("exchange", "amq.topic"),
        ),
        (
            "bind needs read on the source",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_bind(
                        "app.q".into(),
                        "amq.fanout".into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                })
            }),
            refused("exchange", "amq.fanout"),
        ),
        (
            "exchange bind needs write on the destination",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.exchange_bind(
                        "amq.topic".into(),
                        "app.any".into(),
                        "".into(),
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                })
            }),
            refused("exchange", "amq.topic"),
        ),
        (
            "get needs read",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.basic_get("secret".into(), BasicGetOptions::default())
                        .await
                        .map(drop)
                })
            }),
            refused("queue", "secret"),
        ),
        (
            "consume needs read",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.basic_consume(
                        "secret".into(),
                        "c".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(drop)
                })
            }),
            refused("queue", "secret"),
        ),
        (
            "delete needs configure",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_delete("secret".into(), QueueDeleteOptions::default())
                        .await
                        .map(drop)
                })
            }),
            refused("queue", "secret"),
        ),
    ];
    for (what, op, (code, text)) in cases {
        let ch = confirm_channel(&conn).await;
        let err = op(&ch).await.expect_err(what);
        let (got_code, got_text) = refusal(&err);
        assert_eq!(got_code, code, "{what}: {got_text}");
        if text.is_empty() {
            assert!(
                got_text.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-")
                    && got_text.ends_with("' in vhost '/' refused for user 'app'"),
                "{what}: {got_text}"
            );
        } else {
            assert_eq!(got_text, text, "{what}");
        }
    }

    // A publish is refused asynchronously, closing the channel.
    let ch = confirm_channel(&conn).await;
    assert_eq!(
        publish_refusal(&conn, &ch, "amq.fanout", "").await,
        refused("exchange", "amq.fanout")
    );
    // The connection still serves the user where they are allowed.
    let ch = confirm_channel(&conn).await;
    ch.queue_declare("app.again".into(), DECLARE, FieldTable::default())
        .await
        .expect("still allowed");

    // A user with no permissions on the vhost cannot open it.
    let nobody = lapin::Connection::connect(
        &format!("amqp://nobody:secret@{}/%2f", broker.addr),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect_err("refused at connection.open");
    assert_eq!(
        refusal(&nobody),
        (
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'nobody'".to_string()
        )
    );
}

#[tokio::test]
async fn topic_permissions_check_routing_and_binding_keys() {
    let broker = broker().await;
    let conn = connect(&format!("amqp://app:secret@{}/%2f", broker.addr)).await;
    let ch = confirm_channel(&conn).await;
    ch.exchange_declare(
        "app.topic".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.queue_declare(
        "app.tq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let bind = |ch: lapin::Channel, key: &'static str| async move {
        ch.queue_bind(
            "app.tq".into(),
            "app.topic".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    };
    // {username} in the read pattern stands for the user's name.
    bind(ch.clone(), "app.#").await.expect("read ^app\\.");
    let err = bind(confirm_channel(&conn).await, "other.#")
        .await
        .expect_err("refused");
    assert_eq!(
        refusal(&err),
        (
            403,
            "ACCESS_REFUSED - access to topic 'other.#' in exchange 'app.topic' in vhost '/' \
             refused for user 'app'"
                .to_string()
        )
    );
    publish(&ch, "app.topic", "app.x", "m").await;
    assert_eq!(
        publish_refusal(&conn, &ch, "app.topic", "other.x").await,
        (
            403,
            "ACCESS_REFUSED - access to topic 'other.x' in exchange 'app.topic' in vhost '/' \
             refused for user 'app'"
                .to_string()
        )
    );
}
