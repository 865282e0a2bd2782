use std::collections::HashMap;

use super::*;
use crate::model::finding::{Finding, OpenFinding};
use crate::model::ids::{RecordKey, RecordKind, Subject, Uid};
use crate::model::profile::ProfileId;
use crate::model::source::{Feed, SourceStatus};
use crate::model::view::SourceTimes;

fn finding(id: u64, kind: FindingKind, ns: &str, pod: Option<&str>, opened: i64) -> OpenFinding {
    OpenFinding {
        id,
        finding: Finding {
            kind,
            profile: "generic".into(),
            namespace: Some(ns.into()),
            pod: pod.map(Into::into),
            session: Some(format!("s-{id}").into()),
            execution: None,
            sandbox: None,
            reason: "OOMKilled".into(),
            container: Some("agent".into()),
            exit_code: Some(137),
            state: None,
            pod_uid: None,
        },
        opened_at: Ts::from_secs(opened),
        evidence_at: Ts::from_secs(opened - 30),
        retries_after_death: 2,
        seen_live: true,
        subject: match pod {
            Some(p) => Subject::Pod {
                namespace: ns.into(),
                name: p.into(),
                uid: Uid::parse("u"),
            },
            None => Subject::Record(RecordKey {
                kind: RecordKind::Session,
                profile: ProfileId(0),
                namespace: None,
                id: format!("s-{id}").into(),
            }),
        },
    }
}

fn snapshot(findings: Vec<OpenFinding>) -> Snapshot {
    let pods = SourceStatus::new("pods/generic", Some(ProfileId(0)), vec![Feed::Pods], true);
    let mut times = HashMap::new();
    times.insert(
        pods.name.clone(),
        SourceTimes {
            last_success: Some(Ts::from_secs(990)),
            last_error: Some((Ts::from_secs(900), "connection <refused>".into())),
        },
    );
    Snapshot {
        at: Ts::from_secs(1000),
        findings,
        sources: vec![pods],
        pods: 3,
        records: 0,
        rules: vec![
            (
                "generic".into(),
                FindingKind::AgentTerminatedPodRunning,
                true,
            ),
            ("generic".into(), FindingKind::LeakedSandboxPod, false),
        ],
        source_times: times,
    }
}

fn about() -> About {
    About {
        version: "1.2.3",
        started_at: Ts::from_secs(0),
        shard: "0/1".into(),
        remediation: Some("dry_run"),
    }
}

fn page(snap: &Snapshot, query: &[(&str, &str)]) -> Result<String, String> {
    let pairs = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let q = PageQuery::parse(pairs).map_err(|e| e.to_string())?;
    Ok(render(
        snap,
        &about(),
        &RemediationView::default(),
        &q,
        Ts::from_secs(1000),
    ))
}

fn rows(html: &str, class: &str) -> usize {
    html.matches(&format!("<tr class=\"{class}\">")).count()
}

#[test]
fn the_findings_of_one_pod_are_one_group() {
    let snap = snapshot(vec![
        finding(
            1,
            FindingKind::AgentTerminatedPodRunning,
            "a",
            Some("p1"),
            100,
        ),
        finding(2, FindingKind::ExecutionOnDeadAgent, "a", Some("p1"), 110),
        finding(
            3,
            FindingKind::AgentTerminatedPodRunning,
            "b",
            Some("p2"),
            120,
        ),
        finding(4, FindingKind::OrphanedSuspendedSession, "a", None, 130),
    ]);
    let h = page(&snap, &[]).unwrap();
    assert_eq!(rows(&h, "group"), 3, "{h}");
    assert_eq!(rows(&h, "finding"), 4);
    assert!(h.contains("kubectl -n a describe pod p1"));
    assert!(h.contains("session a/s-4"));
    // Newest first by default: the session group (opened at 130) comes before pod p1.
    assert!(h.find("session a/s-4").unwrap() < h.find("pod a/p1").unwrap());
    let oldest = page(&snap, &[("sort", "oldest")]).unwrap();
    assert!(oldest.find("pod a/p1").unwrap() < oldest.find("session a/s-4").unwrap());
    // Evidence time with its age, container and exit code, retries, the runbook link.
    assert!(h.contains("1970-01-01T00:01:10Z (15 min 30 s ago)"), "{h}");
    assert!(h.contains("agent (137)"));
    assert!(h.contains("docs/runbooks.md#sandwatchagentterminatedpodrunning"));
    assert!(
        h.contains("href=\"/api/v1/explain?pod=a%2Fp1&amp;profile=generic\">why</a>"),
        "{h}"
    );
    assert!(h.contains("href=\"/api/v1/explain?session=s-4&amp;profile=generic\">why</a>"));
}

#[test]
fn the_url_filters_by_kind_profile_and_namespace() {
    let snap = snapshot(vec![
        finding(
            1,
            FindingKind::AgentTerminatedPodRunning,
            "a",
            Some("p1"),
            100,
        ),
        finding(2, FindingKind::ExecutionOnDeadAgent, "a", Some("p1"), 110),
        finding(
            3,
            FindingKind::AgentTerminatedPodRunning,
            "b",
            Some("p2"),
            120,
        ),
    ]);
    let h = page(&snap, &[("kind", "agent_terminated_pod_running")]).unwrap();
    assert_eq!(rows(&h, "finding"), 2);
    let h = page(
        &snap,
        &[("kind", "agent_terminated_pod_running"), ("namespace", "b")],
    )
    .unwrap();
    assert_eq!(rows(&h, "finding"), 1);
    assert!(h.contains("pod b/p2"));
    let h = page(&snap, &[("profile", "other")]).unwrap();
    assert_eq!(rows(&h, "finding"), 0);
    // An empty form field selects nothing.
    let h = page(&snap, &[("kind", ""), ("namespace", "")]).unwrap();
    assert_eq!(rows(&h, "finding"), 3);
}

