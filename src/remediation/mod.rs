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
//!
//! Files: [`config`] (the settings and their validation), [`action`] (what each action calls,
//! its idempotency key), [`controller`] (the rounds), [`limits`] (buckets, breakers,
//! backoff), [`deliver`] (the calls themselves), [`metrics`], [`lease`] (who remediates).

pub mod action;
pub mod config;
pub mod controller;
pub mod deliver;
pub mod lease;
mod limits;
pub mod metrics;

pub use config::Remediation;
pub use controller::{Controller, ParentSpan};
pub use lease::Leadership;
pub use metrics::RemediationMetrics;
