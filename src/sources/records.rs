//! The seam between the records sources and the rest of the daemon.
//!
//! A records source (the platform's database, the ingest API) reads some kinds of record for
//! the profiles that configure it under `records:` and sends them to the engine, as
//! `Change::Record`s, with its health as `Change::Source`s. Each implements [`RecordsSource`]:
//! its key under `records:`, the spec it reads there and validates into one profile's
//! settings, and how the daemon starts it for every profile that configures it. Its settings
//! answer what the config layer asks of any source ([`RecordsSettings`]: the record kinds it
//! provides, its warnings, the files it reads).
//!
//! `records_sources!` is the list of the sources (in `sources/mod.rs`). From it come the two
//! types that the config layer and the daemon go through, naming no source:
//! `RecordSourceSpecs` (a profile's sources as written) and `RecordSources` (as validated;
//! the daemon starts them all with `RecordSources::start`).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::core::engine::Change;
use crate::model::ids::RecordKind;
use crate::model::profile::{Profile, ProfileId, Profiles};
use crate::model::source::{SourceCounters, SourceKind};
use crate::util::config::Validator;
use crate::util::time::Ts;

use super::Options;

/// A kind of records source, implemented by its type (`Postgres`, `Ingest`). Its functions
/// take no `self`: `start` makes the source's values from every profile's settings.
pub trait RecordsSource: 'static {
    /// Its key under a profile's `records:` (`postgres`), which its source names start with.
    const NAME: &'static str;
    /// The health series its sources start with.
    const KIND: SourceKind;
    /// `records.NAME` as written: every field optional.
    type Spec: DeserializeOwned + Clone + Debug;
    /// `records.NAME` of one profile, validated.
    type Settings: RecordsSettings + Clone + Debug + Send + Sync + 'static;
    /// Why it cannot start.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Validates one profile's spec; `v` is at `records.NAME`, and every error is reported
    /// through it.
    fn validate(spec: Self::Spec, v: &mut Validator<'_>) -> Self::Settings;

    /// Starts the source for the profiles that configure it, each with its settings, in
    /// profile order: it registers its sources ([`Start::register`]), announces their first
    /// status, and spawns its tasks.
    fn start(
        profiles: Vec<(ProfileId, Self::Settings)>,
        cx: &mut Start<'_>,
    ) -> Result<(), Self::Error>;
}

/// What the config layer asks of one profile's settings of any records source. Fields are
/// named from the profile (`records.postgres.queries.session`, `grace.absence`).
pub trait RecordsSettings: Debug {
    /// The record kinds it provides, each with the field that makes it provide that kind (a
    /// kind has one source: two would each remove the other's records on their full loads).
    fn kinds(&self) -> Vec<(RecordKind, String)>;

    /// What a valid config probably gets wrong, each naming the field and why; `w` is at the
    /// profile.
    fn warnings(&self, _profile: &Profile, _w: &mut Validator<'_>) {}

    /// The files it reads (secrets, CA bundles), each with the field that names it.
    fn files(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }
}

/// When a profile's pods are watched in some namespaces only and it sets no
/// `records.default_namespace`, a record that names no namespace can never be placed. For a
/// source whose records may name none, the start and the end of its warning: the scope, and
/// what follows from it.
pub fn unplaced(profile: &Profile) -> Option<(String, &'static str)> {
    let pods = profile.pods.as_ref()?;
    if pods.namespaces.is_empty() || profile.records.default_namespace.is_some() {
        return None;
    }
    Some((
        format!(
            "pods are watched only in namespace(s) {}",
            pods.namespaces.join(", ")
        ),
        "a record that names no namespace cannot be placed in them, so a missing pod is never evidence for it (no PodGone, no orphaned_suspended_session); set records.default_namespace",
    ))
}

/// What a records source is started with, and what it leaves for the daemon: the sources to
/// make health series for, the changes to send before anything else, the routes to serve.
pub struct Start<'a> {
    pub profiles: Arc<Profiles>,
    pub changes: mpsc::Sender<(Ts, Change)>,
    pub counters: Arc<dyn SourceCounters>,
    /// What the command line gives the records sources.
    pub options: &'a mut Options,
    stop: watch::Receiver<bool>,
    tasks: &'a mut JoinSet<()>,
    kind: SourceKind,
    started: Started,
}

/// What the records sources left for the daemon once started.
#[derive(Default)]
pub struct Started {
    /// Each source by name, with the kind of its health series.
    pub sources: Vec<(String, SourceKind)>,
    /// Changes to send to the engine before serving: the sources' first statuses.
    pub announced: Vec<Change>,
    /// Routes to serve beside the daemon's own (the ingest API).
    pub router: Option<Router>,
}

/// A records source that could not start, with its own (typed) error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StartError(Box<dyn std::error::Error + Send + Sync>);

