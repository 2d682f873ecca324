//! With default settings, a persistent backlog costs its index in memory, not its bodies: past a
//! small window per queue, a message on disk is read back from the store as consumers reach it.
//!
//! A counting allocator measures every live heap byte of this process (broker, store, client).
//! This file holds one test so that nothing else runs in the process while it measures.

mod common;

use common::heap::{Counting, assert_grew_under, reset_peak};
use common::{
    NUMBERED_BODY as BODY, TestBroker, confirm_channel, connect, consume_prefetched, next_delivery,
    numbered_body, publish_numbered,
};
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[global_allocator]
static HEAP: Counting = Counting;

const MIB: usize = 1 << 20;
/// 40 MiB of bodies.
const N: usize = 40_000;
/// Publishes in flight before the test waits for their confirms.
const IN_FLIGHT: usize = 2000;
/// What the backlog may cost: about 200 bytes a message (its place in the queue, the journal's
/// index entry and body location, the writer's reference count), the queue's window of 2,048
/// messages kept whole, and everything else (the store's cache, the runtime, the client).
const BOUND: usize = N * 200 + 2048 * 2 * BODY + 16 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_backlog_holds_its_index_not_its_bodies_by_default() {
    let broker = TestBroker::start_with(|_| {}).await;
    let conn = connect(&broker.uri()).await;
    let ch = confirm_channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare("backlog".into(), durable, FieldTable::default())
        .await
        .expect("declare");
    let base = reset_peak();
    publish_numbered(&ch, "backlog", N, true, IN_FLIGHT).await;
    eprintln!("{} MiB of bodies", N * BODY / MIB);
    assert_grew_under("persistent backlog, default settings", base, BOUND);

    let mut consumer = consume_prefetched(&ch, "backlog", "drain", 500).await;
    for i in 0..N {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(
            d.data,
            numbered_body(i),
            "message {i} out of order or damaged"
        );
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
}
