//! `replay --remediation`: the remediation controller of live mode, run in the replay's
//! virtual time against what really happened, calling nothing.
//!
//! Part of the app: between the replay's values, [`Backtest::until`] runs the controller's
//! rounds at the instants it asks for (a rate limit's next token, a grace ending, a retry or
//! a resend), each on a snapshot of the engine as it stood then; the controller decides
//! exactly as live (graces, the trust interlock, rate limits, resends, idempotency keys) and
//! its [`Rehearsal`] deliverer renders each call without making it. [`Backtest::finish`]
//! gives the calls and a summary per action.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;
use tokio::sync::watch;

use crate::core::engine::Engine;
use crate::model::finding::Transition;
use crate::model::profile::Profiles;
use crate::model::view::{FindingView, Snapshot};
use crate::remediation::controller::Call;
use crate::remediation::deliver::{DelivererError, Rehearsal};
use crate::remediation::{Controller, Leadership, Remediation, RemediationMetrics};
use crate::util::time::Ts;

/// How long after the input's end a backlog is drained on the final state, at most.
const DRAIN_AT_MOST: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub struct Backtest {
    controller: Controller<Rehearsal>,
    clock: Arc<AtomicI64>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    _leadership: watch::Sender<Leadership>,
    wake: Option<Ts>,
    /// The last round's instant: rounds only go forward.
    last: Ts,
    calls: Vec<Call>,
    /// Per action, the backlog each time it changed.
    backlog: BTreeMap<&'static str, Vec<(Ts, i64)>>,
}

/// Per action, what the backtest saw.
#[derive(Debug, Default, Serialize)]
pub struct ActionSummary {
    /// Calls that would have gone out.
    pub calls: u64,
    /// Calls that could not be built (a template value missing): live mode would retry them.
    pub invalid: u64,
    pub resends: u64,
    /// The most calls within any 60 s.
    pub peak_per_minute: u64,
    pub peak_backlog: i64,
    /// Findings that resolved on their own during the action's grace: calls avoided.
    pub avoided: u64,
}

impl Backtest {
    pub fn new(
        settings: &Remediation,
        profiles: Arc<Profiles>,
        metrics: RemediationMetrics,
    ) -> Result<Backtest, DelivererError> {
        let clock = Arc::new(AtomicI64::new(0));
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (leadership, leadership_rx) = watch::channel(Leadership::ALWAYS);
        let read = clock.clone();
        let controller = Controller::new(
            Remediation {
                live: true,
                ..settings.clone()
            },
            profiles,
            Rehearsal::new(&settings.actions)?,
            snapshot_rx,
            leadership_rx,
            metrics,
            Arc::new(|_| None),
        )
        .rehearsing(Arc::new(move || Ts(read.load(Ordering::Relaxed))));
        Ok(Backtest {
            controller,
            clock,
            snapshot,
            _leadership: leadership,
            wake: None,
            last: Ts(i64::MIN),
            calls: Vec::new(),
            backlog: BTreeMap::new(),
        })
    }

    /// Runs the rounds the controller asked for before `at`, advancing the engine to each
    /// (its transitions go to `sink`), then a round at `at` itself after the caller's change.
    pub fn until(&mut self, engine: &mut Engine, at: Ts, sink: &mut dyn FnMut(&[Transition])) {
        while let Some(wake) = self.next(engine).filter(|w| *w < at && *w > self.last) {
            let out = engine.advance(wake);
            sink(&out);
            self.round(engine, wake, !out.is_empty());
        }
    }

