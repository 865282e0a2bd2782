//! The engine against an independent reference evaluator.
//!
//! `oracle/model.rs` implements the contract of the correlation engine (which pods and
//! records are kept, how references resolve, when each rule's condition holds, since when,
//! and how trust holds findings) by recomputing everything from the full current state at
//! every step. `oracle/history.rs` generates random histories (profiles, sources flipping,
//! pods living and dying, records changing, relists, clock advances, restarts) and runs an
//! unsharded engine and two shards, each against its own oracle, comparing the open findings
//! (kind, subject, reason) after every change, and each open finding's evidence time and the
//! pod it names.
//!
//! `SANDWATCH_ORACLE_CASES` sets the number of cases (default below), e.g.
//! `SANDWATCH_ORACLE_CASES=100000 cargo test --test oracle` for a soak. A failure prints the
//! history as it ran and the shrunk case, which pastes into a test (see `cases`).
//!
//! Each engine bug found this way is kept at the end of this file as a test of its own,
//! reduced to its core. While a bug is open, its test is `#[ignore]`d with the reason and the
//! generator steers around it (a switch in `oracle/history.rs`), so that the property goes on
//! finding others.

mod common;

#[path = "oracle/history.rs"]
mod history;
#[path = "oracle/model.rs"]
mod model;

use common::*;
use proptest::prelude::*;
use serde_json::json;

use sandwatch::core::engine::{Change, Engine};
use sandwatch::model::profile::ProfileId;
use sandwatch::model::record::RecordDoc;
use sandwatch::model::source::{Feed, SourceStatus};

fn cases() -> u32 {
    std::env::var("SANDWATCH_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Half for each property: together they make the count asked for.
        cases: cases().div_ceil(2),
        failure_persistence: None,
        // Several times cheaper than the default ChaCha in a debug build.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Sources as `sandwatch run` has them: one per profile and watched namespace.
    #[test]
    fn the_engine_agrees_with_the_oracle(case in history::case_with(false)) {
        if let Err(e) = history::run(&case) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// Sources as a replay has them: one of each kind, for every profile and namespace.
    #[test]
    fn the_engine_agrees_with_the_oracle_with_shared_sources(case in history::case_with(true)) {
        if let Err(e) = history::run(&case) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The names a shrunk history is printed with: `use cases::*;` and paste it into a test as
/// `history::run(&Case { .. })`.
#[allow(unused_imports)]
mod cases {
    pub use super::history::{
        Action::*, CGen::*, Case, Knobs, Mutation::*, PodGen, RecGen, Step, TouchKind::*, run,
    };
}

/// Where the time goes: `cargo test --test oracle timing -- --ignored --nocapture`
#[test]
#[ignore = "a report, not a check"]
fn timing() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::deterministic_rng(RngAlgorithm::XorShift),
    );
    let mut total = [std::time::Duration::ZERO; 3];
    let start = std::time::Instant::now();
    let n = cases().min(2000);
    let strategy = history::case();
    let mut gen_time = std::time::Duration::ZERO;
    let mut new_time = std::time::Duration::ZERO;
    for _ in 0..n {
        let g = std::time::Instant::now();
        let case = strategy.new_tree(&mut runner).unwrap().current();
        gen_time += g.elapsed();
        let g = std::time::Instant::now();
        let _ = history::profiles(&case.knobs.yaml());
        new_time += g.elapsed();
        let t = history::timing(&case);
        for i in 0..3 {
            total[i] += t[i];
        }
    }
    println!(
        "{n} cases in {:?}: generating {gen_time:?}, setting up {new_time:?}, oracle {:?}, engine {:?}, comparing {:?}",
        start.elapsed(),
        total[0],
        total[1],
        total[2]
    );
}

/// What the generated histories exercise: how many cases open each kind of finding, for each
/// reason, unsharded and sharded. `cargo test --test oracle coverage -- --ignored --nocapture`
#[test]
#[ignore = "a report, not a check"]
fn coverage() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::deterministic_rng(RngAlgorithm::XorShift),
    );
    let mut cases_with: std::collections::BTreeMap<String, u64> = Default::default();
    let n = cases().min(2000);
    for _ in 0..n {
        let case = history::case().new_tree(&mut runner).unwrap().current();
        let stats = history::run_counting(&case).unwrap_or_default();
        for k in stats.keys() {
            *cases_with.entry(k.clone()).or_default() += 1;
        }
    }
    println!("cases opening each finding, of {n}:");
    for (k, v) in cases_with {
        println!("{v:6}  {k}");
    }
}

// ------------------------------------------------------------------ what the oracle found
//
// Each test below is a history on which the engine and the oracle disagreed, reduced to its
// core and stated as the behaviour the contract asks for. All four were engine bugs, now
// fixed.

const MOVES: &str = r#"
profiles:
  - preset: generic
    grace:
      absence: 30s
  - name: other
    pods:
      selector: "app=other"
      agent_containers: [agent]
    sessions:
      active: [running]
      terminal: [done]
    grace:
      absence: 30s
"#;

