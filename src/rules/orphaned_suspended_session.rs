//! `orphaned_suspended_session`: a session the platform will try to resume, with nothing left
//! to resume from (incident 02: 2,206 such rows in one deployment).
//!
//! Opens when a session is in a suspended state and the place it resumes from is gone: its
//! pod, for bare-pod backends, or (when the profile says `resume_from: custom_resource`) the
//! custom resource named by its pod link, e.g. a Sandbox scaled to zero. Both are absences, so
//! the finding needs the source that would show the pod or resource to be trusted, and the
//! absence to last the profile's absence grace. Resolves when the session leaves the suspended
//! state or its pod / resource exists again.

use crate::finding::{Candidate, Finding, FindingKind};
use crate::profile::{ResumeFrom, SessionClass};
use crate::rules::{Needs, SubjectKind, SubjectView};
use crate::time::Ts;
use crate::world::{Feed, PodLink, StateClass, Trust, World};

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

    fn evaluate(&self, subject: &SubjectView<'_>, world: &World, _now: Ts) -> Option<Candidate> {
        let SubjectView::Record(key, rec) = subject else {
            return None;
        };
        if rec.class != StateClass::Session(SessionClass::Suspended) {
            return None;
        }
        let profile = world.profiles().get(key.profile);
        let reason = match profile.sessions.resume_from() {
            ResumeFrom::Pod => {
                if world.trust(key.profile, Feed::Pods) != Trust::Trusted {
                    return None;
                }
                match world.pod_of_session(key, rec) {
                    PodLink::Missing => "PodGone",
                    PodLink::Found(_) | PodLink::None => return None,
                }
            }
            ResumeFrom::CustomResource => {
                if world.trust(key.profile, Feed::ResumeTargets) != Trust::Trusted {
                    return None;
                }
                match world.resume_target_exists(key, rec) {
                    Some(false) => "ResourceGone",
                    Some(true) | None => return None,
                }
            }
        };
        Some(Candidate {
            finding: Finding {
                kind: self.kind(),
                profile: profile.name.clone(),
                namespace: key.namespace.clone(),
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
            evidence_at: None,
            hold_for: profile.grace.absence,
            not_before: None,
            attempt: None,
        })
    }
}
