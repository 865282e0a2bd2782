//! `sandwatch run`: the live daemon, wired.
//!
//! ```text
//!  kube watches ─┐                        ┌─▶ metrics (prometheus-client)
//!  (pods, CRs)   ├─(Ts, Change)─▶ engine ─┼─▶ logs
//!  ...           ┘   one mpsc     task    ├─▶ snapshot ─▶ HTTP (/readyz, /api/v1/findings, /)
//!                                          └─▶ transitions (broadcast, for in-process consumers)
//! ```
//!
//! One task owns the engine and applies changes in arrival order; a ticker advances its clock
//! every second so that grace-period timers fire. Sources are independent tasks; the HTTP
//! server reads only what the engine task publishes. The Kubernetes client is needed only by
//! what uses the cluster ([`Settings::cluster_use`]): a profile of records alone runs without.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::app::config::Config;
use crate::core::engine::{Change, Engine};
use crate::core::explain::explain;
use crate::model::finding::Transition;
use crate::model::source::SourceKind;
use crate::model::view::{About, RemediationView, Snapshot, SourceTimes};
use crate::remediation::action::Target;
use crate::remediation::deliver::Deliverer;
use crate::remediation::lease::Elector;
use crate::remediation::{Controller, Leadership, RemediationMetrics};
use crate::sinks::http;
use crate::sinks::metrics::{FindingMetrics, HealthMetrics};
use crate::sinks::record::Recorder;
use crate::sinks::traces::FindingSpans;
use crate::sinks::{Fanout, TransitionSink};
use crate::sources::ingest;
use crate::sources::kube::{self as kube_source, Context};
use crate::sources::records::Start;
use crate::sources::{Options, RecordSources};
use crate::util::shard::Shard;
use crate::util::time::Ts;

pub struct Settings {
    /// The profiles, their records sources and the remediation settings.
    pub config: Config,
    pub listen: SocketAddr,
    /// How long a source may fail before it is reported unsynced and starts over.
    pub stale_after: Duration,
    /// How often the engine's clock advances when nothing happens.
    pub tick: Duration,
    /// A file holding the records database URL, for every profile with `records.postgres`
    /// (instead of their `url_file` / `url_env`).
    pub database_url_file: Option<std::path::PathBuf>,
    /// The bearer token of the ingest API (required when a profile takes ingested records).
    pub ingest_token: Option<ingest::Token>,
    pub ingest_max_body: usize,
    /// An ingest request's body must arrive within this.
    pub ingest_body_timeout: Duration,
    /// Compete for a Lease before remediating; `None`: this replica always may.
    pub leader_election: Option<Elector>,
    /// Which part of the pods and records this replica keeps.
    pub shard: Shard,
    /// The HTTP server's bounds (connections, header timeout, shutdown grace).
    pub http: crate::sinks::http::serve::Limits,
    /// Append every input the engine applies to this file, as replay values (`--record`).
    pub record: Option<Recording>,
}

/// Where and how much `--record` writes.
#[derive(Clone, Debug)]
pub struct Recording {
    pub path: std::path::PathBuf,
    /// The file rotates at this size...
    pub max_bytes: u64,
    /// ...keeping this many old files (FILE.1, FILE.2, ...).
    pub keep: usize,
}

/// Something the daemon does through the Kubernetes API: with none, it needs no cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterUse {
    #[error("profile {profile:?} watches {what}")]
    Watches { profile: String, what: &'static str },
    #[error("remediation action {0:?} acts on Kubernetes objects")]
    Action(String),
    #[error("remediation competes for the Lease {namespace}/{name} (--leader-election)")]
    Lease { namespace: String, name: String },
}

impl Settings {
    pub fn new(config: Config, listen: SocketAddr) -> Settings {
        Settings {
            config,
            listen,
            stale_after: Duration::from_secs(30),
            tick: Duration::from_secs(1),
            database_url_file: None,
            ingest_token: None,
            ingest_max_body: 1 << 20,
            ingest_body_timeout: Duration::from_secs(10),
            leader_election: None,
            shard: Shard::ALL,
            http: Default::default(),
            record: None,
        }
    }

    /// The first thing this daemon would do through the Kubernetes API: watch a profile's
    /// pods or custom resources, act on Kubernetes objects, or compete for the remediation
    /// Lease. `None`: it runs without a cluster (a profile of pushed or polled records only).
    pub fn cluster_use(&self) -> Option<ClusterUse> {
        let config = &self.config;
        for (_, p) in config.profiles.iter() {
            let what = match (&p.pods, p.custom_resources.is_empty()) {
                (Some(_), _) => "pods",
                (None, false) => "custom resources",
                (None, true) => continue,
            };
            return Some(ClusterUse::Watches {
                profile: p.name.to_string(),
                what,
            });
        }
        let actions = &config.remediation.actions;
        if let Some(a) = actions
            .iter()
            .find(|a| matches!(a.target, Target::Kubernetes(_)))
        {
            return Some(ClusterUse::Action(a.name.as_str().to_string()));
        }
        match &self.leader_election {
            Some(e) if !actions.is_empty() => Some(ClusterUse::Lease {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
            }),
            _ => None,
        }
    }
}

