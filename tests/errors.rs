//! Error replies a client sees through lapin: reply code, RabbitMQ's text, and which scope closes.
//!
//! Set `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) to run the tests that
//! need no Warren-specific setting against a real RabbitMQ instead, which checks the expectations.

mod common;

use std::time::Duration;

use common::{
    Env, TestBroker, WAIT, assert_served, auto_delete, auto_delete_exchange, basic_consume,
    basic_publish, declare_exchange, declare_exclusive, declare_queue, exclusive, get_soon,
    next_error, no_args, passive, reply_code, reply_text, table, unique,
};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// Asserts an AMQP error's code and full text.
fn assert_error(r: Result<impl std::fmt::Debug, lapin::Error>, code: u16, text: &str) {
    let e = r.expect_err("an AMQP error");
    assert_eq!(reply_code(&e), Some(code), "{e:?}");
    assert_eq!(reply_text(&e).as_deref(), Some(text), "{e:?}");
}

/// The error that closed a channel, seen through a consumer on a queue of its own: lapin hands
/// a channel's close reason to its consumers, which catches errors of methods without a reply.
async fn close_reason_sink(ch: &Channel) -> lapin::Consumer {
    let q = declare_exclusive(ch).await.expect("sink queue");
    basic_consume(ch, q.name().as_str(), "", BasicConsumeOptions::default())
        .await
        .expect("sink consumer")
}

async fn next_close_reason(sink: &mut lapin::Consumer) -> lapin::Error {
    match tokio::time::timeout(WAIT, sink.next()).await {
        Ok(Some(Err(e))) => e,
        other => panic!("expected the channel's close reason, got {other:?}"),
    }
}

/// Gives lapin up to 2 s to get to `done`: it marks a channel or connection closed once it has
/// answered close-ok.
async fn settle(done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a channel error: that channel is closed, the connection and a new channel still work.
async fn assert_only_channel_closed(conn: &Connection, ch: &Channel) {
    settle(|| !ch.status().connected()).await;
    assert!(!ch.status().connected(), "the failed channel is closed");
    assert!(conn.status().connected(), "the connection survives");
    let ch2 = conn.create_channel().await.expect("a new channel");
    let q = declare_exclusive(&ch2)
        .await
        .expect("the connection still serves methods");
    assert!(q.name().as_str().starts_with("amq.gen-"));
}

/// After a connection error: the connection is gone and refuses new channels.
async fn assert_connection_closed(conn: &Connection) {
    settle(|| !conn.status().connected()).await;
    assert!(!conn.status().connected(), "the connection is closed");
    assert!(conn.create_channel().await.is_err());
}

/// A well-behaved client still gets served: declare, publish, get.
async fn assert_healthy(t: &Env) {
    let _ = assert_served(&t.uri).await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404_on_the_channel() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let name = unique("missing");
    let r = ch
        .queue_declare(name.as_str().into(), passive(), no_args())
        .await;
    assert_error(
        r,
        404,
        &format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
    );
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404_on_the_channel() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let name = unique("missing-x");
    let r = ch
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert_error(
        r,
        404,
        &format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
    );
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn amq_prefixed_names_are_403() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let r = ch
        .exchange_declare(
            "amq.foo".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    assert_error(
        r,
        403,
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
    );
    assert_only_channel_closed(&conn, &ch).await;

    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_declare("amq.foo".into(), QueueDeclareOptions::default(), no_args())
        .await;
    assert_error(
        r,
        403,
        "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'",
    );
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn deleting_a_system_exchange_is_403() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let r = ch
        .exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
        .await;
    assert_error(
        r,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn an_exclusive_queue_is_locked_to_its_connection() {
    let t = Env::start().await;
    let (_owner, owner_ch) = t.channel().await;
    let name = unique("excl");
    owner_ch
        .queue_declare(name.as_str().into(), exclusive(), no_args())
        .await
        .expect("declare");
    let locked = format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'. \
         It could be originally declared on another connection or the exclusive property value \
         does not match that of the original declaration."
    );
    let (conn, ch) = t.channel().await;
    let r = basic_consume(&ch, &name, "", BasicConsumeOptions::default()).await;
    assert_error(r, 405, &locked);
    assert_only_channel_closed(&conn, &ch).await;

    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_declare(name.as_str().into(), exclusive(), no_args())
        .await;
    assert_error(r, 405, &locked);
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn redeclaring_with_other_durability_is_406() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let name = declare_queue(&ch, "redeclare").await;
    let r = ch
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert_error(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': \
             received 'true' but current is 'false'"
        ),
    );
    assert_only_channel_closed(&conn, &ch).await;

    let ch = conn.create_channel().await.expect("channel");
    let options = auto_delete_exchange();
    let x = declare_exchange(&ch, "redeclare-x", ExchangeKind::Fanout, options, no_args()).await;
    let r = ch
        .exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert_error(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{x}' in vhost '/': \
             received 'true' but current is 'false'"
        ),
    );
    assert_only_channel_closed(&conn, &ch).await;
}

/// Declares `name` with `first`, redeclares it with `second`, and returns the redeclare's outcome
/// (on a fresh channel, so an earlier failure does not leak into the next case).
async fn redeclare(
    conn: &Connection,
    name: &str,
    first: FieldTable,
    second: FieldTable,
) -> (Channel, Result<lapin::Queue, lapin::Error>) {
    let opts = auto_delete();
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(name.into(), opts, first)
        .await
        .expect("declare");
    let r = ch.queue_declare(name.into(), opts, second).await;
    (ch, r)
}

#[tokio::test]
async fn redeclaring_with_another_known_argument_value_is_406() {
    let t = Env::start().await;
    let conn = t.connect().await;
    let name = unique("redeclare-args");
    let _keep = conn.create_channel().await.expect("channel");
    let (ch, r) = redeclare(
        &conn,
        &name,
        table(&[("x-max-length", AMQPValue::LongLongInt(10))]),
        table(&[("x-max-length", AMQPValue::LongLongInt(20))]),
    )
    .await;
    assert_error(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{name}' in vhost '/': \
             received '20' but current is '10'"
        ),
    );
    assert_only_channel_closed(&conn, &ch).await;
}

