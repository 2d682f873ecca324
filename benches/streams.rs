//! Stream queues (`x-queue-type: stream`) over AMQP 0-9-1, measured from outside the broker with a
//! small pipelined client of its own: lapin tops out near 15k msg/s on these machines and would
//! measure itself rather than the broker. Control methods are encoded and parsed with amq-protocol;
//! the per-message frames (publish, confirm acks, deliveries, consumer acks) are handled by hand.
//!
//! Scenarios (`--scenario`, a comma list runs them in order on the same queue):
//! - `publish`: `--publishers` connections in confirm mode publish persistent `--size`-byte
//!   messages into a fresh stream for `--duration` seconds (or until `--messages` in total), each
//!   with at most `--window` unconfirmed; reports confirmed msg/s and MB/s.
//! - `fill`: the same publishers publish exactly `--messages` (default 2,000,000) into a fresh
//!   stream as fast as confirms allow.
//! - `replay`: `--consumers` connections each read the whole stream from `x-stream-offset=first`
//!   with a per-consumer `basic.qos` of `--prefetch` and `multiple` acks every `--ack-every`
//!   deliveries, until each has `--messages`, or else what the preceding scenario left in the
//!   stream, or else the passive declare's `message_count`; reports per-consumer and aggregate
//!   msg/s and when the last consumer finished.
//!
//! With `--pid` the broker's VmRSS is sampled every 100 ms and its peak reported, with its VmHWM
//! and CPU time; the client's own CPU time is reported too, so a client-bound run shows itself.
//! A summary goes to stderr and one JSON line per scenario to stdout.
//!
//! Side by side (only one broker running at a time, so each gets the machine's CPUs and disk):
//!
//! ```text
//! # The broker's pid is whoever listens on its AMQP port.
//! pid_on() { ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
//! # Warren (AMQP on 5672), with the reference RabbitMQ stopped:
//! ../shared/tools/reference-broker.sh stop
//! cargo run --release -- serve &
//! cargo bench --bench streams -- --pid $(pid_on 5672) --scenario fill,replay
//! cargo bench --bench streams -- --pid $(pid_on 5672) --scenario replay --consumers 10
//! cargo bench --bench streams -- --pid $(pid_on 5672) --scenario publish --delete
//! # then stop Warren, and the same against RabbitMQ 3.10 (AMQP on 5682):
//! ../shared/tools/reference-broker.sh start
//! RMQ=amqp://guest:guest@127.0.0.1:5682/%2f
//! cargo bench --bench streams -- --uri $RMQ --pid $(pid_on 5682) --scenario fill,replay
//! cargo bench --bench streams -- --uri $RMQ --pid $(pid_on 5682) --scenario replay --consumers 10
//! cargo bench --bench streams -- --uri $RMQ --pid $(pid_on 5682) --scenario publish --delete
//! ```
//!
//! RabbitMQ's declare-ok `message_count` for a stream trails the stream by seconds (46,692 of
//! 100,000 straight after a fill), so a replay that is not run with the fill it follows should be
//! told `--messages`. Against a sink that confirms and delivers without storing anything, this
//! client publishes about 1.5M and replays about 1.4M 1 KiB msg/s on two shared cores.
//!
//! Not a test: the numbers depend on the machine, and the client shares its CPUs with the broker.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame, parsing::parse_content_header};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, parse_class, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use amq_protocol::uri::AMQPUri;
use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
const BASIC_DELIVER: (u16, u16) = (60, 60);
const BASIC_ACK: (u16, u16) = (60, 80);
const BASIC_NACK: (u16, u16) = (60, 120);
const CONNECTION_CLOSE: (u16, u16) = (10, 50);
const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
const CHANNEL_CLOSE: (u16, u16) = (20, 40);
/// Publishes written per `write` call; small enough that a window of confirms keeps several in
/// flight, large enough that syscalls do not dominate.
const PUBLISH_BATCH: u64 = 64;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Confirmed publishing into a fresh stream for --duration seconds (or --messages).
    Publish,
    /// Exactly --messages (default 2,000,000) confirmed publishes into a fresh stream.
    Fill,
    /// Every consumer reads the stream from the first offset until it has its messages.
    Replay,
}

