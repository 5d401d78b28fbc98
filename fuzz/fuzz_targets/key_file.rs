//! Key files: a provider or a typed refusal.
//! The checks live in `blocksnap::testing::fuzz::key_file`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::key_file(data));
