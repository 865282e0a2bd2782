//! `GET /api/v1/findings` as a client uses it: filters by kind (several, both ways), pod,
//! session, execution and reason; pages with `limit` and `cursor`; a 400 with a JSON error
//! naming what is wrong for any parameter it does not know or value it cannot use.

mod common;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use common::{C, pod};
use sandwatch::app::live::Daemon;
use support::apiserver::TestApiServer;
use support::daemon::*;

const TOKEN: &str = "a-long-ingest-token";

/// Pods with a session label (generic) and pushed records of two profiles.
const CONFIG: &str = r#"
profiles:
  - preset: generic
    records:
      ingest:
        kinds: [session, execution]
  - preset: offload-modal
"#;

/// Seven findings of four kinds: two dead agents behind live sidecars (sessions s-1, s-2), the
/// session s-1 active without its agent, the execution e-9 on s-1's dead agent, s-2's pod
/// leaked (no record of its session), and two executions (run-1, run-2) on a dead Modal
/// sandbox.
async fn daemon_with_seven_findings(server: &TestApiServer) -> Daemon {
    for (session, code, reason) in [("s-1", 137, "OOMKilled"), ("s-2", 1, "Error")] {
        server.create(
            pod("agents", &format!("sandbox-{session}"))
                .label("sandwatch.io/session", session)
                .container("agent", C::Terminated(code, reason, 5))
                .container("tools", C::Running(0))
                .stored(),
        );
    }
    let config = sandwatch::app::config::load(CONFIG).unwrap();
    let d = start_with(server, config, |s| s.ingest_token = Some(TOKEN.into())).await;
    push_snapshot(
        &d,
        TOKEN,
        &[
            json!({"kind": "session", "id": "s-1", "state": "running", "namespace": "agents", "pod": "sandbox-s-1"}),
            json!({"kind": "execution", "id": "e-9", "session": "s-1", "state": "running"}),
        ],
    )
    .await;
    let modal = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/records?snapshot=true&profile=offload-modal",
            d.addr
        ))
        .bearer_auth(TOKEN)
        .json(&json!([
            {"kind": "sandbox", "id": "sb-1", "state": "failure", "profile": "offload-modal"},
            {"kind": "execution", "id": "run-1", "sandbox": "sb-1", "state": "downloading", "profile": "offload-modal"},
            {"kind": "execution", "id": "run-2", "sandbox": "sb-1", "state": "downloading", "profile": "offload-modal"},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(modal.status(), 200);
    wait_for(Duration::from_secs(20), "seven findings", || async {
        get(&d, "/api/v1/findings").await.1["count"] == 7
    })
    .await;
    d
}

/// "kind subject" of each finding of a page, the subject being the execution, else the
/// session.
fn subjects(body: &Value) -> BTreeSet<String> {
    body["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("a page of findings: {body}"))
        .iter()
        .map(|f| {
            let subject = f["execution"].as_str().or(f["session"].as_str());
            format!("{} {}", f["kind"].as_str().unwrap(), subject.unwrap_or("-"))
        })
        .collect()
}

async fn ok(d: &Daemon, query: &str) -> Value {
    let (code, body) = get(d, &format!("/api/v1/findings{query}")).await;
    assert_eq!(code, 200, "{query}: {body}");
    assert_eq!(
        body["count"].as_u64(),
        Some(body["findings"].as_array().unwrap().len() as u64),
        "{query}: one page holds them all"
    );
    body
}

async fn refused(d: &Daemon, query: &str) -> String {
    let (code, body) = get(d, &format!("/api/v1/findings{query}")).await;
    assert_eq!(code, 400, "{query}: {body}");
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{query}: a JSON error: {body}"))
        .to_string()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_are_filtered_by_kinds_and_by_identity() {
    let server = TestApiServer::start().await;
    let d = daemon_with_seven_findings(&server).await;
    let all = subjects(&ok(&d, "").await);
    assert_eq!(
        all,
        set(&[
            "agent_terminated_pod_running s-1",
            "agent_terminated_pod_running s-2",
            "session_active_without_agent s-1",
            "execution_on_dead_agent e-9",
            "execution_on_dead_agent run-1",
            "execution_on_dead_agent run-2",
            "leaked_sandbox_pod s-2",
        ])
    );

    // Several kinds, as repeated parameters or as one list: the same findings.
    let two = set(&[
        "agent_terminated_pod_running s-1",
        "agent_terminated_pod_running s-2",
        "session_active_without_agent s-1",
    ]);
    for q in [
        "?kind=agent_terminated_pod_running&kind=session_active_without_agent",
        "?kind=agent_terminated_pod_running,session_active_without_agent",
    ] {
        assert_eq!(subjects(&ok(&d, q).await), two, "{q}");
    }
    assert_eq!(
        subjects(&ok(&d, "?kind=session_active_without_agent").await),
        set(&["session_active_without_agent s-1"])
    );

    // By identity; filters combine.
    let s1 = ok(&d, "?pod=sandbox-s-1").await;
    assert!(
        s1["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["pod"] == "sandbox-s-1")
    );
    assert!(subjects(&s1).contains("agent_terminated_pod_running s-1"));
    assert!(!subjects(&s1).contains("agent_terminated_pod_running s-2"));
    assert_eq!(
        subjects(&ok(&d, "?session=s-2").await),
        set(&["agent_terminated_pod_running s-2", "leaked_sandbox_pod s-2"])
    );
    assert_eq!(
        subjects(&ok(&d, "?execution=run-2").await),
        set(&["execution_on_dead_agent run-2"])
    );
    assert_eq!(
        subjects(&ok(&d, "?reason=SandboxDead").await),
        set(&[
            "execution_on_dead_agent run-1",
            "execution_on_dead_agent run-2"
        ])
    );
    assert_eq!(
        subjects(&ok(&d, "?kind=agent_terminated_pod_running&reason=Error").await),
        set(&["agent_terminated_pod_running s-2"])
    );
    assert_eq!(ok(&d, "?session=s-3").await["count"], 0);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_walk_every_match_once_and_bad_parameters_are_named() {
    let server = TestApiServer::start().await;
    let d = daemon_with_seven_findings(&server).await;
    for (query, total, limit) in [
        ("", 7usize, 3usize),
        ("kind=execution_on_dead_agent&", 3, 1),
    ] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let (code, page) = get(
                &d,
                &format!("/api/v1/findings?{query}limit={limit}{cursor}"),
            )
            .await;
            assert_eq!(code, 200, "{page}");
            assert_eq!(page["count"], total, "every page counts every match");
            let items = page["findings"].as_array().unwrap();
            assert!(items.len() <= limit, "{page}");
            seen.extend(subjects(&page));
            pages += 1;
            match page["next"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
            assert!(pages < 10, "the cursors end");
        }
        assert_eq!(pages, total.div_ceil(limit), "{query}");
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(seen.len(), total, "{query}: {seen:?}");
        assert_eq!(unique.len(), total, "{query}: each once: {seen:?}");
    }

    for (query, needle) in [
        ("?namespaces=agents", "\"namespaces\" is not a parameter"),
        (
            "?kind=execution_on_dead_agent&podname=x",
            "\"podname\" is not a parameter",
        ),
        ("?kind=bogus", "kind: \"bogus\" is not a finding kind"),
        ("?kind=execution_on_dead_agent,bogus", "\"bogus\""),
        ("?limit=0", "limit: \"0\""),
        ("?limit=lots", "limit: \"lots\""),
        ("?cursor=abc", "cursor: \"abc\""),
    ] {
        let error = refused(&d, query).await;
        assert!(error.contains(needle), "{query}: {needle:?} in {error:?}");
    }
    d.shutdown().await;
}
