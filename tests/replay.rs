//! `sandwatch replay` over the bundled incident examples, and over bad input.

use std::process::Command;

#[allow(dead_code)]
#[path = "support/metrics.rs"]
mod metrics;

use serde_json::Value;

fn replay(preset: &str, files: &[&str], extra: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args(["replay", "--format", "json", "--preset", preset])
        .args(extra)
        .args(files)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run sandwatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (lines, String::from_utf8(out.stderr).unwrap())
}

/// "event kind at pod|session|execution reason retries" for each transition.
fn brief(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["event"] != "summary")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("-").to_string();
            format!(
                "{} {} {} {}|{}|{} {} {}",
                s("event"),
                s("kind"),
                s("at"),
                s("pod"),
                s("session"),
                l["execution"]
                    .as_str()
                    .or(l["sandbox"].as_str())
                    .unwrap_or("-"),
                s("reason"),
                l["retries_after_death"]
            )
        })
        .collect()
}

fn summary(lines: &[Value]) -> &Value {
    lines
        .last()
        .filter(|l| l["event"] == "summary")
        .expect("a summary last")
}

#[test]
fn incident_01_agent_oomkilled_behind_the_tool_server() {
    let (lines, _) = replay(
        "sandbox-api",
        &["examples/01-agent-oomkilled-sidecar-keeps-pod-running.json"],
        &[],
    );
    let pod = "centaur-centaur-sandbox-slack-c07q2m1-1774550-3f9a61c2e0";
    let tk = "slack:C07Q2M1:1774550400.118029";
    let ex = "exe_01JQ3M7ZK4T9V2B8N6R5W1X0YA";
    assert_eq!(
        brief(&lines),
        [
            format!(
                "opened agent_terminated_pod_running 2026-03-26T18:51:00Z {pod}|{tk}|- OOMKilled 0"
            ),
            format!(
                "opened session_active_without_agent 2026-03-26T18:51:00Z {pod}|{tk}|- OOMKilled 0"
            ),
            format!(
                "opened execution_on_dead_agent 2026-03-26T18:51:00Z {pod}|{tk}|{ex} OOMKilled 0"
            ),
            format!(
                "resolved execution_on_dead_agent 2026-03-26T19:40:11Z {pod}|{tk}|{ex} OOMKilled 7"
            ),
            format!(
                "resolved session_active_without_agent 2026-03-26T19:40:12Z {pod}|{tk}|- OOMKilled 0"
            ),
            format!(
                "resolved agent_terminated_pod_running 2026-03-26T19:40:12Z {pod}|{tk}|- OOMKilled 0"
            ),
        ]
    );
    assert_eq!(lines[0]["namespace"], "centaur");
    assert_eq!(lines[0]["exit_code"], 137);
    assert_eq!(lines[0]["detection_latency_seconds"], 0.0);
    assert_eq!(lines[3]["open_for_seconds"], 2951.0);
    let s = summary(&lines);
    assert_eq!(s["opened_total"], 3);
    assert_eq!(s["retries_after_death_total"], 7);
    assert_eq!(s["rejected"], 0);
}

#[test]
fn incident_02_suspended_sessions_whose_pods_were_deleted() {
    let (lines, _) = replay(
        "sandbox-api",
        &["examples/02-suspended-sessions-orphaned-by-bare-pod-backend.json"],
        &[],
    );
    let b = brief(&lines);
    let opened: Vec<&String> = b.iter().filter(|l| l.starts_with("opened")).collect();
    assert_eq!(opened.len(), 5, "{b:#?}");
    assert!(
        b.iter()
            .all(|l| l.contains("orphaned_suspended_session") && l.contains(" PodGone ")),
        "{b:#?}"
    );
    // Opened two minutes (the absence grace) after each pod was deleted.
    for (i, l) in opened.iter().take(4).enumerate() {
        assert!(l.contains(&format!("2026-04-02T10:02:0{i}Z")), "{l}");
    }
    assert!(
        b[4].starts_with("resolved orphaned_suspended_session 2026-04-02T10:20:00Z"),
        "{b:#?}"
    );
    // The node-drained session: reconcile marked it suspended before the grace ran out, so it
    // never showed as active-without-agent, only as an orphan two minutes after it was marked.
    assert!(
        b[5].starts_with("opened orphaned_suspended_session 2026-04-02T10:32:45Z"),
        "{b:#?}"
    );
    assert_eq!(b.len(), 6);
    assert_eq!(summary(&lines)["open"]["orphaned_suspended_session"], 4);
}

#[test]
fn incident_03_runner_oomkilled_behind_state_sync() {
    let (lines, _) = replay(
        "ambient",
        &["examples/03-runner-oom-operator-misses-container-termination.json"],
        &[],
    );
    let p = "session-1774542180-runner";
    let s = "session-1774542180";
    assert_eq!(
        brief(&lines),
        [
            format!(
                "opened agent_terminated_pod_running 2026-03-26T17:41:27Z {p}|{s}|- OOMKilled 0"
            ),
            format!(
                "opened session_active_without_agent 2026-03-26T17:41:27Z {p}|{s}|- OOMKilled 0"
            ),
            format!(
                "resolved session_active_without_agent 2026-03-26T18:41:00Z {p}|{s}|- OOMKilled 0"
            ),
            format!(
                "resolved agent_terminated_pod_running 2026-03-26T18:41:00Z {p}|{s}|- OOMKilled 0"
            ),
        ]
    );
    assert_eq!(lines[0]["container"], "ambient-code-runner");
    assert_eq!(lines[1]["state"], "Running");
}

