//! The broker's registry of live connections, and closing one through its control path.

mod common;

use amq_protocol::protocol::{AMQPClass, basic, connection};
use common::raw::{self, Closed, Raw};
use common::*;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, ConnectionProperties};
use warren::broker::connections::Control;
use warren::protocol::frame::Frame;
use warren::protocol::method::{Method, decode};

/// What RabbitMQ's management plugin says when an operator closes a connection.
const FORCED: &str = "CONNECTION_FORCED - Closed via management plugin";

#[tokio::test]
async fn the_registry_lists_a_connection_with_who_it_is_and_forgets_it_after_close() {
    let broker = TestBroker::start().await;
    let conn = lapin::Connection::connect(
        &broker.uri(),
        ConnectionProperties::default().with_connection_name("registry-test".into()),
    )
    .await
    .expect("connect");
    let _one = conn.create_channel().await.expect("channel");
    let _two = conn.create_channel().await.expect("channel");
    let registry = &broker.broker.connections;
    eventually("the connection is listed with its two channels", || async {
        registry.list().iter().any(|c| c.channels() == 2)
    })
    .await;
    let listed = registry.list();
    assert_eq!(listed.len(), 1);
    let c = &listed[0];
    assert_eq!(c.identity.user, "guest");
    assert_eq!(&*c.identity.vhost, "/");
    assert_eq!(c.name().as_deref(), Some("registry-test"));
    assert!(c.identity.peer.ip().is_loopback());
    assert_ne!(c.identity.peer.port(), broker.addr.port());
    assert!(registry.get(c.id).is_some());

    conn.close(200, "bye".into()).await.expect("close");
    eventually("the closed connection is forgotten", || async {
        registry.is_empty()
    })
    .await;
}

#[tokio::test]
async fn the_registry_sees_the_peer_and_channel_closes() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.open_channel(2).await;
    let local = raw.stream.local_addr().expect("local addr");
    let registry = &broker.broker.connections;
    eventually("the raw client is listed with two channels", || async {
        registry
            .list()
            .iter()
            .any(|c| c.identity.peer == local && c.channels() == 2)
    })
    .await;
    raw.send(&raw::method(2, 20, 40, &[0, 200, 0, 0, 0, 0, 0]))
        .await;
    let (ch, _) = raw.expect_method().await;
    assert_eq!(ch, 2, "channel.close-ok");
    eventually("one channel is left", || async {
        registry.list().iter().any(|c| c.channels() == 1)
    })
    .await;
}

/// The control path is not the queue-event inbox: the close gets through while thousands of
/// deliveries wait behind a consumer that does not read its socket. Had it queued behind them,
/// the client would read every delivery before the close.
#[tokio::test]
async fn closing_a_connection_gets_through_its_backlog_of_deliveries_and_spares_the_others() {
    const MESSAGES: usize = 6000;
    let broker = TestBroker::start().await;
    let publisher = broker.connect().await;
    let ch = confirm_channel(&publisher).await;
    let queue = declare_queue_with(&ch, "backlog", QueueDeclareOptions::default()).await;

    // A consumer with no prefetch limit that never reads its socket.
    let mut hog = Raw::open(broker.addr).await;
    hog.send(&raw::consume(1, &queue, "hog")).await;
    let (_, d) = hog.expect_method().await;
    assert!(
        matches!(
            d.method,
            Method::Other(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
        ),
        "basic.consume-ok expected, got {d:?}"
    );
    let local = hog.stream.local_addr().expect("local addr");
    let id = broker
        .broker
        .connections
        .list()
        .iter()
        .find(|c| c.identity.peer == local)
        .map(|c| c.id)
        .expect("the consumer's connection is registered");

    // Far more than the socket buffers and the connection's write buffer hold together.
    let body = vec![7u8; 16 * 1024];
    let mut confirms = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }

    assert!(broker.broker.close_connection(id, 320, FORCED));
    assert_channel_served(&ch).await;

    let mut delivered = 0;
    let closed = loop {
        let Some(frame) = hog.next().await else {
            panic!("the socket closed before connection.close");
        };
        let Frame::Method { channel, payload } = frame else {
            continue;
        };
        match decode(&payload).expect("a method Warren can decode").method {
            Method::Other(AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => delivered += 1,
            Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                assert_eq!(channel, 0);
                break Closed::new(c.reply_code, c.reply_text.as_str(), c.class_id, c.method_id);
            }
            other => panic!("a delivery or connection.close expected, got {other:?}"),
        }
    };
    assert_eq!(closed, Closed::new(320, FORCED, 0, 0));
    assert!(
        delivered < MESSAGES,
        "the close came after the whole backlog ({delivered} deliveries)"
    );
    hog.send(&raw::connection_close_ok()).await;
    hog.expect_eof().await;
    assert_channel_served(&ch).await;
    eventually("the closed connection is forgotten", || async {
        broker.broker.connections.get(id).is_none()
    })
    .await;
}

#[tokio::test]
async fn block_and_unblock_on_the_control_path_hold_a_publisher_back_and_let_it_go() {
    let broker = TestBroker::start().await;
    let publisher = broker.connect().await;
    let ch = confirm_channel(&publisher).await;
    let queue = declare_queue_with(&ch, "held", QueueDeclareOptions::default()).await;
    publish(&ch, "", &queue, b"before").await;
    let registered = broker.broker.connections.list().pop().expect("registered");
    assert!(registered.control(Control::Block {
        reason: "held by the operator".into()
    }));
    eventually("the publisher is blocked", || async {
        publisher.status().blocked()
    })
    .await;
    assert!(registered.control(Control::Unblock));
    eventually("the publisher is unblocked", || async {
        !publisher.status().blocked()
    })
    .await;
    publish(&ch, "", &queue, b"after").await;
    assert_eq!(drain(&ch, &queue).await, ["before", "after"]);
}
