//! Settings: the TOML file (`config/warren.toml` documents each), overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A user allowed to log in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// RabbitMQ-style salted SHA-256 hash (`warren hash-password` prints one).
    pub password_hash: String,
    /// Vhosts this user may open (`["*"]` for all).
    #[serde(default = "all_vhosts")]
    pub vhosts: Vec<String>,
    /// Tags, as RabbitMQ's: `administrator`, `monitoring`, `policymaker`, `management`.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines: time, level, message, then `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields` with the message, `target`).
    Json,
}

/// The management HTTP API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Management {
    /// Address to serve the API on (RabbitMQ's `management.tcp.port`).
    pub listen: SocketAddr,
    /// Whether to serve it at all.
    pub enabled: bool,
    /// Serve HTTPS with `[tls]`'s certificate instead of HTTP.
    pub tls: bool,
    /// How often statistics are sampled for rates and charts, in ms (RabbitMQ's
    /// `collect_statistics_interval`).
    pub collect_statistics_interval: u64,
}

impl Default for Management {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 15672)),
            enabled: true,
            tls: false,
            collect_statistics_interval: 5000,
        }
    }
}

/// The Prometheus metrics endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Prometheus {
    /// Address to serve `/metrics` on (RabbitMQ's `prometheus.tcp.port`).
    pub listen: SocketAddr,
    /// Whether to serve it at all.
    pub enabled: bool,
    /// Serve HTTPS with `[tls]`'s certificate instead of HTTP.
    pub tls: bool,
}

impl Default for Prometheus {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 15692)),
            enabled: true,
            tls: false,
        }
    }
}

/// Whether TLS clients must show a certificate the CA bundle vouches for.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Ask for no client certificate.
    #[default]
    VerifyNone,
    /// Ask for one and check it against `cacertfile` (refusing a bad one).
    VerifyPeer,
}

/// Where an `EXTERNAL` login takes the user name from in the client's certificate.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    /// The subject's distinguished name as RFC 4514 writes it (`CN=app,O=Example`).
    #[default]
    DistinguishedName,
    /// The subject's common name.
    CommonName,
    /// One subject alternative name: of `cert_login_san_type`, the `cert_login_san_index`th.
    #[serde(alias = "subject_alt_name")]
    SubjectAlternativeName,
}

/// Which kind of subject alternative name an `EXTERNAL` login reads.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    /// A DNS name.
    #[default]
    Dns,
    /// An e-mail address.
    Email,
    /// A URI.
    Uri,
    /// An IP address.
    Ip,
}

/// TLS: the AMQPS listener, and the certificate the HTTPS listeners use (RabbitMQ's
/// `listeners.ssl` and `ssl_options`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// Address of the AMQPS listener (RabbitMQ's `listeners.ssl.default`; 5671 by convention);
    /// none unless set.
    pub listen: Option<SocketAddr>,
    /// The server's certificate chain, PEM, leaf first.
    pub certfile: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: Option<PathBuf>,
    /// CA certificates that client certificates are checked against, PEM.
    pub cacertfile: Option<PathBuf>,
    /// Whether to ask clients for a certificate and check it.
    pub verify: Verify,
    /// With `verify_peer`: refuse a client that shows no certificate at all.
    pub fail_if_no_peer_cert: bool,
    /// TLS versions offered: `tlsv1.2`, `tlsv1.3`.
    pub versions: Vec<String>,
    /// Where an `EXTERNAL` login reads the user name (RabbitMQ's `ssl_cert_login_from`).
    pub cert_login_from: CertLoginFrom,
    /// With `subject_alternative_name`: which kind (RabbitMQ's `ssl_cert_login_san_type`).
    pub cert_login_san_type: SanType,
    /// With `subject_alternative_name`: which one of that kind, from 0
    /// (RabbitMQ's `ssl_cert_login_san_index`).
    pub cert_login_san_index: usize,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            listen: None,
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: Verify::VerifyNone,
            fail_if_no_peer_cert: false,
            versions: vec!["tlsv1.3".into(), "tlsv1.2".into()],
            cert_login_from: CertLoginFrom::DistinguishedName,
            cert_login_san_type: SanType::Dns,
            cert_login_san_index: 0,
        }
    }
}

