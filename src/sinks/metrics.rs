//! The finding metrics: Prometheus series kept up to date from transitions.
//!
//! Sits at the end of the flow: engine → transitions → this sink → a prometheus-client
//! `Registry`, encoded by `/metrics` in live mode or written by `replay --metrics-out`. Labels
//! are bounded (namespace, profile, kind, reason, state): per-entity detail (pod, session,
//! execution ids) lives in the findings API and the logs, never in series. Profile-level
//! series start at zero for every configured profile, so alerts see zeros, not absences.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::finding::{Event, FindingKind, Transition};
use crate::profile::Profiles;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileKindLabels {
    pub profile: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileStateLabels {
    pub profile: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceProfileLabels {
    pub namespace: String,
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceProfileReasonLabels {
    pub namespace: String,
    pub profile: String,
    pub reason: String,
}

/// Which gauge series an open finding counts in.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Series {
    AgentTerminated(NamespaceProfileReasonLabels),
    ExecutionOnDeadAgent(ProfileStateLabels),
    Orphaned(ProfileLabels),
    ActiveWithoutAgent(ProfileLabels),
    Leaked(NamespaceProfileLabels),
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Detection latency buckets: sub-second (event-driven) up to the slowest grace periods.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
    ])
}

#[derive(Clone)]
pub struct FindingMetrics {
    agent_terminated: Family<NamespaceProfileReasonLabels, Gauge>,
    orphaned: Family<ProfileLabels, Gauge>,
    executions_dead: Family<ProfileStateLabels, Gauge>,
    retries: Family<ProfileLabels, Counter>,
    active_without_agent: Family<ProfileLabels, Gauge>,
    leaked: Family<NamespaceProfileLabels, Gauge>,
    opened: Family<KindLabels, Counter>,
    resolved: Family<KindLabels, Counter>,
    latency: HistogramFamily<KindLabels>,
    rule_active: Family<ProfileKindLabels, Gauge>,
}

/// The sink: the metric families plus which series each open finding counts in. Label sets
/// are bounded, so each is stored once and open findings point at it.
pub struct FindingSink {
    metrics: FindingMetrics,
    series: Vec<Gauge>,
    series_index: HashMap<Series, u32>,
    open: HashMap<u64, u32>,
}

