//! Resume targets in the World: the custom resources a suspended session resumes from. The
//! World keeps only which exist, by profile and name, in which namespaces; a session names
//! its resume target by its pod link, and a target that goes touches the sessions naming it.

use crate::model::profile::ProfileId;
use crate::model::record::RecordKind;
use crate::util::time::Ts;

use super::departures::Departed;
use super::{RecordKey, StoredRecord, Subject, Sym, World};

impl World {
    pub fn set_resume_target(
        &mut self,
        profile: ProfileId,
        namespace: &str,
        name: &str,
        exists: bool,
        at: Ts,
        touched: &mut Vec<Subject>,
    ) {
        // A disappearance is looked up, never interned: unique namespaces must not pile up.
        let ns = if exists {
            self.intern(namespace)
        } else {
            Sym::from(namespace)
        };
        let key = (profile, Sym::from(name));
        let list = self.resume_targets.entry(key.clone()).or_default();
        let had = list.contains(&ns);
        if exists && !had {
            list.push(ns.clone());
        } else if !exists {
            list.retain(|n| *n != ns);
        }
        if list.is_empty() {
            self.resume_targets.remove(&key);
        }
        if had && !exists {
            self.departures
                .record(Departed::ResumeTarget(profile, key.1.clone()), at);
        }
        if had != exists
            && let Some(keys) = self.records_by_pod.get(name)
        {
            for k in keys {
                if k.profile == profile
                    && k.kind == RecordKind::Session
                    && self.records.get(k).is_some_and(|r| r.admits(&ns))
                {
                    touched.push(Subject::Record(k.clone()));
                }
            }
        }
    }

    /// Whether the resource a session resumes from exists (named by the session's pod link).
    pub fn resume_target_exists(&self, key: &RecordKey, rec: &StoredRecord) -> Option<bool> {
        let name = rec.pod.as_ref()?;
        let namespaces = self.resume_targets.get(&(key.profile, name.clone()));
        Some(namespaces.is_some_and(|list| match &rec.namespace {
            Some(ns) => list.contains(ns),
            None => !list.is_empty(),
        }))
    }
}
