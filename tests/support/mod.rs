#![allow(dead_code)]

pub mod apiserver;
pub mod browser;
pub mod daemon;
pub mod metrics;
pub mod postgres;
pub mod proxy;
pub mod receiver;
