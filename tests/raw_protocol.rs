//! Hostile and sloppy clients, spoken to byte by byte over TCP: every refusal carries RabbitMQ's
//! code, text and failing method, and a well-behaved client on the same broker is served after it.
//!
//! The expected answers were taken from RabbitMQ 3.10 fed the same bytes; where Warren answers
//! differently on purpose, the test says so.

mod common;

use amq_protocol::protocol::{AMQPClass, channel, connection};
use bytes::{BufMut, BytesMut};
use common::raw::*;
use common::{TestBroker, assert_served};
use std::time::Duration;
use warren::protocol::frame::{Frame, PROTOCOL_HEADER};
use warren::protocol::method::Method;

/// A well-behaved lapin client on the same broker still gets served: declare, publish, get.
async fn assert_healthy(broker: &TestBroker) {
    assert_served(&broker.uri()).await.expect("close");
}

#[tokio::test]
async fn a_wrong_protocol_header_gets_the_0_9_1_header_and_a_closed_socket() {
    let broker = TestBroker::start().await;
    for header in [
        &b"AMQP\x00\x00\x08\x00"[..],
        b"AMQP\x01\x01\x08\x00",
        b"AMQP\x00\x01\x00\x00",
        b"AMQP\x03\x01\x00\x00",
        b"XMPP\x00\x00\x09\x01",
        b"\x16\x03\x01\x00\x10\x01\x00\x00",
    ] {
        let mut raw = Raw::connect(broker.addr).await;
        raw.send(header).await;
        assert_eq!(raw.read_to_end().await, PROTOCOL_HEADER, "after {header:?}");
    }
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn an_http_request_gets_the_0_9_1_header_and_a_closed_socket() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::connect(broker.addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(raw.read_to_end().await, PROTOCOL_HEADER);
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn the_0_9_header_is_served_as_0_9_1() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::connect(broker.addr).await;
    raw.send(b"AMQP\x01\x01\x00\x09").await;
    let (_, d) = raw.expect_method().await;
    let Method::Other(AMQPClass::Connection(connection::AMQPMethod::Start(s))) = d.method else {
        panic!("connection.start expected, got {d:?}");
    };
    assert_eq!((s.version_major, s.version_minor), (0, 9));
}

#[tokio::test]
async fn a_bad_frame_end_octet_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame_ending(METHOD, 1, &[0, 85, 0, 10, 0], 0))
        .await;
    assert_eq!(
        raw.read_connection_close().await,
        Closed::new(
            501,
            "FRAME_ERROR - type 1, all octets = <<0,85,0,10,0>>: {invalid_frame_end_marker,0}",
            0,
            0
        )
    );
    // The stream is out of step, so Warren waits out its close timeout rather than look for close-ok.
    raw.expect_eof().await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_frame_over_frame_max_is_501_before_its_payload_arrives() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    // Only the header: Warren must refuse it without waiting for (or buffering) 200000 octets.
    raw.send(&[BODY, 0, 1, 0, 3, 0x0d, 0x40]).await;
    assert_eq!(
        raw.read_connection_close().await,
        Closed::new(
            501,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,200000,131064}",
            0,
            0
        )
    );
    raw.expect_eof().await;
    assert_healthy(&broker).await;
}

