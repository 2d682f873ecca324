//! The broker: its settings, vhosts (`vhost.rs`: exchanges, queues, bindings and routing), users,
//! the memory gauge and pager, and what `queue.declare` and `exchange.declare` ask of a vhost.

pub mod access;
pub mod admin;
pub mod auth;
pub mod connections;
pub mod delayed;
pub mod disk;
mod equivalence;
pub mod exchange;
pub mod headers;
pub mod limits;
pub mod manage;
pub mod policy;
mod reply_to;
pub mod sampling;
mod targets;
pub mod topic;
mod vhost;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amq_protocol::types::FieldTable;
use tracing::{info, warn};

use crate::config::Config;
use crate::queue::log::Pages;
use crate::queue::memory::MemoryGauge;
use crate::queue::paging::Pager;
use crate::store::{Store, StoreError};

pub use reply_to::REPLY_TO;
pub use vhost::{BindingView, ExchangeView, VHost, generated_name};

/// The whole broker: settings and vhosts.
#[derive(Debug)]
pub struct Broker {
    /// Its settings.
    pub config: Config,
    vhosts: parking_lot::RwLock<HashMap<String, Arc<VHost>>>,
    /// Users, vhost settings, permissions and limits.
    registry: parking_lot::RwLock<admin::Registry>,
    /// Compiled permissions by (vhost, user), emptied on every change.
    compiled: parking_lot::Mutex<HashMap<(String, String), Arc<access::Permissions>>>,
    /// Moves on every change to the registry, so connections know to look at theirs again.
    permissions_epoch: AtomicU64,
    next_connection: AtomicU64,
    /// Direct reply-to names and the channels whose reply consumers they reach.
    replies: parking_lot::Mutex<HashMap<String, (crate::queue::EventSender, u16)>>,
    /// Messages that delayed exchanges hold, in every vhost.
    delayed: Arc<delayed::Delayed>,
    /// The memory budget of queued messages (none for a broker kept in memory).
    pager: Option<Arc<Pager>>,
    /// Every message byte held in memory, and the alarm past the budget.
    pub memory: Arc<MemoryGauge>,
    /// The memory and disk alarms, which block publishing connections.
    pub alarms: Arc<crate::queue::alarms::Alarms>,
    /// The live client connections.
    pub connections: connections::Connections,
    /// The store it was opened on, closed by [`Broker::close`].
    store: Option<Arc<Store>>,
    /// Where it listens, by protocol (`amqp`, `http`).
    listeners: parking_lot::Mutex<Vec<(&'static str, SocketAddr)>>,
    /// When it was made, for its uptime.
    pub started: std::time::Instant,
    /// Its recent samples: every vhost's summed.
    pub history: crate::stats::History,
    /// Logins tried, and those that succeeded.
    pub auth_attempts: [AtomicU64; 2],
    /// Refusals by the limit they enforce.
    pub limits: limits::LimitCounters,
    /// The growing delay of logins from addresses whose attempts fail.
    pub logins: limits::LoginThrottle,
    /// The last two samples of its churn (when, and [`sampling::CHURN`] counts).
    churn_samples: parking_lot::Mutex<[(u64, [u64; sampling::CHURN]); 2]>,
}

/// Why a login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password.
    Refused,
    /// A loopback-only user connecting from elsewhere.
    NotLoopback,
    /// Attempts from the client's address already wait in line past the longest delay: not
    /// checked at all.
    TooManyAttempts,
}

impl Broker {
    /// A broker kept in memory, with the vhosts and users the settings name.
    pub fn new(config: Config) -> Arc<Self> {
        let registry = admin::Registry::from_config(&config);
        let broker = Self::build(config, None);
        broker.install(registry);
        broker
    }

