//! Records in the World: their identity, their projection, their indexes, and how a reference
//! (an execution's session, a pod's session key, a tombstone) finds the record it means.
//!
//! **The identity rule.** A record's id is unique within its profile and kind, unless the
//! profile says that kind's ids are unique only within a namespace (sessions read from a
//! custom resource always are; `records.namespaced_ids` says so for others). The key carries
//! a namespace only then. A record's namespace is otherwise an attribute: where its pod lives
//! (its own, or the profile's `records.default_namespace`). A reference that names no
//! namespace resolves by id; when the same id exists in two namespaces the reference is
//! ambiguous: it is reported as a [`Notice`] and never guessed.

use crate::model::profile::{ExecutionClass, ProfileId, SandboxClass, SessionClass};
use crate::model::record::{Record, RecordKind};
use crate::util::time::Ts;

use super::World;
use super::departures::Departed;
use super::index::vec_remove;
use crate::model::ids::{RecordKey, Subject, Sym};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateClass {
    Session(SessionClass),
    Execution(ExecutionClass),
    Sandbox(SandboxClass),
}

/// The projection of one record.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub state: Sym,
    pub class: StateClass,
    /// Where the record's pod lives: its own namespace, or its profile's default one.
    pub namespace: Option<Sym>,
    pub pod: Option<Sym>,
    pub session: Option<Sym>,
    pub sandbox: Option<Sym>,
    pub attempt: Option<u64>,
    /// Since when the record has had its current state and links (its `updated_at` when one
    /// of them changed, else the time the change was seen).
    pub since: Ts,
}

impl StoredRecord {
    fn same_claim(&self, other: &StoredRecord) -> bool {
        self.state == other.state
            && self.namespace == other.namespace
            && self.pod == other.pod
            && self.session == other.session
            && self.sandbox == other.sandbox
    }

    /// Whether this record places itself in `namespace` (or places itself nowhere).
    pub fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// What a reference found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Found(RecordKey),
    Missing,
    /// The id exists in several namespaces and the reference names none.
    Ambiguous(Vec<Sym>),
}

/// Something the World noticed and cannot act on: people should hear of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The profile's name.
    pub profile: Sym,
    /// A short word for metrics labels.
    pub reason: &'static str,
    pub message: String,
}

impl World {
    pub fn record(&self, key: &RecordKey) -> Option<&StoredRecord> {
        self.records.get(key)
    }

    /// Finds the record a reference means: by namespace and id when the kind's ids are
    /// namespace-scoped and the reference names a namespace, else by id.
    pub fn resolve(
        &self,
        kind: RecordKind,
        profile: ProfileId,
        namespace: Option<&Sym>,
        id: &Sym,
    ) -> Resolved {
        let key = |ns: Option<Sym>| RecordKey {
            kind,
            profile,
            namespace: ns,
            id: id.clone(),
        };
        let found = |k: RecordKey| {
            if self.records.contains_key(&k) {
                Resolved::Found(k)
            } else {
                Resolved::Missing
            }
        };
        if !self.profiles.get(profile).namespaced_ids(kind) {
            return found(key(None));
        }
        if let Some(ns) = namespace {
            return found(key(Some(ns.clone())));
        }
        match self.scoped_ids.get(&(kind, profile, id.clone())) {
            None => Resolved::Missing,
            Some(list) if list.len() == 1 => found(key(Some(list[0].clone()))),
            Some(list) => Resolved::Ambiguous(list.clone()),
        }
    }

