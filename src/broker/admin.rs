//! What operators change at runtime: users, vhost settings, permissions, topic permissions and
//! limits, kept in the store's topology tree so that they survive restarts.
//!
//! Each record is stored as JSON under a key of its own, so a later build can add fields without
//! a format change. A fresh data dir is seeded from the config file once; after that the store is
//! the truth, as RabbitMQ's default user is created only on a fresh node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::access::Permissions;
use super::auth::HashingAlgorithm;
use crate::config::Config;

/// The key a store record of the registry starts with.
pub const KEY_PREFIX: u8 = b'a';

/// The limit on a vhost's or a user's connections.
pub const MAX_CONNECTIONS: &str = "max-connections";
/// The limit on a vhost's queues.
pub const MAX_QUEUES: &str = "max-queues";
/// The limit on a user's channels, over all their connections.
pub const MAX_CHANNELS: &str = "max-channels";

/// The limits a vhost can have.
pub const VHOST_LIMITS: [&str; 2] = [MAX_CONNECTIONS, MAX_QUEUES];
/// The limits a user can have.
pub const USER_LIMITS: [&str; 2] = [MAX_CONNECTIONS, MAX_CHANNELS];

/// The key marking a data dir as seeded from the config.
const SEEDED_KEY: &[u8] = b"a!seeded";

/// A user who may log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Salted hash in RabbitMQ's format ("" for a user who cannot log in with a password).
    pub password_hash: String,
    /// How the hash was made.
    #[serde(default)]
    pub hashing_algorithm: HashingAlgorithm,
    /// Tags: `administrator`, `monitoring`, `policymaker`, `management`, `impersonator`, or any.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `max-connections` and `max-channels`, where set.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

impl UserRecord {
    /// Whether the user has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A vhost's settings (its exchanges and queues live in [`super::VHost`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VHostRecord {
    /// Name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The queue type a declare without `x-queue-type` gets, where set.
    #[serde(default)]
    pub default_queue_type: Option<String>,
    /// `max-connections` and `max-queues`, where set.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

impl VHostRecord {
    /// A vhost with nothing set but its name.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            tags: Vec::new(),
            default_queue_type: None,
            limits: BTreeMap::new(),
        }
    }
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionRecord {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Regular expression of what the user may declare and delete.
    pub configure: String,
    /// Regular expression of what the user may publish to and bind to.
    pub write: String,
    /// Regular expression of what the user may consume from and bind from.
    pub read: String,
}

/// A user's topic permissions on one topic exchange of one vhost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionRecord {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Regular expression of the routing keys the user may publish with.
    pub write: String,
    /// Regular expression of the binding keys the user may bind with.
    pub read: String,
}

/// A policy (or operator policy) of one vhost: RabbitMQ's definition keys for the queues and
/// exchanges its pattern matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Regular expression of the names it applies to.
    pub pattern: String,
    /// `queues`, `exchanges`, `all`, `classic_queues`, `quorum_queues` or `streams`.
    pub apply_to: String,
    /// The highest-priority match wins.
    pub priority: i64,
    /// The settings it applies.
    pub definition: serde_json::Map<String, serde_json::Value>,
}

/// A runtime parameter of one component in one vhost, stored as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterRecord {
    /// The component (`federation-upstream`, `shovel`, ...).
    pub component: String,
    /// The vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: serde_json::Value,
}

/// A global parameter, stored as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalParameterRecord {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: serde_json::Value,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A user.
    User(UserRecord),
    /// A vhost.
    VHost(VHostRecord),
    /// Permissions.
    Permission(PermissionRecord),
    /// Topic permissions.
    TopicPermission(TopicPermissionRecord),
    /// A policy.
    Policy(PolicyRecord),
    /// An operator policy.
    OperatorPolicy(PolicyRecord),
    /// A runtime parameter.
    Parameter(ParameterRecord),
    /// A global parameter.
    GlobalParameter(GlobalParameterRecord),
}

