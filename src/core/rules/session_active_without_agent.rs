//! `session_active_without_agent`: the records say a session is live, but its agent is not
//! (incident 03: the AgenticSession stays Running while its runner is OOM-killed).
//!
//! Opens when a session is in an active state and its pod's agent container has terminated
//! for good (or the pod has finished), or its pod is gone (absence: only where the pod source
//! sees, and after the absence grace, which covers a pod being re-created, counted from the
//! later of the session's `updated_at` and the pod's observed departure). Resolves when
//! the session leaves the active state or a live agent is back.

use std::time::Duration;

use crate::core::rules::{
    AGENT_ALIVE, Judged, Label, NOT_MINE, Needs, Series, SubjectKind, SubjectView, blind,
    pod_holder, unlinked,
};
use crate::core::world::{Feed, PodLink, StateClass, World};
use crate::model::finding::{Candidate, Finding, FindingKind};
use crate::model::profile::SessionClass;
use crate::util::time::Ts;

pub struct Rule;

impl super::Rule for Rule {
    fn kind(&self) -> FindingKind {
        FindingKind::SessionActiveWithoutAgent
    }

    fn subject(&self) -> SubjectKind {
        SubjectKind::Session
    }

    fn needs(&self) -> Needs {
        Needs {
            required: &[Feed::Sessions, Feed::Pods],
            optional: &[],
        }
    }

    fn rests_on_absence(&self, reason: &str) -> Option<Feed> {
        matches!(reason, "PodGone").then_some(Feed::Pods)
    }

    fn series(&self) -> Series {
        Series {
            name: "sandwatch_sessions_active_without_agent",
            alert: "SandwatchSessionsActiveWithoutAgent",
            help: "Sessions the records call active whose pod is gone or whose agent container has terminated. List them with /api/v1/findings?kind=session_active_without_agent and end or restart them",
            labels: &[Label::Profile],
            counts_retries: false,
        }
    }

    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, _now: Ts) -> Judged {
        let SubjectView::Record(key, rec) = subject else {
            return Err(NOT_MINE.into());
        };
        if rec.class != StateClass::Session(SessionClass::Active) {
            return Err("the session is not in an active state".into());
        }
        let profile = world.profiles().get(key.profile);
        let mut finding = Finding {
            kind: self.kind(),
            profile: profile.name.clone(),
            namespace: rec.namespace.clone(),
            pod: rec.pod.clone(),
            session: Some(key.id.clone()),
            execution: None,
            sandbox: None,
            reason: "PodGone".into(),
            container: None,
            exit_code: None,
            state: Some(rec.state.clone()),
            pod_uid: None,
        };
        let (evidence_at, hold_for) = match world.pod_of_session(key, rec) {
            link @ (PodLink::None | PodLink::Ambiguous) => return Err(unlinked(&link).into()),
            PodLink::Missing => {
                let holder = pod_holder(world, key.profile, Some(&key.id), rec.pod.as_deref());
                world
                    .absence(key.profile, Feed::Pods, rec.namespace.as_deref(), holder)
                    .map_err(|b| blind("its pod is missing", &b))?;
                let departed =
                    world.pod_departed(key.profile, rec.pod.as_ref(), Some(&key.id), None);
                (
                    departed.map_or(rec.since, |d| d.max(rec.since)),
                    profile.grace.absence,
                )
            }
            PodLink::Found(pod) => {
                let death = pod.agent_death().ok_or(AGENT_ALIVE)?;
                finding.namespace = Some(pod.namespace.clone());
                finding.pod = Some(pod.name.clone());
                finding.pod_uid = Some(pod.uid.to_string().into());
                finding.reason = death.reason;
                finding.container = Some(death.container.clone());
                finding.exit_code = death.exit_code;
                (death.at.unwrap_or(rec.since), Duration::ZERO)
            }
        };
        Ok(Candidate {
            finding,
            evidence_at,
            hold_for,
            not_before: None,
            attempt: None,
        })
    }
}
