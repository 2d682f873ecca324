//! Hostile and sloppy clients, spoken to byte by byte over TCP: every refusal carries RabbitMQ's
//! code, text and failing method, and a well-behaved client on the same broker is served after it.
//!
//! The expected answers were taken from RabbitMQ 3.10 fed the same bytes; where Warren answers
//! differently on purpose, the test says so.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, channel, connection};
use bytes::{BufMut, BytesMut};
use common::{TestBroker, assert_served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::frame::{FRAME_END, Frame, PROTOCOL_HEADER, parse_frame};
use warren::protocol::method::{Decoded, Method, decode};

/// The longest any single expected event may take before the test gives up (a safety net).
const SAFETY: Duration = Duration::from_secs(10);

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const HEARTBEAT: u8 = 8;

/// One frame on the wire, built by hand so it can be as wrong as a test needs.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    frame_ending(kind, channel, payload, FRAME_END)
}

fn frame_ending(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(&channel.to_be_bytes());
    let size = u32::try_from(payload.len()).expect("test frames are small");
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(payload);
    b.push(end);
    b
}

/// A method frame: class id, method id, then the arguments as given.
fn method(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    frame(METHOD, channel, &p)
}

fn short(s: &str) -> Vec<u8> {
    let mut b = vec![u8::try_from(s.len()).expect("a short string")];
    b.extend_from_slice(s.as_bytes());
    b
}

fn long(bytes: &[u8]) -> Vec<u8> {
    let mut b = u32::try_from(bytes.len())
        .expect("a long string")
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(bytes);
    b
}

fn channel_open(channel: u16) -> Vec<u8> {
    method(channel, 20, 10, &short(""))
}

/// `connection.open` of `vhost`.
fn connection_open(channel: u16, vhost: &str) -> Vec<u8> {
    method(
        channel,
        10,
        40,
        &[short(vhost), short(""), vec![0]].concat(),
    )
}

/// `queue.declare` of `name`, plain: not passive, durable, exclusive or auto-delete.
fn queue_declare(channel: u16, name: &str) -> Vec<u8> {
    method(
        channel,
        50,
        10,
        &[vec![0, 0], short(name), vec![0], long(&[])].concat(),
    )
}

fn connection_close_ok() -> Vec<u8> {
    method(0, 10, 51, &[])
}

/// `basic.publish` to the default exchange.
fn publish(channel: u16, routing_key: &str, bits: u8) -> Vec<u8> {
    let mut a = vec![0, 0];
    a.extend(short(""));
    a.extend(short(routing_key));
    a.push(bits);
    method(channel, 60, 40, &a)
}

/// A content header for a `basic` body of `size` octets, without properties.
fn content_header(channel: u16, size: u64) -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u16(60);
    p.put_u16(0);
    p.put_u64(size);
    p.put_u16(0);
    frame(HEADER, channel, &p)
}

/// What the client offers in `tune-ok`.
#[derive(Clone, Copy)]
struct Tune {
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
}

impl Default for Tune {
    fn default() -> Self {
        Self {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        }
    }
}

/// How a `connection.close` or `channel.close` read: code, text, failing class and method.
#[derive(Debug, PartialEq, Eq)]
struct Closed {
    code: u16,
    text: String,
    class_id: u16,
    method_id: u16,
}

impl Closed {
    fn new(code: u16, text: &str, class_id: u16, method_id: u16) -> Self {
        Self {
            code,
            text: text.into(),
            class_id,
            method_id,
        }
    }
}

