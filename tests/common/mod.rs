//! Builders for pods and records in their real shapes, and a small driver around the
//! engine, shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::{Value, json};

use sandwatch::app::config;
use sandwatch::core::engine::{Change, Engine};
use sandwatch::core::world::{Feed, SourceStatus};
use sandwatch::model::finding::{Event, Transition};
use sandwatch::model::kubernetes::Object;
use sandwatch::model::profile::Profiles;
use sandwatch::model::record::RecordDoc;
use sandwatch::util::time::Ts;

pub const T0: i64 = 1_774_000_000; // 2026-03-20T09:46:40Z

pub fn ts(secs: i64) -> Ts {
    Ts::from_secs(T0 + secs)
}

pub fn rfc(secs: i64) -> String {
    ts(secs).to_string()
}

/// A container status in one of its three states.
#[derive(Clone)]
pub enum C {
    Running(i64),
    Waiting(&'static str),
    /// exit code, reason, finished at
    Terminated(i32, &'static str, i64),
}

impl C {
    fn state(&self) -> Value {
        match self {
            C::Running(t) => json!({"running": {"startedAt": rfc(*t)}}),
            C::Waiting(r) => json!({"waiting": {"reason": r}}),
            C::Terminated(code, reason, t) => json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": rfc(0), "finishedAt": rfc(*t),
                "containerID": "containerd://0123abcd"}}),
        }
    }
}

/// A pod builder producing the JSON the API server would send.
#[derive(Clone)]
pub struct PodB {
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub phase: String,
    pub restart_policy: String,
    pub containers: Vec<(String, C)>,
    pub native_sidecars: Vec<(String, C)>,
    pub deleting: bool,
}

pub fn pod(ns: &str, name: &str) -> PodB {
    PodB {
        ns: ns.into(),
        name: name.into(),
        uid: format!("uid-{ns}-{name}"),
        labels: vec![],
        annotations: vec![],
        phase: "Running".into(),
        restart_policy: "Never".into(),
        containers: vec![],
        native_sidecars: vec![],
        deleting: false,
    }
}

impl PodB {
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.push((k.into(), v.into()));
        self
    }
    pub fn phase(mut self, p: &str) -> Self {
        self.phase = p.into();
        self
    }
    pub fn restart_policy(mut self, p: &str) -> Self {
        self.restart_policy = p.into();
        self
    }
    pub fn uid(mut self, u: &str) -> Self {
        self.uid = u.into();
        self
    }
    pub fn container(mut self, name: &str, c: C) -> Self {
        self.containers.push((name.into(), c));
        self
    }
    pub fn native_sidecar(mut self, name: &str, c: C) -> Self {
        self.native_sidecars.push((name.into(), c));
        self
    }
    pub fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    /// Replaces the state of the named container.
    pub fn set(mut self, name: &str, c: C) -> Self {
        for (n, s) in self
            .containers
            .iter_mut()
            .chain(self.native_sidecars.iter_mut())
        {
            if n == name {
                *s = c.clone();
            }
        }
        self
    }

    pub fn json(&self) -> Value {
        let map = |v: &Vec<(String, String)>| -> Value {
            Value::Object(v.iter().map(|(k, x)| (k.clone(), json!(x))).collect())
        };
        let mut meta = json!({
            "name": self.name, "namespace": self.ns, "uid": self.uid, "resourceVersion": "1",
            "creationTimestamp": rfc(0), "labels": map(&self.labels), "annotations": map(&self.annotations),
        });
        if self.deleting {
            meta["deletionTimestamp"] = json!(rfc(0));
            meta["deletionGracePeriodSeconds"] = json!(30);
        }
        let status = |list: &Vec<(String, C)>| -> Vec<Value> {
            let mut v: Vec<Value> = list
                .iter()
                .map(|(n, c)| json!({"name": n, "ready": matches!(c, C::Running(_)), "restartCount": 0,
                    "image": "img", "imageID": "img@sha256:00", "state": c.state(), "lastState": {}}))
                .collect();
            v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            v
        };
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {
                "restartPolicy": self.restart_policy,
                "initContainers": self.native_sidecars.iter().map(|(n, _)| json!({"name": n, "image": "img", "restartPolicy": "Always"})).collect::<Vec<_>>(),
                "containers": self.containers.iter().map(|(n, _)| json!({"name": n, "image": "img"})).collect::<Vec<_>>(),
            },
            "status": {
                "phase": self.phase,
                "containerStatuses": status(&self.containers),
                "initContainerStatuses": status(&self.native_sidecars),
            }
        })
    }

    /// The pod as a client creates it: the API server assigns uid and resourceVersion.
    pub fn stored(&self) -> Value {
        let mut v = self.json();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("uid");
            m.remove("resourceVersion");
        }
        v
    }

    pub fn object(&self) -> Object {
        serde_json::from_value(self.json()).expect("builder makes valid pods")
    }
}

