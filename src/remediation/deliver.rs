//! Making one remediation call: a signed webhook, a templated HTTP call, or a Kubernetes
//! change, and classifying what came back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::ApiResource;

use crate::model::finding::OpenFinding;
use crate::model::profile::{Profile, ResourceRole};
use crate::model::view::FindingView;
use crate::remediation::action::{
    Action, Escape, HeaderValue, KubeAction, Payload, Target, render, sign,
};
use crate::util::time::Ts;

/// What a call came to.
#[derive(Debug)]
pub enum Outcome {
    /// Dry-run: what it would have done.
    DryRun(String),
    /// A backtest: what it would have done, taken as done and effective (the recording
    /// cannot show what the call would have changed).
    Rehearsed(String),
    /// 2xx (or the Kubernetes change applied).
    Success(u16),
    /// 4xx other than 408 and 429: the receiver will not do it; not retried.
    Refused(u16, String),
    /// 408, 429, 5xx, a timeout or a connection error; with Retry-After when given.
    Retry(String, Option<Duration>),
    /// The call could not be built (a template value missing, a secret file unreadable).
    Invalid(String),
}

/// An HTTP client for the receivers could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the remediation HTTP client: {0}")]
pub struct DelivererError(String);

/// What makes the calls: the controller's seam between deciding and calling. Live, a
/// [`Deliverer`]; in a backtest, a [`Rehearsal`] that calls nothing.
pub trait Deliver: Send + Sync {
    /// Makes (or, in dry-run, describes) the call of one action for one finding.
    fn deliver<'a>(
        &'a self,
        action: &'a Action,
        profile: &'a Profile,
        f: &'a OpenFinding,
        key: &'a str,
        live: bool,
    ) -> impl Future<Output = Outcome> + Send + 'a;
}

impl Deliver for Deliverer {
    fn deliver<'a>(
        &'a self,
        action: &'a Action,
        profile: &'a Profile,
        f: &'a OpenFinding,
        key: &'a str,
        live: bool,
    ) -> impl Future<Output = Outcome> + Send + 'a {
        Deliverer::deliver(self, action, profile, f, key, live)
    }
}

/// A backtest's deliverer: it renders each call exactly as live mode would (its method and
/// URL, webhook or Kubernetes change) and makes none, answering as if it had succeeded.
pub struct Rehearsal(Deliverer);

impl Rehearsal {
    pub fn new(actions: &[Action]) -> Result<Rehearsal, DelivererError> {
        Ok(Rehearsal(Deliverer::new(
            actions,
            Duration::from_secs(1),
            None,
        )?))
    }
}

impl Deliver for Rehearsal {
    async fn deliver(
        &self,
        action: &Action,
        profile: &Profile,
        f: &OpenFinding,
        key: &str,
        _live: bool,
    ) -> Outcome {
        match self.0.deliver(action, profile, f, key, false).await {
            Outcome::DryRun(what) => Outcome::Rehearsed(what),
            other => other,
        }
    }
}

/// Holds the HTTP clients (one per CA bundle) and the Kubernetes client.
pub struct Deliverer {
    http: HashMap<Option<PathBuf>, reqwest::Client>,
    timeout: Duration,
    kube: Option<kube::Client>,
}

/// The templates of an HTTP action's request, as its config gives them.
struct HttpRequest<'a> {
    method: &'a str,
    url: &'a str,
    body: Option<&'a str>,
    headers: &'a [(String, HeaderValue)],
    ca_file: &'a Option<PathBuf>,
}

