//! Properties: independent entities do not interfere, whatever the interleaving; no input
//! makes the replay path panic.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

use sandwatch::app::replay::Replay;
use sandwatch::core::engine::{Change, Engine};
use sandwatch::model::finding::Transition;
use sandwatch::model::record::RecordDoc;
use sandwatch::sources::replay::Splitter;

/// One step of one group's life: a pod, its session and its execution.
#[derive(Clone, Debug)]
enum Op {
    PodRunning,
    AgentDies(&'static str),
    NativeSidecarPod,
    PodDeleted,
    PodTerminating,
    Session(&'static str),
    SessionGone,
    Execution(&'static str, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::PodRunning),
        prop_oneof![Just("OOMKilled"), Just("Error"), Just("Completed")].prop_map(Op::AgentDies),
        Just(Op::NativeSidecarPod),
        Just(Op::PodDeleted),
        Just(Op::PodTerminating),
        prop_oneof![
            Just("running"),
            Just("idle"),
            Just("suspended"),
            Just("stopped")
        ]
        .prop_map(Op::Session),
        Just(Op::SessionGone),
        (
            prop_oneof![
                Just("queued"),
                Just("running"),
                Just("retry_wait"),
                Just("failed")
            ],
            0u64..6
        )
            .prop_map(|(s, a)| Op::Execution(s, a)),
    ]
}

/// The changes one group makes, each at an instant (seconds).
fn changes(group: usize, ops: &[(i64, Op)]) -> Vec<(i64, Change)> {
    let id = format!("s-{group}");
    let base = pod(&format!("ns-{group}"), &format!("sandbox-{group}"))
        .label("sandwatch.io/session", &id)
        .container("agent", C::Running(0))
        .container("tools", C::Running(0));
    let record = |v: Value| {
        let doc: RecordDoc = serde_json::from_value(v).unwrap();
        Change::Record(doc.validate(&presets()[0]).unwrap())
    };
    ops.iter()
        .map(|(t, o)| {
            let c = match o {
                Op::PodRunning => Change::PodUpserted(Box::new(base.object())),
                Op::AgentDies(r) => Change::PodUpserted(Box::new(
                    base.clone().set("agent", C::Terminated(if *r == "Completed" { 0 } else { 137 }, r, *t)).object(),
                )),
                Op::NativeSidecarPod => Change::PodUpserted(Box::new(
                    pod(&base.ns, &base.name)
                        .label("sandwatch.io/session", &id)
                        .container("agent", C::Terminated(1, "Error", *t))
                        .native_sidecar("proxy", C::Running(0))
                        .object(),
                )),
                Op::PodDeleted => Change::PodDeleted {
                    namespace: base.ns.clone(),
                    name: base.name.clone(),
                    uid: None,
                },
                Op::PodTerminating => Change::PodUpserted(Box::new(base.clone().deleting().object())),
                Op::Session(s) => record(json!({"kind":"session","id":id,"state":s})),
                Op::SessionGone => record(json!({"kind":"session","id":id,"deleted":true})),
                Op::Execution(s, a) => {
                    record(json!({"kind":"execution","id":format!("e-{group}"),"session":id,"state":s,"attempt":a}))
                }
            };
            (*t, c)
        })
        .collect()
}

fn run(events: &[(i64, Change)], end: i64) -> Vec<String> {
    let mut sim = Sim::preset("generic");
    for (t, c) in events {
        sim.now = *t;
        sim.apply(c.clone());
    }
    sim.at(end);
    let mut out: Vec<String> = sim.log.iter().map(describe).collect();
    out.sort();
    out
}

fn describe(t: &Transition) -> String {
    let f = &t.finding;
    format!(
        "{:?} {} {:?}/{:?}/{:?} {} at={} retries={}",
        t.event,
        f.finding.kind,
        f.finding.pod,
        f.finding.session,
        f.finding.execution,
        f.finding.reason,
        t.at.0,
        f.retries_after_death
    )
}

fn group_ops() -> impl Strategy<Value = Vec<(i64, Op)>> {
    // Instants on a coarse grid (so that groups often share one) spanning the grace periods.
    prop::collection::vec((0i64..12, op()), 1..10).prop_map(|mut v| {
        v.sort_by_key(|(t, _)| *t);
        v.into_iter().map(|(t, o)| (t * 45, o)).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Interleaving independent groups differently (respecting time) gives the same findings,
    /// and the same as running each group on its own.
    #[test]
    fn independent_entities_do_not_interfere(groups in prop::collection::vec(group_ops(), 1..5), seed in any::<u64>()) {
        let per_group: Vec<Vec<(i64, Change)>> = groups.iter().enumerate().map(|(g, ops)| changes(g, ops)).collect();
        let end = 2000;
        let mut solo: Vec<String> = per_group.iter().flat_map(|g| run(g, end)).collect();
        solo.sort();
        // Merge by time; within one instant, a seeded shuffle of the groups' order.
        let mut tagged: Vec<(i64, u64, usize, usize, Change)> = Vec::new();
        for (g, evs) in per_group.iter().enumerate() {
            for (i, (t, c)) in evs.iter().enumerate() {
                let key = (seed ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left((*t % 61) as u32);
                tagged.push((*t, key, g, i, c.clone()));
            }
        }
        tagged.sort_by_key(|(t, k, g, i, _)| (*t, *k, *g, *i));
        let a: Vec<(i64, Change)> = tagged.iter().map(|(t, _, _, _, c)| (*t, c.clone())).collect();
        tagged.sort_by_key(|(t, k, g, i, _)| (*t, std::cmp::Reverse(*k), *g, *i));
        let b: Vec<(i64, Change)> = tagged.iter().map(|(t, _, _, _, c)| (*t, c.clone())).collect();
        let (ra, rb) = (run(&a, end), run(&b, end));
        prop_assert_eq!(&ra, &rb);
        prop_assert_eq!(&ra, &solo);
    }

    /// Arbitrary bytes through the splitter and the replay never panic, and every value is
    /// either applied or counted as rejected.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        replay_bytes(&bytes);
    }

    /// Arbitrary JSON values never panic either.
    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let text = serde_json::to_vec(&v).unwrap();
        replay_bytes(&text);
        let wrapped = serde_json::to_vec(&json!({"type": "MODIFIED", "object": v})).unwrap();
        replay_bytes(&wrapped);
        let record = serde_json::to_vec(&json!({"at": "2026-01-01T00:00:00Z", "record": v})).unwrap();
        replay_bytes(&record);
    }

    /// Real example files with bytes corrupted, removed or inserted never panic.
    #[test]
    fn corrupted_examples_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..20), which in 0usize..4) {
        let files = [
            "01-agent-oomkilled-sidecar-keeps-pod-running.json",
            "02-suspended-sessions-orphaned-by-bare-pod-backend.json",
            "03-runner-oom-operator-misses-container-termination.json",
            "04-retries-against-dead-modal-sandbox.json",
        ];
        let mut bytes = std::fs::read(format!("{}/examples/{}", env!("CARGO_MANIFEST_DIR"), files[which])).unwrap();
        for (at, b, how) in edits {
            let i = at.index(bytes.len().max(1));
            match how {
                0 if !bytes.is_empty() => bytes[i] = b,
                1 if !bytes.is_empty() => { bytes.remove(i); }
                _ => bytes.insert(i.min(bytes.len()), b),
            }
        }
        replay_bytes(&bytes);
    }
}

fn presets() -> &'static [Arc<sandwatch::model::profile::Profiles>] {
    static PRESETS: std::sync::OnceLock<Vec<Arc<sandwatch::model::profile::Profiles>>> =
        std::sync::OnceLock::new();
    PRESETS.get_or_init(|| {
        ["generic", "sandbox-api", "ambient", "offload-modal"]
            .iter()
            .map(|p| sandwatch::app::config::preset(p).unwrap().profiles)
            .collect()
    })
}

