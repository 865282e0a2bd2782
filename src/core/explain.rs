//! `explain`: why a finding is, or is not, open for one subject.
//!
//! Part of the core: a pure reading of the engine (its World, its open and pending findings)
//! for one pod, session, execution or sandbox. It says how the subject joined the rest (which
//! pod, session, execution and sandbox it links to, by which key, or why a link was not made),
//! which sources the verdicts rest on, and for every finding kind a verdict: `open`, `pending`
//! (opens at `due_at` unless it clears), `clear` (and the condition not met, in words), `held`
//! (a source it rests on is unsynced or stale) or `off` (the rule does not run, and why). The
//! live daemon answers it at `GET /api/v1/explain`; `replay --explain` prints it at the end.

use serde::Serialize;

use crate::core::engine::{Engine, Judgement, Standing};
use crate::core::rules::{self, Rule, SubjectKind};
use crate::core::trust::{self, Verdict};
use crate::core::world::{Pod, PodLink, RecordKey, Resolved, StoredRecord, World};
use crate::model::finding::{FindingKey, FindingKind};
use crate::model::ids::Subject;
use crate::model::profile::{MetaKey, ProfileId};
use crate::model::record::RecordKind;
use crate::model::source::{Trust, trust as feed_trust};

/// What to explain: `pod=NAMESPACE/NAME`, `session=ID`, `execution=ID` or `sandbox=ID`,
/// optionally narrowed by `profile=` and (for records) `namespace=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub lookup: Lookup,
    pub profile: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Pod { namespace: String, name: String },
    Record { kind: RecordKind, id: String },
}

/// Why there is no explanation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    /// The query cannot be read (the message names the parameter).
    #[error("{0}")]
    Bad(String),
    /// No such subject is tracked.
    #[error("{0}")]
    NotFound(String),
}

const PARAMS: &str = "one of pod=NAMESPACE/NAME, session=ID, execution=ID, sandbox=ID; optionally profile=, namespace=";

impl Query {
    /// Reads `pod=`, `session=`, `execution=`, `sandbox=`, `profile=`, `namespace=`.
    pub fn parse(pairs: &[(String, String)]) -> Result<Query, ExplainError> {
        let bad = |m: String| Err(ExplainError::Bad(m));
        let (mut lookup, mut profile, mut namespace) = (None, None, None);
        for (key, value) in pairs {
            let this = match key.as_str() {
                "pod" => match value.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Lookup::Pod {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    },
                    _ => return bad(format!("pod: {value:?} is not NAMESPACE/NAME")),
                },
                "session" | "execution" | "sandbox" if value.is_empty() => {
                    return bad(format!("{key}: the id is empty"));
                }
                "session" => record(RecordKind::Session, value),
                "execution" => record(RecordKind::Execution, value),
                "sandbox" => record(RecordKind::Sandbox, value),
                "profile" => {
                    profile = Some(value.clone());
                    continue;
                }
                "namespace" => {
                    namespace = Some(value.clone());
                    continue;
                }
                other => {
                    return bad(format!(
                        "{other:?} is not a parameter of explain ({PARAMS})"
                    ));
                }
            };
            if lookup.replace(this).is_some() {
                return bad(format!("give one subject to explain ({PARAMS})"));
            }
        }
        match lookup {
            Some(lookup) => Ok(Query {
                lookup,
                profile,
                namespace,
            }),
            None => bad(format!("nothing to explain: give {PARAMS}")),
        }
    }

    /// Reads the subject syntax of the command line: `pod=NS/NAME`, `session=ID`, ... as a
    /// query string (percent-encoded values too, as the status page's links give them).
    pub fn parse_arg(text: &str) -> Result<Query, ExplainError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Query::parse(&pairs)
    }
}

fn record(kind: RecordKind, id: &str) -> Lookup {
    Lookup::Record {
        kind,
        id: id.to_string(),
    }
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub subject: SubjectOut,
    pub links: Vec<Link>,
    pub sources: Vec<SourceOut>,
    pub rules: Vec<RuleOut>,
}

#[derive(Debug, Serialize)]
pub struct SubjectOut {
    pub kind: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub profile: String,
}

