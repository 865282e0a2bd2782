//! The replay values only a recording (`run --record`) writes: its header, and the source
//! changes a replay cannot infer from pods and records — a source's health, the survivors of
//! a full list, a pod deletion by name, a resume target appearing or vanishing.
//!
//! Part of the replay source: [`crate::sources::replay`] decodes these envelopes, and
//! [`Recorded::change`] turns each into the engine's `Change`, as the live source sent it.

use std::collections::HashSet;

use serde::Deserialize;

use crate::core::engine::Change;
use crate::model::profile::Profiles;
use crate::model::record::InputError;
use crate::model::source::{Feed, SourceStatus};

/// `{"recording": {...}}`: the first value of a recording file.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub version: u32,
}

/// `{"at", "source": {...}}`: a source's health, as the live source reported it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    pub profile: Option<String>,
    pub feeds: Vec<String>,
    pub namespace: Option<String>,
    pub synced: bool,
    pub fresh: bool,
    pub error: Option<String>,
}

/// `{"at", "listed": {...}}`: a full list ended; what it did not list is gone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listed {
    pub feed: String,
    pub profile: String,
    pub namespace: Option<String>,
    pub objects: Vec<(String, String)>,
}

/// `{"at", "pod_deleted": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDeleted {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// `{"at", "resume_target": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeTarget {
    pub profile: String,
    pub namespace: String,
    pub name: String,
    pub exists: bool,
}

/// One recorded source change.
#[derive(Debug)]
pub enum Recorded {
    Source(Source),
    Listed(Listed),
    PodDeleted(PodDeleted),
    ResumeTarget(ResumeTarget),
}

fn feed(name: &str, field: &str) -> Result<Feed, InputError> {
    Feed::ALL
        .into_iter()
        .find(|f| f.as_str() == name)
        .ok_or_else(|| {
            InputError::new(
                "invalid_value",
                format!("{field}: {name:?} is not a feed (pods, sessions, executions, sandboxes, resume_targets)"),
            )
        })
}

fn profile(
    profiles: &Profiles,
    name: &str,
    field: &str,
) -> Result<crate::model::profile::ProfileId, InputError> {
    profiles.by_name(name).ok_or_else(|| {
        InputError::new(
            "unknown_profile",
            format!("{field}: {name:?} is not a profile of this config"),
        )
    })
}

impl Recorded {
    /// The engine change it stands for.
    pub fn change(self, profiles: &Profiles) -> Result<Change, InputError> {
        Ok(match self {
            Recorded::Source(s) => {
                let feeds = s
                    .feeds
                    .iter()
                    .map(|f| feed(f, "source.feeds"))
                    .collect::<Result<Vec<_>, _>>()?;
                let owner = match &s.profile {
                    Some(p) => Some(profile(profiles, p, "source.profile")?),
                    None => None,
                };
                let mut status = SourceStatus::new(s.name, owner, feeds, s.synced && s.fresh)
                    .in_namespace(s.namespace);
                (status.synced, status.fresh, status.error) = (s.synced, s.fresh, s.error);
                Change::Source(status)
            }
            Recorded::Listed(l) => Change::Listed {
                feed: feed(&l.feed, "listed.feed")?,
                profile: profile(profiles, &l.profile, "listed.profile")?,
                namespace: l.namespace,
                listed: l.objects.into_iter().collect::<HashSet<_>>(),
            },
            Recorded::PodDeleted(d) => Change::PodDeleted {
                namespace: d.namespace,
                name: d.name,
                uid: d.uid,
            },
            Recorded::ResumeTarget(t) => Change::ResumeTarget {
                profile: profile(profiles, &t.profile, "resume_target.profile")?,
                namespace: t.namespace,
                name: t.name,
                exists: t.exists,
            },
        })
    }
}
