//! The whole service in-process: requests decoded from the fuzz bytes, every answer checked
//! (see `fuzz/common.rs`). Run with `cargo +nightly fuzz run service`.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

#[path = "../common.rs"]
mod common;

/// One runtime for the whole run: each input gets a fresh layer, not a fresh runtime.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(common::runtime);

fuzz_target!(|data: &[u8]| {
    let case = common::decode(data);
    common::run(&RUNTIME, &case);
});
