//! A Kubernetes API server for integration tests.
//!
//! There is no kube-apiserver (nor etcd, nor Docker) where the tests run, so this module serves
//! the Kubernetes REST API over plain HTTP on `127.0.0.1`, in process, for the real kube-rs
//! `Client` and kube-runtime `watcher` to talk to. It is written to behave like kube-apiserver,
//! never like a mock that answers whatever makes a client happy: an expired watch gets the
//! in-stream 410 `ERROR` event, a stale update gets 409, a Lease update without a
//! resourceVersion gets 422, exactly as a cluster would answer. It follows kube-apiserver's own behaviour (the
//! apiserver and apimachinery sources, and the API concepts documentation).
//!
//! What it reproduces:
//! - Routes: `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced and
//!   all-namespaces collections, items and the `status` subresource; queries with a leading `?&`,
//!   `+` and percent-encoding; legacy discovery (`/api`, `/apis`, group versions) and `/version`.
//! - One global resourceVersion counter for every kind, like an etcd revision; `uid`,
//!   `creationTimestamp` and `generation` stamped on create.
//! - LIST: `<Kind>List`, the snapshot resourceVersion on every page, `limit` /
//!   `continue` paging over a consistent snapshot (later pages do not see later writes), items
//!   ordered by storage key, label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and
//!   field selectors (`field label not supported` for the rest), the resourceVersion /
//!   resourceVersionMatch table, and HTTP 410 for a continue token or an Exact list older than
//!   the compaction point. Built-in list items carry no `kind`/`apiVersion`; custom ones do.
//! - WATCH: HTTP 200 with chunked NDJSON, headers sent at once, one
//!   event per chunk; history replay from a resourceVersion then live events; the WatchList
//!   defaulting of legacy `""`/`"0"` watches; `sendInitialEvents` with the
//!   `k8s.io/initial-events-end` bookmark; periodic bookmarks and one 2 s before the deadline;
//!   `timeoutSeconds` ends the stream cleanly; selector enter/leave become ADDED/DELETED; DELETED
//!   carries the last state with the delete's revision; a watch from a compacted
//!   resourceVersion gets HTTP 200 and a single `ERROR` event (Status 410 `Expired`, `too old
//!   resource version: N (M)`) then the end of the stream, never an HTTP 410.
//! - Writes,): GET, POST, PUT (optimistic concurrency, Lease
//!   create-on-update and no unconditional update, unconditional Pod update), PATCH (merge, JSON,
//!   and strategic merge for built-in kinds), DELETE with preconditions, Pod graceful deletion
//!   and finalizers; errors are `Status` objects with the apiserver's code, reason, message and
//!   details. It never answers 429, 503 or 504, which kube-rs would retry for a long time.
//!
//! Test hooks on [`TestApiServer`] change objects behind the client's back (as the kubelet or
//! another controller would), compact the history, end or abort watch streams, hold new watch
//! requests, inject `ERROR` events, take the server down (connections refused and cut) and
//! bring it back on the same port, and record every request with its Kubernetes verb so that a
//! test can check the calls against an RBAC role.
//!
//! Not reproduced: server-side apply (`application/apply-patch+yaml` gets 415), deletecollection,
//! admission, defaulting beyond a few metadata fields, and schema validation. Strategic merge
//! patch merges lists of objects by their `name` key (`type` for conditions, `uid` for owner
//! references, `ip` for IP lists) rather than by the full per-field patch strategy table.

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    future::Future,
    hash::{BuildHasher, Hasher},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::Response,
};
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

/// Annotation on the bookmark that ends the initial events of a watch-list.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// Events kept per resource before the oldest are compacted away.
const DEFAULT_HISTORY_CAPACITY: usize = 1000;
/// kube-apiserver sends bookmarks about once a minute; tests usually want them sooner.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// The cacher sends a last bookmark this long before a watch's deadline.
const PRE_TIMEOUT_BOOKMARK: Duration = Duration::from_secs(2);
/// The message of an expired continue token (AS pkg/storage/etcd3/errors.go).
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";
const OPTIMISTIC_LOCK: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

// ------------------------------------------------------------------------------------------------
// Public API
// ------------------------------------------------------------------------------------------------

/// How a resource type behaves; the strategies mirror those of kube-apiserver's registries.
#[derive(Clone, Debug)]
pub struct ResourceSpec {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    /// The resource name used in paths, e.g. `pods`.
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Built-in (typed) resources: list items carry no `kind`/`apiVersion`, and strategic merge
    /// patch is accepted. Custom resources are the opposite.
    pub builtin: bool,
    /// A PUT to a missing object creates it (Leases).
    pub allow_create_on_update: bool,
    /// A PUT without `metadata.resourceVersion` overwrites whatever is stored (Pods).
    pub allow_unconditional_update: bool,
    /// A completed DELETE answers with the object instead of a `Status` (Pods).
    pub return_deleted_object: bool,
    /// DELETE sets `deletionTimestamp` and waits for a grace period (Pods, see).
    pub graceful_deletion: bool,
    /// `status` is only written through the `/status` subresource.
    pub status_subresource: bool,
    /// `metadata.generation` starts at 1 and increases when the spec changes.
    pub tracks_generation: bool,
    /// Selectable fields besides `metadata.name` and `metadata.namespace`.
    pub field_labels: Vec<String>,
}

impl ResourceSpec {
    /// A custom resource served from a CustomResourceDefinition with a status subresource.
    pub fn custom(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceSpec {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            builtin: false,
            allow_create_on_update: false,
            allow_unconditional_update: false,
            return_deleted_object: false,
            graceful_deletion: false,
            status_subresource: true,
            tracks_generation: true,
            field_labels: Vec::new(),
        }
    }

