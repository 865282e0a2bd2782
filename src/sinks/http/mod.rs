//! The HTTP endpoints: health, readiness, the open findings, and metrics.
//!
//! Sits at the end of the live flow: the engine task publishes a [`Snapshot`] (open findings
//! and source health) after each change that alters them; these handlers only read the latest
//! snapshot and the metrics registry, so a slow client never holds up the engine.
//!
//! - `GET /healthz`: the process is alive (always 200).
//! - `GET /readyz`: 200 when every configured source is synced and fresh, else 503; the JSON
//!   body says which sources are not.
//! - `GET /api/v1/findings[?kind=&namespace=&profile=]`: the open findings with their
//!   evidence. Per-entity detail (pod, session, execution ids) lives here, not in metrics.
//! - `GET /api/v1/explain?pod=NS/NAME|session=|execution=|sandbox=`: why a finding is, or
//!   is not, open for one subject (see [`explain`]).
//! - `GET /metrics`: Prometheus / OpenMetrics text.
//! - `GET /`: the status page, for a person (see [`page`]).

pub mod explain;
pub mod page;
pub mod serve;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::view::{About, FindingView, RemediationView, Snapshot};
use crate::sinks::metrics::Exposition;
use crate::util::time::Ts;

#[derive(Clone)]
pub(crate) struct AppState {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    registry: Arc<Registry>,
    /// Pages of findings (API and status page) are built one at a time: however many
    /// clients ask, they take one core at most, and the probes keep the rest.
    pages: Arc<tokio::sync::Semaphore>,
    status: Status,
}

/// What the status page shows besides the snapshot.
#[derive(Clone)]
pub struct Status {
    pub about: About,
    /// Remediation's state per finding, as its controller publishes it.
    pub remediation: watch::Receiver<Arc<RemediationView>>,
    /// Where `/api/v1/explain` asks the engine task; `None`: not served.
    pub explain: Option<explain::Asker>,
}

pub fn router(
    snapshot: watch::Receiver<Arc<Snapshot>>,
    registry: Arc<Registry>,
    status: Status,
) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/explain", get(explain::handler))
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                "no such path: see / for what sandwatch serves",
            )
        })
        .route("/metrics", get(metrics))
        .with_state(AppState {
            snapshot,
            registry,
            pages: Arc::new(tokio::sync::Semaphore::new(1)),
            status,
        })
}

#[derive(Serialize)]
struct SourceView<'a> {
    name: &'a str,
    feeds: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    synced: bool,
    fresh: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    not_ready: Vec<&'a str>,
    sources: Vec<SourceView<'a>>,
    /// Per profile, the rules that run and those that do not (a required source is missing).
    rules: std::collections::BTreeMap<&'a str, RulesView>,
    pods: usize,
    records: usize,
}

#[derive(Serialize, Default)]
struct RulesView {
    running: Vec<FindingKind>,
    off: Vec<FindingKind>,
}

async fn readyz(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    let not_ready: Vec<&str> = snap
        .sources
        .iter()
        .filter(|s| !s.healthy())
        .map(|s| s.name.as_str())
        .collect();
    let ready = !snap.sources.is_empty() && not_ready.is_empty();
    let body = Readiness {
        ready,
        not_ready,
        sources: snap
            .sources
            .iter()
            .map(|s| SourceView {
                name: &s.name,
                feeds: s.feeds.iter().map(|f| f.as_str()).collect(),
                namespace: s.namespace.as_deref(),
                synced: s.synced,
                fresh: s.fresh,
                error: s.error.as_deref(),
            })
            .collect(),
        rules: rules_by_profile(&snap),
        pods: snap.pods,
        records: snap.records,
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[derive(Serialize)]
struct FindingsBody<'a> {
    /// How many open findings match, over every page.
    count: usize,
    findings: Vec<FindingView<'a>>,
    /// The cursor of the next page, if there is one.
    next: Option<String>,
}

/// A page holds this many findings unless `limit` says otherwise, and never more than
/// [`MAX_LIMIT`].
const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5000;

/// What `/api/v1/findings` selects.
#[derive(Default)]
struct Selection {
    kinds: Vec<FindingKind>,
    namespace: Option<String>,
    profile: Option<String>,
    pod: Option<String>,
    session: Option<String>,
    execution: Option<String>,
    reason: Option<String>,
    limit: usize,
    /// Findings after this one (by id, that is in the order they opened).
    after: u64,
}

impl Selection {
    fn parse(pairs: Vec<(String, String)>) -> Result<Selection, String> {
        let mut s = Selection {
            limit: DEFAULT_LIMIT,
            ..Selection::default()
        };
        for (key, value) in pairs {
            match key.as_str() {
                "kind" => read_kinds(&value, &mut s.kinds)?,
                "namespace" => s.namespace = Some(value),
                "profile" => s.profile = Some(value),
                "pod" => s.pod = Some(value),
                "session" => s.session = Some(value),
                "execution" => s.execution = Some(value),
                "reason" => s.reason = Some(value),
                "limit" => {
                    s.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            format!("limit: {value:?} is not a number from 1 to {MAX_LIMIT}")
                        })?;
                }
                "cursor" => {
                    s.after = value
                        .parse()
                        .map_err(|_| format!("cursor: {value:?} is not a cursor this API gave"))?;
                }
                other => {
                    return Err(format!(
                        "{other:?} is not a parameter of /api/v1/findings (kind, namespace, profile, pod, session, execution, reason, limit, cursor)"
                    ));
                }
            }
        }
        Ok(s)
    }

    fn takes(&self, f: &OpenFinding) -> bool {
        let d = &f.finding;
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        (self.kinds.is_empty() || self.kinds.contains(&d.kind))
            && is(&self.namespace, d.namespace.as_deref())
            && is(&self.profile, Some(&d.profile))
            && is(&self.pod, d.pod.as_deref())
            && is(&self.session, d.session.as_deref())
            && is(&self.execution, d.execution.as_deref())
            && is(&self.reason, Some(&d.reason))
    }
}

