//! Shared pieces of the integration tests.
#![allow(dead_code)]

pub mod faulty;
pub mod server;
pub mod wire;
