//! Exchanges and their bindings, indexed per type so routing never scans every binding.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use hashbrown::HashTable;

use super::headers::headers_match;
use super::targets::Targets;
use super::topic::TopicTrie;
use crate::queue::Queue;
use crate::stats::Tracked;

/// The type name of an `x-delayed-message` exchange (see `delayed.rs`), which it reports
/// whatever kind it routes as.
pub const DELAYED_TYPE: &str = "x-delayed-message";

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

impl Eq for Destination {}

/// Hashes what `eq` compares: a queue by identity, an exchange by name.
impl Hash for Destination {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Self::Queue(q) => Arc::as_ptr(q).addr().hash(state),
            Self::Exchange(name) => name.hash(state),
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

/// Hashes a field table so that tables equal under `PartialEq` hash alike. A float adds only
/// its type: 0.0 equals -0.0 and NaN equals nothing, so no hash of its bits agrees with `==`.
fn hash_table(table: &FieldTable, state: &mut impl Hasher) {
    for (key, value) in table {
        key.hash(state);
        hash_value(value, state);
    }
}

fn hash_value(value: &AMQPValue, state: &mut impl Hasher) {
    std::mem::discriminant(value).hash(state);
    match value {
        AMQPValue::Boolean(v) => v.hash(state),
        AMQPValue::ShortShortInt(v) => v.hash(state),
        AMQPValue::ShortShortUInt(v) => v.hash(state),
        AMQPValue::ShortInt(v) => v.hash(state),
        AMQPValue::ShortUInt(v) => v.hash(state),
        AMQPValue::LongInt(v) => v.hash(state),
        AMQPValue::LongUInt(v) => v.hash(state),
        AMQPValue::LongLongInt(v) => v.hash(state),
        AMQPValue::Timestamp(v) => v.hash(state),
        AMQPValue::DecimalValue(v) => v.hash(state),
        AMQPValue::ShortString(v) => v.hash(state),
        AMQPValue::LongString(v) => v.hash(state),
        AMQPValue::ByteArray(v) => v.hash(state),
        AMQPValue::FieldArray(values) => {
            for v in values.as_slice() {
                hash_value(v, state);
            }
        }
        AMQPValue::FieldTable(t) => hash_table(t, state),
        AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::Void => {}
    }
}

/// Where the binding at the same position in `Exchange::bindings` is indexed.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// Its identity hash (destination, routing key, arguments), its key in `Exchange::identity`.
    hash: u64,
    /// Its position in its destination's list in `Exchange::by_destination`.
    slot: usize,
}