fn replay_bytes(bytes: &[u8]) {
    for profiles in presets() {
        let profiles = profiles.clone();
        let mut replay = Replay::new(Engine::new(profiles.clone()), &profiles);
        let mut out = Vec::new();
        let mut values = 0;
        Splitter::new(bytes)
            .for_each(|v, _| {
                values += 1;
                let _ = replay.value(v, &mut out);
            })
            .unwrap();
        assert_eq!(replay.counts.values, values);
        assert!(replay.counts.rejected <= values);
        let _ = replay
            .engine
            .advance(sandwatch::util::time::Ts(i64::MAX / 2));
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("Pod".to_string()),
            Just("v1".to_string()),
            Just("ADDED".to_string()),
            Just("Running".to_string()),
            Just("session".to_string()),
            Just("execution".to_string()),
            Just("2026-01-01T00:00:00Z".to_string()),
            ".*".prop_map(|s: String| s),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("kind".to_string()),
            Just("apiVersion".to_string()),
            Just("metadata".to_string()),
            Just("name".to_string()),
            Just("namespace".to_string()),
            Just("status".to_string()),
            Just("phase".to_string()),
            Just("containerStatuses".to_string()),
            Just("state".to_string()),
            Just("terminated".to_string()),
            Just("spec".to_string()),
            Just("containers".to_string()),
            Just("id".to_string()),
            Just("at".to_string()),
            Just("type".to_string()),
            Just("object".to_string()),
            "[a-z]{1,8}".prop_map(|s: String| s),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
