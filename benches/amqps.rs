//! AMQP over TLS, measured from outside the broker with lapin over rustls: message throughput
//! (publishers and consumers on one queue, optionally with publisher confirms) and the rate of
//! connection opens (TCP, the TLS handshake, the AMQP handshake up to `connection.open-ok`, then
//! `connection.close`), one at a time and several at once. The same URI with `amqp://` measures
//! the plain listener, so TLS's cost shows as a ratio on one tool. Runs against any broker
//! (Warren, or RabbitMQ with `benches/rabbitmq-tls.sh`); prints one JSON line.
//!
//! ```text
//! cargo bench --bench amqps -- --uri amqps://guest:guest@127.0.0.1:5671/%2f --ca ca.pem \
//!     --scenario throughput --size 1024 --producers 1 --consumers 1 --confirm --duration 10
//! cargo bench --bench amqps -- --uri amqps://... --ca ca.pem --scenario handshakes --duration 10
//! ```
//!
//! Not a test: the numbers depend on the machine, and the client shares its CPUs with the broker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Messages published and consumed per second through one queue.
    Throughput,
    /// Connection opens per second and how long one takes.
    Handshakes,
}

/// Command line (after `cargo bench --bench amqps --`).
#[derive(Parser, Debug)]
#[command(about = "AMQP(S) throughput and connection-open rate against a running broker")]
struct Args {
    /// The broker: amqps://user:password@host:port/vhost, or amqp:// for the plain listener.
    #[arg(long, default_value = "amqps://guest:guest@127.0.0.1:5671/%2f")]
    uri: String,
    /// The CA (PEM) that signed the broker's certificate; the system's roots without it.
    #[arg(long)]
    ca: Option<String>,
    /// A client certificate (PEM) to show the broker, with --key.
    #[arg(long, requires = "key")]
    cert: Option<String>,
    /// The client certificate's private key (PEM, PKCS#8).
    #[arg(long, requires = "cert")]
    key: Option<String>,
    #[arg(long, value_enum, default_value = "throughput")]
    scenario: Scenario,
    /// Seconds measured (after one second of warm-up for throughput).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Publishing connections (one channel each).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consuming connections (one channel each, manual acks).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Publisher confirms, at most --max-unconfirmed outstanding per publisher.
    #[arg(long)]
    confirm: bool,
    #[arg(long, default_value_t = 1000)]
    max_unconfirmed: usize,
    /// basic.qos prefetch per consumer; acks go with `multiple` every --ack-every deliveries.
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    #[arg(long, default_value_t = 100)]
    ack_every: u64,
    /// Clients opening connections at once in the parallel half of `handshakes`.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The TLS settings lapin uses for amqps:// URIs (it ignores them for amqp://).
fn tls_config(a: &Args) -> Result<OwnedTLSConfig> {
    let cert_chain = a.ca.as_ref().map(std::fs::read_to_string).transpose()?;
    let identity = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: std::fs::read(cert)?,
            key: std::fs::read(key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

async fn connect(a: &Args, tls: &OwnedTLSConfig) -> Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let conn = Connection::connect_with_config(
        &a.uri,
        ConnectionProperties::default(),
        tls.clone(),
        runtime,
    );
    Ok(tokio::time::timeout(Duration::from_secs(30), conn).await??)
}

async fn close(conn: &Connection) {
    let _ = conn.close(200, "bye".into()).await;
}

/// Counts, shared by the workers and read by the clock.
#[derive(Default)]
struct Counters {
    /// Published (with --confirm: confirmed by the broker).
    published: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
}

async fn publisher(ch: Channel, a: Arc<Args>, queue: String, n: Arc<Counters>) -> Result<()> {
    let body = vec![b'x'; a.size];
    let mut outstanding = VecDeque::new();
    while !n.stop.load(Ordering::Relaxed) {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
        if a.confirm {
            outstanding.push_back(confirm);
            if outstanding.len() >= a.max_unconfirmed.max(1)
                && let Some(oldest) = outstanding.pop_front()
            {
                oldest.await?;
                n.published.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            n.published.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn consumer(ch: Channel, a: Arc<Args>, queue: String, n: Arc<Counters>) -> Result<()> {
    ch.basic_qos(a.prefetch, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut unacked = 0;
    while !n.stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await;
        let Ok(next) = next else { continue };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        n.consumed.fetch_add(1, Ordering::Relaxed);
        unacked += 1;
        if unacked >= a.ack_every.max(1) {
            ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
            unacked = 0;
        }
    }
    Ok(())
}

async fn throughput(a: Arc<Args>) -> Result<serde_json::Value> {
    let tls = tls_config(&a)?;
    let admin = connect(&a, &tls).await?;
    let admin_ch = admin.create_channel().await?;
    let queue = format!("amqps-bench-{}", std::process::id());
    admin_ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let n = Arc::new(Counters::default());
    let mut conns = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..a.consumers + a.producers {
        let conn = connect(&a, &tls).await?;
        let ch = conn.create_channel().await?;
        let (a, queue, n) = (a.clone(), queue.clone(), n.clone());
        tasks.push(if i < a.consumers {
            tokio::spawn(consumer(ch, a, queue, n))
        } else {
            if a.confirm {
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
            }
            tokio::spawn(publisher(ch, a, queue, n))
        });
        conns.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (p0, c0, t0) = (
        n.published.load(Ordering::Relaxed),
        n.consumed.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let (p1, c1, elapsed) = (
        n.published.load(Ordering::Relaxed),
        n.consumed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    n.stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => errors.push(e.to_string()),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push("a worker did not stop within 30 s".into()),
        }
    }
    for conn in &conns {
        close(conn).await;
    }
    let left = admin_ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap_or(0);
    close(&admin).await;
    Ok(json!({
        "size": a.size,
        "producers": a.producers,
        "consumers": a.consumers,
        "confirm": a.confirm,
        "published_per_s": ((p1 - p0) as f64 / elapsed).round(),
        "consumed_per_s": ((c1 - c0) as f64 / elapsed).round(),
        "left_in_queue": left,
        "errors": errors,
    }))
}

/// Opens and closes connections for `seconds`; returns how long each open took.
async fn open_close(a: Arc<Args>, tls: OwnedTLSConfig, seconds: f64) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let started = Instant::now();
        let conn = connect(&a, &tls).await?;
        times.push(started.elapsed());
        close(&conn).await;
    }
    Ok(times)
}

/// Opens per second and the open time's percentiles over `clients` clients at once.
async fn open_rate(
    a: &Arc<Args>,
    tls: &OwnedTLSConfig,
    clients: usize,
) -> Result<serde_json::Value> {
    let seconds = a.duration / 2.0;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| tokio::spawn(open_close(a.clone(), tls.clone(), seconds)))
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    let ms = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len().max(1)) - 1;
        times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(json!({
        "clients": clients.max(1),
        "opens": times.len(),
        "opens_per_s": (times.len() as f64 / elapsed * 10.0).round() / 10.0,
        "open_ms_p50": (ms(0.50) * 100.0).round() / 100.0,
        "open_ms_p99": (ms(0.99) * 100.0).round() / 100.0,
    }))
}

async fn handshakes(a: Arc<Args>) -> Result<serde_json::Value> {
    let tls = tls_config(&a)?;
    Ok(json!({
        "sequential": open_rate(&a, &tls, 1).await?,
        "parallel": open_rate(&a, &tls, a.parallel).await?,
    }))
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench to every bench binary; it is not ours.
    let args = std::env::args().filter(|arg| arg != "--bench");
    let a = Arc::new(Args::parse_from(args));
    let tls = a.uri.starts_with("amqps://");
    let result = match a.scenario {
        Scenario::Throughput => throughput(a.clone()).await,
        Scenario::Handshakes => handshakes(a.clone()).await,
    };
    let mut uri = a.uri.clone();
    if let (Some(at), Some(scheme)) = (uri.find('@'), uri.find("://")) {
        uri.replace_range(scheme + 3..at, "…");
    }
    match result {
        Ok(mut v) => {
            v["scenario"] = json!(format!("{:?}", a.scenario).to_lowercase());
            v["uri"] = json!(uri);
            v["tls"] = json!(tls);
            v["duration_s"] = json!(a.duration);
            println!("{v}");
        }
        Err(e) => {
            println!("{}", json!({ "uri": uri, "error": e.to_string() }));
            std::process::exit(1);
        }
    }
}
