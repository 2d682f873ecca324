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

/// The store's sled database, as its readers hold it.
fn db(store: &Store) -> sled::Db {
    store.readers.read().as_ref().expect("open").db.clone()
}

/// Message bodies in the journal.
fn stored_bodies(store: &Store) -> usize {
    journal::body_count(&store.bodies)
}

/// A durable exchange whose record is big enough for sled to write it as a blob file of its own
/// (over a quarter of its 512 KiB segment).
fn big_exchange(store: &Store, name: &str) {
    let record = ExchangeRecord {
        vhost: "/".into(),
        name: name.into(),
        kind: "direct".into(),
        auto_delete: false,
        internal: false,
        arguments: vec![0; 200 * 1024],
    };
    store.put_meta(ExchangeRecord::key("/", name), Some(record.encode()));
}

fn flushed(store: &Store) {
    let (tx, rx) = std::sync::mpsc::channel();
    store.after_flush(
        0,
        Box::new(move |written| {
            let _ = tx.send(written);
        }),
    );
    let written = rx.recv_timeout(Duration::from_secs(10)).expect("flush");
    assert!(written, "the store wrote");
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
        store.delivered(1, 2);
        store.remove(1, 0, m1.id);
        flushed(&store);
        assert_eq!(
            stored_bodies(&store),
            2,
            "a body routed to two queues is stored once"
        );
    }
    let store = reopen(dir.path());
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
        store.after_flush(
            0,
            Box::new(move |written| {
                let seen = stats.flushes.load(Ordering::Acquire);
                let _ = tx.send(written && seen > submitted_after);
            }),
        );
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
    store.after_flush(
        0,
        Box::new(move |_| {
            let _ = hold_rx.recv_timeout(Duration::from_secs(10));
        }),
    );
    let m = msg(&store, "short-lived");
    store.enqueue(1, 0, m.clone());
    store.remove(1, 0, m.id);
    let _ = hold_tx.send(());
    flushed(&store);
    assert_eq!(store.stats.elided.load(Ordering::Relaxed), 1);
    assert_eq!(store.stats.enqueued.load(Ordering::Relaxed), 0);
    let tree = db(&store).open_tree("messages").expect("tree");
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
    let db = db(&store);
    db.insert(VERSION_KEY, &[99]).expect("insert");
    db.flush().expect("flush");
    drop(db);
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
    let store = reopen(dir.path());
    let rec = store.recover().expect("recover");
    assert_eq!(rec.damaged, 1);
    assert_eq!(rec.queues.len(), 1);
}

/// Pages a message with `body` and nothing else.
fn page(store: &Store, body: &[u8]) -> Option<u64> {
    store.page_out([b"", b"", b"", body])
}

/// The body of a page read back.
fn paged_body(store: &Store, id: u64) -> Option<Bytes> {
    store
        .page_in(id)
        .and_then(|raw| StoredMessage::decode(0, raw))
        .map(|m| m.body)
}

#[test]
fn pages_do_not_outlive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let id = {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let id = page(&store, b"transient").expect("page");
        flushed(&store);
        assert_eq!(paged_body(&store, id).as_deref(), Some(&b"transient"[..]));
        let again = page(&store, b"left behind").expect("page");
        flushed(&store);
        again
    };
    let store = reopen(dir.path());
    assert_eq!(paged_body(&store, id), None, "pages are emptied at start");
}

/// Opens the store in `dir` again after the last one was dropped: sled lets go of its
/// directory's lock a little after its last handle goes, so a quick reopen may find it held.
fn reopen(dir: &std::path::Path) -> Arc<Store> {
    let mut opened = Store::open(dir, 1 << 20);
    for _ in 0..100 {
        if !matches!(opened, Err(StoreError::Locked(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        opened = Store::open(dir, 1 << 20);
    }
    opened.expect("reopen")
}

fn delay_record(message_id: u64, due_ms: u64) -> DelayRecord {
    DelayRecord {
        message_id,
        vhost: "/".into(),
        exchange: "later".into(),
        due_ms,
    }
}

#[test]
fn holds_come_back_with_their_bodies_and_go_with_their_last_reference() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let kept = msg(&store, "kept");
        let routed = msg(&store, "routed");
        let (h1, h2, h3) = (
            store.next_message_id(),
            store.next_message_id(),
            store.next_message_id(),
        );
        store.delay(h1, &delay_record(kept.id, 2_000), kept.clone());
        store.delay(h2, &delay_record(routed.id, 1_000), routed.clone());
        // The same body also in the sink's index, as a held persistent publish is.
        store.enqueue(DELAY_SINK_QUEUE, 0, routed.clone());
        flushed(&store);
        assert_eq!(
            stored_bodies(&store),
            2,
            "a body shared by a hold and an index is stored once"
        );
        store.undelay(h2, routed.id);
        flushed(&store);
        assert_eq!(
            stored_bodies(&store),
            2,
            "the sink's entry still references it"
        );
        store.drop_queue(DELAY_SINK_QUEUE);
        // Held and routed in one batch: never written.
        store.delay(h3, &delay_record(routed.id, 5), routed.clone());
        store.undelay(h3, routed.id);
        flushed(&store);
        assert_eq!(
            stored_bodies(&store),
            1,
            "the routed body went with its last reference"
        );
    }
    let store = reopen(dir.path());
    let rec = store.recover().expect("recover");
    assert_eq!(rec.damaged, 0);
    let back: Vec<_> = rec
        .delayed
        .iter()
        .map(|d| (d.record.clone(), &d.message.body[..]))
        .collect();
    assert_eq!(back, [(delay_record(1, 2_000), &b"kept"[..])]);
    assert!(
        store.next_message_id() > rec.delayed[0].id,
        "hold ids are not handed out again"
    );
}

#[test]
fn queue_ids_are_not_handed_out_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let id = {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let id = store.next_message_id();
        store.put_meta(
            QueueRecord::key("/", "q"),
            Some(queue_record(id, "q").encode()),
        );
        flushed(&store);
        id
    };
    let store = reopen(dir.path());
    assert!(store.next_message_id() > id);
}

