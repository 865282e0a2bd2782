//! Remediation: calling the platform to repair what sandwatch found. A sink at the end of the
//! live flow, safe to leave on in production.
//!
//! ```text
//!  engine ──snapshot (open findings, source health)──▶ remediation ──▶ webhooks / platform API / Kubernetes
//!  lease  ──leadership─────────────────────────────────▲
//! ```
//!
//! It is level-triggered: every round it looks at the findings open *now* and acts on those
//! that still need it. Nothing is queued: after a restart, or on another replica, the findings
//! are derived again from the sources and the same calls are made with the same idempotency
//! keys. Its safety rules:
//! - dry-run until the config says `mode: live` (it logs and counts what it would do), and each
//!   action off unless configured;
//! - only on findings still open after the action's grace period, only while every source the
//!   finding rests on is synced and fresh, and only on the holder of the Lease; each of these is
//!   checked again just before each call;
//! - a token bucket per action and a global cap per minute, so a backlog of 2,206 orphaned
//!   sessions drains at the configured rate, not as a storm;
//! - 2xx is done; 4xx (but 408 and 429) is a refusal, logged and not retried; 408, 429, 5xx
//!   and transport errors are retried with exponential backoff and jitter up to a cap, honouring
//!   Retry-After; a circuit breaker stops calling a receiver that keeps failing;
//! - a finding still open long after a successful call is called again on a slow backoff and
//!   counted as `ineffective`.

