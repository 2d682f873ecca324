//! The channel state machine driven without a socket: frames in through `handle_*`, frames out
//! read back from `ctx.out`, errors as returned, queue events from the connection's inbox.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, parse_class, queue, tx};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Channel, Ctx};
use crate::broker::Broker;
use crate::config::Config;
use crate::protocol::error::Reply;
use crate::protocol::frame::{Frame, parse_frame};
use crate::protocol::method::decode;
use crate::protocol::{AmqpError, encode};
use crate::queue::{Queue, QueueEvent};

/// The channel under test.
const CH: u16 = 1;
/// Property flags and list of a message with no properties.
const TRANSIENT: &[u8] = &[0, 0];
/// Property flags and list of a message with delivery-mode 2.
const PERSISTENT: &[u8] = &[0x10, 0, 2];
/// How long a test waits for an event the broker owes it before it gives up.
const WAIT: Duration = Duration::from_secs(10);

/// A frame the channel encoded into `ctx.out`.
#[derive(Debug, PartialEq)]
enum Sent {
    Method(AMQPClass),
    Header { body_size: u64 },
    Body(Bytes),
}

/// One channel lent a connection's context, over a real broker and sled store on a temp dir.
struct Harness {
    ch: Channel,
    ctx: Ctx,
    inbox: UnboundedReceiver<QueueEvent>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        let broker = Broker::open(config).expect("broker");
        let vhost = broker.vhost("/").expect("default vhost");
        let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
        let ctx = Ctx {
            conn_id: broker.next_connection_id(),
            vhost,
            user: "guest".into(),
            out: BytesMut::new(),
            frame_max: 131_072,
            tx,
            cancel_notify: true,
            throttle: None,
            permissions: Arc::new(crate::broker::access::Permissions::all()),
            permissions_epoch: 0,
            published: false,
            topology: None,
            now: std::time::Instant::now(),
            broker,
        };
        let ch = Channel::new(CH, ctx.broker.memory.clone(), Arc::default());
        Self {
            ch,
            ctx,
            inbox,
            _dir: dir,
        }
    }

    /// Sends a method as a client would: encoded to a frame, parsed and decoded as the connection does.
    fn method(&mut self, class: AMQPClass) -> Result<(), AmqpError> {
        let mut frame = BytesMut::new();
        encode::method(&mut frame, CH, class);
        let Ok(Some(Frame::Method { payload, .. })) = parse_frame(&mut frame, 0) else {
            panic!("not a method frame");
        };
        self.raw_method(payload)
    }

    /// Sends a method frame's payload (class id, method id, arguments) as it is.
    fn raw_method(&mut self, payload: Bytes) -> Result<(), AmqpError> {
        let decoded = decode(&payload).expect("a well-formed method");
        self.ch.handle_method(&mut self.ctx, decoded)
    }

    /// Sends a content header of `class` for a body of `size` octets with these property bytes.
    fn header_of(&mut self, class: u16, size: u64, props: &[u8]) -> Result<(), AmqpError> {
        let mut payload = BytesMut::new();
        payload.put_u16(class);
        payload.put_u16(0);
        payload.put_u64(size);
        payload.put_slice(props);
        self.ch.handle_header(&mut self.ctx, payload.freeze())
    }

    fn header(&mut self, size: u64, props: &[u8]) -> Result<(), AmqpError> {
        self.header_of(60, size, props)
    }

    fn body(&mut self, part: &[u8]) -> Result<(), AmqpError> {
        self.ch
            .handle_body(&mut self.ctx, Bytes::copy_from_slice(part))
    }

    fn publish_method(&mut self, exchange: &str, routing_key: &str) -> Result<(), AmqpError> {
        self.method(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                ..Default::default()
            },
        )))
    }

    /// A whole publish through the default exchange: method, header, one body frame.
    fn publish(&mut self, queue: &str, body: &[u8], props: &[u8]) {
        self.publish_method("", queue).expect("publish");
        let size = u64::try_from(body.len()).expect("size");
        self.header(size, props).expect("header");
        if !body.is_empty() {
            self.body(body).expect("body");
        }
    }

    fn declare(&mut self, name: &str, durable: bool, arguments: FieldTable) -> Arc<Queue> {
        self.method(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: name.into(),
                durable,
                arguments,
                ..Default::default()
            },
        )))
        .expect("queue.declare");
        assert!(
            matches!(
                self.sent().as_slice(),
                [Sent::Method(AMQPClass::Queue(
                    queue::AMQPMethod::DeclareOk(_)
                ))]
            ),
            "declare-ok"
        );
        self.ctx
            .vhost
            .queue(name, self.ctx.conn_id)
            .expect("declared queue")
    }

    fn select_confirms(&mut self) {
        self.method(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))
        .expect("confirm.select");
        assert_eq!(
            self.sent(),
            [Sent::Method(AMQPClass::Confirm(
                confirm::AMQPMethod::SelectOk(confirm::SelectOk {})
            ))]
        );
    }

    fn select_tx(&mut self) {
        self.tx(tx::AMQPMethod::Select(tx::Select {}))
            .expect("tx.select");
        assert_eq!(
            self.sent(),
            [Sent::Method(AMQPClass::Tx(tx::AMQPMethod::SelectOk(
                tx::SelectOk {}
            )))]
        );
    }

    fn tx(&mut self, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        self.method(AMQPClass::Tx(m))
    }

    /// `basic.get`: the get-ok and the whole body, or None for get-empty.
    fn get(
        &mut self,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<(basic::GetOk, Bytes)>, AmqpError> {
        self.method(AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: queue.into(),
            no_ack,
        })))?;
        let mut sent = self.sent().into_iter();
        match sent.next() {
            Some(Sent::Method(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)))) => Ok(None),
            Some(Sent::Method(AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)))) => {
                Ok(Some((ok, content(sent))))
            }
            other => panic!("expected get-ok or get-empty, got {other:?}"),
        }
    }

    fn ack(&mut self, delivery_tag: u64, multiple: bool) -> Result<(), AmqpError> {
        self.method(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag,
            multiple,
        })))
    }

    fn consume(&mut self, queue: &str, tag: &str) -> Result<(), AmqpError> {
        self.method(AMQPClass::Basic(basic::AMQPMethod::Consume(
            basic::Consume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                ..Default::default()
            },
        )))
    }

    /// Everything encoded into `ctx.out` since the last look, decoded back.
    fn sent(&mut self) -> Vec<Sent> {
        let mut out = std::mem::take(&mut self.ctx.out);
        let mut frames = Vec::new();
        while let Some(frame) = parse_frame(&mut out, 0).expect("a well-formed frame") {
            frames.push(match frame {
                Frame::Method { channel, payload } => {
                    assert_eq!(channel, CH, "sent on the channel");
                    let (_, class) =
                        parse_class(&payload[..]).expect("a method amq-protocol reads");
                    Sent::Method(class)
                }
                Frame::Header { payload, .. } => Sent::Header {
                    body_size: crate::protocol::frame::be_u64(&payload, 4).expect("size"),
                },
                Frame::Body { payload, .. } => Sent::Body(payload),
                Frame::Heartbeat { .. } => panic!("a channel sends no heartbeat"),
            });
        }
        assert!(out.is_empty(), "only whole frames");
        frames
    }

    /// Hands the deliveries waiting in the inbox to the channel, as the connection does, and
    /// returns the `basic.deliver`s it wrote with their bodies.
    fn deliveries(&mut self) -> Vec<(basic::Deliver, Bytes)> {
        while let Ok(event) = self.inbox.try_recv() {
            let QueueEvent::Deliver {
                consumer_tag,
                queue,
                message,
                ..
            } = event
            else {
                panic!("expected only deliveries");
            };
            if let Err((queue, message)) =
                self.ch
                    .deliver(&mut self.ctx, &consumer_tag, queue, message)
            {
                self.ch.release_undelivered();
                queue.return_undelivered(message);
            }
        }
        let mut sent = self.sent().into_iter().peekable();
        let mut got = Vec::new();
        while let Some(s) = sent.next() {
            let Sent::Method(AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) = s else {
                panic!("expected basic.deliver, got {s:?}");
            };
            let header = sent.next();
            assert!(matches!(header, Some(Sent::Header { .. })), "{header:?}");
            let mut body = BytesMut::new();
            while let Some(Sent::Body(b)) = sent.next_if(|s| matches!(s, Sent::Body(_))) {
                body.extend_from_slice(&b);
            }
            got.push((d, body.freeze()));
        }
        got
    }

    /// The next event from the connection's inbox.
    async fn next_event(&mut self) -> QueueEvent {
        tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .expect("an event arrives")
            .expect("inbox open")
    }

    /// Waits for the store's barrier and hands its completion to the channel.
    async fn store_flushed(&mut self) -> Result<(), AmqpError> {
        let QueueEvent::Flushed {
            channel,
            upto,
            commit,
            written,
        } = self.next_event().await
        else {
            panic!("expected the store's flush");
        };
        assert_eq!(channel, CH);
        assert!(written, "the store wrote it");
        self.ch
            .flushed(&mut self.ctx, upto, commit, written)
            .map_err(AmqpError::from)
    }
}

