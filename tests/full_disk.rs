//! A full disk, on the real binary: a publish whose write failed is nacked, never acked; the
//! broker keeps serving; every acked message comes back after a restart with room; a broker
//! restarted on a disk that is still full starts, serves what it holds and nacks new writes; and
//! a store that failed writes again by itself once room returns.
//!
//! No root needed: the first test runs the broker under a file-size limit (`ulimit -f`, with
//! SIGXFSZ ignored so a write past it fails with EFBIG, as sled's writes fail on a full disk); the
//! others fill a tmpfs mounted in an unprivileged user and mount namespace (`unshare -Urm`).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::client::{assert_served, eventually_within};
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

/// Every acked message is in the queue of the (restarted) `broker`.
async fn assert_all_back(broker: &Process, acked: &[u64], note: &str) {
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
        "{} of {} acked messages lost ({note}), first {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
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
    assert_all_back(&broker, &acked, &format!("{nacked} nacked")).await;
}

/// Fails the test with a clear line where unprivileged user and mount namespaces are missing.
fn assert_unshare_usable() {
    let usable = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        usable,
        "this test needs `unshare --user --map-root-user --mount` (unprivileged user namespaces)"
    );
}

/// A config file that turns the disk alarm off: it would block publishers before any write
/// failed, and these tests are about writes that fail all the same.
fn no_disk_alarm(settings: &Path) -> std::path::PathBuf {
    let config = settings.join("warren.toml");
    std::fs::write(&config, "disk_free_limit.absolute = 0\n").expect("config file");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_writes_again_by_itself_once_room_returns() {
    assert_unshare_usable();
    // In a namespace of its own: a 48 MiB tmpfs half taken by a ballast file, the broker on it,
    // and a shell that removes the ballast when `room` appears in `control`, then kill -9s the
    // broker and starts it again on the same data when `restart` appears (the tmpfs lives as
    // long as the namespace). Bounded waits, and the broker dies with the shell.
    let mount = tempfile::tempdir().expect("mount point");
    let control = tempfile::tempdir().expect("control dir");
    let settings = tempfile::tempdir().expect("config dir");
    let config = no_disk_alarm(settings.path());
    let data = mount.path().join("data");
    let port = free_port();
    let mut command = Command::new("unshare");
    command
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs -o size=48m tmpfs "$1" || exit 1
            dd if=/dev/zero of="$1/ballast" bs=1M count=24 2>/dev/null
            m=$1; t=$2; shift 2
            setpriv --pdeathsig KILL -- "$@" & b=$!
            n=0; until [ -e "$t/room" ] || [ $n -ge 3000 ]; do sleep 0.1; n=$((n+1)); done
            rm -f "$m/ballast"
            n=0; until [ -e "$t/restart" ] || [ $n -ge 3000 ]; do sleep 0.1; n=$((n+1)); done
            kill -9 $b; wait $b 2>/dev/null; touch "$t/killed"
            exec "$@""#,
        )
        .arg("sh")
        .arg(mount.path())
        .arg(control.path())
        .arg(env!("CARGO_BIN_EXE_warren"))
        .args(serve_args(&data, port))
        .arg("--config")
        .arg(&config);
    let broker = start_command(command, port).await;
    let conn = broker.connect().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch).await;
    let (mut acked, nacked) = publish(&ch, 0, 15_000, |_, nacked| nacked >= 64).await;
    assert!(!acked.is_empty(), "the store wrote before it was full");
    assert!(
        nacked > 0,
        "{} publishes acked and none nacked",
        acked.len()
    );

    std::fs::write(control.path().join("room"), b"").expect("make room");
    let resumed = Mutex::new(Vec::new());
    let next = AtomicU64::new(100_000);
    let (ch_ref, resumed_ref, next_ref) = (&ch, &resumed, &next);
    eventually_within(
        "a publish acked once the disk had room again",
        Duration::from_secs(60),
        || async move {
            let from = next_ref.fetch_add(WINDOW, Ordering::Relaxed);
            let (acked, _) = publish(ch_ref, from, WINDOW, |_, _| false).await;
            let any = !acked.is_empty();
            resumed_ref.lock().expect("lock").extend(acked);
            any
        },
    )
    .await;
    acked.extend(resumed.into_inner().expect("lock"));
    drop(conn);

    std::fs::write(control.path().join("restart"), b"").expect("restart");
    let killed = control.path().join("killed");
    eventually_within(
        "the first broker killed",
        Duration::from_secs(30),
        || async { killed.exists() },
    )
    .await;
    eventually_within("the broker restarted", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert_all_back(&broker, &acked, "after a failure and resuming").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_on_a_full_disk_serves_what_it_holds_and_nacks_new_writes() {
    assert_unshare_usable();
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
    let mount = tempfile::tempdir().expect("mount point");
    let settings = tempfile::tempdir().expect("config dir");
    let config = no_disk_alarm(settings.path());
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
