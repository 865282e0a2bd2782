//! A profile in the config: the spec as written (every field optional, so that a profile can
//! start from a preset and change single fields) and its validation into the model's
//! [`Profile`], the records sources it names, and its remediation actions.

use std::sync::{Arc, LazyLock};

use kube::core::Selector;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::model::ids::{ProfileId, RecordKind};
use crate::model::profile::{
    CustomResource, ExecutionStates, Grace, MetaKey, PodMatch, Profile, RecordIdentity,
    ResourceRole, ResumeFrom, SandboxStates, SessionStates,
};
use crate::remediation::action::Action;
use crate::sources::{RecordSourceSpecs, RecordSources};
use crate::util::config::{Validator, is_dns_label};

use super::selector::{parse_selector, selector_keys};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: Option<String>,
    pub preset: Option<String>,
    pub pods: Option<PodsSpec>,
    pub sessions: Option<SessionsSpec>,
    pub executions: Option<ExecutionsSpec>,
    pub sandboxes: Option<SandboxesSpec>,
    pub custom_resources: Option<Vec<CustomResourceSpec>>,
    pub grace: Option<GraceSpec>,
    pub records: Option<RecordsSpec>,
    pub remediation: Option<crate::remediation::config::ProfileSpec>,
}

/// `records:`: how records are identified, and the sources that read them (`postgres`,
/// `ingest`, ...: one key per source in `sources::records_sources!`).
#[derive(Debug, Default, Clone)]
pub struct RecordsSpec {
    pub default_namespace: Option<String>,
    pub namespaced_ids: Option<Vec<String>>,
    pub sources: RecordSourceSpecs,
}

/// The keys of `records:` besides the sources'.
const IDENTITY_KEYS: [&str; 2] = ["default_namespace", "namespaced_ids"];

/// Every key of `records:`, for the error that names an unknown one.
static RECORDS_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    IDENTITY_KEYS
        .iter()
        .chain(RecordSourceSpecs::KEYS)
        .copied()
        .collect()
});

impl<'de> Deserialize<'de> for RecordsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordsVisitor)
    }
}

/// `records:` read key by key, as serde's derive would (unknown keys are errors), with each
/// source's key handed to the source list.
struct RecordsVisitor;

