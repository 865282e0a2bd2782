//! Tests of the test API server (`tests/support/apiserver.rs`), driven by the real kube-rs
//! client and kube-runtime watcher: they show that the server speaks kube-apiserver's
//! list/watch protocol the way kube-rs 5 relies on it (as kube-apiserver implements it).

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use support::apiserver::{INITIAL_EVENTS_END, RecordedRequest, TestApiServer};
use tokio::{task::JoinHandle, time::Instant};

/// Generous: the watcher's backoff after an error starts at 800 ms.
const WAIT: Duration = Duration::from_secs(20);

/// A scheduled, running pod with one ready container, shaped like the kubelet reports it
/// (as the kubelet reports them).
fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
        },
        "spec": {
            "nodeName": "node-1",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "main",
                "image": "registry.local/worker:1.4",
                "resources": {"limits": {"memory": "256Mi"}},
            }],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "startTime": "2026-05-01T10:00:01Z",
            "hostIP": "10.0.0.5",
            "hostIPs": [{"ip": "10.0.0.5"}],
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}],
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:02Z"},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:04Z"},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:04Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:00Z"},
            ],
            "containerStatuses": [{
                "name": "main",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "image": "registry.local/worker:1.4",
                "imageID": "registry.local/worker@sha256:9b1e5c3f0d2a4b6c8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d",
                "containerID": "containerd://a3c9e1f5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                "state": {"running": {"startedAt": "2026-05-01T10:00:03Z"}},
                "lastState": {},
            }],
        },
    })
}

fn relabel(mut obj: Value, labels: &[(&str, &str)]) -> Value {
    obj["metadata"]["labels"] = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    obj
}

/// What a watcher produced, reduced to what the tests compare.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    /// name, resourceVersion
    Apply(String, String),
    Delete(String, String),
    Error(String),
}

fn describe(error: &watcher::Error) -> String {
    match error {
        watcher::Error::WatchError(status) => {
            format!("WatchError {} {}", status.code, status.reason)
        }
        watcher::Error::WatchStartFailed(_) => "WatchStartFailed".into(),
        watcher::Error::InitialListFailed(_) => "InitialListFailed".into(),
        watcher::Error::WatchFailed(_) => "WatchFailed".into(),
        watcher::Error::NoResourceVersion => "NoResourceVersion".into(),
    }
}

/// Runs a watcher stream in the background and keeps what it yields.
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    fn start<K, S>(stream: S) -> Recorder
    where
        K: ResourceExt + Send + 'static,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let entry = match item {
                    Ok(watcher::Event::Init) => Seen::Init,
                    Ok(watcher::Event::InitApply(o)) => Seen::InitApply(o.name_any()),
                    Ok(watcher::Event::InitDone) => Seen::InitDone,
                    Ok(watcher::Event::Apply(o)) => {
                        Seen::Apply(o.name_any(), o.resource_version().unwrap_or_default())
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        Seen::Delete(o.name_any(), o.resource_version().unwrap_or_default())
                    }
                    Err(e) => Seen::Error(describe(&e)),
                };
                sink.lock().unwrap().push(entry);
            }
        });
        Recorder { seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&[Seen]) -> bool) {
        wait_until(what, || cond(&self.seen())).await;
    }

    fn count(&self, entry: &Seen) -> usize {
        self.seen().iter().filter(|s| *s == entry).count()
    }

    fn errors(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Error(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls a condition until it holds, failing the test after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn requests_with_verb(server: &TestApiServer, verb: &str) -> Vec<RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.verb == verb)
        .collect()
}

