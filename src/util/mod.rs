//! The bottom layer: small pieces with no knowledge of sandwatch's model. Instants and the
//! one timestamp parser ([`time`]), the one JSON policy for input ([`json`]), making outside
//! text safe to show ([`text`]), config errors and durations ([`config`]), TLS for outgoing connections ([`tls`]), and the shard hash
//! ([`shard`]).

pub mod config;
pub mod json;
pub mod shard;
pub mod text;
pub mod time;
pub mod tls;
