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

pub mod config;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Statement};
use tracing::{debug, info, warn};

use crate::core::engine::Change;
use crate::core::world::{Feed, SourceStatus};
use crate::model::profile::{ProfileId, Profiles};
use crate::model::record::{RecordChange, RecordDoc, RecordKind};
use crate::model::source::SourceCounters;
use crate::util::time::Ts;
pub use config::PostgresRecords;

/// The record fields, in the order the wrapped query returns them.
const FIELDS: [(&str, &str); 9] = [
    ("id", "text"),
    ("state", "text"),
    ("namespace", "text"),
    ("pod", "text"),
    ("session", "text"),
    ("sandbox", "text"),
    ("attempt", "bigint"),
    ("updated_at", "ms"),
    ("deadline", "ms"),
];

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
            name: crate::sources::name("postgres", profile_name, None),
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

    /// One connection's life: prepare the queries, then poll until an error.
    async fn session<F, Fut>(
        &self,
        url: &str,
        cx: &Context,
        state: &mut PollState,
        send: &F,
    ) -> Result<(), PollError>
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (client, notified) = self.within("connecting", self.connect(url)).await?;
        let result = self
            .poll_until_error(&client, notified, cx, state, send)
            .await;
        if let Err(PollError::Timeout { .. }) = &result {
            // Ask the server to stop the statement; dropping the connection alone may leave it
            // running until the server next writes to the socket.
            let tls = tls_connector(self.settings.ca_file.as_deref());
            let cancel = client.cancel_token();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), cancel.cancel_query(tls)).await;
            });
        }
        result
    }

    async fn poll_until_error<F, Fut>(
        &self,
        client: &Client,
        mut notified: mpsc::Receiver<()>,
        cx: &Context,
        state: &mut PollState,
        send: &F,
    ) -> Result<(), PollError>
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut prepared = Vec::new();
        for (kind, query) in &self.settings.queries {
            let p = Prepared::new(client, *kind, query, &self.name);
            prepared.push(self.within("preparing a query", p).await?);
        }
        info!(source = %self.name, database = %self.target(), "connected (read-only)");
        loop {
            let full = state.need_full
                || state
                    .last_full
                    .is_none_or(|t| t.elapsed() >= self.settings.resync_interval);
            let started = Instant::now();
            let sync_span = full.then(|| {
                tracing::info_span!(
                    parent: None,
                    "source.sync",
                    source = %self.name,
                    source.kind = "postgres",
                    rows = tracing::field::Empty,
                )
            });
            let rows = match self.round(client, &prepared, full, state, cx, send).await {
                Ok(Some(rows)) => rows,
                Ok(None) => return Ok(()),
                Err(e) => {
                    cx.counters.poll(&self.name, full, 0.0, 0, false);
                    state.failed_polls += 1;
                    return Err(e);
                }
            };
            let took = started.elapsed();
            if let Some(span) = sync_span {
                span.record("rows", rows);
            }
            cx.counters
                .poll(&self.name, full, took.as_secs_f64(), rows, true);
            debug!(source = %self.name, full, rows, ?took, "polled");
            state.last_success = Some(Instant::now());
            state.polls += 1;
            if full {
                state.last_full = Some(Instant::now());
                state.need_full = false;
                if !state.trusted {
                    info!(source = %self.name, rows, ?took, "loaded; synced");
                }
            }
            if !state.trusted && !state.need_full {
                state.trusted = true;
                if !send(self.status(true, true, None)).await {
                    return Ok(());
                }
            }
            // Wait for the next poll, or a notification.
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                n = notified.recv() => if n.is_none() {
                    return Err(PollError::Closed);
                },
            }
        }
    }

    /// One poll of every query, full or incremental: the number of rows read, or `None` when
    /// the engine is gone.
    async fn round<F, Fut>(
        &self,
        client: &Client,
        prepared: &[Prepared],
        full: bool,
        state: &mut PollState,
        cx: &Context,
        send: &F,
    ) -> Result<Option<u64>, PollError>
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if full {
            // A full load may stream more rows than the statement timeout allows when the
            // engine reads slowly; the server-side limit is lifted for it, and the client
            // still gives up when the database stops sending (see `within`).
            self.within(
                "starting a full load",
                client.batch_execute("BEGIN READ ONLY; SET LOCAL statement_timeout = 0"),
            )
            .await?;
        }
        let db_now: i64 = self
            .within(
                "reading the database clock",
                client.query_one(
                    "SELECT (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint",
                    &[],
                ),
            )
            .await?
            .get(0);
        let overlap = i64::try_from(self.settings.overlap.as_millis()).unwrap_or(i64::MAX);
        let since = match (full, state.last_poll_started) {
            (false, Some(prev)) => Some(prev.saturating_sub(overlap)),
            _ => None,
        };
        let mut rows_total = 0;
        for p in prepared {
            let Some((rows, listed)) = self.poll(client, p, since, state, cx).await? else {
                return Ok(None);
            };
            rows_total += rows;
            if let Some(listed) = listed {
                let done = Change::Listed {
                    feed: Feed::of_record(p.kind),
                    profile: self.profile,
                    namespace: None,
                    listed,
                };
                if !send(done).await {
                    return Ok(None);
                }
            }
        }
        if full {
            self.within("ending a full load", client.batch_execute("COMMIT"))
                .await?;
        }
        state.last_poll_started = Some(db_now);
        Ok(Some(rows_total))
    }

    /// How long sandwatch waits on the database for any one step (connecting, a statement's
    /// answer, the next row of a full load) before it drops the connection: a little longer
    /// than the statement timeout, so that the server's own limit normally acts first.
    fn wait_limit(&self) -> Duration {
        self.settings.statement_timeout + Duration::from_secs(5)
    }

    /// Runs one step against the database within [`Self::wait_limit`].
    async fn within<T, E>(
        &self,
        what: &'static str,
        step: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, PollError>
    where
        PollError: From<E>,
    {
        let after = self.wait_limit();
        match tokio::time::timeout(after, step).await {
            Ok(result) => result.map_err(PollError::from),
            Err(_) => Err(PollError::Timeout { what, after }),
        }
    }

    async fn connect(
        &self,
        url: &str,
    ) -> Result<(Client, mpsc::Receiver<()>), tokio_postgres::Error> {
        let tls = tls_connector(self.settings.ca_file.as_deref());
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.wait_limit());
        }
        let (client, mut connection) = config.connect(tls).await?;
        let (tx, rx) = mpsc::channel(16);
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |c| connection.poll_message(c));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(source = %name, error = %e, "database connection closed");
                        break;
                    }
                }
            }
        });
        let ms = self.settings.statement_timeout.as_millis();
        let mut setup = format!(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SET statement_timeout = {ms}; SET TIME ZONE 'UTC'; SET application_name = 'sandwatch';"
        );
        if let Some(channel) = &self.settings.listen_channel {
            setup.push_str(&format!(" LISTEN {channel};"));
        }
        client.batch_execute(&setup).await?;
        Ok((client, rx))
    }

    /// Runs one query (full or incremental) and sends its rows. `Ok(None)`: the engine is gone.
    async fn poll(
        &self,
        client: &Client,
        p: &Prepared,
        since: Option<i64>,
        state: &mut PollState,
        cx: &Context,
    ) -> Result<Option<(u64, Option<HashSet<(String, String)>>)>, PollError> {
        let (stmt, since) = match (&p.incremental, since) {
            (Some(stmt), Some(since)) => (stmt, Some(since)),
            _ => (&p.full, None),
        };
        let complete = since.is_none();
        let params: Vec<&(dyn ToSql + Sync)> = match &since {
            Some(s) => vec![s],
            None => vec![],
        };
        let rows = self
            .within(
                "running a query",
                client.query_raw(stmt, params.iter().copied()),
            )
            .await?;
        futures::pin_mut!(rows);
        let mut listed = complete.then(HashSet::new);
        // Bad rows seen in this full load: the ones known before and not seen again are
        // forgotten, so the map stays as small as the table's bad rows.
        let mut still_rejected = HashSet::new();
        let mut count = 0u64;
        while let Some(row) = self.within("reading rows", rows.try_next()).await? {
            count += 1;
            let doc = RecordDoc {
                kind: Some(p.kind.as_str().to_string()),
                id: row.get(0),
                state: row.get(1),
                profile: Some(cx.profiles.get(self.profile).name.to_string()),
                namespace: row.get(2),
                pod: row.get(3),
                session: row.get(4),
                sandbox: row.get(5),
                attempt: None,
                updated_at: None,
                deadline: None,
                expires_at: None,
                deleted: false,
            };
            let attempt: Option<i64> = row.get(6);
            // What the row says, to tell a bad row read again from a bad row that changed.
            let fingerprint = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    &doc.id,
                    &doc.state,
                    &doc.namespace,
                    &doc.pod,
                    &doc.session,
                    &doc.sandbox,
                )
                    .hash(&mut h);
                (
                    attempt,
                    row.get::<_, Option<i64>>(7),
                    row.get::<_, Option<i64>>(8),
                )
                    .hash(&mut h);
                h.finish()
            };
            let id = doc.id.clone().unwrap_or_default();
            let namespace = doc.namespace.clone().unwrap_or_default();
            // The same bounds on times as every other input.
            let time = |i: usize, field: &str| {
                row.get::<_, Option<i64>>(i)
                    .map(|ms| {
                        Ts::from_millis(ms).map_err(|e| {
                            crate::model::record::InputError::new(
                                "invalid_value",
                                format!("record.{field}: {e}"),
                            )
                        })
                    })
                    .transpose()
            };
            let result = match (attempt, time(7, "updated_at"), time(8, "deadline")) {
                (_, Err(e), _) | (_, _, Err(e)) => Err(e),
                (Some(a), _, _) if a < 0 => Err(crate::model::record::InputError::new(
                    "invalid_value",
                    format!("record.attempt: {a} is negative"),
                )),
                (a, Ok(updated_at), Ok(deadline)) => RecordDoc {
                    attempt: a.map(|a| a as u64),
                    updated_at,
                    deadline,
                    ..doc
                }
                .validate(&cx.profiles),
            };
            match result {
                Ok(change) => {
                    if let (Some(l), RecordChange::Upsert(r)) = (listed.as_mut(), &change) {
                        l.insert((r.namespace.clone().unwrap_or_default(), r.id.clone()));
                    }
                    state.rejected.remove(&(p.kind, RowKey::Id(id)));
                    if cx
                        .changes
                        .send((Ts::now(), Change::Record(change)))
                        .await
                        .is_err()
                    {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    // The row exists: what was known of it stays (absence is not evidence).
                    if let Some(l) = listed.as_mut()
                        && !id.is_empty()
                    {
                        l.insert((namespace, id.clone()));
                    }
                    // A row without an id is known by what it says.
                    let key = if id.is_empty() {
                        RowKey::Unnamed(fingerprint)
                    } else {
                        RowKey::Id(id.clone())
                    };
                    still_rejected.insert(key.clone());
                    // Logged and counted once per change of the row, not at every reload.
                    if state.rejected.insert((p.kind, key), fingerprint) != Some(fingerprint) {
                        cx.counters.rejected(&self.name, e.reason);
                        let column = e.message.replace("record.", "column ");
                        warn!(
                            source = %self.name, query = p.kind.as_str(), reason = e.reason,
                            "skipped a {} row (id {}): {}",
                            p.kind.as_str(),
                            if id.is_empty() { "NULL".to_string() } else { format!("{id:?}") },
                            crate::util::text::clip(&column),
                        );
                    }
                }
            }
        }
        if complete {
            state
                .rejected
                .retain(|(kind, key), _| *kind != p.kind || still_rejected.contains(key));
        }
        Ok(Some((count, listed)))
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
    rejected: HashMap<(RecordKind, RowKey), u64>,
}

