//! The config's own tests: presets, selectors, errors, overrides.

use super::*;
use crate::remediation::action::{HeaderValue, Target};
use std::time::Duration;

#[test]
fn every_preset_is_valid() {
    for (name, _, _) in PRESETS {
        let p = preset(name).unwrap_or_else(|e| panic!("preset {name}: {e}"));
        assert_eq!(
            &*p.profiles.get(crate::model::profile::ProfileId(0)).name,
            *name
        );
    }
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
    let errs = load(yaml).unwrap_err().to_string();
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
    let e = load("profiles:\n  - name: a\n    pods:\n      selektor: x\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("profiles[0].pods"), "{e}");
    assert!(e.contains("unknown field `selektor`"), "{e}");
    let e = load("profiles:\n  - name: a\n    pods:\n      agent_containers: 5\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("profiles[0].pods.agent_containers"), "{e}");
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn the_keys_of_records_are_its_settings_and_the_sources_listed() {
    let e = load("profiles:\n  - preset: generic\n    records:\n      postgress: {}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("profiles[0].records.postgress"), "{e}");
    assert!(
        e.contains("expected one of default_namespace, namespaced_ids, postgres, ingest"),
        "{e}"
    );
    let e = load("profiles:\n  - preset: generic\n    records:\n      postgres:\n        poll_interval: [1]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("profiles[0].records.postgres.poll_interval"),
        "{e}"
    );
    assert!(e.contains("line 5"), "{e}");
    // `null` removes a preset's source.
    let c = load("profiles:\n  - preset: offload-modal\n    records:\n      default_namespace: x\n      ingest: null\n").unwrap();
    assert!(c.records(ProfileId(0)).ingest.is_none());
    assert!(c.records(ProfileId(0)).each().is_empty());
    let c = preset("offload-modal").unwrap();
    assert_eq!(c.records(ProfileId(0)).each().len(), 1);
}

#[test]
fn a_profile_overrides_a_preset_field_by_field() {
    let p = load(
            "profiles:\n  - preset: sandbox-api\n    name: prod\n    pods:\n      namespaces: [agents]\n    grace:\n      absence: 5m\n",
        )
        .unwrap();
    let prof = p.profiles.get(crate::model::profile::ProfileId(0));
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
    let errs = load(yaml).unwrap_err().to_string();
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
    let errs = load(yaml).unwrap_err().to_string();
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
    let p = load(yaml).unwrap();
    let a = &p.remediation.actions[0];
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

#[test]
fn every_preset_prints_as_a_config_file_that_loads_as_the_preset() {
    for (name, _, _) in PRESETS {
        let text = preset_file(name).unwrap();
        let file = load(&text).unwrap_or_else(|e| panic!("{name}:\n{e}\n{text}"));
        let preset = preset(name).unwrap();
        assert_eq!(file.profiles.names(), preset.profiles.names(), "{name}");
        assert_eq!(
            format!("{:?}", file.profiles.get(ProfileId(0))),
            format!("{:?}", preset.profiles.get(ProfileId(0))),
            "{name}"
        );
    }
    assert!(preset_file("nope").is_none());
}

/// What the replay's decoders keep of a pod's labels and annotations is all any profile
/// reads: every preset picks the same profile and reads the same session and execution ids
/// from every pod of the examples, extra labels and annotations added, kept whole or not.
#[test]
fn the_kept_labels_and_annotations_are_all_a_preset_reads() {
    use crate::model::kubernetes::{Object, keeping_only};
    use crate::sources::replay::{Decoded, Splitter, decode};
    use std::sync::Arc;
    let mut pods: Vec<serde_json::Value> = Vec::new();
    for file in [
        "01-agent-oomkilled-sidecar-keeps-pod-running.json",
        "02-suspended-sessions-orphaned-by-bare-pod-backend.json",
        "03-runner-oom-operator-misses-container-termination.json",
        "04-retries-against-dead-modal-sandbox.json",
    ] {
        let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap();
        Splitter::new(&bytes[..])
            .for_each(|b, _| {
                if let Ok(Decoded::Watch { object, .. }) = decode(b) {
                    let mut v = serde_json::to_value(&*object).unwrap();
                    let meta = &mut v["metadata"];
                    for what in ["labels", "annotations"] {
                        if !meta[what].is_object() {
                            meta[what] = serde_json::json!({});
                        }
                        meta[what]["example.com/extra"] = "x".into();
                    }
                    pods.push(v);
                }
            })
            .unwrap();
    }
    // The benchmark's pod, as the API server writes one (which the generic preset takes).
    let template = include_str!("../../../benches/pod-template.json")
        .replace("{AGENT_STATE}", r#"{"running":{}}"#);
    let mut bench_pod: serde_json::Value = serde_json::from_str(&template).unwrap();
    pods.push(bench_pod["object"].take());
    assert!(pods.len() > 10, "{}", pods.len());
    for (name, _, _) in PRESETS {
        let profiles = preset(name).unwrap().profiles;
        let keys = Arc::new(profiles.pod_meta_keys());
        let mut taken = 0;
        for pod in &pods {
            let text = pod.to_string();
            let whole: Object = serde_json::from_str(&text).unwrap();
            let kept: Object = keeping_only(keys.clone(), || serde_json::from_str(&text)).unwrap();
            let reads = |o: &Object| {
                let m = &o.metadata;
                let ns = m.namespace.as_deref().unwrap_or_default();
                profiles.for_pod(ns, m.labels.as_ref()).map(|id| {
                    let p = profiles.get(id).pods.as_ref().unwrap();
                    let read = |k: &Option<crate::model::profile::MetaKey>| {
                        k.as_ref()
                            .and_then(|k| k.read(m.labels.as_ref(), m.annotations.as_ref()))
                            .map(str::to_string)
                    };
                    (id, read(&p.session_key), read(&p.execution_key))
                })
            };
            assert_eq!(reads(&whole), reads(&kept), "preset {name}, pod {text}");
            taken += usize::from(reads(&kept).is_some());
            let labels = kept.metadata.labels.unwrap_or_default();
            assert!(!labels.contains_key("example.com/extra"), "{labels:?}");
        }
        let takes_pods = profiles.iter().any(|(_, p)| p.pods.is_some());
        assert_eq!(taken > 0, takes_pods, "preset {name}: {taken} pods taken");
    }
}
