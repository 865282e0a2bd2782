//! A call's span, and what follows it: its journal entry, its metrics and logs, and what
//! happens next for its incident (done, resend later, retry with backoff) and its receiver's
//! circuit.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, info_span, warn};

use super::{Call, Controller, KeyState};
use crate::model::finding::OpenFinding;
use crate::remediation::action::{Action, ActionName};
use crate::remediation::deliver::{Deliver, Outcome};
use crate::remediation::limits::{Circuit, backoff, later, seed};
use crate::remediation::metrics::{ActionLabels, RemediationMetrics};
use crate::util::text::clip;
use crate::util::time::Ts;

impl<D: Deliver> Controller<D> {
    /// Keeps the call in the journal, when there is one.
    pub(super) fn journal(
        &mut self,
        at: Ts,
        action: &Action,
        key: &str,
        f: &OpenFinding,
        outcome: &Outcome,
        resend: bool,
    ) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        let what = match outcome {
            Outcome::DryRun(w) | Outcome::Rehearsed(w) => w.clone(),
            Outcome::Success(code) | Outcome::Refused(code, _) => format!("answered {code}"),
            Outcome::Retry(e, _) | Outcome::Invalid(e) => clip(e).into_owned(),
        };
        let delayed_by = self
            .state
            .get(key)
            .map(|st| st.delays.iter().copied().collect())
            .unwrap_or_default();
        journal.push(Call {
            at,
            action: action.name,
            key: key.to_string(),
            finding: f.clone(),
            what,
            outcome: outcome_label(outcome),
            resend,
            delayed_by,
        });
    }

    /// The `remediation` span of one call: a child of the finding's span, when traces are on.
    pub(super) fn span(&self, action: &Action, key: &str, f: &OpenFinding) -> tracing::Span {
        let parent = (self.spans)(f.id);
        let d = &f.finding;
        info_span!(
            parent: parent.as_ref().and_then(|s| s.id()),
            "remediation",
            action = action.name.as_str(), key = %key, finding.kind = %d.kind, finding.id = f.id,
            namespace = d.namespace.as_deref(), pod = d.pod.as_deref(), session = d.session.as_deref(),
            execution = d.execution.as_deref(), sandbox = d.sandbox.as_deref(),
            outcome = tracing::field::Empty,
        )
    }

    /// Counts and logs a call's outcome, and decides what happens next for its incident
    /// (done, resend later, retry with backoff) and for its receiver's circuit.
    pub(super) fn settle(
        &mut self,
        action: &Action,
        key: &str,
        f: &OpenFinding,
        index: usize,
        outcome: Outcome,
        took: Duration,
    ) {
        let name = action.name;
        let d = &f.finding;
        let (session, execution, pod) =
            (clipped(&d.session), clipped(&d.execution), clipped(&d.pod));
        let (session, execution, pod) = (session.as_deref(), execution.as_deref(), pod.as_deref());
        let now = self.now();
        let settings = &self.settings;
        let metrics = &self.metrics;
        let st = self.state.entry(key.to_string()).or_default();
        (st.calls, st.last) = (st.calls + 1, Some((now, outcome_label(&outcome))));
        let c = &mut self.circuits[index];
        let label = ActionLabels::of(name);
        let observe = || {
            metrics
                .duration
                .get_or_create(&label)
                .observe(took.as_secs_f64())
        };
        match outcome {
            Outcome::DryRun(what) => {
                metrics.count(name, "dry_run");
                info!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, "dry run: would {what}");
                st.done = true;
            }
            Outcome::Rehearsed(what) => {
                metrics.count(name, "success");
                tracing::debug!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, "backtest: would {what}");
                // The recording cannot show a call's effect: the backtest takes it as
                // effective, so an incident is called once.
                st.delivered_at = Some(now);
                st.done = true;
            }
            Outcome::Success(status) => {
                metrics.count(name, "success");
                observe();
                info!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, status, "remediated");
                delivered(st, now, settings.resend_after);
                *c = Circuit::default();
            }
            Outcome::Refused(status, body) => {
                metrics.count(name, "refused");
                observe();
                warn!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, status, response = %clip(&body), "the receiver refused the remediation; not retrying");
                st.done = true;
                *c = Circuit::default();
            }
            Outcome::Retry(error, retry_after) => {
                metrics.count(name, "error");
                st.failures += 1;
                let wait = backoff(
                    st.failures,
                    settings.retry_initial,
                    settings.retry_max,
                    retry_after,
                    seed(key, st.failures),
                );
                st.next_at = Some(later(now, wait));
                warn!(action = name.as_str(), key = %key, error = %clip(&error), attempt = st.failures, "remediation failed; retrying in {wait:?}");
                if c.failed(now, settings.circuit_failures, settings.circuit_open_for) {
                    tripped(metrics, name, c.failures, settings.circuit_open_for);
                }
            }
            Outcome::Invalid(error) => {
                metrics.count(name, "invalid");
                warn!(action = name.as_str(), key = %key, error = %clip(&error), "cannot build the remediation call; retrying later");
                st.next_at = Some(later(now, settings.retry_max));
            }
        }
    }
}

/// A receiver's breaker opened: counted and said.
fn tripped(metrics: &RemediationMetrics, name: ActionName, failures: u32, open_for: Duration) {
    metrics.count(name, "circuit_open");
    metrics
        .circuit_open
        .get_or_create(&ActionLabels::of(name))
        .set(1);
    warn!(
        action = name.as_str(),
        failures, "the receiver keeps failing: circuit open, no calls for {open_for:?}"
    );
}

/// A call went through: the incident is looked at again after `resend_after` (doubling with
/// each resend), and called again if its finding is still open then.
fn delivered(st: &mut KeyState, now: Ts, resend_after: Duration) {
    st.failures = 0;
    st.delivered_at = Some(now);
    let factor = 2u32.saturating_pow(st.resends.min(6));
    st.resends += 1;
    st.next_at = Some(later(now, resend_after.saturating_mul(factor)));
}

/// A value from outside, escaped and bounded for the logs.
pub(super) fn clipped(s: &Option<Arc<str>>) -> Option<String> {
    s.as_deref().map(|s| clip(s).into_owned())
}

/// The `outcome` of a call's span.
pub(super) fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::DryRun(_) => "dry_run",
        Outcome::Success(_) | Outcome::Rehearsed(_) => "success",
        Outcome::Refused(..) => "refused",
        Outcome::Retry(..) => "error",
        Outcome::Invalid(_) => "invalid",
    }
}
