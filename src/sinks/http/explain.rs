//! `GET /api/v1/explain?pod=NS/NAME | session= | execution= | sandbox= [&profile=&namespace=]`:
//! why a finding is, or is not, open for one subject (see [`crate::core::explain`]).
//!
//! Part of the HTTP sink. The explanation needs the engine itself, so the question goes to
//! the engine task over a small bounded queue and the answer comes back on a oneshot; a full
//! queue or a slow answer is a 503, never a wait that holds the server. The source times and
//! remediation's state are added here from the snapshot and the controller's view.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use tokio::sync::{mpsc, oneshot};

use super::{AppState, json_error};
use crate::core::explain::{self, ExplainError, Explanation};
use crate::model::view::ActionState;

/// One question to the engine task, and where its answer goes.
pub type Question = (
    explain::Query,
    oneshot::Sender<Result<Explanation, ExplainError>>,
);

/// How the HTTP server asks the engine task.
pub type Asker = mpsc::Sender<Question>;

/// Questions waiting for the engine task at most.
pub const QUEUE: usize = 8;
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub(super) async fn handler(
    State(s): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(pairs)) = query else {
        return json_error(StatusCode::BAD_REQUEST, "the query string cannot be read");
    };
    let q = match explain::Query::parse(&pairs) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(ask) = &s.status.explain else {
        return json_error(StatusCode::NOT_FOUND, "explain is not served here");
    };
    let (tx, rx) = oneshot::channel();
    if ask.try_send((q, tx)).is_err() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many explanations under way: try again",
        );
    }
    let answer = match tokio::time::timeout(ANSWER_WITHIN, rx).await {
        Ok(Ok(answer)) => answer,
        _ => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine did not answer in time: try again",
            );
        }
    };
    match answer {
        Ok(mut e) => {
            complete(&s, &mut e);
            Json(e).into_response()
        }
        Err(ExplainError::NotFound(m)) => json_error(StatusCode::NOT_FOUND, m),
        Err(ExplainError::Bad(m)) => json_error(StatusCode::BAD_REQUEST, m),
    }
}

/// Adds what the engine does not keep: each source's last success, remediation's state.
fn complete(s: &AppState, e: &mut Explanation) {
    let snap = s.snapshot.borrow().clone();
    for src in &mut e.sources {
        src.last_success = snap
            .source_times
            .get(&src.name)
            .and_then(|t| t.last_success)
            .map(|t| t.to_string());
    }
    let remediation = s.status.remediation.borrow().clone();
    for r in &mut e.rules {
        if let Some(a) = r.finding_id.and_then(|id| remediation.findings.get(&id)) {
            r.remediation = Some(action(a));
        }
    }
}

fn action(a: &ActionState) -> serde_json::Value {
    serde_json::json!({
        "action": a.action,
        "dry_run": a.dry_run,
        "calls": a.calls,
        "waiting": a.waiting,
        "next_at": a.next_at.map(|t| t.to_string()),
        "last_outcome": a.last.map(|(_, o)| o),
        "last_at": a.last.map(|(t, _)| t.to_string()),
    })
}
