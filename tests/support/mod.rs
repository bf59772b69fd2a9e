//! Shared pieces of the integration tests.
#![allow(dead_code)]

pub mod client_app;
pub mod faulty;
pub mod server;
pub mod wire;
