//! Three shards against one API server and one database: each finding is reported by exactly
//! one shard, and together they report what one unsharded replica does.

mod common;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{C, centaur_pod};
use sandwatch::util::shard::Shard;
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::metrics::has;
use support::postgres::{SCHEMA, TestPostgres};

const CONFIG: &str = r#"
profiles:
  - preset: sandbox-api
    grace:
      absence: 0s
      leaked_pod: 0s
    records:
      postgres:
        poll_interval: 300ms
"#;

/// kind|pod|session|execution of every open finding.
async fn findings(d: &sandwatch::app::live::Daemon) -> Vec<String> {
    let (_, body) = get(d, "/api/v1/findings").await;
    body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or("-").to_string();
            format!(
                "{}|{}|{}|{}",
                s("kind"),
                s("pod"),
                s("session"),
                s("execution")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finding_is_reported_by_exactly_one_of_three_shards() {
    let db = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.unwrap();
    let server = TestApiServer::start().await;
    let mut rows = Vec::new();
    for i in 0..60 {
        rows.push(format!(
            "('orphan-{i}', 'centaur-sandbox-orphan-{i}', 'suspended')"
        ));
    }
    for i in 0..30 {
        let t = format!("oom-{i}");
        server
            .create((centaur_pod(&t).set("sandbox", C::Terminated(137, "OOMKilled", 5))).stored());
        rows.push(format!("('{t}', 'centaur-sandbox-{t}', 'running')"));
        if i % 2 == 0 {
            sql.execute(
                "INSERT INTO agent_execution_requests (execution_id, thread_key, status) VALUES ($1, $2, 'running')",
                &[&format!("exe-{i}"), &t],
            )
            .await
            .unwrap();
        }
    }
    for i in 0..30 {
        let t = format!("ok-{i}");
        server.create(centaur_pod(&t).stored());
        rows.push(format!("('{t}', 'centaur-sandbox-{t}', 'idle')"));
    }
    for i in 0..20 {
        server.create((centaur_pod(&format!("leak-{i}"))).stored());
    }
    sql.batch_execute(&format!(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES {}",
        rows.join(", ")
    ))
    .await
    .unwrap();
    // 60 orphans + 30 × (pod, session) + 15 executions + 20 leaked pods.
    let expected = 60 + 30 * 2 + 15 + 20;

    let url_file = db.url_file("sandwatch_ro");
    let start = |shard: Shard| {
        let url_file = url_file.clone();
        let server = &server;
        async move {
            start_with(server, sandwatch::app::config::load(CONFIG).unwrap(), |s| {
                s.database_url_file = Some(url_file);
                s.shard = shard;
            })
            .await
        }
    };
    let whole = start(Shard::ALL).await;
    let mut shards = Vec::new();
    for i in 0..3 {
        shards.push(start(Shard::new(i, 3).unwrap()).await);
    }
    wait_for(Duration::from_secs(20), "every finding", || async {
        let mut n = 0;
        for d in &shards {
            n += findings(d).await.len();
        }

        n == expected && findings(&whole).await.len() == expected
    })
    .await;
    // A few more polls: still exactly the same.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut owners: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in shards.iter().enumerate() {
        let mine = findings(d).await;
        assert!(
            !mine.is_empty(),
            "shard {i} reports nothing: the keys do not spread"
        );
        eprintln!("shard {i}: {} findings", mine.len());
        for f in mine {
            owners.entry(f).or_default().push(i);
        }
    }
    let doubled: Vec<_> = owners.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "reported by more than one shard: {doubled:?}"
    );
    let mut union: Vec<String> = owners.into_keys().collect();
    let mut all = findings(&whole).await;
    union.sort();
    all.sort();
    assert_eq!(
        union, all,
        "the shards together report exactly what one replica does"
    );
    let text = metrics_text(&shards[2]).await;
    assert!(
        has(&text, "sandwatch_shard_ordinal 2") && has(&text, "sandwatch_total_shards 3"),
        "{text}"
    );
    for d in shards {
        d.shutdown().await;
    }
    whole.shutdown().await;
}