impl Tls {
    /// Refuses settings that cannot work: a TLS listener without a certificate, peer
    /// verification without a CA bundle, a version rustls does not speak.
    fn validate(&self, management: bool, prometheus: bool) -> Result<(), String> {
        let used = self.listen.is_some() || management || prometheus;
        if used && (self.certfile.is_none() || self.keyfile.is_none()) {
            return Err("TLS needs tls.certfile and tls.keyfile".into());
        }
        if self.verify == Verify::VerifyPeer && self.cacertfile.is_none() {
            return Err("tls.verify = \"verify_peer\" needs tls.cacertfile".into());
        }
        if self.versions.is_empty() {
            return Err("tls.versions must name at least one of tlsv1.2, tlsv1.3".into());
        }
        if let Some(v) = self
            .versions
            .iter()
            .find(|v| !matches!(v.as_str(), "tlsv1.2" | "tlsv1.3"))
        {
            return Err(format!(
                "tls.versions: {v} is not offered (only tlsv1.2 and tlsv1.3 are)"
            ));
        }
        Ok(())
    }
}

/// A user's permissions in one vhost, as RabbitMQ's `set_permissions` takes them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Regular expression of the queues and exchanges the user may declare and delete.
    pub configure: String,
    /// Regular expression of the exchanges the user may publish to (and queues and exchanges
    /// they may bind to).
    pub write: String,
    /// Regular expression of the queues the user may consume from, get from and purge (and the
    /// exchanges they may bind from).
    pub read: String,
}

/// A user's topic permissions on one topic exchange, as RabbitMQ's `set_topic_permissions`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicPermission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Regular expression of the routing keys the user may publish with.
    pub write: String,
    /// Regular expression of the binding keys the user may bind queues and exchanges with.
    pub read: String,
}

fn all_vhosts() -> Vec<String> {
    vec!["*".into()]
}

/// How much free space the data dir's filesystem must keep (RabbitMQ's `disk_free_limit.*`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DiskFreeLimit {
    /// In bytes.
    Absolute(u64),
    /// As a multiple of the machine's memory (cgroup limit included).
    Relative(f64),
}

/// RabbitMQ's default free-disk limit, in bytes.
pub const DISK_FREE_LIMIT: u64 = 50_000_000;

/// The broker's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// AMQP listen address.
    pub listen: SocketAddr,
    /// Whether to listen for plain AMQP at all (false: TLS only, RabbitMQ's
    /// `listeners.tcp = none`).
    pub tcp_listener: bool,
    /// TLS for AMQP, the management API and the metrics.
    pub tls: Tls,
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
    /// tracing filter (error, warn, info, debug, trace, or a directive list).
    pub log_level: String,
    /// How log lines are written: for people, or one JSON object per line.
    pub log_format: LogFormat,
    /// Heartbeat interval offered to clients, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest frame offered to clients, in bytes.
    pub frame_max: u32,
    /// Highest channel number offered to clients.
    pub channel_max: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// Time a client has to finish the handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Client connections the node serves at once (RabbitMQ's `connection_max`; 0: no limit).
    pub connection_max: u32,
    /// Consumers one channel may have (RabbitMQ's `consumer_max_per_channel`; 0: no limit).
    pub consumer_max_per_channel: u32,
    /// Time a delivery may stay unacknowledged before its channel is closed with 406, in
    /// milliseconds (RabbitMQ's `consumer_timeout`; 0: never).
    pub consumer_timeout: u64,
    /// Delay before a login attempt from a peer whose last attempt failed, in milliseconds;
    /// it doubles with each further failure (0: no delay).
    pub login_failure_delay_ms: u64,
    /// The most that delay grows to, in milliseconds.
    pub login_failure_delay_max_ms: u64,
    /// Time to wait for `close-ok` after the broker closes a connection, in milliseconds.
    pub close_timeout_ms: u64,
    /// The product name announced to clients in `connection.start`.
    pub product: String,
    /// Memory for queued messages and the store's cache, in bytes (0: 40% of the machine's).
    pub memory_budget: u64,
    /// Message bytes held in memory past which new queued messages are paged out (0: 64 MiB, or
    /// half of what the budget leaves for messages where that is less).
    pub paging_threshold: u64,
    /// Free space under which the disk alarm blocks publishers.
    pub disk_free_limit: DiskFreeLimit,
    /// Deliveries one channel's consumers with no prefetch limit may hold unacked, together,
    /// before the rest wait.
    pub consumer_max_unacked: u32,
    /// Users who may log in only from a loopback address.
    pub loopback_users: Vec<String>,
    /// Users.
    pub users: Vec<User>,
    /// Permissions; a user named here has exactly these, whatever their `vhosts` say.
    pub permissions: Vec<Permission>,
    /// Topic permissions.
    pub topic_permissions: Vec<TopicPermission>,
    /// Vhosts.
    pub vhosts: Vec<String>,
    /// The management HTTP API.
    pub management: Management,
    /// The Prometheus metrics endpoint.
    pub prometheus: Prometheus,
    /// A definitions file (RabbitMQ's format) to import at every start.
    pub load_definitions: Option<PathBuf>,
}