/// The body carried by the header and body frames that follow a method.
fn content(mut sent: impl Iterator<Item = Sent>) -> Bytes {
    let Some(Sent::Header { body_size }) = sent.next() else {
        panic!("a content header follows");
    };
    let mut body = BytesMut::new();
    for s in sent {
        let Sent::Body(b) = s else {
            panic!("only body frames follow, got {s:?}");
        };
        body.extend_from_slice(&b);
    }
    assert_eq!(u64::try_from(body.len()).ok(), Some(body_size));
    body.freeze()
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A publisher confirm as the channel encodes it.
fn confirm_ack(delivery_tag: u64, multiple: bool) -> Sent {
    Sent::Method(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag,
        multiple,
    })))
}

fn confirm_nack(delivery_tag: u64, multiple: bool) -> Sent {
    Sent::Method(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
        delivery_tag,
        multiple,
        requeue: false,
    })))
}

/// The reply an error carries, and whether it closes the connection.
fn refusal(r: Result<(), AmqpError>) -> (bool, Reply) {
    match r {
        Err(AmqpError::Connection(e)) => (true, e.0),
        Err(AmqpError::Channel(e)) => (false, e.0),
        Ok(()) => panic!("expected a refusal"),
    }
}

fn reply(reply_code: u16, reply_text: &str, class_id: u16, method_id: u16) -> Reply {
    Reply {
        reply_code,
        reply_text: reply_text.into(),
        class_id,
        method_id,
        limit: None,
    }
}

