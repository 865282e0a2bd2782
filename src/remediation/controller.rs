//! The remediation controller: every round, the open findings of the latest snapshot that are
//! due (past their action's grace, on trusted sources, not waiting on a retry), called in
//! order of opening under the rate limits and the circuit breakers, one call at a time.
//!
//! The same controller runs live (on the wall clock, calling through a [`Deliverer`]) and in a
//! backtest (on the replay's virtual clock, through a [`Deliver`] that calls nothing), so that
//! a backtest shows the calls live mode would have made.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{Instrument, info, warn};

use super::action::{Action, ActionName, idempotency_key};
use super::config::Remediation;
use super::deliver::{Deliver, Deliverer};
use super::lease::Leadership;
use super::limits::{Bucket, Circuit};
use super::metrics::{ActionLabels, RemediationMetrics};
use crate::core::trust;
use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::profile::Profiles;
use crate::model::view::{ActionState, RemediationView, Snapshot};
use crate::util::time::Ts;

/// What the controller remembers of one incident (one idempotency key).
#[derive(Default)]
struct KeyState {
    failures: u32,
    next_at: Option<Ts>,
    delivered_at: Option<Ts>,
    resends: u32,
    /// Refused by the receiver, or dry-run logged: nothing more to do for this incident.
    done: bool,
    /// Calls made, and the last one's time and outcome (for the status page).
    calls: u32,
    last: Option<(Ts, &'static str)>,
    /// Every reason it has waited for (grace, rate limit, untrusted source...).
    delays: BTreeSet<&'static str>,
    action: Option<ActionName>,
    /// When its action's grace ends.
    grace_until: Option<Ts>,
}

impl KeyState {
    /// Its last call could not be built: it waits on a fix, not on time.
    fn invalid(&self) -> bool {
        self.last.is_some_and(|(_, outcome)| outcome == "invalid")
    }
}

/// The waits a call's journal entry names as what delayed it.
const DELAYS: [&str; 5] = [
    "grace",
    "untrusted source",
    "rate limit",
    "circuit open",
    "not leader",
];

/// One call the controller made (or, in a backtest or dry run, would have made).
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Ts,
    pub action: ActionName,
    pub key: String,
    pub finding: OpenFinding,
    /// What it calls: `POST https://...`, `delete pod NS/NAME (uid ...)`...
    pub what: String,
    /// `success`, `dry_run`, `error`, `refused`, `invalid`.
    pub outcome: &'static str,
    /// A resend while the finding stayed open after a successful call.
    pub resend: bool,
    /// Why it did not go sooner: `grace`, `rate limit`, `untrusted source`, ...
    pub delayed_by: Vec<&'static str>,
}

/// The wall clock live; a backtest's virtual clock.
pub type Clock = Arc<dyn Fn() -> Ts + Send + Sync>;

