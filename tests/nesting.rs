//! Field tables nested deeper than Warren reads (`MAX_DEPTH`, 64 levels) are refused with 501
//! before anything recurses into them: in every method that carries a table and in message
//! headers, at the deepest nesting a frame can hold. At the limit, they work everywhere. After
//! each refusal, a client connected beforehand is still served.
//!
//! RabbitMQ takes any depth that fits in a frame (its Erlang processes grow their stacks); Warren
//! refuses past the limit on purpose, since its parsers recurse on a fixed-size stack.

mod common;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use common::raw::*;
use common::{
    TestBroker, assert_channel_served, bind, confirm_channel, get_soon, publish_props, table,
    unique,
};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::{BasicProperties, Channel, ExchangeKind};
use warren::protocol::table::MAX_DEPTH;

/// The frame-max every connection here negotiates (Warren's default).
const FRAME_MAX: usize = 131_072;

/// Raw table bytes nesting `depth` containers, the table itself counted: tables under key `k`,
/// or one key `k` holding arrays of arrays. Written front to back with the lengths computed, as
/// a recursive builder would overflow the test's own stack.
fn deep_table(depth: usize, tables: bool) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).expect("fits a frame").to_be_bytes();
    let mut out = Vec::new();
    if tables {
        for level in 0..depth {
            out.extend_from_slice(&len(7 * (depth - 1 - level)));
            if level + 1 < depth {
                out.extend_from_slice(&[1, b'k', b'F']);
            }
        }
    } else {
        out.extend_from_slice(&len(2 + 5 * (depth - 1)));
        out.extend_from_slice(&[1, b'k']);
        for level in 1..depth {
            out.push(b'A');
            out.extend_from_slice(&len(5 * (depth - 1 - level)));
        }
    }
    out
}

/// How many octets [`deep_table`] takes.
fn table_len(depth: usize, tables: bool) -> usize {
    if tables {
        4 + 7 * (depth - 1)
    } else {
        6 + 5 * (depth - 1)
    }
}

/// The deepest [`deep_table`] that fits in `room` octets: one level more would not.
fn deepest(room: usize, tables: bool) -> usize {
    let depth = if tables {
        (room - 4) / 7 + 1
    } else {
        (room - 6) / 5 + 1
    };
    assert!(table_len(depth, tables) <= room && table_len(depth + 1, tables) > room);
    depth
}

/// A method frame on channel 1 whose table, between `head` and `tail`, nests as deep as the
/// frame can hold.
fn deepest_method(
    class_id: u16,
    method_id: u16,
    head: &[u8],
    tail: &[u8],
    tables: bool,
) -> Vec<u8> {
    let depth = deepest(FRAME_MAX - 4 - head.len() - tail.len(), tables);
    let t = deep_table(depth, tables);
    method(1, class_id, method_id, &[head, &t, tail].concat())
}

fn refusal(what: &str, class_id: u16, method_id: u16) -> Closed {
    Closed::new(
        501,
        &format!("FRAME_ERROR - cannot decode {what}: field table nested deeper than 64 levels"),
        class_id,
        method_id,
    )
}

/// Sends `frames` on a fresh connection, expects `expected` back, and checks that `bystander`,
/// connected before, is still served.
async fn refused(broker: &TestBroker, bystander: &Channel, frames: &[Vec<u8>], expected: Closed) {
    let mut raw = Raw::open(broker.addr).await;
    for f in frames {
        raw.send(f).await;
    }
    raw.expect_connection_close(expected).await;
    assert_channel_served(bystander).await;
}

#[tokio::test]
async fn arguments_nested_as_deep_as_a_frame_holds_are_501() {
    let broker = TestBroker::start().await;
    let (_conn, bystander) = broker.channel().await;
    let head = |fields: &[&[u8]]| [&[0u8, 0][..], &fields.concat()].concat();
    let methods = [
        (50, 10, head(&[&short("q"), &[0]])),
        (40, 10, head(&[&short("x"), &short("headers"), &[0]])),
        (
            50,
            20,
            head(&[&short("q"), &short("amq.headers"), &short(""), &[0]]),
        ),
        (60, 20, head(&[&short("q"), &short(""), &[0]])),
    ];
    for (class_id, method_id, head) in methods {
        for tables in [true, false] {
            let f = deepest_method(class_id, method_id, &head, &[], tables);
            let expected = refusal("arguments", class_id, method_id);
            refused(&broker, &bystander, &[f], expected).await;
        }
    }
}

#[tokio::test]
async fn headers_nested_as_deep_as_a_frame_holds_are_501() {
    let broker = TestBroker::start().await;
    let (_conn, bystander) = broker.channel().await;
    let exchange = unique("headers");
    bystander
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
    let queue = common::declare_queue(&bystander, "bound").await;
    bind(
        &bystander,
        &queue,
        &exchange,
        "",
        table(&[("x-match", common::s("any"))]),
    )
    .await;
    let publish = method(
        1,
        60,
        40,
        &[&[0, 0][..], &short(&exchange), &short(""), &[0]].concat(),
    );
    for tables in [true, false] {
        // class, weight, body size, property flags (headers only), then the table.
        let fixed = [
            &[0, 60, 0, 0][..],
            &0u64.to_be_bytes(),
            &(1u16 << 13).to_be_bytes(),
        ]
        .concat();
        let depth = deepest(FRAME_MAX - fixed.len(), tables);
        let header = frame(HEADER, 1, &[fixed, deep_table(depth, tables)].concat());
        let frames = [publish.clone(), header];
        refused(&broker, &bystander, &frames, refusal("headers", 60, 40)).await;
    }
    let left = get_soon(&bystander, &queue, BasicGetOptions { no_ack: true }).await;
    assert!(left.is_none(), "nothing of the refused messages was routed");
}