/// A running daemon.
pub struct Daemon {
    /// The address the HTTP server listens on.
    pub addr: SocketAddr,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    transitions: broadcast::Sender<Arc<Transition>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Daemon {
    /// Starts the sources, the engine task, remediation and the HTTP server. `client` is
    /// needed only for what [`Settings::cluster_use`] names; without one, that is an error.
    pub async fn start(
        mut settings: Settings,
        client: Option<::kube::Client>,
    ) -> Result<Daemon, StartError> {
        if let (None, Some(why)) = (&client, settings.cluster_use()) {
            return Err(StartError::NoCluster(why));
        }
        // The process's TLS provider for the HTTP clients (no-op if already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = settings.config.clone();
        let mut metrics = Metrics::new(&config, settings.shard);
        let recorder = record(&settings, &mut metrics.registry)?;
        let (changes_tx, changes_rx) = mpsc::channel::<(Ts, Change)>(4096);
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (transitions, _) = broadcast::channel(4096);
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Records sources first: one that cannot start (no ingest token) stops the start.
        let health = &metrics.health;
        let routes =
            start_records(&mut settings, &changes_tx, health, &stop_rx, &mut tasks).await?;
        let (listener, addr) = listen(settings.listen).await?;
        let (status, remediation_tx, explain_rx) = status(&config, settings.shard);
        let app = http::router(snapshot_rx.clone(), Arc::new(metrics.registry), status);
        let app = routes.into_iter().fold(app, Router::merge);
        tasks.spawn(http::serve::serve(
            listener,
            app,
            settings.http,
            stop_rx.clone(),
        ));
        info!(%addr, "serving /healthz, /readyz, /api/v1/findings and /metrics");

        let spans = FindingSpans::default();
        let engine = EngineTask {
            engine: Engine::sharded(config.profiles.clone(), settings.shard),
            sinks: Fanout::new()
                .with(metrics.findings.sink())
                .with(spans.clone())
                .with(crate::sinks::log::Log)
                .with(Broadcast(transitions.clone())),
            findings: metrics.findings.clone(),
            health: metrics.health.clone(),
            snapshot: snapshot_tx,
            errors: HashMap::new(),
            recorder,
        };
        tasks.spawn(engine.run((changes_rx, explain_rx), settings.tick, stop_rx.clone()));
        let lead = Lead {
            election: settings.leader_election.clone(),
            client: client.clone(),
        };
        remediate(
            &config,
            lead,
            (metrics.remediation, remediation_tx),
            spans,
            snapshot_rx.clone(),
            &stop_rx,
            &mut tasks,
        )?;
        watch_sources(
            client,
            &settings,
            changes_tx,
            &metrics.health,
            &stop_rx,
            &mut tasks,
        );
        Ok(Daemon {
            addr,
            snapshot: snapshot_rx,
            transitions,
            stop,
            tasks,
        })
    }

    /// Every transition from now on.
    pub fn transitions(&self) -> broadcast::Receiver<Arc<Transition>> {
        self.transitions.subscribe()
    }

    /// Stops everything and waits for the tasks to finish.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(3600)).await;
    }

