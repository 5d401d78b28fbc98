//! A whole NBD connection from the client's bytes: handshake options and
//! transmission requests through the real server, which always answers or
//! hangs up, never panics or hangs; decoded option data re-encodes exactly.
//! The checks live in `blocksnap::testing::fuzz::nbd_session`, which the
//! regression tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::nbd_session(data));
