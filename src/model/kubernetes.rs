//! The slim shape of the Kubernetes objects sandwatch reads: pods and custom resources.
//!
//! Sources decode watch events into [`Object`] instead of a full typed `Pod`: serde skips
//! every field not named here (managedFields, volumes, env, images...), which is several
//! times faster than a typed decode and allocates a fraction of the memory. The same type
//! serves the replay file and the live watch. The World then keeps an even smaller projection
//! (`world::Pod`); an `Object` lives only as long as one change. It serializes back to a valid
//! pod object (what `run --record` writes), with the fields it kept.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{ApiResource, DynamicResourceScope};
use serde::{Deserialize, Deserializer, Serialize};

use crate::util::time::Ts;

/// A Kubernetes object, reduced to the fields the rules need.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: Spec,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: Status,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub restart_policy: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<ContainerSpec>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub init_containers: Vec<ContainerSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    /// `Always` on an init container makes it a native sidecar.
    pub restart_policy: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub phase: Option<String>,
    /// Pod-level reason, e.g. `Evicted`.
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub conditions: Vec<Condition>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub last_transition_time: Option<Ts>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub state: ContainerState,
}

/// Exactly one of the three is set by the kubelet; none while the status is unknown.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub waiting: Option<Waiting>,
    pub running: Option<Running>,
    pub terminated: Option<Terminated>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub started_at: Option<Ts>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    #[serde(default)]
    pub exit_code: i32,
    pub reason: Option<String>,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
}

/// The metadata fields sandwatch reads; everything else (managedFields above all) is skipped
/// without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default, deserialize_with = "labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "annotations")]
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Ts>,
    deletion_timestamp: Option<Ts>,
}

/// The label and annotation keys to keep of a pod's metadata (see [`keeping_only`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaKeys {
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
}

thread_local! {
    static KEEP: std::cell::RefCell<Option<Arc<MetaKeys>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the objects this thread decodes keeping only `keys` of their labels and
/// annotations; every other entry is still checked (a string, not a repeated key) and then
/// skipped, which spares building and freeing a score of strings per pod that nothing
/// reads. The replay's decoders use it with the keys its profiles read
/// ([`crate::model::profile::Profiles::pod_meta_keys`]); elsewhere (the live watch, whose
/// objects a recording writes back) every entry is kept.
pub fn keeping_only<T>(keys: Arc<MetaKeys>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<MetaKeys>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            KEEP.with(|k| *k.borrow_mut() = before);
        }
    }
    let _restore = Restore(KEEP.with(|k| k.borrow_mut().replace(keys)));
    f()
}

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    kept_map(d, |k| &k.labels)
}

fn annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    kept_map(d, |k| &k.annotations)
}

/// A label or annotation map, with only the keys [`keeping_only`] keeps if it is in force.
fn kept_map<'de, D: Deserializer<'de>>(
    d: D,
    keys: fn(&MetaKeys) -> &[String],
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    KEEP.with(|k| crate::util::json::unique_map_of(d, k.borrow().as_deref().map(keys)))
}

fn time(t: Option<Ts>) -> Option<Time> {
    t.and_then(|t| jiff::Timestamp::from_millisecond(t.0).ok())
        .map(Time)
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        creation_timestamp: time(m.creation_timestamp),
        deletion_timestamp: time(m.deletion_timestamp),
        ..ObjectMeta::default()
    })
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A custom resource, read leniently: its identity, `status.phase`, and the times that say
/// when it last changed. Whatever shape a CRD gives the rest, the object decodes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "CustomWire")]
pub struct CustomObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// When it was last written: the newest `metadata.managedFields[].time`.
    pub written_at: Option<Ts>,
    pub status: CustomStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomStatus {
    /// A string phase; any other type reads as no phase.
    #[serde(default)]
    pub phase: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub conditions: Vec<Condition>,
}

impl CustomObject {
    pub fn phase(&self) -> Option<String> {
        self.status.phase.as_ref()?.as_str().map(String::from)
    }

    /// The latest of when it was written, created, or one of its conditions changed: a
    /// bound on when its current phase began, from the object itself.
    pub fn changed_at(&self) -> Option<Ts> {
        let conditions = self
            .status
            .conditions
            .iter()
            .map(|c| c.last_transition_time);
        conditions
            .chain([self.written_at, ts(&self.metadata.creation_timestamp)])
            .flatten()
            .max()
    }
}

/// How a custom resource arrives: with `metadata.managedFields` times, which are read for
/// [`CustomObject::written_at`] and then dropped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomWire {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    metadata: CustomMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    status: CustomStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Ts>,
    deletion_timestamp: Option<Ts>,
    #[serde(default, deserialize_with = "null_as_default")]
    managed_fields: Vec<ManagedField>,
}

#[derive(Deserialize)]
struct ManagedField {
    time: Option<Ts>,
}

impl From<CustomWire> for CustomObject {
    fn from(w: CustomWire) -> CustomObject {
        let m = w.metadata;
        CustomObject {
            api_version: w.api_version,
            kind: w.kind,
            written_at: m.managed_fields.iter().filter_map(|f| f.time).max(),
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                creation_timestamp: time(m.creation_timestamp),
                deletion_timestamp: time(m.deletion_timestamp),
                ..ObjectMeta::default()
            },
            status: w.status,
        }
    }
}

