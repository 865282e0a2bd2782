//! Sources: turn the outside world into [`Change`]s for the engine.
//!
//! Each source knows its input (a replay file, the Kubernetes watch, a database, the ingest
//! API) and nothing of rules. What they share lives here: the list of the records sources
//! (behind the seam of [`records`]) and the command-line options they take, and turning one
//! Kubernetes watch event into a change, whatever the object is (a pod, or a custom resource a
//! profile names).

pub mod ingest;
pub mod kube;
pub mod postgres;
pub mod recorded;
pub mod records;
pub mod replay;

// The records sources, by their key under a profile's `records:`, in the order they are
// validated and started. A new one is its folder and one line here.
records::records_sources! {
    postgres: postgres::Postgres,
    ingest: ingest::Ingest,
}

/// What the command line gives the records sources.
pub struct Options {
    /// A file holding the records database URL, for every profile with `records.postgres`
    /// (instead of their `url_file` / `url_env`).
    pub database_url_file: Option<std::path::PathBuf>,
    /// The bearer token of the ingest API (required when a profile takes ingested records).
    pub ingest_token: Option<ingest::Token>,
    /// The largest ingest request body, in bytes.
    pub ingest_max_body: usize,
    /// An ingest request's body must arrive within this.
    pub ingest_body_timeout: std::time::Duration,
}

pub use crate::model::source::SourceCounters;

/// The one place source names are built, as readiness, metrics and logs show them:
/// `KIND/PROFILE` or `KIND/PROFILE/NAMESPACE` (`pods/sandbox-api`,
/// `agenticsessions.vteam.ambient-code/ambient/project-a`, `postgres/sandbox-api`,
/// `ingest/offload-modal`).
pub fn name(kind: &str, profile: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{profile}/{ns}"),
        None => format!("{kind}/{profile}"),
    }
}

/// An I/O error for people, once: `No such file or directory`, not
/// `No such file or directory (os error 2)` (which chains repeat).
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

use crate::core::engine::Change;
use crate::core::world::Feed;
use crate::model::kubernetes::Object;
use crate::model::profile::{ProfileId, Profiles, ResourceRole};
use crate::model::record::{InputError, RecordDoc};
use crate::util::time::Ts;

/// The kind of a watch event, as the API server sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchType {
    Added,
    Modified,
    Deleted,
}

impl WatchType {
    pub fn parse(s: &str) -> Option<WatchType> {
        match s {
            "ADDED" => Some(WatchType::Added),
            "MODIFIED" => Some(WatchType::Modified),
            "DELETED" => Some(WatchType::Deleted),
            _ => None,
        }
    }
}

/// Turns one watched object into a change and the feed it belongs to. A custom resource goes
/// to `profile` when the watch that delivered it belongs to one, else to the first profile
/// that names its kind. An object that is neither a pod nor a custom resource some profile
/// names is an error (it is counted, not silently dropped); a custom resource of a kind its
/// watch's profile does not name gives `Ok(None)`.
pub fn object_change(
    kind: WatchType,
    obj: Box<Object>,
    profiles: &Profiles,
    profile: Option<ProfileId>,
) -> Result<Option<(Feed, Change)>, InputError> {
    if !obj.is_pod() && profiles.for_resource(&obj.api_version, &obj.kind).is_none() {
        return Err(InputError::new(
            "unknown_kind",
            if obj.kind.is_empty() {
                "object.kind: missing (a Pod, or a custom resource a profile names)".to_string()
            } else {
                format!(
                    "object.kind: {:?} (apiVersion {:?}) is neither a Pod nor a custom resource a profile names",
                    obj.kind, obj.api_version
                )
            },
        ));
    }
    let (namespace, name) = identity(&obj.kind, obj.namespace(), obj.name())?;
    if obj.is_pod() {
        let change = if kind == WatchType::Deleted {
            Change::PodDeleted {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: obj.metadata.uid.clone(),
            }
        } else {
            Change::PodUpserted(obj)
        };
        return Ok(Some((Feed::Pods, change)));
    }
    let phase = obj.status.phase.clone();
    resource_change(
        kind,
        &obj.api_version,
        &obj.kind,
        namespace,
        name,
        phase,
        obj.newest_timestamp(),
        profiles,
        profile,
    )
}

/// The namespace and name of an object, or an error naming what is missing.
pub(crate) fn identity<'a>(
    kind: &str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
) -> Result<(&'a str, &'a str), InputError> {
    match (namespace, name) {
        (Some(ns), Some(n)) => Ok((ns, n)),
        _ => Err(InputError::new(
            "missing_field",
            format!(
                "object.metadata: {} {}/{} has no {}",
                if kind.is_empty() { "object" } else { kind },
                namespace.unwrap_or("-"),
                name.unwrap_or("-"),
                if name.is_none() { "name" } else { "namespace" }
            ),
        )),
    }
}

/// Turns one custom resource (its identity, `status.phase`, and when it last changed) into a
/// change.
#[allow(clippy::too_many_arguments)]
pub fn resource_change(
    kind: WatchType,
    api_version: &str,
    object_kind: &str,
    namespace: &str,
    name: &str,
    phase: Option<String>,
    changed_at: Option<Ts>,
    profiles: &Profiles,
    profile: Option<ProfileId>,
) -> Result<Option<(Feed, Change)>, InputError> {
    let found = match profile {
        Some(p) => profiles
            .get(p)
            .custom_resources
            .iter()
            .find(|c| c.matches(api_version, object_kind))
            .map(|c| (p, c)),
        None => profiles.for_resource(api_version, object_kind),
    };
    let Some((profile, resource)) = found else {
        return Ok(None);
    };
    let deleted = kind == WatchType::Deleted;
    match resource.role {
        ResourceRole::ResumeTarget => Ok(Some((
            Feed::ResumeTargets,
            Change::ResumeTarget {
                profile,
                namespace: namespace.to_string(),
                name: name.to_string(),
                exists: !deleted,
            },
        ))),
        ResourceRole::Session => {
            let doc = RecordDoc {
                kind: Some("session".into()),
                id: Some(name.to_string()),
                state: phase.or_else(|| resource.state_when_unset.clone()),
                profile: Some(profiles.get(profile).name.to_string()),
                namespace: Some(namespace.to_string()),
                updated_at: changed_at,
                deleted,
                ..RecordDoc::default()
            };
            let change = doc.validate(profiles).map_err(|e| InputError {
                reason: e.reason,
                message: format!(
                    "{object_kind} {namespace}/{name}: {}",
                    e.message.replace("record.state", "status.phase")
                ),
            })?;
            Ok(Some((Feed::Sessions, Change::Record(change))))
        }
    }
}