/// RabbitMQ compares only the arguments it knows, integers by value whatever their width, and
/// names a missing side `none`.
#[tokio::test]
async fn redeclare_argument_equivalence_follows_rabbitmq() {
    let t = Env::start().await;
    let conn = t.connect().await;
    let name = unique("redeclare-missing");
    let (ch, r) = redeclare(
        &conn,
        &name,
        table(&[("x-max-length", AMQPValue::LongLongInt(10))]),
        no_args(),
    )
    .await;
    assert_error(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{name}' in vhost '/': \
             received none but current is the value '10' of type 'long'"
        ),
    );
    assert_only_channel_closed(&conn, &ch).await;

    let name = unique("redeclare-width");
    let (_ch, r) = redeclare(
        &conn,
        &name,
        table(&[("x-max-length", AMQPValue::LongLongInt(10))]),
        table(&[("x-max-length", AMQPValue::LongInt(10))]),
    )
    .await;
    assert!(r.is_ok(), "10 is 10 whatever the integer width: {r:?}");

    let name = unique("redeclare-unknown");
    let (_ch, r) = redeclare(
        &conn,
        &name,
        table(&[("x-custom", AMQPValue::LongLongInt(1))]),
        table(&[("x-custom", AMQPValue::LongLongInt(2))]),
    )
    .await;
    assert!(
        r.is_ok(),
        "arguments RabbitMQ does not know are not compared: {r:?}"
    );
}

#[tokio::test]
async fn an_unknown_delivery_tag_is_406() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let mut sink = close_reason_sink(&ch).await;
    ch.basic_ack(42, BasicAckOptions::default())
        .await
        .expect("ack is sent");
    let e = next_close_reason(&mut sink).await;
    assert_error(
        Err::<(), _>(e),
        406,
        "PRECONDITION_FAILED - unknown delivery tag 42",
    );
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn acking_twice_is_406() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let q = declare_exclusive(&ch).await.expect("declare");
    basic_publish(&ch, "", q.name().as_str(), b"once").await;
    let mut sink = close_reason_sink(&ch).await;
    let got = get_soon(&ch, q.name().as_str(), BasicGetOptions::default()).await;
    let tag = got.expect("a message").delivery.delivery_tag;
    ch.basic_ack(tag, BasicAckOptions::default())
        .await
        .expect("first ack");
    ch.basic_ack(tag, BasicAckOptions::default())
        .await
        .expect("second ack is sent");
    let e = next_close_reason(&mut sink).await;
    assert_error(
        Err::<(), _>(e),
        406,
        &format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
    );
    assert_only_channel_closed(&conn, &ch).await;
}

