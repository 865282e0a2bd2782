//! Rules: pure judgements of one subject against the World at one instant.
//!
//! Flow: the engine applies a change, finds the subjects it touched, and asks each rule
//! registered for that kind of subject for a verdict: `None` (the condition does not hold) or
//! a [`Candidate`] (it holds; open it once it has held for `hold_for`). Rules read the World
//! and the profile, and nothing else: no I/O, no clock but the `now` they are given.
//!
//! Before a rule runs, the engine checks the feeds it declares: if a required feed has no
//! source the rule does not run at all; if any feed it rests on is unsynced or stale, its
//! findings hold as they are (absence is not evidence).
//!
//! Adding a rule: one new file here, and one line in [`ALL`].

use crate::finding::{Candidate, FindingKind};
use crate::time::Ts;
use crate::world::{Feed, Pod, RecordKey, StoredRecord, World};

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

/// The subject under judgement.
pub enum SubjectView<'a> {
    Pod(&'a Pod),
    Record(&'a RecordKey, &'a StoredRecord),
}

pub trait Rule: Sync {
    fn kind(&self) -> FindingKind;
    fn subject(&self) -> SubjectKind;
    fn needs(&self) -> Needs;
    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, now: Ts) -> Option<Candidate>;
}

/// The finding fields that identify a pod.
pub(crate) fn pod_identity(
    kind: FindingKind,
    world: &World,
    pod: &Pod,
    reason: &str,
) -> crate::finding::Finding {
    crate::finding::Finding {
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
