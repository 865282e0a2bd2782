//! The finding series: gauges of open findings and counters of their transitions, kept up to
//! date from the engine's transitions.
//!
//! Labels are bounded (namespace, profile, kind, reason, state): per-entity detail (pod,
//! session, execution ids) lives in the findings API and the logs, never in series. Every
//! series of a rule that can run for a profile exists from the start, at zero (for each
//! namespace the profile lists, or with no namespace when it watches all), so that a dashboard
//! shows 0 rather than "No data" and an alert can tell zero from absent.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::finding::{Event, FindingKind, Transition};
use crate::model::profile::{Profile, Profiles};
use crate::model::source::Feed;

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
    opened: Family<ProfileKindLabels, Counter>,
    resolved: Family<ProfileKindLabels, Counter>,
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

/// Whether a rule can run for a profile whose configuration provides these feeds (each feed
/// the rule requires has a source).
fn can_run(feeds: &[Feed], kind: FindingKind) -> bool {
    crate::core::rules::ALL
        .iter()
        .find(|r| r.kind() == kind)
        .is_some_and(|r| r.needs().required.iter().all(|f| feeds.contains(f)))
}

/// The namespaces a profile's series start at: the ones it lists, or none (all).
fn namespaces(p: &Profile) -> Vec<String> {
    match p.pods.as_ref().map(|m| &m.namespaces) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![String::new()],
    }
}

impl FindingMetrics {
    /// The families, each series a profile can have created at zero; `feeds` lists, by
    /// profile id, the feeds its configuration provides.
    pub fn new(profiles: &Profiles, feeds: &[Vec<Feed>]) -> FindingMetrics {
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
        for (id, p) in profiles.iter() {
            let feeds = feeds.get(usize::from(id.0)).map_or(&[][..], Vec::as_slice);
            let name = p.name.to_string();
            let profile = ProfileLabels {
                profile: name.clone(),
            };
            for kind in FindingKind::ALL {
                let pk = ProfileKindLabels {
                    profile: name.clone(),
                    kind: kind.as_str().to_string(),
                };
                m.rule_active.get_or_create_owned(&pk);
                if !can_run(feeds, kind) {
                    continue;
                }
                m.opened.get_or_create_owned(&pk);
                m.resolved.get_or_create_owned(&pk);
                let _ = m.latency.get_or_create_owned(&KindLabels {
                    kind: kind.as_str().to_string(),
                });
                match kind {
                    FindingKind::AgentTerminatedPodRunning => {
                        for namespace in namespaces(p) {
                            m.agent_terminated
                                .get_or_create_owned(&NamespaceProfileReasonLabels {
                                    namespace,
                                    profile: name.clone(),
                                    reason: String::new(),
                                });
                        }
                    }
                    FindingKind::ExecutionOnDeadAgent => {
                        m.retries.get_or_create_owned(&profile);
                        for state in &p.executions.active {
                            m.executions_dead.get_or_create_owned(&ProfileStateLabels {
                                profile: name.clone(),
                                state: state.clone(),
                            });
                        }
                    }
                    FindingKind::OrphanedSuspendedSession => {
                        m.orphaned.get_or_create_owned(&profile);
                    }
                    FindingKind::SessionActiveWithoutAgent => {
                        m.active_without_agent.get_or_create_owned(&profile);
                    }
                    FindingKind::LeakedSandboxPod => {
                        for namespace in namespaces(p) {
                            m.leaked.get_or_create_owned(&NamespaceProfileLabels {
                                namespace,
                                profile: name.clone(),
                            });
                        }
                    }
                }
            }
        }
        m
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sandwatch_agent_container_terminated_while_pod_running",
            "Sandbox pods whose agent container has terminated (label reason) while a sidecar keeps the pod Running: the platform still believes these agents are alive. List them with /api/v1/findings?kind=agent_terminated_pod_running and restart or delete the pods",
            self.agent_terminated.clone(),
        );
        registry.register(
            "sandwatch_orphaned_suspended_sessions",
            "Sessions in a suspended state whose pod (or resume resource) no longer exists: resuming them will fail. List them with /api/v1/findings?kind=orphaned_suspended_session and mark them gone or respawn them",
            self.orphaned.clone(),
        );
        registry.register(
            "sandwatch_executions_on_dead_agent",
            "Executions in an active state (label state) whose agent is dead (container terminated, pod gone or sandbox dead): their users wait for a deadline. List them with /api/v1/findings?kind=execution_on_dead_agent and finalize them",
            self.executions_dead.clone(),
        );
        registry.register(
            "sandwatch_retries_against_dead_agent",
            "Attempt increments (reclaims, stream breaks, download retries) seen on executions after their agent died: work wasted against a corpse. A steady rate means a retry loop; finalize the executions",
            self.retries.clone(),
        );
        registry.register(
            "sandwatch_sessions_active_without_agent",
            "Sessions the records call active whose pod is gone or whose agent container has terminated. List them with /api/v1/findings?kind=session_active_without_agent and end or restart them",
            self.active_without_agent.clone(),
        );
        registry.register(
            "sandwatch_leaked_sandbox_pods",
            "Sandbox pods with no active, suspended or starting session for longer than the leak grace: they cost money until deleted. List them with /api/v1/findings?kind=leaked_sandbox_pod",
            self.leaked.clone(),
        );
        registry.register(
            "sandwatch_findings_opened",
            "Findings opened, by profile and kind; a rise after a deploy of the platform points at a regression there. The findings API says which",
            self.opened.clone(),
        );
        registry.register(
            "sandwatch_findings_resolved",
            "Findings resolved (their condition stopped holding), by profile and kind; opened minus resolved is what is still open",
            self.resolved.clone(),
        );
        registry.register(
            "sandwatch_rule_active",
            "1 when the rule runs for the profile, 0 when a source it requires is not configured (its gauges then read 0 because sandwatch cannot judge, not because all is well): configure the records source the README names for the rule",
            self.rule_active.clone(),
        );
        registry.register(
            "sandwatch_detection_latency_seconds",
            "Time from the evidence (the agent container's finishedAt, a record's updated_at) to the finding opening, grace periods included, for evidence that appeared while the sources were synced; a growing tail points at a slow source",
            self.latency.clone(),
        );
    }

    /// Which rules run for which profile (a rule runs when each feed it requires has a
    /// source for the profile).
    pub fn set_rules_active(&self, rules: &[(Arc<str>, FindingKind, bool)]) {
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

impl crate::sinks::TransitionSink for FindingSink {
    fn transition(&mut self, t: &Transition) {
        self.record(t)
    }
}

impl FindingSink {
    pub fn set_rules_active(&self, rules: &[(Arc<str>, FindingKind, bool)]) {
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

    fn record(&mut self, t: &Transition) {
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
        let kind = ProfileKindLabels {
            profile: profile.clone(),
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
                    self.metrics
                        .latency
                        .get_or_create(&KindLabels {
                            kind: f.kind.as_str().to_string(),
                        })
                        .observe(latency);
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
