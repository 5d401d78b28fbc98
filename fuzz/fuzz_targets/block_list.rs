//! Archive block-list lines: whatever parses writes back the same.
//! The checks live in `blocksnap::testing::fuzz::block_list`, which the regression
//! tests replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blocksnap::testing::fuzz::block_list(data));
