//! Whole HTTP requests through the server's router: any reply is a well-formed EBS reply, and bad input is never an internal error.
//! The checks live in `blocksnap::testing::fuzz::http_request`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::http_request(data));
