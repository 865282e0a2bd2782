//! The reference evaluator: the contract of the correlation engine, recomputed from the full
//! current state at every step. No indexes, no incremental bookkeeping: every question is a
//! scan over plain vectors, and every (rule, subject) pair is judged again after every change.

use std::sync::Arc;
use std::time::Duration;

use sandwatch::core::engine::Change;
use sandwatch::model::finding::FindingKind;
use sandwatch::model::kubernetes::{ContainerStatus, Object};
use sandwatch::model::profile::{
    ExecutionClass, ProfileId, Profiles, ResumeFrom, SandboxClass, SessionClass,
};
use sandwatch::model::record::{Record, RecordChange, RecordKind};
use sandwatch::model::source::{Feed, Holder, SourceStatus, Trust, absence, trust};
use sandwatch::util::shard::Shard;
use sandwatch::util::time::Ts;

/// What a finding is about: a pod incarnation or a record key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subj {
    Pod {
        ns: String,
        name: String,
        uid: String,
    },
    Rec(RKey),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RKey {
    pub kind: RecordKind,
    pub profile: ProfileId,
    pub ns: Option<String>,
    pub id: String,
}

/// What the comparison checks of an open finding besides its key: its evidence time (and
/// what it would be without the departures the engine forgets), and the uid of its pod.
pub type Info = (Ts, Option<String>);

/// One open finding as the comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpenKey {
    pub kind: FindingKind,
    pub subject: Subj,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CState {
    Unknown,
    Waiting,
    Running,
    Terminated {
        code: i32,
        reason: Option<String>,
        finished: Option<Ts>,
    },
}

#[derive(Clone, Debug)]
pub struct Cont {
    pub name: String,
    pub state: CState,
}

/// A kept pod.
#[derive(Clone, Debug)]
pub struct OPod {
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub profile: ProfileId,
    pub session: Option<String>,
    pub execution: Option<String>,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub restart_policy: Option<String>,
    pub terminating: bool,
    pub created: Option<Ts>,
    pub last_condition: Option<Ts>,
    /// spec.containers, with their status.
    pub containers: Vec<Cont>,
    /// spec.initContainers with restartPolicy Always, with their status.
    pub natives: Vec<Cont>,
}

#[derive(Clone, Debug)]
pub struct ORec {
    pub key: RKey,
    pub rec: Record,
    pub ns_attr: Option<String>,
    pub since: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dep {
    PodName(ProfileId, String),
    PodSession(ProfileId, String),
    PodExecution(ProfileId, String),
    Record(RecordKind, ProfileId, String),
    SessionNaming(ProfileId, String),
    ResumeTarget(ProfileId, String),
}

#[derive(Clone, Debug)]
struct Candidate {
    reason: String,
    evidence: Ts,
    hold: Duration,
    not_before: Option<Ts>,
    /// The uid of the pod whose agent is dead (or that the finding is about).
    pod: Option<String>,
}

impl Candidate {
    fn due(&self) -> Ts {
        let d = self.evidence.saturating_add(self.hold);
        match self.not_before {
            Some(nb) => d.max(nb),
            None => d,
        }
    }
}

enum Judgement {
    Clear,
    Hold,
    Holds(Candidate),
}

enum Resolved<'a> {
    Found(&'a ORec),
    Ambiguous,
    Missing,
}

enum PodJoin<'a> {
    Found(&'a OPod),
    Missing,
    Ambiguous,
    None,
}

pub struct Oracle {
    pub profiles: Arc<Profiles>,
    pub shard: Shard,
    pub now: Ts,
    pub sources: Vec<SourceStatus>,
    pub pods: Vec<OPod>,
    pub records: Vec<ORec>,
    pub targets: Vec<(ProfileId, String, String)>,
    pub departed: Vec<(Dep, Ts)>,
    pub open: Vec<OpenKey>,
    /// The evidence time and pod uid of each open finding (same order as `open`).
    pub evidence: Vec<Info>,
    /// How often each path of the contract was taken, for the coverage report.
    pub probes: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>>,
}

const RULES: &[FindingKind] = FindingKind::ALL;

fn feeds(kind: FindingKind) -> (&'static [Feed], &'static [Feed]) {
    match kind {
        FindingKind::AgentTerminatedPodRunning => (&[Feed::Pods], &[]),
        FindingKind::ExecutionOnDeadAgent => (
            &[Feed::Executions],
            &[Feed::Pods, Feed::Sessions, Feed::Sandboxes],
        ),
        FindingKind::OrphanedSuspendedSession => {
            (&[Feed::Sessions], &[Feed::Pods, Feed::ResumeTargets])
        }
        FindingKind::SessionActiveWithoutAgent => (&[Feed::Sessions, Feed::Pods], &[]),
        FindingKind::LeakedSandboxPod => (&[Feed::Pods, Feed::Sessions], &[]),
    }
}

fn max_opt(a: Ts, b: Option<Ts>) -> Ts {
    match b {
        Some(b) => a.max(b),
        None => a,
    }
}

fn container_state(statuses: &[ContainerStatus], name: &str) -> CState {
    match statuses.iter().find(|s| s.name == name) {
        None => CState::Unknown,
        Some(s) => {
            if let Some(t) = &s.state.terminated {
                CState::Terminated {
                    code: t.exit_code,
                    reason: t.reason.clone(),
                    finished: t.finished_at,
                }
            } else if s.state.running.is_some() {
                CState::Running
            } else if s.state.waiting.is_some() {
                CState::Waiting
            } else {
                CState::Unknown
            }
        }
    }
}

fn nonempty(s: Option<&String>) -> Option<String> {
    s.filter(|v| !v.is_empty()).cloned()
}

impl Oracle {
    pub fn new(profiles: Arc<Profiles>, shard: Shard) -> Oracle {
        Oracle {
            profiles,
            shard,
            now: Ts(i64::MIN),
            sources: Vec::new(),
            pods: Vec::new(),
            records: Vec::new(),
            targets: Vec::new(),
            departed: Vec::new(),
            open: Vec::new(),
            evidence: Vec::new(),
            probes: Default::default(),
        }
    }

