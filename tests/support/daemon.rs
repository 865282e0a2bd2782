//! Driving a running daemon from a test: its transitions, its HTTP endpoints, and waiting on
//! conditions with a deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use sandwatch::app::config::Config;
use sandwatch::app::live::{Daemon, Settings};
use sandwatch::model::finding::{Event, Transition};

use super::apiserver::TestApiServer;

/// Starts a daemon on a free loopback port against the test API server.
pub async fn start(server: &TestApiServer, config: Config, stale_after: Duration) -> Daemon {
    start_with(server, config, |s| s.stale_after = stale_after).await
}

/// Starts a daemon with settings adjusted by `adjust`.
pub async fn start_with(
    server: &TestApiServer,
    config: Config,
    adjust: impl FnOnce(&mut Settings),
) -> Daemon {
    let mut settings = Settings {
        tick: Duration::from_millis(100),
        ..Settings::new(config, "127.0.0.1:0".parse().unwrap())
    };
    adjust(&mut settings);
    Daemon::start(settings, Some(server.client()))
        .await
        .expect("daemon starts")
}

/// Every transition the daemon emits, collected in the background.
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<Arc<Transition>>>>);

impl Log {
    pub fn follow(daemon: &Daemon) -> Log {
        let log = Log::default();
        let mut rx = daemon.transitions();
        let sink = log.0.clone();
        tokio::spawn(async move {
            while let Ok(t) = rx.recv().await {
                sink.lock().unwrap().push(t);
            }
        });
        log
    }

    /// "event kind subject" lines in order, the subject being the pod, else the session, else
    /// the execution.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.event != Event::Updated)
            .map(|t| {
                let f = &t.finding.finding;
                format!(
                    "{:?} {} {}",
                    t.event,
                    f.kind,
                    f.pod
                        .as_deref()
                        .or(f.session.as_deref())
                        .or(f.execution.as_deref())
                        .unwrap_or("-")
                )
                .to_lowercase()
            })
            .collect()
    }
}

pub async fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{}{path}", daemon.addr))
        .await
        .expect("HTTP to the daemon");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The daemon's `/metrics` page, as Prometheus scrapes it.
pub async fn metrics_text(daemon: &Daemon) -> String {
    reqwest::get(format!("http://{}/metrics", daemon.addr))
        .await
        .expect("HTTP to the daemon")
        .text()
        .await
        .expect("the /metrics body")
}

/// Waits for a condition, checking every 20 ms, failing with `what` after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_ready(daemon: &Daemon, ready: bool) {
    wait_for(
        Duration::from_secs(15),
        if ready { "ready" } else { "not ready" },
        || async { get(daemon, "/readyz").await.0 == if ready { 200 } else { 503 } },
    )
    .await;
}

pub async fn findings(daemon: &Daemon) -> Vec<Value> {
    get(daemon, "/api/v1/findings").await.1["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Pushes a snapshot to the ingest API (what makes a pushed-records source synced): the
/// records given, in place of everything pushed before. Returns the answer.
pub async fn push_snapshot(daemon: &Daemon, token: &str, records: &[Value]) -> Value {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/records?snapshot=true",
            daemon.addr
        ))
        .bearer_auth(token)
        .body(serde_json::to_string(records).unwrap())
        .send()
        .await
        .expect("HTTP to the daemon");
    assert_eq!(r.status(), 200, "the snapshot is taken");
    r.json().await.unwrap()
}

/// A real PostgreSQL with centaur's schema, a client of it, and the test API server.
pub async fn setup() -> (
    super::postgres::TestPostgres,
    tokio_postgres::Client,
    TestApiServer,
) {
    let db = tokio::task::spawn_blocking(super::postgres::TestPostgres::start)
        .await
        .unwrap();
    let client = db.client().await;
    client.batch_execute(super::postgres::SCHEMA).await.unwrap();
    (db, client, TestApiServer::start().await)
}
