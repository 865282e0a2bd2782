//! Sources, their health and their scope, and the one verdict on what their silence means.
//!
//! Every source (a pod watch, a custom-resource watch, a database, the ingest API, a replay
//! file) reports a [`SourceStatus`]: which profile and feeds it provides, which namespace it
//! sees (or all), and whether it is synced (its initial list or load is complete) and fresh.
//! Rules and remediation ask this module two questions, and only this module answers them:
//!
//! - [`trust`]: may a profile rely on a feed at all? (`Unconfigured`: no source provides it,
//!   so rules that need it do not run; `Untrusted`: some source of it is down, so findings
//!   that rest on it hold; `Trusted`.)
//! - [`absence`]: is a *missing* pod or record evidence? Only when every source that would
//!   show it is synced and fresh, their scope covers where it would be (its namespace, when
//!   the sources see only some namespaces), and, when sharded, this shard would hold it.

use std::fmt;

use crate::model::profile::ProfileId;
use crate::util::shard::Shard;
use crate::util::time::Ts;

/// What a source feeds into the World.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feed {
    Pods,
    Sessions,
    Executions,
    Sandboxes,
    /// Custom resources a suspended session resumes from.
    ResumeTargets,
}

impl Feed {
    pub const ALL: [Feed; 5] = [
        Feed::Pods,
        Feed::Sessions,
        Feed::Executions,
        Feed::Sandboxes,
        Feed::ResumeTargets,
    ];

    pub fn of_record(kind: crate::model::record::RecordKind) -> Feed {
        use crate::model::record::RecordKind;
        match kind {
            RecordKind::Session => Feed::Sessions,
            RecordKind::Execution => Feed::Executions,
            RecordKind::Sandbox => Feed::Sandboxes,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Feed::Pods => "pods",
            Feed::Sessions => "sessions",
            Feed::Executions => "executions",
            Feed::Sandboxes => "sandboxes",
            Feed::ResumeTargets => "resume_targets",
        }
    }
}

/// The health of one source, as the source reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub name: String,
    /// The profile whose records or pods it provides; `None` for every profile.
    pub profile: Option<ProfileId>,
    pub feeds: Vec<Feed>,
    /// The one namespace it sees; `None`: every namespace.
    pub namespace: Option<String>,
    /// The initial list or load is complete.
    pub synced: bool,
    /// The last successful poll or watch activity is within the source's staleness bound.
    pub fresh: bool,
    /// Why it is not synced or fresh, for people (the last error), if known.
    pub error: Option<String>,
}

impl SourceStatus {
    /// A source of every namespace, healthy or not.
    pub fn new(
        name: impl Into<String>,
        profile: Option<ProfileId>,
        feeds: Vec<Feed>,
        healthy: bool,
    ) -> SourceStatus {
        SourceStatus {
            name: name.into(),
            profile,
            feeds,
            namespace: None,
            synced: healthy,
            fresh: healthy,
            error: None,
        }
    }

    pub fn in_namespace(mut self, namespace: Option<String>) -> SourceStatus {
        self.namespace = namespace;
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> SourceStatus {
        self.error = Some(error.into());
        self
    }

    pub fn healthy(&self) -> bool {
        self.synced && self.fresh
    }

    fn provides(&self, profile: ProfileId, feed: Feed) -> bool {
        self.feeds.contains(&feed) && self.profile.is_none_or(|p| p == profile)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// No source provides this feed: rules that need it do not run.
    Unconfigured,
    /// Every source that provides it is synced and fresh.
    Trusted,
    /// Some source that provides it is unsynced or stale: findings resting on it hold.
    Untrusted,
}

/// How far `profile` can rely on `feed`, given the sources' statuses: unconfigured when no
/// source provides it to that profile, trusted when all that do are synced and fresh.
pub fn trust(sources: &[SourceStatus], profile: ProfileId, feed: Feed) -> Trust {
    let mut providers = sources
        .iter()
        .filter(|s| s.provides(profile, feed))
        .peekable();
    if providers.peek().is_none() {
        return Trust::Unconfigured;
    }
    if providers.all(SourceStatus::healthy) {
        Trust::Trusted
    } else {
        Trust::Untrusted
    }
}

/// Why something missing is no evidence that it is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blind {
    /// No source provides what would show it.
    Unconfigured,
    /// A source that would show it is unsynced or stale.
    Untrusted,
    /// Its namespace is not known, and the sources see only some namespaces.
    NamespaceUnknown,
    /// It would be in a namespace that no source of the profile sees.
    OutsideScope(String),
    /// It would be kept by another shard (or which shard is not known).
    OtherShard,
}

impl fmt::Display for Blind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blind::Unconfigured => f.write_str("no source provides it"),
            Blind::Untrusted => f.write_str("a source that would show it is unsynced or stale"),
            Blind::NamespaceUnknown => {
                f.write_str("its namespace is not known and the sources see only some namespaces")
            }
            Blind::OutsideScope(ns) => {
                write!(f, "namespace {ns:?} is outside what the sources see")
            }
            Blind::OtherShard => f.write_str("another shard would hold it"),
        }
    }
}

/// Which shard would hold the missing thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder<'a> {
    /// Every shard keeps it (resume targets).
    Everywhere,
    /// The shard that owns this session key.
    Key(&'a str),
    /// Not known (e.g. a pod linked by a name that is not its shard key).
    Unknown,
}

