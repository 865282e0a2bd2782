//! Pods in the World: adding, replacing and removing them (a pod's projection itself is in
//! [`super::pod`]), keeping the indexes that find a pod by name, session key or execution key,
//! noting when a pod departs, and telling which pods and records each change touches.

use crate::model::kubernetes::Object;
use crate::model::record::RecordKind;
use crate::util::time::Ts;

use super::departures::Departed;
use super::{Pod, Resolved, Subject, Uid, World, pod};

impl World {
    fn pod_index(&self, namespace: &str, name: &str) -> Option<u32> {
        self.pods_by_name.get(name).find(|&i| {
            self.pods[i as usize]
                .as_ref()
                .is_some_and(|p| &*p.namespace == namespace)
        })
    }

    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pod_index(namespace, name)
            .and_then(|i| self.pods[i as usize].as_ref())
    }

    pub fn pod_of(&self, subject: &Subject) -> Option<&Pod> {
        match subject {
            Subject::Pod {
                namespace,
                name,
                uid,
            } => self.pod_by_name(namespace, name).filter(|p| p.uid == *uid),
            Subject::Record(_) => None,
        }
    }

    /// Adds or replaces a pod. Pods that match no profile are not kept (and a pod that stops
    /// matching is removed).
    pub fn upsert_pod(&mut self, obj: &Object, at: Ts, touched: &mut Vec<Subject>) {
        let (Some(namespace), Some(name)) = (obj.namespace(), obj.name()) else {
            return;
        };
        let Some(profile) = self
            .profiles
            .for_pod(namespace, obj.metadata.labels.as_ref())
        else {
            self.delete_pod(namespace, name, None, at, touched);
            return;
        };
        let profiles = self.profiles.clone();
        let pods = profiles
            .get(profile)
            .pods
            .as_ref()
            .expect("a profile that takes pods has a pod section");
        if self.shard.total > 1 {
            let meta = &obj.metadata;
            let session = pods
                .session_key
                .as_ref()
                .and_then(|k| k.read(meta.labels.as_ref(), meta.annotations.as_ref()));
            if !self.shard.owns(session.unwrap_or(name)) {
                self.delete_pod(namespace, name, None, at, touched);
                return;
            }
        }
        let pod = pod::project(obj, profile, pods, at, &mut |s| self.intern(s));
        if let Some(idx) = self.pod_index(namespace, name) {
            let old = self.pods[idx as usize].take().expect("indexed pod exists");
            self.affected_by_pod(&old, touched);
            self.unindex_pod(&old, idx);
            // What stops pointing at this pod saw it go: another incarnation, another
            // profile, another session or execution key.
            if old.uid != pod.uid || old.profile != pod.profile {
                self.depart_pod(&old, at);
            } else {
                if old.session != pod.session
                    && let Some(s) = &old.session
                {
                    self.departures
                        .record(Departed::PodSession(old.profile, s.clone()), at);
                }
                if old.execution != pod.execution
                    && let Some(e) = &old.execution
                {
                    self.departures
                        .record(Departed::PodExecution(old.profile, e.clone()), at);
                }
            }
            self.index_pod(&pod, idx);
            self.affected_by_pod(&pod, touched);
            self.pods[idx as usize] = Some(pod);
        } else {
            let idx = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.pods.push(None);
                    (self.pods.len() - 1) as u32
                }
            };
            self.pods_by_name.insert(pod.name.clone(), idx);
            self.index_pod(&pod, idx);
            self.affected_by_pod(&pod, touched);
            self.pods[idx as usize] = Some(pod);
            self.pod_count += 1;
        }
    }

    /// Removes a pod. With a uid, only the pod with that uid goes (a DELETED event for an old
    /// incarnation must not remove its successor).
    pub fn delete_pod(
        &mut self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        at: Ts,
        touched: &mut Vec<Subject>,
    ) {
        let Some(idx) = self.pod_index(namespace, name) else {
            return;
        };
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            let uid = Uid::parse(uid);
            if self.pods[idx as usize]
                .as_ref()
                .is_some_and(|p| p.uid != uid)
            {
                return;
            }
        }
        let old = self.pods[idx as usize].take().expect("indexed pod exists");
        self.affected_by_pod(&old, touched);
        self.unindex_pod(&old, idx);
        self.depart_pod(&old, at);
        self.pods_by_name.remove(&old.name, idx);
        self.free.push(idx);
        self.pod_count -= 1;
        drop(old);
        self.removed();
        if self.pod_count == 0 {
            self.pods.clear();
            self.free.clear();
        }
    }

    fn depart_pod(&mut self, pod: &Pod, at: Ts) {
        let p = pod.profile;
        self.departures
            .record(Departed::PodName(p, pod.name.clone()), at);
        if let Some(s) = &pod.session {
            self.departures
                .record(Departed::PodSession(p, s.clone()), at);
        }
        if let Some(e) = &pod.execution {
            self.departures
                .record(Departed::PodExecution(p, e.clone()), at);
        }
    }

    fn index_pod(&mut self, pod: &Pod, idx: u32) {
        if let Some(s) = &pod.session {
            self.pods_by_session.insert((pod.profile, s.clone()), idx);
        }
        if let Some(e) = &pod.execution {
            self.pods_by_execution.insert((pod.profile, e.clone()), idx);
        }
    }

    fn unindex_pod(&mut self, pod: &Pod, idx: u32) {
        if let Some(s) = &pod.session {
            self.pods_by_session.remove(&(pod.profile, s.clone()), idx);
        }
        if let Some(e) = &pod.execution {
            self.pods_by_execution
                .remove(&(pod.profile, e.clone()), idx);
        }
    }

    /// Everything a change to this pod can change the verdict of.
    fn affected_by_pod(&self, pod: &Pod, touched: &mut Vec<Subject>) {
        touched.push(pod.subject());
        let mut sessions = Vec::new();
        if let Some(keys) = self.records_by_pod.get(&pod.name) {
            for k in keys {
                if k.profile == pod.profile
                    && self
                        .records
                        .get(k)
                        .is_some_and(|r| r.admits(&pod.namespace))
                {
                    touched.push(Subject::Record(k.clone()));
                    if k.kind == RecordKind::Session {
                        sessions.push(k.id.clone());
                    }
                }
            }
        }
        for (kind, id) in [
            (RecordKind::Session, &pod.session),
            (RecordKind::Execution, &pod.execution),
        ] {
            let Some(id) = id else { continue };
            if let Resolved::Found(k) = self.resolve(kind, pod.profile, Some(&pod.namespace), id) {
                touched.push(Subject::Record(k));
            }
            if kind == RecordKind::Session {
                sessions.push(id.clone());
            }
        }
        for s in sessions {
            if let Some(execs) = self.executions_by_session.get(&(pod.profile, s)) {
                touched.extend(execs.iter().cloned().map(Subject::Record));
            }
        }
    }
}