/// Per profile, the rules that run and those that do not (readiness and the status page).
fn rules_by_profile(snap: &Snapshot) -> std::collections::BTreeMap<&str, RulesView> {
    let mut by: std::collections::BTreeMap<&str, RulesView> = Default::default();
    for (profile, kind, on) in &snap.rules {
        let v = by.entry(profile).or_default();
        if *on { &mut v.running } else { &mut v.off }.push(*kind);
    }
    by
}

/// Reads `kind=a,b` (the parameter may also be given several times) into `kinds`; an unknown
/// kind is an error naming it and the kinds there are.
fn read_kinds(value: &str, kinds: &mut Vec<FindingKind>) -> Result<(), String> {
    for k in value.split(',').filter(|k| !k.is_empty()) {
        kinds.push(FindingKind::parse(k).ok_or_else(|| {
            let all: Vec<&str> = FindingKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("kind: {k:?} is not a finding kind ({})", all.join(", "))
        })?);
    }
    Ok(())
}

/// An error, as every error of the API is answered: JSON naming what was wrong.
fn json_error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn findings(
    State(s): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = query else {
        return json_error(StatusCode::BAD_REQUEST, "the query string cannot be read");
    };
    let selection = match Selection::parse(pairs) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(_turn) = s.pages.acquire().await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let snap = s.snapshot.borrow().clone();
    // Selecting and encoding a large page is CPU work: it runs on the blocking pool, so that
    // the async workers stay free to answer /healthz and /readyz whatever the load.
    let encoded = tokio::task::spawn_blocking(move || {
        let now = Ts::now().max(snap.at);
        // The snapshot is in the order findings opened (by id): a cursor is the last id seen.
        let matching: Vec<&OpenFinding> = snap
            .findings
            .iter()
            .filter(|f| selection.takes(f))
            .collect();
        let page: Vec<&OpenFinding> = matching
            .iter()
            .filter(|f| f.id > selection.after)
            .take(selection.limit)
            .copied()
            .collect();
        let next = (page.len() == selection.limit)
            .then(|| page.last().map(|f| f.id))
            .flatten()
            .filter(|last| matching.iter().any(|f| f.id > *last))
            .map(|id| id.to_string());
        serde_json::to_vec(&FindingsBody {
            count: matching.len(),
            findings: page.into_iter().map(|f| FindingView::new(f, now)).collect(),
            next,
        })
    })
    .await;
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        _ => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the findings failed",
        ),
    }
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let format = Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match crate::sinks::metrics::encode(&s.registry, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// The status page, rendered off the latest snapshot on the blocking pool (one at a time, as
/// the findings API's pages are).
async fn index(
    State(s): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = query else {
        return page_error("the query string cannot be read");
    };
    let q = match page::PageQuery::parse(pairs) {
        Ok(q) => q,
        Err(e) => return page_error(&e.to_string()),
    };
    let Ok(_turn) = s.pages.acquire().await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let snap = s.snapshot.borrow().clone();
    let remediation = s.status.remediation.borrow().clone();
    let about = s.status.about.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let now = Ts::now().max(snap.at);
        page::render(&snap, &about, &remediation, &q, now)
    })
    .await;
    match rendered {
        Ok(h) => Html(h).into_response(),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering the page failed",
        ),
    }
}

/// A bad page URL, answered for a person.
fn page_error(message: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sandwatch: bad request</title></head>\
         <body><h1>Bad request</h1><p id=\"error\">{}</p><p><a href=\"/\">the status page</a></p></body></html>",
        page::escape(message)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}
