//! The YAML config file (it lives in a ConfigMap) and the built-in presets.
//!
//! Reading a config is two steps: YAML → [`ConfigFile`] (unknown keys and wrong types are
//! errors that name the field path, line and column), then validation → [`Config`], which
//! reports *every* problem at once, each naming the field and the offending value. A config
//! with any error never starts the engine. Each part validates its own section: the profile
//! (`profile.rs`), each records source (`sources::*::config`) and remediation
//! (`remediation::config`).
//!
//! Presets are profiles in the same schema, embedded from `presets/`. A profile can start from
//! one (`preset: NAME`) and override single fields: maps are merged key by key, anything else
//! (a list, a string) replaces the preset's value, and `null` removes it. An action that names
//! its own target (`webhook`, `http` or `kubernetes`) drops a preset target of another type;
//! a `kubernetes` target replaces the preset's whole (it is one choice).

mod effective;
mod profile;
mod selector;
mod warnings;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::model::ids::ProfileId;
use crate::model::profile::{Profiles, ResourceRole};
use crate::model::source::Feed;
use crate::remediation::config::{GlobalSpec, Remediation};
use crate::sources::RecordSources;
pub use crate::util::config::{ConfigError, ConfigErrors, DurationError, parse_duration};
pub use effective::{effective, effective_preset};
pub use profile::{ProfileSpec, RecordsSpec};
pub use selector::parse_selector;
pub use warnings::warnings;

/// The built-in presets: name, one-line description, YAML.
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "generic",
        "pods labelled sandwatch.io/session, agent container `agent`",
        include_str!("presets/generic.yaml"),
    ),
    (
        "sandbox-api",
        "centaur's sandbox API: bare sandbox pods, sandbox_sessions and agent_execution_requests (incidents 01, 02)",
        include_str!("presets/sandbox-api.yaml"),
    ),
    (
        "ambient",
        "ambient-code: AgenticSession custom resources and their runner pods (incident 03)",
        include_str!("presets/ambient.yaml"),
    ),
    (
        "offload-modal",
        "offload test runs on Modal sandboxes, reported through the ingest API (incident 04)",
        include_str!("presets/offload-modal.yaml"),
    ),
];

/// The file's schema. Every field is optional so that a profile can override a preset field
/// by field; validation decides what is required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    pub remediation: Option<GlobalSpec>,
}

/// A whole validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub profiles: Arc<Profiles>,
    /// Each profile's records sources, by profile id.
    pub records: Vec<RecordSources>,
    /// The remediation settings and every enabled action.
    pub remediation: Remediation,
}

impl Config {
    /// A profile's records sources.
    pub fn records(&self, id: ProfileId) -> &RecordSources {
        &self.records[usize::from(id.0)]
    }

    /// The feeds a profile's configuration provides in live mode: pods when it has a pod
    /// section, the record kinds its records sources read, and its custom resources.
    pub fn feeds(&self, id: ProfileId) -> Vec<Feed> {
        let p = self.profiles.get(id);
        let mut out: Vec<Feed> = self
            .records(id)
            .kinds()
            .into_iter()
            .map(Feed::of_record)
            .collect();
        if p.pods.is_some() {
            out.push(Feed::Pods);
        }
        out.extend(p.custom_resources.iter().map(|cr| match cr.role {
            ResourceRole::Session => Feed::Sessions,
            ResourceRole::ResumeTarget => Feed::ResumeTargets,
        }));
        out.sort();
        out.dedup();
        out
    }

    /// [`Config::feeds`] of every profile, by profile id.
    pub fn all_feeds(&self) -> Vec<Vec<Feed>> {
        self.profiles.iter().map(|(id, _)| self.feeds(id)).collect()
    }
}

/// Parses and validates a whole config file.
pub fn load(text: &str) -> Result<Config, ConfigErrors> {
    let file = parse_yaml::<ConfigFile>(text, "")?;
    if file.profiles.is_empty() {
        return Err(ConfigErrors(vec![ConfigError {
            field: "profiles".into(),
            message: "no profiles defined; add at least one (e.g. `- preset: generic`)".into(),
        }]));
    }
    // The same text untyped, to lay each profile over its preset key by key.
    let raw: Value = parse_yaml(text, "")?;
    let raw = raw.get("profiles").and_then(Value::as_array);
    let mut errors = Vec::new();
    let remediation =
        file.remediation
            .unwrap_or_default()
            .validate(&mut crate::util::config::Validator::new(
                "remediation",
                &mut errors,
            ));
    let mut specs = Vec::new();
    for (i, spec) in file.profiles.into_iter().enumerate() {
        let at = format!("profiles[{i}]");
        let over = raw.and_then(|r| r.get(i)).cloned().unwrap_or(Value::Null);
        match with_preset(spec, over, &at) {
            Ok(spec) => specs.push((at, spec)),
            Err(e) => errors.push(e),
        }
    }
    build(specs, remediation, errors)
}

