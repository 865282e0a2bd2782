//! Profiles: how one platform looks to sandwatch.
//!
//! A profile says which pods are the platform's sandboxes, which container in them is the
//! agent, how a pod names its session and execution, what the platform's record states mean,
//! and which custom resources carry records. Sources use it to decode, the World to join,
//! and rules to judge. Profiles are built from the YAML config or a preset (`app::config`);
//! this file holds the resolved, validated form the rest of the code reads.

use std::sync::Arc;
use std::time::Duration;

use kube::core::{Selector, SelectorExt};

pub use crate::model::ids::ProfileId;
use crate::model::ids::RecordKind;
use crate::model::kubernetes::MetaKeys;
use std::collections::BTreeMap;

/// All configured profiles. The first one is the default for records that name none.
#[derive(Debug)]
pub struct Profiles {
    list: Vec<Profile>,
}

#[derive(Debug)]
pub struct Profile {
    pub name: Arc<str>,
    /// `None` when the platform's sandboxes are not Kubernetes pods (e.g. Modal).
    pub pods: Option<PodMatch>,
    pub sessions: SessionStates,
    pub executions: ExecutionStates,
    pub sandboxes: SandboxStates,
    pub custom_resources: Vec<CustomResource>,
    pub grace: Grace,
    /// How the profile's records are identified.
    pub records: RecordIdentity,
}

/// How a profile's records are identified and placed (the sources that read them are
/// configured with them but are not the model's concern).
#[derive(Clone, Debug, Default)]
pub struct RecordIdentity {
    /// Where the pods of records that name no namespace live.
    pub default_namespace: Option<String>,
    /// Record kinds whose ids are unique only within a namespace (besides sessions read
    /// from a custom resource, which always are).
    pub namespaced_ids: Vec<RecordKind>,
}

#[derive(Debug)]
pub struct PodMatch {
    /// The label selector as written (sent to the API server as-is).
    pub selector_text: String,
    pub selector: Selector,
    /// The label keys the selector reads.
    pub selector_keys: Vec<String>,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub agent_containers: Vec<String>,
    pub session_key: Option<MetaKey>,
    pub execution_key: Option<MetaKey>,
}

/// Where on a pod an identifier lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Label(String),
    Annotation(String),
}

impl MetaKey {
    pub fn read<'a>(
        &self,
        labels: Option<&'a BTreeMap<String, String>>,
        annotations: Option<&'a BTreeMap<String, String>>,
    ) -> Option<&'a str> {
        let (map, key) = match self {
            MetaKey::Label(k) => (labels, k),
            MetaKey::Annotation(k) => (annotations, k),
        };
        map.and_then(|m| m.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// What a session state means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionClass {
    /// The session claims a live agent right now.
    Active,
    /// The session expects to resume later from its pod (or custom resource).
    Suspended,
    /// A known state that claims nothing yet (creating, stopping, pending...).
    Transitional,
    /// Finished; owns nothing.
    Terminal,
}

/// What an execution state means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecutionClass {
    Active,
    Terminal,
}

/// What a (non-Kubernetes) sandbox state means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SandboxClass {
    Alive,
    Dead,
}

/// Where a suspended session resumes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The pod itself (bare-pod backends): no pod means nothing to resume.
    Pod,
    /// A custom resource (e.g. a Sandbox scaled to zero) named by the session's pod link.
    CustomResource,
}

#[derive(Debug, Default)]
pub struct SessionStates {
    pub active: Vec<String>,
    pub suspended: Vec<String>,
    pub transitional: Vec<String>,
    pub terminal: Vec<String>,
    pub resume_from: Option<ResumeFrom>,
}

impl SessionStates {
    pub fn classify(&self, state: &str) -> Option<SessionClass> {
        let has = |v: &Vec<String>| v.iter().any(|s| s == state);
        if has(&self.active) {
            Some(SessionClass::Active)
        } else if has(&self.suspended) {
            Some(SessionClass::Suspended)
        } else if has(&self.transitional) {
            Some(SessionClass::Transitional)
        } else if has(&self.terminal) {
            Some(SessionClass::Terminal)
        } else {
            None
        }
    }

    pub fn resume_from(&self) -> ResumeFrom {
        self.resume_from.clone().unwrap_or(ResumeFrom::Pod)
    }

    pub fn describe(&self) -> String {
        describe_sets(&[
            ("active", &self.active),
            ("suspended", &self.suspended),
            ("transitional", &self.transitional),
            ("terminal", &self.terminal),
        ])
    }
}

#[derive(Debug, Default)]
pub struct ExecutionStates {
    pub active: Vec<String>,
    pub terminal: Vec<String>,
}

impl ExecutionStates {
    pub fn classify(&self, state: &str) -> Option<ExecutionClass> {
        if self.active.iter().any(|s| s == state) {
            Some(ExecutionClass::Active)
        } else if self.terminal.iter().any(|s| s == state) {
            Some(ExecutionClass::Terminal)
        } else {
            None
        }
    }

    pub fn describe(&self) -> String {
        describe_sets(&[("active", &self.active), ("terminal", &self.terminal)])
    }
}

