//! Remediation's part of the config: the global settings (`remediation:` at the top) and each
//! profile's actions (`profiles[].remediation:`), as written and as validated.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::ids::ProfileId;
use crate::remediation::action::{
    Action, ActionName, HeaderValue, KubeAction, PLACEHOLDERS, Target, unknown_placeholders,
};
use crate::util::config::Validator;

/// Global remediation settings, and every configured action.
#[derive(Clone, Debug)]
pub struct Remediation {
    /// Calls are made only in live mode; otherwise they are logged and counted.
    pub live: bool,
    /// At most this many calls a minute, all actions together.
    pub max_per_minute: u32,
    /// Per call.
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Consecutive failures that open an action's circuit...
    pub circuit_failures: u32,
    /// ...for this long.
    pub circuit_open_for: Duration,
    /// A finding still open this long after a successful call is called again.
    pub resend_after: Duration,
    /// Every configured (enabled) action, across profiles.
    pub actions: Vec<Action>,
}

impl Default for Remediation {
    fn default() -> Self {
        Remediation {
            live: false,
            max_per_minute: 120,
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            circuit_failures: 5,
            circuit_open_for: Duration::from_secs(60),
            resend_after: Duration::from_secs(600),
            actions: Vec::new(),
        }
    }
}

/// `remediation:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSpec {
    pub mode: Option<String>,
    pub max_per_minute: Option<u32>,
    pub timeout: Option<String>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub circuit_failures: Option<u32>,
    pub circuit_open_for: Option<String>,
    pub resend_after: Option<String>,
}

/// `profiles[].remediation:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
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
    pub headers: Option<BTreeMap<String, HeaderSpec>>,
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

impl GlobalSpec {
    /// Validates the global settings; `v` is at `remediation`.
    pub fn validate(self, v: &mut Validator<'_>) -> Remediation {
        let d = Remediation::default();
        let live = match self.mode.as_deref() {
            None | Some("dry_run") => false,
            Some("live") => true,
            Some(other) => {
                v.err("mode", format!("{other:?} is not one of: dry_run, live"));
                false
            }
        };
        let max_per_minute = self.max_per_minute.unwrap_or(d.max_per_minute);
        if max_per_minute == 0 {
            v.err("max_per_minute", "must be more than zero");
        }
        let circuit_failures = self.circuit_failures.unwrap_or(d.circuit_failures);
        if circuit_failures == 0 {
            v.err("circuit_failures", "must be more than zero");
        }
        let timeout = v.duration("timeout", self.timeout, d.timeout);
        if timeout.is_zero() || timeout >= Duration::from_secs(10) {
            v.err(
                "timeout",
                format!("{timeout:?}: must be above zero and below 10s, the remediation Lease's renew deadline (a call must finish while its replica still leads)"),
            );
        }
        let retry_initial = v.duration("retry_initial", self.retry_initial, d.retry_initial);
        let retry_max = v.duration("retry_max", self.retry_max, d.retry_max);
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
                self.circuit_open_for,
                d.circuit_open_for,
            ),
            resend_after: v.duration("resend_after", self.resend_after, d.resend_after),
            actions: Vec::new(),
        }
    }
}

impl ProfileSpec {
    /// Validates a profile's actions (the enabled ones); `v` is at `profiles[i].remediation`.
    pub fn validate(self, v: &mut Validator<'_>, profile: ProfileId) -> Vec<Action> {
        let base_url = self.base_url.filter(|b| !b.trim().is_empty());
        if let Some(b) = &base_url
            && !(b.starts_with("http://") || b.starts_with("https://"))
        {
            v.err(
                "base_url",
                format!("{b:?} is not an http:// or https:// URL"),
            );
        }
        let a = self.actions.unwrap_or_default();
        let mut out = Vec::new();
        for (name, action) in [
            (ActionName::FinalizeExecution, a.finalize_execution),
            (ActionName::RespawnSession, a.respawn_session),
            (ActionName::MarkSessionGone, a.mark_session_gone),
            (ActionName::FinalizeSession, a.finalize_session),
            (ActionName::ReapPod, a.reap_pod),
        ] {
            let Some(action) = action.filter(|a| a.enabled != Some(false)) else {
                continue;
            };
            let mut v = v.at(&format!("actions.{}", name.as_str()));
            let Some(target) = target(
                action.webhook,
                action.http,
                action.kubernetes,
                &base_url,
                &mut v,
            ) else {
                continue;
            };
            let grace = v.duration("grace", action.grace, name.default_grace());
            let per_minute = action.per_minute.unwrap_or(30);
            if per_minute == 0 {
                v.err(
                    "per_minute",
                    "must be more than zero (to turn an action off, remove it or set enabled: false)",
                );
            }
            out.push(Action {
                name,
                profile,
                grace,
                per_minute,
                target,
                base_url: base_url.clone(),
            });
        }
        if out.iter().any(|a| a.name == ActionName::RespawnSession)
            && out.iter().any(|a| a.name == ActionName::MarkSessionGone)
        {
            v.err(
                "actions",
                "respawn_session and mark_session_gone both repair orphaned_suspended_session: choose one",
            );
        }
        out
    }
}

