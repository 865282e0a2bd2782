//! The ingest API: records pushed over HTTP, for sandboxes outside Kubernetes.
//!
//! `POST /api/v1/records` takes a JSON array of normalized records, or NDJSON (one per line),
//! with `Authorization: Bearer <token>`. Pushed records follow the model of Alertmanager's
//! clients, so that several replicas agree and a restart loses nothing for long:
//! - a provider sends every report to **every replica** (through a headless Service), never to
//!   one behind a load balancer;
//! - `?snapshot=true` sends the full set of a profile's records (of the kinds it takes from
//!   here): it replaces whatever was pushed before, so what it leaves out is gone. The source is
//!   *synced* once a snapshot has arrived (only then is a missing pushed record evidence), and
//!   *fresh* while reports keep coming within the profile's `stale_after`;
//! - a record may carry `expires_at` (or the profile sets `expire_after`): unless pushed again
//!   by then, it is removed;
//! - each profile holds at most `max_records` pushed records; more are refused.
//!
//! What reaches the server is bounded before it costs anything: the token is checked from the
//! headers, before the body is read; few bodies are read at once, each within a size limit and
//! a deadline; the answer lists the first rejections and counts the rest. The token is compared
//! by its SHA-256 digest, in constant time, and re-read when its file changes (rotation; see
//! `token.rs`).
//!
//! ```json
//! {"accepted": 2, "rejected": [{"index": 1, "reason": "unknown_state", "error": "record.state: ..."}], "rejected_total": 1}
//! ```

pub mod config;
mod start;
mod token;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
pub use config::IngestSettings;
use serde::{Deserialize, Serialize};
pub use start::StartError;
pub use token::Token;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::core::engine::Change;
use crate::core::world::{Feed, SourceStatus};
use crate::model::profile::{ProfileId, Profiles};
use crate::model::record::{InputError, RecordChange, RecordDoc, RecordKind};
use crate::model::source::SourceCounters;
use crate::util::time::Ts;

pub const SOURCE: &str = "ingest";

/// At most this many rejections are listed in an answer; the rest are counted.
const LISTED_REJECTIONS: usize = 100;
/// At most this many request bodies are read at once.
const CONCURRENT_BODIES: usize = 4;

/// What one profile pushed, as the source holds it.
#[derive(Default)]
struct Pushed {
    /// Each pushed record's identity, and when it expires.
    records: HashMap<(RecordKind, Option<String>, String), Option<Ts>>,
    /// A snapshot has arrived: absence is evidence.
    synced: bool,
    last_report: Option<Instant>,
    /// (synced, fresh) as last reported to the engine.
    reported: Option<(bool, bool)>,
}

/// The ingest API and the state of what was pushed to it.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    profiles: Arc<Profiles>,
    /// The profiles that take pushed records, and how.
    settings: BTreeMap<ProfileId, IngestSettings>,
    changes: mpsc::Sender<(Ts, Change)>,
    token: Token,
    max_body: usize,
    body_timeout: Duration,
    bodies: Semaphore,
    counters: Arc<dyn SourceCounters>,
    pushed: Mutex<BTreeMap<ProfileId, Pushed>>,
}

impl Ingest {
    /// The ingest API for the profiles `settings` names.
    pub fn new(
        profiles: Arc<Profiles>,
        settings: BTreeMap<ProfileId, IngestSettings>,
        changes: mpsc::Sender<(Ts, Change)>,
        token: Token,
        (max_body, body_timeout): (usize, Duration),
        counters: Arc<dyn SourceCounters>,
    ) -> Ingest {
        let pushed = settings.keys().map(|id| (*id, Pushed::default())).collect();
        Ingest {
            inner: Arc::new(Inner {
                profiles,
                settings,
                changes,
                token,
                max_body,
                body_timeout,
                bodies: Semaphore::new(CONCURRENT_BODIES),
                counters,
                pushed: Mutex::new(pushed),
            }),
        }
    }

    /// The name of the source that feeds a profile (`ingest/PROFILE`).
    pub fn source_name(&self, profile: ProfileId) -> String {
        crate::sources::name(SOURCE, &self.inner.profiles.get(profile).name, None)
    }

    fn status(&self, profile: ProfileId, synced: bool, fresh: bool) -> Change {
        let settings = &self.inner.settings[&profile];
        let error = if !synced {
            Some("no snapshot pushed yet (POST /api/v1/records?snapshot=true)".to_string())
        } else if !fresh {
            Some(format!(
                "no report for {:?} (records.ingest.stale_after)",
                settings.stale_after
            ))
        } else {
            None
        };
        Change::Source(SourceStatus {
            synced,
            fresh,
            error,
            ..SourceStatus::new(
                self.source_name(profile),
                Some(profile),
                settings.kinds.iter().map(|k| Feed::of_record(*k)).collect(),
                false,
            )
        })
    }

