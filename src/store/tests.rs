use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn msg(store: &Store, body: &'static str) -> Arc<StoredMessage> {
    Arc::new(StoredMessage {
        id: store.next_message_id(),
        exchange: Bytes::from_static(b"ex"),
        routing_key: Bytes::from_static(b"rk"),
        properties: Bytes::from_static(&[0x10, 0, 2]),
        body: Bytes::from_static(body.as_bytes()),
    })
}

fn queue_record(id: u64, name: &str) -> QueueRecord {
    QueueRecord {
        id,
        vhost: "/".into(),
        name: name.into(),
        auto_delete: false,
        arguments: vec![0, 0, 0, 0],
    }
}

fn flushed(store: &Store) {
    let (tx, rx) = std::sync::mpsc::channel();
    store.after_flush(Box::new(move || {
        let _ = tx.send(());
    }));
    rx.recv_timeout(Duration::from_secs(10)).expect("flush");
}

#[test]
fn messages_come_back_in_order_with_delivered_markers() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        for (id, name) in [(1, "a"), (2, "b")] {
            let r = queue_record(id, name);
            store.put_meta(QueueRecord::key("/", name), Some(r.encode()));
        }
        let shared = msg(&store, "shared");
        let m1 = msg(&store, "one");
        let m2 = msg(&store, "two");
        store.enqueue(1, 0, m1.clone());
        store.enqueue(1, 1, shared.clone());
        store.enqueue(2, 0, shared.clone());
        store.enqueue(1, 2, m2.clone());
        store.delivered(1, 2, m2.id);
        store.remove(1, 0, m1.id);
        flushed(&store);
        let bodies = store
            .db
            .open_tree("messages")
            .expect("tree")
            .scan_prefix(b"m")
            .count();
        assert_eq!(bodies, 2, "a body routed to two queues is stored once");
    }
    let store = Store::open(dir.path(), 1 << 20).expect("reopen");
    let rec = store.recover().expect("recover");
    assert_eq!(rec.damaged, 0);
    let mut queues: Vec<_> = rec
        .queues
        .iter()
        .map(|(r, q)| {
            let msgs: Vec<_> = q
                .messages
                .iter()
                .map(|m| {
                    (
                        m.seq,
                        String::from_utf8_lossy(
                            &store.load_message(m.message_id).expect("body").body,
                        )
                        .to_string(),
                        m.delivered,
                    )
                })
                .collect();
            (r.name.clone(), msgs)
        })
        .collect();
    queues.sort();
    assert_eq!(
        queues,
        vec![
            (
                "a".to_string(),
                vec![
                    (1, "shared".to_string(), false),
                    (2, "two".to_string(), true)
                ]
            ),
            ("b".to_string(), vec![(0, "shared".to_string(), false)]),
        ]
    );
    let m = store
        .load_message(rec.queues[0].1.messages[0].message_id)
        .expect("body");
    assert_eq!(&m.properties[..], &[0x10, 0, 2]);
    assert!(
        store.next_message_id() > m.id,
        "ids continue after the stored ones"
    );
}

#[test]
fn no_completion_runs_before_the_flush_that_covers_it() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..200u64 {
        let submitted_after = store.stats.flushes.load(Ordering::Acquire);
        store.enqueue(7, i, msg(&store, "x"));
        let stats = store.stats.clone();
        let tx = tx.clone();
        store.after_flush(Box::new(move || {
            let seen = stats.flushes.load(Ordering::Acquire);
            let _ = tx.send(seen > submitted_after);
        }));
    }
    for _ in 0..200 {
        let covered = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("completion");
        assert!(covered, "a completion ran before its batch was flushed");
    }
    assert!(
        store.stats.flushes.load(Ordering::Acquire) < 200,
        "writes are grouped into fewer flushes than operations"
    );
}

#[test]
fn an_ack_in_the_same_batch_means_the_message_is_never_written() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    // Hold the writer inside a completion so the next operations pile up into one batch.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    store.after_flush(Box::new(move || {
        let _ = hold_rx.recv_timeout(Duration::from_secs(10));
    }));
    let m = msg(&store, "short-lived");
    store.enqueue(1, 0, m.clone());
    store.remove(1, 0, m.id);
    let _ = hold_tx.send(());
    flushed(&store);
    assert_eq!(store.stats.elided.load(Ordering::Relaxed), 1);
    assert_eq!(store.stats.enqueued.load(Ordering::Relaxed), 0);
    let tree = store.db.open_tree("messages").expect("tree");
    assert_eq!(tree.iter().count(), 0, "neither index nor body was written");
}

#[test]
fn a_second_open_is_refused_and_unknown_formats_too() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    match Store::open(dir.path(), 1 << 20) {
        Err(StoreError::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    store.db.insert(VERSION_KEY, &[99]).expect("insert");
    store.db.flush().expect("flush");
    store.close();
    drop(store);
    match Store::open(dir.path(), 1 << 20) {
        Err(e @ StoreError::UnknownFormat(_, 99)) => {
            assert!(e.to_string().contains("format 99"), "{e}");
        }
        other => panic!("expected UnknownFormat, got {other:?}"),
    }
}

#[test]
fn damaged_records_are_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.put_meta(b"q-garbage".to_vec(), Some(vec![1, 2, 3]));
        let r = queue_record(3, "ok");
        store.put_meta(QueueRecord::key("/", "ok"), Some(r.encode()));
        flushed(&store);
    }
    let store = Store::open(dir.path(), 1 << 20).expect("reopen");
    let rec = store.recover().expect("recover");
    assert_eq!(rec.damaged, 1);
    assert_eq!(rec.queues.len(), 1);
}

#[test]
fn pages_do_not_outlive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let id = {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let id = store.page_out(b"transient").expect("page");
        flushed(&store);
        assert_eq!(store.page_in(id).as_deref(), Some(&b"transient"[..]));
        assert_eq!(store.page_in(id), None, "a page is read back once");
        let again = store.page_out(b"left behind").expect("page");
        flushed(&store);
        again
    };
    let store = Store::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(store.page_in(id), None, "pages are emptied at start");
}
