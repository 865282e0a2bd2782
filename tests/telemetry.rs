//! Traces over OTLP: a real OTLP/HTTP receiver on loopback decodes the protobuf sandwatch's
//! exporter sends, and the spans, their attributes and their parent/child links are checked.

mod common;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use sandwatch::app::telemetry::{LogFormat, Telemetry, Traces};
use support::apiserver::TestApiServer;
use support::daemon::*;
use support::receiver::Receiver;

type Spans = Arc<Mutex<Vec<Span>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf trace export");
    let mut all = spans.lock().unwrap();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name");
        assert!(
            matches!(service.and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref()), Some(Any::StringValue(s)) if s == "sandwatch")
        );
        for ss in rs.scope_spans {
            all.extend(ss.spans);
        }
    }
    ""
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            Any::DoubleValue(d) => d.to_string(),
            Any::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

#[test]
fn spans_for_source_syncs_findings_and_their_remediations_reach_an_otlp_receiver() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spans: Spans = Arc::default();
    let url = rt.block_on(async {
        let app = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    let telemetry = Telemetry::init(LogFormat::Json, Traces::To(url)).unwrap();

    rt.block_on(async {
        let server = TestApiServer::start().await;
        let receiver = Receiver::start().await;
        let yaml = format!(
            r#"
profiles:
  - preset: generic
    records:
      ingest:
        kinds: [execution, sandbox]
    remediation:
      actions:
        finalize_execution:
          grace: 0s
          http:
            method: POST
            url: "{}/executions/{{execution}}/fail"
remediation:
  mode: live
"#,
            receiver.url
        );
        let c = sandwatch::app::config::load(&yaml).unwrap();
        let d = start_with(&server, c, |s| {
            s.ingest_token = Some("t".into());
        })
        .await;
        push_snapshot(&d, "t", &[]).await;
        wait_ready(&d, true).await;
        let post = |body: String| {
            let addr = d.addr;
            async move {
                reqwest::Client::new().post(format!("http://{addr}/api/v1/records")).bearer_auth("t").body(body).send().await.unwrap()
            }
        };
        post(json!([{"kind":"sandbox","id":"sb-1","state":"failure"},{"kind":"execution","id":"run-7","sandbox":"sb-1","state":"running"}]).to_string()).await;
        wait_for(Duration::from_secs(5), "the remediation", || async { receiver.count() == 1 }).await;
        post(json!([{"kind":"execution","id":"run-7","sandbox":"sb-1","state":"failed"}]).to_string()).await;
        wait_for(Duration::from_secs(5), "the resolution", || async { get(&d, "/api/v1/findings").await.1["count"] == 0 }).await;
        d.shutdown().await;
    });
    telemetry.flush();
    rt.block_on(async {
        wait_for(Duration::from_secs(10), "the spans", || async {
            let s = spans.lock().unwrap();
            ["source.sync", "finding", "remediation"]
                .iter()
                .all(|n| s.iter().any(|x| x.name == *n))
        })
        .await;
    });
    let all = spans.lock().unwrap().clone();
    let sync = all.iter().find(|s| s.name == "source.sync").unwrap();
    assert_eq!(attr(sync, "source").as_deref(), Some("pods/generic"));
    assert_eq!(attr(sync, "source.kind").as_deref(), Some("kubernetes"));
    assert_eq!(attr(sync, "objects").as_deref(), Some("0"));
    assert!(sync.parent_span_id.is_empty(), "a sync is a root span");

    let finding = all.iter().find(|s| s.name == "finding").unwrap();
    assert_eq!(
        attr(finding, "finding.kind").as_deref(),
        Some("execution_on_dead_agent")
    );
    assert_eq!(
        attr(finding, "finding.reason").as_deref(),
        Some("SandboxDead")
    );
    assert_eq!(attr(finding, "execution").as_deref(), Some("run-7"));
    assert_eq!(attr(finding, "sandbox").as_deref(), Some("sb-1"));
    assert_eq!(attr(finding, "profile").as_deref(), Some("generic"));
    assert!(
        attr(finding, "open_for_seconds").is_some(),
        "recorded at resolution"
    );
    assert!(
        finding.end_time_unix_nano > finding.start_time_unix_nano,
        "open until resolved"
    );

    let remediation = all.iter().find(|s| s.name == "remediation").unwrap();
    assert_eq!(
        remediation.parent_span_id, finding.span_id,
        "a remediation attempt is a child of its finding"
    );
    assert_eq!(remediation.trace_id, finding.trace_id);
    assert_eq!(
        attr(remediation, "action").as_deref(),
        Some("finalize_execution")
    );
    assert_eq!(attr(remediation, "outcome").as_deref(), Some("success"));
    assert!(attr(remediation, "key").is_some_and(|k| k.starts_with("sw_")));
    assert!(
        remediation.start_time_unix_nano >= finding.start_time_unix_nano
            && remediation.end_time_unix_nano <= finding.end_time_unix_nano
    );
    telemetry.shutdown();
}
