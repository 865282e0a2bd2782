//! Logs every finding transition as one structured event with its identities, so that the
//! logs alone tell what opened and resolved, on which pod, session and execution.

use tracing::{debug, info, warn};

use crate::finding::{Event, Transition};

pub fn transition(t: &Transition) {
    let f = &t.finding.finding;
    let (ns, pod, session) = (
        f.namespace.as_deref(),
        f.pod.as_deref(),
        f.session.as_deref(),
    );
    let (execution, sandbox) = (f.execution.as_deref(), f.sandbox.as_deref());
    let retries = t.finding.retries_after_death;
    match t.event {
        Event::Opened => warn!(
            kind = %f.kind, profile = %f.profile, namespace = ns, pod, session, execution, sandbox,
            reason = %f.reason, state = f.state.as_deref(), retries_after_death = retries,
            detection_latency_seconds = t.detection_latency_secs(),
            "finding opened"
        ),
        Event::Updated => debug!(
            kind = %f.kind, profile = %f.profile, namespace = ns, pod, session, execution, sandbox,
            state = f.state.as_deref(), retries_after_death = retries,
            "finding updated"
        ),
        Event::Resolved => info!(
            kind = %f.kind, profile = %f.profile, namespace = ns, pod, session, execution, sandbox,
            reason = %f.reason, retries_after_death = retries, open_for_seconds = t.open_for_secs(),
            "finding resolved"
        ),
    }
}
