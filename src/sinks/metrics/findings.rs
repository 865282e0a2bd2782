//! The finding series: gauges of open findings and counters of their transitions, kept up to
//! date from the engine's transitions.
//!
//! Each rule declares the gauge its open findings count in ([`rules::Series`]: name, help,
//! labels); this sink builds the families from those declarations and knows no rule by name.
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

use crate::core::rules::{self, Label, Rule, SubjectKind};
use crate::model::finding::{Event, Finding, FindingKind, Transition};
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

/// The labels of one series of a rule's gauge, in the order the rule declares them.
type Labels = Vec<(&'static str, String)>;

/// Which gauge series an open finding counts in: the rule's index in [`rules::ALL`] and the
/// series' labels.
type Series = (usize, Labels);

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Detection latency buckets: sub-second (event-driven) up to the slowest grace periods.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
    ])
}

#[derive(Clone)]
pub struct FindingMetrics {
    /// Each rule's gauge, in the order of [`rules::ALL`].
    gauges: Vec<Family<Labels, Gauge>>,
    retries: Family<ProfileLabels, Counter>,
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
fn can_run(feeds: &[Feed], rule: &dyn Rule) -> bool {
    rule.needs().required.iter().all(|f| feeds.contains(f))
}

/// The namespaces a profile's series start at: the ones it lists, or none (all).
fn namespaces(p: &Profile) -> Vec<String> {
    match p.pods.as_ref().map(|m| &m.namespaces) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![String::new()],
    }
}

/// The name of a label in the exposition.
fn label_name(label: Label) -> &'static str {
    match label {
        Label::Namespace => "namespace",
        Label::Profile => "profile",
        Label::Reason => "reason",
        Label::State => "state",
    }
}

/// The values a label's series start at, for a rule judging `subject` in profile `p`.
fn start_values(label: Label, subject: SubjectKind, p: &Profile) -> Vec<String> {
    match label {
        Label::Namespace => namespaces(p),
        Label::Profile => vec![p.name.to_string()],
        Label::Reason => vec![String::new()],
        Label::State => match subject {
            SubjectKind::Execution => p.executions.active.clone(),
            SubjectKind::Session => p.sessions.active.clone(),
            SubjectKind::Pod => vec![String::new()],
        },
    }
}

/// Every series a rule's gauge starts with for a profile: each combination of the labels'
/// start values.
fn start_series(rule: &dyn Rule, p: &Profile) -> Vec<Labels> {
    let mut all: Vec<Labels> = vec![Vec::new()];
    for &label in rule.series().labels {
        let values = start_values(label, rule.subject(), p);
        all = all
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut l = prefix.clone();
                    l.push((label_name(label), v.clone()));
                    l
                })
            })
            .collect();
    }
    all
}

/// The series of the rule's gauge that a finding counts in.
fn finding_series(rule: &dyn Rule, f: &Finding) -> Labels {
    let value = |label: Label| match label {
        Label::Namespace => f.namespace.as_deref().unwrap_or_default().to_string(),
        Label::Profile => f.profile.to_string(),
        Label::Reason => f.reason.to_string(),
        Label::State => f.state.as_deref().unwrap_or_default().to_string(),
    };
    rule.series()
        .labels
        .iter()
        .map(|&l| (label_name(l), value(l)))
        .collect()
}

/// A kind's rule and its index in [`rules::ALL`].
fn rule_of(kind: FindingKind) -> Option<(usize, &'static dyn Rule)> {
    rules::ALL
        .iter()
        .enumerate()
        .find(|(_, r)| r.kind() == kind)
        .map(|(i, r)| (i, *r))
}

impl FindingMetrics {
    /// The families, each series a profile can have created at zero; `feeds` lists, by
    /// profile id, the feeds its configuration provides.
    pub fn new(profiles: &Profiles, feeds: &[Vec<Feed>]) -> FindingMetrics {
        let m = FindingMetrics {
            gauges: rules::ALL.iter().map(|_| Family::default()).collect(),
            retries: Family::default(),
            opened: Family::default(),
            resolved: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rule_active: Family::default(),
        };
        for (id, p) in profiles.iter() {
            let feeds = feeds.get(usize::from(id.0)).map_or(&[][..], Vec::as_slice);
            for (i, rule) in rules::ALL.iter().enumerate() {
                let pk = ProfileKindLabels {
                    profile: p.name.to_string(),
                    kind: rule.kind().as_str().to_string(),
                };
                m.rule_active.get_or_create_owned(&pk);
                if !can_run(feeds, *rule) {
                    continue;
                }
                m.opened.get_or_create_owned(&pk);
                m.resolved.get_or_create_owned(&pk);
                let _ = m.latency.get_or_create_owned(&KindLabels {
                    kind: rule.kind().as_str().to_string(),
                });
                if rule.series().counts_retries {
                    m.retries.get_or_create_owned(&ProfileLabels {
                        profile: p.name.to_string(),
                    });
                }
                for labels in start_series(*rule, p) {
                    m.gauges[i].get_or_create_owned(&labels);
                }
            }
        }
        m
    }

    pub fn register(&self, registry: &mut Registry) {
        for (rule, gauge) in rules::ALL.iter().zip(&self.gauges) {
            let series = rule.series();
            registry.register(series.name, series.help, gauge.clone());
        }
        registry.register(
            "sandwatch_retries_against_dead_agent",
            "Attempt increments (reclaims, stream breaks, download retries) seen on executions after their agent died: work wasted against a corpse. A steady rate means a retry loop; finalize the executions",
            self.retries.clone(),
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
        let gauge = self.metrics.gauges[s.0].get_or_create_owned(&s.1);
        let i = self.series.len() as u32;
        self.series.push(gauge);
        self.series_index.insert(s, i);
        i
    }

    fn record(&mut self, t: &Transition) {
        let f = &t.finding.finding;
        let Some((index, rule)) = rule_of(f.kind) else {
            return;
        };
        let series = (index, finding_series(rule, f));
        let profile = f.profile.to_string();
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
