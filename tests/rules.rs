//! Each rule, including the near-misses that must not open a finding.

mod common;

use common::*;
use serde_json::json;

use sandwatch::core::engine::Change;
use sandwatch::core::world::{Feed, SourceStatus};

fn agent_pod(session: &str) -> PodB {
    pod("agents", &format!("sandbox-{session}"))
        .label("sandwatch.io/session", session)
        .container("agent", C::Running(1))
        .container("tools", C::Running(1))
}

// ------------------------------------------------------------------ agent_terminated_pod_running

#[test]
fn oomkilled_agent_behind_a_plain_sidecar_opens_at_once_and_deletion_resolves() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1");
    s.at(1).pod(&p);
    s.at(100)
        .pod(&p.clone().set("agent", C::Terminated(137, "OOMKilled", 100)));
    assert_eq!(s.events(), ["opened agent_terminated_pod_running@100"]);
    let f = &s.log[0].finding;
    assert_eq!(&*f.finding.reason, "OOMKilled");
    assert_eq!(f.finding.exit_code, Some(137));
    assert_eq!(f.finding.session.as_deref(), Some("s-1"));
    s.at(400).delete(&p);
    assert_eq!(s.events()[1], "resolved agent_terminated_pod_running@400");
}

#[test]
fn any_termination_reason_counts_and_terminating_pods_resolve() {
    let mut s = Sim::preset("generic");
    let dead = agent_pod("s-1").set("agent", C::Terminated(1, "Error", 10));
    s.at(10).pod(&dead);
    assert_eq!(s.open_kinds(), ["agent_terminated_pod_running"]);
    s.at(20).pod(&dead.clone().deleting());
    assert!(
        s.open_kinds().is_empty(),
        "a pod being deleted is being handled"
    );
}

#[test]
fn native_sidecar_counts_only_after_its_grace() {
    let mut s = Sim::preset("generic");
    let p = pod("agents", "sandbox-s-1")
        .label("sandwatch.io/session", "s-1")
        .container("agent", C::Terminated(137, "OOMKilled", 100))
        .native_sidecar("proxy", C::Running(1));
    s.at(100).pod(&p);
    s.at(159);
    assert!(
        s.open_kinds().is_empty(),
        "the kubelet stops native sidecars itself"
    );
    s.at(160);
    assert_eq!(s.events(), ["opened agent_terminated_pod_running@160"]);
}

#[test]
fn native_sidecar_stopped_within_grace_opens_nothing() {
    let mut s = Sim::preset("generic");
    let p = pod("agents", "sandbox-s-1")
        .label("sandwatch.io/session", "s-1")
        .container("agent", C::Terminated(0, "Completed", 100))
        .native_sidecar("proxy", C::Running(1));
    s.at(100).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.at(103).pod(
        &p.clone()
            .set("proxy", C::Terminated(0, "Completed", 103))
            .phase("Succeeded"),
    );
    s.at(1000);
    assert!(
        !s.events()
            .iter()
            .any(|e| e.contains("agent_terminated_pod_running")),
        "{:?}",
        s.events()
    );
}

#[test]
fn near_miss_a_pod_whose_only_container_completed() {
    let mut s = Sim::preset("generic");
    let p = pod("agents", "sandbox-s-1")
        .label("sandwatch.io/session", "s-1")
        .container("agent", C::Terminated(0, "Completed", 50));
    s.at(50).pod(&p);
    s.at(5000);
    assert!(
        !s.open_kinds()
            .contains(&"agent_terminated_pod_running".to_string())
    );
}

#[test]
fn near_miss_crash_loop_under_restart_policy_always() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1").restart_policy("Always");
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.at(10)
        .pod(&p.clone().set("agent", C::Terminated(1, "Error", 10)));
    s.at(11)
        .pod(&p.clone().set("agent", C::Waiting("CrashLoopBackOff")));
    s.at(21).pod(&p.clone().set("agent", C::Running(21)));
    s.at(1000);
    assert!(s.events().is_empty(), "{:?}", s.events());
}

// ------------------------------------------------------------------ execution_on_dead_agent

