//! The traces sink: a `finding` span per open finding, from its opening to its resolution,
//! so that what happens to a finding (remediation attempts) nests under it in a trace. The
//! spans go wherever the tracing subscriber sends them (OTLP when traces are on).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::{Span, info_span};

use crate::model::finding::{Event, Transition};
use crate::model::view::FindingView;

/// A span per open finding, from its opening to its resolution, so that what happens to the
/// finding (remediation attempts) nests under it.
#[derive(Clone, Default)]
pub struct FindingSpans(Arc<Mutex<HashMap<u64, Span>>>);

impl super::TransitionSink for FindingSpans {
    fn transition(&mut self, t: &Transition) {
        let f = &t.finding;
        let v = FindingView::new(f, t.at);
        let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match t.event {
            Event::Opened => {
                let span = info_span!(
                    parent: None,
                    "finding",
                    finding.id = f.id,
                    finding.kind = v.kind.as_str(),
                    finding.reason = v.reason,
                    profile = v.profile,
                    namespace = v.namespace,
                    pod = v.pod,
                    session = v.session,
                    execution = v.execution,
                    sandbox = v.sandbox,
                    detection_latency_seconds = t.detection_latency_secs(),
                    retries_after_death = tracing::field::Empty,
                    open_for_seconds = tracing::field::Empty,
                );
                spans.insert(f.id, span);
            }
            Event::Updated => {}
            Event::Resolved => {
                if let Some(span) = spans.remove(&f.id) {
                    span.record("retries_after_death", v.retries_after_death);
                    span.record("open_for_seconds", v.open_for_seconds);
                }
            }
        }
    }
}

impl FindingSpans {
    /// The span of an open finding.
    pub fn get(&self, id: u64) -> Option<Span> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}
