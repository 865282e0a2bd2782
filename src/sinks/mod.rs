//! Sinks: where finding transitions go. They read transitions and nothing else; no sink
//! reaches back into a source or the engine.

pub mod metrics;
pub mod report;