/// The config of one preset alone, by name (remediation settings at their defaults).
/// A preset as a whole config file, to start from: its comment lines, then its profile
/// under `profiles:`. `check-config` accepts it as printed.
pub fn preset_file(name: &str) -> Option<String> {
    let (_, _, text) = PRESETS.iter().find(|(n, _, _)| *n == name)?;
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next_if(|l| l.starts_with('#')) {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str("profiles:\n");
    let mut first = true;
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        out.push_str(if first { "  - " } else { "    " });
        out.push_str(l);
        out.push('\n');
        first = false;
    }
    Some(out)
}

pub fn preset(name: &str) -> Result<Config, ConfigErrors> {
    let spec = preset_value(name)
        .and_then(|v| from_value(v, "preset"))
        .map_err(|e| ConfigErrors(vec![e]))?;
    build(
        vec![("preset".to_string(), spec)],
        Remediation::default(),
        Vec::new(),
    )
}

/// Validates the (merged) profiles; every error found is reported.
fn build(
    specs: Vec<(String, ProfileSpec)>,
    mut remediation: Remediation,
    mut errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    if specs.len() > usize::from(u16::MAX) {
        errors.push(ConfigError {
            field: "profiles".into(),
            message: format!(
                "{} profiles; at most {} are supported",
                specs.len(),
                u16::MAX
            ),
        });
        return Err(ConfigErrors(errors));
    }
    let mut profiles = Vec::new();
    let mut records = Vec::new();
    let mut names = BTreeSet::new();
    for (i, (at, spec)) in specs.into_iter().enumerate() {
        let mut v = crate::util::config::Validator::new(at, &mut errors);
        let Some(valid) = spec.validate(&mut v, ProfileId(i as u16)) else {
            continue;
        };
        if !names.insert(valid.profile.name.to_string()) {
            v.err(
                "name",
                format!(
                    "{:?} is used by two profiles; names must be unique",
                    valid.profile.name
                ),
            );
            continue;
        }
        profiles.push(valid.profile);
        records.push(valid.records);
        remediation.actions.extend(valid.actions);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        profiles: Arc::new(Profiles::new(profiles)),
        records,
        remediation,
    })
}

/// A profile laid over the preset it names (if any). `over` is the profile as written,
/// untyped; `spec` the same, typed (so that its errors have already been reported).
fn with_preset(spec: ProfileSpec, over: Value, at: &str) -> Result<ProfileSpec, ConfigError> {
    let Some(name) = &spec.preset else {
        return Ok(spec);
    };
    let mut base = preset_value(name).map_err(|e| ConfigError {
        field: format!("{at}.preset"),
        message: e.message,
    })?;
    let Value::Object(mut over) = over else {
        return Ok(spec);
    };
    over.remove("preset");
    merge(&mut base, Value::Object(over), 0);
    from_value(base, at)
}

/// A preset's profile, untyped, its name defaulting to the preset's.
fn preset_value(name: &str) -> Result<Value, ConfigError> {
    let Some((_, _, text)) = PRESETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(ConfigError {
            field: "preset".into(),
            message: format!(
                "unknown preset {name:?}; the presets are: {}",
                PRESETS
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    // Presets are part of the binary and covered by tests; a broken one is a build defect.
    let mut value: Value = parse_yaml(text, "").map_err(|e| ConfigError {
        field: "preset".into(),
        message: format!("preset {name:?} is invalid: {e}"),
    })?;
    if let Value::Object(m) = &mut value {
        m.entry("name")
            .or_insert_with(|| Value::String(name.into()));
    }
    Ok(value)
}

/// Lays `over` onto `base`: maps key by key, anything else replaced. Under
/// `remediation.actions.NAME` (depth 3 of a profile), a target named in `over` drops the
/// base's targets of other types, and a `kubernetes` target replaces the base's whole.
fn merge(base: &mut Value, over: Value, depth: usize) {
    const TARGETS: [&str; 3] = ["webhook", "http", "kubernetes"];
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            if depth == 3 && TARGETS.iter().any(|t| o.contains_key(*t)) {
                b.retain(|k, _| !TARGETS.contains(&k.as_str()) || o.contains_key(k));
            }
            for (k, v) in o {
                // A Kubernetes target is one choice (delete or annotate): never a mix.
                let whole = depth == 3 && k == "kubernetes";
                match b.get_mut(&k) {
                    Some(slot) if v.is_object() && !whole => merge(slot, v, depth + 1),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn from_value(value: Value, at: &str) -> Result<ProfileSpec, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError {
            field: if path == "." {
                at.to_string()
            } else {
                format!("{at}.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

fn parse_yaml<T: for<'de> Deserialize<'de>>(text: &str, prefix: &str) -> Result<T, ConfigErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let field = match (prefix.is_empty(), path.as_str()) {
            (true, "" | ".") => "(file)".to_string(),
            (false, "" | ".") => prefix.to_string(),
            (true, p) => p.to_string(),
            (false, p) => format!("{prefix}.{p}"),
        };
        ConfigErrors(vec![ConfigError {
            field,
            message: e.to_string(),
        }])
    })
}

#[cfg(test)]
mod tests;