/// One join from the subject (or a record it links to) to another pod or record.
#[derive(Debug, Serialize)]
pub struct Link {
    /// What it starts from: `pod NS/NAME`, `session ID`...
    pub from: String,
    /// What it leads to: `pod`, `session`, `execution`, `sandbox`.
    pub to: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub found: bool,
    /// The key the join went by (`label sandwatch.io/session`, `record field session`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why no link was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SourceOut {
    pub name: String,
    pub feeds: Vec<&'static str>,
    /// The one namespace it sees; absent: every namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub synced: bool,
    pub fresh: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Filled in by the live daemon (the engine does not keep it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
}

/// One rule's verdict on one subject.
#[derive(Debug, Serialize)]
pub struct RuleOut {
    pub kind: FindingKind,
    /// What it judged (`pod NS/NAME`, `session ID`...); absent when nothing of its kind is
    /// linked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `open`, `pending`, `clear`, `held` or `off`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    /// The open finding's id (what remediation's state is keyed by).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding_id: Option<u64>,
    /// For an open finding with an action: remediation's state (filled in by the daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation: Option<serde_json::Value>,
}

impl RuleOut {
    fn new(kind: FindingKind, subject: Option<String>, verdict: &'static str) -> RuleOut {
        RuleOut {
            kind,
            subject,
            verdict,
            why: None,
            reason: None,
            evidence_at: None,
            opened_at: None,
            due_at: None,
            finding_id: None,
            remediation: None,
        }
    }
}

/// What the subject links to, and what the rules judge.
#[derive(Default)]
struct Joined {
    links: Vec<Link>,
    pods: Vec<(Subject, String)>,
    sessions: Vec<(Subject, String)>,
    executions: Vec<(Subject, String)>,
}

/// Explains `query` from what `engine` holds now.
pub fn explain(engine: &Engine, query: &Query) -> Result<Explanation, ExplainError> {
    let w = engine.world();
    let (subject, profile, joined) = match &query.lookup {
        Lookup::Pod { namespace, name } => {
            let pod = find_pod(w, query, namespace, name)?;
            let subject = SubjectOut {
                kind: "pod",
                id: format!("{namespace}/{name}"),
                namespace: Some(namespace.clone()),
                profile: w.profiles().get(pod.profile).name.to_string(),
            };
            (subject, pod.profile, from_pod(w, pod))
        }
        Lookup::Record { kind, id } => {
            let (key, rec) = find_record(w, query, *kind, id)?;
            let subject = SubjectOut {
                kind: kind.as_str(),
                id: id.clone(),
                namespace: key.namespace.as_deref().map(String::from),
                profile: w.profiles().get(key.profile).name.to_string(),
            };
            let joined = match kind {
                RecordKind::Session => from_session(w, &key, rec),
                RecordKind::Execution => from_execution(w, &key, rec),
                RecordKind::Sandbox => from_sandbox(w, &key),
            };
            (subject, key.profile, joined)
        }
    };
    let sources = w
        .sources()
        .iter()
        .filter(|s| s.profile.is_none_or(|p| p == profile))
        .map(|s| SourceOut {
            name: s.name.clone(),
            feeds: s.feeds.iter().map(|f| f.as_str()).collect(),
            namespace: s.namespace.clone(),
            synced: s.synced,
            fresh: s.fresh,
            error: s.error.clone(),
            last_success: None,
        })
        .collect();
    let rules = rules::ALL
        .iter()
        .flat_map(|r| verdicts(engine, *r, profile, &joined))
        .collect();
    Ok(Explanation {
        subject,
        links: joined.links,
        sources,
        rules,
    })
}

fn profile_matches(w: &World, query: &Query, profile: ProfileId) -> bool {
    query
        .profile
        .as_deref()
        .is_none_or(|p| *w.profiles().get(profile).name == *p)
}

fn find_pod<'a>(
    w: &'a World,
    query: &Query,
    namespace: &str,
    name: &str,
) -> Result<&'a Pod, ExplainError> {
    w.pod_by_name(namespace, name)
        .filter(|p| profile_matches(w, query, p.profile))
        .ok_or_else(|| {
            ExplainError::NotFound(format!(
                "no pod {namespace}/{name} is tracked{}: it does not exist, no profile's selector matches it, its namespace is not watched, or another shard keeps it",
                query.profile.as_deref().map(|p| format!(" for profile {p}")).unwrap_or_default()
            ))
        })
}

