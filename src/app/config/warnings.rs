//! What a valid config probably gets wrong. Each warning names the field and says why;
//! `check-config` prints them (and fails on them with `--strict`) and `run` logs them. Each
//! records source gives its own (`RecordsSettings::warnings`); the files every part names
//! are checked here.

use std::path::PathBuf;

use crate::model::ids::ProfileId;
use crate::remediation::action::{HeaderValue, Target};
use crate::util::config::{ConfigError, Validator};

use super::Config;

pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (id, p) in config.profiles.iter() {
        let at = format!("profiles[{}]", id.0);
        let mut w = Validator::new(at, &mut out);
        for source in config.records(id).each() {
            source.warnings(p, &mut w);
        }
        for (field, path) in files(config, id) {
            if let Err(e) = std::fs::File::open(&path) {
                w.err(
                    &field,
                    format!(
                        "{} is not readable here: {}",
                        path.display(),
                        crate::sources::io_reason(&e)
                    ),
                );
            }
        }
    }
    out
}

/// Every file a profile reads (secrets, header values, CA bundles, URL files), by field.
fn files(config: &Config, id: ProfileId) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = config
        .records(id)
        .each()
        .iter()
        .flat_map(|s| s.files())
        .collect();
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