/// The one target of an action; `v` is at the action.
fn target(
    webhook: Option<WebhookSpec>,
    http: Option<HttpSpec>,
    kubernetes: Option<KubeActionSpec>,
    base_url: &Option<String>,
    v: &mut Validator<'_>,
) -> Option<Target> {
    match (webhook, http, kubernetes) {
        (Some(w), None, None) => webhook_target(w, v),
        (None, Some(h), None) => Some(http_target(h, base_url, v)),
        (None, None, Some(k)) => kubernetes_target(k, v),
        _ => {
            v.err("", "give exactly one of: webhook, http, kubernetes");
            None
        }
    }
}

fn webhook_target(w: WebhookSpec, v: &mut Validator<'_>) -> Option<Target> {
    let url = w.url.unwrap_or_default();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        v.err(
            "webhook.url",
            format!("{url:?} is not an http:// or https:// URL"),
        );
    }
    let Some(secret_file) = w.secret_file.filter(|f| !f.is_empty()) else {
        v.err(
            "webhook.secret_file",
            "missing: webhooks are signed with a secret read from a file",
        );
        return None;
    };
    Some(Target::Webhook {
        url,
        secret_file: secret_file.into(),
        ca_file: w.ca_file.map(Into::into),
    })
}

fn http_target(h: HttpSpec, base_url: &Option<String>, v: &mut Validator<'_>) -> Target {
    let method = h.method.unwrap_or_else(|| "POST".into()).to_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        v.err(
            "http.method",
            format!("{method:?} is not one of GET, POST, PUT, PATCH, DELETE"),
        );
    }
    let url = h.url.unwrap_or_default();
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("{base_url}"))
    {
        v.err(
            "http.url",
            format!("{url:?} must start with http://, https:// or {{base_url}}"),
        );
    }
    if url.starts_with("{base_url}") && base_url.is_none() {
        v.err(
            "http.url",
            "uses {base_url} but remediation.base_url is not set",
        );
    }
    for (field, template) in [("url", Some(&url)), ("body", h.body.as_ref())] {
        for name in template
            .map(|t| unknown_placeholders(t))
            .unwrap_or_default()
        {
            v.err(
                &format!("http.{field}"),
                format!(
                    "{{{name}}} is not a placeholder; use {}",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ),
            );
        }
    }
    let mut headers = Vec::new();
    for (name, value) in h.headers.unwrap_or_default() {
        match (value.value, value.file) {
            (Some(x), None) => headers.push((name, HeaderValue::Literal(x))),
            (None, Some(f)) => headers.push((name, HeaderValue::File(f.into()))),
            _ => v.err(
                &format!("http.headers.{name}"),
                "give either `value:` or `file:`",
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
}

fn kubernetes_target(k: KubeActionSpec, v: &mut Validator<'_>) -> Option<Target> {
    match (k.delete_pod.unwrap_or(false), k.annotate_session) {
        (true, None) => Some(Target::Kubernetes(KubeAction::DeletePod)),
        (false, Some(a)) => match (a.key, a.value) {
            (Some(key), Some(value)) if !key.is_empty() => {
                Some(Target::Kubernetes(KubeAction::AnnotateSession {
                    key,
                    value,
                }))
            }
            _ => {
                v.err("kubernetes.annotate_session", "give key and value");
                None
            }
        },
        _ => {
            v.err(
                "kubernetes",
                "give exactly one of: delete_pod: true, annotate_session",
            );
            None
        }
    }
}