/// Command line (after `cargo bench --bench streams --`).
#[derive(Parser, Debug)]
#[command(
    about = "Stream-queue throughput over AMQP 0-9-1 (Warren vs RabbitMQ), with a pipelined client",
    long_about = None,
    after_help = "Examples:\n  cargo bench --bench streams -- --scenario fill,replay --messages 100000 --pid 1234\n  \
        cargo bench --bench streams -- --uri amqp://guest:guest@127.0.0.1:5682/%2f --scenario replay --consumers 10\n\n\
        Each scenario prints a summary on stderr and one JSON line on stdout."
)]
struct Args {
    /// The broker, amqp://user:password@host:port/vhost.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// The stream queue; publish and fill delete and re-declare it, replay reads it as it is.
    #[arg(long, default_value = "warren-bench-stream")]
    queue: String,
    /// Scenarios to run in order, comma-separated: publish, fill, replay.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "publish")]
    scenario: Vec<Scenario>,
    /// Publishing connections (one channel each, confirm mode) for publish and fill.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Consuming connections (one channel each) for replay.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// publish: stop after this many in total; fill: publish exactly this many (default
    /// 2,000,000); replay: messages each consumer reads (default: what the preceding publish or
    /// fill confirmed, else the passive declare's message_count, which RabbitMQ updates late).
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds of publishing in the publish scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unconfirmed publishes allowed per publisher.
    #[arg(long, default_value_t = 2000)]
    window: u32,
    /// basic.qos prefetch_count per consumer (global=false; streams refuse a global one).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Deliveries between consumer acks (with multiple=true); default prefetch/2.
    #[arg(long)]
    ack_every: Option<u64>,
    /// The broker's process id: sample its VmRSS every 100 ms and report the peak, VmHWM and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds a consumer waits for its next delivery before giving up.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// Delete the queue after the last scenario.
    #[arg(long)]
    delete: bool,
}

/// Where and as whom to connect, from the URI.
#[derive(Clone)]
struct Target {
    addr: String,
    user: String,
    password: String,
    vhost: String,
}

impl Target {
    /// Parses an amqp:// URI.
    fn parse(uri: &str) -> Result<Self> {
        let u = AMQPUri::from_str(uri).map_err(|e| format!("bad --uri {uri}: {e}"))?;
        Ok(Self {
            addr: format!("{}:{}", u.authority.host, u.authority.port),
            user: u.authority.userinfo.username,
            password: u.authority.userinfo.password,
            vhost: u.vhost,
        })
    }
}

/// The URI with its password hidden, for reports.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => match uri[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &uri[..s + 3 + c], &uri[at..]),
            None => uri.to_string(),
        },
        _ => uri.to_string(),
    }
}

/// One frame off the wire; `payload` excludes the 7-byte header and the frame-end octet.
struct Frame {
    kind: u8,
    payload: BytesMut,
}

impl Frame {
    /// The (class, method) of a method frame.
    fn method_id(&self) -> (u16, u16) {
        let p = &self.payload;
        if self.kind != FRAME_METHOD || p.len() < 4 {
            return (0, 0);
        }
        (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        )
    }

    /// The big-endian u64 at `at`, zero if the frame is too short.
    fn u64_at(&self, at: usize) -> u64 {
        self.payload
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// A method frame parsed by amq-protocol.
    fn class(&self) -> Result<AMQPClass> {
        parse_class(&self.payload[..])
            .map(|(_, c)| c)
            .map_err(|e| format!("unparsable method frame: {e}").into())
    }

    /// Why the broker closed the connection or channel, if this frame says so.
    fn close_reason(&self) -> Option<String> {
        if !matches!(self.method_id(), CONNECTION_CLOSE | CHANNEL_CLOSE) {
            return None;
        }
        Some(match self.class() {
            Ok(AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                format!("connection closed: {} {}", c.reply_code, c.reply_text)
            }
            Ok(AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                format!("channel closed: {} {}", c.reply_code, c.reply_text)
            }
            _ => "closed by the broker".to_string(),
        })
    }
}

/// Buffered frame reader over the socket's read half.
struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    idle: Duration,
}