fn find_record<'a>(
    w: &'a World,
    query: &Query,
    kind: RecordKind,
    id: &str,
) -> Result<(RecordKey, &'a StoredRecord), ExplainError> {
    // From the World's keys, not a scan: one lookup per profile.
    let id_sym: crate::model::ids::Sym = id.into();
    let ns: Option<crate::model::ids::Sym> = query.namespace.as_deref().map(Into::into);
    let mut keys = Vec::new();
    for (p, _) in w.profiles().iter() {
        if !profile_matches(w, query, p) {
            continue;
        }
        match w.resolve(kind, p, ns.as_ref(), &id_sym) {
            Resolved::Found(k) => keys.push(k),
            Resolved::Ambiguous(list) => keys.extend(list.into_iter().map(|n| RecordKey {
                kind,
                profile: p,
                namespace: Some(n),
                id: id_sym.clone(),
            })),
            Resolved::Missing => {}
        }
    }
    let found: Vec<(&RecordKey, &StoredRecord)> = keys
        .iter()
        .filter_map(|k| w.record(k).map(|r| (k, r)))
        .filter(|(k, r)| {
            query
                .namespace
                .as_deref()
                .is_none_or(|ns| k.namespace.as_deref().or(r.namespace.as_deref()) == Some(ns))
        })
        .collect();
    match found.as_slice() {
        [(k, r)] => Ok(((*k).clone(), r)),
        [] => Err(ExplainError::NotFound(format!(
            "no {} record {id:?} is held: the source has not sent it, it is outside the scope, or another shard keeps it",
            kind.as_str()
        ))),
        several => {
            let places: Vec<String> = several
                .iter()
                .map(|(k, _)| {
                    let ns = k.namespace.as_deref().unwrap_or("-");
                    format!(
                        "profile {} namespace {ns}",
                        w.profiles().get(k.profile).name
                    )
                })
                .collect();
            Err(ExplainError::Bad(format!(
                "{} {id:?} is held {} times ({}): add profile= or namespace=",
                kind.as_str(),
                several.len(),
                places.join(", ")
            )))
        }
    }
}

fn label(kind: RecordKind, key: &RecordKey) -> String {
    match &key.namespace {
        Some(ns) => format!("{} {ns}/{}", kind.as_str(), key.id),
        None => format!("{} {}", kind.as_str(), key.id),
    }
}

fn pod_label(p: &Pod) -> String {
    format!("pod {}/{}", p.namespace, p.name)
}

fn meta(key: &MetaKey) -> String {
    match key {
        MetaKey::Label(k) => format!("label {k}"),
        MetaKey::Annotation(k) => format!("annotation {k}"),
    }
}

fn record_subject(key: &RecordKey) -> Subject {
    Subject::Record(key.clone())
}

#[path = "explain_joins.rs"]
mod joins;
use joins::{from_execution, from_pod, from_sandbox, from_session};

/// Every verdict of one rule: on each linked subject of the kind it judges.
fn verdicts(engine: &Engine, rule: &dyn Rule, profile: ProfileId, j: &Joined) -> Vec<RuleOut> {
    let w = engine.world();
    let needs = rule.needs();
    if trust::verdict(w.sources(), profile, &needs) == Verdict::Off {
        let missing: Vec<&str> = needs
            .required
            .iter()
            .filter(|f| feed_trust(w.sources(), profile, **f) == Trust::Unconfigured)
            .map(|f| f.as_str())
            .collect();
        let mut out = RuleOut::new(rule.kind(), None, "off");
        out.why = Some(format!(
            "the rule needs {} and no source of it is configured for profile {}",
            missing.join(", "),
            w.profiles().get(profile).name
        ));
        return vec![out];
    }
    let (subjects, what) = match rule.subject() {
        SubjectKind::Pod => (&j.pods, "pod"),
        SubjectKind::Session => (&j.sessions, "session"),
        SubjectKind::Execution => (&j.executions, "execution"),
    };
    if subjects.is_empty() {
        let mut out = RuleOut::new(rule.kind(), None, "clear");
        out.why = Some(format!("it judges a {what}, and no {what} is linked"));
        return vec![out];
    }
    subjects
        .iter()
        .map(|(s, l)| verdict(engine, rule, s, l))
        .collect()
}

