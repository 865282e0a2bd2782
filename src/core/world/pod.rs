//! The projection of one sandbox pod: what the rules read of it, and nothing more.
//!
//! A pod is its identity (namespace, name, uid), profile, phase, restart policy, deletion
//! flag, the keys that link it to records, and per container its name, role, state, reason,
//! exit code and finish time. [`project`] builds it from the slim decoded object; strings that
//! repeat across pods (namespaces, container names, reasons) are interned by the World.

use crate::model::kubernetes::Object;
use crate::model::profile::{MetaKey, PodMatch, ProfileId};
use crate::util::time::Ts;

use crate::model::ids::{Subject, Sym, Uid};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agent,
    /// A plain sidecar in `spec.containers`: keeps the pod Running as long as it runs.
    Regular,
    /// An init container with `restartPolicy: Always` (KEP-753): the kubelet stops it once the
    /// main containers have exited.
    NativeSidecar,
    Init,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// No status reported yet.
    Unknown,
    Waiting,
    Running,
    Terminated,
}

#[derive(Clone, Debug)]
pub struct Container {
    pub name: Sym,
    pub role: Role,
    pub state: ContainerState,
    /// The terminated or waiting reason (`OOMKilled`, `Error`, `CrashLoopBackOff`...).
    pub reason: Option<Sym>,
    pub exit_code: i32,
    /// When it terminated; only meaningful in `Terminated`.
    pub finished_at: Ts,
}

/// The projection of one sandbox pod.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: Sym,
    pub name: Sym,
    pub uid: Uid,
    pub profile: ProfileId,
    pub phase: Phase,
    pub restart_policy: RestartPolicy,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    pub created_at: Ts,
    /// The session id its profile's session key carries.
    pub session: Option<Sym>,
    pub execution: Option<Sym>,
    pub containers: Box<[Container]>,
    /// How a finished (`Failed`, `Succeeded`) pod ended; boxed, as few pods are finished.
    pub ended: Option<Box<PodEnd>>,
}

/// What the API tells of a finished pod's end.
#[derive(Clone, Debug)]
pub struct PodEnd {
    /// `status.reason`: `Evicted`, `NodeLost`, `Shutdown`...
    pub reason: Option<Sym>,
    /// The newest condition transition: about when it ended.
    pub at: Option<Ts>,
}

/// How a pod's agent died, as far as the pod tells.
#[derive(Clone, Debug)]
pub struct AgentDeath<'a> {
    pub container: &'a Sym,
    /// The container's termination reason, or the pod's (`Evicted`) when the pod finished
    /// without a terminated status for the agent.
    pub reason: Sym,
    pub exit_code: Option<i32>,
    /// When, if known.
    pub at: Option<Ts>,
}

