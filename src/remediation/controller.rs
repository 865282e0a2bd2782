//! The remediation controller: every round, the open findings of the latest snapshot that are
//! due (past their action's grace, on trusted sources, not waiting on a retry), called in
//! order of opening under the rate limits and the circuit breakers, one call at a time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::action::{Action, ActionName, idempotency_key};
use super::config::Remediation;
use super::deliver::{Deliverer, Outcome};
use super::lease::Leadership;
use super::limits::{Bucket, Circuit, backoff, later};
use super::metrics::{ActionLabels, RemediationMetrics};
use crate::core::trust;
use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::profile::Profiles;
use crate::model::view::{ActionState, RemediationView, Snapshot};
use crate::util::text::clip;
use crate::util::time::Ts;

/// What the controller remembers of one incident (one idempotency key).
#[derive(Default)]
struct KeyState {
    failures: u32,
    next_at: Option<Instant>,
    delivered_at: Option<Instant>,
    resends: u32,
    /// Refused by the receiver, or dry-run logged: nothing more to do for this incident.
    done: bool,
    /// Calls made, and the last one's time and outcome (for the status page).
    calls: u32,
    last: Option<(Ts, &'static str)>,
}

/// Where an open finding with an action stands in this round, for the status page.
struct Standing {
    index: usize,
    waiting: Option<&'static str>,
    next_at: Option<Ts>,
}

/// A finding due for a call: its key, the finding, and the index of its action.
type Due = (String, OpenFinding, usize);

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
    /// This round's open findings with an action, by id, and what the status page shows.
    standing: HashMap<u64, Standing>,
    view: watch::Sender<Arc<RemediationView>>,
    published: Option<Instant>,
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
            standing: HashMap::new(),
            view: watch::Sender::new(Arc::default()),
            published: None,
        }
    }

    /// Publishes what the controller is doing, per open finding with an action, to `view`
    /// (about every second), for the status page.
    pub fn publishing_to(mut self, view: watch::Sender<Arc<RemediationView>>) -> Controller {
        self.view = view;
        self
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
                _ = stop.wait_for(|s| *s) => return,
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
        let due = self.due();
        let mut backlog: HashMap<ActionName, i64> = self.list.iter().map(|a| (a.name, 0)).collect();
        if !acting {
            // Only the replica that remediates has a backlog: another one counts nothing, so
            // that adding replicas does not add backlog.
            if leader {
                for (_, _, index) in &due {
                    *backlog.entry(self.list[*index].name).or_default() += 1;
                }
            }
            self.set_backlog(&backlog);
            for s in self.standing.values_mut() {
                s.waiting = s.waiting.or(Some("not leader"));
            }
            self.publish(leader);
            return None;
        }
        let token_due = self.send(due, &mut backlog).await;
        self.set_backlog(&backlog);
        self.report_circuits(Instant::now());
        self.publish(leader);
        token_due
    }

    /// Publishes where each open finding with an action stands, at most every second.
    fn publish(&mut self, leader: bool) {
        let now = Instant::now();
        if self
            .published
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.published = Some(now);
        let wall = Ts::now();
        let mut findings = HashMap::with_capacity(self.standing.len());
        for (id, s) in &self.standing {
            let key = self.keys.get(id);
            let st = key.and_then(|k| self.state.get(k));
            let next_at = s.next_at.or_else(|| {
                let at = st?.next_at?;
                Some(wall.saturating_add(at.saturating_duration_since(now)))
            });
            findings.insert(
                *id,
                ActionState {
                    action: self.list[s.index].name.as_str(),
                    dry_run: !self.settings.live,
                    calls: st.map_or(0, |st| st.calls),
                    last: st.and_then(|st| st.last),
                    next_at,
                    waiting: s.waiting,
                },
            );
        }
        self.view
            .send_replace(Arc::new(RemediationView { leader, findings }));
    }

    /// The open findings due for a call, oldest first; forgets the incidents that resolved.
    fn due(&mut self) -> Vec<Due> {
        let snap = self.snapshot.borrow().clone();
        let mut open_keys = HashSet::new();
        let mut open_ids = HashSet::new();
        let mut due = Vec::new();
        let mut findings: Vec<&OpenFinding> = snap.findings.iter().collect();
        findings.sort_by_key(|f| (f.opened_at, f.id));
        let now = Instant::now();
        let wall = Ts::now();
        self.standing.clear();
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
            let graced = f.opened_at.saturating_add(action.grace);
            let mut stand = |waiting, next_at| {
                self.standing.insert(
                    f.id,
                    Standing {
                        index,
                        waiting,
                        next_at,
                    },
                );
            };
            if wall < graced {
                stand(Some("grace"), Some(graced));
                continue;
            }
            if !trust::may_act(&snap.sources, action.profile, &f.finding) {
                stand(Some("untrusted source"), None);
                continue;
            }
            let st = self.state.entry(key.clone()).or_default();
            let resend = st.delivered_at.is_some();
            if st.done || st.next_at.is_some_and(|t| now < t) {
                let why = match (st.done, resend) {
                    (true, _) => "done",
                    (false, true) => "resend",
                    (false, false) => "retry",
                };
                stand(Some(why), None);
                continue;
            }
            stand(None, None);
            due.push((key, f.clone(), index));
        }
        self.state.retain(|k, _| open_keys.contains(k));
        self.keys.retain(|id, _| open_ids.contains(id));
        due
    }

    /// Calls what is due as the limits allow, counting the rest as backlog; returns when the
    /// next call held back by a rate limit may go.
    async fn send(
        &mut self,
        due: Vec<Due>,
        backlog: &mut HashMap<ActionName, i64>,
    ) -> Option<Instant> {
        let mut token_due: Option<Instant> = None;
        for (key, f, index) in due {
            let name = self.list[index].name;
            let now = Instant::now();
            if self.circuits[index].is_open(now) {
                *backlog.entry(name).or_default() += 1;
                self.waits(f.id, "circuit open");
                continue;
            }
            if !self.global.ready(now) || !self.buckets[index].ready(now) {
                *backlog.entry(name).or_default() += 1;
                self.waits(f.id, "rate limit");
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
        token_due
    }

    fn waits(&mut self, id: u64, why: &'static str) {
        if let Some(s) = self.standing.get_mut(&id) {
            s.waiting = Some(why);
        }
    }

    /// `sandwatch_remediation_circuit_open`, as the breakers are now: 1 while a breaker of
    /// the action is open, 0 once its open time has passed (the next call is its trial).
    fn report_circuits(&self, now: Instant) {
        let mut open: HashMap<ActionName, bool> = HashMap::new();
        for (a, c) in self.list.iter().zip(&self.circuits) {
            *open.entry(a.name).or_default() |= c.is_open(now);
        }
        for (name, is_open) in open {
            self.metrics
                .circuit_open
                .get_or_create(&ActionLabels::of(name))
                .set(i64::from(is_open));
        }
    }

    fn set_backlog(&self, backlog: &HashMap<ActionName, i64>) {
        for (name, n) in backlog {
            self.metrics
                .backlog
                .get_or_create(&ActionLabels::of(*name))
                .set(*n);
        }
    }

    fn still_needed(&self, f: &OpenFinding, index: usize) -> bool {
        let snap = self.snapshot.borrow();
        snap.findings.iter().any(|g| g.id == f.id)
            && trust::may_act(&snap.sources, self.list[index].profile, &f.finding)
    }

    /// One call for one finding, traced under the finding's span, and what follows from its
    /// outcome.
    async fn act(&mut self, key: String, f: OpenFinding, index: usize) {
        let action = self.list[index].clone();
        let resend = self
            .state
            .get(&key)
            .is_some_and(|s| s.delivered_at.is_some());
        if resend {
            self.metrics.count(action.name, "ineffective");
            let d = &f.finding;
            warn!(
                action = action.name.as_str(), key = %key, kind = %d.kind,
                session = clipped(&d.session), execution = clipped(&d.execution), pod = clipped(&d.pod),
                "the finding is still open {:?} after a successful remediation: calling again (remediation_ineffective)",
                self.settings.resend_after
            );
        }
        let span = self.span(&action, &key, &f);
        let profile = self.profiles.get(action.profile);
        let started = Instant::now();
        let outcome = self
            .deliverer
            .deliver(&action, profile, &f, &key, self.settings.live)
            .instrument(span.clone())
            .await;
        span.record("outcome", outcome_label(&outcome));
        self.settle(&action, &key, &f, index, outcome, started.elapsed());
    }

    /// The `remediation` span of one call: a child of the finding's span, when traces are on.
    fn span(&self, action: &Action, key: &str, f: &OpenFinding) -> tracing::Span {
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
    fn settle(
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
        let now = Instant::now();
        let settings = &self.settings;
        let metrics = &self.metrics;
        let st = self.state.entry(key.to_string()).or_default();
        (st.calls, st.last) = (st.calls + 1, Some((Ts::now(), outcome_label(&outcome))));
        let c = &mut self.circuits[index];
        let label = ActionLabels::of(name);
        match outcome {
            Outcome::DryRun(what) => {
                metrics.count(name, "dry_run");
                info!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, "dry run: would {what}");
                st.done = true;
            }
            Outcome::Success(status) => {
                metrics.count(name, "success");
                metrics
                    .duration
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
                info!(action = name.as_str(), key = %key, kind = %d.kind, session, execution, pod, status, "remediated");
                st.failures = 0;
                st.delivered_at = Some(now);
                let factor = 2u32.saturating_pow(st.resends.min(6));
                st.resends += 1;
                st.next_at = Some(later(now, settings.resend_after.saturating_mul(factor)));
                *c = Circuit::default();
            }
            Outcome::Refused(status, body) => {
                metrics.count(name, "refused");
                metrics
                    .duration
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
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
                );
                st.next_at = Some(later(now, wait));
                warn!(action = name.as_str(), key = %key, error = %clip(&error), attempt = st.failures, "remediation failed; retrying in {wait:?}");
                if c.failed(now, settings.circuit_failures, settings.circuit_open_for) {
                    metrics.count(name, "circuit_open");
                    metrics.circuit_open.get_or_create(&label).set(1);
                    warn!(
                        action = name.as_str(),
                        failures = c.failures,
                        "the receiver keeps failing: circuit open, no calls for {:?}",
                        settings.circuit_open_for
                    );
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

/// A value from outside, escaped and bounded for the logs.
fn clipped(s: &Option<Arc<str>>) -> Option<String> {
    s.as_deref().map(|s| clip(s).into_owned())
}

/// The `outcome` of a call's span.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::DryRun(_) => "dry_run",
        Outcome::Success(_) => "success",
        Outcome::Refused(..) => "refused",
        Outcome::Retry(..) => "error",
        Outcome::Invalid(_) => "invalid",
    }
}
