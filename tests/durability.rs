//! Crash tests on the real binary: publish persistent messages with confirms from several
//! connections, `kill -9` the broker at varying moments, restart it on the same data dir, and
//! check that no confirmed message was lost, per-publisher order held, and topology came back.

mod common;

use std::collections::{HashMap, HashSet};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::next_delivery;
use common::process::{free_port, start};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Publishes `p{publisher}-{n}` with confirms until stopped; returns what was confirmed.
async fn publisher(uri: String, id: usize, stop: tokio::sync::watch::Receiver<bool>) -> Vec<u64> {
    let mut confirmed = Vec::new();
    let Ok(conn) = Connection::connect(&uri, ConnectionProperties::default()).await else {
        return confirmed;
    };
    let Ok(ch) = conn.create_channel().await else {
        return confirmed;
    };
    if ch.confirm_select(Default::default()).await.is_err() {
        return confirmed;
    }
    let mut n = 0u64;
    while !*stop.borrow() {
        let body = format!("p{id}-{n}");
        let Ok(pending) = ch
            .basic_publish(
                "durable-x".into(),
                "k".into(),
                Default::default(),
                body.as_bytes(),
                persistent(),
            )
            .await
        else {
            break;
        };
        match pending.await {
            Ok(c) if c.is_ack() => confirmed.push(n),
            _ => break,
        }
        n += 1;
    }
    confirmed
}