/// A raw AMQP client: writes bytes, reads frames with Warren's own codec.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens a connection as guest on "/" with `tune`, without opening a channel.
    async fn handshake(addr: SocketAddr, tune: Tune) -> Self {
        let mut raw = Self::login(addr, "PLAIN", b"\0guest\0guest", true).await;
        let (_, d) = raw.expect_method().await;
        assert!(
            matches!(
                d.method,
                Method::Other(AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
            ),
            "connection.tune expected, got {d:?}"
        );
        raw.tune_ok(tune).await;
        raw.send(&connection_open(0, "/")).await;
        let (_, d) = raw.expect_method().await;
        assert!(
            matches!(
                d.method,
                Method::Other(AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
            ),
            "connection.open-ok expected, got {d:?}"
        );
        raw
    }

    /// Sends the protocol header and answers connection.start with `mechanism` and `response`.
    async fn login(addr: SocketAddr, mechanism: &str, response: &[u8], capabilities: bool) -> Self {
        let mut raw = Self::connect(addr).await;
        raw.send(PROTOCOL_HEADER).await;
        raw.start_ok(mechanism, response, capabilities).await;
        raw
    }

    /// A connection with channel 1 open.
    async fn open(addr: SocketAddr) -> Self {
        let mut raw = Self::handshake(addr, Tune::default()).await;
        raw.open_channel(1).await;
        raw
    }

    async fn open_channel(&mut self, id: u16) {
        self.send(&channel_open(id)).await;
        let (ch, d) = self.expect_method().await;
        assert_eq!(ch, id);
        assert!(
            matches!(
                d.method,
                Method::Other(AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
            ),
            "channel.open-ok expected, got {d:?}"
        );
    }

    /// Reads connection.start and answers it; `capabilities` announces authentication_failure_close.
    async fn start_ok(&mut self, mechanism: &str, response: &[u8], capabilities: bool) {
        let (ch, d) = self.expect_method().await;
        assert_eq!(ch, 0);
        assert!(
            matches!(
                d.method,
                Method::Other(AMQPClass::Connection(connection::AMQPMethod::Start(_)))
            ),
            "connection.start expected, got {d:?}"
        );
        let props = if capabilities {
            let caps = [short("authentication_failure_close"), b"t\x01".to_vec()].concat();
            long(&[short("capabilities"), b"F".to_vec(), long(&caps)].concat())
        } else {
            long(&[])
        };
        let args = [props, short(mechanism), long(response), short("en_US")].concat();
        self.send(&method(0, 10, 11, &args)).await;
    }

    async fn tune_ok(&mut self, t: Tune) {
        let mut a = BytesMut::new();
        a.put_u16(t.channel_max);
        a.put_u32(t.frame_max);
        a.put_u16(t.heartbeat);
        self.send(&method(0, 10, 31, &a)).await;
    }

    /// Writes bytes; a peer that already hung up is not an error here (the reads will show it).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` once the broker has closed the socket.
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(SAFETY, async {
            loop {
                match parse_frame(&mut self.buf, 0) {
                    Ok(Some(f)) => return Some(f),
                    Ok(None) => {}
                    Err(e) => panic!("the broker sent a malformed frame: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the broker answers within the safety timeout")
    }

    /// The next method (heartbeats skipped), or `None` once the socket is closed.
    async fn method(&mut self) -> Option<(u16, Decoded)> {
        loop {
            match self.next().await? {
                Frame::Heartbeat { .. } => continue,
                Frame::Method { channel, payload } => {
                    return Some((
                        channel,
                        decode(&payload).expect("a method Warren can decode"),
                    ));
                }
                other => panic!("a method frame expected, got {other:?}"),
            }
        }
    }

    async fn expect_method(&mut self) -> (u16, Decoded) {
        self.method()
            .await
            .expect("a method before the socket closed")
    }

    /// Reads the broker's `connection.close`, without answering it.
    async fn read_connection_close(&mut self) -> Closed {
        let (ch, d) = self.expect_method().await;
        assert_eq!(ch, 0, "connection.close comes on channel 0");
        match d.method {
            Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(c))) => Closed {
                code: c.reply_code,
                text: c.reply_text.to_string(),
                class_id: c.class_id,
                method_id: c.method_id,
            },
            other => panic!("connection.close expected, got {other:?}"),
        }
    }

    /// Reads `connection.close`, answers close-ok, and sees the socket closed.
    async fn expect_connection_close(&mut self, expected: Closed) {
        assert_eq!(self.read_connection_close().await, expected);
        self.send(&connection_close_ok()).await;
        self.expect_eof().await;
    }

    /// Sees the socket closed, with nothing but heartbeats before.
    async fn expect_eof(&mut self) {
        // One deadline for the whole wait: heartbeats alone must not keep it going.
        tokio::time::timeout(SAFETY, async {
            while let Some(f) = self.next().await {
                assert!(
                    matches!(f, Frame::Heartbeat { .. }),
                    "nothing but the close expected, got {f:?}"
                );
            }
        })
        .await
        .expect("the broker closes the socket within the safety timeout");
    }

    /// Reads raw octets until the socket closes.
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = self.buf.split().to_vec();
        let _ = tokio::time::timeout(SAFETY, self.stream.read_to_end(&mut out))
            .await
            .expect("the broker closes the socket");
        out
    }
}

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
