//! The World: pods and records joined in memory, owned by the engine task.
//!
//! It keeps compact projections, never whole API objects ([`pod`]: a pod's identity, phase,
//! deletion flag, the keys that link it to records, and per container its state; [`records`]:
//! a record's state and links). Repeated strings (namespaces, container names, reasons,
//! states) are interned and shared. Indexes answer the joins the rules ask for (pod by name,
//! pods by session or execution key, records by key, records by pod, executions by session or
//! sandbox) in O(1), and each mutation reports the [`Subject`]s it touched so that the engine
//! re-runs rules for those alone.
//!
//! The World also knows which sources feed it, what each sees and whether each is synced and
//! fresh ([`crate::model::source`]): a missing pod or record only means something when the source that
//! would show it is trusted and sees where it would be. And it remembers, for a day, when pods
//! and records departed (a pod deleted, re-created under another uid, moved to another profile
//! or session key; a record removed): an absence counts from the later of that and
//! the record's own `updated_at`, so evidence comes from what the sources said, not from when
//! this process looked.
//!
//! This file holds the World itself: its maps, the string pool and what it counts. The rest
//! is by subject: [`pods`] adds and removes pods and keeps their indexes, [`records`] does the
//! same for session, execution and sandbox records and resolves references to them,
//! [`resume_targets`] keeps the resources suspended sessions resume from, [`joins`] answers
//! the rules' questions (a session's or execution's pod, an execution's session and sandbox,
//! a pod's sessions), [`sources`] keeps each source's status and trust, [`departures`]
//! remembers what went and when, [`full_lists`] removes what a source's full list no longer
//! holds, and [`index`] has the small data structures underneath.

mod departures;
mod full_lists;
mod index;
mod joins;
pub mod pod;
mod pods;
mod records;
mod resume_targets;
mod sources;

use std::sync::Arc;

use crate::model::profile::{ProfileId, Profiles};
use crate::model::record::RecordKind;
use crate::util::shard::Shard;

pub use crate::model::ids::{RecordKey, Subject, Sym, Uid};
pub use departures::DEPARTURES_KEPT;
use departures::Departures;
use index::PodIndex;
pub(crate) use index::shrink;
pub use joins::PodLink;
pub use pod::{AgentDeath, Container, ContainerState, Phase, Pod, PodEnd, RestartPolicy, Role};
pub use records::{Notice, Resolved, StateClass, StoredRecord};

pub use crate::model::source::{Blind, Feed, Holder, SourceStatus, Trust, TrustedSince, trust};

/// The World's maps: foldhash is several times faster than SipHash on these short keys, and
/// its per-process random seed keeps it resistant to crafted collisions.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// See [`World::footprint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub pods: usize,
    pub records: usize,
    pub records_capacity: usize,
    pub strings: usize,
    pub departures: usize,
}

pub struct World {
    profiles: Arc<Profiles>,
    strings: HashSet<Sym>,
    /// How many strings the last sweep of the pool kept.
    strings_kept: usize,
    /// Pods and records removed since the last sweep of the pool.
    removals: usize,
    pods: Vec<Option<Pod>>,
    free: Vec<u32>,
    pods_by_name: PodIndex<Sym>,
    pods_by_session: PodIndex<(ProfileId, Sym)>,
    pods_by_execution: PodIndex<(ProfileId, Sym)>,
    records: HashMap<RecordKey, StoredRecord>,
    /// Sessions and executions that name a pod (or resume target) explicitly, by that name.
    records_by_pod: HashMap<Sym, Vec<RecordKey>>,
    executions_by_session: HashMap<(ProfileId, Sym), Vec<RecordKey>>,
    executions_by_sandbox: HashMap<(ProfileId, Sym), Vec<RecordKey>>,
    /// For kinds whose ids are unique per namespace: the namespaces each id is in.
    scoped_ids: HashMap<(RecordKind, ProfileId, Sym), Vec<Sym>>,
    /// Resume targets that exist: (profile, name) → namespaces.
    resume_targets: HashMap<(ProfileId, Sym), Vec<Sym>>,
    departures: Departures,
    notices: Vec<Notice>,
    sources: Vec<SourceStatus>,
    trusted_since: TrustedSince,
    pod_count: usize,
    shard: Shard,
}

impl World {
    pub fn new(profiles: Arc<Profiles>) -> World {
        World::sharded(profiles, Shard::ALL)
    }

    /// A World that keeps only what `shard` owns (see `shard.rs`).
    pub fn sharded(profiles: Arc<Profiles>, shard: Shard) -> World {
        // Departures date the absences that rest on them for as long as those may still
        // open (a finding held while a source is down opens late, dated by the departure):
        // a day, or twice the longest grace if that is longer. Memory is one day's churn.
        let keep = profiles
            .iter()
            .map(|(_, p)| p.grace.absence.max(p.grace.leaked_pod) * 2)
            .max()
            .unwrap_or_default()
            .max(DEPARTURES_KEPT);
        World {
            shard,
            profiles,
            strings: Default::default(),
            strings_kept: 0,
            removals: 0,
            pods: Vec::new(),
            free: Vec::new(),
            pods_by_name: PodIndex::new(),
            pods_by_session: PodIndex::new(),
            pods_by_execution: PodIndex::new(),
            records: Default::default(),
            records_by_pod: Default::default(),
            executions_by_session: Default::default(),
            executions_by_sandbox: Default::default(),
            scoped_ids: Default::default(),
            resume_targets: Default::default(),
            departures: Departures::new(keep),
            notices: Vec::new(),
            sources: Vec::new(),
            trusted_since: TrustedSince::default(),
            pod_count: 0,
        }
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The shared copy of `s`. Strings nothing else refers to any more are released once
    /// the pool has doubled since it was last swept (amortized O(1)), so that churn through
    /// unique values (namespaces, states, reasons) does not grow memory with nothing held.
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(existing) = self.strings.get(s) {
            return existing.clone();
        }
        if self.strings.len() >= 2 * self.strings_kept.max(512) {
            self.sweep_strings();
        }
        let sym: Sym = Arc::from(s);
        self.strings.insert(sym.clone());
        sym
    }

    fn sweep_strings(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        shrink(&mut self.strings);
        self.strings_kept = self.strings.len();
        self.removals = 0;
    }

    /// Counts a removal; once there were as many as half the pool, the pool is swept (so
    /// that deleting everything releases everything, amortized O(1) per removal).
    fn removed(&mut self) {
        self.removals += 1;
        if self.removals > (self.strings.len() / 2).max(512) {
            self.sweep_strings();
        }
    }

    /// What the World holds, for tests and benchmarks: pods, records, interned strings,
    /// remembered departures, and the records map's capacity.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            pods: self.pod_count,
            records: self.records.len(),
            records_capacity: self.records.capacity(),
            strings: self.strings.len(),
            departures: self.departures.len(),
        }
    }

    pub fn pod_count(&self) -> usize {
        self.pod_count
    }

    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().flatten()
    }

    pub fn records(&self) -> impl Iterator<Item = (&RecordKey, &StoredRecord)> {
        self.records.iter()
    }

    /// Every subject in the World (for a full re-evaluation when a source's trust changes).
    pub fn all_subjects(&self) -> Vec<Subject> {
        self.pods()
            .map(Pod::subject)
            .chain(self.records.keys().cloned().map(Subject::Record))
            .collect()
    }
}