/// A declared exchange.
///
/// Every per-binding operation costs the same with one binding or a million: a binding is found
/// by its identity hash, the bindings to one destination are listed apart, and removal swaps the
/// last binding into the gap (routing sorts what it finds, so binding order is not observable).
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
    /// The alternate exchange a policy names, used where the arguments name none.
    pub policy_alternate: Option<String>,
    /// Messages published in and routed out, and their samples.
    pub stats: Arc<Tracked>,
    bindings: Vec<Binding>,
    places: Vec<Place>,
    /// Positions in `bindings`, by identity hash; equality is `Binding`'s own `PartialEq`, so
    /// bindings are told apart exactly as a scan of the list would.
    identity: HashTable<usize>,
    hasher: RandomState,
    /// Positions in `bindings` of each destination's bindings.
    by_destination: HashMap<Destination, Vec<usize>>,
    direct: HashMap<String, Targets<Destination>>,
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
            policy_alternate: None,
            stats: Arc::default(),
            bindings: Vec::new(),
            places: Vec::new(),
            identity: HashTable::new(),
            hasher: RandomState::new(),
            by_destination: HashMap::new(),
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
            DELAYED_TYPE
        } else {
            self.kind.as_str()
        }
    }

    /// The alternate exchange: the `alternate-exchange` argument, else its policy's.
    pub fn alternate_exchange(&self) -> Option<&str> {
        let argument = match self.arguments.inner().get("alternate-exchange") {
            Some(amq_protocol::types::AMQPValue::LongString(s)) => {
                std::str::from_utf8(s.as_bytes()).ok()
            }
            Some(amq_protocol::types::AMQPValue::ShortString(s)) => Some(s.as_str()),
            _ => None,
        };
        argument.or(self.policy_alternate.as_deref())
    }

    /// All bindings from this exchange.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// True when an identical binding exists.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.position(binding).is_some()
    }

    /// True when some binding leads to `destination`.
    pub fn binds_to(&self, destination: &Destination) -> bool {
        self.by_destination.contains_key(destination)
    }

    fn identity_hash(&self, binding: &Binding) -> u64 {
        let mut state = self.hasher.build_hasher();
        binding.destination.hash(&mut state);
        binding.routing_key.hash(&mut state);
        hash_table(&binding.arguments, &mut state);
        state.finish()
    }

    fn position(&self, binding: &Binding) -> Option<usize> {
        let hash = self.identity_hash(binding);
        self.identity
            .find(hash, |&at| self.bindings[at] == *binding)
            .copied()
    }

    /// Adds a binding; false when an identical one exists.
    pub fn bind(&mut self, binding: Binding) -> bool {
        let hash = self.identity_hash(&binding);
        let bindings = &self.bindings;
        if self
            .identity
            .find(hash, |&at| bindings[at] == binding)
            .is_some()
        {
            return false;
        }
        match self.kind {
            ExchangeKind::Direct => {
                self.direct
                    .entry(binding.routing_key.clone())
                    .or_default()
                    .add(binding.destination.clone());
            }
            ExchangeKind::Topic => {
                self.topic
                    .insert(&binding.routing_key, binding.destination.clone());
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        let at = self.bindings.len();
        let slots = self
            .by_destination
            .entry(binding.destination.clone())
            .or_default();
        let slot = slots.len();
        slots.push(at);
        self.places.push(Place { hash, slot });
        self.bindings.push(binding);
        let places = &self.places;
        self.identity.insert_unique(hash, at, |&at| places[at].hash);
        true
    }

    /// Removes a binding; false when there was none.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        match self.position(binding) {
            Some(at) => {
                self.remove_at(at);
                true
            }
            None => false,
        }
    }

    /// Removes the binding at `at`, moving the last binding into its place.
    fn remove_at(&mut self, at: usize) -> Binding {
        let place = self.places[at];
        if let Ok(entry) = self.identity.find_entry(place.hash, |&p| p == at) {
            entry.remove();
        }
        let last = self.bindings.len() - 1;
        let binding = self.bindings.swap_remove(at);
        self.places.swap_remove(at);
        if at != last {
            let moved = self.places[at];
            if let Some(p) = self.identity.find_mut(moved.hash, |&p| p == last) {
                *p = at;
            }
            if let Some(slots) = self.by_destination.get_mut(&self.bindings[at].destination) {
                slots[moved.slot] = at;
            }
        }
        if let Some(slots) = self.by_destination.get_mut(&binding.destination) {
            slots.swap_remove(place.slot);
            match slots.get(place.slot) {
                Some(&moved) => self.places[moved].slot = place.slot,
                None if slots.is_empty() => {
                    self.by_destination.remove(&binding.destination);
                }
                None => {}
            }
        }
        self.unindex(&binding);
        binding
    }

    fn unindex(&mut self, binding: &Binding) {
        // The routing index counts bindings per (key, destination), so one that differs only in
        // its arguments keeps the entry alive.
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(targets) = self.direct.get_mut(&binding.routing_key) {
                    targets.remove(&binding.destination);
                    if targets.is_empty() {
                        self.direct.remove(&binding.routing_key);
                    }
                }
            }
            ExchangeKind::Topic => {
                self.topic
                    .remove(&binding.routing_key, &binding.destination);
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
    }

    /// Removes every binding to `destination` and returns them, in time linear in their number.
    pub fn remove_destination(&mut self, destination: &Destination) -> Vec<Binding> {
        let mut gone = Vec::new();
        // The last slot goes first, so no other slot of this destination moves.
        while let Some(&at) = self
            .by_destination
            .get(destination)
            .and_then(|slots| slots.last())
        {
            gone.push(self.remove_at(at));
        }
        gone
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
                if let Some(targets) = self.direct.get(routing_key) {
                    targets.iter().for_each(f);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueOptions;

    /// As many bindings as the issue asked for: a scan per bind makes them take hours, while
    /// keyed lookups bind and unbind them in seconds even unoptimised.
    const MANY: usize = 1_000_000;

    /// Fewer destinations under one pattern: each is a queue-like target with its own index
    /// entry, and the structure checked is the same at any size.
    const DESTINATIONS: usize = 200_000;

    fn exchange(kind: ExchangeKind) -> Exchange {
        Exchange::new("x", kind, false, false, false, FieldTable::default())
    }

    fn queue(name: &str) -> Destination {
        Destination::Queue(Queue::new(name.into(), "/".into(), QueueOptions::default()))
    }

    fn to(destination: &Destination, routing_key: &str) -> Binding {
        Binding {
            destination: destination.clone(),
            routing_key: routing_key.into(),
            arguments: FieldTable::default(),
        }
    }

    fn with_args(destination: &Destination, args: &[(&str, AMQPValue)]) -> Binding {
        let mut arguments = FieldTable::default();
        for (k, v) in args {
            arguments.insert((*k).into(), v.clone());
        }
        Binding {
            destination: destination.clone(),
            routing_key: String::new(),
            arguments,
        }
    }

    fn routed(x: &Exchange, routing_key: &str) -> usize {
        let mut n = 0;
        x.route(routing_key, &mut || None, &mut |_| n += 1);
        n
    }

    /// Every binding is found by a keyed lookup at its own place, and listed once under its
    /// destination: what makes binding, unbinding and removing a destination cost no scan.
    fn assert_indexed(x: &Exchange) {
        assert_eq!(x.identity.len(), x.bindings.len());
        assert_eq!(x.places.len(), x.bindings.len());
        for (at, b) in x.bindings.iter().enumerate() {
            assert_eq!(x.position(b), Some(at));
            assert_eq!(x.by_destination[&b.destination][x.places[at].slot], at);
        }
        let listed: usize = x.by_destination.values().map(Vec::len).sum();
        assert_eq!(listed, x.bindings.len());
    }

    /// A visiting order unlike the binding order, so removals hit every place in the list.
    fn scrambled(n: usize) -> impl Iterator<Item = usize> {
        (0..n).map(move |i| (i * 7919) % n)
    }

    #[test]
    fn a_million_direct_bindings_are_found_by_key() {
        let mut x = exchange(ExchangeKind::Direct);
        let q = queue("q");
        for i in 0..MANY {
            assert!(x.bind(to(&q, &format!("k{i}"))));
        }
        assert!(!x.bind(to(&q, "k0")));
        assert!(!x.bind(to(&q, &format!("k{}", MANY - 1))));
        assert_eq!(x.bindings().len(), MANY);
        assert_indexed(&x);
        assert_eq!(routed(&x, "k123456"), 1);

        for i in scrambled(MANY).filter(|i| i % 2 == 0) {
            assert!(x.unbind(&to(&q, &format!("k{i}"))));
        }
        assert!(!x.unbind(&to(&q, "k0")));
        assert_eq!(x.bindings().len(), MANY / 2);
        assert_indexed(&x);
        assert_eq!(routed(&x, "k2"), 0);
        assert_eq!(routed(&x, "k3"), 1);

        assert_eq!(x.remove_destination(&q).len(), MANY / 2);
        assert!(x.bindings().is_empty() && x.direct.is_empty() && !x.binds_to(&q));
        assert_indexed(&x);
    }

    #[test]
    fn many_destinations_under_one_topic_pattern() {
        let mut x = exchange(ExchangeKind::Topic);
        let destinations: Vec<Destination> = (0..DESTINATIONS)
            .map(|i| Destination::Exchange(format!("e{i}").into()))
            .collect();
        for d in &destinations {
            assert!(x.bind(to(d, "a.*")));
        }
        assert!(!x.bind(to(&destinations[DESTINATIONS / 2], "a.*")));
        assert_eq!(x.topic.len(), DESTINATIONS);
        assert_indexed(&x);
        assert_eq!(routed(&x, "a.b"), DESTINATIONS);

        for i in scrambled(DESTINATIONS).filter(|i| i % 2 == 1) {
            assert_eq!(x.remove_destination(&destinations[i]).len(), 1);
        }
        assert_indexed(&x);
        assert_eq!(routed(&x, "a.b"), DESTINATIONS / 2);
        for i in scrambled(DESTINATIONS).filter(|i| i % 2 == 0) {
            assert!(x.unbind(&to(&destinations[i], "a.*")));
        }
        assert!(x.bindings().is_empty() && x.topic.is_empty());
        assert_eq!(routed(&x, "a.b"), 0);
    }

    #[test]
    fn one_destination_among_many_goes_without_the_others() {
        let mut x = exchange(ExchangeKind::Fanout);
        let (a, b) = (queue("a"), queue("b"));
        for i in 0..1000 {
            x.bind(to(if i % 3 == 0 { &a } else { &b }, &i.to_string()));
        }
        assert_eq!(x.remove_destination(&a).len(), 334);
        assert!(!x.binds_to(&a) && x.binds_to(&b));
        assert_eq!(x.bindings().len(), 666);
        assert_indexed(&x);
        assert_eq!(routed(&x, ""), 666);
    }

    #[test]
    fn bindings_differing_only_in_arguments_share_a_route() {
        let mut x = exchange(ExchangeKind::Direct);
        let q = queue("q");
        let plain = to(&q, "k");
        let mut tagged = to(&q, "k");
        tagged.arguments.insert("tag".into(), AMQPValue::LongInt(1));
        assert!(x.bind(plain.clone()));
        assert!(x.bind(tagged.clone()));
        assert_eq!(routed(&x, "k"), 1);
        assert!(x.unbind(&plain));
        assert_eq!(routed(&x, "k"), 1);
        assert!(x.unbind(&tagged));
        assert_eq!(routed(&x, "k"), 0);
        assert_indexed(&x);
    }

    #[test]
    fn arguments_tell_bindings_apart_as_equality_does() {
        let mut x = exchange(ExchangeKind::Headers);
        let q = queue("q");
        for i in 0..10_000 {
            let b = with_args(
                &q,
                &[
                    ("x-match", AMQPValue::LongString("all".into())),
                    ("id", AMQPValue::LongLongInt(i)),
                ],
            );
            assert!(x.bind(b.clone()));
            assert!(!x.bind(b));
        }
        // 0.0 == -0.0, so these are one binding; a short and a long string are two.
        assert!(x.bind(with_args(&q, &[("f", AMQPValue::Double(0.0))])));
        assert!(!x.bind(with_args(&q, &[("f", AMQPValue::Double(-0.0))])));
        assert!(x.bind(with_args(&q, &[("s", AMQPValue::LongString("v".into()))])));
        assert!(x.bind(with_args(&q, &[("s", AMQPValue::ShortString("v".into()))])));
        let nested =
            AMQPValue::FieldArray(vec![AMQPValue::Float(1.5), AMQPValue::Boolean(true)].into());
        assert!(x.bind(with_args(&q, &[("n", nested.clone())])));
        assert!(!x.bind(with_args(&q, &[("n", nested.clone())])));
        assert_eq!(x.bindings().len(), 10_004);
        assert_indexed(&x);
        assert!(x.unbind(&with_args(&q, &[("f", AMQPValue::Double(-0.0))])));
        assert!(x.unbind(&with_args(&q, &[("n", nested)])));
        assert_eq!(x.bindings().len(), 10_002);
        assert_indexed(&x);
    }
}