fn parse(body: &[u8]) -> (usize, u64) {
    let s = String::from_utf8_lossy(body);
    let (p, n) = s
        .trim_start_matches('p')
        .split_once('-')
        .expect("body p<id>-<n>");
    (p.parse().expect("publisher"), n.parse().expect("seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9_across_rounds() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut confirmed: HashMap<usize, HashSet<u64>> = HashMap::new();
    let mut delivered_before_crash: HashSet<(usize, u64)> = HashSet::new();
    for round in 0..3u64 {
        let broker = start(dir.path(), port).await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            "durable-x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        ch.queue_declare("dq".into(), durable_queue(), FieldTable::default())
            .await
            .expect("queue");
        ch.queue_bind(
            "dq".into(),
            "durable-x".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        ch.queue_declare(
            "transient-q".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient queue");
        // A consumer that takes a few messages without acking, so some come back redelivered.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let publishers: Vec<_> = (0..3)
            .map(|p| {
                tokio::spawn(publisher(
                    broker.uri(),
                    p + 10 * usize::try_from(round).unwrap_or(0),
                    stop_rx.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
        let peek = conn.create_channel().await.expect("peek channel");
        for _ in 0..3 {
            if let Ok(Some(m)) = peek
                .basic_get("dq".into(), BasicGetOptions { no_ack: false })
                .await
            {
                delivered_before_crash.insert(parse(&m.delivery.data));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.kill9();
        let _ = stop_tx.send(true);
        for (p, h) in publishers.into_iter().enumerate() {
            let got = h.await.expect("publisher task");
            confirmed
                .entry(p + 10 * usize::try_from(round).unwrap_or(0))
                .or_default()
                .extend(got);
        }
    }
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("dq".into(), passive, FieldTable::default())
        .await
        .expect("durable queue is back");
    let total: usize = confirmed.values().map(HashSet::len).sum();
    assert!(total > 0, "some publishes were confirmed");
    assert!(
        usize::try_from(q.message_count()).unwrap_or(0) >= total,
        "{} messages back, {total} confirmed",
        q.message_count()
    );
    let mut consumer = ch
        .basic_consume(
            "dq".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    for _ in 0..q.message_count() {
        let d = next_delivery(&mut consumer).await;
        let (p, n) = parse(&d.data);
        if let Some(prev) = last.insert(p, n) {
            assert!(n > prev, "publisher {p}: {n} arrived after {prev}");
        }
        if delivered_before_crash.contains(&(p, n)) {
            assert!(d.redelivered, "p{p}-{n} was delivered before the crash");
        }
        seen.insert((p, n));
    }
    for (p, ns) in &confirmed {
        for n in ns {
            assert!(
                seen.contains(&(*p, *n)),
                "confirmed message p{p}-{n} was lost"
            );
        }
    }
    // The transient queue is gone; the durable exchange and its binding are back.
    let ch2 = conn.create_channel().await.expect("channel");
    let gone = ch2
        .queue_declare("transient-q".into(), passive, FieldTable::default())
        .await;
    assert_eq!(gone.err().as_ref().and_then(common::reply_code), Some(404));
    ch.basic_publish(
        "durable-x".into(),
        "k".into(),
        Default::default(),
        b"p99-0",
        persistent(),
    )
    .await
    .expect("publish");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"p99-0", "the durable binding routes after restart");
    broker.kill9();
}

/// Runs `warren serve` to completion (it is expected to refuse to start) and returns its stderr.
fn refused_start(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--management-listen", "127.0.0.1:0"])
        .args(["--prometheus-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .output()
        .expect("run warren");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn a_sigterm_as_soon_as_the_port_opens_stops_the_broker_cleanly() {
    // Service managers and scripts stop a broker the moment it answers: the signal must not
    // find it between opening its port and listening for signals.
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("dir");
        let warren = start(dir.path(), free_port()).await;
        let status = warren.terminate().expect("it exits");
        assert_eq!(status.code(), Some(0), "{status}");
    }
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("dir");
    let first = start(dir.path(), free_port()).await;
    let (code, stderr) = refused_start(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use by another warren process") && !stderr.contains("panicked"),
        "{stderr}"
    );
    drop(first);
}

#[test]
fn an_unusable_data_dir_is_one_clear_line() {
    let file = tempfile::NamedTempFile::new().expect("file");
    let (code, stderr) = refused_start(file.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&file.path().display().to_string()) && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[tokio::test]
async fn messages_taken_without_ack_do_not_come_back_after_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    for (queue, n) in [("noack", 20), ("gets", 5)] {
        ch.queue_declare(queue.into(), durable_queue(), FieldTable::default())
            .await
            .expect("queue");
        for i in 0..n {
            ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                persistent(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        }
    }
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume("noack".into(), "".into(), no_ack, FieldTable::default())
        .await
        .expect("consume");
    for _ in 0..20 {
        next_delivery(&mut consumer).await;
    }
    for _ in 0..2 {
        let got = ch
            .basic_get("gets".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        assert!(got.is_some(), "a message by basic.get with no-ack");
    }
    // The removals are batched with later writes: a confirmed publish after them flushes them.
    ch.queue_declare("marker".into(), durable_queue(), FieldTable::default())
        .await
        .expect("marker queue");
    ch.basic_publish(
        "".into(),
        "marker".into(),
        Default::default(),
        b"m",
        persistent(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmed");
    broker.kill9();
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = |q: lapin::Queue| q.message_count();
    let noack = ch
        .queue_declare("noack".into(), passive, FieldTable::default())
        .await
        .expect("queue is back");
    assert_eq!(
        count(noack),
        0,
        "no-ack deliveries are settled as they leave"
    );
    let gets = ch
        .queue_declare("gets".into(), passive, FieldTable::default())
        .await
        .expect("queue is back");
    assert_eq!(count(gets), 3, "only the messages never taken come back");
}

fn args(pairs: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn ready(ch: &lapin::Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
}

#[tokio::test]
async fn dead_lettered_and_expiring_persistent_messages_are_right_after_kill_9() {
    use lapin::types::{AMQPValue, LongString};
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    ch.queue_declare("dlq".into(), durable_queue(), FieldTable::default())
        .await
        .expect("dlq");
    let to_dlq = [
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("dlq")),
    ];
    ch.queue_declare("rejects".into(), durable_queue(), args(&to_dlq))
        .await
        .expect("rejects");
    let mut ttl = to_dlq.to_vec();
    ttl.push(("x-message-ttl", AMQPValue::LongInt(300)));
    ch.queue_declare("expiring".into(), durable_queue(), args(&ttl))
        .await
        .expect("expiring");
    for queue in ["rejects", "expiring"] {
        ch.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            queue.as_bytes(),
            persistent(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    }
    let m = ch
        .basic_get("rejects".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    // Wait for the move, then make sure it is flushed: a confirmed publish comes after it.
    for _ in 0..200 {
        if ready(&ch, "dlq").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ch.basic_publish(
        "".into(),
        "dlq".into(),
        Default::default(),
        b"marker",
        persistent(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmed");
    broker.kill9();

    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(
        ready(&ch, "rejects").await,
        0,
        "the rejected message moved for good"
    );
    // The expiring message was not delivered before the crash; after it, it still expires into dlq.
    let mut got = Vec::new();
    for _ in 0..300 {
        if let Some(m) = ch
            .basic_get("dlq".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            let reason = m
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-first-death-reason").cloned());
            got.push((
                String::from_utf8_lossy(&m.delivery.data).to_string(),
                reason,
            ));
            if got.len() == 3 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        got,
        vec![
            ("rejects".to_string(), Some(text("rejected"))),
            ("marker".to_string(), None),
            ("expiring".to_string(), Some(text("expired"))),
        ]
    );
    assert_eq!(ready(&ch, "expiring").await, 0);
    broker.kill9();
}

#[tokio::test]
async fn a_ttl_that_runs_out_while_the_broker_is_down_is_not_restarted() {
    use lapin::types::AMQPValue;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let ttl = args(&[("x-message-ttl", AMQPValue::LongInt(400))]);
    ch.queue_declare("short-lived".into(), durable_queue(), ttl)
        .await
        .expect("queue");
    ch.basic_publish(
        "".into(),
        "short-lived".into(),
        Default::default(),
        b"stale",
        persistent(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmed");
    broker.kill9();
    // Down for longer than the TTL: the message is expired when the broker comes back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let broker = start(dir.path(), port).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get("short-lived".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(
        got.is_none(),
        "a message whose TTL ran out during the downtime was delivered"
    );
    broker.kill9();
}