impl Pod {
    /// [`Pod::dead_agent`], with the reason, exit code and time that tell of its death.
    pub fn agent_death(&self) -> Option<AgentDeath<'_>> {
        let agent = self.dead_agent()?;
        Some(if agent.state == ContainerState::Terminated {
            AgentDeath {
                container: &agent.name,
                reason: agent.reason.clone().unwrap_or_else(|| "Terminated".into()),
                exit_code: Some(agent.exit_code),
                at: Some(agent.finished_at),
            }
        } else {
            // The pod finished (evicted, its node lost) while the agent's status still says
            // running, waiting or nothing: the pod's own reason and time are all there is.
            AgentDeath {
                container: &agent.name,
                reason: self
                    .ended
                    .as_ref()
                    .and_then(|e| e.reason.clone())
                    .unwrap_or_else(|| match self.phase {
                        Phase::Succeeded => "Succeeded".into(),
                        _ => "Failed".into(),
                    }),
                exit_code: None,
                at: self.ended.as_ref().and_then(|e| e.at),
            }
        })
    }

    /// An agent container that has terminated for good: the pod is finished, or the agent
    /// exited and the restart policy will not bring it back (under `Always`, or `OnFailure`
    /// after a failure, a terminated agent is a crash loop in progress, not a dead agent).
    pub fn dead_agent(&self) -> Option<&Container> {
        let finished = matches!(self.phase, Phase::Succeeded | Phase::Failed);
        self.containers.iter().find(|c| {
            c.role == Role::Agent
                && (finished
                    || (c.state == ContainerState::Terminated
                        && match self.restart_policy {
                            RestartPolicy::Never => true,
                            RestartPolicy::OnFailure => c.exit_code == 0,
                            RestartPolicy::Always => false,
                        }))
        })
    }

    /// Whether a plain container (sidecar or another agent) runs, and whether a native
    /// sidecar does.
    pub fn others_running(&self) -> (bool, bool) {
        let running = |roles: &[Role]| {
            self.containers
                .iter()
                .any(|c| roles.contains(&c.role) && c.state == ContainerState::Running)
        };
        (
            running(&[Role::Regular, Role::Agent]),
            running(&[Role::NativeSidecar]),
        )
    }

    pub fn subject(&self) -> Subject {
        Subject::Pod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// Builds a pod's projection; `intern` shares repeated strings, `at` stands in for times the
/// object does not carry.
pub(super) fn project(
    obj: &Object,
    profile: ProfileId,
    pods: &PodMatch,
    at: Ts,
    intern: &mut dyn FnMut(&str) -> Sym,
) -> Pod {
    let meta = &obj.metadata;
    let key = |k: &Option<MetaKey>| {
        k.as_ref()
            .and_then(|k| k.read(meta.labels.as_ref(), meta.annotations.as_ref()))
    };
    let session = key(&pods.session_key).map(Sym::from);
    let execution = key(&pods.execution_key).map(Sym::from);
    let containers = containers(obj, pods, at, intern);
    let phase = match obj.status.phase.as_deref() {
        Some("Pending") => Phase::Pending,
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Unknown,
    };
    let finished = matches!(phase, Phase::Succeeded | Phase::Failed);
    let restart_policy = match obj.spec.restart_policy.as_deref() {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    };
    let namespace = intern(obj.namespace().unwrap_or_default());
    let uid = meta
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(Uid::parse)
        // Without a uid, namespace/name is the identity.
        .unwrap_or_else(|| {
            Uid::Text(Sym::from(format!(
                "{namespace}/{}",
                obj.name().unwrap_or_default()
            )))
        });
    Pod {
        name: Sym::from(obj.name().unwrap_or_default()),
        namespace,
        uid,
        profile,
        phase,
        restart_policy,
        terminating: meta.deletion_timestamp.is_some(),
        created_at: obj.created_at().unwrap_or(at),
        session,
        execution,
        containers,
        ended: finished.then(|| {
            Box::new(PodEnd {
                reason: obj.status.reason.as_deref().map(&mut *intern),
                at: obj
                    .status
                    .conditions
                    .iter()
                    .filter_map(|c| c.last_transition_time)
                    .max(),
            })
        }),
    }
}

/// Every container of the pod, from its spec and its statuses, with its role and state.
fn containers(
    obj: &Object,
    pods: &PodMatch,
    at: Ts,
    intern: &mut dyn FnMut(&str) -> Sym,
) -> Box<[Container]> {
    let status_of = |name: &str, init: bool| {
        let list = if init {
            &obj.status.init_container_statuses
        } else {
            &obj.status.container_statuses
        };
        list.iter().find(|s| s.name == name)
    };
    let mut specs: Vec<(&str, Role, bool)> = Vec::new();
    for c in &obj.spec.init_containers {
        let role = if c.restart_policy.as_deref() == Some("Always") {
            Role::NativeSidecar
        } else {
            Role::Init
        };
        specs.push((&c.name, role, true));
    }
    for c in &obj.spec.containers {
        specs.push((&c.name, Role::Regular, false));
    }
    // Statuses without a spec entry (an object that was stripped of its spec).
    for s in &obj.status.init_container_statuses {
        if !specs.iter().any(|(n, _, init)| *init && *n == s.name) {
            specs.push((&s.name, Role::Init, true));
        }
    }
    for s in &obj.status.container_statuses {
        if !specs.iter().any(|(n, _, init)| !*init && *n == s.name) {
            specs.push((&s.name, Role::Regular, false));
        }
    }
    let mut containers = Vec::with_capacity(specs.len());
    for (name, role, init) in specs {
        let role = if !init && pods.agent_containers.iter().any(|a| a == name) {
            Role::Agent
        } else {
            role
        };
        let (state, reason, exit_code, finished_at) = match status_of(name, init).map(|s| &s.state)
        {
            Some(s) if s.terminated.is_some() => {
                let t = s.terminated.as_ref().expect("checked");
                (
                    ContainerState::Terminated,
                    t.reason.as_deref(),
                    t.exit_code,
                    t.finished_at.unwrap_or(at),
                )
            }
            Some(s) if s.running.is_some() => (ContainerState::Running, None, 0, Ts(0)),
            Some(s) if s.waiting.is_some() => (
                ContainerState::Waiting,
                s.waiting.as_ref().and_then(|w| w.reason.as_deref()),
                0,
                Ts(0),
            ),
            _ => (ContainerState::Unknown, None, 0, Ts(0)),
        };
        containers.push(Container {
            name: intern(name),
            role,
            state,
            reason: reason.map(&mut *intern),
            exit_code,
            finished_at,
        });
    }
    containers.into_boxed_slice()
}