    fn probe(&self, what: &'static str) {
        *self.probes.borrow_mut().entry(what).or_default() += 1;
    }

    /// Each open finding's evidence time.
    pub fn evidence_of(&self, kind: FindingKind, subject: &Subj) -> Option<&Info> {
        self.open
            .iter()
            .zip(&self.evidence)
            .find(|(o, _)| o.kind == kind && o.subject == *subject)
            .map(|(_, e)| e)
    }

    pub fn open_set(&self) -> Vec<OpenKey> {
        let mut v = self.open.clone();
        v.sort();
        v
    }

    // ------------------------------------------------------------------ driving

    pub fn apply(&mut self, at: Ts, change: &Change) {
        let t = at.max(self.now);
        self.fire(t);
        self.now = t;
        self.mutate(t, change);
        self.rejudge(t);
    }

    pub fn advance(&mut self, to: Ts) {
        let t = to.max(self.now);
        self.fire(t);
        self.now = t;
    }

    /// Every (rule, subject) pair there is now.
    fn pairs(&self) -> Vec<(FindingKind, Subj)> {
        let mut out = Vec::new();
        for &kind in RULES {
            match kind {
                FindingKind::AgentTerminatedPodRunning | FindingKind::LeakedSandboxPod => {
                    for p in &self.pods {
                        out.push((
                            kind,
                            Subj::Pod {
                                ns: p.ns.clone(),
                                name: p.name.clone(),
                                uid: p.uid.clone(),
                            },
                        ));
                    }
                }
                FindingKind::ExecutionOnDeadAgent => {
                    for r in &self.records {
                        if r.key.kind == RecordKind::Execution {
                            out.push((kind, Subj::Rec(r.key.clone())));
                        }
                    }
                }
                FindingKind::OrphanedSuspendedSession | FindingKind::SessionActiveWithoutAgent => {
                    for r in &self.records {
                        if r.key.kind == RecordKind::Session {
                            out.push((kind, Subj::Rec(r.key.clone())));
                        }
                    }
                }
            }
        }
        out
    }

    fn is_open(&self, kind: FindingKind, subject: &Subj) -> bool {
        self.open
            .iter()
            .any(|o| o.kind == kind && o.subject == *subject)
    }

    /// Timers that fell due by `t`, with the state as it was (and judged as it was when the
    /// state last changed: `self.now` is still that time).
    fn fire(&mut self, t: Ts) {
        let mut new = Vec::new();
        let mut evidence = Vec::new();
        for (kind, subject) in self.pairs() {
            if self.is_open(kind, &subject) {
                continue;
            }
            if let Judgement::Holds(c) = self.judge(kind, &subject)
                && c.due() <= t
            {
                self.probe("opened by a timer, before the change");
                evidence.push((c.evidence, c.pod.clone()));
                new.push(OpenKey {
                    kind,
                    subject,
                    reason: c.reason,
                });
            }
        }
        self.open.extend(new);
        self.evidence.extend(evidence);
    }

