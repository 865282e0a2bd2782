//! `sandwatch replay`: the replay source, the engine and the report / metrics sinks, wired
//! together over one or more recorded files read as one continuous stream.
//!
//! [`Replay`] drives the engine from decoded values in virtual time: each value happens at its
//! own time (an envelope's `at`, else the newest timestamp of its object), never before the
//! previous one. In a replay the file is the whole truth: each feed (pods, sessions,
//! executions, sandboxes, resume targets) counts as synced from its first value.
//!
//! A [`Stop`] ends a replay early (on Ctrl-C): every input ends where it is, as if the
//! recording stopped there, and the report is finished with the summary of what was read.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use tracing::warn;

use crate::app::backtest::{ActionSummary, Backtest};
use crate::app::config::Config;
use crate::core::engine::{Change, Engine};
use crate::core::explain;
use crate::core::world::{Feed, SourceStatus};
use crate::model::finding::Transition;
use crate::model::profile::Profiles;
use crate::model::record::InputError;
use crate::remediation::RemediationMetrics;
use crate::remediation::controller::Call;
use crate::sinks::metrics::FindingMetrics;
use crate::sinks::report::{Format, Report};
use crate::sinks::{Fanout, TransitionSink};
use crate::sources::object_change;
use crate::sources::replay::{Decoded, Splitter, decode};
use crate::util::time::Ts;

/// One input: a name for messages, and its bytes.
pub struct Input {
    pub name: String,
    pub reader: Box<dyn Read + Send>,
}

pub struct Outcome<W> {
    pub counts: Counts,
    /// How many findings are open at the end.
    pub open: u64,
    pub out: W,
    /// The Prometheus text exposition of the final state.
    pub metrics: String,
    /// The engine in its final state.
    pub engine: Engine,
    /// With `--remediation`: the calls, and a summary per action.
    pub backtest: Option<(Vec<Call>, BTreeMap<&'static str, ActionSummary>)>,
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
    #[error(
        "--remediation: the config enables no remediation action (set profiles[].remediation.actions)"
    )]
    NoActions,
    #[error("--remediation: {0}")]
    Remediation(#[from] crate::remediation::deliver::DelivererError),
}

/// What a replay does besides the report.
#[derive(Default)]
pub struct Extras {
    /// Backtest the config's remediation actions (`--remediation`).
    pub remediation: bool,
    /// Explain this subject at the end (`--explain`).
    pub explain: Option<explain::Query>,
}

/// Replays `inputs` in order and writes the report to `out`.
pub fn run<W: Write + Send>(
    config: &Config,
    inputs: Vec<Input>,
    format: Format,
    out: W,
) -> Result<Outcome<W>, ReplayError> {
    run_with(config, inputs, format, out, Extras::default())
}