/// Live mode's clock: the wall clock at start, then advanced by the monotonic clock, so that
/// a step of the system clock (NTP) neither stalls the rounds, freezes a rate limit or the
/// published view, nor fires retries and resends early.
fn monotonic_wall_clock() -> Clock {
    let (wall, mono) = (Ts::now(), std::time::Instant::now());
    Arc::new(move || wall.saturating_add(mono.elapsed()))
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
pub struct Controller<D: Deliver = Deliverer> {
    settings: Remediation,
    profiles: Arc<Profiles>,
    list: Vec<Action>,
    by_kind: HashMap<(Arc<str>, FindingKind), usize>,
    deliverer: D,
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
    published: Option<Ts>,
    clock: Clock,
    /// The calls made, when kept (a backtest).
    journal: Option<Vec<Call>>,
    /// Findings that resolved during their action's grace, without a call, by action.
    avoided: HashMap<ActionName, u64>,
    /// The backlog per action after the last round.
    backlog: HashMap<ActionName, i64>,
}

impl<D: Deliver> Controller<D> {
    pub fn new(
        settings: Remediation,
        profiles: Arc<Profiles>,
        deliverer: D,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        leadership: watch::Receiver<Leadership>,
        metrics: RemediationMetrics,
        spans: ParentSpan,
    ) -> Controller<D> {
        let list = settings.actions.clone();
        let now = Ts::now();
        let buckets = list
            .iter()
            .map(|a| Bucket::new(a.per_minute, now))
            .collect();
        let circuits = list.iter().map(|_| Circuit::default()).collect();
        let by_kind = list
            .iter()
            .enumerate()
            .map(|(i, a)| ((profiles.get(a.profile).name.clone(), a.name.repairs()), i))
            .collect();
        Controller {
            global: Bucket::new(settings.max_per_minute, now),
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
            clock: monotonic_wall_clock(),
            journal: None,
            avoided: HashMap::new(),
            backlog: HashMap::new(),
        }
    }

    /// Runs on `clock` (a backtest's virtual time) and keeps a journal of the calls.
    pub fn rehearsing(mut self, clock: Clock) -> Controller<D> {
        let now = clock();
        self.buckets = self
            .list
            .iter()
            .map(|a| Bucket::new(a.per_minute, now))
            .collect();
        self.global = Bucket::new(self.settings.max_per_minute, now);
        self.clock = clock;
        self.journal = Some(Vec::new());
        self
    }

    fn now(&self) -> Ts {
        (self.clock)()
    }

    /// The calls made since the last take (kept only when rehearsing).
    pub fn take_journal(&mut self) -> Vec<Call> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Findings that resolved during their action's grace without a call, by action.
    pub fn avoided(&self) -> &HashMap<ActionName, u64> {
        &self.avoided
    }

    /// Whether an open finding still waits for something that time alone brings (its grace
    /// to end, a rate limit's token, a breaker to close) or is due: more rounds would call.
    /// An incident whose last call could not be built waits on a fix, not on time.
    pub fn has_work(&self) -> bool {
        self.standing.iter().any(|(id, s)| {
            let invalid = self
                .keys
                .get(id)
                .and_then(|k| self.state.get(k))
                .is_some_and(KeyState::invalid);
            !invalid
                && matches!(
                    s.waiting,
                    None | Some("grace" | "rate limit" | "circuit open")
                )
        })
    }

    /// The backlog per action after the last round.
    pub fn backlog(&self) -> &HashMap<ActionName, i64> {
        &self.backlog
    }

    /// One round, then when the next one is needed: a rate limit lets the next waiting call
    /// go, a grace ends, a retry or resend is due. (Live mode also runs a round every 100 ms.)
    pub async fn step(&mut self) -> Option<Ts> {
        let token_due = self.round().await;
        let now = self.now();
        let mut next = token_due.filter(|t| *t > now);
        // Only later instants: what is due now and held back is covered by the next token.
        let mut sooner = |t: Ts| {
            if t > now {
                next = Some(next.map_or(t, |n: Ts| n.min(t)));
            }
        };
        for s in self.standing.values() {
            if let Some(t) = s.next_at {
                sooner(t);
            }
        }
        for st in self.state.values() {
            if let Some(t) = st.next_at.filter(|_| !st.done) {
                sooner(t);
            }
        }
        next
    }

    /// Publishes what the controller is doing, per open finding with an action, to `view`
    /// (about every second), for the status page.
    pub fn publishing_to(mut self, view: watch::Sender<Arc<RemediationView>>) -> Controller<D> {
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
        let mut next = self.now();
        loop {
            // Every 100 ms, or as soon as a rate limit lets the next waiting call go: a
            // backlog drains at the configured rate, not at the pace of the rounds.
            let wait = Duration::from_millis(next.0.saturating_sub(self.now().0).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let round_started = self.now();
            let token_due = self.round().await;
            let tick = round_started.saturating_add(Duration::from_millis(100));
            next = token_due.map_or(tick, |t| t.min(tick));
        }
    }

    /// Whether this replica may act now, with room for one call before its lease could lapse.
    fn acting(&self) -> bool {
        if self.stopping.as_ref().is_some_and(|s| *s.borrow()) {
            return false;
        }
        let lead = *self.leadership.borrow();
        lead.acting(tokio::time::Instant::now(), self.settings.timeout)
    }

    /// One round: acts on what is due; returns when the next call held back by a rate limit
    /// may go, if any is.
    async fn round(&mut self) -> Option<Ts> {
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
        self.report_circuits(self.now());
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
        self.report_circuits(self.now());
        self.publish(leader);
        token_due
    }

    /// Publishes where each open finding with an action stands, at most every second.
    fn publish(&mut self, leader: bool) {
        let now = self.now();
        if self.published.is_some_and(|t| now.secs_since(t) < 1.0) {
            return;
        }
        self.published = Some(now);
        let mut findings = HashMap::with_capacity(self.standing.len());
        for (id, s) in &self.standing {
            let key = self.keys.get(id);
            let st = key.and_then(|k| self.state.get(k));
            let next_at = s.next_at.or_else(|| st?.next_at);
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
        let now = self.now();
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
            let st = self.state.entry(key.clone()).or_default();
            st.action = Some(action.name);
            st.grace_until = Some(graced);
            let mut stand = |waiting: Option<&'static str>, next_at| {
                st.delays.extend(waiting.filter(|w| DELAYS.contains(w)));
                self.standing.insert(
                    f.id,
                    Standing {
                        index,
                        waiting,
                        next_at,
                    },
                );
            };
            if now < graced {
                stand(Some("grace"), Some(graced));
                continue;
            }
            if !trust::may_act(&snap.sources, action.profile, &f.finding) {
                stand(Some("untrusted source"), None);
                continue;
            }
            let (done, next_at, resend) = (st.done, st.next_at, st.delivered_at.is_some());
            if done || next_at.is_some_and(|t| now < t) {
                let why = match (done, resend) {
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
        self.forget(&open_keys, now);
        self.keys.retain(|id, _| open_ids.contains(id));
        due
    }

    /// Forgets the incidents that resolved, counting those that did during their grace.
    fn forget(&mut self, open_keys: &HashSet<String>, now: Ts) {
        let avoided = &mut self.avoided;
        self.state.retain(|k, st| {
            let open = open_keys.contains(k);
            if !open
                && st.calls == 0
                && st.grace_until.is_some_and(|g| now < g)
                && let Some(name) = st.action
            {
                *avoided.entry(name).or_default() += 1;
            }
            open
        });
    }

    /// Calls what is due as the limits allow, counting the rest as backlog; returns when the
    /// next call held back by a rate limit may go.
    async fn send(&mut self, due: Vec<Due>, backlog: &mut HashMap<ActionName, i64>) -> Option<Ts> {
        let mut token_due: Option<Ts> = None;
        for (key, f, index) in due {
            let name = self.list[index].name;
            let now = self.now();
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
            self.act(key.clone(), f, index).await;
            // A call that could not be built sent nothing: it does not use up the limits
            // (nor hold back the incidents queued behind it).
            if self.state.get(&key).is_some_and(KeyState::invalid) {
                self.global.refund();
                self.buckets[index].refund();
            }
        }
        token_due
    }

    fn waits(&mut self, id: u64, why: &'static str) {
        if let Some(s) = self.standing.get_mut(&id) {
            s.waiting = Some(why);
        }
        if let Some(st) = self.keys.get(&id).and_then(|k| self.state.get_mut(k)) {
            st.delays.insert(why);
        }
    }

    /// `sandwatch_remediation_circuit_open`, as the breakers are now: 1 while a breaker of
    /// the action is open, 0 once its open time has passed (the next call is its trial).
    fn report_circuits(&self, now: Ts) {
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

    fn set_backlog(&mut self, backlog: &HashMap<ActionName, i64>) {
        self.backlog.clone_from(backlog);
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
        let started = std::time::Instant::now();
        let at = self.now();
        let outcome = self
            .deliverer
            .deliver(&action, profile, &f, &key, self.settings.live)
            .instrument(span.clone())
            .await;
        span.record("outcome", outcome_label(&outcome));
        self.journal(at, &action, &key, &f, &outcome, resend);
        self.settle(&action, &key, &f, index, outcome, started.elapsed());
    }
}

#[path = "settle.rs"]
mod settle;
use settle::{clipped, outcome_label};
