//! The PostgreSQL source: the platform's session, execution and sandbox rows.
//!
//! A profile's `records.postgres` names one query per record kind, its columns aliased to the
//! record fields (`id, state`, and optionally `namespace, pod, session, sandbox, attempt,
//! updated_at, deadline`). This source wraps each query so that it can run it two ways:
//! - a full load, `SELECT ... FROM (<query>) q`, at start, after an outage, and every
//!   `resync_interval`: it ends with the set of ids listed, so rows deleted in the meantime are
//!   removed from the World;
//! - an incremental poll every `poll_interval` (or at once on `LISTEN` notification),
//!   `... WHERE q.updated_at >= cursor`, where the cursor is the database's own clock at the
//!   start of the previous poll, minus `overlap`: the overlap re-reads rows whose transaction
//!   started before that poll but committed after it, rows that share a timestamp, and rows
//!   stamped by writers whose clocks run a little behind. sandwatch's own clock never matters.
//!   A re-poll reads what changed in the last `poll_interval + overlap`, however large the
//!   table. Queries without `updated_at` are fully loaded on every poll.
//!
//! The connection is read-only, in UTC, with a statement timeout (lifted inside a full load's
//! transaction, which may stream for longer); every step must also answer within the
//! statement timeout plus 5 s on the client side, so a silent database cannot hang the source.
//! Its URL comes from a file or an environment variable and is never logged. The source is
//! synced after its first full load, and fresh while its last successful poll is younger than
//! `stale_after`; once stale, it must complete a full load to be trusted again. Rows it cannot
//! understand (no id, an unknown state) are logged once with their id and column, counted, and
//! skipped; on a full load they still count as present, so what was known of them stays.
//!
//! This file holds the source itself: its URL, and reconnecting with backoff until the engine
//! goes away. `session.rs` is one connection's life, from connecting to the error that ends
//! it; `query.rs` wraps the queries and turns their rows into records; `config.rs` holds the
//! `records.postgres` settings.

pub mod config;
mod query;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::core::engine::Change;
use crate::core::world::{Feed, SourceStatus};
use crate::model::profile::{ProfileId, Profiles};
use crate::model::source::{SourceCounters, SourceKind};
use crate::sources::records::{RecordsSource, Start};
use crate::util::config::Validator;
use crate::util::time::Ts;
pub use config::PostgresRecords;

/// One profile's records database.
pub struct Postgres {
    pub name: String,
    pub profile: ProfileId,
    pub settings: PostgresRecords,
    /// Where the connection URL (a secret: never logged) is read from, at each connection.
    url_from: UrlFrom,
}

/// Where a connection URL comes from.
#[derive(Clone, Debug)]
enum UrlFrom {
    File(std::path::PathBuf),
    Env(String),
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("name", &self.name)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What a records source needs from the rest of the daemon.
#[derive(Clone)]
pub struct Context {
    pub profiles: Arc<Profiles>,
    pub changes: mpsc::Sender<(Ts, Change)>,
    pub counters: Arc<dyn SourceCounters>,
}

/// `records.postgres`: one database poll per profile.
impl RecordsSource for Postgres {
    const NAME: &'static str = "postgres";
    const KIND: SourceKind = SourceKind::Poll;
    type Spec = config::Spec;
    type Settings = PostgresRecords;
    type Error = std::convert::Infallible;

    fn validate(spec: config::Spec, v: &mut Validator<'_>) -> PostgresRecords {
        spec.validate(v)
    }

    /// A database whose URL cannot be read yet runs anyway, reported down (not ready) with
    /// the reason, and connects once the URL is there.
    fn start(
        profiles: Vec<(ProfileId, PostgresRecords)>,
        cx: &mut Start<'_>,
    ) -> Result<(), Self::Error> {
        let records = Context {
            profiles: cx.profiles.clone(),
            changes: cx.changes.clone(),
            counters: cx.counters.clone(),
        };
        for (id, settings) in profiles {
            let url_file = cx.options.database_url_file.as_deref();
            let db = Postgres::new(id, &cx.profiles.get(id).name, settings, url_file);
            if let Err(e) = db.url() {
                warn!(source = %db.name, "{e}: the source is down (the daemon is not ready) until a URL can be read; rules that rest on its records hold");
            }
            info!(source = %db.name, database = %db.target(), "polling records");
            cx.register(&db.name);
            let records = records.clone();
            cx.spawn(async move { db.run(records).await });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(
        "no database URL: ${0} is not set (set it, or give --database-url-file or records.postgres.url_file)"
    )]
    Missing(String),
    #[error("reading the database URL from {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the database URL in {0} is empty")]
    Empty(String),
    #[error(
        "the database URL in {0} cannot be parsed (check its form: postgres://user@host:5432/db?sslmode=require)"
    )]
    Invalid(String),
}

impl Postgres {
    /// The source for a profile. Its URL is read at each connection from `override_file`
    /// (the command line) or `url_file`, else from the `url_env` variable, so that a Secret
    /// created or rotated later is picked up; until one is readable the source is reported
    /// down, naming why.
    pub fn new(
        profile: ProfileId,
        profile_name: &str,
        settings: PostgresRecords,
        override_file: Option<&std::path::Path>,
    ) -> Postgres {
        let url_from = match override_file
            .map(|p| p.to_path_buf())
            .or(settings.url_file.clone())
        {
            Some(path) => UrlFrom::File(path),
            None => UrlFrom::Env(settings.url_env.clone()),
        };
        Postgres {
            name: crate::sources::name(Self::NAME, profile_name, None),
            profile,
            settings,
            url_from,
        }
    }