    fn rejudge(&mut self, t: Ts) {
        let mut open = Vec::new();
        let mut evidence = Vec::new();
        for (o, e) in self.open.iter().zip(&self.evidence) {
            match self.judge(o.kind, &o.subject) {
                Judgement::Clear => {}
                Judgement::Hold => {
                    self.probe("held open while untrusted");
                    open.push(o.clone());
                    evidence.push(e.clone());
                }
                // Still open: the finding carries what the evidence says now, and still
                // dates from when it opened.
                Judgement::Holds(c) => {
                    open.push(OpenKey {
                        reason: c.reason,
                        ..o.clone()
                    });
                    evidence.push((e.0, c.pod));
                }
            }
        }
        for (kind, subject) in self.pairs() {
            if open.iter().any(|o| o.kind == kind && o.subject == subject) {
                continue;
            }
            if let Judgement::Holds(c) = self.judge(kind, &subject)
                && c.due() <= t
            {
                evidence.push((c.evidence, c.pod.clone()));
                open.push(OpenKey {
                    kind,
                    subject,
                    reason: c.reason,
                });
            }
        }
        self.open = open;
        self.evidence = evidence;
    }

    // ------------------------------------------------------------------ state changes

    fn depart(&mut self, d: Dep, t: Ts) {
        self.departed.retain(|(x, _)| *x != d);
        self.departed.push((d, t));
    }

    fn departed(&self, keys: &[Dep]) -> Option<Ts> {
        self.departed
            .iter()
            .filter(|(d, _)| keys.contains(d))
            .map(|(_, t)| *t)
            .max()
    }

    fn remove_pod(&mut self, i: usize, t: Ts) {
        let p = self.pods.remove(i);
        self.depart(Dep::PodName(p.profile, p.name.clone()), t);
        if let Some(s) = &p.session {
            self.depart(Dep::PodSession(p.profile, s.clone()), t);
        }
        if let Some(e) = &p.execution {
            self.depart(Dep::PodExecution(p.profile, e.clone()), t);
        }
    }

    fn remove_record(&mut self, i: usize, t: Ts) {
        let r = self.records.remove(i);
        self.depart(Dep::Record(r.key.kind, r.key.profile, r.key.id.clone()), t);
        if r.key.kind == RecordKind::Session
            && let Some(pod) = &r.rec.pod
        {
            self.depart(Dep::SessionNaming(r.key.profile, pod.clone()), t);
        }
    }

    fn project(&self, o: &Object, profile: ProfileId) -> OPod {
        let m = self.profiles.get(profile).pods.as_ref().unwrap();
        let labels = o.metadata.labels.as_ref();
        let annotations = o.metadata.annotations.as_ref();
        let read = |k: &Option<sandwatch::model::profile::MetaKey>| {
            k.as_ref()
                .and_then(|k| k.read(labels, annotations))
                .map(String::from)
        };
        OPod {
            ns: o.namespace().unwrap_or_default().to_string(),
            name: o.name().unwrap_or_default().to_string(),
            uid: o.metadata.uid.clone().unwrap_or_default(),
            profile,
            session: read(&m.session_key),
            execution: read(&m.execution_key),
            phase: nonempty(o.status.phase.as_ref()),
            reason: nonempty(o.status.reason.as_ref()),
            restart_policy: o.spec.restart_policy.clone(),
            terminating: o.deletion_timestamp().is_some(),
            created: o.created_at(),
            last_condition: o
                .status
                .conditions
                .iter()
                .filter_map(|c| c.last_transition_time)
                .max(),
            containers: o
                .spec
                .containers
                .iter()
                .map(|c| Cont {
                    name: c.name.clone(),
                    state: container_state(&o.status.container_statuses, &c.name),
                })
                .collect(),
            natives: o
                .spec
                .init_containers
                .iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(|c| Cont {
                    name: c.name.clone(),
                    state: container_state(&o.status.init_container_statuses, &c.name),
                })
                .collect(),
        }
    }