/// Publishes in confirm mode and returns the confirm's outcome, which carries a channel error.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<lapin::Confirmation, lapin::Error> {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?;
    tokio::time::timeout(WAIT, confirm)
        .await
        .expect("the publish is answered")
}

#[tokio::test]
async fn a_user_id_other_than_the_login_is_406() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let r = publish_confirmed(
        &ch,
        "",
        "nowhere",
        b"x",
        BasicProperties::default().with_user_id("bob".into()),
    )
    .await;
    assert_error(
        r,
        406,
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
    );
    assert_only_channel_closed(&conn, &ch).await;
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_403() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let options = ExchangeDeclareOptions {
        internal: true,
        auto_delete: true,
        ..Default::default()
    };
    let x = declare_exchange(&ch, "internal", ExchangeKind::Fanout, options, no_args()).await;
    let r = publish_confirmed(&ch, &x, "", b"x", BasicProperties::default()).await;
    assert_error(
        r,
        403,
        &format!("ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'"),
    );
    assert_only_channel_closed(&conn, &ch).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("clean up");
}

#[tokio::test]
async fn a_message_over_max_message_size_is_406() {
    let broker = TestBroker::start_with(|c| c.max_message_size = 1024).await;
    let t = Env::warren(broker);
    let (conn, ch) = t.channel().await;
    let r = publish_confirmed(&ch, "", "nowhere", &[7u8; 1024], BasicProperties::default()).await;
    assert!(
        r.is_ok(),
        "a message of exactly the limit is accepted: {r:?}"
    );
    let r = publish_confirmed(&ch, "", "nowhere", &[7u8; 2000], BasicProperties::default()).await;
    assert_error(
        r,
        406,
        "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024",
    );
    assert_only_channel_closed(&conn, &ch).await;
    assert_healthy(&t).await;
}

#[tokio::test]
async fn reusing_a_consumer_tag_closes_the_connection_with_530() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let q = declare_exclusive(&ch).await.expect("declare");
    basic_consume(
        &ch,
        q.name().as_str(),
        "ctag",
        BasicConsumeOptions::default(),
    )
    .await
    .expect("first consumer");
    let r = basic_consume(
        &ch,
        q.name().as_str(),
        "ctag",
        BasicConsumeOptions::default(),
    )
    .await;
    assert_error(r, 530, "NOT_ALLOWED - attempt to reuse consumer tag 'ctag'");
    assert_connection_closed(&conn).await;
    assert_healthy(&t).await;
}

