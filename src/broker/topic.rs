//! Topic exchange routing: a word trie matching AMQP routing keys against `*`/`#` binding patterns.

use std::collections::HashMap;
use std::hash::Hash;
use std::ptr;

use super::targets::Targets;

/// How many match states fit on the stack before `for_each_match` spills to the heap.
const INLINE_STATES: usize = 16;

/// Bindings of a topic exchange, indexed by pattern word so routing never scans every pattern.
///
/// Words are split on '.' exactly as RabbitMQ does: the empty string has zero
/// words, while "a..b" and "a." contain empty words, which are ordinary words.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Targets<T>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            children: HashMap::new(),
            star: None,
            hash: None,
            values: Targets::default(),
        }
    }

    fn edge_count(&self) -> usize {
        self.children.len() + usize::from(self.star.is_some()) + usize::from(self.hash.is_some())
    }

    fn child(&self, word: &str) -> Option<&Node<T>> {
        match word {
            "*" => self.star.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(word),
        }
    }

    fn child_mut(&mut self, word: &str) -> Option<&mut Node<T>> {
        match word {
            "*" => self.star.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(word),
        }
    }

    fn child_or_insert(&mut self, word: &str) -> &mut Node<T> {
        match word {
            "*" => self.star.get_or_insert_with(|| Box::new(Node::new())),
            "#" => self.hash.get_or_insert_with(|| Box::new(Node::new())),
            _ => self.children.entry(word.into()).or_insert_with(Node::new),
        }
    }

    fn remove_child(&mut self, word: &str) {
        match word {
            "*" => self.star = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(word);
            }
        }
    }
}

/// Splits like RabbitMQ's `split_topic_key`: "" is zero words, not one empty word.
fn words(s: &str) -> impl Iterator<Item = &str> + Clone {
    let mut it = s.split('.');
    if s.is_empty() {
        it.next();
    }
    it
}

/// A position in the pattern trie; `in_hash` marks that we sit on a `#` node,
/// which may keep absorbing words without moving.
struct State<'a, T> {
    node: &'a Node<T>,
    in_hash: bool,
}

// Manual impls: deriving would needlessly require `T: Clone`/`T: Copy`.
impl<T> Clone for State<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for State<'_, T> {}

/// Set of active match states; stays on the stack unless a key fans out widely.
struct StateSet<'a, T> {
    inline: [Option<State<'a, T>>; INLINE_STATES],
    inline_len: usize,
    spill: Vec<State<'a, T>>,
}

