//! `sandwatch replay`: the replay source, the engine and the report / metrics sinks, wired
//! together over one or more recorded files read as one continuous stream.
//!
//! [`Replay`] drives the engine from decoded values in virtual time: each value happens at its
//! own time (an envelope's `at`, else the newest timestamp of its object), never before the
//! previous one. In a replay the file is the whole truth: each feed (pods, sessions,
//! executions, sandboxes, resume targets) counts as synced from its first value.

use std::io::{Read, Write};

use tracing::warn;

use crate::app::config::Config;
use crate::core::engine::{Change, Engine};
use crate::core::world::{Feed, SourceStatus};
use crate::model::finding::Transition;
use crate::model::profile::Profiles;
use crate::model::record::InputError;
use crate::sinks::metrics::FindingMetrics;
use crate::sinks::report::{Format, Report};
use crate::sinks::{Fanout, TransitionSink};
use crate::sources::object_change;
use crate::sources::replay::{Decoded, Splitter, decode};
use crate::util::time::Ts;

/// One input: a name for messages, and its bytes.
pub struct Input {
    pub name: String,
    pub reader: Box<dyn Read>,
}

pub struct Outcome<W> {
    pub counts: Counts,
    pub out: W,
    /// The Prometheus text exposition of the final state.
    pub metrics: String,
    /// The engine in its final state.
    pub engine: Engine,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {name}: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
    #[error("encoding the metrics: {0}")]
    Metrics(#[from] std::fmt::Error),
}

/// Replays `inputs` in order and writes the report to `out`.
pub fn run<W: Write + Send>(
    config: &Config,
    inputs: Vec<Input>,
    format: Format,
    out: W,
) -> Result<Outcome<W>, ReplayError> {
    let profiles = config.profiles.clone();
    let metrics = FindingMetrics::new(&profiles, &config.all_feeds());
    let mut registry = crate::sinks::metrics::registry(crate::util::shard::Shard::ALL);
    metrics.register(&mut registry);
    let mut metric_sink = metrics.sink();
    let mut report = Report::new(out, format);
    let mut replay = Replay::new(Engine::new(profiles.clone()), &profiles);
    let mut sinks = Fanout::new().with(&mut metric_sink).with(&mut report);
    let mut transitions = Vec::new();
    for input in inputs {
        let name = input.name;
        Splitter::new(input.reader)
            .for_each_decoded(
                |value| {
                    let result = replay.decoded(value, &mut transitions);
                    for n in replay.engine.take_notices() {
                        warn!(reason = n.reason, "{}", crate::util::text::clip(&n.message));
                    }
                    for t in transitions.drain(..) {
                        sinks.transition(&t);
                    }
                    result
                },
                |e, position| {
                    warn!(
                        reason = e.reason,
                        "skipped value {} (line {}) of {name}: {}",
                        position.value,
                        position.line,
                        crate::util::text::clip(&e.message)
                    );
                },
            )
            .map_err(|source| ReplayError::Read { name, source })?;
    }
    drop(sinks);
    let counts = replay.counts;
    metrics.set_rules_active(&replay.engine.rules_active());
    let out = report.finish(&crate::sinks::report::Totals {
        events: counts.events,
        records: counts.records,
        rejected: counts.rejected,
    })?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(Outcome {
        counts,
        out,
        metrics: text,
        engine: replay.engine,
    })
}

/// Counts for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub values: u64,
    pub events: u64,
    pub records: u64,
    pub rejected: u64,
}

/// Drives an engine from replay values.
pub struct Replay<'a> {
    pub engine: Engine,
    profiles: &'a Profiles,
    clock: Option<Ts>,
    started: Vec<Feed>,
    pub counts: Counts,
}

impl<'a> Replay<'a> {
    pub fn new(engine: Engine, profiles: &'a Profiles) -> Replay<'a> {
        Replay {
            engine,
            profiles,
            clock: None,
            started: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The time a value happens at: its own time, never before the previous value's.
    fn tick(&mut self, at: Option<Ts>) -> Ts {
        let t = match (self.clock, at) {
            (Some(c), Some(a)) => c.max(a),
            (Some(c), None) => c,
            (None, Some(a)) => a,
            (None, None) => Ts(0),
        };
        self.clock = Some(t);
        t
    }

    fn start_feed(&mut self, feed: Feed, at: Ts, out: &mut Vec<Transition>) {
        if !self.started.contains(&feed) {
            self.started.push(feed);
            out.extend(self.engine.apply(
                at,
                Change::Source(SourceStatus::new(
                    format!("replay:{}", feed.as_str()),
                    None,
                    vec![feed],
                    true,
                )),
            ));
        }
    }

    /// Feeds one value; transitions go to `out`.
    pub fn value(&mut self, bytes: &[u8], out: &mut Vec<Transition>) -> Result<(), InputError> {
        self.decoded(decode(bytes), out)
    }

    /// Feeds one decoded value (or the reason it could not be decoded, to count it).
    pub fn decoded(
        &mut self,
        value: Result<Decoded, InputError>,
        out: &mut Vec<Transition>,
    ) -> Result<(), InputError> {
        self.counts.values += 1;
        let result = value.and_then(|v| self.apply(v, out));
        if result.is_err() {
            self.counts.rejected += 1;
        }
        result
    }

    fn apply(&mut self, value: Decoded, out: &mut Vec<Transition>) -> Result<(), InputError> {
        match value {
            Decoded::Skip => Ok(()),
            Decoded::Tick(at) => {
                let at = self.tick(Some(at));
                out.extend(self.engine.apply(at, Change::Tick));
                Ok(())
            }
            Decoded::Watch { at, kind, object } => {
                let at = at.or_else(|| object.newest_timestamp());
                let change = object_change(kind, object, self.profiles, None)?;
                let at = self.tick(at);
                self.counts.events += 1;
                if let Some((feed, change)) = change {
                    self.start_feed(feed, at, out);
                    out.extend(self.engine.apply(at, change));
                }
                Ok(())
            }
            Decoded::Record { at, doc } => {
                let change = doc.validate(self.profiles)?;
                let kind = match &change {
                    crate::model::record::RecordChange::Upsert(r) => r.kind,
                    crate::model::record::RecordChange::Delete { kind, .. } => *kind,
                };
                let at = self.tick(at);
                self.counts.records += 1;
                self.start_feed(Feed::of_record(kind), at, out);
                out.extend(self.engine.apply(at, Change::Record(change)));
                Ok(())
            }
        }
    }
}