/// The store's page cache at most, in bytes.
const STORE_CACHE: u64 = 16 << 20;

/// The default paging threshold where memory allows it, in bytes: a backlog of a million
/// 1 KiB messages stays under 256 MiB, and queues that keep up never page.
pub const PAGING_THRESHOLD: u64 = 64 << 20;

/// The hash of the default user's password `guest`, in RabbitMQ's format.
pub const GUEST_HASH: &str = "Gis8TZlF7y4yOwjl1oCenKChI6VXRAu88lwEipyBEeNWFA2E";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5672)),
            tcp_listener: true,
            tls: Tls::default(),
            data_dir: PathBuf::from("./data"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_message_size: 134_217_728,
            handshake_timeout_ms: 10_000,
            connection_max: 0,
            consumer_max_per_channel: 0,
            consumer_timeout: 1_800_000,
            login_failure_delay_ms: 250,
            login_failure_delay_max_ms: 5_000,
            close_timeout_ms: 3_000,
            memory_budget: 0,
            paging_threshold: 0,
            disk_free_limit: DiskFreeLimit::Absolute(DISK_FREE_LIMIT),
            consumer_max_unacked: 65_535,
            product: "Warren".into(),
            loopback_users: vec!["guest".into()],
            users: vec![User {
                name: "guest".into(),
                password_hash: GUEST_HASH.into(),
                vhosts: all_vhosts(),
                tags: vec!["administrator".into()],
            }],
            vhosts: vec!["/".into()],
            management: Management::default(),
            prometheus: Prometheus::default(),
            load_definitions: None,
            permissions: Vec::new(),
            topic_permissions: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a TOML file; missing settings take their defaults.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that no client could work with.
    pub fn validate(&self) -> Result<(), String> {
        let topic = self
            .topic_permissions
            .iter()
            .map(|t| (&t.user, &t.vhost, [&t.write, &t.read, &t.read]));
        let resource = self
            .permissions
            .iter()
            .map(|p| (&p.user, &p.vhost, [&p.configure, &p.write, &p.read]));
        for (user, vhost, patterns) in resource.chain(topic) {
            crate::broker::admin::check_patterns(user, vhost, &patterns.map(String::as_str))
                .map_err(|e| format!("permissions of user '{user}' in vhost '{vhost}': {e}"))?;
        }
        if self.frame_max != 0 && self.frame_max < crate::protocol::frame::FRAME_MIN_SIZE {
            return Err(format!(
                "frame_max must be 0 or at least 4096, not {}",
                self.frame_max
            ));
        }
        if self.channel_max == 0 {
            return Err("channel_max must be at least 1".into());
        }
        self.tls
            .validate(self.management.tls, self.prometheus.tls)?;
        if !self.tcp_listener && self.tls.listen.is_none() {
            return Err(
                "tcp_listener = false needs tls.listen: there would be no AMQP listener".into(),
            );
        }
        if let DiskFreeLimit::Relative(r) = self.disk_free_limit
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(format!(
                "disk_free_limit.relative must be a number of at least 0, not {r}"
            ));
        }
        Ok(())
    }

    /// The memory budget in bytes: as set, or 40% of the machine's memory (as RabbitMQ's default
    /// high watermark; a container's cgroup limit counts as the machine's), or 1 GiB where that
    /// cannot be read.
    pub fn memory_budget_bytes(&self) -> u64 {
        if self.memory_budget > 0 {
            return self.memory_budget;
        }
        machine_memory().map_or(1 << 30, |m| m / 10 * 4)
    }

    /// The free-disk limit in bytes; a relative limit where the machine's memory cannot be read
    /// falls back to RabbitMQ's default.
    pub fn disk_free_limit_bytes(&self) -> u64 {
        match self.disk_free_limit {
            DiskFreeLimit::Absolute(bytes) => bytes,
            DiskFreeLimit::Relative(r) => machine_memory().map_or(DISK_FREE_LIMIT, |m| scale(m, r)),
        }
    }

    /// The store's page cache: a quarter of the budget, at most 16 MiB (the store's memory
    /// follows its cache, not its data, so a bigger one buys little).
    pub fn store_cache_bytes(&self) -> u64 {
        (self.memory_budget_bytes() / 4).min(STORE_CACHE)
    }

    /// Message bytes in memory past which new queued messages are paged out: as set (at most
    /// the memory left for messages), or [`PAGING_THRESHOLD`], or half the memory left for
    /// messages where that is less (RabbitMQ pages at half its watermark).
    pub fn paging_bytes(&self) -> u64 {
        let messages = self.queue_memory_bytes();
        match self.paging_threshold {
            0 => PAGING_THRESHOLD.min(messages / 2),
            set => set.min(messages),
        }
    }

    /// What is left of the budget for messages held in queues.
    pub fn queue_memory_bytes(&self) -> u64 {
        self.memory_budget_bytes() - self.store_cache_bytes()
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The consumer acknowledgement timeout, if there is one.
    pub fn consumer_timeout(&self) -> Option<Duration> {
        (self.consumer_timeout > 0).then(|| Duration::from_millis(self.consumer_timeout))
    }

    /// The close-ok wait.
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
}