fn connection_error(code: u16, text: &str, class_id: u16, method_id: u16) -> (bool, Reply) {
    (true, reply(code, text, class_id, method_id))
}

fn channel_error(code: u16, text: &str, class_id: u16, method_id: u16) -> (bool, Reply) {
    (false, reply(code, text, class_id, method_id))
}

/// 406 for a delivery tag the channel does not hold, on `basic.<method_id>`.
fn unknown_tag(tag: u64, method_id: u16) -> (bool, Reply) {
    channel_error(
        406,
        &format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
        60,
        method_id,
    )
}

const UNEXPECTED_CONTENT: &str =
    "UNEXPECTED_FRAME - expected method frame, got non method frame instead";

/// RabbitMQ 3.10's 505 for anything but the header after `basic.publish`, on basic.publish.
fn header_awaited() -> (bool, Reply) {
    connection_error(
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60,
        40,
    )
}

/// RabbitMQ 3.10's 505 for anything but a body frame while body is awaited, on basic.publish.
fn body_awaited() -> (bool, Reply) {
    connection_error(
        505,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
        60,
        40,
    )
}

// Publish assembly.

#[tokio::test]
async fn a_body_split_across_frames_is_assembled_into_one_message() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish_method("", "q").expect("publish");
    h.header(9, TRANSIENT).expect("header");
    h.body(b"abc").expect("first part");
    h.body(b"def").expect("second part");
    assert_eq!(q.message_count(), 0, "not before the last part");
    h.body(b"ghi").expect("last part");
    let (ok, body) = h.get("q", true).expect("get").expect("a message");
    assert_eq!(&body[..], b"abcdefghi");
    assert_eq!(
        (ok.delivery_tag, ok.redelivered, ok.message_count),
        (1, false, 0)
    );
    assert_eq!(ok.routing_key.as_str(), "q");
    // The channel is back to expecting methods.
    h.publish("q", b"next", TRANSIENT);
    assert_eq!(
        h.get("q", true).expect("get").map(|(_, b)| b),
        Some(Bytes::from_static(b"next"))
    );
}

#[tokio::test]
async fn an_empty_body_completes_at_the_header() {
    let mut h = Harness::new();
    h.declare("q", false, FieldTable::default());
    h.publish_method("", "q").expect("publish");
    h.header(0, TRANSIENT).expect("header");
    let (_, body) = h.get("q", true).expect("get").expect("a message");
    assert!(body.is_empty());
    // No body frame is awaited: a body now is out of place.
    assert_eq!(
        refusal(h.body(b"x")),
        connection_error(505, UNEXPECTED_CONTENT, 0, 0)
    );
}

#[tokio::test]
async fn content_with_no_publish_in_progress_is_505() {
    let mut h = Harness::new();
    assert_eq!(
        refusal(h.header(3, TRANSIENT)),
        connection_error(505, UNEXPECTED_CONTENT, 0, 0)
    );
    let mut h = Harness::new();
    assert_eq!(
        refusal(h.body(b"abc")),
        connection_error(505, UNEXPECTED_CONTENT, 0, 0)
    );
}

/// Content frames out of order within a publish close the connection with 505, worded by the
/// frame awaited, as RabbitMQ 3.10 does.
#[tokio::test]
async fn content_out_of_order_within_a_publish_is_505() {
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    assert_eq!(refusal(h.body(b"abc")), header_awaited());
    // A header where body is awaited, before any body frame and after one.
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    h.header(5, TRANSIENT).expect("header");
    assert_eq!(refusal(h.header(2, TRANSIENT)), body_awaited());
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    h.header(5, TRANSIENT).expect("header");
    h.body(b"abc").expect("part");
    assert_eq!(refusal(h.header(2, TRANSIENT)), body_awaited());
}

#[tokio::test]
async fn a_method_while_content_is_awaited_is_505() {
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    assert_eq!(refusal(h.get("q", true).map(|_| ())), header_awaited());
    // After the header, before any body frame and between body frames.
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    h.header(4, TRANSIENT).expect("header");
    assert_eq!(refusal(h.get("q", true).map(|_| ())), body_awaited());
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    h.header(4, TRANSIENT).expect("header");
    h.body(b"ab").expect("part");
    assert_eq!(refusal(h.ack(1, false)), body_awaited());
}

#[tokio::test]
async fn a_header_of_another_class_is_505() {
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    assert_eq!(
        refusal(h.header_of(50, 1, TRANSIENT)),
        connection_error(
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            60,
            40
        )
    );
}

/// RabbitMQ 3.10 does not check this: it waits for more body and fails at the next other frame
/// with 505. Warren refuses the frame that overruns the declared size.
#[tokio::test]
async fn a_body_longer_than_its_header_declared_is_501() {
    let expected = connection_error(
        501,
        "FRAME_ERROR - content body frame exceeds remaining content size",
        60,
        40,
    );
    let mut h = Harness::new();
    h.declare("q", false, FieldTable::default());
    h.publish_method("", "q").expect("publish");
    h.header(3, TRANSIENT).expect("header");
    assert_eq!(refusal(h.body(b"abcd")), expected);
    // Over the size only with a later frame.
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish_method("", "q").expect("publish");
    h.header(5, TRANSIENT).expect("header");
    h.body(b"abc").expect("part");
    assert_eq!(refusal(h.body(b"def")), expected);
    assert_eq!(q.message_count(), 0, "nothing was routed");
}