    /// `pods` in the core group (kubernetes pkg/registry/core/pod).
    pub fn pods() -> Self {
        ResourceSpec {
            builtin: true,
            allow_unconditional_update: true,
            return_deleted_object: true,
            graceful_deletion: true,
            field_labels: [
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..ResourceSpec::custom("", "v1", "pods", "Pod", true)
        }
    }

    /// `leases` in `coordination.k8s.io/v1` (kubernetes pkg/registry/coordination/lease).
    pub fn leases() -> Self {
        ResourceSpec {
            builtin: true,
            allow_create_on_update: true,
            allow_unconditional_update: false,
            status_subresource: false,
            tracks_generation: false,
            ..ResourceSpec::custom("coordination.k8s.io", "v1", "leases", "Lease", true)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, `leases.coordination.k8s.io`: how the apiserver names the resource in messages.
    fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: String,
    /// The Kubernetes verb: list, watch, get, create, update, patch, delete; `get` for
    /// discovery and `/version` (non-resource URLs); empty for paths the server does not know.
    pub verb: String,
    pub group: String,
    pub version: String,
    /// The resource (plural); empty for non-resource URLs.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RecordedRequest {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        Query::parse(&self.query).get(key).map(str::to_string)
    }
}

/// The server. Dropping it stops it and cuts its connections.
pub struct TestApiServer {
    inner: Arc<Inner>,
}

impl TestApiServer {
    /// Binds `127.0.0.1:0` and serves with `pods` and `leases` registered.
    pub async fn start() -> TestApiServer {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut store = Store {
            rv: 0,
            history_capacity: DEFAULT_HISTORY_CAPACITY,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            next_watch_id: 0,
            resources: BTreeMap::new(),
        };
        store.register(ResourceSpec::pods());
        store.register(ResourceSpec::leases());
        let inner = Arc::new(Inner {
            store: Mutex::new(store),
            requests: Mutex::new(Vec::new()),
            hold: watch::Sender::new(false),
            cut: watch::Sender::new(0),
            server: Mutex::new(None),
            addr,
            shut: AtomicBool::new(false),
        });
        let task = spawn_server(&inner, listener);
        *lock(&inner.server) = Some(task);
        TestApiServer { inner }
    }

    /// `http://127.0.0.1:<port>`; the port stays the same across [`go_down`](Self::go_down).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// A kube-rs client for this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("server url"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Registers a custom resource (see [`ResourceSpec::custom`]).
    pub fn register(&self, group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) {
        self.register_resource(ResourceSpec::custom(
            group, version, plural, kind, namespaced,
        ));
    }

    /// Registers any resource type, replacing a previous registration with the same group
    /// and plural (and dropping its objects).
    pub fn register_resource(&self, spec: ResourceSpec) {
        lock(&self.inner.store).register(spec);
    }

    /// Stores a new object, as another client would; the resource is found from `apiVersion`
    /// and `kind`, a namespaced object without a namespace goes to `default`. Status and
    /// deletion fields are kept as given; `uid`, `creationTimestamp` and `generation` are
    /// filled in when missing. Panics if the object exists or the kind is not registered.
    pub fn create(&self, obj: Value) -> Value {
        let mut store = lock(&self.inner.store);
        let rk = store.key_for_object(&obj);
        store
            .create(&rk, None, obj, Origin::Harness, false)
            .unwrap_or_else(|e| panic!("create failed: {}", e.message))
    }

    /// Replaces a stored object unconditionally (any resourceVersion in `obj` is ignored), as
    /// the kubelet or another controller would; it may set `deletionTimestamp`, finalizers and
    /// status. Removing the last finalizer of an object being deleted deletes it. Returns the
    /// stored object; panics if it does not exist.
    pub fn update(&self, obj: Value) -> Value {
        let mut store = lock(&self.inner.store);
        let rk = store.key_for_object(&obj);
        store
            .update(&rk, None, None, obj, Origin::Harness, Sub::Main, false)
            .map(|(v, _)| v)
            .unwrap_or_else(|e| panic!("update failed: {}", e.message))
    }

    /// Removes an object at once (the last, grace-0 step of a deletion), or only marks it
    /// deleted when it has finalizers. `namespace` is empty for cluster-scoped resources.
    /// Returns the object's last state, or `None` if there was no such object.
    pub fn delete(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let mut store = lock(&self.inner.store);
        let rk = store.key_for_path(group, version, plural);
        match store.delete(
            &rk,
            namespace,
            name,
            DeleteOptions::default(),
            Origin::Harness,
            false,
        ) {
            Ok(done) => Some(done.object),
            Err(e) if e.code == 404 => None,
            Err(e) => panic!("delete failed: {}", e.message),
        }
    }

    /// The stored object, with `kind` and `apiVersion`.
    pub fn get(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let store = lock(&self.inner.store);
        let rk = store.key_for_path(group, version, plural);
        store.resources[&rk]
            .objects
            .get(&object_key(namespace, name))
            .cloned()
    }

    /// All stored objects of a resource, in storage-key order.
    pub fn objects(&self, group: &str, version: &str, plural: &str) -> Vec<Value> {
        let store = lock(&self.inner.store);
        let rk = store.key_for_path(group, version, plural);
        store.resources[&rk].objects.values().cloned().collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Compacts every resource's history at the current resourceVersion: a watch from an older
    /// resourceVersion gets the 410 `ERROR` event, and older continue tokens expire.
    pub fn compact(&self) {
        let mut store = lock(&self.inner.store);
        let rv = store.rv;
        for res in store.resources.values_mut() {
            res.history.clear();
            res.compacted_through = res.compacted_through.max(rv);
        }
    }

    /// How many events each resource keeps before compacting the oldest (default 1000).
    pub fn set_history_capacity(&self, events: usize) {
        let mut store = lock(&self.inner.store);
        store.history_capacity = events.max(1);
        for res in store.resources.values_mut() {
            while res.history.len() > events.max(1) {
                let old = res.history.pop_front().expect("non-empty history");
                res.compacted_through = res.compacted_through.max(old.rv);
            }
        }
    }

    /// Interval of the periodic bookmarks sent to watches that allow them (default 1 s;
    /// kube-apiserver uses about a minute). Applies from each watch's next bookmark.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        lock(&self.inner.store).bookmark_interval = interval;
    }

    /// Aborts every open watch stream: the connection is dropped without the final chunk, as
    /// when a load balancer or the apiserver process goes away.
    pub fn drop_all_watches(&self) {
        lock(&self.inner.store).end_watches(|_| WatchMsg::Abort);
    }

    /// Ends every open watch stream cleanly, as when `timeoutSeconds` elapses.
    pub fn close_all_watches(&self) {
        lock(&self.inner.store).end_watches(|_| WatchMsg::End);
    }

    /// Sends an `ERROR` event with a `Status` of this code to every open watch, then ends the
    /// stream, which is what the apiserver does after any watch error.
    pub fn inject_error_event(&self, code: u16) {
        let mut store = lock(&self.inner.store);
        let rv = store.rv;
        let status = injected_status(code, rv);
        let line = event_line("ERROR", &status);
        store.end_watches(|_| WatchMsg::Close(line.clone()));
    }

    /// New watch requests wait, unanswered, until [`release_watches`](Self::release_watches)
    /// (a slow apiserver). They are recorded in the request log when they arrive.
    pub fn hold_watches(&self) {
        self.inner.hold.send_replace(true);
    }

    pub fn release_watches(&self) {
        self.inner.hold.send_replace(false);
    }

    /// Watch streams open and receiving events (a held request, or a stream that has been
    /// ended but not yet torn down, does not count).
    pub fn open_watches(&self) -> usize {
        lock(&self.inner.store)
            .resources
            .values()
            .map(|r| r.watchers.len())
            .sum()
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    /// Stops listening (new connections are refused) and cuts every open connection.
    pub async fn go_down(&self) {
        self.inner.go_down().await;
    }

    /// Listens again on the same address.
    pub async fn come_up(&self) {
        self.inner.come_up();
    }

    /// [`go_down`](Self::go_down) now and [`come_up`](Self::come_up) after `outage`.
    pub async fn refuse_connections_for(&self, outage: Duration) {
        self.inner.go_down().await;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            inner.come_up();
        });
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.inner.shut.store(true, Ordering::SeqCst);
        if let Some(task) = lock(&self.inner.server).take() {
            task.abort();
        }
        self.inner.cut.send_modify(|generation| *generation += 1);
        lock(&self.inner.store).end_watches(|_| WatchMsg::Abort);
    }
}

// ------------------------------------------------------------------------------------------------
// Server plumbing: listener, connection cutting, request log
// ------------------------------------------------------------------------------------------------

struct Inner {
    store: Mutex<Store>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// `true` while new watch requests are held.
    hold: watch::Sender<bool>,
    /// Bumped to cut every connection accepted before.
    cut: watch::Sender<u64>,
    server: Mutex<Option<JoinHandle<()>>>,
    addr: SocketAddr,
    shut: AtomicBool,
}

impl Inner {
    async fn go_down(&self) {
        let task = lock(&self.server).take();
        if let Some(task) = task {
            task.abort();
            // The listening socket is closed once the task is gone.
            let _ = task.await;
        }
        self.cut.send_modify(|generation| *generation += 1);
        lock(&self.store).end_watches(|_| WatchMsg::Abort);
    }

