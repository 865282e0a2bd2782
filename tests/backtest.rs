//! `replay --remediation`: the live remediation controller run over a recording in virtual
//! time, calling nothing — on the bundled incidents with the presets' actions enabled, on a
//! finding that resolves within its grace, and against a live daemon fed the same inputs.

mod common;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use sandwatch::app::backtest::ActionSummary;
use sandwatch::app::config::{Config, load};
use sandwatch::app::replay::{Extras, Input, run_with};
use sandwatch::remediation::controller::Call;
use sandwatch::sinks::report::Format;
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::receiver::Receiver;

type Backtested = (Vec<Call>, BTreeMap<&'static str, ActionSummary>);

fn backtest(config: &Config, input: Vec<u8>) -> (Backtested, String) {
    let (b, text, _) = backtest_metrics(config, input);
    (b, text)
}

/// The backtest, its JSON output, and the metrics of the final state.
fn backtest_metrics(config: &Config, input: Vec<u8>) -> (Backtested, String, String) {
    let inputs = vec![Input {
        name: "input".into(),
        reader: Box::new(std::io::Cursor::new(input)),
    }];
    let extras = Extras {
        remediation: true,
        explain: None,
    };
    let outcome = run_with(config, inputs, Format::Json, Vec::new(), extras).unwrap();
    let text = String::from_utf8(outcome.out).unwrap();
    (outcome.backtest.expect("a backtest"), text, outcome.metrics)
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

fn sandbox_api(per_minute: u32) -> Config {
    load(&format!(
        r#"
profiles:
  - preset: sandbox-api
    remediation:
      base_url: https://centaur.internal
      actions:
        finalize_execution: {{ enabled: true, grace: 5m }}
        mark_session_gone: {{ enabled: true, per_minute: {per_minute} }}
        finalize_session: {{ enabled: true }}
remediation:
  mode: live
"#
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn incident_02s_orphans_are_drained_at_the_configured_rate_in_order_each_key_once() {
    let ((calls, summary), text, metrics) = backtest_metrics(
        &sandbox_api(6),
        example("02-suspended-sessions-orphaned-by-bare-pod-backend.json"),
    );
    assert_eq!(calls.len(), 5, "{text}");
    // --metrics-out counts them as live mode would have, had each call succeeded.
    assert_eq!(
        support::metrics::value(
            &metrics,
            r#"sandwatch_remediations_total{shard="0",action="mark_session_gone",outcome="success"}"#
        ),
        Some(5.0),
        "{metrics}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.action.as_str() == "mark_session_gone")
    );
    let mut keys: Vec<&str> = calls.iter().map(|c| c.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 5, "each key once: {text}");
    // In the order the findings opened, each after its grace.
    for w in calls.windows(2) {
        assert!(
            (w[0].finding.opened_at, w[0].finding.id) < (w[1].finding.opened_at, w[1].finding.id),
            "{text}"
        );
    }
    for c in &calls {
        assert!(c.at.secs_since(c.finding.opened_at) >= 120.0, "{text}");
        assert!(c.delayed_by.contains(&"grace"));
        assert!(
            c.what
                .starts_with("GET https://centaur.internal/agent/status?key=slack%3A")
        );
    }
    // The four that fell due together go one every 10 s (6 a minute).
    let first: Vec<i64> = calls[..4].iter().map(|c| c.at.0).collect();
    for w in first.windows(2) {
        assert_eq!(w[1] - w[0], 10_000, "{text}");
    }
    assert!(
        calls[1..4]
            .iter()
            .all(|c| c.delayed_by.contains(&"rate limit"))
    );
    let s = &summary["mark_session_gone"];
    assert_eq!(
        (s.calls, s.peak_per_minute, s.peak_backlog),
        (5, 4, 3),
        "{s:?}"
    );
    // The same recording and config give the same output.
    let (_, again) = backtest(
        &sandbox_api(6),
        example("02-suspended-sessions-orphaned-by-bare-pod-backend.json"),
    );
    assert_eq!(text, again);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let call = lines.iter().find(|l| l["event"] == "remediation").unwrap();
    assert_eq!(call["action"], "mark_session_gone");
    assert!(call["idempotency_key"].as_str().unwrap().starts_with("sw_"));
    assert_eq!(call["finding"]["kind"], "orphaned_suspended_session");
    assert_eq!(
        lines.last().unwrap()["event"],
        "remediation_summary",
        "{text}"
    );
}

#[test]
fn incident_01s_execution_is_cancelled_once_after_its_grace() {
    let ((calls, _), text) = backtest(
        &sandbox_api(60),
        example("01-agent-oomkilled-sidecar-keeps-pod-running.json"),
    );
    let cancels: Vec<&Call> = calls
        .iter()
        .filter(|c| c.action.as_str() == "finalize_execution")
        .collect();
    assert_eq!(cancels.len(), 1, "{text}");
    let c = cancels[0];
    assert_eq!(c.at.secs_since(c.finding.opened_at), 300.0, "{text}");
    assert_eq!(
        c.what,
        "POST https://centaur.internal/agent/executions/exe_01JQ3M7ZK4T9V2B8N6R5W1X0YA/cancel"
    );
}

const GENERIC: &str = r#"
profiles:
  - preset: generic
    grace:
      absence: 0s
    remediation:
      actions:
        mark_session_gone:
          grace: 5m
          http:
            method: POST
            url: "URL/sessions/{session}/gone"
remediation:
  mode: live
"#;

/// A healthy pod: in a replay the pod feed counts from its first value, and the orphan rule
/// rests on that feed (a pod that is absent is evidence only from a source that would show it).
fn healthy_pod() -> common::PodB {
    common::pod("agents", "other")
        .label("sandwatch.io/session", "other")
        .container("agent", common::C::Running(1))
}

/// Replay values, after the healthy pod's ADDED event.
fn records(lines: &[Value]) -> Vec<u8> {
    let pod = json!({"at": "2026-05-01T10:00:00Z", "watch": {"type": "ADDED", "object": healthy_pod().json()}});
    std::iter::once(&pod)
        .chain(lines)
        .map(|v| format!("{v}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn a_finding_that_resolves_within_its_grace_triggers_nothing() {
    let config = load(&GENERIC.replace("URL", "http://platform")).unwrap();
    let input = records(&[
        json!({"at": "2026-05-01T10:00:00Z", "record": {"kind": "session", "id": "brief", "state": "suspended"}}),
        json!({"at": "2026-05-01T10:00:00Z", "record": {"kind": "session", "id": "stays", "state": "suspended"}}),
        json!({"at": "2026-05-01T10:02:00Z", "record": {"kind": "session", "id": "brief", "state": "running"}}),
        json!({"at": "2026-05-01T10:30:00Z"}),
    ]);
    let ((calls, summary), text) = backtest(&config, input);
    assert_eq!(calls.len(), 1, "{text}");
    assert_eq!(calls[0].finding.finding.session.as_deref(), Some("stays"));
    assert_eq!(calls[0].at.to_string(), "2026-05-01T10:05:00Z");
    assert_eq!(calls[0].what, "POST http://platform/sessions/stays/gone");
    assert_eq!(summary["mark_session_gone"].avoided, 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_and_the_backtest_make_the_same_calls_for_the_same_inputs() {
    const TOKEN: &str = "backtest-ingest-token";
    let receiver = Receiver::start().await;
    let yaml = GENERIC
        .replace("URL", &receiver.url)
        .replace("grace: 5m", "grace: 0s")
        .replace(
            "    remediation:",
            "    records:\n      ingest:\n        kinds: [session]\n    remediation:",
        );
    let sessions: Vec<Value> = (0..3)
        .map(|i| json!({"kind": "session", "id": format!("orphan-{i}"), "state": "suspended"}))
        .collect();

    // Live: the sessions pushed to a running daemon, whose calls reach a real receiver.
    let server = TestApiServer::start().await;
    server.create(healthy_pod().stored());
    let live = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let daemon = start_with(&server, live, |s| s.ingest_token = Some(TOKEN.into())).await;
    push_snapshot(&daemon, TOKEN, &sessions).await;
    wait_for(Duration::from_secs(10), "three calls", || async {
        receiver.count() >= 3
    })
    .await;
    let mut made: Vec<(String, String)> = receiver
        .received()
        .iter()
        .map(|r| {
            let key = r.header("idempotency-key").unwrap_or_default().to_string();
            (format!("{} {}{}", r.method, receiver.url, r.uri), key)
        })
        .collect();
    daemon.shutdown().await;

    // Backtest: the same records as a replay file.
    let config = load(&yaml).unwrap();
    let input = records(
        &sessions
            .iter()
            .map(|s| json!({"at": "2026-05-01T10:00:00Z", "record": s}))
            .chain([json!({"at": "2026-05-01T10:01:00Z"})])
            .collect::<Vec<_>>(),
    );
    let ((calls, _), text) = backtest(&config, input);
    let mut rehearsed: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.what.clone(), c.key.clone()))
        .collect();
    made.sort();
    rehearsed.sort();
    assert_eq!(made.len(), 3, "{made:?}");
    assert_eq!(made, rehearsed, "{text}");
}

#[test]
fn calls_that_cannot_be_built_are_counted_apart_and_the_backtest_ends() {
    let config = load(
        &GENERIC
            .replace(
                "URL/sessions/{session}/gone",
                "http://platform/sessions/{session}/{pod}",
            )
            .replace("grace: 5m", "grace: 0s\n          per_minute: 1")
            .replace("mode: live", "mode: live\n  retry_max: 30s"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let input = records(&[
        json!({"at": "2026-05-01T10:00:00Z", "record": {"kind": "session", "id": "other", "state": "running"}}),
        json!({"at": "2026-05-01T10:00:00Z", "record": {"kind": "session", "id": "a", "state": "suspended"}}),
        json!({"at": "2026-05-01T10:00:00Z", "record": {"kind": "session", "id": "b", "state": "suspended"}}),
        json!({"at": "2026-05-01T10:30:00Z"}),
    ]);
    let ((calls, summary), text) = backtest(&config, input);
    let s = &summary["mark_session_gone"];
    assert_eq!(s.calls, 0, "{text}");
    assert!(s.invalid > 0);
    // Nothing went out, so nothing used up the rate limit: both incidents were tried.
    let sessions: std::collections::BTreeSet<_> = calls
        .iter()
        .filter_map(|c| c.finding.finding.session.as_deref())
        .collect();
    assert_eq!(sessions.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    // And the backtest ends with the input: an invalid call waits on a fix, not on time.
    assert!(
        calls
            .iter()
            .all(|c| *c.at.to_string() <= *"2026-05-01T10:30:00Z")
    );
    assert!(text.contains("\"outcome\":\"invalid\""), "{text}");
}
