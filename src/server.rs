//! The accept loop and graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::broker::{Broker, delayed};
use crate::config::Config;
use crate::connection;
use crate::store::Store;

/// Serves AMQP on `listener` until `shutdown` completes, then closes every client connection with
/// 320 CONNECTION_FORCED and waits (bounded) for them to finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let store = Store::open(&config.data_dir, config.store_cache_bytes())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let broker = Broker::open(config, &store).map_err(|e| io::Error::other(e.to_string()))?;
    let addr = listener.local_addr()?;
    info!(
        listen = %addr,
        version = env!("CARGO_PKG_VERSION"),
        memory_budget = broker.config.memory_budget_bytes(),
        "warren started"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = tokio::spawn(delayed::run(Arc::clone(&broker), stop_rx.clone()));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection::serve(stream, peer, Arc::clone(&broker), stop_rx.clone()));
                }
                Err(e) => {
                    // Running out of file descriptors must not end the broker: back off and retry.
                    warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(connections = connections.len(), "shutting down");
    let _ = stop_tx.send(true);
    let grace = broker.config.close_timeout() + Duration::from_secs(1);
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
    }
    // It writes to the store: it must be done before the store closes.
    if let Err(e) = scheduler.await {
        warn!(cause = %e, "delayed-message scheduler failed");
    }
    drop(broker);
    store.close();
    info!("warren stopped");
    Ok(())
}
