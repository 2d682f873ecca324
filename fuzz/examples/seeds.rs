//! Writes the seed corpora under fuzz/seeds/<target>/: realistic inputs made with amq-protocol's
//! encoders (as clients write them) and the project's own files and encoders.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` rewrites them all.

use std::path::{Path, PathBuf};

use amq_protocol::auth::{Credentials, SASLMechanism};
use amq_protocol::protocol::basic::{self, AMQPProperties};
use amq_protocol::protocol::{
    AMQPClass, access, channel, confirm, connection, exchange, queue, tx,
};
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use warren::Config;
use warren::management::definitions::{export, load};
use warren::protocol::frame::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use warren::protocol::table;
use warren_fuzz::{method_bytes, scratch_file, table_bytes, with_broker};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.parent().expect("fuzz/ lies in the repository");
    let seeds = root.join("seeds");
    let methods = methods();
    let headers = content_headers();
    let tables = tables();

    let mut out = Corpus::new(&seeds, "method");
    for (name, class) in &methods {
        out.write(name, &method_bytes(class));
    }

    let mut out = Corpus::new(&seeds, "frame");
    // Two leading octets pick frame_max (0, 4096, 131072) and the size of the pieces it arrives in.
    let session = stream(
        &methods
            .iter()
            .map(|(_, c)| method_bytes(c))
            .collect::<Vec<_>>(),
    );
    out.write("session", &[&[2, 255][..], &session].concat());
    out.write("session-in-small-pieces", &[&[1, 7][..], &session].concat());
    let publish = &methods
        .iter()
        .find(|(n, _)| *n == "basic.publish")
        .expect("listed")
        .1;
    let mut published = frame(FRAME_METHOD, 1, &method_bytes(publish));
    published.extend(frame(FRAME_HEADER, 1, &headers[0].1));
    published.extend(frame(FRAME_BODY, 1, b"hello, "));
    published.extend(frame(FRAME_BODY, 1, b"world"));
    published.extend(frame(FRAME_HEARTBEAT, 0, &[]));
    out.write(
        "publish-in-two-bodies",
        &[&[0, 64][..], &published].concat(),
    );
    out.write(
        "unknown-frame-type",
        &[&[1, 255][..], &frame(9, 1, b"abc")].concat(),
    );

    let mut out = Corpus::new(&seeds, "content_header");
    for (name, payload) in &headers {
        out.write(name, payload);
    }

    let mut out = Corpus::new(&seeds, "field_table");
    for (name, bytes) in &tables {
        out.write(name, bytes);
    }

    let mut out = Corpus::new(&seeds, "sasl");
    let plain = |u: &str, p: &str| sasl(SASLMechanism::Plain, u, p);
    out.write("plain", &plain("guest", "guest"));
    out.write("plain-utf8", &plain("ünïcode", "pässwörd"));
    out.write("plain-authzid", b"admin\0guest\0guest");
    out.write("amqplain", &sasl(SASLMechanism::AMQPlain, "guest", "guest"));
    let mut short = Vec::new();
    table::put_table(
        &mut short,
        [
            (&b"LOGIN"[..], &b"s\x05guest"[..]),
            (&b"PASSWORD"[..], &b"s\x05guest"[..]),
        ],
    );
    out.write("amqplain-short-strings", &short[4..]);

    let mut out = Corpus::new(&seeds, "definitions");
    let shipped = repo.join("interop/rabbitmqadmin/rabbitmq-3.10.8-definitions.json");
    let shipped = std::fs::read(&shipped).expect("the shipped definitions file");
    out.write("rabbitmq-3.10.8", &shipped);
    out.write("warren-export", warren_export(&shipped).as_bytes());

    let mut out = Corpus::new(&seeds, "config");
    let shipped = std::fs::read_to_string(repo.join("config/warren.toml")).expect("config");
    out.write("warren.toml", shipped.as_bytes());
    out.write("permissions", format!("{shipped}{CONFIG_EXTRA}").as_bytes());
}

/// Settings the shipped file leaves commented out.
const CONFIG_EXTRA: &str = r#"
[[permissions]]
user = "app"
vhost = "/"
configure = "^app\\."
write = "^app\\.|^amq\\.default$"
read = "^app\\."

