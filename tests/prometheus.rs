//! The alert rules and the dashboard, proven with the real Prometheus tools: promtool checks
//! and unit-tests the rules, and a real Prometheus scrapes a running sandwatch (fed by the test
//! API server and a real PostgreSQL) and evaluates every alert and panel expression.

mod common;
mod support;

use std::collections::BTreeMap;
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

/// A target as the shipped ServiceMonitor makes it: the replica's address and the labels
/// the Prometheus operator puts on its series.
struct Target {
    addr: String,
    pod: String,
}

/// Whether the shipped ServiceMonitor keeps sandwatch's own labels (`honorLabels`).
fn service_monitor_honors_labels() -> bool {
    let text =
        std::fs::read_to_string(root().join("deploy/kube-prometheus-stack/servicemonitor.yaml"))
            .unwrap();
    let sm: Value = serde_saphyr::from_str(&text).unwrap();
    sm["spec"]["endpoints"][0]["honorLabels"] == true
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates `rules` every second.
    fn start(target: &str, rules: &str) -> Prometheus {
        Prometheus::scraping(
            &[Target {
                addr: target.to_string(),
                pod: "sandwatch-0".into(),
            }],
            rules,
        )
    }

    /// Scrapes every target each second, labelled as the Prometheus operator labels the
    /// targets of the shipped ServiceMonitor (job, namespace, pod, service, endpoint; its
    /// `honorLabels`), and evaluates `rules` every second.
    fn scraping(targets: &[Target], rules: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "sandwatch-prom-{}-{}",
            std::process::id(),
            targets[0].addr.replace(':', "-")
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("sandwatch.rules.yml"), rules).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [sandwatch.rules.yml]\nscrape_configs:\n  - job_name: sandwatch\n    honor_labels: {}\n    static_configs:\n",
            service_monitor_honors_labels()
        );
        for t in targets {
            config.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{namespace: sandwatch, pod: {}, service: sandwatch, endpoint: http, container: sandwatch}}\n",
                t.addr, t.pod
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
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

    async fn ready(&self) {
        wait_for(Duration::from_secs(30), "Prometheus to be ready", || async {
            matches!(reqwest::get(format!("{}/-/ready", self.url)).await, Ok(r) if r.status() == 200)
        })
        .await;
    }

    /// Waits until every target is up and scraped without error.
    async fn targets_up(&self, n: usize) {
        wait_for(Duration::from_secs(30), "every target up", || async {
            let t: Value = reqwest::get(format!("{}/api/v1/targets", self.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let active = t["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            active.len() == n
                && active
                    .iter()
                    .all(|t| t["health"] == "up" && t["lastError"] == "")
        })
        .await;
    }

    /// The result vector of an instant query: each series' labels and value.
    async fn vector(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let r = self.query(expr).await;
        r["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let v = s["value"][1].as_str().unwrap().parse().unwrap_or(f64::NAN);
                (labels, v)
            })
            .collect()
    }

    /// The alerts Prometheus has now: (name, labels, state, value).
    async fn alerts(&self) -> Vec<(String, BTreeMap<String, String>, String, f64)> {
        let body: Value = reqwest::get(format!("{}/api/v1/alerts", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let labels: BTreeMap<String, String> = a["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (
                    labels["alertname"].clone(),
                    labels,
                    a["state"].as_str().unwrap().to_string(),
                    a["value"]
                        .as_str()
                        .unwrap_or("NaN")
                        .parse()
                        .unwrap_or(f64::NAN),
                )
            })
            .collect()
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
        sandwatch::app::config::load(PROFILE).unwrap(),
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

    // The exposition: the classic format (what curl and promtool get) passes promtool's lint
    // without a complaint, and the OpenMetrics one (what Prometheus asks for) parses with the
    // Prometheus project's own OpenMetrics parser (Python's prometheus-client).
    let get = |accept: Option<&'static str>| {
        let url = format!("http://{}/metrics", d.addr);
        async move {
            let mut r = reqwest::Client::new().get(url);
            if let Some(a) = accept {
                r = r.header("accept", a);
            }
            let r = r.send().await.unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (ct, r.text().await.unwrap())
        }
    };
    let (ct, classic) = get(None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let complaints = pipe(
        Command::new(tool("promtool")).args(["check", "metrics"]),
        &classic,
    );
    assert!(
        complaints.trim().is_empty(),
        "promtool check metrics:\n{complaints}"
    );
    let (ct, openmetrics) = get(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ))
    .await;
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct}"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    let parsed = pipe(
        Command::new(python()).args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfams = list(p(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))",
        ]),
        &openmetrics,
    );
    let samples: usize = parsed
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the OpenMetrics parser said: {parsed}"));
    let classic_samples = classic
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert_eq!(
        samples, classic_samples,
        "both formats carry the same samples"
    );

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