/// RabbitMQ tolerates payloads up to frame_max itself (clients often forget the 8 octets of
/// overhead), so Warren does too.
#[tokio::test]
async fn a_payload_of_exactly_frame_max_is_accepted() {
    let broker = TestBroker::start().await;
    let tune = Tune {
        frame_max: 4096,
        ..Tune::default()
    };
    let mut raw = Raw::handshake(broker.addr, tune).await;
    raw.open_channel(1).await;
    raw.send(&queue_declare(1, "fudge")).await;
    let (_, d) = raw.expect_method().await;
    assert_eq!((d.class_id, d.method_id), (50, 11), "queue.declare-ok");
    let body = vec![7u8; 4096];
    raw.send(
        &[
            publish(1, "fudge", 0),
            content_header(1, 4096),
            frame(BODY, 1, &body),
        ]
        .concat(),
    )
    .await;
    raw.send(&method(
        1,
        60,
        70,
        &[vec![0, 0], short("fudge"), vec![1]].concat(),
    ))
    .await;
    let (_, d) = raw.expect_method().await;
    assert_eq!((d.class_id, d.method_id), (60, 71), "basic.get-ok");
    let mut received = 0;
    while received < body.len() {
        match raw.next().await {
            Some(Frame::Header { .. } | Frame::Heartbeat { .. }) => {}
            Some(Frame::Body { payload, .. }) => {
                assert!(
                    payload.len() <= 4088,
                    "Warren's own frames respect frame_max"
                );
                received += payload.len();
            }
            other => panic!("content expected, got {other:?}"),
        }
    }
    assert_eq!(received, 4096);
    // One octet more is refused.
    raw.send(&[BODY, 0, 1, 0, 0, 0x10, 0x01]).await;
    assert_eq!(
        raw.read_connection_close().await,
        Closed::new(
            501,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}",
            0,
            0
        )
    );
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn an_unknown_frame_type_is_501_and_close_ok_still_ends_it() {
    // A long close timeout: only the client's close-ok can end the connection within the safety net.
    let broker = TestBroker::start_with(|c| c.close_timeout_ms = 60_000).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame(9, 1, b"abc")).await;
    raw.expect_connection_close(Closed::new(
        501,
        "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame",
        0,
        0,
    ))
    .await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame(HEARTBEAT, 0, &[1; 20])).await;
    raw.expect_connection_close(Closed::new(
        501,
        "FRAME_ERROR - type 8, first 16 octets = <<1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>>: unknown_frame",
        0,
        0,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn content_when_a_method_is_expected_is_505() {
    let broker = TestBroker::start().await;
    let expected = || {
        Closed::new(
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0,
        )
    };
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame(BODY, 1, b"abc")).await;
    raw.expect_connection_close(expected()).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&content_header(1, 3)).await;
    raw.expect_connection_close(expected()).await;
    // On a channel never opened, RabbitMQ still complains about the frame, not the channel.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame(BODY, 5, b"abc")).await;
    raw.expect_connection_close(expected()).await;
    assert_healthy(&broker).await;
}

