//! The legacy import parser for this format, through `import::plan`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_byok::import::LegacyFormat;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::plan(data, LegacyFormat::onboarding_json("alice"));
});
