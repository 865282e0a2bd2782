//! Random histories for the oracle property: the profiles, the sources, and the steps of a
//! cluster's and a database's life, described abstractly so that proptest can shrink them, and
//! turned into engine [`Change`]s against the current state when they run.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use sandwatch::core::engine::{Change, Engine};
use sandwatch::core::world::Subject;
use sandwatch::model::profile::{ProfileId, Profiles};
use sandwatch::model::record::{Record, RecordChange, RecordDoc, RecordKind};
use sandwatch::model::source::{Feed, SourceStatus};
use sandwatch::util::shard::Shard;
use sandwatch::util::time::Ts;

use super::model::{OpenKey, Oracle, RKey, Subj};

pub const T0: i64 = 1_774_000_000;

pub fn at(secs: i64) -> Ts {
    Ts::from_secs(T0 + secs)
}

pub const NAMESPACES: [&str; 4] = ["ns-a", "ns-b", "ns-c", "ns-x"];
pub const POD_NAMES: [&str; 3] = ["p-1", "p-2", "p-3"];
pub const SESSIONS: [&str; 3] = ["s-1", "s-2", "s-3"];
pub const EXECUTIONS: [&str; 3] = ["e-1", "e-2", "e-3"];
pub const SANDBOXES: [&str; 2] = ["b-1", "b-2"];
pub const PROFILES: [&str; 3] = ["gen", "api", "nsd"];

// ------------------------------------------------------------------ the configuration

/// What varies between cases in the configuration and the set of sources.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// gen's pod namespaces: 0 all, 1 [ns-a], 2 [ns-a, ns-b].
    pub gen_ns: u8,
    /// gen's records.default_namespace: 0 none, 1 ns-a, 2 ns-x.
    pub gen_default: u8,
    /// api's pod namespaces: 0 all, 1 [ns-c], 2 [ns-a, ns-c].
    pub api_ns: u8,
    /// api's records.default_namespace: 0 none, 1 ns-c, 2 ns-b.
    pub api_default: u8,
    /// api's suspended sessions resume from a custom resource.
    pub api_cr: bool,
    /// nsd's pods carry their session id in a label.
    pub nsd_key: bool,
    /// nsd's sessions are custom resources (role session) rather than `namespaced_ids`.
    pub nsd_cr: bool,
    /// nsd's pod namespaces: 0 all, 1 [ns-b], 2 [ns-b, ns-c].
    pub nsd_ns: u8,
    /// nsd's namespaced ids besides sessions: 0 none, 1 executions, 2 executions and sandboxes.
    pub nsd_ids: u8,
    /// nsd's records.default_namespace is ns-b.
    pub nsd_default: bool,
    /// One source of each kind for every profile (`profile: None`), rather than one per
    /// profile and watched namespace.
    pub shared: bool,
    /// Sources that register only when a step first reports them (bit i: the i-th source).
    pub later: u8,
    /// Per profile, the record feeds its records source provides (bits: sessions,
    /// executions, sandboxes); 0: no records source.
    pub records: [u8; 3],
    /// 0: native_sidecar 10s, absence 30s, leaked_pod 60s; 1: 5s, 20s, 40s.
    pub graces: u8,
}

fn ns_list(knob: u8, lists: [&[&str]; 3]) -> Vec<String> {
    lists[usize::from(knob) % 3]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Knobs {
    pub fn gen_namespaces(&self) -> Vec<String> {
        ns_list(self.gen_ns, [&[], &["ns-a"], &["ns-a", "ns-b"]])
    }
    pub fn api_namespaces(&self) -> Vec<String> {
        ns_list(self.api_ns, [&[], &["ns-c"], &["ns-a", "ns-c"]])
    }
    pub fn nsd_namespaces(&self) -> Vec<String> {
        ns_list(self.nsd_ns, [&[], &["ns-b"], &["ns-b", "ns-c"]])
    }
    fn namespaces(&self, profile: usize) -> Vec<String> {
        match profile {
            0 => self.gen_namespaces(),
            1 => self.api_namespaces(),
            _ => self.nsd_namespaces(),
        }
    }

    pub fn yaml(&self) -> String {
        let grace = if self.graces.is_multiple_of(2) {
            "    grace:\n      native_sidecar: 10s\n      absence: 30s\n      leaked_pod: 60s\n"
        } else {
            "    grace:\n      native_sidecar: 5s\n      absence: 20s\n      leaked_pod: 40s\n"
        };
        let namespaces = |v: Vec<String>| {
            if v.is_empty() {
                String::new()
            } else {
                format!("      namespaces: [{}]\n", v.join(", "))
            }
        };
        let mut y = String::from("profiles:\n");
        // gen
        y += "  - preset: generic\n    name: gen\n";
        let ns = namespaces(self.gen_namespaces());
        if !ns.is_empty() {
            y += &format!("    pods:\n{ns}");
        }
        match self.gen_default % 3 {
            1 => y += "    records:\n      default_namespace: ns-a\n",
            2 => y += "    records:\n      default_namespace: ns-x\n",
            _ => {}
        }
        y += grace;
        // api
        y += "  - preset: sandbox-api\n    name: api\n";
        let ns = namespaces(self.api_namespaces());
        if !ns.is_empty() {
            y += &format!("    pods:\n{ns}");
        }
        if self.api_cr {
            y += "    sessions:\n      resume_from: custom_resource\n";
            y += "    custom_resources:\n      - api_version: agents.x-k8s.io/v1alpha1\n        kind: Sandbox\n        plural: sandboxes\n        role: resume_target\n";
        }
        match self.api_default % 3 {
            1 => y += "    records:\n      default_namespace: ns-c\n",
            2 => y += "    records:\n      default_namespace: ns-b\n",
            _ => {}
        }
        y += grace;
        // nsd
        y += "  - name: nsd\n    pods:\n      selector: \"app=nsd\"\n      agent_containers: [runner, helper]\n";
        if self.nsd_key || self.nsd_cr {
            y += "      session_key: { label: nsd/session }\n";
        }
        y += &namespaces(self.nsd_namespaces());
        y += "    sessions:\n      active: [Running]\n      suspended: [Suspended]\n      transitional: [Pending]\n      terminal: [Done]\n";
        y += "    executions:\n      active: [running, retrying]\n      terminal: [done]\n";
        y += "    sandboxes:\n      alive: [up]\n      dead: [down]\n";
        let mut ids: Vec<&str> = Vec::new();
        if self.nsd_cr {
            y += "    custom_resources:\n      - api_version: example.com/v1\n        kind: Run\n        plural: runs\n        role: session\n";
        } else {
            ids.push("session");
        }
        ids.extend(&["execution", "sandbox"][..usize::from(self.nsd_ids % 3)]);
        if !ids.is_empty() || self.nsd_default {
            y += "    records:\n";
        }
        if !ids.is_empty() {
            y += &format!("      namespaced_ids: [{}]\n", ids.join(", "));
        }
        if self.nsd_default {
            y += "      default_namespace: ns-b\n";
        }
        y += grace;
        y
    }

    /// The sources, all healthy, as `sandwatch run` would register them.
    pub fn sources(&self) -> Vec<SourceStatus> {
        let mut out = Vec::new();
        if self.shared {
            // As in a replay: one source of each kind, for every profile and namespace.
            out.push(SourceStatus::new("pods", None, vec![Feed::Pods], true));
            let bits = self.records[0];
            let feeds: Vec<Feed> = [Feed::Sessions, Feed::Executions, Feed::Sandboxes]
                .into_iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, f)| f)
                .collect();
            if !feeds.is_empty() {
                out.push(SourceStatus::new("records", None, feeds, true));
            }
            if self.api_cr {
                out.push(SourceStatus::new(
                    "resume-targets",
                    None,
                    vec![Feed::ResumeTargets],
                    true,
                ));
            }
            return out;
        }
        for (i, name) in PROFILES.iter().enumerate() {
            let profile = Some(ProfileId(i as u16));
            let scopes: Vec<Option<String>> = match self.namespaces(i) {
                v if v.is_empty() => vec![None],
                v => v.into_iter().map(Some).collect(),
            };
            for ns in &scopes {
                out.push(
                    SourceStatus::new(
                        format!("pods/{name}/{}", ns.as_deref().unwrap_or("*")),
                        profile,
                        vec![Feed::Pods],
                        true,
                    )
                    .in_namespace(ns.clone()),
                );
            }
            let bits = self.records[i];
            let mut feeds = Vec::new();
            if bits & 1 != 0 && !(i == 2 && self.nsd_cr) {
                feeds.push(Feed::Sessions);
            }
            if bits & 2 != 0 {
                feeds.push(Feed::Executions);
            }
            if bits & 4 != 0 {
                feeds.push(Feed::Sandboxes);
            }
            if !feeds.is_empty() {
                out.push(SourceStatus::new(
                    format!("records/{name}"),
                    profile,
                    feeds,
                    true,
                ));
            }
            if i == 2 && self.nsd_cr && bits & 1 != 0 {
                for ns in &scopes {
                    out.push(
                        SourceStatus::new(
                            format!("runs/{name}/{}", ns.as_deref().unwrap_or("*")),
                            profile,
                            vec![Feed::Sessions],
                            true,
                        )
                        .in_namespace(ns.clone()),
                    );
                }
            }
            if i == 1 && self.api_cr {
                for ns in &scopes {
                    out.push(
                        SourceStatus::new(
                            format!("sandboxes/{name}/{}", ns.as_deref().unwrap_or("*")),
                            profile,
                            vec![Feed::ResumeTargets],
                            true,
                        )
                        .in_namespace(ns.clone()),
                    );
                }
            }
        }
        out
    }
}

