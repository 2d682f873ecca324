//! Access control as RabbitMQ's internal backend does it: per user and vhost, three regular
//! expressions (configure, write, read) matched against a resource's name, unanchored. The empty
//! pattern grants nothing (RabbitMQ reads it as `^$`); `.*` everywhere is the common case and
//! costs no match at all.

use regex::Regex;

use crate::protocol::error::{ChannelError, code};

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Declare and delete.
    Configure,
    /// Publish to, bind to.
    Write,
    /// Consume from, get, purge, bind from.
    Read,
}

/// The kind of resource, as RabbitMQ names it in its refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A queue.
    Queue,
    /// An exchange (the default one is checked as `amq.default`).
    Exchange,
}

/// One pattern: everything, or a regular expression.
#[derive(Debug, Clone)]
enum Pattern {
    All,
    Nothing,
    Matching(Regex),
}

impl Pattern {
    fn new(pattern: &str) -> Result<Self, String> {
        match pattern {
            ".*" => Ok(Self::All),
            "" => Regex::new("^$")
                .map(Self::Matching)
                .map_err(|e| e.to_string()),
            p => Regex::new(p)
                .map(Self::Matching)
                .map_err(|e| format!("invalid regular expression '{p}': {e}")),
        }
    }

    /// Matches nothing.
    fn none() -> Self {
        Self::Nothing
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Nothing => false,
            Self::Matching(r) => r.is_match(name),
        }
    }
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permissions {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
    /// Topic permissions, by exchange: write and read patterns on routing and binding keys.
    topics: Vec<(String, Pattern, Pattern)>,
}

impl Permissions {
    /// Nothing: what a user whose permissions were cleared may still do on a live connection.
    pub fn none() -> Self {
        Self {
            configure: Pattern::none(),
            write: Pattern::none(),
            read: Pattern::none(),
            topics: Vec::new(),
        }
    }

    /// Everything (`.*` for all three).
    pub fn all() -> Self {
        Self {
            configure: Pattern::All,
            write: Pattern::All,
            read: Pattern::All,
            topics: Vec::new(),
        }
    }

    /// Adds topic permissions on `exchange`: `write` for the routing keys published to it, `read`
    /// for the binding keys bound from it. `{username}` and `{vhost}` in a pattern stand for the
    /// user's name and the vhost's, as in RabbitMQ.
    pub fn with_topic(
        mut self,
        exchange: &str,
        write: &str,
        read: &str,
        user: &str,
        vhost: &str,
    ) -> Result<Self, String> {
        let expand = |p: &str| p.replace("{username}", user).replace("{vhost}", vhost);
        self.topics.push((
            exchange.to_string(),
            Pattern::new(&expand(write))?,
            Pattern::new(&expand(read))?,
        ));
        Ok(self)
    }

    /// Whether any topic permission is set (most users have none: nothing to look up).
    pub fn has_topics(&self) -> bool {
        !self.topics.is_empty()
    }

    /// Checks a topic permission: `Write` of a routing key published to the topic exchange
    /// `exchange`, `Read` of a key bound from it. An exchange without topic permissions allows
    /// every key.
    pub fn check_topic(
        &self,
        perm: Perm,
        exchange: &str,
        key: &str,
        vhost: &str,
        user: &str,
    ) -> Result<(), ChannelError> {
        let Some((_, write, read)) = self.topics.iter().find(|(x, ..)| x == exchange) else {
            return Ok(());
        };
        let pattern = if perm == Perm::Read { read } else { write };
        if pattern.matches(key) {
            return Ok(());
        }
        Err(ChannelError::new(
            code::ACCESS_REFUSED,
            format_args!(
                "access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
            ),
        ))
    }

    /// The permissions these three patterns grant; an error names a pattern that is not a
    /// regular expression.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, String> {
        Ok(Self {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
            topics: Vec::new(),
        })
    }

    /// Whether `perm` is granted on every resource (`.*`): nothing to check.
    pub fn grants_all(&self, perm: Perm) -> bool {
        matches!(self.pattern(perm), Pattern::All)
    }

    /// Whether `perm` is granted on a resource named `name`.
    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        self.pattern(perm).matches(name)
    }

    fn pattern(&self, perm: Perm) -> &Pattern {
        match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        }
    }

    /// Checks `perm` on a resource, refusing as RabbitMQ does: a 403 channel error. The default
    /// exchange (`""`) is checked under the name `amq.default`.
    pub fn check(
        &self,
        perm: Perm,
        resource: Resource,
        name: &str,
        vhost: &str,
        user: &str,
    ) -> Result<(), ChannelError> {
        let name = match (resource, name) {
            (Resource::Exchange, "") => "amq.default",
            _ => name,
        };
        if self.allows(perm, name) {
            return Ok(());
        }
        let kind = match resource {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        };
        Err(ChannelError::new(
            code::ACCESS_REFUSED,
            format_args!("access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_unanchored_and_the_empty_one_grants_nothing() {
        let p = Permissions::new("^app\\.", "", "log").expect("patterns");
        assert!(p.allows(Perm::Configure, "app.orders"));
        assert!(!p.allows(Perm::Configure, "other.app.orders"));
        assert!(!p.allows(Perm::Write, "anything"));
        assert!(p.allows(Perm::Read, "audit-log-1"));
        assert!(Permissions::new("(", ".*", ".*").is_err());
        let refused = p
            .check(Perm::Write, Resource::Exchange, "", "/", "u")
            .expect_err("refused");
        assert_eq!(refused.code(), code::ACCESS_REFUSED);
        assert!(
            refused.to_string().starts_with(
                "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'"
            ),
            "{refused}"
        );
    }
}
