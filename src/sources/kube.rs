//! The Kubernetes source: pods and custom resources, through kube-runtime's watcher.
//!
//! One [`Watch`] per profile and resource (and per namespace when a profile lists namespaces)
//! runs `kube_runtime::watcher` with the profile's label selector, decoding each object
//! straight into a slim type (a pod into [`Object`], a custom resource into [`CustomObject`]:
//! identity and `status.phase`; no reflector store of whole objects) and sending [`Change`]s
//! to the engine, for that profile only. It tells the engine how far it can be trusted:
//! - unsynced until the initial list is complete (`InitDone`);
//! - unsynced again while the watcher relists (after a 410 Gone), and on `InitDone` it sends
//!   the set of objects listed, so that what vanished during the gap is seen as deleted and
//!   nothing else changes: no finding flaps because of a relist;
//! - unsynced when errors last longer than `stale_after`; it then starts over with a fresh
//!   list, which succeeds by itself once the API server answers again. Retries use the
//!   watcher's own exponential backoff with jitter (800 ms to 30 s).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::core::engine::Change;
use crate::core::world::{Feed, SourceStatus};
use crate::model::kubernetes::{CustomObject, Lenient, Object};
use crate::model::profile::{ProfileId, Profiles, ResourceRole};
use crate::sources::{InputError, SourceCounters, WatchType, object_change, resource_change};
use crate::util::time::Ts;

/// One watched resource, in one scope.
#[derive(Clone, Debug)]
pub struct Watch {
    /// The source's name in readiness reports and metrics, e.g. `pods/sandbox-api`.
    pub name: String,
    pub feed: Feed,
    pub profile: ProfileId,
    pub resource: ApiResource,
    /// `None` watches every namespace.
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
}

/// Every watch the profiles call for: their sandbox pods, and the custom resources they name.
pub fn watches(profiles: &Profiles) -> Vec<Watch> {
    let mut out = Vec::new();
    for (id, p) in profiles.iter() {
        let namespaces: Vec<Option<String>> = match p.pods.as_ref().map(|m| &m.namespaces) {
            Some(list) if !list.is_empty() => list.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        let scoped =
            |kind: String, ns: &Option<String>| crate::sources::name(&kind, &p.name, ns.as_deref());
        if let Some(pods) = &p.pods {
            for ns in &namespaces {
                out.push(Watch {
                    name: scoped("pods".into(), ns),
                    feed: Feed::Pods,
                    profile: id,
                    resource: ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
                    namespace: ns.clone(),
                    label_selector: Some(pods.selector_text.clone()),
                });
            }
        }
        for cr in &p.custom_resources {
            let resource = ApiResource {
                group: cr.group.clone(),
                version: cr.version.clone(),
                api_version: cr.api_version(),
                kind: cr.kind.clone(),
                plural: cr.plural.clone(),
            };
            let feed = match cr.role {
                ResourceRole::Session => Feed::Sessions,
                ResourceRole::ResumeTarget => Feed::ResumeTargets,
            };
            for ns in &namespaces {
                out.push(Watch {
                    name: scoped(format!("{}.{}", cr.plural, cr.group), ns),
                    feed,
                    profile: id,
                    resource: resource.clone(),
                    namespace: ns.clone(),
                    label_selector: None,
                });
            }
        }
    }
    out
}

/// What a watch loop needs from the rest of the daemon.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub profiles: Arc<Profiles>,
    pub changes: mpsc::Sender<(Ts, Change)>,
    /// How long errors may last before the source is reported unsynced and relisted.
    pub stale_after: Duration,
    pub counters: Arc<dyn SourceCounters>,
}

impl Watch {
    fn status(&self, synced: bool) -> Change {
        Change::Source(
            SourceStatus::new(
                self.name.clone(),
                Some(self.profile),
                vec![self.feed],
                synced,
            )
            .in_namespace(self.namespace.clone()),
        )
    }