    fn come_up(self: &Arc<Self>) {
        if self.shut.load(Ordering::SeqCst) {
            return;
        }
        let mut server = lock(&self.server);
        if server.is_some() {
            return;
        }
        let listener =
            bind(self.addr).unwrap_or_else(|e| panic!("cannot listen on {} again: {e}", self.addr));
        *server = Some(spawn_server(self, listener));
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn_server(inner: &Arc<Inner>, listener: TcpListener) -> JoinHandle<()> {
    let app = Router::new().fallback(handle).with_state(inner.clone());
    let listener = CuttableListener {
        listener,
        inner: inner.clone(),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// Accepts connections that fail as soon as [`Inner::cut`] changes.
struct CuttableListener {
    listener: TcpListener,
    inner: Arc<Inner>,
}

impl axum::serve::Listener for CuttableListener {
    type Io = CuttableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut cut = self.inner.cut.subscribe();
                    let generation = *cut.borrow_and_update();
                    let cut = Box::pin(async move {
                        let _ = cut.wait_for(|g| *g != generation).await;
                    });
                    return (
                        CuttableStream {
                            io: stream,
                            cut,
                            is_cut: false,
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

struct CuttableStream {
    io: TcpStream,
    cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    is_cut: bool,
}

impl CuttableStream {
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_cut && self.cut.as_mut().poll(cx).is_ready() {
            self.is_cut = true;
        }
        self.is_cut
    }
}

fn connection_cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the test apiserver went down",
    )
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_cut(cx) {
            return Poll::Ready(Err(connection_cut()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_cut(cx) {
            return Poll::Ready(Err(connection_cut()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_cut(cx) {
            return Poll::Ready(Err(connection_cut()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------------------------------------
// Storage: objects, history, watchers
// ------------------------------------------------------------------------------------------------

/// `(group, plural)`.
type ResKey = (String, String);

struct Store {
    /// The global resourceVersion (etcd revision) of the last write.
    rv: u64,
    history_capacity: usize,
    bookmark_interval: Duration,
    next_watch_id: u64,
    resources: BTreeMap<ResKey, Resource>,
}

struct Resource {
    spec: ResourceSpec,
    /// By storage key: `namespace/name`, or `name` for cluster-scoped objects.
    objects: BTreeMap<String, Value>,
    /// Recent changes, oldest first (the watch cache, and what etcd has not compacted yet).
    history: VecDeque<Change>,
    /// Changes with a resourceVersion up to this one are gone.
    compacted_through: u64,
    watchers: Vec<Subscriber>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// The objects of a resource at some resourceVersion: the current objects, overlaid with what
/// later changes replaced (`None` for an object created since).
struct Snapshot<'a> {
    current: &'a BTreeMap<String, Value>,
    undone: BTreeMap<String, Option<&'a Value>>,
}

impl<'a> Snapshot<'a> {
    /// The objects whose key is `from` or after, in key order.
    fn from(&self, from: &str) -> impl Iterator<Item = (&str, &'a Value)> + '_ {
        use std::ops::Bound;
        let range = (Bound::Included(from), Bound::Unbounded);
        let mut current = self
            .current
            .range::<str, _>(range)
            .map(|(k, v)| (k.as_str(), v))
            .peekable();
        let mut undone = self
            .undone
            .range::<str, _>(range)
            .map(|(k, v)| (k.as_str(), *v))
            .peekable();
        std::iter::from_fn(move || {
            loop {
                let take_undone = match (current.peek(), undone.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some((c, _)), Some((u, _))) if c < u => false,
                    (Some((c, _)), Some((u, _))) => {
                        if c == u {
                            current.next();
                        }
                        true
                    }
                };
                if !take_undone {
                    return current.next();
                }
                match undone.next() {
                    Some((k, Some(v))) => return Some((k, v)),
                    Some((_, None)) => continue,
                    None => return None,
                }
            }
        })
    }
}

struct Change {
    rv: u64,
    ty: ChangeType,
    key: String,
    /// The new state; for a deletion the last state stamped with the deletion's revision.
    object: Value,
    /// The stored state before the change.
    prev: Option<Value>,
}

struct Subscriber {
    id: u64,
    scope: Scope,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

enum WatchMsg {
    /// One serialized event.
    Line(Bytes),
    /// One serialized event, then the end of the stream.
    Close(Bytes),
    /// A clean end of the stream.
    End,
    /// An abrupt end: the connection is dropped mid-stream.
    Abort,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// An HTTP request: the registry strategies and validation apply.
    Client,
    /// A test hook writing to storage directly (kubelet, other controllers).
    Harness,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sub {
    Main,
    Status,
}

#[derive(Default)]
struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
}

struct Deleted {
    object: Value,
    /// The object is gone (not only marked for deletion).
    gone: bool,
}

/// Where a watch starts.
enum WatchStart {
    /// Synthetic ADDED events for the current state, then the end bookmark if allowed.
    InitialEvents { bookmark: bool },
    /// Live events only.
    Now,
    /// Every change after this resourceVersion, then live events.
    After(u64),
}

impl Store {
    fn register(&mut self, spec: ResourceSpec) {
        let key = (spec.group.clone(), spec.plural.clone());
        self.resources.insert(
            key,
            Resource {
                spec,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted_through: 0,
                watchers: Vec::new(),
            },
        );
    }

    fn key_for_object(&self, obj: &Value) -> ResKey {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        self.resources
            .iter()
            .find(|(_, r)| r.spec.api_version() == api_version && r.spec.kind == kind)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| panic!("no resource registered for {api_version} {kind}"))
    }

    fn key_for_path(&self, group: &str, version: &str, plural: &str) -> ResKey {
        let key = (group.to_string(), plural.to_string());
        match self.resources.get(&key) {
            Some(r) if r.spec.version == version => key,
            _ => panic!("resource {plural}.{group}/{version} is not registered"),
        }
    }

    fn end_watches(&mut self, msg: impl Fn(&Subscriber) -> WatchMsg) {
        for res in self.resources.values_mut() {
            for sub in res.watchers.drain(..) {
                let _ = sub.tx.send(msg(&sub));
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn create(
        &mut self,
        rk: &ResKey,
        path_ns: Option<&str>,
        mut obj: Value,
        origin: Origin,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let spec = self.resources[rk].spec.clone();
        check_types(&mut obj, &spec)?;
        let ns = match origin {
            Origin::Client => request_namespace(&spec, path_ns, &mut obj)?,
            Origin::Harness => harness_namespace(&spec, &mut obj),
        };
        let meta = metadata_mut(&mut obj);
        let mut name = str_field(meta, "name");
        if name.is_empty() {
            let prefix = str_field(meta, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &spec.group,
                    &spec.kind,
                    "",
                    vec![FieldError::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
            name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
        if origin == Origin::Client {
            if let Some(problem) = name_problem(&name) {
                return Err(ApiError::invalid(
                    &spec.group,
                    &spec.kind,
                    &name,
                    vec![FieldError::invalid(
                        "metadata.name",
                        &format!("{name:?}"),
                        &problem,
                    )],
                ));
            }
            if !str_field(meta, "resourceVersion").is_empty() {
                return Err(ApiError::internal(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
        }
        let key = object_key(&ns, &name);
        if let Some(existing) = self.resources[rk].objects.get(&key) {
            let mut err = ApiError::already_exists(&spec, &name);
            if !existing["metadata"]["deletionTimestamp"].is_null() {
                err.message = format!("object is being deleted: {}", err.message);
            }
            return Err(err);
        }
        let now = now_rfc3339();
        let meta = metadata_mut(&mut obj);
        meta.remove("resourceVersion");
        match origin {
            Origin::Client => {
                meta.insert("uid".into(), json!(new_uid()));
                meta.insert("creationTimestamp".into(), json!(now));
                meta.remove("deletionTimestamp");
                meta.remove("deletionGracePeriodSeconds");
                if spec.tracks_generation {
                    meta.insert("generation".into(), json!(1));
                } else {
                    meta.remove("generation");
                }
                if spec.status_subresource {
                    reset_status_on_create(&spec, &mut obj);
                }
                validate(&spec, &obj)?;
            }
            Origin::Harness => {
                if str_field(meta, "uid").is_empty() {
                    meta.insert("uid".into(), json!(new_uid()));
                }
                if str_field(meta, "creationTimestamp").is_empty() {
                    meta.insert("creationTimestamp".into(), json!(now));
                }
                if spec.tracks_generation && meta.get("generation").is_none() {
                    meta.insert("generation".into(), json!(1));
                }
            }
        }
        if dry_run {
            return Ok(obj);
        }
        let rv = self.bump();
        set_rv(&mut obj, rv);
        self.commit(
            rk,
            Change {
                rv,
                ty: ChangeType::Added,
                key,
                object: obj.clone(),
                prev: None,
            },
        );
        Ok(obj)
    }

    /// Returns the stored object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        rk: &ResKey,
        path_ns: Option<&str>,
        path_name: Option<&str>,
        mut obj: Value,
        origin: Origin,
        sub: Sub,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        let spec = self.resources[rk].spec.clone();
        check_types(&mut obj, &spec)?;
        let ns = match origin {
            Origin::Client => request_namespace(&spec, path_ns, &mut obj)?,
            Origin::Harness => harness_namespace(&spec, &mut obj),
        };
        let name = str_field(metadata_mut(&mut obj), "name");
        if let Some(url_name) = path_name
            && name != url_name
        {
            return Err(ApiError::bad_request(&format!(
                "the name of the object ({name}) does not match the name on the URL ({url_name})"
            )));
        }
        let key = object_key(&ns, &name);
        let Some(old) = self.resources[rk].objects.get(&key).cloned() else {
            if origin == Origin::Client && spec.allow_create_on_update && sub == Sub::Main {
                metadata_mut(&mut obj).remove("resourceVersion");
                return self
                    .create(rk, path_ns, obj, origin, dry_run)
                    .map(|o| (o, true));
            }
            return Err(ApiError::not_found(&spec, &name));
        };
        let old_rv = rv_of(&old);
        let mut new = obj;
        match origin {
            Origin::Client => {
                let given = str_field(metadata_mut(&mut new), "resourceVersion");
                let given_rv = parse_rv(&given)?;
                if given_rv == 0 {
                    if !spec.allow_unconditional_update {
                        return Err(ApiError::invalid(
                            &spec.group,
                            &spec.plural,
                            &name,
                            vec![FieldError::invalid(
                                "metadata.resourceVersion",
                                "0x0",
                                "must be specified for an update",
                            )],
                        ));
                    }
                } else if given_rv != old_rv {
                    return Err(ApiError::conflict(&spec, &name, OPTIMISTIC_LOCK));
                }
                match sub {
                    Sub::Main if spec.status_subresource => copy_field(&old, &mut new, "status"),
                    Sub::Main => {}
                    Sub::Status => {
                        let mut merged = old.clone();
                        copy_field(&new, &mut merged, "status");
                        new = merged;
                    }
                }
                before_update(&spec, &old, &mut new)?;
                validate(&spec, &new)?;
            }
            Origin::Harness => {
                let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
                let meta = metadata_mut(&mut new);
                for field in ["uid", "creationTimestamp"] {
                    if meta.get(field).is_none()
                        && let Some(v) = old_meta.get(field)
                    {
                        meta.insert(field.into(), v.clone());
                    }
                }
                if spec.tracks_generation && meta.get("generation").is_none() {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    let bump = i64::from(spec_changed(&spec, &old, &new));
                    metadata_mut(&mut new).insert("generation".into(), json!(generation + bump));
                }
            }
        }
        set_rv(&mut new, old_rv);
        if new == old {
            // etcd does not write identical bytes: no new revision, no event.
            return Ok((old, false));
        }
        if dry_run {
            return Ok((new, false));
        }
        let finalizers_left = !finalizers(&new).is_empty();
        let old_deleting = !old["metadata"]["deletionTimestamp"].is_null();
        let old_grace = old["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        let rv = self.bump();
        set_rv(&mut new, rv);
        if !finalizers_left && old_deleting && old_grace == 0 {
            // ShouldDeleteDuringUpdate: the last finalizer is gone, so the stored object is
            // deleted instead (the update itself is never written); the client gets its own
            // object back.
            let mut last = old.clone();
            set_rv(&mut last, rv);
            self.commit(
                rk,
                Change {
                    rv,
                    ty: ChangeType::Deleted,
                    key,
                    object: last,
                    prev: Some(old),
                },
            );
            return Ok((new, false));
        }
        self.commit(
            rk,
            Change {
                rv,
                ty: ChangeType::Modified,
                key,
                object: new.clone(),
                prev: Some(old),
            },
        );
        Ok((new, false))
    }

    fn delete(
        &mut self,
        rk: &ResKey,
        ns: &str,
        name: &str,
        options: DeleteOptions,
        origin: Origin,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let spec = self.resources[rk].spec.clone();
        let key = object_key(ns, name);
        let Some(old) = self.resources[rk].objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&spec, name));
        };
        if let Some(uid) = &options.uid {
            let actual = old["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict(
                    &spec,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &options.resource_version {
            let actual = old["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            if rv != actual {
                return Err(ApiError::conflict(
                    &spec,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        let mut obj = old.clone();
        let mut graceful = false;
        let mut last_grace = 0;
        if origin == Origin::Client && spec.graceful_deletion {
            // rest.BeforeDelete with the Pod strategy's CheckGracefulDelete.
            let meta = metadata_mut(&mut obj);
            if !meta.get("deletionTimestamp").is_none_or(|v| v.is_null()) {
                if let Some(current) = meta
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                {
                    match options.grace_period_seconds {
                        Some(period) if period < current => {
                            let started = parse_time(&str_field(meta, "deletionTimestamp"))
                                .map(|t| t - jiff::SignedDuration::from_secs(current))
                                .unwrap_or_else(jiff::Timestamp::now);
                            let deadline = started + jiff::SignedDuration::from_secs(period);
                            meta.insert("deletionTimestamp".into(), json!(format_time(deadline)));
                            meta.insert("deletionGracePeriodSeconds".into(), json!(period));
                            graceful = true;
                            last_grace = period;
                        }
                        // Graceful deletion is pending: nothing to do.
                        _ => {
                            return Ok(Deleted {
                                object: old,
                                gone: false,
                            });
                        }
                    }
                }
            } else {
                let mut period = options.grace_period_seconds.unwrap_or_else(|| {
                    old["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                });
                let phase = old["status"]["phase"].as_str().unwrap_or_default();
                if old["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
                    || phase == "Succeeded"
                    || phase == "Failed"
                {
                    period = 0;
                }
                if period < 0 {
                    period = 1;
                }
                let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(period);
                meta.insert("deletionTimestamp".into(), json!(format_time(deadline)));
                meta.insert("deletionGracePeriodSeconds".into(), json!(period));
                if let Some(generation) = meta.get("generation").and_then(Value::as_i64)
                    && generation > 0
                {
                    meta.insert("generation".into(), json!(generation + 1));
                }
                graceful = true;
                last_grace = period;
            }
        }
        let pending_finalizers = !finalizers(&obj).is_empty();
        if graceful || pending_finalizers {
            if !graceful {
                mark_as_deleting(&mut obj);
            }
            if obj != old {
                if dry_run {
                    return Ok(Deleted {
                        object: obj,
                        gone: false,
                    });
                }
                let rv = self.bump();
                set_rv(&mut obj, rv);
                self.commit(
                    rk,
                    Change {
                        rv,
                        ty: ChangeType::Modified,
                        key: key.clone(),
                        object: obj.clone(),
                        prev: Some(old),
                    },
                );
            }
            if pending_finalizers || last_grace > 0 {
                return Ok(Deleted {
                    object: obj,
                    gone: false,
                });
            }
        }
        if dry_run {
            return Ok(Deleted {
                object: obj,
                gone: true,
            });
        }
        let prev = obj.clone();
        let rv = self.bump();
        let mut last = obj;
        set_rv(&mut last, rv);
        self.commit(
            rk,
            Change {
                rv,
                ty: ChangeType::Deleted,
                key,
                object: last,
                prev: Some(prev.clone()),
            },
        );
        Ok(Deleted {
            object: prev,
            gone: true,
        })
    }

    /// Applies a change to the objects, records it and sends it to the watchers.
    fn commit(&mut self, rk: &ResKey, change: Change) {
        let capacity = self.history_capacity;
        let res = self.resources.get_mut(rk).expect("registered resource");
        match change.ty {
            ChangeType::Added | ChangeType::Modified => {
                res.objects
                    .insert(change.key.clone(), change.object.clone());
            }
            ChangeType::Deleted => {
                res.objects.remove(&change.key);
            }
        }
        let spec = res.spec.clone();
        res.watchers
            .retain(|sub| match transition(&sub.scope, &change) {
                Some((ty, obj)) => sub
                    .tx
                    .send(WatchMsg::Line(event_line(
                        ty,
                        &project(&spec, sub.scope.projection, &obj, false),
                    )))
                    .is_ok(),
                None => !sub.tx.is_closed(),
            });
        res.history.push_back(change);
        while res.history.len() > capacity {
            let old = res.history.pop_front().expect("non-empty history");
            res.compacted_through = res.compacted_through.max(old.rv);
        }
    }

    /// The objects of a resource as they were at `rv`: the current ones with the later
    /// changes undone, as a view (a page of a large list costs the page, not the list).
    fn snapshot_at(&self, rk: &ResKey, rv: u64) -> Option<Snapshot<'_>> {
        let res = &self.resources[rk];
        if rv < res.compacted_through {
            return None;
        }
        // Undone from the newest change back, so the oldest change after `rv` decides.
        let mut undone = BTreeMap::new();
        for change in res.history.iter().rev().take_while(|c| c.rv > rv) {
            match (&change.ty, &change.prev) {
                (ChangeType::Added, _) => {
                    undone.insert(change.key.clone(), None);
                }
                (_, Some(prev)) => {
                    undone.insert(change.key.clone(), Some(prev));
                }
                (_, None) => {}
            }
        }
        Some(Snapshot {
            current: &res.objects,
            undone,
        })
    }

    /// Registers a watch; returns the events to send first and, unless the watch ended
    /// already, its id and channel.
    fn open_watch(
        &mut self,
        rk: &ResKey,
        scope: Scope,
        start: WatchStart,
    ) -> (
        Vec<WatchMsg>,
        Option<(u64, mpsc::UnboundedReceiver<WatchMsg>)>,
    ) {
        let current = self.rv;
        self.next_watch_id += 1;
        let id = self.next_watch_id;
        let res = self.resources.get_mut(rk).expect("registered resource");
        let spec = res.spec.clone();
        let mut first = Vec::new();
        match start {
            WatchStart::InitialEvents { bookmark } => {
                for obj in res.objects.values().filter(|o| scope.matches(o)) {
                    first.push(WatchMsg::Line(event_line(
                        "ADDED",
                        &project(&spec, scope.projection, obj, false),
                    )));
                }
                if bookmark {
                    first.push(WatchMsg::Line(bookmark_line(
                        &spec,
                        scope.projection,
                        current,
                        true,
                    )));
                }
            }
            WatchStart::Now => {}
            WatchStart::After(from) => {
                if from < res.compacted_through {
                    let status = ApiError::expired(&format!(
                        "too old resource version: {from} ({})",
                        res.compacted_through
                    ))
                    .to_status();
                    first.push(WatchMsg::Close(event_line("ERROR", &status)));
                    return (first, None);
                }
                for change in res.history.iter().filter(|c| c.rv > from) {
                    if let Some((ty, obj)) = transition(&scope, change) {
                        first.push(WatchMsg::Line(event_line(
                            ty,
                            &project(&spec, scope.projection, &obj, false),
                        )));
                    }
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        res.watchers.push(Subscriber { id, scope, tx });
        (first, Some((id, rx)))
    }
}

/// The event a watcher with this scope sees for a change (AS cacher/cache_watcher.go
/// `convertToWatchEvent`).
fn transition(scope: &Scope, change: &Change) -> Option<(&'static str, Value)> {
    match change.ty {
        ChangeType::Added => scope
            .matches(&change.object)
            .then(|| ("ADDED", change.object.clone())),
        ChangeType::Modified => {
            let was = change.prev.as_ref().is_some_and(|p| scope.matches(p));
            let is = scope.matches(&change.object);
            match (was, is) {
                (false, true) => Some(("ADDED", change.object.clone())),
                (true, true) => Some(("MODIFIED", change.object.clone())),
                (true, false) => {
                    let mut old = change.prev.clone().expect("previous state");
                    set_rv(&mut old, change.rv);
                    Some(("DELETED", old))
                }
                (false, false) => None,
            }
        }
        ChangeType::Deleted => scope
            .matches(&change.object)
            .then(|| ("DELETED", change.object.clone())),
    }
}

// ------------------------------------------------------------------------------------------------
// Object helpers
// ------------------------------------------------------------------------------------------------

fn object_key(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj.as_object_mut().expect("object");
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("metadata object")
}

fn str_field(map: &Map<String, Value>, field: &str) -> String {
    map.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    metadata_mut(obj).insert("resourceVersion".into(), json!(rv.to_string()));
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    if rv.is_empty() {
        return Ok(0);
    }
    rv.parse()
        .map_err(|_| ApiError::bad_request(&format!("invalid resource version: {rv:?}")))
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn copy_field(from: &Value, to: &mut Value, field: &str) {
    let root = to.as_object_mut().expect("object");
    match from.get(field) {
        Some(v) => {
            root.insert(field.into(), v.clone());
        }
        None => {
            root.remove(field);
        }
    }
}

/// Sets `kind`/`apiVersion` when missing; rejects other kinds (the decoder's 400).
fn check_types(obj: &mut Value, spec: &ResourceSpec) -> Result<(), ApiError> {
    let Some(root) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request is not an object",
        ));
    };
    let api_version = spec.api_version();
    match root.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            root.insert("apiVersion".into(), json!(api_version));
        }
        Some(given) if given != api_version => {
            return Err(ApiError::bad_request(&format!(
                "the API version in the data ({given}) does not match the expected API version ({api_version})"
            )));
        }
        Some(_) => {}
    }
    match root.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            root.insert("kind".into(), json!(spec.kind));
        }
        Some(given) if given != spec.kind => {
            return Err(ApiError::bad_request(&format!(
                "the kind in the data ({given}) does not match the expected kind ({})",
                spec.kind
            )));
        }
        Some(_) => {}
    }
    Ok(())
}

/// The namespace of a request's object must be empty or the URL's.
fn request_namespace(
    spec: &ResourceSpec,
    path_ns: Option<&str>,
    obj: &mut Value,
) -> Result<String, ApiError> {
    let meta = metadata_mut(obj);
    if !spec.namespaced {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let url_ns = path_ns.unwrap_or_default();
    let given = str_field(meta, "namespace");
    if given.is_empty() {
        meta.insert("namespace".into(), json!(url_ns));
    } else if given != url_ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(url_ns.to_string())
}

fn harness_namespace(spec: &ResourceSpec, obj: &mut Value) -> String {
    let meta = metadata_mut(obj);
    if !spec.namespaced {
        meta.remove("namespace");
        return String::new();
    }
    let ns = str_field(meta, "namespace");
    if ns.is_empty() {
        meta.insert("namespace".into(), json!("default"));
        return "default".into();
    }
    ns
}

/// RFC 1123 subdomain, as for most object names.
fn name_problem(name: &str) -> Option<String> {
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_string()
    })
}

/// PrepareForCreate of resources with a status subresource: users cannot set a status.
fn reset_status_on_create(spec: &ResourceSpec, obj: &mut Value) {
    let root = obj.as_object_mut().expect("object");
    if spec.builtin && spec.plural == "pods" && spec.group.is_empty() {
        let qos = qos_class(root.get("spec").unwrap_or(&Value::Null));
        root.insert(
            "status".into(),
            json!({"phase": "Pending", "qosClass": qos}),
        );
    } else {
        root.remove("status");
    }
}

/// kubernetes pkg/apis/core/helper/qos, simplified to the cpu and memory of each container.
fn qos_class(pod_spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod_spec[*k].as_array())
        .flatten();
    for c in containers {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let limit = limits.get(r);
            let request = requests.get(r).or(limit);
            if limit.is_some() || request.is_some() {
                any = true;
            }
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Type-specific validation that clients are likely to hit.
fn validate(spec: &ResourceSpec, obj: &Value) -> Result<(), ApiError> {
    if spec.group == "coordination.k8s.io" && spec.plural == "leases" {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(d) = obj["spec"]["leaseDurationSeconds"].as_i64()
            && d <= 0
        {
            return Err(ApiError::invalid(
                &spec.group,
                &spec.kind,
                name,
                vec![FieldError::invalid(
                    "spec.leaseDurationSeconds",
                    &d.to_string(),
                    "must be greater than 0",
                )],
            ));
        }
        if let Some(t) = obj["spec"]["leaseTransitions"].as_i64()
            && t < 0
        {
            return Err(ApiError::invalid(
                &spec.group,
                &spec.kind,
                name,
                vec![FieldError::invalid(
                    "spec.leaseTransitions",
                    &t.to_string(),
                    "must be greater than or equal to 0",
                )],
            ));
        }
    }
    Ok(())
}

fn spec_changed(spec: &ResourceSpec, old: &Value, new: &Value) -> bool {
    if spec.builtin {
        return old.get("spec") != new.get("spec");
    }
    let strip = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        for k in ["metadata", "status", "kind", "apiVersion"] {
            m.remove(k);
        }
        m
    };
    strip(old) != strip(new)
}

/// rest.BeforeUpdate and ValidateObjectMetaUpdate for client updates.
fn before_update(spec: &ResourceSpec, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    let name = old["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
    let immutable = |field: &str, value: &Value| {
        ApiError::invalid(
            &spec.group,
            &spec.kind,
            &name,
            vec![FieldError::invalid(
                &format!("metadata.{field}"),
                &value.to_string(),
                "field is immutable",
            )],
        )
    };
    let bump = spec.tracks_generation && spec_changed(spec, old, new);
    let meta = metadata_mut(new);
    match meta.get("uid").and_then(Value::as_str) {
        None | Some("") => {
            if let Some(uid) = old_meta.get("uid") {
                meta.insert("uid".into(), uid.clone());
            }
        }
        Some(uid) if Some(uid) != old_meta.get("uid").and_then(Value::as_str) => {
            return Err(immutable("uid", &json!(uid)));
        }
        Some(_) => {}
    }
    copy_meta(&old_meta, meta, "creationTimestamp");
    let old_deleting = old_meta
        .get("deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    if old_deleting {
        copy_meta(&old_meta, meta, "deletionTimestamp");
        if meta.get("deletionGracePeriodSeconds").is_none() {
            copy_meta(&old_meta, meta, "deletionGracePeriodSeconds");
        }
        let before: BTreeSet<String> = finalizers(old).into_iter().collect();
        let added: Vec<String> = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|f| !before.contains(*f))
            .map(str::to_string)
            .collect();
        if !added.is_empty() {
            return Err(ApiError::invalid(
                &spec.group,
                &spec.kind,
                &name,
                vec![FieldError::forbidden(
                    "metadata.finalizers",
                    &format!(
                        "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    ),
                )],
            ));
        }
    } else if let Some(ts) = meta.get("deletionTimestamp").filter(|v| !v.is_null()) {
        return Err(immutable("deletionTimestamp", ts));
    }
    if spec.tracks_generation {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta.insert("generation".into(), json!(generation + i64::from(bump)));
    } else {
        copy_meta(&old_meta, meta, "generation");
    }
    Ok(())
}

fn copy_meta(from: &Map<String, Value>, to: &mut Map<String, Value>, field: &str) {
    match from.get(field) {
        Some(v) => {
            to.insert(field.into(), v.clone());
        }
        None => {
            to.remove(field);
        }
    }
}

/// markAsDeleting: deletion of an object with finalizers by a non-graceful strategy.
fn mark_as_deleting(obj: &mut Value) {
    let meta = metadata_mut(obj);
    if meta.get("deletionTimestamp").is_some_and(|v| !v.is_null()) {
        return;
    }
    if let Some(generation) = meta.get("generation").and_then(Value::as_i64)
        && generation > 0
    {
        meta.insert("generation".into(), json!(generation + 1));
    }
    meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
}

/// The form of objects sent to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Projection {
    Full,
    /// `Accept: application/json;as=PartialObjectMetadata...`.
    Metadata,
}

fn projection_of(headers: &HeaderMap) -> Projection {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("as=PartialObjectMetadata") {
        Projection::Metadata
    } else {
        Projection::Full
    }
}

fn project(spec: &ResourceSpec, projection: Projection, obj: &Value, list_item: bool) -> Value {
    match projection {
        Projection::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
        Projection::Full if list_item && spec.builtin => {
            let mut item = obj.clone();
            if let Some(root) = item.as_object_mut() {
                root.remove("kind");
                root.remove("apiVersion");
            }
            item
        }
        Projection::Full => obj.clone(),
    }
}

/// One watch event as a line, `type` first as kube-apiserver writes it.
fn event_line(ty: &str, obj: &Value) -> Bytes {
    let object = serde_json::to_string(obj).expect("json");
    Bytes::from(format!("{{\"type\":\"{ty}\",\"object\":{object}}}\n"))
}

fn bookmark_line(spec: &ResourceSpec, projection: Projection, rv: u64, initial_end: bool) -> Bytes {
    let (kind, api_version) = match projection {
        Projection::Full => (spec.kind.clone(), spec.api_version()),
        Projection::Metadata => ("PartialObjectMetadata".into(), "meta.k8s.io/v1".into()),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}),
    )
}

fn injected_status(code: u16, rv: u64) -> Value {
    let (reason, message) = match code {
        410 => (
            "Expired".to_string(),
            format!("too old resource version: 1 ({rv})"),
        ),
        500 => (
            "InternalError".to_string(),
            "Internal error occurred: injected by the test".to_string(),
        ),
        _ => (
            reason_for(code).to_string(),
            "injected by the test".to_string(),
        ),
    };
    ApiError::new(code, &reason, &message).to_status()
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

// ------------------------------------------------------------------------------------------------
// Time, identifiers, encodings
// ------------------------------------------------------------------------------------------------

fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_i128(jiff::Timestamp::now().as_nanosecond());
    hasher.finish()
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// generateName suffix: 5 characters from the apiserver's alphabet (no vowels).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding, the encoding of continue tokens.
fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = B64.iter().position(|b| *b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The continue token of AS pkg/storage/continue.go: `rv` is -1 for a token that continues
/// from the latest state after its snapshot expired.
fn encode_continue(rv: i64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64url_encode(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let invalid = |why: &str| {
        ApiError::bad_request(&format!(
            "invalid continue token: continue key is not valid: {why}"
        ))
    };
    let bytes = base64url_decode(token).ok_or_else(|| invalid("not base64"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    if value["v"] != "meta.k8s.io/v1" {
        return Err(invalid(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    let rv = value["rv"]
        .as_i64()
        .ok_or_else(|| invalid("no resource version"))?;
    let start = value["start"].as_str().unwrap_or_default().to_string();
    if start.is_empty() || start.starts_with('/') || start.split('/').any(|s| s == "..") {
        return Err(invalid("the start key is not valid"));
    }
    Ok((rv, start))
}

// ------------------------------------------------------------------------------------------------
// Queries and selectors
// ------------------------------------------------------------------------------------------------

struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Form-urlencoded pairs; empty pairs (the `?&` kube-rs sends) are skipped.
    fn parse(raw: &str) -> Query {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (form_decode(k), form_decode(v))
            })
            .collect();
        Query { pairs }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Go's query conversion: any value but `false` and `0` is true.
    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "0"))
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(&format!("invalid value for {key}: {v:?}"))),
        }
    }
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn path_decode(s: &str) -> String {
    form_decode(&s.replace('+', "%2B"))
}

#[derive(Clone, Debug)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Clone, Debug, Default)]
struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in split_outside_parens(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let fail = |why: &str| {
                ApiError::bad_request(&format!("unable to parse requirement: {term:?}: {why}"))
            };
            let req = if let Some(key) = term.strip_prefix('!') {
                LabelRequirement::DoesNotExist(label_key(key.trim()).map_err(|e| fail(&e))?)
            } else if let Some(open) = term.find('(') {
                if !term.ends_with(')') {
                    return Err(fail("found '(', expected: ')'"));
                }
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values: Vec<String> = term[open + 1..term.len() - 1]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .collect();
                for v in &values {
                    label_value(v).map_err(|e| fail(&e))?;
                }
                match head.as_slice() {
                    [key, "in"] => {
                        LabelRequirement::In(label_key(key).map_err(|e| fail(&e))?, values)
                    }
                    [key, "notin"] => {
                        LabelRequirement::NotIn(label_key(key).map_err(|e| fail(&e))?, values)
                    }
                    _ => return Err(fail("expected 'in' or 'notin'")),
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelRequirement::NotEquals(
                    label_key(k.trim()).map_err(|e| fail(&e))?,
                    label_value(v.trim()).map_err(|e| fail(&e))?,
                )
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelRequirement::Equals(
                    label_key(k.trim()).map_err(|e| fail(&e))?,
                    label_value(v.trim()).map_err(|e| fail(&e))?,
                )
            } else {
                LabelRequirement::Exists(label_key(term).map_err(|e| fail(&e))?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => !get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

fn split_outside_parens(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_empty() || name_problem(prefix).is_none();
    if name_ok && prefix_ok && !(key.contains('/') && prefix.is_empty()) {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("invalid label value: {value:?}"))
    }
}

#[derive(Clone, Debug, Default)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(text: &str, spec: &ResourceSpec) -> Result<FieldSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(&format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            let supported = field == "metadata.name"
                || (field == "metadata.namespace" && spec.namespaced)
                || spec.field_labels.iter().any(|f| f == field);
            if !supported {
                return Err(ApiError::bad_request(&format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field
                .split('.')
                .fold(obj, |v, part| &v[part])
                .as_str()
                .unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

/// What a list or watch selects.
#[derive(Clone, Debug)]
struct Scope {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    projection: Projection,
}

impl Scope {
    fn from_query(
        spec: &ResourceSpec,
        namespace: Option<&str>,
        query: &Query,
        projection: Projection,
    ) -> Result<Scope, ApiError> {
        Ok(Scope {
            namespace: namespace.map(str::to_string),
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), spec)?,
            projection,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    fn has_selectors(&self) -> bool {
        !self.labels.0.is_empty() || !self.fields.0.is_empty()
    }
}

// ------------------------------------------------------------------------------------------------
// Errors as Status objects
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ApiError {
    code: u16,
    reason: String,
    message: String,
    details: Option<Value>,
    /// ListMeta of the Status (a continue token for an expired one).
    list_meta: Option<Value>,
}

struct FieldError {
    field: String,
    cause: &'static str,
    body: String,
}

impl FieldError {
    fn invalid(field: &str, value: &str, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueInvalid",
            body: format!("Invalid value: {value}: {detail}"),
        }
    }

    fn required(field: &str, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueRequired",
            body: format!("Required value: {detail}"),
        }
    }

    fn forbidden(field: &str, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueForbidden",
            body: format!("Forbidden: {detail}"),
        }
    }

    fn not_supported(field: &str, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            field: field.into(),
            cause: "FieldValueNotSupported",
            body: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &str, message: &str) -> Self {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            details: None,
            list_meta: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn resource_details(spec: &ResourceSpec, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": spec.plural});
        if !spec.group.is_empty() {
            d["group"] = json!(spec.group);
        }
        d
    }

    fn not_found(spec: &ResourceSpec, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            &format!("{} {name:?} not found", spec.qualified_resource()),
        )
        .with_details(Self::resource_details(spec, name))
    }

    fn path_not_found() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    fn already_exists(spec: &ResourceSpec, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            &format!("{} {name:?} already exists", spec.qualified_resource()),
        )
        .with_details(Self::resource_details(spec, name))
    }

    fn conflict(spec: &ResourceSpec, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                spec.qualified_resource()
            ),
        )
        .with_details(Self::resource_details(spec, name))
    }

    /// NewInvalid: `kind` is a Kind or, for the resourceVersion check of updates, a resource.
    fn invalid(group: &str, kind: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let texts: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.body))
            .collect();
        let aggregate = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.cause, "message": e.body, "field": e.field}))
            .collect();
        let mut details = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        if name.is_empty() {
            details.as_object_mut().expect("object").remove("name");
        }
        ApiError::new(
            422,
            "Invalid",
            &format!("{qualified} {name:?} is invalid: {aggregate}"),
        )
        .with_details(details)
    }

    fn invalid_list_options(errors: Vec<FieldError>) -> Self {
        Self::invalid("meta.k8s.io", "ListOptions", "", errors)
    }

    fn bad_request(message: &str) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    fn expired(message: &str) -> Self {
        ApiError::new(410, "Expired", message)
    }

    fn internal(message: &str) -> Self {
        ApiError::new(
            500,
            "InternalError",
            &format!("Internal error occurred: {message}"),
        )
        .with_details(json!({"causes": [{"message": message}]}))
    }

    fn method_not_supported(spec: &ResourceSpec, action: &str) -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            &format!(
                "{action} is not supported on resources of kind {:?}",
                spec.qualified_resource()
            ),
        )
        .with_details(json!({"kind": spec.plural}))
    }

    fn unsupported_media_type(accepted: &[&str]) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.list_meta.clone().unwrap_or_else(|| json!({})),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    fn into_response(self) -> Response {
        json_response(self.code, &self.to_status())
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut response = Response::new(Body::from(serde_json::to_vec(body).expect("json")));
    *response.status_mut() = StatusCode::from_u16(code).expect("status code");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// ------------------------------------------------------------------------------------------------
// HTTP: routing and handlers
// ------------------------------------------------------------------------------------------------

/// A parsed request path.
enum Target {
    Resource {
        group: String,
        version: String,
        namespace: Option<String>,
        plural: String,
        name: Option<String>,
        subresource: Option<String>,
    },
    /// `/version`
    Version,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`
    GroupVersion(String, String),
    Unknown,
}

fn parse_path(path: &str) -> Target {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(path_decode)
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (group, version, rest) = match seg.as_slice() {
        ["version"] => return Target::Version,
        ["api"] => return Target::CoreVersions,
        ["apis"] => return Target::Groups,
        ["apis", group] => return Target::Group(group.to_string()),
        ["api", version] => return Target::GroupVersion(String::new(), version.to_string()),
        ["apis", group, version] => {
            return Target::GroupVersion(group.to_string(), version.to_string());
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Target::Unknown,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Target::Unknown,
    };
    Target::Resource {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        plural: plural.to_string(),
        name,
        subresource,
    }
}

fn verb_of(method: &Method, target: &Target, query: &Query) -> &'static str {
    match target {
        Target::Resource { name, .. } => match (method.as_str(), name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if query.flag("watch") == Some(true) => "watch",
            ("GET", false) => "list",
            ("POST", false) => "create",
            ("PUT", true) => "update",
            ("PATCH", true) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "",
        },
        Target::Unknown => "",
        _ if method == Method::GET => "get",
        _ => "",
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_query = uri.query().unwrap_or_default().to_string();
    let query = Query::parse(&raw_query);
    let target = parse_path(uri.path());
    let verb = verb_of(&method, &target, &query);
    let mut record = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: raw_query,
        verb: verb.to_string(),
        group: String::new(),
        version: String::new(),
        resource: String::new(),
        subresource: None,
        namespace: None,
        name: None,
    };
    if let Target::Resource {
        group,
        version,
        namespace,
        plural,
        name,
        subresource,
    } = &target
    {
        record.group = group.clone();
        record.version = version.clone();
        record.resource = plural.clone();
        record.subresource = subresource.clone();
        record.namespace = namespace.clone();
        record.name = name.clone();
    }
    inner.record(record);

    let result = match target {
        Target::Resource {
            group,
            version,
            namespace,
            plural,
            name,
            subresource,
        } => {
            let request = ResourceRequest {
                rk: (group, plural),
                version,
                namespace,
                name,
                subresource,
                query,
                projection: projection_of(&headers),
                content_type: headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body,
            };
            serve_resource(&inner, verb, request).await
        }
        Target::Unknown => Err(ApiError::path_not_found()),
        _ if method != Method::GET => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
        Target::Version => Ok(json_response(
            200,
            &json!({
                "major": "1",
                "minor": "35",
                "gitVersion": "v1.35.0",
                "gitCommit": "",
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        )),
        Target::CoreVersions => Ok(json_response(
            200,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}
                ],
            }),
        )),
        Target::Groups => Ok(json_response(200, &discovery_groups(&inner))),
        Target::Group(group) => discovery_groups(&inner)["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == group.as_str()).cloned())
            .map(|mut g| {
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                json_response(200, &g)
            })
            .ok_or_else(ApiError::path_not_found),
        Target::GroupVersion(group, version) => discovery_resources(&inner, &group, &version),
    };
    result.unwrap_or_else(ApiError::into_response)
}

fn discovery_groups(inner: &Inner) -> Value {
    let store = lock(&inner.store);
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for res in store
        .resources
        .values()
        .filter(|r| !r.spec.group.is_empty())
    {
        groups
            .entry(res.spec.group.clone())
            .or_default()
            .insert(res.spec.version.clone());
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn discovery_resources(inner: &Inner, group: &str, version: &str) -> Result<Response, ApiError> {
    let store = lock(&inner.store);
    let mut resources = Vec::new();
    for res in store
        .resources
        .values()
        .filter(|r| r.spec.group == group && r.spec.version == version)
    {
        let spec = &res.spec;
        resources.push(json!({
            "name": spec.plural,
            "singularName": spec.kind.to_lowercase(),
            "namespaced": spec.namespaced,
            "kind": spec.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if spec.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", spec.plural),
                "singularName": "",
                "namespaced": spec.namespaced,
                "kind": spec.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() && !(group.is_empty() && version == "v1") {
        return Err(ApiError::path_not_found());
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        200,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }),
    ))
}

struct ResourceRequest {
    rk: ResKey,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    query: Query,
    projection: Projection,
    content_type: String,
    body: Bytes,
}

async fn serve_resource(
    inner: &Arc<Inner>,
    verb: &str,
    req: ResourceRequest,
) -> Result<Response, ApiError> {
    let spec = {
        let store = lock(&inner.store);
        match store.resources.get(&req.rk) {
            Some(res) if res.spec.version == req.version => res.spec.clone(),
            _ => return Err(ApiError::path_not_found()),
        }
    };
    // A namespaced resource has items only under a namespace, a cluster-scoped one never.
    if (spec.namespaced && req.name.is_some() && req.namespace.is_none())
        || (!spec.namespaced && req.namespace.is_some())
    {
        return Err(ApiError::path_not_found());
    }
    let sub = match req.subresource.as_deref() {
        None => Sub::Main,
        Some("status") if spec.status_subresource => Sub::Status,
        Some(_) => return Err(ApiError::path_not_found()),
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let dry_run = req.query.get("dryRun").is_some_and(|v| v == "All");
    match verb {
        "list" => {
            let store = lock(&inner.store);
            let list = list(
                &store,
                &req.rk,
                &spec,
                req.namespace.as_deref(),
                &req.query,
                req.projection,
            )?;
            Ok(json_response(200, &list))
        }
        "watch" => serve_watch(inner, &spec, req).await,
        "get" => {
            let store = lock(&inner.store);
            let name = req.name.as_deref().unwrap_or_default();
            store.resources[&req.rk]
                .objects
                .get(&object_key(&ns, name))
                .map(|o| json_response(200, &project(&spec, req.projection, o, false)))
                .ok_or_else(|| ApiError::not_found(&spec, name))
        }
        "create" => {
            let obj = parse_body(&req.body)?;
            let mut store = lock(&inner.store);
            let created = store.create(
                &req.rk,
                req.namespace.as_deref(),
                obj,
                Origin::Client,
                dry_run,
            )?;
            Ok(json_response(201, &created))
        }
        "update" => {
            let obj = parse_body(&req.body)?;
            let mut store = lock(&inner.store);
            let (obj, created) = store.update(
                &req.rk,
                req.namespace.as_deref(),
                req.name.as_deref(),
                obj,
                Origin::Client,
                sub,
                dry_run,
            )?;
            Ok(json_response(if created { 201 } else { 200 }, &obj))
        }
        "patch" => {
            let patch = parse_body(&req.body)?;
            let name = req.name.clone().unwrap_or_default();
            let mut store = lock(&inner.store);
            let Some(current) = store.resources[&req.rk]
                .objects
                .get(&object_key(&ns, &name))
                .cloned()
            else {
                return Err(ApiError::not_found(&spec, &name));
            };
            let mut patched = apply_patch(&spec, &req.content_type, current.clone(), &patch)?;
            if patched.get("metadata").is_none_or(|m| !m.is_object()) {
                patched["metadata"] = json!({});
            }
            if str_field(metadata_mut(&mut patched), "resourceVersion").is_empty() {
                // A patch without a resourceVersion applies to whatever is stored.
                set_rv(&mut patched, rv_of(&current));
            }
            let (obj, _) = store.update(
                &req.rk,
                req.namespace.as_deref(),
                Some(&name),
                patched,
                Origin::Client,
                sub,
                dry_run,
            )?;
            Ok(json_response(200, &obj))
        }
        "delete" => {
            let name = req.name.clone().unwrap_or_default();
            let body = if req.body.is_empty() {
                json!({})
            } else {
                parse_body(&req.body)?
            };
            let options = DeleteOptions {
                grace_period_seconds: body["gracePeriodSeconds"]
                    .as_i64()
                    .or(req.query.int("gracePeriodSeconds")?),
                uid: body["preconditions"]["uid"].as_str().map(str::to_string),
                resource_version: body["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string),
            };
            let dry_run = dry_run
                || body["dryRun"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == "All"));
            let mut store = lock(&inner.store);
            let done = store.delete(&req.rk, &ns, &name, options, Origin::Client, dry_run)?;
            if done.gone && !spec.return_deleted_object {
                let mut details = ApiError::resource_details(&spec, &name);
                details["uid"] = done.object["metadata"]["uid"].clone();
                return Ok(json_response(
                    200,
                    &json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": details,
                    }),
                ));
            }
            Ok(json_response(200, &done.object))
        }
        "deletecollection" => Err(ApiError::method_not_supported(&spec, "deletecollection")),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(&format!(
            "the object provided is unrecognized (must be of type JSON): {e}"
        ))
    })
}

/// LIST with the resourceVersion semantics of and paging over a snapshot.
fn list(
    store: &Store,
    rk: &ResKey,
    spec: &ResourceSpec,
    namespace: Option<&str>,
    query: &Query,
    projection: Projection,
) -> Result<Value, ApiError> {
    let rv_param = query.get("resourceVersion").unwrap_or_default();
    let rv_match = query.get("resourceVersionMatch").unwrap_or_default();
    let continue_token = query.get("continue").unwrap_or_default();
    let limit = query.int("limit")?.filter(|l| *l > 0);

    let mut errors = Vec::new();
    if !rv_match.is_empty() {
        if rv_param.is_empty() {
            errors.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !continue_token.is_empty() {
            errors.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv_match != "Exact" && rv_match != "NotOlderThan" {
            errors.push(FieldError::not_supported(
                "resourceVersionMatch",
                rv_match,
                &["Exact", "NotOlderThan", ""],
            ));
        }
        if rv_match == "Exact" && rv_param == "0" {
            errors.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if query.get("sendInitialEvents").is_some() {
        errors.push(FieldError::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_list_options(errors));
    }
    let scope = Scope::from_query(spec, namespace, query, projection)?;

    let current = store.rv;
    let (snapshot_rv, start) = if !continue_token.is_empty() {
        if !rv_param.is_empty() && rv_param != "0" {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (rv, start) = decode_continue(continue_token)?;
        (if rv < 0 { current } else { rv as u64 }, Some(start))
    } else {
        let rv = parse_rv(rv_param)?;
        let exact = rv != 0 && (rv_match == "Exact" || (rv_match.is_empty() && limit.is_some()));
        (if exact { rv.min(current) } else { current }, None)
    };
    let Some(objects) = store.snapshot_at(rk, snapshot_rv) else {
        if let Some(start) = &start {
            let mut err = ApiError::expired(CONTINUE_EXPIRED);
            err.list_meta = Some(json!({"continue": encode_continue(-1, start)}));
            return Err(err);
        }
        return Err(ApiError::expired(
            "The resourceVersion for the provided list is too old.",
        ));
    };

    // Keys are relative to the listed prefix: `name` under a namespace, `ns/name` across all.
    let prefix = namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
    let from = format!("{prefix}{}", start.as_deref().unwrap_or_default());
    let mut candidates = objects
        .from(&from)
        .map_while(|(k, v)| k.strip_prefix(prefix.as_str()).map(|rel| (rel, v)));
    let mut items = Vec::new();
    let mut last_key = None;
    while limit.is_none_or(|l| (items.len() as i64) < l) {
        let Some((rel, obj)) = candidates.next() else {
            break;
        };
        if scope.matches(obj) {
            items.push(project(spec, projection, obj, true));
            last_key = Some(rel.to_string());
        }
    }
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    let remaining = candidates.count();
    if remaining > 0
        && let Some(last) = last_key
    {
        metadata["continue"] = json!(encode_continue(snapshot_rv as i64, &format!("{last}\u{0}")));
        if !scope.has_selectors() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let (kind, api_version) = match projection {
        Projection::Full => (format!("{}List", spec.kind), spec.api_version()),
        Projection::Metadata => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1".into()),
    };
    // Built by hand: `json!` would copy every item once more.
    let mut list = Map::new();
    list.insert("kind".into(), Value::String(kind));
    list.insert("apiVersion".into(), Value::String(api_version));
    list.insert("metadata".into(), metadata);
    list.insert("items".into(), Value::Array(items));
    Ok(Value::Object(list))
}

/// WATCH.
async fn serve_watch(
    inner: &Arc<Inner>,
    spec: &ResourceSpec,
    req: ResourceRequest,
) -> Result<Response, ApiError> {
    let query = &req.query;
    let rv_param = query.get("resourceVersion").unwrap_or_default().to_string();
    let mut rv_match = query
        .get("resourceVersionMatch")
        .unwrap_or_default()
        .to_string();
    let mut send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks") == Some(true);
    let timeout = query.int("timeoutSeconds")?.filter(|t| *t > 0);

    // WatchList is on (default since 1.34): legacy ""/"0" watches get initial events.
    let legacy = rv_param.is_empty() || rv_param == "0";
    if send_initial.is_none() && rv_match.is_empty() && legacy {
        send_initial = Some(true);
        rv_match = "NotOlderThan".into();
    }
    let mut errors = Vec::new();
    if send_initial.is_some() && rv_match != "NotOlderThan" {
        errors.push(FieldError::forbidden(
            "resourceVersionMatch",
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if !rv_match.is_empty() {
        if send_initial.is_none() {
            errors.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if rv_match != "NotOlderThan" {
            errors.push(FieldError::not_supported(
                "resourceVersionMatch",
                &rv_match,
                &["NotOlderThan"],
            ));
        }
        if query.get("continue").is_some_and(|c| !c.is_empty()) {
            errors.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_list_options(errors));
    }
    let rv = parse_rv(&rv_param)?;
    let scope = Scope::from_query(spec, req.namespace.as_deref(), query, req.projection)?;
    let start = match send_initial {
        Some(true) => WatchStart::InitialEvents {
            bookmark: bookmarks,
        },
        Some(false) if rv == 0 => WatchStart::Now,
        _ => WatchStart::After(rv),
    };

    let mut hold = inner.hold.subscribe();
    let _ = hold.wait_for(|held| !held).await;

    let timeout = Duration::from_secs(match timeout {
        Some(t) => t as u64,
        // [minRequestTimeout, 2*minRequestTimeout) with the default of 1800 s.
        None => 1800 + random_u64() % 1800,
    });
    let deadline = Instant::now() + timeout;
    let (first, registration, interval) = {
        let mut store = lock(&inner.store);
        let (first, registration) = store.open_watch(&req.rk, scope.clone(), start);
        (first, registration, store.bookmark_interval)
    };
    let guard = WatchGuard {
        inner: inner.clone(),
        rk: req.rk.clone(),
        id: registration.as_ref().map(|(id, _)| *id),
    };
    let rx = registration.map(|(_, rx)| rx);
    let mut stream = WatchStream {
        inner: inner.clone(),
        spec: spec.clone(),
        projection: req.projection,
        rx,
        pending: first.into(),
        deadline,
        bookmarks,
        next_bookmark: None,
        pre_timeout_sent: false,
        done: false,
        _guard: guard,
    };
    stream.schedule_bookmark(interval);
    let body = Body::from_stream(futures::stream::unfold(stream, |mut stream| async move {
        stream.next_frame().await.map(|frame| (frame, stream))
    }));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Unregisters a watch when its response body is dropped.
struct WatchGuard {
    inner: Arc<Inner>,
    rk: ResKey,
    id: Option<u64>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id
            && let Some(res) = lock(&self.inner.store).resources.get_mut(&self.rk)
        {
            res.watchers.retain(|s| s.id != id);
        }
    }
}

struct WatchStream {
    inner: Arc<Inner>,
    spec: ResourceSpec,
    projection: Projection,
    rx: Option<mpsc::UnboundedReceiver<WatchMsg>>,
    pending: VecDeque<WatchMsg>,
    deadline: Instant,
    bookmarks: bool,
    next_bookmark: Option<Instant>,
    pre_timeout_sent: bool,
    done: bool,
    _guard: WatchGuard,
}

impl WatchStream {
    /// The next bookmark: one interval from now, or 2 s before the deadline if that comes
    /// first (AS cacher/cache_watcher.go `nextBookmarkTime`); none once that time is past.
    fn schedule_bookmark(&mut self, interval: Duration) {
        if !self.bookmarks {
            return;
        }
        let now = Instant::now();
        let mut next = now + interval;
        if !self.pre_timeout_sent
            && let Some(pre) = self.deadline.checked_sub(PRE_TIMEOUT_BOOKMARK)
            && pre < next
        {
            next = pre;
        }
        self.next_bookmark = (next >= now && next < self.deadline).then_some(next);
    }

    async fn next_frame(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(msg) = self.pending.pop_front() {
                match msg {
                    WatchMsg::Line(line) => return Some(Ok(line)),
                    WatchMsg::Close(line) => {
                        self.done = true;
                        return Some(Ok(line));
                    }
                    WatchMsg::End => {
                        self.done = true;
                        return None;
                    }
                    WatchMsg::Abort => {
                        self.done = true;
                        return Some(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "watch stream aborted by the test",
                        )));
                    }
                }
            }
            let Some(rx) = self.rx.as_mut() else {
                // A watch that ended at its start (the expired-resourceVersion ERROR).
                self.done = true;
                return None;
            };
            let bookmark_at = self.next_bookmark;
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(msg) => self.pending.push_back(msg),
                    None => {
                        self.done = true;
                        return None;
                    }
                },
                _ = tokio::time::sleep_until(self.deadline) => {
                    // timeoutSeconds elapsed: a clean end of the response.
                    self.done = true;
                    return None;
                }
                _ = tokio::time::sleep_until(bookmark_at.unwrap_or(self.deadline)), if bookmark_at.is_some() => {
                    self.emit_bookmark();
                }
            }
        }
    }

    fn emit_bookmark(&mut self) {
        if self
            .deadline
            .checked_sub(PRE_TIMEOUT_BOOKMARK)
            .is_some_and(|pre| Instant::now() >= pre)
        {
            self.pre_timeout_sent = true;
        }
        let (rv, interval) = {
            // Events are queued under this lock as they are committed, so everything up to
            // `rv` is in the channel now and goes out before the bookmark.
            let store = lock(&self.inner.store);
            if let Some(rx) = self.rx.as_mut() {
                while let Ok(msg) = rx.try_recv() {
                    self.pending.push_back(msg);
                }
            }
            (store.rv, store.bookmark_interval)
        };
        self.pending.push_back(WatchMsg::Line(bookmark_line(
            &self.spec,
            self.projection,
            rv,
            false,
        )));
        self.schedule_bookmark(interval);
    }
}

// ------------------------------------------------------------------------------------------------
// Patches
// ------------------------------------------------------------------------------------------------

fn apply_patch(
    spec: &ResourceSpec,
    content_type: &str,
    mut current: Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut accepted = vec![
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if spec.builtin {
        accepted.push("application/strategic-merge-patch+json");
    }
    match media.as_str() {
        "application/merge-patch+json" => {
            merge_patch(&mut current, patch);
            Ok(current)
        }
        "application/json-patch+json" => json_patch(current, patch),
        "application/strategic-merge-patch+json" if spec.builtin => {
            strategic_merge(&mut current, patch, "");
            Ok(current)
        }
        _ => Err(ApiError::unsupported_media_type(&accepted)),
    }
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch for built-in kinds: a merge patch where lists of objects are merged
/// by their key (`name`, `type` for conditions, `uid` for owner references, `ip` for IP
/// lists), `$patch: delete` removes a list element or a map, `$patch: replace` replaces a map,
/// and `metadata.finalizers` is merged as a set.
fn strategic_merge(target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch_map.clone();
            replacement.remove("$patch");
            *target = Value::Object(replacement);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("object");
    for (k, v) in patch_map {
        if k.starts_with('$') {
            continue;
        }
        let child = format!("{path}.{k}");
        if v.is_null() {
            target_map.remove(k);
            continue;
        }
        let slot = target_map.entry(k.clone()).or_insert(Value::Null);
        match (slot.as_array().cloned(), v.as_array()) {
            (Some(existing), Some(items)) if child == ".metadata.finalizers" => {
                let mut merged = existing;
                for item in items {
                    if !merged.contains(item) {
                        merged.push(item.clone());
                    }
                }
                *slot = Value::Array(merged);
            }
            (Some(existing), Some(items)) if items.iter().all(Value::is_object) => {
                let key = merge_key(k);
                if items.iter().all(|i| i.get(key).is_some()) {
                    let mut merged = existing;
                    for item in items {
                        let pos = merged.iter().position(|e| e.get(key) == item.get(key));
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (pos, delete) {
                            (Some(p), true) => {
                                merged.remove(p);
                            }
                            (None, true) => {}
                            (Some(p), false) => strategic_merge(&mut merged[p], item, &child),
                            (None, false) => {
                                let mut fresh = Value::Null;
                                strategic_merge(&mut fresh, item, &child);
                                merged.push(fresh);
                            }
                        }
                    }
                    *slot = Value::Array(merged);
                } else {
                    *slot = v.clone();
                }
            }
            _ => {
                strategic_merge(slot, v, &child);
                if slot.is_null() {
                    target_map.remove(k);
                }
            }
        }
    }
}

fn merge_key(field: &str) -> &'static str {
    match field {
        "conditions" => "type",
        "ownerReferences" => "uid",
        "podIPs" | "hostIPs" => "ip",
        _ => "name",
    }
}

/// RFC 6902.
fn json_patch(mut doc: Value, patch: &Value) -> Result<Value, ApiError> {
    let fail = |why: String| {
        ApiError::new(
            422,
            "Invalid",
            &format!("the server rejected our request due to an error in our request: {why}"),
        )
    };
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = op["path"].as_str().unwrap_or_default();
        match kind {
            "add" => pointer_add(&mut doc, path, op["value"].clone()).map_err(fail)?,
            "remove" => {
                pointer_remove(&mut doc, path).map_err(fail)?;
            }
            "replace" => {
                pointer_remove(&mut doc, path).map_err(fail)?;
                pointer_add(&mut doc, path, op["value"].clone()).map_err(fail)?;
            }
            "move" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = pointer_remove(&mut doc, from).map_err(fail)?;
                pointer_add(&mut doc, path, v).map_err(fail)?;
            }
            "copy" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| fail(format!("missing value at {from}")))?;
                pointer_add(&mut doc, path, v).map_err(fail)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(fail(format!("testing value {path} failed")));
                }
            }
            other => return Err(fail(format!("unexpected kind: {other:?}"))),
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    Ok((
        parent.to_string(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse()
                    .map_err(|_| format!("invalid array index {last:?}"))?
            };
            if index > items.len() {
                return Err(format!("index {index} out of bounds"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("missing value at {parent:?}")),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => map
            .remove(&last)
            .ok_or_else(|| format!("missing value at {path:?}")),
        Some(Value::Array(items)) => {
            let index: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if index >= items.len() {
                return Err(format!("index {index} out of bounds"));
            }
            Ok(items.remove(index))
        }
        _ => Err(format!("missing value at {parent:?}")),
    }
}