#[tokio::test]
async fn a_message_over_the_configured_max_size_is_a_channel_error() {
    let mut h = Harness::with(|c| c.max_message_size = 1024);
    h.publish_method("", "q").expect("publish");
    assert_eq!(
        refusal(h.header(2000, TRANSIENT)),
        channel_error(
            406,
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024",
            60,
            40
        )
    );
}

#[tokio::test]
async fn a_user_id_other_than_the_login_is_refused() {
    let mut h = Harness::new();
    h.publish_method("", "q").expect("publish");
    // Property flags with user-id (bit 4) set, then the short string.
    let props = [&[0x00, 0x10, 3][..], b"bob"].concat();
    h.header(1, &props).expect("header");
    assert_eq!(
        refusal(h.body(b"x")),
        channel_error(
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
            60,
            40
        )
    );
}

#[tokio::test]
async fn immediate_publish_is_540() {
    let mut h = Harness::new();
    let r = h.method(AMQPClass::Basic(basic::AMQPMethod::Publish(
        basic::Publish {
            routing_key: "q".into(),
            immediate: true,
            ..Default::default()
        },
    )));
    assert_eq!(
        refusal(r),
        connection_error(540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    );
    assert!(
        h.ctx.published,
        "a publish marks the connection a publisher"
    );
}

#[tokio::test]
async fn an_unroutable_mandatory_publish_is_returned() {
    let mut h = Harness::new();
    h.method(AMQPClass::Basic(basic::AMQPMethod::Publish(
        basic::Publish {
            routing_key: "nowhere".into(),
            mandatory: true,
            ..Default::default()
        },
    )))
    .expect("publish");
    h.header(2, TRANSIENT).expect("header");
    h.body(b"hi").expect("body");
    let mut sent = h.sent().into_iter();
    assert_eq!(
        sent.next(),
        Some(Sent::Method(AMQPClass::Basic(basic::AMQPMethod::Return(
            basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "".into(),
                routing_key: "nowhere".into(),
            }
        ))))
    );
    assert_eq!(&content(sent)[..], b"hi");
    // Not mandatory: dropped in silence.
    h.publish("nowhere", b"hi", TRANSIENT);
    assert_eq!(h.sent(), []);
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_is_404_in_a_tx_too() {
    for tx in [false, true] {
        let mut h = Harness::new();
        if tx {
            // A tx publish is checked and routed when it arrives, not at commit.
            h.select_tx();
        }
        h.publish_method("missing", "q").expect("publish");
        h.header(1, TRANSIENT).expect("header");
        assert_eq!(
            refusal(h.body(b"x")),
            channel_error(
                404,
                "NOT_FOUND - no exchange 'missing' in vhost '/'",
                60,
                40
            )
        );
    }
}

// Publisher confirms.

#[tokio::test]
async fn transient_publishes_are_confirmed_at_the_end_of_the_batch_with_multiple() {
    let mut h = Harness::new();
    h.declare("q", false, FieldTable::default());
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), [], "no confirms before confirm.select");
    h.select_confirms();
    for body in [&b"1"[..], b"2", b"3"] {
        h.publish("q", body, TRANSIENT);
    }
    assert_eq!(h.sent(), [], "confirms wait for the end of the batch");
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), [confirm_ack(3, true)]);
    // An unroutable publish is confirmed too, on its own.
    h.publish("nowhere", b"4", TRANSIENT);
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), [confirm_ack(4, false)]);
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), [], "each publish is confirmed once");
}

#[tokio::test]
async fn confirm_select_nowait_sends_no_select_ok() {
    let mut h = Harness::new();
    h.method(AMQPClass::Confirm(confirm::AMQPMethod::Select(
        confirm::Select { nowait: true },
    )))
    .expect("confirm.select");
    assert_eq!(h.sent(), []);
    h.publish("nowhere", b"x", TRANSIENT);
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), [confirm_ack(1, false)], "confirm mode is on");
}

#[tokio::test]
async fn a_persistent_publish_to_a_durable_queue_is_confirmed_after_the_store_flush() {
    let mut h = Harness::new();
    h.declare("durable", true, FieldTable::default());
    h.select_confirms();
    h.publish("durable", b"t", TRANSIENT);
    h.publish("durable", b"p1", PERSISTENT);
    h.publish("durable", b"p2", PERSISTENT);
    h.ch.flush_confirms(&mut h.ctx);
    // The transient one goes at once; the persistent ones wait for the disk.
    assert_eq!(h.sent(), [confirm_ack(1, false)]);
    h.publish("durable", b"t2", TRANSIENT);
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(
        h.sent(),
        [],
        "no ack passes a publish still waiting for its flush"
    );
    h.store_flushed().await.expect("flushed");
    // Once nothing waits for the disk, the transient 4 behind them goes in the same ack.
    assert_eq!(h.sent(), [confirm_ack(4, true)]);
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), []);
}

#[tokio::test]
async fn a_failed_store_write_nacks_the_publishes_it_covered() {
    let mut h = Harness::new();
    h.declare("durable", true, FieldTable::default());
    h.select_confirms();
    h.publish("durable", b"p1", PERSISTENT);
    h.publish("durable", b"p2", PERSISTENT);
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(h.sent(), []);
    // The store reports the write failed (as a full disk makes it).
    h.ch.flushed(&mut h.ctx, 2, false, false)
        .expect("no commit waits");
    assert_eq!(h.sent(), [confirm_nack(1, false), confirm_nack(2, false)]);
}