impl FrameReader {
    /// The next frame, reading as much as the socket has so that many frames cost one syscall.
    async fn next(&mut self) -> Result<Frame> {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if self.buf.len() >= size + 8 {
                    let mut f = self.buf.split_to(size + 8);
                    if f[size + 7] != FRAME_END {
                        return Err("frame without frame-end octet".into());
                    }
                    let kind = f[0];
                    f.advance(7);
                    f.truncate(size);
                    return Ok(Frame { kind, payload: f });
                }
                self.buf.reserve(size + 8 - self.buf.len());
            }
            self.buf.reserve(256 * 1024);
            let n = tokio::time::timeout(self.idle, self.rd.read_buf(&mut self.buf))
                .await
                .map_err(|_| format!("nothing from the broker for {:?}", self.idle))??;
            if n == 0 {
                return Err("connection closed by the broker".into());
            }
        }
    }

    /// The next method frame parsed, skipping heartbeats; a close from the broker is an error.
    async fn method(&mut self) -> Result<AMQPClass> {
        loop {
            let f = self.next().await?;
            if let Some(reason) = f.close_reason() {
                return Err(reason.into());
            }
            if f.kind == FRAME_METHOD {
                return f.class();
            }
        }
    }
}

/// Appends `frame`, encoded by amq-protocol, to `out`.
fn encode(out: &mut Vec<u8>, frame: &AMQPFrame) -> Result<()> {
    let (v, _) = cookie_factory::r#gen(gen_frame(frame), std::mem::take(out))
        .map_err(|e| format!("encoding {frame:?}: {e:?}"))?;
    *out = v;
    Ok(())
}

/// An open connection with channel 1 open on it.
struct Conn {
    reader: FrameReader,
    wr: OwnedWriteHalf,
    frame_max: u32,
}

impl Conn {
    /// Connects, logs in with PLAIN, and opens channel 1; heartbeats are off so that a busy
    /// client never has to interleave them.
    async fn open(t: &Target, name: &str, idle: Duration) -> Result<Self> {
        let sock = TcpStream::connect(&t.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", t.addr))?;
        sock.set_nodelay(true)?;
        let (rd, wr) = sock.into_split();
        let mut c = Self {
            reader: FrameReader {
                rd,
                buf: BytesMut::with_capacity(256 * 1024),
                idle,
            },
            wr,
            frame_max: 131_072,
        };
        c.wr.write_all(b"AMQP\x00\x00\x09\x01").await?;
        match c.reader.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            m => return Err(format!("expected connection.start, got {m:?}").into()),
        }
        let mut props = FieldTable::default();
        props.insert(
            "connection_name".into(),
            AMQPValue::LongString(LongString::from(name)),
        );
        props.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("warren streams bench")),
        );
        let response = format!("\0{}\0{}", t.user, t.password);
        c.send(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: response.as_str().into(),
                locale: "en_US".into(),
            },
        )))
        .await?;
        let tune = match c.reader.method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            m => return Err(format!("expected connection.tune, got {m:?}").into()),
        };
        if tune.frame_max != 0 {
            c.frame_max = c.frame_max.min(tune.frame_max);
        }
        c.send(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max: 1,
                frame_max: c.frame_max,
                heartbeat: 0,
            },
        )))
        .await?;
        c.call(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: t.vhost.as_str().into(),
            },
        )))
        .await?;
        c.call(AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))
        .await?;
        Ok(c)
    }

    /// Sends one method frame.
    async fn send(&mut self, class: AMQPClass) -> Result<()> {
        let channel = match class {
            AMQPClass::Connection(_) => 0,
            _ => 1,
        };
        let mut out = Vec::with_capacity(128);
        encode(&mut out, &AMQPFrame::Method(channel, class))?;
        self.wr.write_all(&out).await?;
        Ok(())
    }

    /// Sends a synchronous method and returns the broker's reply.
    async fn call(&mut self, class: AMQPClass) -> Result<AMQPClass> {
        self.send(class).await?;
        self.reader.method().await
    }

    /// Closes the connection, discarding whatever frames (late deliveries) arrive before close-ok.
    async fn close(mut self) -> Result<()> {
        self.send(AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )))
        .await?;
        loop {
            let f = self.reader.next().await?;
            if matches!(f.method_id(), CONNECTION_CLOSE_OK | CONNECTION_CLOSE) {
                return Ok(());
            }
        }
    }
}

/// Deletes the queue if it exists.
async fn delete_queue(t: &Target, q: &str) -> Result<()> {
    let mut c = Conn::open(t, "streams-bench control", Duration::from_secs(30)).await?;
    c.call(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: q.into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    })))
    .await?;
    c.close().await
}