[[topic_permissions]]
user = "app"
vhost = "/"
exchange = "amq.topic"
write = "^app\\."
read = "^{username}\\."
"#;

/// One directory of seeds, emptied first so that it holds exactly what this run writes.
struct Corpus(PathBuf);

impl Corpus {
    fn new(seeds: &Path, target: &str) -> Self {
        let dir = seeds.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the seeds directory is writable");
        Self(dir)
    }

    fn write(&mut self, name: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(name), bytes).expect("the seeds directory is writable");
    }
}

fn short(s: &str) -> ShortString {
    s.into()
}

/// A table holding one value of every field type, and a table and an array nested in it.
fn every_type() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert(short("x-match"), AMQPValue::LongString("all".into()));
    inner.insert(short("count"), AMQPValue::LongInt(-7));
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("byte", AMQPValue::ShortShortInt(-8)),
        ("ubyte", AMQPValue::ShortShortUInt(200)),
        ("short", AMQPValue::ShortInt(-300)),
        ("ushort", AMQPValue::ShortUInt(60_000)),
        ("int", AMQPValue::LongInt(-70_000)),
        ("uint", AMQPValue::LongUInt(4_000_000_000)),
        ("long", AMQPValue::LongLongInt(-(1 << 40))),
        ("float", AMQPValue::Float(1.5)),
        ("double", AMQPValue::Double(-2.25)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("shortstr", AMQPValue::ShortString(short("short"))),
        (
            "longstr",
            AMQPValue::LongString(LongString::from("long string")),
        ),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::LongString("two".into()),
                AMQPValue::FieldTable(inner.clone()),
                AMQPValue::FieldArray(FieldArray::default()),
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(inner)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0, 1, 0xff])),
        ),
        ("void", AMQPValue::Void),
    ];
    let mut t = FieldTable::default();
    for (k, v) in values {
        t.insert(short(k), v);
    }
    t
}

/// Queue arguments as RabbitMQ clients declare them.
fn queue_arguments() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(short("x-message-ttl"), AMQPValue::LongInt(60_000));
    t.insert(short("x-max-length"), AMQPValue::LongLongInt(1000));
    t.insert(
        short("x-dead-letter-exchange"),
        AMQPValue::LongString("dlx".into()),
    );
    t.insert(
        short("x-queue-type"),
        AMQPValue::LongString("classic".into()),
    );
    t.insert(short("x-max-priority"), AMQPValue::ShortShortUInt(10));
    t
}

/// A table `depth` tables deep, itself included.
fn nested(depth: usize) -> FieldTable {
    let mut t = FieldTable::default();
    for _ in 1..depth {
        let mut outer = FieldTable::default();
        outer.insert(short("k"), AMQPValue::FieldTable(t));
        t = outer;
    }
    t
}

