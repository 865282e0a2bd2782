//! Remediation against real HTTP receivers on loopback, the test API server's Lease, and a
//! real PostgreSQL: signatures, retries, refusals, the circuit breaker, rate limits, grace,
//! stale sources, dry-run, restarts and two replicas.

mod common;
mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sandwatch::app::live::Daemon;
use sandwatch::remediation::lease::Elector;
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::receiver::Receiver;

const TOKEN: &str = "ingest-token";

/// The generic profile fed through the ingest API, with one remediation action.
fn config(action: &str, target: &str, extra_global: &str) -> String {
    format!(
        r#"
profiles:
  - preset: generic
    grace:
      absence: 0s
    records:
      ingest:
        kinds: [session, execution, sandbox]
    remediation:
      actions:
        {action}:
          grace: 0s
          per_minute: 6000
{target}
remediation:
  mode: live
  retry_initial: 100ms
  retry_max: 2s
  resend_after: 1h
{extra_global}
"#
    )
}

fn http_target(url: &str) -> String {
    format!(
        "          http:\n            method: POST\n            url: \"{url}/sessions/{{session}}/gone\"\n            body: '{{\"session\": \"{{session}}\"}}'"
    )
}

async fn daemon_with(server: &TestApiServer, yaml: &str) -> Daemon {
    let c = sandwatch::app::config::load(yaml).unwrap_or_else(|e| panic!("{e}"));
    let d = start_with(server, c, |s| {
        s.ingest_token = Some(TOKEN.into());
        s.stale_after = Duration::from_millis(300);
    })
    .await;
    // The provider's first report is a snapshot: only then are pushed records trusted.
    push_snapshot(&d, TOKEN, &[]).await;
    d
}

async fn ingest(d: &Daemon, records: &[Value]) {
    let body = records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/records", d.addr))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["accepted"], records.len(), "{out}");
}

async fn metric(d: &Daemon, line_start: &str) -> f64 {
    let text = metrics_text(d).await;
    support::metrics::value(&text, line_start).unwrap_or(f64::NAN)
}

fn orphan(id: &str) -> Value {
    json!({"kind": "session", "id": id, "state": "suspended"})
}