/// Declares the stream queue (after deleting it when `fresh`), or only checks it with a passive
/// declare; returns the declare-ok's message_count.
async fn declare_stream(t: &Target, q: &str, fresh: bool, passive: bool) -> Result<u32> {
    if fresh {
        delete_queue(t, q).await?;
    }
    let mut c = Conn::open(t, "streams-bench control", Duration::from_secs(30)).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    let ok = c
        .call(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: q.into(),
                passive,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: if passive {
                    FieldTable::default()
                } else {
                    arguments
                },
            },
        )))
        .await
        .map_err(|e| format!("declaring {q}: {e}"))?;
    c.close().await?;
    match ok {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
        m => Err(format!("expected queue.declare-ok, got {m:?}").into()),
    }
}

/// How much the publishers may still publish: a shared count and an optional deadline.
struct Budget {
    left: AtomicU64,
    deadline: Option<Instant>,
}

impl Budget {
    /// Claims up to `want` publishes; 0 means stop.
    fn claim(&self, want: u64) -> u64 {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        let mut got = 0;
        let _ = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                got = left.min(want);
                Some(left - got)
            });
        got
    }
}

/// Publish sequence numbers the broker has confirmed (acked or nacked), single or multiple.
#[derive(Default)]
struct Settled {
    upto: u64,
    singles: BTreeSet<u64>,
}

impl Settled {
    /// Records a confirm of `tag` and returns how many publishes it newly settles.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.upto {
            return 0;
        }
        let newly = if multiple {
            let above = self.singles.split_off(&(tag + 1));
            let already = self.singles.len() as u64;
            self.singles = above;
            let n = tag - self.upto - already;
            self.upto = tag;
            n
        } else {
            u64::from(self.singles.insert(tag))
        };
        while self.singles.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
        newly
    }
}

/// What one publisher got confirmed, and when its last confirm arrived.
struct Published {
    acked: u64,
    nacked: u64,
    done: Instant,
}

/// The frames of one persistent publish to the default exchange, written once and copied per
/// message since every message is the same.
fn publish_template(queue: &str, size: usize, frame_max: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(
        &mut out,
        &AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: queue.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
    )?;
    encode(
        &mut out,
        &AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: size as u64,
                properties: basic::AMQPProperties::default().with_delivery_mode(2),
            },
        ),
    )?;
    let body = vec![b'w'; size];
    for part in body.chunks((frame_max as usize - 8).max(1)) {
        encode(&mut out, &AMQPFrame::Body(1, part.to_vec()))?;
    }
    Ok(out)
}

/// Reads confirms for one publisher, returning permits to its window as they settle.
async fn confirm_reader(
    mut reader: FrameReader,
    window: Arc<Semaphore>,
    confirmed: Arc<AtomicU64>,
) -> Result<(u64, u64)> {
    let mut settled = Settled::default();
    let (mut acked, mut nacked) = (0, 0);
    loop {
        let f = reader.next().await?;
        let id = f.method_id();
        match id {
            BASIC_ACK | BASIC_NACK => {
                let multiple = f.payload.get(12).is_some_and(|b| b & 1 == 1);
                let n = settled.settle(f.u64_at(4), multiple);
                if id == BASIC_ACK {
                    acked += n;
                    confirmed.fetch_add(n, Ordering::Relaxed);
                } else {
                    nacked += n;
                }
                window.add_permits(n as usize);
            }
            CONNECTION_CLOSE_OK => return Ok((acked, nacked)),
            CONNECTION_BLOCKED => eprintln!("  publisher blocked by the broker (resource alarm)"),
            _ => {
                if let Some(reason) = f.close_reason() {
                    return Err(reason.into());
                }
            }
        }
    }
}

/// One publisher: publishes what the budget allows with at most `window` unconfirmed, then waits
/// for the last confirm.
async fn publisher(
    mut conn: Conn,
    template: Arc<Vec<u8>>,
    budget: Arc<Budget>,
    window: u32,
    confirmed: Arc<AtomicU64>,
) -> Result<Published> {
    let permits = Arc::new(Semaphore::new(window as usize));
    let reader = tokio::spawn({
        let permits = permits.clone();
        let reader = conn.reader;
        async move {
            let r = confirm_reader(reader, permits.clone(), confirmed).await;
            // A dead reader must not leave the writer waiting for permits forever.
            permits.close();
            r
        }
    });
    let mut out = Vec::with_capacity(template.len() * PUBLISH_BATCH as usize);
    loop {
        let n = budget.claim(PUBLISH_BATCH.min(u64::from(window)));
        if n == 0 {
            break;
        }
        let Ok(p) = permits.acquire_many(n as u32).await else {
            break;
        };
        p.forget();
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(&template);
        }
        conn.wr.write_all(&out).await?;
    }
    // Every permit back means every publish is settled.
    let all_settled = permits.acquire_many(window).await.is_ok();
    let done = Instant::now();
    out.clear();
    encode(
        &mut out,
        &AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
    )?;
    if all_settled {
        conn.wr.write_all(&out).await?;
    }
    let (acked, nacked) = reader.await??;
    Ok(Published {
        acked,
        nacked,
        done,
    })
}

