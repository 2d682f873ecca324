//! One broker behind its listeners: the AMQP accept loop, and a graceful shutdown they share.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::broker::{Broker, delayed, disk};
use crate::config::Config;
use crate::connection;
use crate::tls::Tls;

/// Serves AMQP on `listener` until `shutdown` turns true (or its sender goes), then closes every
/// client connection with 320 CONNECTION_FORCED and waits (bounded) for them to finish.
pub async fn serve_amqp(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(listener, None, broker, shutdown).await;
}

/// Accepts AMQP clients on `listener`, over TLS with `tls`, until `shutdown` (see
/// [`serve_amqp`]).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    let stopped = async move {
        // A dropped sender stops the listener too.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let broker = Arc::clone(&broker);
                    match &tls {
                        Some(tls) => connections.spawn(connection::serve_tls(stream, peer, Arc::clone(tls), broker, shutdown.clone())),
                        None => connections.spawn(connection::serve_tcp(stream, peer, broker, shutdown.clone())),
                    };
                }
                Err(e) => {
                    // Running out of file descriptors must not end the broker: back off and retry.
                    warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stopped => break,
        }
    }
    drop(listener);
    let grace = broker.config.close_timeout() + Duration::from_secs(1);
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
    }
}

/// A running broker: its delayed-message scheduler, its disk monitor, its listeners and the shutdown signal they
/// all follow.
pub struct Server {
    broker: Arc<Broker>,
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<()>,
    disk_monitor: JoinHandle<()>,
    listeners: JoinSet<()>,
    tls: Option<Arc<Tls>>,
}

impl Server {
    /// Opens the broker (store opened, state recovered) and starts its scheduler and disk
    /// monitor; no listener yet.
    pub fn start(config: Config) -> io::Result<Self> {
        let t = &config.tls;
        let tls = if t.listen.is_some() || config.management.tls || config.prometheus.tls {
            Some(Arc::new(Tls::load(t).map_err(io::Error::other)?))
        } else {
            None
        };
        let broker = Broker::open(config).map_err(|e| io::Error::other(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(delayed::run(Arc::clone(&broker), stop_rx.clone()));
        let disk_monitor = tokio::spawn(disk::run(Arc::clone(&broker), stop_rx));
        Ok(Self {
            broker,
            stop,
            scheduler,
            disk_monitor,
            listeners: JoinSet::new(),
            tls,
        })
    }

    /// The shared broker.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The shutdown signal, for a listener served outside [`Server::serve_amqp`].
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Serves AMQP on `listener` until [`Server::stop`].
    pub fn serve_amqp(&mut self, listener: TcpListener) -> io::Result<()> {
        let addr = listener.local_addr()?;
        self.broker.add_listener("amqp", addr);
        self.listeners.spawn(serve_amqp(
            listener,
            Arc::clone(&self.broker),
            self.shutdown_signal(),
        ));
        Ok(())
    }

    /// Serves AMQP over TLS (AMQPS) on `listener` until [`Server::stop`]; needs `[tls]`.
    pub fn serve_amqps(&mut self, listener: TcpListener) -> io::Result<()> {
        let tls = self.tls_for("tls.listen")?;
        self.broker.add_listener("amqp/ssl", listener.local_addr()?);
        self.listeners.spawn(accept_loop(
            listener,
            Some(tls),
            Arc::clone(&self.broker),
            self.shutdown_signal(),
        ));
        Ok(())
    }

    /// Reads the TLS certificate, key and CA files again (on SIGHUP): new connections get them,
    /// established ones keep theirs. On an error the old ones stay, and the error says why.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    fn tls_for(&self, setting: &str) -> io::Result<Arc<Tls>> {
        self.tls.clone().ok_or_else(|| {
            io::Error::other(format!("{setting} needs tls.certfile and tls.keyfile"))
        })
    }

    /// Logs one line that says what started: the listeners, the data dir, the limits, and what
    /// was recovered from the store.
    pub fn announce(&self) {
        let b = &self.broker;
        let listeners: Vec<String> = b
            .listeners()
            .into_iter()
            .map(|(protocol, addr)| format!("{protocol}={addr}"))
            .collect();
        let vhosts = b.vhosts();
        let queues: usize = vhosts.iter().map(|v| v.queues().len()).sum();
        let messages: u64 = vhosts
            .iter()
            .flat_map(|v| v.queues())
            .map(|q| q.stats().ready)
            .sum();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            listeners = %listeners.join(" "),
            data_dir = %b.config.data_dir.display(),
            memory_budget = b.config.memory_budget_bytes(),
            disk_free_limit = b.alarms.disk_free_limit(),
            frame_max = b.config.frame_max,
            channel_max = b.config.channel_max,
            vhosts = vhosts.len(),
            users = b.registry().users.len(),
            queues,
            messages,
            "warren started"
        );
    }