/// Replays `inputs`, with a remediation backtest and an explanation if asked.
pub fn run_with<W: Write + Send>(
    config: &Config,
    inputs: Vec<Input>,
    format: Format,
    out: W,
    extras: Extras,
) -> Result<Outcome<W>, ReplayError> {
    let profiles = config.profiles.clone();
    let metrics = FindingMetrics::new(&profiles, &config.all_feeds());
    let mut registry = crate::sinks::metrics::registry(crate::util::shard::Shard::ALL);
    metrics.register(&mut registry);
    let mut replay = Replay::new(Engine::new(profiles.clone()), &profiles);
    if extras.remediation {
        let actions = &config.remediation.actions;
        if actions.is_empty() {
            return Err(ReplayError::NoActions);
        }
        let rm = RemediationMetrics::new(actions);
        rm.register(&mut registry);
        replay.backtest = Some(Backtest::new(&config.remediation, profiles.clone(), rm)?);
    }
    let mut metric_sink = metrics.sink();
    let mut report = Report::new(out, format);
    let mut sinks = Fanout::new().with(&mut metric_sink).with(&mut report);
    with_sinks_on_a_thread(&mut sinks, |to| {
        inputs
            .into_iter()
            .try_for_each(|input| read(&mut replay, input, to))
    })?;
    let backtest = replay.backtest.take().map(|mut bt| {
        bt.drain(&replay.engine);
        bt.finish()
    });
    drop(sinks);
    let counts = replay.counts;
    metrics.set_rules_active(&replay.engine.rules_active());
    let open = report.open_total();
    let mut out = report.finish(&crate::sinks::report::Totals {
        events: counts.events,
        records: counts.records,
        rejected: counts.rejected,
    })?;
    let json = matches!(format, Format::Json);
    if let Some((calls, summary)) = &backtest {
        crate::app::backtest::write(&mut out, json, calls, summary)?;
    }
    if let Some(q) = &extras.explain {
        explained(&mut out, &replay.engine, q, json)?;
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(Outcome {
        counts,
        open,
        out,
        metrics: text,
        engine: replay.engine,
        backtest,
    })
}

/// Reads one input to its end (or to a stop), feeding the engine and the sinks.
fn read(replay: &mut Replay<'_>, input: Input, sinks: &mut ToSinks) -> Result<(), ReplayError> {
    let name = input.name;
    let sinks = std::cell::RefCell::new(sinks);
    Splitter::new(input.reader)
        .keeping_only(replay.profiles.pod_meta_keys())
        .for_each_decoded(
            |value| {
                let mut sinks = sinks.borrow_mut();
                let result = replay.decoded(value, &mut sinks.batch);
                for n in replay.engine.take_notices() {
                    warn!(reason = n.reason, "{}", crate::util::text::clip(&n.message));
                }
                if sinks.batch.len() >= SINK_BATCH {
                    sinks.flush();
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
            || sinks.borrow_mut().flush(),
        )
        .map_err(|source| ReplayError::Read { name, source })
}

/// Transitions per hand-over to the sinks' thread (at most, unless one change makes more).
const SINK_BATCH: usize = 1024;

/// Transitions that may wait for the sinks' thread (~20 MB): after a burst the engine goes on
/// while the sinks catch up, and it waits for them only when more than that are waiting. One
/// change's transitions go over whole however many they are (every pod judged at once when a
/// feed starts) and count as one batch's: they were in memory already.
const SINK_QUEUE: usize = 64 * 1024;

/// What a batch counts for against [`SINK_QUEUE`].
fn weight(batch: &[Transition]) -> usize {
    batch.len().min(SINK_BATCH)
}

/// How many transitions wait for the sinks' thread, and whether it is still there.
#[derive(Default)]
struct Queued {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Queued {
    /// Waits until at most [`SINK_QUEUE`] transitions wait (or the sinks are gone), then
    /// counts `n` more.
    fn add(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 > SINK_QUEUE && !s.1 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 += n;
    }

    fn done(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(n);
        self.changed.notify_all();
    }
}

/// Marks the sinks' thread gone when it ends, panicking or not, so the engine never waits
/// for it in vain.
struct Gone<'a>(&'a Queued);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.0.changed.notify_all();
    }
}

/// Hands transitions over to the sinks, which run on a thread of their own (the report's
/// JSON and the metrics cost about as much as the engine's work for them).
struct ToSinks<'q> {
    batch: Vec<Transition>,
    tx: Sender<Vec<Transition>>,
    queued: &'q Queued,
    /// Batches the sinks are done with, to fill again.
    spare: Receiver<Vec<Transition>>,
}

impl ToSinks<'_> {
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.queued.add(weight(&self.batch));
        let next = self.spare.try_recv().unwrap_or_default();
        // Fails only if the sinks' thread panicked: its panic is resumed when it is joined.
        let _ = self.tx.send(std::mem::replace(&mut self.batch, next));
    }
}

/// Runs `f` with the sinks on a thread of their own, fed through a [`ToSinks`]; every
/// transition has reached them when it returns.
fn with_sinks_on_a_thread<T>(sinks: &mut Fanout<'_>, f: impl FnOnce(&mut ToSinks) -> T) -> T {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Transition>>();
    let (spare_tx, spare) = std::sync::mpsc::channel();
    let queued = Queued::default();
    std::thread::scope(|s| {
        let queued = &queued;
        let worker = std::thread::Builder::new()
            .name("replay-sinks".into())
            .spawn_scoped(s, move || {
                let _gone = Gone(queued);
                for mut batch in rx {
                    let n = weight(&batch);
                    for t in batch.drain(..) {
                        sinks.transition(&t);
                    }
                    queued.done(n);
                    // A burst's batch is not kept for reuse: its memory goes back.
                    if batch.capacity() <= 4 * SINK_BATCH {
                        let _ = spare_tx.send(batch);
                    }
                }
            })
            .expect("spawning the replay sinks' thread");
        let mut to = ToSinks {
            batch: Vec::new(),
            tx,
            queued,
            spare,
        };
        let result = f(&mut to);
        to.flush();
        drop(to);
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result
    })
}

/// The explanation of `q` at the end of the replay, after the report.
fn explained(
    out: &mut dyn Write,
    engine: &Engine,
    q: &explain::Query,
    json: bool,
) -> Result<(), ReplayError> {
    let e = match explain::explain(engine, q) {
        Ok(e) => e,
        Err(error) => {
            // The report and the metrics are still what the replay was for.
            warn!("--explain: {error}");
            if json {
                let v = serde_json::json!({"event": "explain", "error": error.to_string()});
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "\nEXPLAIN: {error}")?;
            }
            return Ok(());
        }
    };
    if json {
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({"event": "explain", "explanation": e}),
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "\nEXPLAIN")?;
        serde_json::to_writer_pretty(&mut *out, &e).map_err(std::io::Error::from)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Ends the inputs of a replay where they are. Clones share one stop.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Default)]