    /// The next instant something happens without input: a round the controller asked for,
    /// or a pending finding opening.
    fn next(&self, engine: &Engine) -> Option<Ts> {
        match (self.wake, engine.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After the input: rounds on the final state (the engine is not advanced: the report
    /// and an explanation stay those of the input's end) while something is still coming —
    /// a grace ending, a rate-limited backlog — for [`DRAIN_AT_MOST`] at most.
    pub fn drain(&mut self, engine: &Engine) {
        let end = engine.now().saturating_add(DRAIN_AT_MOST);
        while self.controller.has_work()
            && let Some(wake) = self.wake.filter(|w| *w <= end && *w > self.last)
        {
            self.round(engine, wake, false);
        }
    }

    /// One round at `at` on the engine as it stands (`changed`: its findings or sources
    /// changed since the last round).
    pub fn round(&mut self, engine: &Engine, at: Ts, changed: bool) {
        self.last = at;
        self.clock.store(at.0, Ordering::Relaxed);
        if changed {
            self.snapshot.send_replace(Arc::new(engine.snapshot(at)));
        }
        self.wake = futures::executor::block_on(self.controller.step());
        self.calls.extend(self.controller.take_journal());
        for (name, n) in self.controller.backlog() {
            let series = self.backlog.entry(name.as_str()).or_default();
            if series.last().is_none_or(|(_, last)| last != n) {
                series.push((at, *n));
            }
        }
    }

    /// The calls, and a summary per action.
    pub fn finish(self) -> (Vec<Call>, BTreeMap<&'static str, ActionSummary>) {
        let mut summary: BTreeMap<&'static str, ActionSummary> = BTreeMap::new();
        for a in &self.controller_actions() {
            summary.entry(a).or_default();
        }
        for c in &self.calls {
            let s = summary.entry(c.action.as_str()).or_default();
            match c.outcome {
                "success" => s.calls += 1,
                _ => s.invalid += 1,
            }
            s.resends += u64::from(c.resend);
        }
        for (name, s) in &mut summary {
            let times: Vec<Ts> = self
                .calls
                .iter()
                .filter(|c| c.action.as_str() == *name && c.outcome == "success")
                .map(|c| c.at)
                .collect();
            s.peak_per_minute = peak_per_minute(&times);
            s.peak_backlog = self
                .backlog
                .get(name)
                .and_then(|b| b.iter().map(|(_, n)| *n).max())
                .unwrap_or(0);
        }
        for (name, n) in self.controller.avoided() {
            summary.entry(name.as_str()).or_default().avoided = *n;
        }
        (self.calls, summary)
    }

    fn controller_actions(&self) -> Vec<&'static str> {
        self.backlog.keys().copied().collect()
    }
}

/// The most of `times` (sorted) within any 60 s.
fn peak_per_minute(times: &[Ts]) -> u64 {
    let mut peak = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while t.0 - times[start].0 >= 60_000 {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak as u64
}

/// One call as the JSON report shows it.
#[derive(Serialize)]
struct CallView<'a> {
    event: &'static str,
    at: String,
    action: &'static str,
    /// `success` (it would have gone out), `invalid` (it could not be built).
    outcome: &'static str,
    call: &'a str,
    idempotency_key: &'a str,
    resend: bool,
    delayed_by: &'a [&'static str],
    finding: FindingView<'a>,
}

/// Writes the calls and the summary, as a table or JSON lines.
pub fn write(
    out: &mut dyn Write,
    json: bool,
    calls: &[Call],
    summary: &BTreeMap<&'static str, ActionSummary>,
) -> std::io::Result<()> {
    if json {
        for c in calls {
            let view = CallView {
                event: "remediation",
                at: c.at.to_string(),
                action: c.action.as_str(),
                outcome: c.outcome,
                call: &c.what,
                idempotency_key: &c.key,
                resend: c.resend,
                delayed_by: &c.delayed_by,
                finding: FindingView::new(&c.finding, c.at),
            };
            serde_json::to_writer(&mut *out, &view)?;
            writeln!(out)?;
        }
        let s = serde_json::json!({"event": "remediation_summary", "actions": summary});
        return writeln!(out, "{s}");
    }
    writeln!(out, "\nREMEDIATION (backtest: nothing was called)")?;
    writeln!(
        out,
        "{:<22}  {:<18}  {:<35}  {:<28}  {:<32}  {:<24}  CALL",
        "AT", "ACTION", "KEY", "KIND", "SUBJECT", "DELAYED BY"
    )?;
    for c in calls {
        let d = &c.finding.finding;
        let subject = d
            .session
            .as_deref()
            .or(d.execution.as_deref())
            .or(d.pod.as_deref())
            .unwrap_or("-");
        let delayed = if c.delayed_by.is_empty() {
            "-".to_string()
        } else {
            c.delayed_by.join(",")
        };
        let resend = match (c.resend, c.outcome) {
            (_, "invalid") => " (invalid: not built)",
            (true, _) => " (resend)",
            _ => "",
        };
        writeln!(
            out,
            "{:<22}  {:<18}  {:<35}  {:<28}  {:<32}  {:<24}  {}{resend}",
            c.at.to_string(),
            c.action.as_str(),
            c.key,
            d.kind.as_str(),
            crate::util::text::clip(subject),
            delayed,
            crate::util::text::clip(&c.what),
        )?;
    }
    for (name, s) in summary {
        writeln!(
            out,
            "{name}: {} calls ({} resends, {} invalid), peak {}/min, peak backlog {}, {} avoided (resolved during the grace)",
            s.calls, s.resends, s.invalid, s.peak_per_minute, s.peak_backlog, s.avoided
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_counts_calls_within_any_minute() {
        let t = |s: i64| Ts(s * 1000);
        assert_eq!(peak_per_minute(&[]), 0);
        assert_eq!(peak_per_minute(&[t(0), t(59), t(60), t(61)]), 3);
        assert_eq!(peak_per_minute(&[t(0), t(30), t(89), t(200)]), 2);
    }
}