#[tokio::test]
async fn a_publish_a_full_queue_refuses_is_nacked_in_its_turn() {
    let mut h = Harness::new();
    let args = table(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ]);
    h.declare("limited", false, args);
    h.select_confirms();
    for body in [&b"1"[..], b"2", b"3"] {
        h.publish("limited", body, TRANSIENT);
    }
    h.ch.flush_confirms(&mut h.ctx);
    assert_eq!(
        h.sent(),
        [
            confirm_ack(1, false),
            confirm_nack(2, false),
            confirm_nack(3, false)
        ]
    );
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let mut h = Harness::new();
    h.select_tx();
    let r = h.method(AMQPClass::Confirm(confirm::AMQPMethod::Select(
        confirm::Select { nowait: false },
    )));
    assert_eq!(
        refusal(r),
        channel_error(
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            85,
            10
        )
    );
    let mut h = Harness::new();
    h.select_confirms();
    assert_eq!(
        refusal(h.tx(tx::AMQPMethod::Select(tx::Select {}))),
        channel_error(
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            90,
            10
        )
    );
}

// Transactions.

#[tokio::test]
async fn tx_publishes_reach_their_queue_only_at_commit_and_rollback_discards_them() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.select_tx();
    h.publish("q", b"1", TRANSIENT);
    h.publish("q", b"2", TRANSIENT);
    assert_eq!(q.message_count(), 0, "held back until commit");
    h.tx(tx::AMQPMethod::Commit(tx::Commit {})).expect("commit");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Tx(tx::AMQPMethod::CommitOk(
            tx::CommitOk {}
        )))]
    );
    assert_eq!(q.message_count(), 2);
    h.publish("q", b"3", TRANSIENT);
    h.tx(tx::AMQPMethod::Rollback(tx::Rollback {}))
        .expect("rollback");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(
            tx::RollbackOk {}
        )))]
    );
    h.tx(tx::AMQPMethod::Commit(tx::Commit {})).expect("commit");
    h.sent();
    assert_eq!(q.message_count(), 2, "the rolled-back publish is gone");
}

#[tokio::test]
async fn a_commit_of_persistent_publishes_waits_for_the_store() {
    let mut h = Harness::new();
    let q = h.declare("durable", true, FieldTable::default());
    h.select_tx();
    h.publish("durable", b"p", PERSISTENT);
    h.tx(tx::AMQPMethod::Commit(tx::Commit {})).expect("commit");
    assert_eq!(q.message_count(), 1, "handed to the queue at commit");
    assert_eq!(h.sent(), [], "commit-ok waits for the flush");
    h.store_flushed().await.expect("flushed");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Tx(tx::AMQPMethod::CommitOk(
            tx::CommitOk {}
        )))]
    );
}

#[tokio::test]
async fn a_commit_whose_write_failed_is_a_partial_completion() {
    let mut h = Harness::new();
    h.declare("durable", true, FieldTable::default());
    h.select_tx();
    h.publish("durable", b"p", PERSISTENT);
    h.tx(tx::AMQPMethod::Commit(tx::Commit {})).expect("commit");
    let r =
        h.ch.flushed(&mut h.ctx, 0, true, false)
            .map_err(AmqpError::from);
    assert_eq!(
        refusal(r),
        channel_error(406, "PRECONDITION_FAILED - partial tx completion", 90, 20)
    );
    assert_eq!(h.sent(), [], "no commit-ok");
}

#[tokio::test]
async fn commit_and_rollback_need_tx_select() {
    for (m, method_id) in [
        (tx::AMQPMethod::Commit(tx::Commit {}), 20),
        (tx::AMQPMethod::Rollback(tx::Rollback {}), 30),
    ] {
        // The refusal closes the channel: each case gets a fresh one.
        let mut h = Harness::new();
        assert_eq!(
            refusal(h.tx(m)),
            channel_error(
                406,
                "PRECONDITION_FAILED - channel is not transactional",
                90,
                method_id
            )
        );
    }
}

#[tokio::test]
async fn a_tx_ack_is_checked_when_sent() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    h.select_tx();
    h.get("q", false).expect("get").expect("a message");
    h.ack(1, false).expect("ack");
    assert_eq!(
        refusal(h.ack(1, false)),
        unknown_tag(1, 80),
        "acked already in this transaction: refused at once, not at commit"
    );
    // The uncommitted ack never happened: closing gives the message back.
    h.ch.close(&mut h.ctx);
    assert_eq!(q.message_count(), 1);
}

#[tokio::test]
async fn tx_acks_are_applied_at_commit_and_undone_by_rollback() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    h.publish("q", b"b", TRANSIENT);
    h.select_tx();
    assert_eq!(
        h.get("q", false)
            .expect("get")
            .map(|(ok, _)| ok.delivery_tag),
        Some(1)
    );
    assert_eq!(
        h.get("q", false)
            .expect("get")
            .map(|(ok, _)| ok.delivery_tag),
        Some(2)
    );
    h.ack(1, false).expect("ack");
    h.tx(tx::AMQPMethod::Rollback(tx::Rollback {}))
        .expect("rollback");
    h.sent();
    // The rollback gave tag 1 back to the unacked: it can be acked again.
    h.ack(1, false).expect("ack again");
    h.tx(tx::AMQPMethod::Commit(tx::Commit {})).expect("commit");
    h.sent();
    // Closing requeues what is still unacked: only tag 2.
    h.ch.close(&mut h.ctx);
    assert_eq!(q.message_count(), 1);
    assert_eq!(
        h.get("q", true).expect("get").map(|(_, b)| b),
        Some(Bytes::from_static(b"b"))
    );
}

