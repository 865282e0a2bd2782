#![allow(dead_code)]

pub mod apiserver;
pub mod daemon;
pub mod postgres;
pub mod proxy;
pub mod receiver;