/// What one consumer read.
struct Consumed {
    received: u64,
    done: Instant,
    first_offset: Option<String>,
    last_offset: Option<String>,
    error: Option<String>,
}

/// The `x-stream-offset` header of a delivery's content header, as amq-protocol parses it.
fn stream_offset(header: &[u8]) -> Option<String> {
    let (_, h) = parse_content_header(header).ok()?;
    let headers = h.properties.headers().as_ref()?;
    let v = headers.inner().get("x-stream-offset")?;
    Some(format!("{v:?}"))
}

/// One consumer: consumes from the first offset and acks every `ack_every` deliveries until it
/// has `target` messages.
async fn consumer(
    mut conn: Conn,
    queue: String,
    target: u64,
    ack_every: u64,
    received: Arc<AtomicU64>,
) -> Consumed {
    let mut c = Consumed {
        received: 0,
        done: Instant::now(),
        first_offset: None,
        last_offset: None,
        error: None,
    };
    if let Err(e) = consume(&mut conn, &queue, target, ack_every, &received, &mut c).await {
        c.error = Some(e.to_string());
    }
    c.done = Instant::now();
    let _ = conn.close().await;
    c
}

/// The consume loop of `consumer`.
async fn consume(
    conn: &mut Conn,
    queue: &str,
    target: u64,
    ack_every: u64,
    received: &AtomicU64,
    c: &mut Consumed,
) -> Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from("first")),
    );
    conn.call(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: queue.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments,
        },
    )))
    .await?;
    let (mut tag, mut left, mut unacked) = (0u64, 0u64, 0u64);
    let mut ack = Vec::with_capacity(32);
    while c.received < target {
        let f = conn.reader.next().await?;
        let complete = match f.kind {
            FRAME_METHOD if f.method_id() == BASIC_DELIVER => {
                let tag_len = usize::from(f.payload.get(4).copied().unwrap_or(0));
                tag = f.u64_at(5 + tag_len);
                false
            }
            FRAME_HEADER => {
                left = f.u64_at(4);
                // Parsing every header would cost more than the rest of the loop: only the
                // first and last show where the replay started and ended.
                if c.received == 0 {
                    c.first_offset = stream_offset(&f.payload);
                } else if c.received + 1 == target {
                    c.last_offset = stream_offset(&f.payload);
                }
                left == 0
            }
            FRAME_BODY => {
                left = left.saturating_sub(f.payload.len() as u64);
                left == 0
            }
            _ => match f.close_reason() {
                Some(reason) => return Err(reason.into()),
                None => false,
            },
        };
        if complete {
            c.received += 1;
            unacked += 1;
            received.fetch_add(1, Ordering::Relaxed);
            if unacked >= ack_every || c.received == target {
                ack.clear();
                encode(
                    &mut ack,
                    &AMQPFrame::Method(
                        1,
                        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                            delivery_tag: tag,
                            multiple: true,
                        })),
                    ),
                )?;
                conn.wr.write_all(&ack).await?;
                unacked = 0;
            }
        }
    }
    Ok(())
}

/// Samples a process's memory and CPU while a scenario runs.
struct Probe {
    pid: Option<u32>,
    stop: Arc<AtomicBool>,
    sampler: Option<tokio::task::JoinHandle<Option<u64>>>,
    broker_ticks: Option<u64>,
    client_ticks: Option<u64>,
}

/// A `/proc/PID/status` field in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU of a process, in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let fields: Vec<&str> = s[s.rfind(')')? + 2..].split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks to seconds; Linux fixes USER_HZ at 100 for /proc on every mainstream architecture.
fn ticks_s(t: u64) -> f64 {
    t as f64 / 100.0
}