impl<'de> Visitor<'de> for RecordsVisitor {
    type Value = RecordsSpec;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of records settings and sources")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RecordsSpec, A::Error> {
        let mut spec = RecordsSpec::default();
        while let Some(RecordsKey(key)) = map.next_key()? {
            match key.as_str() {
                "default_namespace" => spec.default_namespace = map.next_value()?,
                "namespaced_ids" => spec.namespaced_ids = map.next_value()?,
                // A key of the sources' (RecordsKey knows no other).
                k => {
                    if !spec.sources.read(k, &mut map)? {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
            }
        }
        Ok(spec)
    }
}

/// A key of `records:`; an unknown one is an error of the key, as serde's derive makes it.
struct RecordsKey(String);

impl<'de> Deserialize<'de> for RecordsKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        if !RECORDS_KEYS.contains(&key.as_str()) {
            return Err(de::Error::unknown_field(&key, RECORDS_KEYS.as_slice()));
        }
        Ok(RecordsKey(key))
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsSpec {
    pub selector: Option<String>,
    pub namespaces: Option<Vec<String>>,
    pub agent_containers: Option<Vec<String>>,
    pub session_key: Option<KeySpec>,
    pub execution_key: Option<KeySpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub label: Option<String>,
    pub annotation: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSpec {
    pub active: Option<Vec<String>>,
    pub suspended: Option<Vec<String>>,
    pub transitional: Option<Vec<String>>,
    pub terminal: Option<Vec<String>>,
    pub resume_from: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsSpec {
    pub active: Option<Vec<String>>,
    pub terminal: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxesSpec {
    pub dead: Option<Vec<String>>,
    pub alive: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomResourceSpec {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub plural: Option<String>,
    pub role: Option<String>,
    pub state_when_unset: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraceSpec {
    pub native_sidecar: Option<String>,
    pub absence: Option<String>,
    pub leaked_pod: Option<String>,
}

/// A validated profile and what comes with it.
pub struct Validated {
    pub profile: Profile,
    pub records: RecordSources,
    pub actions: Vec<Action>,
}

impl ProfileSpec {
    /// Validates a (merged) profile; `v` is at `profiles[i]` (or `preset`). `None` when it has
    /// errors, each reported through `v`.
    pub fn validate(self, v: &mut Validator<'_>, id: ProfileId) -> Option<Validated> {
        let before = v.count();
        let name = match self.name {
            Some(n) if is_dns_label(&n) => n,
            Some(n) => {
                v.err(
                    "name",
                    format!(
                        "{n:?} is not a valid profile name: use 1-63 lowercase letters, digits and '-' (it becomes a metric label)"
                    ),
                );
                String::new()
            }
            None => {
                v.err("name", "missing; every profile needs a name");
                String::new()
            }
        };
        let pods = self.pods.and_then(|p| pods(v, p));
        let custom_resources = custom_resources(v, self.custom_resources.unwrap_or_default());
        let sessions = sessions(v, self.sessions.unwrap_or_default(), &custom_resources);
        let executions = executions(v, self.executions.unwrap_or_default());
        let sandboxes = sandboxes(v, self.sandboxes.unwrap_or_default());
        let grace = grace(v, self.grace.unwrap_or_default());
        let spec = self.records.unwrap_or_default();
        let identity = identity(v, &spec);
        let records = spec.sources.validate(v);
        let actions = self
            .remediation
            .unwrap_or_default()
            .validate(&mut v.at("remediation"), id);
        one_source_per_kind(v, &records, &custom_resources);
        if custom_resources
            .iter()
            .any(|c| c.role == ResourceRole::Session)
            && pods.as_ref().is_none_or(|p| p.session_key.is_none())
        {
            v.err(
                "pods.session_key",
                "missing: custom resources with role `session` are joined to pods through the session key",
            );
        }
        if v.count() > before {
            return None;
        }
        let profile = Profile {
            name: Arc::from(name),
            pods,
            sessions,
            executions,
            sandboxes,
            custom_resources,
            grace,
            records: identity,
        };
        Some(Validated {
            profile,
            records,
            actions,
        })
    }
}

/// One source per kind of record: two would each remove the other's records on their full
/// loads. The later source's field is the one in error.
fn one_source_per_kind(
    v: &mut Validator<'_>,
    records: &RecordSources,
    resources: &[CustomResource],
) {
    let mut claimed: Vec<(RecordKind, String)> = Vec::new();
    for source in records.each() {
        let kinds = source.kinds();
        for (kind, field) in &kinds {
            if let Some((_, first)) = claimed.iter().find(|(k, _)| k == kind) {
                v.err(
                    field,
                    format!(
                        "{:?} records already come from {first}: give each kind one source",
                        kind.as_str()
                    ),
                );
            }
        }
        claimed.extend(kinds);
    }
    if let Some(cr) = resources.iter().find(|c| c.role == ResourceRole::Session)
        && let Some((_, field)) = claimed.iter().find(|(k, _)| *k == RecordKind::Session)
    {
        v.err(
            field,
            format!(
                "sessions already come from the {} custom resource (role `session`): give each kind one source",
                cr.kind
            ),
        );
    }
}

fn identity(v: &mut Validator<'_>, spec: &RecordsSpec) -> RecordIdentity {
    let default_namespace = spec.default_namespace.clone().filter(|n| !n.is_empty());
    if let Some(n) = &default_namespace
        && !is_dns_label(n)
    {
        v.err(
            "records.default_namespace",
            format!("{n:?} is not a valid namespace name"),
        );
    }
    let mut namespaced_ids = Vec::new();
    for (n, k) in spec.namespaced_ids.iter().flatten().enumerate() {
        match RecordKind::parse(k) {
            Some(kind) => namespaced_ids.push(kind),
            None => v.err(
                &format!("records.namespaced_ids[{n}]"),
                format!("{k:?} is not a record kind (session, execution or sandbox)"),
            ),
        }
    }
    RecordIdentity {
        default_namespace,
        namespaced_ids,
    }
}

fn pods(v: &mut Validator<'_>, spec: PodsSpec) -> Option<PodMatch> {
    let selector_text = spec.selector.unwrap_or_default();
    let selector = match parse_selector(&selector_text) {
        Ok(s) => s,
        Err(e) => {
            v.err("pods.selector", format!("{selector_text:?}: {e}"));
            Selector::default()
        }
    };
    if selector_text.trim().is_empty() {
        v.err(
            "pods.selector",
            "missing or empty: a profile must say which pods are its sandboxes (e.g. \"app=sandbox\")".to_string(),
        );
    }
    let agent_containers = spec.agent_containers.unwrap_or_default();
    if agent_containers.is_empty() {
        v.err(
            "pods.agent_containers",
            "missing or empty: name the agent container(s) of a sandbox pod".to_string(),
        );
    }
    for (i, c) in agent_containers.iter().enumerate() {
        if c.trim().is_empty() {
            v.err(
                &format!("pods.agent_containers[{i}]"),
                "empty container name".to_string(),
            );
        }
    }
    let namespaces = spec.namespaces.unwrap_or_default();
    for (i, n) in namespaces.iter().enumerate() {
        if !is_dns_label(n) {
            v.err(
                &format!("pods.namespaces[{i}]"),
                format!("{n:?} is not a valid namespace name"),
            );
        }
    }
    let session_key = spec.session_key.and_then(|k| key(v, "pods.session_key", k));
    let execution_key = spec
        .execution_key
        .and_then(|k| key(v, "pods.execution_key", k));
    Some(PodMatch {
        selector_keys: selector_keys(&selector_text),
        selector_text,
        selector,
        namespaces,
        agent_containers,
        session_key,
        execution_key,
    })
}

fn key(v: &mut Validator<'_>, field: &str, spec: KeySpec) -> Option<MetaKey> {
    match (spec.label, spec.annotation) {
        (Some(l), None) if !l.is_empty() => Some(MetaKey::Label(l)),
        (None, Some(a)) if !a.is_empty() => Some(MetaKey::Annotation(a)),
        (Some(l), Some(a)) => {
            v.err(
                field,
                format!("both label {l:?} and annotation {a:?} given; choose one"),
            );
            None
        }
        _ => {
            v.err(
                field,
                "give either `label: KEY` or `annotation: KEY`".to_string(),
            );
            None
        }
    }
}

fn states(v: &mut Validator<'_>, sets: &[(&str, &Vec<String>)], section: &str) {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (class, states) in sets {
        for (i, s) in states.iter().enumerate() {
            if s.trim().is_empty() {
                v.err(
                    &format!("{section}.{class}[{i}]"),
                    "empty state name".to_string(),
                );
            }
            if let Some((other, _)) = seen.iter().find(|(_, t)| *t == s.as_str()) {
                v.err(
                    &format!("{section}.{class}[{i}]"),
                    format!(
                        "state {s:?} is also listed in {section}.{other}; a state has one meaning"
                    ),
                );
            }
            seen.push((class, s.as_str()));
        }
    }
}

fn sessions(
    v: &mut Validator<'_>,
    spec: SessionsSpec,
    resources: &[CustomResource],
) -> SessionStates {
    let s = SessionStates {
        active: spec.active.unwrap_or_default(),
        suspended: spec.suspended.unwrap_or_default(),
        transitional: spec.transitional.unwrap_or_default(),
        terminal: spec.terminal.unwrap_or_default(),
        resume_from: None,
    };
    states(
        v,
        &[
            ("active", &s.active),
            ("suspended", &s.suspended),
            ("transitional", &s.transitional),
            ("terminal", &s.terminal),
        ],
        "sessions",
    );
    let resume_from = match spec.resume_from.as_deref() {
        None | Some("pod") => Some(ResumeFrom::Pod),
        Some("custom_resource") => {
            if !resources
                .iter()
                .any(|c| c.role == ResourceRole::ResumeTarget)
            {
                v.err(
                    "sessions.resume_from",
                    "\"custom_resource\" needs a custom_resources entry with role `resume_target`"
                        .to_string(),
                );
            }
            Some(ResumeFrom::CustomResource)
        }
        Some(other) => {
            v.err(
                "sessions.resume_from",
                format!("{other:?} is not one of: pod, custom_resource"),
            );
            None
        }
    };
    SessionStates { resume_from, ..s }
}

fn executions(v: &mut Validator<'_>, spec: ExecutionsSpec) -> ExecutionStates {
    let e = ExecutionStates {
        active: spec.active.unwrap_or_default(),
        terminal: spec.terminal.unwrap_or_default(),
    };
    states(
        v,
        &[("active", &e.active), ("terminal", &e.terminal)],
        "executions",
    );
    e
}

fn sandboxes(v: &mut Validator<'_>, spec: SandboxesSpec) -> SandboxStates {
    let s = SandboxStates {
        dead: spec.dead.unwrap_or_default(),
        alive: spec.alive.unwrap_or_default(),
    };
    states(v, &[("alive", &s.alive), ("dead", &s.dead)], "sandboxes");
    s
}

fn custom_resources(v: &mut Validator<'_>, specs: Vec<CustomResourceSpec>) -> Vec<CustomResource> {
    let mut out = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let at = format!("custom_resources[{i}]");
        let before = v.count();
        let (group, version) = match spec.api_version.as_deref() {
            Some(av) => match av.split_once('/') {
                Some((g, v)) if !g.is_empty() && !v.is_empty() && !v.contains('/') => {
                    (g.to_string(), v.to_string())
                }
                _ => {
                    v.err(
                        &format!("{at}.api_version"),
                        format!(
                            "{av:?} is not GROUP/VERSION (e.g. \"vteam.ambient-code/v1alpha1\")"
                        ),
                    );
                    Default::default()
                }
            },
            None => {
                v.err(&format!("{at}.api_version"), "missing");
                Default::default()
            }
        };
        let kind = spec.kind.unwrap_or_default();
        if kind.is_empty() {
            v.err(
                &format!("{at}.kind"),
                "missing (e.g. \"AgenticSession\")".to_string(),
            );
        }
        let plural = spec.plural.unwrap_or_default();
        if plural.is_empty() || plural.chars().any(|c| !c.is_ascii_lowercase()) {
            v.err(
                &format!("{at}.plural"),
                format!(
                    "{plural:?}: give the lowercase resource plural (e.g. \"agenticsessions\")"
                ),
            );
        }
        let role = match spec.role.as_deref() {
            Some("session") => ResourceRole::Session,
            Some("resume_target") => ResourceRole::ResumeTarget,
            Some(other) => {
                v.err(
                    &format!("{at}.role"),
                    format!("{other:?} is not one of: session, resume_target"),
                );
                ResourceRole::Session
            }
            None => {
                v.err(
                    &format!("{at}.role"),
                    "missing; one of: session, resume_target".to_string(),
                );
                ResourceRole::Session
            }
        };
        if v.count() == before {
            out.push(CustomResource {
                group,
                version,
                kind,
                plural,
                role,
                state_when_unset: spec.state_when_unset,
            });
        }
    }
    out
}

fn grace(v: &mut Validator<'_>, spec: GraceSpec) -> Grace {
    let d = Grace::default();
    Grace {
        native_sidecar: v.duration(
            "grace.native_sidecar",
            spec.native_sidecar,
            d.native_sidecar,
        ),
        absence: v.duration("grace.absence", spec.absence, d.absence),
        leaked_pod: v.duration("grace.leaked_pod", spec.leaked_pod, d.leaked_pod),
    }
}
