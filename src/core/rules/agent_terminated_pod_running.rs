//! `agent_terminated_pod_running`: the agent container is dead but a sidecar keeps the pod
//! `Running` (incidents 01 and 03).
//!
//! Opens when the pod's phase is Running, an agent container has terminated for good (any
//! reason: OOMKilled, Error, even Completed) and another container still runs. A plain
//! sidecar holds the phase at Running indefinitely, so that opens at once. A native sidecar
//! (an init container with `restartPolicy: Always`) is stopped by the kubelet itself once the
//! main container exits, so it counts only after the profile's sidecar grace from the agent's
//! finishedAt. Under `restartPolicy: Always` a terminated agent is about to restart: that is
//! a crash loop, not this finding. Resolves when the pod is deleted, starts terminating,
//! leaves Running, or the agent runs again.

use crate::core::rules::{
    Judged, Label, NOT_MINE, Needs, Series, SubjectKind, SubjectView, pod_identity,
};
use crate::core::world::{Feed, Phase, World};
use crate::model::finding::{Candidate, FindingKind};
use crate::util::time::Ts;

pub struct Rule;

impl super::Rule for Rule {
    fn kind(&self) -> FindingKind {
        FindingKind::AgentTerminatedPodRunning
    }

    fn subject(&self) -> SubjectKind {
        SubjectKind::Pod
    }

    fn needs(&self) -> Needs {
        Needs {
            required: &[Feed::Pods],
            optional: &[],
        }
    }

    fn series(&self) -> Series {
        Series {
            name: "sandwatch_agent_container_terminated_while_pod_running",
            alert: "SandwatchAgentTerminatedPodRunning",
            help: "Sandbox pods whose agent container has terminated (label reason) while a sidecar keeps the pod Running: the platform still believes these agents are alive. List them with /api/v1/findings?kind=agent_terminated_pod_running and restart or delete the pods",
            labels: &[Label::Namespace, Label::Profile, Label::Reason],
            counts_retries: false,
        }
    }

    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, _now: Ts) -> Judged {
        let SubjectView::Pod(pod) = subject else {
            return Err(NOT_MINE.into());
        };
        if pod.phase != Phase::Running {
            return Err("the pod is not in phase Running".into());
        }
        if pod.terminating {
            return Err("the pod is terminating".into());
        }
        let agent = pod
            .dead_agent()
            .ok_or("no agent container has terminated for good")?;
        let (plain_sidecar, native_sidecar) = pod.others_running();
        if !plain_sidecar && !native_sidecar {
            return Err("no other container runs: the pod is not kept running".into());
        }
        let grace = world.profiles().get(pod.profile).grace.native_sidecar;
        let mut finding = pod_identity(
            self.kind(),
            world,
            pod,
            agent.reason.as_deref().unwrap_or("Terminated"),
        );
        if finding.session.is_none() {
            finding.session = world
                .sessions_of_pod(pod)
                .first()
                .map(|(k, _)| k.id.clone());
        }
        finding.container = Some(agent.name.clone());
        finding.exit_code = Some(agent.exit_code);
        Ok(Candidate {
            finding,
            evidence_at: agent.finished_at,
            hold_for: std::time::Duration::ZERO,
            not_before: (!plain_sidecar).then(|| agent.finished_at.saturating_add(grace)),
            attempt: None,
        })
    }
}
