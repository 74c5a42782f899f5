//! A layer of changes above the base (the overlay, or the frozen layer of a checkpoint): keys
//! with their entries, or tombstones (`None`) that hide a key below.
//!
//! A layer is two disjoint parts: a tree that takes new keys, and a sorted run (a vector with
//! fences, searched as the base is) that holds the tree's keys once the tree has grown to a
//! fraction of it ([`RUN_RATIO`]). A change to a key already in the run is made in place. So a
//! layer of a million keys, after a bulk load, is searched in a few cache lines of fences and
//! run instead of down a tree of a million nodes' worth of comparisons: measured on a load of
//! 1,000,000 keys in batches of 1,000 with no checkpoint (`benches/compare --profile-run w4b`),
//! random gets ran at 676k/s with the whole layer a tree and at 760-830k/s with the run (1.1M/s
//! once the block search stopped branching, `Probe::in_sorted`). A run also takes 64 bytes a
//! key, where a tree node's slack makes it about 90.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{fences_of, Entry, Key, Probe};

/// The tree is moved into the run once it holds this many keys and at least a
/// [`RUN_RATIO`]th of the run's: the merge copies the run, so each key is copied about
/// `RUN_RATIO` times on its way in, and the tree a lookup descends stays small.
///
/// Builds with the `sim` feature (the integration tests, the fuzz targets) compact from 64 keys
/// on, so every test that writes more than a handful of keys goes through runs, merges and
/// in-place changes; a release build, from 4,096.
const COMPACT_MIN: usize = if cfg!(any(test, feature = "sim")) { 64 } else { 4096 };
const RUN_RATIO: usize = 8;

/// One layer's entries by key, tombstones as `None`.
#[derive(Default)]
pub(crate) struct Layer {
    /// Keys not in `run`, as they arrived.
    tree: BTreeMap<Key, Option<Entry>>,
    /// Strictly ascending keys, none of them in `tree`.
    run: Vec<(Key, Option<Entry>)>,
    /// The prefix of every `FENCE_EVERY`th key of `run`.
    fences: Vec<u64>,
}

impl Layer {
    /// Keys in the run (tests: whether runs were exercised).
    #[cfg(test)]
    pub(crate) fn run_len(&self) -> usize {
        self.run.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tree.is_empty() && self.run.is_empty()
    }

    /// The item of the key `p` looks for: its entry, or `None` for a tombstone.
    ///
    /// The key is in the tree or in the run, never both: the larger part is searched first, as
    /// the likelier to hold it (after a bulk load, the run).
    pub(crate) fn get(&self, p: &Probe<'_>) -> Option<&Option<Entry>> {
        let in_run = || p.in_sorted(&self.run, &self.fences).map(|i| &self.run[i].1);
        if self.run.len() > self.tree.len() {
            in_run().or_else(|| p.in_tree(&self.tree))
        } else {
            p.in_tree(&self.tree).or_else(in_run)
        }
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut Option<Entry>> {
        let p = Probe::new(key);
        if let Some(i) = p.in_sorted(&self.run, &self.fences) {
            return Some(&mut self.run[i].1);
        }
        self.tree.get_mut(key)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(&Probe::new(key)).is_some()
    }

    /// Sets `key`'s item; returns the one it replaces in this layer.
    pub(crate) fn insert(&mut self, key: Key, item: Option<Entry>) -> Option<Option<Entry>> {
        let p = Probe::new(&key);
        if let Some(i) = p.in_sorted(&self.run, &self.fences) {
            return Some(std::mem::replace(&mut self.run[i].1, item));
        }
        let replaced = self.tree.insert(key, item);
        if replaced.is_none() && self.tree.len() >= COMPACT_MIN.max(self.run.len() / RUN_RATIO) {
            self.compact();
        }
        replaced
    }

    /// Sets `key`'s item unless the layer has one.
    pub(crate) fn insert_if_absent(&mut self, key: Key, item: Option<Entry>) {
        if !self.contains_key(&key) {
            self.insert(key, item);
        }
    }

    /// The layer no longer changes `key`. Only for a key nothing below the layer holds: a key in
    /// the run keeps a tombstone there, which hides nothing.
    pub(crate) fn forget(&mut self, key: &[u8]) {
        match Probe::new(key).in_sorted(&self.run, &self.fences) {
            Some(i) => self.run[i].1 = None,
            None => {
                self.tree.remove(key);
            }
        }
    }

    /// Keeps the items `keep` says to keep (it may change them).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Key, &mut Option<Entry>) -> bool) {
        self.tree.retain(|k, e| keep(k, e));
        let before = self.run.len();
        self.run.retain_mut(|(k, e)| keep(k, e));
        if self.run.len() != before {
            self.fences = fences_of(&self.run);
        }
    }

