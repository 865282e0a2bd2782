//! `sandwatch replay`: the replay source, the engine and the report / metrics sinks, wired
//! together over one or more recorded files read as one continuous stream.

use std::io::{Read, Write};
use std::sync::Arc;

use tracing::warn;

use crate::core::engine::Engine;
use crate::model::profile::Profiles;
use crate::sinks::metrics::FindingMetrics;
use crate::sinks::report::{Format, Report};
use crate::sources::replay::{Counts, Replay, Splitter};

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

/// Replays `inputs` in order and writes the report to `out`.
pub fn run<W: Write>(
    profiles: Arc<Profiles>,
    inputs: Vec<Input>,
    format: Format,
    out: W,
) -> anyhow::Result<Outcome<W>> {
    let metrics = FindingMetrics::new(&profiles);
    let mut registry = crate::sinks::metrics::registry(crate::util::shard::Shard::ALL);
    metrics.register(&mut registry);
    let mut metric_sink = metrics.sink();
    let mut report = Report::new(out, format);
    let mut replay = Replay::new(Engine::new(profiles.clone()), &profiles);
    let mut transitions = Vec::new();
    let mut write_error = None;
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
                        metric_sink.transition(&t);
                        if write_error.is_none() {
                            write_error = report.transition(&t).err();
                        }
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
            .map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
    }
    if let Some(e) = write_error {
        return Err(anyhow::anyhow!("writing the report: {e}"));
    }
    let counts = replay.counts;
    metrics.set_rules_active(&replay.engine.rules_active());
    let out = report.finish(&counts)?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(Outcome {
        counts,
        out,
        metrics: text,
        engine: replay.engine,
    })
}
