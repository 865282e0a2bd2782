//! The core: the joined state ([`world`]), the judgements ([`rules`]) and the incremental
//! [`engine`] that applies changes and emits finding transitions. Pure: no I/O, no clock but
//! the instants it is given.

pub mod engine;
pub mod rules;
pub mod world;