impl<'a, T> StateSet<'a, T> {
    fn new() -> Self {
        StateSet {
            inline: [None; INLINE_STATES],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.inline = [None; INLINE_STATES];
        self.inline_len = 0;
        self.spill.clear();
    }

    fn is_empty(&self) -> bool {
        self.inline_len == 0
    }

    fn iter(&self) -> impl Iterator<Item = State<'a, T>> + '_ {
        self.inline[..self.inline_len]
            .iter()
            .flatten()
            .copied()
            .chain(self.spill.iter().copied())
    }

    fn contains_hash(&self, node: &Node<T>) -> bool {
        self.iter().any(|s| s.in_hash && ptr::eq(s.node, node))
    }

    fn push(&mut self, state: State<'a, T>) {
        if self.inline_len < INLINE_STATES {
            self.inline[self.inline_len] = Some(state);
            self.inline_len += 1;
        } else {
            self.spill.push(state);
        }
    }

    /// Adds a state plus the `#` children reachable by matching zero words.
    ///
    /// Only `#` states can be reached twice in one step (via their parent and via
    /// their own self-loop), so only they are deduplicated; every other node has a
    /// single parent edge and therefore appears at most once. Deduplicating is what
    /// keeps "#.#" and "#.a.#.a.#" linear in the key length instead of exponential.
    fn add(&mut self, node: &'a Node<T>, in_hash: bool) {
        let mut state = State { node, in_hash };
        loop {
            if state.in_hash && self.contains_hash(state.node) {
                return;
            }
            self.push(state);
            match state.node.hash.as_deref() {
                Some(next) => {
                    state = State {
                        node: next,
                        in_hash: true,
                    }
                }
                None => return,
            }
        }
    }
}

impl<T: Clone + Eq + Hash> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// Creates an empty trie.
    pub fn new() -> Self {
        TopicTrie {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds `value` under `pattern`; returns false if that exact pair was already present, in
    /// which case it is counted and stays until removed as many times as it was inserted.
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut node = &mut self.root;
        for word in words(pattern) {
            node = node.child_or_insert(word);
        }
        let added = node.values.add(value);
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes one insertion of `value` under `pattern`, pruning nodes left empty; returns false
    /// if absent.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let mut node = &mut self.root;
        for word in words(pattern) {
            match node.child_mut(word) {
                Some(child) => node = child,
                None => return false,
            }
        }
        match node.values.remove(value) {
            None => false,
            Some(false) => true,
            Some(true) => {
                self.len -= 1;
                self.prune(pattern);
                true
            }
        }
    }

    /// Cuts the dead tail of `pattern`'s path in two passes, so removal needs
    /// neither recursion nor a recorded path.
    fn prune(&mut self, pattern: &str) {
        // Pass 1: find the deepest node that must survive; everything below it on
        // this path is a chain of nodes with no values and no other branches.
        let mut node = &self.root;
        let mut keep_depth = 0;
        let mut depth = 0;
        for word in words(pattern) {
            if !node.values.is_empty() || node.edge_count() > 1 {
                keep_depth = depth;
            }
            match node.child(word) {
                Some(child) => node = child,
                None => return,
            }
            depth += 1;
        }
        if depth == 0 || !node.values.is_empty() || node.edge_count() > 0 {
            return;
        }
        // Pass 2: walk to the survivor and drop its edge into the dead chain.
        let mut node = &mut self.root;
        for (i, word) in words(pattern).enumerate() {
            if i == keep_depth {
                node.remove_child(word);
                return;
            }
            match node.child_mut(word) {
                Some(child) => node = child,
                None => return,
            }
        }
    }

    /// Calls `f` once for every (pattern, value) pair whose pattern matches `routing_key`.
    ///
    /// A value bound under several matching patterns is reported once per pattern.
    pub fn for_each_match(&self, routing_key: &str, mut f: impl FnMut(&T)) {
        // Simulating the pattern automaton over all active states at once (rather
        // than backtracking per `#`) bounds the work by words × trie nodes.
        let mut current = StateSet::new();
        let mut next = StateSet::new();
        current.add(&self.root, false);
        for word in words(routing_key) {
            next.clear();
            for state in current.iter() {
                if state.in_hash {
                    next.add(state.node, true);
                }
                if let Some(child) = state.node.children.get(word) {
                    next.add(child, false);
                }
                if let Some(star) = state.node.star.as_deref() {
                    next.add(star, false);
                }
            }
            std::mem::swap(&mut current, &mut next);
            if current.is_empty() {
                return;
            }
        }
        for state in current.iter() {
            state.node.values.iter().for_each(&mut f);
        }
    }

    /// Returns true when no bindings are stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the number of (pattern, value) pairs stored.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(trie: &TopicTrie<&'static str>, key: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.for_each_match(key, |v| out.push(*v));
        out.sort_unstable();
        out
    }

    fn single(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::new();
        trie.insert(pattern, ());
        let mut n = 0;
        trie.for_each_match(key, |_| n += 1);
        n > 0
    }

