//! Queues: declare (passive, durable, exclusive, auto-delete, server-named, counts), bind and
//! unbind with arguments, purge, delete with its conditions, and the "last declared queue"
//! shortcut.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren.

mod common;

use common::{
    Env, auto_delete, auto_delete_exchange, basic_consume, bind, confirm_channel, counts,
    declare_exchange, declare_exclusive, declare_queue, declare_queue_with, drain, eventually,
    exclusive, failure, get_unacked, next_delivery, no_ack, no_args, passive, publish,
    publish_props, s, table, unique,
};
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = unique("missing");
    let r = ch
        .queue_declare(q.as_str().into(), passive(), no_args())
        .await;
    assert_eq!(
        failure(r),
        (404, format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
    );
    // A soft error: the connection carries on.
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(
        failure(r),
        (404, format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
    );
}

#[tokio::test]
async fn declare_ok_reports_ready_messages_and_consumers() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = unique("counts");
    let declared = ch
        .queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("declare");
    assert_eq!(declared.name().as_str(), q);
    assert_eq!(
        (declared.message_count(), declared.consumer_count()),
        (0, 0)
    );
    for i in 0..3 {
        publish(&ch, "", &q, &i.to_string()).await;
    }
    let (_c2, consumer_ch) = env.confirm_channel().await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = basic_consume(&consumer_ch, &q, "", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"0");
    // The unacked delivery is not counted as ready.
    let again = ch
        .queue_declare(q.as_str().into(), auto_delete(), no_args())
        .await
        .expect("redeclare");
    assert_eq!((again.message_count(), again.consumer_count()), (2, 1));
    assert_eq!(counts(&env, &q).await, Ok((2, 1)));
}

#[tokio::test]
async fn server_named_queues_get_amq_gen_names() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let mut names = Vec::new();
    for _ in 0..2 {
        let q = declare_exclusive(&ch).await.expect("declare");
        let name = q.name().to_string();
        assert!(name.starts_with("amq.gen-"), "{name}");
        assert!(name.len() > "amq.gen-".len() + 8, "{name}");
        ch.queue_declare(name.as_str().into(), passive(), no_args())
            .await
            .expect("the generated name is usable");
        names.push(name);
    }
    assert_ne!(names[0], names[1]);

    let r = ch
        .queue_declare(unique("amq.mine").as_str().into(), auto_delete(), no_args())
        .await;
    let (code, text) = failure(r);
    assert_eq!(code, 403);
    assert!(
        text.starts_with("ACCESS_REFUSED - queue name 'amq.mine-"),
        "{text}"
    );
    assert!(
        text.ends_with("' contains reserved prefix 'amq.*'"),
        "{text}"
    );
}

#[tokio::test]
async fn redeclare_must_be_equivalent() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let q = unique("equiv");
    let args = table(&[("x-message-ttl", AMQPValue::LongInt(60_000))]);
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let ch = confirm_channel(&conn).await;
    ch.queue_declare(q.as_str().into(), options, args.clone())
        .await
        .expect("declare");
    // Same value in another integer width, plus arguments RabbitMQ does not compare: fine.
    ch.queue_declare(
        q.as_str().into(),
        options,
        table(&[
            ("x-message-ttl", AMQPValue::LongLongInt(60_000)),
            ("x-custom", s("ignored")),
        ]),
    )
    .await
    .expect("equivalent redeclare");

    let text = |arg: &str, received: &str, current: &str| {
        format!(
            "PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': received {received} but current is {current}"
        )
    };
    let cases = [
        (
            QueueDeclareOptions::default(),
            args.clone(),
            text("durable", "'false'", "'true'"),
        ),
        (
            QueueDeclareOptions {
                auto_delete: true,
                ..options
            },
            args.clone(),
            text("auto_delete", "'true'", "'false'"),
        ),
        (
            options,
            table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
            text("x-message-ttl", "'1000'", "'60000'"),
        ),
        (
            options,
            no_args(),
            text(
                "x-message-ttl",
                "none",
                "the value '60000' of type 'signedint'",
            ),
        ),
        (
            options,
            table(&[
                ("x-message-ttl", AMQPValue::LongInt(60_000)),
                ("x-max-length", AMQPValue::LongLongInt(10)),
            ]),
            text("x-max-length", "the value '10' of type 'long'", "none"),
        ),
    ];
    for (opts, args, want) in cases {
        let ch = confirm_channel(&conn).await;
        let r = ch.queue_declare(q.as_str().into(), opts, args).await;
        assert_eq!(failure(r), (406, want));
    }
    let ch = confirm_channel(&conn).await;
    let r = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..options
            },
            args.clone(),
        )
        .await;
    assert_eq!(failure(r).0, 405, "exclusive is checked as ownership");
    // Ownership is checked before durable.
    let ch = confirm_channel(&conn).await;
    let r = ch
        .queue_declare(q.as_str().into(), exclusive(), args.clone())
        .await;
    assert_eq!(failure(r).0, 405);
    let ch = confirm_channel(&conn).await;
    assert_eq!(
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete"),
        0
    );
}