/// The shapes each profile takes (a few, so that parsed configurations can be reused).
/// gen: (pod namespaces, default namespace).
const GEN_SHAPES: [(u8, u8); 6] = [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 2)];
/// api: (pod namespaces, default namespace, resumes from a custom resource).
const API_SHAPES: [(u8, u8, bool); 6] = [
    (0, 0, false),
    (0, 1, true),
    (1, 1, true),
    (1, 0, false),
    (2, 0, true),
    (2, 2, false),
];
/// nsd: (session key, sessions are custom resources, pod namespaces, namespaced ids,
/// default namespace).
const NSD_SHAPES: [(bool, bool, u8, u8, bool); 8] = [
    (false, false, 0, 0, false),
    (true, false, 0, 0, false),
    (true, false, 1, 0, true),
    (false, false, 2, 1, false),
    (true, true, 0, 0, false),
    (true, true, 2, 0, false),
    (true, true, 1, 2, true),
    (false, false, 0, 2, true),
];

pub fn knobs() -> impl Strategy<Value = Knobs> {
    (
        (
            0..GEN_SHAPES.len(),
            0..API_SHAPES.len(),
            0..NSD_SHAPES.len(),
            0u8..2,
        ),
        (
            prop_oneof![6 => Just(7u8), 1 => 0u8..8],
            prop_oneof![6 => Just(7u8), 1 => 0u8..8],
            prop_oneof![6 => Just(7u8), 1 => 0u8..8],
        ),
        prop_oneof![4 => Just(0u8), 1 => 1u8..=255],
    )
        .prop_map(|((g, a, n, graces), (r0, r1, r2), later)| {
            let (gen_ns, gen_default) = GEN_SHAPES[g];
            let (api_ns, api_default, api_cr) = API_SHAPES[a];
            let (nsd_key, nsd_cr, nsd_ns, nsd_ids, nsd_default) = NSD_SHAPES[n];
            Knobs {
                gen_ns,
                gen_default,
                api_ns,
                api_default,
                api_cr,
                nsd_key,
                nsd_cr,
                nsd_ns,
                nsd_ids,
                nsd_default,
                shared: false,
                later,
                records: [r0, r1, r2],
                graces,
            }
        })
}

// ------------------------------------------------------------------ the steps

/// A container's state as generated: `ago` is how long before the step it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CGen {
    Absent,
    Waiting,
    Running,
    Terminated { code: u8, reason: u8, ago: u8 },
}

const EXIT_CODES: [i32; 3] = [0, 1, 137];
const REASONS: [Option<&str>; 4] = [None, Some("OOMKilled"), Some("Error"), Some("Completed")];

#[derive(Clone, Debug)]
pub struct PodGen {
    pub ns: u8,
    pub name: u8,
    pub inc: u8,
    /// Whose labels it carries: 0 gen, 1 api, 2 nsd, 3 none of them.
    pub flavor: u8,
    /// Another profile's labels too.
    pub extra: Option<u8>,
    /// api's selector excludes warm-pool pods.
    pub warm: bool,
    pub session: Option<u8>,
    pub execution: Option<u8>,
    /// 0 Pending, 1..=4 Running, 5 Succeeded, 6 Failed.
    pub phase: u8,
    pub evicted: bool,
    pub condition_ago: Option<u8>,
    /// 0 Never, 1 OnFailure, 2 Always.
    pub restart: u8,
    pub terminating: bool,
    pub created_ago: u8,
    pub agent: CGen,
    pub wrong_agent: bool,
    pub helper: Option<CGen>,
    pub sidecar: Option<CGen>,
    pub native: Option<CGen>,
    /// An init container: a plain one (`false`), or a native sidecar named like the agent.
    pub init: Option<(bool, CGen)>,
}

#[derive(Clone, Debug)]
pub enum Mutation {
    Agent(CGen),
    Helper(Option<CGen>),
    Sidecar(Option<CGen>),
    Native(Option<CGen>),
    Phase {
        phase: u8,
        evicted: bool,
        condition_ago: Option<u8>,
    },
    Terminating,
    Session(Option<u8>),
    Execution(Option<u8>),
    RestartPolicy(u8),
    Flavor(u8),
}

#[derive(Clone, Debug)]
pub struct RecGen {
    /// 0 session, 1 execution, 2 sandbox.
    pub kind: u8,
    pub id: u8,
    pub profile: Option<u8>,
    pub state: u8,
    pub ns: Option<u8>,
    pub pod: Option<u8>,
    pub session: Option<u8>,
    pub sandbox: Option<u8>,
    pub attempt: Option<u8>,
    /// updated_at, seconds before the step (negative: after it).
    pub updated_ago: Option<i8>,
}

#[derive(Clone, Debug)]
pub enum TouchKind {
    Same,
    UpdatedNow,
    NewState(u8),
    Attempt,
    Repoint(Option<u8>),
    Move(Option<u8>),
    Relink(Option<u8>),
}

#[derive(Clone, Debug)]
pub enum Action {
    /// Only the clock moves: `Engine::advance`, or `Change::Tick` when `tick`.
    Wait {
        secs: u8,
        tick: bool,
    },
    Source {
        src: u8,
        synced: bool,
        fresh: bool,
    },
    Pod(PodGen),
    Mutate {
        pick: u8,
        m: Mutation,
    },
    /// Deletes a pod by its uid; `stale`: the uid of an earlier incarnation; `blind`: no uid.
    Delete {
        pick: u8,
        stale: bool,
        blind: bool,
    },
    Record(RecGen),
    /// A pod for a record the platform has (its profile, namespace, pod name, session).
    PodFor {
        pick: u8,
        g: PodGen,
    },
    /// An execution of a session the platform has (naming its namespace or not).
    ExecFor {
        pick: u8,
        g: RecGen,
    },
    /// An execution against a sandbox the platform has.
    SandboxExec {
        pick: u8,
        g: RecGen,
    },
    /// The resource a session resumes from appears or vanishes (in its namespace, or `ns`).
    TargetFor {
        pick: u8,
        ns: Option<u8>,
        exists: bool,
    },
    /// The same id in another namespace, for a kind whose ids are unique per namespace.
    Twin {
        pick: u8,
        ns: u8,
    },
    /// A record for a pod the cluster has (its profile, and maybe its namespace and name).
    RecordFor {
        pick: u8,
        g: RecGen,
    },
    Touch {
        pick: u8,
        t: TouchKind,
    },
    Tombstone {
        kind: u8,
        id: u8,
        profile: Option<u8>,
        ns: Option<u8>,
    },
    Target {
        ns: u8,
        name: u8,
        exists: bool,
    },
    /// A source lists its scope again; the objects the mask picks vanished in the gap.
    Relist {
        src: u8,
        vanish: u8,
    },
    Restart,
}

#[derive(Clone, Debug)]
pub struct Step {
    /// Seconds since the previous step.
    pub dt: u8,
    /// The change is stamped this many seconds in the past (the engine's clock never runs
    /// backwards: it happens now).
    pub late: u8,
    pub action: Action,
}

#[derive(Clone)]
pub struct Case {
    pub knobs: Knobs,
    pub steps: Vec<Step>,
}

/// One line per step, so that a shrunk history reads as a list.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Case {{ knobs: {:?}, steps: vec![", self.knobs)?;
        for s in &self.steps {
            writeln!(f, "    {s:?},")?;
        }
        write!(f, "] }}")
    }
}

fn cgen() -> impl Strategy<Value = CGen> {
    prop_oneof![
        1 => Just(CGen::Absent),
        1 => Just(CGen::Waiting),
        4 => Just(CGen::Running),
        4 => (0u8..3, 0u8..4, 0u8..90).prop_map(|(code, reason, ago)| CGen::Terminated { code, reason, ago }),
    ]
}