#[test]
fn a_move_leaves_its_source_and_reaches_every_target_in_one_batch() {
    let dir = tempfile::tempdir().expect("dir");
    let (src, a, b) = (1, 2, 3);
    {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        for (id, name) in [(src, "src"), (a, "a"), (b, "b")] {
            store.put_meta(
                QueueRecord::key("/", name),
                Some(queue_record(id, name).encode()),
            );
        }
        let original = msg(&store, "original");
        store.enqueue(src, 0, original.clone());
        flushed(&store);
        let dead = msg(&store, "dead-lettered");
        store.move_message(
            Some((src, 0, original.id)),
            vec![(a, 5, dead.clone()), (b, 0, dead.clone())],
        );
        // Moved on again before the flush: the entry in a is never written.
        let again = msg(&store, "again");
        store.move_message(Some((a, 5, dead.id)), vec![(b, 1, again)]);
        flushed(&store);
    }
    let store = reopen(dir.path());
    let rec = store.recover().expect("recover");
    let mut queues: Vec<(String, Vec<(u64, Bytes)>)> = rec
        .queues
        .iter()
        .map(|(r, q)| {
            let msgs = q
                .messages
                .iter()
                .map(|m| {
                    (
                        m.seq,
                        store.load_message(m.message_id).expect("body").body.clone(),
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
            ("a".to_string(), vec![]),
            (
                "b".to_string(),
                vec![
                    (0, Bytes::from_static(b"dead-lettered")),
                    (1, Bytes::from_static(b"again"))
                ]
            ),
            ("src".to_string(), vec![]),
        ]
    );
    assert_eq!(
        stored_bodies(&store),
        2,
        "the original body went with its last reference"
    );
}

#[test]
fn no_completion_runs_before_the_fsync_that_covers_its_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), 1 << 20).expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    for round in 0..20u64 {
        let small = msg(&store, "small");
        let big = Arc::new(StoredMessage {
            id: store.next_message_id(),
            body: Bytes::from(vec![7u8; 200 * 1024]),
            ..StoredMessage::clone(&small)
        });
        let blobs_before = store.stats.file_syncs.load(Ordering::SeqCst);
        let syncs_before = store.stats.syncs.load(Ordering::SeqCst);
        store.enqueue(1, round * 2, small);
        store.enqueue(1, round * 2 + 1, big);
        big_exchange(&store, &format!("big-{round}"));
        let stats = store.stats.clone();
        let tx = tx.clone();
        store.after_flush(
            0,
            Box::new(move |written| {
                let _ = tx.send((
                    written,
                    stats.syncs.load(Ordering::SeqCst) - syncs_before,
                    stats.file_syncs.load(Ordering::SeqCst) - blobs_before,
                ));
            }),
        );
        let (written, syncs, blobs) = rx.recv_timeout(Duration::from_secs(10)).expect("flush");
        assert!(written, "round {round}: the store wrote");
        assert!(
            syncs >= 2,
            "round {round}: completion ran before the fsyncs of sled and the journal"
        );
        assert!(
            blobs >= 1,
            "round {round}: the new blob file was not synced"
        );
    }
    let blob_files = std::fs::read_dir(dir.path().join("sled/blobs"))
        .expect("sled keeps big values as blob files")
        .count();
    assert!(blob_files >= 20, "{blob_files} blob files");
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never happened: {what}");
}

/// Whether everything sent so far, and nothing failed since `since`, is on disk.
fn written_since(store: &Store, since: u64) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    store.after_flush(
        since,
        Box::new(move |written| {
            let _ = tx.send(written);
        }),
    );
    rx.recv_timeout(Duration::from_secs(10)).expect("flush")
}

