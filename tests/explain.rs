//! `GET /api/v1/explain` on a running daemon: the verdict of every rule for one subject —
//! open, pending, clear, held and off — with the links and sources it rests on.

mod common;
mod support;

use std::time::Duration;

use serde_json::{Value, json};

use common::{C, PodB, pod};
use sandwatch::app::live::Daemon;
use support::apiserver::TestApiServer;
use support::daemon::*;

const TOKEN: &str = "explain-ingest-token";

const CONFIG: &str = r#"
profiles:
  - preset: generic
    grace:
      absence: 1h
    records:
      ingest:
        kinds: [session]
"#;

fn sandbox(name: &str) -> PodB {
    pod("agents", name)
        .label("sandwatch.io/session", name)
        .container("agent", C::Running(1))
        .container("tools", C::Running(1))
}

async fn explain(d: &Daemon, query: &str) -> (u16, Value) {
    get(d, &format!("/api/v1/explain?{query}")).await
}

/// The verdict of `kind` in an explanation (the only one for that kind).
fn rule<'a>(e: &'a Value, kind: &str) -> &'a Value {
    let all: Vec<&Value> = e["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind)
        .collect();
    assert_eq!(all.len(), 1, "{kind}: {e:#}");
    all[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_each_rules_verdict_for_a_subject() {
    let server = TestApiServer::start().await;
    server.create(
        sandbox("dead")
            .set("agent", C::Terminated(137, "OOMKilled", 10))
            .stored(),
    );
    server.create(sandbox("ok").stored());
    let config = sandwatch::app::config::load(CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let daemon = start_with(&server, config, |s| {
        s.ingest_token = Some(TOKEN.into());
        s.stale_after = Duration::from_millis(500);
    })
    .await;
    push_snapshot(
        &daemon,
        TOKEN,
        &[
            json!({"kind": "session", "id": "dead", "state": "running"}),
            json!({"kind": "session", "id": "ok", "state": "running"}),
            json!({"kind": "session", "id": "sleepy", "state": "suspended"}),
        ],
    )
    .await;
    wait_ready(&daemon, true).await;
    wait_for(Duration::from_secs(5), "two findings", || async {
        findings(&daemon).await.len() == 2
    })
    .await;

    // Open: the dead agent, joined with its session by the pod's label.
    let (code, e) = explain(&daemon, "pod=agents/dead").await;
    assert_eq!(code, 200, "{e:#}");
    assert_eq!(
        e["subject"],
        json!({"kind": "pod", "id": "agents/dead", "namespace": "agents", "profile": "generic"})
    );
    let link = &e["links"][0];
    assert_eq!(
        (&link["to"], &link["id"], &link["found"], &link["by"]),
        (
            &json!("session"),
            &json!("dead"),
            &json!(true),
            &json!("the pod's label sandwatch.io/session")
        ),
        "{e:#}"
    );
    let oom = rule(&e, "agent_terminated_pod_running");
    assert_eq!(oom["verdict"], "open", "{e:#}");
    assert_eq!(oom["reason"], "OOMKilled");
    assert!(oom["evidence_at"].is_string() && oom["opened_at"].is_string());
    assert_eq!(rule(&e, "session_active_without_agent")["verdict"], "open");
    // Clear, and the condition not met in words.
    let leak = rule(&e, "leaked_sandbox_pod");
    assert_eq!(leak["verdict"], "clear");
    assert_eq!(leak["why"], "a session that is not finished claims the pod");
    // Off: this profile has no executions source.
    let exe = rule(&e, "execution_on_dead_agent");
    assert_eq!(exe["verdict"], "off", "{e:#}");
    assert!(
        exe["why"]
            .as_str()
            .unwrap()
            .contains("needs executions and no source of it is configured for profile generic"),
        "{exe}"
    );
    let sources: Vec<&str> = e["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["ingest/generic", "pods/generic"], "{e:#}");
    assert!(e["sources"][1]["last_success"].is_string(), "{e:#}");

    // Clear on a live agent.
    let (_, e) = explain(&daemon, "pod=agents/ok").await;
    let ok = rule(&e, "agent_terminated_pod_running");
    assert_eq!(ok["verdict"], "clear");
    assert_eq!(ok["why"], "no agent container has terminated for good");

    // Pending: the suspended session's pod is gone; it opens after the absence grace.
    let (_, e) = explain(&daemon, "session=sleepy").await;
    let orphan = rule(&e, "orphaned_suspended_session");
    assert_eq!(orphan["verdict"], "pending", "{e:#}");
    assert_eq!(orphan["reason"], "PodGone");
    let evidence =
        sandwatch::util::time::Ts::parse(orphan["evidence_at"].as_str().unwrap()).unwrap();
    let due = sandwatch::util::time::Ts::parse(orphan["due_at"].as_str().unwrap()).unwrap();
    assert_eq!(due.secs_since(evidence), 3600.0, "{orphan}");
    assert_eq!(e["links"][0]["to"], "pod");
    assert_eq!(e["links"][0]["found"], false);
    assert_eq!(
        e["links"][0]["why"],
        "no pod with label sandwatch.io/session = sleepy is tracked"
    );

    // Unknown subjects and bad queries are JSON errors.
    let (code, e) = explain(&daemon, "pod=agents/nope").await;
    assert_eq!(code, 404, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("no pod agents/nope is tracked")
    );
    let (code, e) = explain(&daemon, "session=nope").await;
    assert_eq!(code, 404, "{e}");
    let (code, e) = explain(&daemon, "pods=agents/dead").await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("\"pods\" is not a parameter of explain")
    );

    // Held: the pod source goes stale; what rests on it holds, and says on which source.
    server.go_down().await;
    wait_ready(&daemon, false).await;
    let (_, e) = explain(&daemon, "session=sleepy").await;
    let orphan = rule(&e, "orphaned_suspended_session");
    assert_eq!(orphan["verdict"], "held", "{e:#}");
    assert!(
        orphan["why"].as_str().unwrap().contains("(pods/generic)"),
        "{orphan}"
    );
    let (_, e) = explain(&daemon, "pod=agents/dead").await;
    // An open finding stays open while held.
    assert_eq!(rule(&e, "agent_terminated_pod_running")["verdict"], "open");
    daemon.shutdown().await;
}

/// The explanation `replay --explain SUBJECT` prints after replaying examples/records.json.
fn explained_after_records(subject: &str) -> Value {
    let config = sandwatch::app::config::preset("generic").unwrap();
    let input = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/records.json"
    ))
    .unwrap();
    let extras = sandwatch::app::replay::Extras {
        remediation: false,
        explain: Some(sandwatch::core::explain::Query::parse_arg(subject).unwrap()),
    };
    let inputs = vec![sandwatch::app::replay::Input {
        name: "records.json".into(),
        reader: Box::new(std::io::Cursor::new(input)),
    }];
    let outcome = sandwatch::app::replay::run_with(
        &config,
        inputs,
        sandwatch::sinks::report::Format::Json,
        Vec::new(),
        extras,
    )
    .unwrap();
    let text = String::from_utf8(outcome.out).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn a_sandbox_and_a_session_link_the_executions_that_name_them() {
    let last = explained_after_records("sandbox=sb-1");
    let links = last["explanation"]["links"].as_array().unwrap();
    assert!(
        links
            .iter()
            .any(|l| l["to"] == "execution" && l["id"] == "run-7" && l["found"] == true),
        "{last:#}"
    );
    assert_eq!(
        rule(&last["explanation"], "execution_on_dead_agent")["verdict"],
        "open"
    );
    let last = explained_after_records("session=s-1");
    // The session's tombstone came last: it is no longer held.
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("no session record \"s-1\" is held"),
        "{last:#}"
    );
}

#[test]
fn replay_explains_a_subject_at_the_end_of_a_recording() {
    let last = explained_after_records("execution=run-7");
    assert_eq!(last["event"], "explain", "{last}");
    let e = &last["explanation"];
    assert_eq!(e["subject"]["id"], "run-7");
    let link = e["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["to"] == "sandbox")
        .unwrap();
    assert_eq!(link["found"], true, "{e:#}");
    let dead = rule(e, "execution_on_dead_agent");
    assert_eq!(dead["verdict"], "open", "{e:#}");
    assert_eq!(dead["reason"], "SandboxDead");
}