    /// Every item, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Option<Entry>)> {
        self.tree.iter().chain(self.run.iter().map(|(k, e)| (k, e)))
    }

    /// Every item, in key order, taken out of the layer.
    pub(crate) fn into_sorted(self) -> impl Iterator<Item = (Key, Option<Entry>)> {
        Merge::new(self.tree.into_iter().peekable(), self.run.into_iter().peekable())
    }

    /// The items with keys in `(lower, upper)`, in key order.
    pub(crate) fn range<'a>(&'a self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> LayerRange<'a> {
        let tree = self.tree.range::<[u8], _>((lower, upper));
        let from = match lower {
            Bound::Unbounded => 0,
            Bound::Included(l) => self.run.partition_point(|(k, _)| k.as_bytes() < l),
            Bound::Excluded(l) => self.run.partition_point(|(k, _)| k.as_bytes() <= l),
        };
        let to = match upper {
            Bound::Unbounded => self.run.len(),
            Bound::Included(u) => self.run.partition_point(|(k, _)| k.as_bytes() <= u),
            Bound::Excluded(u) => self.run.partition_point(|(k, _)| k.as_bytes() < u),
        };
        let tree: TreeItems<'a> = tree.map(|(k, e)| (k, *e));
        let run: RunItems<'a> = self.run[from..to.max(from)].iter().map(|(k, e)| (k, *e));
        Merge::new(tree.peekable(), run.peekable()).peekable()
    }

    /// Moves the tree into the run: one merge of two sorted, disjoint sequences, in place from
    /// the back (the run grows by the tree's length, and each item moves at most once, to a
    /// place at or after its own): no second array the size of the run, and no fresh memory to
    /// fault in but the growth.
    fn compact(&mut self) {
        let tree = std::mem::take(&mut self.tree);
        let old_len = self.run.len();
        let mut tree = tree.into_iter().rev().peekable();
        let filler = (Key::from(&[][..]), None);
        self.run.resize(old_len + tree.len(), filler);
        // `r`: how many run items are still unmoved (they are at 0..r); `w`: where the next
        // largest item goes.
        let (mut r, mut w) = (old_len, self.run.len());
        while let Some((tk, _)) = tree.peek() {
            w -= 1;
            if r > 0 && self.run[r - 1].0 > *tk {
                r -= 1;
                self.run.swap(r, w);
            } else if let Some(item) = tree.next() {
                self.run[w] = item;
            }
        }
        debug_assert_eq!(r, w, "the unmoved run items are in place");
        debug_assert!(self.run.windows(2).all(|w| w[0].0 < w[1].0), "the run's keys ascend");
        self.fences = fences_of(&self.run);
    }
}

