//! Findings you can trust: one identity rule for records, absence only inside what a source
//! sees, evidence that survives a restart. Each test here reproduces a situation the engine
//! once got wrong.

mod common;

use common::*;
use serde_json::json;

use sandwatch::core::engine::{Change, Engine};
use sandwatch::core::world::{Feed, SourceStatus};
use sandwatch::model::profile::ProfileId;
use sandwatch::util::shard::Shard;

fn agent_pod(ns: &str, session: &str) -> PodB {
    pod(ns, &format!("sandbox-{session}"))
        .label("sandwatch.io/session", session)
        .container("agent", C::Running(1))
        .container("tools", C::Running(1))
}

fn open(s: &Sim) -> Vec<String> {
    let mut v: Vec<String> = s
        .engine
        .open_findings()
        .iter()
        .map(|f| {
            let d = &f.finding;
            format!(
                "{} {} {}",
                d.kind,
                d.execution
                    .as_deref()
                    .or(d.session.as_deref())
                    .or(d.pod.as_deref())
                    .unwrap_or("-"),
                d.reason
            )
        })
        .collect();
    v.sort();
    v
}

// ------------------------------------------------------------------ one identity rule

#[test]
fn a_session_that_names_its_namespace_joins_executions_and_tombstones_that_do_not() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("agents", "s-1");
    s.at(1).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running","namespace":"agents","pod":"sandbox-s-1"}));
    s.record(json!({"kind":"execution","id":"e-9","session":"s-1","state":"running","attempt":1}));
    s.at(10)
        .pod(&p.clone().set("agent", C::Terminated(137, "OOMKilled", 10)));
    assert_eq!(
        open(&s),
        [
            "agent_terminated_pod_running s-1 OOMKilled",
            "execution_on_dead_agent e-9 OOMKilled",
            "session_active_without_agent s-1 OOMKilled",
        ],
        "the execution joins its session although only the session names the namespace"
    );
    s.at(70).record(
        json!({"kind":"execution","id":"e-9","session":"s-1","state":"retry_wait","attempt":2}),
    );
    let e = s
        .engine
        .open_findings()
        .into_iter()
        .find(|f| f.finding.kind.as_str() == "execution_on_dead_agent")
        .unwrap()
        .retries_after_death;
    assert_eq!(e, 1, "the retry after death is counted");
    // The tombstone names no namespace: it deletes the session all the same.
    s.at(80)
        .record(json!({"kind":"session","id":"s-1","deleted":true}));
    assert_eq!(s.engine.world().record_count(), 1, "only e-9 is left");
    assert!(
        !open(&s).iter().any(|f| f.starts_with("session_active")),
        "{:?}",
        open(&s)
    );
}

const CR_SESSIONS: &str = r#"
profiles:
  - preset: ambient
    executions:
      active: [running]
      terminal: [done]
"#;

fn runner(ns: &str, session: &str) -> PodB {
    pod(ns, &format!("{session}-runner"))
        .label("agentic-session", session)
        .label("app", "ambient-code-runner")
        .container("ambient-code-runner", C::Running(1))
        .container("state-sync", C::Running(1))
}

#[test]
fn an_ambiguous_reference_is_reported_and_never_guessed() {
    let mut s = Sim::config(CR_SESSIONS);
    // AgenticSessions are named per namespace: the same name in two projects.
    s.at(1).pod(&runner("project-a", "s-1"));
    s.pod(
        &runner("project-b", "s-1").set("ambient-code-runner", C::Terminated(137, "OOMKilled", 1)),
    );
    s.record(json!({"kind":"session","id":"s-1","namespace":"project-a","state":"Running"}));
    assert!(s.engine.take_notices().is_empty());
    s.record(json!({"kind":"execution","id":"e-1","session":"s-1","state":"running"}));
    s.record(json!({"kind":"session","id":"s-1","namespace":"project-b","state":"Running"}));
    let notices = s.engine.take_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].reason, "ambiguous_reference");
    assert!(
        notices[0]
            .message
            .contains("namespaces project-a, project-b"),
        "{}",
        notices[0].message
    );
    s.at(1000);
    assert!(
        !open(&s).iter().any(|f| f.contains("e-1")),
        "e-1 is not guessed to be project-b's: {:?}",
        open(&s)
    );
    // Naming the namespace makes the join: project-b's runner is dead.
    s.record(json!({"kind":"execution","id":"e-1","session":"s-1","namespace":"project-b","state":"running"}));
    assert!(
        open(&s).contains(&"execution_on_dead_agent e-1 OOMKilled".to_string()),
        "{:?}",
        open(&s)
    );
    // A tombstone without a namespace for an id in two namespaces deletes nothing, and says so.
    s.record(json!({"kind":"session","id":"s-1","deleted":true}));
    assert_eq!(s.engine.world().record_count(), 3);
    assert_eq!(s.engine.take_notices().len(), 1);
    // With one left, the same tombstone finds it by id.
    s.record(json!({"kind":"session","id":"s-1","namespace":"project-a","deleted":true}));
    s.record(json!({"kind":"session","id":"s-1","deleted":true}));
    assert_eq!(s.engine.world().record_count(), 1, "only e-1 is left");
}

