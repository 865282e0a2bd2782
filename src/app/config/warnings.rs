//! What a valid config probably gets wrong. Each warning names the field and says why;
//! `check-config` prints them (and fails on them with `--strict`) and `run` logs them.

use std::path::PathBuf;

use crate::model::ids::{ProfileId, RecordKind};
use crate::remediation::action::{HeaderValue, Target};
use crate::util::config::ConfigError;

use super::Config;

pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (id, p) in config.profiles.iter() {
        let at = format!("profiles[{}]", id.0);
        let records = config.records(id);
        let warn = |out: &mut Vec<ConfigError>, field: &str, message: String| {
            out.push(ConfigError {
                field: format!("{at}.{field}"),
                message,
            })
        };
        // An absence must not outlive the moment the records behind it become untrusted: a
        // records source is reported stale only stale_after after its last good poll, which
        // came up to a poll interval after the change.
        if let Some(pg) = &records.postgres {
            let bound = pg.stale_after + pg.poll_interval;
            if p.grace.absence <= bound {
                warn(
                    &mut out,
                    "grace.absence",
                    format!(
                        "{:?} is not longer than records.postgres.stale_after + poll_interval ({bound:?}): an absence may be judged on records that have already gone stale",
                        p.grace.absence
                    ),
                );
            }
        }
        for (field, path) in files(config, id) {
            if let Err(e) = std::fs::File::open(&path) {
                warn(
                    &mut out,
                    &field,
                    format!(
                        "{} is not readable here: {}",
                        path.display(),
                        crate::sources::io_reason(&e)
                    ),
                );
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
        for (kind, query) in records.postgres.iter().flat_map(|pg| pg.queries.iter()) {
            if *kind == RecordKind::Sandbox || query.to_lowercase().contains("namespace") {
                continue;
            }
            warn(
                &mut out,
                &format!("records.postgres.queries.{}", kind.as_str()),
                format!(
                    "{scope} and this query selects no namespace column: {consequence}, or select the namespace AS namespace"
                ),
            );
        }
        for kind in records.ingest.iter().flat_map(|i| i.kinds.iter()) {
            if *kind != RecordKind::Sandbox {
                warn(
                    &mut out,
                    "records.ingest.kinds",
                    format!(
                        "{scope}: each pushed {} must name its namespace, else {consequence}",
                        kind.as_str()
                    ),
                );
            }
        }
    }
    out
}

/// Every file a profile reads (secrets, header values, CA bundles, URL files), by field.
fn files(config: &Config, id: ProfileId) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(pg) = &config.records(id).postgres {
        for (field, file) in [("url_file", &pg.url_file), ("ca_file", &pg.ca_file)] {
            if let Some(f) = file {
                out.push((format!("records.postgres.{field}"), f.clone()));
            }
        }
    }
    for a in config
        .remediation
        .actions
        .iter()
        .filter(|a| a.profile == id)
    {
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
