//! The top layer: the two commands wired from the components below. [`config`] composes the
//! components' settings and the presets, [`live`] runs `sandwatch run`, [`replay`] runs
//! `sandwatch replay`, [`telemetry`] sets up logs and traces.

pub mod backtest;
pub mod config;
pub mod live;
pub mod replay;
pub mod telemetry;