fn pod_gen() -> impl Strategy<Value = PodGen> {
    (
        (
            0u8..4,
            0u8..3,
            0u8..3,
            prop_oneof![3 => 0u8..3, 1 => Just(3u8)],
        ),
        (
            prop::option::weighted(0.15, 0u8..4),
            prop::bool::weighted(0.1),
            prop::option::weighted(0.8, 0u8..3),
            prop::option::weighted(0.3, 0u8..3),
        ),
        (
            0u8..7,
            prop::bool::weighted(0.2),
            prop::option::weighted(0.5, 0u8..120),
            prop_oneof![3 => Just(0u8), 1 => 1u8..3],
            prop::bool::weighted(0.1),
            0u8..120,
        ),
        (
            cgen(),
            prop::bool::weighted(0.05),
            prop::option::weighted(0.2, cgen()),
            prop::option::weighted(0.6, cgen()),
            prop::option::weighted(0.3, cgen()),
            prop::option::weighted(0.15, (any::<bool>(), cgen())),
        ),
    )
        .prop_map(
            |(
                (ns, name, inc, flavor),
                (extra, warm, session, execution),
                (phase, evicted, condition_ago, restart, terminating, created_ago),
                (agent, wrong_agent, helper, sidecar, native, init),
            )| PodGen {
                init,
                ns,
                name,
                inc,
                flavor,
                extra,
                warm,
                session,
                execution,
                phase,
                evicted,
                condition_ago,
                restart,
                terminating,
                created_ago,
                agent,
                wrong_agent,
                helper,
                sidecar,
                native,
            },
        )
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => cgen().prop_map(Mutation::Agent),
        1 => prop::option::of(cgen()).prop_map(Mutation::Helper),
        2 => prop::option::of(cgen()).prop_map(Mutation::Sidecar),
        2 => prop::option::of(cgen()).prop_map(Mutation::Native),
        2 => (0u8..7, any::<bool>(), prop::option::of(0u8..120))
            .prop_map(|(phase, evicted, condition_ago)| Mutation::Phase { phase, evicted, condition_ago }),
        2 => Just(Mutation::Terminating),
        2 => prop::option::weighted(0.8, 0u8..3).prop_map(Mutation::Session),
        1 => prop::option::of(0u8..3).prop_map(Mutation::Execution),
        1 => (0u8..3).prop_map(Mutation::RestartPolicy),
        1 => (0u8..4).prop_map(Mutation::Flavor),
    ]
}

fn rec_gen() -> impl Strategy<Value = RecGen> {
    (
        (
            prop_oneof![5 => Just(0u8), 4 => Just(1u8), 2 => Just(2u8)],
            0u8..3,
            prop::option::weighted(
                0.8,
                prop_oneof![5 => Just(0u8), 4 => Just(1u8), 7 => Just(2u8)],
            ),
            any::<u8>(),
        ),
        (
            prop::option::weighted(0.5, 0u8..4),
            prop::option::weighted(0.5, 0u8..3),
            prop::option::weighted(0.7, 0u8..3),
            prop::option::weighted(0.25, 0u8..2),
        ),
        (
            prop::option::weighted(0.4, 0u8..5),
            prop::option::weighted(0.5, -5i8..100),
        ),
    )
        .prop_map(
            |((kind, id, profile, state), (ns, pod, session, sandbox), (attempt, updated_ago))| {
                RecGen {
                    kind,
                    id,
                    profile,
                    state,
                    ns,
                    pod,
                    session,
                    sandbox,
                    attempt,
                    updated_ago,
                }
            },
        )
}

fn touch() -> impl Strategy<Value = TouchKind> {
    prop_oneof![
        2 => Just(TouchKind::Same),
        2 => Just(TouchKind::UpdatedNow),
        4 => any::<u8>().prop_map(TouchKind::NewState),
        1 => Just(TouchKind::Attempt),
        2 => prop::option::of(0u8..3).prop_map(TouchKind::Repoint),
        2 => prop::option::of(0u8..4).prop_map(TouchKind::Move),
        1 => prop::option::of(0u8..3).prop_map(TouchKind::Relink),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (1u8..100, any::<bool>()).prop_map(|(secs, tick)| Action::Wait { secs, tick }),
        5 => (any::<u8>(), prop::bool::weighted(0.6), prop::bool::weighted(0.6))
            .prop_map(|(src, synced, fresh)| Action::Source { src, synced, fresh }),
        8 => pod_gen().prop_map(Action::Pod),
        14 => (any::<u8>(), mutation()).prop_map(|(pick, m)| Action::Mutate { pick, m }),
        5 => (any::<u8>(), prop::bool::weighted(0.15), prop::bool::weighted(0.15))
            .prop_map(|(pick, stale, blind)| Action::Delete { pick, stale, blind }),
        12 => rec_gen().prop_map(Action::Record),
        8 => (any::<u8>(), pod_gen()).prop_map(|(pick, g)| Action::PodFor { pick, g }),
        8 => (any::<u8>(), rec_gen()).prop_map(|(pick, g)| Action::RecordFor { pick, g }),
        8 => (any::<u8>(), 0u8..4).prop_map(|(pick, ns)| Action::Twin { pick, ns }),
        6 => (any::<u8>(), rec_gen()).prop_map(|(pick, g)| Action::ExecFor { pick, g }),
        3 => (any::<u8>(), rec_gen()).prop_map(|(pick, g)| Action::SandboxExec { pick, g }),
        3 => (any::<u8>(), prop::option::weighted(0.3, 0u8..4), prop::bool::weighted(0.5))
            .prop_map(|(pick, ns, exists)| Action::TargetFor { pick, ns, exists }),
        8 => (any::<u8>(), touch()).prop_map(|(pick, t)| Action::Touch { pick, t }),
        4 => (
            prop_oneof![3 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
            0u8..3,
            prop::option::weighted(0.7, 0u8..3),
            prop::option::weighted(0.5, 0u8..4),
        )
            .prop_map(|(kind, id, profile, ns)| Action::Tombstone { kind, id, profile, ns }),
        3 => (0u8..4, 0u8..3, prop::bool::weighted(0.6))
            .prop_map(|(ns, name, exists)| Action::Target { ns, name, exists }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(src, vanish)| Action::Relist { src, vanish }),
        1 => Just(Action::Restart),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![6 => Just(0u8), 3 => 1u8..4, 1 => 4u8..40],
        prop_oneof![9 => Just(0u8), 1 => 1u8..30],
        action(),
    )
        .prop_map(|(dt, late, action)| Step { dt, late, action })
}

pub fn case() -> impl Strategy<Value = Case> {
    prop_oneof![case_with(false), case_with(true)]
}

/// Histories with sources per profile and namespace, or with shared sources.
pub fn case_with(shared: bool) -> impl Strategy<Value = Case> {
    (knobs(), prop::collection::vec(step(), 1..60)).prop_map(move |(knobs, steps)| Case {
        knobs: Knobs { shared, ..knobs },
        steps,
    })
}

// ------------------------------------------------------------------ the cluster

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CSt {
    Absent,
    Waiting,
    Running,
    Terminated {
        code: i32,
        reason: Option<&'static str>,
        finished: i64,
    },
}

fn cst(g: CGen, now: i64) -> CSt {
    match g {
        CGen::Absent => CSt::Absent,
        CGen::Waiting => CSt::Waiting,
        CGen::Running => CSt::Running,
        CGen::Terminated { code, reason, ago } => CSt::Terminated {
            code: EXIT_CODES[usize::from(code) % 3],
            reason: REASONS[usize::from(reason) % 4],
            finished: now - i64::from(ago),
        },
    }
}

/// A pod as the API server has it.
#[derive(Clone, Debug)]
pub struct PodState {
    pub ns: String,
    pub name: String,
    pub inc: u8,
    pub uid: String,
    pub flavor: u8,
    pub extra: Option<u8>,
    pub warm: bool,
    pub session: Option<String>,
    pub execution: Option<String>,
    pub phase: &'static str,
    pub reason: Option<&'static str>,
    pub condition: Option<i64>,
    pub restart: &'static str,
    pub terminating: bool,
    pub created: i64,
    pub containers: Vec<(String, CSt)>,
    pub natives: Vec<(String, CSt)>,
    /// Init containers that are not sidecars.
    pub inits: Vec<(String, CSt)>,
}

pub fn uid(ns: &str, name: &str, inc: u8) -> String {
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap_or(9);
    let p = POD_NAMES.iter().position(|x| *x == name).unwrap_or(9);
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        n + 1,
        p + 1,
        u32::from(inc) + 1
    )
}

