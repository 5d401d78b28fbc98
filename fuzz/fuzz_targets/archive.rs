//! Whole archives imported into a fresh store: a completed snapshot, or a typed error and nothing left behind.
//! The checks live in `blocksnap::testing::fuzz::archive`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::archive(data));
