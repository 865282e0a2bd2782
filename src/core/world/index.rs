//! The World's small data structures: the pod index that is almost always one-to-one (a pod
//! by name, pods by session or execution key), the lists of records kept per key, and how
//! the World's maps give memory back once they have emptied.

use std::collections::hash_map::Entry;

use super::{HashMap, HashSet};

/// A map from a key to pod slots that is almost always one-to-one: the usual single slot
/// sits in `first` (4 bytes), the rare extra ones (a replacement pod next to a terminating
/// one, the same name in two namespaces) in `more`.
pub(super) struct PodIndex<K> {
    first: HashMap<K, u32>,
    more: HashMap<K, Vec<u32>>,
}

impl<K: std::hash::Hash + Eq + Clone> PodIndex<K> {
    pub(super) fn new() -> Self {
        PodIndex {
            first: HashMap::default(),
            more: HashMap::default(),
        }
    }

    pub(super) fn get<Q>(&self, key: &Q) -> impl Iterator<Item = u32> + '_
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let more = self.more.get(key).map(Vec::as_slice).unwrap_or_default();
        self.first
            .get(key)
            .copied()
            .into_iter()
            .chain(more.iter().copied())
    }

    pub(super) fn insert(&mut self, key: K, idx: u32) {
        match self.first.entry(key) {
            Entry::Vacant(v) => {
                v.insert(idx);
            }
            Entry::Occupied(o) if *o.get() == idx => {}
            Entry::Occupied(o) => {
                let list = self.more.entry(o.key().clone()).or_default();
                if !list.contains(&idx) {
                    list.push(idx);
                }
            }
        }
    }

    pub(super) fn remove(&mut self, key: &K, idx: u32) {
        if self.first.get(key) == Some(&idx) {
            match self.more.get_mut(key).and_then(Vec::pop) {
                Some(next) => {
                    self.first.insert(key.clone(), next);
                }
                None => {
                    self.first.remove(key);
                }
            }
        } else if let Some(list) = self.more.get_mut(key) {
            list.retain(|i| *i != idx);
        }
        if self.more.get(key).is_some_and(Vec::is_empty) {
            self.more.remove(key);
        }
    }
}

pub(super) fn vec_remove<K: std::hash::Hash + Eq, V: PartialEq>(
    map: &mut HashMap<K, Vec<V>>,
    key: &K,
    v: &V,
) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|x| x != v);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

/// Gives back a map's memory once it has emptied to a quarter of its capacity (amortized).
pub(crate) fn shrink<T: ShrinkTo>(map: &mut T) {
    if map.cap() > 1024 && map.len_() * 4 < map.cap() {
        map.shrink(map.len_() * 2);
    }
}

/// The maps [`shrink`] works on.
pub(crate) trait ShrinkTo {
    fn cap(&self) -> usize;
    fn len_(&self) -> usize;
    fn shrink(&mut self, to: usize);
}

impl<K: std::hash::Hash + Eq, V> ShrinkTo for HashMap<K, V> {
    fn cap(&self) -> usize {
        self.capacity()
    }
    fn len_(&self) -> usize {
        self.len()
    }
    fn shrink(&mut self, to: usize) {
        self.shrink_to(to);
    }
}

impl<K: std::hash::Hash + Eq> ShrinkTo for HashSet<K> {
    fn cap(&self) -> usize {
        self.capacity()
    }
    fn len_(&self) -> usize {
        self.len()
    }
    fn shrink(&mut self, to: usize) {
        self.shrink_to(to);
    }
}
