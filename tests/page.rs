//! The status page in a real browser: headless Chromium loads `/` from a running daemon, and
//! the test reads what a person sees there — the grouped rows, a filter applied through the
//! URL and through the form, the paging, hostile text shown as text — and saves a screenshot
//! (target/test-artifacts/status-page.png) for the test log.

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::{C, PodB, pod};
use support::apiserver::TestApiServer;
use support::browser::Browser;
use support::daemon::*;

const TOKEN: &str = "page-ingest-token";

fn dead(ns: &str, name: &str, reason: &'static str) -> PodB {
    pod(ns, name)
        .label("sandwatch.io/session", name)
        .container("agent", C::Terminated(137, reason, 10))
        .container("tools", C::Running(1))
}

const CONFIG: &str = r#"
profiles:
  - preset: generic
    grace:
      absence: 0s
    records:
      ingest:
        kinds: [session, execution, sandbox]
    remediation:
      actions:
        mark_session_gone:
          grace: 1h
          http:
            method: POST
            url: "http://127.0.0.1:9/sessions/{session}/gone"
remediation:
  mode: dry_run
"#;

async fn rows(b: &mut Browser, class: &str) -> Vec<String> {
    let v = b
        .eval(&format!(
            "[...document.querySelectorAll('tr.{class}')].map(r => r.innerText)"
        ))
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_call_engineer_reads_the_status_page_in_a_browser() {
    let server = TestApiServer::start().await;
    for i in 0..55 {
        server.create(dead("agents", &format!("p-{i:02}"), "OOMKilled").stored());
    }
    server.create(dead("team-b", "evil", "<img src=x onerror=alert(1)>").stored());
    let config = sandwatch::app::config::load(CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let daemon = start_with(&server, config, |s| {
        s.ingest_token = Some(TOKEN.into());
    })
    .await;
    let records: Vec<Value> = vec![
        json!({"kind": "session", "id": "p-00", "namespace": "agents", "state": "running"}),
        json!({"kind": "execution", "id": "e-1", "namespace": "agents", "session": "p-00", "state": "running", "attempt": 1}),
        json!({"kind": "session", "id": "gone-1", "state": "suspended"}),
    ];
    push_snapshot(&daemon, TOKEN, &records).await;
    wait_ready(&daemon, true).await;
    // Each dead pod: the agent terminated and, without a session record, a leaked pod; pod
    // p-00 also has an active session and a running execution on its dead agent.
    wait_for(Duration::from_secs(10), "114 findings", || async {
        findings(&daemon).await.len() == 114
    })
    .await;

    let base = format!("http://{}", daemon.addr);
    let mut b = Browser::start().await;
    b.open(&format!("{base}/?sort=namespace")).await;
    let text = b.text().await;
    assert!(
        text.contains("114 open findings (114 in all), 57 groups"),
        "{text}"
    );
    assert!(text.contains("page 1 of 2"), "{text}");
    assert!(text.contains("All 2 sources synced and fresh."), "{text}");
    assert!(
        text.contains("remediation: dry_run, this replica leads"),
        "{text}"
    );
    // The page is the whole of what the browser loads: no script, no other resource.
    assert_eq!(b.eval("document.scripts.length").await, 0);
    let resources = b
        .eval("performance.getEntriesByType('resource').map(r => r.name)")
        .await;
    assert_eq!(resources, json!([]), "the page loads nothing else");

    // One dead pod is one group: its three findings under one heading, with its kubectl line.
    let groups = rows(&mut b, "group").await;
    assert_eq!(groups.len(), 50, "{groups:#?}");
    assert!(
        groups[0].starts_with("pod agents/p-00")
            && groups[0].contains("kubectl -n agents describe pod p-00"),
        "{groups:#?}"
    );
    let first: Vec<String> = rows(&mut b, "finding").await.into_iter().take(3).collect();
    assert!(groups[1].starts_with("pod agents/p-01"), "{groups:#?}");
    let kinds: Vec<&str> = first
        .iter()
        .map(|r| r.split('\t').next().unwrap().trim_end_matches(" why"))
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "agent_terminated_pod_running",
            "execution_on_dead_agent",
            "session_active_without_agent"
        ],
        "{first:#?}"
    );
    let oom = first
        .iter()
        .find(|r| r.starts_with("agent_terminated_pod_running"))
        .unwrap();
    assert!(
        oom.contains("OOMKilled") && oom.contains("agent (137)") && oom.contains(" ago)"),
        "{oom}"
    );

    // Each finding links to its explanation.
    b.eval_and_wait_for_load("document.querySelector('tr.finding a.why').click()")
        .await;
    let explained: Value = serde_json::from_str(&b.text().await).unwrap();
    assert_eq!(explained["subject"]["id"], "agents/p-00", "{explained:#}");
    assert!(
        explained["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "agent_terminated_pod_running" && r["verdict"] == "open"),
        "{explained:#}"
    );
    b.open(&format!("{base}/?sort=namespace")).await;

    // The next page, through its link.
    b.eval_and_wait_for_load(
        "[...document.querySelectorAll('#pages a')].find(a => a.innerText == 'next').click()",
    )
    .await;
    let text = b.text().await;
    assert!(text.contains("page 2 of 2"), "{text}");
    let groups = rows(&mut b, "group").await;
    assert_eq!(groups.len(), 7, "{groups:#?}");
    // The orphaned session waits for its action's grace, in dry run.
    let orphan = rows(&mut b, "finding")
        .await
        .into_iter()
        .find(|r| r.starts_with("orphaned_suspended_session"))
        .expect("the orphan's row");
    assert!(
        orphan.contains("mark_session_gone (dry run): grace, next attempt")
            && orphan.contains("(in 59 min"),
        "{orphan}"
    );

    // Hostile text from the node is shown as text, never as markup.
    let evil = b
        .eval("[...document.querySelectorAll('tr.finding')].map(r => r.innerText).find(t => t.includes('onerror'))")
        .await;
    assert!(
        evil.as_str()
            .is_some_and(|t| t.contains("<img src=x onerror=alert(1)>")),
        "{evil}"
    );
    assert_eq!(b.eval("document.images.length").await, 0);

    // A filter applied through the URL...
    b.open(&format!(
        "{base}/?kind=agent_terminated_pod_running&namespace=team-b"
    ))
    .await;
    let shown = rows(&mut b, "finding").await;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        b.text()
            .await
            .contains("1 open findings (114 in all), 1 groups")
    );
    // ...and through the form, which builds the same kind of URL.
    b.eval_and_wait_for_load(
        "document.querySelector('select[name=kind]').value = 'orphaned_suspended_session'; \
         document.querySelector('input[name=namespace]').value = ''; \
         document.querySelector('form').submit()",
    )
    .await;
    let search = b.eval("location.search").await;
    assert!(
        search
            .as_str()
            .is_some_and(|s| s.contains("kind=orphaned_suspended_session")),
        "{search}"
    );
    let shown = rows(&mut b, "finding").await;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(shown[0].starts_with("orphaned_suspended_session"));

    // A bad parameter is answered for a person, naming it.
    b.open(&format!("{base}/?knd=x")).await;
    assert!(b.text().await.contains("\"knd\" is not a parameter of /"));

    b.open(&format!("{base}/?sort=namespace&per=6")).await;
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page.png");
    b.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    daemon.shutdown().await;
}
