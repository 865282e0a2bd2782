//! Sinks: where finding transitions go. They read transitions (and the engine's published
//! snapshot) and nothing else; no sink reaches back into a source or the engine.
//!
//! A sink that follows transitions implements [`TransitionSink`]; the app hands each
//! transition to a [`Fanout`] of them, in live mode and in a replay alike. Adding a sink is its
//! file here and one `.with(...)` line where the app builds its fan-out.

pub mod http;
pub mod log;
pub mod metrics;
pub mod record;
pub mod report;
pub mod traces;

use crate::model::finding::Transition;

/// Something that follows finding transitions (metrics, logs, spans, the replay report).
pub trait TransitionSink {
    fn transition(&mut self, t: &Transition);
}

impl<S: TransitionSink + ?Sized> TransitionSink for &mut S {
    fn transition(&mut self, t: &Transition) {
        (**self).transition(t)
    }
}

/// Every sink of a run, each given every transition in order.
#[derive(Default)]
pub struct Fanout<'a> {
    sinks: Vec<Box<dyn TransitionSink + Send + 'a>>,
}

impl<'a> Fanout<'a> {
    pub fn new() -> Fanout<'a> {
        Fanout::default()
    }

    pub fn with(mut self, sink: impl TransitionSink + Send + 'a) -> Fanout<'a> {
        self.sinks.push(Box::new(sink));
        self
    }
}

impl TransitionSink for Fanout<'_> {
    fn transition(&mut self, t: &Transition) {
        for s in &mut self.sinks {
            s.transition(t);
        }
    }
}