#[tokio::test]
async fn durable_and_auto_delete_flags_are_kept() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = unique("flags");
    let flags = QueueDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(q.as_str().into(), flags, no_args())
        .await
        .expect("declare");
    // Passive declare ignores the flags it is sent.
    ch.queue_declare(q.as_str().into(), passive(), no_args())
        .await
        .expect("passive");
    ch.queue_declare(q.as_str().into(), flags, no_args())
        .await
        .expect("same flags");
    let r = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: false,
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert_eq!(failure(r).0, 406);
    let (_c, ch) = env.confirm_channel().await;
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_dies_with_it() {
    let env = Env::start().await;
    let (owner, ch) = env.confirm_channel().await;
    let q = unique("exclusive");
    ch.queue_declare(q.as_str().into(), exclusive(), no_args())
        .await
        .expect("declare");
    publish(&ch, "", &q, "mine").await;
    // Another channel of the owning connection may use it.
    let ch2 = confirm_channel(&owner).await;
    ch2.queue_declare(q.as_str().into(), exclusive(), no_args())
        .await
        .expect("the owner redeclares");
    ch2.queue_declare(q.as_str().into(), passive(), no_args())
        .await
        .expect("the owner declares passively");

    let locked = format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    );
    let other = env.connect().await;
    let ch = confirm_channel(&other).await;
    let r = ch
        .queue_declare(q.as_str().into(), passive(), no_args())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirm_channel(&other).await;
    let r = ch
        .queue_declare(q.as_str().into(), exclusive(), no_args())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirm_channel(&other).await;
    let r = basic_consume(&ch, &q, "", BasicConsumeOptions::default()).await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirm_channel(&other).await;
    let r = ch
        .basic_get(q.as_str().into(), BasicGetOptions::default())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirm_channel(&other).await;
    let r = ch
        .queue_bind(
            q.as_str().into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirm_channel(&other).await;
    let r = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(failure(r), (405, locked.clone()));
    let ch = confirm_channel(&other).await;
    let r = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert_eq!(failure(r), (405, locked));
    // Publishing to it through the default exchange is allowed.
    let ch = confirm_channel(&other).await;
    publish(&ch, "", &q, "from another connection").await;
    assert_eq!(drain(&ch2, &q).await, ["mine", "from another connection"]);

    owner.close(200, "OK".into()).await.expect("close");
    eventually("the exclusive queue goes with its connection", || async {
        counts(&env, &q).await == Err(404)
    })
    .await;
    // And the name is free for anyone now.
    let ch = confirm_channel(&other).await;
    ch.queue_declare(q.as_str().into(), exclusive(), no_args())
        .await
        .expect("declare again");
}