fn python() -> String {
    let py = std::env::var("SANDWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import standardwebhooks: scripts/test installs it (pip install standardwebhooks) and sets SANDWATCH_TEST_PYTHON"
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_verify_with_the_standard_webhooks_library() {
    let py = python();
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let dir = std::env::temp_dir().join(format!("sandwatch-wh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap();
    let target = format!(
        "          webhook:\n            url: {}/hooks/sandwatch\n            secret_file: {}",
        receiver.url,
        dir.join("secret").display()
    );
    let d = daemon_with(&server, &config("finalize_execution", &target, "")).await;
    wait_ready(&d, true).await;
    ingest(&d, &[
        json!({"kind": "sandbox", "id": "sb-1", "state": "failure"}),
        json!({"kind": "execution", "id": "run-7", "sandbox": "sb-1", "state": "running", "attempt": 2}),
    ])
    .await;
    wait_for(Duration::from_secs(5), "the webhook", || async {
        receiver.count() == 1
    })
    .await;
    let r = &receiver.received()[0];
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["action"], "finalize_execution");
    assert_eq!(body["dry_run"], false);
    assert_eq!(body["finding"]["kind"], "execution_on_dead_agent");
    assert_eq!(body["finding"]["execution"], "run-7");
    assert_eq!(body["finding"]["sandbox"], "sb-1");
    assert_eq!(body["finding"]["reason"], "SandboxDead");
    let key = body["idempotency_key"].as_str().unwrap();
    assert_eq!(r.header("webhook-id"), Some(key));
    assert_eq!(r.header("idempotency-key"), Some(key));

    // Verified by an independent implementation.
    std::fs::write(dir.join("body"), &r.body).unwrap();
    let headers: HashMap<&str, &str> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|h| (*h, r.header(h).unwrap()))
        .collect();
    std::fs::write(
        dir.join("headers"),
        serde_json::to_string(&headers).unwrap(),
    )
    .unwrap();
    let script = "import sys, json\nfrom standardwebhooks import Webhook\nwh = Webhook(sys.argv[1])\nwh.verify(open(sys.argv[2], 'rb').read(), json.load(open(sys.argv[3])))\nprint('verified')\n";
    let out = Command::new(&py)
        .args(["-c", script, secret])
        .arg(dir.join("body"))
        .arg(dir.join("headers"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and a tampered body fails it.
    std::fs::write(
        dir.join("body"),
        String::from_utf8_lossy(&r.body).replace("run-7", "run-8"),
    )
    .unwrap();
    let out = Command::new(&py)
        .args(["-c", script, secret])
        .arg(dir.join("body"))
        .arg(dir.join("headers"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tampered body must not verify");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_three_times_gets_one_success_with_the_same_key() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    receiver.script(&[(503, None), (429, Some("1")), (500, None)]);
    let d = daemon_with(
        &server,
        &config("mark_session_gone", &http_target(&receiver.url), ""),
    )
    .await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1")]).await;
    wait_for(Duration::from_secs(10), "four attempts", || async {
        receiver.count() == 4
    })
    .await;
    let got = receiver.received();
    let statuses: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(
        statuses,
        [503, 429, 500, 200],
        "exactly one successful delivery"
    );
    let keys: HashSet<&str> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "every retry carries the same key");
    assert_eq!(got[0].uri, "/sessions/s-1/gone");
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        r#"{"session": "s-1"}"#
    );
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(950),
        "Retry-After: 1 is honoured"
    );
    // Done: no further calls.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 4);
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"success\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"error\"}"
        )
        .await,
        3.0
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_holds_its_own_finding_and_nothing_else() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    receiver.script(&[(429, Some("18446744073709551615"))]);
    let d = daemon_with(
        &server,
        &config("mark_session_gone", &http_target(&receiver.url), ""),
    )
    .await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1")]).await;
    wait_for(Duration::from_secs(5), "the first call", || async {
        receiver.count() == 1
    })
    .await;
    // The remediation loop is still alive: the next finding is called at once...
    ingest(&d, &[orphan("s-2")]).await;
    wait_for(
        Duration::from_secs(5),
        "the second finding's call",
        || async { receiver.count() == 2 },
    )
    .await;
    assert_eq!(receiver.received()[1].uri, "/sessions/s-2/gone");
    // ...while s-1 waits (up to an hour), well past retry_max (2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.count(), 2);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_not_retried() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    receiver.script(&[(404, None)]);
    let d = daemon_with(
        &server,
        &config("mark_session_gone", &http_target(&receiver.url), ""),
    )
    .await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1")]).await;
    wait_for(Duration::from_secs(5), "the call", || async {
        receiver.count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.count(), 1, "a 4xx is a refusal");
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"refused\"}"
        )
        .await,
        1.0
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_opens_the_circuit_and_keeps_the_alert_metric_up() {
    let server = TestApiServer::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = daemon_with(
        &server,
        &config(
            "mark_session_gone",
            &http_target(&format!("http://{closed}")),
            "  circuit_failures: 3\n  circuit_open_for: 1h",
        ),
    )
    .await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1"), orphan("s-2")]).await;
    wait_for(Duration::from_secs(10), "the circuit to open", || async {
        metric(
            &d,
            "sandwatch_remediation_circuit_open{action=\"mark_session_gone\"}",
        )
        .await
            == 1.0
    })
    .await;
    let errors = metric(
        &d,
        "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"error\"}",
    )
    .await;
    assert_eq!(errors, 3.0);
    // It stays open: no more attempts, the gauge stays up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"error\"}"
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediation_circuit_open{action=\"mark_session_gone\"}"
        )
        .await,
        1.0
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_2206_orphaned_sessions_drains_at_the_configured_rate() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let yaml = config(
        "mark_session_gone",
        &http_target(&receiver.url),
        "  max_per_minute: 100000",
    )
    .replace("per_minute: 6000", "per_minute: 600");
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    let orphans: Vec<Value> = (0..2206).map(|i| orphan(&format!("s-{i}"))).collect();
    ingest(&d, &orphans).await;
    wait_for(Duration::from_secs(5), "the first call", || async {
        receiver.count() > 0
    })
    .await;
    let first = receiver.received()[0].at;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = receiver.received();
    let elapsed = got.last().unwrap().at.duration_since(first).as_secs_f64();
    let calls = got.len() as f64;
    // 600 a minute is 10 a second, with a burst of one second's worth.
    assert!(
        calls <= 10.0 * elapsed + 10.0 + 1.0,
        "{calls} calls in {elapsed:.1} s: a storm"
    );
    assert!(
        calls >= 10.0 * elapsed - 3.0,
        "{calls} calls in {elapsed:.1} s: too slow"
    );
    let backlog = metric(
        &d,
        "sandwatch_remediation_backlog{action=\"mark_session_gone\"}",
    )
    .await;
    assert!(
        backlog > 2000.0,
        "the rest waits its turn: backlog {backlog}"
    );
    let keys: HashSet<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), got.len(), "each session once");
    eprintln!(
        "{calls} calls in {elapsed:.2} s ({:.1}/s) with 600/min configured",
        calls / elapsed
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finding_that_resolves_during_its_grace_triggers_no_call() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let yaml = config("mark_session_gone", &http_target(&receiver.url), "").replace(
        "grace: 0s\n          per_minute",
        "grace: 1s\n          per_minute",
    );
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1")]).await;
    wait_for(Duration::from_secs(2), "the finding", || async {
        get(&d, "/api/v1/findings").await.1["count"] == 1
    })
    .await;
    // The platform resumes it on its own, well within the grace.
    ingest(
        &d,
        &[json!({"kind": "session", "id": "s-1", "state": "gone"})],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.count(), 0);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_while_a_source_is_stale() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let yaml = config("mark_session_gone", &http_target(&receiver.url), "").replace(
        "grace: 0s\n          per_minute",
        "grace: 1s\n          per_minute",
    );
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1")]).await;
    // The pod source goes down before the grace is over.
    server.go_down().await;
    wait_ready(&d, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.count(),
        0,
        "the absence rests on the pods source, which is down"
    );
    let back = Instant::now();
    server.come_up().await;
    wait_for(
        Duration::from_secs(10),
        "the call after recovery",
        || async { receiver.count() == 1 },
    )
    .await;
    assert!(
        receiver.received()[0].at >= back,
        "nothing was sent while the source was down"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_logs_and_counts_but_calls_nothing() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let yaml = config("mark_session_gone", &http_target(&receiver.url), "")
        .replace("mode: live", "mode: dry_run");
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1"), orphan("s-2")]).await;
    wait_for(Duration::from_secs(5), "two dry runs", || async {
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"dry_run\"}",
        )
        .await
            == 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 0);
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"dry_run\"}"
        )
        .await,
        2.0,
        "once per finding"
    );
    d.shutdown().await;
}

/// centaur with its database: `mark_session_gone` through the preset's own template, pointed
/// at a receiver that does what centaur's status call does (marks the row gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_backlog_resends_only_what_is_still_needed() {
    use support::postgres::{SCHEMA, TestPostgres};
    let db = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.unwrap();
    const N: i32 = 120;
    sql.execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) SELECT 't-' || g, 'gone-' || g, 'suspended' FROM generate_series(1, $1::int) g",
        &[&N],
    )
    .await
    .unwrap();
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let fixer = Arc::new(db.client().await);
    let handle = tokio::runtime::Handle::current();
    receiver.on_request(move |r| {
        let thread = r.uri.split("key=").nth(1).unwrap_or_default().to_string();
        let fixer = fixer.clone();
        // The platform marks the session gone as it answers.
        tokio::task::block_in_place(|| {
            handle.block_on(async move {
                fixer
                    .execute("UPDATE sandbox_sessions SET state = 'gone', updated_at = now() WHERE thread_key = $1", &[&thread])
                    .await
                    .unwrap();
            })
        });
    });
    let key_file = std::env::temp_dir().join(format!("sandwatch-key-{}", std::process::id()));
    std::fs::write(&key_file, "api-key-1\n").unwrap();
    let yaml = format!(
        r#"
profiles:
  - preset: sandbox-api
    grace:
      absence: 0s
    records:
      postgres:
        poll_interval: 200ms
    remediation:
      base_url: {}
      actions:
        mark_session_gone:
          enabled: true
          grace: 0s
          per_minute: 1200
          http:
            method: GET
            url: "{{base_url}}/agent/status?key={{session}}"
            headers:
              X-API-Key: {{ file: {} }}
remediation:
  mode: live
  max_per_minute: 6000
"#,
        receiver.url,
        key_file.display()
    );
    let url_file = db.url_file("sandwatch_ro");
    let start = |yaml: String, url_file: std::path::PathBuf| {
        let server = &server;
        async move {
            let c = sandwatch::app::config::load(&yaml).unwrap();
            start_with(server, c, |s| {
                s.database_url_file = Some(url_file);
            })
            .await
        }
    };
    let a = start(yaml.clone(), url_file.clone()).await;
    wait_for(Duration::from_secs(10), "part of the backlog", || async {
        receiver.count() >= 40
    })
    .await;
    a.shutdown().await;
    let before = receiver.count();
    assert!(
        before < N as usize,
        "the restart comes mid-backlog ({before} of {N})"
    );
    let b = start(yaml, url_file).await;
    wait_for(Duration::from_secs(20), "every session fixed", || async {
        sql.query_one(
            "SELECT count(*) FROM sandbox_sessions WHERE state = 'suspended'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    let mut per_session: HashMap<String, Vec<String>> = HashMap::new();
    for r in &got {
        assert_eq!(r.header("x-api-key"), Some("api-key-1"));
        let thread = r.uri.split("key=").nth(1).unwrap().to_string();
        per_session
            .entry(thread)
            .or_default()
            .push(r.header("idempotency-key").unwrap().to_string());
    }
    assert_eq!(per_session.len(), N as usize, "every session was called");
    let repeated: Vec<_> = per_session
        .iter()
        .filter(|(_, keys)| keys.len() > 1)
        .collect();
    // At most the one call in flight when the first replica stopped may repeat, with its key.
    assert!(
        repeated.len() <= 1,
        "only what was still needed is re-sent: {repeated:?}"
    );
    for (_, keys) in repeated {
        assert!(
            keys.windows(2).all(|w| w[0] == w[1]),
            "a re-sent call carries the same key"
        );
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_remediate_at_once_and_fail_over_within_the_lease() {
    let server = TestApiServer::start().await;
    server.register(
        "vteam.ambient-code",
        "v1alpha1",
        "agenticsessions",
        "AgenticSession",
        true,
    );
    // 40 running sessions whose runner pods are gone: both replicas see the same findings.
    for i in 0..40 {
        server.create(json!({
            "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSession",
            "metadata": {"name": format!("s-{i}"), "namespace": "project-a"},
            "spec": {"initialPrompt": "x"}, "status": {"phase": "Running"}
        }));
    }
    let receiver = Receiver::start().await;
    let yaml = |replica: &str| {
        format!(
            r#"
profiles:
  - preset: ambient
    grace:
      absence: 0s
    remediation:
      actions:
        finalize_session:
          enabled: true
          grace: 0s
          per_minute: 120
          http:
            method: POST
            url: "{}/sessions/{{session}}/stop"
            headers:
              X-Replica: {{ value: {replica} }}
remediation:
  mode: live
  timeout: 500ms
"#,
            receiver.url
        )
    };
    let elector = |id: &str| Elector {
        duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        ..Elector::new("sandwatch-remediation", "default", id)
    };
    let start = |replica: &'static str| {
        let c = sandwatch::app::config::load(&yaml(replica)).unwrap();
        let e = elector(replica);
        let server = &server;
        async move {
            start_with(server, c, |s| {
                s.leader_election = Some(e);
            })
            .await
        }
    };
    let a = start("a").await;
    wait_for(Duration::from_secs(10), "replica a to lead", || async {
        receiver
            .received()
            .iter()
            .any(|r| r.header("x-replica") == Some("a"))
    })
    .await;
    let b = start("b").await;
    wait_for(Duration::from_secs(10), "some of the backlog", || async {
        receiver.count() >= 8
    })
    .await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.header("x-replica") == Some("a")),
        "only the leader calls"
    );
    assert_eq!(metric(&b, "sandwatch_leader ").await, 0.0);
    assert_eq!(metric(&a, "sandwatch_leader ").await, 1.0);
    // Each replica's status page says which one remediates, as the calls received show.
    let page = |d: &Daemon| {
        let url = format!("http://{}/", d.addr);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    wait_for(
        Duration::from_secs(5),
        "both pages to say who leads",
        || async {
            page(&a)
                .await
                .contains("remediation: live, this replica leads")
                && page(&b)
                    .await
                    .contains("remediation: live, another replica leads")
        },
    )
    .await;
    // The leader crashes: no release. b takes over once the Lease has gone unrenewed.
    a.abort().await;
    let crashed = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "replica b to take over",
        || async {
            receiver
                .received()
                .iter()
                .any(|r| r.header("x-replica") == Some("b"))
        },
    )
    .await;
    let got = receiver.received();
    let last_a = got
        .iter()
        .filter(|r| r.header("x-replica") == Some("a"))
        .map(|r| r.at)
        .max()
        .unwrap();
    let first_b = got
        .iter()
        .filter(|r| r.header("x-replica") == Some("b"))
        .map(|r| r.at)
        .min()
        .unwrap();
    assert!(
        last_a < first_b,
        "the replicas never acted at the same time"
    );
    let failover = first_b.duration_since(crashed);
    assert!(
        failover <= Duration::from_secs(3) + Duration::from_millis(900),
        "failover took {failover:?}; the lease is 3 s"
    );
    eprintln!("failover in {failover:?} (lease 3 s)");
    let lease = server
        .get(
            "coordination.k8s.io",
            "v1",
            "leases",
            "default",
            "sandwatch-remediation",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finding_that_outlives_a_successful_call_is_called_again_and_counted_ineffective() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let yaml = config("mark_session_gone", &http_target(&receiver.url), "")
        .replace("resend_after: 1h", "resend_after: 700ms");
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1")]).await;
    // The receiver answers 200 but never fixes anything.
    wait_for(Duration::from_secs(5), "a second call", || async {
        receiver.count() == 2
    })
    .await;
    let got = receiver.received();
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(650),
        "re-sent only after resend_after"
    );
    assert_eq!(
        got[0].header("idempotency-key"),
        got[1].header("idempotency-key")
    );
    assert_eq!(
        metric(
            &d,
            "sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"ineffective\"}"
        )
        .await,
        1.0
    );
    // The backoff doubles: no third call right away.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(receiver.count(), 2, "the next re-send waits twice as long");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_spares_a_replacement_of_the_same_name() {
    use sandwatch::core::world::{Subject, Uid};
    use sandwatch::model::finding::{Finding, FindingKind, OpenFinding};
    use sandwatch::remediation::deliver::{Deliverer, Outcome};

    let server = TestApiServer::start().await;
    // The leaked pod was replaced by a new one of the same name before the call went out.
    let replacement = common::pod("agents", "sandbox-s-1")
        .label("sandwatch.io/session", "s-1")
        .container("agent", common::C::Running(1));
    server.create(replacement.stored());
    let current = server
        .get("", "v1", "pods", "agents", "sandbox-s-1")
        .unwrap();
    let current_uid = current["metadata"]["uid"].as_str().unwrap().to_string();
    let profiles = sandwatch::app::config::load(
        "profiles:\n  - preset: generic\n    remediation:\n      actions:\n        reap_pod:\n          kubernetes: { delete_pod: true }\n",
    )
    .unwrap();
    let actions = profiles.remediation.actions.clone();
    let deliverer =
        Deliverer::new(&actions, Duration::from_secs(2), Some(server.client())).unwrap();
    let finding = |uid: &str| OpenFinding {
        id: 1,
        finding: Finding {
            kind: FindingKind::LeakedSandboxPod,
            profile: "generic".into(),
            namespace: Some("agents".into()),
            pod: Some("sandbox-s-1".into()),
            session: Some("s-1".into()),
            execution: None,
            sandbox: None,
            reason: "NoSession".into(),
            container: None,
            exit_code: None,
            state: None,
            pod_uid: Some(uid.into()),
        },
        opened_at: sandwatch::util::time::Ts(0),
        evidence_at: sandwatch::util::time::Ts(0),
        retries_after_death: 0,
        seen_live: true,
        subject: Subject::Pod {
            namespace: "agents".into(),
            name: "sandbox-s-1".into(),
            uid: Uid::parse(uid),
        },
    };
    let profile = profiles
        .profiles
        .get(sandwatch::model::profile::ProfileId(0));
    let deletion = || {
        server
            .get("", "v1", "pods", "agents", "sandbox-s-1")
            .map(|p| p["metadata"]["deletionTimestamp"].clone())
    };

    let out = deliverer
        .deliver(
            &actions[0],
            profile,
            &finding("00000000-0000-4000-8000-000000000001"),
            "k-1",
            true,
        )
        .await;
    assert!(matches!(out, Outcome::Refused(409, _)), "{out:?}");
    assert_eq!(
        deletion(),
        Some(Value::Null),
        "the replacement is untouched"
    );

    let out = deliverer
        .deliver(&actions[0], profile, &finding(&current_uid), "k-2", true)
        .await;
    assert!(matches!(out, Outcome::Success(_)), "{out:?}");
    assert!(
        deletion().is_none_or(|t| t.is_string()),
        "the pod the finding is about is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_releases_the_lease_only_after_its_last_call_ends() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(1000));
    let arrived = Arc::new(std::sync::Mutex::new(None));
    let seen = arrived.clone();
    receiver.on_request(move |_| {
        seen.lock().unwrap().get_or_insert(Instant::now());
    });
    let c = sandwatch::app::config::load(&config(
        "mark_session_gone",
        &http_target(&receiver.url),
        "  timeout: 1500ms",
    ))
    .unwrap();
    let d = start_with(&server, c, |s| {
        s.ingest_token = Some(TOKEN.into());
        s.leader_election = Some(Elector {
            duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(200),
            ..Elector::new("sandwatch-remediation", "default", "replica-a")
        });
    })
    .await;
    push_snapshot(&d, TOKEN, &[]).await;
    wait_ready(&d, true).await;
    let holder = || {
        server
            .get(
                "coordination.k8s.io",
                "v1",
                "leases",
                "default",
                "sandwatch-remediation",
            )
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
    };
    wait_for(Duration::from_secs(5), "the lease", || async {
        holder().as_deref() == Some("replica-a")
    })
    .await;
    ingest(&d, &[orphan("s-1")]).await;
    wait_for(Duration::from_secs(5), "the call to arrive", || async {
        arrived.lock().unwrap().is_some()
    })
    .await;
    // SIGTERM while the receiver is still working on the call.
    let stopping = tokio::spawn(d.shutdown());
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder().as_deref() == Some("replica-a") {
        assert!(Instant::now() < deadline, "the lease was never released");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let released = Instant::now();
    stopping.await.unwrap();
    let answered = receiver.received()[0].answered_at;
    assert!(
        released >= answered,
        "the lease was released {:?} before the call in flight ended",
        answered.duration_since(released)
    );
    assert_eq!(receiver.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_at_exactly_the_configured_rate() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    // 60 a minute: a bucket of one token, so a token that comes between two rounds and waits
    // for the next one is time lost for good (that once gave 56.5 calls a minute).
    let yaml = config("mark_session_gone", &http_target(&receiver.url), "")
        .replace("per_minute: 6000", "per_minute: 60");
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    let orphans: Vec<Value> = (0..100).map(|i| orphan(&format!("s-{i}"))).collect();
    ingest(&d, &orphans).await;
    wait_for(Duration::from_secs(30), "twelve calls", || async {
        receiver.count() >= 12
    })
    .await;
    let got = receiver.received();
    let (first, last) = (got[1].at, got[11].at);
    let rate = 10.0 / last.duration_since(first).as_secs_f64();
    assert!(
        (rate - 1.0).abs() < 0.02,
        "{rate:.3} calls a second with per_minute: 60"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_gauge_follows_the_breaker_after_its_findings_resolve() {
    let server = TestApiServer::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = daemon_with(
        &server,
        &config(
            "mark_session_gone",
            &http_target(&format!("http://{closed}")),
            "  circuit_failures: 2\n  circuit_open_for: 1s",
        ),
    )
    .await;
    wait_ready(&d, true).await;
    ingest(&d, &[orphan("s-1"), orphan("s-2")]).await;
    let gauge = "sandwatch_remediation_circuit_open{action=\"mark_session_gone\"}";
    wait_for(Duration::from_secs(10), "the circuit to open", || async {
        metric(&d, gauge).await == 1.0
    })
    .await;
    // The findings resolve while the circuit is open: no trial call will ever come, and the
    // gauge must not stay up forever.
    ingest(
        &d,
        &[
            json!({"kind": "session", "id": "s-1", "deleted": true}),
            json!({"kind": "session", "id": "s-2", "deleted": true}),
        ],
    )
    .await;
    wait_for(Duration::from_secs(5), "the gauge back to 0", || async {
        metric(&d, gauge).await == 0.0
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_would_move_up_the_url_path_is_never_called() {
    let server = TestApiServer::start().await;
    let receiver = Receiver::start().await;
    let yaml = config(
        "finalize_execution",
        &format!(
            "          http:\n            method: POST\n            url: \"{}/agent/executions/{{execution}}/cancel\"",
            receiver.url
        ),
        "",
    );
    let d = daemon_with(&server, &yaml).await;
    wait_ready(&d, true).await;
    ingest(
        &d,
        &[
            json!({"kind": "sandbox", "id": "sb-1", "state": "failed"}),
            json!({"kind": "execution", "id": "..", "sandbox": "sb-1", "state": "running"}),
            json!({"kind": "execution", "id": "a.b", "sandbox": "sb-1", "state": "running"}),
        ],
    )
    .await;
    let invalid = "sandwatch_remediations_total{action=\"finalize_execution\",outcome=\"invalid\"}";
    wait_for(
        Duration::from_secs(10),
        "the call refused and the other made",
        || async { metric(&d, invalid).await == 1.0 && receiver.count() == 1 },
    )
    .await;
    let paths: Vec<String> = receiver.received().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(paths, ["/agent/executions/a%2Eb/cancel"]);
    d.shutdown().await;
}