/// Joins key parts with NUL, which no name can hold unnoticed: names come from AMQP short
/// strings and JSON, and a NUL in one only makes a key that matches no other record's.
fn key(kind: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = vec![KEY_PREFIX, kind];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

impl Record {
    /// Its key in the store.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Self::User(u) => key(b'u', &[&u.name]),
            Self::VHost(v) => key(b'v', &[&v.name]),
            Self::Permission(p) => key(b'p', &[&p.vhost, &p.user]),
            Self::TopicPermission(t) => key(b't', &[&t.vhost, &t.user, &t.exchange]),
            Self::Policy(p) => key(b'P', &[&p.vhost, &p.name]),
            Self::OperatorPolicy(p) => key(b'O', &[&p.vhost, &p.name]),
            Self::Parameter(p) => key(b'r', &[&p.component, &p.vhost, &p.name]),
            Self::GlobalParameter(g) => key(b'g', &[&g.name]),
        }
    }

    /// Its value in the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A change to write to the store: a record to put, or a key to remove.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Every user, vhost setting, permission and limit.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// Users by name.
    pub users: BTreeMap<String, UserRecord>,
    /// Vhosts by name.
    pub vhosts: BTreeMap<String, VHostRecord>,
    /// Permissions by (vhost, user).
    pub permissions: BTreeMap<(String, String), PermissionRecord>,
    /// Topic permissions by (vhost, user, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermissionRecord>,
    /// Policies by (vhost, name).
    pub policies: BTreeMap<(String, String), PolicyRecord>,
    /// Operator policies by (vhost, name).
    pub operator_policies: BTreeMap<(String, String), PolicyRecord>,
    /// Runtime parameters by (component, vhost, name).
    pub parameters: BTreeMap<(String, String, String), ParameterRecord>,
    /// Global parameters by name.
    pub global_parameters: BTreeMap<String, GlobalParameterRecord>,
}

