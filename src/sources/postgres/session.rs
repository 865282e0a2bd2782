//! One connection's life, for the PostgreSQL source (see the parent module): connect
//! read-only, prepare the queries, then poll them (in full or from the cursor) and send their
//! records until an error; every step within the wait limit.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client};
use tracing::{debug, info, warn};

use super::query::{Prepared, Reading, Row};
use super::{Context, PollError, PollState, Postgres, tls_connector};
use crate::core::engine::Change;
use crate::core::world::Feed;
use crate::model::record::{InputError, RecordChange, RecordKind};
use crate::model::source::SourceCounters;
use crate::util::time::Ts;

impl Postgres {
    /// One connection's life: prepare the queries, then poll until an error.
    pub(super) async fn session<F, Fut>(
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

    /// Prepares the queries, then polls them until an error (`Ok` when the engine is gone).
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
            let Some(reading) = self.poll(client, p, since, state, cx).await? else {
                return Ok(None);
            };
            rows_total += reading.rows;
            if let Some(listed) = reading.listed {
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

    /// Connects read-only, in UTC, with the statement timeout, listening on the channel when
    /// there is one: each notification arrives on the receiver.
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

    /// Runs one query (full or incremental) and sends its records. `Ok(None)`: the engine is
    /// gone.
    async fn poll(
        &self,
        client: &Client,
        p: &Prepared,
        since: Option<i64>,
        state: &mut PollState,
        cx: &Context,
    ) -> Result<Option<Reading>, PollError> {
        let (stmt, since) = p.statement(since);
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
        let mut reading = Reading::new(since.is_none());
        let profile = cx.profiles.get(self.profile).name.to_string();
        while let Some(row) = self.within("reading rows", rows.try_next()).await? {
            reading.rows += 1;
            let row = Row::read(&row);
            let Some(change) = self.take(p.kind, &row, &profile, &mut reading, state, cx) else {
                continue;
            };
            if cx
                .changes
                .send((Ts::now(), Change::Record(change)))
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
        // Bad rows known before and not seen again in a full load are forgotten.
        if reading.complete() {
            state.rejected.keep_only(p.kind, &reading.rejected);
        }
        Ok(Some(reading))
    }

    /// One row of a `kind` query: the change it makes, or `None` when it is bad and skipped.
    fn take(
        &self,
        kind: RecordKind,
        row: &Row,
        profile: &str,
        reading: &mut Reading,
        state: &mut PollState,
        cx: &Context,
    ) -> Option<RecordChange> {
        match row.record(kind, profile, &cx.profiles) {
            Ok(change) => {
                reading.accepted(&change);
                state
                    .rejected
                    .forget(kind, row.id.clone().unwrap_or_default());
                Some(change)
            }
            Err(e) => {
                reading.rejected(row);
                // Logged and counted once per change of the row, not at every reload.
                if state.rejected.news(kind, row.key(), row.fingerprint()) {
                    self.skipped(kind, row, &e, cx.counters.as_ref());
                }
                None
            }
        }
    }

    /// Logs and counts a bad row, naming its id and the column at fault.
    fn skipped(&self, kind: RecordKind, row: &Row, e: &InputError, counters: &dyn SourceCounters) {
        counters.rejected(&self.name, e.reason);
        let id = row.id.clone().unwrap_or_default();
        let column = e.message.replace("record.", "column ");
        warn!(
            source = %self.name, query = kind.as_str(), reason = e.reason,
            "skipped a {} row (id {}): {}",
            kind.as_str(),
            if id.is_empty() { "NULL".to_string() } else { format!("{id:?}") },
            crate::util::text::clip(&column),
        );
    }
}