    /// The connection URL, read now.
    pub fn url(&self) -> Result<String, UrlError> {
        let (url, origin) = match &self.url_from {
            UrlFrom::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| UrlError::File {
                    path: path.display().to_string(),
                    reason: crate::sources::io_reason(&e),
                })?;
                (text.trim().to_string(), path.display().to_string())
            }
            UrlFrom::Env(var) => match std::env::var(var) {
                Ok(v) => (v.trim().to_string(), format!("${var}")),
                Err(_) => return Err(UrlError::Missing(var.clone())),
            },
        };
        if url.is_empty() {
            return Err(UrlError::Empty(origin));
        }
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(UrlError::Invalid(origin));
        }
        Ok(url)
    }

    pub fn feeds(&self) -> Vec<Feed> {
        self.settings
            .queries
            .iter()
            .map(|(k, _)| Feed::of_record(*k))
            .collect()
    }

    /// Where it connects, for logs: host, port and database, never the credentials.
    pub fn target(&self) -> String {
        let Some(c) = self
            .url()
            .ok()
            .and_then(|u| u.parse::<tokio_postgres::Config>().ok())
        else {
            return "?".into();
        };
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", c.get_dbname().unwrap_or("-"))
    }

    fn status(&self, synced: bool, fresh: bool, error: Option<String>) -> Change {
        Change::Source(SourceStatus {
            synced,
            fresh,
            error,
            ..SourceStatus::new(self.name.clone(), Some(self.profile), self.feeds(), false)
        })
    }

    /// Polls until the engine goes away.
    pub async fn run(self, cx: Context) {
        let send = |c: Change| {
            let tx = cx.changes.clone();
            async move { tx.send((Ts::now(), c)).await.is_ok() }
        };
        if !send(self.status(false, false, None)).await {
            return;
        }
        let mut state = PollState::default();
        let mut backoff = INITIAL_BACKOFF;
        let mut last_error = String::new();
        loop {
            let polls_before = state.polls;
            let failures_before = state.failed_polls;
            // A missing URL is fixed by mounting the Secret, not by hammering: it retries
            // at the usual pace. What the database refuses for good, it retries slowly.
            let (error, permanent) = match self.url() {
                Err(e) => (e.to_string(), false),
                Ok(url) => match self.session(&url, &cx, &mut state, &send).await {
                    Ok(()) => return,
                    Err(e) => (e.to_string(), e.permanent()),
                },
            };
            // A connection (or URL) that failed before any poll counts as a failed poll of
            // the kind that was due: a full load when the source is not trusted yet.
            if state.failed_polls == failures_before {
                let full = !state.trusted || state.need_full;
                cx.counters.poll(&self.name, full, 0.0, 0, false);
                state.failed_polls += 1;
            }
            // A session that polled successfully was healthy: the next reconnect is prompt.
            if state.polls > polls_before {
                backoff = INITIAL_BACKOFF;
            }
            if permanent {
                backoff = PERMANENT_BACKOFF;
            }
            if error != last_error {
                let what = if permanent {
                    "the database refuses this (check the query, the grants or the credentials)"
                } else {
                    "database unavailable"
                };
                warn!(source = %self.name, database = %self.target(), error = %crate::util::text::clip(&error), "{what}; retrying in {backoff:?}");
                let shown = format!("{error} (retrying every {backoff:?})");
                if !state.trusted && !send(self.status(false, false, Some(shown))).await {
                    return;
                }
                last_error = error.clone();
            }
            // Reconnect with backoff; report the source stale once its last success is too old.
            let until = Instant::now() + jitter(backoff);
            while Instant::now() < until {
                if state.trusted
                    && state
                        .last_success
                        .is_none_or(|t| t.elapsed() >= self.settings.stale_after)
                {
                    warn!(source = %self.name, "no successful poll for {:?}: reporting the source stale; it will reload everything when the database answers", self.settings.stale_after);
                    state.trusted = false;
                    state.need_full = true;
                    if !send(self.status(false, false, Some(error.clone()))).await {
                        return;
                    }
                }
                tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
            }
            backoff = if permanent {
                PERMANENT_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("{}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("the database closed the connection")]
    Closed,
    #[error("no answer from the database for {after:?} while {what}")]
    Timeout { what: &'static str, after: Duration },
}

impl PollError {
    /// An error that retrying soon will not fix: a missing table or column, a syntax error,
    /// missing grants, a wrong password, a database that does not exist.
    fn permanent(&self) -> bool {
        let PollError::Db(e) = self else {
            return false;
        };
        e.as_db_error().is_some_and(|db| {
            let code = db.code().code();
            ["42", "28", "3D", "0A"]
                .iter()
                .any(|class| code.starts_with(class))
        })
    }
}

/// A database error for people: the server's SQLSTATE, message, detail and hint, or the
/// client's error with its causes, each said once.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an error retrying cannot fix (a missing table, a wrong password) is tried again.
const PERMANENT_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Default)]
struct PollState {
    /// Successful polls so far.
    polls: u64,
    /// Failed polls counted so far.
    failed_polls: u64,
    /// The database's clock (ms) when the last successful poll started.
    last_poll_started: Option<i64>,
    last_success: Option<Instant>,
    last_full: Option<Instant>,
    need_full: bool,
    /// Synced and fresh, as last reported.
    trusted: bool,
    /// Bad rows already logged and counted, with what they said then.
    rejected: query::Rejections,
}

fn jitter(d: Duration) -> Duration {
    // ±20 %, from the clock's sub-second noise: enough to spread reconnecting replicas.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let f = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    d.mul_f64(f)
}

/// TLS for `sslmode=prefer|require`: the public web roots, plus a CA bundle when configured.
fn tls_connector(ca_file: Option<&std::path::Path>) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(crate::util::tls::client_config(ca_file))
}
