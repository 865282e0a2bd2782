//! The command line as a person or a script meets it, through the built binary: choosing the
//! profiles, errors told once, JSON logs, the log filter, a replay that streams and can be
//! interrupted, `--fail-on-open`, `check-config --print`, and how a live watch's routine
//! relist is logged.

mod common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::apiserver::TestApiServer;
use support::daemon::wait_for;

const RECORDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/records.json");
const INCIDENT_01: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/01-agent-oomkilled-sidecar-keeps-pod-running.json"
);

fn sandwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandwatch"));
    c.env_remove("RUST_LOG")
        .env_remove("SANDWATCH_LOG_LEVEL")
        .env_remove("SANDWATCH_LOG_FORMAT");
    c
}

fn run(args: &[&str]) -> Output {
    sandwatch().args(args).output().expect("run sandwatch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sandwatch-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every line of a child's stdout, as it comes, through a channel.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Lines until one satisfies `want` (returned with those before it), or a failure after
/// `limit`.
fn read_until(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no {what} within 20 s; stdout so far:\n{}", seen.join("\n")),
        }
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "sandwatch did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_a_preset_or_config_each_command_refuses_naming_the_choices() {
    for args in [
        &["replay", RECORDS][..],
        &["run", "--kubeconfig", "/nonexistent"],
        &["check-config"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
        for needle in [
            "no profile given",
            "--preset NAME",
            "generic, sandbox-api, ambient, offload-modal",
            "--config FILE",
        ] {
            assert!(err.contains(needle), "{args:?}: {needle:?} in {err}");
        }
        assert!(
            out.stdout.is_empty(),
            "{args:?}: nothing was replayed or checked"
        );
    }
}

#[test]
fn a_fatal_error_is_printed_once_with_each_cause_once() {
    let out = run(&["run", "--preset", "generic", "--kubeconfig", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "printed once:\n{err}");
    assert!(
        err.starts_with(
            "sandwatch: profile \"generic\" watches pods, which needs the Kubernetes API: reading kubeconfig /nonexistent: "
        ),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "each cause once: {err}"
    );
}

/// Every line of `stderr`, parsed as a JSON log line.
fn json_lines(stderr: &[u8]) -> Vec<Value> {
    let err = text(stderr);
    err.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{err}"));
            assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
            assert!(v["timestamp"].is_string(), "{l}");
            v
        })
        .collect()
}

#[test]
fn with_json_logs_every_line_on_standard_error_is_json() {
    let d = dir("json");
    let bad_config = d.join("bad.yaml");
    std::fs::write(
        &bad_config,
        "profiles:\n  - preset: generic\n    grace:\n      absence: soon\n",
    )
    .unwrap();
    let bad_input = d.join("bad.json");
    std::fs::write(
        &bad_input,
        "{\"at\":\"2026-05-01T10:00:00Z\",\"record\":{\"kind\":\"job\",\"id\":\"j\"}}\nnot json\n",
    )
    .unwrap();

    // A fatal error: one line, JSON, the whole message in it.
    let out = run(&[
        "--log-format",
        "json",
        "run",
        "--preset",
        "generic",
        "--kubeconfig",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "ERROR");
    let message = lines[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "profile \"generic\" watches pods, which needs the Kubernetes API: reading kubeconfig /nonexistent: "
        ),
        "{message}"
    );
    assert_eq!(
        message.matches("No such file or directory").count(),
        1,
        "{message}"
    );

    // A command line clap rejects.
    let out = run(&[
        "--log-format=json",
        "replay",
        "--preset",
        "generic",
        "--bogus",
        RECORDS,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]["message"].as_str().unwrap().contains("--bogus"),
        "{lines:?}"
    );

    // check-config's errors, one object each, naming the field.
    let out = run(&[
        "--log-format",
        "json",
        "check-config",
        bad_config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["field"], "profiles[0].grace.absence");
    assert_eq!(lines[0]["level"], "ERROR");

    // A replay's skipped values (log events), the SANDWATCH_LOG_FORMAT way.
    let out = sandwatch()
        .env("SANDWATCH_LOG_FORMAT", "json")
        .args(["replay", "--preset", "generic"])
        .arg(&bad_input)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["level"] == "WARN"), "{lines:?}");

    // A log filter that cannot be read.
    let out = run(&["--log-format", "json", "--log-level", "loud", "presets"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        json_lines(&out.stderr)[0]["message"]
            .as_str()
            .unwrap()
            .contains("\"loud\"")
    );
}

/// The WARN lines a replay of one bad value writes under the given filters.
fn warnings_with(flag: Option<&str>, rust_log: Option<&str>) -> Output {
    let d = dir("filter");
    let bad = d.join("bad.json");
    std::fs::write(&bad, "not json\n").unwrap();
    let mut c = sandwatch();
    if let Some(f) = flag {
        c.args(["--log-level", f]);
    }
    if let Some(r) = rust_log {
        c.env("RUST_LOG", r);
    }
    c.args(["replay", "--preset", "generic"])
        .arg(&bad)
        .output()
        .unwrap()
}

#[test]
fn the_log_level_flag_wins_over_rust_log_and_a_bad_filter_is_an_error() {
    let warned = |o: &Output| text(&o.stderr).contains("WARN");
    assert!(warned(&warnings_with(None, None)), "info by default");
    assert!(
        !warned(&warnings_with(None, Some("error"))),
        "RUST_LOG alone filters"
    );
    assert!(!warned(&warnings_with(Some("error"), None)));
    assert!(
        warned(&warnings_with(Some("warn"), Some("error"))),
        "the flag wins"
    );
    assert!(!warned(&warnings_with(
        Some("info,sandwatch=error"),
        Some("debug")
    )));
    assert!(warned(&warnings_with(
        Some("error,sandwatch::app=warn"),
        None
    )));

    for (flag, rust_log, needle) in [
        (
            Some("loud"),
            None,
            "--log-level \"loud\": \"loud\" is neither a level",
        ),
        (
            Some("sandwatch=loud"),
            None,
            "--log-level \"sandwatch=loud\": not a log filter",
        ),
        (
            None,
            Some("sandwatch=loud"),
            "RUST_LOG \"sandwatch=loud\": not a log filter",
        ),
    ] {
        let out = warnings_with(flag, rust_log);
        assert_eq!(out.status.code(), Some(1), "{flag:?} {rust_log:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with(&format!("sandwatch: {needle}")), "{err}");
        assert!(
            out.stdout.is_empty(),
            "nothing replayed: {}",
            text(&out.stdout)
        );
    }
}

/// A replay reading a pipe that stays open, in the table format or another.
fn replay_of_stdin(extra: &[&str]) -> Child {
    sandwatch()
        .args(["replay", "--preset", "generic"])
        .args(extra)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The first `n` lines of the README's records example: a pod, a session, an execution, then
/// the agent's OOM kill, which opens three findings.
fn first_lines(n: usize) -> String {
    let all = std::fs::read_to_string(RECORDS).unwrap();
    all.lines().take(n).map(|l| format!("{l}\n")).collect()
}

fn interrupt(child: &Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn a_replay_of_a_pipe_prints_each_transition_before_the_input_ends_and_ctrl_c_prints_the_summary() {
    let mut child = replay_of_stdin(&[]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(first_lines(4).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let rx = lines_of(&mut child);
    let seen = read_until(&rx, "a transition row", |l| l.contains(" opened "));
    assert!(seen[0].starts_with("AT "), "the header first: {seen:?}");
    assert!(
        seen[1].contains("agent_terminated_pod_running") && seen[1].contains("agents/sandbox-s-1"),
        "{seen:?}"
    );

    // stdin is still open: Ctrl-C ends the replay, with the summary of what was read.
    interrupt(&child);
    let rest = read_until(&rx, "the summary", |l| l.contains(" opened, "));
    let summary = rest.last().unwrap();
    assert!(
        summary.starts_with("3 opened, 0 resolved, 3 still open"),
        "{summary}"
    );
    assert!(
        summary.ends_with("2 watch events, 2 records, 0 rejected"),
        "{summary}"
    );
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130), "interrupted");
    drop(stdin);
}

#[test]
fn a_json_replay_of_a_pipe_streams_too_and_ends_with_the_input() {
    let mut child = replay_of_stdin(&["--format", "json", "--fail-on-open"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(first_lines(4).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let rx = lines_of(&mut child);
    let seen = read_until(&rx, "a transition", |_| true);
    let first: Value = serde_json::from_str(&seen[0]).unwrap();
    assert_eq!(first["event"], "opened");
    assert_eq!(first["kind"], "agent_terminated_pod_running");

    let all = std::fs::read_to_string(RECORDS).unwrap();
    stdin
        .write_all(&all.as_bytes()[first_lines(4).len()..])
        .unwrap();
    drop(stdin);
    let rest = read_until(&rx, "the summary", |l| l.contains("\"summary\""));
    let summary: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(summary["opened_total"], 4);
    assert_eq!(summary["resolved_total"], 2);
    assert_eq!(
        wait_exit(&mut child).code(),
        Some(3),
        "--fail-on-open: two findings are open at the end"
    );
}

#[test]
fn fail_on_open_exits_3_only_when_findings_are_open_at_the_end() {
    let code = |args: &[&str]| run(args).status.code();
    // examples/records.json ends with two findings open; incident 01 with none.
    assert_eq!(code(&["replay", "--preset", "generic", RECORDS]), Some(0));
    assert_eq!(
        code(&["replay", "--preset", "generic", "--fail-on-open", RECORDS]),
        Some(3)
    );
    assert_eq!(
        code(&[
            "replay",
            "--preset",
            "sandbox-api",
            "--fail-on-open",
            INCIDENT_01
        ]),
        Some(0)
    );
    assert_eq!(
        code(&[
            "replay",
            "--preset",
            "sandbox-api",
            "--format",
            "json",
            "--fail-on-open",
            INCIDENT_01
        ]),
        Some(0)
    );
}

fn check(args: &[&str], file: Option<&Path>) -> Output {
    let mut c = sandwatch();
    c.arg("check-config").args(args);
    if let Some(f) = file {
        c.arg(f);
    }
    c.output().unwrap()
}

#[test]
fn check_config_prints_the_effective_config_and_accepts_it_as_printed() {
    let d = dir("print");
    let file = d.join("config.yaml");
    std::fs::write(
        &file,
        "profiles:\n  - preset: sandbox-api\n    grace:\n      absence: 5m\n    pods:\n      namespaces: [centaur]\n  - preset: generic\n    name: labelled\n    pods:\n      agent_containers: [runner]\n      execution_key: null\n",
    )
    .unwrap();
    let out = check(&["--print"], Some(&file));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        !printed.contains("preset:"),
        "no preset is left:\n{printed}"
    );
    for needle in [
        "name: sandbox-api",
        "absence: 5m",
        "namespaces: [centaur]",
        "agent_containers: [sandbox]",
        "name: labelled",
        "agent_containers: [runner]",
        "sandwatch.io/session",
    ] {
        assert!(printed.contains(needle), "{needle:?} in:\n{printed}");
    }
    assert!(!printed.contains("execution_key"), "removed: {printed}");

    let again = d.join("effective.yaml");
    std::fs::write(&again, &printed).unwrap();
    let out = check(&[], Some(&again));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("OK, 2 profile(s): sandbox-api, labelled"),
        "{}",
        text(&out.stdout)
    );
    let out = check(&["--print", "--config"], Some(&again));
    assert_eq!(
        text(&out.stdout),
        printed,
        "printing what was printed changes nothing"
    );

    // A preset alone, the same way.
    let out = check(&["--preset", "ambient", "--print"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let preset = d.join("ambient.yaml");
    std::fs::write(&preset, &out.stdout).unwrap();
    let out = check(&[], Some(&preset));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK, 1 profile(s): ambient"));

    // An invalid config is explained, not printed.
    let bad = d.join("bad.yaml");
    std::fs::write(
        &bad,
        "profiles:\n  - preset: generic\n    grace:\n      absence: soon\n",
    )
    .unwrap();
    let out = check(&["--print"], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("profiles[0].grace.absence: \"soon\" is not a duration"));
}

/// The JSON log lines written so far to a file.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// How many lines of this level have a message that starts with `message`.
fn count(lines: &[Value], level: &str, message: &str) -> usize {
    lines
        .iter()
        .filter(|l| {
            l["level"] == level
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
        })
        .count()
}

/// A watch that expires (410 Gone) relists without a WARN line; a watch that fails is still a
/// warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_relist_is_not_a_warning_and_a_failed_watch_is() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start().await;
    server.create(
        common::pod("agents", "sandbox-s-1")
            .label("sandwatch.io/session", "s-1")
            .container("agent", common::C::Running(0))
            .stored(),
    );
    let d = dir("relist");
    let kubeconfig = d.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\nusers:\n- name: test\n  user: {{}}\n",
            server.url()
        ),
    )
    .unwrap();
    let log = d.join("stderr");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _child = Killed(
        sandwatch()
            .args([
                "--log-format",
                "json",
                "--log-level",
                "info,sandwatch::sources=debug",
            ])
            .args([
                "run",
                "--preset",
                "generic",
                "--leader-election",
                "false",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/readyz");
    wait_for(
        Duration::from_secs(20),
        "the daemon to be ready",
        || async { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) },
    )
    .await;
    wait_for(Duration::from_secs(10), "an open watch", || async {
        server.open_watches() == 1
    })
    .await;

    server.inject_error_event(410);
    wait_for(
        Duration::from_secs(20),
        "the relist to complete",
        || async { count(&log_lines(&log), "INFO", "synced") == 2 },
    )
    .await;
    let lines = log_lines(&log);
    assert_eq!(
        count(&lines, "INFO", "relisting (the watch expired)"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count(&lines, "DEBUG", "watch expired (410 Gone)"),
        1,
        "{lines:#?}"
    );
    let warnings: Vec<&Value> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert!(
        warnings.is_empty(),
        "no warning for a relist: {warnings:#?}"
    );

    wait_for(Duration::from_secs(10), "the watch again", || async {
        server.open_watches() == 1
    })
    .await;
    server.inject_error_event(500);
    wait_for(
        Duration::from_secs(20),
        "a warning for the failed watch",
        || async { count(&log_lines(&log), "WARN", "watch failed") == 1 },
    )
    .await;
}

/// A child process, killed when the test ends (or fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
