//! The model: plain data every layer above shares, and nothing that does I/O.
//!
//! What the input looks like ([`kubernetes`]: the slim pod and custom-resource shapes;
//! [`record`]: the one normalized record shape and its validation), how a platform looks
//! ([`profile`]), what sources are and what their silence means ([`source`]), and what the
//! engine produces ([`finding`]).

pub mod finding;
pub mod ids;
pub mod kubernetes;
pub mod profile;
pub mod record;
pub mod source;
pub mod view;
