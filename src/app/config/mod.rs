//! The YAML config file (it lives in a ConfigMap) and the built-in presets.
//!
//! Reading a config is two steps: YAML → [`ConfigFile`] (unknown keys and wrong types are
//! errors that name the field path, line and column), then validation → [`Profiles`], which
//! reports *every* problem at once, each naming the field and the offending value. A config
//! with any error never starts the engine. Presets are profile definitions in the same
//! schema, embedded from `src/presets/`; a profile can start from one (`preset: NAME`) and
//! override single fields.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kube::core::{Expression, Selector};
use serde::Deserialize;

use crate::model::profile::{
    CustomResource, ExecutionStates, Grace, MetaKey, PodMatch, PostgresRecords, Profile, Profiles,
    Records, ResourceRole, ResumeFrom, SandboxStates, SessionStates,
};
use crate::model::record::RecordKind;
use crate::remediation::action::{ActionName, HeaderValue, KubeAction, Target};
use crate::remediation::{ActionSpecResolved, ProfileRemediation, Remediation};

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

/// One problem in a config, with the field path and the value that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a config.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file's schema. Every field is optional here so that a profile can override a preset
// field by field; validation decides what is required.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    pub remediation: Option<RemediationSpec>,
}

/// Global remediation settings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationSpec {
    pub mode: Option<String>,
    pub max_per_minute: Option<u32>,
    pub timeout: Option<String>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub circuit_failures: Option<u32>,
    pub circuit_open_for: Option<String>,
    pub resend_after: Option<String>,
}