/// How a bad row is remembered: by its id, or, without one, by what it says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RowKey {
    Id(String),
    Unnamed(u64),
}

/// A query wrapped for full loads and, when it has `updated_at`, incremental polls.
struct Prepared {
    kind: RecordKind,
    full: Statement,
    incremental: Option<Statement>,
}

impl Prepared {
    async fn new(
        client: &Client,
        kind: RecordKind,
        query: &str,
        source: &str,
    ) -> Result<Prepared, tokio_postgres::Error> {
        let described = client.prepare(query).await?;
        let columns: HashSet<&str> = described.columns().iter().map(|c| c.name()).collect();
        for required in ["id", "state"] {
            if !columns.contains(required) {
                warn!(
                    source,
                    query = kind.as_str(),
                    "the {} query has no `{required}` column: alias one (e.g. `thread_key AS id`); every row will be rejected",
                    kind.as_str()
                );
            }
        }
        let select: Vec<String> = FIELDS
            .iter()
            .map(|(name, ty)| match (*ty, columns.contains(name)) {
                // `infinity` has no epoch: read as no value.
                ("ms", true) => format!(
                    "CASE WHEN isfinite(q.{name}) THEN (EXTRACT(EPOCH FROM q.{name}) * 1000)::bigint END"
                ),
                ("ms", false) => "NULL::bigint".to_string(),
                (ty, true) => format!("q.{name}::{ty}"),
                (ty, false) => format!("NULL::{ty}"),
            })
            .collect();
        let base = format!("SELECT {} FROM ({query}) AS q", select.join(", "));
        let full = client.prepare(&base).await?;
        let incremental = if columns.contains("updated_at") {
            let q =
                format!("{base} WHERE q.updated_at >= to_timestamp(($1::bigint)::float8 / 1000.0)");
            Some(client.prepare(&q).await?)
        } else {
            info!(
                source,
                query = kind.as_str(),
                "the {} query has no updated_at column: every poll reloads it in full",
                kind.as_str()
            );
            None
        };
        Ok(Prepared {
            kind,
            full,
            incremental,
        })
    }
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