    pub fn upsert_record(&mut self, rec: Record, at: Ts, touched: &mut Vec<Subject>) {
        let profiles = self.profiles.clone();
        let p = profiles.get(rec.profile);
        let namespace = rec
            .namespace
            .as_deref()
            .or(p.records.default_namespace.as_deref())
            .map(|n| self.intern(n));
        let scoped = p.namespaced_ids(rec.kind);
        // Sources validate records first: a namespace-scoped record names its namespace.
        if scoped && namespace.is_none() {
            return;
        }
        let key = RecordKey {
            kind: rec.kind,
            profile: rec.profile,
            namespace: if scoped { namespace.clone() } else { None },
            id: Sym::from(rec.id.as_str()),
        };
        // An execution that names neither a session nor a sandbox is kept by every shard: its
        // pod may be on any of them (and its absence is evidence on none).
        let shard_key = match rec.kind {
            RecordKind::Execution => rec.session.as_deref().or(rec.sandbox.as_deref()),
            RecordKind::Session | RecordKind::Sandbox => Some(&*rec.id),
        };
        if shard_key.is_some_and(|k| !self.shard.owns(k)) {
            self.remove_record(&key, at, touched);
            return;
        }
        let class = match rec.kind {
            RecordKind::Session => p.sessions.classify(&rec.state).map(StateClass::Session),
            RecordKind::Execution => p.executions.classify(&rec.state).map(StateClass::Execution),
            RecordKind::Sandbox => p.sandboxes.classify(&rec.state).map(StateClass::Sandbox),
        };
        // Sources validate records first; an unvalidated unknown state is dropped here.
        let Some(class) = class else { return };
        let mut stored = StoredRecord {
            state: self.intern(&rec.state),
            class,
            namespace,
            pod: rec.pod.map(Sym::from),
            session: rec.session.map(Sym::from),
            sandbox: rec.sandbox.map(Sym::from),
            attempt: rec.attempt,
            since: rec.updated_at.unwrap_or(at),
        };
        let old = self.records.remove(&key);
        if let Some(old) = &old {
            if old.same_claim(&stored) {
                stored.since = old.since;
            }
            self.affected_by_record(&key, old, touched);
            self.unindex_record(&key, old);
        }
        self.index_record(&key, &stored);
        self.affected_by_record(&key, &stored, touched);
        if old.is_none() {
            self.notice_ambiguity(&key, &stored);
        }
        self.records.insert(key, stored);
    }

    /// A tombstone: removes the record it names. Without a namespace, a namespace-scoped
    /// record is found by id; if that id is in several namespaces nothing is removed and a
    /// notice says so.
    pub fn delete_record(
        &mut self,
        kind: RecordKind,
        profile: ProfileId,
        namespace: Option<&str>,
        id: &str,
        at: Ts,
        touched: &mut Vec<Subject>,
    ) {
        // Looked up, never interned: tombstones with unique namespaces must not grow memory.
        let ns = namespace.map(Sym::from);
        match self.resolve(kind, profile, ns.as_ref(), &Sym::from(id)) {
            Resolved::Found(key) => self.remove_record(&key, at, touched),
            Resolved::Missing => {}
            Resolved::Ambiguous(namespaces) => self.notices.push(Notice {
                profile: self.profiles.get(profile).name.clone(),
                reason: "ambiguous_reference",
                message: format!(
                    "a tombstone for {} {id:?} of profile {:?} names no namespace, and that id is in {}: nothing deleted (give the namespace)",
                    kind.as_str(),
                    self.profiles.get(profile).name,
                    join(&namespaces)
                ),
            }),
        }
    }

    /// Removes a record by key, remembering when it departed.
    pub(super) fn remove_record(&mut self, key: &RecordKey, at: Ts, touched: &mut Vec<Subject>) {
        let Some(old) = self.records.remove(key) else {
            return;
        };
        self.affected_by_record(key, &old, touched);
        self.unindex_record(key, &old);
        super::shrink(&mut self.records);
        super::shrink(&mut self.records_by_pod);
        super::shrink(&mut self.executions_by_session);
        super::shrink(&mut self.executions_by_sandbox);
        super::shrink(&mut self.scoped_ids);
        self.departures
            .record(Departed::Record(key.kind, key.profile, key.id.clone()), at);
        if key.kind == RecordKind::Session
            && let Some(pod) = &old.pod
        {
            self.departures
                .record(Departed::SessionNaming(key.profile, pod.clone()), at);
        }
        drop(old);
        self.removed();
    }

    fn index_record(&mut self, key: &RecordKey, rec: &StoredRecord) {
        if let Some(ns) = &key.namespace {
            let list = self
                .scoped_ids
                .entry((key.kind, key.profile, key.id.clone()))
                .or_default();
            if !list.contains(ns) {
                list.push(ns.clone());
            }
        }
        if let Some(pod) = &rec.pod {
            self.records_by_pod
                .entry(pod.clone())
                .or_default()
                .push(key.clone());
        }
        if key.kind == RecordKind::Execution {
            if let Some(s) = &rec.session {
                self.executions_by_session
                    .entry((key.profile, s.clone()))
                    .or_default()
                    .push(key.clone());
            }
            if let Some(s) = &rec.sandbox {
                self.executions_by_sandbox
                    .entry((key.profile, s.clone()))
                    .or_default()
                    .push(key.clone());
            }
        }
    }