#[test]
fn incident_04_downloads_retried_against_a_dead_modal_sandbox() {
    let (lines, _) = replay(
        "offload-modal",
        &["examples/04-retries-against-dead-modal-sandbox.json"],
        &[],
    );
    let sb = "sb-01JT0K4Q8C3R9V6M2H7W5N1XZE";
    assert_eq!(
        brief(&lines),
        [
            "opened execution_on_dead_agent 2026-05-01T14:09:40Z -|-|run-7 SandboxDead 0"
                .to_string(),
            "resolved execution_on_dead_agent 2026-05-01T14:13:49Z -|-|run-7 SandboxDead 3"
                .to_string(),
        ]
    );
    assert_eq!(lines[0]["sandbox"], sb);
    assert_eq!(summary(&lines)["retries_after_death_total"], 3);
}

#[test]
fn the_same_file_always_prints_the_same_output() {
    let files = ["examples/02-suspended-sessions-orphaned-by-bare-pod-backend.json"];
    let a = replay("sandbox-api", &files, &[]).0;
    let b = replay("sandbox-api", &files, &[]).0;
    assert_eq!(a, b);
}

#[test]
fn malformed_values_are_reported_with_their_position_counted_and_skipped() {
    let dir = std::env::temp_dir().join(format!("sandwatch-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.json");
    std::fs::write(
        &file,
        concat!(
            "{\"at\":\"2026-01-01T00:00:00Z\",\"record\":{\"kind\":\"sandbox\",\"id\":\"sb-1\",\"state\":\"running\"}}\n",
            "{\"at\":\"2026-01-01T00:00:01Z\",\"record\":{\"kind\":\"execution\",\"id\":\"run-1\",\"sandbox\":\"sb-1\",\"state\":\"running\"}}\n",
            "{\"at\":\"2026-01-01T00:00:02Z\",\"record\":{\"kind\":\"job\",\"id\":\"x\"}}\n",
            "this is not json\n",
            "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"spec\":{}}}\n",
            "{\"at\":\"2026-01-01T00:00:03Z\",\"record\":{\"kind\":\"execution\",\"id\":\"run-1\",\"attempt\":\"three\"}}\n",
            "{\"at\":\"2026-01-01T00:00:04Z\",\"record\":{\"kind\":\"sandbox\",\"id\":\"sb-1\",\n",
            "{\"at\":\"2026-01-01T00:00:05Z\",\"record\":{\"kind\":\"sandbox\",\"id\":\"sb-1\",\"state\":\"failure\"}}\n",
        ),
    )
    .unwrap();
    let (lines, stderr) = replay("offload-modal", &[file.to_str().unwrap()], &[]);
    assert_eq!(summary(&lines)["rejected"], 5, "{stderr}");
    for needle in [
        "value 3 (line 3)",
        "record.kind: \"job\" is not a record kind",
        "value 4 (line 4)",
        "value 5 (line 5)",
        "metadata",
        "value 6 (line 6)",
        "record.attempt",
        "value 7 (line 7)",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    // Everything good around the bad values was applied.
    assert_eq!(
        brief(&lines),
        ["opened execution_on_dead_agent 2026-01-01T00:00:05Z -|-|run-1 SandboxDead 0"]
    );
}

#[test]
fn every_value_that_is_dropped_is_counted() {
    let dir = std::env::temp_dir().join(format!("sandwatch-dropped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dropped.json");
    std::fs::write(
        &file,
        concat!(
            "{\"at\":\"2026-01-01T00:00:00Z\",\"record\":{\"kind\":\"sandbox\",\"id\":\"sb-1\",\"state\":\"running\"}}\n",
            // Not a pod, nor a resource any profile names.
            "{\"type\":\"ADDED\",\"object\":{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"api\",\"namespace\":\"default\"}}}\n",
            // A key given twice.
            "{\"at\":\"2026-01-01T00:00:01Z\",\"record\":{\"kind\":\"sandbox\",\"id\":\"sb-1\",\"state\":\"running\",\"state\":\"failure\"}}\n",
            // A far-future sentinel where a time belongs.
            "{\"at\":\"9999-12-31T23:59:59Z\"}\n",
            // Cut short at the end of the recording.
            "{\"at\":\"2026-01-01T00:00:02Z\",\"record\":{\"kind\":\"sandbox\",\"id\":\"sb-1\",\"sta",
        ),
    )
    .unwrap();
    let (lines, stderr) = replay("offload-modal", &[file.to_str().unwrap()], &[]);
    let s = summary(&lines);
    assert_eq!(s["rejected"], 4, "{stderr}");
    assert_eq!(
        s["events"], 0,
        "the Service is not a watch event sandwatch used"
    );
    for needle in [
        "value 2 (line 2)",
        "object.kind: \"Service\" (apiVersion \"v1\") is neither a Pod nor a custom resource",
        "value 3 (line 3)",
        "duplicate field `state`",
        "value 4 (line 4)",
        "far-future",
        "value 5 (line 5)",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn reads_standard_input_and_writes_metrics() {
    let dir = std::env::temp_dir().join(format!("sandwatch-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("metrics.txt");
    let input = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/02-suspended-sessions-orphaned-by-bare-pod-backend.json"
    ))
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args([
            "replay",
            "--preset",
            "sandbox-api",
            "--metrics-out",
            metrics.to_str().unwrap(),
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("AT "), "{table}");
    assert!(
        table.contains("5 opened, 1 resolved, 4 still open"),
        "{table}"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "sandwatch_orphaned_suspended_sessions{profile=\"sandbox-api\"} 4",
        "sandwatch_findings_opened_total{kind=\"orphaned_suspended_session\"} 5",
        "sandwatch_findings_resolved_total{kind=\"orphaned_suspended_session\"} 1",
        "sandwatch_sessions_active_without_agent{profile=\"sandbox-api\"} 0",
        "sandwatch_detection_latency_seconds_count{kind=\"orphaned_suspended_session\"} 5",
    ] {
        assert!(metrics::has(&text, line), "missing {line:?} in:\n{text}");
    }
}

/// A report read slowly (standard output a pipe nobody reads for a while, so the sinks' thread
/// blocks on it) still gets every transition, and the summary counts them all.
#[test]
fn a_report_read_slowly_loses_no_transition() {
    use std::io::Read;
    let n = 5000;
    let at = "2026-05-01T14:00:01Z";
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!(
            "{{\"at\":\"{at}\",\"record\":{{\"kind\":\"sandbox\",\"id\":\"sb-{i}\",\"state\":\"running\"}}}}\n\
             {{\"at\":\"{at}\",\"record\":{{\"kind\":\"execution\",\"id\":\"run-{i}\",\"sandbox\":\"sb-{i}\",\"state\":\"running\",\"attempt\":0}}}}\n\
             {{\"at\":\"{at}\",\"record\":{{\"kind\":\"sandbox\",\"id\":\"sb-{i}\",\"state\":\"failure\"}}}}\n"
        ));
    }
    let path =
        std::env::temp_dir().join(format!("sandwatch-slow-report-{}.json", std::process::id()));
    std::fs::write(&path, input).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args(["replay", "--format", "json", "--preset", "generic"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The slow reader: nothing is read until the pipe has long been full.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::remove_file(&path).unwrap();
    let opened = out
        .lines()
        .filter(|l| l.contains("\"event\":\"opened\""))
        .count();
    assert_eq!(opened, n);
    let summary = out.lines().last().unwrap();
    assert!(
        summary.contains(&format!("\"opened_total\":{n},")),
        "{summary}"
    );
}

#[test]
fn check_config_explains_errors_and_accepts_good_files() {
    let dir = std::env::temp_dir().join(format!("sandwatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "profiles:\n  - preset: sandbox-api\n    grace:\n      absence: soon\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("profiles[0].grace.absence: \"soon\" is not a duration"),
        "{err}"
    );
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "profiles:\n  - preset: sandbox-api\n  - preset: ambient\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK, 2 profile(s): sandbox-api, ambient")
    );
}

/// The text of the fenced block that follows `marker` in the README.
fn readme_block(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme.find(marker).expect("marker in README") + marker.len()..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn the_readme_record_examples_replayed_as_written_give_the_findings_it_shows() {
    let input = readme_block("<!-- records-example -->");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/records.json");
    assert_eq!(
        std::fs::read_to_string(file).unwrap().trim(),
        input.trim(),
        "examples/records.json is the README's example"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args(["replay", "--preset", "generic", file])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        readme_block("<!-- records-example-output -->").trim()
    );
}

#[test]
fn text_from_outside_cannot_forge_a_line_of_the_table() {
    let dir = std::env::temp_dir().join(format!("sandwatch-forge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("forge.json");
    let pod = serde_json::json!({"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "sandbox-s-1", "namespace": "agents", "uid": "u-1", "labels": {"sandwatch.io/session": "s-1"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "agent"}, {"name": "tools"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "agent", "state": {"terminated": {"exitCode": 137, "finishedAt": "2026-05-01T10:00:00Z",
                "reason": "OOMKilled\n2026-05-01T10:00:01Z  resolved  agent_terminated_pod_running  generic  agents/sandbox-s-1"}}},
            {"name": "tools", "state": {"running": {}}}]}}});
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandwatch"))
        .args(["replay", "--preset", "generic"])
        .arg(&file)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("2026-")).collect();
    assert_eq!(rows.len(), 1, "one transition, one row:\n{table}");
    assert!(rows[0].contains("OOMKilled\\n2026"), "{table}");
}
