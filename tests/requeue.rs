//! Returning many unacked deliveries: a connection that closes holding a large number of them gives
//! them back to their queue in slices, so other clients are served while they return.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TestBroker, WAIT, basic_publish, no_args, passive};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};

/// More unacked deliveries than any one slice returns.
const N: u32 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connection_returns_its_unacked_messages_in_slices() {
    let broker = TestBroker::start_with(|c| c.consumer_max_unacked = N).await;
    let (_conn, ch) = broker.channel().await;
    ch.queue_declare("big".into(), QueueDeclareOptions::default(), no_args())
        .await
        .expect("declare");
    for _ in 0..N {
        drop(basic_publish(&ch, "", "big", b"m").await);
    }

    let holder = broker.connect().await;
    let hch = holder.create_channel().await.expect("channel");
    let mut consumer = hch
        .basic_consume(
            "big".into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume");
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    tokio::spawn(async move {
        while let Some(Ok(_)) = consumer.next().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT * 6;
    while taken.load(Ordering::Relaxed) < N as usize {
        assert!(tokio::time::Instant::now() < deadline, "deliveries stalled");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Another client watches the queue's depth while the holder's connection closes.
    let watcher = broker.connect().await;
    let wch = watcher.create_channel().await.expect("channel");
    let watching = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT * 6;
        loop {
            let q = wch
                .queue_declare("big".into(), passive(), no_args())
                .await
                .expect("passive declare");
            seen.push(q.message_count());
            if q.message_count() == N {
                return seen;
            }
            assert!(tokio::time::Instant::now() < deadline, "never all back");
        }
    });
    holder.close(200, "bye".into()).await.expect("close");
    let seen = watching.await.expect("watcher");
    let partial: Vec<u32> = seen.iter().copied().filter(|&n| n > 0 && n < N).collect();
    eprintln!(
        "{} answers while the messages returned, {} of them partial",
        seen.len(),
        partial.len()
    );
    // In one step, the queue would go from empty to full between two answers.
    assert!(
        !partial.is_empty(),
        "the watcher saw only {seen:?}: the messages came back in one step"
    );
    broker.stop().await;
}
