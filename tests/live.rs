//! `sandwatch run` against the test API server: the real kube-rs client and watcher, the real
//! daemon code, real HTTP on loopback. And without any cluster, for profiles of records only.

mod common;
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{C, PodB, pod};
use sandwatch::model::finding::Event;
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::metrics::has;

fn sandbox(name: &str) -> PodB {
    pod("agents", name)
        .label("sandwatch.io/session", name)
        .container("agent", C::Running(1))
        .container("tools", C::Running(1))
}

/// Replaces a pod's status behind the daemon's back, as the kubelet would.
fn kubelet_update(server: &TestApiServer, p: &PodB) {
    let mut current = server
        .get("", "v1", "pods", &p.ns, &p.name)
        .expect("pod exists");
    current["status"] = p.json()["status"].clone();
    server.update(current);
}

fn generic() -> sandwatch::app::config::Config {
    sandwatch::app::config::preset("generic").unwrap()
}

#[tokio::test]
async fn oomkilled_agent_behind_a_live_sidecar_is_found_within_a_second_and_deletion_resolves_it() {
    let server = TestApiServer::start().await;
    let p = sandbox("s-1");
    server.create(p.stored());
    let daemon = start(&server, generic(), Duration::from_secs(5)).await;
    let mut rx = daemon.transitions();
    wait_ready(&daemon, true).await;
    wait_for(Duration::from_secs(5), "the watch to open", || async {
        server.open_watches() > 0
    })
    .await;

    kubelet_update(
        &server,
        &p.clone().set("agent", C::Terminated(137, "OOMKilled", 100)),
    );
    let sent = Instant::now();
    let t = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("a transition within one second of the MODIFIED event")
        .unwrap();
    let latency = sent.elapsed();
    assert_eq!(t.event, Event::Opened);
    assert_eq!(
        t.finding.finding.kind.as_str(),
        "agent_terminated_pod_running"
    );
    eprintln!("detected {latency:?} after the MODIFIED event was written");

    let open = findings(&daemon).await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["reason"], "OOMKilled");
    assert_eq!(open[0]["pod"], "s-1");
    assert_eq!(open[0]["session"], "s-1");
    assert_eq!(open[0]["container"], "agent");
    assert_eq!(open[0]["exit_code"], 137);

    server.delete("", "v1", "pods", "agents", "s-1");
    let t = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("resolved")
        .unwrap();
    assert_eq!(t.event, Event::Resolved);
    assert!(findings(&daemon).await.is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_410_relist_sees_the_deletions_of_the_gap_and_nothing_flaps() {
    let server = TestApiServer::start().await;
    let dead = |name: &str| sandbox(name).set("agent", C::Terminated(137, "OOMKilled", 10));
    for name in ["a", "b", "c"] {
        server.create(dead(name).stored());
    }
    server.create(sandbox("d").stored());
    let daemon = start(&server, generic(), Duration::from_secs(30)).await;
    let log = Log::follow(&daemon);
    wait_ready(&daemon, true).await;
    wait_for(Duration::from_secs(5), "three findings", || async {
        findings(&daemon).await.len() == 3
    })
    .await;
    wait_for(Duration::from_secs(5), "the watch to open", || async {
        server.open_watches() == 1
    })
    .await;
    let before = server
        .requests()
        .iter()
        .filter(|r| r.verb == "list")
        .count();

    // The watch breaks; meanwhile a pod goes, another dies; history is compacted away.
    server.hold_watches();
    server.drop_all_watches();
    server.delete("", "v1", "pods", "agents", "a");
    kubelet_update(&server, &dead("d"));
    server.compact();
    server.release_watches();

    wait_for(Duration::from_secs(10), "the relist", || async {
        server
            .requests()
            .iter()
            .filter(|r| r.verb == "list")
            .count()
            > before
    })
    .await;
    wait_for(Duration::from_secs(10), "findings for b, c, d", || async {
        let mut pods: Vec<String> = findings(&daemon)
            .await
            .iter()
            .map(|f| f["pod"].as_str().unwrap().to_string())
            .collect();
        pods.sort();
        pods == ["b", "c", "d"]
    })
    .await;
    wait_ready(&daemon, true).await;
    let mut lines = log.lines();
    lines.sort();
    assert_eq!(
        lines,
        [
            "opened agent_terminated_pod_running a",
            "opened agent_terminated_pod_running b",
            "opened agent_terminated_pod_running c",
            "opened agent_terminated_pod_running d",
            "resolved agent_terminated_pod_running a",
        ],
        "b and c must not flap; a's deletion during the gap must be seen"
    );
    daemon.shutdown().await;
}

const AMBIENT_FAST: &str = r#"
profiles:
  - preset: ambient
    grace:
      absence: 1s
"#;

fn agentic_session(ns: &str, name: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"initialPrompt": "fix the flaky test", "timeout": 3600},
        "status": {"phase": phase}
    })
}

