//! What readers outside the engine see: the one layout of a finding ([`FindingView`]: the
//! findings API, webhook payloads, the replay report and the logs all show these fields), and
//! the [`Snapshot`] the engine task publishes for the HTTP endpoints and remediation, and
//! what the status page shows besides: the daemon itself ([`About`]) and remediation's state
//! per finding ([`RemediationView`]).

use std::collections::HashMap;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::source::SourceStatus;
use crate::util::time::Ts;

/// What the engine publishes for readers.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub at: Ts,
    pub findings: Vec<OpenFinding>,
    pub sources: Vec<SourceStatus>,
    /// Sandbox pods and records held in memory.
    pub pods: usize,
    pub records: usize,
    /// Which rules run for which profile.
    pub rules: Vec<(Arc<str>, FindingKind, bool)>,
    /// When each source (by name) last succeeded and last failed.
    pub source_times: HashMap<String, SourceTimes>,
}

/// When a source last talked to its backend successfully, and its last error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceTimes {
    pub last_success: Option<Ts>,
    pub last_error: Option<(Ts, String)>,
}

/// The daemon itself, as the status page introduces it.
#[derive(Clone, Debug, Default)]
pub struct About {
    pub version: &'static str,
    pub started_at: Ts,
    /// This replica's shard, `ORDINAL/COUNT` (`0/1` unsharded).
    pub shard: String,
    /// `live` or `dry_run`; `None` when no remediation action is configured.
    pub remediation: Option<&'static str>,
}

/// What remediation is doing, as its controller last published it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemediationView {
    /// This replica remediates (it holds the Lease, or there is no election).
    pub leader: bool,
    /// Per open finding that has an action (by finding id).
    pub findings: HashMap<u64, ActionState>,
}

/// Remediation's state for one open finding.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionState {
    pub action: &'static str,
    pub dry_run: bool,
    /// Calls made for this incident.
    pub calls: u32,
    /// The last call: when, and its outcome (`success`, `error`, `refused`, `dry_run`...).
    pub last: Option<(Ts, &'static str)>,
    /// When the next call may go (a grace ending, a retry, a resend), if one is planned.
    pub next_at: Option<Ts>,
    /// Why no call goes now: `grace`, `untrusted source`, `retry`, `resend`, `done`,
    /// `rate limit`, `circuit open`, `not leader`; `None`: it is due.
    pub waiting: Option<&'static str>,
}

/// One open finding as the API shows it.
pub struct FindingView<'a> {
    pub kind: FindingKind,
    pub profile: &'a str,
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub session: Option<&'a str>,
    pub execution: Option<&'a str>,
    pub sandbox: Option<&'a str>,
    pub reason: &'a str,
    pub container: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub state: Option<&'a str>,
    pub retries_after_death: u64,
    pub evidence_at: Ts,
    pub opened_at: Ts,
    pub open_for_seconds: f64,
}

impl FindingView<'_> {
    /// How many fields [`FindingView::fields`] writes.
    pub const FIELDS: usize = 15;

    /// Writes the fields into a struct being serialized: the view's own, or a line that
    /// carries it with fields of its own (the replay report), with no flattening map between.
    pub fn fields<S: SerializeStruct>(&self, m: &mut S) -> Result<(), S::Error> {
        m.serialize_field("kind", &self.kind)?;
        m.serialize_field("profile", self.profile)?;
        m.serialize_field("namespace", &self.namespace)?;
        m.serialize_field("pod", &self.pod)?;
        m.serialize_field("session", &self.session)?;
        m.serialize_field("execution", &self.execution)?;
        m.serialize_field("sandbox", &self.sandbox)?;
        m.serialize_field("reason", self.reason)?;
        m.serialize_field("container", &self.container)?;
        m.serialize_field("exit_code", &self.exit_code)?;
        m.serialize_field("state", &self.state)?;
        m.serialize_field("retries_after_death", &self.retries_after_death)?;
        m.serialize_field("evidence_at", &self.evidence_at)?;
        m.serialize_field("opened_at", &self.opened_at)?;
        m.serialize_field("open_for_seconds", &self.open_for_seconds)
    }
}

impl Serialize for FindingView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("FindingView", Self::FIELDS)?;
        self.fields(&mut m)?;
        m.end()
    }
}

impl<'a> FindingView<'a> {
    pub fn new(f: &'a OpenFinding, now: Ts) -> FindingView<'a> {
        let d = &f.finding;
        FindingView {
            kind: d.kind,
            profile: &d.profile,
            namespace: d.namespace.as_deref(),
            pod: d.pod.as_deref(),
            session: d.session.as_deref(),
            execution: d.execution.as_deref(),
            sandbox: d.sandbox.as_deref(),
            reason: &d.reason,
            container: d.container.as_deref(),
            exit_code: d.exit_code,
            state: d.state.as_deref(),
            retries_after_death: f.retries_after_death,
            evidence_at: f.evidence_at,
            opened_at: f.opened_at,
            open_for_seconds: now.secs_since(f.opened_at),
        }
    }
}
