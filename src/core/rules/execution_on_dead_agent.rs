//! `execution_on_dead_agent`: an execution the platform still treats as live, whose agent is
//! dead (incidents 01 and 04).
//!
//! Opens when an execution is in an active state and its agent is dead: its external sandbox
//! is in a dead state, its pod's agent container has terminated for good, or its pod is gone
//! (absence: only where the pod source sees, and after the absence grace, counted from the
//! later of the execution's and its session's `updated_at` and the pod's departure). The agent is
//! found through the execution's sandbox, its explicit pod, a pod keyed by its id, or its
//! session's pod. The engine counts every attempt increment seen after the death: that is the
//! reclaim / retry loop the platform runs against a corpse. Resolves when the execution
//! reaches a terminal state or the agent is alive again.

use std::time::Duration;

use crate::core::rules::{
    AGENT_ALIVE, Clear, Judged, Label, NOT_MINE, Needs, Series, SubjectKind, SubjectView, blind,
    pod_holder, unlinked,
};
use crate::core::world::{Feed, PodLink, RecordKey, StateClass, StoredRecord, World};
use crate::model::finding::{Candidate, Finding, FindingKind};
use crate::model::profile::{ExecutionClass, SandboxClass};
use crate::util::time::Ts;

pub struct Rule;

impl super::Rule for Rule {
    fn kind(&self) -> FindingKind {
        FindingKind::ExecutionOnDeadAgent
    }

    fn subject(&self) -> SubjectKind {
        SubjectKind::Execution
    }

    fn needs(&self) -> Needs {
        Needs {
            required: &[Feed::Executions],
            optional: &[Feed::Pods, Feed::Sessions, Feed::Sandboxes],
        }
    }

    fn rests_on_absence(&self, reason: &str) -> Option<Feed> {
        matches!(reason, "PodGone").then_some(Feed::Pods)
    }

    fn series(&self) -> Series {
        Series {
            name: "sandwatch_executions_on_dead_agent",
            alert: "SandwatchExecutionsOnDeadAgent",
            help: "Executions in an active state (label state) whose agent is dead (container terminated, pod gone or sandbox dead): their users wait for a deadline. List them with /api/v1/findings?kind=execution_on_dead_agent and finalize them",
            labels: &[Label::Profile, Label::State],
            counts_retries: true,
        }
    }

    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, _now: Ts) -> Judged {
        let SubjectView::Record(key, rec) = subject else {
            return Err(NOT_MINE.into());
        };
        if rec.class != StateClass::Execution(ExecutionClass::Active) {
            return Err("the execution is not in an active state".into());
        }
        let profile = world.profiles().get(key.profile);
        let mut finding = Finding {
            kind: self.kind(),
            profile: profile.name.clone(),
            namespace: rec.namespace.clone(),
            pod: rec.pod.clone(),
            session: rec.session.clone(),
            execution: Some(key.id.clone()),
            sandbox: rec.sandbox.clone(),
            reason: "".into(),
            container: None,
            exit_code: None,
            state: Some(rec.state.clone()),
            pod_uid: None,
        };
        let candidate = |finding: Finding, evidence_at: Ts, hold_for: Duration| {
            Ok(Candidate {
                finding,
                evidence_at,
                hold_for,
                not_before: None,
                attempt: rec.attempt,
            })
        };
        if let Some((_, sandbox)) = world.sandbox_of(key, rec) {
            // An unknown sandbox is not a dead one.
            let sandbox = sandbox.ok_or("its sandbox has no record")?;
            if sandbox.class != StateClass::Sandbox(SandboxClass::Dead) {
                return Err("its sandbox is not in a dead state".into());
            }
            finding.reason = "SandboxDead".into();
            return candidate(finding, sandbox.since, Duration::ZERO);
        }
        match world.pod_of_execution(key, rec) {
            link @ (PodLink::None | PodLink::Ambiguous) => Err(unlinked(&link).into()),
            PodLink::Missing => {
                let (finding, evidence) = pod_gone(world, key, rec, finding)?;
                candidate(finding, evidence, profile.grace.absence)
            }
            PodLink::Found(pod) => {
                let death = pod.agent_death().ok_or(AGENT_ALIVE)?;
                finding.namespace = Some(pod.namespace.clone());
                finding.pod = Some(pod.name.clone());
                finding.pod_uid = Some(pod.uid.to_string().into());
                finding.reason = death.reason;
                finding.container = Some(death.container.clone());
                finding.exit_code = death.exit_code;
                candidate(finding, death.at.unwrap_or(rec.since), Duration::ZERO)
            }
        }
    }
}

/// An execution whose pod is gone, when that absence is evidence: the finding placed where
/// its pod would be (the execution's own link, else its session's), and when the evidence
/// dates from (the later of the records' last changes and the pod's departure).
fn pod_gone(
    world: &World,
    key: &RecordKey,
    rec: &StoredRecord,
    mut finding: Finding,
) -> Result<(Finding, Ts), Clear> {
    let session = world.found_session_of(key, rec);
    let srec = session.as_ref().map(|(_, s)| *s);
    let namespace = rec
        .namespace
        .clone()
        .or_else(|| srec.and_then(|s| s.namespace.clone()));
    let pod = rec.pod.clone().or_else(|| srec.and_then(|s| s.pod.clone()));
    let session_id = session.as_ref().map(|(k, _)| k.id.clone());
    let holder = pod_holder(world, key.profile, session_id.as_deref(), pod.as_deref());
    world
        .absence(key.profile, Feed::Pods, namespace.as_deref(), holder)
        .map_err(|b| blind("its pod is missing", &b))?;
    let departed = world.pod_departed(
        key.profile,
        pod.as_ref(),
        session_id.as_ref(),
        Some(&key.id),
    );
    let evidence = [Some(rec.since), srec.map(|s| s.since), departed]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(rec.since);
    finding.namespace = namespace;
    finding.pod = pod;
    finding.reason = "PodGone".into();
    Ok((finding, evidence))
}
