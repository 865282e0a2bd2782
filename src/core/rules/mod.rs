//! Rules: pure judgements of one subject against the World at one instant.
//!
//! Flow: the engine applies a change, finds the subjects it touched, and asks each rule
//! registered for that kind of subject for a verdict: `None` (the condition does not hold) or
//! a [`Candidate`] (it holds; open it once it has held for `hold_for`). Rules read the World
//! and the profile, and nothing else: no I/O, no clock but the `now` they are given.
//!
//! Before a rule runs, the engine checks the feeds it declares: if a required feed has no
//! source the rule does not run at all; if any feed it rests on is unsynced or stale, its
//! findings hold as they are. A rule that rests on something *missing* asks
//! [`World::absence`] whether the absence is evidence (the sources that would show it are
//! trusted, see where it would be, and this shard would hold it), and dates its evidence from
//! what the sources said: a record's `updated_at`, a pod's observed departure.
//!
//! Adding a rule: one new file here (its judgement, the feeds it needs, the gauge its findings
//! count in), one line in [`ALL`], and its [`FindingKind`] variant, which is part of the
//! interface.

use crate::core::world::{Feed, Holder, Pod, PodLink, RecordKey, StoredRecord, World};
use crate::model::finding::{Candidate, FindingKind};
use crate::model::profile::ProfileId;
use crate::util::time::Ts;

mod agent_terminated_pod_running;
mod execution_on_dead_agent;
mod leaked_sandbox_pod;
mod orphaned_suspended_session;
mod session_active_without_agent;

/// Every rule, in the order their transitions are reported within one instant.
pub static ALL: &[&dyn Rule] = &[
    &agent_terminated_pod_running::Rule,
    &execution_on_dead_agent::Rule,
    &orphaned_suspended_session::Rule,
    &session_active_without_agent::Rule,
    &leaked_sandbox_pod::Rule,
];

/// What kind of subject a rule judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    Pod,
    Session,
    Execution,
}

/// The feeds a rule rests on.
pub struct Needs {
    /// Without a source for each of these, the rule does not run.
    pub required: &'static [Feed],
    /// Used when configured; findings hold while any of these is untrusted.
    pub optional: &'static [Feed],
}

/// A label of the gauge that counts a rule's open findings. Labels are bounded: per-entity
/// detail (pod, session, execution ids) lives in the findings API and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// The finding's namespace; its series start at zero for each namespace the profile lists.
    Namespace,
    Profile,
    /// The finding's reason; its series start at zero with an empty reason.
    Reason,
    /// The record's state; its series start at zero for each active state of the records the
    /// rule judges.
    State,
}

/// The gauge that counts a rule's open findings, declared by the rule.
pub struct Series {
    /// The metric name (part of the interface: alerts and dashboards use it).
    pub name: &'static str,
    /// The shipped alert on it (`deploy/`), whose runbook (`docs/runbooks.md`) says what to do.
    pub alert: &'static str,
    /// Its help text: what it counts and what to do about it.
    pub help: &'static str,
    /// Its labels, in the order they are exposed.
    pub labels: &'static [Label],
    /// Whether its findings count attempts seen after the agent died
    /// (`sandwatch_retries_against_dead_agent`).
    pub counts_retries: bool,
}

/// The subject under judgement.
pub enum SubjectView<'a> {
    Pod(&'a Pod),
    Record(&'a RecordKey, &'a StoredRecord),
}

/// Why a rule's condition does not hold for a subject, in words (what `explain` shows).
pub type Clear = std::borrow::Cow<'static, str>;

/// A rule's judgement: its condition holds (a [`Candidate`]) or does not (and why).
pub type Judged = Result<Candidate, Clear>;

/// The subject is not the kind the rule judges.
pub(crate) const NOT_MINE: &str = "the rule does not judge this kind of subject";
/// The pod's agent container runs (or restarts).
pub(crate) const AGENT_ALIVE: &str = "the pod's agent container has not terminated for good";

/// Why a record links to no pod.
pub(crate) fn unlinked(link: &PodLink<'_>) -> &'static str {
    match link {
        PodLink::Ambiguous => "it names a pod ambiguously (several match): not guessed",
        PodLink::None => "it names no pod, and no pod carries its key",
        PodLink::Missing | PodLink::Found(_) => "it has a pod link",
    }
}

/// Something missing that is no evidence, in words.
pub(crate) fn blind(what: &str, why: &crate::model::source::Blind) -> Clear {
    format!("{what}, but that is no evidence: {why}").into()
}

pub trait Rule: Sync {
    fn kind(&self) -> FindingKind;
    fn subject(&self) -> SubjectKind;
    fn needs(&self) -> Needs;
    /// The gauge its open findings count in.
    fn series(&self) -> Series;
    /// Whether the condition holds for `subject` now, and if not, why not.
    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, now: Ts) -> Judged;
    /// The feed whose *absence* a finding with this reason rests on (a pod gone, a session
    /// gone), if any: before acting on it, remediation checks that absence is still evidence.
    fn rests_on_absence(&self, _reason: &str) -> Option<Feed> {
        None
    }
}

/// The finding fields that identify a pod.
pub(crate) fn pod_identity(
    kind: FindingKind,
    world: &World,
    pod: &Pod,
    reason: &str,
) -> crate::model::finding::Finding {
    crate::model::finding::Finding {
        kind,
        profile: world.profiles().get(pod.profile).name.clone(),
        namespace: Some(pod.namespace.clone()),
        pod: Some(pod.name.clone()),
        session: pod.session.clone(),
        execution: pod.execution.clone(),
        sandbox: None,
        reason: reason.into(),
        container: None,
        exit_code: None,
        state: None,
        pod_uid: Some(pod.uid.to_string().into()),
    }
}

/// Which shard would hold a session's pod: the one owning its session key when the profile's
/// pods carry one, else the one owning the pod's name; not known without either.
pub(crate) fn pod_holder<'a>(
    world: &World,
    profile: ProfileId,
    session: Option<&'a str>,
    pod: Option<&'a str>,
) -> Holder<'a> {
    let keyed = world
        .profiles()
        .get(profile)
        .pods
        .as_ref()
        .is_some_and(|m| m.session_key.is_some());
    match (keyed, session, pod) {
        (true, Some(s), _) => Holder::Key(s),
        (false, _, Some(p)) => Holder::Key(p),
        _ => Holder::Unknown,
    }
}
