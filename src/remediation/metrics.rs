//! The remediation series: calls by action and outcome, call durations, open circuits, the
//! backlog and leadership. Created at zero for every configured action; the controller counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::action::{Action, ActionName};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    action: String,
    outcome: String,
}

/// The remediation series.
#[derive(Clone)]
pub struct RemediationMetrics {
    calls: Family<OutcomeLabels, Counter>,
    pub(super) duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    pub(super) circuit_open: Family<ActionLabels, Gauge>,
    pub(super) backlog: Family<ActionLabels, Gauge>,
    pub(super) leader: Gauge,
    /// Failed Lease reads and writes.
    pub lease_errors: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

const OUTCOMES: [&str; 7] = [
    "success",
    "refused",
    "error",
    "dry_run",
    "ineffective",
    "invalid",
    "circuit_open",
];

impl RemediationMetrics {
    /// The series of these actions, each created at zero.
    pub fn new(actions: &[Action]) -> RemediationMetrics {
        let m = RemediationMetrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            circuit_open: Family::default(),
            backlog: Family::default(),
            leader: Gauge::default(),
            lease_errors: Counter::default(),
        };
        let mut names: Vec<ActionName> = actions.iter().map(|a| a.name).collect();
        names.sort();
        names.dedup();
        for name in names {
            let action = ActionLabels::of(name);
            m.circuit_open.get_or_create(&action).set(0);
            m.backlog.get_or_create(&action).set(0);
            let _ = m.duration.get_or_create_owned(&action);
            for outcome in OUTCOMES {
                let _ = m.calls.get_or_create_owned(&OutcomeLabels {
                    action: name.as_str().to_string(),
                    outcome: outcome.to_string(),
                });
            }
        }
        m
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sandwatch_remediations",
            "Remediation calls by action and outcome: success, refused (4xx, not retried), error (retried with backoff), dry_run (logged only), ineffective (the finding outlived a successful call), invalid (the call could not be built), circuit_open (the receiver kept failing). Errors and refusals are logged with the receiver's answer: check the receiver",
            self.calls.clone(),
        );
        registry.register(
            "sandwatch_remediation_duration_seconds",
            "How long remediation calls took, by action; calls near the timeout mean a slow receiver",
            self.duration.clone(),
        );
        registry.register(
            "sandwatch_remediation_circuit_open",
            "1 while an action's receiver keeps failing and sandwatch has stopped calling it; check the receiver and the logs",
            self.circuit_open.clone(),
        );
        registry.register(
            "sandwatch_remediation_backlog",
            "Findings due for remediation that wait for their turn under the rate limits (or an open circuit), by action, on the replica that remediates (0 elsewhere); a backlog that does not drain means per_minute is too low for the incident",
            self.backlog.clone(),
        );
        registry.register(
            "sandwatch_leader",
            "1 on the replica that holds the remediation Lease (or when leader election is off); per shard, exactly one replica should read 1",
            self.leader.clone(),
        );
        registry.register(
            "sandwatch_lease_errors",
            "Failed reads or writes of the remediation Lease (retried every 2 s); a steady rate means no replica can lead: check the Lease RBAC (get, create, update on leases) and the API server",
            self.lease_errors.clone(),
        );
    }

    pub(super) fn count(&self, action: ActionName, outcome: &str) {
        self.calls
            .get_or_create(&OutcomeLabels {
                action: action.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

impl ActionLabels {
    pub(super) fn of(name: ActionName) -> ActionLabels {
        ActionLabels {
            action: name.as_str().to_string(),
        }
    }
}
