//! `records.ingest` of a profile: which record kinds it takes from the ingest API and how it
//! holds what was pushed, as written in the config, and as validated.

use std::time::Duration;

use serde::Deserialize;

use crate::model::ids::RecordKind;
use crate::model::profile::Profile;
use crate::sources::records::{RecordsSettings, unplaced};
use crate::util::config::Validator;

/// The config as written: every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub kinds: Option<Vec<String>>,
    pub stale_after: Option<String>,
    pub max_records: Option<usize>,
    pub expire_after: Option<String>,
}

/// How pushed records are held (Alertmanager's client model: providers report to every
/// replica, records expire, a snapshot replaces what was pushed before).
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// The record kinds the ingest API takes for this profile.
    pub kinds: Vec<RecordKind>,
    /// The source is stale when no report came for this long.
    pub stale_after: Duration,
    /// At most this many pushed records of this profile are held; more are refused.
    pub max_records: usize,
    /// A pushed record that names no `expires_at` expires this long after it was last pushed
    /// (`None`: it stays until deleted or left out of a snapshot).
    pub expire_after: Option<Duration>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            kinds: vec![RecordKind::Execution, RecordKind::Sandbox],
            stale_after: Duration::from_secs(600),
            max_records: 100_000,
            expire_after: None,
        }
    }
}

impl RecordsSettings for IngestSettings {
    fn kinds(&self) -> Vec<(RecordKind, String)> {
        self.kinds
            .iter()
            .map(|k| (*k, "records.ingest.kinds".to_string()))
            .collect()
    }

    fn warnings(&self, profile: &Profile, w: &mut Validator<'_>) {
        let Some((scope, consequence)) = unplaced(profile) else {
            return;
        };
        for kind in self.kinds.iter().filter(|k| **k != RecordKind::Sandbox) {
            w.err(
                "records.ingest.kinds",
                format!(
                    "{scope}: each pushed {} must name its namespace, else {consequence}",
                    kind.as_str()
                ),
            );
        }
    }
}

impl Spec {
    /// Validates the spec; `v` is at `records.ingest`.
    pub fn validate(self, v: &mut Validator<'_>) -> IngestSettings {
        let d = IngestSettings::default();
        let mut kinds = Vec::new();
        match self.kinds {
            None => kinds = d.kinds.clone(),
            Some(list) => {
                for (n, k) in list.iter().enumerate() {
                    match RecordKind::parse(k) {
                        Some(kind) => kinds.push(kind),
                        None => v.err(
                            &format!("kinds[{n}]"),
                            format!("{k:?} is not a record kind (session, execution or sandbox)"),
                        ),
                    }
                }
            }
        }
        let stale_after = v.duration("stale_after", self.stale_after, d.stale_after);
        if stale_after.is_zero() {
            v.err("stale_after", "must be more than zero");
        }
        let max_records = self.max_records.unwrap_or(d.max_records);
        if max_records == 0 {
            v.err("max_records", "must be more than zero");
        }
        let expire_after = self
            .expire_after
            .map(|t| v.duration("expire_after", Some(t), Duration::ZERO));
        if expire_after.is_some_and(|d| d.is_zero()) {
            v.err(
                "expire_after",
                "must be more than zero (leave it out for records that do not expire)",
            );
        }
        IngestSettings {
            kinds,
            stale_after,
            max_records,
            expire_after,
        }
    }
}
