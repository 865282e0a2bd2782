//! `leaked_sandbox_pod`: a sandbox pod nobody owns any more; it costs money.
//!
//! Opens when a sandbox pod that is not terminating has no session record in an active,
//! suspended or transitional state (none at all, or only finished ones) for longer than the
//! profile's leak grace (default 10 minutes). Rests on the absence of a record, so it needs
//! the session source to be trusted and to see the pod's namespace (and, when sharded, the pod
//! to carry the session key that puts its sessions on this shard). The grace counts from the
//! later of the pod's creation, its last session's end and the departure of a session record
//! that claimed it. Resolves when the pod is deleted or starts terminating,
//! or a live session claims it.

use crate::core::rules::{
    Judged, Label, NOT_MINE, Needs, Series, SubjectKind, SubjectView, blind, pod_identity,
};
use crate::core::world::{Feed, Holder, StateClass, World};
use crate::model::finding::{Candidate, FindingKind};
use crate::model::profile::SessionClass;
use crate::util::time::Ts;

pub struct Rule;

impl super::Rule for Rule {
    fn kind(&self) -> FindingKind {
        FindingKind::LeakedSandboxPod
    }

    fn subject(&self) -> SubjectKind {
        SubjectKind::Pod
    }

    fn needs(&self) -> Needs {
        Needs {
            required: &[Feed::Pods, Feed::Sessions],
            optional: &[],
        }
    }

    fn rests_on_absence(&self, reason: &str) -> Option<Feed> {
        matches!(reason, "NoSession" | "SessionTerminal").then_some(Feed::Sessions)
    }

    fn series(&self) -> Series {
        Series {
            name: "sandwatch_leaked_sandbox_pods",
            alert: "SandwatchLeakedSandboxPods",
            help: "Sandbox pods with no active, suspended or starting session for longer than the leak grace: they cost money until deleted. List them with /api/v1/findings?kind=leaked_sandbox_pod",
            labels: &[Label::Namespace, Label::Profile],
            counts_retries: false,
        }
    }

    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, _now: Ts) -> Judged {
        let SubjectView::Pod(pod) = subject else {
            return Err(NOT_MINE.into());
        };
        if pod.terminating {
            return Err("the pod is terminating".into());
        }
        let sessions = world.sessions_of_pod(pod);
        if sessions
            .iter()
            .any(|(_, s)| s.class != StateClass::Session(SessionClass::Terminal))
        {
            return Err("a session that is not finished claims the pod".into());
        }
        // No live session claims it: evidence only if a claim would be seen here.
        let holder = pod.session.as_deref().map_or(Holder::Unknown, Holder::Key);
        world
            .absence(pod.profile, Feed::Sessions, Some(&pod.namespace), holder)
            .map_err(|b| blind("no live session claims the pod", &b))?;
        let last = sessions.iter().max_by_key(|(_, s)| s.since);
        let reason = if last.is_some() {
            "SessionTerminal"
        } else {
            "NoSession"
        };
        let mut finding = pod_identity(self.kind(), world, pod, reason);
        if let Some((key, rec)) = last {
            finding.session = Some(key.id.clone());
            finding.state = Some(rec.state.clone());
        }
        // Unowned since the later of its creation, its last session's end, and the
        // departure of a session record that claimed it.
        let evidence_at = [
            Some(pod.created_at),
            last.map(|(_, s)| s.since),
            world.session_departed(pod),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(pod.created_at);
        Ok(Candidate {
            finding,
            evidence_at,
            hold_for: world.profiles().get(pod.profile).grace.leaked_pod,
            not_before: None,
            attempt: None,
        })
    }
}
