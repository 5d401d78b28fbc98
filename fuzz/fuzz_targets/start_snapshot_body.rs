//! StartSnapshot JSON bodies: a request or a validation error.
//! The checks live in `blocksnap::testing::fuzz::start_snapshot_body`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::start_snapshot_body(data));