impl Deliverer {
    pub fn new(
        actions: &[Action],
        timeout: Duration,
        kube: Option<kube::Client>,
    ) -> Result<Deliverer, DelivererError> {
        let mut http = HashMap::new();
        for a in actions {
            let ca = match &a.target {
                Target::Webhook { ca_file, .. } | Target::Http { ca_file, .. } => ca_file.clone(),
                Target::Kubernetes(_) => continue,
            };
            if http.contains_key(&ca) {
                continue;
            }
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(crate::util::tls::client_config(ca.as_deref()))
                .timeout(timeout)
                .user_agent(concat!("sandwatch/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| DelivererError(e.to_string()))?;
            http.insert(ca, client);
        }
        Ok(Deliverer {
            http,
            timeout,
            kube,
        })
    }

    /// Makes (or, in dry-run, describes) the call of one action for one finding.
    pub async fn deliver(
        &self,
        action: &Action,
        profile: &Profile,
        f: &OpenFinding,
        key: &str,
        live: bool,
    ) -> Outcome {
        match &action.target {
            Target::Webhook {
                url,
                secret_file,
                ca_file,
            } => {
                self.webhook(action, (url, secret_file, ca_file), f, key, live)
                    .await
            }
            Target::Http {
                method,
                url,
                body,
                headers,
                ca_file,
            } => {
                let request = HttpRequest {
                    method,
                    url,
                    body: body.as_deref(),
                    headers,
                    ca_file,
                };
                self.http(action, request, f, key, live).await
            }
            Target::Kubernetes(k) => self.kubernetes(k, profile, f, live).await,
        }
    }

    /// A signed Standard Webhooks POST of the finding.
    async fn webhook(
        &self,
        action: &Action,
        (url, secret_file, ca_file): (&str, &PathBuf, &Option<PathBuf>),
        f: &OpenFinding,
        key: &str,
        live: bool,
    ) -> Outcome {
        let payload = Payload {
            action: action.name,
            idempotency_key: key,
            dry_run: !live,
            finding: FindingView::new(f, Ts::now()),
        };
        let body = match serde_json::to_vec(&payload) {
            Ok(b) => b,
            Err(e) => return Outcome::Invalid(format!("encoding the payload: {e}")),
        };
        if !live {
            return Outcome::DryRun(format!("POST a signed webhook to {url}"));
        }
        let secret = match std::fs::read_to_string(secret_file) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Invalid(format!(
                    "reading the webhook secret {}: {e}",
                    secret_file.display()
                ));
            }
        };
        let timestamp = Ts::now().0 / 1000;
        let signature = match sign(&secret, key, timestamp, &body) {
            Ok(s) => s,
            Err(e) => return Outcome::Invalid(e.to_string()),
        };
        let request = self
            .client(ca_file)
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", key)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("idempotency-key", key)
            .body(body);
        send(request).await
    }

