//! Criterion benchmarks for the per-message hot path: frame parsing, method decoding, content
//! encoding, topic matching with many bindings, and a queue's side of publishing to durable
//! queues and acking (what reaches the store writer, not the writer's own work). Whole-broker load is measured with
//! `../shared/tools/amqp-load.sh`, side by side with RabbitMQ.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use warren::broker::topic::TopicTrie;
use warren::protocol::Message;
use warren::protocol::PropertiesInfo;
use warren::protocol::encode;
use warren::protocol::frame::parse_frame;
use warren::protocol::method::decode;
use warren::queue::log::{QueueLog, SharedRecord};
use warren::queue::{Queue, QueueOptions};
use warren::store::Store;

/// One publish as a client sends it: method, header and body frames for a 16-byte message.
fn publish_frames() -> Vec<u8> {
    let mut out = Vec::new();
    let mut method = vec![0, 60, 0, 40, 0, 0, 0, 5];
    method.extend_from_slice(b"bench");
    method.push(0);
    out.extend_from_slice(&[1, 0, 1]);
    out.extend_from_slice(&u32::try_from(method.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&method);
    out.push(0xCE);
    out.extend_from_slice(&[
        2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0xCE,
    ]);
    out.extend_from_slice(&[3, 0, 1, 0, 0, 0, 16]);
    out.extend_from_slice(&[b'x'; 16]);
    out.push(0xCE);
    out
}

fn codec(c: &mut Criterion) {
    let one = publish_frames();
    let batch = one.repeat(1000);
    c.bench_function("parse+decode 1000 publishes", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&batch[..]);
            let mut methods = 0;
            while let Ok(Some(frame)) = parse_frame(&mut buf, 131_072) {
                if let warren::protocol::frame::Frame::Method { payload, .. } = frame {
                    methods += usize::from(decode(&payload).is_ok());
                }
            }
            black_box(methods)
        })
    });
    let msg = Message::new(
        Bytes::new(),
        Bytes::from_static(b"bench"),
        Bytes::from_static(&[0, 0]),
        Default::default(),
        Bytes::from(vec![b'x'; 1024]),
    );
    c.bench_function("encode 1000 deliveries of 1 KiB", |b| {
        let mut out = BytesMut::with_capacity(2 * 1024 * 1024);
        b.iter(|| {
            out.clear();
            for tag in 0..1000 {
                encode::deliver(&mut out, 1, "ctag", tag, false, &msg, 131_072);
            }
            black_box(out.len())
        })
    });
}

fn topic(c: &mut Criterion) {
    let mut trie = TopicTrie::new();
    for i in 0..10_000u32 {
        let pattern = match i % 4 {
            0 => format!("stock.{i}.*"),
            1 => format!("#.region{}", i % 50),
            2 => format!("stock.*.price{i}"),
            _ => format!("audit.{i}.#"),
        };
        trie.insert(&pattern, i);
    }
    let keys: Vec<String> = (0..1000u32)
        .map(|i| format!("stock.{}.price{}", i * 7, i % 13))
        .collect();
    c.bench_function("topic match 1000 keys, 10k bindings", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            for k in &keys {
                trie.for_each_match(k, |_| hits += 1);
            }
            black_box(hits)
        })
    });
}

fn durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), 16 << 20).expect("store");
    let queues: Vec<_> = ["a", "b"]
        .map(|name| {
            Queue::new(
                name.into(),
                "/".into(),
                QueueOptions {
                    durable: true,
                    log: Some(QueueLog::create(store.clone())),
                    ..QueueOptions::default()
                },
            )
        })
        .into();
    let properties = Bytes::from_static(&[0x10, 0, 2]);
    let info = PropertiesInfo::scan(&properties).expect("properties");
    let body = Bytes::from(vec![b'x'; 16]);
    let name = "publish 1000 persistent to 2 durable queues, get and ack";
    c.bench_function(name, |b| {
        b.iter(|| {
            for _ in 0..1000 {
                // Each publish is a message of its own, as a channel assembles it.
                let msg = std::sync::Arc::new(Message::new(
                    Bytes::new(),
                    Bytes::from_static(b"bench"),
                    properties.clone(),
                    info.clone(),
                    body.clone(),
                ));
                let shared = SharedRecord::default();
                for q in &queues {
                    q.publish(msg.clone(), &shared);
                }
            }
            for q in &queues {
                while let Some((e, _)) = q.get() {
                    q.settle(&e);
                }
            }
        })
    });
    store.close();
}

criterion_group!(benches, codec, topic, durable);
criterion_main!(benches);
