//! Credentials files: parsed, or an error naming the line.
//! The checks live in `blocksnap::testing::fuzz::credentials`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::credentials(data));
