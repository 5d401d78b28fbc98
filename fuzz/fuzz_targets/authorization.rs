//! The Authorization header and its company: access, or AccessDeniedException.
//! The checks live in `blocksnap::testing::fuzz::authorization`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::authorization(data));