#[test]
fn records_without_a_namespace_for_namespace_scoped_ids_are_refused() {
    let profiles = sandwatch::app::config::load(CR_SESSIONS).unwrap().profiles;
    let doc: sandwatch::model::record::RecordDoc =
        serde_json::from_value(json!({"kind":"session","id":"s-1","state":"Running"})).unwrap();
    let e = doc.validate(&profiles).unwrap_err();
    assert!(e.message.starts_with("record.namespace: missing"), "{e}");
}

// ------------------------------------------------------------------ scoped absence

const SCOPED: &str = r#"
profiles:
  - preset: generic
    pods:
      namespaces: [agents]
"#;

/// The sources as `sandwatch run` reports them for a profile watching one namespace.
fn scoped_sim(yaml: &str) -> Sim {
    let mut s = Sim::bare(sandwatch::app::config::load(yaml).unwrap());
    s.apply(Change::Source(
        SourceStatus::new(
            "pods/generic/agents",
            Some(ProfileId(0)),
            vec![Feed::Pods],
            true,
        )
        .in_namespace(Some("agents".into())),
    ));
    s.apply(Change::Source(SourceStatus::new(
        "postgres/generic",
        Some(ProfileId(0)),
        vec![Feed::Sessions, Feed::Executions],
        true,
    )));
    s
}

#[test]
fn a_pod_missing_from_a_scoped_watch_is_no_evidence_for_a_record_that_names_no_namespace() {
    let mut s = scoped_sim(SCOPED);
    s.at(0).pod(&agent_pod("agents", "other"));
    s.record(json!({"kind":"session","id":"other","state":"running"}));
    // Its pod runs in a namespace the watch does not see.
    s.record(json!({"kind":"session","id":"s-1","state":"running","pod":"sandbox-s-1"}));
    s.record(json!({"kind":"session","id":"s-2","state":"suspended","pod":"sandbox-s-2"}));
    s.record(json!({"kind":"execution","id":"e-1","session":"s-1","state":"running"}));
    // This one places itself outside the watch.
    s.record(json!({"kind":"session","id":"s-3","namespace":"team-b","state":"running"}));
    s.at(10_000);
    assert_eq!(
        open(&s),
        Vec::<String>::new(),
        "no PodGone outside the scope"
    );
    // Inside the scope, the same absence is evidence.
    s.record(json!({"kind":"session","id":"s-4","namespace":"agents","state":"running"}));
    s.at(10_120);
    assert_eq!(open(&s), ["session_active_without_agent s-4 PodGone"]);
}

#[test]
fn a_default_namespace_places_the_records_of_a_scoped_profile() {
    let yaml = format!("{SCOPED}    records:\n      default_namespace: agents\n");
    let mut s = scoped_sim(&yaml);
    s.at(0)
        .record(json!({"kind":"session","id":"s-2","state":"suspended","pod":"sandbox-s-2"}));
    s.at(120);
    assert_eq!(open(&s), ["orphaned_suspended_session s-2 PodGone"]);
    let f = &s.engine.open_findings()[0].finding;
    assert_eq!(f.namespace.as_deref(), Some("agents"));
}

#[test]
fn check_config_warns_when_a_scoped_profiles_records_can_never_be_placed() {
    let yaml = "profiles:\n  - preset: sandbox-api\n    pods:\n      namespaces: [agents]\n";
    let profiles = sandwatch::app::config::load(yaml).unwrap();
    let w = sandwatch::app::config::warnings(&profiles);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0].field, "profiles[0].records.postgres.queries.session");
    assert!(
        w[0].message.contains("records.default_namespace"),
        "{}",
        w[0]
    );
    let placed = format!("{yaml}    records:\n      default_namespace: agents\n");
    assert!(
        sandwatch::app::config::warnings(&sandwatch::app::config::load(&placed).unwrap())
            .is_empty()
    );
}

const BY_NAME: &str = r#"
profiles:
  - name: by-name
    pods:
      selector: "app=sandbox"
      agent_containers: [agent]
      session_key: { label: example.com/session }
    sessions:
      active: [running]
      terminal: [done]
"#;