    fn build(config: Config, store: Option<&Arc<Store>>) -> Arc<Self> {
        let delayed = delayed::Delayed::new(store.cloned());
        let alarms = Arc::new(crate::queue::alarms::Alarms::new(
            config.disk_free_limit_bytes(),
        ));
        let memory = Arc::new(MemoryGauge::with_alarms(
            config.queue_memory_bytes(),
            config.paging_bytes(),
            alarms.clone(),
        ));
        let pager = store.map(|s| Pager::new(Pages::new(s.clone()), memory.clone()));
        let logins = limits::LoginThrottle::new(
            std::time::Duration::from_millis(config.login_failure_delay_ms),
            std::time::Duration::from_millis(config.login_failure_delay_max_ms),
        );
        Arc::new(Self {
            config,
            vhosts: parking_lot::RwLock::new(HashMap::new()),
            registry: parking_lot::RwLock::new(admin::Registry::default()),
            compiled: parking_lot::Mutex::new(HashMap::new()),
            permissions_epoch: AtomicU64::new(0),
            next_connection: AtomicU64::new(1),
            replies: parking_lot::Mutex::new(HashMap::new()),
            delayed,
            pager,
            memory,
            alarms,
            connections: connections::Connections::default(),
            store: store.cloned(),
            listeners: parking_lot::Mutex::new(Vec::new()),
            started: std::time::Instant::now(),
            history: crate::stats::History::long(),
            churn_samples: parking_lot::Mutex::default(),
            auth_attempts: [AtomicU64::new(0), AtomicU64::new(0)],
            limits: limits::LimitCounters::default(),
            logins,
        })
    }

    /// Makes the registry's vhosts, with their limits.
    fn install(&self, registry: admin::Registry) {
        let mut vhosts = self.vhosts.write();
        for v in registry.vhosts.values() {
            let vhost = VHost::new(
                &v.name,
                self.store.clone(),
                self.pager.clone(),
                self.delayed.clone(),
            );
            vhost.set_max_queues(v.limits.get(admin::MAX_QUEUES).copied().unwrap_or(-1));
            vhosts.insert(v.name.clone(), vhost);
        }
        *self.registry.write() = registry;
    }

