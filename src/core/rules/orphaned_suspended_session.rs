//! `orphaned_suspended_session`: a session the platform will try to resume, with nothing left
//! to resume from (incident 02: 2,206 such rows in one deployment).
//!
//! Opens when a session is in a suspended state and the place it resumes from is gone: its
//! pod, for bare-pod backends, or (when the profile says `resume_from: custom_resource`) the
//! custom resource named by its pod link, e.g. a Sandbox scaled to zero. Both are absences, so
//! the finding needs the source that would show the pod or resource to be trusted and to see
//! where it would be, and the absence to have lasted the profile's absence grace, counted from
//! the later of the session's `updated_at` and the pod's (or resource's) observed departure. Resolves when the session leaves the suspended
//! state or its pod / resource exists again.

use crate::core::rules::{
    Judged, Label, NOT_MINE, Needs, Series, SubjectKind, SubjectView, blind, pod_holder, unlinked,
};
use crate::core::world::{Feed, Holder, PodLink, StateClass, World};
use crate::model::finding::{Candidate, Finding, FindingKind};
use crate::model::profile::{ResumeFrom, SessionClass};
use crate::util::time::Ts;

pub struct Rule;

impl super::Rule for Rule {
    fn kind(&self) -> FindingKind {
        FindingKind::OrphanedSuspendedSession
    }

    fn subject(&self) -> SubjectKind {
        SubjectKind::Session
    }

    fn needs(&self) -> Needs {
        Needs {
            required: &[Feed::Sessions],
            optional: &[Feed::Pods, Feed::ResumeTargets],
        }
    }

    fn rests_on_absence(&self, reason: &str) -> Option<Feed> {
        match reason {
            "PodGone" => Some(Feed::Pods),
            "ResourceGone" => Some(Feed::ResumeTargets),
            _ => None,
        }
    }

    fn series(&self) -> Series {
        Series {
            name: "sandwatch_orphaned_suspended_sessions",
            alert: "SandwatchOrphanedSuspendedSessions",
            help: "Sessions in a suspended state whose pod (or resume resource) no longer exists: resuming them will fail. List them with /api/v1/findings?kind=orphaned_suspended_session and mark them gone or respawn them",
            labels: &[Label::Profile],
            counts_retries: false,
        }
    }

    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, _now: Ts) -> Judged {
        let SubjectView::Record(key, rec) = subject else {
            return Err(NOT_MINE.into());
        };
        if rec.class != StateClass::Session(SessionClass::Suspended) {
            return Err("the session is not in a suspended state".into());
        }
        let profile = world.profiles().get(key.profile);
        let ns = rec.namespace.as_deref();
        let (reason, departed) = match profile.sessions.resume_from() {
            ResumeFrom::Pod => {
                match world.pod_of_session(key, rec) {
                    PodLink::Missing => {}
                    PodLink::Found(_) => return Err("its pod exists".into()),
                    link => return Err(unlinked(&link).into()),
                }
                let holder = pod_holder(world, key.profile, Some(&key.id), rec.pod.as_deref());
                world
                    .absence(key.profile, Feed::Pods, ns, holder)
                    .map_err(|b| blind("its pod is missing", &b))?;
                let departed =
                    world.pod_departed(key.profile, rec.pod.as_ref(), Some(&key.id), None);
                ("PodGone", departed)
            }
            ResumeFrom::CustomResource => {
                match world.resume_target_exists(key, rec) {
                    Some(false) => {}
                    Some(true) => return Err("the resource it resumes from exists".into()),
                    None => return Err("it names no resource to resume from".into()),
                }
                world
                    .absence(key.profile, Feed::ResumeTargets, ns, Holder::Everywhere)
                    .map_err(|b| blind("the resource it resumes from is missing", &b))?;
                let departed = rec
                    .pod
                    .as_ref()
                    .and_then(|name| world.resume_target_departed(key.profile, name));
                ("ResourceGone", departed)
            }
        };
        Ok(Candidate {
            finding: Finding {
                kind: self.kind(),
                profile: profile.name.clone(),
                namespace: rec.namespace.clone(),
                pod: rec.pod.clone(),
                session: Some(key.id.clone()),
                execution: None,
                sandbox: None,
                reason: reason.into(),
                container: None,
                exit_code: None,
                state: Some(rec.state.clone()),
                pod_uid: None,
            },
            evidence_at: departed.map_or(rec.since, |d| d.max(rec.since)),
            hold_for: profile.grace.absence,
            not_before: None,
            attempt: None,
        })
    }
}
