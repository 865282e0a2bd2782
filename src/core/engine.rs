//! The engine: owns the World, applies changes, runs the rules, emits transitions.
//!
//! ```text
//!  sources ──Change──▶ Engine::apply ──▶ World (join) ──subjects touched──▶ rules ──▶ Transitions ──▶ sinks
//! ```
//!
//! One task owns the engine (no locks). Each [`Change`] arrives with the instant it happened
//! on the engine's clock. Applying it first fires the timers that fell due before that instant
//! (each at its own due time), then mutates the World, which reports the subjects the change
//! touched, and re-runs the rules for those subjects alone: the cost of an event is
//! O(entities touched), never O(cluster). The only exception is a source changing between
//! trusted and untrusted, which re-judges everything once.
//!
//! A rule's candidate says since when its condition has held, from what the sources say (a
//! container's finishedAt, a record's `updated_at`, a pod's observed departure), and opens a
//! finding at that evidence time plus the rule's `hold_for`, and not before its `not_before`;
//! until then it is pending, with a timer. So a restarted engine, once its sources are synced,
//! reports a long-standing condition at once. A finding resolves as soon as its rule says the
//! condition no longer holds. While a source a rule rests on is unsynced or stale, that rule's
//! findings hold as they are.

use std::cmp::max;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use crate::core::rules::{self, Clear, Rule, SubjectKind, SubjectView};
use crate::core::trust::{self, Verdict};
use crate::core::world::{Feed, HashMap, Notice, SourceStatus, Subject, World, shrink};
use crate::model::finding::FindingKind;
use crate::model::finding::{Candidate, Event, FindingKey, OpenFinding, Transition};
use crate::model::kubernetes::Object;
use crate::model::profile::{ProfileId, Profiles};
use crate::model::record::{RecordChange, RecordKind};
use crate::model::view::Snapshot;
use crate::util::shard::Shard;
use crate::util::time::Ts;

/// Everything a source can tell the engine.
#[derive(Clone, Debug)]
pub enum Change {
    PodUpserted(Box<Object>),
    PodDeleted {
        namespace: String,
        name: String,
        /// When known, only the pod with this uid is removed.
        uid: Option<String>,
    },
    Record(RecordChange),
    /// A custom resource a suspended session resumes from appeared or vanished.
    ResumeTarget {
        profile: ProfileId,
        namespace: String,
        name: String,
        exists: bool,
    },
    /// A source finished a full list of its scope: whatever it did not list is gone.
    Listed {
        feed: Feed,
        profile: ProfileId,
        /// The namespace the source watches; `None` for all.
        namespace: Option<String>,
        /// (namespace, name) of every object listed.
        listed: HashSet<(String, String)>,
    },
    /// A source's health (synced, fresh) for the feeds it provides.
    Source(SourceStatus),
    /// Only advances the clock (fires due timers).
    Tick,
}

struct Pending {
    due: Option<Ts>,
    last_attempt: Option<u64>,
    retries: u64,
}

struct Open {
    finding: OpenFinding,
    last_attempt: Option<u64>,
}

/// What a rule says of a subject now.
pub enum Judgement {
    /// The rule does not judge it: the subject is gone, or a feed the rule requires has no
    /// source for its profile. Its finding, if any, resolves.
    Off(&'static str),
    /// A source the rule rests on is unsynced or stale: its finding holds as it is.
    Held,
    /// The condition does not hold, and why.
    Clear(Clear),
    /// The condition holds.
    Holds(Box<Candidate>),
}

/// Where a finding stands in the engine.
pub enum Standing<'a> {
    Open(&'a OpenFinding),
    /// The condition holds; it opens at `due` unless it clears first (`None`: due now).
    Pending {
        due: Option<Ts>,
    },
    None,
}

pub struct Engine {
    world: World,
    rules: &'static [&'static dyn Rule],
    now: Ts,
    open: HashMap<FindingKey, Open>,
    pending: HashMap<FindingKey, Pending>,
    timers: BTreeSet<(Ts, FindingKey)>,
    next_id: u64,
}

