//! The ingest API: records pushed over HTTP, for sandboxes outside Kubernetes.
//!
//! `POST /api/v1/records` takes a JSON array of normalized records, or NDJSON (one per line),
//! with `Authorization: Bearer <token>` (the token is read from a file). Each record is
//! validated on its own: a bad one is rejected with its index and reason while the good ones
//! are applied. The response says how many were accepted:
//!
//! ```json
//! {"accepted": 2, "rejected": [{"index": 1, "reason": "unknown_state", "error": "record.state: ..."}]}
//! ```
//!
//! Bodies are size-limited (413 beyond the limit). A profile takes from here only the record
//! kinds its `records.ingest.kinds` names. Pushed records need no list to be trusted, so this
//! source is synced from the start.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::engine::Change;
use crate::profile::{ProfileId, Profiles};
use crate::record::{InputError, RecordChange, RecordDoc, RecordKind};
use crate::sources::SourceCounters;
use crate::time::Ts;
use crate::world::{Feed, SourceStatus};

pub const SOURCE: &str = "ingest";

#[derive(Clone)]
pub struct Ingest {
    pub profiles: Arc<Profiles>,
    pub changes: mpsc::Sender<(Ts, Change)>,
    pub token: Arc<str>,
    pub max_body: usize,
    pub counters: Arc<dyn SourceCounters>,
}

/// The record kinds some profile takes from the ingest API.
pub fn kinds(profiles: &Profiles) -> Vec<RecordKind> {
    let mut kinds: Vec<RecordKind> = profiles
        .iter()
        .flat_map(|(_, p)| p.records.ingest.iter().copied())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

impl Ingest {
    /// The name of the source that feeds a profile (`ingest/PROFILE`).
    pub fn source_name(&self, profile: ProfileId) -> String {
        crate::sources::name(SOURCE, &self.profiles.get(profile).name, None)
    }

    /// The source's status for each profile it feeds: always synced (nothing to list).
    pub fn statuses(&self) -> Vec<Change> {
        self.profiles
            .iter()
            .filter(|(_, p)| !p.records.ingest.is_empty())
            .map(|(id, p)| {
                Change::Source(SourceStatus::new(
                    crate::sources::name(SOURCE, &p.name, None),
                    Some(id),
                    p.records
                        .ingest
                        .iter()
                        .map(|k| Feed::of_record(*k))
                        .collect(),
                    true,
                ))
            })
            .collect()
    }

    pub fn router(self) -> Router {
        let limit = self.max_body;
        Router::new()
            .route("/api/v1/records", post(ingest))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }
}

#[derive(Serialize)]
struct Rejected {
    index: usize,
    reason: &'static str,
    error: String,
}

#[derive(Serialize)]
struct Outcome {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// Compares without revealing, through timing, how much of the token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(msg: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("{msg}\n"),
    )
        .into_response()
}

async fn ingest(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized("missing Authorization: Bearer <token>");
    };
    let token = auth.strip_prefix("Bearer ").unwrap_or_default().trim();
    if !same(token.as_bytes(), ingest.token.as_bytes()) {
        return unauthorized("invalid bearer token");
    }
    let docs: Vec<Result<RecordDoc, InputError>> = match parse(&body) {
        Ok(d) => d,
        Err(e) => {
            ingest.counters.rejected(SOURCE, e.reason);
            return (StatusCode::BAD_REQUEST, format!("{}\n", e.message)).into_response();
        }
    };
    let mut outcome = Outcome {
        accepted: 0,
        rejected: Vec::new(),
    };
    let mut pushed: std::collections::BTreeMap<ProfileId, u64> = Default::default();
    for (index, doc) in docs.into_iter().enumerate() {
        // Rejections count under the profile's source when the record names a known one.
        let source = doc
            .as_ref()
            .ok()
            .and_then(|d| ingest.profiles.for_record(d.profile.as_deref()))
            .map_or_else(|| SOURCE.to_string(), |p| ingest.source_name(p));
        match doc.and_then(|d| admit(&ingest.profiles, d)) {
            Ok(change) => {
                let profile = match &change {
                    RecordChange::Upsert(r) => r.profile,
                    RecordChange::Delete { profile, .. } => *profile,
                };
                *pushed.entry(profile).or_default() += 1;
                if ingest
                    .changes
                    .send((Ts::now(), Change::Record(change)))
                    .await
                    .is_err()
                {
                    return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
                }
                outcome.accepted += 1;
            }
            Err(e) => {
                ingest.counters.rejected(&source, e.reason);
                outcome.rejected.push(Rejected {
                    index,
                    reason: e.reason,
                    error: e.message,
                });
            }
        }
    }
    for (profile, n) in pushed {
        ingest.counters.pushed(&ingest.source_name(profile), n);
    }
    Json(outcome).into_response()
}

/// A JSON array, or NDJSON. A value that is not a record is rejected by its index; a body
/// that is neither form is an error.
fn parse(body: &[u8]) -> Result<Vec<Result<RecordDoc, InputError>>, InputError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| InputError::new("invalid_json", "the body is not UTF-8"))?;
    let values = crate::json::values(text).map_err(|e| InputError::new("invalid_json", e))?;
    Ok(values
        .into_iter()
        .map(|v| {
            let raw = v.map_err(|e| InputError::new("invalid_json", e))?;
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

/// Checks the record's profile takes its kind from the ingest API, then validates it.
fn admit(profiles: &Profiles, doc: RecordDoc) -> Result<RecordChange, InputError> {
    let kind = doc.kind.as_deref().and_then(RecordKind::parse);
    let profile = profiles.for_record(doc.profile.as_deref());
    if let (Some(kind), Some(profile)) = (kind, profile) {
        let p = profiles.get(profile);
        if !p.records.ingest.contains(&kind) {
            return Err(InputError::new(
                "not_ingested",
                format!(
                    "record.kind: profile {:?} does not take {} records from the ingest API (records.ingest.kinds)",
                    p.name,
                    kind.as_str()
                ),
            ));
        }
    }
    doc.validate(profiles)
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
        assert!(
            same(b"secret", b"secret") && !same(b"secret", b"secreT") && !same(b"s", b"secret")
        );
    }
}
