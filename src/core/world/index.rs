//! The World's small data structures: the pod index that is almost always one-to-one, and
//! the short memory of what departed (a pod deleted, a record removed) and when.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::time::Duration;

use crate::model::profile::ProfileId;
use crate::model::record::RecordKind;
use crate::util::time::Ts;

use super::{HashMap, Sym};

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

/// Something the World saw go, by what records and pods find it by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Departed {
    /// A pod of this profile and name (in any namespace).
    PodName(ProfileId, Sym),
    /// A pod carrying this session key.
    PodSession(ProfileId, Sym),
    /// A pod carrying this execution key.
    PodExecution(ProfileId, Sym),
    /// A record of this kind and id.
    Record(RecordKind, ProfileId, Sym),
    /// A session record that named this pod.
    SessionNaming(ProfileId, Sym),
    /// A resume target of this name.
    ResumeTarget(ProfileId, Sym),
}

/// When things departed, remembered for a day (or twice the longest grace), then forgotten:
/// memory stays proportional to a day's churn. An absence counts from the later of the
/// record's own change and its pod's departure, so a pod re-created within the grace opens
/// nothing, and a finding held while a source was down is still dated by the departure when
/// it opens; after a restart nothing is remembered and the record's `updated_at` is the
/// evidence.
pub(super) struct Departures {
    at: HashMap<Departed, Ts>,
    order: VecDeque<(Ts, Departed)>,
    keep: Duration,
}

impl Departures {
    pub(super) fn new(keep: Duration) -> Departures {
        Departures {
            at: HashMap::default(),
            order: VecDeque::new(),
            keep,
        }
    }

    pub(super) fn record(&mut self, what: Departed, at: Ts) {
        self.forget_before(at);
        self.at.insert(what.clone(), at);
        self.order.push_back((at, what));
    }

    /// The latest departure among `what`.
    pub(super) fn latest<'a>(&self, what: impl IntoIterator<Item = &'a Departed>) -> Option<Ts> {
        what.into_iter()
            .filter_map(|d| self.at.get(d).copied())
            .max()
    }

    /// Forgets what departed longer than `keep` before `now`.
    pub(super) fn forget_before(&mut self, now: Ts) {
        while let Some((t, _)) = self.order.front() {
            if t.saturating_add(self.keep) >= now {
                break;
            }
            let (t, what) = self.order.pop_front().expect("checked");
            if self.at.get(&what) == Some(&t) {
                self.at.remove(&what);
            }
        }
        if self.order.capacity() > 1024 && self.order.len() * 4 < self.order.capacity() {
            self.order.shrink_to(self.order.len() * 2);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.at.len()
    }
}