const PHASES: [&str; 7] = [
    "Pending",
    "Running",
    "Running",
    "Running",
    "Running",
    "Succeeded",
    "Failed",
];
const RESTART: [&str; 3] = ["Never", "OnFailure", "Always"];

fn agent_name(flavor: u8) -> &'static str {
    match flavor {
        1 => "sandbox",
        2 => "runner",
        _ => "agent",
    }
}

impl PodState {
    fn new(g: &PodGen, now: i64) -> PodState {
        let ns = NAMESPACES[usize::from(g.ns) % 4].to_string();
        let name = POD_NAMES[usize::from(g.name) % 3].to_string();
        let mut p = PodState {
            uid: uid(&ns, &name, g.inc),
            ns,
            name,
            inc: g.inc,
            flavor: g.flavor % 4,
            extra: g.extra.map(|e| e % 4),
            warm: g.warm,
            session: g.session.map(|s| SESSIONS[usize::from(s) % 3].to_string()),
            execution: g
                .execution
                .map(|e| EXECUTIONS[usize::from(e) % 3].to_string()),
            phase: "Running",
            reason: None,
            condition: None,
            restart: RESTART[usize::from(g.restart) % 3],
            terminating: g.terminating,
            created: now - i64::from(g.created_ago),
            containers: Vec::new(),
            natives: Vec::new(),
            inits: Vec::new(),
        };
        p.set_phase(g.phase, g.evicted, g.condition_ago, now);
        let agent = if g.wrong_agent {
            "main"
        } else {
            agent_name(p.flavor)
        };
        p.containers.push((agent.to_string(), cst(g.agent, now)));
        if let Some(h) = g.helper {
            p.containers.push(("helper".into(), cst(h, now)));
        }
        if let Some(s) = g.sidecar {
            p.containers.push(("tools".into(), cst(s, now)));
        }
        if let Some(n) = g.native {
            p.natives.push(("proxy".into(), cst(n, now)));
        }
        match g.init {
            Some((false, c)) => p.inits.push(("init".into(), cst(c, now))),
            Some((true, c)) => p.natives.push((agent_name(p.flavor).into(), cst(c, now))),
            None => {}
        }
        p
    }

    fn set_phase(&mut self, phase: u8, evicted: bool, condition_ago: Option<u8>, now: i64) {
        self.phase = PHASES[usize::from(phase) % 7];
        self.reason = (evicted && self.phase == "Failed").then_some("Evicted");
        self.condition = condition_ago.map(|a| now - i64::from(a));
    }

    fn set(&mut self, name: &str, g: Option<CGen>, now: i64, native: bool) {
        let list = if native {
            &mut self.natives
        } else {
            &mut self.containers
        };
        match g {
            None => list.retain(|(n, _)| n != name),
            Some(g) => match list.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => *s = cst(g, now),
                None => list.push((name.to_string(), cst(g, now))),
            },
        }
    }

    fn mutate(&mut self, m: &Mutation, now: i64) {
        match m {
            Mutation::Agent(g) => {
                let s = cst(*g, now);
                if let Some((_, st)) = self.containers.first_mut() {
                    *st = s;
                }
            }
            Mutation::Helper(g) => self.set("helper", *g, now, false),
            Mutation::Sidecar(g) => self.set("tools", *g, now, false),
            Mutation::Native(g) => self.set("proxy", *g, now, true),
            Mutation::Phase {
                phase,
                evicted,
                condition_ago,
            } => self.set_phase(*phase, *evicted, *condition_ago, now),
            Mutation::Terminating => self.terminating = true,
            Mutation::Session(s) => {
                self.session = s.map(|s| SESSIONS[usize::from(s) % 3].to_string())
            }
            Mutation::Execution(e) => {
                self.execution = e.map(|e| EXECUTIONS[usize::from(e) % 3].to_string())
            }
            Mutation::RestartPolicy(r) => self.restart = RESTART[usize::from(*r) % 3],
            Mutation::Flavor(f) => {
                self.flavor = f % 4;
                let agent = agent_name(self.flavor).to_string();
                if let Some((n, _)) = self.containers.first_mut() {
                    *n = agent;
                }
            }
        }
    }

    fn labels_for(
        &self,
        flavor: u8,
        labels: &mut Vec<(String, String)>,
        annotations: &mut Vec<(String, String)>,
    ) {
        let session = self.session.clone();
        match flavor {
            0 => {
                // The selector is `sandwatch.io/session` (exists): an empty value still matches.
                labels.push(("sandwatch.io/session".into(), session.unwrap_or_default()));
                if let Some(e) = &self.execution {
                    labels.push(("sandwatch.io/execution".into(), e.clone()));
                }
            }
            1 => {
                labels.push(("centaur.ai/managed".into(), "true".into()));
                if self.warm {
                    labels.push(("centaur.ai/warm".into(), "true".into()));
                }
                if let Some(s) = session {
                    annotations.push(("centaur.ai/thread-key".into(), s));
                }
            }
            2 => {
                labels.push(("app".into(), "nsd".into()));
                if let Some(s) = session {
                    labels.push(("nsd/session".into(), s));
                }
            }
            _ => labels.push(("app".into(), "other".into())),
        }
    }

    pub fn json(&self) -> Value {
        let rfc = |s: i64| at(s).to_string();
        let mut labels = Vec::new();
        let mut annotations = Vec::new();
        self.labels_for(self.flavor, &mut labels, &mut annotations);
        if let Some(e) = self.extra
            && e != self.flavor
        {
            let mut l2 = Vec::new();
            self.labels_for(e, &mut l2, &mut annotations);
            // The first flavor's labels win where both set one.
            for (k, v) in l2 {
                if !labels.iter().any(|(x, _)| *x == k) {
                    labels.push((k, v));
                }
            }
        }
        let map = |v: &Vec<(String, String)>| -> Value {
            Value::Object(v.iter().map(|(k, x)| (k.clone(), json!(x))).collect())
        };
        let mut meta = json!({
            "name": self.name, "namespace": self.ns, "uid": self.uid, "resourceVersion": "1",
            "creationTimestamp": rfc(self.created), "labels": map(&labels), "annotations": map(&annotations),
        });
        if self.terminating {
            meta["deletionTimestamp"] = json!(rfc(self.created));
        }
        let state = |c: &CSt| match c {
            CSt::Absent => Value::Null,
            CSt::Waiting => json!({"waiting": {"reason": "ContainerCreating"}}),
            CSt::Running => json!({"running": {"startedAt": rfc(self.created)}}),
            CSt::Terminated {
                code,
                reason,
                finished,
            } => {
                let mut t = json!({"exitCode": code, "startedAt": rfc(self.created), "finishedAt": rfc(*finished)});
                if let Some(r) = reason {
                    t["reason"] = json!(r);
                }
                json!({ "terminated": t })
            }
        };
        let statuses = |list: &Vec<(String, CSt)>| -> Vec<Value> {
            list.iter()
                .filter(|(_, c)| *c != CSt::Absent)
                .map(|(n, c)| json!({"name": n, "ready": *c == CSt::Running, "restartCount": 0, "state": state(c)}))
                .collect()
        };
        let mut status = json!({
            "phase": self.phase,
            "containerStatuses": statuses(&self.containers),
            "initContainerStatuses": statuses(&self.natives).into_iter().chain(statuses(&self.inits)).collect::<Vec<_>>(),
        });
        if let Some(r) = self.reason {
            status["reason"] = json!(r);
        }
        if let Some(c) = self.condition {
            status["conditions"] = json!([
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc(self.created)},
                {"type": "Ready", "status": "False", "lastTransitionTime": rfc(c)},
            ]);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {
                "restartPolicy": self.restart,
                "initContainers": self.natives.iter().map(|(n, _)| json!({"name": n, "restartPolicy": "Always"}))
                    .chain(self.inits.iter().map(|(n, _)| json!({"name": n})))
                    .collect::<Vec<_>>(),
                "containers": self.containers.iter().map(|(n, _)| json!({"name": n})).collect::<Vec<_>>(),
            },
            "status": status,
        })
    }

    pub fn change(&self) -> Change {
        Change::PodUpserted(Box::new(
            serde_json::from_value(self.json()).expect("valid pod"),
        ))
    }
}

impl fmt::Display for CSt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CSt::Absent => f.write_str("?"),
            CSt::Waiting => f.write_str("waiting"),
            CSt::Running => f.write_str("running"),
            CSt::Terminated {
                code,
                reason,
                finished,
            } => write!(f, "exit{code}/{}@{finished}", reason.unwrap_or("-")),
        }
    }
}