/// Counts a rise of the attempt counter and remembers the new value.
fn bump(last: &mut Option<u64>, new: Option<u64>) -> u64 {
    let added = match (*last, new) {
        (Some(l), Some(n)) if n > l => n - l,
        _ => 0,
    };
    if new.is_some() {
        *last = new;
    }
    added
}

impl Engine {
    pub fn new(profiles: Arc<Profiles>) -> Engine {
        Engine::sharded(profiles, Shard::ALL)
    }

    /// An engine that keeps and judges only what `shard` owns.
    pub fn sharded(profiles: Arc<Profiles>, shard: Shard) -> Engine {
        Engine {
            world: World::sharded(profiles, shard),
            rules: rules::ALL,
            now: Ts(i64::MIN),
            open: HashMap::default(),
            pending: HashMap::default(),
            timers: BTreeSet::new(),
            next_id: 0,
        }
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// The engine's clock: the latest instant it has been given.
    pub fn now(&self) -> Ts {
        self.now
    }

    /// The open findings, in a stable order.
    pub fn open_findings(&self) -> Vec<&OpenFinding> {
        let mut keys: Vec<&FindingKey> = self.open.keys().collect();
        keys.sort();
        keys.into_iter().map(|k| &self.open[k].finding).collect()
    }

    /// What readers outside the engine see at `at`: the open findings in the order they
    /// opened (by id: the findings API pages by id), the sources, the counts, the rules that
    /// run. The sources' times are not the engine's to know: the daemon adds them.
    pub fn snapshot(&self, at: Ts) -> Snapshot {
        let mut findings: Vec<OpenFinding> =
            self.open.values().map(|o| o.finding.clone()).collect();
        findings.sort_by_key(|f| f.id);
        Snapshot {
            at,
            findings,
            sources: self.world.sources().to_vec(),
            pods: self.world.pod_count(),
            records: self.world.record_count(),
            rules: self.rules_active(),
            source_times: Default::default(),
        }
    }

    /// Applies one change that happened at `at` (clamped so the clock never runs backwards).
    pub fn apply(&mut self, at: Ts, change: Change) -> Vec<Transition> {
        let mut out = Vec::new();
        self.apply_into(at, change, &mut out);
        out
    }

    /// [`Engine::apply`], its transitions appended to `out`.
    pub fn apply_into(&mut self, at: Ts, change: Change, out: &mut Vec<Transition>) {
        self.advance_into(at, out);
        let mut touched = Vec::new();
        let now = self.now;
        match change {
            Change::PodUpserted(obj) => self.world.upsert_pod(&obj, now, &mut touched),
            Change::PodDeleted {
                namespace,
                name,
                uid,
            } => self
                .world
                .delete_pod(&namespace, &name, uid.as_deref(), now, &mut touched),
            Change::Record(RecordChange::Upsert(rec)) => {
                self.world.upsert_record(rec, now, &mut touched)
            }
            Change::Record(RecordChange::Delete {
                kind,
                profile,
                namespace,
                id,
            }) => self.world.delete_record(
                kind,
                profile,
                namespace.as_deref(),
                &id,
                now,
                &mut touched,
            ),
            Change::ResumeTarget {
                profile,
                namespace,
                name,
                exists,
            } => {
                self.world
                    .set_resume_target(profile, &namespace, &name, exists, now, &mut touched)
            }
            Change::Listed {
                feed,
                profile,
                namespace,
                listed,
            } => self.world.retain_listed(
                feed,
                profile,
                namespace.as_deref(),
                &listed,
                now,
                &mut touched,
            ),
            Change::Source(status) => {
                if self.world.set_source(status, now) {
                    touched = self.world.all_subjects();
                }
            }
            Change::Tick => {}
        }
        touched.sort_unstable();
        touched.dedup();
        // A burst (a feed starting judges every subject) makes about one transition each.
        out.reserve(touched.len());
        for subject in &touched {
            self.evaluate(subject, out);
        }
        // A burst (every pod pending until its records arrive) must not pin its memory.
        shrink(&mut self.pending);
        shrink(&mut self.open);
    }

    /// When the next pending finding is due to open, if any is.
    pub fn next_due(&self) -> Option<Ts> {
        self.timers.first().map(|(due, _)| *due)
    }

    /// Advances the clock to `to`, firing every timer due by then.
    pub fn advance(&mut self, to: Ts) -> Vec<Transition> {
        let mut out = Vec::new();
        self.advance_into(to, &mut out);
        out
    }

    fn advance_into(&mut self, to: Ts, out: &mut Vec<Transition>) {
        while let Some((due, key)) = self.timers.first().cloned() {
            if due > to {
                break;
            }
            self.timers.pop_first();
            if let Some(p) = self.pending.get_mut(&key)
                && p.due == Some(due)
            {
                p.due = None;
            }
            self.now = max(self.now, due);
            self.evaluate(&key.subject, out);
        }
        self.now = max(self.now, to);
        self.world.advance(self.now);
    }

    /// What the World noticed and could not act on since the last call (ambiguous
    /// references): the caller logs and counts them.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        self.world.take_notices()
    }

