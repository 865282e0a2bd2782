//! Loading and re-polling a large sessions table from a real PostgreSQL.
//!
//! `cargo bench --bench postgres [-- --rows N --changes N]` (defaults: 1,000,000 rows, 1,000
//! changes) starts PostgreSQL from the installed server binaries, fills centaur's
//! `sandbox_sessions` table, and runs the real PostgreSQL source of the `sandbox-api` preset
//! into a real engine. It prints the full load's rows/s, then the time and rows of incremental
//! polls: one after `--changes` rows were updated, one with nothing changed. The cost of a
//! re-poll follows the changes, not the table.

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandwatch::core::engine::{Change, Engine};
use sandwatch::sources::SourceCounters;
use sandwatch::sources::postgres::{Context, Postgres};
use sandwatch::util::time::Ts;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Every poll the source reports: (full, seconds, rows).
#[derive(Default)]
struct Polls(Mutex<Vec<(bool, f64, u64)>>);

impl SourceCounters for Polls {
    fn watch_event(&self, _: &str) {}
    fn watch_restart(&self, _: &str) {}
    fn watch_error(&self, _: &str) {}
    fn pushed(&self, _: &str, _: u64) {}
    fn rejected(&self, _: &str, _: &str) {}
    fn poll(&self, _: &str, full: bool, seconds: f64, rows: u64, ok: bool) {
        if ok {
            self.0.lock().unwrap().push((full, seconds, rows));
        }
    }
}

impl Polls {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn last(&self) -> (bool, f64, u64) {
        *self.0.lock().unwrap().last().unwrap()
    }
}

async fn wait_polls(polls: &Polls, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while polls.count() < n {
        assert!(Instant::now() < deadline, "the poll did not come");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows = arg("--rows", 1_000_000);
    let changes = arg("--changes", 1_000);
    let db = tokio::task::spawn_blocking(postgres::TestPostgres::start).await?;
    let sql = db.client().await;
    sql.batch_execute(postgres::SCHEMA).await?;
    let t = Instant::now();
    sql.execute(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state, updated_at)
         SELECT 'slack:C0:' || g, 'centaur-sandbox-' || g,
                (ARRAY['running','idle','suspended','stopped'])[1 + g % 4], now() - interval '1 day'
         FROM generate_series(1, $1::int) AS g",
        &[&(rows as i32)],
    )
    .await?;
    sql.batch_execute("ANALYZE sandbox_sessions").await?;
    println!("filled {rows} rows in {:.1?}", t.elapsed());

    let config = sandwatch::app::config::load(
        "profiles:\n  - preset: sandbox-api\n    records:\n      postgres:\n        poll_interval: 200ms\n        resync_interval: 1h\n",
    )?;
    let settings = config.records[0].postgres.clone().unwrap();
    let profiles = config.profiles.clone();
    let source = Postgres::new(
        sandwatch::model::profile::ProfileId(0),
        "sandbox-api",
        settings,
        Some(&db.url_file("sandwatch_ro")),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Ts, Change)>(4096);
    let polls = Arc::new(Polls::default());
    let cx = Context {
        profiles: profiles.clone(),
        changes: tx,
        counters: polls.clone(),
    };
    // The engine applies every change, as in the daemon.
    let applied = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let engine_applied = applied.clone();
    let engine_profiles = profiles.clone();
    tokio::spawn(async move {
        let mut engine = Engine::new(engine_profiles);
        while let Some((at, change)) = rx.recv().await {
            engine.apply(at, change);
            engine_applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    tokio::spawn(source.run(cx));
    wait_polls(&polls, 1).await;
    let (full, secs, n) = polls.last();
    let wall = started.elapsed().as_secs_f64();
    assert!(full);
    println!(
        "full load: {n} rows in {secs:.2} s ({:.0} rows/s) read from PostgreSQL; {:.2} s until the engine had applied them ({:.0} rows/s)",
        n as f64 / secs,
        wall,
        n as f64 / wall
    );

    // Let the overlap window (30 s behind the newest row) settle on the old rows, then change some.
    wait_polls(&polls, 2).await;
    let (_, idle_secs, idle_rows) = polls.last();
    println!(
        "incremental poll, nothing changed: {:.1} ms, {idle_rows} rows read",
        idle_secs * 1000.0
    );
    let before = polls.count();
    sql.execute(
        "UPDATE sandbox_sessions SET state = 'suspended', updated_at = now()
         WHERE thread_key IN (SELECT 'slack:C0:' || g FROM generate_series(1, $1::int) AS g)",
        &[&(changes as i32)],
    )
    .await?;
    loop {
        wait_polls(&polls, polls.count() + 1).await;
        let (_, secs, n) = polls.last();
        if n as usize >= changes {
            println!(
                "incremental poll after {changes} updated rows: {:.1} ms, {n} rows read ({} polls after the update)",
                secs * 1000.0,
                polls.count() - before
            );
            break;
        }
    }
    Ok(())
}
