//! The World: pods and records joined in memory, owned by the engine task.
//!
//! It keeps compact projections, never whole API objects: a pod is its identity, phase,
//! deletion flag, the keys that link it to records, and per container its name, role, state,
//! reason, exit code, finish time and restart count. Repeated strings (namespaces, container
//! names, reasons, states) are interned and shared. Indexes answer the joins the rules ask
//! for (pod by name, pods by session or execution key, records by key, records by pod,
//! executions by session or sandbox) in O(1), and each mutation reports the [`Subject`]s it
//! touched so that the engine re-runs rules for those alone.
//!
//! The World also knows which sources feed it and whether each is synced and fresh: a
//! missing pod or record only means something when the source that would show it is trusted.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::kubernetes::Object;
use crate::profile::{ExecutionClass, ProfileId, Profiles, SandboxClass, SessionClass};
use crate::record::{Record, RecordKind};
use crate::shard::Shard;
use crate::time::Ts;

/// A shared, immutable string.
pub type Sym = Arc<str>;

/// A pod's uid: kept as 16 bytes when it is a UUID (as the API server makes them), as text
/// otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uid {
    Uuid([u8; 16]),
    Text(Sym),
}

impl Uid {
    pub fn parse(text: &str) -> Uid {
        let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
        let uuid_shape = text.len() == 36
            && hex.len() == 32
            && [8, 13, 18, 23].iter().all(|&i| text.as_bytes()[i] == b'-');
        if uuid_shape {
            let mut out = [0u8; 16];
            let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
            if hex.chunks(2).zip(out.iter_mut()).all(|(pair, o)| {
                match (digit(pair[0]), digit(pair[1])) {
                    (Some(h), Some(l)) => {
                        *o = (h * 16 + l) as u8;
                        true
                    }
                    _ => false,
                }
            }) {
                return Uid::Uuid(out);
            }
        }
        Uid::Text(Sym::from(text))
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Text(t) => f.write_str(t),
            Uid::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// The World's maps: foldhash is several times faster than SipHash on these short keys, and
/// its per-process random seed keeps it resistant to crafted collisions.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agent,
    /// A plain sidecar in `spec.containers`: keeps the pod Running as long as it runs.
    Regular,
    /// An init container with `restartPolicy: Always` (KEP-753): the kubelet stops it once the
    /// main containers have exited.
    NativeSidecar,
    Init,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// No status reported yet.
    Unknown,
    Waiting,
    Running,
    Terminated,
}

#[derive(Clone, Debug)]
pub struct Container {
    pub name: Sym,
    pub role: Role,
    pub state: ContainerState,
    /// The terminated or waiting reason (`OOMKilled`, `Error`, `CrashLoopBackOff`...).
    pub reason: Option<Sym>,
    pub exit_code: i32,
    /// When it terminated; only meaningful in `Terminated`.
    pub finished_at: Ts,
}

/// The projection of one sandbox pod.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: Sym,
    pub name: Sym,
    pub uid: Uid,
    pub profile: ProfileId,
    pub phase: Phase,
    pub restart_policy: RestartPolicy,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    pub created_at: Ts,
    /// The session id its profile's session key carries.
    pub session: Option<Sym>,
    pub execution: Option<Sym>,
    pub containers: Box<[Container]>,
    /// How a finished (`Failed`, `Succeeded`) pod ended; boxed, as few pods are finished.
    pub ended: Option<Box<PodEnd>>,
}

/// What the API tells of a finished pod's end.
#[derive(Clone, Debug)]
pub struct PodEnd {
    /// `status.reason`: `Evicted`, `NodeLost`, `Shutdown`...
    pub reason: Option<Sym>,
    /// The newest condition transition: about when it ended.
    pub at: Option<Ts>,
}

/// How a pod's agent died, as far as the pod tells.
#[derive(Clone, Debug)]
pub struct AgentDeath<'a> {
    pub container: &'a Sym,
    /// The container's termination reason, or the pod's (`Evicted`) when the pod finished
    /// without a terminated status for the agent.
    pub reason: Sym,
    pub exit_code: Option<i32>,
    /// When, if known.
    pub at: Option<Ts>,
}