    /// Reference matcher straight from the definition, used to cross-check the trie.
    fn naive(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|i| naive(rest, &key[i..])),
            Some((&"*", rest)) => !key.is_empty() && naive(rest, &key[1..]),
            Some((w, rest)) => key.first() == Some(w) && naive(rest, &key[1..]),
        }
    }

    fn naive_str(pattern: &str, key: &str) -> bool {
        let p: Vec<&str> = words(pattern).collect();
        let k: Vec<&str> = words(key).collect();
        naive(&p, &k)
    }

    #[test]
    fn rabbitmq_tutorial_five() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert("*.orange.*", "Q1"));
        assert!(trie.insert("*.*.rabbit", "Q2"));
        assert!(trie.insert("lazy.#", "Q2"));
        assert_eq!(trie.len(), 3);

        assert_eq!(matches(&trie, "quick.orange.rabbit"), ["Q1", "Q2"]);
        assert_eq!(matches(&trie, "lazy.orange.elephant"), ["Q1", "Q2"]);
        assert_eq!(matches(&trie, "quick.orange.fox"), ["Q1"]);
        assert_eq!(matches(&trie, "lazy.brown.fox"), ["Q2"]);
        // Matches two patterns bound to the same queue: reported once per pattern.
        assert_eq!(matches(&trie, "lazy.pink.rabbit"), ["Q2", "Q2"]);
        assert!(matches(&trie, "quick.brown.fox").is_empty());
        assert!(matches(&trie, "orange").is_empty());
        assert!(matches(&trie, "quick.orange.new.rabbit").is_empty());
        assert_eq!(matches(&trie, "lazy.orange.new.rabbit"), ["Q2"]);
    }

    #[test]
    fn hash_alone_matches_everything() {
        for key in ["", "a", "a.b", "a..b", ".", "x.y.z.w"] {
            assert!(single("#", key), "{key}");
            assert!(single("#.#", key), "{key}");
            assert!(single("#.#.#", key), "{key}");
        }
    }

    #[test]
    fn hash_at_start_middle_end() {
        assert!(single("#.b", "b"));
        assert!(single("#.b", "a.b"));
        assert!(single("#.b", "x.y.b"));
        assert!(!single("#.b", "b.c"));

        assert!(single("a.#.c", "a.c"));
        assert!(single("a.#.c", "a.b.c"));
        assert!(single("a.#.c", "a.b.b.c"));
        assert!(!single("a.#.c", "a.b"));
        assert!(!single("a.#.c", "c"));

        assert!(single("a.#", "a"));
        assert!(single("a.#", "a.b"));
        assert!(single("a.#", "a.b.c"));
        assert!(!single("a.#", "b"));
        assert!(!single("a.#", ""));
    }

    #[test]
    fn star_needs_exactly_one_word() {
        assert!(!single("a.*", "a"));
        assert!(single("a.*", "a.b"));
        assert!(!single("a.*", "a.b.c"));
        assert!(single("a.*", "a."));
        assert!(!single("*", ""));
        assert!(single("*", "x"));
        assert!(!single("*", "x.y"));
    }

    #[test]
    fn star_hash_combinations() {
        assert!(!single("*.#", ""));
        assert!(single("*.#", "a"));
        assert!(single("*.#", "a.b.c"));
        assert!(!single("#.*", ""));
        assert!(single("#.*", "a"));
        assert!(single("#.*", "a.b.c"));
        assert!(!single("#.*.*", "a"));
        assert!(single("#.*.*", "a.b"));
        assert!(single("#.#.a", "a"));
        assert!(single("#.#.a", "x.y.a"));
        assert!(!single("#.#.a", "x.y"));
        assert!(single("a.#.#.b", "a.b"));
        assert!(single("a.#.#.b", "a.x.y.z.b"));
    }

    #[test]
    fn empty_key_and_empty_words() {
        // RabbitMQ splits "" into zero words, so only "" and "#"-only patterns match it.
        assert!(single("", ""));
        assert!(!single("", "a"));
        assert!(!single("a", ""));
        assert!(single("a..b", "a..b"));
        assert!(!single("a..b", "a.b"));
        assert!(single("a.*.b", "a..b"));
        assert!(single(".", "."));
        assert!(single("*.*", "."));
        assert!(!single("*", "."));
        assert!(single("a.#", "a."));
        assert!(single("#", "..."));
    }

    #[test]
    fn literal_wildcard_words_in_key() {
        // A key word "*" or "#" is just a word; patterns still treat theirs as wildcards.
        assert!(single("*", "#"));
        assert!(single("#", "*"));
        assert!(!single("a", "*"));
    }

    #[test]
    fn each_pattern_reported_once_even_with_many_paths() {
        let mut trie = TopicTrie::new();
        trie.insert("#.a.#", 1);
        trie.insert("#.#", 2);
        let mut seen = Vec::new();
        trie.for_each_match("a.a.a.a", |v| seen.push(*v));
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    fn pathological_hash_chains_finish_quickly() {
        let pattern = vec!["#.a"; 60].join(".") + ".#";
        let key = vec!["a"; 200].join(".");
        let mut trie = TopicTrie::new();
        trie.insert(&pattern, ());
        let mut n = 0;
        trie.for_each_match(&key, |_| n += 1);
        assert_eq!(n, 1);
        let short = vec!["a"; 59].join(".");
        n = 0;
        trie.for_each_match(&short, |_| n += 1);
        assert_eq!(n, 0);
    }

    #[test]
    fn insert_duplicates_and_len() {
        let mut trie = TopicTrie::new();
        assert!(trie.is_empty());
        assert!(trie.insert("a.b", 1));
        assert!(!trie.insert("a.b", 1));
        assert!(trie.insert("a.b", 2));
        assert!(trie.insert("#", 1));
        assert!(trie.insert("#.#", 1));
        assert_eq!(trie.len(), 4);
        assert!(!trie.is_empty());
    }

    #[test]
    fn a_pair_inserted_twice_stays_until_removed_twice() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert("a.*", 1));
        assert!(!trie.insert("a.*", 1));
        assert!(trie.remove("a.*", &1));
        assert_eq!(matches_i(&trie, "a.b"), [1]);
        assert!(trie.remove("a.*", &1));
        assert!(matches_i(&trie, "a.b").is_empty());
        assert!(!trie.remove("a.*", &1));
        assert!(trie.is_empty());
        assert_eq!(trie.root.edge_count(), 0);
    }

    #[test]
    fn remove_and_prune() {
        let mut trie = TopicTrie::new();
        trie.insert("a.b.c", 1);
        trie.insert("a.b", 2);
        trie.insert("a.*.#", 3);
        trie.insert("", 4);

        assert!(!trie.remove("a.b.c", &99));
        assert!(!trie.remove("a.b.c.d", &1));
        assert!(!trie.remove("x", &1));

        assert!(trie.remove("a.b.c", &1));
        assert!(!trie.remove("a.b.c", &1));
        assert!(trie.root.children["a"].children["b"].children.is_empty());
        assert_eq!(trie.len(), 3);

        assert!(trie.remove("a.*.#", &3));
        assert!(trie.root.children["a"].star.is_none());
        assert!(trie.root.children.contains_key("a"));

        assert!(trie.remove("a.b", &2));
        assert!(trie.root.children.is_empty());

        assert!(trie.remove("", &4));
        assert!(trie.is_empty());
        assert_eq!(trie.root.edge_count(), 0);
        assert!(trie.root.values.is_empty());
    }

    #[test]
    fn remove_keeps_sibling_branches_and_shared_prefix() {
        let mut trie = TopicTrie::new();
        trie.insert("a.b.c.d", 1);
        trie.insert("a.x", 2);
        assert!(trie.remove("a.b.c.d", &1));
        assert!(!trie.root.children["a"].children.contains_key("b"));
        assert_eq!(matches_i(&trie, "a.x"), [2]);

        trie.insert("#.#", 5);
        trie.insert("#", 6);
        assert!(trie.remove("#.#", &5));
        assert!(trie.root.hash.as_ref().is_some_and(|h| h.hash.is_none()));
        assert_eq!(matches_i(&trie, "a.x"), [2, 6]);
    }

    fn matches_i(trie: &TopicTrie<i32>, key: &str) -> Vec<i32> {
        let mut out = Vec::new();
        trie.for_each_match(key, |v| out.push(*v));
        out.sort_unstable();
        out
    }

    /// Deterministic xorshift so the large test needs no RNG dependency or seed plumbing.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    const VOCAB: [&str; 6] = ["a", "b", "c", "d", "", "stock"];

    fn random_pattern(rng: &mut Rng) -> String {
        let len = rng.below(6);
        (0..len)
            .map(|_| match rng.below(10) {
                0 | 1 => "*",
                2 => "#",
                _ => VOCAB[rng.below(VOCAB.len() as u64)],
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    fn random_key(rng: &mut Rng) -> String {
        let len = rng.below(7);
        (0..len)
            .map(|_| VOCAB[rng.below(VOCAB.len() as u64)])
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn ten_thousand_bindings_agree_with_reference() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut trie = TopicTrie::new();
        let mut bindings = Vec::new();
        for i in 0..10_000usize {
            let pattern = if i % 2 == 0 {
                random_pattern(&mut rng)
            } else {
                // Half literal, mostly-unique keys, as real deployments tend to have.
                format!("tenant{}.{}.*", i, VOCAB[rng.below(VOCAB.len() as u64)])
            };
            if trie.insert(&pattern, i) {
                bindings.push((pattern, i));
            }
        }
        assert_eq!(trie.len(), bindings.len());

        let mut keys: Vec<String> = (0..300).map(|_| random_key(&mut rng)).collect();
        keys.extend([
            "tenant42.a.x".to_string(),
            "tenant43.b.".to_string(),
            String::new(),
        ]);
        for key in &keys {
            let mut got = Vec::new();
            trie.for_each_match(key, |v| got.push(*v));
            got.sort_unstable();
            let mut want: Vec<usize> = bindings
                .iter()
                .filter(|(p, _)| naive_str(p, key))
                .map(|(_, v)| *v)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "key {key:?}");
        }

        for (pattern, value) in bindings.iter().step_by(2) {
            assert!(trie.remove(pattern, value), "{pattern}");
        }
        let remaining: Vec<_> = bindings.iter().skip(1).step_by(2).collect();
        assert_eq!(trie.len(), remaining.len());
        for key in keys.iter().take(50) {
            let mut got = Vec::new();
            trie.for_each_match(key, |v| got.push(*v));
            got.sort_unstable();
            let mut want: Vec<usize> = remaining
                .iter()
                .filter(|(p, _)| naive_str(p, key))
                .map(|(_, v)| *v)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "key {key:?} after removals");
        }

        for (pattern, value) in remaining {
            assert!(trie.remove(pattern, value));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.root.edge_count(), 0);
    }
}