    /// Which rules run for which profile: a rule runs when every feed it requires has a
    /// source for that profile.
    pub fn rules_active(&self) -> Vec<(crate::core::world::Sym, FindingKind, bool)> {
        let w = &self.world;
        w.profiles()
            .iter()
            .flat_map(|(p, profile)| {
                self.rules.iter().map(move |r| {
                    let on = trust::verdict(w.sources(), p, &r.needs()) != Verdict::Off;
                    (profile.name.clone(), r.kind(), on)
                })
            })
            .collect()
    }

    fn evaluate(&mut self, subject: &Subject, out: &mut Vec<Transition>) {
        let kind = match subject {
            Subject::Pod { .. } => SubjectKind::Pod,
            Subject::Record(k) => match k.kind {
                RecordKind::Session => SubjectKind::Session,
                RecordKind::Execution => SubjectKind::Execution,
                RecordKind::Sandbox => return,
            },
        };
        // Judged first, acted on after: the subject is looked up once for all its rules.
        let judged: Vec<(&'static dyn Rule, Judgement)> = {
            let view = self.view(subject);
            self.rules
                .iter()
                .filter(|r| r.subject() == kind)
                .map(|r| (*r, self.judge_view(*r, &view)))
                .collect()
        };
        for (rule, judgement) in judged {
            let key = FindingKey {
                kind: rule.kind(),
                subject: subject.clone(),
            };
            match judgement {
                Judgement::Held => {}
                Judgement::Off(_) | Judgement::Clear(_) => self.clear(key, out),
                Judgement::Holds(c) => self.holds(key, *c, out),
            }
        }
    }

    /// What `rule` says of `subject` now.
    pub fn judge(&self, rule: &dyn Rule, subject: &Subject) -> Judgement {
        self.judge_view(rule, &self.view(subject))
    }

