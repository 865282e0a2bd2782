//! sandwatch joins the runtime truth of agent sandboxes (Kubernetes pods and their
//! containers, or external sandboxes) with the platform's own records (sessions, executions)
//! and reports where they drift apart.
//!
//! ```text
//!  sources ──Change──▶ engine (owns the World) ──Transition──▶ sinks
//!  replay file           apply the change            replay report, metrics, logs,
//!  kube watches          re-run the rules for the    HTTP (readiness, findings API)
//!  PostgreSQL records    subjects it touched         remediation (Lease-gated)
//!  ingest API            timers for grace periods
//! ```
//!
//! Read top-down: [`sources`] turn input into [`engine::Change`]s; the [`engine`] applies
//! them to the [`world`] and asks the [`rules`] about the subjects each change touched;
//! [`finding`] transitions go to the [`sinks`] and to [`remediation`]. [`live`] and [`replay`]
//! wire the two commands. [`profile`]s (from [`config`]) say how each platform looks;
//! [`kubernetes`] and [`record`] are the shapes of the input.

pub mod config;
pub mod engine;
pub mod finding;
pub mod json;
pub mod kubernetes;
pub mod live;
pub mod profile;
pub mod record;
pub mod remediation;
pub mod replay;
pub mod rules;
pub mod shard;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod tls;
pub mod trust;
pub mod world;
