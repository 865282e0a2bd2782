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
//! The layers, each importing only from those to its left:
//!
//! ```text
//!  util  <-  model  <-  core  <-  sources | sinks | remediation  <-  app  <-  main
//! ```

pub mod app;
pub mod core;
pub mod model;
pub mod remediation;
pub mod sinks;
pub mod sources;
pub mod util;

/// jemalloc for every binary built on this library (the daemon, the benchmarks, the tests):
/// the replay decodes on some threads and frees on another, which glibc's malloc serializes
/// on its arena locks (the pipelined replay ran slower than a single thread), and jemalloc keeps
/// a tracked pod about a fifth smaller in resident memory (the replay benchmark measures both).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