impl FindingMetrics {
    pub fn new(profiles: &Profiles) -> FindingMetrics {
        let m = FindingMetrics {
            agent_terminated: Family::default(),
            orphaned: Family::default(),
            executions_dead: Family::default(),
            retries: Family::default(),
            active_without_agent: Family::default(),
            leaked: Family::default(),
            opened: Family::default(),
            resolved: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rule_active: Family::default(),
        };
        for (_, p) in profiles.iter() {
            let profile = ProfileLabels {
                profile: p.name.to_string(),
            };
            m.orphaned.get_or_create_owned(&profile);
            m.active_without_agent.get_or_create_owned(&profile);
            m.retries.get_or_create_owned(&profile);
            for state in &p.executions.active {
                m.executions_dead.get_or_create_owned(&ProfileStateLabels {
                    profile: p.name.to_string(),
                    state: state.clone(),
                });
            }
        }
        for (_, p) in profiles.iter() {
            for kind in FindingKind::ALL {
                m.rule_active.get_or_create_owned(&ProfileKindLabels {
                    profile: p.name.to_string(),
                    kind: kind.as_str().to_string(),
                });
            }
        }
        for kind in FindingKind::ALL {
            let k = KindLabels {
                kind: kind.as_str().to_string(),
            };
            m.opened.get_or_create_owned(&k);
            m.resolved.get_or_create_owned(&k);
            let _ = m.latency.get_or_create_owned(&k);
        }
        m
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sandwatch_agent_container_terminated_while_pod_running",
            "Sandbox pods whose agent container has terminated (reason = its termination reason) while a sidecar keeps the pod Running; the platform still believes the agent is alive. See the findings API for the pods",
            self.agent_terminated.clone(),
        );
        registry.register(
            "sandwatch_orphaned_suspended_sessions",
            "Sessions in a suspended state whose pod (or resume resource) no longer exists; resuming them will fail until the record is fixed",
            self.orphaned.clone(),
        );
        registry.register(
            "sandwatch_executions_on_dead_agent",
            "Executions in an active state (label state) whose agent is dead: container terminated, pod gone or sandbox dead; the platform will retry or wait until a deadline",
            self.executions_dead.clone(),
        );
        registry.register(
            "sandwatch_retries_against_dead_agent",
            "Attempt increments (reclaims, stream breaks, download retries) seen on executions after their agent died: wasted work against a corpse",
            self.retries.clone(),
        );
        registry.register(
            "sandwatch_sessions_active_without_agent",
            "Sessions the records call active whose pod is gone or whose agent container has terminated",
            self.active_without_agent.clone(),
        );
        registry.register(
            "sandwatch_leaked_sandbox_pods",
            "Sandbox pods with no active, suspended or starting session for longer than the leak grace; they cost money until deleted",
            self.leaked.clone(),
        );
        registry.register(
            "sandwatch_findings_opened",
            "Findings opened, by kind",
            self.opened.clone(),
        );
        registry.register(
            "sandwatch_findings_resolved",
            "Findings resolved (their condition stopped holding), by kind",
            self.resolved.clone(),
        );
        registry.register(
            "sandwatch_rule_active",
            "1 when the rule runs for the profile, 0 when a source it requires is not configured (the rule's gauges then read 0 because sandwatch cannot judge, not because all is well): configure the records source the README names for the rule",
            self.rule_active.clone(),
        );
        registry.register(
            "sandwatch_detection_latency_seconds",
            "Time from the evidence (e.g. the agent container's finishedAt) to the finding opening, including grace periods",
            self.latency.clone(),
        );
    }

    /// Which rules run for which profile (a rule runs when each feed it requires has a
    /// source for the profile).
    pub fn set_rules_active(&self, rules: &[(std::sync::Arc<str>, FindingKind, bool)]) {
        for (profile, kind, on) in rules {
            self.rule_active
                .get_or_create(&ProfileKindLabels {
                    profile: profile.to_string(),
                    kind: kind.as_str().to_string(),
                })
                .set(i64::from(*on));
        }
    }

    pub fn sink(&self) -> FindingSink {
        FindingSink {
            metrics: self.clone(),
            series: Vec::new(),
            series_index: HashMap::new(),
            open: HashMap::new(),
        }
    }
}

impl FindingSink {
    pub fn set_rules_active(&self, rules: &[(std::sync::Arc<str>, FindingKind, bool)]) {
        self.metrics.set_rules_active(rules);
    }

    /// The index of a series' gauge, creating it on first use.
    fn series(&mut self, s: Series) -> u32 {
        if let Some(i) = self.series_index.get(&s) {
            return *i;
        }
        let m = &self.metrics;
        let gauge = match &s {
            Series::AgentTerminated(l) => m.agent_terminated.get_or_create_owned(l),
            Series::ExecutionOnDeadAgent(l) => m.executions_dead.get_or_create_owned(l),
            Series::Orphaned(l) => m.orphaned.get_or_create_owned(l),
            Series::ActiveWithoutAgent(l) => m.active_without_agent.get_or_create_owned(l),
            Series::Leaked(l) => m.leaked.get_or_create_owned(l),
        };
        let i = self.series.len() as u32;
        self.series.push(gauge);
        self.series_index.insert(s, i);
        i
    }