#[test]
fn execution_on_oomkilled_agent_counts_retries_after_death() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1");
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.record(json!({"kind":"execution","id":"e-1","session":"s-1","state":"running","attempt":0}));
    s.at(60)
        .pod(&p.clone().set("agent", C::Terminated(137, "OOMKilled", 60)));
    assert!(
        s.events()
            .contains(&"opened execution_on_dead_agent@60".to_string())
    );
    for n in 1..=3 {
        s.at(60 + n * 60);
        s.record(
            json!({"kind":"execution","id":"e-1","session":"s-1","state":"retry_wait","attempt":n}),
        );
    }
    let open = s.engine.open_findings();
    let e = open
        .iter()
        .find(|f| f.finding.kind.as_str() == "execution_on_dead_agent")
        .unwrap();
    assert_eq!(e.retries_after_death, 3);
    assert_eq!(e.finding.state.as_deref(), Some("retry_wait"));
    s.at(500).record(
        json!({"kind":"execution","id":"e-1","session":"s-1","state":"failed","attempt":3}),
    );
    assert!(
        s.events()
            .contains(&"resolved execution_on_dead_agent@500".to_string())
    );
}

#[test]
fn execution_whose_pod_is_gone_opens_after_the_absence_grace() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1");
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.record(json!({"kind":"execution","id":"e-1","session":"s-1","state":"claimed"}));
    s.at(10).delete(&p);
    s.at(129);
    assert!(
        !s.open_kinds()
            .contains(&"execution_on_dead_agent".to_string())
    );
    s.at(130);
    assert!(
        s.events()
            .contains(&"opened execution_on_dead_agent@130".to_string())
    );
}

#[test]
fn execution_on_a_dead_external_sandbox() {
    let mut s = Sim::preset("offload-modal");
    s.at(1)
        .record(json!({"kind":"sandbox","id":"sb-1","state":"running"}));
    s.record(
        json!({"kind":"execution","id":"run-7","sandbox":"sb-1","state":"running","attempt":0}),
    );
    s.at(5)
        .record(json!({"kind":"sandbox","id":"sb-1","state":"failure"}));
    assert_eq!(s.events(), ["opened execution_on_dead_agent@5"]);
    s.at(6).record(
        json!({"kind":"execution","id":"run-7","sandbox":"sb-1","state":"downloading","attempt":1}),
    );
    s.at(70).record(
        json!({"kind":"execution","id":"run-7","sandbox":"sb-1","state":"downloading","attempt":2}),
    );
    assert_eq!(s.engine.open_findings()[0].retries_after_death, 2);
}

#[test]
fn near_miss_an_unknown_sandbox_is_not_a_dead_one() {
    let mut s = Sim::preset("offload-modal");
    s.at(1)
        .record(json!({"kind":"execution","id":"run-7","sandbox":"sb-404","state":"running"}));
    s.at(10_000);
    assert!(s.events().is_empty());
}

// ------------------------------------------------------------------ orphaned_suspended_session

#[test]
fn suspended_session_whose_pod_is_gone() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1");
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"idle"}));
    s.at(50).delete(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"suspended"}));
    s.at(169);
    assert!(s.open_kinds().is_empty());
    s.at(170);
    assert_eq!(s.events(), ["opened orphaned_suspended_session@170"]);
    // Fixing the row resolves it.
    s.at(200)
        .record(json!({"kind":"session","id":"s-1","state":"gone"}));
    assert_eq!(s.events()[1], "resolved orphaned_suspended_session@200");
}

#[test]
fn near_miss_session_suspended_then_resumed() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1");
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"idle"}));
    s.at(50).delete(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"suspended"}));
    s.at(80)
        .pod(&agent_pod("s-1").uid("uid-second-incarnation"));
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.at(10_000);
    assert!(s.events().is_empty(), "{:?}", s.events());
}

const CR_BACKED: &str = r#"
profiles:
  - preset: sandbox-api
    name: centaur-crd
    sessions:
      resume_from: custom_resource
    custom_resources:
      - api_version: agents.x-k8s.io/v1alpha1
        kind: Sandbox
        plural: sandboxes
        role: resume_target
"#;

