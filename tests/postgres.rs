//! Records from a real PostgreSQL (started from the installed server binaries) joined with
//! pods from the test API server, and records pushed through the ingest API.

mod common;
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::centaur_pod;
use sandwatch::model::finding::Event;
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::metrics::has;
use support::postgres::{SANDBOX_API_FAST, TestPostgres};
use support::proxy::FreezingProxy;

async fn daemon(
    server: &TestApiServer,
    db: &TestPostgres,
    yaml: &str,
) -> sandwatch::app::live::Daemon {
    let url_file = db.url_file("sandwatch_ro");
    start_with(server, sandwatch::app::config::load(yaml).unwrap(), |s| {
        s.database_url_file = Some(url_file);
        s.stale_after = Duration::from_secs(1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_picked_up_within_one_poll_interval() {
    let (db, sql, server) = setup().await;
    let p = centaur_pod("t-2");
    server.create(p.stored());
    // t-1 is still being created: no pod yet, nothing to report.
    sql.batch_execute(&format!(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES
           ('t-1', 'centaur-sandbox-t-1', 'creating'), ('t-2', '{}', 'idle')",
        p.name
    ))
    .await
    .unwrap();
    let d = daemon(&server, &db, SANDBOX_API_FAST).await;
    let mut rx = d.transitions();
    wait_ready(&d, true).await;
    let (_, ready) = get(&d, "/readyz").await;
    assert_eq!(ready["records"], 2, "{ready}");

    // The row changes to suspended, with no pod to resume from: seen at the next poll.
    let written = Instant::now();
    sql.execute(
        "UPDATE sandbox_sessions SET state = 'suspended', updated_at = now() WHERE thread_key = 't-1'",
        &[],
    )
    .await
    .unwrap();
    let t = loop {
        let t = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a finding")
            .unwrap();
        if t.event == Event::Opened {
            break t;
        }
    };
    let took = written.elapsed();
    assert_eq!(
        t.finding.finding.kind.as_str(),
        "orphaned_suspended_session"
    );
    assert_eq!(t.finding.finding.session.as_deref(), Some("t-1"));
    assert!(
        took < Duration::from_millis(300 + 250),
        "seen {took:?} after the commit; the poll interval is 300 ms"
    );
    eprintln!("the update was seen {took:?} after its commit");
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"incremental\",outcome=\"success\"}"
        ),
        "{m}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_opens_no_absence_finding_and_loses_no_update() {
    let (db, sql, server) = setup().await;
    for t in ["t-1", "t-2", "t-3"] {
        let p = centaur_pod(t);
        server.create(p.stored());
        sql.execute(
            "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ($1, $2, 'running')",
            &[&t, &p.name],
        )
        .await
        .unwrap();
    }
    // The absence grace must outlast the records' staleness bound (1 s here; 30 s and 2 min
    // by default): until the source is known stale, its rows are taken as they were.
    let yaml = SANDBOX_API_FAST.replace("absence: 0s", "absence: 2s");
    let d = daemon(&server, &db, &yaml).await;
    let log = Log::follow(&d);
    wait_ready(&d, true).await;

    // Just before the database goes down, t-1 is suspended: the daemon may not have seen it.
    sql.execute("UPDATE sandbox_sessions SET state = 'suspended', updated_at = now() WHERE thread_key = 't-1'", &[])
        .await
        .unwrap();
    drop(sql);
    let db = std::sync::Arc::new(db);
    let stopping = db.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    // Meanwhile, pods go: t-1's (paused) and t-2's (deleted by a node drain).
    server.delete("", "v1", "pods", "centaur", "centaur-sandbox-t-1");
    server.delete("", "v1", "pods", "centaur", "centaur-sandbox-t-2");
    wait_ready(&d, false).await;
    let (_, body) = get(&d, "/readyz").await;
    assert_eq!(body["not_ready"], json!(["postgres/sandbox-api"]), "{body}");
    // Well past the stale bound and the absence grace: nothing opens, because the records it
    // would rest on are not trusted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(log.lines().is_empty(), "{:?}", log.lines());

    let starting = db.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    wait_ready(&d, true).await;
    // The update made just before the restart is not lost: t-1 is an orphan, not an active
    // session without its agent.
    wait_for(
        Duration::from_secs(5),
        "the findings after recovery",
        || async {
            let mut l = log.lines();
            l.sort();
            l == [
                "opened orphaned_suspended_session centaur-sandbox-t-1",
                "opened session_active_without_agent centaur-sandbox-t-2",
            ]
        },
    )
    .await;
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_source_synced{source=\"postgres/sandbox-api\"} 1"
        ),
        "{m}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_it_cannot_understand_are_reported_counted_and_skipped() {
    let (db, sql, server) = setup().await;
    sql.batch_execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES
           ('good-1', 'p-1', 'idle'), ('weird', 'p-2', 'hibernating'), (NULL, 'p-3', 'idle'), ('good-2', 'p-4', 'stopped');
         INSERT INTO agent_execution_requests (execution_id, thread_key, status, stream_break_count) VALUES
           ('exe-1', 'good-1', 'queued', 0);",
    )
    .await
    .unwrap();
    let d = daemon(&server, &db, SANDBOX_API_FAST).await;
    wait_ready(&d, true).await;
    let (_, ready) = get(&d, "/readyz").await;
    assert_eq!(ready["records"], 3, "good-1, good-2 and exe-1: {ready}");
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_rejected_inputs_total{source=\"postgres/sandbox-api\",reason=\"unknown_state\"}"
        ),
        "{m}"
    );
    assert!(
        has(
            &m,
            "sandwatch_rejected_inputs_total{source=\"postgres/sandbox-api\",reason=\"missing_field\"}"
        ),
        "{m}"
    );
    // The daemon carries on: later rows are read.
    sql.execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('good-3', 'p-5', 'idle')", &[])
        .await
        .unwrap();
    wait_for(Duration::from_secs(5), "the next good row", || async {
        get(&d, "/readyz").await.1["records"] == 4
    })
    .await;
    d.shutdown().await;
}

async fn records(d: &sandwatch::app::live::Daemon) -> Value {
    get(d, "/readyz").await.1["records"].clone()
}

/// Polls often, and gives the database one second per statement.
const IMPATIENT: &str = r#"
profiles:
  - preset: sandbox-api
    grace:
      absence: 0s
    records:
      postgres:
        poll_interval: 200ms
        stale_after: 1s
        statement_timeout: 1s
        resync_interval: 1h
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_is_reported_stale_and_read_again_after() {
    let (db, sql, server) = setup().await;
    sql.batch_execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-1', 'p-1', 'idle')")
        .await
        .unwrap();
    // The daemon reaches the database through a path that can go silent: no reset, no
    // close, no answer.
    let proxy = FreezingProxy::start(([127, 0, 0, 1], db.port).into()).await;
    let url_file = std::env::temp_dir().join(format!("sandwatch-url-{}", proxy.addr.port()));
    std::fs::write(
        &url_file,
        db.url("sandwatch_ro").replace(
            &format!(":{}/", db.port),
            &format!(":{}/", proxy.addr.port()),
        ),
    )
    .unwrap();
    let d = start_with(
        &server,
        sandwatch::app::config::load(IMPATIENT).unwrap(),
        |s| {
            s.database_url_file = Some(url_file.clone());
            s.stale_after = Duration::from_secs(1);
        },
    )
    .await;
    wait_ready(&d, true).await;

    proxy.freeze();
    let frozen = Instant::now();
    wait_ready(&d, false).await;
    eprintln!(
        "reported stale {:?} after the database went silent",
        frozen.elapsed()
    );
    let (_, body) = get(&d, "/readyz").await;
    assert_eq!(body["not_ready"], json!(["postgres/sandbox-api"]), "{body}");

    // What was written meanwhile is read once the database answers again.
    sql.batch_execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-2', 'p-2', 'idle')")
        .await
        .unwrap();
    proxy.thaw();
    wait_ready(&d, true).await;
    assert_eq!(records(&d).await, 2);
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"incremental\",outcome=\"error\"} 1"
        ),
        "the stalled poll counts as one failure:\n{m}"
    );
    d.shutdown().await;
    let _ = std::fs::remove_file(url_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_load_may_take_longer_than_the_statement_timeout() {
    let (db, sql, server) = setup().await;
    sql.batch_execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state)
         SELECT 't-' || i, 'p-' || i, 'idle' FROM generate_series(1, 20) i",
    )
    .await
    .unwrap();
    // Rows arrive one every 100 ms: the whole load takes 2 s, twice the statement timeout,
    // while the database never stays silent for long.
    let yaml = format!(
        "{IMPATIENT}        queries:\n          session: >-\n            SELECT thread_key AS id, state, sandbox_id AS pod, updated_at\n            FROM sandbox_sessions, LATERAL (SELECT pg_sleep(0.1) WHERE updated_at IS NOT NULL) AS slow\n"
    );
    let d = daemon(&server, &db, &yaml).await;
    wait_ready(&d, true).await;
    assert_eq!(records(&d).await, 20);
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"full\",outcome=\"error\"} 0"
        ),
        "{m}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_without_a_zone_are_utc_and_infinity_is_no_value() {
    let (db, sql, server) = setup().await;
    // The role's default zone is fourteen hours ahead of UTC; the platform stores naive UTC
    // timestamps, and an execution with no deadline as `infinity`.
    sql.batch_execute(
        "ALTER ROLE sandwatch_ro SET timezone = 'Pacific/Kiritimati';
         INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-1', 'p-1', 'idle');
         INSERT INTO agent_execution_requests (execution_id, thread_key, status, hard_deadline_at)
           VALUES ('exe-1', 't-1', 'queued', 'infinity');",
    )
    .await
    .unwrap();
    let yaml = format!(
        "{IMPATIENT}        queries:\n          session: >-\n            SELECT thread_key AS id, state, sandbox_id AS pod, (updated_at AT TIME ZONE 'UTC') AS updated_at\n            FROM sandbox_sessions\n"
    );
    let d = daemon(&server, &db, &yaml).await;
    wait_ready(&d, true).await;
    assert_eq!(
        records(&d).await,
        2,
        "the execution with an infinite deadline is read"
    );
    // A new row is found by the next incremental poll (the full reload is an hour away).
    sql.batch_execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-2', 'p-2', 'idle')")
        .await
        .unwrap();
    wait_for(Duration::from_secs(3), "the new row", || async {
        records(&d).await == 3
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_turns_unreadable_keeps_what_was_known_of_it() {
    let (db, sql, server) = setup().await;
    let p = centaur_pod("t-1");
    server.create(p.stored());
    sql.execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-1', $1, 'idle')",
        &[&p.name],
    )
    .await
    .unwrap();
    let yaml = IMPATIENT
        .replace("resync_interval: 1h", "resync_interval: 300ms")
        .replace("absence: 0s", "absence: 0s\n      leaked_pod: 1s");
    let d = daemon(&server, &db, &yaml).await;
    let log = Log::follow(&d);
    wait_ready(&d, true).await;
    // A new platform release writes a state this config does not know yet.
    sql.batch_execute("UPDATE sandbox_sessions SET state = 'hibernating', updated_at = now() WHERE thread_key = 't-1'")
        .await
        .unwrap();
    let full_loads = || async {
        let m = metrics_text(&d).await;
        support::metrics::value(
            &m,
            "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"full\",outcome=\"success\"}",
        )
        .unwrap_or(0.0) as u64
    };
    let before = full_loads().await;
    wait_for(
        Duration::from_secs(10),
        "several full loads past the leaked-pod grace",
        || async { full_loads().await >= before + 5 },
    )
    .await;
    assert_eq!(records(&d).await, 1, "the session is still known");
    assert!(
        log.lines().is_empty(),
        "the pod is not leaked: {:?}",
        log.lines()
    );
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_rejected_inputs_total{source=\"postgres/sandbox-api\",reason=\"unknown_state\"}"
        ),
        "{m}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_02_every_orphaned_suspended_session_and_nothing_else() {
    let (db, sql, server) = setup().await;
    const ORPHANS: usize = 2206;
    const LIVE: usize = 40;
    // 2,206 suspended rows whose pods the bare-pod backend deleted long ago...
    sql.execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state, updated_at)
         SELECT 'slack:C0:' || g, 'centaur-sandbox-gone-' || g, 'suspended', now() - interval '3 days'
         FROM generate_series(1, $1::int) AS g",
        &[&(ORPHANS as i32)],
    )
    .await
    .unwrap();
    // ...next to live sessions with their pods, stopped rows without pods, and one execution.
    for i in 0..LIVE {
        let t = format!("live-{i}");
        let p = centaur_pod(&t);
        server.create(p.stored());
        let state = if i % 2 == 0 { "running" } else { "idle" };
        sql.execute(
            "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ($1, $2, $3)",
            &[&t, &p.name, &state],
        )
        .await
        .unwrap();
    }
    sql.batch_execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('done-1', 'gone-pod-1', 'stopped'), ('done-2', 'gone-pod-2', 'gone');
         INSERT INTO agent_execution_requests (execution_id, thread_key, status) VALUES ('exe-live', 'live-0', 'running');",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let d = daemon(&server, &db, SANDBOX_API_FAST).await;
    wait_ready(&d, true).await;
    wait_for(Duration::from_secs(30), "2,206 findings", || async {
        get(&d, "/api/v1/findings").await.1["count"] == ORPHANS
    })
    .await;
    eprintln!(
        "{ORPHANS} orphaned sessions found {:?} after start",
        started.elapsed()
    );
    let (_, body) = get(&d, "/api/v1/findings").await;
    let findings = body["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .all(|f| f["kind"] == "orphaned_suspended_session" && f["reason"] == "PodGone")
    );
    let (_, only) = get(
        &d,
        "/api/v1/findings?kind=orphaned_suspended_session&profile=sandbox-api",
    )
    .await;
    assert_eq!(only["count"], ORPHANS);
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            &format!("sandwatch_orphaned_suspended_sessions{{profile=\"sandbox-api\"}} {ORPHANS}")
        ),
        "{m}"
    );
    // Nothing else, even after a few more polls.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get(&d, "/api/v1/findings").await.1["count"], ORPHANS);
    assert!(
        has(
            &m,
            "sandwatch_findings_opened_total{kind=\"orphaned_suspended_session\"} 2206"
        ),
        "{m}"
    );
    for kind in [
        "agent_terminated_pod_running",
        "execution_on_dead_agent",
        "session_active_without_agent",
        "leaked_sandbox_pod",
    ] {
        assert!(
            has(
                &m,
                &format!("sandwatch_findings_opened_total{{kind=\"{kind}\"}} 0")
            ),
            "{kind}: {m}"
        );
    }
    d.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The ingest API (incident 04: a Modal sandbox, outside Kubernetes)