    pub fn transition(&mut self, t: &Transition) {
        let f = &t.finding.finding;
        let profile = f.profile.to_string();
        let namespace = f.namespace.as_deref().unwrap_or_default().to_string();
        let series = match f.kind {
            FindingKind::AgentTerminatedPodRunning => {
                Series::AgentTerminated(NamespaceProfileReasonLabels {
                    namespace,
                    profile: profile.clone(),
                    reason: f.reason.to_string(),
                })
            }
            FindingKind::ExecutionOnDeadAgent => Series::ExecutionOnDeadAgent(ProfileStateLabels {
                profile: profile.clone(),
                state: f.state.as_deref().unwrap_or_default().to_string(),
            }),
            FindingKind::OrphanedSuspendedSession => Series::Orphaned(ProfileLabels {
                profile: profile.clone(),
            }),
            FindingKind::SessionActiveWithoutAgent => Series::ActiveWithoutAgent(ProfileLabels {
                profile: profile.clone(),
            }),
            FindingKind::LeakedSandboxPod => Series::Leaked(NamespaceProfileLabels {
                namespace,
                profile: profile.clone(),
            }),
        };
        let kind = KindLabels {
            kind: f.kind.as_str().to_string(),
        };
        let retries = |n: u64| {
            if n > 0 {
                self.metrics
                    .retries
                    .get_or_create(&ProfileLabels {
                        profile: profile.clone(),
                    })
                    .inc_by(n);
            }
        };
        match t.event {
            Event::Opened => {
                retries(t.finding.retries_after_death);
                self.metrics.opened.get_or_create(&kind).inc();
                if let Some(latency) = t.detection_latency_secs() {
                    self.metrics.latency.get_or_create(&kind).observe(latency);
                }
                let i = self.series(series);
                self.series[i as usize].inc();
                self.open.insert(t.finding.id, i);
            }
            Event::Updated => {
                retries(t.new_retries);
                let i = self.series(series);
                if let Some(old) = self.open.insert(t.finding.id, i) {
                    self.series[old as usize].dec();
                }
                self.series[i as usize].inc();
            }
            Event::Resolved => {
                self.metrics.resolved.get_or_create(&kind).inc();
                if let Some(old) = self.open.remove(&t.finding.id) {
                    self.series[old as usize].dec();
                }
            }
        }
    }
}

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

/// sandwatch's own health: its sources, and the input they had to reject.
#[derive(Clone)]
pub struct HealthMetrics {
    synced: Family<SourceLabels, Gauge>,
    last_success: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    watch_events: Family<SourceLabels, Counter>,
    watch_restarts: Family<SourceLabels, Counter>,
    watch_errors: Family<SourceLabels, Counter>,
    rejected: Family<SourceReasonLabels, Counter>,
    polls: Family<PollLabels, Counter>,
    poll_rows: Family<PollLabels, Counter>,
    poll_duration: HistogramFamily<SourceLabels>,
    notices: Family<ProfileReasonLabels, Counter>,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        HealthMetrics {
            synced: Family::default(),
            last_success: Family::default(),
            watch_events: Family::default(),
            watch_restarts: Family::default(),
            watch_errors: Family::default(),
            rejected: Family::default(),
            polls: Family::default(),
            poll_rows: Family::default(),
            poll_duration: Family::new_with_constructor(poll_histogram),
            notices: Family::default(),
        }
    }
}