    /// Opens the store under the configured data directory and brings back its durable entities
    /// and messages.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = &Store::open(&config.data_dir, config.store_cache_bytes())?;
        let started = std::time::Instant::now();
        let broker = Self::build(config, Some(store));
        let mut recovered = store.recover()?;
        let (registry, damaged_admin, seed) =
            admin::Registry::restore(&broker.config, &recovered.admin);
        recovered.damaged += damaged_admin;
        for (key, value) in seed {
            store.put_meta(key, value);
        }
        broker.install(registry);
        let queues = recovered.queues.len();
        let messages: usize = recovered.queues.iter().map(|(_, q)| q.messages.len()).sum();
        let damaged = recovered.damaged;
        for vhost in broker.vhosts() {
            vhost.restore(&mut recovered, store);
            vhost.attach_queues();
            broker.refresh_policies(&vhost.name);
        }
        if recovered.damaged > damaged {
            warn!(
                missing = recovered.damaged - damaged,
                "skipped stored messages whose body is missing or damaged"
            );
        }
        broker
            .delayed
            .restore(std::mem::take(&mut recovered.delayed));
        info!(
            queues,
            messages = messages - (recovered.damaged - damaged),
            paged = broker.pager.as_ref().map_or(0, |p| p.paged_out()),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "recovered queues and messages"
        );
        Ok(broker)
    }

    /// Closes the store, flushing what is pending. Everything that writes to it (connections,
    /// the delayed-message scheduler) must have finished first.
    pub fn close(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }

    /// Closes a connection with a reply code and full reply text; false if there is no such
    /// connection or it has too many control messages waiting.
    pub fn close_connection(&self, id: u64, code: u16, text: &str) -> bool {
        self.connections.get(id).is_some_and(|c| {
            c.control(connections::Control::Close {
                code,
                text: text.to_owned(),
            })
        })
    }

    /// Records a listener, for the API's overview and health checks.
    pub fn add_listener(&self, protocol: &'static str, addr: SocketAddr) {
        self.listeners.lock().push((protocol, addr));
    }

    /// Where the broker listens, by protocol.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.lock().clone()
    }

    /// The store it was opened on (none for a broker kept in memory).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The memory budget of queued messages, if the broker has a store to page to.
    pub fn pager(&self) -> Option<&Arc<Pager>> {
        self.pager.as_ref()
    }

    /// Messages that delayed exchanges hold now, in every vhost.
    pub fn delayed_count(&self) -> usize {
        self.delayed.held_count()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// All vhosts, in name order.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut all: Vec<_> = self.vhosts.read().values().cloned().collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Checks a user's password and where they connect from.
    pub fn login(
        &self,
        name: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<admin::UserRecord, LoginError> {
        self.admit(name, peer, |u| {
            auth::verify_password(&u.password_hash, password)
        })
    }

    /// Logs in a user whose name a verified TLS client certificate gave (`EXTERNAL`): no
    /// password, the rest as [`Broker::login`].
    pub fn login_external(
        &self,
        name: &str,
        peer: SocketAddr,
    ) -> Result<admin::UserRecord, LoginError> {
        self.admit(name, peer, |_| true)
    }

    /// Runs `login` through the login throttle: an address whose attempts failed waits its turn
    /// first, and the outcome is recorded. A failure carries the delay the address's next
    /// attempt will wait.
    pub async fn login_paced(
        &self,
        ip: std::net::IpAddr,
        login: impl FnOnce(&Self) -> Result<admin::UserRecord, LoginError>,
    ) -> Result<admin::UserRecord, (LoginError, std::time::Duration)> {
        let result = match self.logins.turn(ip) {
            Err(limits::TooManyAttempts) => Err(LoginError::TooManyAttempts),
            Ok(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                login(self)
            }
        };
        match result {
            Ok(user) => {
                self.logins.succeeded(ip);
                Ok(user)
            }
            Err(why) => Err((why, self.logins.failed(ip))),
        }
    }

    fn admit(
        &self,
        name: &str,
        peer: SocketAddr,
        proven: impl FnOnce(&admin::UserRecord) -> bool,
    ) -> Result<admin::UserRecord, LoginError> {
        self.auth_attempts[0].fetch_add(1, Ordering::Relaxed);
        let user = self
            .registry
            .read()
            .users
            .get(name)
            .filter(|u| proven(u))
            .cloned()
            .ok_or(LoginError::Refused)?;
        if self.config.loopback_users.iter().any(|u| u == name) && !peer.ip().is_loopback() {
            return Err(LoginError::NotLoopback);
        }
        self.auth_attempts[1].fetch_add(1, Ordering::Relaxed);
        Ok(user)
    }

    /// A number that moves whenever permissions may have changed.
    pub fn permissions_epoch(&self) -> u64 {
        self.permissions_epoch.load(Ordering::Acquire)
    }

    /// What `user` may do in `vhost` now; `None` if they may not open it.
    pub fn permissions(&self, user: &str, vhost: &str) -> Option<Arc<access::Permissions>> {
        let key = (vhost.to_owned(), user.to_owned());
        if let Some(p) = self.compiled.lock().get(&key) {
            return Some(p.clone());
        }
        // Changes empty the cache under the registry's write lock, so what is compiled under its
        // read lock is current when it goes in.
        let registry = self.registry.read();
        let compiled = match registry.compile(user, vhost)? {
            Ok(p) => Arc::new(p),
            // Patterns are checked when they are set.
            Err(e) => {
                warn!(user, vhost, cause = %e, "unusable permissions: access refused");
                return None;
            }
        };
        self.compiled.lock().insert(key, compiled.clone());
        Some(compiled)
    }
}

/// A declared queue's answer: its name and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (server-generated when asked).
    pub name: Arc<str>,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// What `queue.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    /// Requested name ("" for a server-named queue).
    pub name: String,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
    /// The name was generated for the client (`amq.gen-...`), so its reserved prefix is fine.
    pub server_named: bool,
}

/// What `exchange.declare` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}
