//! Exchanges and their bindings, indexed per type so routing never scans every binding.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::headers::headers_match;
use super::topic::TopicTrie;
use crate::queue::Queue;

/// The routing algorithm of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every binding.
    Fanout,
    /// Dotted patterns with `*` and `#`.
    Topic,
    /// Header table matching.
    Headers,
}

impl ExchangeKind {
    /// The kind named by an `exchange.declare` type.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => Self::Direct,
            "fanout" => Self::Fanout,
            "topic" => Self::Topic,
            "headers" => Self::Headers,
            _ => return None,
        })
    }

    /// The type name, as declared.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A queue.
    Queue(Arc<Queue>),
    /// Another exchange (exchange-to-exchange binding), by name.
    Exchange(Arc<str>),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Queue(a), Self::Queue(b)) => Arc::ptr_eq(a, b),
            (Self::Exchange(a), Self::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

/// One binding from an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where it leads.
    pub destination: Destination,
    /// Its routing key (pattern for topic exchanges).
    pub routing_key: String,
    /// Its arguments (matched by headers exchanges).
    pub arguments: FieldTable,
}

/// A declared exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Its name.
    pub name: Arc<str>,
    /// Its type.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// An `x-delayed-message` exchange: it holds messages with an `x-delay` until due, then
    /// routes them as `kind` (its `x-delayed-type`) would.
    pub delayed: bool,
    /// Declared arguments.
    pub arguments: FieldTable,
    bindings: Vec<Binding>,
    direct: HashMap<String, Vec<Destination>>,
    topic: TopicTrie<Destination>,
}

impl Exchange {
    /// A new exchange without bindings.
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            delayed: false,
            arguments,
            bindings: Vec::new(),
            direct: HashMap::new(),
            topic: TopicTrie::new(),
        }
    }

    /// The same exchange as an `x-delayed-message` one routing as its kind.
    #[must_use]
    pub fn into_delayed(mut self) -> Self {
        self.delayed = true;
        self
    }

    /// The type it was declared with.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            super::delayed::EXCHANGE_TYPE
        } else {
            self.kind.as_str()
        }
    }

    /// The `alternate-exchange` argument, if any.
    pub fn alternate_exchange(&self) -> Option<&str> {
        match self.arguments.inner().get("alternate-exchange")? {
            amq_protocol::types::AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            amq_protocol::types::AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// All bindings from this exchange.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Adds a binding; false when an identical one exists.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.contains(&binding) {
            return false;
        }
        match self.kind {
            ExchangeKind::Direct => self
                .direct
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone()),
            ExchangeKind::Topic => {
                self.topic
                    .insert(&binding.routing_key, binding.destination.clone());
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        self.bindings.push(binding);
        true
    }

    /// Removes a binding; false when there was none.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(at) = self.bindings.iter().position(|b| b == binding) else {
            return false;
        };
        self.bindings.remove(at);
        self.unindex(binding);
        true
    }

    fn unindex(&mut self, binding: &Binding) {
        // Another binding may share destination and key (different arguments): keep the index entry.
        let still_indexed = self
            .bindings
            .iter()
            .any(|b| b.destination == binding.destination && b.routing_key == binding.routing_key);
        match self.kind {
            ExchangeKind::Direct if !still_indexed => {
                if let Some(v) = self.direct.get_mut(&binding.routing_key) {
                    v.retain(|d| *d != binding.destination);
                    if v.is_empty() {
                        self.direct.remove(&binding.routing_key);
                    }
                }
            }
            ExchangeKind::Topic if !still_indexed => {
                self.topic
                    .remove(&binding.routing_key, &binding.destination);
            }
            _ => {}
        }
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn remove_destination(&mut self, destination: &Destination) -> usize {
        let gone: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| b.destination == *destination)
            .cloned()
            .collect();
        for b in &gone {
            self.unbind(b);
        }
        gone.len()
    }

    /// Calls `f` for each destination the message routes to (possibly repeated).
    pub fn route(
        &self,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        f: &mut dyn FnMut(&Destination),
    ) {
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(ds) = self.direct.get(routing_key) {
                    ds.iter().for_each(f);
                }
            }
            ExchangeKind::Fanout => self.bindings.iter().for_each(|b| f(&b.destination)),
            ExchangeKind::Topic => self.topic.for_each_match(routing_key, f),
            ExchangeKind::Headers => {
                if self.bindings.is_empty() {
                    return;
                }
                let h = headers();
                for b in &self.bindings {
                    if headers_match(&b.arguments, h.as_ref()) {
                        f(&b.destination);
                    }
                }
            }
        }
    }
}
