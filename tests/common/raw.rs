//! A raw AMQP client for hostile-client tests: frames built by hand, so they can be as wrong as a
//! test needs, and replies read with Warren's own codec.

use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, channel, connection};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::frame::{FRAME_END, Frame, PROTOCOL_HEADER, parse_frame};
use warren::protocol::method::{Decoded, Method, decode};

/// The longest any single expected event may take before the test gives up (a safety net).
pub const SAFETY: Duration = Duration::from_secs(10);

pub const METHOD: u8 = 1;
pub const HEADER: u8 = 2;
pub const BODY: u8 = 3;
pub const HEARTBEAT: u8 = 8;

/// One frame on the wire, built by hand so it can be as wrong as a test needs.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    frame_ending(kind, channel, payload, FRAME_END)
}

pub fn frame_ending(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(&channel.to_be_bytes());
    let size = u32::try_from(payload.len()).expect("test frames are small");
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(payload);
    b.push(end);
    b
}

/// A method frame: class id, method id, then the arguments as given.
pub fn method(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    frame(METHOD, channel, &p)
}

pub fn short(s: &str) -> Vec<u8> {
    let mut b = vec![u8::try_from(s.len()).expect("a short string")];
    b.extend_from_slice(s.as_bytes());
    b
}

pub fn long(bytes: &[u8]) -> Vec<u8> {
    let mut b = u32::try_from(bytes.len())
        .expect("a long string")
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(bytes);
    b
}

pub fn channel_open(channel: u16) -> Vec<u8> {
    method(channel, 20, 10, &short(""))
}

/// `connection.open` of `vhost`.
pub fn connection_open(channel: u16, vhost: &str) -> Vec<u8> {
    method(
        channel,
        10,
        40,
        &[short(vhost), short(""), vec![0]].concat(),
    )
}

/// `queue.declare` of `name`, plain: not passive, durable, exclusive or auto-delete.
pub fn queue_declare(channel: u16, name: &str) -> Vec<u8> {
    method(
        channel,
        50,
        10,
        &[vec![0, 0], short(name), vec![0], long(&[])].concat(),
    )
}

/// `basic.consume` of `queue` as `tag`, with acks, without arguments.
pub fn consume(channel: u16, queue: &str, tag: &str) -> Vec<u8> {
    consume_with(channel, queue, tag, 0)
}

/// `basic.consume` with no-ack.
pub fn consume_no_ack(channel: u16, queue: &str, tag: &str) -> Vec<u8> {
    consume_with(channel, queue, tag, 0b10)
}

fn consume_with(channel: u16, queue: &str, tag: &str, bits: u8) -> Vec<u8> {
    method(
        channel,
        60,
        20,
        &[vec![0, 0], short(queue), short(tag), vec![bits], long(&[])].concat(),
    )
}

pub fn connection_close_ok() -> Vec<u8> {
    method(0, 10, 51, &[])
}

/// `basic.publish` to the default exchange.
pub fn publish(channel: u16, routing_key: &str, bits: u8) -> Vec<u8> {
    let mut a = vec![0, 0];
    a.extend(short(""));
    a.extend(short(routing_key));
    a.push(bits);
    method(channel, 60, 40, &a)
}

/// A content header for a `basic` body of `size` octets, without properties.
pub fn content_header(channel: u16, size: u64) -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u16(60);
    p.put_u16(0);
    p.put_u64(size);
    p.put_u16(0);
    frame(HEADER, channel, &p)
}

/// What the client offers in `tune-ok`.
#[derive(Clone, Copy)]
pub struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
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
pub struct Closed {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Closed {
    pub fn new(code: u16, text: &str, class_id: u16, method_id: u16) -> Self {
        Self {
            code,
            text: text.into(),
            class_id,
            method_id,
        }
    }
}

/// A raw AMQP client: writes bytes, reads frames with Warren's own codec.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).await.expect("tcp connect"))
    }

    /// A client over a socket the caller connected (from an address of its choice, say).
    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens a connection as guest on "/" with `tune`, without opening a channel.
    pub async fn handshake(addr: SocketAddr, tune: Tune) -> Self {
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
    pub async fn login(
        addr: SocketAddr,
        mechanism: &str,
        response: &[u8],
        capabilities: bool,
    ) -> Self {
        let mut raw = Self::connect(addr).await;
        raw.send(PROTOCOL_HEADER).await;
        raw.start_ok(mechanism, response, capabilities).await;
        raw
    }

    /// A connection with channel 1 open.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut raw = Self::handshake(addr, Tune::default()).await;
        raw.open_channel(1).await;
        raw
    }

    pub async fn open_channel(&mut self, id: u16) {
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
    pub async fn start_ok(&mut self, mechanism: &str, response: &[u8], capabilities: bool) {
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

    pub async fn tune_ok(&mut self, t: Tune) {
        let mut a = BytesMut::new();
        a.put_u16(t.channel_max);
        a.put_u32(t.frame_max);
        a.put_u16(t.heartbeat);
        self.send(&method(0, 10, 31, &a)).await;
    }

    /// Writes bytes; a peer that already hung up is not an error here (the reads will show it).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` once the broker has closed the socket.
    pub async fn next(&mut self) -> Option<Frame> {
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
    pub async fn method(&mut self) -> Option<(u16, Decoded)> {
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

    pub async fn expect_method(&mut self) -> (u16, Decoded) {
        self.method()
            .await
            .expect("a method before the socket closed")
    }

    /// Reads the broker's `connection.close`, without answering it.
    pub async fn read_connection_close(&mut self) -> Closed {
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
    pub async fn expect_connection_close(&mut self, expected: Closed) {
        assert_eq!(self.read_connection_close().await, expected);
        self.send(&connection_close_ok()).await;
        self.expect_eof().await;
    }

    /// Sees the socket closed, with nothing but heartbeats before.
    pub async fn expect_eof(&mut self) {
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
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = self.buf.split().to_vec();
        let _ = tokio::time::timeout(SAFETY, self.stream.read_to_end(&mut out))
            .await
            .expect("the broker closes the socket");
        out
    }
}
