//! `records.postgres` of a profile: how to read its records from the platform's PostgreSQL,
//! as written in the config, and as validated.

use std::time::Duration;

use serde::Deserialize;

use crate::model::ids::RecordKind;
use crate::model::profile::Profile;
use crate::sources::records::{RecordsSettings, unplaced};
use crate::util::config::Validator;

/// The config as written: every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub url_env: Option<String>,
    pub url_file: Option<String>,
    pub ca_file: Option<String>,
    pub poll_interval: Option<String>,
    pub resync_interval: Option<String>,
    pub stale_after: Option<String>,
    pub statement_timeout: Option<String>,
    pub overlap: Option<String>,
    pub listen_channel: Option<String>,
    pub queries: Option<QueriesSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueriesSpec {
    pub session: Option<String>,
    pub execution: Option<String>,
    pub sandbox: Option<String>,
}

/// Polling the platform's PostgreSQL, read-only.
#[derive(Clone, Debug)]
pub struct PostgresRecords {
    /// The environment variable holding the connection URL (when no file is given).
    pub url_env: String,
    /// A file holding the connection URL (a mounted Secret).
    pub url_file: Option<std::path::PathBuf>,
    /// PEM file of CA certificates for `sslmode=require` (default: the public web roots).
    pub ca_file: Option<std::path::PathBuf>,
    pub poll_interval: Duration,
    /// Full reloads, to learn about deleted rows.
    pub resync_interval: Duration,
    /// The source is stale once its last successful poll is older than this.
    pub stale_after: Duration,
    pub statement_timeout: Duration,
    /// Incremental polls re-read rows this far behind the cursor (commit delays, ties).
    pub overlap: Duration,
    /// Poll at once when this channel is notified.
    pub listen_channel: Option<String>,
    /// One query per record kind, its columns aliased to the record fields.
    pub queries: Vec<(RecordKind, String)>,
}

impl Default for PostgresRecords {
    fn default() -> Self {
        PostgresRecords {
            url_env: "SANDWATCH_DATABASE_URL".into(),
            url_file: None,
            ca_file: None,
            poll_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(300),
            stale_after: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(10),
            overlap: Duration::from_secs(30),
            listen_channel: None,
            queries: Vec::new(),
        }
    }
}

impl PostgresRecords {
    /// The record kinds its queries read.
    pub fn kinds(&self) -> Vec<RecordKind> {
        self.queries.iter().map(|(k, _)| *k).collect()
    }
}

impl RecordsSettings for PostgresRecords {
    fn kinds(&self) -> Vec<(RecordKind, String)> {
        self.queries
            .iter()
            .map(|(k, _)| (*k, format!("records.postgres.queries.{}", k.as_str())))
            .collect()
    }

    fn warnings(&self, profile: &Profile, w: &mut Validator<'_>) {
        // An absence must not outlive the moment the records behind it become untrusted: the
        // source is reported stale only stale_after after its last good poll, which came up
        // to a poll interval after the change.
        let bound = self.stale_after + self.poll_interval;
        if profile.grace.absence <= bound {
            w.err(
                "grace.absence",
                format!(
                    "{:?} is not longer than records.postgres.stale_after + poll_interval ({bound:?}): an absence may be judged on records that have already gone stale",
                    profile.grace.absence
                ),
            );
        }
        let Some((scope, consequence)) = unplaced(profile) else {
            return;
        };
        for (kind, query) in &self.queries {
            if *kind == RecordKind::Sandbox || query.to_lowercase().contains("namespace") {
                continue;
            }
            w.err(
                &format!("records.postgres.queries.{}", kind.as_str()),
                format!(
                    "{scope} and this query selects no namespace column: {consequence}, or select the namespace AS namespace"
                ),
            );
        }
    }

    fn files(&self) -> Vec<(String, std::path::PathBuf)> {
        [("url_file", &self.url_file), ("ca_file", &self.ca_file)]
            .into_iter()
            .filter_map(|(field, file)| Some((format!("records.postgres.{field}"), file.clone()?)))
            .collect()
    }
}

impl Spec {
    /// Validates the spec; `v` is at `records.postgres`.
    pub fn validate(self, v: &mut Validator<'_>) -> PostgresRecords {
        let d = PostgresRecords::default();
        let queries = queries(self.queries.unwrap_or_default(), v);
        let channel = self.listen_channel.filter(|c| !c.is_empty());
        if let Some(c) = &channel {
            let ok = c
                .chars()
                .next()
                .is_some_and(|f| f.is_ascii_lowercase() || f == '_')
                && c.chars()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_')
                && c.len() <= 63;
            if !ok {
                v.err(
                    "listen_channel",
                    format!("{c:?} is not a plain lowercase SQL identifier"),
                );
            }
        }
        let poll_interval = v.duration("poll_interval", self.poll_interval, d.poll_interval);
        if poll_interval.is_zero() {
            v.err("poll_interval", "must be more than zero");
        }
        let statement_timeout = v.duration(
            "statement_timeout",
            self.statement_timeout,
            d.statement_timeout,
        );
        if statement_timeout.is_zero() {
            v.err(
                "statement_timeout",
                "must be more than zero (it also bounds how long sandwatch waits on the database)",
            );
        } else if statement_timeout.as_millis() > i32::MAX as u128 {
            v.err(
                "statement_timeout",
                format!(
                    "{statement_timeout:?} is more than PostgreSQL accepts (2147483647ms, about 24 days)"
                ),
            );
        }
        PostgresRecords {
            url_env: self.url_env.unwrap_or(d.url_env),
            url_file: self.url_file.map(Into::into),
            ca_file: self.ca_file.map(Into::into),
            poll_interval,
            resync_interval: v.duration("resync_interval", self.resync_interval, d.resync_interval),
            stale_after: v.duration("stale_after", self.stale_after, d.stale_after),
            statement_timeout,
            overlap: v.duration("overlap", self.overlap, d.overlap),
            listen_channel: channel,
            queries,
        }
    }
}

fn queries(q: QueriesSpec, v: &mut Validator<'_>) -> Vec<(RecordKind, String)> {
    let mut out = Vec::new();
    for (kind, text) in [
        (RecordKind::Session, q.session),
        (RecordKind::Execution, q.execution),
        (RecordKind::Sandbox, q.sandbox),
    ] {
        match text {
            Some(t) if t.trim().is_empty() => {
                v.err(&format!("queries.{}", kind.as_str()), "empty query")
            }
            Some(t) => out.push((kind, t.trim().trim_end_matches(';').to_string())),
            None => {}
        }
    }
    if out.is_empty() {
        v.err(
            "queries",
            "no query: give at least one of session, execution, sandbox, each selecting columns aliased to id, state (and namespace, pod, session, sandbox, attempt, updated_at, deadline)",
        );
    }
    out
}
