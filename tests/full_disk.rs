//! A full disk, on the real binary: a publish whose write failed is nacked, never acked; the
//! broker keeps serving; every acked message comes back after a restart with room; and a broker
//! restarted on a disk that is still full starts, serves what it holds and nacks new writes.
//!
//! No root needed: the first test runs the broker under a file-size limit (`ulimit -f`, with
//! SIGXFSZ ignored so a write past it fails with EFBIG, as sled's writes fail on a full disk); the
//! second fills a tmpfs mounted in an unprivileged user and mount namespace (`unshare -Urm`).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::client::assert_served;
use common::process::{Process, free_port, serve_args, start, start_command};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};

const QUEUE: &str = "full-disk";
/// Publishes awaited together: enough to fill a batch, few enough to stop soon after the failure.
const WINDOW: u64 = 64;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn declare(ch: &Channel) -> u32 {
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare")
    .message_count()
}

/// Publishes persistent messages numbered from `from`, `WINDOW` at a time, until `enough` says
/// so or `limit` were sent; returns the numbers acked and how many were nacked.
async fn publish(
    ch: &Channel,
    from: u64,
    limit: u64,
    enough: impl Fn(usize, usize) -> bool,
) -> (Vec<u64>, usize) {
    let padding = "x".repeat(4000);
    let (mut acked, mut nacked) = (Vec::new(), 0);
    let mut n = from;
    while n < from + limit && !enough(acked.len(), nacked) {
        let mut pending = Vec::new();
        for i in n..n + WINDOW {
            let body = format!("{i}:{padding}");
            let confirm = ch
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    persistent(),
                )
                .await
                .expect("basic.publish");
            pending.push((i, confirm));
        }
        for (i, confirm) in pending {
            match confirm.await.expect("confirm") {
                Confirmation::Ack(_) => acked.push(i),
                Confirmation::Nack(_) => nacked += 1,
                Confirmation::NotRequested => panic!("a confirm channel"),
            }
        }
        n += WINDOW;
    }
    (acked, nacked)
}

/// The numbers of every message in the queue, taken with `basic.get`.
async fn take_all(ch: &Channel) -> HashSet<u64> {
    let mut got = HashSet::new();
    while let Some(m) = ch
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let text = String::from_utf8_lossy(&m.delivery.data);
        let (number, _) = text.split_once(':').expect("numbered body");
        got.insert(number.parse().expect("number"));
    }
    got
}

/// The broker in a shell that caps every file it writes at `bytes` and ignores SIGXFSZ.
async fn start_capped(dir: &Path, port: u16, bytes: u64) -> Process {
    // dash counts 512-byte blocks, bash 1024: either cap is far above the reserve, below the cap
    // on what the test publishes.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f "$1"; shift; exec "$@""#)
        .arg("sh")
        .arg((bytes / 512).to_string())
        .arg(env!("CARGO_BIN_EXE_warren"))
        .args(serve_args(dir, port));
    start_command(command, port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_store_cannot_write_are_nacked_and_acked_ones_survive() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let broker = start_capped(dir.path(), port, 12 << 20).await;
    let conn = broker.connect().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch).await;
    // Until well past the first failure; 60 MB of bodies if the store never refuses anything.
    let (acked, nacked) = publish(&ch, 0, 15_000, |_, nacked| nacked >= 256).await;
    assert!(!acked.is_empty(), "the store wrote before it was full");
    assert!(
        nacked > 0,
        "{} publishes acked and none nacked past a 12 MiB file limit",
        acked.len()
    );
    // Still serving: a round trip on another connection, and what the queue holds in memory.
    assert_served(&broker.uri()).await.expect("close");
    let other = broker.connect().await;
    let reader = other.create_channel().await.expect("channel");
    let held = declare(&reader).await;
    assert!(held >= u32::try_from(acked.len()).expect("count"));
    // A transaction whose persistent publish cannot be written fails, as a partly nacked one does.
    let tx = other.create_channel().await.expect("channel");
    tx.tx_select().await.expect("tx.select");
    tx.basic_publish(
        "".into(),
        QUEUE.into(),
        BasicPublishOptions::default(),
        b"in a transaction",
        persistent(),
    )
    .await
    .expect("basic.publish");
    assert_eq!(
        common::failure(tx.tx_commit().await),
        (406, "PRECONDITION_FAILED - partial tx completion".into())
    );
    drop(conn);
    broker.kill9();

    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let recovered = take_all(&ch).await;
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !recovered.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acked messages lost ({nacked} nacked), first {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_on_a_full_disk_serves_what_it_holds_and_nacks_new_writes() {
    let usable = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        usable,
        "this test needs `unshare --user --map-root-user --mount` (unprivileged user namespaces)"
    );
    let data = tempfile::tempdir().expect("dir");
    let port = free_port();
    let broker = start(data.path(), port).await;
    let conn = broker.connect().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch).await;
    let (acked, nacked) = publish(&ch, 0, WINDOW, |_, _| false).await;
    assert_eq!((acked.len(), nacked), (64, 0));
    drop(conn);
    broker.kill9();

    // The data dir copied onto a small tmpfs, filled to the last byte, in a namespace of its own.
    // The disk alarm would block the publisher before any write failed: this test is about writes
    // that fail all the same, so it is turned off.
    let mount = tempfile::tempdir().expect("mount point");
    let settings = tempfile::tempdir().expect("config dir");
    let config = settings.path().join("warren.toml");
    std::fs::write(&config, "disk_free_limit.absolute = 0\n").expect("config file");
    let full = mount.path().join("data");
    let mut command = Command::new("unshare");
    command
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs -o size=32m tmpfs "$1" && cp -a "$2" "$3" || exit 1
            dd if=/dev/zero of="$1/fill" bs=64k 2>/dev/null
            shift 3; exec "$@""#,
        )
        .arg("sh")
        .arg(mount.path())
        .arg(data.path())
        .arg(&full)
        .arg(env!("CARGO_BIN_EXE_warren"))
        .args(serve_args(&full, port))
        .arg("--config")
        .arg(&config);
    let broker = start_command(command, port).await;
    let conn = broker.connect().await;
    let ch = common::confirm_channel(&conn).await;
    assert_eq!(declare(&ch).await, 64, "the stored messages are served");
    let (late_acked, late_nacked) = publish(&ch, 1000, WINDOW, |_, _| false).await;
    assert_eq!(
        (late_acked.len(), late_nacked),
        (0, 64),
        "a store that cannot write acks nothing"
    );
    let served = take_all(&ch).await;
    assert!(
        acked.iter().all(|n| served.contains(n)),
        "every stored message is served"
    );
    assert_served(&broker.uri()).await.expect("close");
}