/// A profile's remediation actions.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRemediationSpec {
    pub base_url: Option<String>,
    pub actions: Option<ActionsSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSpec {
    pub finalize_execution: Option<ActionSpec>,
    pub respawn_session: Option<ActionSpec>,
    pub mark_session_gone: Option<ActionSpec>,
    pub finalize_session: Option<ActionSpec>,
    pub reap_pod: Option<ActionSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub enabled: Option<bool>,
    pub grace: Option<String>,
    pub per_minute: Option<u32>,
    pub webhook: Option<WebhookSpec>,
    pub http: Option<HttpSpec>,
    pub kubernetes: Option<KubeActionSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: Option<String>,
    pub secret_file: Option<String>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    pub method: Option<String>,
    pub url: Option<String>,
    pub body: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, HeaderSpec>>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub value: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeActionSpec {
    pub delete_pod: Option<bool>,
    pub annotate_session: Option<AnnotateSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateSpec {
    pub key: Option<String>,
    pub value: Option<String>,
}

/// A whole config: the profiles and the remediation settings.
#[derive(Debug)]
pub struct Config {
    pub profiles: Profiles,
    pub remediation: Remediation,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: Option<String>,
    pub preset: Option<String>,
    pub pods: Option<PodsSpec>,
    pub sessions: Option<SessionsSpec>,
    pub executions: Option<ExecutionsSpec>,
    pub sandboxes: Option<SandboxesSpec>,
    pub custom_resources: Option<Vec<CustomResourceSpec>>,
    pub grace: Option<GraceSpec>,
    pub records: Option<RecordsSpec>,
    pub remediation: Option<ProfileRemediationSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSpec {
    pub postgres: Option<PostgresSpec>,
    pub ingest: Option<IngestSpec>,
    pub default_namespace: Option<String>,
    pub namespaced_ids: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    pub url_env: Option<String>,
    pub url_file: Option<String>,
    pub ca_file: Option<String>,
    pub poll_interval: Option<String>,
    pub resync_interval: Option<String>,
    pub stale_after: Option<String>,
    pub statement_timeout: Option<String>,
    pub overlap: Option<String>,
    pub listen_channel: Option<String>,
    pub queries: Option<QueriesSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueriesSpec {
    pub session: Option<String>,
    pub execution: Option<String>,
    pub sandbox: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    pub kinds: Option<Vec<String>>,
    pub stale_after: Option<String>,
    pub max_records: Option<usize>,
    pub expire_after: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsSpec {
    pub selector: Option<String>,
    pub namespaces: Option<Vec<String>>,
    pub agent_containers: Option<Vec<String>>,
    pub session_key: Option<KeySpec>,
    pub execution_key: Option<KeySpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub label: Option<String>,
    pub annotation: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSpec {
    pub active: Option<Vec<String>>,
    pub suspended: Option<Vec<String>>,
    pub transitional: Option<Vec<String>>,
    pub terminal: Option<Vec<String>>,
    pub resume_from: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsSpec {
    pub active: Option<Vec<String>>,
    pub terminal: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxesSpec {
    pub dead: Option<Vec<String>>,
    pub alive: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomResourceSpec {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub plural: Option<String>,
    pub role: Option<String>,
    pub state_when_unset: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraceSpec {
    pub native_sidecar: Option<String>,
    pub absence: Option<String>,
    pub leaked_pod: Option<String>,
}

// ---------------------------------------------------------------------------------------------

/// Parses and validates a config file's text. `source` names it in error messages.
pub fn load_str(text: &str) -> Result<Profiles, ConfigErrors> {
    load(text).map(|c| c.profiles)
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
    let mut errors = Vec::new();
    let remediation = remediation(file.remediation.unwrap_or_default(), &mut errors);
    match resolve(file.profiles, "profiles") {
        Ok(profiles) if errors.is_empty() => Ok(Config {
            profiles,
            remediation,
        }),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(mut e) => {
            e.0.extend(errors);
            Err(e)
        }
    }
}

fn remediation(spec: RemediationSpec, errors: &mut Vec<ConfigError>) -> Remediation {
    let mut v = Validator {
        at: "remediation".into(),
        errors,
    };
    let d = Remediation::default();
    let live = match spec.mode.as_deref() {
        None | Some("dry_run") => false,
        Some("live") => true,
        Some(other) => {
            v.err("mode", format!("{other:?} is not one of: dry_run, live"));
            false
        }
    };
    let max_per_minute = spec.max_per_minute.unwrap_or(d.max_per_minute);
    if max_per_minute == 0 {
        v.err("max_per_minute", "must be more than zero".into());
    }
    let circuit_failures = spec.circuit_failures.unwrap_or(d.circuit_failures);
    if circuit_failures == 0 {
        v.err("circuit_failures", "must be more than zero".into());
    }
    let timeout = v.duration("timeout", spec.timeout, d.timeout);
    if timeout.is_zero() || timeout >= std::time::Duration::from_secs(10) {
        v.err(
            "timeout",
            format!("{timeout:?}: must be above zero and below 10s, the remediation Lease's renew deadline (a call must finish while its replica still leads)"),
        );
    }
    let retry_initial = v.duration("retry_initial", spec.retry_initial, d.retry_initial);
    let retry_max = v.duration("retry_max", spec.retry_max, d.retry_max);
    if retry_initial > retry_max {
        v.err(
            "retry_initial",
            format!("{retry_initial:?} is more than retry_max ({retry_max:?}): the backoff starts at retry_initial and grows up to retry_max"),
        );
    }
    Remediation {
        live,
        max_per_minute,
        timeout,
        retry_initial,
        retry_max,
        circuit_failures,
        circuit_open_for: v.duration(
            "circuit_open_for",
            spec.circuit_open_for,
            d.circuit_open_for,
        ),
        resend_after: v.duration("resend_after", spec.resend_after, d.resend_after),
    }
}

/// What a valid config probably gets wrong: each warning names the field and says why.
/// `check-config` prints them and `run` logs them; neither refuses the config.
pub fn warnings(profiles: &Profiles) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (id, p) in profiles.iter() {
        let at = format!("profiles[{}]", id.0);
        // An absence must not outlive the moment the records behind it become untrusted: a
        // records source is reported stale only stale_after after its last good poll, which
        // came up to a poll interval after the change.
        if let Some(pg) = &p.records.postgres {
            let bound = pg.stale_after + pg.poll_interval;
            if p.grace.absence <= bound {
                out.push(ConfigError {
                    field: format!("{at}.grace.absence"),
                    message: format!(
                        "{:?} is not longer than records.postgres.stale_after + poll_interval ({bound:?}): an absence may be judged on records that have already gone stale",
                        p.grace.absence
                    ),
                });
            }
        }
        for (field, path) in files(p) {
            if let Err(e) = std::fs::File::open(&path) {
                out.push(ConfigError {
                    field: format!("{at}.{field}"),
                    message: format!(
                        "{} is not readable here: {}",
                        path.display(),
                        crate::sources::io_reason(&e)
                    ),
                });
            }
        }
        let Some(pods) = &p.pods else { continue };
        if pods.namespaces.is_empty() || p.records.default_namespace.is_some() {
            continue;
        }
        let scope = format!(
            "pods are watched only in namespace(s) {}",
            pods.namespaces.join(", ")
        );
        let consequence = "a record that names no namespace cannot be placed in them, so a missing pod is never evidence for it (no PodGone, no orphaned_suspended_session); set records.default_namespace";
        for (kind, query) in p.records.postgres.iter().flat_map(|pg| pg.queries.iter()) {
            if *kind == RecordKind::Sandbox || query.to_lowercase().contains("namespace") {
                continue;
            }
            out.push(ConfigError {
                field: format!("{at}.records.postgres.queries.{}", kind.as_str()),
                message: format!("{scope} and this query selects no namespace column: {consequence}, or select the namespace AS namespace"),
            });
        }
        for kind in &p.records.ingest {
            if *kind != RecordKind::Sandbox {
                out.push(ConfigError {
                    field: format!("{at}.records.ingest.kinds"),
                    message: format!(
                        "{scope}: each pushed {} must name its namespace, else {consequence}",
                        kind.as_str()
                    ),
                });
            }
        }
    }
    out
}

/// Every file a profile reads (secrets, header values, CA bundles, URL files), by field.
fn files(p: &crate::model::profile::Profile) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    if let Some(pg) = &p.records.postgres {
        if let Some(f) = &pg.url_file {
            out.push(("records.postgres.url_file".to_string(), f.clone()));
        }
        if let Some(f) = &pg.ca_file {
            out.push(("records.postgres.ca_file".to_string(), f.clone()));
        }
    }
    for a in &p.remediation.actions {
        let at = format!("remediation.actions.{}", a.name.as_str());
        match &a.target {
            Target::Webhook {
                secret_file,
                ca_file,
                ..
            } => {
                out.push((format!("{at}.webhook.secret_file"), secret_file.clone()));
                if let Some(f) = ca_file {
                    out.push((format!("{at}.webhook.ca_file"), f.clone()));
                }
            }
            Target::Http {
                headers, ca_file, ..
            } => {
                for (name, value) in headers {
                    if let HeaderValue::File(f) = value {
                        out.push((format!("{at}.http.headers.{name}.file"), f.clone()));
                    }
                }
                if let Some(f) = ca_file {
                    out.push((format!("{at}.http.ca_file"), f.clone()));
                }
            }
            Target::Kubernetes(_) => {}
        }
    }
    out
}

/// The profiles of one preset, by name.
pub fn preset(name: &str) -> Result<Profiles, ConfigErrors> {
    let spec = preset_spec(name).map_err(|message| {
        ConfigErrors(vec![ConfigError {
            field: "preset".into(),
            message,
        }])
    })?;
    resolve(vec![spec], "preset")
}

fn preset_spec(name: &str) -> Result<ProfileSpec, String> {
    let Some((_, _, text)) = PRESETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!(
            "unknown preset {name:?}; the presets are: {}",
            PRESETS
                .iter()
                .map(|(n, _, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    // Presets are part of the binary and covered by tests; a broken one is a build defect.
    let mut spec = parse_yaml::<ProfileSpec>(text, "")
        .map_err(|e| format!("preset {name:?} is invalid: {e}"))?;
    spec.name.get_or_insert_with(|| name.to_string());
    Ok(spec)
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
            (_, "" | ".") => {
                if prefix.is_empty() {
                    "(file)".to_string()
                } else {
                    prefix.to_string()
                }
            }
            (true, p) => p.to_string(),
            (false, p) => format!("{prefix}.{p}"),
        };
        ConfigErrors(vec![ConfigError {
            field,
            message: e.to_string(),
        }])
    })
}

fn resolve(specs: Vec<ProfileSpec>, base: &str) -> Result<Profiles, ConfigErrors> {
    let mut errors = Vec::new();
    let mut profiles = Vec::new();
    let mut names = BTreeSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let at = if base == "preset" {
            "preset".to_string()
        } else {
            format!("{base}[{i}]")
        };
        let spec = match &spec.preset {
            Some(p) => match preset_spec(p) {
                Ok(base_spec) => overlay(base_spec, spec),
                Err(message) => {
                    errors.push(ConfigError {
                        field: format!("{at}.preset"),
                        message,
                    });
                    continue;
                }
            },
            None => spec,
        };
        let mut v = Validator {
            at: at.clone(),
            errors: &mut errors,
        };
        if let Some(p) = v.profile(spec) {
            if !names.insert(p.name.to_string()) {
                v.err(
                    "name",
                    format!("{:?} is used by two profiles; names must be unique", p.name),
                );
            } else {
                profiles.push(p);
            }
        }
    }
    if profiles.len() > usize::from(u16::MAX) {
        errors.push(ConfigError {
            field: base.to_string(),
            message: format!(
                "{} profiles; at most {} are supported",
                profiles.len(),
                u16::MAX
            ),
        });
    }
    if errors.is_empty() {
        Ok(Profiles::new(profiles))
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Fields set in `over` replace those of `base`, one field at a time.
fn overlay(base: ProfileSpec, over: ProfileSpec) -> ProfileSpec {
    fn pick<T>(o: Option<T>, b: Option<T>) -> Option<T> {
        o.or(b)
    }
    fn section<T: Default>(b: Option<T>, o: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
        match (b, o) {
            (Some(b), Some(o)) => Some(f(b, o)),
            (b, o) => o.or(b),
        }
    }
    ProfileSpec {
        name: pick(over.name, base.name),
        preset: over.preset,
        pods: section(base.pods, over.pods, |b, o| PodsSpec {
            selector: pick(o.selector, b.selector),
            namespaces: pick(o.namespaces, b.namespaces),
            agent_containers: pick(o.agent_containers, b.agent_containers),
            session_key: pick(o.session_key, b.session_key),
            execution_key: pick(o.execution_key, b.execution_key),
        }),
        sessions: section(base.sessions, over.sessions, |b, o| SessionsSpec {
            active: pick(o.active, b.active),
            suspended: pick(o.suspended, b.suspended),
            transitional: pick(o.transitional, b.transitional),
            terminal: pick(o.terminal, b.terminal),
            resume_from: pick(o.resume_from, b.resume_from),
        }),
        executions: section(base.executions, over.executions, |b, o| ExecutionsSpec {
            active: pick(o.active, b.active),
            terminal: pick(o.terminal, b.terminal),
        }),
        sandboxes: section(base.sandboxes, over.sandboxes, |b, o| SandboxesSpec {
            dead: pick(o.dead, b.dead),
            alive: pick(o.alive, b.alive),
        }),
        custom_resources: pick(over.custom_resources, base.custom_resources),
        grace: section(base.grace, over.grace, |b, o| GraceSpec {
            native_sidecar: pick(o.native_sidecar, b.native_sidecar),
            absence: pick(o.absence, b.absence),
            leaked_pod: pick(o.leaked_pod, b.leaked_pod),
        }),
        records: section(base.records, over.records, |b, o| RecordsSpec {
            postgres: section(b.postgres, o.postgres, |b, o| PostgresSpec {
                url_env: pick(o.url_env, b.url_env),
                url_file: pick(o.url_file, b.url_file),
                ca_file: pick(o.ca_file, b.ca_file),
                poll_interval: pick(o.poll_interval, b.poll_interval),
                resync_interval: pick(o.resync_interval, b.resync_interval),
                stale_after: pick(o.stale_after, b.stale_after),
                statement_timeout: pick(o.statement_timeout, b.statement_timeout),
                overlap: pick(o.overlap, b.overlap),
                listen_channel: pick(o.listen_channel, b.listen_channel),
                queries: section(b.queries, o.queries, |b, o| QueriesSpec {
                    session: pick(o.session, b.session),
                    execution: pick(o.execution, b.execution),
                    sandbox: pick(o.sandbox, b.sandbox),
                }),
            }),
            ingest: pick(o.ingest, b.ingest),
            default_namespace: pick(o.default_namespace, b.default_namespace),
            namespaced_ids: pick(o.namespaced_ids, b.namespaced_ids),
        }),
        remediation: section(base.remediation, over.remediation, |b, o| {
            ProfileRemediationSpec {
                base_url: pick(o.base_url, b.base_url),
                actions: section(b.actions, o.actions, |b, o| {
                    let merge = |b: Option<ActionSpec>, o: Option<ActionSpec>| {
                        section(b, o, |b, o| {
                            // A target of the same type overrides the preset's field by field (a
                            // header's file, say); a target of another type replaces it.
                            let own =
                                o.webhook.is_some() || o.http.is_some() || o.kubernetes.is_some();
                            let (webhook, http, kubernetes) = if !own {
                                (b.webhook, b.http, b.kubernetes)
                            } else if let (Some(bh), Some(oh), None, None) =
                                (&b.http, &o.http, &o.webhook, &o.kubernetes)
                            {
                                let mut headers = bh.headers.clone().unwrap_or_default();
                                headers.extend(oh.headers.clone().unwrap_or_default());
                                let http = HttpSpec {
                                    method: pick(oh.method.clone(), bh.method.clone()),
                                    url: pick(oh.url.clone(), bh.url.clone()),
                                    body: pick(oh.body.clone(), bh.body.clone()),
                                    headers: (!headers.is_empty()).then_some(headers),
                                    ca_file: pick(oh.ca_file.clone(), bh.ca_file.clone()),
                                };
                                (None, Some(http), None)
                            } else if let (Some(bw), Some(ow), None, None) =
                                (&b.webhook, &o.webhook, &o.http, &o.kubernetes)
                            {
                                let webhook = WebhookSpec {
                                    url: pick(ow.url.clone(), bw.url.clone()),
                                    secret_file: pick(
                                        ow.secret_file.clone(),
                                        bw.secret_file.clone(),
                                    ),
                                    ca_file: pick(ow.ca_file.clone(), bw.ca_file.clone()),
                                };
                                (Some(webhook), None, None)
                            } else {
                                (o.webhook, o.http, o.kubernetes)
                            };
                            ActionSpec {
                                enabled: pick(o.enabled, b.enabled),
                                grace: pick(o.grace, b.grace),
                                per_minute: pick(o.per_minute, b.per_minute),
                                webhook,
                                http,
                                kubernetes,
                            }
                        })
                    };
                    ActionsSpec {
                        finalize_execution: merge(b.finalize_execution, o.finalize_execution),
                        respawn_session: merge(b.respawn_session, o.respawn_session),
                        mark_session_gone: merge(b.mark_session_gone, o.mark_session_gone),
                        finalize_session: merge(b.finalize_session, o.finalize_session),
                        reap_pod: merge(b.reap_pod, o.reap_pod),
                    }
                }),
            }
        }),
    }
}

struct Validator<'a> {
    at: String,
    errors: &'a mut Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, field: &str, message: String) {
        self.errors.push(ConfigError {
            field: format!("{}.{field}", self.at),
            message,
        });
    }

    fn profile(&mut self, spec: ProfileSpec) -> Option<Profile> {
        let before = self.errors.len();
        let name = match spec.name {
            Some(n) if is_label_safe(&n) => n,
            Some(n) => {
                self.err(
                    "name",
                    format!(
                        "{n:?} is not a valid profile name: use 1-63 lowercase letters, digits and '-' (it becomes a metric label)"
                    ),
                );
                String::new()
            }
            None => {
                self.err("name", "missing; every profile needs a name".into());
                String::new()
            }
        };
        let pods = spec.pods.and_then(|p| self.pods(p));
        let custom_resources = self.custom_resources(spec.custom_resources.unwrap_or_default());
        let sessions = self.sessions(spec.sessions.unwrap_or_default(), &custom_resources);
        let executions = self.executions(spec.executions.unwrap_or_default());
        let sandboxes = self.sandboxes(spec.sandboxes.unwrap_or_default());
        let grace = self.grace(spec.grace.unwrap_or_default());
        let records = self.records(spec.records.unwrap_or_default());
        let (base_url, actions) = self.actions(spec.remediation.unwrap_or_default());
        // One source per kind of record: two would each remove the other's records on their
        // full loads.
        let postgres_kinds: Vec<RecordKind> = records
            .postgres
            .iter()
            .flat_map(|pg| pg.queries.iter().map(|(k, _)| *k))
            .collect();
        for kind in &records.ingest {
            if postgres_kinds.contains(kind) {
                self.err(
                    "records.ingest.kinds",
                    format!(
                        "{:?} records already come from records.postgres.queries.{0}: give each kind one source",
                        kind.as_str()
                    ),
                );
            }
        }
        if let Some(cr) = custom_resources
            .iter()
            .find(|c| c.role == ResourceRole::Session)
        {
            let other = if postgres_kinds.contains(&RecordKind::Session) {
                Some("records.postgres.queries.session")
            } else if records.ingest.contains(&RecordKind::Session) {
                Some("records.ingest.kinds")
            } else {
                None
            };
            if let Some(other) = other {
                self.err(
                    other,
                    format!(
                        "sessions already come from the {} custom resource (role `session`): give each kind one source",
                        cr.kind
                    ),
                );
            }
        }
        if custom_resources
            .iter()
            .any(|c| c.role == ResourceRole::Session)
            && pods.as_ref().is_none_or(|p| p.session_key.is_none())
        {
            self.err(
                "pods.session_key",
                "missing: custom resources with role `session` are joined to pods through the session key".into(),
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Profile {
            name: Arc::from(name),
            pods,
            sessions,
            executions,
            sandboxes,
            custom_resources,
            grace,
            records,
            remediation: ProfileRemediation { base_url, actions },
        })
    }

    fn actions(
        &mut self,
        spec: ProfileRemediationSpec,
    ) -> (Option<String>, Vec<ActionSpecResolved>) {
        let base_url = spec.base_url.filter(|b| !b.trim().is_empty());
        if let Some(b) = &base_url
            && !(b.starts_with("http://") || b.starts_with("https://"))
        {
            self.err(
                "remediation.base_url",
                format!("{b:?} is not an http:// or https:// URL"),
            );
        }
        let a = spec.actions.unwrap_or_default();
        let mut out = Vec::new();
        for (name, action) in [
            (ActionName::FinalizeExecution, a.finalize_execution),
            (ActionName::RespawnSession, a.respawn_session),
            (ActionName::MarkSessionGone, a.mark_session_gone),
            (ActionName::FinalizeSession, a.finalize_session),
            (ActionName::ReapPod, a.reap_pod),
        ] {
            let Some(action) = action else { continue };
            if action.enabled == Some(false) {
                continue;
            }
            let at = format!("remediation.actions.{}", name.as_str());
            let targets = [
                action.webhook.is_some(),
                action.http.is_some(),
                action.kubernetes.is_some(),
            ];
            if targets.iter().filter(|t| **t).count() != 1 {
                self.err(&at, "give exactly one of: webhook, http, kubernetes".into());
                continue;
            }
            let target = if let Some(w) = action.webhook {
                let url = w.url.unwrap_or_default();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.err(
                        &format!("{at}.webhook.url"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
                let Some(secret_file) = w.secret_file.filter(|f| !f.is_empty()) else {
                    self.err(
                        &format!("{at}.webhook.secret_file"),
                        "missing: webhooks are signed with a secret read from a file".into(),
                    );
                    continue;
                };
                Target::Webhook {
                    url,
                    secret_file: secret_file.into(),
                    ca_file: w.ca_file.map(Into::into),
                }
            } else if let Some(h) = action.http {
                let method = h.method.unwrap_or_else(|| "POST".into()).to_uppercase();
                if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                    self.err(
                        &format!("{at}.http.method"),
                        format!("{method:?} is not one of GET, POST, PUT, PATCH, DELETE"),
                    );
                }
                let url = h.url.unwrap_or_default();
                if !(url.starts_with("http://")
                    || url.starts_with("https://")
                    || url.starts_with("{base_url}"))
                {
                    self.err(
                        &format!("{at}.http.url"),
                        format!("{url:?} must start with http://, https:// or {{base_url}}"),
                    );
                }
                if url.starts_with("{base_url}") && base_url.is_none() {
                    self.err(
                        &format!("{at}.http.url"),
                        "uses {base_url} but remediation.base_url is not set".into(),
                    );
                }
                for (field, template) in [("url", Some(&url)), ("body", h.body.as_ref())] {
                    for name in template
                        .map(|t| crate::remediation::action::unknown_placeholders(t))
                        .unwrap_or_default()
                    {
                        self.err(
                            &format!("{at}.http.{field}"),
                            format!(
                                "{{{name}}} is not a placeholder; use {}",
                                crate::remediation::action::PLACEHOLDERS
                                    .map(|p| format!("{{{p}}}"))
                                    .join(", ")
                            ),
                        );
                    }
                }
                let mut headers = Vec::new();
                for (name, value) in h.headers.unwrap_or_default() {
                    match (value.value, value.file) {
                        (Some(v), None) => headers.push((name, HeaderValue::Literal(v))),
                        (None, Some(f)) => headers.push((name, HeaderValue::File(f.into()))),
                        _ => self.err(
                            &format!("{at}.http.headers.{name}"),
                            "give either `value:` or `file:`".into(),
                        ),
                    }
                }
                Target::Http {
                    method,
                    url,
                    body: h.body,
                    headers,
                    ca_file: h.ca_file.map(Into::into),
                }
            } else {
                let k = action.kubernetes.unwrap_or_default();
                match (k.delete_pod.unwrap_or(false), k.annotate_session) {
                    (true, None) => Target::Kubernetes(KubeAction::DeletePod),
                    (false, Some(a)) => match (a.key, a.value) {
                        (Some(key), Some(value)) if !key.is_empty() => {
                            Target::Kubernetes(KubeAction::AnnotateSession { key, value })
                        }
                        _ => {
                            self.err(
                                &format!("{at}.kubernetes.annotate_session"),
                                "give key and value".into(),
                            );
                            continue;
                        }
                    },
                    _ => {
                        self.err(
                            &format!("{at}.kubernetes"),
                            "give exactly one of: delete_pod: true, annotate_session".into(),
                        );
                        continue;
                    }
                }
            };
            let grace = self.duration(&format!("{at}.grace"), action.grace, name.default_grace());
            let per_minute = action.per_minute.unwrap_or(30);
            if per_minute == 0 {
                self.err(&format!("{at}.per_minute"), "must be more than zero (to turn an action off, remove it or set enabled: false)".into());
            }
            out.push(ActionSpecResolved {
                name,
                grace,
                per_minute,
                target,
            });
        }
        if out.iter().any(|a| a.name == ActionName::RespawnSession)
            && out.iter().any(|a| a.name == ActionName::MarkSessionGone)
        {
            self.err(
                "remediation.actions",
                "respawn_session and mark_session_gone both repair orphaned_suspended_session: choose one".into(),
            );
        }
        (base_url, out)
    }

    fn records(&mut self, spec: RecordsSpec) -> Records {
        let postgres = spec.postgres.map(|pg| {
            let mut queries = Vec::new();
            let q = pg.queries.unwrap_or_default();
            for (kind, text) in [
                (RecordKind::Session, q.session),
                (RecordKind::Execution, q.execution),
                (RecordKind::Sandbox, q.sandbox),
            ] {
                match text {
                    Some(t) if t.trim().is_empty() => self.err(
                        &format!("records.postgres.queries.{}", kind.as_str()),
                        "empty query".into(),
                    ),
                    Some(t) => queries.push((kind, t.trim().trim_end_matches(';').to_string())),
                    None => {}
                }
            }
            if queries.is_empty() {
                self.err(
                    "records.postgres.queries",
                    "no query: give at least one of session, execution, sandbox, each selecting columns aliased to id, state (and namespace, pod, session, sandbox, attempt, updated_at, deadline)".into(),
                );
            }
            let d = PostgresRecords::default();
            let channel = pg.listen_channel.filter(|c| !c.is_empty());
            if let Some(c) = &channel {
                let ok = c.chars().next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
                    && c.chars().all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_')
                    && c.len() <= 63;
                if !ok {
                    self.err(
                        "records.postgres.listen_channel",
                        format!("{c:?} is not a plain lowercase SQL identifier"),
                    );
                }
            }
            let poll_interval = self.duration("records.postgres.poll_interval", pg.poll_interval, d.poll_interval);
            if poll_interval.is_zero() {
                self.err("records.postgres.poll_interval", "must be more than zero".into());
            }
            let statement_timeout = self.duration(
                "records.postgres.statement_timeout",
                pg.statement_timeout,
                d.statement_timeout,
            );
            if statement_timeout.is_zero() {
                self.err(
                    "records.postgres.statement_timeout",
                    "must be more than zero (it also bounds how long sandwatch waits on the database)".into(),
                );
            } else if statement_timeout.as_millis() > i32::MAX as u128 {
                self.err(
                    "records.postgres.statement_timeout",
                    format!(
                        "{statement_timeout:?} is more than PostgreSQL accepts (2147483647ms, about 24 days)"
                    ),
                );
            }
            PostgresRecords {
                url_env: pg.url_env.unwrap_or(d.url_env),
                url_file: pg.url_file.map(Into::into),
                ca_file: pg.ca_file.map(Into::into),
                poll_interval,
                resync_interval: self.duration("records.postgres.resync_interval", pg.resync_interval, d.resync_interval),
                stale_after: self.duration("records.postgres.stale_after", pg.stale_after, d.stale_after),
                statement_timeout,
                overlap: self.duration("records.postgres.overlap", pg.overlap, d.overlap),
                listen_channel: channel,
                queries,
            }
        });
        let mut ingest = Vec::new();
        let mut ingest_limits = crate::model::profile::IngestLimits::default();
        if let Some(i) = &spec.ingest {
            let d = crate::model::profile::IngestLimits::default();
            ingest_limits.stale_after = self.duration(
                "records.ingest.stale_after",
                i.stale_after.clone(),
                d.stale_after,
            );
            if ingest_limits.stale_after.is_zero() {
                self.err(
                    "records.ingest.stale_after",
                    "must be more than zero".into(),
                );
            }
            ingest_limits.max_records = i.max_records.unwrap_or(d.max_records);
            if ingest_limits.max_records == 0 {
                self.err(
                    "records.ingest.max_records",
                    "must be more than zero".into(),
                );
            }
            ingest_limits.expire_after = i
                .expire_after
                .clone()
                .map(|t| self.duration("records.ingest.expire_after", Some(t), Duration::ZERO));
            if ingest_limits.expire_after.is_some_and(|d| d.is_zero()) {
                self.err(
                    "records.ingest.expire_after",
                    "must be more than zero (leave it out for records that do not expire)".into(),
                );
            }
        }
        if let Some(i) = spec.ingest {
            let kinds = i
                .kinds
                .unwrap_or_else(|| vec!["execution".into(), "sandbox".into()]);
            for (n, k) in kinds.iter().enumerate() {
                match RecordKind::parse(k) {
                    Some(kind) => ingest.push(kind),
                    None => self.err(
                        &format!("records.ingest.kinds[{n}]"),
                        format!("{k:?} is not a record kind (session, execution or sandbox)"),
                    ),
                }
            }
        }
        let default_namespace = spec.default_namespace.filter(|n| !n.is_empty());
        if let Some(n) = &default_namespace
            && !is_dns_label(n)
        {
            self.err(
                "records.default_namespace",
                format!("{n:?} is not a valid namespace name"),
            );
        }
        let mut namespaced_ids = Vec::new();
        for (n, k) in spec.namespaced_ids.unwrap_or_default().iter().enumerate() {
            match RecordKind::parse(k) {
                Some(kind) => namespaced_ids.push(kind),
                None => self.err(
                    &format!("records.namespaced_ids[{n}]"),
                    format!("{k:?} is not a record kind (session, execution or sandbox)"),
                ),
            }
        }
        Records {
            postgres,
            ingest,
            ingest_limits,
            default_namespace,
            namespaced_ids,
        }
    }

    fn pods(&mut self, spec: PodsSpec) -> Option<PodMatch> {
        let selector_text = spec.selector.unwrap_or_default();
        let selector = match parse_selector(&selector_text) {
            Ok(s) => s,
            Err(e) => {
                self.err("pods.selector", format!("{selector_text:?}: {e}"));
                Selector::default()
            }
        };
        if selector_text.trim().is_empty() {
            self.err(
                "pods.selector",
                "missing or empty: a profile must say which pods are its sandboxes (e.g. \"app=sandbox\")".into(),
            );
        }
        let agent_containers = spec.agent_containers.unwrap_or_default();
        if agent_containers.is_empty() {
            self.err(
                "pods.agent_containers",
                "missing or empty: name the agent container(s) of a sandbox pod".into(),
            );
        }
        for (i, c) in agent_containers.iter().enumerate() {
            if c.trim().is_empty() {
                self.err(
                    &format!("pods.agent_containers[{i}]"),
                    "empty container name".into(),
                );
            }
        }
        let namespaces = spec.namespaces.unwrap_or_default();
        for (i, n) in namespaces.iter().enumerate() {
            if !is_dns_label(n) {
                self.err(
                    &format!("pods.namespaces[{i}]"),
                    format!("{n:?} is not a valid namespace name"),
                );
            }
        }
        let session_key = spec
            .session_key
            .and_then(|k| self.key("pods.session_key", k));
        let execution_key = spec
            .execution_key
            .and_then(|k| self.key("pods.execution_key", k));
        Some(PodMatch {
            selector_text,
            selector,
            namespaces,
            agent_containers,
            session_key,
            execution_key,
        })
    }

    fn key(&mut self, field: &str, spec: KeySpec) -> Option<MetaKey> {
        match (spec.label, spec.annotation) {
            (Some(l), None) if !l.is_empty() => Some(MetaKey::Label(l)),
            (None, Some(a)) if !a.is_empty() => Some(MetaKey::Annotation(a)),
            (Some(l), Some(a)) => {
                self.err(
                    field,
                    format!("both label {l:?} and annotation {a:?} given; choose one"),
                );
                None
            }
            _ => {
                self.err(
                    field,
                    "give either `label: KEY` or `annotation: KEY`".into(),
                );
                None
            }
        }
    }

    fn states(&mut self, sets: &[(&str, &Vec<String>)], section: &str) {
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (class, states) in sets {
            for (i, s) in states.iter().enumerate() {
                if s.trim().is_empty() {
                    self.err(
                        &format!("{section}.{class}[{i}]"),
                        "empty state name".into(),
                    );
                }
                if let Some((other, _)) = seen.iter().find(|(_, t)| *t == s.as_str()) {
                    self.err(
                        &format!("{section}.{class}[{i}]"),
                        format!("state {s:?} is also listed in {section}.{other}; a state has one meaning"),
                    );
                }
                seen.push((class, s.as_str()));
            }
        }
    }

    fn sessions(&mut self, spec: SessionsSpec, resources: &[CustomResource]) -> SessionStates {
        let s = SessionStates {
            active: spec.active.unwrap_or_default(),
            suspended: spec.suspended.unwrap_or_default(),
            transitional: spec.transitional.unwrap_or_default(),
            terminal: spec.terminal.unwrap_or_default(),
            resume_from: None,
        };
        self.states(
            &[
                ("active", &s.active),
                ("suspended", &s.suspended),
                ("transitional", &s.transitional),
                ("terminal", &s.terminal),
            ],
            "sessions",
        );
        let resume_from = match spec.resume_from.as_deref() {
            None | Some("pod") => Some(ResumeFrom::Pod),
            Some("custom_resource") => {
                if !resources
                    .iter()
                    .any(|c| c.role == ResourceRole::ResumeTarget)
                {
                    self.err(
                        "sessions.resume_from",
                        "\"custom_resource\" needs a custom_resources entry with role `resume_target`".into(),
                    );
                }
                Some(ResumeFrom::CustomResource)
            }
            Some(other) => {
                self.err(
                    "sessions.resume_from",
                    format!("{other:?} is not one of: pod, custom_resource"),
                );
                None
            }
        };
        SessionStates { resume_from, ..s }
    }

    fn executions(&mut self, spec: ExecutionsSpec) -> ExecutionStates {
        let e = ExecutionStates {
            active: spec.active.unwrap_or_default(),
            terminal: spec.terminal.unwrap_or_default(),
        };
        self.states(
            &[("active", &e.active), ("terminal", &e.terminal)],
            "executions",
        );
        e
    }

    fn sandboxes(&mut self, spec: SandboxesSpec) -> SandboxStates {
        let s = SandboxStates {
            dead: spec.dead.unwrap_or_default(),
            alive: spec.alive.unwrap_or_default(),
        };
        self.states(&[("alive", &s.alive), ("dead", &s.dead)], "sandboxes");
        s
    }

    fn custom_resources(&mut self, specs: Vec<CustomResourceSpec>) -> Vec<CustomResource> {
        let mut out = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let at = format!("custom_resources[{i}]");
            let before = self.errors.len();
            let (group, version) = match spec.api_version.as_deref() {
                Some(av) => {
                    match av.split_once('/') {
                        Some((g, v)) if !g.is_empty() && !v.is_empty() && !v.contains('/') => {
                            (g.to_string(), v.to_string())
                        }
                        _ => {
                            self.err(
                            &format!("{at}.api_version"),
                            format!("{av:?} is not GROUP/VERSION (e.g. \"vteam.ambient-code/v1alpha1\")"),
                        );
                            Default::default()
                        }
                    }
                }
                None => {
                    self.err(&format!("{at}.api_version"), "missing".into());
                    Default::default()
                }
            };
            let kind = spec.kind.unwrap_or_default();
            if kind.is_empty() {
                self.err(
                    &format!("{at}.kind"),
                    "missing (e.g. \"AgenticSession\")".into(),
                );
            }
            let plural = spec.plural.unwrap_or_default();
            if plural.is_empty() || plural.chars().any(|c| !c.is_ascii_lowercase()) {
                self.err(
                    &format!("{at}.plural"),
                    format!(
                        "{plural:?}: give the lowercase resource plural (e.g. \"agenticsessions\")"
                    ),
                );
            }
            let role = match spec.role.as_deref() {
                Some("session") => ResourceRole::Session,
                Some("resume_target") => ResourceRole::ResumeTarget,
                Some(other) => {
                    self.err(
                        &format!("{at}.role"),
                        format!("{other:?} is not one of: session, resume_target"),
                    );
                    ResourceRole::Session
                }
                None => {
                    self.err(
                        &format!("{at}.role"),
                        "missing; one of: session, resume_target".into(),
                    );
                    ResourceRole::Session
                }
            };
            if self.errors.len() == before {
                out.push(CustomResource {
                    group,
                    version,
                    kind,
                    plural,
                    role,
                    state_when_unset: spec.state_when_unset,
                });
            }
        }
        out
    }

    fn grace(&mut self, spec: GraceSpec) -> Grace {
        let d = Grace::default();
        Grace {
            native_sidecar: self.duration(
                "grace.native_sidecar",
                spec.native_sidecar,
                d.native_sidecar,
            ),
            absence: self.duration("grace.absence", spec.absence, d.absence),
            leaked_pod: self.duration("grace.leaked_pod", spec.leaked_pod, d.leaked_pod),
        }
    }

    fn duration(&mut self, field: &str, text: Option<String>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        match parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                self.err(field, e);
                default
            }
        }
    }
}

/// Parses a duration such as `90s`, `10m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (write e.g. 90s, 10m, 1h30m)"))?;
    Duration::try_from(d)
        .map_err(|_| format!("{text:?} is negative; durations must be zero or more"))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_safe(s: &str) -> bool {
    is_dns_label(s)
}

/// Parses a Kubernetes label selector string (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) into
/// kube's [`Selector`], which matches label maps and renders back for the API server.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut exprs = Vec::new();
    for term in split_outside_parens(text) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        exprs.push(parse_term(term)?);
    }
    Ok(Selector::from_iter(exprs))
}

fn split_outside_parens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_term(term: &str) -> Result<Expression, String> {
    let check_key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let valid = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if valid {
            Ok(k.to_string())
        } else {
            Err(format!("{k:?} is not a valid label key"))
        }
    };
    let check_value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            Ok(v.to_string())
        } else {
            Err(format!("{v:?} is not a valid label value"))
        }
    };
    let set = |rest: &str| -> Result<BTreeSet<String>, String> {
        let rest = rest.trim();
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| {
                format!("expected a parenthesised list after the operator in {term:?}")
            })?;
        inner.split(',').map(check_value).collect()
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(check_key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Expression::NotEqual(check_key(k)?, check_value(v)?));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Expression::Equal(check_key(k)?, check_value(v)?));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Expression::Equal(check_key(k)?, check_value(v)?));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Expression::Exists(check_key(key)?)),
        Some(rest) if rest.starts_with("notin") => {
            Ok(Expression::NotIn(check_key(key)?, set(&rest[5..])?))
        }
        Some(rest) if rest.starts_with("in") => {
            Ok(Expression::In(check_key(key)?, set(&rest[2..])?))
        }
        Some(_) => Err(format!(
            "{term:?} is not a selector term (use k=v, k!=v, k in (a,b), k notin (a,b), k or !k)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    #[test]
    fn every_preset_is_valid() {
        for (name, _, _) in PRESETS {
            let p = preset(name).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert_eq!(&*p.get(crate::model::profile::ProfileId(0)).name, *name);
        }
    }

    #[test]
    fn selectors_parse_and_match() {
        let s = parse_selector(
            "centaur.ai/managed=true,centaur.ai/warm!=true,!centaur.ai/iron-proxy,tier in (a, b)",
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.matches(&labels(&[("centaur.ai/managed", "true"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("centaur.ai/managed", "true"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[
            ("centaur.ai/managed", "true"),
            ("tier", "a"),
            ("centaur.ai/warm", "true")
        ])));
        assert_eq!(
            s.to_string(),
            "centaur.ai/managed=true,centaur.ai/warm!=true,!centaur.ai/iron-proxy,tier in (a,b)"
        );
        assert!(
            parse_selector("a in b")
                .unwrap_err()
                .contains("parenthesised")
        );
        assert!(
            parse_selector("a b c")
                .unwrap_err()
                .contains("not a selector term")
        );
    }

    #[test]
    fn errors_name_field_and_value() {
        let yaml = r#"
profiles:
  - name: Bad_Name
    pods:
      selector: "app=sandbox"
      agent_containers: []
    sessions:
      active: [running]
      terminal: [running]
      resume_from: elsewhere
    grace:
      absence: soon
  - preset: nope
"#;
        let errs = load_str(yaml).unwrap_err().to_string();
        for needle in [
            "profiles[0].name: \"Bad_Name\" is not a valid profile name",
            "profiles[0].pods.agent_containers: missing or empty",
            "profiles[0].sessions.terminal[0]: state \"running\" is also listed in sessions.active",
            "profiles[0].sessions.resume_from: \"elsewhere\" is not one of: pod, custom_resource",
            "profiles[0].grace.absence: \"soon\" is not a duration",
            "profiles[1].preset: unknown preset \"nope\"",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_path() {
        let e = load_str("profiles:\n  - name: a\n    pods:\n      selektor: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("profiles[0].pods"), "{e}");
        assert!(e.contains("unknown field `selektor`"), "{e}");
        let e = load_str("profiles:\n  - name: a\n    pods:\n      agent_containers: 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("profiles[0].pods.agent_containers"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn a_profile_overrides_a_preset_field_by_field() {
        let p = load_str(
            "profiles:\n  - preset: sandbox-api\n    name: prod\n    pods:\n      namespaces: [agents]\n    grace:\n      absence: 5m\n",
        )
        .unwrap();
        let prof = p.get(crate::model::profile::ProfileId(0));
        assert_eq!(&*prof.name, "prod");
        let pods = prof.pods.as_ref().unwrap();
        assert_eq!(pods.namespaces, vec!["agents"]);
        assert_eq!(
            pods.agent_containers,
            vec!["sandbox"],
            "kept from the preset"
        );
        assert_eq!(prof.grace.absence, Duration::from_secs(300));
        assert_eq!(prof.grace.leaked_pod, Duration::from_secs(600));
    }

    #[test]
    fn each_kind_of_record_has_one_source() {
        let yaml = r#"
profiles:
  - preset: generic
    records:
      postgres:
        statement_timeout: 0s
        queries:
          execution: SELECT id, status AS state FROM executions
      ingest:
        kinds: [execution, sandbox]
  - preset: ambient
    name: ambient-pg
    records:
      postgres:
        queries:
          session: SELECT name AS id, phase AS state FROM sessions
"#;
        let errs = load_str(yaml).unwrap_err().to_string();
        for needle in [
            "profiles[0].records.ingest.kinds: \"execution\" records already come from records.postgres.queries.execution",
            "profiles[0].records.postgres.statement_timeout: must be more than zero",
            "profiles[1].records.postgres.queries.session: sessions already come from the AgenticSession custom resource",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
        assert!(!errs.contains("\"sandbox\" records"), "{errs}");
    }

    #[test]
    fn what_postgresql_and_the_remediation_would_refuse_is_refused_here() {
        let yaml = r#"
profiles:
  - preset: sandbox-api
    records:
      postgres:
        statement_timeout: 720h
    remediation:
      base_url: https://api.internal
      actions:
        finalize_execution:
          enabled: true
          http: { url: "{base_url}/agent/executions/{exection}/cancel" }
remediation:
  retry_initial: 10m
  retry_max: 1m
"#;
        let errs = load_str(yaml).unwrap_err().to_string();
        for needle in [
            "profiles[0].records.postgres.statement_timeout: 2592000s is more than PostgreSQL accepts",
            "profiles[0].remediation.actions.finalize_execution.http.url: {exection} is not a placeholder",
            "remediation.retry_initial: 600s is more than retry_max (60s)",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
    }

    #[test]
    fn an_http_override_changes_single_fields_of_the_presets_target() {
        let yaml = r#"
profiles:
  - preset: sandbox-api
    remediation:
      base_url: https://api.internal
      actions:
        finalize_execution:
          enabled: true
          http:
            headers:
              X-API-Key: { file: /run/secrets/key }
"#;
        let p = load_str(yaml).unwrap();
        let a = &p
            .get(crate::model::profile::ProfileId(0))
            .remediation
            .actions[0];
        let Target::Http {
            method,
            url,
            headers,
            ..
        } = &a.target
        else {
            panic!("{:?}", a.target)
        };
        assert_eq!(method, "POST", "kept from the preset");
        assert_eq!(url, "{base_url}/agent/executions/{execution}/cancel");
        assert_eq!(
            headers,
            &[(
                "X-API-Key".to_string(),
                HeaderValue::File("/run/secrets/key".into())
            )]
        );
        // Every file a config names that is not readable here is a warning.
        let w = warnings(&p);
        assert!(
            w.iter().any(|w| w.field
                == "profiles[0].remediation.actions.finalize_execution.http.headers.X-API-Key.file"
                && w.message.contains("/run/secrets/key is not readable here")),
            "{w:?}"
        );
    }
}