#[test]
fn a_pod_sharded_by_its_name_is_never_judged_leaked_for_want_of_a_session_on_another_shard() {
    let sim = |shard: Shard| {
        let mut s = Sim::bare(sandwatch::app::config::load(BY_NAME).unwrap());
        s.engine = Engine::sharded(s.profiles.clone(), shard);
        for f in Feed::ALL {
            s.source(&format!("{f:?}"), &[f], true);
        }
        s
    };
    // The pod carries no session key (a pod the platform names in the session's row only):
    // it is sharded by its name, its session by the session id.
    let p = pod("agents", "box-1")
        .label("app", "sandbox")
        .container("agent", C::Running(1));
    let mut whole = sim(Shard::ALL);
    let mut shards: Vec<Sim> = (0..2).map(|i| sim(Shard::new(i, 2).unwrap())).collect();
    for s in std::iter::once(&mut whole).chain(shards.iter_mut()) {
        s.at(0).pod(&p);
        s.record(json!({"kind":"session","id":"s-1","state":"running","pod":"box-1"}));
        s.at(100_000);
    }
    assert_eq!(open(&whole), Vec::<String>::new(), "s-1 claims the pod");
    for s in &shards {
        assert_eq!(open(s), Vec::<String>::new(), "no shard calls it leaked");
    }
}

// ------------------------------------------------------------------ restarts

/// A session suspended at 50 whose pod was deleted at 50 (incident 02's shape).
fn orphaned_at_50(s: &mut Sim) {
    let p = agent_pod("agents", "s-1");
    s.at(0).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"idle","updated_at":rfc(0)}));
    s.at(50).delete(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"suspended","updated_at":rfc(50)}));
}

#[test]
fn a_restarted_engine_reports_a_long_standing_condition_at_once_with_the_same_evidence() {
    let mut before = Sim::preset("generic");
    orphaned_at_50(&mut before);
    before.at(1000);
    assert_eq!(before.events(), ["opened orphaned_suspended_session@170"]);
    let first = before.log[0].finding.clone();
    assert_eq!(first.evidence_at, ts(50));
    assert_eq!(before.log[0].detection_latency_secs(), Some(120.0));

    // The restart at 1000: sources list what is (no pod; the suspended row, with its
    // updated_at), and the finding is back at once, with the evidence time it had.
    let mut after = Sim::bare(sandwatch::app::config::preset("generic").unwrap());
    after.at(1000);
    after.source("pods", &[Feed::Pods], true);
    after.source("records", &[Feed::Sessions, Feed::Executions], true);
    after.record(json!({"kind":"session","id":"s-1","state":"suspended","updated_at":rfc(50)}));
    assert_eq!(after.events(), ["opened orphaned_suspended_session@1000"]);
    let again = &after.log[0];
    assert_eq!(again.finding.evidence_at, first.evidence_at);
    assert_eq!(again.finding.finding, first.finding);
    assert_eq!(
        again.detection_latency_secs(),
        None,
        "it held before the sources were synced: no minutes-long latency"
    );
}

#[test]
fn a_restart_during_a_grace_keeps_the_time_already_served() {
    let mut s = Sim::bare(sandwatch::app::config::preset("generic").unwrap());
    s.at(950);
    s.source("pods", &[Feed::Pods], true);
    s.source("records", &[Feed::Sessions], true);
    // Suspended at 900, by the row's own clock: the grace ends at 1020, not 950 + 120.
    s.record(json!({"kind":"session","id":"s-1","state":"suspended","updated_at":rfc(900)}));
    s.at(1019);
    assert!(s.events().is_empty());
    s.at(1020);
    assert_eq!(s.events(), ["opened orphaned_suspended_session@1020"]);
}

#[test]
fn a_pod_recreated_within_the_grace_or_a_session_moved_to_a_new_pod_opens_nothing() {
    let mut s = Sim::preset("generic");
    let p = agent_pod("agents", "s-1");
    s.at(0).pod(&p);
    s.record(json!({"kind":"session","id":"s-1","state":"running","updated_at":rfc(0)}));
    // The pod is deleted and re-created long after the session's last change: the grace
    // counts from the departure, not from the record.
    s.at(5000).delete(&p);
    s.at(5030).pod(&p.clone().uid("uid-2"));
    // The platform points the session at a new pod that the watch has not shown yet.
    s.at(6000).record(json!({"kind":"session","id":"s-1","state":"running","pod":"sandbox-new","updated_at":rfc(6000)}));
    s.at(6010)
        .pod(&pod("agents", "sandbox-new").container("agent", C::Running(6010)));
    s.at(20_000);
    assert!(s.events().is_empty(), "{:?}", s.events());
}

#[test]
fn a_pod_left_behind_long_ago_is_reported_leaked_at_once_after_a_restart() {
    let mut s = Sim::bare(sandwatch::app::config::preset("generic").unwrap());
    s.at(5000);
    s.source("pods", &[Feed::Pods], true);
    s.source("records", &[Feed::Sessions], true);
    // Created at 0, its session finished at 100: unowned since 100, leaked since 700.
    s.record(json!({"kind":"session","id":"s-1","state":"stopped","updated_at":rfc(100)}));
    s.pod(&agent_pod("agents", "s-1"));
    assert_eq!(s.events(), ["opened leaked_sandbox_pod@5000"]);
    assert_eq!(s.log[0].finding.evidence_at, ts(100));
}
