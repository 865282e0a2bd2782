//! The joins the rules ask for: from a session or an execution record to the pod its agent
//! runs in, from an execution to its session and sandbox records, and from a pod to the
//! session records that claim it. Each answers from the World's indexes, within the record's
//! profile and the namespace it places itself in.

use crate::model::profile::ProfileId;
use crate::model::record::RecordKind;

use super::{Pod, RecordKey, Resolved, StoredRecord, Sym, World};

/// Where a record's agent is, as far as the World can tell.
#[derive(Debug)]
pub enum PodLink<'a> {
    /// Nothing links the record to a pod (no pod name, no session key).
    None,
    /// A pod is named or keyed, and no such pod exists.
    Missing,
    Found(&'a Pod),
    /// It names a session id that exists in several namespaces: not guessed.
    Ambiguous,
}

/// Of several pods for one agent (a replacement next to a terminating one), the live one,
/// else the newest.
fn best_pod<'a>(pods: impl Iterator<Item = &'a Pod>) -> Option<&'a Pod> {
    pods.max_by(|a, b| {
        (!a.terminating, a.created_at, &a.uid).cmp(&(!b.terminating, b.created_at, &b.uid))
    })
}

impl World {
    fn pods_at<'a>(
        &'a self,
        slots: impl Iterator<Item = u32> + 'a,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        slots.filter_map(move |i| self.pods[i as usize].as_ref())
    }

    /// Every pod that belongs to a session: named by the record, or carrying its session key,
    /// in the session's profile and in the namespace the session places itself in.
    pub fn pods_of_session(&self, key: &RecordKey, rec: &StoredRecord) -> Vec<&Pod> {
        let in_scope = |p: &&Pod| p.profile == key.profile && rec.admits(&p.namespace);
        let mut out: Vec<&Pod> = Vec::new();
        if let Some(name) = &rec.pod {
            out.extend(self.pods_at(self.pods_by_name.get(name)).filter(in_scope));
        }
        for p in self
            .pods_at(self.pods_by_session.get(&(key.profile, key.id.clone())))
            .filter(in_scope)
        {
            if !out.iter().any(|q| std::ptr::eq(*q, p)) {
                out.push(p);
            }
        }
        out
    }

    /// The pod a session's agent runs in: the live one if a replacement is coming up next to
    /// a terminating one, else the newest.
    pub fn pod_of_session(&self, key: &RecordKey, rec: &StoredRecord) -> PodLink<'_> {
        if let Some(best) = best_pod(self.pods_of_session(key, rec).into_iter()) {
            return PodLink::Found(best);
        }
        if rec.pod.is_some() || self.keyed(key.profile) {
            PodLink::Missing
        } else {
            PodLink::None
        }
    }

    /// Whether the profile's pods carry a session key.
    fn keyed(&self, profile: ProfileId) -> bool {
        self.profiles
            .get(profile)
            .pods
            .as_ref()
            .is_some_and(|m| m.session_key.is_some())
    }

    /// The session record an execution names.
    pub fn session_of(&self, key: &RecordKey, rec: &StoredRecord) -> Option<Resolved> {
        let id = rec.session.as_ref()?;
        Some(self.resolve(RecordKind::Session, key.profile, rec.namespace.as_ref(), id))
    }

    /// The session record an execution names, when it is found.
    pub fn found_session_of(
        &self,
        key: &RecordKey,
        rec: &StoredRecord,
    ) -> Option<(RecordKey, &StoredRecord)> {
        match self.session_of(key, rec)? {
            Resolved::Found(k) => self.records.get(&k).map(|r| (k, r)),
            _ => None,
        }
    }

    /// The pod an execution's agent runs in: named by the execution, keyed by its id, or its
    /// session's pod.
    pub fn pod_of_execution(&self, key: &RecordKey, rec: &StoredRecord) -> PodLink<'_> {
        let in_scope = |p: &&Pod| p.profile == key.profile && rec.admits(&p.namespace);
        if let Some(name) = &rec.pod {
            return match best_pod(self.pods_at(self.pods_by_name.get(name)).filter(in_scope)) {
                Some(p) => PodLink::Found(p),
                None => PodLink::Missing,
            };
        }
        if let Some(p) = best_pod(
            self.pods_at(self.pods_by_execution.get(&(key.profile, key.id.clone())))
                .filter(in_scope),
        ) {
            return PodLink::Found(p);
        }
        match self.session_of(key, rec) {
            Some(Resolved::Found(k)) => match self.records.get(&k) {
                Some(s) => self.pod_of_session(&k, s),
                None => PodLink::None,
            },
            Some(Resolved::Ambiguous(_)) => PodLink::Ambiguous,
            Some(Resolved::Missing) | None => PodLink::None,
        }
    }

    /// The sandbox record an execution runs against: its id, and the record if it is known.
    pub fn sandbox_of(
        &self,
        key: &RecordKey,
        rec: &StoredRecord,
    ) -> Option<(Sym, Option<&StoredRecord>)> {
        let id = rec.sandbox.as_ref()?;
        let found = match self.resolve(RecordKind::Sandbox, key.profile, rec.namespace.as_ref(), id)
        {
            Resolved::Found(k) => self.records.get(&k),
            Resolved::Missing | Resolved::Ambiguous(_) => None,
        };
        Some((id.clone(), found))
    }

    /// The executions whose `session` field says `id` (within the profile; the reference may
    /// still resolve elsewhere when ids are namespaced).
    pub fn executions_naming_session(&self, profile: ProfileId, id: &Sym) -> &[RecordKey] {
        self.executions_by_session
            .get(&(profile, id.clone()))
            .map_or(&[], Vec::as_slice)
    }

    /// The executions whose `sandbox` field says `id` (within the profile).
    pub fn executions_naming_sandbox(&self, profile: ProfileId, id: &Sym) -> &[RecordKey] {
        self.executions_by_sandbox
            .get(&(profile, id.clone()))
            .map_or(&[], Vec::as_slice)
    }

    /// Session records that claim a pod: named by it, or named by its session key.
    pub fn sessions_of_pod(&self, pod: &Pod) -> Vec<(RecordKey, &StoredRecord)> {
        let mut keys: Vec<RecordKey> = Vec::new();
        if let Some(list) = self.records_by_pod.get(&pod.name) {
            keys.extend(
                list.iter()
                    .filter(|k| k.kind == RecordKind::Session && k.profile == pod.profile)
                    .cloned(),
            );
        }
        if let Some(s) = &pod.session
            && let Resolved::Found(k) =
                self.resolve(RecordKind::Session, pod.profile, Some(&pod.namespace), s)
            && !keys.contains(&k)
        {
            keys.push(k);
        }
        keys.into_iter()
            .filter_map(|k| self.records.get(&k).map(|r| (k, r)))
            .filter(|(_, r)| r.admits(&pod.namespace))
            .collect()
    }
}