fn verdict(engine: &Engine, rule: &dyn Rule, subject: &Subject, label: &str) -> RuleOut {
    let key = FindingKey {
        kind: rule.kind(),
        subject: subject.clone(),
    };
    let label = Some(label.to_string());
    if let Standing::Open(f) = engine.standing(&key) {
        let mut out = RuleOut::new(rule.kind(), label, "open");
        out.reason = Some(f.finding.reason.to_string());
        out.evidence_at = Some(f.evidence_at.to_string());
        out.opened_at = Some(f.opened_at.to_string());
        out.finding_id = Some(f.id);
        return out;
    }
    match engine.judge(rule, subject) {
        Judgement::Off(why) => {
            let mut out = RuleOut::new(rule.kind(), label, "off");
            out.why = Some(why.to_string());
            out
        }
        Judgement::Held => {
            let mut out = RuleOut::new(rule.kind(), label, "held");
            out.why = Some(held_on(engine.world(), rule, subject));
            out
        }
        Judgement::Clear(why) => {
            let mut out = RuleOut::new(rule.kind(), label, "clear");
            out.why = Some(why.into_owned());
            out
        }
        Judgement::Holds(c) => {
            let due = std::cmp::max(
                c.evidence_at.saturating_add(c.hold_for),
                c.not_before.unwrap_or(c.evidence_at),
            );
            let mut out = RuleOut::new(rule.kind(), label, "pending");
            out.reason = Some(c.finding.reason.to_string());
            out.evidence_at = Some(c.evidence_at.to_string());
            out.due_at = Some(due.to_string());
            out.why = Some("the condition holds; it opens at due_at unless it clears".into());
            out
        }
    }
}

/// Which of the rule's sources are not trusted, in words.
fn held_on(w: &World, rule: &dyn Rule, subject: &Subject) -> String {
    let profile = match subject {
        Subject::Pod { .. } => w.pod_of(subject).map(|p| p.profile),
        Subject::Record(k) => Some(k.profile),
    };
    let needs = rule.needs();
    let feeds: Vec<_> = needs.required.iter().chain(needs.optional).collect();
    let names: Vec<&str> = w
        .sources()
        .iter()
        .filter(|s| s.profile.is_none() || s.profile == profile)
        .filter(|s| s.feeds.iter().any(|f| feeds.contains(&f)))
        .filter(|s| !s.healthy())
        .map(|s| s.name.as_str())
        .collect();
    format!(
        "a source it rests on is unsynced or stale ({}): its finding holds as it is",
        names.join(", ")
    )
}

/// Why a pod link was not made, in words.
fn no_pod(link: &PodLink<'_>, rec: &StoredRecord, keyed: Option<&MetaKey>, id: &str) -> String {
    match (link, &rec.pod) {
        (PodLink::Ambiguous, _) => rules::unlinked(link).to_string(),
        (PodLink::None, _) => rules::unlinked(link).to_string(),
        (_, Some(name)) => format!("it names pod {name}, and no such pod is tracked"),
        (_, None) => match keyed {
            Some(k) => format!("no pod with {} = {id} is tracked", meta(k)),
            None => "no pod is tracked for it".to_string(),
        },
    }
}

fn resolved_why(r: &Resolved, kind: RecordKind, id: &str) -> String {
    match r {
        Resolved::Found(_) => String::new(),
        Resolved::Missing => format!("no {} record {id:?} is held", kind.as_str()),
        Resolved::Ambiguous(ns) => {
            let ns: Vec<&str> = ns.iter().map(|n| &**n).collect();
            format!(
                "{} {id:?} exists in several namespaces ({}) and the reference names none: not guessed",
                kind.as_str(),
                ns.join(", ")
            )
        }
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