impl HealthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sandwatch_source_synced",
            "1 while the source has completed its initial list or load and is fresh; 0 means findings that rest on it hold and remediation stops. Check the logs for the source's errors",
            self.synced.clone(),
        );
        registry.register(
            "sandwatch_source_last_success_timestamp_seconds",
            "Unix time of the source's last successful list, watch event or poll",
            self.last_success.clone(),
        );
        registry.register(
            "sandwatch_watch_events",
            "Watch events received from the Kubernetes API server, by source",
            self.watch_events.clone(),
        );
        registry.register(
            "sandwatch_watch_restarts",
            "Watches started over with a full list after the API server stayed unreachable, by source",
            self.watch_restarts.clone(),
        );
        registry.register(
            "sandwatch_watch_errors",
            "Failed watch or list requests (retried with backoff), by source",
            self.watch_errors.clone(),
        );
        registry.register(
            "sandwatch_record_polls",
            "Polls of a records database by mode (full, incremental) and outcome; errors are retried with backoff and logged",
            self.polls.clone(),
        );
        registry.register(
            "sandwatch_record_poll_rows",
            "Rows read by successful polls of a records database, by mode",
            self.poll_rows.clone(),
        );
        registry.register(
            "sandwatch_record_poll_duration_seconds",
            "Time a successful poll of a records database took; growing values point at a slow database or a missing index on updated_at",
            self.poll_duration.clone(),
        );
        registry.register(
            "sandwatch_unjoined_references",
            "References that could not be joined and were not guessed (reason ambiguous_reference: an execution or a tombstone names an id that exists in several namespaces without saying which); the log names them: give those records their namespace",
            self.notices.clone(),
        );
        registry.register(
            "sandwatch_rejected_inputs",
            "Input that could not be used (bad JSON, unknown record kind or state, objects without metadata), by source and reason; it was logged and skipped",
            self.rejected.clone(),
        );
    }

    /// Creates a source's series at zero, so that dashboards and alerts see zeros from the
    /// start rather than absent series.
    pub fn register_source(&self, name: &str, polls: bool) {
        let l = SourceLabels {
            source: name.to_string(),
        };
        self.synced.get_or_create(&l).set(0);
        if polls {
            for mode in ["full", "incremental"] {
                for outcome in ["success", "error"] {
                    let _ = self.polls.get_or_create_owned(&PollLabels {
                        source: name.to_string(),
                        mode: mode.to_string(),
                        outcome: outcome.to_string(),
                    });
                }
            }
        } else {
            let _ = self.watch_events.get_or_create_owned(&l);
            let _ = self.watch_restarts.get_or_create_owned(&l);
            let _ = self.watch_errors.get_or_create_owned(&l);
        }
    }

    /// Something the World could not act on (an ambiguous reference), counted by profile.
    pub fn notice(&self, n: &crate::world::Notice) {
        self.notices
            .get_or_create(&ProfileReasonLabels {
                profile: n.profile.to_string(),
                reason: n.reason.to_string(),
            })
            .inc();
    }

    pub fn source_status(&self, name: &str, synced: bool) {
        let l = SourceLabels {
            source: name.to_string(),
        };
        self.synced.get_or_create(&l).set(i64::from(synced));
    }

    fn success(&self, source: &str) {
        self.last_success
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .set(crate::time::Ts::now().as_secs_f64());
    }
}

impl crate::sources::SourceCounters for HealthMetrics {
    fn watch_event(&self, source: &str) {
        self.success(source);
        self.watch_events
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    }

    fn watch_restart(&self, source: &str) {
        self.watch_restarts
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    }

    fn watch_error(&self, source: &str) {
        self.watch_errors
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    }

    fn rejected(&self, source: &str, reason: &str) {
        self.rejected
            .get_or_create(&SourceReasonLabels {
                source: source.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    fn poll(&self, source: &str, full: bool, seconds: f64, rows: u64, ok: bool) {
        let l = PollLabels {
            source: source.to_string(),
            mode: if full { "full" } else { "incremental" }.to_string(),
            outcome: if ok { "success" } else { "error" }.to_string(),
        };
        self.polls.get_or_create(&l).inc();
        if ok {
            self.success(source);
            self.poll_rows.get_or_create(&l).inc_by(rows);
            self.poll_duration
                .get_or_create(&SourceLabels {
                    source: source.to_string(),
                })
                .observe(seconds);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub source: String,
    pub mode: String,
    pub outcome: String,
}

fn poll_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// `sandwatch_build_info{version} 1`: a gauge, as exporters conventionally expose it (older
/// tools do not parse the OpenMetrics `info` type).
pub fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .set(1);
    registry.register(
        "sandwatch_build_info",
        "The running sandwatch version (always 1)",
        info,
    );
}

/// `sandwatch_shard_ordinal` and `sandwatch_total_shards`, so that a mismatch between replicas
/// or a missing shard can be alerted on.
pub fn register_shard(registry: &mut Registry, shard: crate::shard::Shard) {
    let ordinal: Gauge = Gauge::default();
    ordinal.set(i64::from(shard.index));
    let total: Gauge = Gauge::default();
    total.set(i64::from(shard.total));
    registry.register(
        "sandwatch_shard_ordinal",
        "Which shard of the pods and records this replica keeps (0 to sandwatch_total_shards - 1)",
        ordinal,
    );
    registry.register(
        "sandwatch_total_shards",
        "How many shards the pods and records are split into; every replica must agree",
        total,
    );
}
