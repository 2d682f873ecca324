//! Changing users, vhosts, permissions and limits at runtime, as the management API and
//! definitions do: each change is applied, written to the store and synced before it is
//! reported done, and its effects on live connections follow RabbitMQ's.

use std::sync::atomic::Ordering;

use tracing::info;

use super::admin::{
    self, Change, GlobalParameterRecord, MAX_CHANNELS, MAX_CONNECTIONS, MAX_QUEUES,
    ParameterRecord, PermissionRecord, PolicyRecord, Record, Registry, TopicPermissionRecord,
    UserRecord, VHostRecord,
};
use super::policy::PolicySet;
use super::{Broker, VHost};
use crate::protocol::{Limit, code};

/// Why a management change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManageError {
    /// What it names does not exist.
    NotFound,
    /// The request itself is wrong; the reason says how.
    BadRequest(String),
    /// The store could not write the change (it is applied in memory until a restart).
    Store,
}

impl Broker {
    /// The users, vhost settings, permissions and limits, to read.
    pub fn registry(&self) -> parking_lot::RwLockReadGuard<'_, Registry> {
        self.registry.read()
    }

    /// Applies `f` to the registry under its lock and stores the changes it returns, in order;
    /// waits until they are on disk.
    async fn change<T>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<(T, Vec<Change>), ManageError>,
    ) -> Result<T, ManageError> {
        let since = self.store.as_ref().map(|s| s.failures());
        let out = {
            let mut registry = self.registry.write();
            let (out, changes) = f(&mut registry)?;
            self.compiled.lock().clear();
            self.permissions_epoch.fetch_add(1, Ordering::Release);
            if let Some(store) = &self.store {
                for (key, value) in changes {
                    store.put_meta(key, value);
                }
            }
            out
        };
        if let (Some(store), Some(since)) = (&self.store, since)
            && !store.flushed(since).await
        {
            return Err(ManageError::Store);
        }
        Ok(out)
    }

    /// Creates or replaces a user; true if it was created.
    pub async fn put_user(&self, mut user: UserRecord) -> Result<bool, ManageError> {
        self.change(|r| {
            let old = r.users.get(&user.name);
            if let Some(old) = old {
                user.limits = old.limits.clone();
            }
            let created = old.is_none();
            let record = Record::User(user);
            let change = (record.key(), Some(record.encode()));
            r.put(record);
            Ok((created, vec![change]))
        })
        .await
    }

    /// Deletes a user and their permissions, and closes their connections.
    pub async fn delete_user(&self, name: &str) -> Result<(), ManageError> {
        self.change(|r| {
            if !r.users.contains_key(name) {
                return Err(ManageError::NotFound);
            }
            Ok(((), r.remove_user(name)))
        })
        .await?;
        info!(user = name, "user deleted");
        let text = format!("CONNECTION_FORCED - user '{name}' is deleted");
        self.close_where(|c| c.identity.user == name, &text);
        Ok(())
    }

    /// Creates or updates a vhost's settings (its limits stay); true if it was created.
    pub async fn put_vhost(&self, mut vhost: VHostRecord) -> Result<bool, ManageError> {
        let created = self
            .change(|r| {
                let old = r.vhosts.get(&vhost.name);
                if let Some(old) = old {
                    vhost.limits = old.limits.clone();
                }
                let created = old.is_none();
                let record = Record::VHost(vhost.clone());
                let change = (record.key(), Some(record.encode()));
                r.put(record);
                Ok((created, vec![change]))
            })
            .await?;
        if created {
            self.vhosts
                .write()
                .entry(vhost.name.clone())
                .or_insert_with(|| {
                    VHost::new(
                        &vhost.name,
                        self.store.clone(),
                        self.pager.clone(),
                        self.delayed.clone(),
                    )
                });
            info!(vhost = %vhost.name, "vhost created");
        }
        Ok(created)
    }

    /// Deletes a vhost with everything in it, and closes its connections.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), ManageError> {
        let vhost = self.vhosts.write().remove(name);
        let text = format!("CONNECTION_FORCED - vhost '{name}' is deleted");
        self.close_where(|c| &*c.identity.vhost == name, &text);
        if let Some(v) = &vhost {
            v.delete_all();
        }
        self.change(|r| {
            if vhost.is_none() && !r.vhosts.contains_key(name) {
                return Err(ManageError::NotFound);
            }
            Ok(((), r.remove_vhost(name)))
        })
        .await?;
        info!(vhost = name, "vhost deleted");
        Ok(())
    }

    /// Sets a user's permissions in a vhost; true if they had none there.
    pub async fn set_permissions(&self, p: PermissionRecord) -> Result<bool, ManageError> {
        admin::check_patterns(&p.user, &p.vhost, &[&p.configure, &p.write, &p.read])
            .map_err(ManageError::BadRequest)?;
        self.change(|r| {
            check_user_and_vhost(r, &p.user, &p.vhost)?;
            let created = !r
                .permissions
                .contains_key(&(p.vhost.clone(), p.user.clone()));
            let record = Record::Permission(p);
            let change = (record.key(), Some(record.encode()));
            r.put(record);
            Ok((created, vec![change]))
        })
        .await
    }

    /// Clears a user's permissions in a vhost (their connections stay open, as in RabbitMQ).
    pub async fn clear_permissions(&self, vhost: &str, user: &str) -> Result<(), ManageError> {
        self.change(|r| {
            let gone = r
                .permissions
                .remove(&(vhost.to_owned(), user.to_owned()))
                .ok_or(ManageError::NotFound)?;
            Ok(((), vec![(Record::Permission(gone).key(), None)]))
        })
        .await
    }

    /// Sets a user's topic permissions on one exchange of a vhost; true if they had no topic
    /// permissions in the vhost.
    pub async fn set_topic_permissions(
        &self,
        t: TopicPermissionRecord,
    ) -> Result<bool, ManageError> {
        admin::check_patterns(&t.user, &t.vhost, &[&t.write, &t.read])
            .map_err(ManageError::BadRequest)?;
        self.change(|r| {
            check_user_and_vhost(r, &t.user, &t.vhost)?;
            let created = !r
                .topic_permissions
                .keys()
                .any(|(v, u, _)| *v == t.vhost && *u == t.user);
            let record = Record::TopicPermission(t);
            let change = (record.key(), Some(record.encode()));
            r.put(record);
            Ok((created, vec![change]))
        })
        .await
    }

    /// Clears a user's topic permissions in a vhost: on one exchange, or on all of them.
    pub async fn clear_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> Result<(), ManageError> {
        self.change(|r| {
            let mut changes = Vec::new();
            r.topic_permissions.retain(|(v, u, x), t| {
                let keep = v != vhost || u != user || exchange.is_some_and(|e| e != x);
                if !keep {
                    changes.push((Record::TopicPermission(t.clone()).key(), None));
                }
                keep
            });
            if changes.is_empty() {
                return Err(ManageError::NotFound);
            }
            Ok(((), changes))
        })
        .await
    }

    /// Sets (a value) or clears (`None`) a vhost limit.
    pub async fn set_vhost_limit(
        &self,
        vhost: &str,
        limit: &str,
        value: Option<i64>,
    ) -> Result<(), ManageError> {
        check_limit(limit, &admin::VHOST_LIMITS)?;
        let record = self
            .change(|r| {
                let v = r.vhosts.get_mut(vhost).ok_or(ManageError::NotFound)?;
                set_limit(&mut v.limits, limit, value);
                let record = Record::VHost(v.clone());
                Ok((v.clone(), vec![(record.key(), Some(record.encode()))]))
            })
            .await?;
        if let Some(v) = self.vhost(vhost) {
            v.set_max_queues(record.limits.get(MAX_QUEUES).copied().unwrap_or(-1));
        }
        Ok(())
    }

    /// Sets (a value) or clears (`None`) a user limit.
    pub async fn set_user_limit(
        &self,
        user: &str,
        limit: &str,
        value: Option<i64>,
    ) -> Result<(), ManageError> {
        check_limit(limit, &admin::USER_LIMITS)?;
        self.change(|r| {
            let u = r.users.get_mut(user).ok_or(ManageError::NotFound)?;
            set_limit(&mut u.limits, limit, value);
            let record = Record::User(u.clone());
            Ok(((), vec![(record.key(), Some(record.encode()))]))
        })
        .await
    }

    /// Stores a record that replaces any of the same key; true if there was none. `vhost`, when
    /// given, must exist.
    async fn put_record(&self, record: Record, vhost: Option<&str>) -> Result<bool, ManageError> {
        self.change(|r| {
            if vhost.is_some_and(|v| !r.vhosts.contains_key(v)) {
                return Err(ManageError::NotFound);
            }
            let created = !r.contains(&record);
            let change = (record.key(), Some(record.encode()));
            r.put(record);
            Ok((created, vec![change]))
        })
        .await
    }

    /// Removes the record `find` takes out of the registry; 404 if there is none.
    async fn remove_record(
        &self,
        find: impl FnOnce(&mut Registry) -> Option<Record>,
    ) -> Result<(), ManageError> {
        self.change(|r| {
            let gone = find(r).ok_or(ManageError::NotFound)?;
            Ok(((), vec![(gone.key(), None)]))
        })
        .await
    }

    /// Stores records a definitions file brings, all in one change, and makes the vhosts it
    /// names; a user's limits and a vhost's limits stay as they are unless it sets them.
    pub async fn import_records(&self, records: Vec<Record>) -> Result<(), ManageError> {
        let new_vhosts: Vec<String> = records
            .iter()
            .filter_map(|r| match r {
                Record::VHost(v) => Some(v.name.clone()),
                _ => None,
            })
            .collect();
        self.change(|r| {
            let changes = records
                .into_iter()
                .map(|mut record| {
                    if let Record::User(u) = &mut record
                        && u.limits.is_empty()
                        && let Some(old) = r.users.get(&u.name)
                    {
                        u.limits = old.limits.clone();
                    }
                    let change = (record.key(), Some(record.encode()));
                    r.put(record);
                    change
                })
                .collect();
            Ok(((), changes))
        })
        .await?;
        {
            let mut vhosts = self.vhosts.write();
            for name in new_vhosts {
                vhosts.entry(name.clone()).or_insert_with(|| {
                    VHost::new(
                        &name,
                        self.store.clone(),
                        self.pager.clone(),
                        self.delayed.clone(),
                    )
                });
            }
        }
        for v in self.vhosts() {
            self.refresh_policies(&v.name);
        }
        Ok(())
    }

    /// Creates or replaces a policy, or an operator policy, and puts it in force; true if it
    /// was created.
    pub async fn put_policy(&self, p: PolicyRecord, operator: bool) -> Result<bool, ManageError> {
        let vhost = p.vhost.clone();
        let record = if operator {
            Record::OperatorPolicy(p)
        } else {
            Record::Policy(p)
        };
        let created = self.put_record(record, Some(&vhost)).await?;
        self.refresh_policies(&vhost);
        Ok(created)
    }

    /// Puts a vhost's policies, as the registry has them now, in force on its queues and
    /// exchanges.
    pub fn refresh_policies(&self, vhost: &str) {
        let Some(v) = self.vhost(vhost) else {
            return;
        };
        let set = {
            let r = self.registry.read();
            PolicySet::new(
                r.policies.values().filter(|p| p.vhost == vhost),
                r.operator_policies.values().filter(|p| p.vhost == vhost),
            )
        };
        v.set_policies(set);
    }

    /// Deletes a policy, or an operator policy.
    pub async fn delete_policy(
        &self,
        vhost: &str,
        name: &str,
        operator: bool,
    ) -> Result<(), ManageError> {
        let key = (vhost.to_owned(), name.to_owned());
        self.remove_record(|r| {
            if operator {
                r.operator_policies.remove(&key).map(Record::OperatorPolicy)
            } else {
                r.policies.remove(&key).map(Record::Policy)
            }
        })
        .await?;
        self.refresh_policies(vhost);
        Ok(())
    }

    /// Creates or replaces a runtime parameter; true if it was created.
    pub async fn put_parameter(&self, p: ParameterRecord) -> Result<bool, ManageError> {
        let vhost = p.vhost.clone();
        self.put_record(Record::Parameter(p), Some(&vhost)).await
    }

    /// Deletes a runtime parameter.
    pub async fn delete_parameter(
        &self,
        component: &str,
        vhost: &str,
        name: &str,
    ) -> Result<(), ManageError> {
        let key = (component.to_owned(), vhost.to_owned(), name.to_owned());
        self.remove_record(|r| r.parameters.remove(&key).map(Record::Parameter))
            .await
    }

    /// Creates or replaces a global parameter; true if it was created.
    pub async fn put_global_parameter(
        &self,
        g: GlobalParameterRecord,
    ) -> Result<bool, ManageError> {
        self.put_record(Record::GlobalParameter(g), None).await
    }

    /// Deletes a global parameter.
    pub async fn delete_global_parameter(&self, name: &str) -> Result<(), ManageError> {
        self.remove_record(|r| {
            r.global_parameters
                .remove(name)
                .map(Record::GlobalParameter)
        })
        .await
    }

    /// Whether `user` may open one more connection to `vhost`: the node's, the vhost's and the
    /// user's limits; the limit and the 530 refusal's text if not.
    pub fn check_connection_limits(&self, user: &str, vhost: &str) -> Result<(), (Limit, String)> {
        let node_max = self.config.connection_max;
        if node_max != 0 && self.connections.len() >= node_max as usize {
            return Err((
                Limit::NodeConnections,
                format!("connection refused: node connection limit ({node_max}) is reached"),
            ));
        }
        let (vhost_max, user_max) = {
            let r = self.registry.read();
            let limit = |limits: Option<&std::collections::BTreeMap<String, i64>>| {
                limits
                    .and_then(|l| l.get(MAX_CONNECTIONS))
                    .and_then(|&n| usize::try_from(n).ok())
            };
            (
                limit(r.vhosts.get(vhost).map(|v| &v.limits)),
                limit(r.users.get(user).map(|u| &u.limits)),
            )
        };
        if let Some(max) = vhost_max
            && self.connections.count(|c| &*c.identity.vhost == vhost) >= max
        {
            return Err((
                Limit::VhostConnections,
                format!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({max}) is reached"
                ),
            ));
        }
        if let Some(max) = user_max
            && self.connections.count(|c| c.identity.user == user) >= max
        {
            return Err((
                Limit::UserConnections,
                format!(
                    "connection refused for user '{user}': user connection limit ({max}) is reached"
                ),
            ));
        }
        Ok(())
    }

    /// Whether `user` may open one more channel; the 530 refusal's text if not.
    pub fn check_channel_limit(&self, user: &str) -> Result<(), String> {
        let max = self
            .registry
            .read()
            .users
            .get(user)
            .and_then(|u| u.limits.get(MAX_CHANNELS))
            .and_then(|&n| u32::try_from(n).ok());
        let Some(max) = max else {
            return Ok(());
        };
        let open: u32 = self
            .connections
            .list()
            .iter()
            .filter(|c| c.identity.user == user)
            .map(|c| c.channels())
            .sum();
        if open >= max {
            return Err(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
            ));
        }
        Ok(())
    }

    /// Closes every live connection `which` picks with 320 and `text`.
    fn close_where(
        &self,
        which: impl Fn(&super::connections::Registered) -> bool,
        text: &str,
    ) -> usize {
        let mut closed = 0;
        for c in self.connections.list() {
            if which(&c) && self.close_connection(c.id, code::CONNECTION_FORCED, text) {
                closed += 1;
            }
        }
        closed
    }
}

/// Refuses permissions for a user or vhost that does not exist, as RabbitMQ words it.
fn check_user_and_vhost(r: &Registry, user: &str, vhost: &str) -> Result<(), ManageError> {
    if r.users.contains_key(user) && r.vhosts.contains_key(vhost) {
        Ok(())
    } else {
        Err(ManageError::BadRequest("vhost_or_user_not_found".into()))
    }
}

/// Refuses a limit name that is not one of `known`.
fn check_limit(limit: &str, known: &[&str]) -> Result<(), ManageError> {
    if known.contains(&limit) {
        Ok(())
    } else {
        Err(ManageError::BadRequest(format!("unknown limit '{limit}'")))
    }
}

/// Sets or clears one limit (a negative value is kept and means none, as in RabbitMQ).
fn set_limit(
    limits: &mut std::collections::BTreeMap<String, i64>,
    limit: &str,
    value: Option<i64>,
) {
    match value {
        Some(v) => {
            limits.insert(limit.to_owned(), v);
        }
        None => {
            limits.remove(limit);
        }
    }
}