fn runner(ns: &str, session: &str) -> PodB {
    pod(ns, &format!("{session}-runner"))
        .label("agentic-session", session)
        .label("app", "ambient-code-runner")
        .container("ambient-code-runner", C::Running(1))
        .container("state-sync", C::Running(1))
}

fn ambient_server_resources(server: &TestApiServer) {
    server.register(
        "vteam.ambient-code",
        "v1alpha1",
        "agenticsessions",
        "AgenticSession",
        true,
    );
}

#[tokio::test]
async fn an_api_server_outage_holds_findings_and_the_daemon_recovers_by_itself() {
    let server = TestApiServer::start().await;
    ambient_server_resources(&server);
    server.create(agentic_session("project-a", "s-9", "Running"));
    server.create(runner("project-a", "s-9").stored());
    let daemon = start(
        &server,
        sandwatch::app::config::load(AMBIENT_FAST).unwrap(),
        Duration::from_millis(500),
    )
    .await;
    let log = Log::follow(&daemon);
    wait_ready(&daemon, true).await;

    server.go_down().await;
    // Behind the daemon's back, during the outage, the runner pod goes away.
    server.delete("", "v1", "pods", "project-a", "s-9-runner");
    wait_ready(&daemon, false).await;
    let (_, body) = get(&daemon, "/readyz").await;
    let not_ready: Vec<&str> = body["not_ready"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(not_ready.contains(&"pods/ambient"), "{body}");
    assert!(
        not_ready.contains(&"agenticsessions.vteam.ambient-code/ambient"),
        "{body}"
    );
    // Several absence graces pass while the source is down: nothing opens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        log.lines().is_empty(),
        "nothing may open while the source is down: {:?}",
        log.lines()
    );

    let came_up = sandwatch::util::time::Ts::now();
    server.come_up().await;
    wait_ready(&daemon, true).await;
    // Now the relist shows the pod gone: the session is active without an agent, once the
    // absence grace has passed since the source was trusted again.
    wait_for(
        Duration::from_secs(10),
        "the finding after recovery",
        || async { log.lines() == ["opened session_active_without_agent s-9"] },
    )
    .await;
    // In the daemon's own timeline: the evidence is the departure seen after recovery (not
    // the deletion during the outage), and the finding opened a whole grace after it.
    let found = findings(&daemon).await;
    let at =
        |field: &str| sandwatch::util::time::Ts::parse(found[0][field].as_str().unwrap()).unwrap();
    let (evidence_at, opened_at) = (at("evidence_at"), at("opened_at"));
    assert!(
        evidence_at >= came_up,
        "the grace counts from recovery: evidence at {evidence_at}, the API server came up at {came_up}: {found:?}"
    );
    assert!(
        opened_at.0 - evidence_at.0 >= 500,
        "the finding waited its grace: evidence at {evidence_at}, opened at {opened_at}"
    );
    let metrics = metrics_text(&daemon).await;
    assert!(
        has(
            &metrics,
            "sandwatch_watch_restarts_total{source=\"pods/ambient\"}"
        ),
        "{metrics}"
    );
    assert!(
        has(
            &metrics,
            "sandwatch_source_synced{source=\"pods/ambient\"} 1"
        ),
        "{metrics}"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_label_selected_watch_never_receives_or_keeps_unrelated_pods() {
    let server = TestApiServer::start().await;
    let dead = |p: PodB| p.set("agent", C::Terminated(137, "OOMKilled", 10));
    server.create((dead(sandbox("mine"))).stored());
    let unrelated = pod("agents", "someone-else")
        .label("app", "web")
        .container("agent", C::Terminated(137, "OOMKilled", 10))
        .container("tools", C::Running(1));
    server.create(unrelated.stored());
    let daemon = start(&server, generic(), Duration::from_secs(5)).await;
    wait_ready(&daemon, true).await;
    wait_for(Duration::from_secs(5), "one finding", || async {
        findings(&daemon).await.len() == 1
    })
    .await;
    // An unrelated pod created later never arrives either.
    server.create(
        (pod("agents", "later")
            .label("app", "web")
            .container("agent", C::Running(1)))
        .stored(),
    );
    wait_for(Duration::from_secs(5), "the watch to open", || async {
        server.open_watches() == 1
    })
    .await;

    // The daemon only ever lists and watches (the RBAC it needs: list/watch pods).
    for r in server.requests() {
        assert!(
            r.verb == "list" || r.verb == "watch",
            "unexpected API call {r:?}"
        );
    }
    let pod_calls: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "pods")
        .collect();
    assert!(!pod_calls.is_empty());
    for r in &pod_calls {
        assert_eq!(
            r.param("labelSelector").as_deref(),
            Some("sandwatch.io/session"),
            "{r:?}"
        );
    }
    let (_, ready) = get(&daemon, "/readyz").await;
    assert_eq!(ready["pods"], 1, "only the selected pod is kept: {ready}");
    assert_eq!(findings(&daemon).await[0]["pod"], "mine");
    daemon.shutdown().await;
}

#[tokio::test]
async fn agentic_sessions_are_session_records_joined_with_their_runner_pods() {
    let server = TestApiServer::start().await;
    ambient_server_resources(&server);
    server.create(agentic_session("project-a", "s-9", "Running"));
    server.create(agentic_session("project-b", "s-9", "Running")); // same name, other project
    let r = runner("project-a", "s-9");
    server.create(r.stored());
    server.create(runner("project-b", "s-9").stored());
    let daemon = start(
        &server,
        sandwatch::app::config::preset("ambient").unwrap(),
        Duration::from_secs(5),
    )
    .await;
    let log = Log::follow(&daemon);
    wait_ready(&daemon, true).await;
    let (_, ready) = get(&daemon, "/readyz").await;
    assert_eq!(ready["records"], 2, "{ready}");

    kubelet_update(
        &server,
        &r.clone()
            .set("ambient-code-runner", C::Terminated(137, "OOMKilled", 100)),
    );
    wait_for(Duration::from_secs(5), "two findings", || async {
        findings(&daemon).await.len() == 2
    })
    .await;
    let open = findings(&daemon).await;
    let session = open
        .iter()
        .find(|f| f["kind"] == "session_active_without_agent")
        .expect("the CR session");
    assert_eq!(session["session"], "s-9");
    assert_eq!(session["namespace"], "project-a");
    assert_eq!(session["state"], "Running");
    assert_eq!(session["reason"], "OOMKilled");

    // The user stops the session: the operator moves the CR to Stopped.
    let mut cr = server
        .get(
            "vteam.ambient-code",
            "v1alpha1",
            "agenticsessions",
            "project-a",
            "s-9",
        )
        .unwrap();
    cr["status"]["phase"] = json!("Stopped");
    server.update(cr);
    wait_for(
        Duration::from_secs(5),
        "the session finding to resolve",
        || async {
            log.lines()
                .contains(&"resolved session_active_without_agent s-9-runner".to_string())
        },
    )
    .await;
    assert_eq!(
        findings(&daemon).await.len(),
        1,
        "the pod itself is still stuck"
    );
    daemon.shutdown().await;
}

const TWO_TEAMS: &str = r#"
profiles:
  - preset: ambient
    name: team-a
    pods: { namespaces: [project-a] }
  - preset: ambient
    name: team-b
    pods: { namespaces: [project-b] }
"#;

#[tokio::test]
async fn each_profile_owns_the_custom_resources_its_own_watch_lists() {
    let server = TestApiServer::start().await;
    ambient_server_resources(&server);
    for ns in ["project-a", "project-b"] {
        server.create(agentic_session(ns, "s-1", "Running"));
        server.create(runner(ns, "s-1").stored());
    }
    let daemon = start(
        &server,
        sandwatch::app::config::load(TWO_TEAMS).unwrap(),
        Duration::from_secs(5),
    )
    .await;
    wait_ready(&daemon, true).await;
    for ns in ["project-a", "project-b"] {
        kubelet_update(
            &server,
            &runner(ns, "s-1").set("ambient-code-runner", C::Terminated(137, "OOMKilled", 100)),
        );
    }
    wait_for(Duration::from_secs(5), "four findings", || async {
        findings(&daemon).await.len() == 4
    })
    .await;
    let mut sessions: Vec<String> = findings(&daemon)
        .await
        .iter()
        .filter(|f| f["kind"] == "session_active_without_agent")
        .map(|f| {
            format!(
                "{} {}",
                f["profile"].as_str().unwrap(),
                f["namespace"].as_str().unwrap()
            )
        })
        .collect();
    sessions.sort();
    assert_eq!(
        sessions,
        ["team-a project-a", "team-b project-b"],
        "each session joins the runner pod of its own profile"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_binary_connects_through_a_kubeconfig_context_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start().await;
    // The termination reason is free text from the node: this one tries to forge a log line.
    const FORGED: &str = "OOMKilled\n2026-01-01T00:00:00Z  INFO sandwatch::sinks::log: finding resolved kind=agent_terminated_pod_running";
    server.create((sandbox("s-1").set("agent", C::Terminated(137, FORGED, 10))).stored());
    let dir = std::env::temp_dir().join(format!("sandwatch-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: other\nclusters:\n- name: test\n  cluster:\n    server: {}\n- name: nowhere\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n- name: other\n  context:\n    cluster: nowhere\n    user: test\nusers:\n- name: test\n  user: {{}}\n",
            server.url()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args([
            "run",
            "--preset",
            "generic",
            "--context",
            "test",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_for(
        Duration::from_secs(20),
        "the daemon to be ready",
        || async {
            matches!(reqwest::get(format!("{url}/readyz")).await, Ok(r) if r.status() == 200)
        },
    )
    .await;
    let body: Value = reqwest::get(format!("{url}/api/v1/findings"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["count"], 1, "{body}");
    let page = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("1 open findings") && page.contains("OOMKilled"),
        "{page}"
    );
    assert_eq!(
        reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );

    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sandwatch did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let logs = std::fs::read_to_string(dir.join("stderr")).unwrap();
    let opened: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("finding opened"))
        .collect();
    assert_eq!(opened.len(), 1, "{logs}");
    assert!(
        opened[0].contains("reason=OOMKilled\\n2026"),
        "escaped: {}",
        opened[0]
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "no line was forged:\n{logs}"
    );
}

const GENERIC_FAST_SIDECAR: &str = r#"
profiles:
  - preset: generic
    grace:
      native_sidecar: 3s
"#;

#[tokio::test]
async fn native_sidecars_crash_loops_and_graceful_deletion_through_the_api() {
    let server = TestApiServer::start().await;
    // A native sidecar still running after the agent exited (just now): counts only after its
    // grace, measured from the agent's finishedAt.
    let just_now = sandwatch::util::time::Ts::now().0 / 1000 - common::T0;
    let native = pod("agents", "native")
        .label("sandwatch.io/session", "native")
        .container("agent", C::Terminated(1, "Error", just_now))
        .native_sidecar("proxy", C::Running(0));
    // A crash loop under restartPolicy Always: not this finding.
    let looping = sandbox("looping")
        .restart_policy("Always")
        .set("agent", C::Waiting("CrashLoopBackOff"));
    // A plain sidecar keeping a dead agent's pod Running.
    let stuck = sandbox("stuck").set("agent", C::Terminated(137, "OOMKilled", 0));
    for p in [&native, &looping, &stuck] {
        let mut v = p.stored();
        v["spec"]["nodeName"] = json!("node-1"); // scheduled: deletion is graceful
        server.create(v);
    }
    let daemon = start(
        &server,
        sandwatch::app::config::load(GENERIC_FAST_SIDECAR).unwrap(),
        Duration::from_secs(5),
    )
    .await;
    let log = Log::follow(&daemon);
    wait_ready(&daemon, true).await;
    wait_for(Duration::from_secs(5), "both stuck pods", || async {
        findings(&daemon).await.len() == 2
    })
    .await;
    let lines = log.lines();
    assert_eq!(
        lines[0], "opened agent_terminated_pod_running stuck",
        "the plain sidecar opens first: {lines:?}"
    );
    assert_eq!(lines[1], "opened agent_terminated_pod_running native");
    let native_open = log
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|t| t.finding.finding.pod.as_deref() == Some("native"))
        .cloned()
        .unwrap();
    let f = &native_open.finding;
    let after = f.opened_at.secs_since(f.evidence_at);
    assert!(
        after >= 3.0,
        "opened {after} s after the agent's finishedAt: the native sidecar's grace is 3 s",
    );
    assert_eq!(
        native_open.detection_latency_secs(),
        None,
        "the agent died before the watch was synced: not a detection latency"
    );

    // kubectl delete: the API server sets deletionTimestamp (MODIFIED) and keeps the pod for
    // its grace period; the finding resolves as soon as the pod is terminating.
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(server.client(), "agents");
    api.delete("stuck", &Default::default()).await.unwrap();
    wait_for(
        Duration::from_secs(5),
        "the terminating pod's finding to resolve",
        || async {
            log.lines()
                .contains(&"resolved agent_terminated_pod_running stuck".to_string())
        },
    )
    .await;
    assert!(
        server.get("", "v1", "pods", "agents", "stuck").is_some(),
        "still there, terminating"
    );
    assert!(
        !log.lines().iter().any(|l| l.contains("looping")),
        "{:?}",
        log.lines()
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_pod_the_decoder_cannot_read_is_skipped_and_counted_and_the_watch_still_syncs() {
    let server = TestApiServer::start().await;
    let dead = sandbox("dead").set("agent", C::Terminated(137, "OOMKilled", 5));
    server.create(dead.stored());
    // A status the slim decoder cannot read (an exit code that is not a number), in the
    // initial list.
    let mut odd = sandbox("odd").stored();
    odd["status"]["containerStatuses"][0]["state"] =
        json!({"terminated": {"exitCode": "one hundred", "finishedAt": common::rfc(5)}});
    server.create(odd);
    let daemon = start(&server, generic(), Duration::from_secs(5)).await;
    wait_ready(&daemon, true).await;
    wait_for(
        Duration::from_secs(5),
        "the readable pod judged",
        || async { findings(&daemon).await.len() == 1 },
    )
    .await;
    let m = metrics_text(&daemon).await;
    assert!(
        has(
            &m,
            "sandwatch_rejected_inputs_total{source=\"pods/generic\",reason=\"invalid_value\"} 1"
        ),
        "{m}"
    );
    assert!(
        has(
            &m,
            "sandwatch_rule_active{profile=\"generic\",kind=\"agent_terminated_pod_running\"} 1"
        ) && has(
            &m,
            "sandwatch_rule_active{profile=\"generic\",kind=\"leaked_sandbox_pod\"} 0"
        ),
        "with pods only, the record rules do not run, and the metric says so:\n{m}"
    );
    let (_, ready) = get(&daemon, "/readyz").await;
    assert_eq!(
        ready["rules"]["generic"]["running"],
        json!(["agent_terminated_pod_running"]),
        "{ready}"
    );
    // A known pod that turns unreadable keeps what was known of it (its finding stays
    // open), and its deletion is still seen: its identity is enough.
    let mut current = server.get("", "v1", "pods", "agents", "dead").unwrap();
    current["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = json!("x");
    server.update(current);
    wait_for(Duration::from_secs(5), "the update rejected", || async {
        let m = metrics_text(&daemon).await;
        has(
            &m,
            "sandwatch_rejected_inputs_total{source=\"pods/generic\",reason=\"invalid_value\"} 2",
        )
    })
    .await;
    assert_eq!(findings(&daemon).await.len(), 1, "kept as last known");
    server.delete("", "v1", "pods", "agents", "dead");
    wait_for(Duration::from_secs(5), "the deletion seen", || async {
        findings(&daemon).await.is_empty()
    })
    .await;
    daemon.shutdown().await;
}

const TOKEN: &str = "a-long-ingest-token";

fn offload_modal() -> sandwatch::app::config::Config {
    sandwatch::app::config::preset("offload-modal").unwrap()
}

fn settings(config: sandwatch::app::config::Config) -> sandwatch::app::live::Settings {
    sandwatch::app::live::Settings {
        tick: Duration::from_millis(100),
        ingest_token: Some(TOKEN.into()),
        ..sandwatch::app::live::Settings::new(config, "127.0.0.1:0".parse().unwrap())
    }
}

#[tokio::test]
async fn a_records_only_profile_starts_and_gets_ready_without_a_cluster() {
    let settings = settings(offload_modal());
    assert_eq!(settings.cluster_use(), None);
    let daemon = sandwatch::app::live::Daemon::start(settings, None)
        .await
        .expect("starts with no Kubernetes client");
    assert_eq!(get(&daemon, "/healthz").await.0, 200);
    // Not ready until its one source, the ingest API, has a snapshot.
    let (status, ready) = get(&daemon, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    push_snapshot(
        &daemon,
        TOKEN,
        &[
            json!({"kind": "sandbox", "id": "sb-1", "state": "failure"}),
            json!({"kind": "execution", "id": "run-1", "sandbox": "sb-1", "state": "downloading"}),
        ],
    )
    .await;
    wait_ready(&daemon, true).await;
    wait_for(Duration::from_secs(5), "the finding", || async {
        findings(&daemon).await.len() == 1
    })
    .await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn without_a_cluster_what_needs_one_does_not_start_and_says_what_it_is() {
    let e = sandwatch::app::live::Daemon::start(settings(generic()), None)
        .await
        .err()
        .expect("no start without a client");
    assert_eq!(
        e.to_string(),
        "profile \"generic\" watches pods, which needs the Kubernetes API, but no client for it was given"
    );
    let with = |actions: &str| {
        let yaml = format!(
            "profiles:\n  - preset: offload-modal\n    remediation:\n      actions:\n        {actions}\n"
        );
        settings(sandwatch::app::config::load(&yaml).unwrap())
    };
    let reap = with("reap_pod: { enabled: true, kubernetes: { delete_pod: true } }");
    assert_eq!(
        reap.cluster_use().unwrap().to_string(),
        "remediation action \"reap_pod\" acts on Kubernetes objects"
    );
    let mut call =
        with("finalize_execution: { enabled: true, http: { url: \"http://127.0.0.1:9/cancel\" } }");
    assert_eq!(call.cluster_use(), None, "an HTTP call without a Lease");
    call.leader_election = Some(sandwatch::remediation::lease::Elector::new(
        "sandwatch-remediation",
        "sandwatch",
        "a",
    ));
    assert_eq!(
        call.cluster_use().unwrap().to_string(),
        "remediation competes for the Lease sandwatch/sandwatch-remediation (--leader-election)"
    );
}

/// `sandwatch run` with no cluster to be found: no kubeconfig where `$KUBECONFIG` points, an
/// empty home, no in-cluster service account.
fn run_without_a_cluster(dir: &std::path::Path, args: &[&str]) -> std::process::Child {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .arg("run")
        .args(args)
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env("HOME", &home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for a child to exit, failing after `limit`.
async fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("sandwatch did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_binary_runs_the_offload_modal_preset_without_a_kubeconfig() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("sandwatch-no-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = run_without_a_cluster(
        &dir,
        &[
            "--preset",
            "offload-modal",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ingest-token-file",
            token.to_str().unwrap(),
        ],
    );
    wait_for(Duration::from_secs(20), "/healthz", || {
        if let Ok(Some(status)) = child.try_wait() {
            let logs = std::fs::read_to_string(dir.join("stderr")).unwrap();
            panic!("sandwatch exited ({status}):\n{logs}");
        }
        let healthz = format!("{url}/healthz");
        async move { matches!(reqwest::get(healthz).await, Ok(r) if r.status() == 200) }
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{url}/api/v1/records?snapshot=true"))
        .bearer_auth(TOKEN)
        .body(r#"[{"kind":"sandbox","id":"sb-1","state":"running"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(Duration::from_secs(10), "ready", || async {
        matches!(reqwest::get(format!("{url}/readyz")).await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = exit_within(&mut child, Duration::from_secs(10)).await;
    let logs = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(status.success(), "{status}:\n{logs}");
    assert!(!logs.contains("Kubernetes API"), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_binary_says_why_it_needs_the_cluster_it_cannot_find() {
    let dir = std::env::temp_dir().join(format!("sandwatch-needs-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child =
        run_without_a_cluster(&dir, &["--preset", "generic", "--listen", "127.0.0.1:0"]);
    let status = exit_within(&mut child, Duration::from_secs(20)).await;
    let logs = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("sandwatch: profile \"generic\" watches pods, which needs the Kubernetes API: finding the cluster"),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
