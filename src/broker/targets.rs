//! The targets one routing key or topic pattern leads to, kept dense for routing and indexed
//! for binding and unbinding.

use std::collections::HashMap;
use std::hash::Hash;

/// Up to this many targets a scan finds one as fast as a hash lookup, and costs no index.
const SCAN_MAX: usize = 8;

/// Distinct targets in a dense list (what routing walks), each with the number of bindings that
/// lead to it: bindings that differ only in their arguments share one target.
///
/// Adding and removing a target costs the same whether the key has one target or a million: past
/// [`SCAN_MAX`] targets a hash index gives each one's place, and removal swaps the last target
/// into the gap, so the order of targets is not the order they were bound in.
#[derive(Debug, Clone)]
pub struct Targets<T> {
    /// Each target with its number of bindings, in one allocation per key.
    items: Vec<(T, usize)>,
    #[expect(
        clippy::box_collection,
        reason = "most keys never need an index: 8 bytes each instead of a 48-byte empty map"
    )]
    index: Option<Box<HashMap<T, usize>>>,
}

impl<T> Default for Targets<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            index: None,
        }
    }
}

impl<T: Clone + Eq + Hash> Targets<T> {
    /// The distinct targets, each once.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(target, _)| target)
    }

    /// True when no binding leads anywhere through this key.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn position(&self, target: &T) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(target).copied(),
            None => self.items.iter().position(|(t, _)| t == target),
        }
    }

    /// Counts one more binding leading to `target`; true when `target` is new here.
    pub fn add(&mut self, target: T) -> bool {
        if let Some(at) = self.position(&target) {
            self.items[at].1 += 1;
            return false;
        }
        let at = self.items.len();
        if self.index.is_none() && at == SCAN_MAX {
            let index = self.items.iter().map(|(t, _)| t.clone()).zip(0..).collect();
            self.index = Some(Box::new(index));
        }
        if let Some(index) = &mut self.index {
            index.insert(target.clone(), at);
        }
        self.items.push((target, 1));
        true
    }

    /// Counts one binding fewer leading to `target`: `None` when none did, `Some(true)` when
    /// that was the last one and `target` is gone from here.
    pub fn remove(&mut self, target: &T) -> Option<bool> {
        let at = self.position(target)?;
        if self.items[at].1 > 1 {
            self.items[at].1 -= 1;
            return Some(false);
        }
        self.items.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(target);
            if let Some((moved, _)) = self.items.get(at) {
                index.insert(moved.clone(), at);
            }
        }
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(t: &Targets<u32>) -> Vec<u32> {
        let mut v: Vec<u32> = t.iter().copied().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_target_goes_with_its_last_binding() {
        let mut t = Targets::default();
        assert!(t.add(1));
        assert!(!t.add(1));
        assert!(t.add(2));
        assert_eq!(sorted(&t), [1, 2]);
        assert_eq!(t.remove(&1), Some(false));
        assert_eq!(sorted(&t), [1, 2]);
        assert_eq!(t.remove(&1), Some(true));
        assert_eq!(t.remove(&1), None);
        assert_eq!(sorted(&t), [2]);
        assert_eq!(t.remove(&2), Some(true));
        assert!(t.is_empty());
    }

    #[test]
    fn indexed_and_scanned_targets_agree() {
        let mut t = Targets::default();
        for i in 0..100 {
            assert!(t.add(i));
        }
        assert!(t.index.is_some());
        assert!(!t.add(50));
        for i in (0..100).step_by(3) {
            assert_eq!(t.remove(&i), Some(true));
        }
        let want: Vec<u32> = (0..100).filter(|i| i % 3 != 0).collect();
        assert_eq!(sorted(&t), want);
        for (at, item) in t.iter().enumerate() {
            assert_eq!(t.position(item), Some(at));
        }
        assert_eq!(t.remove(&50), Some(false));
        assert_eq!(t.remove(&50), Some(true));
        assert_eq!(t.remove(&50), None);
    }
}