impl Registry {
    /// What a fresh data dir starts with: the config's vhosts and users, and their
    /// permissions (everything on the vhosts a user's `vhosts` names, unless the config gives
    /// them permissions of their own).
    pub fn seed(config: &Config) -> Vec<Record> {
        let mut out: Vec<Record> = config
            .vhosts
            .iter()
            .map(|v| {
                let mut record = VHostRecord::named(v);
                if v == "/" {
                    "Default virtual host".clone_into(&mut record.description);
                }
                Record::VHost(record)
            })
            .collect();
        for u in &config.users {
            out.push(Record::User(UserRecord {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                hashing_algorithm: HashingAlgorithm::of_hash(&u.password_hash),
                tags: u.tags.clone(),
                limits: BTreeMap::new(),
            }));
            let own: Vec<_> = config
                .permissions
                .iter()
                .filter(|p| p.user == u.name)
                .collect();
            if own.is_empty() {
                for v in &config.vhosts {
                    if u.vhosts.iter().any(|x| x == "*" || x == v) {
                        out.push(Record::Permission(PermissionRecord {
                            user: u.name.clone(),
                            vhost: v.clone(),
                            configure: ".*".into(),
                            write: ".*".into(),
                            read: ".*".into(),
                        }));
                    }
                }
            }
        }
        out.extend(config.permissions.iter().map(|p| {
            Record::Permission(PermissionRecord {
                user: p.user.clone(),
                vhost: p.vhost.clone(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            })
        }));
        out.extend(config.topic_permissions.iter().map(|t| {
            Record::TopicPermission(TopicPermissionRecord {
                user: t.user.clone(),
                vhost: t.vhost.clone(),
                exchange: t.exchange.clone(),
                write: t.write.clone(),
                read: t.read.clone(),
            })
        }));
        out
    }

    /// The registry the store's records make, and how many could not be read. A data dir never
    /// seeded gets the config's records, and the changes that store them.
    pub fn restore(config: &Config, stored: &[(Vec<u8>, Vec<u8>)]) -> (Self, usize, Vec<Change>) {
        let mut registry = Self::default();
        let mut damaged = 0;
        let mut seeded = false;
        for (k, v) in stored {
            if k.as_slice() == SEEDED_KEY {
                seeded = true;
            } else {
                match serde_json::from_slice::<Record>(v) {
                    Ok(r) => registry.put(r),
                    Err(_) => damaged += 1,
                }
            }
        }
        let mut changes = Vec::new();
        if !seeded {
            for r in Self::seed(config) {
                changes.push((r.key(), Some(r.encode())));
                registry.put(r);
            }
            changes.push((SEEDED_KEY.to_vec(), Some(Vec::new())));
        }
        (registry, damaged, changes)
    }

    /// The registry a broker kept in memory starts with.
    pub fn from_config(config: &Config) -> Self {
        let mut registry = Self::default();
        for r in Self::seed(config) {
            registry.put(r);
        }
        registry
    }

    /// Adds or replaces a record.
    pub fn put(&mut self, record: Record) {
        match record {
            Record::User(u) => {
                self.users.insert(u.name.clone(), u);
            }
            Record::VHost(v) => {
                self.vhosts.insert(v.name.clone(), v);
            }
            Record::Permission(p) => {
                self.permissions
                    .insert((p.vhost.clone(), p.user.clone()), p);
            }
            Record::TopicPermission(t) => {
                self.topic_permissions
                    .insert((t.vhost.clone(), t.user.clone(), t.exchange.clone()), t);
            }
            Record::Policy(p) => {
                self.policies.insert((p.vhost.clone(), p.name.clone()), p);
            }
            Record::OperatorPolicy(p) => {
                self.operator_policies
                    .insert((p.vhost.clone(), p.name.clone()), p);
            }
            Record::Parameter(p) => {
                self.parameters
                    .insert((p.component.clone(), p.vhost.clone(), p.name.clone()), p);
            }
            Record::GlobalParameter(g) => {
                self.global_parameters.insert(g.name.clone(), g);
            }
        }
    }

    /// Whether a record of the same key is there.
    pub fn contains(&self, record: &Record) -> bool {
        match record {
            Record::User(u) => self.users.contains_key(&u.name),
            Record::VHost(v) => self.vhosts.contains_key(&v.name),
            Record::Permission(p) => self
                .permissions
                .contains_key(&(p.vhost.clone(), p.user.clone())),
            Record::TopicPermission(t) => self.topic_permissions.contains_key(&(
                t.vhost.clone(),
                t.user.clone(),
                t.exchange.clone(),
            )),
            Record::Policy(p) => self
                .policies
                .contains_key(&(p.vhost.clone(), p.name.clone())),
            Record::OperatorPolicy(p) => self
                .operator_policies
                .contains_key(&(p.vhost.clone(), p.name.clone())),
            Record::Parameter(p) => self.parameters.contains_key(&(
                p.component.clone(),
                p.vhost.clone(),
                p.name.clone(),
            )),
            Record::GlobalParameter(g) => self.global_parameters.contains_key(&g.name),
        }
    }

    /// Compiles what `user` may do in `vhost`; `None` if they have no permissions there.
    pub fn compile(&self, user: &str, vhost: &str) -> Option<Result<Permissions, String>> {
        let p = self.permissions.get(&(vhost.to_owned(), user.to_owned()))?;
        let base = Permissions::new(&p.configure, &p.write, &p.read);
        let topics = self
            .topic_permissions
            .range((vhost.to_owned(), user.to_owned(), String::new())..)
            .take_while(|((v, u, _), _)| v == vhost && u == user);
        Some(topics.fold(base, |p, (_, t)| {
            p.and_then(|p| p.with_topic(&t.exchange, &t.write, &t.read, user, vhost))
        }))
    }

    /// Removes a user with their permissions; the changes that remove them from the store.
    pub fn remove_user(&mut self, name: &str) -> Vec<Change> {
        let mut gone: Vec<Record> = Vec::new();
        if let Some(u) = self.users.remove(name) {
            gone.push(Record::User(u));
        }
        take_where(
            &mut self.permissions,
            &mut gone,
            |p| p.user == name,
            Record::Permission,
        );
        take_where(
            &mut self.topic_permissions,
            &mut gone,
            |t| t.user == name,
            Record::TopicPermission,
        );
        gone.into_iter().map(|r| (r.key(), None)).collect()
    }

    /// Removes a vhost's settings and everything stored for it; the changes that remove them.
    pub fn remove_vhost(&mut self, name: &str) -> Vec<Change> {
        let mut gone: Vec<Record> = Vec::new();
        if let Some(v) = self.vhosts.remove(name) {
            gone.push(Record::VHost(v));
        }
        take_where(
            &mut self.permissions,
            &mut gone,
            |p| p.vhost == name,
            Record::Permission,
        );
        take_where(
            &mut self.topic_permissions,
            &mut gone,
            |t| t.vhost == name,
            Record::TopicPermission,
        );
        take_where(
            &mut self.policies,
            &mut gone,
            |p| p.vhost == name,
            Record::Policy,
        );
        take_where(
            &mut self.operator_policies,
            &mut gone,
            |p| p.vhost == name,
            Record::OperatorPolicy,
        );
        take_where(
            &mut self.parameters,
            &mut gone,
            |p| p.vhost == name,
            Record::Parameter,
        );
        gone.into_iter().map(|r| (r.key(), None)).collect()
    }
}

/// Moves the values of `map` that `which` picks into `gone`, as records.
fn take_where<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    gone: &mut Vec<Record>,
    which: impl Fn(&V) -> bool,
    record: impl Fn(V) -> Record,
) {
    let all = std::mem::take(map);
    for (k, v) in all {
        if which(&v) {
            gone.push(record(v));
        } else {
            map.insert(k, v);
        }
    }
}

