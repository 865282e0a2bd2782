//! `run --record`: a live run against the test API server and a real PostgreSQL, through an
//! OOM kill, a pod deleted during a 410 gap and a database outage, recorded; replaying the
//! recording gives exactly the transitions the live run logged (kinds, subjects, order,
//! evidence and opening times).

mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::{C, centaur_pod};
use sandwatch::app::replay::{Extras, Input, run_with};
use sandwatch::sinks::report::Format;
use support::daemon::*;
use support::metrics::value;
use support::postgres::SANDBOX_API_FAST;

/// One transition, as both the live log and the replay report show it.
type Seen = (String, String, String, String, String);

fn seen(event: &str, kind: &str, subject: &str, evidence_at: &str, at: &str) -> Seen {
    (
        event.into(),
        kind.into(),
        subject.into(),
        evidence_at.into(),
        at.into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_recording_gives_the_transitions_of_the_live_run() {
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
    let dir = std::env::temp_dir().join(format!("sandwatch-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("live.json");
    let config = sandwatch::app::config::load(SANDBOX_API_FAST).unwrap();
    let url_file = db.url_file("sandwatch_ro");
    let d = start_with(&server, config.clone(), |s| {
        s.database_url_file = Some(url_file);
        s.stale_after = Duration::from_secs(1);
        s.record = Some(sandwatch::app::live::Recording {
            path: recording.clone(),
            max_bytes: 64 << 20,
            keep: 2,
        });
    })
    .await;
    let log = Log::follow(&d);
    wait_ready(&d, true).await;

    // An OOM kill behind the live sidecar.
    let mut pod = server
        .get("", "v1", "pods", "centaur", "centaur-sandbox-t-3")
        .unwrap();
    pod["status"] = centaur_pod("t-3")
        .set("sandbox", C::Terminated(137, "OOMKilled", 20))
        .json()["status"]
        .clone();
    server.update(pod);
    wait_for(
        Duration::from_secs(5),
        "the OOM kill's findings",
        || async { log.lines().len() >= 2 },
    )
    .await;

    // A 410 gap during which t-2's pod is deleted.
    wait_for(Duration::from_secs(5), "the watch", || async {
        server.open_watches() >= 1
    })
    .await;
    server.hold_watches();
    server.drop_all_watches();
    server.delete("", "v1", "pods", "centaur", "centaur-sandbox-t-2");
    server.compact();
    server.release_watches();
    wait_for(
        Duration::from_secs(10),
        "t-2's session without its agent",
        || async {
            log.lines()
                .iter()
                .any(|l| l.contains("session_active_without_agent centaur-sandbox-t-2"))
        },
    )
    .await;

    // A database outage, during which t-1 is suspended and its pod goes.
    sql.execute(
        "UPDATE sandbox_sessions SET state = 'suspended', updated_at = now() WHERE thread_key = 't-1'",
        &[],
    )
    .await
    .unwrap();
    drop(sql);
    let db = Arc::new(db);
    let stopping = db.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    server.delete("", "v1", "pods", "centaur", "centaur-sandbox-t-1");
    wait_ready(&d, false).await;
    let starting = db.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    wait_ready(&d, true).await;
    wait_for(Duration::from_secs(5), "t-1's orphan", || async {
        log.lines()
            .iter()
            .any(|l| l.contains("orphaned_suspended_session centaur-sandbox-t-1"))
    })
    .await;
    // What the metric says was written is what the file holds (the header aside), and
    // nothing was dropped.
    wait_for(
        Duration::from_secs(5),
        "the recording's metric to match the file",
        || async {
            let text = metrics_text(&d).await;
            let lines = std::fs::read_to_string(&recording).unwrap().lines().count() as f64;
            let written = value(&text, r#"sandwatch_record_values_total{outcome="written"}"#);
            let dropped = value(&text, r#"sandwatch_record_values_total{outcome="dropped"}"#);
            written == Some(lines - 1.0) && dropped == Some(0.0)
        },
    )
    .await;
    d.shutdown().await;

    let live: Vec<Seen> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|t| {
            let f = &t.finding;
            let d = &f.finding;
            let subject = d.pod.as_deref().or(d.session.as_deref()).unwrap_or("-");
            seen(
                &format!("{:?}", t.event).to_lowercase(),
                d.kind.as_str(),
                subject,
                &f.evidence_at.to_string(),
                &t.at.to_string(),
            )
        })
        .collect();
    assert!(live.len() >= 4, "{live:#?}");

    let text = std::fs::read_to_string(&recording).unwrap();
    assert!(text.starts_with(sandwatch::sinks::record::HEADER));
    for needle in [
        "\"listed\":",
        "\"source\":",
        "\"synced\":false",
        "\"pod_deleted\":",
    ] {
        assert!(text.contains(needle), "{needle} in the recording:\n{text}");
    }
    let inputs = vec![Input {
        name: "live.json".into(),
        reader: Box::new(std::io::Cursor::new(text.clone().into_bytes())),
    }];
    let outcome = run_with(&config, inputs, Format::Json, Vec::new(), Extras::default()).unwrap();
    assert_eq!(outcome.counts.rejected, 0, "{text}");
    let report = String::from_utf8(outcome.out).unwrap();
    let replayed: Vec<Seen> = report
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] != "summary")
        .map(|v| {
            let subject = v["pod"].as_str().or(v["session"].as_str()).unwrap_or("-");
            seen(
                v["event"].as_str().unwrap(),
                v["kind"].as_str().unwrap(),
                subject,
                v["evidence_at"].as_str().unwrap(),
                v["at"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(replayed, live, "recording:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
