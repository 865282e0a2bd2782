//! What the World remembers of pods and records that departed: a pod deleted, re-created
//! under another uid, moved to another profile or session key; a session or execution record
//! removed; a resume target gone. An absence counts from the later of that departure and the
//! record's own `updated_at`, so evidence comes from what the sources said, not from when
//! this process looked.

use std::collections::VecDeque;
use std::time::Duration;

use crate::model::profile::ProfileId;
use crate::model::record::RecordKind;
use crate::util::time::Ts;

use super::{HashMap, Pod, Sym, World};

/// How long the World remembers at least that a pod or record departed.
pub const DEPARTURES_KEPT: Duration = Duration::from_secs(24 * 3600);

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

impl World {
    /// How many departures are remembered (bounded by the churn of one grace period).
    pub fn departures_remembered(&self) -> usize {
        self.departures.len()
    }

    /// Forgets departures too old to matter (called as the clock advances).
    pub fn advance(&mut self, now: Ts) {
        self.departures.forget_before(now);
    }

    /// When the World last saw a pod of this name, session key or execution key go.
    pub fn pod_departed(
        &self,
        profile: ProfileId,
        name: Option<&Sym>,
        session: Option<&Sym>,
        execution: Option<&Sym>,
    ) -> Option<Ts> {
        let keys: Vec<Departed> = [
            name.map(|n| Departed::PodName(profile, n.clone())),
            session.map(|s| Departed::PodSession(profile, s.clone())),
            execution.map(|e| Departed::PodExecution(profile, e.clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.departures.latest(&keys)
    }

    /// When the World last saw a session record that claimed this pod go.
    pub fn session_departed(&self, pod: &Pod) -> Option<Ts> {
        let mut keys = vec![Departed::SessionNaming(pod.profile, pod.name.clone())];
        if let Some(s) = &pod.session {
            keys.push(Departed::Record(
                RecordKind::Session,
                pod.profile,
                s.clone(),
            ));
        }
        self.departures.latest(&keys)
    }

    /// When the World last saw a resume target of this name go.
    pub fn resume_target_departed(&self, profile: ProfileId, name: &Sym) -> Option<Ts> {
        self.departures
            .latest(&[Departed::ResumeTarget(profile, name.clone())])
    }
}
