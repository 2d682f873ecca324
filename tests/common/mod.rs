//! Test harness: a real broker on 127.0.0.1:0 with a temp data dir, and lapin clients over TCP.
//!
//! [`Env`] picks the broker a test talks to (Warren in-process, or the reference broker named by
//! `WARREN_REFERENCE_URI`); the steps a client script takes against it are in [`client`].
#![allow(dead_code)]

pub mod blocking;
pub mod client;
pub mod heap;
pub mod http;
pub mod process;
pub mod raw;

// Not every test crate takes something from `client`.
#[allow(unused_imports)]
pub use client::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;
use warren::Config;
use warren::broker::Broker;

/// How long a test waits for any one thing the broker should do before it gives up.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker running in this process for one test.
pub struct TestBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its Prometheus metrics are served.
    pub metrics: SocketAddr,
    /// Where its management HTTP API listens.
    pub http: SocketAddr,
    /// Where it accepts AMQPS, when its settings ask for a TLS listener.
    pub tls: Option<SocketAddr>,
    /// The broker itself, for tests that look inside it.
    pub broker: Arc<Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `tweak` adjusts its settings.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            close_timeout_ms: 1000,
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = http_listener.local_addr().expect("addr");
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let metrics = metrics_listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let tls_listener = match config.tls.listen {
            Some(_) => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            ),
            None => None,
        };
        let tls = tls_listener.as_ref().map(|l| l.local_addr().expect("addr"));
        let mut server = warren::Server::start(config).expect("the broker opens");
        server.serve_amqp(listener).expect("serve AMQP");
        if let Some(l) = tls_listener {
            server.serve_amqps(l).expect("serve AMQPS");
        }
        server
            .serve_management(http_listener)
            .expect("serve the management API");
        server
            .serve_prometheus(metrics_listener)
            .expect("serve the metrics");
        let broker = Arc::clone(server.broker());
        let task = tokio::spawn(async move {
            let _ = stopped.await;
            server.stop().await;
            Ok(())
        });
        Self {
            addr,
            http,
            tls,
            metrics,
            broker,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The AMQP URI for guest on vhost "/".
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// A lapin connection as guest.
    pub async fn connect(&self) -> Connection {
        connect(&self.uri()).await
    }

    /// A connection and one channel on it.
    pub async fn channel(&self) -> (Connection, Channel) {
        connection_and_channel(&self.uri()).await
    }

    /// Stops the broker (as SIGTERM would) and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), t).await;
            assert!(
                matches!(r, Ok(Ok(Ok(())))),
                "broker did not stop cleanly: {r:?}"
            );
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The broker under test: a fresh in-process Warren, or the reference broker named by a
/// non-empty `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`), which checks
/// the tests' expectations against RabbitMQ. Tests that run against it use [`unique`] names.
pub struct Env {
    _broker: Option<TestBroker>,
    /// The AMQP URI for guest on vhost "/".
    pub uri: String,
}

impl Env {
    /// The reference broker if the environment names one, else a fresh Warren.
    pub async fn start() -> Self {
        match std::env::var("WARREN_REFERENCE_URI") {
            Ok(uri) if !uri.is_empty() => Self { _broker: None, uri },
            _ => Self::warren(TestBroker::start().await),
        }
    }

    /// Always Warren: for tests that need a Warren-specific setting.
    pub fn warren(broker: TestBroker) -> Self {
        Self {
            uri: broker.uri(),
            _broker: Some(broker),
        }
    }

    /// A lapin connection as guest.
    pub async fn connect(&self) -> Connection {
        connect(&self.uri).await
    }

    /// A connection and a plain channel on it.
    pub async fn channel(&self) -> (Connection, Channel) {
        connection_and_channel(&self.uri).await
    }

    /// A connection and a channel in confirm mode, so a publish's confirm means it was routed.
    pub async fn confirm_channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = confirm_channel(&conn).await;
        (conn, ch)
    }
}

/// A lapin connection to `uri`.
pub async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect")
}

async fn connection_and_channel(uri: &str) -> (Connection, Channel) {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// A new channel on `conn`, in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

/// Waits up to 5 s for the next delivery of a consumer.
pub async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    use futures::StreamExt;
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within 5 s")
        .expect("consumer still open")
        .expect("a delivery, not an error")
}

/// The AMQP reply code carried by a lapin error, if any.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some(err.get_id()),
        _ => None,
    }
}

/// The reply text carried by a lapin error, if any.
pub fn reply_text(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some(err.get_message().to_string()),
        _ => None,
    }
}

/// The reply code and text of an AMQP error; panics on an error that carries none.
pub fn refusal(e: &lapin::Error) -> (u16, String) {
    (
        reply_code(e).unwrap_or_else(|| panic!("no reply code in {e:?}")),
        reply_text(e).unwrap_or_default(),
    )
}

/// The reply code and text a failed call carried.
pub fn failure<T: std::fmt::Debug>(r: Result<T, lapin::Error>) -> (u16, String) {
    refusal(&r.expect_err("the broker refuses"))
}
