//! The PostgreSQL source's queries and rows (see the parent module): how a profile's query is
//! wrapped for full loads and incremental polls, how a row it returns becomes a record, and
//! how bad rows are remembered so that each is logged and counted once per change. Plain data
//! and pure functions, but for preparing the statements.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::model::profile::Profiles;
use crate::model::record::{InputError, RecordChange, RecordDoc, RecordKind};
use crate::util::time::Ts;

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

/// A query wrapped for full loads and, when it has `updated_at`, incremental polls.
pub(super) struct Prepared {
    pub(super) kind: RecordKind,
    full: Statement,
    incremental: Option<Statement>,
}

impl Prepared {
    pub(super) async fn new(
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
        let base = wrapped(query, &columns);
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

    /// The statement to run and its cursor: the incremental one from `since` when there is
    /// one and a cursor, else the full load (no cursor).
    pub(super) fn statement(&self, since: Option<i64>) -> (&Statement, Option<i64>) {
        match (&self.incremental, since) {
            (Some(stmt), Some(since)) => (stmt, Some(since)),
            _ => (&self.full, None),
        }
    }
}

/// A profile's query, wrapped to return the record fields in order, whichever of them its
/// `columns` have (the others are `NULL`).
fn wrapped(query: &str, columns: &HashSet<&str>) -> String {
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
    format!("SELECT {} FROM ({query}) AS q", select.join(", "))
}

/// One row of a wrapped query, as it was read: times in ms since the epoch.
pub(super) struct Row {
    pub(super) id: Option<String>,
    state: Option<String>,
    pub(super) namespace: Option<String>,
    pod: Option<String>,
    session: Option<String>,
    sandbox: Option<String>,
    attempt: Option<i64>,
    updated_at: Option<i64>,
    deadline: Option<i64>,
}

impl Row {
    /// The fields of a row, in [`FIELDS`] order.
    pub(super) fn read(row: &tokio_postgres::Row) -> Row {
        Row {
            id: row.get(0),
            state: row.get(1),
            namespace: row.get(2),
            pod: row.get(3),
            session: row.get(4),
            sandbox: row.get(5),
            attempt: row.get(6),
            updated_at: row.get(7),
            deadline: row.get(8),
        }
    }

    /// What the row says, to tell a bad row read again from a bad row that changed.
    pub(super) fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.id,
            &self.state,
            &self.namespace,
            &self.pod,
            &self.session,
            &self.sandbox,
        )
            .hash(&mut h);
        (self.attempt, self.updated_at, self.deadline).hash(&mut h);
        h.finish()
    }

    /// How the row is remembered when it is bad: by its id, or, without one, by what it says.
    pub(super) fn key(&self) -> RowKey {
        match self.id.as_deref() {
            None | Some("") => RowKey::Unnamed(self.fingerprint()),
            Some(id) => RowKey::Id(id.to_string()),
        }
    }

    /// The record the row describes, of `kind` for the profile named `profile`, validated
    /// like every other input.
    pub(super) fn record(
        &self,
        kind: RecordKind,
        profile: &str,
        profiles: &Profiles,
    ) -> Result<RecordChange, InputError> {
        let updated_at = time(self.updated_at, "updated_at")?;
        let deadline = time(self.deadline, "deadline")?;
        let attempt = match self.attempt {
            Some(a) if a < 0 => {
                return Err(InputError::new(
                    "invalid_value",
                    format!("record.attempt: {a} is negative"),
                ));
            }
            a => a.map(|a| a as u64),
        };
        RecordDoc {
            kind: Some(kind.as_str().to_string()),
            id: self.id.clone(),
            state: self.state.clone(),
            profile: Some(profile.to_string()),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            session: self.session.clone(),
            sandbox: self.sandbox.clone(),
            attempt,
            updated_at,
            deadline,
            expires_at: None,
            deleted: false,
        }
        .validate(profiles)
    }
}

/// A time column, within the same bounds on times as every other input.
fn time(ms: Option<i64>, field: &str) -> Result<Option<Ts>, InputError> {
    ms.map(|ms| {
        Ts::from_millis(ms)
            .map_err(|e| InputError::new("invalid_value", format!("record.{field}: {e}")))
    })
    .transpose()
}

/// How a bad row is remembered: by its id, or, without one, by what it says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum RowKey {
    Id(String),
    Unnamed(u64),
}

/// Bad rows already logged and counted, with what they said then.
#[derive(Default)]
pub(super) struct Rejections(HashMap<(RecordKind, RowKey), u64>);

impl Rejections {
    /// A row of `kind` with this id was read well: it is bad no more.
    pub(super) fn forget(&mut self, kind: RecordKind, id: String) {
        self.0.remove(&(kind, RowKey::Id(id)));
    }

    /// Remembers a bad row and what it says: whether that is news (a new bad row, or one
    /// that changed), to be logged and counted.
    pub(super) fn news(&mut self, kind: RecordKind, key: RowKey, fingerprint: u64) -> bool {
        self.0.insert((kind, key), fingerprint) != Some(fingerprint)
    }

    /// After a full load of `kind`: forgets its bad rows that the load no longer listed, so
    /// the map stays as small as the table's bad rows.
    pub(super) fn keep_only(&mut self, kind: RecordKind, seen: &HashSet<RowKey>) {
        self.0
            .retain(|(k, key), _| *k != kind || seen.contains(key));
    }
}

/// What one query's poll has read so far.
pub(super) struct Reading {
    /// Rows read, good or bad.
    pub(super) rows: u64,
    /// On a full load, the (namespace, id) of every row that exists, readable or not.
    pub(super) listed: Option<HashSet<(String, String)>>,
    /// Bad rows seen in this poll.
    pub(super) rejected: HashSet<RowKey>,
}

impl Reading {
    /// A poll that lists every row (a full load), or only what changed.
    pub(super) fn new(complete: bool) -> Reading {
        Reading {
            rows: 0,
            listed: complete.then(HashSet::new),
            rejected: HashSet::new(),
        }
    }

    /// Whether the poll lists every row of its query.
    pub(super) fn complete(&self) -> bool {
        self.listed.is_some()
    }

    /// A row read well, as the change it makes.
    pub(super) fn accepted(&mut self, change: &RecordChange) {
        if let (Some(l), RecordChange::Upsert(r)) = (self.listed.as_mut(), change) {
            l.insert((r.namespace.clone().unwrap_or_default(), r.id.clone()));
        }
    }

    /// A bad row: it exists, so what was known of it stays (absence is not evidence).
    pub(super) fn rejected(&mut self, row: &Row) {
        let id = row.id.clone().unwrap_or_default();
        if let Some(l) = self.listed.as_mut()
            && !id.is_empty()
        {
            l.insert((row.namespace.clone().unwrap_or_default(), id));
        }
        self.rejected.insert(row.key());
    }
}
