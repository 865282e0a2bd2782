//! How an explained subject joined the rest: the same joins the rules use, each told with
//! the key it went by or why it was not made.

use super::{Joined, Link, label, meta, no_pod, pod_label, record_subject, resolved_why};
use crate::core::world::{Pod, PodLink, RecordKey, Resolved, StoredRecord, World};
use crate::model::profile::{MetaKey, ProfileId};
use crate::model::record::RecordKind;

fn session_key(w: &World, profile: ProfileId) -> Option<&MetaKey> {
    w.profiles()
        .get(profile)
        .pods
        .as_ref()?
        .session_key
        .as_ref()
}

fn execution_key(w: &World, profile: ProfileId) -> Option<&MetaKey> {
    w.profiles()
        .get(profile)
        .pods
        .as_ref()?
        .execution_key
        .as_ref()
}

fn found(from: &str, to: &'static str, id: String, by: String) -> Link {
    Link {
        from: from.to_string(),
        to,
        id: Some(id),
        found: true,
        by: Some(by),
        why: None,
    }
}

fn missing(from: &str, to: &'static str, id: Option<String>, why: String) -> Link {
    Link {
        from: from.to_string(),
        to,
        id,
        found: false,
        by: None,
        why: Some(why),
    }
}

/// A pod: the sessions that claim it, its execution, and the executions of those sessions.
pub(super) fn from_pod(w: &World, pod: &Pod) -> Joined {
    let mut j = Joined::default();
    let from = pod_label(pod);
    j.pods.push((pod.subject(), from.clone()));
    let key = session_key(w, pod.profile);
    for (k, _) in w.sessions_of_pod(pod) {
        let by = match (&pod.session, key) {
            (Some(s), Some(m)) if *s == k.id => format!("the pod's {}", meta(m)),
            _ => "the session record's field pod".to_string(),
        };
        j.links.push(found(&from, "session", k.id.to_string(), by));
        j.sessions
            .push((record_subject(&k), label(RecordKind::Session, &k)));
    }
    if j.sessions.is_empty() {
        let why = match (&pod.session, key) {
            (Some(s), Some(m)) => format!(
                "the pod's {} says {s}, and no session record {s} that admits namespace {} is held",
                meta(m),
                pod.namespace
            ),
            _ => "the pod carries no session key and no session record names it".to_string(),
        };
        j.links.push(missing(
            &from,
            "session",
            pod.session.as_deref().map(String::from),
            why,
        ));
    }
    if let (Some(e), Some(m)) = (&pod.execution, execution_key(w, pod.profile)) {
        let ns = Some(pod.namespace.clone());
        match w.resolve(RecordKind::Execution, pod.profile, ns.as_ref(), e) {
            Resolved::Found(k) => {
                j.links.push(found(
                    &from,
                    "execution",
                    e.to_string(),
                    format!("the pod's {}", meta(m)),
                ));
                j.executions
                    .push((record_subject(&k), label(RecordKind::Execution, &k)));
            }
            r => j.links.push(missing(
                &from,
                "execution",
                Some(e.to_string()),
                resolved_why(&r, RecordKind::Execution, e),
            )),
        }
    }
    let sessions: Vec<RecordKey> = w.sessions_of_pod(pod).into_iter().map(|(k, _)| k).collect();
    executions_of(w, &sessions, &mut j);
    j
}

/// The executions that name one of these sessions (beyond those already linked).
fn executions_of(w: &World, sessions: &[RecordKey], j: &mut Joined) {
    for session in sessions {
        for k in w.executions_naming_session(session.profile, &session.id) {
            let Some(r) = w.record(k) else { continue };
            if w.session_of(k, r) != Some(Resolved::Found(session.clone())) {
                continue;
            }
            let subject = record_subject(k);
            if j.executions.iter().any(|(x, _)| *x == subject) {
                continue;
            }
            let from = label(RecordKind::Session, session);
            let by = "the execution record's field session".to_string();
            j.links
                .push(found(&from, "execution", k.id.to_string(), by));
            j.executions
                .push((subject, label(RecordKind::Execution, k)));
        }
    }
}