type TreeItems<'a> = std::iter::Map<
    std::collections::btree_map::Range<'a, Key, Option<Entry>>,
    fn((&'a Key, &'a Option<Entry>)) -> (&'a Key, Option<Entry>),
>;
type RunItems<'a> = std::iter::Map<
    std::slice::Iter<'a, (Key, Option<Entry>)>,
    fn(&'a (Key, Option<Entry>)) -> (&'a Key, Option<Entry>),
>;

/// [`Layer::range`]'s items.
pub(crate) type LayerRange<'a> = std::iter::Peekable<Merge<TreeItems<'a>, RunItems<'a>>>;

/// Two iterators of items in ascending, disjoint keys, merged in key order.
pub(crate) struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator, B: Iterator> Merge<A, B> {
    fn new(a: std::iter::Peekable<A>, b: std::iter::Peekable<B>) -> Merge<A, B> {
        Merge { a, b }
    }
}

impl<K: std::borrow::Borrow<Key>, V, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (K, V)>,
    B: Iterator<Item = (K, V)>,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        let a_first = match (self.a.peek(), self.b.peek()) {
            (Some((ka, _)), Some((kb, _))) => {
                debug_assert!(ka.borrow() != kb.borrow(), "a layer's tree and run are disjoint");
                ka.borrow() < kb.borrow()
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        if a_first {
            self.a.next()
        } else {
            self.b.next()
        }
    }
}

#[cfg(test)]
mod tests {
    //! A layer against a `BTreeMap` model: random inserts, overwrites, tombstones, forgets,
    //! in-place changes and retains over enough keys to merge the tree into the run many times.

    use super::*;
    use crate::index::{entry_seq, Loc, Slot};

    fn entry(seq: u64) -> Entry {
        Entry {
            seq: entry_seq(seq),
            expires_at_ms: 0,
            loc: Loc {
                offset: seq,
                slot: Slot(0),
                len: 1,
                record_back: 0,
                record_len: 0,
            },
        }
    }

    /// The whole layer and a bounded range, in order, as the model (forgotten keys may stay as
    /// tombstones: what is not a tombstone is compared); `into_sorted` gives every key in order.
    fn check_in_order(layer: &mut Layer, model: &BTreeMap<Vec<u8>, Option<Entry>>, step: u64) {
        let all: Vec<(Vec<u8>, Entry)> = layer
            .range(Bound::Unbounded, Bound::Unbounded)
            .filter_map(|(k, e)| e.map(|e| (k.to_vec(), e)))
            .collect();
        let want: Vec<(Vec<u8>, Entry)> = model.iter().filter_map(|(k, e)| e.map(|e| (k.clone(), e))).collect();
        assert_eq!(all, want, "step {step}: the whole layer in order");
        let (lo, hi) = (b"12".as_slice(), b"5".as_slice());
        let part: Vec<Vec<u8>> = layer
            .range(Bound::Excluded(lo), Bound::Included(hi))
            .map(|(k, _)| k.to_vec())
            .collect();
        assert!(part.windows(2).all(|w| w[0] < w[1]), "step {step}: a range ascends");
        assert!(part.iter().all(|k| k.as_slice() > lo && k.as_slice() <= hi));
        let mut sorted: Vec<Vec<u8>> = layer.iter().map(|(k, _)| k.to_vec()).collect();
        sorted.sort();
        let merged: Vec<Vec<u8>> = std::mem::take(layer)
            .into_sorted()
            .map(|(k, e)| {
                layer.insert(k.clone(), e);
                k.to_vec()
            })
            .collect();
        assert_eq!(merged, sorted, "step {step}: into_sorted is every key in order");
    }

    #[test]
    fn a_layer_behaves_as_an_ordered_map_across_merges() {
        let (seed, mut next) = crate::index::tests::seeded();
        let check = std::panic::AssertUnwindSafe(|| {
            let mut layer = Layer::default();
            let mut model: BTreeMap<Vec<u8>, Option<Entry>> = BTreeMap::new();
            let mut merges = 0;
            for step in 0..20_000u64 {
                // Keys of 1 to 30 bytes (inline and heap), from a space that makes overwrites
                // common.
                let n = next() % 3_000;
                let key = format!("{n:0width$}", width = 1 + (n % 30) as usize).into_bytes();
                let runs_before = layer.run.len();
                match next() % 8 {
                    0..=2 => {
                        // (Compared as entries: where the model has nothing, a forgotten key may
                        // have left a tombstone.)
                        let e = entry(step + 1);
                        let (got, want) = (layer.insert(Key::from(&key[..]), Some(e)), model.insert(key, Some(e)));
                        assert_eq!(got.flatten(), want.flatten(), "step {step}: insert");
                    }
                    3 => {
                        let (got, want) = (layer.insert(Key::from(&key[..]), None), model.insert(key, None));
                        assert_eq!(got.flatten(), want.flatten(), "step {step}: tombstone");
                    }
                    4 => {
                        // A forgotten key's tombstone counts as present here: skip those.
                        if layer.contains_key(&key) == model.contains_key(&key) {
                            layer.insert_if_absent(Key::from(&key[..]), Some(entry(step + 1)));
                            model.entry(key).or_insert(Some(entry(step + 1)));
                        }
                    }
                    5 => {
                        // A forgotten key reads as a tombstone or as absent: both hide nothing.
                        layer.forget(&key);
                        model.remove(&key);
                        assert!(layer.get(&Probe::new(&key)).is_none_or(Option::is_none));
                        layer.forget(&key);
                    }
                    6 => {
                        let mine = layer.get_mut(&key).map(|e| {
                            *e = e.map(|e| Entry {
                                expires_at_ms: step,
                                ..e
                            });
                            *e
                        });
                        let theirs = model.get_mut(&key).map(|e| {
                            *e = e.map(|e| Entry {
                                expires_at_ms: step,
                                ..e
                            });
                            *e
                        });
                        assert_eq!(mine.flatten(), theirs.flatten(), "step {step}: get_mut");
                    }
                    _ if step % 500 == 0 => {
                        let keep = |k: &[u8]| k.len() % 7 != 3;
                        layer.retain(|k, _| keep(k));
                        model.retain(|k, _| keep(k));
                    }
                    _ => {
                        let got = layer.get(&Probe::new(&key)).copied();
                        let want = model.get(&key).copied();
                        assert_eq!(got.flatten(), want.flatten(), "step {step}: get");
                    }
                }
                merges += usize::from(layer.run.len() > runs_before && layer.tree.is_empty());
                if step % 1_000 == 999 {
                    check_in_order(&mut layer, &model, step);
                }
            }
            assert!(merges >= 5, "the tree was merged into the run {merges} times");
        });
        if let Err(panic) = std::panic::catch_unwind(check) {
            eprintln!("a_layer_behaves_as_an_ordered_map_across_merges failed with SESSIONDB_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}