#[tokio::test]
async fn an_uncommitted_ack_is_undone_when_the_channel_closes() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    h.select_tx();
    h.get("q", false).expect("get").expect("a message");
    h.ack(1, false).expect("ack");
    h.ch.close(&mut h.ctx);
    assert_eq!(q.message_count(), 1);
}

// Acks, nacks, rejects.

#[tokio::test]
async fn an_unknown_or_repeated_delivery_tag_is_406() {
    let mut h = Harness::new();
    assert_eq!(refusal(h.ack(42, false)), unknown_tag(42, 80));
    let mut h = Harness::new();
    h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    let (ok, _) = h.get("q", false).expect("get").expect("a message");
    h.ack(ok.delivery_tag, false).expect("ack");
    assert_eq!(refusal(h.ack(ok.delivery_tag, false)), unknown_tag(1, 80));
    let mut h = Harness::new();
    let r = h.method(AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
        delivery_tag: 99,
        requeue: true,
    })));
    assert_eq!(refusal(r), unknown_tag(99, 90));
}

#[tokio::test]
async fn ack_multiple_settles_up_to_an_outstanding_tag() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    for body in [&b"1"[..], b"2", b"3", b"4"] {
        h.publish("q", body, TRANSIENT);
        h.get("q", false).expect("get").expect("a message");
    }
    h.ack(3, false).expect("ack 3");
    h.ack(2, true).expect("ack up to 2");
    assert_eq!(
        refusal(h.ack(1, false)),
        unknown_tag(1, 80),
        "1 went with the multiple ack"
    );
    // The connection closes the refused channel, which requeues what it still holds: only 4.
    h.ch.close(&mut h.ctx);
    assert_eq!(
        h.get("q", true).expect("get").map(|(_, b)| b),
        Some(Bytes::from_static(b"4"))
    );
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn ack_multiple_needs_the_exact_tag_to_be_outstanding() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    for body in [&b"1"[..], b"2", b"3"] {
        h.publish("q", body, TRANSIENT);
        h.get("q", false).expect("get").expect("a message");
    }
    h.ack(2, false).expect("ack 2");
    // 2 is settled: "up to 2" names an unknown tag, though 1 is outstanding.
    assert_eq!(refusal(h.ack(2, true)), unknown_tag(2, 80));
    h.ch.close(&mut h.ctx);
    assert_eq!(
        q.message_count(),
        2,
        "the refused ack settled nothing: 1 and 3 come back"
    );
}

#[tokio::test]
async fn ack_multiple_with_tag_zero_settles_everything() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    for body in [&b"1"[..], b"2"] {
        h.publish("q", body, TRANSIENT);
        h.get("q", false).expect("get").expect("a message");
    }
    h.ack(0, true).expect("ack all");
    h.ch.close(&mut h.ctx);
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn nack_with_requeue_redelivers_and_without_drops() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    h.get("q", false).expect("get").expect("a message");
    h.method(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
        delivery_tag: 1,
        multiple: false,
        requeue: true,
    })))
    .expect("nack");
    let (ok, body) = h.get("q", false).expect("get").expect("requeued");
    assert_eq!(
        (ok.delivery_tag, ok.redelivered, &body[..]),
        (2, true, &b"a"[..])
    );
    h.method(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
        delivery_tag: 2,
        multiple: false,
        requeue: false,
    })))
    .expect("nack");
    assert_eq!(q.message_count(), 0);
    h.ch.close(&mut h.ctx);
    assert_eq!(
        q.message_count(),
        0,
        "the dropped message is not unacked either"
    );
}

#[tokio::test]
async fn recover_requeues_every_unacked_delivery() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    h.publish("q", b"b", TRANSIENT);
    h.get("q", false).expect("get").expect("a");
    h.get("q", false).expect("get").expect("b");
    h.method(AMQPClass::Basic(basic::AMQPMethod::Recover(
        basic::Recover { requeue: true },
    )))
    .expect("recover");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Basic(
            basic::AMQPMethod::RecoverOk(basic::RecoverOk {})
        ))]
    );
    assert_eq!(q.message_count(), 2);
    assert_eq!(refusal(h.ack(1, false)), unknown_tag(1, 80));
    let mut h = Harness::new();
    let r = h.method(AMQPClass::Basic(basic::AMQPMethod::Recover(
        basic::Recover { requeue: false },
    )));
    assert_eq!(
        refusal(r),
        connection_error(540, "NOT_IMPLEMENTED - requeue=false", 60, 110)
    );
}

// basic.get, consumers, qos.

#[tokio::test]
async fn get_answers_empty_then_ok_with_the_count_left() {
    let mut h = Harness::new();
    h.declare("q", false, FieldTable::default());
    assert_eq!(h.get("q", true).expect("get"), None);
    h.publish("q", b"a", TRANSIENT);
    h.publish("q", b"b", TRANSIENT);
    let (ok, body) = h.get("q", true).expect("get").expect("a message");
    assert_eq!((ok.message_count, &body[..]), (1, &b"a"[..]));
    // An empty name means the queue this channel declared last.
    let (ok, body) = h.get("", true).expect("get").expect("a message");
    assert_eq!(
        (ok.delivery_tag, ok.message_count, &body[..]),
        (2, 0, &b"b"[..])
    );
    assert_eq!(h.get("q", true).expect("get"), None);
}