#[test]
fn bad_parameters_are_named() {
    let snap = snapshot(vec![]);
    let e = page(&snap, &[("knd", "x")]).unwrap_err();
    assert!(e.contains("\"knd\" is not a parameter"), "{e}");
    let e = page(&snap, &[("kind", "nope")]).unwrap_err();
    assert!(e.contains("kind: \"nope\" is not a finding kind"), "{e}");
    let e = page(&snap, &[("page", "0")]).unwrap_err();
    assert!(e.contains("page: \"0\""), "{e}");
    let e = page(&snap, &[("sort", "up")]).unwrap_err();
    assert!(e.contains("sort: \"up\""), "{e}");
}

#[test]
fn groups_are_paged_and_the_links_keep_the_filters() {
    let findings = (0..7)
        .map(|i| {
            let pod = format!("p{i}");
            finding(
                i,
                FindingKind::AgentTerminatedPodRunning,
                "a",
                Some(&pod),
                100 + i as i64,
            )
        })
        .collect();
    let snap = snapshot(findings);
    let q = [("per", "3"), ("namespace", "a b"), ("sort", "oldest")];
    let h = page(&snap, &q).unwrap();
    assert_eq!(rows(&h, "group"), 0, "nothing is in namespace 'a b'");
    let h = page(&snap, &[("per", "3"), ("sort", "oldest")]).unwrap();
    assert_eq!(rows(&h, "group"), 3);
    assert!(h.contains("page 1 of 3"));
    assert!(
        h.contains("href=\"/?sort=oldest&amp;page=2&amp;per=3\">next</a>"),
        "{h}"
    );
    let last = page(&snap, &[("per", "3"), ("sort", "oldest"), ("page", "3")]).unwrap();
    assert_eq!(rows(&last, "group"), 1);
    assert!(last.contains("pod a/p6") && last.contains(">previous</a>"));
    // A page past the end shows the last one.
    let past = page(&snap, &[("per", "3"), ("page", "99")]).unwrap();
    assert!(past.contains("page 3 of 3"));
    let url = PageQuery {
        namespace: Some("a b&c".into()),
        ..PageQuery::default()
    }
    .url(2);
    assert_eq!(url, "/?namespace=a%20b%26c&sort=newest&page=2");
}

#[test]
fn values_from_outside_are_escaped() {
    let mut f = finding(
        1,
        FindingKind::AgentTerminatedPodRunning,
        "a",
        Some("p1"),
        100,
    );
    f.finding.reason = "<script>alert(1)</script>".into();
    f.finding.pod = Some("x\"><img src=y>".into());
    f.finding.session = Some("it's".into());
    let snap = snapshot(vec![f]);
    let h = page(&snap, &[]).unwrap();
    assert!(!h.contains("<script>") && !h.contains("<img"), "{h}");
    assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(h.contains("x&quot;&gt;&lt;img src=y&gt;"));
    assert!(h.contains("it&#39;s"));
    let h = page(&snap, &[("namespace", "\"><b>")]).unwrap();
    assert!(!h.contains("<b>"), "{h}");
    assert!(h.contains("value=\"&quot;&gt;&lt;b&gt;\""));
    assert!(h.contains("connection &lt;refused&gt;"));
    // The kubectl line quotes a name the shell would read otherwise.
    let h = page(
        &snapshot(vec![{
            let mut f = finding(
                1,
                FindingKind::AgentTerminatedPodRunning,
                "a",
                Some("p1"),
                100,
            );
            f.finding.pod = Some("p; rm -rf /".into());
            f
        }]),
        &[],
    )
    .unwrap();
    assert!(h.contains("describe pod &#39;p; rm -rf /&#39;"), "{h}");
}

#[test]
fn the_daemon_sources_rules_and_remediation_are_shown() {
    let snap = snapshot(vec![
        finding(
            7,
            FindingKind::AgentTerminatedPodRunning,
            "a",
            Some("p1"),
            100,
        ),
        finding(8, FindingKind::OrphanedSuspendedSession, "a", None, 100),
    ]);
    let mut rem = RemediationView {
        leader: true,
        findings: HashMap::new(),
    };
    rem.findings.insert(
        7,
        ActionState {
            action: "cancel_execution",
            dry_run: true,
            calls: 1,
            last: Some((Ts::from_secs(950), "dry_run")),
            next_at: None,
            waiting: Some("done"),
        },
    );
    rem.findings.insert(
        8,
        ActionState {
            action: "mark_session_gone",
            dry_run: false,
            calls: 0,
            last: None,
            next_at: Some(Ts::from_secs(1090)),
            waiting: Some("grace"),
        },
    );
    let h = render(
        &snap,
        &about(),
        &rem,
        &PageQuery::default(),
        Ts::from_secs(1000),
    );
    assert!(h.contains("version 1.2.3 · up 16 min 40 s"), "{h}");
    assert!(h.contains("remediation: dry_run, this replica leads"));
    assert!(h.contains("cancel_execution (dry run): done; last call dry_run 1970-01-01T00:15:50Z (50 s ago) (1 in all)"), "{h}");
    assert!(h.contains("<td>pods/generic</td><td>pods</td><td>every namespace</td>"));
    assert!(h.contains("1970-01-01T00:16:30Z (10 s ago)"));
    assert!(
        h.contains("mark_session_gone: grace, next attempt 1970-01-01T00:18:10Z (in 1 min 30 s)<"),
        "{h}"
    );
    assert!(h.contains(
        "<td>generic</td><td>agent_terminated_pod_running</td><td>leaked_sandbox_pod</td>"
    ));
}