    fn api<K: Watched>(&self, client: Client) -> Api<Lenient<K>> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &self.resource),
            None => Api::all_with(client, &self.resource),
        }
    }

    /// Watches until the engine goes away.
    pub async fn run(self, cx: Context) {
        match self.feed {
            Feed::Pods => self.watch::<Object>(cx).await,
            _ => self.watch::<CustomObject>(cx).await,
        }
    }

    /// Watches with one watcher stream after another, each starting with a full list, until
    /// the engine goes away.
    async fn watch<K: Watched>(self, cx: Context) {
        if !send(&cx, self.status(false)).await {
            return;
        }
        let mut config = watcher::Config::default();
        if let Some(selector) = &self.label_selector {
            config = config.labels(selector);
        }
        let mut first = true;
        loop {
            if !first {
                cx.counters.watch_restart(&self.name);
            }
            first = false;
            if !self.stream::<K>(&config, &cx).await {
                return;
            }
        }
    }

    /// One watcher stream, from its first list until it ends or its errors outlast
    /// `stale_after`; `false` when the engine is gone.
    async fn stream<K: Watched>(&self, config: &watcher::Config, cx: &Context) -> bool {
        let mut stream = watcher::watcher(self.api::<K>(cx.client.clone()), config.clone())
            .default_backoff()
            .boxed();
        let check_every =
            (cx.stale_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut check = tokio::time::interval(check_every);
        let mut pass = Pass::default();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = check.tick() => {
                    let stale = pass.failing_since.is_some_and(|t| t.elapsed() >= cx.stale_after);
                    if stale && pass.synced {
                        warn!(source = %self.name, "the API server has not answered for {:?}: reporting the source unsynced and starting over with a full list", cx.stale_after);
                        return send(cx, self.status(false)).await;
                    }
                    continue;
                }
            };
            let event = match item {
                None => return true,
                Some(Err(e)) => {
                    cx.counters.watch_error(&self.name);
                    if is_gone(&e) {
                        // Routine: the watch's resourceVersion was compacted away; the
                        // watcher relists (see `list_begins`).
                        debug!(source = %self.name, error = %e, "watch expired (410 Gone)");
                    } else {
                        warn!(source = %self.name, error = %e, "watch failed; retrying with backoff");
                    }
                    pass.failing_since.get_or_insert_with(Instant::now);
                    continue;
                }
                Some(Ok(event)) => event,
            };
            pass.failing_since = None;
            cx.counters.watch_event(&self.name);
            if !self.event(event, &mut pass, cx).await {
                return false;
            }
        }
    }

    /// Takes one watcher event: a list begins or ends, or an object (a pod or a custom
    /// resource) is listed, changed or deleted. `false` when the engine is gone.
    async fn event<K: Watched>(
        &self,
        event: Event<Lenient<K>>,
        pass: &mut Pass,
        cx: &Context,
    ) -> bool {
        let change = match event {
            Event::Init => return self.list_begins(pass, cx).await,
            Event::InitDone => return self.list_done(pass, cx).await,
            Event::InitApply(obj) => {
                if let Some(seen) = pass.listed.as_mut() {
                    // An object that cannot be read is still there: what was known of it
                    // stays.
                    seen.insert(key(kube::Resource::meta(&obj)));
                }
                self.change(WatchType::Added, obj, cx)
            }
            Event::Apply(obj) => self.change(WatchType::Modified, obj, cx),
            Event::Delete(obj) => self.change(WatchType::Deleted, obj, cx),
        };
        match change {
            Some(change) => send(cx, change).await,
            None => true,
        }
    }

    /// A list (or relist) begins: its span opens, and a relist reports the source unsynced
    /// until it is complete. `false` when the engine is gone.
    async fn list_begins(&self, pass: &mut Pass, cx: &Context) -> bool {
        debug!(source = %self.name, "listing");
        pass.listed = Some(HashSet::new());
        pass.sync_span = Some(tracing::info_span!(
            parent: None,
            "source.sync",
            source = %self.name,
            source.kind = "kubernetes",
            relist = pass.synced,
            objects = tracing::field::Empty,
        ));
        if pass.synced {
            pass.synced = false;
            info!(source = %self.name, "relisting (the watch expired); findings that rest on this source hold until the list is complete");
            return send(cx, self.status(false)).await;
        }
        true
    }

    /// A list is complete: the engine learns every object it listed, and the source is
    /// synced. `false` when the engine is gone.
    async fn list_done(&self, pass: &mut Pass, cx: &Context) -> bool {
        let listed = pass.listed.take().unwrap_or_default();
        if let Some(span) = pass.sync_span.take() {
            span.record("objects", listed.len());
        }
        info!(source = %self.name, objects = listed.len(), "synced");
        let done = Change::Listed {
            feed: self.feed,
            profile: self.profile,
            namespace: self.namespace.clone(),
            listed,
        };
        if !send(cx, done).await || !send(cx, self.status(true)).await {
            return false;
        }
        pass.synced = true;
        true
    }

    /// Turns one object into a change; objects that cannot be used are logged and counted.
    /// One the slim decoder could not read is skipped (what was known of it stays), unless
    /// it is being deleted: its identity is enough for that.
    fn change<K: Watched>(&self, kind: WatchType, obj: Lenient<K>, cx: &Context) -> Option<Change> {
        let result = match obj.decoded {
            Ok(t) => t.change(kind, self, &cx.profiles),
            Err((meta, _)) if kind == WatchType::Deleted => K::deleted(&meta, self, &cx.profiles),
            Err((meta, why)) => Err(InputError::new(
                "invalid_value",
                format!(
                    "{} {}/{}: {why}; what was known of it stays",
                    self.resource.kind,
                    meta.namespace.as_deref().unwrap_or("-"),
                    meta.name.as_deref().unwrap_or("-"),
                ),
            )),
        };
        match result {
            Ok(change) => change,
            Err(e) => {
                cx.counters.rejected(&self.name, e.reason);
                warn!(source = %self.name, reason = e.reason, "skipped an object: {}", crate::util::text::clip(&e.message));
                None
            }
        }
    }
}