/// An object as a live watch delivers it: decoded into `T` when it can be, else its identity
/// and why not, so that one object the slim decoder cannot read is skipped and counted
/// instead of failing the whole list (and keeping its source unsynced).
#[derive(Clone, Debug)]
pub struct Lenient<T> {
    pub decoded: Result<T, (ObjectMeta, String)>,
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        if let Ok(t) = serde_json::from_str::<T>(raw.get()) {
            return Ok(Lenient { decoded: Ok(t) });
        }
        // Say where it broke, then keep what identifies it.
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let why = match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(e) => format!("{}: {}", e.path(), e.inner()),
            Ok(_) => "not decodable".to_string(),
        };
        #[derive(Deserialize)]
        struct Identity {
            metadata: IdentityMeta,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct IdentityMeta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
        }
        let id: Identity = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        let meta = ObjectMeta {
            name: id.metadata.name,
            namespace: id.metadata.namespace,
            uid: id.metadata.uid,
            resource_version: id.metadata.resource_version,
            ..ObjectMeta::default()
        };
        Ok(Lenient {
            decoded: Err((meta, why)),
        })
    }
}

/// Lets kube-runtime's watcher decode straight into the slim types, the resource being named
/// at run time (as for `DynamicObject`).
macro_rules! dynamic_resource {
    ($t:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ApiResource;
            type Scope = DynamicResourceScope;

            fn kind(dt: &ApiResource) -> Cow<'_, str> {
                dt.kind.as_str().into()
            }

            fn group(dt: &ApiResource) -> Cow<'_, str> {
                dt.group.as_str().into()
            }

            fn version(dt: &ApiResource) -> Cow<'_, str> {
                dt.version.as_str().into()
            }

            fn api_version(dt: &ApiResource) -> Cow<'_, str> {
                dt.api_version.as_str().into()
            }

            fn plural(dt: &ApiResource) -> Cow<'_, str> {
                dt.plural.as_str().into()
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

dynamic_resource!(Object);
dynamic_resource!(CustomObject);

impl<T> kube::Resource for Lenient<T>
where
    T: kube::Resource<DynamicType = ApiResource, Scope = DynamicResourceScope>,
{
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        T::kind(dt)
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        T::group(dt)
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        T::version(dt)
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        T::api_version(dt)
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        T::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match &self.decoded {
            Ok(t) => t.meta(),
            Err((m, _)) => m,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.decoded {
            Ok(t) => t.meta_mut(),
            Err((m, _)) => m,
        }
    }
}

fn ts(t: &Option<Time>) -> Option<Ts> {
    t.as_ref().map(|t| Ts(t.0.as_millisecond()))
}

impl Object {
    pub fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref().filter(|n| !n.is_empty())
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref().filter(|n| !n.is_empty())
    }

    pub fn is_pod(&self) -> bool {
        self.kind == "Pod" && (self.api_version == "v1" || self.api_version.is_empty())
    }

    pub fn created_at(&self) -> Option<Ts> {
        ts(&self.metadata.creation_timestamp)
    }

    pub fn deletion_timestamp(&self) -> Option<Ts> {
        ts(&self.metadata.deletion_timestamp)
    }

    /// The newest timestamp the object carries: container start/finish times, condition
    /// transitions, deletion and creation. Replay uses it as the time of a bare watch event.
    pub fn newest_timestamp(&self) -> Option<Ts> {
        let containers = self
            .status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses)
            .flat_map(|c| {
                let s = &c.state;
                [
                    s.running.as_ref().and_then(|r| r.started_at),
                    s.terminated.as_ref().and_then(|t| t.started_at),
                    s.terminated.as_ref().and_then(|t| t.finished_at),
                ]
            });
        let conditions = self
            .status
            .conditions
            .iter()
            .map(|c| c.last_transition_time);
        containers
            .chain(conditions)
            .chain([self.deletion_timestamp(), self.created_at()])
            .flatten()
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_what_it_needs_and_skips_the_rest() {
        let json = r#"{"apiVersion":"v1","kind":"Pod",
          "metadata":{"name":"worker-0","namespace":"default","uid":"5f0c","resourceVersion":"20417",
            "creationTimestamp":"2026-05-01T10:00:00Z","labels":{"app":"worker"},
            "managedFields":[{"manager":"kubelet","fieldsV1":{"f:status":{}}}]},
          "spec":{"restartPolicy":"Never","containers":[{"name":"main","image":"x","env":[{"name":"A","value":"b"}]},{"name":"sidecar"}]},
          "status":{"phase":"Running","conditions":[{"type":"Ready","status":"False","lastProbeTime":null,"lastTransitionTime":"2026-05-01T10:07:41Z"}],
            "containerStatuses":[
              {"name":"main","ready":false,"restartCount":0,"state":{"terminated":{"exitCode":137,"reason":"OOMKilled","startedAt":"2026-05-01T10:05:10Z","finishedAt":"2026-05-01T10:07:41Z"}},"lastState":{}},
              {"name":"sidecar","ready":true,"restartCount":0,"state":{"running":{"startedAt":"2026-05-01T10:00:03Z"}},"lastState":{}}]}}"#;
        let o: Object = serde_json::from_str(json).unwrap();
        assert!(o.is_pod());
        assert_eq!(o.name(), Some("worker-0"));
        assert_eq!(o.spec.restart_policy.as_deref(), Some("Never"));
        let main = &o.status.container_statuses[0];
        let t = main.state.terminated.as_ref().unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
        assert_eq!(
            o.newest_timestamp(),
            Some(Ts::parse("2026-05-01T10:07:41Z").unwrap())
        );
        assert!(o.metadata.managed_fields.is_none());
    }

    #[test]
    fn a_pod_without_metadata_is_an_error_and_bad_times_name_the_value() {
        let e = serde_json::from_str::<Object>(r#"{"kind":"Pod","spec":{}}"#).unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
        let e = serde_json::from_str::<Object>(
            r#"{"kind":"Pod","metadata":{"name":"a","creationTimestamp":"noon"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"noon\""), "{e}");
    }
}