/// The pod a record's agent runs in, as a link (and a judged pod when found).
fn pod_link(
    w: &World,
    from: &str,
    link: PodLink<'_>,
    rec: &StoredRecord,
    id: &str,
    profile: ProfileId,
    j: &mut Joined,
) {
    match link {
        PodLink::Found(p) => {
            let by = if rec.pod.as_deref() == Some(&*p.name) {
                "the record's field pod".to_string()
            } else {
                match session_key(w, profile) {
                    Some(m) => format!("the pod's {}", meta(m)),
                    None => "the session's pod".to_string(),
                }
            };
            j.links.push(found(
                from,
                "pod",
                format!("{}/{}", p.namespace, p.name),
                by,
            ));
            j.pods.push((p.subject(), pod_label(p)));
        }
        link => {
            let why = no_pod(&link, rec, session_key(w, profile), id);
            j.links.push(missing(
                from,
                "pod",
                rec.pod.as_deref().map(String::from),
                why,
            ));
        }
    }
}

/// A session: its pod and its executions.
pub(super) fn from_session(w: &World, key: &RecordKey, rec: &StoredRecord) -> Joined {
    let mut j = Joined::default();
    let from = label(RecordKind::Session, key);
    j.sessions.push((record_subject(key), from.clone()));
    pod_link(
        w,
        &from,
        w.pod_of_session(key, rec),
        rec,
        &key.id,
        key.profile,
        &mut j,
    );
    executions_of(w, std::slice::from_ref(key), &mut j);
    j
}

/// An execution: its session, its pod and its sandbox.
pub(super) fn from_execution(w: &World, key: &RecordKey, rec: &StoredRecord) -> Joined {
    let mut j = Joined::default();
    let from = label(RecordKind::Execution, key);
    j.executions.push((record_subject(key), from.clone()));
    match (&rec.session, w.session_of(key, rec)) {
        (Some(id), Some(Resolved::Found(k))) => {
            j.links.push(found(
                &from,
                "session",
                id.to_string(),
                "the execution record's field session".into(),
            ));
            j.sessions
                .push((record_subject(&k), label(RecordKind::Session, &k)));
        }
        (Some(id), Some(r)) => j.links.push(missing(
            &from,
            "session",
            Some(id.to_string()),
            resolved_why(&r, RecordKind::Session, id),
        )),
        _ => j.links.push(missing(
            &from,
            "session",
            None,
            "the execution names no session".into(),
        )),
    }
    if let Some((id, sandbox)) = w.sandbox_of(key, rec) {
        j.links.push(match sandbox {
            Some(s) => found(
                &from,
                "sandbox",
                id.to_string(),
                format!("the execution record's field sandbox (state {})", s.state),
            ),
            None => missing(
                &from,
                "sandbox",
                Some(id.to_string()),
                format!("no sandbox record {id:?} is held"),
            ),
        });
        return j;
    }
    // Pods carry the session's key: a missing one is told by the session id.
    let keyed_by = rec.session.as_deref().unwrap_or(&key.id);
    let link = w.pod_of_execution(key, rec);
    pod_link(w, &from, link, rec, keyed_by, key.profile, &mut j);
    j
}

/// A sandbox: the executions that run against it (rules judge those, not the sandbox).
pub(super) fn from_sandbox(w: &World, key: &RecordKey) -> Joined {
    let mut j = Joined::default();
    let from = label(RecordKind::Sandbox, key);
    for k in w.executions_naming_sandbox(key.profile, &key.id) {
        let Some(r) = w.record(k) else { continue };
        // The sandbox the execution's reference resolves to (namespaced ids included).
        let resolves = r.sandbox.as_ref().is_some_and(|id| {
            w.resolve(RecordKind::Sandbox, k.profile, r.namespace.as_ref(), id)
                == Resolved::Found(key.clone())
        });
        if resolves {
            let by = "the execution record's field sandbox".to_string();
            j.links
                .push(found(&from, "execution", k.id.to_string(), by));
            j.executions
                .push((record_subject(k), label(RecordKind::Execution, k)));
        }
    }
    if j.executions.is_empty() {
        j.links.push(missing(
            &from,
            "execution",
            None,
            "no execution record names this sandbox".into(),
        ));
    }
    j
}
