//! Abusive clients cost only themselves. Each test runs the real binary, measures a
//! well-behaved client (publish and consume round trips on a queue of its own) before and while
//! an abuser does its worst, and reads the broker's resident memory: the abuser is throttled,
//! blocked or closed with a clear reply code, the broker's memory stays bounded, and the
//! well-behaved client keeps being served. The figures are printed (`--nocapture`) for the
//! record; what is asserted is behaviour and memory, never speed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Process, free_port, serve_args, start_command};
use common::raw::Raw;
use common::{basic_consume, confirm_channel, declare_queue, no_args, refusal};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;

/// Starts the binary with `config` (TOML) on a free port.
async fn warren(dir: &Path, config: &str) -> Process {
    let port = free_port();
    let file = dir.join("warren.toml");
    std::fs::write(&file, config).expect("write config");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    command
        .args(serve_args(&dir.join("data"), port))
        .arg("--config")
        .arg(&file);
    start_command(command, port).await
}

/// The broker's resident memory, in bytes.
fn rss(warren: &Process) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", warren.pid())).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// What a well-behaved client got done in a while.
#[derive(Debug)]
struct Served {
    round_trips: usize,
    p50: Duration,
    max: Duration,
}

/// A well-behaved client for `window`: publishes one message on a confirm channel and waits
/// for its delivery, again and again, on a queue of its own.
async fn probe(uri: &str, window: Duration) -> Served {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("the well-behaved client connects");
    let ch = confirm_channel(&conn).await;
    let q = declare_queue(&ch, "probe").await;
    let mut consumer = basic_consume(&ch, &q, "probe", common::no_ack())
        .await
        .expect("consume");
    let mut times = Vec::new();
    let until = Instant::now() + window;
    while Instant::now() < until {
        let sent = Instant::now();
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"probe",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        tokio::time::timeout(common::WAIT, consumer.next())
            .await
            .expect("the well-behaved client is served")
            .expect("consumer open")
            .expect("delivery");
        times.push(sent.elapsed());
    }
    let _ = conn.close(200, "bye".into()).await;
    times.sort_unstable();
    Served {
        round_trips: times.len(),
        p50: times[times.len() / 2],
        max: times[times.len() - 1],
    }
}

/// Measures the well-behaved client alone, then while `abuse` runs; asserts it was served
/// throughout and the broker's memory grew by less than `bound` bytes. Returns what `abuse`
/// returned.
async fn while_abused<T>(
    what: &str,
    warren: &Process,
    bound: u64,
    abuse: impl std::future::Future<Output = T>,
) -> T {
    let uri = warren.uri();
    let window = Duration::from_secs(1);
    let alone = probe(&uri, window).await;
    let before = rss(warren);
    let (abused, result) = tokio::join!(
        async {
            // Let the abuse get going first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            probe(&uri, window).await
        },
        abuse
    );
    let after = rss(warren);
    eprintln!(
        "{what}: well-behaved client alone {} round trips/s (p50 {:?}, max {:?}); under abuse {} \
         (p50 {:?}, max {:?}); broker RSS {} -> {} MiB",
        alone.round_trips,
        alone.p50,
        alone.max,
        abused.round_trips,
        abused.p50,
        abused.max,
        before / MIB,
        after / MIB
    );
    assert!(
        abused.round_trips > 0,
        "{what}: the well-behaved client was served"
    );
    assert!(
        after.saturating_sub(before) < bound,
        "{what}: broker RSS grew {} MiB, bound {} MiB",
        after.saturating_sub(before) / MIB,
        bound / MIB
    );
    result
}