impl fmt::Display for PodState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flavor = |x: u8| ["gen", "api", "nsd", "none"][usize::from(x)];
        write!(
            f,
            "pod {}/{} #{} [{}{}{}] session={} exec={} {}{}{} restart={} created@{}{} containers:",
            self.ns,
            self.name,
            self.inc,
            flavor(self.flavor),
            self.extra
                .map(|e| format!("+{}", flavor(e)))
                .unwrap_or_default(),
            if self.warm { ",warm" } else { "" },
            self.session.as_deref().unwrap_or("-"),
            self.execution.as_deref().unwrap_or("-"),
            self.phase,
            self.reason.map(|r| format!("/{r}")).unwrap_or_default(),
            self.condition
                .map(|c| format!(" cond@{c}"))
                .unwrap_or_default(),
            self.restart,
            self.created,
            if self.terminating { " TERMINATING" } else { "" },
        )?;
        for (n, c) in &self.containers {
            write!(f, " {n}={c}")?;
        }
        for (n, c) in &self.natives {
            write!(f, " native:{n}={c}")?;
        }
        for (n, c) in &self.inits {
            write!(f, " init:{n}={c}")?;
        }
        Ok(())
    }
}

fn describe_record(r: &Record, profiles: &Profiles) -> String {
    let mut s = format!(
        "{} {}/{} state={}",
        r.kind.as_str(),
        profiles.get(r.profile).name,
        r.id,
        r.state
    );
    for (k, v) in [
        ("ns", &r.namespace),
        ("pod", &r.pod),
        ("session", &r.session),
        ("sandbox", &r.sandbox),
    ] {
        if let Some(v) = v {
            s += &format!(" {k}={v}");
        }
    }
    if let Some(a) = r.attempt {
        s += &format!(" attempt={a}");
    }
    if let Some(u) = r.updated_at {
        s += &format!(" updated@{}", u.0 / 1000 - T0);
    }
    s
}

pub fn describe(c: &Change, profiles: &Profiles, cluster: &[PodState]) -> String {
    match c {
        Change::PodUpserted(o) => {
            let ns = o.namespace().unwrap_or_default();
            let name = o.name().unwrap_or_default();
            let uid = o.metadata.uid.clone().unwrap_or_default();
            match cluster
                .iter()
                .find(|p| p.ns == ns && p.name == name && p.uid == uid)
            {
                Some(p) => format!("upsert {p}"),
                None => format!("upsert pod {ns}/{name} uid={uid}"),
            }
        }
        Change::PodDeleted {
            namespace,
            name,
            uid,
        } => format!(
            "delete pod {namespace}/{name} uid={}",
            uid.as_deref()
                .map(short_uid)
                .unwrap_or_else(|| "(none)".into())
        ),
        Change::Record(RecordChange::Upsert(r)) => {
            format!("record {}", describe_record(r, profiles))
        }
        Change::Record(RecordChange::Delete {
            kind,
            profile,
            namespace,
            id,
        }) => format!(
            "tombstone {} {}/{id}{}",
            kind.as_str(),
            profiles.get(*profile).name,
            namespace
                .as_ref()
                .map(|n| format!(" ns={n}"))
                .unwrap_or_default()
        ),
        Change::ResumeTarget {
            profile,
            namespace,
            name,
            exists,
        } => format!(
            "resume target {}/{namespace}/{name} {}",
            profiles.get(*profile).name,
            if *exists { "exists" } else { "gone" }
        ),
        Change::Listed {
            feed,
            profile,
            namespace,
            listed,
        } => {
            let mut l: Vec<String> = listed.iter().map(|(n, x)| format!("{n}/{x}")).collect();
            l.sort();
            format!(
                "listed {} of {} in {}: [{}]",
                feed.as_str(),
                profiles.get(*profile).name,
                namespace.as_deref().unwrap_or("*"),
                l.join(" ")
            )
        }
        Change::Source(s) => format!("source {} synced={} fresh={}", s.name, s.synced, s.fresh),
        Change::Tick => "tick".into(),
    }
}

fn short_uid(u: &str) -> String {
    let parts: Vec<&str> = u.split('-').collect();
    if parts.len() == 5 {
        format!("#{}", u64::from_str_radix(parts[4], 16).unwrap_or(0) - 1)
    } else {
        u.to_string()
    }
}

// ------------------------------------------------------------------ running a case

/// Compare the evidence time of each open finding too (what its grace counted from).
pub const CHECK_EVIDENCE: bool = true;

pub fn subj(s: &Subject) -> Subj {
    match s {
        Subject::Pod {
            namespace,
            name,
            uid,
        } => Subj::Pod {
            ns: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        },
        Subject::Record(k) => Subj::Rec(RKey {
            kind: k.kind,
            profile: k.profile,
            ns: k.namespace.as_ref().map(|n| n.to_string()),
            id: k.id.to_string(),
        }),
    }
}

pub fn engine_open(e: &Engine) -> Vec<OpenKey> {
    let mut v: Vec<OpenKey> = e
        .open_findings()
        .iter()
        .map(|f| OpenKey {
            kind: f.finding.kind,
            subject: subj(&f.subject),
            reason: f.finding.reason.to_string(),
        })
        .collect();
    v.sort();
    v
}

pub fn show(k: &OpenKey, profiles: &Profiles) -> String {
    let s = match &k.subject {
        Subj::Pod { ns, name, uid } => format!("pod {ns}/{name} {}", short_uid(uid)),
        Subj::Rec(r) => format!(
            "{} {}/{}{}",
            r.kind.as_str(),
            profiles.get(r.profile).name,
            r.ns.as_ref().map(|n| format!("{n}/")).unwrap_or_default(),
            r.id
        ),
    };
    format!("{} {s} {}", k.kind, k.reason)
}

/// One engine and its oracle, for one shard.
pub struct Lane {
    pub shard: Shard,
    pub engine: Engine,
    pub oracle: Oracle,
}

pub struct Harness {
    pub profiles: Arc<Profiles>,
    pub lanes: Vec<Lane>,
    pub sources: Vec<SourceStatus>,
    /// Sources not registered yet.
    pub later: Vec<SourceStatus>,
    pub cluster: Vec<PodState>,
    pub targets: Vec<(String, String)>,
    pub now: i64,
    pub history: Vec<String>,
    /// Findings opened (in the oracle), by kind and reason.
    pub stats: std::collections::BTreeMap<String, u64>,
    seen: Vec<Vec<OpenKey>>,
    late: i64,
    /// Time spent in the oracle, the engine and the comparison.
    pub timing: [std::time::Duration; 3],
}

/// The profiles of a configuration, parsed once per configuration (and thread).
pub fn profiles(yaml: &str) -> Arc<Profiles> {
    thread_local! {
        static PARSED: std::cell::RefCell<std::collections::HashMap<String, Arc<Profiles>>> =
            Default::default();
    }
    PARSED.with(|m| {
        m.borrow_mut()
            .entry(yaml.to_string())
            .or_insert_with(|| {
                sandwatch::app::config::load(yaml)
                    .unwrap_or_else(|e| panic!("{yaml}\n{e}"))
                    .profiles
            })
            .clone()
    })
}

pub fn shards() -> Vec<Shard> {
    vec![
        Shard::ALL,
        Shard::new(0, 2).unwrap(),
        Shard::new(1, 2).unwrap(),
    ]
}