    /// A request to the platform's API, from the action's templates.
    async fn http(
        &self,
        action: &Action,
        HttpRequest {
            method,
            url,
            body,
            headers,
            ca_file,
        }: HttpRequest<'_>,
        f: &OpenFinding,
        key: &str,
        live: bool,
    ) -> Outcome {
        let base = action.base_url.as_deref();
        let url = match render(url, f, key, base, Escape::Url) {
            Ok(u) => u,
            Err(e) => return Outcome::Invalid(format!("url: {e}")),
        };
        let body = match body
            .map(|b| render(b, f, key, base, Escape::Json))
            .transpose()
        {
            Ok(b) => b,
            Err(e) => return Outcome::Invalid(format!("body: {e}")),
        };
        if !live {
            return Outcome::DryRun(format!("{method} {url}"));
        }
        let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return Outcome::Invalid(format!("method {method:?}"));
        };
        let mut request = self
            .client(ca_file)
            .request(m, &url)
            .header("idempotency-key", key);
        for (name, value) in headers {
            let value = match value {
                HeaderValue::Literal(v) => v.clone(),
                HeaderValue::File(path) => match std::fs::read_to_string(path) {
                    Ok(v) => v.trim().to_string(),
                    Err(e) => {
                        return Outcome::Invalid(format!(
                            "reading header {name} from {}: {e}",
                            path.display()
                        ));
                    }
                },
            };
            request = request.header(name.as_str(), value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        send(request).await
    }

    fn client(&self, ca_file: &Option<PathBuf>) -> reqwest::Client {
        self.http.get(ca_file).cloned().unwrap_or_default()
    }

    async fn kubernetes(
        &self,
        k: &KubeAction,
        profile: &Profile,
        f: &OpenFinding,
        live: bool,
    ) -> Outcome {
        let d = &f.finding;
        let Some(ns) = d.namespace.as_deref() else {
            return Outcome::Invalid("the finding has no namespace".into());
        };
        match k {
            KubeAction::DeletePod => {
                let Some(pod) = d.pod.as_deref() else {
                    return Outcome::Invalid("the finding names no pod".into());
                };
                // Only the pod the finding is about: a replacement of the same name is left
                // alone (the API server answers 409 Conflict to the uid precondition).
                let Some(uid) = d.pod_uid.as_deref() else {
                    return Outcome::Invalid(format!(
                        "the finding does not know pod {ns}/{pod}'s uid; not deleting by name alone"
                    ));
                };
                if !live {
                    return Outcome::DryRun(format!("delete pod {ns}/{pod} (uid {uid})"));
                }
                let Some(client) = self.kube.clone() else {
                    return Outcome::Invalid("no Kubernetes client".into());
                };
                let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, ns);
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.to_string()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let result = tokio::time::timeout(self.timeout, api.delete(pod, &params)).await;
                kube_outcome(result)
            }
            KubeAction::AnnotateSession { key, value } => {
                let Some(session) = d.session.as_deref() else {
                    return Outcome::Invalid("the finding names no session".into());
                };
                let Some(cr) = profile
                    .custom_resources
                    .iter()
                    .find(|c| c.role == ResourceRole::Session)
                else {
                    return Outcome::Invalid(
                        "the profile has no session custom resource to annotate".into(),
                    );
                };
                if !live {
                    return Outcome::DryRun(format!(
                        "annotate {}/{session} in {ns} with {key}={value}",
                        cr.kind
                    ));
                }
                let Some(client) = self.kube.clone() else {
                    return Outcome::Invalid("no Kubernetes client".into());
                };
                let ar = ApiResource {
                    group: cr.group.clone(),
                    version: cr.version.clone(),
                    api_version: cr.api_version(),
                    kind: cr.kind.clone(),
                    plural: cr.plural.clone(),
                };
                let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
                let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
                let result = tokio::time::timeout(
                    self.timeout,
                    api.patch(session, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await;
                kube_outcome(result)
            }
        }
    }
}

fn kube_outcome<T>(result: Result<Result<T, kube::Error>, tokio::time::error::Elapsed>) -> Outcome {
    match result {
        Err(_) => Outcome::Retry("timed out".into(), None),
        Ok(Ok(_)) => Outcome::Success(200),
        // Already gone: what the action wanted.
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Outcome::Success(404),
        Ok(Err(kube::Error::Api(s))) if s.code == 408 || s.code == 429 || s.code >= 500 => {
            Outcome::Retry(format!("{} {}", s.code, s.message), None)
        }
        Ok(Err(kube::Error::Api(s))) => Outcome::Refused(s.code, s.message.clone()),
        Ok(Err(e)) => Outcome::Retry(e.to_string(), None),
    }
}

async fn send(request: reqwest::RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::Retry("timed out".into(), None),
        Err(e) => return Outcome::Retry(format!("{e}"), None),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let body = read_at_most(response, MAX_ERROR_BODY).await;
    match status {
        200..=299 => Outcome::Success(status),
        408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}: {body}"), retry_after),
        _ => Outcome::Refused(status, body),
    }
}

/// At most this much of a receiver's answer is read (it goes into a log line).
const MAX_ERROR_BODY: usize = 4096;

/// The start of a response body, at most `limit` bytes of it; the rest is never read.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())])
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    crate::util::text::clip(&text).chars().take(300).collect()
}

/// `Retry-After` as seconds, or as an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(v.trim()).ok()?.timestamp();
    let secs = when.as_second() - jiff::Timestamp::now().as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
