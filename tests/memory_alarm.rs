//! The memory alarm holds against abusive consumers: every byte the broker holds for a message
//! counts (ready, unacked, waiting in a connection's inbox), and past the budget publishers are
//! blocked with `connection.blocked` until memory is given back.
//!
//! A counting allocator measures every live heap byte of this process (broker, store, clients):
//! the bound is on memory, not on a counter the broker keeps. This file holds one test so that
//! nothing else runs in the process while it measures.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic};
use common::blocking::Raw;
use common::heap::{Counting, assert_grew_under, growth, reset_peak};
use common::{TestBroker, WAIT, connect, consume_prefetched, eventually_within, next_delivery};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

#[global_allocator]
static HEAP: Counting = Counting;

const MIB: usize = 1 << 20;
/// The broker's whole budget: 2 MiB of store cache and 6 MiB of messages.
const BUDGET: usize = 8 * MIB;
const BODY: usize = 1024;
/// 64 MiB of bodies: eight times the budget.
const N: usize = 64 * 1024;
/// Everything else: the store's buffers, the runtime, the clients, one connection's output
/// buffer.
const SLACK: usize = 32 * MIB;
/// Bytes the broker may keep per message paged out past the budget.
const PER_MESSAGE: usize = 64;

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| c.memory_budget = u64::try_from(BUDGET).unwrap_or(u64::MAX)).await
}

async fn declare(ch: &Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

/// Publishes `N` bodies to `queue` one by one (lapin waits for each to be written), counting them.
fn publish_all(
    ch: Channel,
    queue: &'static str,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let body = vec![b'.'; BODY];
        for _ in 0..N {
            let c = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            drop(c);
            sent.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Consumes and acks until `n` messages came, with a prefetch window.
async fn drain(conn: &Connection, queue: &str, n: usize) {
    let ch = conn.create_channel().await.expect("channel");
    let mut c = consume_prefetched(&ch, queue, "drain", 500).await;
    for _ in 0..n {
        let d = tokio::time::timeout(WAIT * 6, c.next())
            .await
            .expect("deliveries keep coming")
            .expect("consumer open")
            .expect("delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
}

fn assert_bounded(what: &str, base: usize) {
    assert_grew_under(what, base, BUDGET + SLACK + N * PER_MESSAGE);
}

/// A consumer with no prefetch limit that never acks: its unacked deliveries count, the alarm
/// blocks the publisher near the budget, and giving the messages back unblocks it with nothing
/// lost.
async fn consumer_that_never_acks() {
    let broker = broker().await;
    let hoarder = broker.connect().await;
    let ch = hoarder.create_channel().await.expect("channel");
    declare(&ch, "hoard").await;
    let mut hoard = ch
        .basic_consume(
            "hoard".into(),
            "hoarder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let hoarded = Arc::new(AtomicUsize::new(0));
    let counter = hoarded.clone();
    tokio::spawn(async move {
        // Deliveries are taken and dropped: never acked.
        while let Some(Ok(_)) = hoard.next().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    let base = reset_peak();
    let publisher = broker.connect().await;
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = publish_all(
        publisher.create_channel().await.expect("channel"),
        "hoard",
        sent.clone(),
    );
    eventually_within("the publisher is blocked", WAIT * 6, || async {
        publisher.status().blocked()
    })
    .await;
    // Blocked, it stays blocked: the alarm does not flap while nothing is given back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(publisher.status().blocked(), "the alarm let go by itself");
    let held = sent.load(Ordering::Relaxed);
    eprintln!(
        "blocked after {held} publishes, {} delivered unacked",
        hoarded.load(Ordering::Relaxed)
    );
    assert!(held < N, "every publish went through");
    assert_bounded("a consumer that never acks", base);

    // Its channel closes: its deliveries go back, and an acking consumer takes everything.
    ch.close(200, "bye".into()).await.expect("close");
    let drainer = broker.connect().await;
    drain(&drainer, "hoard", N).await;
    eventually_within("the publisher is unblocked", WAIT * 6, || async {
        !publisher.status().blocked()
    })
    .await;
    tokio::time::timeout(WAIT, publishing)
        .await
        .expect("publishing finishes")
        .expect("publisher");
    broker.stop().await;
}

/// A no-ack consumer that stops reading its socket: deliveries past its inbox window wait in the
/// queue (and are paged past the budget) instead of piling up in its connection.
async fn consumer_that_stops_reading() {
    let broker = broker().await;
    let mut raw = Raw::connect(broker.addr);
    raw.consume_no_ack("stalled", "stalled");
    // From here on the socket is never read again.

    let base = reset_peak();
    let publisher = connect(&broker.uri()).await;
    let ch = publisher.create_channel().await.expect("channel");
    let sent = Arc::new(AtomicUsize::new(0));
    let publishing = publish_all(ch.clone(), "stalled", sent.clone());
    let started = std::time::Instant::now();
    // A generous guard against a hang: paging 64 MiB to the store is slow in a debug build.
    tokio::time::timeout(WAIT * 60, publishing)
        .await
        .unwrap_or_else(|_| panic!("publishing stalled at {}", sent.load(Ordering::Relaxed)))
        .expect("publisher");
    // A round trip on the publishing channel: every publish before it has been routed.
    let left = ch
        .queue_declare(
            "stalled".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    eprintln!(
        "{} messages wait in the queue after {:?}",
        left.message_count(),
        started.elapsed()
    );
    assert!(
        left.message_count() > 0,
        "every message left the queue for a consumer that reads nothing"
    );
    assert_bounded("a consumer that stops reading", base);

    // Nothing was lost: what the stalled consumer did not get is still in the queue.
    drop(raw);
    let mut c = ch
        .basic_consume(
            "stalled".into(),
            "after".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = next_delivery(&mut c).await;
    assert_eq!(first.data.len(), BODY);
    broker.stop().await;
}

/// Channels that each declare the largest body allowed and send a little of it: the broker
/// reserves a bounded part of each declared size, growing only as body frames arrive.
async fn publishers_that_declare_huge_bodies() {
    const CHANNELS: u16 = 40;
    const SENT: usize = 64 * 1024;
    let broker = broker().await;
    let base = reset_peak();
    let mut raw = Raw::connect(broker.addr);
    for channel in 2..=CHANNELS {
        raw.send(
            channel,
            AMQPClass::Channel(lapin::protocol::channel::AMQPMethod::Open(
                lapin::protocol::channel::Open {},
            )),
        );
        raw.method();
    }
    let declared = 128u64 << 20;
    for channel in 1..=CHANNELS {
        raw.send(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "nowhere".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        raw.content(channel, declared, &vec![b'.'; SENT]);
    }
    // A round trip after them all: every channel has taken its first body frame.
    raw.send(
        CHANNELS + 1,
        AMQPClass::Channel(lapin::protocol::channel::AMQPMethod::Open(
            lapin::protocol::channel::Open {},
        )),
    );
    raw.method();
    let (peak_live, peak) = growth(base);
    eprintln!(
        "{CHANNELS} channels declaring {} MiB each: heap grew {:.1} MiB ({:.1} MiB at peak)",
        declared >> 20,
        peak_live as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert!(
        peak < SLACK,
        "reserved {peak} bytes for {CHANNELS} bodies of which {SENT} bytes each arrived"
    );
    drop(raw);
    common::assert_served(&broker.uri()).await.expect("close");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_clients_are_bounded_by_the_memory_alarm() {
    consumer_that_never_acks().await;
    consumer_that_stops_reading().await;
    publishers_that_declare_huge_bodies().await;
}
