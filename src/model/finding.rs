//! Findings and their transitions: what the engine hands to the sinks.
//!
//! A finding is one instance of a drift between the runtime and the records (an agent dead
//! behind a live sidecar, a suspended session with nothing to resume from...). Its identity
//! fields say which pod / session / execution / sandbox it is about; the engine opens it when
//! a rule's condition has held long enough and resolves it as soon as the condition stops.
//! Sinks see only [`Transition`]s.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::model::ids::{Subject, Sym};
use crate::util::time::Ts;

/// Declares [`FindingKind`], one line per kind: its variant and its name.
macro_rules! finding_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// The finding kinds. Their names are part of the interface (metrics, API, webhooks).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum FindingKind {
            $($variant,)*
        }

        impl FindingKind {
            pub const ALL: &[FindingKind] = &[$(FindingKind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(FindingKind::$variant => $name,)*
                }
            }
        }
    };
}

// Adding a rule adds its line here (the rule itself lives in `core::rules`).
finding_kinds! {
    AgentTerminatedPodRunning => "agent_terminated_pod_running",
    ExecutionOnDeadAgent => "execution_on_dead_agent",
    OrphanedSuspendedSession => "orphaned_suspended_session",
    SessionActiveWithoutAgent => "session_active_without_agent",
    LeakedSandboxPod => "leaked_sandbox_pod",
}

impl FindingKind {
    pub fn parse(s: &str) -> Option<FindingKind> {
        FindingKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finding is about and what the evidence says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub profile: Sym,
    pub namespace: Option<Sym>,
    pub pod: Option<Sym>,
    pub session: Option<Sym>,
    pub execution: Option<Sym>,
    pub sandbox: Option<Sym>,
    /// Why, in one word: a container's termination reason (`OOMKilled`, `Error`), or
    /// `PodGone`, `ResourceGone`, `SandboxDead`, `NoSession`, `SessionTerminal`...
    pub reason: Sym,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Sym>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The subject record's state (e.g. `retry_wait`), or the dead sandbox's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Sym>,
    #[serde(skip)]
    pub pod_uid: Option<Sym>,
}

/// A rule's judgement that its condition holds for a subject.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub finding: Finding,
    /// When the condition began to hold, from what the sources say: a container's
    /// finishedAt, a sandbox's death, a record's `updated_at`, a pod's observed departure.
    pub evidence_at: Ts,
    /// How long after `evidence_at` the finding opens (the absence and leak graces).
    pub hold_for: Duration,
    /// The finding may not open before this instant (e.g. finishedAt + the sidecar grace).
    pub not_before: Option<Ts>,
    /// The subject's attempt counter, for counting retries after the agent died.
    pub attempt: Option<u64>,
}

/// The engine's key for one finding: its kind and the subject it is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingKey {
    pub kind: FindingKind,
    pub subject: Subject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Opened,
    /// Still open; the evidence moved (another retry against the dead agent).
    Updated,
    Resolved,
}

/// An open finding as the engine keeps it.
#[derive(Clone, Debug)]
pub struct OpenFinding {
    /// Unique for the life of the process; lets sinks follow one finding across updates.
    pub id: u64,
    pub finding: Finding,
    pub opened_at: Ts,
    pub evidence_at: Ts,
    /// Attempt increments seen since the agent died.
    pub retries_after_death: u64,
    /// The evidence appeared while every source the finding rests on was synced and fresh,
    /// so `opened_at - evidence_at` is a detection latency (not a restart's backlog).
    pub seen_live: bool,
    /// What the finding is about, as the engine keys it (a pod incarnation or a record).
    pub subject: Subject,
}

/// A change in a finding's life, at a point on the engine's clock.
#[derive(Clone, Debug)]
pub struct Transition {
    pub event: Event,
    pub at: Ts,
    pub finding: OpenFinding,
    /// For `Updated`: how many retries this update added.
    pub new_retries: u64,
}

impl Transition {
    /// Seconds from the evidence to the finding opening, when the evidence appeared while
    /// sandwatch was looking (`None` for what held before its sources were synced).
    pub fn detection_latency_secs(&self) -> Option<f64> {
        self.finding
            .seen_live
            .then(|| self.finding.opened_at.secs_since(self.finding.evidence_at))
    }

    pub fn open_for_secs(&self) -> f64 {
        self.at.secs_since(self.finding.opened_at)
    }
}
