//! The limits that keep one client from hurting the others, each set in the config, refused with
//! RabbitMQ's reply code and text, counted in the metrics: the node's connection limit,
//! consumers per channel, the consumer acknowledgement timeout, what a channel's consumers with
//! no prefetch may hold unacked, and the growing delay of logins from an address whose logins fail.
//! After each refusal, everyone else is still served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, connection};
use common::http::scrape;
use common::raw::Raw;
use common::{
    TestBroker, WAIT, assert_served, basic_consume, confirm_channel, declare_queue,
    declare_queue_with, failure, no_args, publish, refusal,
};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::{Connection, ConnectionProperties};
use warren::protocol::method::Method;

/// The value of `series` (name and labels) in a scrape of `/metrics`.
async fn metric(b: &TestBroker, series: &str) -> u64 {
    let (status, body) = scrape(b, "/metrics").await;
    assert_eq!(status, 200);
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
}

/// The value of `warren_limit_refusals_total` for `limit`.
async fn refusals(b: &TestBroker, limit: &str) -> u64 {
    metric(
        b,
        &format!("warren_limit_refusals_total{{limit=\"{limit}\"}}"),
    )
    .await
}

#[tokio::test]
async fn the_node_connection_limit_refuses_one_more_with_530() {
    let b = TestBroker::start_with(|c| c.connection_max = 2).await;
    let first = b.connect().await;
    let _second = b.connect().await;
    let r = Connection::connect(&b.uri(), ConnectionProperties::default()).await;
    assert_eq!(
        failure(r),
        (
            530,
            "NOT_ALLOWED - connection refused: node connection limit (2) is reached".into()
        )
    );
    assert_eq!(refusals(&b, "connection_max").await, 1);
    first.close(200, "bye".into()).await.expect("close");
    // The slot is free again once the broker has let the first connection go.
    let deadline = Instant::now() + WAIT;
    loop {
        match Connection::connect(&b.uri(), ConnectionProperties::default()).await {
            Ok(c) => {
                c.close(200, "bye".into()).await.expect("close");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never admitted again: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_consumer_past_consumer_max_per_channel_closes_the_connection_with_530() {
    let b = TestBroker::start_with(|c| c.consumer_max_per_channel = 2).await;
    let (conn, ch) = b.channel().await;
    let q = declare_queue(&ch, "consumers").await;
    let mut kept = Vec::new();
    for tag in ["a", "b"] {
        // Kept: lapin cancels a consumer it drops.
        kept.push(
            basic_consume(&ch, &q, tag, BasicConsumeOptions::default())
                .await
                .expect("within the limit"),
        );
    }
    let r = basic_consume(&ch, &q, "c", BasicConsumeOptions::default()).await;
    assert_eq!(
        failure(r),
        (
            530,
            "NOT_ALLOWED - reached maximum (2) of consumers per channel".into()
        )
    );
    common::eventually("the connection is closed", || {
        let closed = !conn.status().connected();
        async move { closed }
    })
    .await;
    assert_eq!(refusals(&b, "consumer_max_per_channel").await, 1);
    assert_served(&b.uri()).await.expect("others are served");
}

/// RabbitMQ's text for a consumer timeout on channel 1 with `ms`.
fn timed_out(ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value \
         used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
    )
}

#[tokio::test]
async fn an_unacked_delivery_past_consumer_timeout_closes_its_channel_with_406_and_is_requeued() {
    let b = TestBroker::start_with(|c| c.consumer_timeout = 300).await;
    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = declare_queue_with(&ch, "slow", QueueDeclareOptions::default()).await;
    publish(&ch, "", &q, "held").await;
    let mut consumer = basic_consume(&ch, &q, "slow", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let first = common::next_delivery(&mut consumer).await;
    assert!(!first.redelivered);
    let started = Instant::now();
    let e = match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Err(e))) => e,
        other => panic!("expected the channel's close, got {other:?}"),
    };
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout"
    );
    assert_eq!(refusal(&e), (406, timed_out(300)));
    // The message went back to its queue, marked redelivered.
    let (_c2, ch2) = b.channel().await;
    let again = common::get_soon(&ch2, &q, BasicGetOptions { no_ack: true })
        .await
        .expect("requeued");
    assert!(again.delivery.redelivered);
    assert_eq!(refusals(&b, "consumer_timeout").await, 1);
}

#[tokio::test]
async fn consumer_timeout_covers_basic_get_and_spares_a_channel_that_acks_in_time() {
    let b = TestBroker::start_with(|c| c.consumer_timeout = 400).await;
    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = declare_queue(&ch, "got").await;
    for body in ["one", "two"] {
        publish(&ch, "", &q, body).await;
    }
    // A channel that acks within the timeout, again and again, is left alone.
    for _ in 0..3 {
        let d = common::get_unacked(&ch, &q).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await
            .expect("ack in time");
        publish(&ch, "", &q, "more").await;
    }
    assert!(ch.status().connected(), "acking in time keeps the channel");
    // One it holds from basic.get past the timeout closes it.
    let mut events = Box::pin(conn.events_listener());
    let _held = common::get_unacked(&ch, &q).await;
    let e = common::next_error(&mut events).await;
    assert_eq!(refusal(&e), (406, timed_out(400)));
}