#[derive(Debug, Default)]
pub struct SandboxStates {
    pub dead: Vec<String>,
    /// When empty, every state that is not dead counts as alive.
    pub alive: Vec<String>,
}

impl SandboxStates {
    pub fn classify(&self, state: &str) -> Option<SandboxClass> {
        if self.dead.iter().any(|s| s == state) {
            Some(SandboxClass::Dead)
        } else if self.alive.is_empty() || self.alive.iter().any(|s| s == state) {
            Some(SandboxClass::Alive)
        } else {
            None
        }
    }

    pub fn describe(&self) -> String {
        if self.alive.is_empty() {
            describe_sets(&[("dead", &self.dead)]) + "; any other state is alive"
        } else {
            describe_sets(&[("alive", &self.alive), ("dead", &self.dead)])
        }
    }
}

fn describe_sets(sets: &[(&str, &Vec<String>)]) -> String {
    sets.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| format!("{name}: {}", v.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A custom resource watched for a profile, read through the dynamic API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomResource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub role: ResourceRole,
    /// Session state to assume while `status.phase` is unset (a new object).
    pub state_when_unset: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceRole {
    /// Each object is a session record: id = name, state = `status.phase`, linked to pods by
    /// the profile's session key.
    Session,
    /// The object a suspended session resumes from, named by the session's pod link.
    ResumeTarget,
}

impl CustomResource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn matches(&self, api_version: &str, kind: &str) -> bool {
        self.kind == kind && self.api_version() == api_version
    }
}

/// How long a condition must hold before a finding opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grace {
    /// After the agent exits, how long a native sidecar may keep running before the pod
    /// counts as stuck (the kubelet stops native sidecars itself once the main container exits).
    pub native_sidecar: Duration,
    /// How long something must be missing (a pod, a resource) before its absence counts:
    /// covers records written just before their pod is created, and pod re-creation.
    pub absence: Duration,
    /// How long a sandbox pod may run without an owning session before it counts as leaked.
    pub leaked_pod: Duration,
}

impl Default for Grace {
    fn default() -> Self {
        Grace {
            native_sidecar: Duration::from_secs(60),
            absence: Duration::from_secs(120),
            leaked_pod: Duration::from_secs(600),
        }
    }
}

impl Profile {
    /// Whether records of this kind are identified by namespace and id (rather than by id
    /// alone): sessions read from a custom resource, and the kinds `records.namespaced_ids`
    /// lists.
    pub fn namespaced_ids(&self, kind: RecordKind) -> bool {
        self.records.namespaced_ids.contains(&kind)
            || (kind == RecordKind::Session
                && self
                    .custom_resources
                    .iter()
                    .any(|c| c.role == ResourceRole::Session))
    }
}

impl Profiles {
    pub fn new(list: Vec<Profile>) -> Profiles {
        Profiles { list }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ProfileId, &Profile)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, p)| (ProfileId(i as u16), p))
    }

    pub fn get(&self, id: ProfileId) -> &Profile {
        &self.list[usize::from(id.0)]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The profile a record names, or the default (first) profile when it names none.
    pub fn for_record(&self, name: Option<&str>) -> Option<ProfileId> {
        match name {
            None => (!self.list.is_empty()).then_some(ProfileId(0)),
            Some(n) => self.by_name(n),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<ProfileId> {
        self.list
            .iter()
            .position(|p| &*p.name == name)
            .map(|i| ProfileId(i as u16))
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|p| &*p.name).collect()
    }

    /// Every label and annotation key some profile reads from a pod: its selector's and its
    /// session and execution keys. A pod's other labels and annotations change nothing.
    pub fn pod_meta_keys(&self) -> MetaKeys {
        let mut keys = MetaKeys::default();
        for (_, p) in self.iter() {
            let Some(m) = &p.pods else { continue };
            keys.labels.extend(m.selector_keys.iter().cloned());
            for k in [&m.session_key, &m.execution_key].into_iter().flatten() {
                match k {
                    MetaKey::Label(k) => keys.labels.push(k.clone()),
                    MetaKey::Annotation(k) => keys.annotations.push(k.clone()),
                }
            }
        }
        for v in [&mut keys.labels, &mut keys.annotations] {
            v.sort();
            v.dedup();
        }
        keys
    }

    /// The first profile whose pod selector (and namespace list) takes this pod.
    pub fn for_pod(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Option<ProfileId> {
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        self.iter()
            .find(|(_, p)| {
                p.pods.as_ref().is_some_and(|m| {
                    (m.namespaces.is_empty() || m.namespaces.iter().any(|n| n == namespace))
                        && m.selector.matches(labels)
                })
            })
            .map(|(id, _)| id)
    }

    /// The profile and custom-resource entry that claims objects of this apiVersion/kind.
    pub fn for_resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Option<(ProfileId, &CustomResource)> {
        self.iter().find_map(|(id, p)| {
            p.custom_resources
                .iter()
                .find(|c| c.matches(api_version, kind))
                .map(|c| (id, c))
        })
    }
}
