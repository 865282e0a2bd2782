//! The Kustomize manifests under deploy/: they render, validate against the Kubernetes schemas
//! offline, are hardened, carry the alerts and dashboard unchanged, and grant exactly the API
//! calls the daemon makes.

mod common;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use common::{C, pod};
use sandwatch::remediation::lease::Elector;
use support::apiserver::TestApiServer;
use support::daemon::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize DIR`, as documents.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is needed for `kubectl kustomize`");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_str_multiple::<Value, _>(&text).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// kubernetes-validate, installed by the test command next to the Python it names.
fn validate(docs_dir: &Path, file: &str) {
    let python = std::env::var("SANDWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let bin = Path::new(&python).with_file_name("kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test installs kubernetes-validate from PyPI",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(["--strict", "-k", "1.33.0"])
        .arg(docs_dir.join(file))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{file} does not validate:\n{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = root()
        .join("target")
        .join(format!("deploy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_rendered(dir: &Path, file: &str, kustomization: &Path) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(kustomization)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.join(file), out.stdout).unwrap();
}

#[test]
fn both_kustomizations_render_and_validate_against_the_kubernetes_schemas() {
    let dir = scratch("validate");
    write_rendered(&dir, "base.yaml", &root().join("deploy"));
    write_rendered(
        &dir,
        "kube-prometheus-stack.yaml",
        &root().join("deploy/kube-prometheus-stack"),
    );
    validate(&dir, "base.yaml");
    validate(&dir, "kube-prometheus-stack.yaml");
    // The Kubernetes-remediation component renders on top of the base too.
    let with = dir.join("with-component");
    std::fs::create_dir_all(&with).unwrap();
    std::fs::write(
        with.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../../deploy/base\ncomponents:\n  - ../../../deploy/components/remediation-kubernetes\n",
    )
    .unwrap();
    write_rendered(&dir, "with-component.yaml", &with);
    validate(&dir, "with-component.yaml");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_deployment_is_hardened_and_probed() {
    let docs = render(&root().join("deploy"));
    let d = find(&docs, "Deployment", "sandwatch");
    assert_eq!(d["metadata"]["namespace"], "sandwatch");
    assert_eq!(
        d["spec"]["replicas"], 2,
        "two replicas; the Lease decides who remediates"
    );
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "sandwatch");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    // Secrets are referenced, never inline.
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "no Secret in the manifests"
    );
    let env = c["env"].as_array().unwrap();
    let db = env
        .iter()
        .find(|e| e["name"] == "SANDWATCH_DATABASE_URL")
        .unwrap();
    assert_eq!(
        db["valueFrom"]["secretKeyRef"]["name"],
        "sandwatch-database"
    );
    let vols = pod["volumes"].as_array().unwrap();
    for secret in ["sandwatch-webhook", "sandwatch-ingest"] {
        assert!(
            vols.iter().any(|v| v["secret"]["secretName"] == secret),
            "{secret}"
        );
    }
    // The PDB keeps one replica through voluntary disruptions; the Service exposes metrics.
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "sandwatch")["spec"]["minAvailable"],
        1
    );
    assert_eq!(
        find(&docs, "Service", "sandwatch")["spec"]["ports"][0]["port"],
        8080
    );
    // The ConfigMap's config is valid.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let config = cm["data"]["sandwatch.yaml"].as_str().unwrap();
    sandwatch::app::config::load(config)
        .unwrap_or_else(|e| panic!("the shipped config is invalid: {e}"));
}

#[test]
fn the_prometheus_rule_and_dashboard_are_exactly_the_repositorys() {
    let docs = render(&root().join("deploy/kube-prometheus-stack"));
    let rule = find(&docs, "PrometheusRule", "sandwatch");
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("alerts/sandwatch.rules.yml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kube-prometheus-stack drifted from alerts/: run scripts/sync-deploy"
    );
    let cm = find(&docs, "ConfigMap", "sandwatch-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["sandwatch-dashboard.json"].as_str().unwrap()).unwrap();
    let ours: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/sandwatch.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        dashboard, ours,
        "deploy/kube-prometheus-stack drifted from dashboards/: run scripts/sync-deploy"
    );
    let sm = find(&docs, "ServiceMonitor", "sandwatch");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
}

/// (apiGroup, resource, verb, namespace-scoped-to)
type Grant = (String, String, String, Option<String>);

fn grants(docs: &[Value]) -> Vec<Grant> {
    let mut out = Vec::new();
    for d in docs {
        let scope = match d["kind"].as_str() {
            Some("ClusterRole") => None,
            Some("Role") => Some(d["metadata"]["namespace"].as_str().unwrap().to_string()),
            _ => continue,
        };
        for rule in d["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.push((
                            g.as_str().unwrap().into(),
                            r.as_str().unwrap().into(),
                            v.as_str().unwrap().into(),
                            scope.clone(),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rbac_grants_exactly_the_api_calls_the_daemon_makes() {
    // Every kind of call: pod and custom-resource watches, leader election, and both
    // Kubernetes remediation actions.
    let server = TestApiServer::start().await;
    server.register(
        "vteam.ambient-code",
        "v1alpha1",
        "agenticsessions",
        "AgenticSession",
        true,
    );
    server.register("agents.x-k8s.io", "v1alpha1", "sandboxes", "Sandbox", true);
    server.create(json!({
        "apiVersion": "vteam.ambient-code/v1alpha1", "kind": "AgenticSession",
        "metadata": {"name": "s-1", "namespace": "project-a"}, "spec": {}, "status": {"phase": "Running"}
    }));
    let leaked = pod("project-a", "s-gone-runner")
        .label("agentic-session", "s-gone")
        .label("app", "ambient-code-runner")
        .container("ambient-code-runner", C::Running(1));
    let mut v = leaked.json();
    v["metadata"].as_object_mut().unwrap().remove("uid");
    server.create(v);
    let yaml = r#"
profiles:
  - preset: ambient
    grace:
      absence: 0s
      leaked_pod: 0s
    remediation:
      actions:
        finalize_session:
          enabled: true
          grace: 0s
          kubernetes: { annotate_session: { key: ambient-code.io/desired-phase, value: Stopped } }
        reap_pod:
          grace: 0s
          kubernetes: { delete_pod: true }
  - preset: sandbox-api
    name: centaur-crd
    sessions:
      resume_from: custom_resource
    custom_resources:
      - api_version: agents.x-k8s.io/v1alpha1
        kind: Sandbox
        plural: sandboxes
        role: resume_target
remediation:
  mode: live
  timeout: 500ms
"#;
    let c = sandwatch::app::config::load(yaml).unwrap();
    let d = start_with(&server, c, |s| {
        s.leader_election = Some(Elector {
            retry_period: Duration::from_millis(200),
            ..Elector::new("sandwatch-remediation", "sandwatch", "replica-a")
        });
    })
    .await;
    wait_for(
        Duration::from_secs(15),
        "both remediations and a lease renewal",
        || async {
            let r = server.requests();
            let did = |verb: &str, resource: &str| {
                r.iter().any(|q| q.verb == verb && q.resource == resource)
            };
            did("patch", "agenticsessions") && did("delete", "pods") && did("update", "leases")
        },
    )
    .await;
    d.shutdown().await;

    let mut docs = render(&root().join("deploy"));
    // The Kubernetes-remediation component's role, which the actions above need.
    let component: Vec<Value> = serde_saphyr::from_str_multiple::<Value, _>(
        &std::fs::read_to_string(root().join("deploy/components/remediation-kubernetes/rbac.yaml"))
            .unwrap(),
    )
    .unwrap();
    docs.extend(component);
    let granted = grants(&docs);

    let calls: BTreeSet<(String, String, String, Option<String>)> = server
        .requests()
        .into_iter()
        .map(|r| {
            (
                r.group.clone(),
                r.resource.clone(),
                r.verb.clone(),
                r.namespace.clone(),
            )
        })
        .collect();
    let mut used = BTreeSet::new();
    for (group, resource, verb, ns) in &calls {
        let grant = granted.iter().find(|(g, r, v, scope)| {
            g == group
                && r == resource
                && v == verb
                && scope.as_ref().is_none_or(|s| Some(s) == ns.as_ref())
        });
        let Some(grant) = grant else {
            panic!(
                "the daemon called {verb} {group}/{resource} in {ns:?}, which the manifests do not grant"
            );
        };
        used.insert(grant.clone());
    }
    let unused: Vec<&Grant> = granted.iter().filter(|g| !used.contains(*g)).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
}

#[test]
fn every_file_a_preset_reads_is_where_the_deployment_mounts_its_secrets() {
    let docs = render(&root().join("deploy"));
    let deployment = find(&docs, "Deployment", "sandwatch");
    let mounts: Vec<String> =
        deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .collect();
    let mut checked = 0;
    for (name, _, _) in sandwatch::app::config::PRESETS {
        // Every action of the preset enabled, as a user would turn them on.
        let yaml = format!(
            "profiles:\n  - preset: {name}\n    remediation:\n      base_url: https://api.internal\n      actions:\n        finalize_execution: {{ enabled: true }}\n        mark_session_gone: {{ enabled: true }}\n        finalize_session: {{ enabled: true }}\n"
        );
        let Ok(profiles) = sandwatch::app::config::load(&yaml) else {
            continue;
        };
        for w in sandwatch::app::config::warnings(&profiles) {
            let Some(path) = w.message.split(" is not readable here").next() else {
                continue;
            };
            if !w.message.contains(" is not readable here") {
                continue;
            }
            checked += 1;
            assert!(
                mounts.iter().any(|m| path.starts_with(&format!("{m}/"))),
                "preset {name} reads {path} ({}), which no volume of the Deployment mounts: {mounts:?}",
                w.field
            );
        }
    }
    assert!(
        checked >= 3,
        "the sandbox-api preset reads its API key from a file"
    );
    // A provider of pushed records reaches every replica, ready or not.
    let ingest = find(&docs, "Service", "sandwatch-ingest");
    assert_eq!(ingest["spec"]["clusterIP"], "None", "headless");
    assert_eq!(ingest["spec"]["publishNotReadyAddresses"], true);
}

#[test]
fn every_rule_names_a_shipped_alert_with_a_runbook() {
    let rules = std::fs::read_to_string(root().join("alerts/sandwatch.rules.yml")).unwrap();
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    for rule in sandwatch::core::rules::ALL {
        let s = rule.series();
        let alert = format!("- alert: {}\n", s.alert);
        let at = rules
            .find(&alert)
            .unwrap_or_else(|| panic!("{}: no alert {} in alerts/", rule.kind(), s.alert));
        let body = &rules[at + alert.len()..];
        let body = &body[..body.find("- alert:").unwrap_or(body.len())];
        assert!(
            body.contains(s.name),
            "{}: alert {} does not read {}",
            rule.kind(),
            s.alert,
            s.name
        );
        assert!(
            runbooks.contains(&format!("\n## {}\n", s.alert)),
            "{}: docs/runbooks.md has no section {}",
            rule.kind(),
            s.alert
        );
    }
}