#[tokio::test]
async fn exclusive_queue_goes_when_its_connection_drops_without_closing() {
    let env = Env::start().await;
    let q = unique("exclusive-drop");
    {
        let (owner, ch) = env.confirm_channel().await;
        ch.queue_declare(q.as_str().into(), exclusive(), no_args())
            .await
            .expect("declare");
        assert_eq!(counts(&env, &q).await, Err(405));
        drop(ch);
        drop(owner);
    }
    eventually("the exclusive queue goes with its socket", || async {
        counts(&env, &q).await == Err(404)
    })
    .await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer_only() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "auto").await;
    publish(&ch, "", &q, "waiting").await;
    // No consumer yet: the queue stays, even across channels closing.
    let (c2, ch2) = env.confirm_channel().await;
    ch2.close(200, "OK".into()).await.expect("close");
    drop(c2);
    assert_eq!(counts(&env, &q).await, Ok((1, 0)));

    let a = basic_consume(&ch, &q, "a", BasicConsumeOptions::default())
        .await
        .expect("consume a");
    let b = basic_consume(&ch, &q, "b", BasicConsumeOptions::default())
        .await
        .expect("consume b");
    ch.basic_cancel(a.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel a");
    assert_eq!(counts(&env, &q).await.map(|c| c.1), Ok(1));
    ch.basic_cancel(b.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel b");
    assert_eq!(counts(&env, &q).await, Err(404));
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_consumers_channel_closes() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "auto-close").await;
    let (_c2, ch2) = env.confirm_channel().await;
    basic_consume(&ch2, &q, "", BasicConsumeOptions::default())
        .await
        .expect("consume");
    ch2.close(200, "OK".into()).await.expect("close");
    assert_eq!(counts(&env, &q).await, Err(404));
}

#[tokio::test]
async fn bind_and_unbind_match_on_arguments() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let options = auto_delete_exchange();
    let x = declare_exchange(&ch, "bind-args", ExchangeKind::Headers, options, no_args()).await;
    let q = declare_queue(&ch, "bind-args").await;
    let red = table(&[("colour", s("red"))]);
    let blue = table(&[("colour", s("blue"))]);
    for args in [&red, &blue] {
        bind(&ch, &q, &x, "", args.clone()).await;
    }
    let send = |colour: &'static str| {
        let ch = ch.clone();
        let x = x.clone();
        async move {
            let props = BasicProperties::default().with_headers(table(&[("colour", s(colour))]));
            publish_props(&ch, &x, "", colour, props).await;
        }
    };
    send("red").await;
    send("blue").await;
    assert_eq!(drain(&ch, &q).await, ["red", "blue"]);

    // Unbinding needs the same arguments: other arguments remove nothing.
    ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        table(&[("colour", s("green"))]),
    )
    .await
    .expect("unbind of nothing");
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "".into(), red)
        .await
        .expect("unbind red");
    send("red").await;
    send("blue").await;
    assert_eq!(drain(&ch, &q).await, ["blue"]);
}

#[tokio::test]
async fn bind_with_different_keys_and_unbind_one() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "keys").await;
    for key in ["a", "b"] {
        bind(&ch, &q, "amq.direct", &format!("{q}.{key}"), no_args()).await;
    }
    ch.queue_unbind(
        q.as_str().into(),
        "amq.direct".into(),
        format!("{q}.a").as_str().into(),
        no_args(),
    )
    .await
    .expect("unbind");
    publish(&ch, "amq.direct", &format!("{q}.a"), "a").await;
    publish(&ch, "amq.direct", &format!("{q}.b"), "b").await;
    assert_eq!(drain(&ch, &q).await, ["b"]);

    let missing = unique("missing");
    let r = ch
        .queue_bind(
            missing.as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(
        failure(r),
        (
            404,
            format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
        )
    );
}

#[tokio::test]
async fn purge_drops_ready_messages_and_returns_the_count() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "purge").await;
    for i in 0..5 {
        publish(&ch, "", &q, &i.to_string()).await;
    }
    let (c2, holder) = env.confirm_channel().await;
    let held = get_unacked(&holder, &q).await;
    assert_eq!(held.data, b"0");
    let purged = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, 4, "the unacked message is not purged");
    assert_eq!(
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge again"),
        0
    );
    publish(&ch, "", &q, "after").await;
    // The unacked one comes back when its channel closes.
    c2.close(200, "OK".into()).await.expect("close");
    eventually("the unacked message is requeued", || async {
        counts(&env, &q).await == Ok((2, 0))
    })
    .await;
    assert_eq!(drain(&ch, &q).await, ["0", "after"]);
}