impl Harness {
    pub fn new(knobs: &Knobs, shards: &[Shard]) -> Harness {
        let profiles = profiles(&knobs.yaml());
        let lanes = shards
            .iter()
            .map(|s| Lane {
                shard: *s,
                engine: Engine::sharded(profiles.clone(), *s),
                oracle: Oracle::new(profiles.clone(), *s),
            })
            .collect();
        Harness {
            profiles,
            lanes,
            sources: knobs
                .sources()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| knobs.later >> (i % 8) & 1 == 0)
                .map(|(_, s)| s)
                .collect(),
            later: knobs
                .sources()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| knobs.later >> (i % 8) & 1 == 1)
                .map(|(_, s)| s)
                .collect(),
            cluster: Vec::new(),
            targets: Vec::new(),
            now: 0,
            history: Vec::new(),
            stats: Default::default(),
            seen: vec![Vec::new(); shards.len()],
            late: 0,
            timing: Default::default(),
        }
    }

    fn failure(&self, lane: usize, what: &str) -> String {
        let l = &self.lanes[lane];
        let e = engine_open(&l.engine);
        let o = l.oracle.open_set();
        let only = |a: &[OpenKey], b: &[OpenKey]| -> Vec<String> {
            a.iter()
                .filter(|x| !b.contains(x))
                .map(|x| show(x, &self.profiles))
                .collect()
        };
        format!(
            "engine and oracle disagree after {what} (shard {}/{})\n  only the engine has: {:?}\n  only the oracle has: {:?}\n  history:\n    {}",
            l.shard.index,
            l.shard.total,
            only(&e, &o),
            only(&o, &e),
            self.history.join("\n    ")
        )
    }

    fn check(&mut self, lane: usize, what: &str) -> Result<(), String> {
        let l = &self.lanes[lane];
        let now = l.oracle.open_set();
        if engine_open(&l.engine) != now {
            return Err(self.failure(lane, what));
        }
        if CHECK_EVIDENCE {
            for f in l.engine.open_findings() {
                let s = subj(&f.subject);
                let want = l.oracle.evidence_of(f.finding.kind, &s);
                if want.is_none_or(|(at, _)| f.evidence_at != *at) {
                    return Err(format!(
                        "{}\n  evidence of {} {:?}: the engine says {}, the oracle {:?}",
                        self.failure(lane, what),
                        f.finding.kind,
                        s,
                        f.evidence_at.0 / 1000 - T0,
                        want.map(|w| w.0.0 / 1000 - T0)
                    ));
                }
                // The pod a finding names, when the oracle's join found one.
                if let Some((_, Some(uid))) = want
                    && f.finding.pod_uid.as_deref() != Some(uid.as_str())
                {
                    return Err(format!(
                        "{}\n  pod of {} {:?}: the engine says {:?} ({:?}/{:?}), the oracle {uid}",
                        self.failure(lane, what),
                        f.finding.kind,
                        s,
                        f.finding.pod_uid.as_deref(),
                        f.finding.namespace.as_deref(),
                        f.finding.pod.as_deref(),
                    ));
                }
            }
        }
        // What the history exercised, for `coverage`.
        for k in &now {
            if !self.seen[lane].contains(k) {
                let sharded = if l.shard.total > 1 { "sharded " } else { "" };
                *self
                    .stats
                    .entry(format!("{sharded}{} {}", k.kind, k.reason))
                    .or_default() += 1;
            }
        }
        self.seen[lane] = now;
        Ok(())
    }

    /// Gives every lane the same change, and compares.
    pub fn apply(&mut self, change: Change) -> Result<(), String> {
        let line = format!(
            "@{}{} {}",
            self.now,
            if self.late > 0 {
                format!(" (stamped {}s late)", self.late)
            } else {
                String::new()
            },
            describe(&change, &self.profiles, &self.cluster)
        );
        self.history.push(line);
        let t = at(self.now - self.late);
        for i in 0..self.lanes.len() {
            let l = &mut self.lanes[i];
            let t0 = std::time::Instant::now();
            l.oracle.apply(t, &change);
            let t1 = std::time::Instant::now();
            l.engine.apply(t, change.clone());
            let t2 = std::time::Instant::now();
            self.check(i, "the last change")?;
            self.timing[0] += t1 - t0;
            self.timing[1] += t2 - t1;
            self.timing[2] += t2.elapsed();
        }
        Ok(())
    }

    pub fn advance(&mut self, tick: bool) -> Result<(), String> {
        if tick {
            return self.apply(Change::Tick);
        }
        self.history.push(format!("@{} advance", self.now));
        let t = at(self.now);
        for i in 0..self.lanes.len() {
            let l = &mut self.lanes[i];
            l.oracle.advance(t);
            l.engine.advance(t);
            self.check(i, "advancing the clock")?;
        }
        Ok(())
    }

    /// The records as the platform has them (the unsharded lane keeps them all).
    fn truth(&self) -> Vec<Record> {
        self.lanes[0]
            .oracle
            .records
            .iter()
            .map(|r| r.rec.clone())
            .collect()
    }

    fn validate(&self, doc: RecordDoc) -> Option<Change> {
        doc.validate(&self.profiles).ok().map(Change::Record)
    }

    fn state_of(&self, kind: RecordKind, profile: ProfileId, pick: u8) -> String {
        let p = self.profiles.get(profile);
        let states: Vec<String> = match kind {
            RecordKind::Session => {
                // A class first (each as likely), then a state of it.
                let classes = [
                    &p.sessions.active,
                    &p.sessions.suspended,
                    &p.sessions.transitional,
                    &p.sessions.terminal,
                ];
                let mut c = usize::from(pick) % 4;
                while classes[c].is_empty() {
                    c = (c + 1) % 4;
                }
                classes[c].clone()
            }
            RecordKind::Execution => p
                .executions
                .active
                .iter()
                .chain(&p.executions.terminal)
                .cloned()
                .collect(),
            RecordKind::Sandbox => {
                let mut v: Vec<String> = p
                    .sandboxes
                    .dead
                    .iter()
                    .chain(&p.sandboxes.alive)
                    .cloned()
                    .collect();
                if p.sandboxes.alive.is_empty() {
                    v.push("running".into());
                }
                v
            }
        };
        let pick = if kind == RecordKind::Session {
            pick / 4
        } else {
            pick
        };
        states[usize::from(pick) % states.len()].clone()
    }

    fn listed_pods(&self, ns: &Option<String>) -> HashSet<(String, String)> {
        self.cluster
            .iter()
            .filter(|p| ns.as_ref().is_none_or(|n| *n == p.ns))
            .map(|p| (p.ns.clone(), p.name.clone()))
            .collect()
    }

    fn listed_records(
        &self,
        kind: RecordKind,
        profile: ProfileId,
        ns: &Option<String>,
        vanished: &[RKey],
    ) -> HashSet<(String, String)> {
        self.lanes[0]
            .oracle
            .records
            .iter()
            .filter(|r| {
                !vanished.contains(&r.key)
                    && r.key.kind == kind
                    && r.key.profile == profile
                    && ns.as_ref().is_none_or(|n| r.ns_attr.as_ref() == Some(n))
            })
            .flat_map(|r| {
                // As the PostgreSQL source lists a row: by the namespace it names, if any.
                [(
                    r.rec.namespace.clone().unwrap_or_default(),
                    r.rec.id.clone(),
                )]
            })
            .collect()
    }

    fn listed_targets(&self, ns: &Option<String>) -> HashSet<(String, String)> {
        self.targets
            .iter()
            .filter(|(n, _)| ns.as_ref().is_none_or(|x| x == n))
            .cloned()
            .collect()
    }

    /// What a source's full list says now.
    fn listings(&self, s: &SourceStatus, vanished: &[RKey]) -> Vec<Change> {
        match s.profile {
            Some(p) => self.listings_of(s, p, vanished),
            None => (0..self.profiles.len())
                .flat_map(|p| self.listings_of(s, ProfileId(p as u16), vanished))
                .collect(),
        }
    }

    fn listings_of(&self, s: &SourceStatus, profile: ProfileId, vanished: &[RKey]) -> Vec<Change> {
        s.feeds
            .iter()
            .map(|f| {
                let listed = match f {
                    Feed::Pods => self.listed_pods(&s.namespace),
                    Feed::ResumeTargets => self.listed_targets(&s.namespace),
                    Feed::Sessions => {
                        self.listed_records(RecordKind::Session, profile, &s.namespace, vanished)
                    }
                    Feed::Executions => {
                        self.listed_records(RecordKind::Execution, profile, &s.namespace, vanished)
                    }
                    Feed::Sandboxes => {
                        self.listed_records(RecordKind::Sandbox, profile, &s.namespace, vanished)
                    }
                };
                Change::Listed {
                    feed: *f,
                    profile,
                    namespace: s.namespace.clone(),
                    listed,
                }
            })
            .collect()
    }

    fn profile_of(&self, p: &PodState) -> Option<ProfileId> {
        let o: sandwatch::model::kubernetes::Object = serde_json::from_value(p.json()).unwrap();
        self.profiles.for_pod(&p.ns, o.metadata.labels.as_ref())
    }

    pub fn start(&mut self) -> Result<(), String> {
        for s in self.sources.clone() {
            self.apply(Change::Source(s))?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<(), String> {
        self.history.push(format!("@{} RESTART", self.now));
        let records = self.truth();
        if !self.lanes[0].oracle.open.is_empty() {
            *self
                .stats
                .entry("probe: restart with findings open".into())
                .or_default() += 1;
        }
        for l in &mut self.lanes {
            let probes = l.oracle.probes.take();
            l.engine = Engine::sharded(self.profiles.clone(), l.shard);
            l.oracle = Oracle::new(self.profiles.clone(), l.shard);
            l.oracle.probes.replace(probes);
        }
        for s in self.sources.clone() {
            let mut down = s.clone();
            down.synced = false;
            down.fresh = false;
            self.apply(Change::Source(down))?;
        }
        for p in self.cluster.clone() {
            self.apply(p.change())?;
        }
        for r in records {
            self.apply(Change::Record(RecordChange::Upsert(r)))?;
        }
        for (ns, name) in self.targets.clone() {
            self.apply(Change::ResumeTarget {
                profile: ProfileId(1),
                namespace: ns,
                name,
                exists: true,
            })?;
        }
        for s in self.sources.clone() {
            for c in self.listings(&s, &[]) {
                self.apply(c)?;
            }
        }
        for s in self.sources.clone() {
            self.apply(Change::Source(s))?;
        }
        Ok(())
    }

    fn upsert_pod(&mut self, p: PodState) -> Result<(), String> {
        self.cluster.retain(|x| !(x.ns == p.ns && x.name == p.name));
        self.cluster.push(p.clone());
        self.apply(p.change())
    }

    pub fn step(&mut self, step: &Step) -> Result<(), String> {
        self.now += i64::from(step.dt);
        self.late = match step.action {
            Action::Wait { .. } | Action::Restart => 0,
            _ => i64::from(step.late),
        };
        let now = self.now;
        match &step.action {
            Action::Wait { secs, tick } => {
                self.now += i64::from(*secs);
                self.advance(*tick)
            }
            Action::Source { src, synced, fresh } => {
                let n = self.sources.len() + self.later.len();
                let mut i = usize::from(*src) % n;
                if i >= self.sources.len() {
                    // A source that starts only now (its rules were not running).
                    let s = self.later.remove(i - self.sources.len());
                    self.sources.push(s.clone());
                    i = self.sources.len() - 1;
                }
                self.sources[i].synced = *synced;
                self.sources[i].fresh = *fresh;
                let s = self.sources[i].clone();
                self.apply(Change::Source(s))
            }
            Action::Pod(g) => self.upsert_pod(PodState::new(g, now)),
            Action::PodFor { pick, g } => {
                let truth = self.truth();
                if truth.is_empty() {
                    return Ok(());
                }
                let r = &truth[usize::from(*pick) % truth.len()];
                let mut g = g.clone();
                g.flavor = r.profile.0 as u8;
                let p = self.profiles.get(r.profile);
                let ns = r
                    .namespace
                    .clone()
                    .or_else(|| p.records.default_namespace.clone());
                if let Some(ns) = ns {
                    g.ns = NAMESPACES.iter().position(|n| *n == ns).unwrap_or(0) as u8;
                }
                if let Some(pod) = &r.pod {
                    g.name = POD_NAMES.iter().position(|n| n == pod).unwrap_or(0) as u8;
                }
                let sid = match r.kind {
                    RecordKind::Session => Some(r.id.clone()),
                    _ => r.session.clone(),
                };
                if let Some(sid) = sid
                    && g.session.is_some()
                {
                    g.session = SESSIONS.iter().position(|n| *n == sid).map(|i| i as u8);
                }
                if r.kind == RecordKind::Execution && g.execution.is_some() {
                    g.execution = EXECUTIONS.iter().position(|n| *n == r.id).map(|i| i as u8);
                }
                self.upsert_pod(PodState::new(&g, now))
            }
            Action::ExecFor { pick, g } => {
                let sessions: Vec<Record> = self
                    .truth()
                    .into_iter()
                    .filter(|r| r.kind == RecordKind::Session)
                    .collect();
                if sessions.is_empty() {
                    return Ok(());
                }
                let r = &sessions[usize::from(*pick) % sessions.len()];
                let mut g = g.clone();
                g.kind = 1;
                g.profile = Some(r.profile.0 as u8);
                g.session = SESSIONS.iter().position(|n| *n == r.id).map(|i| i as u8);
                g.sandbox = None;
                if g.ns.is_some() {
                    g.ns = r
                        .namespace
                        .as_ref()
                        .and_then(|ns| NAMESPACES.iter().position(|n| n == ns))
                        .map(|i| i as u8);
                }
                if g.attempt.is_some() {
                    g.pod = None;
                }
                self.step(&Step {
                    dt: 0,
                    late: self.late as u8,
                    action: Action::Record(g),
                })
            }
            Action::SandboxExec { pick, g } => {
                let sandboxes: Vec<Record> = self
                    .truth()
                    .into_iter()
                    .filter(|r| r.kind == RecordKind::Sandbox)
                    .collect();
                if sandboxes.is_empty() {
                    return Ok(());
                }
                let r = &sandboxes[usize::from(*pick) % sandboxes.len()];
                let mut g = g.clone();
                g.kind = 1;
                g.profile = Some(r.profile.0 as u8);
                g.sandbox = SANDBOXES.iter().position(|n| *n == r.id).map(|i| i as u8);
                self.step(&Step {
                    dt: 0,
                    late: self.late as u8,
                    action: Action::Record(g),
                })
            }
            Action::TargetFor { pick, ns, exists } => {
                let named: Vec<Record> = self
                    .truth()
                    .into_iter()
                    .filter(|r| {
                        r.kind == RecordKind::Session
                            && r.profile == ProfileId(1)
                            && r.pod.is_some()
                    })
                    .collect();
                if named.is_empty() {
                    return Ok(());
                }
                let r = &named[usize::from(*pick) % named.len()];
                let p = self.profiles.get(r.profile);
                let at_ns = ns
                    .map(|n| NAMESPACES[usize::from(n) % 4].to_string())
                    .or_else(|| r.namespace.clone())
                    .or_else(|| p.records.default_namespace.clone())
                    .unwrap_or_else(|| NAMESPACES[usize::from(*pick) % 4].to_string());
                let name = r.pod.clone().unwrap();
                let n = POD_NAMES.iter().position(|x| *x == name).unwrap_or(0) as u8;
                let ns_i = NAMESPACES.iter().position(|x| *x == at_ns).unwrap_or(0) as u8;
                self.step(&Step {
                    dt: 0,
                    late: self.late as u8,
                    action: Action::Target {
                        ns: ns_i,
                        name: n,
                        exists: *exists,
                    },
                })
            }
            Action::Twin { pick, ns } => {
                let namespaced: Vec<Record> = self.lanes[0]
                    .oracle
                    .records
                    .iter()
                    .filter(|r| r.key.ns.is_some())
                    .map(|r| r.rec.clone())
                    .collect();
                if namespaced.is_empty() {
                    return Ok(());
                }
                let mut r = namespaced[usize::from(*pick) % namespaced.len()].clone();
                let mut n = usize::from(*ns) % 4;
                if r.namespace.as_deref() == Some(NAMESPACES[n]) {
                    n = (n + 1) % 4;
                }
                r.namespace = Some(NAMESPACES[n].to_string());
                self.apply(Change::Record(RecordChange::Upsert(r)))
            }
            Action::RecordFor { pick, g } => {
                if self.cluster.is_empty() {
                    return Ok(());
                }
                let pod = self.cluster[usize::from(*pick) % self.cluster.len()].clone();
                let profile = self
                    .profile_of(&pod)
                    .unwrap_or(ProfileId(u16::from(pod.flavor % 3)));
                let mut g = g.clone();
                g.profile = Some(profile.0 as u8);
                g.kind %= 2;
                if g.ns.is_some() {
                    g.ns = NAMESPACES
                        .iter()
                        .position(|n| *n == pod.ns)
                        .map(|i| i as u8);
                }
                if g.pod.is_some() {
                    g.pod = POD_NAMES
                        .iter()
                        .position(|n| *n == pod.name)
                        .map(|i| i as u8);
                }
                if let Some(sid) = &pod.session {
                    let i = SESSIONS.iter().position(|n| n == sid).map(|i| i as u8);
                    if g.kind == 0 {
                        g.id = i.unwrap_or(g.id);
                    } else if g.session.is_some() {
                        g.session = i;
                    }
                }
                if g.kind == 1
                    && let Some(e) = &pod.execution
                {
                    g.id = EXECUTIONS.iter().position(|n| n == e).unwrap_or(0) as u8;
                }
                self.step(&Step {
                    dt: 0,
                    late: self.late as u8,
                    action: Action::Record(g),
                })
            }
            Action::Mutate { pick, m } => {
                if self.cluster.is_empty() {
                    return Ok(());
                }
                let i = usize::from(*pick) % self.cluster.len();
                let mut p = self.cluster[i].clone();
                p.mutate(m, now);
                self.cluster[i] = p;
                let c = self.cluster[i].change();
                self.apply(c)
            }
            Action::Delete { pick, stale, blind } => {
                if self.cluster.is_empty() {
                    return Ok(());
                }
                let i = usize::from(*pick) % self.cluster.len();
                let p = self.cluster[i].clone();
                let uid = if *blind {
                    None
                } else if *stale {
                    Some(uid(&p.ns, &p.name, p.inc.wrapping_add(1) % 3))
                } else {
                    Some(p.uid.clone())
                };
                if uid.as_ref().is_none_or(|u| *u == p.uid) {
                    self.cluster.remove(i);
                }
                self.apply(Change::PodDeleted {
                    namespace: p.ns,
                    name: p.name,
                    uid,
                })
            }
            Action::Record(g) => {
                let kind = [
                    RecordKind::Session,
                    RecordKind::Execution,
                    RecordKind::Sandbox,
                ][usize::from(g.kind) % 3];
                let profile = ProfileId(u16::from(g.profile.unwrap_or(0) % 3));
                let id = match kind {
                    RecordKind::Session => SESSIONS[usize::from(g.id) % 3],
                    RecordKind::Execution => EXECUTIONS[usize::from(g.id) % 3],
                    RecordKind::Sandbox => SANDBOXES[usize::from(g.id) % 2],
                };
                let doc = RecordDoc {
                    kind: Some(kind.as_str().into()),
                    id: Some(id.into()),
                    state: Some(self.state_of(kind, profile, g.state)),
                    profile: g.profile.map(|p| PROFILES[usize::from(p) % 3].to_string()),
                    namespace: g.ns.map(|n| NAMESPACES[usize::from(n) % 4].to_string()),
                    pod: g.pod.map(|p| POD_NAMES[usize::from(p) % 3].to_string()),
                    session: (kind == RecordKind::Execution)
                        .then_some(g.session)
                        .flatten()
                        .map(|s| SESSIONS[usize::from(s) % 3].to_string()),
                    sandbox: (kind == RecordKind::Execution)
                        .then_some(g.sandbox)
                        .flatten()
                        .map(|s| SANDBOXES[usize::from(s) % 2].to_string()),
                    attempt: g.attempt.map(u64::from),
                    updated_at: g.updated_ago.map(|a| at(now - i64::from(a))),
                    deadline: None,
                    expires_at: None,
                    deleted: false,
                };
                match self.validate(doc) {
                    Some(c) => self.apply(c),
                    None => Ok(()),
                }
            }
            Action::Touch { pick, t } => {
                let truth = self.truth();
                if truth.is_empty() {
                    return Ok(());
                }
                let mut r = truth[usize::from(*pick) % truth.len()].clone();
                match t {
                    TouchKind::Same => {}
                    TouchKind::UpdatedNow => r.updated_at = Some(at(now)),
                    TouchKind::NewState(s) => {
                        r.state = self.state_of(r.kind, r.profile, *s);
                        if r.updated_at.is_some() {
                            r.updated_at = Some(at(now));
                        }
                    }
                    TouchKind::Attempt => r.attempt = Some(r.attempt.unwrap_or(0) + 1),
                    TouchKind::Repoint(p) => {
                        r.pod = p.map(|p| POD_NAMES[usize::from(p) % 3].to_string())
                    }
                    TouchKind::Move(n) => {
                        r.namespace = n.map(|n| NAMESPACES[usize::from(n) % 4].to_string())
                    }
                    TouchKind::Relink(s) => {
                        if r.kind == RecordKind::Execution {
                            r.session = s.map(|s| SESSIONS[usize::from(s) % 3].to_string())
                        }
                    }
                }
                let doc = RecordDoc {
                    kind: Some(r.kind.as_str().into()),
                    id: Some(r.id),
                    state: Some(r.state),
                    profile: Some(self.profiles.get(r.profile).name.to_string()),
                    namespace: r.namespace,
                    pod: r.pod,
                    session: r.session,
                    sandbox: r.sandbox,
                    attempt: r.attempt,
                    updated_at: r.updated_at,
                    deadline: r.deadline,
                    expires_at: None,
                    deleted: false,
                };
                match self.validate(doc) {
                    Some(c) => self.apply(c),
                    None => Ok(()),
                }
            }
            Action::Tombstone {
                kind,
                id,
                profile,
                ns,
            } => {
                let kind = [
                    RecordKind::Session,
                    RecordKind::Execution,
                    RecordKind::Sandbox,
                ][usize::from(*kind) % 3];
                let id = match kind {
                    RecordKind::Session => SESSIONS[usize::from(*id) % 3],
                    RecordKind::Execution => EXECUTIONS[usize::from(*id) % 3],
                    RecordKind::Sandbox => SANDBOXES[usize::from(*id) % 2],
                };
                let doc = RecordDoc {
                    kind: Some(kind.as_str().into()),
                    id: Some(id.into()),
                    profile: profile.map(|p| PROFILES[usize::from(p) % 3].to_string()),
                    namespace: ns.map(|n| NAMESPACES[usize::from(n) % 4].to_string()),
                    deleted: true,
                    ..RecordDoc::default()
                };
                match self.validate(doc) {
                    Some(c) => self.apply(c),
                    None => Ok(()),
                }
            }
            Action::Target { ns, name, exists } => {
                if !self
                    .profiles
                    .get(ProfileId(1))
                    .custom_resources
                    .iter()
                    .any(|c| c.role == sandwatch::model::profile::ResourceRole::ResumeTarget)
                {
                    return Ok(());
                }
                let key = (
                    NAMESPACES[usize::from(*ns) % 4].to_string(),
                    POD_NAMES[usize::from(*name) % 3].to_string(),
                );
                self.targets.retain(|k| *k != key);
                if *exists {
                    self.targets.push(key.clone());
                }
                self.apply(Change::ResumeTarget {
                    profile: ProfileId(1),
                    namespace: key.0,
                    name: key.1,
                    exists: *exists,
                })
            }
            Action::Relist { src, vanish } => {
                if self.sources.is_empty() {
                    return Ok(());
                }
                let s = self.sources[usize::from(*src) % self.sources.len()].clone();
                let mine = |p: ProfileId| s.profile.is_none_or(|x| x == p);
                let mut bit = 0;
                let gone = |bit: &mut u32| {
                    let g = (u32::from(*vanish) >> (*bit % 8)) & 1 == 1;
                    *bit += 1;
                    g
                };
                for f in &s.feeds {
                    match f {
                        Feed::Pods => {
                            let profiles = self.profiles.clone();
                            self.cluster.retain(|p| {
                                let o: sandwatch::model::kubernetes::Object =
                                    serde_json::from_value(p.json()).unwrap();
                                let listed_here = s.namespace.as_ref().is_none_or(|n| *n == p.ns)
                                    && profiles
                                        .for_pod(&p.ns, o.metadata.labels.as_ref())
                                        .is_some_and(mine);
                                !(listed_here && gone(&mut bit))
                            });
                        }
                        Feed::ResumeTargets => {
                            self.targets.retain(|(n, _)| {
                                !(s.namespace.as_ref().is_none_or(|x| x == n) && gone(&mut bit))
                            });
                        }
                        // Records vanish from the truth through the listing itself.
                        _ => {}
                    }
                }
                let mut vanished = Vec::new();
                for r in &self.lanes[0].oracle.records {
                    let feed = match r.key.kind {
                        RecordKind::Session => Feed::Sessions,
                        RecordKind::Execution => Feed::Executions,
                        RecordKind::Sandbox => Feed::Sandboxes,
                    };
                    if s.feeds.contains(&feed)
                        && mine(r.key.profile)
                        && s.namespace
                            .as_ref()
                            .is_none_or(|n| r.ns_attr.as_ref() == Some(n))
                        && gone(&mut bit)
                    {
                        vanished.push(r.key.clone());
                    }
                }
                for c in self.listings(&s, &vanished) {
                    self.apply(c)?;
                }
                Ok(())
            }
            Action::Restart => self.restart(),
        }
    }
}

pub fn timing(case: &Case) -> [std::time::Duration; 3] {
    let mut h = Harness::new(&case.knobs, &shards());
    let _ = h.start();
    for s in &case.steps {
        if h.step(s).is_err() {
            break;
        }
    }
    h.timing
}

pub fn run(case: &Case) -> Result<(), String> {
    run_counting(case).map(|_| ())
}

/// Runs a case; on success, the findings it opened by kind and reason.
pub fn run_counting(case: &Case) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let mut h = Harness::new(&case.knobs, &shards());
    h.start()?;
    for s in &case.steps {
        h.step(s)?;
    }
    for l in &h.lanes {
        for (k, _) in l.oracle.probes.borrow().iter() {
            *h.stats.entry(format!("probe: {k}")).or_default() += 1;
        }
    }
    Ok(h.stats)
}