    fn mutate(&mut self, t: Ts, change: &Change) {
        match change {
            Change::PodUpserted(o) => {
                let ns = o.namespace().unwrap_or_default().to_string();
                let name = o.name().unwrap_or_default().to_string();

                let profile = self.profiles.for_pod(&ns, o.metadata.labels.as_ref());
                let new = profile.map(|p| self.project(o, p)).filter(|p| {
                    self.shard
                        .owns(p.session.as_deref().unwrap_or(p.name.as_str()))
                });
                if let Some(i) = self.pods.iter().position(|p| p.ns == ns && p.name == name) {
                    let old = &self.pods[i];
                    let stays = new
                        .as_ref()
                        .is_some_and(|n| n.uid == old.uid && n.profile == old.profile);
                    if stays {
                        // A key the pod no longer carries: what it named saw its pod go.
                        let new = new.unwrap();
                        let (profile, session, execution) =
                            (old.profile, old.session.clone(), old.execution.clone());
                        if let Some(s) = session.filter(|s| new.session.as_ref() != Some(s)) {
                            self.depart(Dep::PodSession(profile, s), t);
                        }
                        if let Some(e) = execution.filter(|e| new.execution.as_ref() != Some(e)) {
                            self.depart(Dep::PodExecution(profile, e), t);
                        }
                        self.pods[i] = new;
                        return;
                    }
                    self.remove_pod(i, t);
                }
                if let Some(n) = new {
                    self.pods.push(n);
                }
            }
            Change::PodDeleted {
                namespace,
                name,
                uid,
            } => {
                if let Some(i) = self.pods.iter().position(|p| {
                    p.ns == *namespace
                        && p.name == *name
                        && uid.as_ref().is_none_or(|u| *u == p.uid)
                }) {
                    self.remove_pod(i, t);
                }
            }
            Change::Record(RecordChange::Upsert(r)) => self.upsert(t, r),
            Change::Record(RecordChange::Delete {
                kind,
                profile,
                namespace,
                id,
            }) => {
                let p = self.profiles.get(*profile);
                if p.namespaced_ids(*kind) && namespace.is_none() {
                    let hits: Vec<usize> = (0..self.records.len())
                        .filter(|i| {
                            let k = &self.records[*i].key;
                            k.kind == *kind && k.profile == *profile && k.id == *id
                        })
                        .collect();
                    if hits.len() == 1 {
                        self.remove_record(hits[0], t);
                    } else if hits.len() > 1 {
                        self.probe("tombstone: ambiguous, nothing deleted");
                    }
                } else {
                    let key = RKey {
                        kind: *kind,
                        profile: *profile,
                        ns: if p.namespaced_ids(*kind) {
                            namespace.clone()
                        } else {
                            None
                        },
                        id: id.clone(),
                    };
                    if let Some(i) = self.records.iter().position(|r| r.key == key) {
                        self.remove_record(i, t);
                    }
                }
            }
            Change::ResumeTarget {
                profile,
                namespace,
                name,
                exists,
            } => {
                let key = (*profile, namespace.clone(), name.clone());
                let at = self.targets.iter().position(|x| *x == key);
                match (at, exists) {
                    (None, true) => self.targets.push(key),
                    (Some(i), false) => {
                        self.targets.remove(i);
                        self.depart(Dep::ResumeTarget(*profile, name.clone()), t);
                    }
                    _ => {}
                }
            }
            Change::Listed {
                feed,
                profile,
                namespace,
                listed,
            } => {
                let in_scope = |ns: Option<&str>| match namespace {
                    None => true,
                    Some(n) => ns == Some(n.as_str()),
                };
                match feed {
                    Feed::Pods => {
                        while let Some(i) = self.pods.iter().position(|p| {
                            p.profile == *profile
                                && in_scope(Some(&p.ns))
                                && !listed.contains(&(p.ns.clone(), p.name.clone()))
                        }) {
                            self.probe("listed: pod gone");
                            self.remove_pod(i, t);
                        }
                    }
                    Feed::ResumeTargets => {
                        while let Some(i) = self.targets.iter().position(|(p, ns, n)| {
                            *p == *profile
                                && in_scope(Some(ns))
                                && !listed.contains(&(ns.clone(), n.clone()))
                        }) {
                            let (p, _, n) = self.targets.remove(i);
                            self.depart(Dep::ResumeTarget(p, n), t);
                        }
                    }
                    Feed::Sessions | Feed::Executions | Feed::Sandboxes => {
                        let kind = match feed {
                            Feed::Sessions => RecordKind::Session,
                            Feed::Executions => RecordKind::Execution,
                            _ => RecordKind::Sandbox,
                        };
                        while let Some(i) = self.records.iter().position(|r| {
                            r.key.kind == kind
                                && r.key.profile == *profile
                                && in_scope(r.ns_attr.as_deref())
                                && !listed.contains(&(
                                    r.rec.namespace.clone().unwrap_or_default(),
                                    r.rec.id.clone(),
                                ))
                        }) {
                            self.probe("listed: record gone");
                            self.remove_record(i, t);
                        }
                    }
                }
            }
            Change::Source(s) => match self.sources.iter_mut().find(|x| x.name == s.name) {
                Some(x) => *x = s.clone(),
                None => self.sources.push(s.clone()),
            },
            Change::Tick => {}
        }
    }