/// A sandbox pod of centaur's sandbox API for a thread: agent `sandbox`, sidecar `tool-server`.
pub fn centaur_pod(thread: &str) -> PodB {
    let name = format!("centaur-sandbox-{thread}");
    pod("centaur", &name)
        .label("centaur.ai/managed", "true")
        .label("centaur.ai/sandbox-id", &name)
        .annotation("centaur.ai/thread-key", thread)
        .container("sandbox", C::Running(1))
        .container("tool-server", C::Running(1))
}

/// Drives an engine the way a source would, and keeps every transition.
pub struct Sim {
    pub profiles: Arc<Profiles>,
    pub engine: Engine,
    pub log: Vec<Transition>,
    pub now: i64,
}

impl Sim {
    /// An engine for a preset, with every feed synced.
    pub fn preset(name: &str) -> Sim {
        let mut s = Sim::bare(config::preset(name).unwrap());
        for f in Feed::ALL {
            s.source(&format!("{f:?}"), &[f], true);
        }
        s
    }

    pub fn config(yaml: &str) -> Sim {
        let mut s = Sim::bare(config::load(yaml).unwrap());
        for f in Feed::ALL {
            s.source(&format!("{f:?}"), &[f], true);
        }
        s
    }

    /// An engine for a config's profiles, with no sources registered.
    pub fn bare(config: sandwatch::app::config::Config) -> Sim {
        let profiles = config.profiles;
        Sim {
            engine: Engine::new(profiles.clone()),
            profiles,
            log: Vec::new(),
            now: 0,
        }
    }

    pub fn at(&mut self, secs: i64) -> &mut Self {
        self.now = secs;
        let t = self.engine.advance(ts(secs));
        self.log.extend(t);
        self
    }

    pub fn apply(&mut self, change: Change) -> &mut Self {
        let t = self.engine.apply(ts(self.now), change);
        self.log.extend(t);
        self
    }

    pub fn source(&mut self, name: &str, feeds: &[Feed], healthy: bool) -> &mut Self {
        self.apply(Change::Source(SourceStatus::new(
            name,
            None,
            feeds.to_vec(),
            healthy,
        )))
    }

    pub fn pod(&mut self, p: &PodB) -> &mut Self {
        self.apply(Change::PodUpserted(Box::new(p.object())))
    }

    pub fn delete(&mut self, p: &PodB) -> &mut Self {
        self.apply(Change::PodDeleted {
            namespace: p.ns.clone(),
            name: p.name.clone(),
            uid: Some(p.uid.clone()),
        })
    }

    pub fn record(&mut self, v: Value) -> &mut Self {
        let doc: RecordDoc = serde_json::from_value(v).unwrap();
        let change = doc.validate(&self.profiles).unwrap();
        self.apply(Change::Record(change))
    }

    /// Transitions as "event kind@secs" strings, e.g. "opened agent_terminated_pod_running@10".
    pub fn events(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|t| t.event != Event::Updated)
            .map(|t| {
                format!(
                    "{:?} {}@{}",
                    t.event,
                    t.finding.finding.kind,
                    (t.at.0 / 1000) - T0
                )
                .to_lowercase()
            })
            .collect()
    }

    pub fn open_kinds(&self) -> Vec<String> {
        self.engine
            .open_findings()
            .iter()
            .map(|f| f.finding.kind.to_string())
            .collect()
    }
}