struct StopState {
    stopped: AtomicBool,
    /// The channels of threaded readers, to wake one that waits for its source.
    wake: Mutex<Vec<SyncSender<Chunk>>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stops: every reader of this stop ends at its next read, or now if it is waiting.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        let wake = self.0.wake.lock().unwrap_or_else(|e| e.into_inner());
        for w in wake.iter() {
            // A full channel means its reader is not waiting: it sees the flag on its next read.
            let _ = w.try_send(Chunk::Wake);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// `reader`, ending (reading nothing more) once stopped. For sources whose reads return
    /// soon, such as files.
    pub fn reader<R: Read>(&self, reader: R) -> Stoppable<R> {
        Stoppable {
            reader,
            stop: self.clone(),
        }
    }

    /// `reader` read on a thread of its own, so that a stop ends it even while its source has
    /// nothing to say (a pipe from `kubectl get --watch`). The thread is left blocked in its
    /// read when the stop comes; the process is about to exit.
    pub fn threaded<R: Read + Send + 'static>(&self, reader: R) -> Threaded {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        self.0
            .wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx.clone());
        std::thread::spawn(move || pump(reader, tx));
        Threaded {
            rx,
            chunk: Vec::new(),
            at: 0,
            ended: false,
            stop: self.clone(),
        }
    }
}

/// A reader that ends once its [`Stop`] is stopped.
pub struct Stoppable<R> {
    reader: R,
    stop: Stop,
}

impl<R: Read> Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.is_stopped() {
            return Ok(0);
        }
        self.reader.read(buf)
    }
}

enum Chunk {
    Data(Vec<u8>),
    End(std::io::Result<()>),
    Wake,
}

/// Reads `reader` into chunks until it ends, fails, or nobody listens.
fn pump<R: Read>(mut reader: R, tx: SyncSender<Chunk>) {
    loop {
        let mut buf = vec![0; 64 << 10];
        let chunk = match reader.read(&mut buf) {
            Ok(0) => Chunk::End(Ok(())),
            Ok(n) => {
                buf.truncate(n);
                Chunk::Data(buf)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Chunk::End(Err(e)),
        };
        let end = matches!(chunk, Chunk::End(_));
        if tx.send(chunk).is_err() || end {
            return;
        }
    }
}

/// A reader fed by its own thread; ends once its [`Stop`] is stopped.
pub struct Threaded {
    rx: Receiver<Chunk>,
    chunk: Vec<u8>,
    at: usize,
    /// The source ended (or failed): nothing more comes.
    ended: bool,
    stop: Stop,
}

impl Read for Threaded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.stop.is_stopped() {
                return Ok(0);
            }
            if self.at < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.at);
                buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(d)) => {
                    self.chunk = d;
                    self.at = 0;
                }
                Ok(Chunk::Wake) => {}
                Ok(Chunk::End(result)) => {
                    self.ended = true;
                    return result.map(|()| 0);
                }
                Err(_) => self.ended = true,
            }
        }
    }
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
    /// The remediation backtest, when asked for: its rounds run between the values.
    pub backtest: Option<Backtest>,
    /// The input is a recording (`run --record`): its sources' health comes from it.
    recorded: bool,
}

impl<'a> Replay<'a> {
    pub fn new(engine: Engine, profiles: &'a Profiles) -> Replay<'a> {
        Replay {
            engine,
            profiles,
            clock: None,
            started: Vec::new(),
            counts: Counts::default(),
            backtest: None,
            recorded: false,
        }
    }

    /// Applies one change at `at`; with a backtest, its rounds due before `at` run first, and
    /// one runs after the change.
    fn change(&mut self, at: Ts, change: Change, out: &mut Vec<Transition>) {
        if let Some(bt) = &mut self.backtest {
            bt.until(&mut self.engine, at, &mut |t| out.extend_from_slice(t));
        }
        let before = out.len();
        let source = matches!(change, Change::Source(_));
        self.engine.apply_into(at, change, out);
        if let Some(bt) = &mut self.backtest {
            bt.round(&self.engine, at, source || out.len() > before);
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
        if !self.recorded && !self.started.contains(&feed) {
            self.started.push(feed);
            let status =
                SourceStatus::new(format!("replay:{}", feed.as_str()), None, vec![feed], true);
            self.change(at, Change::Source(status), out);
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
            Decoded::Recording => {
                // A recording says its sources' health itself: no feed is taken as synced
                // from its first value.
                self.recorded = true;
                Ok(())
            }
            Decoded::Recorded { at, what } => {
                let change = what.change(self.profiles)?;
                let at = self.tick(Some(at));
                self.change(at, change, out);
                Ok(())
            }
            Decoded::Tick(at) => {
                let at = self.tick(Some(at));
                self.change(at, Change::Tick, out);
                Ok(())
            }
            Decoded::Watch { at, kind, object } => {
                let at = at.or_else(|| object.newest_timestamp());
                let change = object_change(kind, object, self.profiles, None)?;
                let at = self.tick(at);
                self.counts.events += 1;
                if let Some((feed, change)) = change {
                    self.start_feed(feed, at, out);
                    self.change(at, change, out);
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
                self.change(at, Change::Record(change), out);
                Ok(())
            }
        }
    }
}
