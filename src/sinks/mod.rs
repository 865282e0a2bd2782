//! Sinks: where finding transitions go. They read transitions (and the engine's published
//! snapshot) and nothing else; no sink reaches back into a source or the engine.

pub mod http;
pub mod log;
pub mod metrics;
pub mod report;
pub mod traces;