#[tokio::test]
async fn get_from_a_missing_queue_is_404() {
    let mut h = Harness::new();
    assert_eq!(
        refusal(h.get("", true).map(|_| ())),
        channel_error(404, "NOT_FOUND - no previously declared queue", 60, 70)
    );
    assert_eq!(
        refusal(h.get("nope", true).map(|_| ())),
        channel_error(404, "NOT_FOUND - no queue 'nope' in vhost '/'", 60, 70)
    );
}

#[tokio::test]
async fn a_consumer_gets_deliveries_until_cancelled() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.consume("q", "c1").expect("consume");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Basic(
            basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: "c1".into(),
            })
        ))]
    );
    h.publish("q", b"a", TRANSIENT);
    let got = h.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].0.consumer_tag.as_str(),
            got[0].0.delivery_tag,
            &got[0].1[..]
        ),
        ("c1", 1, &b"a"[..])
    );
    h.method(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: "c1".into(),
        nowait: false,
    })))
    .expect("cancel");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Basic(basic::AMQPMethod::CancelOk(
            basic::CancelOk {
                consumer_tag: "c1".into(),
            }
        )))]
    );
    assert_eq!(q.consumer_count(), 0);
    h.publish("q", b"b", TRANSIENT);
    assert_eq!(h.deliveries(), [], "no delivery after cancel");
    assert_eq!(q.message_count(), 1);
    // The delivery taken before the cancel is still this channel's to ack.
    h.ack(1, false).expect("ack");
    // A tag in use on the channel cannot be taken again.
    h.consume("q", "c2").expect("consume");
    assert_eq!(
        refusal(h.consume("q", "c2")),
        connection_error(
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'c2'",
            60,
            20
        )
    );
}

#[tokio::test]
async fn a_delivery_for_a_consumer_cancelled_meanwhile_goes_back_to_its_queue() {
    let mut h = Harness::new();
    // Another consumer on the channel must not take it either.
    h.declare("other", false, FieldTable::default());
    h.consume("other", "c2").expect("consume");
    h.sent();
    let q = h.declare("q", false, FieldTable::default());
    h.consume("q", "c1").expect("consume");
    h.publish("q", b"a", TRANSIENT);
    // Cancelled while the delivery waits in the inbox.
    h.method(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: "c1".into(),
        nowait: true,
    })))
    .expect("cancel");
    h.sent();
    assert_eq!(h.deliveries(), []);
    assert_eq!(q.message_count(), 1);
    assert_eq!(
        refusal(h.ack(1, false)),
        unknown_tag(1, 80),
        "no tag was given out"
    );
}

#[tokio::test]
async fn a_deleted_queue_cancels_its_consumers_with_basic_cancel() {
    let mut h = Harness::new();
    h.declare("q", false, FieldTable::default());
    h.consume("q", "c1").expect("consume");
    h.sent();
    h.method(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: "q".into(),
        ..Default::default()
    })))
    .expect("queue.delete");
    h.sent();
    let QueueEvent::Cancelled {
        channel,
        consumer_tag,
    } = h.next_event().await
    else {
        panic!("expected a cancellation");
    };
    assert_eq!(channel, CH);
    h.ch.consumer_cancelled(&mut h.ctx, &consumer_tag);
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Basic(basic::AMQPMethod::Cancel(
            basic::Cancel {
                consumer_tag: "c1".into(),
                nowait: true,
            }
        )))]
    );
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries_and_an_ack_lets_the_next_through() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    for body in [&b"1"[..], b"2", b"3", b"4", b"5"] {
        h.publish("q", body, TRANSIENT);
    }
    h.method(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count: 2,
        global: false,
    })))
    .expect("qos");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Basic(basic::AMQPMethod::QosOk(
            basic::QosOk {}
        )))]
    );
    h.consume("q", "c1").expect("consume");
    h.sent();
    let tags = |got: Vec<(basic::Deliver, Bytes)>| -> Vec<u64> {
        got.iter().map(|(d, _)| d.delivery_tag).collect()
    };
    assert_eq!(tags(h.deliveries()), [1, 2]);
    assert_eq!(q.message_count(), 3);
    h.ack(1, false).expect("ack");
    assert_eq!(tags(h.deliveries()), [3]);
    h.ack(3, true).expect("ack up to 3");
    assert_eq!(tags(h.deliveries()), [4, 5]);
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn a_global_prefetch_limits_the_channels_consumers_together() {
    let mut h = Harness::new();
    for name in ["a", "b"] {
        h.declare(name, false, FieldTable::default());
        h.publish(name, b"1", TRANSIENT);
        h.publish(name, b"2", TRANSIENT);
    }
    h.method(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count: 3,
        global: true,
    })))
    .expect("qos");
    h.sent();
    h.consume("a", "ca").expect("consume");
    h.consume("b", "cb").expect("consume");
    h.sent();
    let got = h.deliveries();
    assert_eq!(got.len(), 3, "three unacked across both consumers");
    h.ack(got[0].0.delivery_tag, false).expect("ack");
    assert_eq!(h.deliveries().len(), 1, "one ack lets one more through");
}