#[test]
fn a_pod_that_moves_to_another_profile_departs_from_the_one_it_left() {
    let mut s = Sim::config(MOVES);
    s.at(0).record(
        json!({"kind":"session","id":"s-1","profile":"other","state":"running",
        "pod":"box-1","updated_at":rfc(-100)}),
    );
    s.pod(
        &pod("agents", "box-1")
            .label("app", "other")
            .container("agent", C::Running(0)),
    );
    assert!(s.open_kinds().is_empty());
    // At 100 its labels change and the same pod (same uid) becomes a generic pod: for
    // `other`, s-1's pod is gone from now on, exactly as if it had been deleted.
    s.at(100).pod(
        &pod("agents", "box-1")
            .label("sandwatch.io/session", "x")
            .container("agent", C::Running(0)),
    );
    assert!(
        s.open_kinds().is_empty(),
        "the absence grace counts from the pod's departure at 100, not from the record's updated_at at -100"
    );
    s.at(130);
    assert_eq!(s.open_kinds(), ["session_active_without_agent"]);
}

const NAMESPACED_WITH_DEFAULT: &str = r#"
profiles:
  - name: nsd
    pods:
      selector: "app=nsd"
      agent_containers: [runner]
      session_key: { label: nsd/session }
    sessions:
      active: [Running]
      terminal: [Done]
    records:
      namespaced_ids: [session]
      default_namespace: ns-b
"#;

#[test]
fn a_full_listing_keeps_rows_placed_by_the_default_namespace() {
    let profiles = sandwatch::app::config::load(NAMESPACED_WITH_DEFAULT)
        .unwrap()
        .profiles;
    let mut e = Engine::new(profiles.clone());
    let t = ts(0);
    let source = |name: &str, feed| {
        Change::Source(SourceStatus::new(
            name,
            Some(ProfileId(0)),
            vec![feed],
            true,
        ))
    };
    e.apply(t, source("pods", Feed::Pods));
    e.apply(t, source("postgres/nsd", Feed::Sessions));
    // A row that names no namespace: `default_namespace` places it (its key is ns-b/s-1).
    let doc: RecordDoc =
        serde_json::from_value(json!({"kind":"session","id":"s-1","state":"Running"})).unwrap();
    e.apply(t, Change::Record(doc.validate(&profiles).unwrap()));
    assert_eq!(e.world().record_count(), 1);
    // The PostgreSQL source's full resync lists the row as it reads it: by the namespace the
    // row names, here none (see `sources/postgres.rs`, `listed.insert((r.namespace...))`).
    let listed = [(String::new(), "s-1".to_string())].into_iter().collect();
    e.apply(
        ts(300),
        Change::Listed {
            feed: Feed::Sessions,
            profile: ProfileId(0),
            namespace: None,
            listed,
        },
    );
    assert_eq!(
        e.world().record_count(),
        1,
        "the row was just listed: it is not gone"
    );
}

const SHORT_GRACES: &str = r#"
profiles:
  - preset: generic
    grace:
      native_sidecar: 10s
      absence: 30s
      leaked_pod: 60s
"#;

#[test]
fn an_old_departure_still_dates_the_finding() {
    let evidence = |late: i64| {
        let mut s = Sim::config(SHORT_GRACES);
        let p = pod("agents", "box-1")
            .label("sandwatch.io/session", "s-1")
            .container("agent", C::Running(0));
        s.at(0).pod(&p);
        s.at(1).delete(&p);
        // Later, a session whose row was last written before the pod left names it.
        s.at(late)
            .record(json!({"kind":"session","id":"s-2","state":"running",
            "pod":"box-1","updated_at":rfc(0)}));
        let open = s.engine.open_findings();
        let f = open
            .iter()
            .find(|f| f.finding.session.as_deref() == Some("s-2"))
            .expect("s-2 has had no pod for longer than the absence grace");
        (f.evidence_at.0 / 1000) - T0
    };
    assert_eq!(evidence(61), 1, "dated by the pod's departure at 1");
    assert_eq!(
        evidence(62),
        1,
        "still dated by the departure at 1, not by the row's updated_at at 0, once the \
         departure is older than the longest grace (60s)"
    );
}

const TWO_NAMESPACES: &str = r#"
profiles:
  - preset: generic
    pods:
      namespaces: [agents, batch]
"#;

#[test]
fn a_pod_source_that_starts_later_makes_absence_count_in_its_namespace() {
    let mut s = Sim::bare(sandwatch::app::config::load(TWO_NAMESPACES).unwrap());
    let pods = |ns: &str| {
        Change::Source(
            SourceStatus::new(
                format!("pods/generic/{ns}"),
                Some(ProfileId(0)),
                vec![Feed::Pods],
                true,
            )
            .in_namespace(Some(ns.into())),
        )
    };
    s.at(0).apply(pods("agents"));
    s.apply(Change::Source(SourceStatus::new(
        "postgres/generic",
        Some(ProfileId(0)),
        vec![Feed::Sessions, Feed::Executions],
        true,
    )));
    // Its pod would be in `batch`, which no source sees yet: its absence is no evidence.
    s.record(json!({"kind":"session","id":"s-1","state":"running","namespace":"batch","updated_at":rfc(0)}));
    s.at(500);
    assert!(s.open_kinds().is_empty());
    // The watch of `batch` starts, synced: it lists no pod for s-1.
    s.at(600).apply(pods("batch"));
    s.at(601);
    assert_eq!(
        s.open_kinds(),
        ["session_active_without_agent"],
        "s-1's pod has been missing from a complete list of its namespace since 600, and its row dates from 0"
    );
}