impl Pod {
    /// [`Pod::dead_agent`], with the reason, exit code and time that tell of its death.
    pub fn agent_death(&self) -> Option<AgentDeath<'_>> {
        let agent = self.dead_agent()?;
        Some(if agent.state == ContainerState::Terminated {
            AgentDeath {
                container: &agent.name,
                reason: agent.reason.clone().unwrap_or_else(|| "Terminated".into()),
                exit_code: Some(agent.exit_code),
                at: Some(agent.finished_at),
            }
        } else {
            // The pod finished (evicted, its node lost) while the agent's status still says
            // running, waiting or nothing: the pod's own reason and time are all there is.
            AgentDeath {
                container: &agent.name,
                reason: self
                    .ended
                    .as_ref()
                    .and_then(|e| e.reason.clone())
                    .unwrap_or_else(|| match self.phase {
                        Phase::Succeeded => "Succeeded".into(),
                        _ => "Failed".into(),
                    }),
                exit_code: None,
                at: self.ended.as_ref().and_then(|e| e.at),
            }
        })
    }

    /// An agent container that has terminated for good: the pod is finished, or the agent
    /// exited and the restart policy will not bring it back (under `Always`, or `OnFailure`
    /// after a failure, a terminated agent is a crash loop in progress, not a dead agent).
    pub fn dead_agent(&self) -> Option<&Container> {
        let finished = matches!(self.phase, Phase::Succeeded | Phase::Failed);
        self.containers.iter().find(|c| {
            c.role == Role::Agent
                && (finished
                    || (c.state == ContainerState::Terminated
                        && match self.restart_policy {
                            RestartPolicy::Never => true,
                            RestartPolicy::OnFailure => c.exit_code == 0,
                            RestartPolicy::Always => false,
                        }))
        })
    }

    /// Whether a plain container (sidecar or another agent) runs, and whether a native
    /// sidecar does.
    pub fn others_running(&self) -> (bool, bool) {
        let running = |roles: &[Role]| {
            self.containers
                .iter()
                .any(|c| roles.contains(&c.role) && c.state == ContainerState::Running)
        };
        (
            running(&[Role::Regular, Role::Agent]),
            running(&[Role::NativeSidecar]),
        )
    }

    pub fn subject(&self) -> Subject {
        Subject::Pod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// Identifies a record: kind, profile, namespace (custom resources and records that name
/// one) and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub kind: RecordKind,
    pub profile: ProfileId,
    pub namespace: Option<Sym>,
    pub id: Sym,
}

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
    pub pod: Option<Sym>,
    pub session: Option<Sym>,
    pub sandbox: Option<Sym>,
    pub attempt: Option<u64>,
    /// Since when the record has been in its current state (its `updated_at` when the state
    /// changed, else the time the change was seen).
    pub since: Ts,
}

/// Something a rule can judge: a pod (by uid, so a re-created pod is a new subject) or a record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Pod { namespace: Sym, name: Sym, uid: Uid },
    Record(RecordKey),
}

/// What a source feeds into the World.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feed {
    Pods,
    Sessions,
    Executions,
    Sandboxes,
    /// Custom resources a suspended session resumes from.
    ResumeTargets,
}

impl Feed {
    pub const ALL: [Feed; 5] = [
        Feed::Pods,
        Feed::Sessions,
        Feed::Executions,
        Feed::Sandboxes,
        Feed::ResumeTargets,
    ];

    pub fn of_record(kind: RecordKind) -> Feed {
        match kind {
            RecordKind::Session => Feed::Sessions,
            RecordKind::Execution => Feed::Executions,
            RecordKind::Sandbox => Feed::Sandboxes,
        }
    }
}

/// The health of one source, as the source reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub name: String,
    /// The profile whose records or pods it provides; `None` for every profile.
    pub profile: Option<ProfileId>,
    pub feeds: Vec<Feed>,
    /// The initial list or load is complete.
    pub synced: bool,
    /// The last successful poll or watch activity is within the source's staleness bound.
    pub fresh: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// No source provides this feed: rules that need it do not run.
    Unconfigured,
    /// Every source that provides it is synced and fresh: absence is evidence.
    Trusted,
    /// Some source that provides it is unsynced or stale: findings resting on it hold.
    Untrusted,
}

