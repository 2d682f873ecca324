//! Backlogs larger than the memory budget: queued messages past it are paged to the store, and
//! the process's live heap stays near the budget while the backlog is many times larger.
//!
//! A counting allocator measures every live heap byte of this process (broker, store, client):
//! the bound is on memory, not on a counter the broker keeps. This file holds one test so that
//! nothing else runs in the process while it measures.

mod common;

use std::path::Path;

use common::heap::{Counting, assert_grew_under, growth, live, reset_peak};
use common::{
    WAIT, confirm_channel, connect, consume_prefetched, next_delivery, numbered_body,
    publish_numbered,
};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;

#[global_allocator]
static HEAP: Counting = Counting;

const MIB: usize = 1 << 20;
/// The broker's whole budget: 1 MiB of store cache and 3 MiB of queued messages.
const BUDGET: usize = 4 * MIB;
/// Publishes in flight before the test waits for their confirms.
const WINDOW: usize = 4000;
/// Bytes the broker may keep per queued message past the budget.
const PER_MESSAGE: usize = 64;
/// Everything else: the store's log buffers, page table and nodes it keeps past its cache (sled's
/// cache capacity is approximate), the runtime, the client.
const SLACK: usize = 24 * MIB;

/// Starts Warren on `dir` with the test's budget; stop it by sending on the returned channel.
async fn start(
    dir: &Path,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let uri = format!(
        "amqp://guest:guest@{}/%2f",
        listener.local_addr().expect("addr")
    );
    let config = warren::Config {
        data_dir: dir.to_path_buf(),
        memory_budget: std::env::var("XB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(BUDGET as u64),
        ..warren::Config::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(warren::run(listener, config, async move {
        let _ = stopped.await;
    }));
    (uri, stop, task)
}

/// Consumes `n` messages and checks they are the numbered bodies in order.
async fn drain_in_order(ch: &lapin::Channel, queue: &str, n: usize, redelivered: bool) {
    let mut consumer = consume_prefetched(ch, queue, "drain", 200).await;
    for i in 0..n {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(
            d.data,
            numbered_body(i),
            "message {i} out of order or damaged"
        );
        assert_eq!(
            d.redelivered, redelivered,
            "redelivered flag of message {i}"
        );
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let extra = tokio::time::timeout(std::time::Duration::from_millis(200), consumer.next()).await;
    assert!(extra.is_err(), "more messages than were published");
}

/// Asserts that the heap grew by no more than the budget, `n` small records and the slack
/// (its peak may also hold a ready list's old buffer while the list grows into a new one).
fn assert_bounded(what: &str, base: usize, n: usize) {
    let bound = BUDGET + n * PER_MESSAGE + SLACK;
    eprintln!("{what}: {} MiB of bodies", n * common::NUMBERED_BODY / MIB);
    let (_, peak) = assert_grew_under(what, base, bound);
    assert!(
        peak < bound + n * PER_MESSAGE,
        "{what}: heap grew {peak} bytes at peak, bound {}",
        bound + n * PER_MESSAGE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_past_the_budget_are_paged_and_come_back_in_order() {
    const N: usize = 48_000; // 48 MiB of bodies: twelve times the budget
    // Persistent ones wait for fsyncs: fewer of them keep the test short.
    const P: usize = 24_000;
    let dir = tempfile::tempdir().expect("dir");

    let (uri, stop, task) = start(dir.path()).await;
    let conn = connect(&uri).await;
    let ch = confirm_channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for q in ["transient-backlog", "durable-backlog"] {
        ch.queue_declare(q.into(), durable, FieldTable::default())
            .await
            .expect("declare");
    }

    // Transient messages go to disk only under this pressure.
    let base = reset_peak();
    publish_numbered(&ch, "transient-backlog", N, false, WINDOW).await;
    assert_bounded("transient backlog", base, N);
    drain_in_order(&ch, "transient-backlog", N, false).await;

    // Persistent messages in a durable queue: paged while the broker runs, and recovered under
    // the budget after a restart.
    let base = reset_peak();
    publish_numbered(&ch, "durable-backlog", P, true, WINDOW).await;
    assert_bounded("persistent backlog", base, P);
    drop(ch);
    let _ = conn.close(200, "bye".into()).await;
    let _ = stop.send(());
    let stopped = tokio::time::timeout(WAIT * 2, task).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "stop: {stopped:?}");

    // Recovery is measured past what starting on an empty store costs.
    let empty = tempfile::tempdir().expect("dir");
    let base = live();
    let (uri, stop, task) = start(empty.path()).await;
    let conn = connect(&uri).await;
    let startup = growth(base).0;
    drop(conn);
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT * 2, task).await;

    let base = reset_peak() + startup;
    let (uri, stop, task) = start(dir.path()).await;
    let conn = connect(&uri).await;
    let ch = confirm_channel(&conn).await;
    assert_bounded("recovering the persistent backlog", base, P);
    drain_in_order(&ch, "durable-backlog", P, false).await;
    let gone = ch
        .queue_declare(
            "transient-backlog".into(),
            QueueDeclareOptions {
                passive: true,
                ..durable
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(
        gone.message_count(),
        0,
        "transient messages outlived a restart"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT * 2, task).await;
}
