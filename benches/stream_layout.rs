//! Stream storage layouts side by side, in one process on one disk: Warren's stream segment files
//! (the store's writer appending one chunk per group commit with an `fdatasync`, readers reading
//! whole chunks) against a sled tree per stream keyed by big-endian offset (one `apply_batch`
//! and one `flush` per group commit, a range scan to replay). For each: the append rate in
//! batches of `--batch` messages, the replay rate from the first offset, the growth of this
//! process's RSS through each phase, and the bytes on disk.
//!
//! ```text
//! cargo bench --bench stream_layout -- --messages 500000 --size 1024 --batch 1000
//! ```
//!
//! Not a test: the numbers depend on the machine and its disk. sled's `flush` is not an fsync
//! (it ends in `sync_file_range`), so sled's figures are an upper bound for it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use serde_json::json;
use warren::store::stream::{Retention, Start, StreamLog};
use warren::store::{Store, StoredMessage, put_field};

/// Options.
#[derive(Parser, Debug)]
#[command(about = "Stream segment files against a sled tree per stream: append, replay, memory")]
struct Args {
    /// Messages to append, then replay.
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per group commit.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Directory for the files (a temporary one under it is removed afterwards).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// cargo bench passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// This process's resident set, in MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A stream record as Warren's streams keep it, without the offset header.
fn record(out: &mut Vec<u8>, m: &StoredMessage, _offset: u64) {
    for part in [&m.exchange, &m.routing_key, &m.properties, &m.body] {
        put_field(out, part);
    }
}

fn message(i: u64, size: usize) -> Arc<StoredMessage> {
    let mut body = vec![b'x'; size];
    body[..8].copy_from_slice(&i.to_be_bytes());
    Arc::new(StoredMessage {
        id: i + 1,
        exchange: Bytes::new(),
        routing_key: Bytes::from_static(b"stream"),
        properties: Bytes::from_static(&[0x10, 0, 2]),
        body: Bytes::from(body),
    })
}

/// One layout's figures.
struct Figures {
    append_rate: f64,
    replay_rate: f64,
    rss_append_mb: f64,
    rss_replay_mb: f64,
    disk_mb: f64,
}

impl Figures {
    /// The figures of the appends and the replay (each a rate and the RSS growth by its end),
    /// and the bytes now under `dir`.
    fn new(append: (f64, f64), replay: (f64, f64), dir: &std::path::Path) -> Self {
        Self {
            append_rate: append.0,
            rss_append_mb: append.1,
            replay_rate: replay.0,
            rss_replay_mb: replay.1,
            disk_mb: disk_bytes(dir) as f64 / 1e6,
        }
    }
}

fn segments(a: &Args, dir: &std::path::Path) -> Figures {
    let store = Store::open(dir, 8 << 20).expect("store");
    let log = store
        .open_stream(1, Retention::default(), record)
        .expect("stream");
    let base = rss_mb();
    let started = Instant::now();
    let mut i = 0;
    while i < a.messages {
        let n = a.batch.min(a.messages - i);
        for k in i..i + n {
            store.stream_append(&log, message(k, a.size));
        }
        i += n;
        let (tx, rx) = std::sync::mpsc::channel();
        store.after_flush(
            store.failures(),
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        assert_eq!(rx.recv(), Ok(true), "the store wrote the batch");
    }
    let append_rate = a.messages as f64 / started.elapsed().as_secs_f64();
    let rss_append_mb = rss_mb() - base;
    let replay_rate = replay_segments(&log, a.messages);
    let rss_replay_mb = rss_mb() - base;
    store.close();
    Figures::new(
        (append_rate, rss_append_mb),
        (replay_rate, rss_replay_mb),
        dir,
    )
}

/// Reads the whole stream from its first offset, as a consumer's reader does.
fn replay_segments(log: &Arc<StreamLog>, messages: u64) -> f64 {
    let started = Instant::now();
    let mut reader = log.reader(Start::First);
    let mut seen = 0u64;
    loop {
        let got = reader
            .read(BytesMut::with_capacity(120 << 10), false)
            .expect("read");
        if got.is_empty() {
            break;
        }
        for (offset, m) in got {
            assert_eq!(offset, seen, "offsets in order");
            assert_eq!(m.body[..8], seen.to_be_bytes(), "the message at its offset");
            seen += 1;
        }
    }
    assert_eq!(seen, messages, "every message replayed");
    messages as f64 / started.elapsed().as_secs_f64()
}

fn sled_tree(a: &Args, dir: &std::path::Path) -> Figures {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(8 << 20)
        .open()
        .expect("sled");
    let tree = db.open_tree("stream").expect("tree");
    let base = rss_mb();
    let started = Instant::now();
    let mut i = 0;
    let mut buf = Vec::new();
    while i < a.messages {
        let n = a.batch.min(a.messages - i);
        let mut batch = sled::Batch::default();
        for k in i..i + n {
            buf.clear();
            record(&mut buf, &message(k, a.size), k);
            batch.insert(&k.to_be_bytes(), buf.as_slice());
        }
        tree.apply_batch(batch).expect("batch");
        db.flush().expect("flush");
        i += n;
    }
    let append_rate = a.messages as f64 / started.elapsed().as_secs_f64();
    let rss_append_mb = rss_mb() - base;
    let started = Instant::now();
    let mut seen = 0u64;
    for kv in tree.range(0u64.to_be_bytes()..) {
        let (k, v) = kv.expect("entry");
        assert_eq!(k.as_ref(), seen.to_be_bytes(), "keys in order");
        let m = StoredMessage::decode(seen, Bytes::copy_from_slice(&v)).expect("decodes");
        assert_eq!(m.body[..8], seen.to_be_bytes(), "the message at its key");
        seen += 1;
    }
    assert_eq!(seen, a.messages, "every message replayed");
    let replay_rate = a.messages as f64 / started.elapsed().as_secs_f64();
    let rss_replay_mb = rss_mb() - base;
    drop(tree);
    drop(db);
    Figures::new(
        (append_rate, rss_append_mb),
        (replay_rate, rss_replay_mb),
        dir,
    )
}

fn main() {
    let a = Args::parse();
    let root = tempfile::tempdir_in(&a.dir).expect("temp dir");
    for (name, run) in [
        (
            "segment files",
            segments as fn(&Args, &std::path::Path) -> Figures,
        ),
        ("sled tree", sled_tree),
    ] {
        let dir = root.path().join(name.replace(' ', "-"));
        let f = run(&a, &dir);
        eprintln!(
            "{name}: append {:.0} msg/s, replay {:.0} msg/s, RSS +{:.1} MB after the appends, \
             +{:.1} MB after the replay, {:.0} MB on disk",
            f.append_rate, f.replay_rate, f.rss_append_mb, f.rss_replay_mb, f.disk_mb
        );
        println!(
            "{}",
            json!({
                "layout": name,
                "messages": a.messages,
                "size": a.size,
                "batch": a.batch,
                "append_msg_s": f.append_rate.round(),
                "replay_msg_s": f.replay_rate.round(),
                "rss_growth_append_mb": (f.rss_append_mb * 10.0).round() / 10.0,
                "rss_growth_replay_mb": (f.rss_replay_mb * 10.0).round() / 10.0,
                "disk_mb": f.disk_mb.round(),
            })
        );
    }
}