/// How far `profile` can rely on `feed`, given the sources' statuses: unconfigured when no
/// source provides it to that profile, trusted when all that do are synced and fresh.
pub fn trust(sources: &[SourceStatus], profile: ProfileId, feed: Feed) -> Trust {
    let mut providers = sources
        .iter()
        .filter(|s| s.feeds.contains(&feed) && s.profile.is_none_or(|p| p == profile))
        .peekable();
    if providers.peek().is_none() {
        return Trust::Unconfigured;
    }
    if providers.all(|s| s.synced && s.fresh) {
        Trust::Trusted
    } else {
        Trust::Untrusted
    }
}

/// Where a record's agent is, as far as the World can tell.
#[derive(Debug)]
pub enum PodLink<'a> {
    /// Nothing links the record to a pod (no pod name, no session key).
    None,
    /// A pod is named or keyed, and no such pod exists.
    Missing,
    Found(&'a Pod),
}

/// A map from a key to pod slots that is almost always one-to-one: the usual single slot
/// sits in `first` (4 bytes), the rare extra ones (a replacement pod next to a terminating
/// one, the same name in two namespaces) in `more`.
struct PodIndex<K> {
    first: HashMap<K, u32>,
    more: HashMap<K, Vec<u32>>,
}

impl<K: std::hash::Hash + Eq + Clone> PodIndex<K> {
    fn new() -> Self {
        PodIndex {
            first: HashMap::default(),
            more: HashMap::default(),
        }
    }

    fn get<Q>(&self, key: &Q) -> impl Iterator<Item = u32> + '_
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

    fn insert(&mut self, key: K, idx: u32) {
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

    fn remove(&mut self, key: &K, idx: u32) {
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

fn vec_remove<K: std::hash::Hash + Eq, V: PartialEq>(map: &mut HashMap<K, Vec<V>>, key: &K, v: &V) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|x| x != v);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

/// Of several pods for one agent (a replacement next to a terminating one), the live one,
/// else the newest.
fn best_pod<'a>(pods: impl Iterator<Item = &'a Pod>) -> Option<&'a Pod> {
    pods.max_by(|a, b| {
        (!a.terminating, a.created_at, &a.uid).cmp(&(!b.terminating, b.created_at, &b.uid))
    })
}

pub struct World {
    profiles: Arc<Profiles>,
    strings: HashSet<Sym>,
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
    /// Resume targets that exist: (profile, name) → namespaces.
    resume_targets: HashMap<(ProfileId, Sym), Vec<Sym>>,
    sources: Vec<SourceStatus>,
    pod_count: usize,
    shard: Shard,
}

impl World {
    pub fn new(profiles: Arc<Profiles>) -> World {
        World::sharded(profiles, Shard::ALL)
    }