/// Runs a command with `input` on standard input; its output (stdout and stderr). A command
/// that fails says so in what it prints.
fn pipe(cmd: &mut Command, input: &str) -> String {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The test Python (with prometheus-client), installed by scripts/test.
fn python() -> String {
    let py = std::env::var("SANDWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import prometheus_client: scripts/test installs it into target/test-python"
    );
    py
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

// ------------------------------------------------------------------------------------------
// As deployed: several replicas scraped by one Prometheus with the shipped rules.

/// The shipped config (deploy/base/sandwatch.yaml) with its sandbox-api example in use, made
/// quick for a test: graces of a second, fast polls, a dry-run remediation.
fn deployed_config() -> sandwatch::app::config::Config {
    let shipped = std::fs::read_to_string(root().join("deploy/base/sandwatch.yaml")).unwrap();
    let uncommented: String = shipped
        .lines()
        .map(|l| {
            l.strip_prefix("  # ")
                .map_or(l.to_string(), |r| format!("  {r}"))
        })
        .filter(|l| !l.trim_start().starts_with("- preset: ambient"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        uncommented.contains("default_namespace: centaur"),
        "{uncommented}"
    );
    let quick = uncommented.replace(
        "      default_namespace: centaur",
        "      default_namespace: centaur
      postgres:
        poll_interval: 300ms
    grace:
      absence: 1s
      leaked_pod: 1s
    remediation:
      base_url: http://127.0.0.1:9
      actions:
        mark_session_gone: { enabled: true, grace: 0s }",
    );
    sandwatch::app::config::load(&quick).unwrap_or_else(|e| panic!("{e}\n{quick}"))
}

/// The pods and rows of a healthy platform: eight running sessions with live agents (two of
/// them executing), four suspended sessions whose pods are still there, and one pod of the
/// generic profile.
async fn healthy_platform(server: &TestApiServer, sql: &tokio_postgres::Client) {
    let mut rows = Vec::new();
    for i in 1..=12 {
        let t = format!("t-{i}");
        server.create(centaur_pod(&t).stored());
        let state = if i <= 8 { "running" } else { "suspended" };
        rows.push(format!("('{t}', 'centaur-sandbox-{t}', '{state}')"));
    }
    sql.batch_execute(&format!(
        "INSERT INTO sandbox_sessions (thread_key, sandbox_id, state) VALUES {};
         INSERT INTO agent_execution_requests (execution_id, thread_key, status, stream_break_count)
           VALUES ('exe-1', 't-1', 'running', 0), ('exe-2', 't-2', 'running', 0);",
        rows.join(", ")
    ))
    .await
    .unwrap();
    server.create(
        common::pod("agents", "g-1")
            .label("sandwatch.io/session", "g-1")
            .container("agent", C::Running(1))
            .container("tools", C::Running(1))
            .stored(),
    );
}

/// The incident, with its ground truth: three centaur agents OOM-killed (two of them under an
/// execution, retried three times each), one generic agent OOM-killed, four suspended
/// sessions' pods deleted, one sandbox pod nobody owns.
async fn incident(server: &TestApiServer, sql: &tokio_postgres::Client) {
    let kill = |ns: &str, name: &str, container: &str| {
        let mut p = server.get("", "v1", "pods", ns, name).unwrap();
        for c in p["status"]["containerStatuses"].as_array_mut().unwrap() {
            if c["name"] == container {
                c["state"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled",
                    "startedAt": common::rfc(0), "finishedAt": common::rfc(5)}});
            }
        }
        server.update(p);
    };
    for t in ["t-1", "t-2", "t-3"] {
        kill("centaur", &format!("centaur-sandbox-{t}"), "sandbox");
    }
    kill("agents", "g-1", "agent");
    for t in 9..=12 {
        server.delete(
            "",
            "v1",
            "pods",
            "centaur",
            &format!("centaur-sandbox-t-{t}"),
        );
    }
    server.create(centaur_pod("leak").stored());
    for n in 1..=3 {
        sql.execute(
            "UPDATE agent_execution_requests SET stream_break_count = $1, updated_at = now()",
            &[&n],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a person must see during the incident: the series each finding query gives, with
/// zero for every other series it returns.
type Labels = &'static [(&'static str, &'static str)];

fn ground_truth(expr: &str) -> Option<Vec<(Labels, f64)>> {
    let truth: Vec<(Labels, f64)> = if expr.starts_with("sum by (reason) (") {
        vec![(&[("reason", "OOMKilled")], 4.0)]
    } else if expr.starts_with("sum by (state) (") {
        vec![(&[("state", "running")], 2.0)]
    } else if expr.starts_with("sum by (namespace) (") {
        vec![(&[("namespace", "centaur")], 1.0)]
    } else if expr.starts_with("sum(") {
        let n = [
            (
                "sandwatch_agent_container_terminated_while_pod_running",
                4.0,
            ),
            ("sandwatch_executions_on_dead_agent", 2.0),
            ("sandwatch_orphaned_suspended_sessions", 4.0),
            ("sandwatch_sessions_active_without_agent", 3.0),
            ("sandwatch_leaked_sandbox_pods", 1.0),
        ]
        .iter()
        .find(|(m, _)| expr.contains(m))?
        .1;
        vec![(&[], n)]
    } else {
        return None;
    };
    Some(truth)
}

/// The alerts that must fire during the incident, with their values.
const FIRING: &[(&str, Labels, f64)] = &[
    (
        "SandwatchAgentTerminatedPodRunning",
        &[
            ("namespace", "centaur"),
            ("profile", "sandbox-api"),
            ("reason", "OOMKilled"),
        ],
        3.0,
    ),
    (
        "SandwatchAgentTerminatedPodRunning",
        &[
            ("namespace", "agents"),
            ("profile", "generic"),
            ("reason", "OOMKilled"),
        ],
        1.0,
    ),
    (
        "SandwatchExecutionsOnDeadAgent",
        &[("profile", "sandbox-api"), ("state", "running")],
        2.0,
    ),
    (
        "SandwatchOrphanedSuspendedSessions",
        &[("profile", "sandbox-api")],
        4.0,
    ),
    (
        "SandwatchSessionsActiveWithoutAgent",
        &[("profile", "sandbox-api")],
        3.0,
    ),
    (
        "SandwatchLeakedSandboxPods",
        &[("namespace", "centaur"), ("profile", "sandbox-api")],
        1.0,
    ),
];

fn matches(labels: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
}

/// Runs the platform against replicas of these shards (two of one: the shipped deployment;
/// two of each of two: sharded), all scraped by one Prometheus with the shipped rules, and
/// checks that every dashboard query and every alert reads the ground truth: nothing on a
/// healthy platform, the true counts during the incident.
async fn as_deployed(shards: &[sandwatch::util::shard::Shard]) {
    let db = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.unwrap();
    let server = TestApiServer::start().await;
    healthy_platform(&server, &sql).await;

    let mut replicas = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let config = deployed_config();
        let url_file = db.url_file("sandwatch_ro");
        let lease = if shard.total > 1 {
            format!("sandwatch-remediation-{}", shard.index)
        } else {
            "sandwatch-remediation".to_string()
        };
        // The shipped Lease timings.
        let elector = sandwatch::remediation::lease::Elector::new(
            &lease,
            "sandwatch",
            &format!("sandwatch-{i}"),
        );
        let shard = *shard;
        replicas.push(
            start_with(&server, config, |s| {
                s.database_url_file = Some(url_file);
                s.leader_election = Some(elector);
                s.shard = shard;
            })
            .await,
        );
    }
    for d in &replicas {
        wait_ready(d, true).await;
    }
    let targets: Vec<Target> = replicas
        .iter()
        .enumerate()
        .map(|(i, d)| Target {
            addr: d.addr.to_string(),
            pod: format!("sandwatch-{i}"),
        })
        .collect();
    let prom = Prometheus::scraping(&targets, &fast_rules());
    prom.ready().await;
    prom.targets_up(replicas.len()).await;
    wait_for(
        Duration::from_secs(30),
        "a minute's worth of scrapes",
        || async {
            prom.value("min(count_over_time(sandwatch_build_info[1m]))")
                .await
                >= 5.0
        },
    )
    .await;

    // A healthy platform: every panel has data (zeros, not "No data"), and no alert is
    // pending or firing, on any replica count.
    let panels = panel_queries(&dashboard());
    for (panel, expr) in &panels {
        assert!(
            prom.has_data(expr).await,
            "healthy: panel {panel:?} has no data: {expr}"
        );
        if ground_truth(expr).is_some() {
            for (labels, v) in prom.vector(expr).await {
                assert_eq!(
                    v, 0.0,
                    "healthy: panel {panel:?} reads {v} for {labels:?}: {expr}"
                );
            }
        }
    }
    let alerts = prom.alerts().await;
    assert!(alerts.is_empty(), "healthy: {alerts:?}");
    let leaders = prom.vector("sum by (shard) (sandwatch_leader)").await;
    assert_eq!(
        leaders.len(),
        shards
            .iter()
            .map(|s| s.index)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    assert!(
        leaders.iter().all(|(_, v)| *v == 1.0),
        "one leader per shard: {leaders:?}"
    );

    // The incident.
    incident(&server, &sql).await;
    // One replica per shard speaks for it.
    let mut speakers: Vec<&sandwatch::app::live::Daemon> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (d, shard) in replicas.iter().zip(shards) {
        if seen.insert(shard.index) {
            speakers.push(d);
        }
    }
    wait_for(
        Duration::from_secs(20),
        "the 14 findings across the shards",
        || async {
            let mut n = 0;
            for d in &speakers {
                n += findings(d).await.len();
            }
            n == 14
        },
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "Prometheus to see them",
        || async {
            prom.value("sum(max by (profile, shard) (sandwatch_orphaned_suspended_sessions))")
                .await
                == 4.0
                && prom
                    .value(
                        "sum(max by (namespace, profile, shard) (sandwatch_leaked_sandbox_pods))",
                    )
                    .await
                    == 1.0
                && prom
                    .value(
                        "sum(max by (profile, shard) (sandwatch_retries_against_dead_agent_total))",
                    )
                    .await
                    == 6.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every finding panel reads the ground truth, every other series it returns reads 0.
    let mut checked = 0;
    for (panel, expr) in &panels {
        let Some(truth) = ground_truth(expr) else {
            continue;
        };
        let got = prom.vector(expr).await;
        for (labels, value) in &got {
            let want = truth
                .iter()
                .find(|(l, _)| {
                    l.len() == labels.len()
                        && l.iter()
                            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map_or(0.0, |(_, v)| *v);
            assert_eq!(
                *value, want,
                "panel {panel:?}: {labels:?} reads {value}, the truth is {want}: {expr}"
            );
        }
        for (l, v) in &truth {
            assert!(
                got.iter()
                    .any(|(labels, value)| matches(labels, l) && value == v),
                "panel {panel:?}: no series {l:?} = {v} in {got:?}: {expr}"
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked, 10,
        "the five stat panels and the five open-findings queries"
    );

    // Counters count each shard once: the retries panel agrees with the counter's increase,
    // where a plain sum over the replicas would read one per replica of each shard.
    let replicas_per_shard = shards.len() as f64
        / shards
            .iter()
            .map(|s| s.index)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as f64;
    let deduped = prom
        .value("sum(max by (profile, shard) (increase(sandwatch_retries_against_dead_agent_total[1m])))")
        .await;
    let naive = prom
        .value("sum(increase(sandwatch_retries_against_dead_agent_total[1m]))")
        .await;
    assert!(deduped > 0.0, "{deduped}");
    let ratio = naive / deduped;
    assert!(
        (ratio - replicas_per_shard).abs() < 0.3 * replicas_per_shard,
        "a plain sum counts each replica ({naive}); the shipped query counts each shard once ({deduped})"
    );
    // Only the replica that remediates counts its calls: one dry run per orphan, drained at
    // the action's rate (30 a minute), never one per replica.
    let dry_runs =
        "sum(sandwatch_remediations_total{action=\"mark_session_gone\",outcome=\"dry_run\"})";
    wait_for(
        Duration::from_secs(30),
        "a dry run for each orphan",
        || async { prom.value(dry_runs).await >= 4.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(prom.value(dry_runs).await, 4.0);
    assert_eq!(
        prom.value("sum by (action) (max by (action, shard) (sandwatch_remediation_backlog))")
            .await,
        0.0
    );

    // Every counting alert fires with the true count, in the sandbox's namespace (not
    // sandwatch's own, which the ServiceMonitor's target carries); nothing else fires.
    wait_for(
        Duration::from_secs(30),
        "the incident's alerts to fire",
        || async {
            let alerts = prom.alerts().await;
            FIRING.iter().all(|(name, labels, _)| {
                alerts
                    .iter()
                    .any(|(n, l, state, _)| n == name && matches(l, labels) && state == "firing")
            })
        },
    )
    .await;
    let alerts = prom.alerts().await;
    for (name, labels, want) in FIRING {
        let (_, _, _, value) = alerts
            .iter()
            .find(|(n, l, _, _)| n == name && matches(l, labels))
            .unwrap();
        assert_eq!(value, want, "{name} {labels:?}");
    }
    for (name, labels, _, value) in &alerts {
        assert!(
            FIRING.iter().any(|(n, _, _)| n == name) || name == "SandwatchRetriesAgainstDeadAgent",
            "unexpected alert {name} {labels:?} = {value}"
        );
        assert_ne!(
            labels.get("namespace").map(String::as_str),
            Some("sandwatch"),
            "{name}"
        );
    }
    for d in replicas {
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_as_shipped_read_the_true_counts() {
    use sandwatch::util::shard::Shard;
    as_deployed(&[Shard::ALL, Shard::ALL]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_of_two_replicas_add_up_to_the_true_counts() {
    use sandwatch::util::shard::Shard;
    let (a, b) = (Shard::new(0, 2).unwrap(), Shard::new(1, 2).unwrap());
    as_deployed(&[a, a, b, b]).await;
}
