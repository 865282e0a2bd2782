//! Logs every finding transition as one structured event with its identities, so that the
//! logs alone tell what opened and resolved, on which pod, session and execution. Every value
//! that comes from outside (names, ids, reasons, states) goes through [`crate::util::text::clip`]:
//! in text logs a newline in a container's termination reason would otherwise forge a line.

use tracing::{debug, info, warn};

use crate::model::finding::{Event, Transition};
use crate::model::view::FindingView;
use crate::util::text::clip;

/// The log sink.
pub struct Log;

impl super::TransitionSink for Log {
    fn transition(&mut self, t: &Transition) {
        transition(t)
    }
}

fn text(s: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    s.map(clip)
}

pub fn transition(t: &Transition) {
    let v = FindingView::new(&t.finding, t.at);
    let (ns, pod, session) = (text(v.namespace), text(v.pod), text(v.session));
    let (execution, sandbox, state) = (text(v.execution), text(v.sandbox), text(v.state));
    let (ns, pod, session) = (ns.as_deref(), pod.as_deref(), session.as_deref());
    let (execution, sandbox, state) = (execution.as_deref(), sandbox.as_deref(), state.as_deref());
    let (kind, profile, reason) = (v.kind, clip(v.profile), clip(v.reason));
    let retries = v.retries_after_death;
    match t.event {
        Event::Opened => warn!(
            %kind, profile = %profile, namespace = ns, pod, session, execution, sandbox,
            reason = %reason, state, retries_after_death = retries,
            detection_latency_seconds = t.detection_latency_secs(),
            "finding opened"
        ),
        Event::Updated => debug!(
            %kind, profile = %profile, namespace = ns, pod, session, execution, sandbox,
            state, retries_after_death = retries,
            "finding updated"
        ),
        Event::Resolved => info!(
            %kind, profile = %profile, namespace = ns, pod, session, execution, sandbox,
            reason = %reason, retries_after_death = retries, open_for_seconds = v.open_for_seconds,
            "finding resolved"
        ),
    }
}