#[tokio::test]
async fn a_consumer_that_stops_reading_its_socket_holds_a_bounded_amount() {
    let dir = tempfile::tempdir().expect("dir");
    let warren = warren(dir.path(), "").await;
    // The abuser consumes with no-ack and never reads its socket again.
    let mut stalled = Raw::open(warren.addr()).await;
    let conn = warren.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = declare_queue(&ch, "stalled").await;
    stalled
        .send(&common::raw::consume_no_ack(1, &q, "stalled"))
        .await;
    let body = vec![7u8; 16 * 1024];
    while_abused("consumer that stops reading", &warren, 256 * MIB, async {
        // 128 MiB offered to it: what the broker holds for it is bounded by the no-ack window and
        // the connection's write buffer; the rest waits in the queue, which pages past its
        // threshold.
        for _ in 0..8192 {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
    })
    .await;
    drop(stalled);
}

#[tokio::test]
async fn thousands_of_connections_that_never_finish_their_handshake_are_dropped() {
    let dir = tempfile::tempdir().expect("dir");
    let warren = warren(dir.path(), "handshake_timeout_ms = 2000\n").await;
    let addr = warren.addr();
    let mut silent = while_abused("2,000 silent connections", &warren, 64 * MIB, async {
        let mut all = Vec::new();
        for i in 0..2000 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // Half say nothing; half send the protocol header and stop there.
            if i % 2 == 0 {
                s.write_all(warren::protocol::frame::PROTOCOL_HEADER)
                    .await
                    .expect("header");
            }
            all.push(s);
        }
        all
    })
    .await;
    // Past the handshake timeout, the broker has hung up on every one of them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for s in &mut silent {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(common::WAIT, async {
            loop {
                match tokio::io::AsyncReadExt::read(s, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection was dropped");
    }
}

#[tokio::test]
async fn two_thousand_channels_on_one_connection_cost_little() {
    let dir = tempfile::tempdir().expect("dir");
    let warren = warren(dir.path(), "channel_max = 2047\n").await;
    let conn = warren.connect().await;
    let refused = while_abused("2,047 channels and one more", &warren, 64 * MIB, async {
        let mut open = Vec::new();
        for _ in 0..2047 {
            open.push(conn.create_channel().await.expect("within channel_max"));
        }
        // lapin numbers its own channels and refuses the 2048th itself; the broker's refusal is
        // in tests/raw_protocol.rs. What counts here: 2,047 channels cost little.
        (open.len(), conn.create_channel().await.is_err())
    })
    .await;
    assert_eq!(refused, (2047, true));
}

#[tokio::test]
async fn floods_of_unroutable_and_oversized_messages_cost_the_flooder() {
    let dir = tempfile::tempdir().expect("dir");
    let warren = warren(dir.path(), "max_message_size = 1048576\n").await;
    let conn = warren.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let code = while_abused(
        "unroutable and oversized floods",
        &warren,
        64 * MIB,
        async {
            let body = vec![1u8; 4096];
            // Unroutable: dropped as they come, nothing kept.
            for _ in 0..20_000 {
                ch.basic_publish(
                    "amq.direct".into(),
                    "nowhere".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
            // Oversized: refused from the header, before the body is read.
            let big = vec![2u8; 2 * 1024 * 1024];
            let r = ch
                .basic_publish(
                    "".into(),
                    "anything".into(),
                    BasicPublishOptions::default(),
                    &big,
                    BasicProperties::default(),
                )
                .await;
            match r {
                Ok(confirm) => {
                    let _ = confirm.await;
                }
                Err(e) => panic!("the publish itself goes out: {e:?}"),
            }
            let mut events = Box::pin(conn.events_listener());
            refusal(&common::next_error(&mut events).await).0
        },
    )
    .await;
    assert_eq!(
        code, 406,
        "the oversized message closes the flooder's channel"
    );
}

#[tokio::test]
async fn a_consumer_that_never_acks_is_capped_then_timed_out() {
    let dir = tempfile::tempdir().expect("dir");
    let warren = warren(
        dir.path(),
        "consumer_max_unacked = 1000\nconsumer_timeout = 1500\n",
    )
    .await;
    let conn = warren.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = common::declare_queue_with(&ch, "hoard", QueueDeclareOptions::default()).await;
    for _ in 0..5000 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"hoarded",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let hoarder = warren.connect().await;
    let hch = hoarder.create_channel().await.expect("channel");
    let mut consumer = basic_consume(&hch, &q, "hoarder", BasicConsumeOptions::default())
        .await
        .expect("consume");
    let (held, closed) = while_abused("consumer that never acks", &warren, 64 * MIB, async {
        let mut held = 0;
        loop {
            match tokio::time::timeout(common::WAIT, consumer.next()).await {
                Ok(Some(Ok(_))) => held += 1,
                Ok(Some(Err(e))) => return (held, refusal(&e)),
                other => panic!("expected deliveries then the timeout, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(held, 1000, "capped at consumer_max_unacked");
    assert_eq!(closed.0, 406, "{closed:?}");
    // Everything it held is back in the queue.
    let back = ch
        .queue_declare(q.as_str().into(), common::passive(), no_args())
        .await
        .expect("passive declare");
    assert_eq!(back.message_count(), 5000);
}