#[test]
fn writes_resume_by_themselves_after_a_failure_and_pages_are_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let next_segment = dir.path().join("journal").join("00000001.seg");
    let (before, never, after) = {
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.put_meta(
            QueueRecord::key("/", "q"),
            Some(queue_record(1, "q").encode()),
        );
        let before = msg(&store, "before");
        store.enqueue(1, 0, before.clone());
        assert!(written_since(&store, store.failures()));
        let paged = page(&store, b"paged").expect("page");
        // A directory where the journal's next segment goes makes the batch that needs it fail,
        // as a full disk makes writes fail: the writer stops writing until there is room.
        std::fs::create_dir(&next_segment).expect("blocker");
        let since = store.failures();
        let lost = Arc::new(StoredMessage {
            id: store.next_message_id(),
            body: Bytes::from(vec![7u8; 17 << 20]),
            ..StoredMessage::clone(&msg(&store, "refused"))
        });
        store.enqueue(1, 1, lost.clone());
        assert!(!written_since(&store, since), "a failed write is reported");
        assert!(store.stats.failing.load(Ordering::SeqCst));
        let since = store.failures();
        let never = msg(&store, "never tried");
        store.enqueue(1, 2, never.clone());
        assert!(!written_since(&store, since), "refused while failing");
        std::fs::remove_dir(&next_segment).expect("unblock");
        eventually("writes resumed", || {
            store.stats.resumed.load(Ordering::SeqCst) == 1
        });
        assert!(!store.stats.failing.load(Ordering::SeqCst));
        assert_eq!(
            paged_body(&store, paged).as_deref(),
            Some(&b"paged"[..]),
            "a page written before the failure is still there"
        );
        let since = store.failures();
        let after = msg(&store, "after");
        store.enqueue(1, 3, after.clone());
        // Marks an entry whose write was refused: it must not appear without its body.
        store.delivered(1, 2);
        assert!(written_since(&store, since), "writes are confirmed again");
        assert!(store.stats.syncs.load(Ordering::SeqCst) >= 2);
        (before.id, never.id, after.id)
    };
    let store = reopen(dir.path());
    let rec = store.recover().expect("recover");
    assert_eq!(rec.damaged, 0);
    let ids: Vec<u64> = rec.queues[0]
        .1
        .messages
        .iter()
        .map(|m| m.message_id)
        .collect();
    // The write whose sync failed may be there or not: it was nacked, not lost.
    assert!(
        ids.contains(&before) && ids.contains(&after) && !ids.contains(&never),
        "what was confirmed is back, what was refused is not: {ids:?}"
    );
    assert!(store.load_message(after).is_some());
}

#[test]
fn messages_an_earlier_build_kept_in_sled_move_to_the_journal() {
    let dir = tempfile::tempdir().expect("dir");
    let (kept, acked) = {
        // What a format 1 directory holds: the messages tree with bodies, index entries (message
        // id, delivered flag, stored time) and a hold.
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .expect("sled");
        db.insert(VERSION_KEY, &[SLED_MESSAGES_FORMAT])
            .expect("version");
        let meta = db.open_tree("meta").expect("meta");
        meta.insert(QueueRecord::key("/", "q"), queue_record(1, "q").encode())
            .expect("queue");
        let messages = db.open_tree("messages").expect("messages");
        let body = |id: u64, text: &str| {
            let mut k = vec![b'm'];
            k.extend_from_slice(&id.to_be_bytes());
            let m = StoredMessage {
                id,
                exchange: Bytes::from_static(b""),
                routing_key: Bytes::from_static(b"q"),
                properties: Bytes::new(),
                body: Bytes::from(text.to_string()),
            };
            (k, m.encode())
        };
        let entry = |seq: u64, id: u64, delivered: bool| {
            let mut k = vec![b'i'];
            k.extend_from_slice(&1u64.to_be_bytes());
            k.extend_from_slice(&seq.to_be_bytes());
            let mut v = id.to_be_bytes().to_vec();
            v.push(u8::from(delivered));
            v.extend_from_slice(&5u64.to_be_bytes());
            (k, v)
        };
        for (k, v) in [body(2, "first"), body(3, "second"), body(4, "held")] {
            messages.insert(k, v).expect("body");
        }
        for (k, v) in [entry(0, 2, true), entry(1, 3, false)] {
            messages.insert(k, v).expect("entry");
        }
        let mut hold = vec![b'd'];
        hold.extend_from_slice(&9u64.to_be_bytes());
        messages
            .insert(hold, delay_record(4, 1234).encode())
            .expect("hold");
        db.flush().expect("flush");
        (2u64, 3u64)
    };
    for _ in 0..2 {
        let store = reopen(dir.path());
        let rec = store.recover().expect("recover");
        let messages = &rec.queues[0].1.messages;
        let seen: Vec<(u64, u64, bool)> = messages
            .iter()
            .map(|m| (m.seq, m.message_id, m.delivered))
            .collect();
        assert_eq!(seen, vec![(0, kept, true), (1, acked, false)]);
        assert_eq!(
            store.load_message(kept).map(|m| m.body.clone()).as_deref(),
            Some(&b"first"[..])
        );
        assert_eq!(rec.delayed.len(), 1);
        assert_eq!(&rec.delayed[0].message.body[..], b"held");
        assert!(
            !db(&store)
                .tree_names()
                .iter()
                .any(|n| &n[..] == b"messages"),
            "the sled tree is gone"
        );
        assert!(store.next_message_id() > 9, "ids are not handed out again");
    }
}