/// Client properties as lapin sends them, capabilities nested.
fn client_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "authentication_failure_close",
    ] {
        caps.insert(short(cap), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    t.insert(short("product"), AMQPValue::LongString("lapin".into()));
    t.insert(
        short("connection_name"),
        AMQPValue::LongString("fuzz seed".into()),
    );
    t.insert(short("capabilities"), AMQPValue::FieldTable(caps));
    t
}

/// Every method a client sends to the broker, and the server's connection.start.
fn methods() -> Vec<(&'static str, AMQPClass)> {
    use AMQPClass::{Access, Basic, Channel, Confirm, Connection, Exchange, Queue, Tx};
    let name = |s: &str| ShortString::from(s);
    vec![
        (
            "connection.start",
            Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: every_type(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        ),
        (
            "connection.start-ok",
            Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(),
                mechanism: name("PLAIN"),
                response: "\0guest\0guest".into(),
                locale: name("en_US"),
            })),
        ),
        (
            "connection.secure-ok",
            Connection(connection::AMQPMethod::SecureOk(connection::SecureOk {
                response: "guest".into(),
            })),
        ),
        (
            "connection.tune-ok",
            Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        ),
        (
            "connection.open",
            Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: name("/"),
            })),
        ),
        (
            "connection.close",
            Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: name("Goodbye"),
                class_id: 0,
                method_id: 0,
            })),
        ),
        (
            "connection.close-ok",
            Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        ),
        (
            "connection.blocked",
            Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: name("low on memory"),
            })),
        ),
        (
            "connection.update-secret",
            Connection(connection::AMQPMethod::UpdateSecret(
                connection::UpdateSecret {
                    new_secret: "token".into(),
                    reason: name("refresh"),
                },
            )),
        ),
        (
            "channel.open",
            Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        (
            "channel.flow",
            Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
        ),
        (
            "channel.flow-ok",
            Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: true,
            })),
        ),
        (
            "channel.close",
            Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 406,
                reply_text: name("PRECONDITION_FAILED - unknown delivery tag 7"),
                class_id: 60,
                method_id: 80,
            })),
        ),
        (
            "channel.close-ok",
            Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        (
            "access.request",
            Access(access::AMQPMethod::Request(access::Request {
                realm: name("/data"),
                ..Default::default()
            })),
        ),
        (
            "exchange.declare",
            Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name("orders"),
                kind: name("headers"),
                durable: true,
                arguments: every_type(),
                ..Default::default()
            })),
        ),
        (
            "exchange.delete",
            Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: name("orders"),
                if_unused: true,
                ..Default::default()
            })),
        ),
        (
            "exchange.bind",
            Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: name("dst"),
                source: name("amq.topic"),
                routing_key: name("a.*.#"),
                arguments: FieldTable::default(),
                ..Default::default()
            })),
        ),
        (
            "exchange.unbind",
            Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: name("dst"),
                source: name("amq.topic"),
                routing_key: name("a.*.#"),
                nowait: true,
                ..Default::default()
            })),
        ),
        (
            "queue.declare",
            Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name("work"),
                durable: true,
                arguments: queue_arguments(),
                ..Default::default()
            })),
        ),
        (
            "queue.declare-nested",
            Queue(queue::AMQPMethod::Declare(queue::Declare {
                exclusive: true,
                auto_delete: true,
                arguments: nested(table::MAX_DEPTH),
                ..Default::default()
            })),
        ),
        (
            "queue.bind",
            Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: name("work"),
                exchange: name("orders"),
                routing_key: name(""),
                arguments: every_type(),
                ..Default::default()
            })),
        ),
        (
            "queue.purge",
            Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: name("work"),
                ..Default::default()
            })),
        ),
        (
            "queue.delete",
            Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name("work"),
                if_unused: true,
                if_empty: true,
                ..Default::default()
            })),
        ),
        (
            "queue.unbind",
            Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: name("work"),
                exchange: name("orders"),
                routing_key: name("rk"),
                arguments: queue_arguments(),
            })),
        ),
        (
            "basic.qos",
            Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 50,
                global: true,
            })),
        ),
        (
            "basic.consume",
            Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: name("work"),
                consumer_tag: name("ctag-1"),
                no_ack: false,
                exclusive: true,
                arguments: {
                    let mut t = FieldTable::default();
                    t.insert(short("x-priority"), AMQPValue::LongInt(5));
                    t
                },
                ..Default::default()
            })),
        ),
        (
            "basic.cancel",
            Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: name("ctag-1"),
                nowait: false,
            })),
        ),
        (
            "basic.publish",
            Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: name("amq.direct"),
                routing_key: name("work"),
                mandatory: true,
                immediate: false,
            })),
        ),
        (
            "basic.get",
            Basic(basic::AMQPMethod::Get(basic::Get {
                queue: name("work"),
                no_ack: true,
            })),
        ),
        (
            "basic.ack",
            Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 42,
                multiple: true,
            })),
        ),
        (
            "basic.reject",
            Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 7,
                requeue: true,
            })),
        ),
        (
            "basic.recover-async",
            Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: true,
            })),
        ),
        (
            "basic.recover",
            Basic(basic::AMQPMethod::Recover(basic::Recover {
                requeue: false,
            })),
        ),
        (
            "basic.nack",
            Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 9,
                multiple: false,
                requeue: false,
            })),
        ),
        ("tx.select", Tx(tx::AMQPMethod::Select(tx::Select {}))),
        ("tx.commit", Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        ("tx.rollback", Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))),
        (
            "confirm.select",
            Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        ),
    ]
}

