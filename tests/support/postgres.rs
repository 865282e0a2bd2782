//! A real PostgreSQL for tests: `initdb` and `pg_ctl` from the installed server binaries, on a
//! temporary directory and a free loopback port. No Docker, no mock.
//!
//! As root, the server runs as the `postgres` user (initdb refuses root). The binaries must be
//! on PATH (scripts/test puts them there); a missing binary fails the test with a clear
//! message instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct TestPostgres {
    dir: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server binary, as the `postgres` user when we are root.
fn pg(bin: &str, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {bin} ({e}): the PostgreSQL server binaries (initdb, pg_ctl) must be on PATH; scripts/test installs them")
    })
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestPostgres {
    /// Creates a cluster with a `sandwatch` superuser (trust auth on loopback) and starts it.
    pub fn start() -> TestPostgres {
        let dir = std::env::temp_dir().join(format!(
            "sandwatch-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        if is_root() {
            check(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir)
                    .output()
                    .expect("chown"),
            );
        }
        let data = dir.join("data");
        check(
            "initdb",
            pg(
                "initdb",
                &[
                    "-D",
                    path(&data),
                    "-U",
                    "sandwatch",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
            ),
        );
        let db = TestPostgres {
            dir,
            port: free_port(),
        };
        db.start_again();
        db
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            path(&self.dir)
        );
        check(
            "pg_ctl start",
            pg(
                "pg_ctl",
                &[
                    "-D",
                    path(&self.data()),
                    "-l",
                    path(&self.dir.join("server.log")),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ),
        );
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        check(
            "pg_ctl stop",
            pg(
                "pg_ctl",
                &["-D", path(&self.data()), "-m", "fast", "-w", "stop"],
            ),
        );
    }

    pub fn url(&self, user: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// A client for the test itself, as the superuser.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url("sandwatch"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    /// Writes the URL for `user` to a file, as a mounted Secret would hold it.
    pub fn url_file(&self, user: &str) -> PathBuf {
        let f = self.dir.join(format!("url-{user}"));
        std::fs::write(&f, format!("{}\n", self.url(user))).expect("write the URL file");
        f
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = pg(
            "pg_ctl",
            &["-D", path(&self.data()), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tables of centaur's sandbox API, as its code uses them (without its CHECK constraints,
/// so that tests can write rows a platform bug could leave behind), and a read-only role with
/// the grants the README documents.
pub const SCHEMA: &str = r#"
CREATE TABLE sandbox_sessions (
    thread_key text UNIQUE,
    sandbox_id text,
    harness text NOT NULL DEFAULT 'claude-code',
    engine text NOT NULL DEFAULT 'kubernetes',
    state text,
    agent_thread_id text,
    inflight_attempts integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_sessions_updated_at ON sandbox_sessions (updated_at);
CREATE TABLE agent_execution_requests (
    execution_id text PRIMARY KEY,
    thread_key text NOT NULL,
    status text NOT NULL,
    delivery jsonb,
    terminal_reason text,
    stream_break_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz,
    hard_deadline_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_execution_requests_updated_at ON agent_execution_requests (updated_at);
CREATE ROLE sandwatch_ro LOGIN;
GRANT CONNECT ON DATABASE postgres TO sandwatch_ro;
GRANT USAGE ON SCHEMA public TO sandwatch_ro;
GRANT SELECT ON sandbox_sessions, agent_execution_requests TO sandwatch_ro;
"#;

/// centaur's sandbox API with the preset's own queries; only the timings are shortened.
pub const SANDBOX_API_FAST: &str = r#"
profiles:
  - preset: sandbox-api
    grace:
      absence: 0s
    records:
      postgres:
        poll_interval: 300ms
        stale_after: 1s
        resync_interval: 1h
"#;
