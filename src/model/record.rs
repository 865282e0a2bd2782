//! Platform records in their one normalized shape.
//!
//! Whatever a record comes from (a SQL row, a custom resource, the ingest API, a replay file),
//! a source turns it into a [`RecordDoc`] and [`RecordDoc::validate`]s it against the profiles
//! into a [`RecordChange`] for the engine. Validation is where bad input stops: an unknown kind,
//! a missing id or a state the profile does not know is an [`InputError`] that names the field
//! and the value; the source logs it, counts it and carries on.

use std::fmt;

use serde::Deserialize;

use crate::model::ids::ProfileId;
pub use crate::model::ids::RecordKind;
use crate::model::profile::{Profile, Profiles};
use crate::util::time::Ts;

/// A record as it arrives, before validation.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordDoc {
    pub kind: Option<String>,
    pub id: Option<String>,
    pub state: Option<String>,
    pub profile: Option<String>,
    /// Explicit link to a pod: `namespace` + `pod` (the namespace may be left out).
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// An execution's session id.
    pub session: Option<String>,
    /// An execution's (non-Kubernetes) sandbox id.
    pub sandbox: Option<String>,
    /// Attempt counter (claims, stream breaks, download retries...).
    pub attempt: Option<u64>,
    pub updated_at: Option<Ts>,
    pub deadline: Option<Ts>,
    /// Pushed records: when the record expires unless pushed again (the ingest API).
    pub expires_at: Option<Ts>,
    #[serde(default)]
    pub deleted: bool,
}

/// A validated record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub profile: ProfileId,
    pub id: String,
    pub namespace: Option<String>,
    pub state: String,
    pub pod: Option<String>,
    pub session: Option<String>,
    pub sandbox: Option<String>,
    pub attempt: Option<u64>,
    pub updated_at: Option<Ts>,
    pub deadline: Option<Ts>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordChange {
    Upsert(Record),
    Delete {
        kind: RecordKind,
        profile: ProfileId,
        namespace: Option<String>,
        id: String,
    },
}

/// Every `reason` an [`InputError`] can carry (a bounded set, for metrics labels).
pub const REASONS: [&str; 8] = [
    "invalid_json",
    "invalid_value",
    "missing_field",
    "unknown_kind",
    "unknown_state",
    "unknown_profile",
    "not_ingested",
    "over_capacity",
];

/// Input that cannot be used. `reason` is a short, bounded word for metrics labels; the
/// message names the field and the value for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    pub reason: &'static str,
    pub message: String,
}