    /// The statuses to start with: every profile's source, not synced until its snapshot.
    pub fn statuses(&self) -> Vec<Change> {
        let pushed = self.inner.pushed.lock().unwrap_or_else(|e| e.into_inner());
        pushed
            .keys()
            .map(|p| self.status(*p, false, false))
            .collect()
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v1/records", post(ingest))
            .with_state(self)
    }

    /// Expires records and reports staleness, every second, until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            for change in self.sweep(Ts::now(), Instant::now()) {
                if self.inner.changes.send((Ts::now(), change)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The deletions of expired records, and the status changes freshness calls for.
    fn sweep(&self, now: Ts, instant: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        let mut pushed = self.inner.pushed.lock().unwrap_or_else(|e| e.into_inner());
        for (profile, p) in pushed.iter_mut() {
            let expired: Vec<_> = p
                .records
                .iter()
                .filter(|(_, e)| e.is_some_and(|e| e <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for (kind, namespace, id) in expired {
                p.records.remove(&(kind, namespace.clone(), id.clone()));
                out.push(Change::Record(RecordChange::Delete {
                    kind,
                    profile: *profile,
                    namespace,
                    id,
                }));
            }
            if p.records.capacity() > 1024 && p.records.len() * 4 < p.records.capacity() {
                p.records.shrink_to(p.records.len() * 2);
            }
            let stale_after = self.inner.settings[profile].stale_after;
            let fresh = p
                .last_report
                .is_some_and(|t| instant.duration_since(t) < stale_after);
            let now_state = (p.synced, fresh);
            if p.reported != Some(now_state) {
                if p.reported.is_some_and(|(_, was_fresh)| was_fresh) && !fresh {
                    warn!(source = %self.source_name(*profile), "no records pushed for {stale_after:?}: reporting the source stale; findings that rest on it hold");
                }
                p.reported = Some(now_state);
                out.push(self.status(*profile, now_state.0, now_state.1));
            }
        }
        out
    }
}

#[derive(Serialize)]
struct Rejected {
    index: usize,
    reason: &'static str,
    error: String,
}

#[derive(Default, Serialize)]
struct Outcome {
    accepted: usize,
    rejected: Vec<Rejected>,
    /// Every rejection, listed or not.
    rejected_total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotOutcome>,
}

#[derive(Serialize)]
struct SnapshotOutcome {
    profile: String,
    /// Records pushed before that this snapshot left out, now removed.
    removed: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    snapshot: bool,
    profile: Option<String>,
}

fn unauthorized(msg: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// The token of an `Authorization` header, whatever the case of its `Bearer` scheme
/// (RFC 7235: schemes are case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Why a request is refused, before or instead of taking its records.
enum Refused {
    /// No token, or not the token: the answer asks for a bearer token.
    Unauthorized(&'static str),
    /// Too many bodies are being read at once: the answer says to retry in a second.
    Busy,
    /// Anything else: the status and the error.
    Other(StatusCode, String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Unauthorized(msg) => unauthorized(msg),
            Refused::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(serde_json::json!({"error": "too many ingest requests at once; retry"})),
            )
                .into_response(),
            Refused::Other(code, msg) => error(code, msg),
        }
    }
}

/// `POST /api/v1/records`: the answer to one request, its outcome or why it was refused.
async fn ingest(
    State(ingest): State<Ingest>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    match ingest.receive(params, request).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(refused) => refused.into_response(),
    }
}

impl Ingest {
    /// One request, step by step: who is asking, for what, its body, then its records.
    async fn receive(
        &self,
        params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
        request: Request,
    ) -> Result<Outcome, Refused> {
        let inner = &self.inner;
        // Who is asking, from the headers alone: no body is read for a missing or wrong token.
        let Some(token) = bearer(request.headers()) else {
            return Err(Refused::Unauthorized(
                "missing Authorization: Bearer <token>",
            ));
        };
        if !inner.token.accepts(token) {
            return Err(Refused::Unauthorized("invalid bearer token"));
        }
        let Ok(Query(params)) = params else {
            return Err(Refused::Other(
                StatusCode::BAD_REQUEST,
                "the query takes snapshot=true|false and profile=NAME".into(),
            ));
        };
        let snapshot = self.snapshot_profile(&params)?;
        // Few bodies at once, each bounded in size and in time.
        let Ok(Ok(_permit)) =
            tokio::time::timeout(Duration::from_secs(2), inner.bodies.acquire()).await
        else {
            return Err(Refused::Busy);
        };
        let body = self.body(request).await?;
        let docs = parse(&body).map_err(|e| {
            inner.counters.rejected(SOURCE, e.reason);
            Refused::Other(StatusCode::BAD_REQUEST, e.message)
        })?;
        self.apply(docs, snapshot)
            .await
            .map_err(|()| Refused::Other(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))
    }

    /// The profile a snapshot is of: the one the request names, else the first that takes
    /// pushed records. `None` when the request is no snapshot.
    fn snapshot_profile(&self, params: &Params) -> Result<Option<ProfileId>, Refused> {
        if !params.snapshot {
            return Ok(None);
        }
        let inner = &self.inner;
        let found = match &params.profile {
            Some(name) => inner.profiles.by_name(name),
            None => inner.settings.keys().next().copied(),
        };
        match found {
            Some(id) if inner.settings.contains_key(&id) => Ok(Some(id)),
            _ => Err(Refused::Other(
                StatusCode::BAD_REQUEST,
                format!(
                    "profile: {:?} is not a profile that takes records from the ingest API",
                    params.profile.as_deref().unwrap_or_default()
                ),
            )),
        }
    }

    /// The body of a request, read within its size limit and its deadline.
    async fn body(&self, request: Request) -> Result<axum::body::Bytes, Refused> {
        let inner = &self.inner;
        match tokio::time::timeout(
            inner.body_timeout,
            axum::body::to_bytes(request.into_body(), inner.max_body),
        )
        .await
        {
            Err(_) => Err(Refused::Other(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {:?}", inner.body_timeout),
            )),
            Ok(Err(_)) => Err(Refused::Other(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than {} bytes (--ingest-max-body)",
                    inner.max_body
                ),
            )),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// Validates and applies the records of one request; `Err` when the engine is gone.
    async fn apply(
        &self,
        docs: Vec<Result<RecordDoc, InputError>>,
        snapshot: Option<ProfileId>,
    ) -> Result<Outcome, ()> {
        let inner = &self.inner;
        let now = Ts::now();
        let mut taken = Taken::default();
        {
            let mut pushed = inner.pushed.lock().unwrap_or_else(|e| e.into_inner());
            for (index, doc) in docs.into_iter().enumerate() {
                self.take(&mut pushed, &mut taken, index, doc, snapshot, now);
            }
            for (profile, p) in pushed.iter_mut() {
                if taken.accepted.contains_key(profile) || snapshot == Some(*profile) {
                    p.last_report = Some(Instant::now());
                }
            }
            if let Some(profile) = snapshot {
                self.end_snapshot(&mut pushed, &mut taken, profile);
            }
        }
        self.send(now, taken.changes).await?;
        // The status (synced by a snapshot, fresh by a report) at once, not at the next sweep.
        self.send(now, self.sweep(now, Instant::now())).await?;
        for (profile, n) in taken.accepted {
            inner.counters.pushed(&self.source_name(profile), n);
        }
        Ok(taken.outcome)
    }

    /// Takes in one record of a request: admitted and held, or rejected (and counted).
    fn take(
        &self,
        pushed: &mut BTreeMap<ProfileId, Pushed>,
        taken: &mut Taken,
        index: usize,
        doc: Result<RecordDoc, InputError>,
        snapshot: Option<ProfileId>,
        now: Ts,
    ) {
        let inner = &*self.inner;
        let source = doc
            .as_ref()
            .ok()
            .and_then(|d| inner.profiles.for_record(d.profile.as_deref()))
            .map_or_else(|| SOURCE.to_string(), |p| self.source_name(p));
        let expires_at = doc.as_ref().ok().and_then(|d| d.expires_at);
        let identity = doc.as_ref().ok().and_then(identity_of);
        let result = doc
            .and_then(|d| admit(inner, d, snapshot))
            .and_then(|change| {
                hold(inner, pushed, &change, expires_at, now)?;
                Ok(change)
            });
        match result {
            Ok(change) => taken.accept(change),
            Err(e) => {
                inner.counters.rejected(&source, e.reason);
                taken.reject(index, identity, e);
            }
        }
    }

    /// Ends a snapshot of `profile`: the records it left out are no longer held, the source
    /// is synced, and the engine learns what it listed of each kind.
    fn end_snapshot(
        &self,
        pushed: &mut BTreeMap<ProfileId, Pushed>,
        taken: &mut Taken,
        profile: ProfileId,
    ) {
        let inner = &self.inner;
        let p = pushed
            .get_mut(&profile)
            .expect("a profile that takes pushed records");
        let before = p.records.len();
        p.records.retain(|k, _| taken.listed.contains(k));
        p.synced = true;
        taken.outcome.snapshot = Some(SnapshotOutcome {
            profile: inner.profiles.get(profile).name.to_string(),
            removed: before - p.records.len(),
        });
        for kind in &inner.settings[&profile].kinds {
            let listed = taken.listed_of(*kind);
            taken.changes.push(Change::Listed {
                feed: Feed::of_record(*kind),
                profile,
                namespace: None,
                listed,
            });
        }
    }

    /// Sends changes to the engine, all stamped `now`; `Err` when it is gone.
    async fn send(&self, now: Ts, changes: Vec<Change>) -> Result<(), ()> {
        for change in changes {
            self.inner
                .changes
                .send((now, change))
                .await
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

/// What the records of one request come to, as they are taken in.
#[derive(Default)]
struct Taken {
    outcome: Outcome,
    /// The changes for the engine, in order.
    changes: Vec<Change>,
    /// Records accepted, per profile.
    accepted: BTreeMap<ProfileId, u64>,
    /// Every record the request carries, readable or not: what a snapshot keeps.
    listed: HashSet<(RecordKind, Option<String>, String)>,
}

impl Taken {
    /// A record admitted and held.
    fn accept(&mut self, change: RecordChange) {
        let profile = match &change {
            RecordChange::Upsert(r) => r.profile,
            RecordChange::Delete { profile, .. } => *profile,
        };
        if let RecordChange::Upsert(r) = &change {
            self.listed
                .insert((r.kind, r.namespace.clone(), r.id.clone()));
        }
        *self.accepted.entry(profile).or_default() += 1;
        self.changes.push(Change::Record(change));
        self.outcome.accepted += 1;
    }

    /// The record at `index` rejected: the answer lists the first rejections and counts
    /// them all.
    fn reject(
        &mut self,
        index: usize,
        identity: Option<(RecordKind, Option<String>, String)>,
        e: InputError,
    ) {
        // In a snapshot, a record that is there but unreadable keeps what was known of it:
        // absence is not evidence.
        if let Some(identity) = identity {
            self.listed.insert(identity);
        }
        self.outcome.rejected_total += 1;
        if self.outcome.rejected.len() < LISTED_REJECTIONS {
            self.outcome.rejected.push(Rejected {
                index,
                reason: e.reason,
                error: crate::util::text::clip(&e.message).into_owned(),
            });
        }
    }

    /// The (namespace, id) of every record of `kind` listed, as the engine takes a list.
    fn listed_of(&self, kind: RecordKind) -> HashSet<(String, String)> {
        self.listed
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, ns, id)| (ns.clone().unwrap_or_default(), id.clone()))
            .collect()
    }
}

/// A record's identity (kind, namespace, id), when it names one, whether or not it is valid.
fn identity_of(d: &RecordDoc) -> Option<(RecordKind, Option<String>, String)> {
    Some((
        d.kind.as_deref().and_then(RecordKind::parse)?,
        d.namespace.clone().filter(|n| !n.is_empty()),
        d.id.clone().filter(|i| !i.is_empty())?,
    ))
}

/// Holds a pushed record (within the profile's cap) or forgets a deleted one.
fn hold(
    inner: &Inner,
    pushed: &mut BTreeMap<ProfileId, Pushed>,
    change: &RecordChange,
    expires_at: Option<Ts>,
    now: Ts,
) -> Result<(), InputError> {
    match change {
        RecordChange::Upsert(r) => {
            let Some(limits) = inner.settings.get(&r.profile) else {
                return Err(not_ingested(&inner.profiles, r.profile, r.kind));
            };
            let p = pushed.entry(r.profile).or_default();
            let key = (r.kind, r.namespace.clone(), r.id.clone());
            if !p.records.contains_key(&key) && p.records.len() >= limits.max_records {
                return Err(InputError::new(
                    "over_capacity",
                    format!(
                        "record: profile {:?} already holds {} pushed records (records.ingest.max_records); send a snapshot to replace them",
                        inner.profiles.get(r.profile).name,
                        limits.max_records
                    ),
                ));
            }
            let expiry = expires_at.or_else(|| limits.expire_after.map(|d| now.saturating_add(d)));
            p.records.insert(key, expiry);
        }
        RecordChange::Delete {
            kind,
            profile,
            namespace,
            id,
        } => {
            if let Some(p) = pushed.get_mut(profile) {
                p.records.retain(|(k, ns, i), _| {
                    !(k == kind && i == id && (namespace.is_none() || ns == namespace))
                });
            }
        }
    }
    Ok(())
}

fn not_ingested(profiles: &Profiles, profile: ProfileId, kind: RecordKind) -> InputError {
    InputError::new(
        "not_ingested",
        format!(
            "record.kind: profile {:?} does not take {} records from the ingest API (records.ingest.kinds)",
            profiles.get(profile).name,
            kind.as_str()
        ),
    )
}

/// A JSON array, or NDJSON. A value that is not a record is rejected by its index; a body
/// that is neither form is an error.
fn parse(body: &[u8]) -> Result<Vec<Result<RecordDoc, InputError>>, InputError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| InputError::new("invalid_json", "the body is not UTF-8"))?;
    let values = crate::util::json::values(text)
        .map_err(|e| InputError::new("invalid_json", e.to_string()))?;
    Ok(values
        .into_iter()
        .map(|v| {
            let raw = v.map_err(|e| InputError::new("invalid_json", e.to_string()))?;
            // The same decoder, and so the same policy, as replay files.
            let mut de = serde_json::Deserializer::from_str(raw.get());
            serde_path_to_error::deserialize::<_, RecordDoc>(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let msg = strip_position(&e.into_inner().to_string());
                InputError::new("invalid_value", format!("record.{path}: {msg}"))
            })
        })
        .collect())
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Checks the record's profile takes its kind from the ingest API (and, in a snapshot, is
/// the snapshot's profile), then validates it.
fn admit(
    inner: &Inner,
    doc: RecordDoc,
    snapshot: Option<ProfileId>,
) -> Result<RecordChange, InputError> {
    let profiles = &*inner.profiles;
    let kind = doc.kind.as_deref().and_then(RecordKind::parse);
    let profile = profiles.for_record(doc.profile.as_deref());
    if let (Some(kind), Some(profile)) = (kind, profile) {
        let p = profiles.get(profile);
        if inner
            .settings
            .get(&profile)
            .is_none_or(|s| !s.kinds.contains(&kind))
        {
            return Err(not_ingested(profiles, profile, kind));
        }
        if let Some(s) = snapshot
            && s != profile
        {
            return Err(InputError::new(
                "unknown_profile",
                format!(
                    "record.profile: a snapshot of profile {:?} cannot carry records of profile {:?}",
                    profiles.get(s).name,
                    p.name
                ),
            ));
        }
    }
    let change = doc.validate(profiles)?;
    if snapshot.is_some() && matches!(change, RecordChange::Delete { .. }) {
        return Err(InputError::new(
            "invalid_value",
            "record.deleted: a snapshot lists what exists; leave a deleted record out of it",
        ));
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_ndjson_parse_value_by_value() {
        let a = parse(br#"[{"kind":"sandbox","id":"a","state":"running"}, 5]"#).unwrap();
        assert!(a[0].is_ok());
        assert!(a[1].as_ref().unwrap_err().message.starts_with("record"));
        let d =
            parse(br#"[{"kind":"sandbox","id":"a","state":"running","state":"dead"}]"#).unwrap();
        let e = d[0].as_ref().unwrap_err();
        assert!(
            e.message.contains("duplicate field `state`"),
            "{}",
            e.message
        );
        let t = parse(
            br#"{"kind":"sandbox","id":"a","state":"x","updated_at":"9999-12-31T00:00:00Z"}"#,
        )
        .unwrap();
        let e = t[0].as_ref().unwrap_err();
        assert!(
            e.message.contains("record.updated_at") && e.message.contains("far-future"),
            "{}",
            e.message
        );
        let n = parse(b"{\"kind\":\"sandbox\",\"id\":\"a\",\"state\":\"running\"}\n\nnot json\n")
            .unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].as_ref().unwrap_err().reason, "invalid_json");
        assert!(parse(b"[{").is_err());
    }

    #[test]
    fn tokens_compare_by_digest_and_schemes_by_any_case() {
        let t = Token::from("secret");
        assert!(t.accepts("secret"));
        assert!(!t.accepts("secreT") && !t.accepts("s") && !t.accepts("secret-and-more"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bEaReR  secret ".parse().unwrap());
        assert_eq!(bearer(&h), Some("secret"));
        h.insert(header::AUTHORIZATION, "Basic c2VjcmV0".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