/// Content header payloads: class, weight, body size, then the properties.
fn content_headers() -> Vec<(&'static str, Vec<u8>)> {
    let all = AMQPProperties::default()
        .with_content_type(short("application/json"))
        .with_content_encoding(short("gzip"))
        .with_headers(every_type())
        .with_delivery_mode(2)
        .with_priority(9)
        .with_correlation_id(short("corr-1"))
        .with_reply_to(short("amq.rabbitmq.reply-to"))
        .with_expiration(short("60000"))
        .with_message_id(short("msg-1"))
        .with_timestamp(1_700_000_000)
        .with_type(short("order.created"))
        .with_user_id(short("guest"))
        .with_app_id(short("shop"))
        .with_cluster_id(short("c1"));
    let reply_only = AMQPProperties::default().with_reply_to(short("amq.rabbitmq.reply-to"));
    let mut x_death = FieldTable::default();
    x_death.insert(
        short("x-first-death-queue"),
        AMQPValue::LongString("work".into()),
    );
    let dead_lettered = AMQPProperties::default()
        .with_headers(x_death)
        .with_delivery_mode(1)
        .with_expiration(short("0"));
    let deep = AMQPProperties::default().with_headers(nested(table::MAX_DEPTH));
    [
        ("all-properties", all, 12),
        ("none", AMQPProperties::default(), 0),
        ("reply-to", reply_only, 5),
        ("dead-lettered", dead_lettered, 1 << 20),
        ("headers-at-depth-limit", deep, 3),
    ]
    .into_iter()
    .map(|(name, props, body_size): (_, _, u64)| {
        let props = cookie_factory::r#gen(basic::gen_properties(&props), Vec::new())
            .map(|(out, _)| out)
            .expect("writing into a Vec cannot run out of room");
        (
            name,
            [&[0, 60, 0, 0][..], &body_size.to_be_bytes(), &props].concat(),
        )
    })
    .collect()
}

/// Field tables, length prefix first: every type, arguments, nesting, and Warren's raw writer.
fn tables() -> Vec<(&'static str, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut inner = Vec::new();
    table::put_table(&mut inner, [(&b"s"[..], &b"s\x05short"[..])]);
    let inner = [&b"F"[..], &inner].concat();
    let mut array = Vec::new();
    table::put_long(&mut array, b'A', b"I\x00\x00\x00\x01V");
    table::put_table(
        &mut raw,
        [
            (&b"nested"[..], &inner[..]),
            (&b"array"[..], &array[..]),
            (&b"void"[..], &b"V"[..]),
        ],
    );
    vec![
        ("every-type", table_bytes(&every_type())),
        ("queue-arguments", table_bytes(&queue_arguments())),
        ("client-properties", table_bytes(&client_properties())),
        ("at-depth-limit", table_bytes(&nested(table::MAX_DEPTH))),
        (
            "past-depth-limit",
            table_bytes(&nested(table::MAX_DEPTH + 1)),
        ),
        ("empty", table_bytes(&FieldTable::default())),
        ("raw-writer", raw),
    ]
}

fn sasl(mechanism: SASLMechanism, user: &str, password: &str) -> Vec<u8> {
    Credentials::new(user.into(), password.into())
        .sasl_auth_string(mechanism)
        .as_bytes()
        .to_vec()
}

/// One frame on the wire.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let size = u32::try_from(payload.len()).expect("a seed frame is small");
    [
        &[kind][..],
        &channel.to_be_bytes(),
        &size.to_be_bytes(),
        payload,
        &[FRAME_END],
    ]
    .concat()
}

/// The method payloads as frames on channel 1, one after another.
fn stream(payloads: &[Vec<u8>]) -> Vec<u8> {
    payloads
        .iter()
        .flat_map(|p| frame(FRAME_METHOD, 1, p))
        .collect()
}

/// The shipped RabbitMQ export, imported into a broker and exported again by Warren.
fn warren_export(definitions: &[u8]) -> String {
    let file = scratch_file("seed-definitions.json");
    std::fs::write(&file, definitions).expect("the scratch file is writable");
    let exported = with_broker(Config::default(), async |broker| {
        load(broker, &file)
            .await
            .expect("the shipped definitions import");
        export(broker)
    });
    let _ = std::fs::remove_file(&file);
    serde_json::to_string_pretty(&exported).expect("JSON values print")
}