impl Probe {
    /// Starts sampling (the broker only with a pid).
    fn start(pid: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = pid.map(|pid| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut peak = None;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    peak = peak.max(status_kb(pid, "VmRSS:"));
                }
                peak
            })
        });
        Self {
            pid,
            stop,
            sampler,
            broker_ticks: pid.and_then(|p| cpu_ticks(&p.to_string())),
            client_ticks: cpu_ticks("self"),
        }
    }

    /// Stops sampling and reports the broker's peak RSS, VmHWM and CPU, and the client's CPU.
    async fn finish(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        let peak_kb = match self.sampler {
            Some(h) => h.await.ok().flatten(),
            None => None,
        };
        let mb = |kb: u64| (kb as f64 / 1024.0 * 10.0).round() / 10.0;
        let since = |before: Option<u64>, pid: &str| Some(ticks_s(cpu_ticks(pid)? - before?));
        let broker_pid = self.pid.map(|p| p.to_string()).unwrap_or_default();
        json!({
            "broker_pid": self.pid,
            "broker_peak_rss_mb": peak_kb.map(mb),
            "broker_vm_hwm_mb": self.pid.and_then(|p| status_kb(p, "VmHWM:")).map(mb),
            "broker_cpu_s": since(self.broker_ticks, &broker_pid),
            "client_cpu_s": since(self.client_ticks, "self"),
        })
    }
}

/// Prints a running count on stderr every second until stopped.
fn progress(label: &'static str, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = count.load(Ordering::Relaxed);
            eprintln!(
                "  {:>5.1}s {label}: {now} ({} msg/s)",
                start.elapsed().as_secs_f64(),
                now - last
            );
            last = now;
        }
    });
}

/// Rounds for the JSON report.
fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Runs publish or fill into a fresh stream; returns the report and the messages confirmed.
async fn run_publish(a: &Args, t: &Target, scenario: Scenario) -> Result<(Value, u64)> {
    declare_stream(t, &a.queue, true, false).await?;
    let (limit, deadline) = match scenario {
        Scenario::Fill => (a.messages.unwrap_or(2_000_000), None),
        _ => (
            a.messages.unwrap_or(u64::MAX),
            Some(Duration::from_secs_f64(a.duration)),
        ),
    };
    let idle = Duration::from_secs(a.idle_timeout);
    let mut conns = Vec::with_capacity(a.publishers);
    for i in 0..a.publishers {
        let mut c = Conn::open(t, &format!("streams-bench publisher {i}"), idle).await?;
        c.call(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))
        .await?;
        conns.push(c);
    }
    let template = Arc::new(publish_template(&a.queue, a.size, conns[0].frame_max)?);
    let confirmed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = Probe::start(a.pid);
    let start = Instant::now();
    let budget = Arc::new(Budget {
        left: AtomicU64::new(limit),
        deadline: deadline.map(|d| start + d),
    });
    progress("confirmed", confirmed.clone(), stop.clone());
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| {
            tokio::spawn(publisher(
                c,
                template.clone(),
                budget.clone(),
                a.window,
                confirmed.clone(),
            ))
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await??);
    }
    stop.store(true, Ordering::Relaxed);
    let resources = probe.finish().await;
    let acked: u64 = results.iter().map(|p| p.acked).sum();
    let nacked: u64 = results.iter().map(|p| p.nacked).sum();
    let elapsed = results
        .iter()
        .map(|p| p.done - start)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let rate = acked as f64 / elapsed;
    let mbps = rate * a.size as f64 / 1e6;
    eprintln!(
        "{scenario:?}: {acked} confirmed ({nacked} nacked) by {} publishers in {elapsed:.2}s: {rate:.0} msg/s, {mbps:.1} MB/s; {resources}",
        a.publishers
    );
    let report = json!({
        "bench": "streams",
        "uri": redact(&a.uri),
        "scenario": format!("{scenario:?}").to_lowercase(),
        "queue": a.queue,
        "publishers": a.publishers,
        "size": a.size,
        "window": a.window,
        "messages": (limit != u64::MAX).then_some(limit),
        "duration_s": deadline.map(|d| d.as_secs_f64()),
        "confirmed": acked,
        "nacked": nacked,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "msg_per_s": rate.round(),
        "mb_per_s": r1(mbps),
        "resources": resources,
    });
    Ok((report, acked))
}