#[test]
fn near_miss_pod_deleted_while_suspended_on_a_custom_resource_backed_profile() {
    let mut s = Sim::config(CR_BACKED);
    let p = pod("centaur", "asbx-1")
        .label("centaur.ai/managed", "true")
        .annotation("centaur.ai/thread-key", "t-1")
        .container("sandbox", C::Running(1));
    s.at(1).apply(Change::ResumeTarget {
        profile: sandwatch::model::profile::ProfileId(0),
        namespace: "centaur".into(),
        name: "asbx-1".into(),
        exists: true,
    });
    s.pod(&p);
    s.record(json!({"kind":"session","id":"t-1","state":"idle","pod":"asbx-1"}));
    // Pause: replicas 0, the pod goes away, the Sandbox stays.
    s.at(10).delete(&p);
    s.record(json!({"kind":"session","id":"t-1","state":"suspended","pod":"asbx-1"}));
    s.at(5000);
    assert!(s.events().is_empty(), "{:?}", s.events());
    // The Sandbox itself is deleted: now there is nothing to resume from.
    s.apply(Change::ResumeTarget {
        profile: sandwatch::model::profile::ProfileId(0),
        namespace: "centaur".into(),
        name: "asbx-1".into(),
        exists: false,
    });
    s.at(5120);
    assert_eq!(s.events(), ["opened orphaned_suspended_session@5120"]);
    assert_eq!(&*s.log[0].finding.finding.reason, "ResourceGone");
}

// ------------------------------------------------------------------ session_active_without_agent

#[test]
fn active_custom_resource_session_with_an_oomkilled_runner() {
    let mut s = Sim::preset("ambient");
    let p = pod("project-a", "s-9-runner")
        .label("agentic-session", "s-9")
        .label("app", "ambient-code-runner")
        .container("ambient-code-runner", C::Running(1))
        .container("state-sync", C::Running(1));
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-9","namespace":"project-a","state":"Running"}));
    s.at(30).pod(
        &p.clone()
            .set("ambient-code-runner", C::Terminated(137, "OOMKilled", 30)),
    );
    let mut ev = s.events();
    ev.sort();
    assert_eq!(
        ev,
        [
            "opened agent_terminated_pod_running@30",
            "opened session_active_without_agent@30"
        ]
    );
}

#[test]
fn session_in_another_namespace_does_not_join() {
    let mut s = Sim::preset("ambient");
    let p = pod("project-a", "s-9-runner")
        .label("agentic-session", "s-9")
        .label("app", "ambient-code-runner")
        .container("ambient-code-runner", C::Terminated(137, "OOMKilled", 1))
        .container("state-sync", C::Running(1));
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-9","namespace":"project-b","state":"Running"}));
    s.at(3);
    // project-b's s-9 has no pod: absence, after the grace; never the OOM of project-a's pod.
    s.at(200);
    let kinds: Vec<_> = s
        .log
        .iter()
        .map(|t| {
            (
                t.finding.finding.kind.as_str(),
                t.finding.finding.reason.to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("session_active_without_agent", "PodGone".to_string())),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&("session_active_without_agent", "OOMKilled".to_string())),
        "{kinds:?}"
    );
}

#[test]
fn near_miss_records_arriving_before_their_pod() {
    let mut s = Sim::preset("generic");
    s.at(1).pod(&agent_pod("other")); // the pod source is live
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.record(json!({"kind":"execution","id":"e-1","session":"s-1","state":"queued"}));
    s.at(20).pod(&agent_pod("s-1"));
    s.record(json!({"kind":"session","id":"other","state":"running"}));
    s.at(10_000);
    assert!(s.events().is_empty(), "{:?}", s.events());
}

// ------------------------------------------------------------------ leaked_sandbox_pod

#[test]
fn pod_without_a_live_session_leaks_after_the_grace() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("s-1");
    s.at(0).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    s.at(100)
        .record(json!({"kind":"session","id":"s-1","state":"stopped"}));
    s.at(699);
    assert!(s.open_kinds().is_empty());
    s.at(700);
    assert_eq!(s.events(), ["opened leaked_sandbox_pod@700"]);
    assert_eq!(&*s.log[0].finding.finding.reason, "SessionTerminal");
    s.at(800).pod(&p.clone().deleting());
    assert_eq!(s.events()[1], "resolved leaked_sandbox_pod@800");
}