/// The machine's memory: MemTotal, or the cgroup's limit if the broker runs under a smaller one.
fn machine_memory() -> Option<u64> {
    let read = |path| std::fs::read_to_string(path).ok();
    memory_limit(
        &read("/proc/meminfo")?,
        read("/sys/fs/cgroup/memory.max").as_deref(),
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes").as_deref(),
    )
}

/// MemTotal from `/proc/meminfo`'s text, lowered to a cgroup v2 (`memory.max`) or v1
/// (`memory.limit_in_bytes`) limit where one is set: "max", or v1's huge "unlimited", is none.
fn memory_limit(meminfo: &str, cgroup_v2: Option<&str>, cgroup_v1: Option<&str>) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let total = kib.checked_mul(1024)?;
    let cgroup = [cgroup_v2, cgroup_v1]
        .into_iter()
        .flatten()
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .min();
    Some(cgroup.map_or(total, |limit| limit.min(total)))
}

/// `bytes` times a finite, non-negative `factor`, to the nearest byte.
fn scale(bytes: u64, factor: f64) -> u64 {
    // Rounding to whole bytes is the point; the float-to-int `as` saturates, so a product past
    // u64::MAX becomes u64::MAX rather than wrapping.
    (bytes as f64 * factor).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_matches_the_defaults() {
        let text = include_str!("../config/warren.toml");
        assert_eq!(Config::parse(text), Ok(Config::default()));
    }

    #[test]
    fn unknown_settings_and_bad_values_are_refused() {
        assert!(Config::parse("colour = 1").is_err());
        assert!(Config::parse("frame_max = 100").is_err());
        let c = Config::parse("heartbeat = 5\nlisten = \"127.0.0.1:1\"");
        assert_eq!(c.map(|c| (c.heartbeat, c.listen.port())), Ok((5, 1)));
        let permission = |configure: &str| {
            Config::parse(&format!(
                "[[permissions]]\nuser = \"u\"\nvhost = \"/\"\nconfigure = '{configure}'\nwrite = ''\nread = '.*'"
            ))
        };
        assert_eq!(
            permission("^app\\.").map(|c| c.permissions[0].configure.clone()),
            Ok("^app\\.".to_string())
        );
        let bad = permission("(").expect_err("not a regular expression");
        assert!(
            bad.contains("permissions of user 'u' in vhost '/': invalid regular expression '('"),
            "{bad}"
        );
    }

    #[test]
    fn disk_free_limit_is_absolute_or_relative_to_memory() {
        let abs =
            Config::parse("disk_free_limit.absolute = 1000").map(|c| c.disk_free_limit_bytes());
        assert_eq!(abs, Ok(1000));
        let rel = Config::parse("disk_free_limit.relative = 1.5").map(|c| c.disk_free_limit);
        assert_eq!(rel, Ok(DiskFreeLimit::Relative(1.5)));
        assert!(Config::parse("disk_free_limit.relative = -1.0").is_err());
        assert!(Config::parse("disk_free_limit.both = 1").is_err());
        assert_eq!(scale(1000, 1.5), 1500);
        assert_eq!(scale(u64::MAX, 2.0), u64::MAX);
    }

    #[test]
    fn a_smaller_cgroup_limit_lowers_the_machine_memory() {
        let meminfo = "MemTotal:        8000000 kB\nMemFree:  100 kB\n";
        let total = 8_000_000 * 1024;
        assert_eq!(memory_limit(meminfo, None, None), Some(total));
        assert_eq!(memory_limit(meminfo, Some("max\n"), None), Some(total));
        assert_eq!(
            memory_limit(meminfo, Some("1073741824\n"), None),
            Some(1 << 30)
        );
        // v1 says "no limit" with a huge number.
        let v1_unlimited = "9223372036854771712\n";
        assert_eq!(memory_limit(meminfo, None, Some(v1_unlimited)), Some(total));
        assert_eq!(
            memory_limit(meminfo, None, Some("536870912\n")),
            Some(1 << 29)
        );
        assert_eq!(memory_limit("MemFree: 1 kB\n", Some("1024"), None), None);
    }

    #[test]
    fn paging_starts_at_64_mib_or_half_of_a_small_budget() {
        let with = |budget: u64, threshold: u64| Config {
            memory_budget: budget,
            paging_threshold: threshold,
            ..Config::default()
        };
        let gib = 1u64 << 30;
        // A big machine and a 1 GB container (40% of it) page at the same point.
        assert_eq!(with(16 * gib, 0).paging_bytes(), PAGING_THRESHOLD);
        assert_eq!(with(gib / 10 * 4, 0).paging_bytes(), PAGING_THRESHOLD);
        assert_eq!(with(16 * gib, 0).store_cache_bytes(), STORE_CACHE);
        // A small budget: a quarter for the store's cache, paging at half of the rest.
        let small = with(4 << 20, 0);
        assert_eq!(small.store_cache_bytes(), 1 << 20);
        assert_eq!(small.paging_bytes(), 3 << 19);
        // As set, but never past the memory left for messages.
        assert_eq!(with(16 * gib, 1 << 30).paging_bytes(), 1 << 30);
        assert_eq!(with(4 << 20, 1 << 30).paging_bytes(), 3 << 20);
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused() {
        let refused = |text: &str, why: &str| {
            let e = Config::parse(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        };
        refused("[tls]\nlisten = \"0.0.0.0:5671\"", "tls.certfile");
        refused("[management]\ntls = true", "tls.certfile");
        refused(
            "[tls]\ncertfile = \"c\"\nkeyfile = \"k\"\nverify = \"verify_peer\"",
            "tls.cacertfile",
        );
        refused("[tls]\nversions = [\"tlsv1.1\"]", "tlsv1.1");
        refused("tcp_listener = false", "no AMQP listener");
        assert!(
            Config::parse(
                "tcp_listener = false\n[tls]\nlisten = \"0.0.0.0:5671\"\ncertfile = \"c\"\nkeyfile = \"k\""
            )
            .is_ok()
        );
    }

    #[test]
    fn the_default_guest_hash_verifies() {
        assert!(crate::broker::auth::verify_password(GUEST_HASH, "guest"));
    }
}