    fn unindex_record(&mut self, key: &RecordKey, rec: &StoredRecord) {
        if let Some(ns) = &key.namespace {
            vec_remove(
                &mut self.scoped_ids,
                &(key.kind, key.profile, key.id.clone()),
                ns,
            );
        }
        if let Some(pod) = &rec.pod {
            vec_remove(&mut self.records_by_pod, pod, key);
        }
        if let Some(s) = &rec.session {
            vec_remove(
                &mut self.executions_by_session,
                &(key.profile, s.clone()),
                key,
            );
        }
        if let Some(s) = &rec.sandbox {
            vec_remove(
                &mut self.executions_by_sandbox,
                &(key.profile, s.clone()),
                key,
            );
        }
    }

    pub(super) fn affected_by_record(
        &self,
        key: &RecordKey,
        rec: &StoredRecord,
        touched: &mut Vec<Subject>,
    ) {
        touched.push(Subject::Record(key.clone()));
        match key.kind {
            RecordKind::Session => {
                for pod in self.pods_of_session(key, rec) {
                    touched.push(pod.subject());
                }
                if let Some(execs) = self
                    .executions_by_session
                    .get(&(key.profile, key.id.clone()))
                {
                    touched.extend(execs.iter().cloned().map(Subject::Record));
                }
            }
            RecordKind::Sandbox => {
                if let Some(execs) = self
                    .executions_by_sandbox
                    .get(&(key.profile, key.id.clone()))
                {
                    touched.extend(execs.iter().cloned().map(Subject::Record));
                }
            }
            RecordKind::Execution => {}
        }
    }

    /// Reports references that a new record leaves ambiguous: an execution naming a session
    /// (or sandbox) id without a namespace, when that id is now in several namespaces.
    fn notice_ambiguity(&mut self, key: &RecordKey, rec: &StoredRecord) {
        let name = self.profiles.get(key.profile).name.clone();
        let mut notes = Vec::new();
        match key.kind {
            RecordKind::Execution => {
                for (kind, id) in [
                    (RecordKind::Session, &rec.session),
                    (RecordKind::Sandbox, &rec.sandbox),
                ] {
                    let Some(id) = id else { continue };
                    if let Resolved::Ambiguous(nss) =
                        self.resolve(kind, key.profile, rec.namespace.as_ref(), id)
                    {
                        notes.push(format!(
                            "execution {:?} of profile {name:?} names {} {id:?} without a namespace, and that id is in {}: not joined (give the execution a namespace)",
                            key.id,
                            kind.as_str(),
                            join(&nss)
                        ));
                    }
                }
            }
            RecordKind::Session | RecordKind::Sandbox if key.namespace.is_some() => {
                let by = if key.kind == RecordKind::Session {
                    &self.executions_by_session
                } else {
                    &self.executions_by_sandbox
                };
                let nss = self
                    .scoped_ids
                    .get(&(key.kind, key.profile, key.id.clone()))
                    .cloned()
                    .unwrap_or_default();
                if nss.len() > 1 {
                    let unplaced = by
                        .get(&(key.profile, key.id.clone()))
                        .map(|execs| {
                            execs
                                .iter()
                                .filter(|e| {
                                    self.records.get(*e).is_some_and(|r| r.namespace.is_none())
                                })
                                .count()
                        })
                        .unwrap_or(0);
                    if unplaced > 0 {
                        notes.push(format!(
                            "{} {:?} of profile {name:?} now exists in {}: {unplaced} execution(s) that name it without a namespace are no longer joined to it",
                            key.kind.as_str(),
                            key.id,
                            join(&nss)
                        ));
                    }
                }
            }
            _ => {}
        }
        for message in notes {
            self.notices.push(Notice {
                profile: name.clone(),
                reason: "ambiguous_reference",
                message,
            });
        }
    }

    /// What the World noticed since the last call (ambiguous references).
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }
}

fn join(namespaces: &[Sym]) -> String {
    let mut v: Vec<&str> = namespaces.iter().map(|n| &**n).collect();
    v.sort();
    format!("namespaces {}", v.join(", "))
}