impl<'a> Start<'a> {
    pub fn new(
        profiles: Arc<Profiles>,
        changes: mpsc::Sender<(Ts, Change)>,
        counters: Arc<dyn SourceCounters>,
        options: &'a mut Options,
        stop: watch::Receiver<bool>,
        tasks: &'a mut JoinSet<()>,
    ) -> Start<'a> {
        Start {
            profiles,
            changes,
            counters,
            options,
            stop,
            tasks,
            kind: SourceKind::Poll,
            started: Started::default(),
        }
    }

    /// Starts one kind of source for the profiles that configure it.
    pub fn start<S: RecordsSource>(
        &mut self,
        profiles: Vec<(ProfileId, S::Settings)>,
    ) -> Result<(), StartError> {
        self.kind = S::KIND;
        S::start(profiles, self).map_err(|e| StartError(Box::new(e)))
    }

    /// A source by the name readiness, metrics and logs show (see [`super::name`]): its
    /// health series start at zero.
    pub fn register(&mut self, name: &str) {
        self.started.sources.push((name.to_string(), self.kind));
    }

    /// A change for the engine before anything else happens (a source's first status).
    pub fn announce(&mut self, change: Change) {
        self.started.announced.push(change);
    }

    /// Routes to serve beside the daemon's own.
    pub fn route(&mut self, router: Router) {
        self.started.router = Some(match self.started.router.take() {
            Some(r) => r.merge(router),
            None => router,
        });
    }

    /// Set when the daemon stops.
    pub fn stop(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Runs `task` until it ends or the daemon stops.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }

    /// What the sources left for the daemon.
    pub fn finish(self) -> Started {
        self.started
    }
}

/// Whether two names are the same, at compile time (a source's key in the list and its
/// [`RecordsSource::NAME`]).
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The records sources, each as `KEY: Type` (its key under `records:`, which must be its
/// [`RecordsSource::NAME`]), in the order they are validated, checked and started. Makes
/// `RecordSourceSpecs` and `RecordSources` in the module it is used in.
macro_rules! records_sources {
    ($($key:ident: $source:ty),+ $(,)?) => {
        /// A profile's records sources as written under `records:`: one field per source.
        #[derive(Clone, Debug, Default)]
        pub struct RecordSourceSpecs {
            $(pub $key: Option<<$source as $crate::sources::records::RecordsSource>::Spec>,)+
        }

        /// A profile's records sources, validated: one field per source.
        #[derive(Clone, Debug, Default)]
        pub struct RecordSources {
            $(pub $key: Option<<$source as $crate::sources::records::RecordsSource>::Settings>,)+
        }

        $(const _: () = assert!(
            $crate::sources::records::same(
                stringify!($key),
                <$source as $crate::sources::records::RecordsSource>::NAME,
            ),
            "a records source's key must be its NAME",
        );)+

        impl RecordSourceSpecs {
            /// The sources' keys under `records:`.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),+];

            /// Reads the value of `records.KEY` when `KEY` is a source's (`Ok(false)` when
            /// it is not, and nothing was read).
            pub fn read<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                match key {
                    $(stringify!($key) => self.$key = map.next_value()?,)+
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// Validates each source's spec; `v` is at the profile.
            pub fn validate(self, v: &mut $crate::util::config::Validator<'_>) -> RecordSources {
                use $crate::sources::records::RecordsSource;
                RecordSources {
                    $($key: self.$key.map(|spec| {
                        <$source>::validate(spec, &mut v.at(concat!("records.", stringify!($key))))
                    }),)+
                }
            }
        }

        impl RecordSources {
            /// The sources a profile configures, in the order of the list.
            pub fn each(&self) -> Vec<&dyn $crate::sources::records::RecordsSettings> {
                let mut out: Vec<&dyn $crate::sources::records::RecordsSettings> = Vec::new();
                $(if let Some(s) = &self.$key {
                    out.push(s);
                })+
                out
            }

            /// Starts every source some profile configures; `all` is by profile id.
            pub fn start(
                all: &[RecordSources],
                cx: &mut $crate::sources::records::Start<'_>,
            ) -> Result<(), $crate::sources::records::StartError> {
                $(
                    let profiles: Vec<_> = all
                        .iter()
                        .zip(0u16..)
                        .filter_map(|(r, i)| Some(($crate::model::ids::ProfileId(i), r.$key.clone()?)))
                        .collect();
                    if !profiles.is_empty() {
                        cx.start::<$source>(profiles)?;
                    }
                )+
                Ok(())
            }
        }
    };
}
pub(crate) use records_sources;

impl super::RecordSources {
    /// The record kinds these sources provide.
    pub fn kinds(&self) -> Vec<RecordKind> {
        let mut kinds: Vec<RecordKind> = self
            .each()
            .iter()
            .flat_map(|s| s.kinds())
            .map(|(k, _)| k)
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}