/// A body before its header is blamed on the publish and worded by the header awaited.
#[tokio::test]
async fn a_body_before_its_header_is_505_on_basic_publish() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&[publish(1, "q", 0), frame(BODY, 1, b"abc")].concat())
        .await;
    raw.expect_connection_close(Closed::new(
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60,
        40,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_method_on_a_channel_never_opened_is_504() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&queue_declare(5, "q")).await;
    raw.expect_connection_close(Closed::new(
        504,
        "CHANNEL_ERROR - expected 'channel.open'",
        50,
        10,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_second_channel_open_is_504() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&channel_open(1)).await;
    raw.expect_connection_close(Closed::new(
        504,
        "CHANNEL_ERROR - second 'channel.open' seen",
        20,
        10,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn channel_open_on_channel_zero_is_504() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&channel_open(0)).await;
    raw.expect_connection_close(Closed::new(
        504,
        "CHANNEL_ERROR - unexpected method in connection state running",
        20,
        10,
    ))
    .await;
    assert_healthy(&broker).await;
}

/// RabbitMQ bounds how many channels are open at once, not the channel numbers.
#[tokio::test]
async fn channel_max_bounds_the_open_channels_not_their_numbers() {
    let broker = TestBroker::start().await;
    let tune = Tune {
        channel_max: 2,
        ..Tune::default()
    };
    let mut raw = Raw::handshake(broker.addr, tune).await;
    raw.open_channel(500).await;
    raw.open_channel(2).await;
    raw.send(&channel_open(3)).await;
    raw.expect_connection_close(Closed::new(
        530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
        0,
        0,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn publish_with_immediate_is_540() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(
        &[
            publish(1, "q", 2),
            content_header(1, 3),
            frame(BODY, 1, b"abc"),
        ]
        .concat(),
    )
    .await;
    raw.expect_connection_close(Closed::new(540, "NOT_IMPLEMENTED - immediate=true", 60, 40))
        .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn qos_with_a_prefetch_size_is_540() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    let mut a = BytesMut::new();
    a.put_u32(10);
    a.put_u16(0);
    a.put_u8(0);
    raw.send(&method(1, 60, 10, &a)).await;
    raw.expect_connection_close(Closed::new(
        540,
        "NOT_IMPLEMENTED - prefetch_size!=0 (10)",
        60,
        10,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn recover_without_requeue_is_540() {
    let broker = TestBroker::start().await;
    // basic.recover and basic.recover-async alike.
    for method_id in [110, 100] {
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&method(1, 60, method_id, &[0])).await;
        raw.expect_connection_close(Closed::new(
            540,
            "NOT_IMPLEMENTED - requeue=false",
            60,
            method_id,
        ))
        .await;
    }
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&method(1, 60, 110, &[1])).await;
    let (ch, d) = raw.expect_method().await;
    assert_eq!((ch, d.class_id, d.method_id), (1, 60, 111), "recover-ok");
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn channel_flow_off_is_540_and_flow_on_is_acknowledged() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&method(1, 20, 20, &[1])).await;
    let (ch, d) = raw.expect_method().await;
    assert_eq!(ch, 1);
    assert!(
        matches!(
            d.method,
            Method::Other(AMQPClass::Channel(channel::AMQPMethod::FlowOk(
                channel::FlowOk { active: true }
            )))
        ),
        "flow-ok active=true expected, got {d:?}"
    );
    raw.send(&method(1, 20, 20, &[0])).await;
    raw.expect_connection_close(Closed::new(540, "NOT_IMPLEMENTED - active=false", 20, 20))
        .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_heartbeat_on_a_channel_is_505() {
    let broker = TestBroker::start().await;
    for channel in [1, 7] {
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&frame(HEARTBEAT, channel, &[])).await;
        raw.expect_connection_close(Closed::new(
            505,
            "UNEXPECTED_FRAME - type 8, all octets = <<>>",
            0,
            0,
        ))
        .await;
    }
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_truncated_method_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&method(1, 50, 10, &[0])).await;
    raw.expect_connection_close(Closed::new(
        501,
        "FRAME_ERROR - cannot decode <<0>>",
        50,
        10,
    ))
    .await;
    assert_healthy(&broker).await;
}

/// RabbitMQ 3.10 drops the socket without a word on an unknown class or method; Warren says why.
#[tokio::test]
async fn an_unknown_method_is_503() {
    let broker = TestBroker::start().await;
    for (class_id, method_id) in [(99, 1), (60, 99)] {
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&method(1, class_id, method_id, &[])).await;
        let closed = raw.read_connection_close().await;
        assert_eq!(
            (closed.code, closed.class_id, closed.method_id),
            (503, class_id, method_id)
        );
        raw.send(&connection_close_ok()).await;
        raw.expect_eof().await;
    }
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn after_connection_close_only_close_ok_counts() {
    // A long close timeout: only the client's close-ok can end the connection within the safety net.
    let broker = TestBroker::start_with(|c| c.close_timeout_ms = 60_000).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame(BODY, 1, b"abc")).await;
    let closed = raw.read_connection_close().await;
    assert_eq!(closed.code, 505);
    // Each of these would be answered on an open connection; now all are discarded.
    raw.send(
        &[
            channel_open(2),
            method(1, 20, 20, &[1]),
            method(1, 60, 110, &[1]),
            frame(BODY, 1, b"abc"),
            frame(HEARTBEAT, 0, &[]),
            connection_close_ok(),
        ]
        .concat(),
    )
    .await;
    raw.expect_eof().await;

    // A client that answers our close with its own close gets close-ok, as from RabbitMQ.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&frame(BODY, 1, b"abc")).await;
    assert_eq!(raw.read_connection_close().await.code, 505);
    raw.send(&channel_open(2)).await;
    raw.send(&method(
        0,
        10,
        50,
        &[
            200u16.to_be_bytes().to_vec(),
            short("bye"),
            vec![0, 0, 0, 0],
        ]
        .concat(),
    ))
    .await;
    let (ch, d) = raw.expect_method().await;
    assert_eq!((ch, d.class_id, d.method_id), (0, 10, 51), "close-ok");
    raw.expect_eof().await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_client_silent_after_the_header_is_dropped_at_the_handshake_timeout() {
    let broker = TestBroker::start_with(|c| c.handshake_timeout_ms = 300).await;
    let mut raw = Raw::connect(broker.addr).await;
    raw.send(PROTOCOL_HEADER).await;
    let (_, d) = raw.expect_method().await;
    assert_eq!((d.class_id, d.method_id), (10, 10), "connection.start");
    // RabbitMQ drops such a client without a close; within the safety net means the timeout fired.
    raw.expect_eof().await;
    // A client that connects and sends nothing at all is dropped too.
    let mut raw = Raw::connect(broker.addr).await;
    assert!(raw.read_to_end().await.is_empty());
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_client_silent_past_two_heartbeats_is_dropped() {
    let broker = TestBroker::start().await;
    let tune = Tune {
        heartbeat: 1,
        ..Tune::default()
    };
    let mut raw = Raw::handshake(broker.addr, tune).await;
    raw.open_channel(1).await;
    let mut heartbeats = 0;
    tokio::time::timeout(SAFETY, async {
        while let Some(f) = raw.next().await {
            match f {
                Frame::Heartbeat { channel: 0 } => heartbeats += 1,
                other => panic!("only heartbeats before the drop, got {other:?}"),
            }
        }
    })
    .await
    .expect("a client silent for two heartbeat intervals is dropped");
    assert!(heartbeats >= 1, "the broker heartbeats a quiet client");
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_client_that_heartbeats_is_kept() {
    let broker = TestBroker::start().await;
    let tune = Tune {
        heartbeat: 1,
        ..Tune::default()
    };
    let mut raw = Raw::handshake(broker.addr, tune).await;
    // Three heartbeat intervals, one client heartbeat every 300 ms: past the 2-interval limit.
    for _ in 0..10 {
        raw.send(&frame(HEARTBEAT, 0, &[])).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    raw.open_channel(1).await;
}

/// RabbitMQ 3.10 means to refuse these with 530 and this text (rabbit_reader:fail_negotiation), but
/// its error handler swallows it and drops the socket after 3 s in silence; Warren says it.
#[tokio::test]
async fn tune_ok_outside_the_offer_is_530() {
    let broker = TestBroker::start().await;
    let cases = [
        (
            Tune {
                frame_max: 0,
                ..Tune::default()
            },
            "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)",
        ),
        (
            Tune {
                frame_max: 131_073,
                ..Tune::default()
            },
            "NOT_ALLOWED - negotiated frame_max = 131073 is higher than the maximum allowed value (131072)",
        ),
        (
            Tune {
                frame_max: 4095,
                ..Tune::default()
            },
            "NOT_ALLOWED - negotiated frame_max = 4095 is lower than the minimum allowed value (4096)",
        ),
        (
            Tune {
                channel_max: 0,
                ..Tune::default()
            },
            "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
        (
            Tune {
                channel_max: 2048,
                ..Tune::default()
            },
            "NOT_ALLOWED - negotiated channel_max = 2048 is higher than the maximum allowed value (2047)",
        ),
    ];
    for (tune, text) in cases {
        let mut raw = Raw::login(broker.addr, "PLAIN", b"\0guest\0guest", true).await;
        let (_, d) = raw.expect_method().await;
        assert_eq!((d.class_id, d.method_id), (10, 30), "connection.tune");
        raw.tune_ok(tune).await;
        raw.expect_connection_close(Closed::new(530, text, 10, 30))
            .await;
    }
    // The smallest values the broker allows are fine.
    let mut raw = Raw::handshake(
        broker.addr,
        Tune {
            channel_max: 1,
            frame_max: 4096,
            heartbeat: 0,
        },
    )
    .await;
    raw.open_channel(1).await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_refused_login_is_403_only_for_clients_that_asked_for_it() {
    let broker = TestBroker::start().await;
    let refused = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
                   For details see the broker logfile.";
    let mut raw = Raw::login(broker.addr, "PLAIN", b"\0guest\0wrong", true).await;
    raw.expect_connection_close(Closed::new(403, refused, 0, 0))
        .await;
    // Without the authentication_failure_close capability RabbitMQ just closes the socket.
    let mut raw = Raw::login(broker.addr, "PLAIN", b"\0guest\0wrong", false).await;
    raw.expect_eof().await;
    // AMQPLAIN: a field table without its length prefix.
    let amqplain = |password: &str| {
        [
            short("LOGIN"),
            b"S".to_vec(),
            long(b"guest"),
            short("PASSWORD"),
            b"S".to_vec(),
            long(password.as_bytes()),
        ]
        .concat()
    };
    let mut raw = Raw::login(broker.addr, "AMQPLAIN", &amqplain("wrong"), true).await;
    raw.expect_connection_close(Closed::new(
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. \
         For details see the broker logfile.",
        0,
        0,
    ))
    .await;
    let mut raw = Raw::login(broker.addr, "AMQPLAIN", &amqplain("guest"), true).await;
    let (_, d) = raw.expect_method().await;
    assert_eq!(
        (d.class_id, d.method_id),
        (10, 30),
        "AMQPLAIN guest/guest gets connection.tune"
    );
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn an_unknown_vhost_is_530_on_connection_open() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::login(broker.addr, "PLAIN", b"\0guest\0guest", true).await;
    let (_, d) = raw.expect_method().await;
    assert_eq!((d.class_id, d.method_id), (10, 30), "connection.tune");
    raw.tune_ok(Tune::default()).await;
    raw.send(&connection_open(0, "nope")).await;
    raw.expect_connection_close(Closed::new(
        530,
        "NOT_ALLOWED - vhost nope not found",
        10,
        40,
    ))
    .await;
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_connection_method_on_a_channel_is_503() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&connection_open(1, "/")).await;
    let closed = raw.read_connection_close().await;
    assert_eq!(
        (closed.code, closed.class_id, closed.method_id),
        (503, 10, 40)
    );
    raw.send(&connection_close_ok()).await;
    raw.expect_eof().await;
    assert_healthy(&broker).await;
}
