//! The alert rules and the dashboard, proven with the real Prometheus tools: promtool checks
//! and unit-tests the rules, and a real Prometheus scrapes a running sandwatch (fed by the test
//! API server and a real PostgreSQL) and evaluates every alert and panel expression.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{Value, json};

use common::{C, centaur_pod};
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::postgres::{SCHEMA, TestPostgres};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus tool from PATH; its absence fails the test (scripts/test installs them).
fn tool(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{name} is not installed: scripts/test installs Debian's prometheus package"
    );
    PathBuf::from(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_checks_and_unit_tests() {
    let promtool = tool("promtool");
    let text = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root().join("alerts/sandwatch.rules.yml")));
    assert!(text.contains("SUCCESS: 15 rules found"), "{text}");
    let text = run(Command::new(&promtool)
        .current_dir(root().join("alerts"))
        .args(["test", "rules", "sandwatch.rules.test.yml"]));
    assert!(text.contains("SUCCESS"), "{text}");
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/sandwatch.json")).unwrap(),
    )
    .unwrap()
}

/// Every PromQL expression of the dashboard's panels, with Grafana's variables filled in.
fn panel_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$profile", ".*");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed_and_its_queries_parse() {
    let d = dashboard();
    assert_eq!(d["uid"], "sandwatch-overview", "a stable uid");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert_eq!(
        (vars[0]["name"].as_str(), vars[0]["type"].as_str()),
        (Some("datasource"), Some("datasource"))
    );
    let mut ids = std::collections::HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id in {p}"
        );
        assert!(p["gridPos"]["w"].as_u64().unwrap() > 0);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            }
        }
    }
    // promtool parses each expression as a recording rule.
    let dir = std::env::temp_dir().join(format!("sandwatch-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules: Vec<Value> = panel_queries(&d)
        .iter()
        .enumerate()
        .map(|(i, (_, e))| json!({"record": format!("dashboard:check:{i}"), "expr": e}))
        .collect();
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap(),
    )
    .unwrap();
    let text = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file));
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{text}"
    );
}

/// A Prometheus process on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates `rules` every second.
    fn start(target: &str, rules: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "sandwatch-prom-{}-{}",
            std::process::id(),
            target.replace(':', "-")
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("sandwatch.rules.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [sandwatch.rules.yml]\nscrape_configs:\n  - job_name: sandwatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    async fn query(&self, expr: &str) -> Value {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            &[("query", expr)],
        )
        .unwrap();
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body
    }

    async fn has_data(&self, expr: &str) -> bool {
        !self.query(expr).await["data"]["result"]
            .as_array()
            .unwrap()
            .is_empty()
    }

    async fn value(&self, expr: &str) -> f64 {
        let r = self.query(expr).await;
        r["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("NaN")
            .parse()
            .unwrap_or(f64::NAN)
    }
}

