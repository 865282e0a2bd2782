//! Remediation actions: what to call for which finding, and how the call is built.
//!
//! An action is one of three targets: a **signed webhook** to an adapter the platform team
//! writes (a JSON body signed per the Standard Webhooks convention), a **templated HTTP call**
//! straight to the platform's own endpoint (method, URL and body templated from the finding,
//! header values read from files), or a **Kubernetes** change (delete the finding's pod, or
//! annotate its session resource), which needs its own, separate RBAC.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::core::world::Subject;
use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::profile::ProfileId;

/// The actions, by the finding kind they repair. Their names are part of the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    /// execution_on_dead_agent: mark the execution failed, so its user gets an answer.
    FinalizeExecution,
    /// orphaned_suspended_session: spawn a fresh sandbox for the session.
    RespawnSession,
    /// orphaned_suspended_session: mark the session gone, so the next message respawns it.
    MarkSessionGone,
    /// session_active_without_agent: end (or restart) the session.
    FinalizeSession,
    /// leaked_sandbox_pod: delete the pod.
    ReapPod,
}

impl ActionName {
    pub const ALL: [ActionName; 5] = [
        ActionName::FinalizeExecution,
        ActionName::RespawnSession,
        ActionName::MarkSessionGone,
        ActionName::FinalizeSession,
        ActionName::ReapPod,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionName::FinalizeExecution => "finalize_execution",
            ActionName::RespawnSession => "respawn_session",
            ActionName::MarkSessionGone => "mark_session_gone",
            ActionName::FinalizeSession => "finalize_session",
            ActionName::ReapPod => "reap_pod",
        }
    }

    pub fn repairs(self) -> FindingKind {
        match self {
            ActionName::FinalizeExecution => FindingKind::ExecutionOnDeadAgent,
            ActionName::RespawnSession | ActionName::MarkSessionGone => {
                FindingKind::OrphanedSuspendedSession
            }
            ActionName::FinalizeSession => FindingKind::SessionActiveWithoutAgent,
            ActionName::ReapPod => FindingKind::LeakedSandboxPod,
        }
    }

    /// How long a finding must stay open before this action may act on it, by default.
    pub fn default_grace(self) -> Duration {
        match self {
            ActionName::FinalizeExecution => Duration::from_secs(120),
            ActionName::RespawnSession | ActionName::MarkSessionGone => Duration::from_secs(300),
            ActionName::FinalizeSession => Duration::from_secs(300),
            ActionName::ReapPod => Duration::from_secs(1800),
        }
    }
}

/// A header value, or a secret read from a file at each call (so rotations apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Literal(String),
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeAction {
    /// Delete the finding's pod (graceful; the platform's operator may recreate it).
    DeletePod,
    /// Set an annotation on the session's custom resource (e.g. ambient's desired-phase).
    AnnotateSession { key: String, value: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Webhook {
        url: String,
        secret_file: PathBuf,
        ca_file: Option<PathBuf>,
    },
    Http {
        method: String,
        url: String,
        body: Option<String>,
        headers: Vec<(String, HeaderValue)>,
        ca_file: Option<PathBuf>,
    },
    Kubernetes(KubeAction),
}

/// One configured action of one profile.
#[derive(Clone, Debug)]
pub struct Action {
    pub name: ActionName,
    pub profile: ProfileId,
    /// The finding must have been open this long.
    pub grace: Duration,
    /// At most this many calls a minute for this action.
    pub per_minute: u32,
    pub target: Target,
    /// The profile's `remediation.base_url`, substituted for `{base_url}` in HTTP templates.
    pub base_url: Option<String>,
}

/// The same incident always yields the same key: it is derived from the action, the finding's
/// kind and profile, and its subject (the pod incarnation: namespace, name and uid; or the
/// record: kind, namespace and id), never from details that may differ between sightings (the
/// reason, a linked pod) nor from when sandwatch saw it, so a restart or a second replica
/// repeats it exactly.
pub fn idempotency_key(action: ActionName, f: &OpenFinding) -> String {
    let d = &f.finding;
    let mut h = Sha256::new();
    let mut part = |p: &str| {
        h.update(p.as_bytes());
        h.update([0u8]);
    };
    part(action.as_str());
    part(d.kind.as_str());
    part(&d.profile);
    match &f.subject {
        Subject::Pod {
            namespace,
            name,
            uid,
        } => {
            part("pod");
            part(namespace);
            part(name);
            part(&uid.to_string());
        }
        Subject::Record(r) => {
            part(r.kind.as_str());
            part(r.namespace.as_deref().unwrap_or(""));
            part(&r.id);
        }
    }
    let digest = h.finalize();
    format!("sw_{}", hex(&digest[..16]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The webhook body: the action, the finding with its evidence, and the idempotency key.
#[derive(Serialize)]
pub struct Payload<'a> {
    pub action: ActionName,
    pub idempotency_key: &'a str,
    pub dry_run: bool,
    pub finding: crate::model::view::FindingView<'a>,
}

/// Why a remediation call cannot be built from its action and finding.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the webhook secret is not valid base64 after whsec_: {0}")]
    SecretBase64(base64::DecodeError),
    #[error("unusable webhook secret: {0}")]
    SecretKey(String),
    #[error("{{base_url}} is used but the profile sets no remediation.base_url")]
    NoBaseUrl,
    #[error("the finding has no {0} for the {{{0}}} placeholder")]
    NoValue(String),
    #[error(
        "the {name} {value:?} cannot be put in a URL safely (a path segment of it would move up the path)"
    )]
    UnsafeInUrl { name: String, value: String },
}