/// Whether a watcher error is a 410 Gone: the resourceVersion the watch resumed from is too
/// old, and the watcher starts over with a list. Any API server does this from time to time.
fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// Sends a change to the engine: `false` when it is gone.
async fn send(cx: &Context, change: Change) -> bool {
    cx.changes.send((Ts::now(), change)).await.is_ok()
}

/// Where one watcher stream stands.
#[derive(Default)]
struct Pass {
    /// The objects listed so far, while a list (or relist) is under way.
    listed: Option<HashSet<(String, String)>>,
    /// A span for each initial list (or relist), closed when it completes.
    sync_span: Option<tracing::Span>,
    /// A list has completed, and no relist has begun since.
    synced: bool,
    /// When the errors that have not stopped since began.
    failing_since: Option<Instant>,
}

/// (namespace, name) of an object, as a full list reports it.
fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What the watch loop decodes each object into: the slim pod, or a custom resource's
/// identity and phase.
trait Watched:
    kube::Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn change(
        self,
        kind: WatchType,
        watch: &Watch,
        profiles: &Profiles,
    ) -> Result<Option<Change>, InputError>;

    /// The deletion of an object known only by its identity.
    fn deleted(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        watch: &Watch,
        profiles: &Profiles,
    ) -> Result<Option<Change>, InputError>;
}

impl Watched for Object {
    fn change(
        mut self,
        kind: WatchType,
        watch: &Watch,
        profiles: &Profiles,
    ) -> Result<Option<Change>, InputError> {
        // List items of built-in kinds carry no kind/apiVersion.
        if self.kind.is_empty() {
            self.kind = watch.resource.kind.clone();
            self.api_version = watch.resource.api_version.clone();
        }
        Ok(object_change(kind, Box::new(self), profiles, Some(watch.profile))?.map(|(_, c)| c))
    }

    fn deleted(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        watch: &Watch,
        _profiles: &Profiles,
    ) -> Result<Option<Change>, InputError> {
        let (namespace, name) = crate::sources::identity(
            &watch.resource.kind,
            meta.namespace.as_deref().filter(|n| !n.is_empty()),
            meta.name.as_deref().filter(|n| !n.is_empty()),
        )?;
        Ok(Some(Change::PodDeleted {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: meta.uid.clone(),
        }))
    }
}

impl Watched for CustomObject {
    fn change(
        self,
        kind: WatchType,
        watch: &Watch,
        profiles: &Profiles,
    ) -> Result<Option<Change>, InputError> {
        let phase = self.phase();
        let changed_at = self.changed_at();
        let (namespace, name) = crate::sources::identity(
            &watch.resource.kind,
            self.metadata.namespace.as_deref().filter(|n| !n.is_empty()),
            self.metadata.name.as_deref().filter(|n| !n.is_empty()),
        )?;
        // Items of a list may carry no kind/apiVersion: the watch knows what it asked for.
        Ok(resource_change(
            kind,
            &watch.resource.api_version,
            &watch.resource.kind,
            namespace,
            name,
            phase,
            changed_at,
            profiles,
            Some(watch.profile),
        )?
        .map(|(_, c)| c))
    }

    fn deleted(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        watch: &Watch,
        profiles: &Profiles,
    ) -> Result<Option<Change>, InputError> {
        CustomObject {
            metadata: meta.clone(),
            ..CustomObject::default()
        }
        .change(WatchType::Deleted, watch, profiles)
    }
}