    fn upsert(&mut self, t: Ts, r: &Record) {
        let p = self.profiles.get(r.profile);
        let ns_attr = r
            .namespace
            .clone()
            .or_else(|| p.records.default_namespace.clone());
        let key = RKey {
            kind: r.kind,
            profile: r.profile,
            ns: if p.namespaced_ids(r.kind) {
                ns_attr.clone()
            } else {
                None
            },
            id: r.id.clone(),
        };
        let shard_key = match r.kind {
            RecordKind::Execution => r.session.clone().or_else(|| r.sandbox.clone()),
            RecordKind::Session | RecordKind::Sandbox => Some(r.id.clone()),
        };
        let keep = shard_key.as_deref().is_none_or(|k| self.shard.owns(k));
        let at = self.records.iter().position(|x| x.key == key);
        if !keep {
            if let Some(i) = at {
                self.remove_record(i, t);
            }
            return;
        }
        let fresh_since = r.updated_at.unwrap_or(t);
        match at {
            Some(i) => {
                let old = &self.records[i];
                let same = old.rec.state == r.state
                    && old.ns_attr == ns_attr
                    && old.rec.pod == r.pod
                    && old.rec.session == r.session
                    && old.rec.sandbox == r.sandbox;
                let since = if same { old.since } else { fresh_since };
                self.records[i] = ORec {
                    key,
                    rec: r.clone(),
                    ns_attr,
                    since,
                };
            }
            None => self.records.push(ORec {
                key,
                rec: r.clone(),
                ns_attr,
                since: fresh_since,
            }),
        }
    }

    // ------------------------------------------------------------------ joins

    fn resolve(
        &self,
        kind: RecordKind,
        profile: ProfileId,
        ns: Option<&str>,
        id: &str,
    ) -> Resolved<'_> {
        let p = self.profiles.get(profile);
        let hits: Vec<&ORec> = self
            .records
            .iter()
            .filter(|r| r.key.kind == kind && r.key.profile == profile && r.key.id == id)
            .collect();
        if !p.namespaced_ids(kind) {
            return match hits.iter().find(|r| r.key.ns.is_none()) {
                Some(r) => Resolved::Found(r),
                None => Resolved::Missing,
            };
        }
        match ns {
            Some(n) => match hits.iter().find(|r| r.key.ns.as_deref() == Some(n)) {
                Some(r) => Resolved::Found(r),
                None => Resolved::Missing,
            },
            None => match hits.len() {
                0 => {
                    self.probe("resolve: by id alone, missing");
                    Resolved::Missing
                }
                1 => {
                    self.probe("resolve: by id alone, found");
                    Resolved::Found(hits[0])
                }
                _ => {
                    self.probe("resolve: ambiguous");
                    Resolved::Ambiguous
                }
            },
        }
    }

    fn admits(r: &ORec, ns: &str) -> bool {
        r.ns_attr.as_deref().is_none_or(|n| n == ns)
    }