#[tokio::test]
async fn direct_reply_to_renames_the_request_and_routes_the_reply_to_the_channel() {
    let reply_to = |name: &[u8]| {
        // Property flags with reply-to (bit 9) set, then the short string.
        let len = u8::try_from(name.len()).expect("a short name");
        [&[0x02, 0x00, len][..], name].concat()
    };
    let pseudo = crate::broker::REPLY_TO.as_bytes();
    let mut h = Harness::new();
    h.declare("requests", false, FieldTable::default());
    h.publish_method("", "requests").expect("publish");
    h.header(1, &reply_to(pseudo)).expect("header");
    assert_eq!(
        refusal(h.body(b"x")),
        channel_error(
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist",
            60,
            40
        )
    );
    let mut h = Harness::new();
    let q = h.declare("requests", false, FieldTable::default());
    h.method(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: crate::broker::REPLY_TO.into(),
            consumer_tag: "replies".into(),
            no_ack: true,
            ..Default::default()
        },
    )))
    .expect("consume replies");
    h.sent();
    h.publish("requests", b"ping", &reply_to(pseudo));
    let (request, _) = q.get().expect("the request");
    let name = request.msg.reply_to().expect("a reply-to").to_vec();
    assert!(
        name.starts_with(b"amq.rabbitmq.reply-to."),
        "renamed for this channel"
    );
    assert_ne!(&name[..], pseudo);
    let name = String::from_utf8(name).expect("a name");
    h.publish(&name, b"pong", TRANSIENT);
    let QueueEvent::Reply { channel, msg } = h.next_event().await else {
        panic!("expected the reply");
    };
    assert_eq!(channel, CH);
    h.ch.deliver_reply(&mut h.ctx, &msg);
    let mut sent = h.sent().into_iter();
    let Some(Sent::Method(AMQPClass::Basic(basic::AMQPMethod::Deliver(d)))) = sent.next() else {
        panic!("expected basic.deliver");
    };
    assert_eq!(
        (d.consumer_tag.as_str(), d.routing_key.as_str()),
        ("replies", name.as_str())
    );
    assert_eq!(&content(sent)[..], b"pong");
}

#[tokio::test]
async fn qos_with_a_prefetch_size_is_540() {
    let mut h = Harness::new();
    // amq-protocol's Qos has no prefetch-size field: the frame is written by hand.
    let payload = [&[0, 60, 0, 10][..], &10u32.to_be_bytes(), &[0, 1, 0]].concat();
    assert_eq!(
        refusal(h.raw_method(Bytes::from(payload))),
        connection_error(540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)", 60, 10)
    );
}

// The channel class.

#[tokio::test]
async fn channel_flow_and_a_second_open() {
    let mut h = Harness::new();
    h.method(AMQPClass::Channel(channel::AMQPMethod::Flow(
        channel::Flow { active: true },
    )))
    .expect("flow");
    assert_eq!(
        h.sent(),
        [Sent::Method(AMQPClass::Channel(
            channel::AMQPMethod::FlowOk(channel::FlowOk { active: true })
        ))]
    );
    let r = h.method(AMQPClass::Channel(channel::AMQPMethod::Flow(
        channel::Flow { active: false },
    )));
    assert_eq!(
        refusal(r),
        connection_error(540, "NOT_IMPLEMENTED - active=false", 20, 20)
    );
    let mut h = Harness::new();
    let r = h.method(AMQPClass::Channel(channel::AMQPMethod::Open(
        channel::Open {},
    )));
    assert_eq!(
        refusal(r),
        connection_error(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
    );
}

#[tokio::test]
async fn closing_the_channel_requeues_its_unacked_and_cancels_its_consumers() {
    let mut h = Harness::new();
    let q = h.declare("q", false, FieldTable::default());
    h.publish("q", b"a", TRANSIENT);
    h.publish("q", b"b", TRANSIENT);
    h.get("q", false).expect("get").expect("a");
    h.consume("q", "c1").expect("consume");
    h.sent();
    assert_eq!(h.deliveries().len(), 1);
    assert_eq!(q.message_count(), 0);
    h.ch.close(&mut h.ctx);
    assert_eq!(q.consumer_count(), 0);
    assert_eq!(q.message_count(), 2);
    let (ok, body) = h.get("q", true).expect("get").expect("requeued");
    assert_eq!(
        (ok.redelivered, &body[..]),
        (true, &b"a"[..]),
        "in queue order"
    );
}

#[tokio::test]
async fn a_durable_declare_is_answered_only_once_the_store_synced_it() {
    let mut h = Harness::new();
    let store = h.ctx.vhost.store().expect("store");
    let syncs = || store.stats.syncs.load(std::sync::atomic::Ordering::SeqCst);
    h.method(AMQPClass::Queue(queue::AMQPMethod::Declare(
        queue::Declare {
            queue: "transient".into(),
            ..Default::default()
        },
    )))
    .expect("declared");
    let before = syncs();
    assert!(h.ctx.topology_durable().await, "nothing to write");
    assert_eq!(syncs(), before, "a transient declare waits for no fsync");
    h.method(AMQPClass::Queue(queue::AMQPMethod::Declare(
        queue::Declare {
            queue: "durable".into(),
            durable: true,
            ..Default::default()
        },
    )))
    .expect("declared");
    assert!(
        h.ctx.topology.is_some(),
        "the batch noted a topology method"
    );
    let before = syncs();
    assert!(h.ctx.topology_durable().await, "written");
    assert!(syncs() > before, "the reply waited for an fsync");
    assert!(h.ctx.topology.is_none());
}