#[test]
fn transitional_sessions_own_their_pod() {
    let mut s = Sim::preset("ambient");
    let p = pod("project-a", "s-9-runner")
        .label("agentic-session", "s-9")
        .label("app", "ambient-code-runner")
        .container("ambient-code-runner", C::Waiting("PodInitializing"))
        .phase("Pending");
    s.at(0).pod(&p);
    s.record(json!({"kind":"session","id":"s-9","namespace":"project-a","state":"Creating"}));
    s.at(5000);
    assert!(s.events().is_empty(), "{:?}", s.events());
}

// ------------------------------------------------------------------ absence is not evidence

#[test]
fn nothing_absence_based_opens_or_resolves_while_the_pod_source_is_unsynced() {
    let mut s = Sim::bare(sandwatch::app::config::preset("generic").unwrap());
    s.source("records", &[Feed::Sessions, Feed::Executions], true);
    s.source("pods", &[Feed::Pods], false);
    s.at(0)
        .record(json!({"kind":"session","id":"s-1","state":"suspended"}));
    s.at(10_000);
    assert!(
        s.events().is_empty(),
        "unsynced pods say nothing about absence"
    );
    // Once synced, its complete list lacks the pod: the session has been suspended since 0,
    // long past the grace, so the finding opens at once, dated from the record.
    s.source("pods", &[Feed::Pods], true);
    assert_eq!(s.events(), ["opened orphaned_suspended_session@10000"]);
    assert_eq!(s.log[0].finding.evidence_at, ts(0));
    assert_eq!(
        s.log[0].detection_latency_secs(),
        None,
        "it held before the pods were synced: not a detection latency"
    );
    s.at(10_120);
    // The source goes stale: the finding holds, even though the record changes.
    s.source("pods", &[Feed::Pods], false);
    s.at(10_200)
        .record(json!({"kind":"session","id":"s-1","state":"running"}));
    assert_eq!(
        s.open_kinds(),
        ["orphaned_suspended_session"],
        "held while stale"
    );
    s.source("pods", &[Feed::Pods], true);
    assert_eq!(s.events()[1], "resolved orphaned_suspended_session@10200");
}

#[test]
fn rules_that_need_records_do_not_run_without_a_records_source() {
    let mut s = Sim::bare(sandwatch::app::config::preset("generic").unwrap());
    s.source("pods", &[Feed::Pods], true);
    s.at(0).pod(&agent_pod("s-1"));
    s.at(100_000);
    assert!(
        s.events().is_empty(),
        "no sessions source: leaked_sandbox_pod cannot judge"
    );
    s.pod(&agent_pod("s-1").set("agent", C::Terminated(137, "OOMKilled", 100_000)));
    assert_eq!(
        s.open_kinds(),
        ["agent_terminated_pod_running"],
        "pod-only rules still run"
    );
}

#[test]
fn a_recreated_pod_is_a_new_subject() {
    let mut s = Sim::preset("generic");
    let first = agent_pod("s-1").set("agent", C::Terminated(137, "OOMKilled", 10));
    s.at(10).pod(&first);
    s.at(20).delete(&first);
    let second = agent_pod("s-1")
        .uid("uid-2")
        .set("agent", C::Terminated(137, "OOMKilled", 30));
    s.at(30).pod(&second);
    assert_eq!(
        s.events(),
        [
            "opened agent_terminated_pod_running@10",
            "resolved agent_terminated_pod_running@20",
            "opened agent_terminated_pod_running@30"
        ]
    );
    // A late DELETED for the first incarnation does not remove the second.
    s.at(40).delete(&first);
    assert_eq!(s.open_kinds(), ["agent_terminated_pod_running"]);
}

// ------------------------------------------------------------------ per-profile trust

const TWO_PLATFORMS: &str = r#"
profiles:
  - preset: generic
    name: with-records
    pods:
      namespaces: [agents]
  - preset: generic
    name: pods-only
    pods:
      namespaces: [other]
"#;