    fn best<'a>(&self, mut pods: Vec<&'a OPod>) -> Option<&'a OPod> {
        if pods.len() > 1 {
            self.probe("join: several pods, best chosen");
        }
        pods.sort_by(|a, b| {
            // not terminating first, newest creation, largest uid
            (!a.terminating, a.created, &a.uid).cmp(&(!b.terminating, b.created, &b.uid))
        });
        pods.pop()
    }

    fn pod_of_session(&self, s: &ORec) -> PodJoin<'_> {
        let pods: Vec<&OPod> = self
            .pods
            .iter()
            .filter(|p| {
                p.profile == s.key.profile
                    && Self::admits(s, &p.ns)
                    && (s.rec.pod.as_deref() == Some(p.name.as_str())
                        || p.session.as_deref() == Some(s.key.id.as_str()))
            })
            .collect();
        if let Some(p) = self.best(pods) {
            return PodJoin::Found(p);
        }
        let has_key = self
            .profiles
            .get(s.key.profile)
            .pods
            .as_ref()
            .is_some_and(|m| m.session_key.is_some());
        if s.rec.pod.is_some() || has_key {
            PodJoin::Missing
        } else {
            PodJoin::None
        }
    }

    fn pod_holder<'a>(
        &self,
        profile: ProfileId,
        session: Option<&'a str>,
        pod: Option<&'a str>,
    ) -> Holder<'a> {
        let keyed = self
            .profiles
            .get(profile)
            .pods
            .as_ref()
            .is_some_and(|m| m.session_key.is_some());
        let k = if keyed { session } else { pod };
        match k {
            Some(k) => Holder::Key(k),
            None => Holder::Unknown,
        }
    }

    /// The agent's death: (reason, when).
    fn death(&self, p: &OPod) -> Option<(String, Option<Ts>)> {
        let m = self.profiles.get(p.profile).pods.as_ref().unwrap();
        let finished = matches!(p.phase.as_deref(), Some("Succeeded") | Some("Failed"));
        for c in &p.containers {
            if !m.agent_containers.contains(&c.name) {
                continue;
            }
            let for_good = match &c.state {
                CState::Terminated { code, .. } => match p.restart_policy.as_deref() {
                    Some("Never") => true,
                    Some("OnFailure") => *code == 0,
                    _ => false,
                },
                _ => false,
            };
            if !(finished || for_good) {
                continue;
            }
            return Some(match &c.state {
                CState::Terminated {
                    reason, finished, ..
                } => (
                    reason.clone().unwrap_or_else(|| "Terminated".into()),
                    *finished,
                ),
                _ => (
                    p.reason
                        .clone()
                        .unwrap_or_else(|| p.phase.clone().unwrap_or_default()),
                    p.last_condition,
                ),
            });
        }
        None
    }

    /// The index of the dead agent container (the first agent that counts as dead).
    fn dead_agent_index(&self, p: &OPod) -> Option<usize> {
        let m = self.profiles.get(p.profile).pods.as_ref().unwrap();
        p.containers.iter().position(|c| {
            m.agent_containers.contains(&c.name)
                && matches!(&c.state, CState::Terminated { code, .. }
                if match p.restart_policy.as_deref() {
                    Some("Never") => true,
                    Some("OnFailure") => *code == 0,
                    _ => false,
                })
        })
    }

    fn absence(
        &self,
        profile: ProfileId,
        feed: Feed,
        ns: Option<&str>,
        holder: Holder<'_>,
    ) -> bool {
        absence(&self.sources, self.shard, profile, feed, ns, holder).is_ok()
    }

    // ------------------------------------------------------------------ judging

    fn judge(&self, kind: FindingKind, subject: &Subj) -> Judgement {
        let profile = match subject {
            Subj::Pod { ns, name, uid } => {
                match self
                    .pods
                    .iter()
                    .find(|p| p.ns == *ns && p.name == *name && p.uid == *uid)
                {
                    Some(p) => p.profile,
                    None => return Judgement::Clear,
                }
            }
            Subj::Rec(k) => {
                if !self.records.iter().any(|r| r.key == *k) {
                    return Judgement::Clear;
                }
                k.profile
            }
        };
        let (required, optional) = feeds(kind);
        if required
            .iter()
            .any(|f| trust(&self.sources, profile, *f) == Trust::Unconfigured)
        {
            return Judgement::Clear;
        }
        if required
            .iter()
            .chain(optional)
            .any(|f| trust(&self.sources, profile, *f) == Trust::Untrusted)
        {
            return Judgement::Hold;
        }
        let c = match (kind, subject) {
            (FindingKind::AgentTerminatedPodRunning, Subj::Pod { ns, name, uid }) => {
                let p = self.find_pod(ns, name, uid);
                self.agent_terminated_pod_running(p)
            }
            (FindingKind::LeakedSandboxPod, Subj::Pod { ns, name, uid }) => {
                let p = self.find_pod(ns, name, uid);
                self.leaked_sandbox_pod(p)
            }
            (FindingKind::ExecutionOnDeadAgent, Subj::Rec(k)) => {
                self.execution_on_dead_agent(self.find_rec(k))
            }
            (FindingKind::OrphanedSuspendedSession, Subj::Rec(k)) => {
                self.orphaned_suspended_session(self.find_rec(k))
            }
            (FindingKind::SessionActiveWithoutAgent, Subj::Rec(k)) => {
                self.session_active_without_agent(self.find_rec(k))
            }
            _ => None,
        };
        match c {
            Some(c) => Judgement::Holds(c),
            None => Judgement::Clear,
        }
    }

    fn find_pod(&self, ns: &str, name: &str, uid: &str) -> &OPod {
        self.pods
            .iter()
            .find(|p| p.ns == ns && p.name == name && p.uid == uid)
            .unwrap()
    }

    fn find_rec(&self, k: &RKey) -> &ORec {
        self.records.iter().find(|r| r.key == *k).unwrap()
    }

    fn grace(&self, profile: ProfileId) -> sandwatch::model::profile::Grace {
        self.profiles.get(profile).grace
    }

    fn agent_terminated_pod_running(&self, p: &OPod) -> Option<Candidate> {
        if p.phase.as_deref() != Some("Running") || p.terminating {
            return None;
        }
        let i = self.dead_agent_index(p)?;
        let (reason, at) = self.death(p)?;
        let at = at?;
        let plain = p
            .containers
            .iter()
            .enumerate()
            .any(|(j, c)| j != i && c.state == CState::Running);
        let native = p.natives.iter().any(|c| c.state == CState::Running);
        if !plain && !native {
            return None;
        }
        Some(Candidate {
            reason,
            evidence: at,
            hold: Duration::ZERO,
            not_before: (!plain).then(|| at.saturating_add(self.grace(p.profile).native_sidecar)),
            pod: Some(p.uid.clone()),
        })
    }

    fn execution_on_dead_agent(&self, e: &ORec) -> Option<Candidate> {
        let profile = e.key.profile;
        let prof = self.profiles.get(profile);
        if prof.executions.classify(&e.rec.state) != Some(ExecutionClass::Active) {
            return None;
        }
        let ens = e.ns_attr.as_deref();
        if let Some(sb) = &e.rec.sandbox {
            return match self.resolve(RecordKind::Sandbox, profile, ens, sb) {
                Resolved::Found(s)
                    if prof.sandboxes.classify(&s.rec.state) == Some(SandboxClass::Dead) =>
                {
                    Some(Candidate {
                        reason: "SandboxDead".into(),
                        evidence: s.since,
                        hold: Duration::ZERO,
                        not_before: None,
                        pod: None,
                    })
                }
                _ => None,
            };
        }
        let session = e
            .rec
            .session
            .as_deref()
            .map(|s| self.resolve(RecordKind::Session, profile, ens, s));
        let found_session = match &session {
            Some(Resolved::Found(s)) => Some(*s),
            _ => None,
        };
        let join = if let Some(pod) = &e.rec.pod {
            let pods: Vec<&OPod> = self
                .pods
                .iter()
                .filter(|p| p.profile == profile && p.name == *pod && Self::admits(e, &p.ns))
                .collect();
            match self.best(pods) {
                Some(p) => PodJoin::Found(p),
                None => PodJoin::Missing,
            }
        } else {
            let pods: Vec<&OPod> = self
                .pods
                .iter()
                .filter(|p| {
                    p.profile == profile
                        && p.execution.as_deref() == Some(e.key.id.as_str())
                        && Self::admits(e, &p.ns)
                })
                .collect();
            match self.best(pods) {
                Some(p) => PodJoin::Found(p),
                None => match &session {
                    Some(Resolved::Found(s)) => self.pod_of_session(s),
                    Some(Resolved::Ambiguous) => PodJoin::Ambiguous,
                    Some(Resolved::Missing) | None => PodJoin::None,
                },
            }
        };
        match join {
            PodJoin::Found(p) => {
                let (reason, at) = self.death(p)?;
                if e.rec.pod.is_none() && p.execution.as_deref() != Some(e.key.id.as_str()) {
                    self.probe("execution: dead agent through its session");
                }
                Some(Candidate {
                    reason,
                    evidence: at.unwrap_or(e.since),
                    hold: Duration::ZERO,
                    not_before: None,
                    pod: Some(p.uid.clone()),
                })
            }
            PodJoin::Missing => {
                let ns = ens.or(found_session.and_then(|s| s.ns_attr.as_deref()));
                let pod_name = e
                    .rec
                    .pod
                    .as_deref()
                    .or(found_session.and_then(|s| s.rec.pod.as_deref()));
                let holder =
                    self.pod_holder(profile, found_session.map(|s| s.key.id.as_str()), pod_name);
                if !self.absence(profile, Feed::Pods, ns, holder) {
                    self.probe("execution: pod missing, but no evidence");
                    return None;
                }
                let mut keys = vec![Dep::PodExecution(profile, e.key.id.clone())];
                if let Some(n) = pod_name {
                    keys.push(Dep::PodName(profile, n.to_string()));
                }
                if let Some(s) = found_session {
                    keys.push(Dep::PodSession(profile, s.key.id.clone()));
                }
                let mut evidence = e.since;
                if let Some(s) = found_session {
                    evidence = evidence.max(s.since);
                }
                Some(Candidate {
                    reason: "PodGone".into(),
                    evidence: max_opt(evidence, self.departed(&keys)),
                    hold: self.grace(profile).absence,
                    not_before: None,
                    pod: None,
                })
            }
            PodJoin::Ambiguous | PodJoin::None => None,
        }
    }

    fn session_gone_candidate(&self, s: &ORec) -> Option<Candidate> {
        let profile = s.key.profile;
        let holder = self.pod_holder(profile, Some(&s.key.id), s.rec.pod.as_deref());
        if !self.absence(profile, Feed::Pods, s.ns_attr.as_deref(), holder) {
            self.probe("session: pod missing, but no evidence");
            return None;
        }
        let mut keys = vec![Dep::PodSession(profile, s.key.id.clone())];
        if let Some(n) = &s.rec.pod {
            keys.push(Dep::PodName(profile, n.clone()));
        }
        Some(Candidate {
            reason: "PodGone".into(),
            evidence: max_opt(s.since, self.departed(&keys)),
            hold: self.grace(profile).absence,
            not_before: None,
            pod: None,
        })
    }

    fn orphaned_suspended_session(&self, s: &ORec) -> Option<Candidate> {
        let profile = s.key.profile;
        let prof = self.profiles.get(profile);
        if prof.sessions.classify(&s.rec.state) != Some(SessionClass::Suspended) {
            return None;
        }
        match prof.sessions.resume_from() {
            ResumeFrom::Pod => match self.pod_of_session(s) {
                PodJoin::Missing => self.session_gone_candidate(s),
                _ => None,
            },
            ResumeFrom::CustomResource => {
                let pod = s.rec.pod.as_ref()?;
                let exists = self.targets.iter().any(|(p, ns, n)| {
                    *p == profile && n == pod && s.ns_attr.as_ref().is_none_or(|want| want == ns)
                });
                if exists
                    || !self.absence(
                        profile,
                        Feed::ResumeTargets,
                        s.ns_attr.as_deref(),
                        Holder::Everywhere,
                    )
                {
                    return None;
                }
                Some(Candidate {
                    reason: "ResourceGone".into(),
                    evidence: max_opt(
                        s.since,
                        self.departed(&[Dep::ResumeTarget(profile, pod.clone())]),
                    ),
                    hold: self.grace(profile).absence,
                    not_before: None,
                    pod: None,
                })
            }
        }
    }

    fn session_active_without_agent(&self, s: &ORec) -> Option<Candidate> {
        let prof = self.profiles.get(s.key.profile);
        if prof.sessions.classify(&s.rec.state) != Some(SessionClass::Active) {
            return None;
        }
        match self.pod_of_session(s) {
            PodJoin::Found(p) => {
                let (reason, at) = self.death(p)?;
                Some(Candidate {
                    reason,
                    evidence: at.unwrap_or(s.since),
                    hold: Duration::ZERO,
                    not_before: None,
                    pod: Some(p.uid.clone()),
                })
            }
            PodJoin::Missing => self.session_gone_candidate(s),
            PodJoin::Ambiguous | PodJoin::None => None,
        }
    }

    fn sessions_of_pod(&self, p: &OPod) -> Vec<&ORec> {
        let mut out: Vec<&ORec> = self
            .records
            .iter()
            .filter(|r| {
                r.key.kind == RecordKind::Session
                    && r.key.profile == p.profile
                    && r.rec.pod.as_deref() == Some(p.name.as_str())
            })
            .collect();
        if let Some(sid) = &p.session
            && let Resolved::Found(r) =
                self.resolve(RecordKind::Session, p.profile, Some(&p.ns), sid)
            && !out.iter().any(|x| x.key == r.key)
        {
            out.push(r);
        }
        out.retain(|r| Self::admits(r, &p.ns));
        out
    }

    fn leaked_sandbox_pod(&self, p: &OPod) -> Option<Candidate> {
        if p.terminating {
            return None;
        }
        let prof = self.profiles.get(p.profile);
        let sessions = self.sessions_of_pod(p);
        if !sessions
            .iter()
            .all(|s| prof.sessions.classify(&s.rec.state) == Some(SessionClass::Terminal))
        {
            return None;
        }
        let holder = match &p.session {
            Some(s) => Holder::Key(s),
            None => Holder::Unknown,
        };
        if !self.absence(p.profile, Feed::Sessions, Some(&p.ns), holder) {
            return None;
        }
        let mut evidence = p.created.unwrap_or(Ts(i64::MIN));
        for s in &sessions {
            evidence = evidence.max(s.since);
        }
        let mut keys = vec![Dep::SessionNaming(p.profile, p.name.clone())];
        if let Some(sid) = &p.session {
            keys.push(Dep::Record(RecordKind::Session, p.profile, sid.clone()));
        }
        Some(Candidate {
            reason: if sessions.is_empty() {
                "NoSession".into()
            } else {
                "SessionTerminal".into()
            },
            evidence: max_opt(evidence, self.departed(&keys)),
            hold: self.grace(p.profile).leaked_pod,
            not_before: None,
            pod: Some(p.uid.clone()),
        })
    }
}