/// Whether every pattern compiles as it will be used (with `{username}` and `{vhost}` in
/// place); the error names the pattern.
pub fn check_patterns(user: &str, vhost: &str, patterns: &[&str]) -> Result<(), String> {
    for pattern in patterns {
        let expanded = pattern
            .replace("{username}", user)
            .replace("{vhost}", vhost);
        if let Err(e) = regex::Regex::new(&expanded) {
            return Err(format!("invalid regular expression '{pattern}': {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_dir_is_seeded_once_from_the_config() {
        let config = Config::default();
        let (registry, damaged, changes) = Registry::restore(&config, &[]);
        assert_eq!(damaged, 0);
        assert!(registry.users["guest"].has_tag("administrator"));
        assert!(registry.compile("guest", "/").is_some());
        let stored: Vec<_> = changes
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let mut other = config.clone();
        other.users.clear();
        let (again, _, changes) = Registry::restore(&other, &stored);
        assert!(changes.is_empty(), "a seeded dir is not seeded again");
        assert!(again.users.contains_key("guest"));
        assert_eq!(again.vhosts.len(), 1);
    }

    #[test]
    fn removing_a_user_removes_their_permissions() {
        let mut registry = Registry::from_config(&Config::default());
        registry.put(Record::TopicPermission(TopicPermissionRecord {
            user: "guest".into(),
            vhost: "/".into(),
            exchange: "amq.topic".into(),
            write: "^a".into(),
            read: ".*".into(),
        }));
        let changes = registry.remove_user("guest");
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().all(|(_, v)| v.is_none()));
        assert!(registry.compile("guest", "/").is_none());
        assert!(registry.topic_permissions.is_empty());
    }

    #[test]
    fn damaged_records_are_counted_not_fatal() {
        let stored = vec![
            (b"au\0x".to_vec(), b"{not json".to_vec()),
            (SEEDED_KEY.to_vec(), Vec::new()),
        ];
        let (registry, damaged, changes) = Registry::restore(&Config::default(), &stored);
        assert_eq!((damaged, changes.len()), (1, 0));
        assert!(registry.users.is_empty());
    }
}