#[test]
fn a_records_source_of_one_profile_does_not_vouch_for_another() {
    use sandwatch::model::profile::ProfileId;
    let mut s = Sim::bare(sandwatch::app::config::load(TWO_PLATFORMS).unwrap());
    s.source("pods", &[Feed::Pods], true);
    // Sessions are known for the first profile only.
    s.apply(Change::Source(SourceStatus::new(
        "postgres/with-records",
        Some(ProfileId(0)),
        vec![Feed::Sessions, Feed::Executions],
        true,
    )));
    let theirs = pod("other", "sandbox-b")
        .label("sandwatch.io/session", "b")
        .container("agent", C::Running(1));
    s.at(0).pod(&agent_pod("a")).pod(&theirs);
    s.at(100_000);
    assert_eq!(
        s.engine
            .open_findings()
            .iter()
            .map(|f| format!(
                "{} {}",
                f.finding.kind,
                f.finding.pod.as_deref().unwrap_or("-")
            ))
            .collect::<Vec<_>>(),
        ["leaked_sandbox_pod sandbox-a"],
        "a pod of the profile without a sessions source is never judged leaked"
    );
}

#[test]
fn an_evicted_pod_whose_agent_still_reads_running_is_a_dead_agent_with_the_pods_reason() {
    let mut s = Sim::preset("generic");
    s.record(json!({"kind":"session","id":"s-1","state":"running"}));
    // What the API shows after a node-pressure eviction: the pod Failed/Evicted, the
    // container statuses as last reported, the Ready condition's transition the only clock.
    let mut evicted = agent_pod("s-1").phase("Failed").json();
    evicted["status"]["reason"] = json!("Evicted");
    evicted["status"]["message"] = json!("The node was low on resource: memory.");
    evicted["status"]["conditions"] = json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc(0)},
        {"type": "Ready", "status": "False", "lastTransitionTime": rfc(50)},
    ]);
    s.at(60).apply(Change::PodUpserted(Box::new(
        serde_json::from_value(evicted).unwrap(),
    )));
    assert_eq!(s.events(), ["opened session_active_without_agent@60"]);
    let f = &s.log[0].finding;
    assert_eq!(&*f.finding.reason, "Evicted");
    assert_eq!(f.finding.exit_code, None, "no exit code was reported");
    assert_eq!(f.evidence_at, ts(50), "the pod's last transition, not 1970");
}

// ------------------------------------------------------------------ sharding

#[test]
fn executions_without_a_session_are_judged_where_their_pod_is_and_never_by_its_absence() {
    use sandwatch::core::engine::Engine;
    use sandwatch::util::shard::Shard;
    let sim = |shard: Shard| {
        let mut s = Sim::bare(sandwatch::app::config::preset("generic").unwrap());
        s.engine = Engine::sharded(s.profiles.clone(), shard);
        for f in Feed::ALL {
            s.source(&format!("{f:?}"), &[f], true);
        }
        s
    };
    let mut whole = sim(Shard::ALL);
    let mut shards: Vec<Sim> = (0..3).map(|i| sim(Shard::new(i, 3).unwrap())).collect();
    // exe-a runs in a pod keyed by its execution label, whose agent was OOM-killed; exe-b
    // names a pod that does not exist. Neither names a session.
    let oom = agent_pod("s-x")
        .label("sandwatch.io/execution", "exe-a")
        .set("agent", C::Terminated(137, "OOMKilled", 10));
    for s in std::iter::once(&mut whole).chain(shards.iter_mut()) {
        s.at(10).pod(&oom);
        s.record(json!({"kind":"execution","id":"exe-a","state":"running"}));
        s.record(json!({"kind":"execution","id":"exe-b","state":"running","pod":"sandbox-gone"}));
        s.at(1000);
    }
    let kinds = |s: &Sim| {
        s.engine
            .open_findings()
            .iter()
            .filter(|f| f.finding.kind.as_str() == "execution_on_dead_agent")
            .map(|f| {
                format!(
                    "{} {}",
                    f.finding.execution.as_deref().unwrap(),
                    f.finding.reason
                )
            })
            .collect::<Vec<_>>()
    };
    let mut all = kinds(&whole);
    all.sort();
    assert_eq!(all, ["exe-a OOMKilled", "exe-b PodGone"]);
    let per_shard: Vec<Vec<String>> = shards.iter().map(kinds).collect();
    assert_eq!(
        per_shard.concat(),
        ["exe-a OOMKilled"],
        "the dead agent is reported once, by the shard that has the pod; the missing pod by none: {per_shard:?}"
    );
}