    /// Stops everything, waits up to `deadline` for the tasks to finish (calls under way,
    /// the Lease release, HTTP requests), then drops whatever is left. Returns whether
    /// everything finished in time.
    pub async fn shutdown_within(mut self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        let finished = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !finished {
            warn!(
                left = self.tasks.len(),
                "shutdown did not finish within {deadline:?}: stopping what is left"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        finished
    }

    /// Stops everything at once, as a crash would: no lease release, no graceful close.
    pub async fn abort(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Records(#[from] crate::sources::records::StartError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Remediation(#[from] crate::remediation::deliver::DelivererError),
    #[error(transparent)]
    Record(#[from] crate::sinks::record::RecordError),
    #[error("{0}, which needs the Kubernetes API, but no client for it was given")]
    NoCluster(ClusterUse),
}

/// Every series the daemon exports, registered.
struct Metrics {
    findings: FindingMetrics,
    health: HealthMetrics,
    remediation: RemediationMetrics,
    registry: prometheus_client::registry::Registry,
}

impl Metrics {
    fn new(config: &Config, shard: Shard) -> Metrics {
        let findings = FindingMetrics::new(&config.profiles, &config.all_feeds());
        let health = HealthMetrics::default();
        let mut registry = crate::sinks::metrics::registry(shard);
        findings.register(&mut registry);
        health.register(&mut registry);
        let actions = &config.remediation.actions;
        let remediation = RemediationMetrics::new(actions);
        if !actions.is_empty() {
            remediation.register(&mut registry);
        }
        crate::sinks::metrics::register_build_info(&mut registry);
        crate::sinks::metrics::register_shard(&mut registry, shard);
        Metrics {
            findings,
            health,
            remediation,
            registry,
        }
    }
}

/// The recording, when `--record` asks for one.
fn record(
    settings: &Settings,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Option<Recorder>, StartError> {
    let Some(r) = &settings.record else {
        return Ok(None);
    };
    let profiles = settings.config.profiles.clone();
    Ok(Some(Recorder::start(
        &r.path,
        r.max_bytes,
        r.keep,
        profiles,
        registry,
    )?))
}

/// What the status page and explain read besides the snapshot, and the ends that feed them:
/// remediation's view, and the engine task's queue of questions.
fn status(
    config: &Config,
    shard: Shard,
) -> (
    http::Status,
    watch::Sender<Arc<RemediationView>>,
    mpsc::Receiver<http::explain::Question>,
) {
    let (remediation_tx, remediation_rx) = watch::channel(Arc::default());
    let (explain_tx, explain_rx) = mpsc::channel(http::explain::QUEUE);
    let status = http::Status {
        about: about(config, shard),
        remediation: remediation_rx,
        explain: Some(explain_tx),
    };
    (status, remediation_tx, explain_rx)
}

/// The daemon, as the status page introduces it.
fn about(config: &Config, shard: Shard) -> About {
    About {
        version: env!("CARGO_PKG_VERSION"),
        started_at: Ts::now(),
        shard: format!("{}/{}", shard.index, shard.total),
        remediation: (!config.remediation.actions.is_empty()).then_some(
            if config.remediation.live {
                "live"
            } else {
                "dry_run"
            },
        ),
    }
}

/// The HTTP listener, and the address it is bound to (the port may have been 0).
async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// Starts the records sources every profile configures, registers their health series and
/// sends the engine their first statuses (before anything can be pushed). What they route is
/// for the HTTP server.
async fn start_records(
    settings: &mut Settings,
    changes: &mpsc::Sender<(Ts, Change)>,
    health: &HealthMetrics,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<Option<Router>, StartError> {
    let config = &settings.config;
    let mut options = Options {
        database_url_file: settings.database_url_file.clone(),
        ingest_token: settings.ingest_token.take(),
        ingest_max_body: settings.ingest_max_body,
        ingest_body_timeout: settings.ingest_body_timeout,
    };
    let mut cx = Start::new(
        config.profiles.clone(),
        changes.clone(),
        Arc::new(health.clone()),
        &mut options,
        stop.clone(),
        tasks,
    );
    RecordSources::start(&config.records, &mut cx)?;
    let started = cx.finish();
    for (name, kind) in &started.sources {
        health.register_source(name, *kind);
    }
    for change in started.announced {
        let _ = changes.send((Ts::now(), change)).await;
    }
    Ok(started.router)
}

/// How this replica may remediate: always, or while it holds the Lease.
struct Lead {
    election: Option<Elector>,
    client: Option<::kube::Client>,
}

/// Starts remediation (and the Lease it competes for), when an action is configured.
fn remediate(
    config: &Config,
    lead: Lead,
    (metrics, view): (RemediationMetrics, watch::Sender<Arc<RemediationView>>),
    spans: FindingSpans,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<(), StartError> {
    let actions = &config.remediation.actions;
    if actions.is_empty() {
        return Ok(());
    }
    let (lead_tx, lead_rx) = watch::channel(match lead.election {
        None => Leadership::ALWAYS,
        Some(_) => Leadership {
            leader: false,
            until: None,
        },
    });
    // The Lease is released only once the controller has stopped, so that no call of this
    // replica is still under way when another one takes over.
    let (controller_done, controller_done_rx) = watch::channel(false);
    // Without a client (which cluster_use rules out) this replica would never lead.
    match (lead.election, &lead.client) {
        (Some(elector), Some(client)) => {
            info!(lease = %elector.name, namespace = %elector.namespace, identity = %elector.identity, "competing for the remediation lease");
            tasks.spawn(elector.run(
                client.clone(),
                lead_tx,
                controller_done_rx,
                metrics.lease_errors.clone(),
            ));
        }
        _ => drop(lead_tx),
    }
    let deliverer = Deliverer::new(actions, config.remediation.timeout, lead.client)?;
    let controller = Controller::new(
        config.remediation.clone(),
        config.profiles.clone(),
        deliverer,
        snapshot,
        lead_rx,
        metrics,
        Arc::new(move |id| spans.get(id)),
    )
    .publishing_to(view);
    let stop = stop.clone();
    tasks.spawn(async move {
        controller.run(stop).await;
        let _ = controller_done.send(true);
    });
    Ok(())
}

/// Starts the Kubernetes watches, each until `stop`. Without a client there is nothing to
/// watch ([`Settings::cluster_use`] says so).
fn watch_sources(
    client: Option<::kube::Client>,
    settings: &Settings,
    changes: mpsc::Sender<(Ts, Change)>,
    health: &HealthMetrics,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    let Some(client) = client else { return };
    let cx = Context {
        client,
        profiles: settings.config.profiles.clone(),
        changes,
        stale_after: settings.stale_after,
        counters: Arc::new(health.clone()),
    };
    for w in kube_source::watches(&cx.profiles) {
        info!(source = %w.name, selector = w.label_selector.as_deref().unwrap_or(""), "watching");
        health.register_source(&w.name, SourceKind::Watch);
        let cx = cx.clone();
        tasks.spawn(until(stop.clone(), async move { w.run(cx).await }));
    }
}

/// Runs `task` until it ends or `stop` is set.
async fn until(mut stop: watch::Receiver<bool>, task: impl Future<Output = ()>) {
    tokio::select! {
        _ = task => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Hands every transition to in-process consumers (tests, tools).
struct Broadcast(broadcast::Sender<Arc<Transition>>);

impl TransitionSink for Broadcast {
    fn transition(&mut self, t: &Transition) {
        let _ = self.0.send(Arc::new(t.clone()));
    }
}

struct EngineTask {
    engine: Engine,
    /// Metrics, logs, spans and the broadcast.
    sinks: Fanout<'static>,
    findings: FindingMetrics,
    health: HealthMetrics,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The last error each source reported, and when.
    errors: HashMap<String, (Ts, String)>,
    /// `--record`: every change applied, as replay values.
    recorder: Option<Recorder>,
}

impl EngineTask {
    async fn run(
        mut self,
        (mut changes, mut questions): (
            mpsc::Receiver<(Ts, Change)>,
            mpsc::Receiver<http::explain::Question>,
        ),
        tick: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The snapshot is rebuilt once a burst of changes has been applied (or every 250 ms
        // during a long one), not after each change: a relist of 100,000 pods stays linear.
        let mut dirty = false;
        let mut published = tokio::time::Instant::now();
        loop {
            let (at, change) = tokio::select! {
                c = changes.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
                _ = ticker.tick() => (Ts::now(), Change::Tick),
                Some((query, answer)) = questions.recv() => {
                    // A client that gave up (503 after its wait) is not answered.
                    if !answer.is_closed() {
                        let _ = answer.send(explain(&self.engine, &query));
                    }
                    continue;
                }
                _ = stop.wait_for(|s| *s) => break,
            };
            let source = match &change {
                Change::Source(s) => {
                    if let Some(e) = &s.error {
                        self.errors.insert(s.name.clone(), (at, e.clone()));
                    }
                    Some((s.name.clone(), s.healthy()))
                }
                _ => None,
            };
            let tick = matches!(change, Change::Tick);
            if let Some(r) = self.recorder.as_ref().filter(|_| !tick) {
                r.change(at, &change, false);
            }
            let out = self.engine.apply(at, change);
            if let Some(r) = self.recorder.as_ref().filter(|_| tick && !out.is_empty()) {
                r.change(at, &Change::Tick, true);
            }
            if let Some((name, ok)) = &source {
                self.health.source_status(name, *ok);
                self.findings.set_rules_active(&self.engine.rules_active());
            }
            for n in self.engine.take_notices() {
                self.health.notice(&n);
                warn!(reason = n.reason, "{}", crate::util::text::clip(&n.message));
            }
            for t in &out {
                self.sinks.transition(t);
            }
            dirty |= !out.is_empty() || source.is_some() || self.due_for_counts(at);
            if dirty && (changes.is_empty() || published.elapsed() >= Duration::from_millis(250)) {
                self.publish(at);
                dirty = false;
                published = tokio::time::Instant::now();
            }
        }
    }

    /// The tracked counts in the snapshot are refreshed at least every few seconds.
    fn due_for_counts(&self, at: Ts) -> bool {
        let last = self.snapshot.borrow().at;
        at.secs_since(last) >= 2.0
    }

    fn publish(&self, at: Ts) {
        let mut snap = self.engine.snapshot(at);
        snap.source_times = snap
            .sources
            .iter()
            .map(|s| {
                let times = SourceTimes {
                    last_success: self.health.last_success(&s.name),
                    last_error: self.errors.get(&s.name).cloned(),
                };
                (s.name.clone(), times)
            })
            .collect();
        self.snapshot.send_replace(Arc::new(snap));
    }
}