/// Runs replay: every consumer reads `known` messages (or the flag's, or the declare's count).
async fn run_replay(a: &Args, t: &Target, known: Option<u64>) -> Result<Value> {
    let declared = declare_stream(t, &a.queue, false, true).await?;
    let target = a.messages.or(known).unwrap_or(u64::from(declared));
    if target == 0 {
        return Err(format!(
            "{} looks empty; say how many to read with --messages",
            a.queue
        )
        .into());
    }
    let ack_every = a
        .ack_every
        .unwrap_or(u64::from(a.prefetch / 2))
        .clamp(1, u64::from(a.prefetch.max(1)));
    let idle = Duration::from_secs(a.idle_timeout);
    let mut conns = Vec::with_capacity(a.consumers);
    for i in 0..a.consumers {
        let mut c = Conn::open(t, &format!("streams-bench consumer {i}"), idle).await?;
        c.call(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: a.prefetch,
            global: false,
        })))
        .await?;
        conns.push(c);
    }
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = Probe::start(a.pid);
    let start = Instant::now();
    progress("delivered", received.clone(), stop.clone());
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| {
            tokio::spawn(consumer(
                c,
                a.queue.clone(),
                target,
                ack_every,
                received.clone(),
            ))
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await?);
    }
    stop.store(true, Ordering::Relaxed);
    let resources = probe.finish().await;
    let last = results
        .iter()
        .map(|c| c.done - start)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let total: u64 = results.iter().map(|c| c.received).sum();
    let aggregate = total as f64 / last;
    let per: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = (c.done - start).as_secs_f64();
            eprintln!(
                "  consumer {i}: {} in {s:.2}s = {:.0} msg/s, offsets {} .. {}{}",
                c.received,
                c.received as f64 / s,
                c.first_offset.as_deref().unwrap_or("?"),
                c.last_offset.as_deref().unwrap_or("?"),
                c.error
                    .as_deref()
                    .map(|e| format!(", stopped: {e}"))
                    .unwrap_or_default()
            );
            json!({
                "received": c.received,
                "elapsed_s": (s * 1000.0).round() / 1000.0,
                "msg_per_s": (c.received as f64 / s).round(),
                "first_offset": c.first_offset,
                "last_offset": c.last_offset,
                "error": c.error,
            })
        })
        .collect();
    eprintln!(
        "Replay: {} consumers x {target} (declare-ok message_count {declared}): {total} delivered, last finished at {last:.2}s, {aggregate:.0} msg/s aggregate, {:.1} MB/s; {resources}",
        a.consumers,
        aggregate * a.size as f64 / 1e6
    );
    let complete = results.iter().all(|c| c.error.is_none());
    let report = json!({
        "bench": "streams",
        "uri": redact(&a.uri),
        "scenario": "replay",
        "queue": a.queue,
        "consumers": a.consumers,
        "prefetch": a.prefetch,
        "ack_every": ack_every,
        "size": a.size,
        "messages_per_consumer": target,
        "declared_message_count": declared,
        "complete": complete,
        "delivered": total,
        "last_finished_s": (last * 1000.0).round() / 1000.0,
        "aggregate_msg_per_s": aggregate.round(),
        "aggregate_mb_per_s": r1(aggregate * a.size as f64 / 1e6),
        "per_consumer": per,
        "resources": resources,
    });
    Ok(report)
}

/// Runs the scenarios in order, printing one JSON line each; the first failure ends the run.
async fn run(a: &Args) -> Result<()> {
    let t = Target::parse(&a.uri)?;
    let mut length = None;
    for &s in &a.scenario {
        let report = match s {
            Scenario::Publish | Scenario::Fill => {
                let (report, confirmed) = run_publish(a, &t, s).await?;
                length = Some(confirmed);
                report
            }
            Scenario::Replay => run_replay(a, &t, length).await?,
        };
        println!("{report}");
    }
    if a.delete {
        delete_queue(&t, &a.queue).await?;
    }
    Ok(())
}

/// Runs the scenarios the command line names; an error ends it with status 1 and a JSON error line.
#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench to every bench binary; it is not ours.
    let a = Args::parse_from(std::env::args().filter(|arg| arg != "--bench"));
    if let Err(e) = run(&a).await {
        eprintln!("error: {e}");
        println!(
            "{}",
            json!({ "bench": "streams", "uri": redact(&a.uri), "error": e.to_string() })
        );
        std::process::exit(1);
    }
}