impl InputError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> InputError {
        InputError {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl RecordDoc {
    /// Checks the record against the profiles, field by field, into a change for the engine.
    pub fn validate(self, profiles: &Profiles) -> Result<RecordChange, InputError> {
        let (kind_text, kind) = parse_kind(self.kind)?;
        let id = non_empty(self.id).ok_or_else(|| {
            InputError::new(
                "missing_field",
                format!("record.id: missing or empty on a {kind_text} record"),
            )
        })?;
        let profile = find_profile(profiles, self.profile.as_deref(), &kind_text, &id)?;
        let namespace = non_empty(self.namespace);
        if self.deleted {
            return Ok(RecordChange::Delete {
                kind,
                profile,
                namespace,
                id,
            });
        }
        let state = non_empty(self.state).ok_or_else(|| {
            InputError::new(
                "missing_field",
                format!("record.state: missing on {kind_text} {id:?}"),
            )
        })?;
        let p = profiles.get(profile);
        check_namespace(p, kind, &kind_text, &id, namespace.as_deref())?;
        check_state(p, kind, &kind_text, &id, &state)?;
        Ok(RecordChange::Upsert(Record {
            kind,
            profile,
            id,
            namespace,
            state,
            pod: non_empty(self.pod),
            session: non_empty(self.session),
            sandbox: non_empty(self.sandbox),
            attempt: self.attempt,
            updated_at: self.updated_at,
            deadline: self.deadline,
        }))
    }
}

/// The record's kind, and the text it came as (the messages quote it).
fn parse_kind(text: Option<String>) -> Result<(String, RecordKind), InputError> {
    let text = text.ok_or_else(|| {
        InputError::new(
            "missing_field",
            "record.kind: missing (session, execution or sandbox)",
        )
    })?;
    let kind = RecordKind::parse(&text).ok_or_else(|| {
        InputError::new(
            "unknown_kind",
            format!("record.kind: {text:?} is not a record kind (session, execution or sandbox)"),
        )
    })?;
    Ok((text, kind))
}

/// The profile a record names, or the default (first) one when it names none.
fn find_profile(
    profiles: &Profiles,
    name: Option<&str>,
    kind_text: &str,
    id: &str,
) -> Result<ProfileId, InputError> {
    profiles.for_record(name).ok_or_else(|| {
        InputError::new(
            "unknown_profile",
            format!(
                "record.profile: {:?} is not a configured profile ({}) on {kind_text} {id:?}",
                name.unwrap_or_default(),
                profiles.names().join(", ")
            ),
        )
    })
}

/// Refuses a record without a namespace when its profile needs one to tell it apart.
fn check_namespace(
    p: &Profile,
    kind: RecordKind,
    kind_text: &str,
    id: &str,
    namespace: Option<&str>,
) -> Result<(), InputError> {
    if namespace.is_none() && p.records.default_namespace.is_none() && p.namespaced_ids(kind) {
        return Err(InputError::new(
            "missing_field",
            format!(
                "record.namespace: missing on {kind_text} {id:?}: profile {:?} identifies {kind_text}s by namespace and id",
                p.name
            ),
        ));
    }
    Ok(())
}

/// Refuses a state the profile does not define for the kind; the message lists those.
fn check_state(
    p: &Profile,
    kind: RecordKind,
    kind_text: &str,
    id: &str,
    state: &str,
) -> Result<(), InputError> {
    let known = match kind {
        RecordKind::Session => p.sessions.classify(state).is_some(),
        RecordKind::Execution => p.executions.classify(state).is_some(),
        RecordKind::Sandbox => p.sandboxes.classify(state).is_some(),
    };
    if known {
        return Ok(());
    }
    let states = match kind {
        RecordKind::Session => p.sessions.describe(),
        RecordKind::Execution => p.executions.describe(),
        RecordKind::Sandbox => p.sandboxes.describe(),
    };
    let states = if states.is_empty() {
        "it defines none".to_string()
    } else {
        states
    };
    Err(InputError::new(
        "unknown_state",
        format!(
            "record.state: {state:?} is not {} {kind_text} state of profile {:?} ({states}) on {kind_text} {id:?}",
            if kind == RecordKind::Execution {
                "an"
            } else {
                "a"
            },
            p.name
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::config;

    fn check(json: &str) -> Result<RecordChange, InputError> {
        let profiles = config::preset("generic").unwrap().profiles;
        let doc: RecordDoc = serde_json::from_str(json).unwrap();
        doc.validate(&profiles)
    }

    #[test]
    fn the_issue_examples_validate() {
        for json in [
            r#"{"kind":"session","id":"s-1","state":"suspended","namespace":"agents","pod":"sandbox-s-1"}"#,
            r#"{"kind":"execution","id":"e-9","session":"s-1","state":"retry_wait","attempt":3}"#,
            r#"{"kind":"sandbox","id":"sb-1","state":"failure"}"#,
            r#"{"kind":"session","id":"s-1","deleted":true}"#,
        ] {
            check(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        }
    }

    #[test]
    fn bad_records_name_the_field_and_value() {
        let e = check(r#"{"kind":"job","id":"x","state":"running"}"#).unwrap_err();
        assert_eq!(e.reason, "unknown_kind");
        assert!(e.message.contains("record.kind: \"job\""), "{e}");
        let e = check(r#"{"kind":"session","id":"s-1","state":"runing"}"#).unwrap_err();
        assert_eq!(e.reason, "unknown_state");
        assert!(e.message.contains("record.state: \"runing\""), "{e}");
        assert!(e.message.contains("active: running, idle"), "{e}");
        let e = check(r#"{"kind":"session","state":"running"}"#).unwrap_err();
        assert!(e.message.starts_with("record.id: missing"), "{e}");
        let e = check(r#"{"kind":"session","id":"s","state":"running","profile":"other"}"#)
            .unwrap_err();
        assert_eq!(e.reason, "unknown_profile");
    }
}