/// Signs a webhook per Standard Webhooks: `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body")).
/// A `whsec_` secret is base64 after its prefix; any other secret is used as its bytes.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, CallError> {
    let secret = secret.trim();
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(CallError::SecretBase64)?,
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
        .map_err(|e| CallError::SecretKey(e.to_string()))?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!("v1,{sig}"))
}

/// Where a template's values land, and so how they are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// A URL (path segment or query value): percent-encoded, dots included; `""`, `.` and
    /// `..` are refused, since URL parsers turn such a path segment, even encoded, into a
    /// move up the path (`/executions/../cancel` is `/cancel`).
    Url,
    /// Inside a JSON string.
    Json,
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 9] = [
    "execution",
    "session",
    "namespace",
    "pod",
    "sandbox",
    "profile",
    "kind",
    "idempotency_key",
    "base_url",
];

/// The `{name}` placeholders a template uses that are not [`PLACEHOLDERS`] (JSON braces,
/// which hold a quote or a space, are not placeholders).
pub fn unknown_placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        let word = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if word && !PLACEHOLDERS.contains(&name) {
            out.push(name.to_string());
        }
        rest = &rest[start + 1..];
    }
    out
}

/// Fills `{execution}`, `{session}`, `{namespace}`, `{pod}`, `{sandbox}`, `{profile}`,
/// `{kind}`, `{idempotency_key}` and `{base_url}`, each value encoded for where it lands.
/// A placeholder the finding has no value for, or a value that cannot be encoded safely, is
/// an error.
pub fn render(
    template: &str,
    f: &OpenFinding,
    key: &str,
    base_url: Option<&str>,
    escape: Escape,
) -> Result<String, CallError> {
    let d = &f.finding;
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &rest[start + 1..start + len];
        let value = match name {
            "execution" => d.execution.as_deref(),
            "session" => d.session.as_deref(),
            "namespace" => d.namespace.as_deref(),
            "pod" => d.pod.as_deref(),
            "sandbox" => d.sandbox.as_deref(),
            "profile" => Some(&*d.profile),
            "kind" => Some(d.kind.as_str()),
            "idempotency_key" => Some(key),
            "base_url" => {
                // The base URL is part of the template's shape, not data: not escaped.
                let Some(b) = base_url else {
                    return Err(CallError::NoBaseUrl);
                };
                out.push_str(b.trim_end_matches('/'));
                rest = &rest[start + len + 1..];
                continue;
            }
            _ => {
                // Not a placeholder (e.g. JSON braces): keep it as written.
                out.push('{');
                rest = &rest[start + 1..];
                continue;
            }
        };
        let Some(value) = value else {
            return Err(CallError::NoValue(name.to_string()));
        };
        match escape {
            Escape::Url if matches!(value, "" | "." | "..") => {
                return Err(CallError::UnsafeInUrl {
                    name: name.to_string(),
                    value: value.to_string(),
                });
            }
            Escape::Url => out.push_str(&url_escape(value)),
            Escape::Json => out.push_str(&json_escape(value)),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Percent-encodes a value for a URL path segment or query value: everything but letters,
/// digits, `-`, `_` and `~` (dots too, so that no value reads as `.` or `..`).
pub fn url_escape(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escapes a value for inside a JSON string.
pub fn json_escape(v: &str) -> String {
    let quoted = serde_json::to_string(v).unwrap_or_default();
    quoted[1..quoted.len().saturating_sub(1)].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::world::{RecordKey, Uid};
    use crate::model::finding::Finding;
    use crate::model::record::RecordKind;
    use crate::util::time::Ts;

    fn finding() -> OpenFinding {
        OpenFinding {
            id: 7,
            finding: Finding {
                kind: FindingKind::ExecutionOnDeadAgent,
                profile: "sandbox-api".into(),
                namespace: Some("centaur".into()),
                pod: Some("sandbox-1".into()),
                session: Some("slack:C0/1 x".into()),
                execution: Some("exe_1".into()),
                sandbox: None,
                reason: "OOMKilled".into(),
                container: Some("sandbox".into()),
                exit_code: Some(137),
                state: Some("retry_wait".into()),
                pod_uid: Some("u-1".into()),
            },
            opened_at: Ts(1000),
            evidence_at: Ts(900),
            retries_after_death: 3,
            seen_live: true,
            subject: Subject::Record(RecordKey {
                kind: RecordKind::Execution,
                profile: ProfileId(0),
                namespace: None,
                id: "exe_1".into(),
            }),
        }
    }

    #[test]
    fn keys_are_stable_across_sightings_and_differ_between_incidents() {
        let key = |f: &OpenFinding| idempotency_key(ActionName::FinalizeExecution, f);
        let a = finding();
        // Another sighting of the same incident, e.g. after a restart once the pod is gone.
        let mut b = finding();
        b.id = 99;
        b.opened_at = Ts(5_000_000);
        b.retries_after_death = 40;
        b.finding.state = Some("running".into());
        b.finding.reason = "PodGone".into();
        b.finding.pod_uid = None;
        b.finding.namespace = None;
        assert_eq!(key(&a), key(&b));
        assert!(key(&a).starts_with("sw_"));
        // Another execution.
        let mut c = finding();
        c.subject = Subject::Record(RecordKey {
            kind: RecordKind::Execution,
            profile: ProfileId(0),
            namespace: None,
            id: "exe_2".into(),
        });
        assert_ne!(key(&a), key(&c));
        // A pod and its replacement of the same name are two incidents.
        let pod = |uid: &str| {
            let mut f = finding();
            f.finding.kind = FindingKind::AgentTerminatedPodRunning;
            f.subject = Subject::Pod {
                namespace: "centaur".into(),
                name: "sandbox-1".into(),
                uid: Uid::parse(uid),
            };
            f
        };
        assert_ne!(key(&pod("u-1")), key(&pod("u-2")));
        assert_eq!(key(&pod("u-1")), key(&pod("u-1")));
    }

    #[test]
    fn templates_escape_for_where_values_land() {
        let f = finding();
        let url = render(
            "{base_url}/agent/status?key={session}",
            &f,
            "k",
            Some("https://api.example/"),
            Escape::Url,
        )
        .unwrap();
        assert_eq!(
            url,
            "https://api.example/agent/status?key=slack%3AC0%2F1%20x"
        );
        let body = render(
            r#"{"thread_key": "{session}", "why": "{kind}"}"#,
            &f,
            "k",
            None,
            Escape::Json,
        )
        .unwrap();
        assert_eq!(
            body,
            r#"{"thread_key": "slack:C0/1 x", "why": "execution_on_dead_agent"}"#
        );
        let e = render("/x/{sandbox}", &f, "k", None, Escape::Url)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no sandbox"), "{e}");
        // An id that would move up the path is refused; dots inside a value are encoded.
        let mut dots = finding();
        dots.finding.execution = Some("..".into());
        let e = render(
            "/agent/executions/{execution}/cancel",
            &dots,
            "k",
            None,
            Escape::Url,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be put in a URL"), "{e}");
        dots.finding.execution = Some("a.b".into());
        assert_eq!(
            render("/e/{execution}", &dots, "k", None, Escape::Url).unwrap(),
            "/e/a%2Eb"
        );
        assert_eq!(
            unknown_placeholders(r#"{base_url}/x/{exection}?k={session} {"a": "{kind}"}"#),
            ["exection"]
        );
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example from the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