    /// A World that keeps only what `shard` owns (see `shard.rs`).
    pub fn sharded(profiles: Arc<Profiles>, shard: Shard) -> World {
        World {
            shard,
            profiles,
            strings: Default::default(),
            pods: Vec::new(),
            free: Vec::new(),
            pods_by_name: PodIndex::new(),
            pods_by_session: PodIndex::new(),
            pods_by_execution: PodIndex::new(),
            records: Default::default(),
            records_by_pod: Default::default(),
            executions_by_session: Default::default(),
            executions_by_sandbox: Default::default(),
            resume_targets: Default::default(),
            sources: Vec::new(),
            pod_count: 0,
        }
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    fn intern(&mut self, s: &str) -> Sym {
        if let Some(existing) = self.strings.get(s) {
            return existing.clone();
        }
        let sym: Sym = Arc::from(s);
        self.strings.insert(sym.clone());
        sym
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

    // ----------------------------------------------------------------------------------------
    // Sources

    /// Records a source's status; returns whether any profile's trust in a feed changed.
    pub fn set_source(&mut self, status: SourceStatus) -> bool {
        let all = |w: &World| -> Vec<Trust> {
            w.profiles
                .iter()
                .flat_map(|(p, _)| Feed::ALL.map(|f| w.trust(p, f)))
                .collect()
        };
        let before = all(self);
        match self.sources.iter_mut().find(|s| s.name == status.name) {
            Some(s) => *s = status,
            None => self.sources.push(status),
        }
        before != all(self)
    }

    pub fn sources(&self) -> &[SourceStatus] {
        &self.sources
    }

    /// How far a profile can rely on a feed, from the sources that provide it to that profile.
    pub fn trust(&self, profile: ProfileId, feed: Feed) -> Trust {
        trust(&self.sources, profile, feed)
    }

    // ----------------------------------------------------------------------------------------
    // Pods

    fn pod_index(&self, namespace: &str, name: &str) -> Option<u32> {
        self.pods_by_name.get(name).find(|&i| {
            self.pods[i as usize]
                .as_ref()
                .is_some_and(|p| &*p.namespace == namespace)
        })
    }

    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pod_index(namespace, name)
            .and_then(|i| self.pods[i as usize].as_ref())
    }

    pub fn pod_of(&self, subject: &Subject) -> Option<&Pod> {
        match subject {
            Subject::Pod {
                namespace,
                name,
                uid,
            } => self.pod_by_name(namespace, name).filter(|p| p.uid == *uid),
            Subject::Record(_) => None,
        }
    }

    /// Adds or replaces a pod. Pods that match no profile are not kept (and a pod that stops
    /// matching is removed). Returns the subjects whose rules must be re-run.
    pub fn upsert_pod(&mut self, obj: &Object, at: Ts, touched: &mut Vec<Subject>) {
        let (Some(namespace), Some(name)) = (obj.namespace(), obj.name()) else {
            return;
        };
        let Some(profile) = self
            .profiles
            .for_pod(namespace, obj.metadata.labels.as_ref())
        else {
            self.delete_pod(namespace, name, None, touched);
            return;
        };
        if self.shard.total > 1 {
            let meta = &obj.metadata;
            let session = self.profiles.get(profile).pods.as_ref().and_then(|m| {
                m.session_key
                    .as_ref()
                    .and_then(|k| k.read(meta.labels.as_ref(), meta.annotations.as_ref()))
            });
            if !self.shard.owns(session.unwrap_or(name)) {
                self.delete_pod(namespace, name, None, touched);
                return;
            }
        }
        let pod = self.project(obj, profile, at);
        if let Some(idx) = self.pod_index(namespace, name) {
            let old = self.pods[idx as usize].take().expect("indexed pod exists");
            self.affected_by_pod(&old, touched);
            self.unindex_pod(&old, idx);
            self.index_pod(&pod, idx);
            self.affected_by_pod(&pod, touched);
            self.pods[idx as usize] = Some(pod);
        } else {
            let idx = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.pods.push(None);
                    (self.pods.len() - 1) as u32
                }
            };
            self.pods_by_name.insert(pod.name.clone(), idx);
            self.index_pod(&pod, idx);
            self.affected_by_pod(&pod, touched);
            self.pods[idx as usize] = Some(pod);
            self.pod_count += 1;
        }
    }

    /// Removes a pod. With a uid, only the pod with that uid goes (a DELETED event for an old
    /// incarnation must not remove its successor).
    pub fn delete_pod(
        &mut self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        touched: &mut Vec<Subject>,
    ) {
        let Some(idx) = self.pod_index(namespace, name) else {
            return;
        };
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            let uid = Uid::parse(uid);
            if self.pods[idx as usize]
                .as_ref()
                .is_some_and(|p| p.uid != uid)
            {
                return;
            }
        }
        let old = self.pods[idx as usize].take().expect("indexed pod exists");
        self.affected_by_pod(&old, touched);
        self.unindex_pod(&old, idx);
        self.pods_by_name.remove(&old.name, idx);
        self.free.push(idx);
        self.pod_count -= 1;
    }

    fn index_pod(&mut self, pod: &Pod, idx: u32) {
        if let Some(s) = &pod.session {
            self.pods_by_session.insert((pod.profile, s.clone()), idx);
        }
        if let Some(e) = &pod.execution {
            self.pods_by_execution.insert((pod.profile, e.clone()), idx);
        }
    }

    fn unindex_pod(&mut self, pod: &Pod, idx: u32) {
        if let Some(s) = &pod.session {
            self.pods_by_session.remove(&(pod.profile, s.clone()), idx);
        }
        if let Some(e) = &pod.execution {
            self.pods_by_execution
                .remove(&(pod.profile, e.clone()), idx);
        }
    }

    fn project(&mut self, obj: &Object, profile: ProfileId, at: Ts) -> Pod {
        let profiles = self.profiles.clone();
        let p = profiles.get(profile);
        let pods = p
            .pods
            .as_ref()
            .expect("a profile that takes pods has a pod section");
        let meta = &obj.metadata;
        let key = |k: &Option<crate::profile::MetaKey>| {
            k.as_ref()
                .and_then(|k| k.read(meta.labels.as_ref(), meta.annotations.as_ref()))
        };
        let session = key(&pods.session_key).map(Sym::from);
        let execution = key(&pods.execution_key).map(Sym::from);
        let status_of = |name: &str, init: bool| {
            let list = if init {
                &obj.status.init_container_statuses
            } else {
                &obj.status.container_statuses
            };
            list.iter().find(|s| s.name == name)
        };
        let mut specs: Vec<(&str, Role, bool)> = Vec::new();
        for c in &obj.spec.init_containers {
            let role = if c.restart_policy.as_deref() == Some("Always") {
                Role::NativeSidecar
            } else {
                Role::Init
            };
            specs.push((&c.name, role, true));
        }
        for c in &obj.spec.containers {
            specs.push((&c.name, Role::Regular, false));
        }
        // Statuses without a spec entry (an object that was stripped of its spec).
        for s in &obj.status.init_container_statuses {
            if !specs.iter().any(|(n, _, init)| *init && *n == s.name) {
                specs.push((&s.name, Role::Init, true));
            }
        }
        for s in &obj.status.container_statuses {
            if !specs.iter().any(|(n, _, init)| !*init && *n == s.name) {
                specs.push((&s.name, Role::Regular, false));
            }
        }
        let mut containers = Vec::with_capacity(specs.len());
        for (name, role, init) in specs {
            let role = if !init && pods.agent_containers.iter().any(|a| a == name) {
                Role::Agent
            } else {
                role
            };
            let st = status_of(name, init);
            let (state, reason, exit_code, finished_at) = match st.map(|s| &s.state) {
                Some(s) if s.terminated.is_some() => {
                    let t = s.terminated.as_ref().expect("checked");
                    (
                        ContainerState::Terminated,
                        t.reason.as_deref(),
                        t.exit_code,
                        t.finished_at.unwrap_or(at),
                    )
                }
                Some(s) if s.running.is_some() => (ContainerState::Running, None, 0, Ts(0)),
                Some(s) if s.waiting.is_some() => (
                    ContainerState::Waiting,
                    s.waiting.as_ref().and_then(|w| w.reason.as_deref()),
                    0,
                    Ts(0),
                ),
                _ => (ContainerState::Unknown, None, 0, Ts(0)),
            };
            containers.push(Container {
                name: self.intern(name),
                role,
                state,
                reason: reason.map(|r| self.intern(r)),
                exit_code,
                finished_at,
            });
        }
        let phase = match obj.status.phase.as_deref() {
            Some("Pending") => Phase::Pending,
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            _ => Phase::Unknown,
        };
        let finished = matches!(phase, Phase::Succeeded | Phase::Failed);
        let restart_policy = match obj.spec.restart_policy.as_deref() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        };
        let namespace = self.intern(obj.namespace().unwrap_or_default());
        let uid = obj
            .metadata
            .uid
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(Uid::parse)
            // Without a uid, namespace/name is the identity.
            .unwrap_or_else(|| {
                Uid::Text(Sym::from(format!(
                    "{namespace}/{}",
                    obj.name().unwrap_or_default()
                )))
            });
        Pod {
            name: Sym::from(obj.name().unwrap_or_default()),
            namespace,
            uid,
            profile,
            phase,
            restart_policy,
            terminating: obj.metadata.deletion_timestamp.is_some(),
            created_at: obj.created_at().unwrap_or(at),
            session,
            execution,
            containers: containers.into_boxed_slice(),
            ended: finished.then(|| {
                Box::new(PodEnd {
                    reason: obj.status.reason.as_deref().map(|r| self.intern(r)),
                    at: obj
                        .status
                        .conditions
                        .iter()
                        .filter_map(|c| c.last_transition_time)
                        .max(),
                })
            }),
        }
    }

    /// Everything a change to this pod can change the verdict of.
    fn affected_by_pod(&self, pod: &Pod, touched: &mut Vec<Subject>) {
        touched.push(pod.subject());
        let mut sessions = Vec::new();
        if let Some(keys) = self.records_by_pod.get(&pod.name) {
            for k in keys {
                if k.profile == pod.profile
                    && k.namespace.as_ref().is_none_or(|n| *n == pod.namespace)
                {
                    touched.push(Subject::Record(k.clone()));
                    if k.kind == RecordKind::Session {
                        sessions.push(k.id.clone());
                    }
                }
            }
        }
        if let Some(s) = &pod.session {
            for k in self.session_keys(pod.profile, Some(&pod.namespace), s) {
                touched.push(Subject::Record(k));
            }
            sessions.push(s.clone());
        }
        if let Some(e) = &pod.execution {
            for ns in [Some(pod.namespace.clone()), None] {
                let k = RecordKey {
                    kind: RecordKind::Execution,
                    profile: pod.profile,
                    namespace: ns,
                    id: e.clone(),
                };
                if self.records.contains_key(&k) {
                    touched.push(Subject::Record(k));
                }
            }
        }
        for s in sessions {
            if let Some(execs) = self.executions_by_session.get(&(pod.profile, s)) {
                touched.extend(execs.iter().cloned().map(Subject::Record));
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Records

    pub fn record(&self, key: &RecordKey) -> Option<&StoredRecord> {
        self.records.get(key)
    }

    /// Session records with this id: one in the pod's namespace, one with no namespace.
    fn session_keys(
        &self,
        profile: ProfileId,
        namespace: Option<&Sym>,
        id: &Sym,
    ) -> Vec<RecordKey> {
        let mut out = Vec::new();
        for ns in [namespace.cloned(), None] {
            let k = RecordKey {
                kind: RecordKind::Session,
                profile,
                namespace: ns,
                id: id.clone(),
            };
            if self.records.contains_key(&k) && !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }

    pub fn record_key(
        &mut self,
        kind: RecordKind,
        profile: ProfileId,
        namespace: Option<&str>,
        id: &str,
    ) -> RecordKey {
        RecordKey {
            kind,
            profile,
            namespace: namespace.map(|n| self.intern(n)),
            id: Sym::from(id),
        }
    }

    pub fn upsert_record(&mut self, rec: Record, at: Ts, touched: &mut Vec<Subject>) {
        // An execution that names neither a session nor a sandbox is kept by every shard: its
        // pod may be on any of them (see `World::pod_of_execution`).
        let shard_key = match rec.kind {
            RecordKind::Execution => rec.session.as_deref().or(rec.sandbox.as_deref()),
            RecordKind::Session | RecordKind::Sandbox => Some(&*rec.id),
        };
        if shard_key.is_some_and(|k| !self.shard.owns(k)) {
            let key = self.record_key(rec.kind, rec.profile, rec.namespace.as_deref(), &rec.id);
            self.delete_record(&key, touched);
            return;
        }
        let key = self.record_key(rec.kind, rec.profile, rec.namespace.as_deref(), &rec.id);
        let profiles = self.profiles.clone();
        let p = profiles.get(rec.profile);
        let class = match rec.kind {
            RecordKind::Session => p.sessions.classify(&rec.state).map(StateClass::Session),
            RecordKind::Execution => p.executions.classify(&rec.state).map(StateClass::Execution),
            RecordKind::Sandbox => p.sandboxes.classify(&rec.state).map(StateClass::Sandbox),
        };
        // Sources validate records first; an unvalidated unknown state is dropped here.
        let Some(class) = class else { return };
        let old = self.records.remove(&key);
        if let Some(old) = &old {
            self.affected_by_record(&key, old, touched);
            self.unindex_record(&key, old);
        }
        let since = match &old {
            Some(o) if *o.state == *rec.state => o.since,
            _ => rec.updated_at.unwrap_or(at),
        };
        let stored = StoredRecord {
            state: self.intern(&rec.state),
            class,
            pod: rec.pod.map(Sym::from),
            session: rec.session.map(Sym::from),
            sandbox: rec.sandbox.map(Sym::from),
            attempt: rec.attempt,
            since,
        };
        self.index_record(&key, &stored);
        self.affected_by_record(&key, &stored, touched);
        self.records.insert(key, stored);
    }

    pub fn delete_record(&mut self, key: &RecordKey, touched: &mut Vec<Subject>) {
        if let Some(old) = self.records.remove(key) {
            self.affected_by_record(key, &old, touched);
            self.unindex_record(key, &old);
        }
    }

    fn index_record(&mut self, key: &RecordKey, rec: &StoredRecord) {
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

    fn affected_by_record(&self, key: &RecordKey, rec: &StoredRecord, touched: &mut Vec<Subject>) {
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

    // ----------------------------------------------------------------------------------------
    // Resume targets (custom resources a suspended session resumes from)

    pub fn set_resume_target(
        &mut self,
        profile: ProfileId,
        namespace: &str,
        name: &str,
        exists: bool,
        touched: &mut Vec<Subject>,
    ) {
        let ns = self.intern(namespace);
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
        if had != exists
            && let Some(keys) = self.records_by_pod.get(name)
        {
            for k in keys {
                if k.profile == profile
                    && k.kind == RecordKind::Session
                    && k.namespace.as_ref().is_none_or(|n| *n == ns)
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
        Some(namespaces.is_some_and(|list| match &key.namespace {
            Some(ns) => list.contains(ns),
            None => !list.is_empty(),
        }))
    }

    // ----------------------------------------------------------------------------------------
    // Joins the rules use

    fn pods_at<'a>(
        &'a self,
        slots: impl Iterator<Item = u32> + 'a,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        slots.filter_map(move |i| self.pods[i as usize].as_ref())
    }

    /// Every pod that belongs to a session: named by the record, or carrying its session key.
    pub fn pods_of_session(&self, key: &RecordKey, rec: &StoredRecord) -> Vec<&Pod> {
        let in_scope = |p: &&Pod| {
            p.profile == key.profile && key.namespace.as_ref().is_none_or(|n| *n == p.namespace)
        };
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
        let keyed = self
            .profiles
            .get(key.profile)
            .pods
            .as_ref()
            .is_some_and(|m| m.session_key.is_some());
        if rec.pod.is_some() || keyed {
            PodLink::Missing
        } else {
            PodLink::None
        }
    }

    /// The session record an execution belongs to.
    pub fn session_of(
        &self,
        key: &RecordKey,
        rec: &StoredRecord,
    ) -> Option<(RecordKey, &StoredRecord)> {
        let id = rec.session.as_ref()?;
        self.session_keys(key.profile, key.namespace.as_ref(), id)
            .into_iter()
            .next()
            .and_then(|k| self.records.get(&k).map(|r| (k, r)))
    }

    /// The pod an execution's agent runs in: named by the execution, keyed by its id, or its
    /// session's pod. An execution without a session is not sharded with its pod: when
    /// sharded, a pod this shard does not have may exist on another one, and its absence is
    /// no evidence (`None`).
    pub fn pod_of_execution(&self, key: &RecordKey, rec: &StoredRecord) -> PodLink<'_> {
        match self.linked_pod_of_execution(key, rec) {
            PodLink::Missing if self.shard.total > 1 && rec.session.is_none() => PodLink::None,
            link => link,
        }
    }

    fn linked_pod_of_execution(&self, key: &RecordKey, rec: &StoredRecord) -> PodLink<'_> {
        let in_scope = |p: &&Pod| {
            p.profile == key.profile && key.namespace.as_ref().is_none_or(|n| *n == p.namespace)
        };
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
            Some((skey, srec)) => self.pod_of_session(&skey, srec),
            None => PodLink::None,
        }
    }

    /// The sandbox record an execution runs against.
    pub fn sandbox_of(
        &self,
        key: &RecordKey,
        rec: &StoredRecord,
    ) -> Option<(Sym, Option<&StoredRecord>)> {
        let id = rec.sandbox.as_ref()?;
        let found = [key.namespace.clone(), None].into_iter().find_map(|ns| {
            self.records.get(&RecordKey {
                kind: RecordKind::Sandbox,
                profile: key.profile,
                namespace: ns,
                id: id.clone(),
            })
        });
        Some((id.clone(), found))
    }

    /// Session records that claim a pod: named by it, or named by its session key.
    pub fn sessions_of_pod(&self, pod: &Pod) -> Vec<(RecordKey, &StoredRecord)> {
        let mut keys: Vec<RecordKey> = Vec::new();
        if let Some(list) = self.records_by_pod.get(&pod.name) {
            keys.extend(
                list.iter()
                    .filter(|k| {
                        k.kind == RecordKind::Session
                            && k.profile == pod.profile
                            && k.namespace.as_ref().is_none_or(|n| *n == pod.namespace)
                    })
                    .cloned(),
            );
        }
        if let Some(s) = &pod.session {
            for k in self.session_keys(pod.profile, Some(&pod.namespace), s) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys.into_iter()
            .filter_map(|k| self.records.get(&k).map(|r| (k, r)))
            .collect()
    }

    /// After a source's full list: removes what it no longer lists within its scope (the
    /// pods, records of one kind, or resume targets of a profile, in one namespace or all),
    /// because those vanished while nobody was watching. Records without a namespace are
    /// listed as ("", id).
    pub fn retain_listed(
        &mut self,
        feed: Feed,
        profile: ProfileId,
        namespace: Option<&str>,
        listed: &std::collections::HashSet<(String, String)>,
        touched: &mut Vec<Subject>,
    ) {
        let in_scope = |ns: &str| namespace.is_none_or(|n| n == ns);
        let missing = |ns: &str, name: &str| !listed.contains(&(ns.to_string(), name.to_string()));
        match feed {
            Feed::Pods => {
                let gone: Vec<(Sym, Sym)> = self
                    .pods()
                    .filter(|p| p.profile == profile && in_scope(&p.namespace))
                    .filter(|p| missing(&p.namespace, &p.name))
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .collect();
                for (ns, name) in gone {
                    self.delete_pod(&ns, &name, None, touched);
                }
            }
            Feed::Sessions | Feed::Executions | Feed::Sandboxes => {
                let kind = match feed {
                    Feed::Sessions => RecordKind::Session,
                    Feed::Executions => RecordKind::Execution,
                    _ => RecordKind::Sandbox,
                };
                let gone: Vec<RecordKey> = self
                    .records
                    .keys()
                    .filter(|k| k.kind == kind && k.profile == profile)
                    .filter(|k| {
                        let ns = k.namespace.as_deref().unwrap_or("");
                        in_scope(ns) && missing(ns, &k.id)
                    })
                    .cloned()
                    .collect();
                for k in gone {
                    self.delete_record(&k, touched);
                }
            }
            Feed::ResumeTargets => {
                let gone: Vec<(Sym, Sym)> = self
                    .resume_targets
                    .iter()
                    .filter(|((p, _), _)| *p == profile)
                    .flat_map(|((_, name), nss)| {
                        nss.iter().map(move |ns| (ns.clone(), name.clone()))
                    })
                    .filter(|(ns, name)| in_scope(ns) && missing(ns, name))
                    .collect();
                for (ns, name) in gone {
                    self.set_resume_target(profile, &ns, &name, false, touched);
                }
            }
        }
    }

    /// Every subject in the World (for a full re-evaluation when a source's trust changes).
    pub fn all_subjects(&self) -> Vec<Subject> {
        self.pods()
            .map(Pod::subject)
            .chain(self.records.keys().cloned().map(Subject::Record))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Uid;

    #[test]
    fn uuids_are_kept_as_bytes_and_print_back() {
        let text = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let uid = Uid::parse(text);
        assert!(matches!(uid, Uid::Uuid(_)));
        assert_eq!(uid.to_string(), text);
        for other in [
            "uid-1",
            "5F0C1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B",
            "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5z",
        ] {
            assert_eq!(Uid::parse(other), Uid::Text(other.into()));
            assert_eq!(Uid::parse(other).to_string(), other);
        }
    }
}