#[tokio::test]
async fn an_unknown_exchange_type_closes_the_connection_with_503() {
    let t = Env::start().await;
    let (conn, ch) = t.channel().await;
    let r = ch
        .exchange_declare(
            unique("weird").as_str().into(),
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    assert_error(
        r,
        503,
        "COMMAND_INVALID - unknown exchange type 'x-no-such-type'",
    );
    assert_connection_closed(&conn).await;
    assert_healthy(&t).await;
}

#[tokio::test]
async fn a_wrong_password_is_403_access_refused() {
    let t = Env::start().await;
    let uri = t.uri.replacen("guest:guest@", "guest:wrong@", 1);
    let r = Connection::connect(&uri, ConnectionProperties::default()).await;
    assert_error(
        r,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
         For details see the broker logfile.",
    );
    let r = Connection::connect(
        &format!("{uri}?auth_mechanism=amqplain"),
        ConnectionProperties::default(),
    )
    .await;
    assert_error(
        r,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. \
         For details see the broker logfile.",
    );
    assert_healthy(&t).await;
}

#[tokio::test]
async fn an_unknown_user_is_403_access_refused() {
    let t = Env::start().await;
    let uri = t.uri.replacen("guest:guest@", "nobody:guest@", 1);
    let r = Connection::connect(&uri, ConnectionProperties::default()).await;
    assert_error(
        r,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
         For details see the broker logfile.",
    );
}

#[tokio::test]
async fn an_unknown_vhost_is_530() {
    let t = Env::start().await;
    let uri = t.uri.replacen("/%2f", "/no-such-vhost", 1);
    let r = Connection::connect(&uri, ConnectionProperties::default()).await;
    assert_error(r, 530, "NOT_ALLOWED - vhost no-such-vhost not found");
    assert_healthy(&t).await;
}

#[tokio::test]
async fn amqplain_login_works() {
    let t = Env::start().await;
    let conn = Connection::connect(
        &format!("{}?auth_mechanism=amqplain", t.uri),
        ConnectionProperties::default(),
    )
    .await
    .expect("AMQPLAIN login");
    assert_eq!(conn.status().username(), "guest");
    let ch = conn.create_channel().await.expect("channel");
    declare_exclusive(&ch).await.expect("declare");
}

#[tokio::test]
async fn a_loopback_user_may_log_in_from_loopback() {
    let broker = TestBroker::start_with(|c| {
        c.users.push(warren::config::User {
            name: "local".into(),
            password_hash: warren::broker::auth::hash_password("secret"),
            vhosts: vec!["/".into()],
            tags: Vec::new(),
        });
        c.loopback_users = vec!["guest".into(), "local".into()];
    })
    .await;
    let uri = format!("amqp://local:secret@{}/%2f", broker.addr);
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("a loopback user connecting from 127.0.0.1 is let in");
    assert_eq!(conn.status().username(), "local");
    let r = Connection::connect(
        &format!("amqp://local:wrong@{}/%2f", broker.addr),
        ConnectionProperties::default(),
    )
    .await;
    assert_eq!(r.err().as_ref().and_then(reply_code), Some(403));
}

#[tokio::test]
async fn shutdown_closes_clients_with_320_connection_forced() {
    let broker = TestBroker::start().await;
    let (conn, ch) = broker.channel().await;
    let q = declare_exclusive(&ch).await.expect("declare");
    let mut consumer = basic_consume(&ch, q.name().as_str(), "", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let mut events = conn.events_listener();
    broker.stop().await;
    let e = match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Err(e))) => e,
        other => panic!("expected the consumer to see the close, got {other:?}"),
    };
    assert_error(
        Err::<(), _>(e),
        320,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
    );
    let event = next_error(&mut events).await;
    assert_eq!(reply_code(&event), Some(320));
    assert_connection_closed(&conn).await;
}

/// The loopback rule itself (tests can only connect from 127.0.0.1): a listed user is refused from
/// any other address, loopback in any spelling is fine, and unlisted users may come from anywhere.
#[test]
fn loopback_users_are_refused_from_other_addresses() {
    use warren::broker::{Broker, LoginError};
    let broker = Broker::new(warren::Config::default());
    let at = |addr: &str| addr.parse::<std::net::SocketAddr>().expect("address");
    assert_eq!(
        broker.login("guest", "guest", at("192.0.2.7:5000")).err(),
        Some(LoginError::NotLoopback)
    );
    assert_eq!(
        broker.login("guest", "wrong", at("192.0.2.7:5000")).err(),
        Some(LoginError::Refused),
        "a wrong password is refused as such, wherever it comes from"
    );
    for local in ["127.0.0.1:5000", "127.1.2.3:5000", "[::1]:5000"] {
        assert!(broker.login("guest", "guest", at(local)).is_ok(), "{local}");
    }
    let mut config = warren::Config::default();
    config.loopback_users.clear();
    let broker = Broker::new(config);
    assert!(broker.login("guest", "guest", at("192.0.2.7:5000")).is_ok());
}

/// On a dual-stack listener an IPv4 client on 127.0.0.1 shows up as ::ffff:127.0.0.1, which
/// RabbitMQ counts as loopback (rabbit_net:is_loopback), so guest may still log in.
#[tokio::test]
async fn guest_may_log_in_through_a_dual_stack_listener() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::]:0").await else {
        eprintln!("no IPv6 here: nothing to test");
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = warren::Config {
        data_dir: dir.path().to_path_buf(),
        ..warren::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warren::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let r = Connection::connect(&uri, ConnectionProperties::default()).await;
    let connected = r.as_ref().map(|c| c.status().connected());
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT, server).await;
    assert!(
        matches!(connected, Ok(true)),
        "guest from 127.0.0.1 is a loopback login, mapped or not: {r:?}"
    );
}