    /// Imports the definitions file the settings name (`load_definitions`), if any: what it
    /// names is created or updated, nothing else changes.
    pub async fn load_definitions(&self) -> io::Result<()> {
        let Some(path) = self.broker.config.load_definitions.clone() else {
            return Ok(());
        };
        crate::management::definitions::load(&self.broker, &path)
            .await
            .map_err(io::Error::other)?;
        info!(file = %path.display(), "definitions loaded");
        Ok(())
    }

    /// Serves the management HTTP API on `listener` until [`Server::stop`].
    pub fn serve_management(&mut self, listener: TcpListener) -> io::Result<()> {
        let tls = if self.broker.config.management.tls {
            Some(self.tls_for("management.tls")?)
        } else {
            None
        };
        let protocol = if tls.is_some() { "https" } else { "http" };
        self.broker.add_listener(protocol, listener.local_addr()?);
        let interval = self.broker.config.management.collect_statistics_interval;
        self.listeners.spawn(crate::broker::sampling::run(
            Arc::clone(&self.broker),
            std::time::Duration::from_millis(interval.max(100)),
            self.shutdown_signal(),
        ));
        self.listeners.spawn(crate::management::serve(
            listener,
            tls,
            Arc::clone(&self.broker),
            self.shutdown_signal(),
        ));
        Ok(())
    }

    /// Serves the Prometheus metrics on `listener` until [`Server::stop`].
    pub fn serve_prometheus(&mut self, listener: TcpListener) -> io::Result<()> {
        let tls = if self.broker.config.prometheus.tls {
            Some(self.tls_for("prometheus.tls")?)
        } else {
            None
        };
        let protocol = if tls.is_some() {
            "https/prometheus"
        } else {
            "http/prometheus"
        };
        self.broker.add_listener(protocol, listener.local_addr()?);
        self.listeners.spawn(crate::management::metrics::serve(
            listener,
            tls,
            Arc::clone(&self.broker),
            self.shutdown_signal(),
        ));
        Ok(())
    }

    /// Stops accepting, closes every client with 320 CONNECTION_FORCED, waits (bounded) for
    /// them, the scheduler and the disk monitor, then closes the store.
    pub async fn stop(mut self) {
        info!(connections = self.broker.connections.len(), "shutting down");
        let _ = self.stop.send(true);
        while self.listeners.join_next().await.is_some() {}
        // It writes to the store: it must be done before the store closes.
        if let Err(e) = self.scheduler.await {
            warn!(cause = %e, "delayed-message scheduler failed");
        }
        if let Err(e) = self.disk_monitor.await {
            warn!(cause = %e, "disk monitor failed");
        }
        self.broker.close();
        info!("warren stopped");
    }
}

/// Serves AMQP on `listener` with a broker opened from `config` until `shutdown` completes, then
/// shuts down gracefully (see [`Server::stop`]).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut server = Server::start(config)?;
    server.serve_amqp(listener)?;
    shutdown.await;
    server.stop().await;
    Ok(())
}