#[tokio::test]
async fn delete_checks_if_unused_and_if_empty_and_returns_the_count() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let q = declare_queue_with(&ch, "delete", QueueDeclareOptions::default()).await;
    for i in 0..3 {
        publish(&ch, "", &q, &i.to_string()).await;
    }
    let r = ch
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        failure(r),
        (
            406,
            format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
        )
    );

    let consumer_ch = confirm_channel(&conn).await;
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = basic_consume(&consumer_ch, &q, "", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let _unacked = next_delivery(&mut consumer).await;
    let ch = confirm_channel(&conn).await;
    let r = ch
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        failure(r),
        (
            406,
            format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
        )
    );
    let ch = confirm_channel(&conn).await;
    let count = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(count, 2, "ready messages only");
    assert_eq!(counts(&env, &q).await, Err(404));
    // Deleting what is not there succeeds with 0.
    assert_eq!(
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete again"),
        0
    );

    let empty = declare_queue(&ch, "delete-empty").await;
    let count = ch
        .queue_delete(
            empty.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect("delete an empty unused queue");
    assert_eq!(count, 0);
}

#[tokio::test]
async fn deleting_a_queue_removes_its_bindings() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = unique("rebind");
    for round in 0..2 {
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), no_args())
            .await
            .expect("declare");
        if round == 0 {
            bind(&ch, &q, "amq.direct", &q, no_args()).await;
            publish(&ch, "amq.direct", &q, "bound").await;
            assert_eq!(drain(&ch, &q).await, ["bound"]);
        } else {
            publish(&ch, "amq.direct", &q, "not bound any more").await;
            assert_eq!(drain(&ch, &q).await, Vec::<String>::new());
        }
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
    }
}

#[tokio::test]
async fn empty_queue_name_means_the_last_declared_queue() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_exclusive(&ch).await.expect("declare");
    let name = q.name().to_string();
    // Empty queue and key: bind the last queue with its own name as the key.
    ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        QueueBindOptions::default(),
        no_args(),
    )
    .await
    .expect("bind the last queue");
    publish(&ch, "amq.direct", &name, "via shortcut binding").await;
    let m = ch
        .basic_get("".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get from the last queue")
        .expect("a message");
    assert_eq!(m.delivery.data, b"via shortcut binding");
    assert_eq!(m.delivery.routing_key.as_str(), name);

    publish(&ch, "", &name, "for the consumer").await;
    let mut consumer = basic_consume(&ch, "", "", no_ack())
        .await
        .expect("consume from the last queue");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"for the consumer");
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");

    publish(&ch, "", &name, "to purge").await;
    assert_eq!(
        ch.queue_purge("".into(), QueuePurgeOptions::default())
            .await
            .expect("purge the last queue"),
        1
    );
    ch.queue_unbind("".into(), "amq.direct".into(), "".into(), no_args())
        .await
        .expect("unbind the last queue");
    publish(&ch, "amq.direct", &name, "unbound").await;
    assert_eq!(drain(&ch, &name).await, Vec::<String>::new());
    assert_eq!(
        ch.queue_delete("".into(), QueueDeleteOptions::default())
            .await
            .expect("delete the last queue"),
        0
    );
    assert_eq!(counts(&env, &name).await, Err(404));

    // queue.declare is not a shortcut user, even passive.
    let r = ch.queue_declare("".into(), passive(), no_args()).await;
    assert_eq!(
        failure(r),
        (404, "NOT_FOUND - no queue '' in vhost '/'".to_string())
    );
}

#[tokio::test]
async fn empty_queue_name_without_a_declared_queue_is_404() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let r = ch.basic_get("".into(), BasicGetOptions::default()).await;
    assert_eq!(
        failure(r),
        (404, "NOT_FOUND - no previously declared queue".to_string())
    );
}