#[tokio::test]
async fn client_properties_nested_as_deep_as_the_handshake_frame_holds_are_501() {
    let broker = TestBroker::start().await;
    let (_conn, bystander) = broker.channel().await;
    // Before tune-ok, frames are held to the smallest frame-max, 4096.
    let tail = [short("PLAIN"), long(b"\0guest\0guest"), short("en_US")].concat();
    for tables in [true, false] {
        let depth = deepest(4096 - 4 - tail.len(), tables);
        let mut raw = Raw::connect(broker.addr).await;
        raw.send(warren::protocol::frame::PROTOCOL_HEADER).await;
        raw.expect_method().await;
        let args = [deep_table(depth, tables), tail.clone()].concat();
        raw.send(&method(0, 10, 11, &args)).await;
        raw.expect_connection_close(refusal("arguments", 10, 11))
            .await;
        assert_channel_served(&bystander).await;
    }
}

/// A value nesting `depth` containers: tables under `k`, or arrays of arrays.
fn deep_value(depth: usize, tables: bool) -> AMQPValue {
    let mut v = if tables {
        AMQPValue::FieldTable(FieldTable::default())
    } else {
        AMQPValue::FieldArray(FieldArray::default())
    };
    for _ in 1..depth {
        v = if tables {
            AMQPValue::FieldTable(table(&[("k", v)]))
        } else {
            AMQPValue::FieldArray(vec![v].into())
        };
    }
    v
}

fn headers(m: &BasicGetMessage) -> FieldTable {
    m.delivery.properties.headers().clone().unwrap_or_default()
}

#[tokio::test]
async fn tables_at_the_limit_are_declared_bound_consumed_matched_and_dead_lettered() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    for tables in [true, false] {
        // The arguments or headers table is the first level; its value `k` the other 63.
        let deep = deep_value(MAX_DEPTH - 1, tables);
        let args = table(&[("k", deep.clone())]);
        let exchange = unique("headers");
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for _ in 0..2 {
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Headers,
                durable,
                args.clone(),
            )
            .await
            .expect("exchange.declare at the limit, and again");
        }
        let dlq = common::declare_queue(&ch, "dlq").await;
        let mut queue_args = args.clone();
        queue_args.insert("x-dead-letter-exchange".into(), common::s(""));
        queue_args.insert("x-dead-letter-routing-key".into(), common::s(&dlq));
        let queue = unique("deep");
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for _ in 0..2 {
            ch.queue_declare(queue.as_str().into(), options, queue_args.clone())
                .await
                .expect("queue.declare at the limit, and again");
        }
        let mut binding = args.clone();
        binding.insert("x-match".into(), common::s("all"));
        bind(&ch, &queue, &exchange, "", binding).await;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args.clone(),
            )
            .await
            .expect("basic.consume at the limit");
        ch.basic_cancel(consumer.tag(), Default::default())
            .await
            .expect("basic.cancel");
        let props = BasicProperties::default().with_headers(args.clone());
        publish_props(&ch, &exchange, "", b"deep", props).await;
        let got = get_soon(&ch, &queue, BasicGetOptions { no_ack: false })
            .await
            .expect("the headers matched the binding");
        assert_eq!(headers(&got).inner().get("k"), Some(&deep));
        got.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("basic.reject");
        let dead = get_soon(&ch, &dlq, BasicGetOptions { no_ack: true })
            .await
            .expect("dead-lettered");
        let dead = headers(&dead);
        assert_eq!(dead.inner().get("k"), Some(&deep));
        assert!(dead.inner().contains_key("x-death"));
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await
            .expect("queue.delete");
        ch.exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .expect("exchange.delete");
    }
    assert_channel_served(&ch).await;
}

#[tokio::test]
async fn stored_arguments_at_the_limit_come_back_after_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::process::free_port();
    let args = table(&[("k", deep_value(MAX_DEPTH - 1, true))]);
    let mut binding = args.clone();
    binding.insert("x-match".into(), common::s("all"));
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let publish = |ch: Channel, body: &'static [u8]| {
        let props = BasicProperties::default()
            .with_headers(args.clone())
            .with_delivery_mode(2);
        async move { publish_props(&ch, "deep-x", "", body, props).await }
    };
    let broker = common::process::start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    ch.exchange_declare(
        "deep-x".into(),
        ExchangeKind::Headers,
        durable_x,
        args.clone(),
    )
    .await
    .expect("exchange.declare");
    ch.queue_declare("deep-q".into(), durable_q, args.clone())
        .await
        .expect("queue.declare");
    bind(&ch, "deep-q", "deep-x", "", binding).await;
    publish(ch, b"before").await;
    broker.kill9();

    let broker = common::process::start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    publish(ch.clone(), b"after").await;
    for body in [&b"before"[..], b"after"] {
        let got = get_soon(&ch, "deep-q", BasicGetOptions { no_ack: true }).await;
        assert_eq!(got.map(|m| m.delivery.data), Some(body.to_vec()));
    }
    broker.kill9();
}