/// Whether a missing pod or record of `feed` for `profile`, that would be in `namespace`
/// (`None`: not known) and held by `holder`, is evidence that it is gone. This is the one
/// place that decides it: every rule and remediation ask here.
pub fn absence(
    sources: &[SourceStatus],
    shard: Shard,
    profile: ProfileId,
    feed: Feed,
    namespace: Option<&str>,
    holder: Holder<'_>,
) -> Result<(), Blind> {
    let providers: Vec<&SourceStatus> = sources
        .iter()
        .filter(|s| s.provides(profile, feed))
        .collect();
    if providers.is_empty() {
        return Err(Blind::Unconfigured);
    }
    let covering: Vec<&&SourceStatus> = providers
        .iter()
        .filter(|s| match (&s.namespace, namespace) {
            (None, _) => true,
            (Some(seen), Some(ns)) => seen == ns,
            (Some(_), None) => false,
        })
        .collect();
    if covering.is_empty() {
        return Err(match namespace {
            Some(ns) => Blind::OutsideScope(ns.to_string()),
            None => Blind::NamespaceUnknown,
        });
    }
    if !covering.iter().all(|s| s.healthy()) {
        return Err(Blind::Untrusted);
    }
    if shard.total > 1 {
        match holder {
            Holder::Everywhere => {}
            Holder::Key(k) if shard.owns(k) => {}
            Holder::Key(_) | Holder::Unknown => return Err(Blind::OtherShard),
        }
    }
    Ok(())
}

/// When each source last became synced and fresh (for detection latency: evidence older than
/// that appeared while sandwatch was not looking).
#[derive(Clone, Debug, Default)]
pub struct TrustedSince {
    since: Vec<(String, Option<Ts>)>,
}

impl TrustedSince {
    pub fn update(&mut self, status: &SourceStatus, at: Ts) {
        let healthy = status.healthy();
        match self.since.iter_mut().find(|(n, _)| *n == status.name) {
            Some((_, since)) => match (healthy, *since) {
                (true, None) => *since = Some(at),
                (false, _) => *since = None,
                (true, Some(_)) => {}
            },
            None => self
                .since
                .push((status.name.clone(), healthy.then_some(at))),
        }
    }

    /// The latest moment one of `profile`'s sources of these feeds became trusted; `None`
    /// when one of them is not trusted now.
    pub fn of(
        &self,
        sources: &[SourceStatus],
        profile: ProfileId,
        feeds: impl Iterator<Item = Feed> + Clone,
    ) -> Option<Ts> {
        let mut latest = Ts(i64::MIN);
        for s in sources
            .iter()
            .filter(|s| feeds.clone().any(|f| s.provides(profile, f)))
        {
            let since = self
                .since
                .iter()
                .find(|(n, _)| *n == s.name)
                .and_then(|(_, t)| *t)?;
            latest = latest.max(since);
        }
        Some(latest)
    }
}

/// The kinds of source, for the health series they start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A Kubernetes watch: events, errors, restarts.
    Watch,
    /// A database polled in full and incremental rounds.
    Poll,
    /// Records pushed over HTTP.
    Push,
}

/// Self-health counters sources report (the metrics sink keeps them).
pub trait SourceCounters: Send + Sync {
    /// A watch event or list item arrived: the source is talking to its backend.
    fn watch_event(&self, source: &str);
    fn watch_restart(&self, source: &str);
    fn watch_error(&self, source: &str);
    /// Records were pushed to the source (the ingest API) and accepted.
    fn pushed(&self, source: &str, records: u64);
    fn rejected(&self, source: &str, reason: &str);
    /// A poll of a records database finished (`full`: a complete load).
    fn poll(&self, source: &str, full: bool, seconds: f64, rows: u64, ok: bool);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(ns: Option<&str>, healthy: bool) -> SourceStatus {
        SourceStatus::new("pods", Some(ProfileId(0)), vec![Feed::Pods], healthy)
            .in_namespace(ns.map(String::from))
    }

    #[test]
    fn absence_counts_only_inside_what_the_sources_see() {
        let p = ProfileId(0);
        let all = [pods(None, true)];
        let scoped = [pods(Some("agents"), true)];
        let check = |s: &[SourceStatus], ns: Option<&str>| {
            absence(s, Shard::ALL, p, Feed::Pods, ns, Holder::Unknown)
        };
        assert_eq!(check(&all, None), Ok(()));
        assert_eq!(check(&all, Some("x")), Ok(()));
        assert_eq!(check(&scoped, Some("agents")), Ok(()));
        assert_eq!(check(&scoped, None), Err(Blind::NamespaceUnknown));
        assert_eq!(
            check(&scoped, Some("other")),
            Err(Blind::OutsideScope("other".into()))
        );
        assert_eq!(check(&[pods(None, false)], None), Err(Blind::Untrusted));
        assert_eq!(check(&[], None), Err(Blind::Unconfigured));
        // Another profile's source says nothing.
        assert_eq!(
            absence(
                &all,
                Shard::ALL,
                ProfileId(1),
                Feed::Pods,
                None,
                Holder::Unknown
            ),
            Err(Blind::Unconfigured)
        );
        let shard = Shard::new(0, 2).unwrap();
        let mine = (0..100)
            .map(|i| format!("s-{i}"))
            .find(|k| shard.owns(k))
            .unwrap();
        let theirs = (0..100)
            .map(|i| format!("s-{i}"))
            .find(|k| !shard.owns(k))
            .unwrap();
        let sharded = |h| absence(&all, shard, p, Feed::Pods, None, h);
        assert_eq!(sharded(Holder::Key(&mine)), Ok(()));
        assert_eq!(sharded(Holder::Key(&theirs)), Err(Blind::OtherShard));
        assert_eq!(sharded(Holder::Unknown), Err(Blind::OtherShard));
        assert_eq!(sharded(Holder::Everywhere), Ok(()));
    }
}
