//! sandwatch's own health: whether each source is synced and fresh, what it read, how it
//! failed, and what input it had to reject. Sources report through [`SourceCounters`]; the
//! engine task reports each source's status.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::source::{SourceCounters, SourceKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileReasonLabels {
    pub profile: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReasonLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub source: String,
    pub mode: String,
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn poll_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[derive(Clone)]
pub struct HealthMetrics {
    synced: Family<SourceLabels, Gauge>,
    last_success: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    watch_events: Family<SourceLabels, Counter>,
    watch_restarts: Family<SourceLabels, Counter>,
    watch_errors: Family<SourceLabels, Counter>,
    pushed: Family<SourceLabels, Counter>,
    rejected: Family<SourceReasonLabels, Counter>,
    polls: Family<PollLabels, Counter>,
    poll_rows: Family<PollLabels, Counter>,
    poll_duration: HistogramFamily<SourceLabels>,
    unjoined: Family<ProfileReasonLabels, Counter>,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        HealthMetrics {
            synced: Family::default(),
            last_success: Family::default(),
            watch_events: Family::default(),
            watch_restarts: Family::default(),
            watch_errors: Family::default(),
            pushed: Family::default(),
            rejected: Family::default(),
            polls: Family::default(),
            poll_rows: Family::default(),
            poll_duration: Family::new_with_constructor(poll_histogram),
            unjoined: Family::default(),
        }
    }
}

fn source(name: &str) -> SourceLabels {
    SourceLabels {
        source: name.to_string(),
    }
}

impl HealthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sandwatch_source_synced",
            "1 while the source has completed its initial list or load and is fresh; 0 means sandwatch is partly blind: findings that rest on it hold and remediation stops. /readyz and the logs give the source's last error",
            self.synced.clone(),
        );
        registry.register(
            "sandwatch_source_last_success_timestamp_seconds",
            "Unix time of the source's last successful list, watch event, poll or push; time() minus it is how long the source has been silent",
            self.last_success.clone(),
        );
        registry.register(
            "sandwatch_watch_events",
            "Watch events and list items received from the Kubernetes API server, by source; a flat line on a busy cluster means the watch is stuck",
            self.watch_events.clone(),
        );
        registry.register(
            "sandwatch_watch_restarts",
            "Watches started over with a full list after the API server stayed unreachable longer than --stale-after, by source; check the API server and the network path to it",
            self.watch_restarts.clone(),
        );
        registry.register(
            "sandwatch_watch_errors",
            "Failed watch or list requests (retried with backoff), by source; a steady rate points at RBAC (403) or an unreachable API server, which the logs name",
            self.watch_errors.clone(),
        );
        registry.register(
            "sandwatch_pushed_records",
            "Records accepted through the ingest API (POST /api/v1/records), by source; a flat line means the provider adapter stopped reporting",
            self.pushed.clone(),
        );
        registry.register(
            "sandwatch_record_polls",
            "Polls of a records database by mode (full, incremental) and outcome (success, error; a connection that failed counts as an error of the poll it was for); errors are retried with backoff and logged with the database's reason",
            self.polls.clone(),
        );
        registry.register(
            "sandwatch_record_poll_rows",
            "Rows read by successful polls of a records database, by mode; incremental polls reading as many rows as full ones mean updated_at is not set by the platform",
            self.poll_rows.clone(),
        );
        registry.register(
            "sandwatch_record_poll_duration_seconds",
            "Time a successful poll of a records database took; growing values point at a slow database or a missing index on updated_at",
            self.poll_duration.clone(),
        );
        registry.register(
            "sandwatch_rejected_inputs",
            "Input that could not be used (bad JSON, an unknown record kind or state, an object the decoder cannot read), by source and reason; each is logged with its position or id and the field, and skipped: fix the writer or the profile's states",
            self.rejected.clone(),
        );
        registry.register(
            "sandwatch_unjoined_references",
            "References that could not be joined and were not guessed (reason ambiguous_reference: an execution or a tombstone names an id that exists in several namespaces without saying which); the log names them: give those records their namespace",
            self.unjoined.clone(),
        );
    }

    /// Creates a source's series at zero, so that dashboards and alerts see zeros from the
    /// start rather than absent series.
    pub fn register_source(&self, name: &str, kind: SourceKind) {
        let l = source(name);
        self.synced.get_or_create(&l).set(0);
        for reason in crate::model::record::REASONS {
            let _ = self.rejected.get_or_create_owned(&SourceReasonLabels {
                source: name.to_string(),
                reason: reason.to_string(),
            });
        }
        match kind {
            SourceKind::Poll => {
                for mode in ["full", "incremental"] {
                    for outcome in ["success", "error"] {
                        let _ = self.polls.get_or_create_owned(&PollLabels {
                            source: name.to_string(),
                            mode: mode.to_string(),
                            outcome: outcome.to_string(),
                        });
                    }
                }
            }
            SourceKind::Watch => {
                let _ = self.watch_events.get_or_create_owned(&l);
                let _ = self.watch_restarts.get_or_create_owned(&l);
                let _ = self.watch_errors.get_or_create_owned(&l);
            }
            SourceKind::Push => {
                let _ = self.pushed.get_or_create_owned(&l);
            }
        }
    }

    /// Something the World could not act on (an ambiguous reference), counted by profile.
    pub fn notice(&self, n: &crate::core::world::Notice) {
        self.unjoined
            .get_or_create(&ProfileReasonLabels {
                profile: n.profile.to_string(),
                reason: n.reason.to_string(),
            })
            .inc();
    }

    pub fn source_status(&self, name: &str, synced: bool) {
        self.synced
            .get_or_create(&source(name))
            .set(i64::from(synced));
    }

    /// When the source last talked to its backend successfully, if it has.
    pub fn last_success(&self, name: &str) -> Option<crate::util::time::Ts> {
        let secs = self.last_success.get_or_create(&source(name)).get();
        (secs > 0.0).then_some(crate::util::time::Ts((secs * 1000.0) as i64))
    }

    fn success(&self, name: &str) {
        self.last_success
            .get_or_create(&source(name))
            .set(crate::util::time::Ts::now().as_secs_f64());
    }
}

impl SourceCounters for HealthMetrics {
    fn watch_event(&self, name: &str) {
        self.success(name);
        self.watch_events.get_or_create(&source(name)).inc();
    }

    fn watch_restart(&self, name: &str) {
        self.watch_restarts.get_or_create(&source(name)).inc();
    }

    fn watch_error(&self, name: &str) {
        self.watch_errors.get_or_create(&source(name)).inc();
    }

    fn pushed(&self, name: &str, records: u64) {
        self.success(name);
        self.pushed.get_or_create(&source(name)).inc_by(records);
    }

    fn rejected(&self, name: &str, reason: &str) {
        self.rejected
            .get_or_create(&SourceReasonLabels {
                source: name.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    fn poll(&self, name: &str, full: bool, seconds: f64, rows: u64, ok: bool) {
        let l = PollLabels {
            source: name.to_string(),
            mode: if full { "full" } else { "incremental" }.to_string(),
            outcome: if ok { "success" } else { "error" }.to_string(),
        };
        self.polls.get_or_create(&l).inc();
        if ok {
            self.success(name);
            self.poll_rows.get_or_create(&l).inc_by(rows);
            self.poll_duration
                .get_or_create(&source(name))
                .observe(seconds);
        }
    }
}