    /// The subject as the World has it, and its profile; or why it is not there.
    fn view<'a>(
        &'a self,
        subject: &'a Subject,
    ) -> Result<(SubjectView<'a>, ProfileId), &'static str> {
        let w = &self.world;
        match subject {
            Subject::Pod { .. } => match w.pod_of(subject) {
                Some(p) => Ok((SubjectView::Pod(p), p.profile)),
                None => Err("the pod is not (or no longer) known"),
            },
            Subject::Record(k) => match w.record(k) {
                Some(r) => Ok((SubjectView::Record(k, r), k.profile)),
                None => Err("the record is not (or no longer) known"),
            },
        }
    }

    fn judge_view(
        &self,
        rule: &dyn Rule,
        view: &Result<(SubjectView<'_>, ProfileId), &'static str>,
    ) -> Judgement {
        let needs = rule.needs();
        let w = &self.world;
        let (view, profile) = match view {
            Ok((view, profile)) => (view, *profile),
            Err(why) => return Judgement::Off(why),
        };
        // Trust is per profile: one platform's sources say nothing about another's.
        match trust::verdict(w.sources(), profile, &needs) {
            Verdict::Off => {
                return Judgement::Off("a feed it requires has no source for the profile");
            }
            Verdict::Held => return Judgement::Held,
            Verdict::Judges => {}
        }
        match rule.evaluate(view, w, self.now) {
            Ok(c) => Judgement::Holds(Box::new(c)),
            Err(why) => Judgement::Clear(why),
        }
    }

    /// Where the finding of `key` stands: open, pending (with when it is due), or neither.
    pub fn standing(&self, key: &FindingKey) -> Standing<'_> {
        if let Some(o) = self.open.get(key) {
            return Standing::Open(&o.finding);
        }
        match self.pending.get(key) {
            Some(p) => Standing::Pending { due: p.due },
            None => Standing::None,
        }
    }

    /// Whether the evidence appeared while every source the finding rests on was trusted.
    fn seen_live(&self, key: &FindingKey, evidence_at: Ts) -> bool {
        let Some(rule) = self.rules.iter().find(|r| r.kind() == key.kind) else {
            return false;
        };
        let profile = match &key.subject {
            Subject::Pod { .. } => self.world.pod_of(&key.subject).map(|p| p.profile),
            Subject::Record(k) => Some(k.profile),
        };
        let needs = rule.needs();
        let feeds: Vec<Feed> = needs
            .required
            .iter()
            .chain(needs.optional)
            .copied()
            .collect();
        profile
            .and_then(|p| self.world.trusted_since(p, &feeds))
            .is_some_and(|since| evidence_at >= since)
    }

    fn clear(&mut self, key: FindingKey, out: &mut Vec<Transition>) {
        if let Some(p) = self.pending.remove(&key)
            && let Some(due) = p.due
        {
            self.timers.remove(&(due, key.clone()));
        }
        if let Some(o) = self.open.remove(&key) {
            out.push(Transition {
                event: Event::Resolved,
                at: self.now,
                finding: o.finding,
                new_retries: 0,
            });
        }
    }

    fn holds(&mut self, key: FindingKey, c: Candidate, out: &mut Vec<Transition>) {
        let now = self.now;
        if let Some(o) = self.open.get_mut(&key) {
            let added = bump(&mut o.last_attempt, c.attempt);
            if added > 0 || o.finding.finding != c.finding {
                o.finding.retries_after_death += added;
                o.finding.finding = c.finding;
                out.push(Transition {
                    event: Event::Updated,
                    at: now,
                    finding: o.finding.clone(),
                    new_retries: added,
                });
            }
            return;
        }
        let due = max(
            c.evidence_at.saturating_add(c.hold_for),
            c.not_before.unwrap_or(Ts(i64::MIN)),
        );
        if now >= due {
            // Due already: it opens without waiting in `pending` (most of a burst does).
            let (last_attempt, retries) = match self.pending.remove(&key) {
                Some(mut p) => {
                    if let Some(old) = p.due {
                        self.timers.remove(&(old, key.clone()));
                    }
                    let retries = p.retries + bump(&mut p.last_attempt, c.attempt);
                    (p.last_attempt, retries)
                }
                None => (c.attempt, 0),
            };
            self.next_id += 1;
            let evidence_at = c.evidence_at.min(now);
            let seen_live = self.seen_live(&key, evidence_at);
            let finding = OpenFinding {
                id: self.next_id,
                finding: c.finding,
                opened_at: now,
                evidence_at,
                retries_after_death: retries,
                seen_live,
                subject: key.subject.clone(),
            };
            out.push(Transition {
                event: Event::Opened,
                at: now,
                finding: finding.clone(),
                new_retries: 0,
            });
            self.open.insert(
                key,
                Open {
                    finding,
                    last_attempt,
                },
            );
            return;
        }
        let p = self.pending.entry(key.clone()).or_insert(Pending {
            due: None,
            last_attempt: c.attempt,
            retries: 0,
        });
        p.retries += bump(&mut p.last_attempt, c.attempt);
        if p.due != Some(due) {
            if let Some(old) = p.due.replace(due) {
                self.timers.remove(&(old, key.clone()));
            }
            self.timers.insert((due, key));
        }
    }
}