const TOKEN: &str = "s3cret-ingest-token";

async fn ingest_daemon(server: &TestApiServer) -> sandwatch::app::live::Daemon {
    let d = start_with(
        server,
        sandwatch::app::config::preset("offload-modal").unwrap(),
        |s| {
            s.ingest_token = Some(TOKEN.into());
            s.ingest_max_body = 4096;
        },
    )
    .await;
    // The adapter's first report is a snapshot of its sandboxes (none yet).
    push_snapshot(&d, TOKEN, &[]).await;
    d
}

async fn post(d: &sandwatch::app::live::Daemon, token: &str, body: String) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/records", d.addr))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_04_retries_against_a_dead_modal_sandbox_through_the_ingest_api() {
    let server = TestApiServer::start().await;
    let d = ingest_daemon(&server).await;
    let log = Log::follow(&d);
    wait_ready(&d, true).await;
    let sb = "sb-01JT0K4Q8C3R9V6M2H7W5N1XZE";
    let (code, body) = post(
        &d,
        TOKEN,
        json!([
            {"kind": "sandbox", "id": sb, "state": "running"},
            {"kind": "execution", "id": "run-7", "sandbox": sb, "state": "running", "attempt": 0},
            {"kind": "execution", "id": "run-8", "sandbox": sb, "state": "exploded"},
            {"kind": "session", "id": "s-1", "state": "running"}
        ])
        .to_string(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    assert_eq!(body["rejected"][0]["index"], 2);
    assert_eq!(body["rejected"][0]["reason"], "unknown_state");
    assert_eq!(body["rejected"][1]["index"], 3);
    assert_eq!(body["rejected"][1]["reason"], "not_ingested");

    // The sandbox dies before its results are written; offload retries the download three
    // times (NDJSON this time).
    let ndjson = [
        json!({"kind": "sandbox", "id": sb, "state": "failure"}),
        json!({"kind": "execution", "id": "run-7", "sandbox": sb, "state": "downloading", "attempt": 1}),
        json!({"kind": "execution", "id": "run-7", "sandbox": sb, "state": "downloading", "attempt": 2}),
        json!({"kind": "execution", "id": "run-7", "sandbox": sb, "state": "downloading", "attempt": 3}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let (code, body) = post(&d, TOKEN, ndjson).await;
    assert_eq!((code, body["accepted"].clone()), (200, json!(4)), "{body}");
    wait_for(
        Duration::from_secs(5),
        "the finding with 3 retries",
        || async {
            let (_, f) = get(&d, "/api/v1/findings?kind=execution_on_dead_agent").await;
            f["count"] == 1 && f["findings"][0]["retries_after_death"] == 3
        },
    )
    .await;
    let (_, f) = get(&d, "/api/v1/findings").await;
    assert_eq!(f["findings"][0]["execution"], "run-7");
    assert_eq!(f["findings"][0]["sandbox"], sb);
    assert_eq!(f["findings"][0]["reason"], "SandboxDead");
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_retries_against_dead_agent_total{profile=\"offload-modal\"} 3"
        ),
        "{m}"
    );
    // The source reads as the readiness report names it, synced; pushed records have their
    // own counter (not the Kubernetes watch events').
    assert!(
        has(
            &m,
            "sandwatch_source_synced{source=\"ingest/offload-modal\"} 1"
        ),
        "{m}"
    );
    assert!(
        !has(&m, "sandwatch_source_synced{source=\"ingest\"}"),
        "{m}"
    );
    let pushed = "sandwatch_pushed_records_total{source=\"ingest/offload-modal\"}";
    assert!(support::metrics::value(&m, pushed).unwrap() >= 5.0, "{m}");
    assert!(
        !has(&m, "sandwatch_watch_events_total{source=\"ingest\"}"),
        "{m}"
    );

    // [DOWNLOAD FAILED]: the execution ends, the finding resolves.
    let (code, _) = post(&d, TOKEN, json!([{"kind": "execution", "id": "run-7", "sandbox": sb, "state": "failed", "attempt": 3}]).to_string()).await;
    assert_eq!(code, 200);
    wait_for(Duration::from_secs(5), "resolution", || async {
        log.lines()
            == [
                "opened execution_on_dead_agent run-7",
                "resolved execution_on_dead_agent run-7",
            ]
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_api_needs_its_token_and_limits_bodies() {
    let server = TestApiServer::start().await;
    let d = ingest_daemon(&server).await;
    let record = json!([{"kind": "sandbox", "id": "sb-1", "state": "running"}]).to_string();
    let (code, _) = post(&d, "wrong", record.clone()).await;
    assert_eq!(code, 401);
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/records", d.addr))
        .body(record.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let (code, _) = post(&d, TOKEN, "x".repeat(5000)).await;
    assert_eq!(code, 413, "bodies over the limit are refused");
    let (code, body) = post(&d, TOKEN, "[{\"kind\":".into()).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(&d, TOKEN, record).await;
    assert_eq!((code, body["accepted"].clone()), (200, json!(1)));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_on_the_listen_channel_polls_at_once() {
    let (db, sql, server) = setup().await;
    server.create(centaur_pod("other").stored()); // the pod source is live, its pod owned
    sql.batch_execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-1', 'centaur-sandbox-t-1', 'creating'), ('other', 'centaur-sandbox-other', 'running')")
        .await
        .unwrap();
    // Polls are an hour apart: only the notification can bring the change in time.
    let yaml = SANDBOX_API_FAST.replace(
        "poll_interval: 300ms",
        "poll_interval: 1h\n        listen_channel: sandbox_sessions_changed",
    );
    let d = daemon(&server, &db, &yaml).await;
    let log = Log::follow(&d);
    wait_ready(&d, true).await;
    sql.batch_execute(
        "UPDATE sandbox_sessions SET state = 'suspended', updated_at = now() WHERE thread_key = 't-1';
         NOTIFY sandbox_sessions_changed;",
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(3), "the notified change", || async {
        log.lines() == ["opened orphaned_suspended_session centaur-sandbox-t-1"]
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reports_long_standing_orphans_at_once_with_the_same_evidence() {
    let (db, sql, server) = setup().await;
    server.create(centaur_pod("other").stored()); // the pod source is live, its pod owned
    // Suspended an hour ago; their pods were deleted then (incident 02).
    sql.batch_execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state, updated_at) VALUES
           ('other', 'centaur-sandbox-other', 'running', now()),
           ('t-1', 'centaur-sandbox-t-1', 'suspended', now() - interval '1 hour'),
           ('t-2', 'centaur-sandbox-t-2', 'suspended', now() - interval '1 hour')",
    )
    .await
    .unwrap();
    // A grace far longer than the test: a finding that waited for it again would never come.
    let yaml = SANDBOX_API_FAST.replace("absence: 0s", "absence: 10m");
    let evidence = |fs: &[Value]| {
        let mut v: Vec<(String, String)> = fs
            .iter()
            .map(|f| {
                (
                    f["session"].as_str().unwrap().to_string(),
                    f["evidence_at"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let first = daemon(&server, &db, &yaml).await;
    wait_for(Duration::from_secs(10), "both orphans", || async {
        findings(&first).await.len() == 2
    })
    .await;
    let before = evidence(&findings(&first).await);
    first.shutdown().await;

    let started = Instant::now();
    let second = daemon(&server, &db, &yaml).await;
    wait_for(Duration::from_secs(10), "both orphans again", || async {
        findings(&second).await.len() == 2
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        evidence(&findings(&second).await),
        before,
        "the same evidence time"
    );
    let m = metrics_text(&second).await;
    assert!(
        has(
            &m,
            "sandwatch_detection_latency_seconds_count{kind=\"orphaned_suspended_session\"} 0"
        ),
        "what held before the start is no detection latency:\n{m}"
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_scoped_watch_reports_no_pod_gone_for_rows_that_name_no_namespace() {
    let (db, sql, server) = setup().await;
    // The watch sees namespace agents only; these sessions' pods run in centaur.
    server.create(centaur_pod("t-1").stored());
    let mut inside = centaur_pod("t-3");
    inside.ns = "agents".into();
    server.create(inside.stored());
    sql.batch_execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES
           ('t-1', 'centaur-sandbox-t-1', 'running'),
           ('t-2', 'centaur-sandbox-t-2', 'suspended'),
           ('t-3', 'centaur-sandbox-t-3', 'running')",
    )
    .await
    .unwrap();
    let scoped = format!("{SANDBOX_API_FAST}    pods:\n      namespaces: [agents]\n");
    let d = daemon(&server, &db, &scoped).await;
    wait_ready(&d, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        findings(&d).await,
        Vec::<Value>::new(),
        "a missing pod outside the watched namespaces is no evidence"
    );
    d.shutdown().await;

    // Told where the rows' pods live, the same profile judges them.
    let placed = scoped.replace(
        "    records:\n",
        "    records:\n      default_namespace: agents\n",
    );
    let d = daemon(&server, &db, &placed).await;
    wait_for(
        Duration::from_secs(10),
        "the two findings in agents",
        || async {
            let mut kinds: Vec<String> = findings(&d)
                .await
                .iter()
                .map(|f| format!("{} {}", f["kind"].as_str().unwrap(), f["session"]))
                .collect();
            kinds.sort();
            kinds
                == [
                    "orphaned_suspended_session \"t-2\"",
                    "session_active_without_agent \"t-1\"",
                ]
        },
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_a_url_makes_the_daemon_not_ready_until_one_is_there() {
    let (db, sql, server) = setup().await;
    server.create(centaur_pod("t-1").stored());
    sql.batch_execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-1', 'centaur-sandbox-t-1', 'running')")
        .await
        .unwrap();
    // The Secret is not mounted yet.
    let url_file = std::env::temp_dir().join(format!("sandwatch-url-{}", std::process::id()));
    let _ = std::fs::remove_file(&url_file);
    let file = url_file.clone();
    let d = start_with(
        &server,
        sandwatch::app::config::load(SANDBOX_API_FAST).unwrap(),
        |s| s.database_url_file = Some(file),
    )
    .await;
    wait_for(Duration::from_secs(5), "the pods synced", || async {
        let (_, r) = get(&d, "/readyz").await;
        r["sources"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "pods/sandbox-api" && s["synced"] == true)
        })
    })
    .await;
    let (code, r) = get(&d, "/readyz").await;
    assert_eq!(code, 503, "{r}");
    assert_eq!(r["not_ready"], json!(["postgres/sandbox-api"]), "{r}");
    let pg = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "postgres/sandbox-api")
        .unwrap()
        .clone();
    let error = pg["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&url_file.display().to_string()) && error.contains("No such file"),
        "{pg}"
    );
    assert!(!error.contains("os error"), "said once: {error}");
    let m = metrics_text(&d).await;
    assert!(
        has(
            &m,
            "sandwatch_source_synced{source=\"postgres/sandbox-api\"} 0"
        ),
        "{m}"
    );
    let failed = "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"full\",outcome=\"error\"}";
    assert!(
        support::metrics::value(&m, failed).unwrap() >= 1.0,
        "a source that cannot connect counts its failed polls:\n{m}"
    );
    // The Secret appears: the source connects by itself.
    std::fs::copy(db.url_file("sandwatch_ro"), &url_file).unwrap();
    wait_ready(&d, true).await;
    d.shutdown().await;
    let _ = std::fs::remove_file(&url_file);
}

const RESYNC_OFTEN: &str = r#"
profiles:
  - preset: sandbox-api
    grace:
      absence: 0s
    records:
      postgres:
        poll_interval: 200ms
        stale_after: 1s
        resync_interval: 300ms
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_is_counted_once_per_change_not_at_every_reload() {
    let (db, sql, server) = setup().await;
    sql.batch_execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES
           ('weird', 'p-2', 'hibernating'), (NULL, 'p-3', 'idle')",
    )
    .await
    .unwrap();
    let d = daemon(&server, &db, RESYNC_OFTEN).await;
    wait_ready(&d, true).await;
    let counted = |reason: &'static str| {
        let d = &d;
        async move {
            let m = metrics_text(d).await;
            support::metrics::value(
                &m,
                &format!("sandwatch_rejected_inputs_total{{source=\"postgres/sandbox-api\",reason=\"{reason}\"}}"),
            )
            .unwrap_or(0.0)
        }
    };
    let full_loads = || async {
        let m = metrics_text(&d).await;
        support::metrics::value(&m, "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"full\",outcome=\"success\"}").unwrap_or(0.0)
    };
    let loads = full_loads().await;
    wait_for(Duration::from_secs(10), "several full reloads", || async {
        full_loads().await >= loads + 4.0
    })
    .await;
    assert_eq!(
        counted("unknown_state").await,
        1.0,
        "the same bad row, read again"
    );
    assert_eq!(
        counted("missing_field").await,
        1.0,
        "the row without an id, read again"
    );
    // The row changes and is still bad: that is a new rejection.
    sql.batch_execute("UPDATE sandbox_sessions SET state = 'frozen', updated_at = now() WHERE thread_key = 'weird'")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "the changed row counted",
        || async { counted("unknown_state").await == 2.0 },
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_named_with_its_sqlstate_and_retried_slowly() {
    let (db, sql, server) = setup().await;
    sql.batch_execute("DROP TABLE agent_execution_requests")
        .await
        .unwrap();
    let d = daemon(&server, &db, SANDBOX_API_FAST).await;
    let error = || async {
        let (_, r) = get(&d, "/readyz").await;
        r["sources"]
            .as_array()
            .and_then(|s| {
                s.iter()
                    .find(|s| s["name"] == "postgres/sandbox-api")
                    .cloned()
            })
            .and_then(|s| s["error"].as_str().map(String::from))
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(10), "the error reported", || async {
        !error().await.is_empty()
    })
    .await;
    let e = error().await;
    assert!(
        e.contains("42P01") && e.contains("relation \"agent_execution_requests\" does not exist"),
        "{e}"
    );
    assert!(e.contains("retrying every 300s"), "{e}");
    // Not retried at full speed: one failed poll, not one every half second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = metrics_text(&d).await;
    let failed = support::metrics::value(
        &m,
        "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"full\",outcome=\"error\"}",
    )
    .unwrap();
    assert_eq!(failed, 1.0, "{m}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_stay_prompt_after_connections_dropped_over_a_healthy_day() {
    let (db, sql, server) = setup().await;
    sql.batch_execute("INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES ('t-1', 'p-1', 'stopped')")
        .await
        .unwrap();
    let d = daemon(&server, &db, SANDBOX_API_FAST).await;
    wait_ready(&d, true).await;
    let successes = || async {
        let m = metrics_text(&d).await;
        support::metrics::value(&m, "sandwatch_record_polls_total{source=\"postgres/sandbox-api\",mode=\"incremental\",outcome=\"success\"}").unwrap_or(0.0)
    };
    // Each time, the server drops sandwatch's connection (a failover, an idle timeout...);
    // polls succeed in between. A backoff that never reset would double each time.
    for drop_ in 1..=6 {
        let before = successes().await;
        sql.batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sandwatch'")
            .await
            .unwrap();
        let started = Instant::now();
        wait_for(Duration::from_secs(10), "polling again", || async {
            successes().await > before
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "reconnected {:?} after drop {drop_}",
            started.elapsed()
        );
    }
    d.shutdown().await;
}