#[tokio::test]
async fn consumers_with_no_prefetch_share_the_channels_unacked_cap() {
    let b = TestBroker::start_with(|c| c.consumer_max_unacked = 10).await;
    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    let (qa, qb) = (
        declare_queue(&ch, "cap-a").await,
        declare_queue(&ch, "cap-b").await,
    );
    for i in 0..20 {
        publish(&ch, "", &qa, format!("a{i}")).await;
        publish(&ch, "", &qb, format!("b{i}")).await;
    }
    let mut a = basic_consume(&ch, &qa, "a", BasicConsumeOptions::default())
        .await
        .expect("consume a");
    let mut b_consumer = basic_consume(&ch, &qb, "b", BasicConsumeOptions::default())
        .await
        .expect("consume b");
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(common::next_delivery(&mut a).await);
    }
    // Consumer a took the whole cap: b gets nothing, and neither does a, until some is acked.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_consumer.next())
            .await
            .is_err(),
        "the channel's cap is shared"
    );
    let (_c2, ch2) = b.channel().await;
    let waiting = ch2
        .queue_declare(qb.as_str().into(), common::passive(), no_args())
        .await
        .expect("passive declare");
    assert_eq!(
        waiting.message_count(),
        20,
        "b's messages wait in their queue"
    );
    // Acking frees room: a's queue may take it first, but once a's are done b's consumer gets
    // its share, woken though nothing was acked on its queue.
    for d in held {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    for _ in 0..10 {
        let d = common::next_delivery(&mut a).await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let from_b = common::next_delivery(&mut b_consumer).await;
    assert_eq!(from_b.routing_key.as_str(), qb);
}

/// Opens a raw connection from `source` (any 127/8 address is this host) and tries `password`
/// as guest; returns whether the login was accepted, and when the broker's answer came.
async fn try_login(addr: SocketAddr, source: &str, password: String) -> (bool, Instant) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("ip"), 0))
        .expect("bind the source address");
    let stream = socket.connect(addr).await.expect("connect");
    let mut raw = Raw::from_stream(stream);
    raw.send(warren::protocol::frame::PROTOCOL_HEADER).await;
    let response = format!("\0guest\0{password}");
    raw.start_ok("PLAIN", response.as_bytes(), true).await;
    let (_, d) = raw.expect_method().await;
    let accepted = matches!(
        d.method,
        Method::Other(AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
    );
    (accepted, Instant::now())
}

/// A little less than `ms`: an answer may reach the client a moment after the broker's clock
/// started the next delay.
fn at_least(ms: u64) -> Duration {
    Duration::from_millis(ms - 50)
}

#[tokio::test]
async fn failed_logins_slow_down_their_address_only() {
    let b = TestBroker::start_with(|c| {
        c.login_failure_delay_ms = 200;
        c.login_failure_delay_max_ms = 800;
    })
    .await;
    let attempt = |source: &'static str, password: &str| try_login(b.addr, source, password.into());
    let (ok, first) = attempt("127.0.0.1", "wrong").await;
    assert!(!ok);
    // Each further attempt from that address waits for a delay that doubles.
    let (ok, second) = attempt("127.0.0.1", "wrong").await;
    assert!(!ok);
    assert!(second - first >= at_least(200), "{:?}", second - first);
    let (ok, third) = attempt("127.0.0.1", "wrong").await;
    assert!(!ok);
    assert!(third - second >= at_least(400), "{:?}", third - second);
    // While one attempt waits its turn, another from the same address is refused unchecked,
    // even with the right password: guessing in parallel gains nothing.
    let waiting = tokio::spawn(try_login(b.addr, "127.0.0.1", "wrong".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, refused) = attempt("127.0.0.1", "guest").await;
    assert!(!ok, "not checked while another attempt waits");
    // Meanwhile another address logs in at once: its answer comes before the waiting one's.
    let (ok, other) = attempt("127.0.0.2", "guest").await;
    assert!(ok, "the right password from another address is accepted");
    let (ok, waited) = waiting.await.expect("attempt");
    assert!(!ok);
    assert!(
        waited > refused && waited > other,
        "the waiting attempt answered last"
    );
    assert!(waited - third >= at_least(800), "{:?}", waited - third);
    // The right password from the slowed address gets in after its turn, and clears its record.
    let (ok, _) = attempt("127.0.0.1", "guest").await;
    assert!(ok);
    let delayed = metric(&b, "warren_auth_attempts_delayed_total").await;
    assert!(delayed >= 3, "delayed attempts counted: {delayed}");
}

#[tokio::test]
async fn a_management_login_that_fails_slows_that_address_down_too() {
    let b = TestBroker::start_with(|c| {
        c.login_failure_delay_ms = 300;
        c.login_failure_delay_max_ms = 300;
    })
    .await;
    // "guest:wrong" in base64.
    let bad = "GET /api/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6d3Jvbmc=\r\nConnection: close\r\n\r\n";
    let (status, _, _) = common::http::exchange(b.http, bad).await;
    assert_eq!(status, 401);
    let started = Instant::now();
    let (status, _, _) = common::http::exchange(b.http, bad).await;
    assert_eq!(status, 401);
    assert!(started.elapsed() >= at_least(300));
}