fn apply(name: &str, obj: &Value) -> Seen {
    Seen::Apply(
        name.into(),
        obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

// ------------------------------------------------------------------------------------------------

/// 1. An initial list larger than the page size arrives whole through `continue` pages, and
/// the watch starts from the list's resourceVersion.
#[tokio::test]
async fn paginated_initial_list_delivers_every_object() {
    let server = TestApiServer::start().await;
    for i in 0..5 {
        server.create(pod("default", &format!("p{i}"), &[("app", "sandbox")]));
    }
    server.create(pod("other", "elsewhere", &[]));
    let list_rv = server.resource_version();
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec =
        Recorder::start(watcher(api, watcher::Config::default().page_size(2)).default_backoff());

    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    let mut expected = vec![Seen::Init];
    expected.extend((0..5).map(|i| Seen::InitApply(format!("p{i}"))));
    expected.push(Seen::InitDone);
    assert_eq!(rec.seen(), expected);

    let lists = requests_with_verb(&server, "list");
    assert_eq!(lists.len(), 3, "5 objects in pages of 2: {lists:#?}");
    for list in &lists {
        assert_eq!(list.path, "/api/v1/namespaces/default/pods");
        assert_eq!(list.param("limit").as_deref(), Some("2"));
        assert_eq!(list.param("resourceVersion"), None);
    }
    assert_eq!(lists[0].param("continue"), None);
    assert!(lists[1].param("continue").is_some() && lists[2].param("continue").is_some());

    wait_until("the watch request", || {
        !requests_with_verb(&server, "watch").is_empty()
    })
    .await;
    let watch = &requests_with_verb(&server, "watch")[0];
    assert_eq!(watch.param("resourceVersion"), Some(list_rv.to_string()));
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
}

/// Later pages show the first page's snapshot, not later writes; a continue token older than
/// a compaction gets HTTP 410 Expired.
#[tokio::test]
async fn list_pages_form_a_consistent_snapshot() {
    let server = TestApiServer::start().await;
    for name in ["a", "b", "c", "d"] {
        server.create(pod("default", name, &[("app", "sandbox")]));
    }
    let api: Api<Pod> = Api::namespaced(server.client(), "default");

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    let snapshot = first.metadata.resource_version.clone().unwrap();
    assert_eq!(snapshot, server.resource_version().to_string());
    assert_eq!(first.metadata.remaining_item_count, Some(2));
    let token = first.metadata.continue_.clone().expect("a continue token");

    server.delete("", "v1", "pods", "default", "c");
    server.create(pod("default", "e", &[]));
    let d = server.get("", "v1", "pods", "default", "d").unwrap();
    server.update(relabel(d, &[("app", "changed")]));

    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        names(&second.items),
        ["c", "d"],
        "the snapshot, not the present"
    );
    assert_eq!(second.items[1].labels()["app"], "sandbox");
    assert_eq!(second.metadata.resource_version, Some(snapshot.clone()));
    assert_eq!(second.metadata.continue_, None);

    let now = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&now.items), ["a", "b", "d", "e"]);
    assert_eq!(
        now.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    server.compact();
    let status = api_status(
        api.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(
        status
            .message
            .starts_with("The provided continue parameter is too old")
    );
}

/// 2. A watch resumed from a compacted resourceVersion gets the in-stream 410 ERROR; the
/// watcher relists, and what was deleted during the gap is absent from the relist.
#[tokio::test]
async fn compaction_makes_the_watcher_relist() {
    let server = TestApiServer::start().await;
    for name in ["a", "b", "c"] {
        server.create(pod("default", name, &[]));
    }
    let list_rv = server.resource_version();
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(watcher(api, watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;

    // InitDone comes before the watch request: wait for the watch to be open.
    wait_until("the watch", || server.open_watches() == 1).await;
    // The watch goes away and its replacement waits while the cluster moves on.
    server.hold_watches();
    server.drop_all_watches();
    wait_until("the resumed watch request", || {
        requests_with_verb(&server, "watch").len() == 2
    })
    .await;
    server.delete("", "v1", "pods", "default", "b");
    server.create(pod("default", "d", &[]));
    server.compact();
    server.release_watches();

    rec.wait_for("the second InitDone", |s| {
        s.iter().filter(|e| **e == Seen::InitDone).count() == 2
    })
    .await;
    let watches = requests_with_verb(&server, "watch");
    assert_eq!(
        watches[1].param("resourceVersion"),
        Some(list_rv.to_string())
    );
    assert_eq!(
        rec.errors(),
        ["WatchError 410 Expired"],
        "in-stream, not HTTP 410"
    );
    let seen = rec.seen();
    let relist = seen.iter().rposition(|s| *s == Seen::Init).unwrap();
    assert_eq!(
        seen[relist..],
        [
            Seen::Init,
            Seen::InitApply("a".into()),
            Seen::InitApply("c".into()),
            Seen::InitApply("d".into()),
            Seen::InitDone,
        ]
    );
    assert_eq!(requests_with_verb(&server, "list").len(), 2);
}

/// The same, seen on the raw watch: HTTP 200, one ERROR event (Status 410 Expired with the
/// apiserver's message), then the end of the stream. A watch from the compaction point works.
#[tokio::test]
async fn watch_from_a_compacted_version_gets_one_error_event() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    let old = server.resource_version();
    server.create(pod("default", "b", &[]));
    server.compact();
    let api: Api<Pod> = Api::namespaced(server.client(), "default");

    let mut stream = api
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .expect("a watch request is answered with HTTP 200")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert_eq!(
                status.message,
                format!("too old resource version: {old} (2)")
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );

    let now = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &now)
        .await
        .unwrap()
        .boxed();
    let c = server.create(pod("default", "c", &[]));
    match stream.next().await {
        Some(Ok(WatchEvent::Added(p))) => {
            assert_eq!(p.name_any(), "c");
            assert_eq!(
                p.resource_version(),
                c["metadata"]["resourceVersion"].as_str().map(String::from)
            );
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
}

/// 3. A watch cut mid-stream is resumed from the last resourceVersion without a relist, and
/// the changes made while it was away are replayed.
#[tokio::test]
async fn dropped_watch_resumes_without_relist() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    server.create(pod("default", "c", &[]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(watcher(api, watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    let last_seen = server.resource_version();
    wait_until("the watch", || server.open_watches() == 1).await;

    server.hold_watches();
    server.drop_all_watches();
    wait_until("the resumed watch request", || {
        requests_with_verb(&server, "watch").len() == 2
    })
    .await;
    let b = server.create(pod("default", "b", &[]));
    let a = server.get("", "v1", "pods", "default", "a").unwrap();
    let a = server.update(relabel(a, &[("app", "sandbox")]));
    let c = server.delete("", "v1", "pods", "default", "c").unwrap();
    server.release_watches();

    let c_deleted = Seen::Delete("c".into(), server.resource_version().to_string());
    rec.wait_for("the replayed events", |s| s.contains(&c_deleted))
        .await;
    let seen = rec.seen();
    let resumed = seen.iter().position(|s| *s == Seen::InitDone).unwrap() + 1;
    // A stream cut mid-chunk reads as its end to kube-rs: no error, just a new watch.
    assert_eq!(seen[resumed..], [apply("b", &b), apply("a", &a), c_deleted]);
    assert_ne!(
        c["metadata"]["resourceVersion"],
        json!(server.resource_version().to_string())
    );
    assert_eq!(rec.count(&Seen::Init), 1, "no relist");
    assert_eq!(requests_with_verb(&server, "list").len(), 1);
    let watches = requests_with_verb(&server, "watch");
    assert_eq!(
        watches[1].param("resourceVersion"),
        Some(last_seen.to_string())
    );
}

/// An injected ERROR reaches the watcher in-stream; a non-410 code only restarts the watch
/// from the last resourceVersion, a 410 makes it relist.
#[tokio::test]
async fn injected_error_events_reach_the_watcher() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(watcher(api, watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    wait_until("an open watch", || server.open_watches() == 1).await;

    server.inject_error_event(500);
    wait_until("the watch to be reopened", || {
        requests_with_verb(&server, "watch").len() == 2 && server.open_watches() == 1
    })
    .await;
    assert_eq!(rec.errors(), ["WatchError 500 InternalError"]);
    assert_eq!(rec.count(&Seen::Init), 1);

    server.inject_error_event(410);
    rec.wait_for("the relist", |s| {
        s.iter().filter(|e| **e == Seen::InitDone).count() == 2
    })
    .await;
    assert_eq!(
        rec.errors(),
        ["WatchError 500 InternalError", "WatchError 410 Expired"]
    );
    assert_eq!(requests_with_verb(&server, "list").len(), 2);
}

/// 4. A label-selected watch never sees other pods; a pod relabelled into the selector arrives
/// as ADDED, one relabelled out of it as DELETED carrying the new resourceVersion.
#[tokio::test]
async fn label_selected_watch_sees_pods_enter_and_leave() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "s1", &[("app", "sandbox")]));
    let x1 = server.create(pod("default", "x1", &[("app", "other")]));
    server.create(pod("default", "x2", &[]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(
        watcher(api, watcher::Config::default().labels("app=sandbox")).default_backoff(),
    );
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    assert_eq!(
        rec.seen(),
        [Seen::Init, Seen::InitApply("s1".into()), Seen::InitDone]
    );

    let s2 = server.create(pod("default", "s2", &[("app", "sandbox")]));
    rec.wait_for("s2", |s| s.contains(&apply("s2", &s2))).await;
    server.create(pod("default", "x3", &[("app", "other")]));
    let x1 = server.update(relabel(x1, &[("app", "sandbox")]));
    rec.wait_for("x1 entering", |s| s.contains(&apply("x1", &x1)))
        .await;
    let s1 = server.get("", "v1", "pods", "default", "s1").unwrap();
    let s1 = server.update(relabel(s1, &[("app", "other")]));
    let left = Seen::Delete(
        "s1".into(),
        s1["metadata"]["resourceVersion"].as_str().unwrap().into(),
    );
    rec.wait_for("s1 leaving", |s| s.contains(&left)).await;
    // Events are ordered: once this one is in, anything about x2/x3 would be too.
    let last = server.create(pod("default", "s-last", &[("app", "sandbox")]));
    rec.wait_for("s-last", |s| s.contains(&apply("s-last", &last)))
        .await;

    let seen = rec.seen();
    assert_eq!(
        seen[3..],
        [
            apply("s2", &s2),
            apply("x1", &x1),
            left,
            apply("s-last", &last)
        ]
    );
    for request in server.requests() {
        assert_eq!(
            request.param("labelSelector").as_deref(),
            Some("app=sandbox")
        );
    }
}

/// Set-based label selectors and field selectors filter lists like kube-apiserver; an
/// unsupported field is a 400.
#[tokio::test]
async fn list_selectors_match_like_the_apiserver() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[("app", "sandbox"), ("tier", "web")]));
    server.create(pod("default", "b", &[("app", "sandbox")]));
    server.create(pod("default", "c", &[("app", "other"), ("tier", "db")]));
    let mut d = pod("default", "d", &[]);
    d["spec"]["nodeName"] = json!("node-2");
    d["status"]["phase"] = json!("Succeeded");
    server.create(d);
    server.create(pod("kube-system", "e", &[("app", "sandbox")]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let list = async |lp: ListParams| names(&api.list(&lp).await.unwrap().items);

    let cases = [
        ("app in (sandbox,other),tier", vec!["a", "c"]),
        ("app notin (sandbox)", vec!["c", "d"]),
        ("!tier", vec!["b", "d"]),
        ("app!=sandbox", vec!["c", "d"]),
        ("app==sandbox,tier=web", vec!["a"]),
        ("tier", vec!["a", "c"]),
    ];
    for (selector, expected) in cases {
        assert_eq!(
            list(ListParams::default().labels(selector)).await,
            expected,
            "{selector}"
        );
    }
    assert_eq!(
        list(ListParams::default().fields("metadata.name=b")).await,
        ["b"]
    );
    assert_eq!(
        list(ListParams::default().fields("status.phase!=Running,spec.nodeName=node-2")).await,
        ["d"]
    );
    let all: Api<Pod> = Api::all(server.client());
    assert_eq!(
        names(
            &all.list(&ListParams::default().labels("app=sandbox"))
                .await
                .unwrap()
                .items
        ),
        ["a", "b", "e"]
    );

    let status = api_status(
        api.list(&ListParams::default().fields("spec.foo=bar"))
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert_eq!(status.message, "field label not supported: spec.foo");
}

/// 5. A streaming list (sendInitialEvents) reaches InitDone through the annotated bookmark and
/// keeps watching on the same stream.
#[tokio::test]
async fn streaming_list_ends_with_the_initial_events_bookmark() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    server.create(pod("default", "b", &[]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(
        watcher(api, watcher::Config::default().streaming_lists()).default_backoff(),
    );
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    assert_eq!(
        rec.seen(),
        [
            Seen::Init,
            Seen::InitApply("a".into()),
            Seen::InitApply("b".into()),
            Seen::InitDone
        ]
    );
    let c = server.create(pod("default", "c", &[]));
    rec.wait_for("c", |s| s.contains(&apply("c", &c))).await;

    assert!(requests_with_verb(&server, "list").is_empty());
    let watches = requests_with_verb(&server, "watch");
    assert_eq!(watches.len(), 1, "InitDone and later events on one stream");
    assert_eq!(
        watches[0].param("sendInitialEvents").as_deref(),
        Some("true")
    );
    assert_eq!(
        watches[0].param("resourceVersionMatch").as_deref(),
        Some("NotOlderThan")
    );
    assert_eq!(watches[0].param("resourceVersion").as_deref(), Some("0"));

    // Without resourceVersionMatch=NotOlderThan, sendInitialEvents is invalid (422).
    let client = server.client();
    let request = axum::http::Request::get(format!(
        "{}/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&resourceVersion=0",
        server.url()
    ))
    .body(Vec::new())
    .unwrap();
    let status = api_status(client.request_text(request).await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status
            .message
            .contains("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
    );
}

/// Bookmarks: the initial-events-end bookmark of a defaulted legacy watch, then periodic ones
/// at the current global resourceVersion (which other kinds advance too).
#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let server = TestApiServer::start().await;
    server.set_bookmark_interval(Duration::from_millis(100));
    server.create(pod("default", "a", &[]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(stream.next().await, Some(Ok(WatchEvent::Added(p))) if p.name_any() == "a"));
    match stream.next().await {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(b.metadata.annotations[INITIAL_EVENTS_END], "true");
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
            assert_eq!(
                (b.types.api_version.as_str(), b.types.kind.as_str()),
                ("v1", "Pod")
            );
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }

    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    leases
        .create(&PostParams::default(), &lease("unrelated", "pod-a"))
        .await
        .unwrap();
    let target = server.resource_version().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(WatchEvent::Bookmark(b)))) if b.metadata.resource_version == target => {
                assert!(b.metadata.annotations.is_empty());
                break;
            }
            Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {}
            other => panic!("expected periodic bookmarks, got {other:?}"),
        }
    }
}

/// 6. While the server is down connections are refused and the watcher reports errors; once
/// it is back on the same port the watcher resumes by itself and catches up.
#[tokio::test]
async fn watcher_recovers_after_the_server_comes_back() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    let url = server.url();
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(watcher(api.clone(), watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;

    wait_until("the watch", || server.open_watches() == 1).await;

    server.go_down().await;
    assert!(
        tokio::net::TcpStream::connect(server.addr()).await.is_err(),
        "connections are refused"
    );
    assert!(api.get("a").await.is_err());
    let b = server.create(pod("default", "b", &[]));
    rec.wait_for("a failed reconnection", |s| {
        s.iter().any(|e| matches!(e, Seen::Error(_)))
    })
    .await;
    assert!(
        rec.errors().iter().any(|e| e == "WatchStartFailed"),
        "{:?}",
        rec.errors()
    );

    server.come_up().await;
    assert_eq!(server.url(), url);
    rec.wait_for("b after recovery", |s| s.contains(&apply("b", &b)))
        .await;
    assert_eq!(rec.count(&Seen::Init), 1, "resumed, not relisted");
    assert_eq!(api.get("a").await.unwrap().name_any(), "a");
    wait_until("an open watch", || server.open_watches() == 1).await;
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-05-01T10:00:00.000000Z",
            "renewTime": "2026-05-01T10:00:08.123456Z",
            "leaseTransitions": 0,
        },
    }))
    .unwrap()
}

/// 7. Lease optimistic concurrency: PUT with the current resourceVersion succeeds, a stale one
/// gets 409 Conflict, none gets 422; POST of an existing lease gets 409 AlreadyExists; a PUT
/// to a missing lease creates it.
#[tokio::test]
async fn lease_updates_are_optimistically_locked() {
    let server = TestApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();

    let missing = api_status(leases.get("sandwatch").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        missing.message,
        r#"leases.coordination.k8s.io "sandwatch" not found"#
    );
    let details = missing.details.unwrap();
    assert_eq!(
        (
            details.group.as_str(),
            details.kind.as_str(),
            details.name.as_str()
        ),
        ("coordination.k8s.io", "leases", "sandwatch")
    );

    let created = leases
        .create(&pp, &lease("sandwatch", "pod-a"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let exists = api_status(
        leases
            .create(&pp, &lease("sandwatch", "pod-b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );

    let fetched = leases.get("sandwatch").await.unwrap();
    assert_eq!(
        fetched.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut renewed = fetched.clone();
    renewed.spec.as_mut().unwrap().lease_transitions = Some(1);
    let renewed = leases.replace("sandwatch", &pp, &renewed).await.unwrap();
    assert_ne!(
        renewed.metadata.resource_version,
        fetched.metadata.resource_version
    );
    assert_eq!(renewed.spec.as_ref().unwrap().lease_transitions, Some(1));

    let mut stale = fetched.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    let conflict = api_status(leases.replace("sandwatch", &pp, &stale).await.unwrap_err());
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        r#"Operation cannot be fulfilled on leases.coordination.k8s.io "sandwatch": the object has been modified; please apply your changes to the latest version and try again"#
    );

    let mut unconditional = renewed.clone();
    unconditional.metadata.resource_version = None;
    let invalid = api_status(
        leases
            .replace("sandwatch", &pp, &unconditional)
            .await
            .unwrap_err(),
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(invalid.message.ends_with(
        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    ));

    // A merge patch carrying a stale resourceVersion is a failed precondition too.
    let patch = json!({"metadata": {"resourceVersion": fetched.metadata.resource_version}, "spec": {"holderIdentity": "pod-b"}});
    let conflict = api_status(
        leases
            .patch("sandwatch", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err(),
    );
    assert_eq!(conflict.code, 409);
    let patched = leases
        .patch(
            "sandwatch",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"holderIdentity": "pod-b"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.spec.unwrap().holder_identity.as_deref(),
        Some("pod-b")
    );

    let other = leases
        .replace("other", &pp, &lease("other", "pod-c"))
        .await
        .unwrap();
    assert!(
        other.metadata.resource_version.is_some(),
        "created on update"
    );
    assert!(
        leases
            .delete("other", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );

    let verbs: Vec<String> = server.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(
        verbs,
        [
            "get", "create", "create", "get", "update", "update", "update", "patch", "patch",
            "update", "delete"
        ]
    );
}

/// 8. A custom resource is listed and watched as `DynamicObject`: list items carry their kind,
/// and changes made behind the client's back arrive as events.
#[tokio::test]
async fn custom_resources_list_and_watch() {
    let server = TestApiServer::start().await;
    server.register(
        "vteam.ambient-code",
        "v1alpha1",
        "agenticsessions",
        "AgenticSession",
        true,
    );
    let gvk = GroupVersionKind::gvk("vteam.ambient-code", "v1alpha1", "AgenticSession");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "agenticsessions");
    let (discovered, caps) = kube::discovery::pinned_kind(&server.client(), &gvk)
        .await
        .expect("legacy discovery");
    assert_eq!(discovered, ar);
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    server.clear_requests();
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "default", &ar);

    server.create(json!({
        "apiVersion": "vteam.ambient-code/v1alpha1",
        "kind": "AgenticSession",
        "metadata": {"name": "s1", "namespace": "default"},
        "spec": {"prompt": "fix the flaky test", "timeout": 300},
        "status": {"phase": "Running"},
    }));
    let s2 = DynamicObject::new("s2", &ar)
        .within("default")
        .data(json!({"spec": {"prompt": "write docs"}, "status": {"phase": "Done"}}));
    let s2 = api.create(&PostParams::default(), &s2).await.unwrap();
    assert_eq!(s2.data.get("status"), None, "status is a subresource");
    assert_eq!(s2.metadata.generation, Some(1));

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.types.kind, "AgenticSessionList");
    assert_eq!(names(&list.items), ["s1", "s2"]);
    for item in &list.items {
        let types = item
            .types
            .as_ref()
            .expect("custom list items carry their kind");
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("vteam.ambient-code/v1alpha1", "AgenticSession")
        );
    }

    let rec = Recorder::start(watcher(api.clone(), watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    let mut s1 = server
        .get(
            "vteam.ambient-code",
            "v1alpha1",
            "agenticsessions",
            "default",
            "s1",
        )
        .unwrap();
    s1["status"]["phase"] = json!("Completed");
    s1["metadata"].as_object_mut().unwrap().remove("generation");
    let s1 = server.update(s1);
    rec.wait_for("s1 completed", |s| s.contains(&apply("s1", &s1)))
        .await;
    server.delete(
        "vteam.ambient-code",
        "v1alpha1",
        "agenticsessions",
        "default",
        "s2",
    );
    let gone = Seen::Delete("s2".into(), server.resource_version().to_string());
    rec.wait_for("s2 deleted", |s| s.contains(&gone)).await;
    assert_eq!(
        s1["metadata"]["generation"],
        json!(1),
        "a status change keeps the generation"
    );

    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths
            .iter()
            .all(|p| p == "/apis/vteam.ambient-code/v1alpha1/namespaces/default/agenticsessions")
    );
}

/// 9. `timeoutSeconds` ends the stream cleanly: the watcher reports no error and watches again
/// from the last resourceVersion it saw.
#[tokio::test]
async fn watch_timeout_ends_cleanly_and_the_watcher_rewatches() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec =
        Recorder::start(watcher(api, watcher::Config::default().timeout(1)).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    let started = Instant::now();
    let b = server.create(pod("default", "b", &[]));
    rec.wait_for("b", |s| s.contains(&apply("b", &b))).await;
    let b_rv = b["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    wait_until("a watch from b's resourceVersion", || {
        requests_with_verb(&server, "watch")
            .iter()
            .any(|w| w.param("resourceVersion").as_deref() == Some(b_rv.as_str()))
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let watches = requests_with_verb(&server, "watch");
    let first: u64 = watches[0]
        .param("resourceVersion")
        .unwrap()
        .parse()
        .unwrap();
    assert!(first < b_rv.parse().unwrap());
    assert!(
        watches
            .iter()
            .all(|w| w.param("timeoutSeconds").as_deref() == Some("1"))
    );
    assert!(rec.errors().is_empty(), "{:?}", rec.errors());
    assert_eq!(rec.count(&Seen::Init), 1);
    assert_eq!(requests_with_verb(&server, "list").len(), 1);
}

/// Pod deletion through the API follows kube-apiserver: a scheduled pod is marked with a
/// deletionTimestamp for its grace period, and a grace-0 delete removes it (MODIFIED, then
/// DELETED on a watch); finalizers keep an object until they are removed.
#[tokio::test]
async fn pod_deletion_is_graceful_and_honours_finalizers() {
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    let mut b = pod("default", "b", &[]);
    b["metadata"]["finalizers"] = json!(["example.com/keep"]);
    server.create(b);
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let rec = Recorder::start(watcher(api.clone(), watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;

    let marked = api.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = marked.left().expect("pods answer with the object");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(server.get("", "v1", "pods", "default", "a").is_some());

    api.delete("a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let gone = Seen::Delete("a".into(), server.resource_version().to_string());
    rec.wait_for("a deleted", |s| s.contains(&gone)).await;
    assert!(server.get("", "v1", "pods", "default", "a").is_none());
    let kinds: Vec<&str> = rec.seen()[4..]
        .iter()
        .map(|s| match s {
            Seen::Apply(..) => "apply",
            Seen::Delete(..) => "delete",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["apply", "apply", "delete"]);

    server.delete("", "v1", "pods", "default", "b");
    let kept = server.get("", "v1", "pods", "default", "b").unwrap();
    assert!(kept["metadata"]["deletionTimestamp"].is_string());
    let mut released = kept.clone();
    released["metadata"]["finalizers"] = json!([]);
    server.update(released);
    let b_gone = Seen::Delete("b".into(), server.resource_version().to_string());
    rec.wait_for("b deleted", |s| s.contains(&b_gone)).await;
    assert!(server.get("", "v1", "pods", "default", "b").is_none());
}

/// Reads from a raw connection until `done` holds for what was read, or the stream ends.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !done(seen) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("timed out; read so far: {}", String::from_utf8_lossy(seen)),
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The wire format of a watch: headers sent before any event, one chunk per event while the
/// stream stays open; a clean end has the terminating chunk, an aborted stream does not.
#[tokio::test]
async fn watch_responses_are_streamed_chunks() {
    use tokio::io::AsyncWriteExt;
    let server = TestApiServer::start().await;
    server.create(pod("default", "a", &[]));
    let open = async || {
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let request = format!(
            "GET /api/v1/namespaces/default/pods?&watch=true&resourceVersion={}&timeoutSeconds=60 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.resource_version(),
            server.addr()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        read_until(&mut stream, &mut head, |h| contains(h, "\r\n\r\n")).await;
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        stream
    };

    let mut clean = open().await;
    wait_until("the watch", || server.open_watches() == 1).await;
    server.create(pod("default", "b", &[]));
    let mut body = Vec::new();
    read_until(&mut clean, &mut body, |b| contains(b, "}}\n\r\n")).await;
    assert!(
        contains(&body, r#"{"type":"ADDED","object":{"#),
        "{}",
        String::from_utf8_lossy(&body)
    );
    server.close_all_watches();
    read_until(&mut clean, &mut body, |_| false).await;
    assert!(body.ends_with(b"\r\n0\r\n\r\n"), "the terminating chunk");

    let mut cut = open().await;
    wait_until("the watch", || server.open_watches() == 1).await;
    server.drop_all_watches();
    let mut body = Vec::new();
    read_until(&mut cut, &mut body, |_| false).await;
    assert!(
        !contains(&body, "0\r\n\r\n"),
        "no terminating chunk: {}",
        String::from_utf8_lossy(&body)
    );
}

/// The metadata-only API (`Api<PartialObjectMeta<K>>`, `Accept: ...;as=PartialObjectMetadata`)
/// gets `PartialObjectMetadataList` lists and `PartialObjectMetadata` events and bookmarks.
#[tokio::test]
async fn metadata_only_lists_and_watches() {
    let server = TestApiServer::start().await;
    server.set_bookmark_interval(Duration::from_millis(50));
    server.create(pod("default", "a", &[("app", "sandbox")]));
    let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(server.client(), "default");

    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    assert_eq!(names(&list.items), ["a"]);
    assert_eq!(list.items[0].labels()["app"], "sandbox");

    let rec = Recorder::start(watcher(api, watcher::Config::default()).default_backoff());
    rec.wait_for("InitDone", |s| s.contains(&Seen::InitDone))
        .await;
    let b = server.create(pod("default", "b", &[]));
    rec.wait_for("b", |s| s.contains(&apply("b", &b))).await;
    assert!(rec.errors().is_empty(), "{:?}", rec.errors());
    let watch = &requests_with_verb(&server, "watch")[0];
    assert_eq!(watch.path, "/api/v1/namespaces/default/pods");
}
