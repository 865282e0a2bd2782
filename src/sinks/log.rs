//! Logs every finding transition as one structured event with its identities, so that the
//! logs alone tell what opened and resolved, on which pod, session and execution. Every value
//! that comes from outside (names, ids, reasons, states) goes through [`crate::util::text::clip`]:
//! in text logs a newline in a container's termination reason would otherwise forge a line.

use tracing::{debug, info, warn};

use crate::model::finding::{Event, Transition};
use crate::util::text::clip;

fn text(s: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    s.map(clip)
}

pub fn transition(t: &Transition) {
    let f = &t.finding.finding;
    let (ns, pod, session) = (
        text(f.namespace.as_deref()),
        text(f.pod.as_deref()),
        text(f.session.as_deref()),
    );
    let (execution, sandbox, state) = (
        text(f.execution.as_deref()),
        text(f.sandbox.as_deref()),
        text(f.state.as_deref()),
    );
    let (ns, pod, session) = (ns.as_deref(), pod.as_deref(), session.as_deref());
    let (execution, sandbox, state) = (execution.as_deref(), sandbox.as_deref(), state.as_deref());
    let (profile, reason) = (clip(&f.profile), clip(&f.reason));
    let retries = t.finding.retries_after_death;
    match t.event {
        Event::Opened => warn!(
            kind = %f.kind, profile = %profile, namespace = ns, pod, session, execution, sandbox,
            reason = %reason, state, retries_after_death = retries,
            detection_latency_seconds = t.detection_latency_secs(),
            "finding opened"
        ),
        Event::Updated => debug!(
            kind = %f.kind, profile = %profile, namespace = ns, pod, session, execution, sandbox,
            state, retries_after_death = retries,
            "finding updated"
        ),
        Event::Resolved => info!(
            kind = %f.kind, profile = %profile, namespace = ns, pod, session, execution, sandbox,
            reason = %reason, retries_after_death = retries, open_for_seconds = t.open_for_secs(),
            "finding resolved"
        ),
    }
}
