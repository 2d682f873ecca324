//! A blocking raw AMQP client, for tests that need a client that does exactly what they say (one
//! that stops reading its socket, one whose allocations must not count).

use std::io::{Read, Write};
use std::net::TcpStream;

use amq_protocol::frame::{AMQPFrame, gen_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::FieldTable;
use bytes::BytesMut;
use warren::protocol::frame::{Frame, parse_frame};
use warren::protocol::method::{Method, decode};

/// A blocking raw AMQP client on channel 1.
pub struct Raw {
    /// The socket.
    pub sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Sends one method frame.
    pub fn send(&mut self, channel: u16, class: AMQPClass) {
        let frame = AMQPFrame::Method(channel, class);
        let (bytes, _) = cookie_factory::r#gen(gen_frame(&frame), Vec::new()).expect("encode");
        self.sock.write_all(&bytes).expect("write");
    }

    /// Declares `queue` (plain) and consumes it without acks as `tag`, waiting for each answer.
    pub fn consume_no_ack(&mut self, queue: &str, tag: &str) {
        self.send(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: queue.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        self.method();
        self.send(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        self.method();
    }

    /// Sends a content header (no properties) declaring `size` bytes, and `body` in one frame.
    pub fn content(&mut self, channel: u16, size: u64, body: &[u8]) {
        let mut frames = vec![2];
        frames.extend_from_slice(&channel.to_be_bytes());
        frames.extend_from_slice(&14u32.to_be_bytes());
        frames.extend_from_slice(&[0, 60, 0, 0]);
        frames.extend_from_slice(&size.to_be_bytes());
        frames.extend_from_slice(&[0, 0, 0xCE, 3]);
        frames.extend_from_slice(&channel.to_be_bytes());
        frames.extend_from_slice(&u32::try_from(body.len()).expect("body frame").to_be_bytes());
        frames.extend_from_slice(body);
        frames.push(0xCE);
        self.sock.write_all(&frames).expect("write");
    }

    /// Reads the next frame.
    pub fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, 0).expect("frame") {
                return f;
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk).expect("read");
            assert!(n > 0, "broker closed the socket");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads up to the next method frame and decodes it.
    pub fn method(&mut self) -> Method {
        loop {
            if let Frame::Method { payload, .. } = self.frame() {
                return decode(&payload).expect("method").method;
            }
        }
    }

    /// Logs in as guest on "/" (no heartbeats) and opens channel 1.
    pub fn connect(addr: std::net::SocketAddr) -> Self {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        let mut raw = Raw {
            sock,
            buf: BytesMut::new(),
        };
        raw.sock.write_all(b"AMQP\x00\x00\x09\x01").expect("header");
        raw.method();
        raw.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        );
        raw.method();
        raw.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 0,
            })),
        );
        raw.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        );
        raw.method();
        raw.send(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        raw.method();
        raw
    }
}