pub mod action;
pub mod config;
pub mod deliver;
pub mod lease;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::core::world::{Feed, SourceStatus, Trust};
use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::profile::ProfileId;
use crate::model::profile::Profiles;
use crate::model::view::Snapshot;
use crate::util::time::Ts;
use action::{Action, ActionName, idempotency_key};
pub use config::Remediation;
use deliver::{Deliverer, Outcome};
pub use lease::Leadership;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
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
    duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    circuit_open: Family<ActionLabels, Gauge>,
    backlog: Family<ActionLabels, Gauge>,
    leader: Gauge,
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
            let action = ActionLabels {
                action: name.as_str().to_string(),
            };
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

    fn count(&self, action: ActionName, outcome: &str) {
        self.calls
            .get_or_create(&OutcomeLabels {
                action: action.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

#[derive(Default)]
struct KeyState {
    failures: u32,
    next_at: Option<Instant>,
    delivered_at: Option<Instant>,
    resends: u32,
    /// Refused by the receiver, or dry-run logged: nothing more to do for this incident.
    done: bool,
}

struct Bucket {
    tokens: f64,
    per_sec: f64,
    capacity: f64,
    last: Instant,
}

impl Bucket {
    /// At most `per_minute` a minute, with a burst of one second's worth (at least one).
    fn new(per_minute: u32) -> Bucket {
        let per_sec = f64::from(per_minute) / 60.0;
        let capacity = per_sec.max(1.0);
        Bucket {
            tokens: capacity,
            per_sec,
            capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
    }

    fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// When the bucket next holds a whole token.
    fn next_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 || self.per_sec <= 0.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }
}

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
}

/// Whether every source a finding rests on is synced and fresh, and, for a finding that rests
/// on something missing, whether that absence is still evidence where the finding is
/// (the same verdict the rules use, [`crate::model::source::absence`]).
fn trusted(
    sources: &[SourceStatus],
    profile: ProfileId,
    f: &crate::model::finding::Finding,
) -> bool {
    let Some(rule) = crate::core::rules::ALL.iter().find(|r| r.kind() == f.kind) else {
        return false;
    };
    let needs = rule.needs();
    let ok =
        |feed: &Feed, required: bool| match crate::model::source::trust(sources, profile, *feed) {
            Trust::Trusted => true,
            Trust::Unconfigured => !required,
            Trust::Untrusted => false,
        };
    if !(needs.required.iter().all(|f| ok(f, true)) && needs.optional.iter().all(|f| ok(f, false)))
    {
        return false;
    }
    let missing = match &*f.reason {
        "PodGone" => Some(Feed::Pods),
        "NoSession" | "SessionTerminal" => Some(Feed::Sessions),
        "ResourceGone" => Some(Feed::ResumeTargets),
        _ => None,
    };
    missing.is_none_or(|feed| {
        crate::model::source::absence(
            sources,
            crate::util::shard::Shard::ALL,
            profile,
            feed,
            f.namespace.as_deref(),
            crate::model::source::Holder::Everywhere,
        )
        .is_ok()
    })
}

/// The span of an open finding (by id), under which a remediation attempt is traced; the
/// app wires it to the finding spans of the traces sink.
pub type ParentSpan = Arc<dyn Fn(u64) -> Option<tracing::Span> + Send + Sync>;

/// The remediation task.
pub struct Controller {
    settings: Remediation,
    profiles: Arc<Profiles>,
    list: Vec<Action>,
    by_kind: HashMap<(Arc<str>, FindingKind), usize>,
    deliverer: Deliverer,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    leadership: watch::Receiver<Leadership>,
    metrics: RemediationMetrics,
    state: HashMap<String, KeyState>,
    buckets: Vec<Bucket>,
    circuits: Vec<Circuit>,
    global: Bucket,
    spans: ParentSpan,
    /// Idempotency keys of the open findings, by finding id (computed once each).
    keys: HashMap<u64, String>,
    /// Set on shutdown: no call starts after it.
    stopping: Option<watch::Receiver<bool>>,
}

impl Controller {
    pub fn new(
        settings: Remediation,
        profiles: Arc<Profiles>,
        deliverer: Deliverer,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        leadership: watch::Receiver<Leadership>,
        metrics: RemediationMetrics,
        spans: ParentSpan,
    ) -> Controller {
        let list = settings.actions.clone();
        let buckets = list.iter().map(|a| Bucket::new(a.per_minute)).collect();
        let circuits = list.iter().map(|_| Circuit::default()).collect();
        let by_kind = list
            .iter()
            .enumerate()
            .map(|(i, a)| ((profiles.get(a.profile).name.clone(), a.name.repairs()), i))
            .collect();
        Controller {
            global: Bucket::new(settings.max_per_minute),
            settings,
            profiles,
            list,
            by_kind,
            deliverer,
            snapshot,
            leadership,
            metrics,
            state: HashMap::new(),
            buckets,
            circuits,
            spans,
            keys: HashMap::new(),
            stopping: None,
        }
    }

    /// Runs rounds until `stop`; a round under way starts no further call once it is set,
    /// and the calls already made have ended when this returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if self.list.is_empty() {
            return;
        }
        self.stopping = Some(stop.clone());
        info!(
            mode = if self.settings.live {
                "live"
            } else {
                "dry_run"
            },
            actions = self.list.len(),
            "remediation on"
        );
        let mut next = Instant::now();
        loop {
            // Every 100 ms, or as soon as a rate limit lets the next waiting call go: a
            // backlog drains at the configured rate, not at the pace of the rounds.
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stopped(&mut stop) => return,
            }
            let round_started = Instant::now();
            let token_due = self.round().await;
            let tick = round_started + Duration::from_millis(100);
            next = token_due.map_or(tick, |t| t.min(tick));
        }
    }

    /// Whether this replica may act now, with room for one call before its lease could lapse.
    fn acting(&self) -> bool {
        if self.stopping.as_ref().is_some_and(|s| *s.borrow()) {
            return false;
        }
        let lead = *self.leadership.borrow();
        lead.acting(Instant::now(), self.settings.timeout)
    }

    /// One round: acts on what is due; returns when the next call held back by a rate limit
    /// may go, if any is.
    async fn round(&mut self) -> Option<Instant> {
        let acting = self.acting();
        let leader = self.leadership.borrow().leader;
        self.metrics.leader.set(i64::from(leader));
        if !leader {
            // A replica that does not remediate calls nobody: its breakers start afresh if it
            // leads again.
            for c in &mut self.circuits {
                *c = Circuit::default();
            }
        }
        self.report_circuits(Instant::now());
        let snap = self.snapshot.borrow().clone();
        // Findings that resolved need nothing more: forget them.
        let mut open_keys = HashSet::new();
        let mut open_ids = HashSet::new();
        let mut due: Vec<(String, OpenFinding, usize)> = Vec::new();
        let mut findings: Vec<&OpenFinding> = snap.findings.iter().collect();
        findings.sort_by_key(|f| (f.opened_at, f.id));
        let now = Instant::now();
        let wall = Ts::now();
        for f in findings {
            let Some(&index) = self
                .by_kind
                .get(&(f.finding.profile.clone(), f.finding.kind))
            else {
                continue;
            };
            let action = &self.list[index];
            let key = self
                .keys
                .entry(f.id)
                .or_insert_with(|| idempotency_key(action.name, f))
                .clone();
            open_ids.insert(f.id);
            open_keys.insert(key.clone());
            if wall < f.opened_at.saturating_add(action.grace)
                || !trusted(&snap.sources, action.profile, &f.finding)
            {
                continue;
            }
            let st = self.state.entry(key.clone()).or_default();
            if st.done || st.next_at.is_some_and(|t| now < t) {
                continue;
            }
            due.push((key, f.clone(), index));
        }
        self.state.retain(|k, _| open_keys.contains(k));
        self.keys.retain(|id, _| open_ids.contains(id));
        let mut backlog: HashMap<ActionName, i64> = HashMap::new();
        for a in &self.list {
            backlog.insert(a.name, 0);
        }
        if !acting {
            // Only the replica that remediates has a backlog: another one counts nothing, so
            // that adding replicas does not add backlog.
            if self.leadership.borrow().leader {
                for (_, _, index) in &due {
                    *backlog.entry(self.action(*index).name).or_default() += 1;
                }
            }
            self.set_backlog(&backlog);
            return None;
        }
        let mut token_due: Option<Instant> = None;
        for (key, f, index) in due {
            let name = self.action(index).name;
            let now = Instant::now();
            if self.circuit_open(index, now) {
                *backlog.entry(name).or_default() += 1;
                continue;
            }
            if !self.global.ready(now) || !self.buckets[index].ready(now) {
                *backlog.entry(name).or_default() += 1;
                let at = self
                    .global
                    .next_at(now)
                    .max(self.buckets[index].next_at(now));
                token_due = Some(token_due.map_or(at, |t| t.min(at)));
                continue;
            }
            // Just before the call: still open, still trusted, still the leader.
            if !self.still_needed(&f, index) || !self.acting() {
                continue;
            }
            self.global.take();
            self.buckets[index].take();
            self.act(key, f, index).await;
        }
        self.set_backlog(&backlog);
        self.report_circuits(Instant::now());
        token_due
    }

    /// `sandwatch_remediation_circuit_open`, as the breakers are now: 1 while a breaker of
    /// the action is open, 0 once its open time has passed (the next call is its trial).
    fn report_circuits(&self, now: Instant) {
        let mut open: HashMap<ActionName, bool> = HashMap::new();
        for (a, c) in self.list.iter().zip(&self.circuits) {
            let is_open = c.open_until.is_some_and(|u| now < u);
            *open.entry(a.name).or_default() |= is_open;
        }
        for (name, is_open) in open {
            self.metrics
                .circuit_open
                .get_or_create(&ActionLabels {
                    action: name.as_str().to_string(),
                })
                .set(i64::from(is_open));
        }
    }

    fn set_backlog(&self, backlog: &HashMap<ActionName, i64>) {
        for (name, n) in backlog {
            self.metrics
                .backlog
                .get_or_create(&ActionLabels {
                    action: name.as_str().to_string(),
                })
                .set(*n);
        }
    }

    fn action(&self, index: usize) -> &Action {
        &self.list[index]
    }

    fn still_needed(&self, f: &OpenFinding, index: usize) -> bool {
        let snap = self.snapshot.borrow();
        snap.findings.iter().any(|g| g.id == f.id)
            && trusted(&snap.sources, self.list[index].profile, &f.finding)
    }

    fn circuit_open(&mut self, index: usize, now: Instant) -> bool {
        let c = &mut self.circuits[index];
        match c.open_until {
            Some(until) if now < until => true,
            // Half-open: one trial call is let through; its outcome closes or reopens it.
            _ => false,
        }
    }

    async fn act(&mut self, key: String, f: OpenFinding, index: usize) {
        let action = self.action(index).clone();
        let name = action.name;
        let d = &f.finding;
        // Values from outside, escaped and bounded for the logs.
        let text = |s: Option<&str>| s.map(crate::util::text::clip).map(|c| c.into_owned());
        let (session, execution, pod) = (
            text(d.session.as_deref()),
            text(d.execution.as_deref()),
            text(d.pod.as_deref()),
        );
        let (session, execution, pod) = (session.as_deref(), execution.as_deref(), pod.as_deref());
        let resend = self
            .state
            .get(&key)
            .is_some_and(|s| s.delivered_at.is_some());
        if resend {
            self.metrics.count(name, "ineffective");
            warn!(
                action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod,
                "the finding is still open {:?} after a successful remediation: calling again (remediation_ineffective)",
                self.settings.resend_after
            );
        }
        // A child of the finding's span, when traces are on.
        let parent = (self.spans)(f.id);
        let span = info_span!(
            parent: parent.as_ref().and_then(|s| s.id()),
            "remediation",
            action = name.as_str(), key = %key, finding.kind = %d.kind, finding.id = f.id,
            namespace = d.namespace.as_deref(), pod = d.pod.as_deref(), session = d.session.as_deref(),
            execution = d.execution.as_deref(), sandbox = d.sandbox.as_deref(),
            outcome = tracing::field::Empty,
        );
        let profile = self.profiles.get(action.profile);
        let started = Instant::now();
        let outcome = self
            .deliverer
            .deliver(&action, profile, &f, &key, self.settings.live)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &outcome {
                Outcome::DryRun(_) => "dry_run",
                Outcome::Success(_) => "success",
                Outcome::Refused(..) => "refused",
                Outcome::Retry(..) => "error",
                Outcome::Invalid(_) => "invalid",
            },
        );
        let took = started.elapsed();
        let now = Instant::now();
        let settings = self.settings.clone();
        let st = self.state.entry(key.clone()).or_default();
        let c = &mut self.circuits[index];
        let label = ActionLabels {
            action: name.as_str().to_string(),
        };
        match outcome {
            Outcome::DryRun(what) => {
                self.metrics.count(name, "dry_run");
                info!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, "dry run: would {what}");
                st.done = true;
            }
            Outcome::Success(status) => {
                self.metrics.count(name, "success");
                self.metrics
                    .duration
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
                info!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, status, "remediated");
                st.failures = 0;
                st.delivered_at = Some(now);
                let factor = 2u32.saturating_pow(st.resends.min(6));
                st.resends += 1;
                st.next_at = Some(later(now, settings.resend_after.saturating_mul(factor)));
                c.failures = 0;
                c.open_until = None;
            }
            Outcome::Refused(status, body) => {
                self.metrics.count(name, "refused");
                self.metrics
                    .duration
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
                warn!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, status, response = %crate::util::text::clip(&body), "the receiver refused the remediation; not retrying");
                st.done = true;
                c.failures = 0;
                c.open_until = None;
            }
            Outcome::Retry(error, retry_after) => {
                self.metrics.count(name, "error");
                st.failures += 1;
                let backoff = jittered(
                    settings
                        .retry_initial
                        .saturating_mul(2u32.saturating_pow(st.failures.saturating_sub(1).min(20)))
                        .min(settings.retry_max),
                );
                // A receiver may ask for more time than the backoff would give, up to an hour.
                let wait = retry_after.map_or(backoff, |r| r.min(MAX_RETRY_AFTER).max(backoff));
                st.next_at = Some(later(now, wait));
                c.failures += 1;
                warn!(action = name.as_str(), key = %key, error = %crate::util::text::clip(&error), attempt = st.failures, "remediation failed; retrying in {wait:?}");
                if c.failures >= settings.circuit_failures && c.open_until.is_none_or(|u| u <= now)
                {
                    c.open_until = Some(now + settings.circuit_open_for);
                    self.metrics.count(name, "circuit_open");
                    self.metrics.circuit_open.get_or_create(&label).set(1);
                    warn!(
                        action = name.as_str(),
                        failures = c.failures,
                        "the receiver keeps failing: circuit open, no calls for {:?}",
                        settings.circuit_open_for
                    );
                }
            }
            Outcome::Invalid(error) => {
                self.metrics.count(name, "invalid");
                warn!(action = name.as_str(), key = %key, error = %crate::util::text::clip(&error), "cannot build the remediation call; retrying later");
                st.next_at = Some(later(now, settings.retry_max));
            }
        }
    }
}

/// Resolves once `stop` is set (and holds no borrow of it afterwards).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The longest wait a receiver's `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `now + d`, or a year from now when that would overflow the clock.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// ±20 % around `d`, from the clock's sub-second noise, so that retries spread out.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0)
}