/// The alert rules with every `for:` shortened to a second, so that a test sees them fire.
fn fast_rules() -> String {
    std::fs::read_to_string(root().join("alerts/sandwatch.rules.yml"))
        .unwrap()
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for:") {
                format!("{}for: 1s", &l[..l.len() - l.trim_start().len()])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const PROFILE: &str = r#"
profiles:
  - preset: sandbox-api
    grace:
      absence: 1s
      leaked_pod: 1s
    records:
      postgres:
        poll_interval: 300ms
    remediation:
      base_url: http://127.0.0.1:9
      actions:
        mark_session_gone:
          enabled: true
          grace: 0s
remediation:
  mode: dry_run
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_sandwatch_evaluates_every_expression_and_fires_the_alert() {
    // The scenario: one of each finding, from pods in the test API server and rows in PostgreSQL.
    let db = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.unwrap();
    let server = TestApiServer::start().await;
    let oom = centaur_pod("t-oom").set("sandbox", C::Terminated(137, "OOMKilled", 10));
    server.create(oom.stored());
    server.create(centaur_pod("t-leak").stored());
    sql.batch_execute(&format!(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES
           ('t-oom', '{}', 'running'), ('t-orphan', 'centaur-sandbox-t-orphan', 'suspended'),
           ('t-weird', 'centaur-sandbox-t-weird', 'hibernating');
         INSERT INTO agent_execution_requests (execution_id, thread_key, status, stream_break_count)
           VALUES ('exe-1', 't-oom', 'running', 0);",
        oom.name
    ))
    .await
    .unwrap();
    let url_file = db.url_file("sandwatch_ro");
    let d = start_with(
        &server,
        sandwatch::config::load_str(PROFILE).unwrap(),
        |s| s.database_url_file = Some(url_file),
    )
    .await;
    wait_ready(&d, true).await;
    wait_for(
        Duration::from_secs(10),
        "one finding of each kind",
        || async { get(&d, "/api/v1/findings").await.1["count"] == 5 },
    )
    .await;

    let prom = Prometheus::start(&d.addr.to_string(), &fast_rules());
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || async {
        matches!(reqwest::get(format!("{}/-/ready", prom.url)).await, Ok(r) if r.status() == 200)
    })
    .await;
    // The reclaim loop: the execution is retried against the dead agent.
    for n in 1..=3 {
        sql.execute("UPDATE agent_execution_requests SET stream_break_count = $1, status = 'retry_wait', updated_at = now() WHERE execution_id = 'exe-1'", &[&n])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // (a) the target is up, and scraped without errors.
    wait_for(Duration::from_secs(30), "the target to be up", || async {
        let t: Value = reqwest::get(format!("{}/api/v1/targets", prom.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let target = &t["data"]["activeTargets"][0];
        target["health"] == "up" && target["lastError"] == ""
    })
    .await;
    // Enough scrapes for rates over a minute.
    wait_for(Duration::from_secs(30), "several scrapes", || async {
        prom.value("count_over_time(sandwatch_findings_opened_total{kind=\"orphaned_suspended_session\"}[1m])").await >= 4.0
    })
    .await;

    // promtool's lint: its only complaints are the known one about OpenMetrics counters (HELP
    // is written for the family, `sandwatch_x`, while the sample is `sandwatch_x_total`).
    let text = reqwest::get(format!("http://{}/metrics", d.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lint = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in complaints.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("_total no help text"),
            "promtool check metrics: {line}"
        );
    }

    // (b) the headline gauges.
    for (expr, want) in [
        (
            "sum(sandwatch_agent_container_terminated_while_pod_running{namespace=\"centaur\",profile=\"sandbox-api\",reason=\"OOMKilled\"})",
            1.0,
        ),
        (
            "sum(sandwatch_executions_on_dead_agent{profile=\"sandbox-api\",state=\"retry_wait\"})",
            1.0,
        ),
        (
            "sum(sandwatch_orphaned_suspended_sessions{profile=\"sandbox-api\"})",
            1.0,
        ),
        (
            "sum(sandwatch_sessions_active_without_agent{profile=\"sandbox-api\"})",
            1.0,
        ),
        (
            "sum(sandwatch_leaked_sandbox_pods{namespace=\"centaur\",profile=\"sandbox-api\"})",
            1.0,
        ),
        (
            "sum(sandwatch_retries_against_dead_agent_total{profile=\"sandbox-api\"})",
            3.0,
        ),
        ("min(sandwatch_source_synced)", 1.0),
        ("sum(sandwatch_build_info)", 1.0),
        (
            "sum(sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"dry_run\"})",
            1.0,
        ),
        ("sum(sandwatch_leader)", 1.0),
    ] {
        assert_eq!(prom.value(expr).await, want, "{expr}");
    }

    // (c) every alert expression parses and every metric it reads has data; every panel query
    // parses and returns data (no panel reads a metric that does not exist).
    let rules: Value = serde_json::to_value(
        serde_saphyr::from_str::<serde_json::Value>(
            &std::fs::read_to_string(root().join("alerts/sandwatch.rules.yml")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        prom.query(expr).await;
        for name in metric_names(expr) {
            assert!(
                prom.has_data(&name).await,
                "alert {}: no data for {name}",
                rule["alert"]
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 15);
    for (panel, expr) in panel_queries(&dashboard()) {
        assert!(
            prom.has_data(&expr).await,
            "panel {panel:?}: no data for {expr}"
        );
    }

    // (d) the alert for the injected incident fires.
    wait_for(Duration::from_secs(30), "SandwatchAgentTerminatedPodRunning to fire", || async {
        prom.has_data("ALERTS{alertname=\"SandwatchAgentTerminatedPodRunning\",alertstate=\"firing\",reason=\"OOMKilled\"}").await
    })
    .await;
    for alert in [
        "SandwatchOrphanedSuspendedSessions",
        "SandwatchExecutionsOnDeadAgent",
        "SandwatchLeakedSandboxPods",
        "SandwatchSessionsActiveWithoutAgent",
    ] {
        wait_for(Duration::from_secs(30), alert, || async {
            prom.has_data(&format!(
                "ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}"
            ))
            .await
        })
        .await;
    }
    assert!(
        !prom
            .has_data("ALERTS{alertname=\"SandwatchSourceDown\"}")
            .await,
        "every source is up"
    );
    d.shutdown().await;
}

/// The metric names an expression reads (sandwatch's own, and `up`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if word_start && (expr[i..].starts_with("sandwatch_") || expr[i..].starts_with("up{")) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |k| i + k);
            names.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names.sort();
    names.dedup();
    names
}
