//! The core: the joined state ([`world`]), the judgements ([`rules`]), the one verdict on
//! whether the sources let a rule judge ([`trust`]) and the incremental [`engine`] that
//! applies changes and emits finding transitions. Pure: no I/O, no clock but
//! the instants it is given.

pub mod engine;
pub mod explain;
pub mod rules;
pub mod trust;
pub mod world;
